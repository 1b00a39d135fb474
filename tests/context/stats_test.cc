// The O(1) counters (live bytes, bytes in blocks, their high-water marks and
// ResetPeak), the sized free, and limits that mean data: a block that would
// cross a limit gives way to a smaller one that fits.

#include "mcx/context/stats.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/internal/checking.h"
#include "mcx/freelist/freelist.h"
#include "mcx/freelist/size_class.h"
#include "mcx/generation/generation.h"
#include "mcx/pool/pool.h"

namespace mcx {
namespace {

// Exact numbers hold where every chunk is what it looks like: checking
// builds add a header and a sentinel per pool chunk, direct mode gives every
// chunk a block of its own.
bool ExactBuild() { return !internal::kChecking && !internal::kDirect; }

// Checking, ASan and Valgrind builds keep each freelist chunk's requested
// size in a second header word: a longer stride, and ChunkSize says what
// was asked for rather than the class.
bool FreelistHasPlainHeaders() {
  return ExactBuild() && !internal::kAddressSanitizer && !internal::kValgrind;
}

// A fixed-seed generator (xorshift64*), as the other randomised tests use.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t Next() {
    s_ ^= s_ >> 12;
    s_ ^= s_ << 25;
    s_ ^= s_ >> 27;
    return s_ * 0x2545F4914F6CDD1DULL;
  }
  size_t Uniform(size_t lo, size_t hi) { return lo + Next() % (hi - lo + 1); }

 private:
  uint64_t s_;
};

// The pool counts the bytes it bumps for small chunks: multiples of the
// default alignment bump exactly their size, inline path or not, and a
// large chunk counts what was asked for.
TEST(CountersTest, PoolCountsBumpedBytesAndLargeChunks) {
  Context* ctx = CreatePoolContext(nullptr, "pool");
  EXPECT_EQ(ctx->live_bytes(), 0u);
  for (int i = 0; i < 10; ++i) ctx->Alloc(32);
  if (ExactBuild()) {
    EXPECT_EQ(ctx->live_bytes(), 320u);
  }
  EXPECT_GE(ctx->live_bytes(), 320u);
  const size_t small = ctx->live_bytes();
  void* big = ctx->Alloc(100000);
  EXPECT_EQ(ctx->live_bytes(), small + 100000);
  const size_t blocks_with_big = ctx->bytes_in_blocks();
  ctx->Free(big);
  EXPECT_EQ(ctx->live_bytes(), small);
  EXPECT_EQ(ctx->peak_live_bytes(), small + 100000);
  EXPECT_LT(ctx->bytes_in_blocks(), blocks_with_big);
  EXPECT_EQ(ctx->peak_bytes_in_blocks(), blocks_with_big);
  ctx->Reset();
  EXPECT_EQ(ctx->live_bytes(), 0u);
  EXPECT_EQ(ctx->peak_live_bytes(), small + 100000);  // Reset leaves the marks
  ctx->ResetPeak();
  EXPECT_EQ(ctx->peak_live_bytes(), 0u);
  EXPECT_EQ(ctx->peak_bytes_in_blocks(), ctx->bytes_in_blocks());
  ctx->Destroy();
}

// A shadow model over a random mix of allocations, frees, resets and
// ResetPeak: live bytes always match the model's sum, the marks never fall
// below what is held, never move between changes, and only ResetPeak lowers
// them.
TEST(CountersTest, RandomMixMatchesAModel) {
  for (const size_t max_small : {size_t{4096}, size_t{256}}) {
    const bool pool = true;  // the built-in kind that counts live bytes
    PoolOptions po;
    po.max_small = max_small;  // 256: many more large chunks, freed one by one
    Context* ctx = Context::Create(nullptr, "pool", PoolKind(po));
    Rng rng(max_small);
    struct Live {
      void* p;
      size_t counted;
    };
    std::vector<Live> live;
    size_t sum = 0, peak = 0, block_peak = ctx->bytes_in_blocks();
    for (int step = 0; step < 20000; ++step) {
      const size_t op = rng.Uniform(0, 99);
      if (op < 60 || live.empty()) {
        // Large chunks now and then: they can be freed in both kinds.
        const size_t size = rng.Uniform(0, 19) == 0 ? rng.Uniform(5000, 20000) : rng.Uniform(1, 600);
        const size_t before = ctx->live_bytes();
        void* p = ctx->Alloc(size);
        live.push_back({p, ctx->live_bytes() - before});
        EXPECT_GE(live.back().counted, size);
        sum += live.back().counted;
      } else if (op < 97) {
        const size_t i = rng.Uniform(0, live.size() - 1);
        const size_t before = ctx->live_bytes();
        ctx->Free(live[i].p);
        // A pool's small chunk stays until the reset; everything else goes.
        const size_t gone = before - ctx->live_bytes();
        EXPECT_TRUE(gone == live[i].counted || (pool && gone == 0)) << gone;
        sum -= gone;
        if (gone == 0) {
          live[i].p = nullptr;  // held, but no longer the caller's
        } else {
          live[i] = live.back();
          live.pop_back();
        }
      } else if (op < 98) {
        ctx->Reset();
        live.clear();
        sum = 0;
      } else {
        ctx->ResetPeak();
        peak = sum;
        block_peak = ctx->bytes_in_blocks();
      }
      if (sum > peak) peak = sum;
      if (ctx->bytes_in_blocks() > block_peak) block_peak = ctx->bytes_in_blocks();
      ASSERT_EQ(ctx->live_bytes(), sum) << step;
      ASSERT_EQ(ctx->peak_live_bytes(), peak) << step;
      ASSERT_GE(ctx->peak_bytes_in_blocks(), block_peak) << step;
      ASSERT_GE(ctx->peak_bytes_in_blocks(), ctx->bytes_in_blocks()) << step;
      block_peak = ctx->peak_bytes_in_blocks();
      // Pool slots freed as no-ops are forgotten by the model.
      if (pool) {
        for (size_t i = 0; i < live.size();) {
          if (live[i].p == nullptr) {
            live[i] = live.back();
            live.pop_back();
          } else {
            ++i;
          }
        }
      }
    }
    ctx->Destroy();
  }
}

// Subtree counters add the contexts' own; ResetSubtreePeaks resets each.
TEST(CountersTest, SubtreeSumsAndResetSubtreePeaks) {
  Context* top = CreatePoolContext(nullptr, "top");
  Context* a = top->CreateChild("a", PoolKind());
  Context* b = a->CreateChild("b", PoolKind());
  top->Alloc(64);
  void* x = a->Alloc(20000);  // large: freed one by one
  b->Alloc(48);
  a->Free(x);
  ContextCounters all = GetSubtreeCounters(top);
  EXPECT_EQ(all.live_bytes, top->live_bytes() + a->live_bytes() + b->live_bytes());
  EXPECT_EQ(all.peak_live_bytes,
            top->peak_live_bytes() + a->peak_live_bytes() + b->peak_live_bytes());
  EXPECT_EQ(all.peak_block_bytes, top->peak_bytes_in_blocks() + a->peak_bytes_in_blocks() +
                                      b->peak_bytes_in_blocks());
  EXPECT_GT(a->peak_live_bytes(), a->live_bytes());
  ResetSubtreePeaks(top);
  all = GetSubtreeCounters(top);
  EXPECT_EQ(all.peak_live_bytes, all.live_bytes);
  EXPECT_EQ(a->peak_live_bytes(), 0u);
  top->Destroy();
}

// Every report format shows the counters.
TEST(CountersTest, ReportsShowLiveBytesAndPeaks) {
  Context* top = CreatePoolContext(nullptr, "top");
  top->Free(top->Alloc(30000));
  void* kept = top->Alloc(100);
  (void)kept;
  const ContextCounters c = GetCounters(top);
  const std::string text = StatsReport(top);
  const std::string suffix = "; live " + std::to_string(c.live_bytes) + " (peak " +
                             std::to_string(c.peak_live_bytes) + "); blocks peak " +
                             std::to_string(c.peak_block_bytes);
  EXPECT_NE(text.find(suffix + "\n"), std::string::npos) << text;
  EXPECT_NE(text.find("used" + suffix + "\nGrand total"), std::string::npos) << text;
  ReportOptions json;
  json.format = ReportFormat::kJson;
  const std::string j = StatsReport(top, json);
  EXPECT_NE(j.find("\"live_bytes\": " + std::to_string(c.live_bytes) +
                   ", \"peak_live_bytes\": " + std::to_string(c.peak_live_bytes) +
                   ", \"peak_block_bytes\": " + std::to_string(c.peak_block_bytes)),
            std::string::npos)
      << j;
  top->Destroy();
}

// Limits mean data: a context with a limit, filled with random 8..1024 B
// chunks, is refused only once the chunks' own bytes are above 90% of it
// (when the next doubled block would cross the limit, the ledger hands out
// a smaller one that fits what is left).
TEST(LimitTest, RandomChunksFillAboveNinetyPercent) {
  constexpr double kLeast = 0.90;
  for (const bool pool : {true, false}) {
    for (const size_t limit : {size_t{256} << 10, size_t{1} << 20, size_t{8} << 20}) {
      ContextOptions o;
      o.limit = limit;
      Context* ctx = pool ? Context::Create(nullptr, "pool", PoolKind(), o)
                          : Context::Create(nullptr, "freelist", FreelistKind(), o);
      Rng rng(limit);
      size_t requested = 0;
      for (;;) {
        const size_t size = rng.Uniform(8, 1024);
        if (ctx->TryAlloc(size) == nullptr) break;
        requested += size;
      }
      EXPECT_EQ(ctx->last_failure(), Failure::kLimit);
      EXPECT_LE(ctx->SubtreeBytes(), limit);
      if (pool ? ExactBuild() : FreelistHasPlainHeaders()) {
        EXPECT_GT(static_cast<double>(requested), kLeast * static_cast<double>(limit))
            << (pool ? "pool " : "freelist ") << limit << ": " << requested;
      }
      ctx->Destroy();
    }
  }
}

// A block that would cross the limit gives way to a smaller one only if the
// request fits in it: a large chunk is all or nothing.
TEST(LimitTest, SmallerBlockOnlyWhereTheRequestFits) {
  ContextOptions o;
  o.limit = 64 << 10;
  Context* ctx = Context::Create(nullptr, "pool", PoolKind(), o);
  EXPECT_EQ(ctx->TryAlloc(60 << 10), nullptr);  // large: its own block
  while (ctx->TryAlloc(1000) != nullptr) {
  }
  EXPECT_EQ(ctx->last_failure(), Failure::kLimit);
  EXPECT_LE(ctx->SubtreeBytes(), o.limit);
  EXPECT_GT(ctx->SubtreeBytes(), o.limit - 2 * 1024);
  ctx->Destroy();
}

// The sized free frees as Free does.
TEST(SizedFreeTest, FreesLikeFree) {
  Context* ctx = Context::Create(nullptr, "freelist", FreelistKind());
  void* p = ctx->Alloc(40);
  ctx->Free(p, 40);
  void* q = ctx->Alloc(40);
  EXPECT_EQ(q, p);  // the freed chunk is reused
  ctx->Free(q, 40);
  ctx->Free(nullptr, 0);
  Context* pool = CreatePoolContext(nullptr, "pool");
  void* big = pool->Alloc(20000);
  const size_t blocks = pool->bytes_in_blocks();
  pool->Free(big, 20000);
  EXPECT_LT(pool->bytes_in_blocks(), blocks);
  pool->Destroy();
  ctx->Destroy();
}

std::string* misuse_seen = nullptr;
void RecordMisuse(const char* message) { *misuse_seen = message; }

// Checking builds report a size other than the one the chunk was asked
// for, where the kind keeps it (freelist chunks, pool large chunks,
// generation chunks; a smaller one too: a sized delete through a base
// class), and a size larger than the chunk holds elsewhere; then free it.
TEST(SizedFreeTest, CheckingBuildsReportAWrongSize) {
  if (!internal::kChecking) GTEST_SKIP() << "checked in checking builds";
  std::string seen;
  misuse_seen = &seen;
  MisuseHandler previous = SetMisuseHandler(&RecordMisuse);
  Context* freelist = Context::Create(nullptr, "freelist", FreelistKind());
  Context* pool = CreatePoolContext(nullptr, "pool");
  Context* generation = Context::Create(nullptr, "generation", GenerationKind());
  for (Context* ctx : {freelist, pool, generation}) {
    SCOPED_TRACE(ctx->name());
    const size_t size = ctx == pool ? 20000 : 40;
    for (size_t wrong : {size + 1, size - 8, size_t{1}}) {
      seen.clear();
      void* p = ctx->Alloc(size);
      ctx->Free(p, wrong);
      const std::string expected = "with size " + std::to_string(wrong) +
                                   ", but it was allocated with " + std::to_string(size);
      EXPECT_NE(seen.find(expected), std::string::npos) << seen;
    }
    seen.clear();
    void* q = ctx->Alloc(size);
    q = ctx->Realloc(q, size, size + 100);  // the size it was last resized to
    ctx->Free(q, size + 100);
    EXPECT_TRUE(seen.empty()) << seen;
    void* aligned = ctx->AllocAligned(size, 256);
    ctx->Free(aligned, size);
    EXPECT_TRUE(seen.empty()) << seen;
    if (ctx != pool) {  // a small pool chunk stays until the reset
      ctx->Free(ctx->Alloc(0), 0);  // served as 1 byte, freed as asked for
      EXPECT_TRUE(seen.empty()) << seen;
    }
    EXPECT_EQ(ctx->live_bytes() == kUnknownSize ? 0 : ctx->live_bytes(), 0u);
  }
  // A pool's small chunks keep no size: only one larger than they hold is
  // reported, if any is known; a size below it passes.
  seen.clear();
  pool->Free(pool->Alloc(40), 8);
  EXPECT_TRUE(seen.empty()) << seen;
  freelist->Destroy();
  pool->Destroy();
  generation->Destroy();
  SetMisuseHandler(previous);
  misuse_seen = nullptr;
}

}  // namespace
}  // namespace mcx
