// Direct mode (--config=direct): each kind sends every request down its own
// path for chunks with a block of their own (the pool's large chunks, the
// freelist's dedicated ones), still owned by the context. With
// --config=asan as well, ASan then sees an overrun from one chunk into its
// neighbour. Skipped in other builds.

#include <cstring>

#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

class DirectTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (!internal::kDirect) GTEST_SKIP() << "needs --config=direct";
  }
  KindSpec Kind() const { return GetParam() ? PoolKind() : FreelistKind(); }
};

// Each chunk is a block of its own; all of them go at reset and destroy,
// and every call works as in the normal build.
TEST_P(DirectTest, EveryChunkIsABlockOwnedByItsContext) {
  const bool pool = GetParam();
  test::CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* ctx = Context::Create(nullptr, "direct", Kind(), o);
  const int64_t first = source.live_blocks();
  char* a = static_cast<char*>(ctx->Alloc(10));
  std::memcpy(a, "123456789", 10);
  void* b = ctx->AllocAligned(100, 256);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % 256, 0u);
  EXPECT_EQ(source.live_blocks(), first + 2);
  EXPECT_EQ(ctx->num_blocks(), 3u);
  // pool chunks have no header
  if (!pool) {
    EXPECT_EQ(GetChunkContext(a), ctx);
  }
  EXPECT_GE(ctx->ChunkSize(a), 10u);
  a = static_cast<char*>(ctx->Realloc(a, 10, 5000));
  EXPECT_STREQ(a, "123456789");
  ctx->Free(b);
  EXPECT_EQ(source.live_blocks(), first + 1);
  EXPECT_EQ(GetSubtreeCounters(ctx).total_bytes, ctx->SubtreeBytes());
  Context* child = ctx->CreateChild("child", Kind());
  for (int i = 0; i < 100; ++i) child->Alloc(50);
  EXPECT_EQ(child->num_blocks(), 101u);
  ctx->Reset();
  EXPECT_EQ(ctx->num_blocks(), 1u);
  EXPECT_EQ(source.live_blocks(), first);
  ctx->Alloc(1);
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

// A limit applies to direct chunks as to any block.
TEST_P(DirectTest, LimitsApply) {
  ContextOptions o;
  o.limit = 64 * 1024;
  Context* ctx = Context::Create(nullptr, "limited", Kind(), o);
  size_t got = 0;
  while (ctx->TryAlloc(1000) != nullptr) got += 1000;
  EXPECT_EQ(ctx->last_failure(), Failure::kLimit);
  EXPECT_GT(got, 40u * 1000u);
  ctx->Destroy();
}

// The point of direct mode: an overrun into the neighbouring chunk.
TEST_P(DirectTest, OverrunIntoTheNeighbourIsReportedByAsan) {
  if (!internal::kAddressSanitizer) GTEST_SKIP() << "needs --config=asan too";
  EXPECT_DEATH(
      {
        Context* ctx = Context::Create(nullptr, "ctx", Kind());
        char* p = static_cast<char*>(ctx->Alloc(24));
        ctx->Alloc(24);
        p[24] = 'x';
      },
      "AddressSanitizer: heap-buffer-overflow");
}

INSTANTIATE_TEST_SUITE_P(Kinds, DirectTest, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Pool" : "Freelist";
                         });

}  // namespace
}  // namespace mcx
