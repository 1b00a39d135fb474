// Teardown is iterative: a chain of 1,000,000 nested contexts can be reset
// and destroyed, and cleanups along it run in the documented order. A
// recursive walk would overflow the stack here long before the end.

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/stats.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

constexpr int kDepth = 1000000;

PoolOptions Tiny() {
  PoolOptions o;
  o.initial_block_size = 512;
  return o;
}

struct Counter {
  int64_t runs = 0;
  int64_t last_depth = -1;
  bool in_order = true;  // deepest first
};

TEST(DeepTreeTest, MillionDeepChainResetsAndDestroys) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  test::CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* root = CreatePoolContext(nullptr, "root", Tiny(), o);
  Counter counter;
  struct Arg {
    Counter* counter;
    int64_t depth;
  };
  for (int round = 0; round < 2; ++round) {
    Context* c = root;
    for (int64_t d = 1; d <= kDepth; ++d) {
      c = c->CreateChild("n", PoolKind(Tiny()));
      if (d % 1000 == 0) {
        auto* arg = static_cast<Arg*>(c->Alloc(sizeof(Arg)));
        *arg = {&counter, d};
        c->AddCleanup(
            [](void* p) {
              auto* a = static_cast<Arg*>(p);
              if (a->counter->last_depth != -1 && a->depth >= a->counter->last_depth) {
                a->counter->in_order = false;
              }
              a->counter->last_depth = a->depth;
              ++a->counter->runs;
            },
            arg);
      }
    }
    // Every context's first block, and the side records of the thousand
    // contexts with a cleanup.
    EXPECT_EQ(source.live_blocks(), kDepth + 1 + kDepth / 1000);
    ReportOptions shallow;
    shallow.max_depth = 3;
    EXPECT_NE(StatsReport(root, shallow).find("1 more child contexts"), std::string::npos);
    if (round == 0) {
      root->Reset();
    } else {
      root->DestroyChildren();
    }
    EXPECT_EQ(counter.runs, (round + 1) * (kDepth / 1000));
    EXPECT_TRUE(counter.in_order);
    counter.last_depth = -1;
    EXPECT_EQ(source.live_blocks(), 1);
    EXPECT_EQ(root->first_child(), nullptr);
  }
  // Finally build it once more and destroy from the root.
  Context* c = root;
  for (int d = 0; d < kDepth; ++d) c = c->CreateChild("n", PoolKind(Tiny()));
  root->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
  EXPECT_EQ(source.bad_releases(), 0);
}

}  // namespace
}  // namespace mcx
