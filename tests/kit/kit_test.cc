// The kit's checks fail when what they check is broken: a sweep that sees a
// failure swallowed or an exception without a failure reports it, and
// counts the acquisitions of a workload exactly.

#include <new>

#include "gtest/gtest-spi.h"
#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/pool/pool.h"
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

}  // namespace
}  // namespace mcx
