// Tutorial, part 2: the pool kind. Bump allocation out of blocks, no chunk
// header, the `current` block and its failure count (seen through
// mcx::InspectContext), the large list.

#include "docs/tutorial/check.h"
#include "mcx/context/context.h"
#include "mcx/context/inspect.h"
#include "mcx/context/stats.h"
#include "mcx/pool/pool.h"

int main() {
  // [START bump]
  mcx::Context* pool = mcx::Context::Create(nullptr, "pool", mcx::PoolKind());
  char* a = static_cast<char*>(pool->Alloc(10));  // aligned to 16
  char* b = static_cast<char*>(pool->Alloc(10));
  char* s = static_cast<char*>(pool->AllocBytes(3));  // not aligned at all
  char* t = static_cast<char*>(pool->AllocBytes(5));
  CHECK(pool->num_blocks() == 1);  // all four came out of the first block
  // [END bump]
  // Checking builds put a header and a sentinel around every pool chunk.
  if (!TUTORIAL_CHECKING_BUILD) {
    CHECK(b == a + 16);  // 10 bytes, padded to the next multiple of 16
    CHECK(t == s + 3);   // byte strings pack
  }

  // [START free]
  void* small = pool->Alloc(100);
  const size_t free_bytes = mcx::GetCounters(pool).free_bytes;
  pool->Free(small);  // a documented no-op: small chunks go at reset
  CHECK(mcx::GetCounters(pool).free_bytes == free_bytes);

  void* large = pool->Alloc(100 * 1024);  // above max_small (4096): the large list
  CHECK(pool->num_blocks() == 2);         // a block of its own
  pool->Free(large);                      // which goes back at once
  CHECK(pool->num_blocks() == 1);
  // [END free]

  // [START realloc]
  char* grow = static_cast<char*>(pool->Alloc(100));
  char* grown = static_cast<char*>(pool->Realloc(grow, 100, 200));  // old size given
  // [END realloc]
  if (!TUTORIAL_CHECKING_BUILD) CHECK(grown == grow);  // the last chunk bumped grows in place
  pool->Destroy();

  // [START current]
  mcx::PoolOptions options;
  options.initial_block_size = 1024;  // every block 1 KiB, as nginx's pools
  options.max_block_size = 1024;
  mcx::Context* p = mcx::Context::Create(nullptr, "nginx-style", mcx::PoolKind(options));
  p->Alloc(400);                               // the first block has bytes left over
  while (p->num_blocks() < 3) p->Alloc(400);   // two blocks appended
  mcx::ContextLayout layout = mcx::InspectContext(p);
  CHECK(layout.blocks[0].current && layout.blocks[0].Counter("failed") == 1);
  while (p->num_blocks() < 10) p->Alloc(400);  // seven more
  layout = mcx::InspectContext(p);
  CHECK(layout.blocks[0].Counter("failed") > 4 && !layout.blocks[0].current);  // skipped now
  p->Destroy();
  // [END current]
  return 0;
}
