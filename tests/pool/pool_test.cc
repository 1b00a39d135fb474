// The pool kind: conformance, plus the nginx behaviours that only it has.

#include "mcx/pool/pool.h"

#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/context/stats.h"
#include "mcx/pool/internal/pool_block.h"
#include "tests/testing/kind_conformance.h"
#include "tests/testing/test_block_sources.h"

namespace mcx {
namespace {

using pool_internal::PoolBlock;
using pool_internal::PoolState;
using testing::CountingBlockSource;

struct PoolTraits {
  static KindSpec Spec() { return PoolKind(); }
  static constexpr bool kFreeReleasesSmall = false;
  static constexpr bool kUnsizedRealloc = false;
};

struct RewindPoolTraits {
  static KindSpec Spec() {
    PoolOptions o;
    o.rewind_on_free = true;
    return PoolKind(o);
  }
  static constexpr bool kFreeReleasesSmall = true;
  static constexpr bool kUnsizedRealloc = false;
};

// nginx's layout: every block one size.
struct NginxPoolTraits {
  static KindSpec Spec() {
    PoolOptions o;
    o.initial_block_size = 16 * 1024;
    o.max_block_size = 16 * 1024;
    return PoolKind(o);
  }
  static constexpr bool kFreeReleasesSmall = false;
  static constexpr bool kUnsizedRealloc = false;
};

}  // namespace

namespace testing {
INSTANTIATE_TYPED_TEST_SUITE_P(Pool, KindConformanceTest, PoolTraits);
INSTANTIATE_TYPED_TEST_SUITE_P(RewindPool, KindConformanceTest, RewindPoolTraits);
INSTANTIATE_TYPED_TEST_SUITE_P(NginxPool, KindConformanceTest, NginxPoolTraits);
}  // namespace testing

namespace {

PoolState* StateOf(Context* ctx) { return KindState<PoolState>(ctx); }

std::vector<PoolBlock*> Blocks(Context* ctx) {
  std::vector<PoolBlock*> out;
  for (PoolBlock* b = StateOf(ctx)->head; b != nullptr; b = b->next) out.push_back(b);
  return out;
}

class PoolTest : public ::testing::Test {
 protected:
  Context* Make(const PoolOptions& o) {
    ContextOptions co;
    co.block_source = &source_;
    return CreatePoolContext(nullptr, "pool", o, co);
  }
  // Straight from malloc, not through the process cache: a cached block may
  // be up to a quarter larger than asked, and tests that count how many
  // chunks fit in a block need blocks of the size they asked for.
  SystemBlockSource system_;
  CountingBlockSource source_{&system_};
};

// Small chunks have no header: consecutive allocations are adjacent.
TEST_F(PoolTest, SmallChunksHaveNoHeader) {
  if (internal::kChecking) GTEST_SKIP() << "checking builds add a header and a sentinel";
  Context* ctx = Make(PoolOptions());
  char* a = static_cast<char*>(ctx->Alloc(32));
  char* b = static_cast<char*>(ctx->Alloc(32));
  char* c = static_cast<char*>(ctx->AllocBytes(5));
  char* d = static_cast<char*>(ctx->AllocBytes(3));
  EXPECT_EQ(b - a, 32);
  EXPECT_EQ(c - b, 32);
  EXPECT_EQ(d - c, 5);  // unaligned: byte strings pack
  ctx->Destroy();
}

// The bump window is the current block's `last`: stats and checks see it.
TEST_F(PoolTest, UsedBytesFollowTheBumpPointer) {
  Context* ctx = Make(PoolOptions());
  size_t free_before = GetCounters(ctx).free_bytes;
  ctx->Alloc(1000);
  if (internal::kChecking) {
    EXPECT_LE(GetCounters(ctx).free_bytes, free_before - 1000);  // plus header
  } else {
    EXPECT_EQ(GetCounters(ctx).free_bytes, free_before - 1000);
  }
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
}

// Freeing a small chunk is a documented no-op: the bytes stay used until
// reset, and nothing is reported.
TEST_F(PoolTest, FreeOfSmallChunkIsANoOp) {
  Context* ctx = Make(PoolOptions());
  void* p = ctx->Alloc(100);
  size_t used = GetCounters(ctx).used_bytes();
  ctx->Free(p);
  // Release builds cannot tell a second free from the first (no header):
  // both are no-ops. Checking builds report it (PoolCheckingDeathTest).
  if (!internal::kChecking) ctx->Free(p);
  EXPECT_EQ(GetCounters(ctx).used_bytes(), used);
  ctx->Destroy();
}

// Requests above max_small go to the large list, each in its own block;
// freeing one releases its block and leaves its node for reuse.
TEST_F(PoolTest, LargeChunksAreFreedOneByOneAndNodesReused) {
  PoolOptions o;
  o.max_small = 512;
  Context* ctx = Make(o);
  PoolState* st = StateOf(ctx);
  void* a = ctx->Alloc(513);
  void* b = ctx->Alloc(4000);
  EXPECT_EQ(ctx->num_blocks(), 3u);
  EXPECT_EQ(st->large->alloc, b);
  EXPECT_EQ(st->large->next->alloc, a);
  ctx->Free(a);
  EXPECT_EQ(ctx->num_blocks(), 2u);
  EXPECT_EQ(st->large->next->alloc, nullptr);
  pool_internal::LargeNode* emptied = st->large->next;
  void* c = ctx->Alloc(600);
  EXPECT_EQ(emptied->alloc, c);  // the emptied node was reused
  int nodes = 0;
  for (auto* l = st->large; l != nullptr; l = l->next) ++nodes;
  EXPECT_EQ(nodes, 2);
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// nginx's `failed` rule: a block that keeps failing is skipped by `current`.
TEST_F(PoolTest, CurrentSkipsBlocksThatKeepFailing) {
  PoolOptions o;
  o.initial_block_size = 4096;
  o.max_block_size = 4096;
  o.max_small = 4000;
  Context* ctx = Make(o);
  PoolState* st = StateOf(ctx);
  // Leave a small hole in the first block, then ask for more than the hole
  // each time: every request fails there and takes a new block.
  ctx->Alloc(static_cast<size_t>(st->first.end - st->first.start) - 100);
  for (int i = 0; i < 8; ++i) ctx->Alloc(2500);
  std::vector<PoolBlock*> blocks = Blocks(ctx);
  ASSERT_GE(blocks.size(), 7u);
  EXPECT_NE(st->current, &st->first);  // moved past the first block
  EXPECT_GT(st->first.failed, 4u);
  // The hole in the first block is no longer tried: a 50-byte request lands
  // in a later block.
  char* p = static_cast<char*>(ctx->Alloc(50));
  EXPECT_FALSE(p >= st->first.start && p < st->first.end);
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Blocks grow from the initial to the maximum size.
TEST_F(PoolTest, BlocksDoubleUpToTheMaximum) {
  PoolOptions o;
  o.initial_block_size = 4096;
  o.max_block_size = 32768;
  Context* ctx = Make(o);
  for (int i = 0; i < 400; ++i) ctx->Alloc(1000);
  std::vector<size_t> sizes;
  for (PoolBlock* b : Blocks(ctx)) {
    if (b != &StateOf(ctx)->first) sizes.push_back(b->size);
  }
  ASSERT_GE(sizes.size(), 5u);
  EXPECT_GE(sizes[0], 4096u);
  EXPECT_GE(sizes[1], 8192u);
  EXPECT_GE(sizes[2], 16384u);
  EXPECT_GE(sizes[3], 32768u);
  EXPECT_LT(sizes[4], 2 * 32768u);
  ctx->Destroy();
}

// Sized realloc grows in place when the chunk is the last one bumped.
TEST_F(PoolTest, SizedReallocGrowsInPlaceAtTheEnd) {
  if (internal::kChecking) GTEST_SKIP() << "checking builds always move, to check";
  Context* ctx = Make(PoolOptions());
  char* a = static_cast<char*>(ctx->Alloc(10));
  std::memcpy(a, "0123456789", 10);
  char* a2 = static_cast<char*>(ctx->Realloc(a, 10, 200));
  EXPECT_EQ(a2, a);
  char* b = static_cast<char*>(ctx->Alloc(10));
  EXPECT_EQ(b, a + 208);  // bump moved with the growth (aligned to 16)
  char* a3 = static_cast<char*>(ctx->Realloc(a2, 200, 400));
  EXPECT_NE(a3, a2);  // no longer last: copied
  EXPECT_EQ(std::memcmp(a3, "0123456789", 10), 0);
  EXPECT_EQ(ctx->Realloc(a3, 400, 100), a3);  // shrink: in place
  ctx->Destroy();
}

// Unsized realloc of a small chunk is unsupported, and says so.
TEST_F(PoolTest, UnsizedReallocOfSmallChunkIsUnsupported) {
  Context* ctx = Make(PoolOptions());
  void* p = ctx->Alloc(10);
  EXPECT_EQ(ctx->TryRealloc(p, 100), nullptr);
  EXPECT_EQ(ctx->last_failure(), Failure::kUnsupported);
  EXPECT_THROW(ctx->Realloc(p, 100), std::invalid_argument);
  EXPECT_EQ(ctx->ChunkSize(p), kUnknownSize);
  void* big = ctx->Alloc(10000);
  EXPECT_GE(ctx->ChunkSize(big), 10000u);
  EXPECT_NE(ctx->Realloc(big, 20000), nullptr);
  ctx->Destroy();
}

// Rewind: a block whose chunks are all freed is reused from its start.
TEST_F(PoolTest, RewindReusesAnEmptiedBlock) {
  PoolOptions o;
  o.rewind_on_free = true;
  o.initial_block_size = 4096;
  Context* ctx = Make(o);
  PoolState* st = StateOf(ctx);
  EXPECT_EQ(st->rewind_block_size, 4096u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ctx) % 4096, 0u);
  std::vector<void*> first_batch;
  while (ctx->num_blocks() == 1) first_batch.push_back(ctx->Alloc(100));
  void* in_second = first_batch.back();
  first_batch.pop_back();
  PoolBlock* second = Blocks(ctx).back();
  ASSERT_NE(second, &st->first);
  for (void* p : first_batch) ctx->Free(p);
  EXPECT_EQ(st->first.live, 0u);
  EXPECT_EQ(st->first.last, st->first.start);
  EXPECT_EQ(st->current, &st->first);  // the empty block is tried first
  void* again = ctx->Alloc(100);
  EXPECT_EQ(again, first_batch.front());
  ctx->Free(in_second);
  EXPECT_EQ(second->live, 0u);
  EXPECT_EQ(ctx->num_blocks(), 2u);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// A rewound block moved to the head of the list survives a KeepBytes reset.
TEST_F(PoolTest, RewindThenKeepBytesReset) {
  PoolOptions o;
  o.rewind_on_free = true;
  o.initial_block_size = 4096;
  Context* ctx = Make(o);
  void* last = nullptr;
  while (ctx->num_blocks() < 2) last = ctx->Alloc(512);
  ctx->Free(last);  // its block empties and moves in front of the first
  EXPECT_NE(StateOf(ctx)->head, &StateOf(ctx)->first);
  ctx->Reset(ResetOptions::KeepBytes(1 << 20));
  EXPECT_EQ(ctx->num_blocks(), 2u);
  EXPECT_EQ(Blocks(ctx).size(), 2u);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  for (int i = 0; i < 20; ++i) ctx->Alloc(512);
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// In rewind mode a double free of a large chunk is reported, not followed
// into foreign memory.
TEST(PoolDeathTest, RewindDoubleFreeOfLargeChunkIsReported) {
  EXPECT_DEATH(
      {
        PoolOptions o;
        o.rewind_on_free = true;
        o.initial_block_size = 4096;
        Context* ctx = CreatePoolContext(nullptr, "rewind", o);
        void* p = ctx->Alloc(3000);
        ctx->Free(p);
        ctx->Free(p);
      },
      // Under ASan the stray read itself may be what is reported first.
      "not a live chunk of this pool|not a chunk allocated by mcx|AddressSanitizer");
}

// The standalone Pool owns a root pool context: nginx's API shape.
TEST_F(PoolTest, StandalonePoolWorksWithoutATree) {
  ContextOptions co;
  co.block_source = &source_;
  int closed = 0;
  {
    Pool pool(PoolOptions(), co);
    char* s = static_cast<char*>(pool.AllocBytes(6));
    std::memcpy(s, "hello", 6);
    auto* z = static_cast<int*>(pool.AllocZero(10 * sizeof(int)));
    EXPECT_EQ(z[9], 0);
    pool.AddCleanup([](void* arg) { ++*static_cast<int*>(arg); }, &closed);
    void* big = pool.Alloc(100000);
    pool.Free(big);
    EXPECT_EQ(pool.context()->parent(), nullptr);
    pool.Reset();
    EXPECT_EQ(closed, 1);
    pool.AddCleanup([](void* arg) { ++*static_cast<int*>(arg); }, &closed);
  }
  EXPECT_EQ(closed, 2);
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Checking builds catch misuse of pool chunks: double free, a foreign
// chunk, an overwritten sentinel, found at free or at reset.
TEST(PoolCheckingDeathTest, MisuseOfSmallChunksIsReported) {
  if (!internal::kChecking) GTEST_SKIP() << "needs --config=checking";
  EXPECT_DEATH(
      {
        Context* ctx = CreatePoolContext(nullptr, "pool");
        void* p = ctx->Alloc(40);
        ctx->Free(p);
        ctx->Free(p);
      },
      "double free of chunk .* in pool 'pool'");
  EXPECT_DEATH(
      {
        Context* a = CreatePoolContext(nullptr, "a");
        Context* b = CreatePoolContext(nullptr, "b");
        b->Free(a->Alloc(40));
      },
      "through pool 'b', but it belongs to context 'a'");
  EXPECT_DEATH(
      {
        Context* ctx = CreatePoolContext(nullptr, "pool");
        char* p = static_cast<char*>(ctx->Alloc(40));
        p[40] = 'x';
        ctx->Reset();
      },
      "pool 'pool': sentinel of chunk .* \\(40 bytes\\) overwritten");
  EXPECT_DEATH(
      {
        Context* ctx = CreatePoolContext(nullptr, "pool");
        char* p = static_cast<char*>(ctx->Alloc(10000));
        p[10000] = 'x';
        ctx->Free(p);
      },
      "sentinel of large chunk");
}

// Checking builds clobber a pool's reset memory and keep Check() exact.
TEST(PoolCheckingTest, ResetClobbersAndCheckWalksEveryChunk) {
  if (!internal::kChecking) GTEST_SKIP() << "needs --config=checking";
  Context* ctx = CreatePoolContext(nullptr, "pool");
  char* p = static_cast<char*>(ctx->Alloc(64));
  std::memset(p, 'a', 64);
  for (int i = 0; i < 500; ++i) ctx->AllocAligned(1 + i % 300, size_t{1} << (i % 8));
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  p[64] = 'x';  // overwrite the sentinel
  EXPECT_FALSE(ctx->Check(&error));
  EXPECT_NE(error.find("sentinel"), std::string::npos) << error;
  p[64] = static_cast<char>(internal::kSentinelByte);
  ctx->Reset();
  // Reset memory is poisoned under ASan (checking-asan): read it as mcx does.
  unsigned char first;
  internal::CopyFromPoisoned(&first, p, 1);
  EXPECT_EQ(first, internal::kClobberByte);
  ctx->Destroy();
}

// Pool chunks have no header, so mcx::Free without a context refuses them.
TEST(PoolDeathTest, ContextFreeFreeOfPoolChunkIsReported) {
  Context* ctx = CreatePoolContext(nullptr, "pool");
  void* p = ctx->Alloc(64);
  std::memset(p, 0, 64);
  void* q = ctx->Alloc(64);  // the 8 bytes before q are p's (zeroed) data
  EXPECT_DEATH(mcx::Free(q), "not a chunk allocated by mcx");
  ctx->Destroy();
}

}  // namespace
}  // namespace mcx
