// Tutorial, part 6: limits bound a subtree's block bytes; a soft limit calls
// back before it is crossed; the reserve carries allocation through a
// failing block source.

#include <algorithm>

#include "docs/tutorial/check.h"
#include "mcx/context/block_source.h"
#include "mcx/context/context.h"
#include "mcx/context/pressure.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"

namespace {

// [START flaky]
// A block source that fails while `failing` is set: the machine is out of
// memory.
class FlakySource : public mcx::BlockSource {
 public:
  mcx::Block Acquire(size_t min_size, size_t alignment) override {
    if (failing) return mcx::Block{};
    return mcx::DefaultBlockSource()->Acquire(min_size, alignment);
  }
  void Release(mcx::Block block) override { mcx::DefaultBlockSource()->Release(block); }

  bool failing = false;
};
// [END flaky]

}  // namespace

int main() {
  // [START limit]
  mcx::ContextOptions options;
  options.limit = 256 * 1024;  // bytes in blocks, for the whole subtree
  mcx::Context* query = mcx::Context::Create(nullptr, "query", mcx::PoolKind(), options);
  mcx::Context* sort = query->CreateChild("sort", mcx::PoolKind());  // no limit of its own
  size_t got = 0;
  while (sort->TryAlloc(1000) != nullptr) got += 1000;
  CHECK(sort->last_failure() == mcx::Failure::kLimit);
  CHECK(got > 200 * 1000 && query->SubtreeBytes() <= 256 * 1024);  // most of it is data
  CHECK(sort->live_bytes() >= got && sort->live_bytes() == sort->peak_live_bytes());
  sort->Reset();                               // room again
  CHECK(sort->live_bytes() == 0 && sort->peak_live_bytes() >= got);  // the mark stays
  CHECK(sort->TryAlloc(1000) != nullptr);
  sort->ResetPeak();                           // a new mark from what is held now
  CHECK(sort->peak_live_bytes() == sort->live_bytes());
  query->Destroy();
  // [END limit]

  // [START soft_limit]
  struct Cache {
    mcx::Context* entries;
    int evictions = 0;
  };
  mcx::Context* session = mcx::Context::Create(nullptr, "session", mcx::PoolKind());
  Cache cache{session->CreateChild("plan cache", mcx::FreelistKind())};
  // Before a block would take the session past 256 KiB: evict, then go on.
  session->TrySetSoftLimit(
      256 * 1024,
      [](const mcx::PressureInfo& info) {
        auto* c = static_cast<Cache*>(info.arg);
        c->entries->Reset();  // the memory comes back before the block is taken
        ++c->evictions;
      },
      &cache);
  size_t peak = 0;
  for (int i = 0; i < 10000; ++i) {  // about 1 MB of plans through the cache
    cache.entries->Strdup("SELECT name, price FROM products WHERE category = $1 ORDER BY 2");
    peak = std::max(peak, session->SubtreeBytes());
  }
  CHECK(cache.evictions >= 3 && peak <= 256 * 1024);
  session->Destroy();
  // [END soft_limit]

  // [START reserve]
  FlakySource source;
  mcx::ContextOptions reserved;
  reserved.block_source = &source;
  reserved.reserve_blocks = 2;                 // acquired now, used only on failure
  reserved.reserve_block_size = 16 * 1024;
  mcx::Context* ctx = mcx::Context::Create(nullptr, "ctx", mcx::PoolKind(), reserved);
  source.failing = true;
  CHECK(ctx->TryAlloc(10 * 1024) != nullptr);  // a large chunk: a reserve block
  CHECK(ctx->TryAlloc(10 * 1024) != nullptr);  // the second one
  CHECK(ctx->reserve_uses() == 2 && ctx->reserve_blocks() == 0);
  CHECK(ctx->TryAlloc(10 * 1024) == nullptr);  // then the normal failure
  CHECK(ctx->last_failure() == mcx::Failure::kOutOfMemory);
  ctx->Reset();                                // blocks coming back refill it
  CHECK(ctx->reserve_blocks() == 2);
  source.failing = false;
  ctx->Destroy();
  // [END reserve]
  return 0;
}
