// SQLite with all of its memory in an mcx context:
//
//   app (pool)            the application's own context
//   +-- sqlite (freelist) SQLite's allocator, from sqlite3_initialize to
//                         sqlite3_shutdown
//
// It runs the order workload (examples/sqlite/sqlite_workload.h: 100,000
// orders inserted in transactions through prepared statements, an index,
// aggregate, indexed and join queries) on an in-memory database, prints the
// stats report at the peak, and checks its own results: the exit status is 0
// only if every check holds.
//
// Run: ./mcx bazel run //examples/sqlite:sqlite_demo

#include <cinttypes>
#include <cstdio>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "examples/sqlite/sqlite_allocator.h"
#include "examples/sqlite/sqlite_workload.h"
#include "mcx/context/block_source.h"
#include "mcx/context/context.h"
#include "mcx/context/stats.h"
#include "mcx/pool/pool.h"
#include "sqlite3.h"

namespace {

int failures = 0;

void Expect(bool ok, const char* what) {
  std::printf("  [%s] %s\n", ok ? "ok" : "FAILED", what);
  if (!ok) ++failures;
}

// Counts the blocks handed out, to show that shutdown gives every one back.
class CountingSource : public mcx::BlockSource {
 public:
  mcx::Block Acquire(size_t min_size, size_t alignment) override {
    mcx::Block b = mcx::DefaultBlockSource()->Acquire(min_size, alignment);
    if (b.ptr != nullptr) ++live_;
    return b;
  }
  void Release(mcx::Block block) override {
    --live_;
    mcx::DefaultBlockSource()->Release(block);
  }
  mcx::Block Reallocate(mcx::Block block, size_t keep, size_t n, size_t alignment) override {
    return mcx::DefaultBlockSource()->Reallocate(block, keep, n, alignment);
  }
  long live() const { return live_; }

 private:
  long live_ = 0;
};

}  // namespace

int main() {
  using mcx::examples::SqliteAllocator;
  CountingSource source;
  mcx::ContextOptions app_options;
  app_options.block_source = &source;
  mcx::Context* app = mcx::Context::Create(nullptr, "app", mcx::PoolKind(), app_options);

  std::printf("== SQLite %s on an mcx freelist context ==\n", sqlite3_libversion());
  absl::StatusOr<std::unique_ptr<SqliteAllocator>> allocator =
      SqliteAllocator::Install(app, "sqlite");
  Expect(allocator.ok(), "mcx is installed as SQLite's allocator");
  if (!allocator.ok()) {
    std::printf("  %s\n", allocator.status().ToString().c_str());
    return 1;
  }
  mcx::Context* sqlite_context = (*allocator)->context();

  sqlite3* db = nullptr;
  int rc = sqlite3_open(":memory:", &db);
  Expect(rc == SQLITE_OK, "an in-memory database is open");
  if (rc != SQLITE_OK) return 1;

  mcx::examples::WorkloadOptions options;  // 100,000 orders, 1,000 customers
  mcx::examples::WorkloadSummary summary;
  absl::Status s = mcx::examples::RunWorkload(db, options, &summary);
  if (!s.ok()) std::printf("  workload: %s\n", s.ToString().c_str());
  Expect(s.ok(), "every query result matches the figures computed in C++");
  std::printf("  %" PRId64 " orders, %" PRId64 ".%02" PRId64 " in total, %d regions, %d results "
              "checked\n",
              summary.orders, summary.total_cents / 100, summary.total_cents % 100,
              summary.regions, summary.queries_checked);
  Expect(summary.orders == options.orders, "all 100000 orders were inserted");

  const int64_t used = sqlite3_memory_used();
  const mcx::ContextCounters counters = mcx::GetCounters(sqlite_context);
  std::printf("\n-- stats at the peak --\n%s", mcx::StatsReport(app).c_str());
  std::printf("  sqlite3_memory_used: %lld bytes (high water %lld)\n",
              static_cast<long long>(used), static_cast<long long>(sqlite3_memory_highwater(0)));
  Expect(used > 0 && static_cast<size_t>(used) <= counters.used_bytes(),
         "SQLite's count of its memory fits in what the context says is used");

  rc = sqlite3_close(db);
  Expect(rc == SQLITE_OK, "the database closed");
  Expect(sqlite3_memory_used() < used, "closing the database gave its memory back");

  allocator->reset();  // sqlite3_shutdown: xShutdown destroys the context
  std::printf("\n-- stats after sqlite3_shutdown --\n%s", mcx::StatsReport(app).c_str());
  Expect(app->first_child() == nullptr, "shutdown destroyed SQLite's context");
  Expect(source.live() == 1, "every block SQLite held went back (only app's own is left)");
  app->Destroy();
  Expect(source.live() == 0, "and app's block with it");

  if (failures == 0) {
    std::printf("\nsqlite_demo: all checks passed\n");
    return 0;
  }
  std::printf("\nsqlite_demo: %d check(s) FAILED\n", failures);
  return 1;
}
