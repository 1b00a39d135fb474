// Tutorial, part 13: a block source over memory of your own, as on an
// embedded target or in shared memory: buddy blocks out of a static array or
// any region, and contexts of every kind over it.
//
// With `--dot DIR` it also writes DIR/buddy-region.dot, a tree of contexts
// on the region drawn with its blocks (docs/pictures/render.sh).

#include <sys/mman.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>

#include "docs/tutorial/check.h"
#include "mcx/buddy/buddy_source.h"
#include "mcx/context/block_source.h"
#include "mcx/context/context.h"
#include "mcx/context/dot.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"

// [START define]
// 16 blocks of 64 KiB (1 MiB), split down to 256 bytes: a static array
// aligned to 64 KiB, its state in a second one, nothing run at startup.
MCX_BUDDY_SOURCE_DEFINE(firmware_heap, 256, 64 * 1024, 16);
// [END define]

namespace {

void WriteDot(const char* dir, mcx::Context* root) {
  mcx::DotOptions o;
  o.blocks = true;
  const std::string path = std::string(dir) + "/buddy-region.dot";
  std::FILE* f = std::fopen(path.c_str(), "w");
  CHECK(f != nullptr);
  std::fputs(mcx::DotReport(root, o).c_str(), f);
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  const char* dot_dir = argc == 3 && std::strcmp(argv[1], "--dot") == 0 ? argv[2] : nullptr;

  // [START default]
  // Before any context exists: every root context without a source of its
  // own now lives in the firmware heap.
  CHECK(mcx::SetDefaultBlockSource(&firmware_heap));
  mcx::Context* app = mcx::Context::Create(nullptr, "app", mcx::PoolKind());
  mcx::Context* config = app->CreateChild("config", mcx::FreelistKind());
  CHECK(firmware_heap.GetStats().used_blocks == 2);  // one first block each
  config->Strdup("sample_rate=100");
  // [END default]

  // [START blocks]
  mcx::Context* samples = app->CreateChild("samples", mcx::PoolKind());
  for (int i = 0; i < 80; ++i) samples->Alloc(300);
  // Every block a context got is a buddy block: a power of two, aligned to
  // its size (the array is aligned to 64 KiB).
  size_t in_use = 0;
  firmware_heap.ForEachBlock([&in_use](const void* block, size_t size, bool used) {
    CHECK((size & (size - 1)) == 0 && reinterpret_cast<uintptr_t>(block) % size == 0);
    if (used) in_use += size;
  });
  CHECK(in_use == firmware_heap.GetStats().used_bytes && in_use >= 80 * 300);
  // [END blocks]

  if (dot_dir != nullptr) WriteDot(dot_dir, app);

  // [START exhausted]
  // The region runs out: TryAlloc fails there, with the usual reason.
  mcx::PoolOptions big;
  big.max_block_size = 64 * 1024;  // no larger than the region's largest block
  mcx::Context* log = app->CreateChild("log", mcx::PoolKind(big));
  size_t logged = 0;
  while (log->TryAlloc(4000) != nullptr) logged += 4000;
  CHECK(log->last_failure() == mcx::Failure::kOutOfMemory);
  CHECK(logged > 400 * 1024);  // most of the 1 MiB
  log->Destroy();              // its blocks merge back with their buddies
  CHECK(firmware_heap.GetStats().largest_free_block == 64 * 1024);
  // [END exhausted]
  app->Destroy();
  CHECK(firmware_heap.GetStats().used_bytes == 0);

  // [START runtime]
  // Any region at run time: here pages from mmap (shared memory works the
  // same way). The source keeps its state in the region's last pages.
  const size_t bytes = 4 << 20;
  void* pages = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(pages != MAP_FAILED);
  mcx::BuddyOptions options;
  options.min_block = 4096;
  options.max_block = 1 << 20;
  options.split = mcx::BuddySplit::kQuad;  // Zephyr's quarters: 1 MiB, 256, 64, 16, 4 KiB
  {
    mcx::BuddyBlockSource region(pages, bytes, options);
    mcx::ContextOptions o;
    o.block_source = &region;
    mcx::Context* shared = mcx::Context::Create(nullptr, "shared", mcx::FreelistKind(), o);
    // The 8 KiB first block takes a 16 KiB quarter; a 100 KiB chunk, a block
    // of its own, a 256 KiB one: quarters waste more than halves.
    void* table = shared->Alloc(100 * 1024);
    CHECK(region.GetStats().used_bytes == 16 * 1024 + 256 * 1024);
    // Alignment beyond the region's (at most its largest block) is refused.
    CHECK(shared->TryAllocAligned(64, 2 << 20) == nullptr);
    shared->Free(table);
    shared->Destroy();
    CHECK(region.GetStats().used_bytes == 0);
  }
  munmap(pages, bytes);
  // [END runtime]
  return 0;
}
