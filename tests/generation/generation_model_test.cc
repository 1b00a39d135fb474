// The generation kind against a model: random allocations, frees (mostly
// oldest first, with jitter, and some at random), reallocations and
// resets with fixed seeds; every live chunk's bytes are checked, and the
// kind's invariants (Check) and block counts as it goes. Deterministic; not
// a benchmark.

#include <algorithm>
#include <cstdint>
#include <deque>
#include <ostream>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/generation/generation.h"
#include "mcx/testing/inspect_check.h"
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
};

struct Case {
  const char* name;
  GenerationOptions options;
  size_t max_size;
  uint32_t seed;
};

// Named in test output; gtest would print the options' raw bytes, padding
// and all (memcheck rightly calls those uninitialised).
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class GenerationModelTest : public ::testing::TestWithParam<Case> {};

TEST_P(GenerationModelTest, RandomOperationsKeepEveryChunkIntact) {
  const Case& c = GetParam();
  test::CountingBlockSource source;
  ContextOptions co;
  co.block_source = &source;
  Context* ctx = CreateGenerationContext(nullptr, c.name, c.options, co);
  std::mt19937 rng(c.seed);
  std::deque<Live> live;  // in order of birth
  uint32_t next_seed = 1;
  auto check = [&] {
    std::string error;
    ASSERT_TRUE(ctx->Check(&error)) << error;
    for (const Live& l : live) ASSERT_TRUE(Holds(l.p, l.size, l.seed));
    ASSERT_TRUE(test::ExpectInspectAddsUp(ctx));
  };
  for (int op = 0; op < 60000; ++op) {
    const uint32_t r = rng() % 100;
    if (r < 50 || live.empty()) {
      const size_t size = rng() % 16 == 0 ? rng() % (4 * c.max_size) : rng() % c.max_size;
      void* p = rng() % 50 == 0 ? ctx->AllocAligned(size, size_t{64} << (rng() % 4))
                                : ctx->Alloc(size);
      Fill(p, size, next_seed);
      live.push_back({p, size, next_seed++});
    } else if (r < 95) {
      // The oldest, give or take a few (FIFO with jitter); now and then any.
      const size_t window = std::min<size_t>(live.size(), rng() % 10 == 0 ? live.size() : 8);
      const size_t i = rng() % window;
      ASSERT_TRUE(Holds(live[i].p, live[i].size, live[i].seed));
      if (rng() % 2 == 0) {
        ctx->Free(live[i].p);
      } else {
        mcx::Free(live[i].p);
      }
      live.erase(live.begin() + static_cast<ptrdiff_t>(i));
    } else if (r < 99) {
      Live& l = live[rng() % live.size()];
      const size_t size = rng() % (2 * c.max_size);
      void* q = mcx::Realloc(l.p, size);
      ASSERT_TRUE(Holds(q, std::min(size, l.size), l.seed));
      Fill(q, size, l.seed);
      l.p = q;
      l.size = size;
    } else if (rng() % 20 == 0) {
      ctx->Reset(rng() % 2 == 0 ? ResetOptions() : ResetOptions::KeepBytes(128 * 1024));
      live.clear();
    }
    if (op % 2000 == 0) check();
  }
  check();
  while (!live.empty()) {
    ctx->Free(live.front().p);
    live.pop_front();
  }
  // Everything freed: the first block, at most one spare and the current
  // block are all that is left.
  if (!internal::kDirect) {
    EXPECT_LE(ctx->num_blocks(), 3u);
  }
  check();
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
  EXPECT_EQ(source.bad_releases(), 0);
}

GenerationOptions Options(size_t initial, size_t max, size_t limit, bool keep) {
  GenerationOptions o;
  o.initial_block_size = initial;
  o.max_block_size = max;
  o.chunk_limit = limit;
  o.keep_free_block = keep;
  return o;
}

INSTANTIATE_TEST_SUITE_P(
    Seeds, GenerationModelTest,
    ::testing::Values(Case{"default", GenerationOptions(), 1024, 21},
                      Case{"small", Options(1024, 4096, 300, true), 256, 22},
                      Case{"nospare", Options(2048, 8192, 0, false), 600, 23},
                      Case{"large", Options(8192, 1 << 20, 0, true), 8000, 24}),
    [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace mcx
