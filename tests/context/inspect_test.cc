// Block inspection (inspect.h) through the pool and freelist kinds, with
// exact numbers: blocks come from a source that gives exactly what is asked,
// so every byte is accounted for.

#include "mcx/context/inspect.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/freelist/size_class.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

using test::ExactBlockSource;

constexpr size_t RoundUp16(size_t n) { return (n + 15) & ~size_t{15}; }

// Bytes a small pool chunk of `size` moves `last` by. Checking builds put a
// 40-byte prefix (region header and chunk header word), up to 15 bytes of
// alignment slack and a sentinel byte around every chunk (pool.cc,
// CheckedRegionBytes).
constexpr size_t kPoolCheckedExtra = 40 + 15 + 1;
constexpr size_t PoolRegion(size_t size) {
  return size + (internal::kChecking ? kPoolCheckedExtra : 0);
}
// With Alloc's default alignment the next chunk starts at a multiple of 16:
// a chunk followed by another takes its region rounded up to 16.
constexpr size_t PoolFootprint(size_t size) { return RoundUp16(PoolRegion(size)); }
// Bytes used by `n` chunks of `size` bumped back to back.
constexpr size_t PoolUsed(size_t n, size_t size) {
  return n == 0 ? 0 : (n - 1) * PoolFootprint(size) + PoolRegion(size);
}

// The pool's block header, padded to 16 (pool.cc, kBlockHeaderBytes).
constexpr size_t kPoolBlockHeader = 64;

// Bytes a freelist chunk of `size` takes: its class plus the chunk header,
// rounded up to 16.
size_t FreelistStride(size_t size) {
  return RoundUp16(SizeClassBytes(SizeClassOf(size)) + kFreelistChunkHeaderBytes);
}

// Every block holds exactly its bytes, and the layout agrees with the
// counters the stats report prints.
void ExpectConsistent(const Context* ctx, const ContextLayout& layout) {
  ASSERT_TRUE(layout.has_detail);
  for (const BlockInfo& b : layout.blocks) {
    EXPECT_EQ(b.header_bytes + b.used_bytes + b.free_bytes + b.freelist_bytes, b.size);
    EXPECT_LE(b.last_offset, b.end_offset);
    EXPECT_LE(b.end_offset, b.size);
    EXPECT_EQ(b.end_offset - b.last_offset, b.free_bytes);
  }
  ContextCounters c = GetCounters(ctx);
  EXPECT_EQ(layout.total_bytes(), c.total_bytes);
  EXPECT_EQ(layout.blocks.size(), c.blocks);
  EXPECT_EQ(layout.free_bytes(), c.free_bytes);
  EXPECT_EQ(layout.freelist_chunks(), c.free_chunks);
}

// A kind's own words: a label in place of the role's name, named counters
// in a fixed number of slots.
TEST(BlockInfoTest, LabelsAndNamedCounters) {
  BlockInfo b;
  b.role = BlockRole::kSpare;
  EXPECT_STREQ(b.Name(), "spare");
  b.label = "kept page";
  EXPECT_STREQ(b.Name(), "kept page");
  EXPECT_EQ(b.Counter("failed"), 0u);  // absent
  EXPECT_TRUE(b.SetCounter("failed", 3));
  std::string same_name = "failed";  // names compare as strings
  EXPECT_EQ(b.Counter(same_name.c_str()), 3u);
  EXPECT_TRUE(b.SetCounter(same_name.c_str(), 4));  // the same slot
  EXPECT_EQ(b.Counter("failed"), 4u);
  EXPECT_TRUE(b.SetCounter("live", 7));
  EXPECT_FALSE(b.SetCounter("third", 1)) << "kMaxBlockCounters is " << kMaxBlockCounters;
  EXPECT_EQ(b.Counter("live"), 7u);
  EXPECT_EQ(b.Counter("third"), 0u);
}

std::vector<uint32_t> FailedCounts(const ContextLayout& layout) {
  std::vector<uint32_t> out;
  for (const BlockInfo& b : layout.blocks) {
    if (b.role == BlockRole::kFirst || b.role == BlockRole::kNormal) {
      out.push_back(static_cast<uint32_t>(b.Counter("failed")));
    }
  }
  return out;
}

int CurrentIndex(const ContextLayout& layout) {
  int found = -1;
  for (size_t i = 0; i < layout.blocks.size(); ++i) {
    if (layout.blocks[i].current) {
      EXPECT_EQ(found, -1) << "two current blocks";
      found = static_cast<int>(i);
    }
  }
  return found;
}

class InspectTest : public ::testing::Test {
 protected:
  void TearDown() override { EXPECT_EQ(source_.live(), 0); }

  // nginx's layout, small: every block 1024 bytes.
  Context* MakePool(size_t max_small) {
    PoolOptions o;
    o.initial_block_size = o.max_block_size = kBlockSize;
    o.max_small = max_small;
    ContextOptions co;
    co.block_source = &source_;
    return CreatePoolContext(nullptr, "pool", o, co);
  }
  Context* MakeFreelist() {
    FreelistOptions o;
    o.initial_block_size = o.max_block_size = kBlockSize;
    ContextOptions co;
    co.block_source = &source_;
    return CreateFreelistContext(nullptr, "freelist", o, co);
  }

  static constexpr size_t kBlockSize = 1024;
  ExactBlockSource source_;
};

// A fresh pool is one first block: the context header, then free space.
TEST_F(InspectTest, FreshPoolIsHeaderThenFreeSpace) {
  Context* ctx = MakePool(256);
  ContextLayout layout = InspectContext(ctx);
  EXPECT_EQ(layout.name, "pool");
  EXPECT_STREQ(layout.kind, "pool");
  ASSERT_EQ(layout.blocks.size(), 1u);
  const BlockInfo& b = layout.blocks[0];
  EXPECT_EQ(b.role, BlockRole::kFirst);
  EXPECT_EQ(b.start, static_cast<const void*>(ctx));
  EXPECT_EQ(b.size, kBlockSize);
  EXPECT_EQ(b.header_bytes, ctx->header_bytes());
  EXPECT_EQ(b.used_bytes, 0u);
  EXPECT_EQ(b.free_bytes, kBlockSize - ctx->header_bytes());
  EXPECT_EQ(b.last_offset, ctx->header_bytes());
  EXPECT_EQ(b.end_offset, kBlockSize);
  EXPECT_TRUE(b.current);
  EXPECT_EQ(b.Counter("failed"), 0u);
  EXPECT_TRUE(layout.size_classes.empty());  // the pool has no size classes
  ExpectConsistent(ctx, layout);
  ctx->Destroy();
}

// Small requests bump `last`: each moves it by the chunk's footprint.
TEST_F(InspectTest, PoolAllocationsBumpLast) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = MakePool(256);
  const size_t header = ctx->header_bytes();
  void* chunks[3];
  for (int i = 0; i < 3; ++i) {
    chunks[i] = ctx->Alloc(100);
    ContextLayout layout = InspectContext(ctx);
    ASSERT_EQ(layout.blocks.size(), 1u);
    const BlockInfo& b = layout.blocks[0];
    EXPECT_EQ(b.used_bytes, PoolUsed(i + 1, 100));
    EXPECT_EQ(b.last_offset, header + PoolUsed(i + 1, 100));
    EXPECT_EQ(b.free_bytes, kBlockSize - header - PoolUsed(i + 1, 100));
    EXPECT_EQ(layout.BlockContaining(chunks[i]), &layout.blocks[0]);
    ExpectConsistent(ctx, layout);
  }
  // AllocBytes does not align: the 5 bytes follow the last chunk directly
  // (checking builds align every region).
  ctx->AllocBytes(5);
  ContextLayout layout = InspectContext(ctx);
  EXPECT_EQ(layout.blocks[0].used_bytes,
            internal::kChecking ? 3 * PoolFootprint(100) + PoolRegion(5) : PoolUsed(3, 100) + 5);
  ExpectConsistent(ctx, layout);
  ctx->Destroy();
}

// nginx's `failed`: every new block counts one more failure for each block
// from `current` up to (not including) the previous newest block; a block
// already above kMaxFailures (4) moves `current` past it.
TEST_F(InspectTest, PoolFailedCountsGrowAndCurrentMoves) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  // One 500-byte chunk fills a block: the next never fits in the rest.
  // (max_small leaves room for the checking build's per-chunk extra.)
  Context* ctx = MakePool(600);
  for (int i = 0; i < 7; ++i) ctx->Alloc(500);
  ContextLayout layout = InspectContext(ctx);
  EXPECT_EQ(FailedCounts(layout), (std::vector<uint32_t>{5, 4, 3, 2, 1, 0, 0}));
  EXPECT_EQ(CurrentIndex(layout), 0);
  ExpectConsistent(ctx, layout);

  ctx->Alloc(500);  // block 8: block 1 had failed 5 times, so it is skipped
  layout = InspectContext(ctx);
  EXPECT_EQ(FailedCounts(layout), (std::vector<uint32_t>{6, 5, 4, 3, 2, 1, 0, 0}));
  EXPECT_EQ(CurrentIndex(layout), 1);

  ctx->Alloc(500);  // block 9: now block 2 goes too
  layout = InspectContext(ctx);
  EXPECT_EQ(FailedCounts(layout), (std::vector<uint32_t>{6, 6, 5, 4, 3, 2, 1, 0, 0}));
  EXPECT_EQ(CurrentIndex(layout), 2);
  for (size_t i = 1; i < layout.blocks.size(); ++i) {
    const BlockInfo& b = layout.blocks[i];
    EXPECT_EQ(b.role, BlockRole::kNormal);
    EXPECT_EQ(b.size, kBlockSize);
    EXPECT_EQ(b.header_bytes, kPoolBlockHeader);
    EXPECT_EQ(b.used_bytes, PoolRegion(500));
  }
  ExpectConsistent(ctx, layout);

  // Skipped blocks get no more chunks, even a request that would fit their
  // rest: small requests start at `current` (or the block of the latest
  // small allocation, which is never before it).
  void* p = ctx->Alloc(16);
  layout = InspectContext(ctx);
  const BlockInfo* home = layout.BlockContaining(p);
  ASSERT_NE(home, nullptr);
  EXPECT_GE(home - layout.blocks.data(), CurrentIndex(layout));
  EXPECT_EQ(home->used_bytes, PoolFootprint(500) + PoolRegion(16));
  EXPECT_EQ(layout.blocks[0].used_bytes, PoolRegion(500));
  EXPECT_EQ(layout.blocks[1].used_bytes, PoolRegion(500));

  // A reset keeps the first block and forgets the failures.
  ctx->Reset();
  layout = InspectContext(ctx);
  ASSERT_EQ(layout.blocks.size(), 1u);
  EXPECT_EQ(layout.blocks[0].Counter("failed"), 0u);
  EXPECT_TRUE(layout.blocks[0].current);
  EXPECT_EQ(layout.blocks[0].used_bytes, 0u);
  ExpectConsistent(ctx, layout);
  ctx->Destroy();
}

// A request above max_small is a large block of its own until it is freed;
// its header (nginx's ngx_pool_large_t, and more) sits in that block, right
// before the chunk, so the pool's own blocks are untouched.
TEST_F(InspectTest, PoolLargeChunksAreLargeBlocksUntilFreed) {
  Context* ctx = MakePool(256);
  // Checking builds: the sentinel and the chunk's site (live_chunks.h).
  const size_t sentinel = internal::kChecking ? 1 + sizeof(internal::SiteId) : 0;
  // The header, 7 words, padded to 16 (pool.cc, LargeChunkOffset).
  constexpr size_t kLargeHeader = 64;
  void* big = ctx->Alloc(2000);
  ContextLayout layout = InspectContext(ctx);
  ASSERT_EQ(layout.blocks.size(), 2u);
  const BlockInfo* large = layout.FindBlock(BlockRole::kLarge);
  ASSERT_NE(large, nullptr);
  // The shared role, and the kind's own word for it.
  EXPECT_EQ(large->role, BlockRole::kOversize);
  EXPECT_STREQ(large->Name(), "large");
  EXPECT_STREQ(BlockRoleName(large->role), "oversize");
  ASSERT_NE(large, nullptr);
  EXPECT_EQ(static_cast<const char*>(large->start) + kLargeHeader, big);
  EXPECT_EQ(large->size, kLargeHeader + 2000 + sentinel);
  EXPECT_EQ(large->header_bytes, kLargeHeader);
  EXPECT_EQ(large->used_bytes, large->size - kLargeHeader);
  EXPECT_EQ(large->free_bytes, 0u);
  EXPECT_FALSE(large->current);
  EXPECT_EQ(layout.blocks[0].used_bytes, 0u);
  ExpectConsistent(ctx, layout);

  void* bigger = ctx->Alloc(3000);
  layout = InspectContext(ctx);
  ASSERT_NE(layout.FindBlock(BlockRole::kLarge, 1), nullptr);
  EXPECT_EQ(static_cast<const char*>(layout.FindBlock(BlockRole::kLarge, 0)->start) + kLargeHeader,
            bigger);  // newest first
  EXPECT_EQ(layout.blocks[0].used_bytes, 0u);

  ctx->Free(big);
  layout = InspectContext(ctx);
  ASSERT_EQ(layout.blocks.size(), 2u);
  EXPECT_EQ(static_cast<const char*>(layout.FindBlock(BlockRole::kLarge)->start) + kLargeHeader,
            bigger);
  ExpectConsistent(ctx, layout);

  ctx->Free(bigger);
  layout = InspectContext(ctx);
  ASSERT_EQ(layout.blocks.size(), 1u);
  EXPECT_EQ(layout.FindBlock(BlockRole::kLarge), nullptr);
  EXPECT_EQ(layout.blocks[0].used_bytes, 0u);  // nothing left behind
  ctx->Alloc(5000);
  layout = InspectContext(ctx);
  EXPECT_EQ(layout.blocks[0].used_bytes, 0u);
  EXPECT_EQ(layout.FindBlock(BlockRole::kLarge)->size, kLargeHeader + 5000 + sentinel);
  ExpectConsistent(ctx, layout);
  ctx->Destroy();
}

// The rewind option: a block whose chunks are all freed is empty again.
TEST_F(InspectTest, RewindPoolBlockEmptiesWhenItsChunksAreFreed) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  PoolOptions o;
  o.initial_block_size = kBlockSize;
  o.rewind_on_free = true;
  ContextOptions co;
  co.block_source = &source_;
  Context* ctx = CreatePoolContext(nullptr, "rewind", o, co);
  void* a = ctx->Alloc(64);
  void* b = ctx->Alloc(64);
  ContextLayout layout = InspectContext(ctx);
  EXPECT_EQ(layout.blocks[0].used_bytes, PoolUsed(2, 64));
  ctx->Free(a);
  ctx->Free(b);
  layout = InspectContext(ctx);
  EXPECT_EQ(layout.blocks[0].used_bytes, 0u);
  EXPECT_EQ(layout.blocks[0].free_bytes, kBlockSize - ctx->header_bytes());
  ExpectConsistent(ctx, layout);
  ctx->Destroy();
}

// Freed chunks go on their class's freelist, newest first, and the next
// request of the class takes the newest.
TEST_F(InspectTest, FreelistChunksGoOnTheirClassListsLifo) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = MakeFreelist();
  const size_t c24 = SizeClassOf(24);
  const size_t c100 = SizeClassOf(100);
  void* a = ctx->Alloc(24);
  void* b = ctx->Alloc(24);
  void* c = ctx->Alloc(24);
  void* d = ctx->Alloc(100);
  ContextLayout layout = InspectContext(ctx);
  ASSERT_EQ(layout.blocks.size(), 1u);
  const BlockInfo& first = layout.blocks[0];
  EXPECT_EQ(first.role, BlockRole::kFirst);
  EXPECT_EQ(first.start, static_cast<const void*>(ctx));
  EXPECT_TRUE(first.current);
  EXPECT_EQ(first.used_bytes, 3 * FreelistStride(24) + FreelistStride(100));
  EXPECT_EQ(first.last_offset, first.header_bytes + first.used_bytes);
  EXPECT_EQ(static_cast<const char*>(a) - static_cast<const char*>(first.start),
            static_cast<ptrdiff_t>(first.header_bytes + kFreelistChunkHeaderBytes));
  ASSERT_EQ(layout.size_classes.size(), kNumSizeClasses);
  for (const SizeClassLayout& sc : layout.size_classes) {
    EXPECT_EQ(sc.info.class_bytes, SizeClassBytes(sc.info.index));
    EXPECT_EQ(sc.info.free_chunks, 0u);
  }
  EXPECT_EQ(layout.size_classes[c24].info.chunk_bytes, FreelistStride(24));
  ExpectConsistent(ctx, layout);

  ctx->Free(a);
  ctx->Free(c);
  ctx->Free(d);
  layout = InspectContext(ctx);
  EXPECT_EQ(layout.size_classes[c24].info.free_chunks, 2u);
  EXPECT_EQ(layout.size_classes[c24].free_list, (std::vector<const void*>{c, a}));
  EXPECT_EQ(layout.size_classes[c100].free_list, (std::vector<const void*>{d}));
  EXPECT_EQ(layout.blocks[0].freelist_chunks, 3u);
  EXPECT_EQ(layout.blocks[0].freelist_bytes, 2 * FreelistStride(24) + FreelistStride(100));
  EXPECT_EQ(layout.blocks[0].used_bytes, FreelistStride(24));  // b
  ExpectConsistent(ctx, layout);

  void* again = ctx->Alloc(20);  // class 24 too
  EXPECT_EQ(again, c);
  layout = InspectContext(ctx);
  EXPECT_EQ(layout.size_classes[c24].free_list, (std::vector<const void*>{a}));
  ExpectConsistent(ctx, layout);
  ctx->Free(b);
  ctx->Destroy();
}

// An exhausted block's tail is carved onto freelists; the new block is the
// one being carved.
TEST_F(InspectTest, FreelistCarvesTheTailOfAnExhaustedBlock) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = MakeFreelist();
  const size_t room = InspectContext(ctx).blocks[0].free_bytes;
  const size_t stride = FreelistStride(200);
  const size_t fit = room / stride;
  ASSERT_GE(fit, 1u);
  for (size_t i = 0; i <= fit; ++i) ctx->Alloc(200);
  ContextLayout layout = InspectContext(ctx);
  ASSERT_EQ(layout.blocks.size(), 2u);
  const BlockInfo& first = layout.blocks[0];
  const BlockInfo& second = layout.blocks[1];
  EXPECT_FALSE(first.current);
  EXPECT_EQ(first.free_bytes, 0u);
  EXPECT_EQ(first.used_bytes + first.freelist_bytes, room);
  // What was left is on freelists, except less than the smallest chunk.
  EXPECT_LT(room - fit * stride - first.freelist_bytes, FreelistStride(0));
  EXPECT_EQ(second.role, BlockRole::kNormal);
  EXPECT_TRUE(second.current);
  // Blocks are asked for a little less than a power of two, so that with
  // the system allocator's own header they fill one.
  EXPECT_LE(second.size, kBlockSize);
  EXPECT_GE(second.size, kBlockSize - 16);
  EXPECT_EQ(second.used_bytes, stride);
  ExpectConsistent(ctx, layout);

  // KeepBytes: the second block survives the reset as a spare.
  ctx->Reset(ResetOptions::KeepBytes(2 * kBlockSize));
  layout = InspectContext(ctx);
  ASSERT_EQ(layout.blocks.size(), 2u);
  EXPECT_EQ(layout.blocks[1].role, BlockRole::kSpare);
  EXPECT_EQ(layout.blocks[1].used_bytes, 0u);
  EXPECT_EQ(layout.blocks[1].free_bytes,
            layout.blocks[1].size - layout.blocks[1].header_bytes);
  EXPECT_EQ(layout.freelist_chunks(), 0u);
  ExpectConsistent(ctx, layout);
  ctx->Destroy();
}

// Requests above chunk_limit get a dedicated block, gone when freed.
TEST_F(InspectTest, FreelistDedicatedBlocks) {
  Context* ctx = MakeFreelist();
  void* big = ctx->Alloc(100000);  // above chunk_limit (65,544)
  ContextLayout layout = InspectContext(ctx);
  const BlockInfo* d = layout.FindBlock(BlockRole::kDedicated);
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(static_cast<const char*>(d->start) + d->header_bytes, big);
  // Checking builds add the sentinel and the chunk's site (live_chunks.h).
  EXPECT_EQ(d->size, d->header_bytes + 100000 +
                         (internal::kChecking ? 1 + sizeof(internal::SiteId) : 0));
  EXPECT_EQ(d->used_bytes, d->size - d->header_bytes);
  ExpectConsistent(ctx, layout);
  ctx->Free(big);
  EXPECT_EQ(InspectContext(ctx).FindBlock(BlockRole::kDedicated), nullptr);
  ctx->Destroy();
}

// A kind without an inspect method shows no detail; nothing breaks.
TEST_F(InspectTest, KindWithoutInspectShowsNoDetail) {
  KindMethods methods = *PoolKind().methods();
  methods.inspect = nullptr;
  ContextOptions co;
  co.block_source = &source_;
  Context* ctx = Context::Create(nullptr, "opaque", KindSpec(&methods, PoolOptions()), co);
  ctx->Alloc(10);
  struct Counting : InspectVisitor {
    void VisitBlock(const BlockInfo&) override { ++blocks; }
    int blocks = 0;
  } visitor;
  EXPECT_FALSE(InspectContext(ctx, &visitor));
  EXPECT_EQ(visitor.blocks, 0);
  ContextLayout layout = InspectContext(ctx);
  EXPECT_FALSE(layout.has_detail);
  EXPECT_TRUE(layout.blocks.empty());
  EXPECT_EQ(layout.name, "opaque");
  ctx->Destroy();
}

// The visitor sees the protocol's order: blocks, then each class followed by
// its chunks.
TEST_F(InspectTest, VisitorOrder) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = MakeFreelist();
  void* a = ctx->Alloc(8);
  void* b = ctx->Alloc(8);
  ctx->Free(a);
  ctx->Free(b);
  struct Recorder : InspectVisitor {
    void VisitBlock(const BlockInfo&) override { log += "B"; }
    void VisitSizeClass(const SizeClassInfo& c) override {
      if (c.free_chunks != 0) log += "C";
    }
    void VisitFreeChunk(const SizeClassInfo&, const void*) override { log += "f"; }
    std::string log;
  } recorder;
  EXPECT_TRUE(InspectContext(ctx, &recorder));
  EXPECT_EQ(recorder.log, "BCff");
  ctx->Destroy();
}

}  // namespace
}  // namespace mcx
