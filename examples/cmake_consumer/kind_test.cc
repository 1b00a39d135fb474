// A kind's tests on mcx's installed test kit, as a kind written outside mcx
// runs them (find_package(mcx COMPONENTS testing) -> mcx::testing): the
// conformance suite in three lines, and the fault-injection sweep. The
// freelist kind stands in for the consumer's own kind here.

#include "mcx/freelist/freelist.h"
#include "mcx/testing/kind_conformance.h"
#include "mcx/testing/sweep.h"

struct MyKindTraits : mcx::test::KindTraitsDefaults {
  static mcx::KindSpec Spec() { return mcx::FreelistKind(); }
};
MCX_INSTANTIATE_KIND_CONFORMANCE_TEST(MyKind, MyKindTraits);

TEST(MyKindSweepTest, EveryFailedAcquisitionIsClean) {
  const int acquisitions = mcx::test::SweepFailures(mcx::FreelistKind(), [](mcx::Context* top) {
    mcx::Context* c = top->CreateChild("c", mcx::FreelistKind());
    for (int i = 0; i < 500; ++i) c->Alloc(i % 20 == 0 ? 100000 : 48);  // above chunk_limit: blocks of their own
    c->Reset(mcx::ResetOptions::KeepBytes(16 * 1024));
  });
  EXPECT_GT(acquisitions, 10);
}
