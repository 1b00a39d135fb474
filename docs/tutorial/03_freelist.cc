// Tutorial, part 3: the freelist kind. Size classes, the chunk header,
// freelists, dedicated blocks, and mcx::Free without a context.

#include "docs/tutorial/check.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/freelist/freelist.h"
#include "mcx/freelist/size_class.h"

#include <vector>

int main() {
  // [START classes]
  mcx::Context* cache = mcx::Context::Create(nullptr, "cache", mcx::FreelistKind());
  CHECK(mcx::SizeClassBytes(mcx::SizeClassOf(100)) == 104);  // 100 rounds up to 104
  void* p = cache->Alloc(100);
  CHECK(cache->ChunkSize(p) >= 100);
  cache->Free(p);                    // onto the freelist of its class
  void* q = cache->Alloc(97);        // the same class: the same chunk again
  CHECK(q == p);
  // [END classes]

  // [START no_context]
  CHECK(mcx::GetChunkContext(q) == cache);  // the header leads to the context
  q = mcx::Realloc(q, 400);                 // a bigger class: moved, bytes kept
  CHECK(mcx::GetChunkSize(q) >= 400);
  mcx::Free(q);                             // no context named
  // [END no_context]

  // [START dedicated]
  const size_t blocks = cache->num_blocks();
  void* big = cache->Alloc(100 * 1024);  // above chunk_limit (8200)
  CHECK(cache->num_blocks() == blocks + 1);
  big = mcx::Realloc(big, 200 * 1024);   // resized by the block source
  mcx::Free(big);                        // and given back at once
  CHECK(cache->num_blocks() == blocks);
  cache->Destroy();
  // [END dedicated]

  // [START follows]
  mcx::Context* heap = mcx::Context::Create(nullptr, "heap", mcx::FreelistKind());
  std::vector<void*> objects;
  for (int i = 0; i < 100000; ++i) objects.push_back(heap->Alloc(64));
  CHECK(heap->bytes_in_blocks() > 6 * 1024 * 1024);  // about 7 MB of blocks
  for (void* o : objects) heap->Free(o);             // the last free empties it:
  CHECK(heap->live_bytes() == 0);
  CHECK(heap->bytes_in_blocks() < 1024 * 1024);       // the blocks went back
  heap->Destroy();
  // [END follows]
  return 0;
}
