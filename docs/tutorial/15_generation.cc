// Tutorial, part 14: the generation kind. A change queue whose entries die
// roughly in the order they were made: bumped into the newest block, freed
// one by one (mcx::Free works), blocks reused or released as they empty; and
// what a long-lived chunk costs.
//
// With --dot DIR it also writes the queue's context as Graphviz
// (docs/pictures/render.sh draws it).

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <string>

#include "docs/tutorial/check.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/dot.h"
#include "mcx/context/inspect.h"
#include "mcx/context/stats.h"
#include "mcx/generation/generation.h"

namespace {

// Direct builds give every chunk a block of its own: the block counts are
// checked elsewhere.
constexpr bool kBlocks = !MCX_DIRECT;

// Blocks of exactly the size asked for, for a picture that is the same on
// every run (the system allocator reports its own slack).
class ExactSource : public mcx::BlockSource {
 public:
  mcx::Block Acquire(size_t min_size, size_t alignment) override {
    void* p = std::aligned_alloc(alignment, (min_size + alignment - 1) & ~(alignment - 1));
    return p != nullptr ? mcx::Block{p, min_size} : mcx::Block{};
  }
  void Release(mcx::Block block) override { std::free(block.ptr); }
};

// [START change]
struct Change {
  uint64_t lsn;     // its place in the log
  uint32_t length;
  char data[];      // the changed bytes
};

Change* MakeChange(mcx::Context* queue, uint64_t lsn, const char* data, uint32_t length) {
  auto* c = static_cast<Change*>(queue->Alloc(sizeof(Change) + length));
  c->lsn = lsn;
  c->length = length;
  std::memcpy(c->data, data, length);
  return c;
}
// [END change]

}  // namespace

int main(int argc, char** argv) {
  const char* dot_dir = argc == 3 && std::strcmp(argv[1], "--dot") == 0 ? argv[2] : nullptr;

  // [START queue]
  mcx::Context* queue = mcx::CreateGenerationContext(nullptr, "changes");
  std::deque<Change*> pending;
  const char row[] = "UPDATE accounts SET balance = balance - 100 WHERE id = 42";
  size_t most_blocks = 0;
  for (uint64_t lsn = 0; lsn < 200000; ++lsn) {
    pending.push_back(MakeChange(queue, lsn, row, static_cast<uint32_t>(lsn % sizeof(row))));
    if (pending.size() > 1000) {  // the consumer applies the oldest change
      mcx::Free(pending.front());  // the header finds the context
      pending.pop_front();
    }
    most_blocks = most_blocks > queue->num_blocks() ? most_blocks : queue->num_blocks();
  }
  // 200,000 changes went through a handful of blocks: each block was reused
  // or released as its last change was applied.
  if (kBlocks) CHECK(most_blocks <= 8);
  // [END queue]

  // [START pinned]
  // A change that stays pins its whole block: the changes freed around it
  // are dead space until it goes too.
  Change* slow = pending.back();   // kept while everything else is applied
  pending.pop_back();
  for (Change* c : pending) mcx::Free(c);
  pending.clear();
  const mcx::ContextLayout layout = mcx::InspectContext(queue);
  const mcx::BlockInfo* pinned = layout.BlockContaining(slow);
  CHECK(pinned != nullptr && pinned->used_bytes > slow->length);
  mcx::Free(slow);
  queue->Destroy();
  // [END pinned]

  if (dot_dir != nullptr) {
    // A queue in mid-flight: the oldest block half drained, one in the
    // middle full, the newest being filled, and the spare block.
    static ExactSource source;
    mcx::ContextOptions co;
    co.block_source = &source;
    mcx::GenerationOptions small;
    small.initial_block_size = 1024;
    small.max_block_size = 1024;
    mcx::Context* ctx = mcx::CreateGenerationContext(nullptr, "changes (generation)", small, co);
    std::deque<void*> q;
    for (int i = 0; i < 60; ++i) {
      q.push_back(ctx->Alloc(40 + (i * 37) % 64));
      if (q.size() > 30) {
        ctx->Free(q.front());
        q.pop_front();
      }
    }
    mcx::DotOptions o;
    o.blocks = true;
    std::ofstream(std::string(dot_dir) + "/generation-blocks.dot") << mcx::DotReport(ctx, o);
    ctx->Destroy();
  }
  return 0;
}
