// The pool kind: conformance, plus the nginx behaviours that only it has.

#include "mcx/pool/pool.h"

#include <cstdio>
#include <cstring>
#include <deque>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/failure.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/context/stats.h"
#include "mcx/context/kind_api.h"
#include "mcx/pool/internal/pool_block.h"
#include "mcx/testing/kind_conformance.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

using pool_internal::kLargeFreedCheck;
using pool_internal::kLargeLiveCheck;
using pool_internal::LargeHeader;
using pool_internal::PoolBlock;
using pool_internal::PoolState;
using test::CountingBlockSource;

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

// Odd-sized chunks packed to 8 bytes (PoolOptions::chunk_alignment).
struct PackedPoolTraits {
  static KindSpec Spec() {
    PoolOptions o;
    o.chunk_alignment = 8;
    return PoolKind(o);
  }
  static constexpr bool kFreeReleasesSmall = false;
  static constexpr bool kUnsizedRealloc = false;
  static constexpr size_t kOddSizeAlignment = 8;
};

}  // namespace

namespace test {
INSTANTIATE_TYPED_TEST_SUITE_P(Pool, KindConformanceTest, PoolTraits);
INSTANTIATE_TYPED_TEST_SUITE_P(RewindPool, KindConformanceTest, RewindPoolTraits);
INSTANTIATE_TYPED_TEST_SUITE_P(NginxPool, KindConformanceTest, NginxPoolTraits);
INSTANTIATE_TYPED_TEST_SUITE_P(PackedPool, KindConformanceTest, PackedPoolTraits);
}  // namespace test

namespace {

PoolState* StateOf(Context* ctx) { return KindState<PoolState>(ctx); }

// Entries on the large list: what a Free once walked.
size_t LargeListLength(Context* ctx) {
  size_t n = 0;
  for (KindBlock* l = StateOf(ctx)->large.head(); l != nullptr; l = l->next) ++n;
  return n;
}

// The newest large chunk's header, and the one after it.
LargeHeader* Newest(PoolState* st) { return pool_internal::AsLargeHeader(st->large.head()); }
LargeHeader* Older(LargeHeader* h) { return pool_internal::AsLargeHeader(h->link.next); }

std::vector<PoolBlock*> Blocks(Context* ctx) {
  std::vector<PoolBlock*> out;
  for (KindBlock* b = StateOf(ctx)->blocks.head(); b != nullptr; b = b->next) {
    out.push_back(pool_internal::AsPoolBlock(b));
  }
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
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
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

// chunk_alignment 8 packs odd-sized chunks to a pointer's alignment (24
// bytes take 24); sizes that are multiples of 16, and explicit larger
// alignments, keep theirs. Live bytes count the packed stride.
TEST_F(PoolTest, PackedChunksTakeTheirSize) {
  PoolOptions o;
  o.chunk_alignment = 8;
  Context* ctx = Make(o);
  std::vector<char*> chunks;
  for (int i = 0; i < 100; ++i) {
    chunks.push_back(static_cast<char*>(ctx->Alloc(24)));
    std::memset(chunks.back(), i, 24);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(chunks.back()) % 8, 0u);
  }
  for (int i = 0; i < 100; ++i) EXPECT_EQ(chunks[i][23], static_cast<char>(i));
  if (!kDirectBuild && !internal::kChecking) {
    EXPECT_EQ(chunks[1] - chunks[0], 24);
    EXPECT_EQ(ctx->live_bytes(), 100u * 24u);
  }
  void* even = ctx->Alloc(32);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(even) % kDefaultAlignment, 0u);
  void* wide = ctx->AllocAligned(24, 32);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(wide) % 32, 0u);
  // An explicit default alignment is kept for odd sizes too, wherever the
  // packed chunks leave the bump pointer; an explicit 8 packs.
  for (int i = 0; i < 8; ++i) {
    if (i % 2 != 0) ctx->AllocAligned(8, 8);  // every other round at the other phase
    char* packed = static_cast<char*>(ctx->AllocAligned(24, 8));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(packed) % 8, 0u);
    void* sixteen = ctx->AllocAligned(24, kDefaultAlignment);  // 24 past a packed chunk
    EXPECT_EQ(reinterpret_cast<uintptr_t>(sixteen) % kDefaultAlignment, 0u) << i;
    void* empty = ctx->AllocAligned(0, kDefaultAlignment);  // served as 1 byte
    EXPECT_EQ(reinterpret_cast<uintptr_t>(empty) % kDefaultAlignment, 0u) << i;
    char* next = static_cast<char*>(ctx->AllocAligned(40, 8));
    char* after = static_cast<char*>(ctx->AllocAligned(40, 8));
    if (!kDirectBuild && !internal::kChecking) EXPECT_EQ(after - next, 40);
  }
  char* grown = static_cast<char*>(ctx->Realloc(chunks[99], 24, 40));
  EXPECT_EQ(grown[23], static_cast<char>(99));
  EXPECT_TRUE(ctx->Check(nullptr));
  ctx->Destroy();

  o.chunk_alignment = 4;  // neither 8 nor the default
  EXPECT_EQ(Context::TryCreate(nullptr, "bad", PoolKind(o)), nullptr);
}

// A child's options take the same path through the tree's composed
// creation (a KindSpec judges its options once) as a root's through the
// generic one: refused, honoured, or the default.
TEST_F(PoolTest, AChildsOptionsAreJudgedAsARootsAre) {
  Context* parent = Context::Create(nullptr, "parent", PoolKind());
  PoolOptions o;
  o.chunk_alignment = 4;  // neither 8 nor the default
  EXPECT_EQ(Context::TryCreate(parent, "bad alignment", PoolKind(o)), nullptr);
  EXPECT_EQ(parent->last_failure(), Failure::kBadArgument);
  o = PoolOptions();
  o.max_small = kMaxAllocSize + 1;
  EXPECT_EQ(Context::TryCreate(parent, "bad max_small", PoolKind(o)), nullptr);
  EXPECT_EQ(parent->last_failure(), Failure::kBadSize);
  EXPECT_EQ(parent->first_child(), nullptr);

  o = PoolOptions();
  o.initial_block_size = 16 * 1024;
  Context* sized = parent->CreateChild("sized", PoolKind(o));
  EXPECT_GE(sized->first_block_size(), o.initial_block_size);

  o = PoolOptions();
  o.rewind_on_free = true;
  o.initial_block_size = 4096;
  Context* rewind = parent->CreateChild("rewind", PoolKind(o));
  EXPECT_GE(rewind->first_block_size(), 4096u);  // the source's slack counted
  EXPECT_EQ(reinterpret_cast<uintptr_t>(rewind) % 4096, 0u);  // blocks found by masking

  o = PoolOptions();
  o.chunk_alignment = 8;
  Context* packed = parent->CreateChild("packed", PoolKind(o));
  if (!kDirectBuild && !internal::kChecking) {
    auto* a = static_cast<char*>(packed->Alloc(24));
    auto* b = static_cast<char*>(packed->Alloc(24));
    EXPECT_EQ(b - a, 24);  // packed to 8, not 16
  }
  for (Context* c : {sized, rewind, packed}) {
    EXPECT_EQ(c->parent(), parent);
    std::memset(c->Alloc(100), 0x33, 100);
    EXPECT_TRUE(c->Check(nullptr));
  }
  parent->Destroy();
}

// A KindSpec made from the pool's table and plain PoolOptions (not through
// PoolKind, which judges them once) still has every option honoured: the
// judgement reads as "not the common path" there (KindSpec zeroes the
// bytes past the options), and UBSan sees no bool of another value.
TEST_F(PoolTest, ASpecFromTheTableAndPlainOptionsHonoursThem) {
  const KindMethods* methods = PoolKind().methods();
  PoolOptions o;
  o.initial_block_size = 16 * 1024;
  Context* root = Context::Create(nullptr, "root", KindSpec(methods, o));
  EXPECT_GE(root->first_block_size(), o.initial_block_size);
  Context* child = root->CreateChild("child", KindSpec(methods, o));
  EXPECT_GE(child->first_block_size(), o.initial_block_size);
  o = PoolOptions();
  o.chunk_alignment = 4;
  EXPECT_EQ(Context::TryCreate(root, "bad", KindSpec(methods, o)), nullptr);
  EXPECT_EQ(root->last_failure(), Failure::kBadArgument);
  Context* plain = root->CreateChild("plain", KindSpec(methods, PoolOptions()));
  std::memset(plain->Alloc(100), 0x44, 100);
  EXPECT_TRUE(plain->Check(nullptr));
  root->Destroy();
}

// The bump window is the current block's `last`: stats and checks see it.
TEST_F(PoolTest, UsedBytesFollowTheBumpPointer) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
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
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
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

// Requests above max_small go to the large list, each in its own block with
// its header right before it; freeing one releases its block and takes it
// off the list, leaving nothing behind in the pool.
TEST_F(PoolTest, LargeChunksAreFreedOneByOne) {
  PoolOptions o;
  o.max_small = 512;
  Context* ctx = Make(o);
  PoolState* st = StateOf(ctx);
  const size_t free_bytes = GetCounters(ctx).free_bytes;
  void* a = ctx->Alloc(513);
  void* b = ctx->Alloc(4000);
  EXPECT_EQ(ctx->num_blocks(), 3u);
  EXPECT_EQ(static_cast<void*>(Newest(st) + 1), b);  // newest first
  EXPECT_EQ(static_cast<void*>(Older(Newest(st)) + 1), a);
  EXPECT_EQ(Older(Newest(st))->link.prev, &Newest(st)->link);
  EXPECT_EQ(static_cast<char*>(b) - static_cast<char*>(Newest(st)->block), 64);
  ctx->Free(a);
  EXPECT_EQ(ctx->num_blocks(), 2u);
  EXPECT_EQ(Newest(st)->link.next, nullptr);
  void* c = ctx->Alloc(600);
  EXPECT_EQ(static_cast<void*>(Newest(st) + 1), c);
  EXPECT_EQ(LargeListLength(ctx), 2u);
  EXPECT_EQ(GetCounters(ctx).free_bytes, free_bytes);  // no small memory used
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// nginx's `failed` rule: a block that keeps failing is skipped by `current`.
TEST_F(PoolTest, CurrentSkipsBlocksThatKeepFailing) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
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
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  PoolOptions o;
  o.initial_block_size = 4096;
  o.max_block_size = 32768;
  Context* ctx = Make(o);
  for (int i = 0; i < 400; ++i) ctx->Alloc(1000);
  std::vector<size_t> sizes;
  for (PoolBlock* b : Blocks(ctx)) {
    if (b != &StateOf(ctx)->first) sizes.push_back(b->link.size);
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
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
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
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
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
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
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

// Rewind mode resizes small chunks in place as the other modes do: a
// shrink keeps the chunk (so it never fails, also at the limit), and the
// chunk bumped last grows in its block. The block's count of chunks stays
// right: freeing them all still empties it.
TEST_F(PoolTest, RewindModeReallocsInPlace) {
  if (kDirectBuild || internal::kChecking) {
    GTEST_SKIP() << "direct and checking builds move every chunk";
  }
  PoolOptions o;
  o.rewind_on_free = true;
  o.initial_block_size = 4096;
  Context* ctx = Make(o);
  char* a = static_cast<char*>(ctx->Alloc(100));
  char* b = static_cast<char*>(ctx->Alloc(100));
  test::Fill(a, 100, 1);
  EXPECT_EQ(ctx->Realloc(a, 100, 50), a);
  EXPECT_TRUE(test::Holds(a, 50, 1));
  test::Fill(b, 100, 2);
  EXPECT_EQ(ctx->Realloc(b, 100, 300), b);  // the chunk bumped last
  EXPECT_TRUE(test::Holds(b, 100, 2));
  const size_t live = ctx->live_bytes();
  std::vector<void*> fill;
  while (ctx->num_blocks() == 1) fill.push_back(ctx->Alloc(200));
  ASSERT_EQ(ctx->TrySetLimit(size_t{1} << 30), Failure::kNone);  // the side record
  ASSERT_EQ(ctx->TrySetLimit(ctx->bytes_in_blocks() + ctx->side_record_bytes()), Failure::kNone);
  while (void* p = ctx->TryAlloc(200)) fill.push_back(p);
  ASSERT_EQ(ctx->last_failure(), Failure::kLimit);
  EXPECT_EQ(ctx->TryRealloc(a, 50, 16), a);  // at the limit: kept
  ctx->Free(a);
  ctx->Free(b);
  for (void* p : fill) ctx->Free(p);
  EXPECT_EQ(StateOf(ctx)->first.live, 0u);
  EXPECT_LE(ctx->live_bytes(), live);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// A rewound block moved to the head of the list survives a KeepBytes reset.
TEST_F(PoolTest, RewindThenKeepBytesReset) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  PoolOptions o;
  o.rewind_on_free = true;
  o.initial_block_size = 4096;
  Context* ctx = Make(o);
  void* last = nullptr;
  while (ctx->num_blocks() < 2) last = ctx->Alloc(512);
  ctx->Free(last);  // its block empties and moves in front of the first
  EXPECT_NE(StateOf(ctx)->blocks.head(), &StateOf(ctx)->first.link);
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
// into foreign memory (checking builds clobber the freed block: its header
// then reads as no chunk at all).
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
      "double free of large chunk|not a chunk allocated by mcx");
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
      // Under ASan the sentinel is poisoned: the write itself is reported.
      "pool 'pool': sentinel of chunk .* \\(40 bytes\\) overwritten|AddressSanitizer");
  EXPECT_DEATH(
      {
        Context* ctx = CreatePoolContext(nullptr, "pool");
        char* p = static_cast<char*>(ctx->Alloc(10000));
        p[10000] = 'x';
        ctx->Free(p);
      },
      "sentinel of large chunk|AddressSanitizer");
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
  const char x = 'x';
  internal::CopyToPoisoned(p + 64, &x, 1);  // overwrite the sentinel (poisoned under ASan)
  EXPECT_FALSE(ctx->Check(&error));
  EXPECT_NE(error.find("sentinel"), std::string::npos) << error;
  internal::CopyToPoisoned(p + 64, &internal::kSentinelByte, 1);
  ctx->Reset();
  unsigned char first;  // reset memory is poisoned under ASan: read past it
  internal::CopyFromPoisoned(&first, p, 1);
  EXPECT_EQ(first, internal::kClobberByte);
  ctx->Destroy();
}

// Pool chunks have no chunk header, so mcx::Free without a context refuses
// them.
TEST(PoolDeathTest, ContextFreeFreeOfPoolChunkIsReported) {
  Context* ctx = CreatePoolContext(nullptr, "pool");
  void* p = ctx->Alloc(64);
  std::memset(p, 0, 64);
  void* q = ctx->Alloc(64);  // the 8 bytes before q are p's (zeroed) data
  EXPECT_DEATH(mcx::Free(q), "not a chunk allocated by mcx");
  // A large chunk's check word holds a reserved kind id, live or freed.
  void* large = ctx->Alloc(10000);
  EXPECT_DEATH(mcx::Free(large), "not a chunk allocated by mcx");
  ctx->Free(large);
  EXPECT_DEATH(mcx::Free(large), "not a chunk allocated by mcx");
  ctx->Destroy();
}

// --- Finding B3: the large list follows the live large chunks ---------------

// Above max_small (4096 by default): a large chunk.
constexpr size_t kLargeSize = 5000;

// 10^6 large allocations, 5 to 50 live at a time, freed in random order: the
// context's blocks and bytes follow the live chunks, and no bookkeeping
// lands in the pool's small memory (each allocation used to leave a 32-byte
// node there once five live chunks sat at the head of the list).
TEST_F(PoolTest, FindingB3LargeChunkChurnKeepsTheContextFlat) {
  Context* ctx = Make(PoolOptions());
  const size_t first_bytes = ctx->bytes_in_blocks();
  const size_t first_free = GetCounters(ctx).free_bytes;
  // A large chunk's block: the chunk, its header, malloc's slack; far less
  // than one more chunk's worth.
  constexpr size_t kBlockBound = 2 * kLargeSize;
  std::mt19937 rng(20261203);
  std::vector<void*> live;
  for (int allocations = 0; allocations < 1000000;) {
    if (live.size() < 5 || (live.size() < 50 && rng() % 2 == 0)) {
      live.push_back(ctx->Alloc(kLargeSize));
      if (++allocations % 10000 != 0) continue;
      ASSERT_EQ(ctx->num_blocks(), live.size() + 1) << "after " << allocations;
      ASSERT_LE(ctx->bytes_in_blocks(), first_bytes + live.size() * kBlockBound)
          << "after " << allocations;
      ASSERT_EQ(GetCounters(ctx).free_bytes, first_free) << "after " << allocations;
      ASSERT_EQ(LargeListLength(ctx), live.size()) << "after " << allocations;
    } else {
      const size_t i = rng() % live.size();
      ctx->Free(live[i]);
      live[i] = live.back();
      live.pop_back();
    }
  }
  for (void* p : live) ctx->Free(p);
  EXPECT_EQ(ctx->num_blocks(), 1u);
  EXPECT_EQ(ctx->bytes_in_blocks(), first_bytes);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
  EXPECT_EQ(source_.bad_releases(), 0);
}

// rewind_on_free: 64 slots replaced at random, half by small and half by
// large chunks. The large chunks keep nothing alive in small memory, so
// emptied blocks rewind and the blocks stay bounded by the live chunks
// (each large allocation's node used to pin a small block for good).
TEST_F(PoolTest, FindingB3RewindLargeChunksPinNoBlocks) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  PoolOptions o;
  o.rewind_on_free = true;
  o.initial_block_size = 4096;
  Context* ctx = Make(o);
  constexpr size_t kSlots = 64;
  std::mt19937 rng(20261204);
  std::vector<void*> slot(kSlots, nullptr);
  std::vector<bool> is_large(kSlots, false);
  size_t large_live = 0;
  for (int step = 1; step <= 200000; ++step) {
    const size_t i = rng() % kSlots;
    if (slot[i] != nullptr) {
      ctx->Free(slot[i]);
      if (is_large[i]) --large_live;
    }
    is_large[i] = rng() % 2 == 0;
    slot[i] = ctx->Alloc(is_large[i] ? kLargeSize : 16 + rng() % 1000);
    if (is_large[i]) ++large_live;
    if (step % 1000 != 0) continue;
    // At worst each live small chunk pins a block of its own; an emptied
    // block is reused before a new one is taken.
    ASSERT_LE(ctx->num_blocks(), 1 + large_live + kSlots) << "after " << step;
    ASSERT_EQ(LargeListLength(ctx), large_live) << "after " << step;
  }
  for (void* p : slot) ctx->Free(p);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Free does constant work whatever the history: after 10^5 allocations with
// five large chunks live (a FIFO, as in the finding's reproducer), the list
// that Free could walk holds the five live chunks and nothing else, freeing
// a small chunk (a no-op) changes nothing, and freeing a large chunk takes
// exactly its block out.
TEST_F(PoolTest, FindingB3FreeDoesConstantWork) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make(PoolOptions());
  void* small = ctx->Alloc(16);
  const size_t first_bytes = ctx->bytes_in_blocks();
  std::deque<void*> fifo;
  for (int i = 0; i < 100000; ++i) {
    fifo.push_back(ctx->Alloc(kLargeSize));
    if (fifo.size() > 5) {
      ctx->Free(fifo.front());
      fifo.pop_front();
    }
  }
  EXPECT_EQ(LargeListLength(ctx), 5u);
  EXPECT_EQ(ctx->num_blocks(), 6u);
  const size_t bytes = ctx->bytes_in_blocks();
  const size_t free_bytes = GetCounters(ctx).free_bytes;
  // Checking builds report a small chunk's second free: free it once there.
  for (int i = 0; i < (internal::kChecking ? 1 : 1000); ++i) ctx->Free(small);
  EXPECT_EQ(ctx->bytes_in_blocks(), bytes);
  EXPECT_EQ(GetCounters(ctx).free_bytes, free_bytes);
  EXPECT_EQ(LargeListLength(ctx), 5u);
  ctx->Free(fifo.back());
  EXPECT_EQ(LargeListLength(ctx), 4u);
  EXPECT_EQ(ctx->num_blocks(), 5u);
  EXPECT_LE(ctx->bytes_in_blocks(), first_bytes + 4 * 2 * kLargeSize);
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Free reads the bytes before a chunk to tell a large one from a small one.
// Before a small chunk they are the end of the chunk before it and padding,
// which ASan builds keep poisoned in the same 8-byte granule: the read puts
// the poison back exactly, and the neighbour's bytes stay the caller's.
TEST_F(PoolTest, FindingB3FreeOfASmallChunkLeavesItsNeighbourAlone) {
  for (bool rewind : {false, true}) {
    PoolOptions o;
    o.rewind_on_free = rewind;
    Context* ctx = Make(o);
    for (size_t size = 1; size <= 40; ++size) {
      char* before = static_cast<char*>(ctx->AllocBytes(size));
      char* chunk = static_cast<char*>(ctx->Alloc(24));
      std::memset(before, 1, size);
      ctx->Free(chunk);
      before[size - 1] = 2;  // ASan would report a write to poisoned memory
      EXPECT_EQ(before[0], size == 1 ? 2 : 1);
      if (rewind) ctx->Free(before);
    }
    std::string error;
    EXPECT_TRUE(ctx->Check(&error)) << error;
    ctx->Destroy();
  }
  EXPECT_EQ(source_.live_blocks(), 0);
}

std::vector<std::string>* pool_reports = nullptr;

void RecordPoolMisuse(const char* message) { pool_reports->push_back(message); }

// A misuse handler that records and returns, as a test harness would.
class PoolMisuseTest : public PoolTest {
 protected:
  void SetUp() override {
    if (test::UnderMemcheck()) GTEST_SKIP() << "reads freed blocks on purpose";
    pool_reports = &reports_;
    previous_ = SetMisuseHandler(&RecordPoolMisuse);
  }
  void TearDown() override {
    if (previous_ != nullptr) SetMisuseHandler(previous_);
    pool_reports = nullptr;
  }

  // The one report since the last call, which must name `p`.
  std::string TakeOneNaming(const void* p) {
    EXPECT_EQ(reports_.size(), 1u) << (reports_.empty() ? std::string("no report") : reports_.back());
    std::string last = reports_.size() == 1 ? reports_.back() : std::string();
    reports_.clear();
    char address[32];
    std::snprintf(address, sizeof(address), "%p", p);
    EXPECT_NE(last.find(address), std::string::npos) << last;
    return last;
  }

  void ExpectSoundThenDestroy(Context* ctx) {
    std::string error;
    EXPECT_TRUE(ctx->Check(&error)) << error;
    ctx->Free(ctx->Alloc(kLargeSize));
    EXPECT_TRUE(ctx->Check(&error)) << error;
    ctx->Destroy();
    EXPECT_TRUE(reports_.empty()) << reports_.front();
    EXPECT_EQ(source_.live_blocks(), 0);
    EXPECT_EQ(source_.bad_releases(), 0);
  }

  std::vector<std::string> reports_;
  MisuseHandler previous_ = nullptr;
};

// A large chunk freed twice, reallocated or sized after its free, or used
// after a reset: each reported once, nothing released twice, with and
// without rewind_on_free.
TEST_F(PoolMisuseTest, FindingB3DoubleFreeOfLargeChunkIsReported) {
  for (bool rewind : {false, true}) {
    SCOPED_TRACE(rewind ? "rewind_on_free" : "default");
    PoolOptions o;
    o.rewind_on_free = rewind;
    Context* ctx = Make(o);
    void* keep = ctx->Alloc(kLargeSize);
    std::memset(keep, 0x5A, kLargeSize);
    void* p = ctx->Alloc(kLargeSize);
    ctx->Free(p);
    const size_t blocks = ctx->num_blocks();
    ctx->Free(p);
    std::string report = TakeOneNaming(p);
    if (!internal::kChecking) {
      EXPECT_NE(report.find("double free of large chunk"), std::string::npos) << report;
    }
    EXPECT_EQ(ctx->TryRealloc(p, 2 * kLargeSize), nullptr);
    EXPECT_EQ(ctx->last_failure(), Failure::kBadArgument);
    TakeOneNaming(p);
    EXPECT_EQ(ctx->num_blocks(), blocks);
    void* q = ctx->Alloc(kLargeSize);
    ctx->Reset();
    ctx->Free(q);
    TakeOneNaming(q);
    ctx->Free(keep);
    TakeOneNaming(keep);
    ExpectSoundThenDestroy(ctx);
  }
}

// A large chunk's old address after a realloc that moved it is a freed
// chunk.
TEST_F(PoolMisuseTest, FindingB3OldAddressAfterAMovingReallocIsReported) {
  Context* ctx = Make(PoolOptions());
  char* p = static_cast<char*>(ctx->Alloc(kLargeSize));
  std::memset(p, 0x33, kLargeSize);
  char* q = static_cast<char*>(ctx->Realloc(p, 400 * kLargeSize));
  ASSERT_EQ(q[kLargeSize - 1], 0x33);
  if (q == p) {
    ctx->Destroy();
    GTEST_SKIP() << "the source grew the block in place";
  }
  ctx->Free(p);
  TakeOneNaming(p);
  EXPECT_GE(ctx->ChunkSize(q), 400 * kLargeSize);
  ctx->Free(q);
  ExpectSoundThenDestroy(ctx);
}

// AllocAligned above max_small: the header sits right before the aligned
// chunk and records the block's start. The chunks keep their alignment,
// resize, free and come back to the source; a second free is reported.
TEST_F(PoolMisuseTest, FindingB3AlignedLargeChunksFreeCorrectly) {
  Context* ctx = Make(PoolOptions());
  std::vector<char*> chunks;
  for (size_t alignment = 32; alignment <= 65536; alignment *= 2) {
    char* p = static_cast<char*>(ctx->AllocAligned(kLargeSize, alignment));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % alignment, 0u) << alignment;
    EXPECT_GE(ctx->ChunkSize(p), kLargeSize);
    std::memset(p, static_cast<int>(alignment % 251), kLargeSize);
    chunks.push_back(p);
  }
  EXPECT_EQ(ctx->num_blocks(), 1 + chunks.size());
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  // Every other one grows through the source (it may move, to the default
  // alignment, as documented).
  for (size_t i = 0; i < chunks.size(); i += 2) {
    const int fill = static_cast<int>((size_t{32} << i) % 251);
    char* grown = static_cast<char*>(ctx->Realloc(chunks[i], 3 * kLargeSize));
    EXPECT_EQ(grown[0], static_cast<char>(fill));
    EXPECT_EQ(grown[kLargeSize - 1], static_cast<char>(fill));
    chunks[i] = grown;
  }
  EXPECT_TRUE(ctx->Check(&error)) << error;
  for (char* p : chunks) ctx->Free(p);
  EXPECT_EQ(ctx->num_blocks(), 1u);
  EXPECT_EQ(source_.live_blocks(), 1);
  EXPECT_TRUE(reports_.empty());
  ctx->Free(chunks[1]);
  TakeOneNaming(chunks[1]);
  ExpectSoundThenDestroy(ctx);
}

// The bytes before a small chunk are whatever the chunk before it holds: a
// verbatim copy of a live large chunk's header, a header forged for the
// small chunk's own address with plausible links, a self-loop, or the check
// word a freed large chunk leaves behind in memory that was reused. None
// makes the small chunk pass for a large one, and none draws a report.
TEST_F(PoolMisuseTest, FindingB3SmallChunkAfterLookalikeBytesIsNotLarge) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  if (internal::kChecking) GTEST_SKIP() << "checking builds put a header between small chunks";
  for (bool rewind : {false, true}) {
    SCOPED_TRACE(rewind ? "rewind_on_free" : "default");
    PoolOptions o;
    o.rewind_on_free = rewind;
    Context* ctx = Make(o);
    PoolState* st = StateOf(ctx);
    void* large = ctx->Alloc(kLargeSize);
    std::memset(large, 0x11, kLargeSize);
    char* a = static_cast<char*>(ctx->Alloc(128));
    char* b = static_cast<char*>(ctx->Alloc(64));
    ASSERT_EQ(b, a + 128);  // b's preceding bytes are a's
    const size_t blocks = ctx->num_blocks();
    const uintptr_t at_b = reinterpret_cast<uintptr_t>(b);
    auto* fake = reinterpret_cast<LargeHeader*>(b - sizeof(LargeHeader));
    LargeHeader copy;
    std::memcpy(&copy, Newest(st), sizeof(copy));
    KindBlock* head = st->large.head();
    const LargeHeader lookalikes[] = {
        copy,
        {{ctx, nullptr, nullptr, 4096}, a, 64, 0, kLargeLiveCheck ^ at_b},
        {{ctx, nullptr, head, 4096}, a, 64, 0, kLargeLiveCheck ^ at_b},
        {{ctx, head, nullptr, 4096}, a, 64, 0, kLargeLiveCheck ^ at_b},
        {{ctx, &fake->link, &fake->link, 4096}, a, 64, 0, kLargeLiveCheck ^ at_b},
        {{ctx, nullptr, nullptr, 4096}, a, 64, 0, kLargeFreedCheck ^ at_b},
        {{nullptr, nullptr, nullptr, 0}, nullptr, 0, 0, kLargeFreedCheck ^ at_b},
    };
    for (const LargeHeader& lookalike : lookalikes) {
      std::memcpy(fake, &lookalike, sizeof(lookalike));  // a's last bytes
      EXPECT_EQ(ctx->ChunkSize(b), kUnknownSize);
      EXPECT_EQ(ctx->TryRealloc(b, 100), nullptr);
      EXPECT_EQ(ctx->last_failure(), Failure::kUnsupported);
      // Without rewind, freeing a small chunk is a no-op however often.
      if (!rewind) ctx->Free(b);
      EXPECT_TRUE(reports_.empty()) << reports_.front();
      EXPECT_EQ(ctx->num_blocks(), blocks);
      EXPECT_EQ(LargeListLength(ctx), 1u);
    }
    ctx->Free(b);
    EXPECT_TRUE(reports_.empty()) << reports_.front();
    EXPECT_EQ(static_cast<unsigned char*>(large)[kLargeSize - 1], 0x11);
    ctx->Free(large);
    EXPECT_EQ(ctx->num_blocks(), blocks - 1);
    ExpectSoundThenDestroy(ctx);
  }
}

}  // namespace
}  // namespace mcx
