// The kit's checks fail when what they check is broken: a sweep that sees a
// failure swallowed or an exception without a failure reports it, and
// counts the acquisitions of a workload exactly; the inspect check reports
// a kind whose description does not add up.

#include <new>

#include "gtest/gtest-spi.h"
#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/inspect.h"
#include "mcx/context/kind.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/inspect_check.h"
#include "mcx/testing/sweep.h"

namespace mcx {
namespace {

// Each child is one acquisition (its first block); nothing else acquires.
TEST(SweepFailuresTest, CountsTheAcquisitionsOfTheWorkload) {
  EXPECT_EQ(test::SweepFailures(PoolKind(),
                                [](Context* top) {
                                  for (int i = 0; i < 3; ++i) top->CreateChild("c", PoolKind());
                                }),
            3);
  EXPECT_EQ(test::SweepFailures(PoolKind(), [](Context*) {}), 0);
}

TEST(SweepFailuresTest, ReportsAFailureTheWorkloadSwallowed) {
  EXPECT_NONFATAL_FAILURE(test::SweepFailures(PoolKind(),
                                              [](Context* top) {
                                                try {
                                                  top->CreateChild("c", PoolKind());
                                                } catch (const std::bad_alloc&) {
                                                }
                                              }),
                          "a failed acquisition did not surface as std::bad_alloc");
}

TEST(SweepFailuresTest, ReportsABadAllocWithoutAFailedAcquisition) {
  EXPECT_NONFATAL_FAILURE(
      test::SweepFailures(PoolKind(), [](Context*) { throw std::bad_alloc(); }),
      "std::bad_alloc without a failed acquisition");
}

// The pool kind, but its inspect method changes what it says of every
// block with `Lie`, or leaves the block out if `Lie` returns false.
template <bool (*Lie)(BlockInfo*)>
struct LyingPool {
  class Liar : public InspectVisitor {
   public:
    explicit Liar(InspectVisitor* to) : to_(to) {}
    void VisitBlock(const BlockInfo& block) override {
      BlockInfo lie = block;
      if (Lie(&lie)) to_->VisitBlock(lie);
    }

   private:
    InspectVisitor* to_;
  };
  static void Inspect(const Context* ctx, InspectVisitor* visitor) {
    Liar liar(visitor);
    PoolKind().methods()->inspect(ctx, &liar);
  }
  static KindSpec Spec() {
    static const KindMethods methods = [] {
      KindMethods m = *PoolKind().methods();
      m.inspect = &Inspect;
      return m;
    }();
    return KindSpec(&methods, PoolOptions());
  }
};

bool MoreUsed(BlockInfo* b) {
  b->used_bytes += 16;
  return true;
}
bool MoreFree(BlockInfo* b) {
  b->free_bytes += 16;
  b->used_bytes -= 16;  // the block still adds up
  return true;
}
bool NoLargeBlocks(BlockInfo* b) { return b->role != BlockRole::kLarge; }

// The messages of the failures `check` reports, which do not count.
template <typename F>
std::string FailuresOf(F check) {
  ::testing::TestPartResultArray results;
  {
    ::testing::ScopedFakeTestPartResultReporter reporter(
        ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &results);
    check();
  }
  std::string messages;
  for (int i = 0; i < results.size(); ++i) {
    messages += results.GetTestPartResult(i).message();
    messages += "\n";
  }
  return messages;
}

// Checks, with a context holding a large chunk (a block of its own), that
// ExpectInspectAddsUp reports `want` for the kind.
void ExpectReported(const KindSpec& kind, const std::string& want) {
  Context* ctx = Context::Create(nullptr, "pool", kind);
  ctx->Alloc(100);
  ctx->Alloc(100000);
  const std::string failures = FailuresOf([ctx] { test::ExpectInspectAddsUp(ctx); });
  EXPECT_NE(failures.find(want), std::string::npos) << "want \"" << want << "\" in:\n"
                                                    << failures;
  ctx->Destroy();
}

TEST(ExpectInspectAddsUpTest, PassesForTheBuiltInKinds) {
  Context* ctx = Context::Create(nullptr, "pool", PoolKind());
  ctx->Alloc(100);
  ctx->Alloc(100000);
  EXPECT_TRUE(test::ExpectInspectAddsUp(ctx));
  ctx->Destroy();
}

TEST(ExpectInspectAddsUpTest, ReportsWhatDoesNotAddUp) {
  ExpectReported(LyingPool<&MoreUsed>::Spec(), "+ used");  // header + used + ... != size
  ExpectReported(LyingPool<&MoreFree>::Spec(), "free bytes are [last, end)");
  ExpectReported(LyingPool<&MoreFree>::Spec(), "GetCounters' free bytes");
  ExpectReported(LyingPool<&NoLargeBlocks>::Spec(), "blocks listed, blocks held");
  ExpectReported(LyingPool<&NoLargeBlocks>::Spec(), "bytes_in_blocks()");
}

}  // namespace
}  // namespace mcx
