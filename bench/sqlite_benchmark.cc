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
//
// With --memory, no timing: the order workload (100,000 orders) runs once
// per allocator and database (in memory; a file in $TMPDIR), each in a
// forked child of a process that has allocated little, and one JSON line
// per case gives the child's peak resident bytes above what it held before
// SQLite started, what it held after the database was closed, and for mcx
// the context's bytes in blocks and in live chunks after the close.

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

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

// --- Memory ----------------------------------------------------------------------------

constexpr int kMemoryOrders = 100000;

// A line of /proc/self/status in bytes (VmRSS: now; VmHWM: the peak).
size_t StatusBytes(const char* field) {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return 0;
  char line[256];
  size_t kib = 0;
  const size_t len = std::strlen(field);
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::strncmp(line, field, len) == 0 && line[len] == ':') {
      kib = std::strtoull(line + len + 1, nullptr, 10);
      break;
    }
  }
  std::fclose(f);
  return kib * 1024;
}

// One case, in the calling (forked) process: returns its JSON line.
std::string MeasureCase(bool mcx, bool file) {
  const size_t before = StatusBytes("VmRSS");
  std::unique_ptr<SqliteAllocator> allocator;
  if (mcx) {
    absl::StatusOr<std::unique_ptr<SqliteAllocator>> installed =
        SqliteAllocator::Install(nullptr, "sqlite");
    if (!installed.ok()) return "{\"error\": \"install\"}\n";
    allocator = std::move(*installed);
  } else if (sqlite3_config(SQLITE_CONFIG_SINGLETHREAD) != SQLITE_OK) {
    return "{\"error\": \"config\"}\n";
  }
  if (sqlite3_initialize() != SQLITE_OK) return "{\"error\": \"initialize\"}\n";
  std::string path = ":memory:";
  if (file) {
    const char* tmp = std::getenv("TMPDIR");
    path = std::string(tmp != nullptr ? tmp : "/tmp") + "/mcx-sqlite-memory-" +
           std::to_string(getpid()) + ".db";
    std::remove(path.c_str());
  }
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) return "{\"error\": \"open\"}\n";
  mcx::examples::WorkloadOptions options;
  options.orders = kMemoryOrders;
  mcx::examples::WorkloadSummary summary;
  const absl::Status status = mcx::examples::RunWorkload(db, options, &summary);
  sqlite3_close(db);
  const size_t after_close = StatusBytes("VmRSS");
  const size_t peak = StatusBytes("VmHWM");
  size_t blocks = 0, live = 0;
  if (allocator != nullptr && allocator->context() != nullptr) {
    blocks = allocator->context()->bytes_in_blocks();
    live = allocator->context()->live_bytes();
  }
  if (file) std::remove(path.c_str());
  char line[512];
  const int len = std::snprintf(
      line, sizeof line,
      "{\"allocator\": \"%s\", \"database\": \"%s\", \"ok\": %s, "
      "\"peak_resident_mib\": %.1f, \"resident_after_close_mib\": %.1f, "
      "\"context_blocks_after_close_mib\": %.2f, \"context_live_after_close_kib\": %.1f}\n",
      mcx ? "mcx_freelist" : "glibc", file ? "file" : "memory", status.ok() ? "true" : "false",
      static_cast<double>(peak - before) / (1 << 20),
      static_cast<double>(after_close - before) / (1 << 20), static_cast<double>(blocks) / (1 << 20),
      static_cast<double>(live) / 1024);
  return std::string(line, static_cast<size_t>(len));
}

// Runs one case in a forked child and copies its line to stdout.
void InChild(bool mcx, bool file) {
  std::fflush(stdout);
  int fds[2];
  if (pipe(fds) != 0) return;
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    const std::string line = MeasureCase(mcx, file);
    if (write(fds[1], line.data(), line.size()) != static_cast<ssize_t>(line.size())) _exit(1);
    _exit(0);
  }
  close(fds[1]);
  char buf[512];
  ssize_t got;
  while ((got = read(fds[0], buf, sizeof buf)) > 0) std::fwrite(buf, 1, static_cast<size_t>(got), stdout);
  close(fds[0]);
  int wstatus = 0;
  waitpid(pid, &wstatus, 0);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--memory") == 0) {
    for (bool file : {false, true}) {
      for (bool mcx : {false, true}) InChild(mcx, file);
    }
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
