// The freelist kind: conformance, plus headers, classes, freelists,
// dedicated chunks and the context-free entry points.

#include "mcx/freelist/freelist.h"

#include <cstring>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/chunk_header.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/internal/freelist_block.h"
#include "mcx/pool/pool.h"
#include "tests/testing/kind_conformance.h"
#include "tests/testing/test_block_sources.h"

namespace mcx {
namespace {

using testing::CountingBlockSource;
using testing::Fill;
using testing::Holds;

struct FreelistTraits {
  static KindSpec Spec() { return FreelistKind(); }
  static constexpr bool kFreeReleasesSmall = true;
  static constexpr bool kUnsizedRealloc = true;
};

// Small blocks and a low chunk limit exercise block changes and dedicated
// chunks much more often.
struct SmallFreelistTraits {
  static KindSpec Spec() {
    FreelistOptions o;
    o.initial_block_size = 1024;
    o.max_block_size = 4096;
    o.chunk_limit = 512;
    return FreelistKind(o);
  }
  static constexpr bool kFreeReleasesSmall = true;
  static constexpr bool kUnsizedRealloc = true;
};

}  // namespace

namespace testing {
INSTANTIATE_TYPED_TEST_SUITE_P(Freelist, KindConformanceTest, FreelistTraits);
INSTANTIATE_TYPED_TEST_SUITE_P(SmallFreelist, KindConformanceTest, SmallFreelistTraits);
}  // namespace testing

namespace {

class FreelistTest : public ::testing::Test {
 protected:
  Context* Make(const FreelistOptions& o = FreelistOptions()) {
    ContextOptions co;
    co.block_source = &source_;
    return CreateFreelistContext(nullptr, "freelist", o, co);
  }
  CountingBlockSource source_;
};

// The chunk header is 8 bytes (16 in checking builds): chunks of a class sit
// exactly header + class bytes apart.
TEST_F(FreelistTest, ChunkHeaderIsEightBytes) {
  Context* ctx = Make();
  char* a = static_cast<char*>(ctx->Alloc(24));
  char* b = static_cast<char*>(ctx->Alloc(24));
  // Checking and ASan builds add the requested size (and padding for the
  // sentinel); release builds pack header + class with no gap.
  EXPECT_EQ(b - a, kFreelistChunkHeaderBytes == 8 ? 24 + 8 : 24 + 16 + 8);
  uint64_t h = ReadChunkHeader(a);
  EXPECT_EQ(ChunkHeaderKind(h), kChunkKindFreelist);
  EXPECT_TRUE(ChunkHeaderMagicOk(h));
  EXPECT_FALSE(ChunkHeaderIsFree(h));
  ctx->Destroy();
}

// Freelists are LIFO per class: the chunk freed last comes back first.
TEST_F(FreelistTest, FreelistsAreLifoPerClass) {
  Context* ctx = Make();
  void* a = ctx->Alloc(100);
  void* b = ctx->Alloc(100);
  void* c = ctx->Alloc(300);
  ctx->Free(a);
  ctx->Free(b);
  ctx->Free(c);
  EXPECT_EQ(GetCounters(ctx).free_chunks, 3u);
  EXPECT_EQ(ctx->Alloc(97), b);   // same class (104): newest first
  EXPECT_EQ(ctx->Alloc(104), a);
  EXPECT_EQ(ctx->Alloc(290), c);  // class 328
  EXPECT_EQ(GetCounters(ctx).free_chunks, 0u);
  ctx->Destroy();
}

// Realloc stays in place within the class and moves beyond it.
TEST_F(FreelistTest, ReallocInPlaceWithinTheClass) {
  Context* ctx = Make();
  void* p = ctx->Alloc(90);
  Fill(p, 90, 1);
  EXPECT_EQ(ctx->Realloc(p, 104), p);
  EXPECT_EQ(ctx->Realloc(p, 10), p);
  // The class, or exactly the request where the size is tracked.
  EXPECT_EQ(ctx->ChunkSize(p), kFreelistChunkHeaderBytes == 8 ? 104u : 10u);
  void* q = ctx->Realloc(p, 105);
  EXPECT_NE(q, p);
  EXPECT_TRUE(Holds(q, 10, 1));
  EXPECT_EQ(ctx->ChunkSize(q), kFreelistChunkHeaderBytes == 8 ? 120u : 105u);
  ctx->Destroy();
}

// Chunks above chunk_limit get a dedicated block that goes back to the
// source when freed, and grows through the source on realloc.
TEST_F(FreelistTest, DedicatedChunksLiveInTheirOwnBlock) {
  Context* ctx = Make();
  const int64_t before = source_.live_blocks();
  void* big = ctx->Alloc(100000);
  EXPECT_EQ(source_.live_blocks(), before + 1);
  EXPECT_TRUE(ChunkHeaderIsExternal(ReadChunkHeader(big)));
  Fill(big, 100000, 6);
  void* bigger = mcx::Realloc(big, 3000000);
  EXPECT_EQ(source_.reallocates(), 1);
  EXPECT_TRUE(Holds(bigger, 100000, 6));
  EXPECT_GE(GetChunkSize(bigger), 3000000u);
  EXPECT_EQ(source_.live_blocks(), before + 1);
  mcx::Free(bigger);
  EXPECT_EQ(source_.live_blocks(), before);
  EXPECT_EQ(source_.bad_releases(), 0);
  ctx->Destroy();
}

// When a block runs out, its tail is carved into freelist chunks, not lost.
TEST_F(FreelistTest, ExhaustedBlockTailGoesToFreelists) {
  FreelistOptions o;
  o.initial_block_size = 2048;
  Context* ctx = Make(o);
  // Fill the first block with 1000-byte chunks until a new block is needed.
  while (ctx->num_blocks() == 1) ctx->Alloc(1000);
  ContextCounters c = GetCounters(ctx);
  EXPECT_GT(c.free_chunks, 0u);  // the old block's tail
  // A small request is now served from that tail, without a new block.
  const int64_t acquires = source_.acquires();
  void* small = ctx->Alloc(8);
  EXPECT_EQ(GetChunkContext(small), ctx);
  EXPECT_EQ(source_.acquires(), acquires);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
}

// mcx::Free, mcx::Realloc, GetChunkContext and GetChunkSize need no context.
TEST_F(FreelistTest, ContextFreeOperations) {
  Context* a = Make();
  Context* b = a->CreateChild("b", FreelistKind());
  void* pa = a->Alloc(50);
  void* pb = b->Alloc(5000);
  void* aligned = b->AllocAligned(100, 256);
  EXPECT_EQ(GetChunkContext(pa), a);
  EXPECT_EQ(GetChunkContext(pb), b);
  EXPECT_EQ(GetChunkContext(aligned), b);
  EXPECT_GE(GetChunkSize(aligned), 100u);
  EXPECT_EQ(GetChunkSize(pa), kFreelistChunkHeaderBytes == 8 ? 56u : 50u);
  Fill(aligned, 100, 2);
  void* aligned2 = mcx::Realloc(aligned, 1000);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(aligned2) % 256, 0u);
  EXPECT_TRUE(Holds(aligned2, 100, 2));
  mcx::Free(aligned2);
  mcx::Free(pa);
  mcx::Free(pb);
  mcx::Free(nullptr);
  std::string error;
  EXPECT_TRUE(a->Check(&error)) << error;
  EXPECT_TRUE(b->Check(&error)) << error;
  a->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Reset clears every freelist: nothing freed before comes back after.
TEST_F(FreelistTest, ResetClearsFreelists) {
  Context* ctx = Make();
  for (int i = 0; i < 100; ++i) ctx->Free(ctx->Alloc(40 + i));
  EXPECT_GT(GetCounters(ctx).free_chunks, 0u);
  ctx->Reset();
  EXPECT_EQ(GetCounters(ctx).free_chunks, 0u);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
}

// The checks below are not optional: a double free is caught in every
// build, thanks to the header's free bit.
TEST(FreelistDeathTest, DoubleFreeIsReported) {
  Context* ctx = CreateFreelistContext(nullptr, "victim");
  void* p = ctx->Alloc(32);
  ctx->Free(p);
  EXPECT_DEATH(ctx->Free(p), "double free of chunk .* in context 'victim'");
  EXPECT_DEATH(mcx::Free(p), "already freed");
  ctx->Destroy();
}

// A pointer mcx never handed out fails loudly: its header holds no magic or
// a reserved kind id.
TEST(FreelistDeathTest, ForeignPointerIsReported) {
  Context* ctx = CreateFreelistContext(nullptr, "ctx");
  alignas(16) unsigned char buffer[64] = {};
  EXPECT_DEATH(mcx::Free(buffer + 16), "not a chunk allocated by mcx");
  EXPECT_DEATH(ctx->Free(buffer + 16), "not a chunk allocated by mcx");
  std::memset(buffer, 0x7F, sizeof(buffer));  // clobbered memory
  EXPECT_DEATH(mcx::GetChunkContext(buffer + 16), "not a chunk allocated by mcx");
  ctx->Destroy();
}

}  // namespace
}  // namespace mcx
