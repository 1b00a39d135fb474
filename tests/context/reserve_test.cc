// The reserve (the Linux kernel's mempool idea): blocks set aside at
// creation carry allocation through a failing block source.

#include <string>

#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

class ReserveTest : public ::testing::TestWithParam<bool> {
 protected:
  Context* Make(size_t blocks) {
    ContextOptions o;
    o.block_source = &source_;
    o.reserve_blocks = blocks;
    o.reserve_block_size = 16 * 1024;
    return Context::Create(nullptr, "reserved", GetParam() ? PoolKind() : FreelistKind(), o);
  }
  test::FailingBlockSource source_;
};

// With a source that fails every call, allocation goes on from the reserve,
// then fails the normal way when the reserve is empty.
TEST_P(ReserveTest, CarriesAllocationThroughAFailingSource) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make(3);
  EXPECT_EQ(ctx->reserve_blocks(), 3u);
  EXPECT_EQ(ctx->reserve_bytes(), 3u * 16 * 1024);
  EXPECT_EQ(source_.live_blocks(), 5);  // the first, 3 reserve, the side record
  source_.FailFrom(1);
  size_t got = 0;
  while (ctx->TryAlloc(1000) != nullptr) got += 1000;
  EXPECT_EQ(ctx->last_failure(), Failure::kOutOfMemory);
  EXPECT_EQ(ctx->reserve_blocks(), 0u);
  EXPECT_EQ(ctx->reserve_uses(), 3u);
  EXPECT_GT(got, 3u * 14 * 1024);  // most of the reserve was usable
  // An error path can still be served after a reset refills the reserve.
  ctx->Reset();
  EXPECT_EQ(ctx->reserve_blocks(), 3u);
  EXPECT_NE(ctx->TryAlloc(2000), nullptr);
  std::string report = StatsReport(ctx);
  EXPECT_NE(report.find("; reserve "), std::string::npos) << report;
  EXPECT_NE(report.find("bytes in 3 blocks (3 used)"), std::string::npos) << report;
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  source_.Heal();
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
  EXPECT_EQ(source_.bad_releases(), 0);
}

// A request larger than a reserve block cannot use the reserve.
TEST_P(ReserveTest, LargeRequestsDoNotUseTheReserve) {
  Context* ctx = Make(2);
  source_.FailFrom(1);
  EXPECT_EQ(ctx->TryAlloc(100 * 1024), nullptr);
  EXPECT_EQ(ctx->reserve_blocks(), 2u);
  source_.Heal();
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// A freed dedicated chunk refills the reserve.
TEST(ReserveRefillTest, FreedBlockRefillsTheReserve) {
  test::FailingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  o.reserve_blocks = 1;
  o.reserve_block_size = 16 * 1024;
  FreelistOptions fo;
  fo.chunk_limit = 1024;
  Context* ctx = Context::Create(nullptr, "r", FreelistKind(fo), o);
  source.FailFrom(1);
  void* p = ctx->TryAlloc(10000);  // a dedicated chunk, from the reserve
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(ctx->reserve_blocks(), 0u);
  ctx->Free(p);
  EXPECT_EQ(ctx->reserve_blocks(), 1u);
  source.Heal();
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

// Reserve blocks count against limits, and a reserve that does not fit the
// limit, or the source, fails creation cleanly.
TEST(ReserveRefillTest, ReserveCountsAgainstLimitsAndCreationCanFail) {
  test::FailingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  o.limit = 40 * 1024;
  Context* root = Context::Create(nullptr, "root", PoolKind(), o);
  ContextOptions child;
  child.reserve_blocks = 4;
  child.reserve_block_size = 16 * 1024;
  EXPECT_EQ(Context::TryCreate(root, "too big", PoolKind(), child), nullptr);
  EXPECT_EQ(root->last_failure(), Failure::kLimit);
  child.reserve_blocks = 1;
  Context* ok = Context::TryCreate(root, "fits", PoolKind(), child);
  ASSERT_NE(ok, nullptr);
  // The side records that keep the limit and the reserve count too.
  EXPECT_EQ(root->SubtreeBytes(), root->bytes_in_blocks() + root->side_record_bytes() +
                                      ok->bytes_in_blocks() + ok->side_record_bytes() +
                                      ok->reserve_bytes());
  EXPECT_EQ(ok->reserve_bytes(), 16u * 1024u);
  source.FailNth(2);  // the first reserve block of the next child
  EXPECT_EQ(Context::TryCreate(ok, "fails", PoolKind(), child), nullptr);
  root->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

INSTANTIATE_TEST_SUITE_P(Kinds, ReserveTest, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Pool" : "Freelist";
                         });

}  // namespace
}  // namespace mcx
