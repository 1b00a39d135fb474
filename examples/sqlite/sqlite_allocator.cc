// SQLite on an mcx freelist context. Why it is built this way:
//   - SQLite frees and resizes without saying how big the chunk was, and asks
//     for a chunk's size (xSize) to keep its memory statistics. The freelist
//     kind's chunk header answers both without a context argument
//     (mcx::Free, mcx::TryRealloc, mcx::GetChunkSize), so only xMalloc needs
//     to know the context. The pool kind could not serve here: its chunks
//     have no header.
//   - xMalloc, xRealloc and xSize get no user pointer from SQLite, so the
//     context of the current initialization is a file-level variable. SQLite's
//     allocator is process-wide anyway; there is one installed allocator.
//   - Nothing here may throw into SQLite's C frames: only the Try calls are
//     used, and a nullptr becomes SQLite's SQLITE_NOMEM.
//   - xInit and xShutdown bracket the context's life, so sqlite3_shutdown()
//     returns every block SQLite held, and each initialization starts from a
//     fresh context.

#include "examples/sqlite/sqlite_allocator.h"

#include <climits>
#include <cstddef>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "mcx/context/chunk.h"
#include "mcx/context/config.h"
#include "mcx/freelist/freelist.h"
#include "mcx/freelist/size_class.h"

namespace mcx {
namespace examples {
namespace {

// In checking builds the freelist puts a sentinel right after the requested
// bytes and GetChunkSize reports exactly the requested size; rounding up in
// xRoundup would then make xSize(xMalloc(xRoundup(n))) != xRoundup(n).
constexpr bool kExactChunkSizes = MCX_CHECKING != 0;

// Dedicated chunks end where the block source's block ends; all that is
// known in advance is the 8-byte granularity SQLite's own allocator uses.
constexpr int kLargeRounding = 8;

// The context of the current initialization (xInit to xShutdown).
Context* current_context = nullptr;
// The installed allocator, to refuse a second one.
const SqliteAllocator* installed = nullptr;

void* Malloc(int n) {
  if (n < 0) return nullptr;
  return current_context->TryAlloc(static_cast<size_t>(n));
}

void Free(void* p) { mcx::Free(p); }

// SQLite never calls xRealloc with a null pointer or a zero size
// (sqlite3Realloc turns those into malloc and free).
void* Realloc(void* p, int n) {
  if (n < 0) return nullptr;
  return mcx::TryRealloc(p, static_cast<size_t>(n));
}

int Size(void* p) {
  const size_t size = GetChunkSize(p);
  return size > static_cast<size_t>(INT_MAX) ? INT_MAX : static_cast<int>(size);
}

absl::Status SqliteStatus(int rc, const char* what) {
  return absl::InternalError(absl::StrCat(what, ": ", sqlite3_errstr(rc)));
}

}  // namespace

SqliteAllocator::SqliteAllocator(Context* parent, std::string name,
                                 const ContextOptions& options)
    : parent_(parent), name_(std::move(name)), options_(options) {
  methods_.xMalloc = &Malloc;
  methods_.xFree = &Free;
  methods_.xRealloc = &Realloc;
  methods_.xSize = &Size;
  methods_.xRoundup = &SqliteAllocator::Roundup;
  methods_.xInit = &SqliteAllocator::Init;
  methods_.xShutdown = &SqliteAllocator::Shutdown;
  methods_.pAppData = this;
  previous_ = sqlite3_mem_methods{};
}

// SqliteAllocator::Install
//
// The order is SQLite's: every sqlite3_config call must come before
// sqlite3_initialize. The first call doubles as the "not yet initialized"
// test, since sqlite3_config refuses (SQLITE_MISUSE) once SQLite is up, and
// nothing has been changed when it does.
absl::StatusOr<std::unique_ptr<SqliteAllocator>> SqliteAllocator::Install(
    Context* parent, const char* name, const ContextOptions& options) {
  if (installed != nullptr) {
    return absl::FailedPreconditionError("an mcx allocator is already installed in SQLite");
  }
  sqlite3_mem_methods previous{};
  if (sqlite3_config(SQLITE_CONFIG_GETMALLOC, &previous) != SQLITE_OK) {
    return absl::FailedPreconditionError(
        "SQLite is initialized; install its allocator before its first use or after "
        "sqlite3_shutdown()");
  }
  // A library built without threading support is single-threaded already
  // and refuses the option.
  if (sqlite3_threadsafe() != 0) {
    int rc = sqlite3_config(SQLITE_CONFIG_SINGLETHREAD);
    if (rc != SQLITE_OK) return SqliteStatus(rc, "sqlite3_config(SQLITE_CONFIG_SINGLETHREAD)");
  }
  std::unique_ptr<SqliteAllocator> self(new SqliteAllocator(parent, name, options));
  self->previous_ = previous;
  int rc = sqlite3_config(SQLITE_CONFIG_MALLOC, &self->methods_);
  if (rc != SQLITE_OK) return SqliteStatus(rc, "sqlite3_config(SQLITE_CONFIG_MALLOC)");
  installed = self.get();
  rc = sqlite3_initialize();
  if (rc != SQLITE_OK) {
    // The destructor shuts down what was started and puts `previous` back.
    self.reset();
    return SqliteStatus(rc, "sqlite3_initialize");
  }
  return self;
}

// SqliteAllocator::~SqliteAllocator
//
// Shutdown runs xShutdown, which destroys the context; only then may the
// old methods go back (sqlite3_config refuses while SQLite is initialized).
SqliteAllocator::~SqliteAllocator() {
  sqlite3_shutdown();
  sqlite3_config(SQLITE_CONFIG_MALLOC, &previous_);
  installed = nullptr;
}

Context* SqliteAllocator::context() const { return current_context; }

// SqliteAllocator::Roundup
//
// SQLite rounds every request with xRoundup before calling xMalloc or
// xRealloc and then charges xSize of the result to its statistics, so the
// answer should be what the freelist will really hand out: the size class.
// Asking for the class size then costs nothing extra, and a realloc within
// the class is skipped by SQLite altogether.
int SqliteAllocator::Roundup(int n) {
  if (kExactChunkSizes || n <= 0) return n;
  const size_t size = static_cast<size_t>(n);
  if (size <= kMaxSizeClassBytes) return static_cast<int>(SizeClassBytes(SizeClassOf(size)));
  if (n > INT_MAX - (kLargeRounding - 1)) return n;
  return (n + kLargeRounding - 1) & ~(kLargeRounding - 1);
}

int SqliteAllocator::Init(void* app_data) {
  const auto* self = static_cast<const SqliteAllocator*>(app_data);
  current_context =
      Context::TryCreate(self->parent_, self->name_.c_str(), FreelistKind(), self->options_);
  return current_context != nullptr ? SQLITE_OK : SQLITE_NOMEM;
}

void SqliteAllocator::Shutdown(void* /*app_data*/) {
  if (current_context != nullptr) current_context->Destroy();
  current_context = nullptr;
}

}  // namespace examples
}  // namespace mcx
