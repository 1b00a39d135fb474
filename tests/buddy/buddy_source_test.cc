// The buddy block source (buddy/buddy_source.h): carving, splitting and
// merging in both split modes, exhaustion, alignment, in-place resizing,
// misuse, threads, a static definition used before main, and contexts of
// every kind running over it, down to exhaustion with a reserve and a
// failure handler, and slab blocks over a region aligned only to a page.

#include "mcx/buddy/buddy_source.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/freelist/freelist.h"
#include "mcx/generation/generation.h"
#include "mcx/pool/pool.h"
#include "mcx/slab/slab.h"

// --- A static source, used before main ---------------------------------------

// 8 blocks of 64 KiB, aligned to 64 KiB; nothing runs to construct it.
MCX_BUDDY_SOURCE_DEFINE(static_region, 256, 64 * 1024, 8);

namespace {

// A global whose constructor runs before main and uses the static source:
// that works only because the source needs no constructor of its own.
struct UsesSourceEarly {
  UsesSourceEarly() {
    mcx::ContextOptions o;
    o.block_source = &static_region;
    mcx::Context* ctx = mcx::Context::Create(nullptr, "early", mcx::PoolKind(), o);
    ctx->Strdup("made before main");
    used_bytes = static_region.GetStats().used_bytes;
    ctx->Destroy();
  }
  size_t used_bytes = 0;
} uses_source_early;

}  // namespace

namespace mcx {
namespace {

alignas(1 << 20) unsigned char big_buffer[4 << 20];
// State kept apart from the region: the region is then exactly whole
// max_block blocks (no tail), as with the static definition.
unsigned char state_bytes[(1 << 20) / 1024];

void Fill(void* p, size_t n, uint32_t seed) {
  auto* b = static_cast<unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<unsigned char>(seed * 131 + i * 7 + 1);
}

bool Holds(const void* p, size_t n, uint32_t seed) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) {
    if (b[i] != static_cast<unsigned char>(seed * 131 + i * 7 + 1)) return false;
  }
  return true;
}

void ExpectConsistent(const BuddyBlockSource& s) {
  std::string error;
  EXPECT_TRUE(s.Check(&error)) << error;
}

BuddyOptions Options(size_t min, size_t max, BuddySplit split = BuddySplit::kBinary) {
  BuddyOptions o;
  o.min_block = min;
  o.max_block = max;
  o.split = split;
  return o;
}

std::vector<std::string>* reports = nullptr;
void Record(const char* message) { reports->push_back(message); }

class MisuseCapture {
 public:
  MisuseCapture() {
    reports = &seen;
    previous_ = SetMisuseHandler(&Record);
  }
  ~MisuseCapture() {
    SetMisuseHandler(previous_);
    reports = nullptr;
  }
  std::vector<std::string> seen;

 private:
  MisuseHandler previous_;
};

TEST(BuddySourceTest, StaticDefinitionWorksBeforeMain) {
  EXPECT_GE(uses_source_early.used_bytes, size_t{256});
  BuddyBlockSource::Stats s = static_region.GetStats();
  EXPECT_EQ(s.used_bytes, 0u);
  EXPECT_EQ(s.region_bytes, 8u * 64 * 1024);
  EXPECT_EQ(s.state_bytes, 8u * 64 * 1024 / 256);
  EXPECT_EQ(s.free_blocks, 8u);  // merged back into the eight 64 KiB blocks
  EXPECT_EQ(static_region.region_alignment(), 64u * 1024);
  ExpectConsistent(static_region);
}

TEST(BuddySourceTest, RegionIsCarvedIntoMaxBlocks) {
  BuddyBlockSource source(big_buffer, 1 << 20, Options(4096, 256 * 1024));
  BuddyBlockSource::Stats s = source.GetStats();
  // 1 MiB less the state (one byte per 4 KiB): 255 blocks of 4 KiB fit,
  // carved as 3 x 256 KiB, then 128, 64, 32, 16, 8, 4 KiB.
  EXPECT_EQ(s.region_bytes, 255u * 4096);
  EXPECT_EQ(s.state_bytes, 255u);
  EXPECT_EQ(s.free_blocks, 3u + 6u);
  EXPECT_EQ(s.free_bytes, 255u * 4096);
  EXPECT_EQ(s.largest_free_block, 256u * 1024);
  EXPECT_EQ(source.levels(), 7);
  EXPECT_EQ(source.region_alignment(), 256u * 1024);
  ExpectConsistent(source);
}

class BuddySplitTest : public ::testing::TestWithParam<BuddySplit> {};

INSTANTIATE_TEST_SUITE_P(Splits, BuddySplitTest,
                         ::testing::Values(BuddySplit::kBinary, BuddySplit::kQuad),
                         [](const ::testing::TestParamInfo<BuddySplit>& info) {
                           return info.param == BuddySplit::kBinary ? "Binary" : "Quad";
                         });

// Acquire hands out the smallest block that holds the request, at a
// multiple of its size, and reports its size.
TEST_P(BuddySplitTest, SmallestBlockThatFits) {
  BuddyBlockSource source(big_buffer, 4 << 20, Options(256, 1 << 20, GetParam()));
  const size_t factor = GetParam() == BuddySplit::kBinary ? 2 : 4;
  for (size_t n : {size_t{1}, size_t{256}, size_t{257}, size_t{1000}, size_t{4096},
                   size_t{5000}, size_t{70000}, size_t{1} << 20}) {
    Block b = source.Acquire(n, kMinBlockAlignment);
    ASSERT_NE(b.ptr, nullptr) << n;
    size_t expect = 256;
    while (expect < n) expect *= factor;
    EXPECT_EQ(b.size, expect) << n;
    EXPECT_EQ((static_cast<unsigned char*>(b.ptr) - big_buffer) % b.size, 0u);
    Fill(b.ptr, b.size, 1);
    source.Release(b);
    ExpectConsistent(source);
  }
  EXPECT_EQ(source.GetStats().used_bytes, 0u);
}

// Every block of the smallest size, then all released in random order: the
// region merges back into its largest blocks.
TEST_P(BuddySplitTest, ReleasedBuddiesMergeBack) {
  BuddyBlockSource source(big_buffer, 1 << 20, Options(1024, 64 * 1024, GetParam()));
  const BuddyBlockSource::Stats fresh = source.GetStats();
  std::vector<std::pair<Block, uint32_t>> blocks;
  for (;;) {
    Block b = source.Acquire(1000, kMinBlockAlignment);
    if (b.ptr == nullptr) break;
    const uint32_t pattern = static_cast<uint32_t>(blocks.size());
    Fill(b.ptr, b.size, pattern);
    blocks.emplace_back(b, pattern);
  }
  EXPECT_EQ(blocks.size(), fresh.region_bytes / 1024);
  BuddyBlockSource::Stats full = source.GetStats();
  EXPECT_EQ(full.free_bytes, 0u);
  EXPECT_EQ(full.largest_free_block, 0u);
  EXPECT_EQ(full.failures, 1u);
  ExpectConsistent(source);
  std::mt19937 rng(7);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  for (size_t i = 0; i < blocks.size(); ++i) {
    ASSERT_TRUE(Holds(blocks[i].first.ptr, blocks[i].first.size, blocks[i].second));
    source.Release(blocks[i].first);
    if (i % 97 == 0) ExpectConsistent(source);
  }
  BuddyBlockSource::Stats after = source.GetStats();
  EXPECT_EQ(after.free_blocks, fresh.free_blocks);
  EXPECT_EQ(after.free_bytes, fresh.free_bytes);
  EXPECT_EQ(after.largest_free_block, 64u * 1024);
  EXPECT_EQ(after.peak_used_bytes, fresh.region_bytes);
  ExpectConsistent(source);
}

// Live blocks never overlap and keep their contents through a random run
// of acquisitions, releases and reallocations.
TEST_P(BuddySplitTest, RandomRunAgainstAModel) {
  for (uint32_t seed = 1; seed <= 6; ++seed) {
    // Regions of odd sizes: the tail is carved into smaller blocks.
    const size_t bytes = (3 << 20) + seed * 12345;
    BuddyBlockSource source(big_buffer + seed * 4096, bytes, Options(256, 256 * 1024, GetParam()));
    std::mt19937 rng(seed);
    std::map<uintptr_t, std::pair<size_t, uint32_t>> live;  // ptr -> size, pattern
    uint32_t next_pattern = 1;
    for (int step = 0; step < 4000; ++step) {
      const uint32_t op = rng() % 10;
      if (op < 5 || live.empty()) {
        size_t n = rng() % 4 == 0 ? 1 + rng() % (300 * 1024) : 1 + rng() % 6000;
        size_t alignment = size_t{16} << (rng() % 10);
        Block b = source.Acquire(n, alignment);
        if (b.ptr == nullptr) continue;
        ASSERT_GE(b.size, n);
        ASSERT_EQ(reinterpret_cast<uintptr_t>(b.ptr) % alignment, 0u);
        const uintptr_t p = reinterpret_cast<uintptr_t>(b.ptr);
        auto after = live.lower_bound(p);
        if (after != live.end()) {
          ASSERT_LE(p + b.size, after->first);
        }
        if (after != live.begin()) {
          auto before = std::prev(after);
          ASSERT_LE(before->first + before->second.first, p);
        }
        Fill(b.ptr, b.size, next_pattern);
        live[p] = {b.size, next_pattern++};
      } else if (op < 8) {
        auto it = live.begin();
        std::advance(it, rng() % live.size());
        void* p = reinterpret_cast<void*>(it->first);
        ASSERT_TRUE(Holds(p, it->second.first, it->second.second));
        // Sometimes give back less than was handed out (a context may).
        source.Release(Block{p, rng() % 2 == 0 ? it->second.first : it->second.first / 2 + 1});
        live.erase(it);
      } else {
        auto it = live.begin();
        std::advance(it, rng() % live.size());
        void* p = reinterpret_cast<void*>(it->first);
        const size_t old = it->second.first;
        const size_t n = 1 + rng() % (old * 3);
        Block b = source.Reallocate(Block{p, old}, std::min(old, n), n, kMinBlockAlignment);
        if (b.ptr == nullptr) {
          ASSERT_TRUE(Holds(p, old, it->second.second));  // untouched
          continue;
        }
        ASSERT_GE(b.size, n);
        ASSERT_TRUE(Holds(b.ptr, std::min(old, n), it->second.second));
        live.erase(it);
        Fill(b.ptr, b.size, next_pattern);
        live[reinterpret_cast<uintptr_t>(b.ptr)] = {b.size, next_pattern++};
      }
      if (step % 500 == 0) ExpectConsistent(source);
    }
    size_t used = 0;
    for (const auto& kv : live) used += kv.second.first;
    EXPECT_EQ(source.GetStats().used_bytes, used);
    for (const auto& kv : live) source.Release(Block{reinterpret_cast<void*>(kv.first), 1});
    BuddyBlockSource::Stats s = source.GetStats();
    EXPECT_EQ(s.used_bytes, 0u);
    EXPECT_EQ(s.free_bytes, s.region_bytes);
    ExpectConsistent(source);
  }
}

TEST(BuddySourceTest, ExhaustionAndTooLargeFailCleanly) {
  BuddyBlockSource source(big_buffer, 256 * 1024, Options(1024, 64 * 1024));
  EXPECT_EQ(source.Acquire((64 * 1024) + 1, kMinBlockAlignment).ptr, nullptr);
  std::vector<Block> blocks;
  for (Block b; (b = source.Acquire(64 * 1024, kMinBlockAlignment)).ptr != nullptr;) {
    blocks.push_back(b);
  }
  EXPECT_EQ(blocks.size(), 3u);  // 256 KiB less the state: three whole ones
  const BuddyBlockSource::Stats s = source.GetStats();
  EXPECT_EQ(source.Acquire(64 * 1024, kMinBlockAlignment).ptr, nullptr);
  EXPECT_EQ(source.GetStats().failures, s.failures + 1);
  EXPECT_EQ(source.GetStats().used_bytes, s.used_bytes);
  Block small = source.Acquire(1000, kMinBlockAlignment);  // the tail still serves
  EXPECT_NE(small.ptr, nullptr);
  source.Release(small);
  for (const Block& b : blocks) source.Release(b);
  ExpectConsistent(source);
}

// Alignment up to the region's is met with a block at least that large;
// beyond it, refused and counted.
TEST(BuddySourceTest, AlignmentBeyondTheRegionsIsRefused) {
  // A region whose start is aligned to 4 KiB and no more.
  unsigned char* start = big_buffer + 4096;
  BuddyBlockSource source(start, 1 << 20, Options(256, 64 * 1024));
  EXPECT_EQ(source.region_alignment(), 4096u);
  Block b = source.Acquire(100, 4096);
  ASSERT_NE(b.ptr, nullptr);
  EXPECT_EQ(b.size, 4096u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.ptr) % 4096, 0u);
  Block refused = source.Acquire(100, 8192);
  EXPECT_EQ(refused.ptr, nullptr);
  EXPECT_EQ(source.GetStats().refused_alignment, 1u);
  source.Release(b);
  ExpectConsistent(source);
}

TEST(BuddySourceTest, ReallocateInPlaceWhereBuddiesAllow) {
  BuddyBlockSource source(big_buffer, 1 << 20, state_bytes, sizeof state_bytes,
                          Options(1024, 256 * 1024));
  Block a = source.Acquire(1000, kMinBlockAlignment);
  ASSERT_EQ(a.size, 1024u);
  Fill(a.ptr, 1000, 3);
  // Its buddies are free: grows in place, up to 8 KiB.
  Block grown = source.Reallocate(a, 1000, 8000, kMinBlockAlignment);
  EXPECT_EQ(grown.ptr, a.ptr);
  EXPECT_EQ(grown.size, 8192u);
  EXPECT_TRUE(Holds(grown.ptr, 1000, 3));
  // A neighbour takes the next 8 KiB: growing to 16 KiB must move.
  Block neighbour = source.Acquire(8192, kMinBlockAlignment);
  ASSERT_EQ(static_cast<char*>(neighbour.ptr), static_cast<char*>(a.ptr) + 8192);
  Block moved = source.Reallocate(grown, 1000, 16000, kMinBlockAlignment);
  ASSERT_NE(moved.ptr, nullptr);
  EXPECT_NE(moved.ptr, a.ptr);
  EXPECT_EQ(moved.size, 16384u);
  EXPECT_TRUE(Holds(moved.ptr, 1000, 3));
  // Shrinking is in place, and frees the rest.
  Block shrunk = source.Reallocate(moved, 1000, 2000, kMinBlockAlignment);
  EXPECT_EQ(shrunk.ptr, moved.ptr);
  EXPECT_EQ(shrunk.size, 2048u);
  EXPECT_TRUE(Holds(shrunk.ptr, 1000, 3));
  EXPECT_GE(source.GetStats().reallocated_in_place, 2u);
  ExpectConsistent(source);
  source.Release(shrunk);
  source.Release(neighbour);
  EXPECT_EQ(source.GetStats().used_bytes, 0u);
  ExpectConsistent(source);
}

TEST(BuddySourceTest, ReleasesItDidNotHandOutAreMisuse) {
  BuddyBlockSource source(big_buffer, 1 << 20, state_bytes, sizeof state_bytes,
                          Options(1024, 64 * 1024));
  Block b = source.Acquire(1000, kMinBlockAlignment);
  MisuseCapture capture;
  int foreign = 0;
  source.Release(Block{&foreign, sizeof foreign});
  source.Release(Block{static_cast<char*>(b.ptr) + 1024, 16});  // inside, not a block start
  source.Release(Block{b.ptr, 4096});                           // larger than handed out
  source.Release(b);
  source.Release(b);  // twice
  ASSERT_EQ(capture.seen.size(), 4u);
  EXPECT_NE(capture.seen[0].find("did not hand out"), std::string::npos) << capture.seen[0];
  EXPECT_NE(capture.seen[1].find("not in use"), std::string::npos) << capture.seen[1];
  EXPECT_NE(capture.seen[2].find("it holds 1024"), std::string::npos) << capture.seen[2];
  EXPECT_NE(capture.seen[3].find("released twice"), std::string::npos) << capture.seen[3];
  EXPECT_EQ(source.GetStats().used_bytes, 0u);
  ExpectConsistent(source);
}

TEST(BuddySourceTest, InvalidOptionsAreMisuseAndEveryAcquireFails) {
  MisuseCapture capture;
  BuddyBlockSource bad_sizes(big_buffer, 1 << 20, Options(1000, 64 * 1024));
  EXPECT_FALSE(bad_sizes.valid());
  EXPECT_EQ(bad_sizes.Acquire(100, kMinBlockAlignment).ptr, nullptr);
  // Quad split needs max / min to be a power of 4.
  BuddyBlockSource bad_quad(big_buffer, 1 << 20, Options(1024, 32 * 1024, BuddySplit::kQuad));
  EXPECT_FALSE(bad_quad.valid());
  BuddyBlockSource too_small(big_buffer, 1000, Options(1024, 64 * 1024));
  EXPECT_FALSE(too_small.valid());
  // Sizes at the top of size_t: refused, not a division by zero or a wrap.
  BuddyBlockSource huge_min(big_buffer, 1 << 20, Options(~size_t{0}, 64 * 1024));
  EXPECT_FALSE(huge_min.valid());
  EXPECT_EQ(huge_min.Acquire(100, kMinBlockAlignment).ptr, nullptr);
  BuddyBlockSource huge_max(big_buffer, 1 << 20, Options(1024, ~size_t{0}));
  EXPECT_FALSE(huge_max.valid());
  EXPECT_EQ(huge_max.Acquire(100, kMinBlockAlignment).ptr, nullptr);
  EXPECT_EQ(capture.seen.size(), 5u);
  static_assert(BuddyOptionsValid(1024, 64 * 1024, BuddySplit::kQuad), "");
  static_assert(!BuddyOptionsValid(1024, 32 * 1024, BuddySplit::kQuad), "");
  static_assert(!BuddyOptionsValid(32, 64 * 1024), "");
}

// Free blocks are poisoned but for their link: a use of a released block
// is reported by ASan.
TEST(BuddySourceTest, ReleasedBlocksArePoisoned) {
  if (!internal::kAddressSanitizer) GTEST_SKIP() << "ASan builds only";
  BuddyBlockSource source(big_buffer, 1 << 20, Options(1024, 64 * 1024));
  Block b = source.Acquire(4096, kMinBlockAlignment);
  EXPECT_FALSE(internal::IsPoisoned(b.ptr, b.size));
  source.Release(b);
  EXPECT_TRUE(internal::IsPoisoned(static_cast<char*>(b.ptr) + 64, b.size - 64));
}

TEST(BuddySourceTest, ThreadsShareOneSource) {
  BuddyBlockSource source(big_buffer, 4 << 20, Options(256, 256 * 1024));
  std::atomic<int> bad{0};
  auto work = [&](uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<Block> mine;
    for (int i = 0; i < 3000; ++i) {
      if (mine.size() < 20 && rng() % 3 != 0) {
        Block b = source.Acquire(1 + rng() % 20000, kMinBlockAlignment);
        if (b.ptr == nullptr) continue;
        Fill(b.ptr, b.size, seed);
        mine.push_back(b);
      } else if (!mine.empty()) {
        Block b = mine.back();
        mine.pop_back();
        if (!Holds(b.ptr, b.size, seed)) ++bad;
        source.Release(b);
      }
    }
    for (const Block& b : mine) source.Release(b);
  };
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < 4; ++t) threads.emplace_back(work, t + 1);
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(source.GetStats().used_bytes, 0u);
  ExpectConsistent(source);
}

// --- Contexts over it -----------------------------------------------------------

struct KindCase {
  const char* name;
  KindSpec (*spec)();
};

// Blocks of at most the buddy's largest (64 KiB here): a kind asks for
// its next block size, and a source that cannot give that much fails it.
KindSpec Pool() {
  PoolOptions o;
  o.max_block_size = 64 * 1024;
  return PoolKind(o);
}
KindSpec Freelist() {
  FreelistOptions o;
  o.max_block_size = 64 * 1024;
  return FreelistKind(o);
}
KindSpec RewindingPool() {
  PoolOptions o;
  o.rewind_on_free = true;
  return PoolKind(o);
}
// Objects of the tests' small requests (up to 3000 bytes), two to a block
// of 8 KiB, a reserve block's size: blocks are aligned to their size, which
// a buddy block of that size is. Larger requests get dedicated blocks.
KindSpec Slab() {
  SlabOptions o;
  o.object_size = 3000;
  o.block_size = 8 * 1024;
  o.larger = SlabLarger::kDedicatedBlock;
  return SlabKind(o);
}
KindSpec Generation() {
  GenerationOptions o;
  o.max_block_size = 64 * 1024;
  return GenerationKind(o);
}

class ContextsOverBuddyTest : public ::testing::TestWithParam<KindCase> {};

INSTANTIATE_TEST_SUITE_P(Kinds, ContextsOverBuddyTest,
                         ::testing::Values(KindCase{"pool", &Pool}, KindCase{"freelist", &Freelist},
                                           KindCase{"rewinding_pool", &RewindingPool},
                                           KindCase{"slab", &Slab},
                                           KindCase{"generation", &Generation}),
                         [](const ::testing::TestParamInfo<KindCase>& info) {
                           return std::string(info.param.name);
                         });

// A tree of contexts runs on the region and gives every block back.
TEST_P(ContextsOverBuddyTest, ATreeRunsAndGivesEverythingBack) {
  BuddyBlockSource source(big_buffer, 4 << 20, Options(256, 1 << 20));
  ContextOptions o;
  o.block_source = &source;
  Context* root = Context::Create(nullptr, "root", GetParam().spec(), o);
  std::vector<Context*> all = {root};
  std::mt19937 rng(3);
  for (int i = 0; i < 25; ++i) {
    Context* c = all[rng() % all.size()]->CreateChild("child", GetParam().spec());
    all.push_back(c);
    for (int j = 0; j < 20; ++j) Fill(c->Alloc(1 + rng() % 3000), 1, 0);
    c->Alloc(10000 + rng() % 10000);
  }
  EXPECT_GT(source.GetStats().used_blocks, 25u);
  ExpectConsistent(source);
  root->Destroy();
  EXPECT_EQ(source.GetStats().used_bytes, 0u);
  EXPECT_EQ(source.GetStats().free_bytes, source.GetStats().region_bytes);
  ExpectConsistent(source);
}

int handler_calls = 0;
void CountingHandler(const FailureInfo&) { ++handler_calls; }

// When the region is exhausted: Try calls return nullptr with
// kOutOfMemory, the reserve serves first, the failure handler runs before
// the throwing call throws; the context stays usable.
TEST_P(ContextsOverBuddyTest, ExhaustionUsesTheReserveThenTheHandler) {
  BuddyBlockSource source(big_buffer, 512 * 1024, Options(1024, 64 * 1024));
  ContextOptions o;
  o.block_source = &source;
  o.reserve_blocks = 2;
  o.reserve_block_size = 8 * 1024;
  o.failure_handler = &CountingHandler;
  handler_calls = 0;
  Context* ctx = Context::Create(nullptr, "bounded", GetParam().spec(), o);
  EXPECT_EQ(ctx->reserve_blocks(), 2u);
  size_t got = 0;
  while (ctx->TryAlloc(3000) != nullptr) got += 3000;
  EXPECT_EQ(ctx->last_failure(), Failure::kOutOfMemory);
  EXPECT_GT(got, 300u * 1024);
  EXPECT_GT(ctx->reserve_uses(), 0u);
  EXPECT_GT(source.GetStats().failures, 0u);
  EXPECT_THROW(ctx->Alloc(60000), std::bad_alloc);
  EXPECT_EQ(handler_calls, 1);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Reset();
  EXPECT_NE(ctx->TryAlloc(3000), nullptr);  // room again
  ctx->Destroy();
  EXPECT_EQ(source.GetStats().used_bytes, 0u);
  ExpectConsistent(source);
}

// --- Slab blocks over a region aligned to a page ---------------------------------

// Pages from mmap whose start is aligned to a page and to no more, as a
// run-time region may be (mmap promises a page).
class PageAlignedRegion {
 public:
  explicit PageAlignedRegion(size_t bytes) : page_(static_cast<size_t>(sysconf(_SC_PAGESIZE))) {
    mapped_bytes_ = bytes + 2 * page_;
    mapped_ = mmap(nullptr, mapped_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (mapped_ == MAP_FAILED) return;
    auto* p = static_cast<unsigned char*>(mapped_);
    start_ = reinterpret_cast<uintptr_t>(p) % (2 * page_) == 0 ? p + page_ : p;
  }
  ~PageAlignedRegion() {
    if (mapped_ != MAP_FAILED) munmap(mapped_, mapped_bytes_);
  }
  unsigned char* start() const { return start_; }
  size_t page() const { return page_; }

 private:
  size_t page_;
  size_t mapped_bytes_;
  void* mapped_ = MAP_FAILED;
  unsigned char* start_ = nullptr;
};

// Slab blocks are aligned to their size: blocks of a page come from any
// part of the region.
TEST(SlabOverPagesTest, BlocksUpToTheRegionsAlignmentWork) {
  PageAlignedRegion pages(1 << 20);
  ASSERT_NE(pages.start(), nullptr);
  BuddyBlockSource source(pages.start(), 1 << 20, Options(256, 64 * 1024));
  ASSERT_EQ(source.region_alignment(), pages.page());
  ContextOptions co;
  co.block_source = &source;
  SlabOptions o;
  o.object_size = 48;
  o.block_size = pages.page();
  Context* slab = CreateSlabContext(nullptr, "slab", o, co);
  std::vector<void*> objects;
  for (uint32_t i = 0; i < 1000; ++i) {
    void* p = slab->Alloc(48);
    Fill(p, 48, i);
    objects.push_back(p);
  }
  EXPECT_GT(slab->num_blocks(), 10u);
  for (uint32_t i = 0; i < objects.size(); ++i) ASSERT_TRUE(Holds(objects[i], 48, i)) << i;
  for (void* p : objects) slab->Free(p);
  EXPECT_EQ(source.GetStats().refused_alignment, 0u);
  slab->Destroy();
  EXPECT_EQ(source.GetStats().used_bytes, 0u);
  ExpectConsistent(source);
}

// Blocks larger than the region's alignment: the context is created (its
// first block holds only its header), but the source refuses every block
// of objects, counted as a refused alignment, and the allocation fails as
// any source failure does, changing nothing.
TEST(SlabOverPagesTest, LargerBlocksFailCleanly) {
  if (kDirectBuild) GTEST_SKIP() << "direct mode: each object is a small block of its own";
  PageAlignedRegion pages(1 << 20);
  ASSERT_NE(pages.start(), nullptr);
  BuddyBlockSource source(pages.start(), 1 << 20, Options(256, 64 * 1024));
  ContextOptions co;
  co.block_source = &source;
  SlabOptions o;
  o.object_size = 48;  // the default block size, 64 KiB: beyond the region's alignment
  Context* slab = CreateSlabContext(nullptr, "slab", o, co);
  const size_t used = source.GetStats().used_bytes;
  EXPECT_EQ(slab->TryAlloc(48), nullptr);
  EXPECT_EQ(slab->last_failure(), Failure::kOutOfMemory);
  EXPECT_EQ(source.GetStats().refused_alignment, 1u);
  EXPECT_EQ(source.GetStats().used_bytes, used);
  EXPECT_THROW(slab->Alloc(48), std::bad_alloc);
  std::string error;
  EXPECT_TRUE(slab->Check(&error)) << error;
  slab->Destroy();
  EXPECT_EQ(source.GetStats().used_bytes, 0u);
  ExpectConsistent(source);
}

}  // namespace
}  // namespace mcx
