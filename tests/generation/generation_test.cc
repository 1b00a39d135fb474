// The generation kind: conformance, then what is its own: chunk headers and
// mcx::Free, allocation always in the newest block, blocks counted empty and
// then reused or released (the current block, the first block, the one
// spare), dedicated chunks, realloc in place, misuse, and a queue that runs
// for ever in a bounded number of blocks.

#include "mcx/generation/generation.h"

#include <cstring>
#include <deque>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/chunk_header.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/inspect.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/pressure.h"
#include "mcx/context/stats.h"
#include "mcx/testing/live_count.h"
#include "mcx/testing/kind_conformance.h"
#include "mcx/testing/sweep.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

using test::CountingBlockSource;
using test::Fill;
using test::Holds;

constexpr bool kDirect = internal::kDirect;
constexpr bool kChecking = internal::kChecking;
constexpr bool kTracked = internal::kChecking || internal::kAddressSanitizer || internal::kValgrind;

struct GenerationTraits {
  static KindSpec Spec() { return GenerationKind(); }
  static constexpr bool kFreeReleasesSmall = true;
  static constexpr bool kUnsizedRealloc = true;
  static constexpr bool kContextFreeCalls = true;  // chunk headers
};

// Small blocks and a low chunk limit: block changes and dedicated chunks all
// the time. (Without the spare block, a churn acquires a block whenever the
// current one fills, which the suite rightly refuses: the kind and model
// tests cover that setting.)
struct SmallGenerationTraits {
  static KindSpec Spec() {
    GenerationOptions o;
    o.initial_block_size = 1024;
    o.max_block_size = 4096;
    o.chunk_limit = 512;
    return GenerationKind(o);
  }
  static constexpr bool kFreeReleasesSmall = true;
  static constexpr bool kUnsizedRealloc = true;
  static constexpr bool kContextFreeCalls = true;  // chunk headers
};

}  // namespace

namespace test {
INSTANTIATE_TYPED_TEST_SUITE_P(Generation, KindConformanceTest, GenerationTraits);
INSTANTIATE_TYPED_TEST_SUITE_P(SmallGeneration, KindConformanceTest, SmallGenerationTraits);
}  // namespace test

namespace {

// A soft limit's callback runs when a block would cross it, with the
// kind's call failed and nothing changed: a queue that drops its oldest
// chunks there keeps within the limit, and every chunk it keeps is intact.
TEST(GenerationPressureTest, CallbackMayFreeTheQueue) {
  if (kDirect) GTEST_SKIP() << "every chunk is a block of its own in direct mode";
  test::ExactBlockSource source;  // sizes as asked: the bound below is exact
  ContextOptions co;
  co.block_source = &source;
  GenerationOptions o;
  o.initial_block_size = 1024;
  o.max_block_size = 1024;
  o.keep_free_block = false;
  Context* queue = CreateGenerationContext(nullptr, "queue", o, co);
  struct Queue {
    std::deque<void*> chunks;
    int calls = 0;
  } q;
  ASSERT_EQ(queue->TrySetSoftLimit(8 * 1024,
                                   [](const PressureInfo& info) {
                                     auto* q = static_cast<Queue*>(info.arg);
                                     ++q->calls;
                                     // Drop the older half: whole blocks empty.
                                     for (size_t n = q->chunks.size() / 2; n > 0; --n) {
                                       mcx::Free(q->chunks.front());
                                       q->chunks.pop_front();
                                     }
                                   },
                                   &q),
            Failure::kNone);
  for (uint32_t i = 0; i < 2000; ++i) {
    void* p = queue->Alloc(48);
    test::Fill(p, 48, i);
    q.chunks.push_back(p);
  }
  EXPECT_GT(q.calls, 0);
  EXPECT_LE(queue->bytes_in_blocks(), 8u * 1024 + 1024 + 64);
  for (size_t k = 0; k < q.chunks.size(); ++k) {
    ASSERT_TRUE(test::Holds(q.chunks[k], 48, static_cast<uint32_t>(2000 - q.chunks.size() + k)));
  }
  std::string error;
  EXPECT_TRUE(queue->Check(&error)) << error;
  queue->Destroy();
  EXPECT_EQ(source.live(), 0);
}

// Fails every block acquisition of a change queue's day in turn: its first
// block (a child created in the workload), new blocks as the queue moves,
// dedicated chunks and one that moves, and blocks after a reset that kept
// some. No spare block, so that emptied blocks go back and are acquired
// again.
TEST(GenerationSweepTest, EveryFailedAcquisitionIsClean) {
  GenerationOptions o;
  o.initial_block_size = 1024;
  o.max_block_size = 4096;
  o.chunk_limit = 512;
  o.keep_free_block = false;
  const int acquisitions = test::SweepFailures(GenerationKind(o), [o](Context* top) {
    Context* queue = top->CreateChild("changes", GenerationKind(o));
    std::deque<void*> live;
    for (int i = 0; i < 400; ++i) {
      live.push_back(queue->Alloc(i % 30 == 0 ? 2000 : 40 + (i * 37) % 200));
      if (live.size() > 40) {
        mcx::Free(live.front());
        live.pop_front();
      }
    }
    void* grown = queue->Alloc(10);
    for (size_t size = 100; size < 100000; size *= 3) grown = queue->Realloc(grown, size);
    queue->Reset(ResetOptions::KeepBytes(4096));
    for (int i = 0; i < 100; ++i) queue->Alloc(100);
  });
  EXPECT_GT(acquisitions, 20) << "the workload should acquire many blocks";
}

std::vector<std::string>* reports = nullptr;
void Record(const char* message) { reports->push_back(message); }

class GenerationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    reports = &seen_;
    previous_ = SetMisuseHandler(&Record);
  }
  void TearDown() override {
    SetMisuseHandler(previous_);
    reports = nullptr;
    EXPECT_EQ(source_.live_blocks(), 0) << "a test leaked a context";
  }
  Context* Make(const GenerationOptions& o = GenerationOptions(), const char* name = "gen") {
    ContextOptions co;
    co.block_source = &source_;
    return CreateGenerationContext(nullptr, name, o, co);
  }
  static void ExpectConsistent(const Context* ctx) {
    std::string error;
    EXPECT_TRUE(ctx->Check(&error)) << error;
  }
  std::string TakeOne() {
    EXPECT_EQ(seen_.size(), 1u) << (seen_.empty() ? std::string("no report") : seen_.back());
    std::string last = seen_.empty() ? std::string() : seen_.back();
    seen_.clear();
    return last;
  }

  CountingBlockSource source_;
  std::vector<std::string> seen_;
  MisuseHandler previous_ = nullptr;
};

// With initial_block_size 0 the tree sizes the first block, as for the
// other kinds: the default for a root, small for a child, what an outgrown
// sibling needed for later children; later blocks double from the first.
TEST_F(GenerationTest, FirstBlocksAreLearnedFromSiblings) {
  if (kDirect) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  test::ExactBlockSource exact_source;  // sizes as asked: no slack to account for
  ContextOptions co;
  co.block_source = &exact_source;
  Context* root = CreateGenerationContext(nullptr, "root", GenerationOptions(), co);
  EXPECT_EQ(root->first_block_size(), kDefaultFirstBlockSize);
  Context* first = root->CreateChild("first", GenerationKind());
  const size_t small = first->first_block_size();
  EXPECT_GE(small, first->header_bytes() + kSmallFirstBlockRoom);
  EXPECT_LT(small, 1024u);
  first->Alloc(32);
  EXPECT_EQ(first->num_blocks(), 1u);
  EXPECT_EQ(root->CreateChild("second", GenerationKind())->first_block_size(), small);
  size_t live = 0;
  while (first->num_blocks() == 1) {
    live = first->live_bytes();
    first->Alloc(64);
  }
  Context* third = root->CreateChild("third", GenerationKind());
  // At least its header, its live bytes and the request, in 64-byte units
  // (the generation kind counts its whole first block and the chunk with
  // its header); not a multiple of its block.
  EXPECT_GE(third->first_block_size(), (first->header_bytes() + live + 64 + 63) / 64 * 64);
  EXPECT_GT(third->first_block_size(), small);
  EXPECT_LT(third->first_block_size(), 2 * small);
  // An explicit size is kept.
  GenerationOptions fixed;
  fixed.initial_block_size = 4096;
  Context* exact = root->CreateChild("exact", GenerationKind(fixed));
  EXPECT_EQ(exact->first_block_size(), 4096u);
  ExpectConsistent(first);
  root->Destroy();
  EXPECT_EQ(exact_source.live(), 0);
}

// An 8-byte header (release builds): chunks lie back to back, header and
// chunk a multiple of 16; above 4080 bytes, 24 bytes before the chunk.
// live_bytes() counts each live chunk's usable bytes (at least what was
// asked for), against a model over random allocations, frees in roughly
// the order of birth, reallocs, resets and ResetPeak; the peak is exact.
TEST_F(GenerationTest, LiveBytesFollowTheChunksAgainstAModel) {
  GenerationOptions o;
  o.chunk_limit = 2048;
  Context* ctx = Make(o);
  std::mt19937 rng(20261206);
  struct Counted {
    size_t bytes;
    bool dedicated;
  };
  std::map<void*, Counted> counted;
  std::deque<void*> order;  // birth order, for mostly-FIFO frees
  test::LiveCount model;
  auto size_of = [&] { return rng() % 16 == 0 ? 2049 + rng() % 10000 : 1 + rng() % 400; };
  auto pick = [&] {
    // Mostly the oldest, sometimes any.
    size_t i = rng() % 4 == 0 ? rng() % order.size() : 0;
    void* p = order[i];
    order.erase(order.begin() + static_cast<long>(i));
    return p;
  };
  for (int step = 0; step < 20000; ++step) {
    const unsigned op = rng() % 100;
    const size_t before = ctx->live_bytes();
    if (op < 48 || order.empty()) {
      const size_t size = size_of();
      void* p = ctx->Alloc(size);
      const size_t got = ctx->live_bytes() - before;
      EXPECT_GE(got, size);
      counted[p] = Counted{got, kDirectBuild || size > o.chunk_limit};
      order.push_back(p);
      model.Add(got);
    } else if (op < 90) {
      void* p = pick();
      ctx->Free(p);
      model.Remove(counted[p].bytes);
      counted.erase(p);
    } else if (op < 98) {
      void* p = pick();
      const Counted old = counted[p];
      counted.erase(p);
      const size_t size = size_of();
      void* q = ctx->Realloc(p, size);
      const size_t got = ctx->live_bytes() + old.bytes - before;
      EXPECT_GE(got, size);
      // A move into a new chunk holds both for a moment; a dedicated
      // block resized by its source does not, and stays dedicated at any
      // size, whether the source moved it (a block cache moves a growth
      // into a kept block) or not.
      if (q != p && !old.dedicated) model.HeldBoth(before, got);
      counted[q] = Counted{got, kDirectBuild || old.dedicated || size > o.chunk_limit};
      order.push_back(q);
      model.Remove(old.bytes);
      model.Add(got);
    } else if (op < 99) {
      ctx->Reset();
      counted.clear();
      order.clear();
      model.Clear();
    } else {
      ctx->ResetPeak();
      model.ResetPeak();
    }
    ASSERT_TRUE(model.Matches(ctx)) << "step " << step;
  }
  ctx->Destroy();
}

TEST_F(GenerationTest, ChunksHaveAnEightByteHeader) {
  if (kDirect) GTEST_SKIP() << "every chunk a dedicated block in direct mode";
  Context* ctx = Make();
  char* a = static_cast<char*>(ctx->Alloc(40));
  char* b = static_cast<char*>(ctx->Alloc(40));
  char* c = static_cast<char*>(ctx->Alloc(5000));
  char* d = static_cast<char*>(ctx->Alloc(10));
  if (!kTracked) {
    EXPECT_EQ(b - a, 48);     // 40 + 8
    EXPECT_EQ(c - b, 48 + 16);  // the next one has a 24-byte prefix
    EXPECT_EQ(ctx->ChunkSize(a), 40u);
    EXPECT_EQ(ctx->ChunkSize(c), 5000u);      // 5000 + 24, a multiple of 16, less the prefix
    EXPECT_EQ(d - c, 5008);
  } else {
    EXPECT_EQ(ctx->ChunkSize(a), 40u);  // exactly what was asked
  }
  const uint64_t h = ReadChunkHeader(a);
  EXPECT_EQ(ChunkHeaderKind(h), kChunkKindGeneration);
  EXPECT_TRUE(ChunkHeaderMagicOk(h));
  ctx->Destroy();
}

// The header leads to the context: mcx::Free and friends work.
TEST_F(GenerationTest, ContextFreeOperations) {
  Context* ctx = Make();
  void* p = ctx->Alloc(100);
  Fill(p, 100, 7);
  EXPECT_EQ(GetChunkContext(p), ctx);
  EXPECT_GE(GetChunkSize(p), 100u);
  p = mcx::Realloc(p, 3000);
  EXPECT_TRUE(Holds(p, 100, 7));
  mcx::Free(p);
  void* big = ctx->Alloc(1 << 20);  // above chunk_limit
  EXPECT_EQ(GetChunkContext(big), ctx);
  mcx::Free(big);
  void* aligned = ctx->AllocAligned(64, 256);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(aligned) % 256, 0u);
  EXPECT_EQ(GetChunkContext(aligned), ctx);
  mcx::Free(aligned);
  ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_TRUE(seen_.empty());
}

// generation.c's rule: a new chunk always goes to the newest block, never
// into the space of freed chunks of an older block.
TEST_F(GenerationTest, AllocationGoesToTheNewestBlock) {
  if (kDirect) GTEST_SKIP() << "every chunk a dedicated block in direct mode";
  GenerationOptions o;
  o.initial_block_size = 4096;
  o.max_block_size = 4096;
  Context* ctx = Make(o);
  std::vector<char*> chunks;
  while (ctx->num_blocks() < 3) chunks.push_back(static_cast<char*>(ctx->Alloc(100)));
  char* newest = chunks.back();
  ctx->Free(chunks[1]);  // a hole in the first block: not reused
  char* next = static_cast<char*>(ctx->Alloc(100));
  EXPECT_GT(next, newest - 4096);
  EXPECT_NE(next, chunks[1]);
  for (void* p : chunks) {
    if (p != chunks[1]) ctx->Free(p);
  }
  ctx->Free(next);
  ExpectConsistent(ctx);
  ctx->Destroy();
}

// A block whose chunks are all freed: the first one kept and emptied, one
// other kept as the spare, the others released; the spare and the emptied
// first block serve the next blocks before the source is asked.
TEST_F(GenerationTest, EmptiedBlocksAreReusedOrReleased) {
  if (kDirect) GTEST_SKIP() << "every chunk a dedicated block in direct mode";
  GenerationOptions o;
  o.initial_block_size = 4096;
  o.max_block_size = 4096;
  Context* ctx = Make(o);
  std::vector<void*> chunks;
  while (ctx->num_blocks() < 5) chunks.push_back(ctx->Alloc(200));
  void* last = chunks.back();
  chunks.pop_back();  // keep the current block alive
  for (void* p : chunks) ctx->Free(p);
  // Blocks 1..3 emptied: the first is kept, one becomes the spare, one goes.
  EXPECT_EQ(ctx->num_blocks(), 3u);
  ExpectConsistent(ctx);
  const int64_t acquires = source_.acquires();
  // Two blocks' worth: the spare, then the emptied first block.
  for (int i = 0; i < 2 * 4096 / 216 - 4; ++i) ctx->Alloc(200);
  EXPECT_EQ(source_.acquires(), acquires);
  ctx->Free(last);
  ExpectConsistent(ctx);
  ctx->Destroy();
}

// A FIFO queue runs for ever in a bounded number of blocks, acquiring none
// in steady state: blocks empty in order and the spare is reused.
TEST_F(GenerationTest, QueueCyclesThroughItsBlocks) {
  Context* ctx = Make();
  std::deque<std::pair<void*, uint32_t>> queue;
  uint32_t seed = 1;
  size_t max_blocks = 0;
  int64_t acquires = 0;
  for (int step = 0; step < 200000; ++step) {
    const size_t size = 16 + (seed * 2654435761u) % 1009;
    void* p = ctx->Alloc(size);
    Fill(p, 16, seed);
    queue.emplace_back(p, seed++);
    if (queue.size() > 500) {
      ASSERT_TRUE(Holds(queue.front().first, 16, queue.front().second));
      ctx->Free(queue.front().first);
      queue.pop_front();
    }
    if (step == 100000) acquires = source_.acquires();
    if (step > 100000) max_blocks = std::max<size_t>(max_blocks, ctx->num_blocks());
  }
  if (!kDirect) {
    EXPECT_EQ(source_.acquires(), acquires) << "steady state: no block acquired";
    EXPECT_LE(max_blocks, 6u);
  }
  ExpectConsistent(ctx);
  ctx->Destroy();
}

// A long-lived chunk pins its whole block: the block stays while it lives.
TEST_F(GenerationTest, ALongLivedChunkPinsItsBlock) {
  if (kDirect) GTEST_SKIP() << "every chunk a dedicated block in direct mode";
  GenerationOptions o;
  o.initial_block_size = 4096;
  o.max_block_size = 4096;
  Context* ctx = Make(o);
  std::vector<void*> chunks;
  while (ctx->num_blocks() < 3) chunks.push_back(ctx->Alloc(300));
  void* pinned = chunks[chunks.size() - 2];  // the last of the second block
  for (void* p : chunks) {
    if (p != pinned) ctx->Free(p);
  }
  const ContextLayout layout = InspectContext(ctx);
  const BlockInfo* holder = layout.BlockContaining(pinned);
  ASSERT_NE(holder, nullptr);
  EXPECT_EQ(holder->role, BlockRole::kNormal);
  EXPECT_GT(holder->used_bytes, 300u);  // the dead chunks before it count as used
  ctx->Free(pinned);
  ExpectConsistent(ctx);
  ctx->Destroy();
}

// Realloc stays in place while the new size fits the chunk.
TEST_F(GenerationTest, ReallocInPlaceWhenItFits) {
  Context* ctx = Make();
  char* p = static_cast<char*>(ctx->Alloc(20));
  Fill(p, 20, 3);
  const size_t usable = ctx->ChunkSize(p);
  if (!kTracked) {
    EXPECT_EQ(ctx->Realloc(p, 24), p);  // 20 + 8 rounds to 32: 24 usable
    EXPECT_EQ(usable, 24u);
  }
  if (!kDirect) {
    EXPECT_EQ(ctx->Realloc(p, 8), p);  // shrinking always fits
  }
  char* q = static_cast<char*>(ctx->Realloc(p, 200));
  if (!kDirect) {
    EXPECT_NE(q, p);  // direct: the source may grow the block in place
  }
  EXPECT_TRUE(Holds(q, 8, 3));
  ctx->Free(q);
  ExpectConsistent(ctx);
  ctx->Destroy();
}

// Dedicated chunks (above chunk_limit) are a block each, given back at once,
// and resized by the source.
TEST_F(GenerationTest, DedicatedChunks) {
  GenerationOptions o;
  o.chunk_limit = 1000;
  Context* ctx = Make(o);
  const size_t blocks = ctx->num_blocks();
  void* big = ctx->Alloc(5000);
  EXPECT_EQ(ctx->num_blocks(), blocks + 1);
  Fill(big, 5000, 1);
  big = ctx->Realloc(big, 50000);
  EXPECT_TRUE(Holds(big, 5000, 1));
  EXPECT_EQ(ctx->num_blocks(), blocks + 1);
  ctx->Free(big);
  EXPECT_EQ(ctx->num_blocks(), blocks);
  ExpectConsistent(ctx);
  ctx->Destroy();
}

// Misuse: a double free (the header's free bit, every build), a chunk of
// another context, a chunk of another kind.
TEST_F(GenerationTest, MisuseIsReported) {
  Context* ctx = Make(GenerationOptions(), "victim");
  Context* other = Make(GenerationOptions(), "other");
  void* keep = ctx->Alloc(32);
  void* p = ctx->Alloc(32);
  ctx->Free(p);
  if (!kDirect) {
    ctx->Free(p);
    EXPECT_NE(TakeOne().find("double free of chunk"), std::string::npos);
    mcx::Free(p);
    EXPECT_NE(TakeOne().find("already freed"), std::string::npos);
  }
  void* theirs = other->Alloc(32);
  ctx->Free(theirs);
  EXPECT_NE(TakeOne().find(kDirect ? "not a live dedicated chunk" : "belongs to context 'other'"),
            std::string::npos);
  alignas(16) unsigned char buffer[64] = {};
  ctx->Free(buffer + 16);
  EXPECT_NE(TakeOne().find("not a chunk allocated by mcx"), std::string::npos);
  other->Free(theirs);
  ctx->Free(keep);
  ExpectConsistent(ctx);
  ExpectConsistent(other);
  other->Destroy();
  ctx->Destroy();
}

// Checking builds: a write past a chunk is found at its free.
TEST_F(GenerationTest, CheckingBuildsFindOverruns) {
  if (!kChecking || internal::kAddressSanitizer) GTEST_SKIP() << "needs --config=checking, no ASan";
  Context* ctx = Make();
  char* p = static_cast<char*>(ctx->Alloc(20));
  p[20] = 'x';
  ctx->Free(p);
  EXPECT_NE(TakeOne().find("sentinel"), std::string::npos);
  p[20] = static_cast<char>(0x7E);
  ctx->Free(p);
  ctx->Destroy();
}

// Reset: the first block is emptied, kept blocks wait as spares.
TEST_F(GenerationTest, ResetKeepsBlocksPerOptions) {
  if (kDirect) GTEST_SKIP() << "every chunk a dedicated block in direct mode";
  Context* ctx = Make();
  for (int i = 0; i < 2000; ++i) ctx->Alloc(100 + i % 300);
  const size_t blocks = ctx->num_blocks();
  ctx->Reset(ResetOptions::KeepBytes(ctx->bytes_in_blocks()));
  EXPECT_EQ(ctx->num_blocks(), blocks);
  ExpectConsistent(ctx);
  const int64_t acquires = source_.acquires();
  for (int i = 0; i < 1000; ++i) ctx->Alloc(100);
  EXPECT_EQ(source_.acquires(), acquires);
  ctx->Reset();
  EXPECT_EQ(ctx->num_blocks(), 1u);
  ExpectConsistent(ctx);
  ctx->Destroy();
}

// Inspect: blocks newest first, the current one marked; dead chunks used.
TEST_F(GenerationTest, InspectDescribesBlocks) {
  if (kDirect) GTEST_SKIP() << "every chunk a dedicated block in direct mode";
  Context* ctx = Make();
  std::vector<void*> chunks;
  for (int i = 0; i < 300; ++i) chunks.push_back(ctx->Alloc(64));
  for (int i = 0; i < 100; ++i) ctx->Free(chunks[static_cast<size_t>(i)]);
  const ContextLayout layout = InspectContext(ctx);
  ASSERT_TRUE(layout.has_detail);
  EXPECT_EQ(layout.total_bytes(), ctx->bytes_in_blocks());
  EXPECT_EQ(layout.free_bytes(), GetCounters(ctx).free_bytes);
  EXPECT_EQ(layout.blocks[0].role, BlockRole::kFirst);
  size_t current = 0;
  for (const BlockInfo& b : layout.blocks) {
    current += b.current ? 1 : 0;
    EXPECT_EQ(b.header_bytes + b.used_bytes + b.free_bytes + b.freelist_bytes, b.size);
  }
  EXPECT_EQ(current, 1u);
  EXPECT_TRUE(layout.size_classes.empty());
  ctx->Destroy();
}

// Direct mode: every chunk a dedicated block.
TEST_F(GenerationTest, DirectModeGivesEachChunkABlock) {
  if (!kDirect) GTEST_SKIP() << "needs --config=direct";
  Context* ctx = Make();
  void* a = ctx->Alloc(10);
  void* b = ctx->Alloc(10);
  EXPECT_EQ(ctx->num_blocks(), 3u);
  ctx->Free(a);
  mcx::Free(b);
  EXPECT_EQ(ctx->num_blocks(), 1u);
  ctx->Destroy();
}

// Invalid options are refused at creation.
TEST_F(GenerationTest, InvalidOptionsAreRefused) {
  GenerationOptions o;
  o.max_block_size = kMaxGenerationBlockSize * 2;
  ContextOptions co;
  co.block_source = &source_;
  EXPECT_EQ(Context::TryCreate(nullptr, "bad", GenerationKind(o), co), nullptr);
  o = GenerationOptions();
  o.initial_block_size = kMaxGenerationBlockSize * 2;
  EXPECT_EQ(Context::TryCreate(nullptr, "bad", GenerationKind(o), co), nullptr);
  o = GenerationOptions();
  o.chunk_limit = kMaxGenerationBlockSize;
  EXPECT_EQ(Context::TryCreate(nullptr, "bad", GenerationKind(o), co), nullptr);
  // A chunk_limit that the largest block cannot hold: such chunks would
  // each take a block above max_block_size.
  o = GenerationOptions();
  o.max_block_size = 64 * 1024;
  o.chunk_limit = 1 << 20;
  EXPECT_EQ(Context::TryCreate(nullptr, "bad", GenerationKind(o), co), nullptr);
  o.chunk_limit = 64 * 1024;
  EXPECT_EQ(Context::TryCreate(nullptr, "bad", GenerationKind(o), co), nullptr);
  // What each refusal is called (generation.h), recorded on the parent: a
  // bad option kBadArgument; a first block no source can give, kBadSize,
  // as for every kind.
  Context* parent = Context::Create(nullptr, "parent", GenerationKind(), co);
  o = GenerationOptions();
  o.max_block_size = kMaxGenerationBlockSize * 2;
  EXPECT_EQ(Context::TryCreate(parent, "bad", GenerationKind(o)), nullptr);
  EXPECT_EQ(parent->last_failure(), Failure::kBadArgument);
  o = GenerationOptions();
  o.max_block_size = 64 * 1024;
  o.chunk_limit = 1 << 20;
  EXPECT_EQ(Context::TryCreate(parent, "bad", GenerationKind(o)), nullptr);
  EXPECT_EQ(parent->last_failure(), Failure::kBadArgument);
  o = GenerationOptions();
  o.initial_block_size = kMaxGenerationBlockSize * 2;
  EXPECT_EQ(Context::TryCreate(parent, "bad", GenerationKind(o)), nullptr);
  EXPECT_EQ(parent->last_failure(), Failure::kBadSize);
  parent->Destroy();
  o = GenerationOptions();
  o.max_block_size = 64 * 1024;
  o.chunk_limit = 32 * 1024;  // fits
  Context* ctx = Context::TryCreate(nullptr, "good", GenerationKind(o), co);
  ASSERT_NE(ctx, nullptr);
  void* p = ctx->Alloc(32 * 1024);
  EXPECT_EQ(ctx->num_blocks(), 2u);
  ctx->Free(p);
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

TEST(GenerationDeathTest, MisuseAbortsByDefault) {
  if (kDirect) GTEST_SKIP() << "a freed chunk's block is released at once in direct mode";
  Context* ctx = CreateGenerationContext(nullptr, "victim");
  void* keep = ctx->Alloc(32);
  void* p = ctx->Alloc(32);
  ctx->Free(p);
  EXPECT_DEATH(ctx->Free(p), "double free of chunk .* in generation 'victim'");
  ctx->Free(keep);
  ctx->Destroy();
}

TEST(GenerationDeathTest, UseAfterFreeIsFoundByAddressSanitizer) {
  if (!internal::kAddressSanitizer) GTEST_SKIP() << "needs --config=asan";
  Context* ctx = CreateGenerationContext(nullptr, "asan");
  void* keep = ctx->Alloc(64);
  auto* p = static_cast<volatile char*>(ctx->Alloc(64));
  ctx->Free(const_cast<char*>(p));
  EXPECT_DEATH(p[3] = 1, "use-after-poison|heap-use-after-free");
  ctx->Free(keep);
  ctx->Destroy();
}

}  // namespace
}  // namespace mcx
