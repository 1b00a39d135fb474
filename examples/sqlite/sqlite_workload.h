// File: examples/sqlite/sqlite_workload.h
//
// A small order-processing workload for SQLite, used by the demo, the tests
// and the benchmark: two tables, bulk inserts in transactions through
// prepared statements, an index, and aggregate, indexed and join queries.
// The data is generated from a fixed seed, and every query's answer is
// checked against the same figures computed in C++ while generating.
//
// Example:
//
//   sqlite3* db;
//   sqlite3_open(":memory:", &db);
//   WorkloadSummary summary;
//   absl::Status s = RunWorkload(db, WorkloadOptions(), &summary);
//   sqlite3_close(db);

#ifndef MCX_EXAMPLES_SQLITE_SQLITE_WORKLOAD_H_
#define MCX_EXAMPLES_SQLITE_SQLITE_WORKLOAD_H_

#include <cstdint>

#include "absl/status/status.h"
#include "sqlite3.h"

namespace mcx {
namespace examples {

struct WorkloadOptions {
  int customers = 1000;
  int orders = 100000;
  int orders_per_transaction = 10000;
  // Customers whose orders are looked up one by one through the index.
  int lookups = 200;
};

struct WorkloadSummary {
  int64_t orders = 0;
  int64_t total_cents = 0;
  int regions = 0;
  int queries_checked = 0;  // query results compared with the C++ figures
};

// RunWorkload()
//
// Creates the tables in `db` (which must not have them yet), fills them,
// indexes them and runs the queries. Returns kInternal naming the step for
// an SQLite error, kResourceExhausted if SQLite ran out of memory, and
// kDataLoss naming the query and both values if a result is wrong.
absl::Status RunWorkload(sqlite3* db, const WorkloadOptions& options,
                         WorkloadSummary* summary);

}  // namespace examples
}  // namespace mcx

#endif  // MCX_EXAMPLES_SQLITE_SQLITE_WORKLOAD_H_
