// File: examples/sqlite/sqlite_allocator.h
//
// Installs an mcx freelist context as SQLite's memory allocator
// (sqlite3_config(SQLITE_CONFIG_MALLOC)), so that every byte SQLite allocates
// (connections, schemas, prepared statements, the page cache of an in-memory
// database) lives in the context and shows in its stats report.
//
// Contract:
//   - SQLite's allocator is process-wide and can only be changed while SQLite
//     is not initialized. `Install` must run before SQLite's first use or
//     after `sqlite3_shutdown()`; otherwise it fails with
//     kFailedPrecondition and changes nothing. One allocator at a time.
//   - `Install` also configures SQLite single-threaded
//     (SQLITE_CONFIG_SINGLETHREAD): a context is used by one thread at a
//     time, and SQLite's own locking does not cover every allocator call.
//     All SQLite use must then come from one thread at a time.
//   - The context lives from SQLite's initialization to its shutdown: xInit
//     creates it (a freelist context named `name` under `parent`, with
//     `options`), xShutdown destroys it. As SQLite itself requires, every
//     connection must be closed and every sqlite3_malloc'd pointer freed
//     before `sqlite3_shutdown()`; whatever is not is freed with the context.
//   - The destructor shuts SQLite down and puts back the allocator it had
//     before `Install`. The threading mode stays single-threaded (SQLite has
//     no way to read the previous one back).
//   - `parent` must outlive the installed allocator.
//
// Example:
//
//   absl::StatusOr<std::unique_ptr<SqliteAllocator>> mem =
//       SqliteAllocator::Install(app, "sqlite");
//   sqlite3* db;
//   sqlite3_open(":memory:", &db);
//   ...
//   std::fputs(mcx::StatsReport((*mem)->context()).c_str(), stdout);
//   sqlite3_close(db);
//   mem->reset();   // sqlite3_shutdown: the context and all its blocks go

#ifndef MCX_EXAMPLES_SQLITE_SQLITE_ALLOCATOR_H_
#define MCX_EXAMPLES_SQLITE_SQLITE_ALLOCATOR_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "mcx/context/context.h"
#include "sqlite3.h"

namespace mcx {
namespace examples {

class SqliteAllocator {
 public:
  // Configures SQLite single-threaded, installs the mcx methods and calls
  // sqlite3_initialize(), which creates the context.
  static absl::StatusOr<std::unique_ptr<SqliteAllocator>> Install(
      Context* parent, const char* name,
      const ContextOptions& options = ContextOptions());

  SqliteAllocator(const SqliteAllocator&) = delete;
  SqliteAllocator& operator=(const SqliteAllocator&) = delete;

  // sqlite3_shutdown(), then the previous allocator is put back.
  ~SqliteAllocator();

  // The context of the current initialization; nullptr while SQLite is shut
  // down (between `sqlite3_shutdown()` and its next initialization, which
  // creates a fresh context).
  Context* context() const;

  // The method table handed to SQLite. Its functions may be called directly
  // (tests do) while SQLite is initialized.
  const sqlite3_mem_methods& methods() const { return methods_; }

  // xRoundup: the size a request of `n` bytes really gets. For size classes
  // that is the class; for larger (dedicated) chunks, `n` rounded up to 8,
  // which is all that can be said before the block source has answered. In
  // checking builds chunk sizes are exact (the sentinel sits right after
  // the requested bytes), so it is `n`.
  static int Roundup(int n);

 private:
  SqliteAllocator(Context* parent, std::string name,
                  const ContextOptions& options);

  static int Init(void* app_data);
  static void Shutdown(void* app_data);

  Context* const parent_;
  const std::string name_;  // kept: xInit names each new context
  const ContextOptions options_;
  sqlite3_mem_methods methods_;
  sqlite3_mem_methods previous_;  // what SQLite had before Install
};

}  // namespace examples
}  // namespace mcx

#endif  // MCX_EXAMPLES_SQLITE_SQLITE_ALLOCATOR_H_
