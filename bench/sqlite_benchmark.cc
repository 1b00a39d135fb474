// SQLite with its memory in an mcx freelist context (examples/sqlite)
// against SQLite's default allocator (malloc), on the order workload of
// examples/sqlite/sqlite_workload.h: per iteration an in-memory database is
// opened, filled with the given number of orders in transactions through
// prepared statements, indexed, queried and checked, and closed.
//
// SQLite's allocator is process-wide and can only change while SQLite is
// shut down, so each benchmark configures SQLite before its loop and shuts
// it down after. Both run SQLite single-threaded (the mcx allocator needs
// it), so the only difference is the allocator.
//
// Run: ./mcx bazel run -c opt //bench:sqlite_benchmark

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "benchmark/benchmark.h"
#include "examples/sqlite/sqlite_allocator.h"
#include "examples/sqlite/sqlite_workload.h"
#include "sqlite3.h"

namespace {

using mcx::examples::SqliteAllocator;

void RunWorkloads(benchmark::State& state) {
  mcx::examples::WorkloadOptions options;
  options.orders = static_cast<int>(state.range(0));
  for (auto _ : state) {
    sqlite3* db = nullptr;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) {
      state.SkipWithError("sqlite3_open failed");
      sqlite3_close(db);
      break;
    }
    mcx::examples::WorkloadSummary summary;
    absl::Status s = mcx::examples::RunWorkload(db, options, &summary);
    sqlite3_close(db);
    if (!s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * options.orders);
}

void BM_SqliteWorkload_McxFreelist(benchmark::State& state) {
  absl::StatusOr<std::unique_ptr<SqliteAllocator>> allocator =
      SqliteAllocator::Install(nullptr, "sqlite");
  if (!allocator.ok()) {
    state.SkipWithError(allocator.status().ToString().c_str());
    return;
  }
  RunWorkloads(state);
  allocator->reset();  // sqlite3_shutdown, default allocator back
}
BENCHMARK(BM_SqliteWorkload_McxFreelist)->Arg(20000)->Arg(100000)->Unit(benchmark::kMillisecond);

void BM_SqliteWorkload_SqliteDefault(benchmark::State& state) {
  if (sqlite3_config(SQLITE_CONFIG_SINGLETHREAD) != SQLITE_OK ||
      sqlite3_initialize() != SQLITE_OK) {
    state.SkipWithError("could not configure SQLite");
    return;
  }
  RunWorkloads(state);
  sqlite3_shutdown();
}
BENCHMARK(BM_SqliteWorkload_SqliteDefault)->Arg(20000)->Arg(100000)->Unit(benchmark::kMillisecond);

}  // namespace
