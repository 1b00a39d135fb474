// The slab kind against a model: random allocations, frees, reallocations
// and resets with fixed seeds, every live object's bytes checked against
// what was written, the kind's invariants (Check) and its counters checked
// against the model as it goes: free bytes, and live bytes with their peak
// after every operation (an object counts its object size, a dedicated chunk
// at least what was asked for). Deterministic; not a benchmark.

#include <algorithm>
#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/inspect.h"
#include "mcx/context/stats.h"
#include "mcx/slab/slab.h"
#include "mcx/testing/inspect_check.h"
#include "mcx/testing/live_count.h"
#include "mcx/testing/patterns.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

using test::Fill;
using test::Holds;

struct Live {
  void* p;
  size_t size;
  uint32_t seed;
  bool object;    // in a slot (else a dedicated chunk)
  size_t counted;  // what live_bytes() counts it for
};

struct Case {
  const char* name;
  SlabOptions options;
  uint32_t seed;
};

// Named in test output; gtest would print the options' raw bytes, padding
// and all (memcheck rightly calls those uninitialised).
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class SlabModelTest : public ::testing::TestWithParam<Case> {};

TEST_P(SlabModelTest, RandomOperationsKeepEveryObjectIntact) {
  const Case& c = GetParam();
  test::CountingBlockSource source;
  ContextOptions co;
  co.block_source = &source;
  Context* ctx = CreateSlabContext(nullptr, c.name, c.options, co);
  const SlabGeometry g = GetSlabGeometry(ctx);
  const bool dedicated = c.options.larger == SlabLarger::kDedicatedBlock;
  std::mt19937 rng(c.seed);
  std::vector<Live> live;
  uint32_t next_seed = 1;
  test::LiveCount model;
  auto check = [&] {
    std::string error;
    ASSERT_TRUE(ctx->Check(&error)) << error;
    size_t objects = 0;
    for (const Live& l : live) {
      ASSERT_TRUE(Holds(l.p, l.size, l.seed));
      objects += l.object ? 1 : 0;
    }
    // Every slot of every block is live or free.
    const ContextCounters counters = GetCounters(ctx);
    const ContextLayout layout = InspectContext(ctx);
    size_t slots = 0;
    for (const BlockInfo& b : layout.blocks) {
      if (b.role == BlockRole::kNormal || b.role == BlockRole::kSpare) slots += g.objects_per_block;
    }
    ASSERT_EQ(counters.free_bytes, (slots - objects) * g.stride);
    ASSERT_TRUE(test::ExpectInspectAddsUp(ctx));
  };
  for (int op = 0; op < 60000; ++op) {
    const uint32_t r = rng() % 100;
    if (r < 50 || live.empty()) {
      // Allocate: mostly objects; with dedicated blocks, some larger chunks.
      size_t size = 1 + rng() % g.object_size;
      bool object = true;
      if (dedicated && rng() % 20 == 0) {
        size = g.object_size + 1 + rng() % 5000;
        object = false;
      }
      const size_t before = ctx->live_bytes();
      void* p = ctx->Alloc(size);
      const size_t got = ctx->live_bytes() - before;
      if (object) {
        ASSERT_EQ(got, g.object_size);
      } else {
        ASSERT_GE(got, size);
      }
      model.Add(got);
      Fill(p, size, next_seed);
      live.push_back({p, size, next_seed++, object, got});
    } else if (r < 92) {
      const size_t i = rng() % live.size();
      ASSERT_TRUE(Holds(live[i].p, live[i].size, live[i].seed));
      ctx->Free(live[i].p);
      model.Remove(live[i].counted);
      live[i] = live.back();
      live.pop_back();
    } else if (r < 99) {
      // Realloc within the object (in place), or out of it.
      Live& l = live[rng() % live.size()];
      size_t size = 1 + rng() % g.object_size;
      if (dedicated && rng() % 4 == 0) size = g.object_size + 1 + rng() % 3000;
      const size_t before = ctx->live_bytes();
      void* q = ctx->Realloc(l.p, size);
      if (l.object && size <= g.object_size) {
        ASSERT_EQ(q, l.p);
      }
      const size_t got = ctx->live_bytes() + l.counted - before;
      ASSERT_GE(got, std::min(size, g.object_size));
      // A move holds the old chunk and the new one for a moment.
      if (q != l.p) model.HeldBoth(before, got);
      model.Remove(l.counted);
      model.Add(got);
      ASSERT_TRUE(Holds(q, std::min(size, l.size), l.seed));
      Fill(q, size, l.seed);
      l = {q, size, l.seed, size <= g.object_size && l.object, got};
    } else if (rng() % 10 == 0) {
      ctx->ResetPeak();
      model.ResetPeak();
    } else if (rng() % 20 == 0) {
      ctx->Reset(rng() % 2 == 0 ? ResetOptions() : ResetOptions::KeepBytes(256 * 1024));
      live.clear();
      model.Clear();
    }
    ASSERT_TRUE(model.Matches(ctx)) << "op " << op;
    if (op % 2000 == 0) check();
  }
  check();
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
  EXPECT_EQ(source.bad_releases(), 0);
}

SlabOptions Options(size_t size, size_t block, uint32_t alignment, uint16_t keep, SlabLarger larger) {
  SlabOptions o;
  o.object_size = size;
  o.block_size = block;
  o.alignment = alignment;
  o.keep_empty_blocks = keep;
  o.larger = larger;
  return o;
}

void Construct(void* object, void*) noexcept { static_cast<char*>(object)[0] = 1; }

SlabOptions Constructed() {
  SlabOptions o = Options(72, 2048, 8, 1, SlabLarger::kDedicatedBlock);
  o.constructor = &Construct;
  return o;
}

INSTANTIATE_TEST_SUITE_P(
    Seeds, SlabModelTest,
    ::testing::Values(Case{"small", Options(32, 1024, 16, 0, SlabLarger::kRefuse), 11},
                      Case{"default", Options(200, 0, 16, 1, SlabLarger::kRefuse), 12},
                      Case{"packed", Options(24, 512, 8, 2, SlabLarger::kRefuse), 13},
                      Case{"dedicated", Options(100, 4096, 16, 1, SlabLarger::kDedicatedBlock), 14},
                      Case{"aligned", Options(48, 8192, 64, 1, SlabLarger::kDedicatedBlock), 15},
                      Case{"constructed", Constructed(), 16}),
    [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace mcx
