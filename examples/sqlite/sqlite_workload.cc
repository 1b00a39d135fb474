// The order workload. Why it looks like this:
//   - It is meant to make SQLite allocate the way applications make it
//     allocate: statements prepared once and reset per row, B-tree pages
//     growing in an in-memory database, a sort for CREATE INDEX, hash and
//     sorter memory for GROUP BY, and text values of varying length.
//   - Every figure the queries produce is also computed in C++ while the
//     rows are generated, so an allocator that corrupted or lost a byte shows
//     up as a wrong answer, not only as a crash.
//   - Amounts are integer cents, so sums are exact.

#include "examples/sqlite/sqlite_workload.h"

#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace mcx {
namespace examples {
namespace {

// Fixed, so every run builds the same data.
constexpr uint64_t kSeed = 0x6d63785f73716cULL;  // "mcx_sql"
constexpr int64_t kMinAmountCents = 100;
constexpr int64_t kAmountSpanCents = 100000;  // amounts: 1.00 .. 1000.99
// Every this-many-th order is a rush order (its note says so).
constexpr int kRushEvery = 10;
constexpr const char* kRegions[] = {"north", "south", "east", "west", "central"};
constexpr int kNumRegions = sizeof(kRegions) / sizeof(kRegions[0]);
// Spreads the looked-up customers over the whole id range (a prime).
constexpr int kLookupStride = 7919;

// splitmix64: small, fast, and the same on every platform.
uint64_t NextRandom(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

absl::Status SqliteError(sqlite3* db, int rc, const std::string& step) {
  std::string message = absl::StrCat(step, ": ", sqlite3_errmsg(db));
  if (rc == SQLITE_NOMEM) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

absl::Status Exec(sqlite3* db, const char* sql) {
  int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
  return rc == SQLITE_OK ? absl::OkStatus() : SqliteError(db, rc, sql);
}

// A prepared statement, finalized on every path.
class Statement {
 public:
  Statement() = default;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement() { sqlite3_finalize(stmt_); }

  absl::Status Prepare(sqlite3* db, const char* sql) {
    db_ = db;
    sql_ = sql;
    int rc = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
    return rc == SQLITE_OK ? absl::OkStatus() : SqliteError(db, rc, sql);
  }
  // Steps once; `*row` says whether a row came back.
  absl::Status Step(bool* row) {
    int rc = sqlite3_step(stmt_);
    *row = rc == SQLITE_ROW;
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? absl::OkStatus()
                                                 : SqliteError(db_, rc, sql_);
  }
  // Steps a statement that must return exactly one row.
  absl::Status StepOneRow() {
    bool row = false;
    absl::Status s = Step(&row);
    if (s.ok() && !row) s = absl::InternalError(absl::StrCat(sql_, ": no row"));
    return s;
  }
  absl::Status Reset() {
    sqlite3_clear_bindings(stmt_);
    int rc = sqlite3_reset(stmt_);
    return rc == SQLITE_OK ? absl::OkStatus() : SqliteError(db_, rc, sql_);
  }
  sqlite3_stmt* get() const { return stmt_; }
  int64_t Int(int column) const { return sqlite3_column_int64(stmt_, column); }
  std::string Text(int column) const {
    const unsigned char* text = sqlite3_column_text(stmt_, column);
    return text != nullptr ? reinterpret_cast<const char*>(text) : "";
  }

 private:
  sqlite3* db_ = nullptr;
  const char* sql_ = "";
  sqlite3_stmt* stmt_ = nullptr;
};

#define MCX_RETURN_IF_ERROR(expr)          \
  do {                                     \
    absl::Status status_ = (expr);         \
    if (!status_.ok()) return status_;     \
  } while (false)

// Compares one figure and counts the comparison.
class Checker {
 public:
  explicit Checker(WorkloadSummary* summary) : summary_(summary) {}
  absl::Status Equal(const std::string& what, int64_t got, int64_t want) {
    ++summary_->queries_checked;
    if (got == want) return absl::OkStatus();
    return absl::DataLossError(absl::StrFormat("%s: got %d, expected %d", what, got, want));
  }

 private:
  WorkloadSummary* summary_;
};

struct Totals {
  int64_t count = 0;
  int64_t cents = 0;
};

const char* RegionOf(int customer_id) { return kRegions[customer_id % kNumRegions]; }

absl::Status CreateAndFill(sqlite3* db, const WorkloadOptions& options,
                           std::vector<Totals>* by_customer, int64_t* max_cents,
                           int64_t* rush_orders) {
  MCX_RETURN_IF_ERROR(Exec(db,
                           "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                           "region TEXT NOT NULL)"));
  MCX_RETURN_IF_ERROR(Exec(db,
                           "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer_id INTEGER NOT "
                           "NULL, amount_cents INTEGER NOT NULL, note TEXT NOT NULL)"));

  Statement customer;
  MCX_RETURN_IF_ERROR(
      customer.Prepare(db, "INSERT INTO customers(id, name, region) VALUES (?1, ?2, ?3)"));
  MCX_RETURN_IF_ERROR(Exec(db, "BEGIN"));
  for (int id = 1; id <= options.customers; ++id) {
    char name[32];
    std::snprintf(name, sizeof(name), "customer-%05d", id);
    sqlite3_bind_int(customer.get(), 1, id);
    sqlite3_bind_text(customer.get(), 2, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(customer.get(), 3, RegionOf(id), -1, SQLITE_STATIC);
    bool row;
    MCX_RETURN_IF_ERROR(customer.Step(&row));
    MCX_RETURN_IF_ERROR(customer.Reset());
  }
  MCX_RETURN_IF_ERROR(Exec(db, "COMMIT"));

  Statement order;
  MCX_RETURN_IF_ERROR(order.Prepare(
      db, "INSERT INTO orders(id, customer_id, amount_cents, note) VALUES (?1, ?2, ?3, ?4)"));
  uint64_t random = kSeed;
  for (int id = 1; id <= options.orders; ++id) {
    if ((id - 1) % options.orders_per_transaction == 0) MCX_RETURN_IF_ERROR(Exec(db, "BEGIN"));
    const int customer_id = 1 + static_cast<int>(NextRandom(&random) %
                                                 static_cast<uint64_t>(options.customers));
    const int64_t cents =
        kMinAmountCents + static_cast<int64_t>(NextRandom(&random) % kAmountSpanCents);
    char note[48];
    const bool rush = id % kRushEvery == 0;
    std::snprintf(note, sizeof(note), "%sorder %d for customer %d", rush ? "rush " : "", id,
                  customer_id);
    sqlite3_bind_int(order.get(), 1, id);
    sqlite3_bind_int(order.get(), 2, customer_id);
    sqlite3_bind_int64(order.get(), 3, cents);
    sqlite3_bind_text(order.get(), 4, note, -1, SQLITE_TRANSIENT);
    bool row;
    MCX_RETURN_IF_ERROR(order.Step(&row));
    MCX_RETURN_IF_ERROR(order.Reset());
    Totals& t = (*by_customer)[static_cast<size_t>(customer_id)];
    ++t.count;
    t.cents += cents;
    if (cents > *max_cents) *max_cents = cents;
    if (rush) ++*rush_orders;
    if (id % options.orders_per_transaction == 0 || id == options.orders) {
      MCX_RETURN_IF_ERROR(Exec(db, "COMMIT"));
    }
  }
  return Exec(db, "CREATE INDEX orders_by_customer ON orders(customer_id)");
}

}  // namespace

absl::Status RunWorkload(sqlite3* db, const WorkloadOptions& options,
                         WorkloadSummary* summary) {
  if (options.customers < 1 || options.orders < 1 || options.orders_per_transaction < 1) {
    return absl::InvalidArgumentError("workload: customers, orders and batch must be positive");
  }
  *summary = WorkloadSummary();
  Checker check(summary);
  std::vector<Totals> by_customer(static_cast<size_t>(options.customers) + 1);
  int64_t max_cents = 0;
  int64_t rush_orders = 0;
  MCX_RETURN_IF_ERROR(CreateAndFill(db, options, &by_customer, &max_cents, &rush_orders));

  Totals all;
  std::map<std::string, Totals> by_region;  // ordered as ORDER BY region
  for (int id = 1; id <= options.customers; ++id) {
    const Totals& t = by_customer[static_cast<size_t>(id)];
    all.count += t.count;
    all.cents += t.cents;
    Totals& r = by_region[RegionOf(id)];
    r.count += t.count;
    r.cents += t.cents;
  }

  // Aggregates over the whole table.
  Statement totals;
  MCX_RETURN_IF_ERROR(totals.Prepare(
      db, "SELECT count(*), sum(amount_cents), max(amount_cents) FROM orders"));
  MCX_RETURN_IF_ERROR(totals.StepOneRow());
  MCX_RETURN_IF_ERROR(check.Equal("count(*)", totals.Int(0), all.count));
  MCX_RETURN_IF_ERROR(check.Equal("sum(amount_cents)", totals.Int(1), all.cents));
  MCX_RETURN_IF_ERROR(check.Equal("max(amount_cents)", totals.Int(2), max_cents));

  Statement rush;
  MCX_RETURN_IF_ERROR(rush.Prepare(db, "SELECT count(*) FROM orders WHERE note LIKE 'rush %'"));
  MCX_RETURN_IF_ERROR(rush.StepOneRow());
  MCX_RETURN_IF_ERROR(check.Equal("rush orders", rush.Int(0), rush_orders));

  // The join: orders per region through the customers table.
  Statement regions;
  MCX_RETURN_IF_ERROR(regions.Prepare(
      db,
      "SELECT c.region, count(*), sum(o.amount_cents) FROM orders AS o "
      "JOIN customers AS c ON c.id = o.customer_id GROUP BY c.region ORDER BY c.region"));
  auto expected = by_region.begin();
  for (;;) {
    bool row = false;
    MCX_RETURN_IF_ERROR(regions.Step(&row));
    if (!row) break;
    if (expected == by_region.end() || regions.Text(0) != expected->first) {
      return absl::DataLossError(absl::StrCat("join: unexpected region '", regions.Text(0), "'"));
    }
    MCX_RETURN_IF_ERROR(
        check.Equal(absl::StrCat("join count(", expected->first, ")"), regions.Int(1),
                    expected->second.count));
    MCX_RETURN_IF_ERROR(
        check.Equal(absl::StrCat("join sum(", expected->first, ")"), regions.Int(2),
                    expected->second.cents));
    ++summary->regions;
    ++expected;
  }
  MCX_RETURN_IF_ERROR(check.Equal("join regions", summary->regions,
                                  static_cast<int64_t>(by_region.size())));

  // Point lookups, which must go through the index.
  Statement plan;
  MCX_RETURN_IF_ERROR(plan.Prepare(
      db, "EXPLAIN QUERY PLAN SELECT count(*) FROM orders WHERE customer_id = 1"));
  MCX_RETURN_IF_ERROR(plan.StepOneRow());
  const std::string detail = plan.Text(3);
  MCX_RETURN_IF_ERROR(check.Equal(absl::StrCat("lookup uses the index (plan: ", detail, ")"),
                                  detail.find("orders_by_customer") != std::string::npos, 1));
  Statement lookup;
  MCX_RETURN_IF_ERROR(lookup.Prepare(
      db,
      "SELECT count(*), coalesce(sum(amount_cents), 0) FROM orders WHERE customer_id = ?1"));
  for (int i = 0; i < options.lookups; ++i) {
    const int id = 1 + (i * kLookupStride) % options.customers;
    sqlite3_bind_int(lookup.get(), 1, id);
    MCX_RETURN_IF_ERROR(lookup.StepOneRow());
    const Totals& t = by_customer[static_cast<size_t>(id)];
    MCX_RETURN_IF_ERROR(check.Equal(absl::StrCat("orders of customer ", id), lookup.Int(0), t.count));
    MCX_RETURN_IF_ERROR(check.Equal(absl::StrCat("spend of customer ", id), lookup.Int(1), t.cents));
    MCX_RETURN_IF_ERROR(lookup.Reset());
  }

  // The top spender: a GROUP BY over every customer, sorted.
  int best_id = 1;
  for (int id = 2; id <= options.customers; ++id) {
    if (by_customer[static_cast<size_t>(id)].cents > by_customer[static_cast<size_t>(best_id)].cents) {
      best_id = id;
    }
  }
  Statement top;
  MCX_RETURN_IF_ERROR(top.Prepare(
      db,
      "SELECT customer_id, sum(amount_cents) AS spent FROM orders GROUP BY customer_id "
      "ORDER BY spent DESC, customer_id LIMIT 1"));
  MCX_RETURN_IF_ERROR(top.StepOneRow());
  MCX_RETURN_IF_ERROR(check.Equal("top spender", top.Int(0), best_id));
  MCX_RETURN_IF_ERROR(check.Equal("top spend", top.Int(1),
                                  by_customer[static_cast<size_t>(best_id)].cents));

  summary->orders = all.count;
  summary->total_cents = all.cents;
  return absl::OkStatus();
}

#undef MCX_RETURN_IF_ERROR

}  // namespace examples
}  // namespace mcx
