// Tutorial, part 8: typed objects. New<T> constructs in a context and
// registers the destructor; reset runs it; Delete runs it early.

#include <cstring>
#include <string>
#include <utility>

#include "docs/tutorial/check.h"
#include "mcx/context/context.h"
#include "mcx/context/new.h"
#include "mcx/context/strings.h"
#include "mcx/pool/pool.h"

namespace {

// [START connection]
struct Connection {
  Connection(std::string host_name, int* open_count)
      : host(std::move(host_name)), open(open_count) {
    ++*open;
  }
  ~Connection() { --*open; }  // closes the socket, frees `host`'s heap buffer
  std::string host;
  int* open;
};
// [END connection]

struct Point {  // trivially destructible: nothing to register
  double x, y;
};

}  // namespace

int main() {
  // [START new]
  int open = 0;
  mcx::Context* query = mcx::Context::Create(nullptr, "query", mcx::PoolKind());
  auto* primary = mcx::New<Connection>(query, "db-primary.example.com", &open);
  auto* replica = mcx::New<Connection>(query, "db-replica.example.com", &open);
  auto* origin = mcx::New<Point>(query, Point{0, 0});
  CHECK(open == 2 && origin->x == 0 && primary->host != replica->host);
  mcx::Delete(query, replica);   // runs ~Connection now, and not again
  CHECK(open == 1);
  query->Reset();                // ~Connection for `primary`
  CHECK(open == 0);
  query->Destroy();
  // [END new]

  // [START array]
  mcx::Context* plan = mcx::Context::Create(nullptr, "plan", mcx::PoolKind());
  auto* columns = mcx::NewArray<std::string>(plan, 3, "unnamed");  // one cleanup for all 3
  auto* widths = mcx::NewArray<int>(plan, 3);                     // zeros, no cleanup
  columns[0] = "id";
  CHECK(columns[2] == "unnamed" && widths[2] == 0);
  plan->Destroy();  // ~string for columns[2], [1], [0]
  // [END array]

  // [START strings]
  mcx::Context* row = mcx::Context::Create(nullptr, "row", mcx::PoolKind());
  const char* table = "orders";
  char* message = mcx::Printf(row, "relation \"%s\" has %d rows", table, 1200);
  char* key = mcx::StrCat(row, "public.", table, "#", 17);
  char* word = mcx::Strndup(row, "SELECT * FROM orders", 6);
  CHECK(std::strcmp(message, "relation \"orders\" has 1200 rows") == 0);
  CHECK(std::strcmp(key, "public.orders#17") == 0 && std::strcmp(word, "SELECT") == 0);
  row->Destroy();  // the strings go with the row
  // [END strings]
  return 0;
}
