// Tutorial, part 4: the tree. Children, reset against destroy, what a reset
// keeps, reparenting.

#include <cstring>

#include "docs/tutorial/check.h"
#include "mcx/context/context.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"

int main() {
  // [START children]
  mcx::Context* top = mcx::Context::Create(nullptr, "top", mcx::PoolKind());
  mcx::Context* query = top->CreateChild("query", mcx::PoolKind());
  mcx::Context* row = query->CreateChild("row", mcx::PoolKind());
  mcx::Context* cache = top->CreateChild("cache", mcx::FreelistKind());
  CHECK(row->parent() == query);
  CHECK(top->first_child() == cache);           // newest child first
  CHECK(cache->next_sibling() == query);
  // [END children]

  // [START reset]
  CHECK(query->SetLimit(1 << 20).ok());
  for (int i = 0; i < 1000; ++i) query->Alloc(100);
  CHECK(query->num_blocks() > 1);
  query->Reset();                               // `row` is destroyed, memory released
  CHECK(query->first_child() == nullptr);
  CHECK(query->num_blocks() == 1);              // the first block stays
  CHECK(std::strcmp(query->name(), "query") == 0);
  CHECK(query->parent() == top && query->limit() == 1 << 20);
  query->Alloc(100);                            // and the context is ready for more
  // [END reset]

  // [START keep]
  for (int i = 0; i < 1000; ++i) query->Alloc(100);
  const size_t grown = query->bytes_in_blocks();
  query->Reset(mcx::ResetOptions::KeepBytes(grown));  // keep the blocks for next time
  CHECK(query->bytes_in_blocks() == grown);
  query->Reset(mcx::ResetOptions::ReleaseAll());      // give back all it can
  CHECK(query->num_blocks() == 1);
  // [END keep]

  // [START reparent]
  mcx::Context* result = query->CreateChild("result", mcx::FreelistKind());
  CHECK(result->SetParent(top).ok());          // outlives the query now
  CHECK(!top->SetParent(result).ok());         // a cycle is refused
  query->Destroy();                            // `result` is no longer in it
  CHECK(top->first_child() == result);
  top->Destroy();                              // everything left goes
  // [END reparent]
  return 0;
}
