#include "mcx/testing/sweep.h"

#include <new>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace test {
namespace {

std::vector<Context*> TreeOf(Context* top) {
  std::vector<Context*> all;
  std::vector<Context*> stack = {top};
  while (!stack.empty()) {
    Context* c = stack.back();
    stack.pop_back();
    all.push_back(c);
    for (Context* k = c->first_child(); k != nullptr; k = k->next_sibling()) stack.push_back(k);
  }
  return all;
}

}  // namespace

void ExpectTreeConsistent(const Context* top) {
  for (Context* c : TreeOf(const_cast<Context*>(top))) {
    std::string error;
    EXPECT_TRUE(c->Check(&error)) << "context '" << c->name() << "': " << error;
    // The marks cover what is held; live chunks lie in the context's blocks.
    EXPECT_GE(c->peak_bytes_in_blocks(), c->bytes_in_blocks()) << "context '" << c->name() << "'";
    if (c->live_bytes() != kUnknownSize) {
      EXPECT_GE(c->peak_live_bytes(), c->live_bytes()) << "context '" << c->name() << "'";
      EXPECT_LE(c->live_bytes(), c->bytes_in_blocks()) << "context '" << c->name() << "'";
    }
  }
}

int SweepFailures(const KindSpec& top_kind, const Workload& workload) {
  // One report, not one per acquisition: the sweep stops at the first run
  // that fails a check (if the test had not failed before).
  const bool failed_before = testing::Test::HasFailure();
  for (int n = 1; n <= kSweepMaxAcquisitions; ++n) {
    SCOPED_TRACE(testing::Message() << "failing block acquisition " << n);
    FailingBlockSource source;
    ContextOptions o;
    o.block_source = &source;
    Context* top = Context::Create(nullptr, "top", top_kind, o);
    source.FailNth(n);
    bool failed = false;
    try {
      workload(top);
    } catch (const std::bad_alloc&) {
      failed = true;
    }
    const bool acquisition_failed = source.failures() > 0;
    source.Heal();  // the workload may have finished before the Nth
    EXPECT_EQ(failed, acquisition_failed)
        << (failed ? "std::bad_alloc without a failed acquisition"
                   : "a failed acquisition did not surface as std::bad_alloc");
    ExpectTreeConsistent(top);
    // Every context is still usable, on both of a kind's paths.
    for (Context* c : TreeOf(top)) {
      const size_t live = c->live_bytes();
      EXPECT_NE(c->TryAlloc(kSweepSmallRequest), nullptr) << "context '" << c->name() << "'";
      EXPECT_NE(c->TryAlloc(kSweepLargeRequest), nullptr) << "context '" << c->name() << "'";
      if (live != kUnknownSize) {
        EXPECT_GE(c->live_bytes(), live + kSweepSmallRequest + kSweepLargeRequest)
            << "context '" << c->name() << "'";
      }
    }
    ExpectTreeConsistent(top);
    top->Destroy();
    EXPECT_EQ(source.live_blocks(), 0) << "blocks leaked";
    EXPECT_EQ(source.bad_releases(), 0) << "blocks released with a wrong size or twice";
    if (!acquisition_failed || (!failed_before && testing::Test::HasFailure())) return n - 1;
  }
  ADD_FAILURE() << "the workload still acquires blocks after " << kSweepMaxAcquisitions
                << " acquisitions";
  return kSweepMaxAcquisitions;
}

}  // namespace test
}  // namespace mcx
