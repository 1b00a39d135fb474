// File: mcx/testing/sweep.h
//
// The fault-injection sweep, for kind authors and for mcx's own tests: runs
// a workload once per block acquisition it makes, failing that one
// acquisition (the 1st on the first run, the 2nd on the second, ...), until
// a run completes without reaching the failure.
//
// Contract: after each run, SweepFailures checks, with GoogleTest assertions
// that name the failed acquisition,
//   - that the failure was clean: the workload ended with std::bad_alloc
//     exactly when its acquisition failed (a throwing call reported it;
//     nothing else was thrown and nothing was swallowed);
//   - that every context of the tree passes `Check()`, and that its counters
//     agree: the high-water marks cover what is held, and live bytes lie
//     within the bytes in blocks (for a kind that counts them);
//   - that every context is still usable once the source works again: a
//     small and a large request (kSweepSmallRequest, kSweepLargeRequest)
//     succeed on each, the live bytes grow by at least their sizes, and
//     `Check()` still passes;
//   - that destroying the tree gives every block back to the source, each
//     with the size it was acquired with.
// The workload gets a root context `top` of the kind given, on a
// FailingBlockSource (test_block_sources.h); it may create children of any
// kind, use any throwing call, and leave anything live (the sweep destroys
// the tree). Its first block is acquired before the failure is armed: create
// a child in the workload to sweep a kind's first block too. A workload that
// is cut short by the failure leaves its frame through the exception, so
// cleanups it registers must not point into that frame. It must not set a
// limit that refuses the sweep's own requests.
//
// Returns the number of block acquisitions the complete run made (the
// number of runs that failed one), so a test can check that its workload
// reaches the paths it means to sweep.
//
// Example:
//
//   TEST(MyKindTest, EveryFailedAcquisitionIsClean) {
//     const int acquisitions = mcx::test::SweepFailures(MyKind(), [](mcx::Context* top) {
//       mcx::Context* c = top->CreateChild("c", MyKind());
//       for (int i = 0; i < 1000; ++i) c->Alloc(i % 10 == 0 ? 5000 : 48);
//       c->Reset(mcx::ResetOptions::KeepBytes(4096));
//     });
//     EXPECT_GT(acquisitions, 10);
//   }

#ifndef MCX_TESTING_SWEEP_H_
#define MCX_TESTING_SWEEP_H_

#include <cstddef>
#include <functional>

#include "mcx/context/context.h"
#include "mcx/context/kind.h"

namespace mcx {
namespace test {

using Workload = std::function<void(Context* top)>;

// What SweepFailures asks of every context after a failure: a request that
// the built-in kinds serve from their blocks of chunks, and one that takes a
// block of its own (the pool's large chunks, the freelist's dedicated ones).
inline constexpr size_t kSweepSmallRequest = 64;
inline constexpr size_t kSweepLargeRequest = size_t{64} * 1024;

// A run that still fails after this many acquisitions never completes: the
// sweep stops with a failure.
inline constexpr int kSweepMaxAcquisitions = 100000;

int SweepFailures(const KindSpec& top_kind, const Workload& workload);

// Checks every context of the tree under `top` (Check()), with assertions
// naming the context that fails. For a test's own checks between steps.
void ExpectTreeConsistent(const Context* top);

}  // namespace test
}  // namespace mcx

#endif  // MCX_TESTING_SWEEP_H_
