// The caching block source: steady-state reuse, the cap, alignment, and
// giving everything back.

#include "mcx/context/caching_block_source.h"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/config.h"
#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/internal/checking.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

using test::CountingBlockSource;
using test::ExactBlockSource;

// One request as a server would run it: a context under a long-lived parent,
// small allocations, now and then a large one, then destroy.
void Request(Context* server, int i) {
  Context* req = server->CreateChild("request", PoolKind());
  for (int k = 0; k < 20 + i % 180; ++k) req->Alloc(16 + (k * 37) % 500);
  if (i % 10 == 0) req->Alloc(8192 + (i % 7) * 8192);
  Context* scratch = req->CreateChild("scratch", FreelistKind());
  scratch->Free(scratch->Alloc(300));
  req->Destroy();
}

// Creating and destroying a per-request context makes no upstream call once
// the cache is warm: the system allocator is not touched per request.
TEST(CachingBlockSourceTest, SteadyStateRequestsMakeNoUpstreamCalls) {
  if (internal::kDirect) {
    GTEST_SKIP() << "in direct mode every chunk is a block of its own: block sizes follow the "
                    "chunks', and the cache's probes of a list need not find a fit at once";
  }
  CountingBlockSource upstream;
  {
    CachingBlockSource cache(&upstream, 4 << 20);
    ContextOptions o;
    o.block_source = &cache;
    Context* server = Context::Create(nullptr, "server", PoolKind(), o);
    for (int i = 0; i < 400; ++i) Request(server, i);  // warm up: every shape
    const int64_t acquires = upstream.acquires();
    const int64_t releases = upstream.releases();
    for (int i = 0; i < 10000; ++i) Request(server, i);
    EXPECT_EQ(upstream.acquires(), acquires);
    EXPECT_EQ(upstream.releases(), releases);
    CachingBlockSource::Stats s = cache.GetStats();
    EXPECT_GT(s.hits, 20000u);
    server->Destroy();
  }
  // The cache gave everything back when it went.
  EXPECT_EQ(upstream.live_blocks(), 0);
  EXPECT_EQ(upstream.bad_releases(), 0);
}

// Released blocks beyond the cap go upstream at once.
TEST(CachingBlockSourceTest, CapBoundsWhatIsKept) {
  CountingBlockSource upstream;
  CachingBlockSource cache(&upstream, 64 * 1024);
  std::vector<Block> blocks;
  for (int i = 0; i < 20; ++i) blocks.push_back(cache.Acquire(8192, 16));
  for (Block b : blocks) cache.Release(b);
  CachingBlockSource::Stats s = cache.GetStats();
  EXPECT_LE(s.cached_bytes, 64u * 1024u);
  EXPECT_GT(s.returned, 0u);
  EXPECT_EQ(upstream.live_bytes(), s.cached_bytes);
  cache.SetMaxCachedBytes(0);
  EXPECT_EQ(cache.GetStats().cached_bytes, 0u);
  EXPECT_EQ(upstream.live_blocks(), 0);
}

// Reuse respects size (no tiny request pins a huge block) and alignment.
TEST(CachingBlockSourceTest, ReuseRespectsSizeAndAlignment) {
  CountingBlockSource upstream;
  CachingBlockSource cache(&upstream, 1 << 20);
  Block big = cache.Acquire(100000, 16);
  cache.Release(big);
  Block small = cache.Acquire(1000, 16);
  EXPECT_NE(small.ptr, big.ptr);
  Block again = cache.Acquire(90000, 16);
  EXPECT_EQ(again.ptr, big.ptr);  // within a quarter: reused
  EXPECT_GE(again.size, 90000u);
  Block aligned = cache.Acquire(4096, 4096);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(aligned.ptr) % 4096, 0u);
  cache.Release(aligned);
  Block aligned2 = cache.Acquire(4096, 4096);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(aligned2.ptr) % 4096, 0u);
  for (Block b : {small, again, aligned2}) cache.Release(b);
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
}

// A growth moves into the largest kept block that has room, up to 64 times
// the size asked: `keep` bytes are copied, the old block is kept in its
// place, and upstream is not called. Beyond the window, and for a shrink,
// upstream resizes the block.
TEST(CachingBlockSourceTest, ReallocateGrowsIntoKeptRoom) {
  CountingBlockSource upstream;
  for (const size_t thread_cache : {size_t{0}, size_t{4} << 20}) {
    SCOPED_TRACE(thread_cache == 0 ? "shared lists" : "thread cache");
    CachingBlockSource cache(&upstream, 8 << 20, thread_cache);
    Block room = cache.Acquire(1000000, 16);  // within 64 times 16 KiB
    Block smaller = cache.Acquire(64 << 10, 16);
    cache.Release(smaller);
    cache.Release(room);
    Block b = cache.Acquire(8 << 10, 16);
    std::memset(b.ptr, 0x5a, 8 << 10);
    const int64_t acquires = upstream.acquires(), reallocates = upstream.reallocates();
    const uint64_t hits = cache.GetStats().hits;
    Block grown = cache.Reallocate(b, 8 << 10, 16 << 10, 16);
    EXPECT_EQ(grown.ptr, room.ptr);  // the largest, not the first that fits
    EXPECT_EQ(grown.size, room.size);
    for (size_t i = 0; i < (8 << 10); ++i) {
      ASSERT_EQ(static_cast<unsigned char*>(grown.ptr)[i], 0x5a) << i;
    }
    EXPECT_EQ(upstream.acquires(), acquires);
    EXPECT_EQ(upstream.reallocates(), reallocates);
    CachingBlockSource::Stats s = cache.GetStats();
    EXPECT_EQ(s.hits, hits + 1);
    EXPECT_EQ(s.cached_blocks, 2u);  // the old block and `smaller`
    EXPECT_EQ(s.cached_bytes, b.size + smaller.size);
    // Nothing kept has room for 17 MiB: upstream grows the block.
    Block huge = cache.Reallocate(grown, 8 << 10, 17 << 20, 16);
    ASSERT_NE(huge.ptr, nullptr);
    EXPECT_EQ(upstream.reallocates(), reallocates + 1);
    // A shrink goes upstream too, and takes nothing kept.
    Block shrunk = cache.Reallocate(huge, 4 << 10, 8 << 10, 16);
    ASSERT_NE(shrunk.ptr, nullptr);
    EXPECT_EQ(upstream.reallocates(), reallocates + 2);
    EXPECT_EQ(cache.GetStats().cached_blocks, 2u);
    // Kept blocks more than 64 times the size asked stay kept.
    Block tiny = cache.Acquire(64, 16);
    Block tiny_grown = cache.Reallocate(tiny, 64, 100, 16);
    ASSERT_NE(tiny_grown.ptr, nullptr);
    EXPECT_EQ(upstream.reallocates(), reallocates + 3);
    EXPECT_EQ(cache.GetStats().cached_blocks, 2u);
    cache.Release(tiny_grown);
    cache.Release(shrunk);
    cache.Trim();
  }
  EXPECT_EQ(upstream.live_blocks(), 0);
  EXPECT_EQ(upstream.bad_releases(), 0);
}

// Two threads, each with its own contexts, on one cache: nothing leaks,
// nothing is released twice (run under tsan too).
void RunTwoThreads(CachingBlockSource* cache) {
  auto work = [cache](int seed) {
    ContextOptions o;
    o.block_source = cache;
    Context* server = Context::Create(nullptr, "server", PoolKind(), o);
    for (int i = 0; i < 2000; ++i) Request(server, i + seed);
    server->Destroy();
  };
  std::thread a(work, 1);
  std::thread b(work, 2);
  a.join();
  b.join();
}

TEST(CachingBlockSourceTest, SharedBetweenThreads) {
  CountingBlockSource upstream;
  CachingBlockSource cache(&upstream, 1 << 20);
  RunTwoThreads(&cache);
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
  EXPECT_EQ(upstream.bad_releases(), 0);
}

// With thread caches, a thread in steady state is served by its own lists:
// no upstream call and no shared-list hit per request; its blocks go to the
// shared lists when it exits.
TEST(CachingBlockSourceTest, ThreadCacheServesSteadyStateAlone) {
  if (internal::kDirect) {
    GTEST_SKIP() << "in direct mode every chunk is a block of its own: block sizes follow the "
                    "chunks', and the cache's probes of a list need not find a fit at once";
  }
  CountingBlockSource upstream;
  CachingBlockSource cache(&upstream, 4 << 20, 1 << 20);
  EXPECT_EQ(cache.thread_cache_bytes(), size_t{1} << 20);
  std::thread t([&] {
    ContextOptions o;
    o.block_source = &cache;
    Context* server = Context::Create(nullptr, "server", PoolKind(), o);
    for (int i = 0; i < 400; ++i) Request(server, i);
    const int64_t acquires = upstream.acquires();
    const CachingBlockSource::Stats before = cache.GetStats();
    for (int i = 0; i < 5000; ++i) Request(server, i);
    const CachingBlockSource::Stats after = cache.GetStats();
    EXPECT_EQ(upstream.acquires(), acquires);
    EXPECT_GT(after.thread_hits - before.thread_hits, 10000u);
    EXPECT_EQ(after.hits - after.thread_hits, before.hits - before.thread_hits)
        << "the shared lists were not needed";
    EXPECT_LE(after.cached_bytes, (size_t{4} << 20) + (size_t{1} << 20));
    server->Destroy();
  });
  t.join();
  // The thread's counts and blocks moved to the shared lists at its exit.
  CachingBlockSource::Stats s = cache.GetStats();
  EXPECT_GT(s.thread_hits, 10000u);
  EXPECT_EQ(s.cached_bytes, upstream.live_bytes());
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
  EXPECT_EQ(upstream.bad_releases(), 0);
}

// A thread cache holds at most its bytes; when full, its blocks move to the
// shared lists in one batch, and a thread that finds none of its own takes a
// batch back.
TEST(CachingBlockSourceTest, ThreadCacheIsBounded) {
  CountingBlockSource upstream;
  CachingBlockSource cache(&upstream, 1 << 20, 64 * 1024);
  std::vector<Block> blocks;
  for (int i = 0; i < 32; ++i) blocks.push_back(cache.Acquire(8192, 16));
  EXPECT_EQ(upstream.acquires(), 32);
  for (Block b : blocks) cache.Release(b);
  CachingBlockSource::Stats s = cache.GetStats();
  EXPECT_EQ(s.kept, 32u);
  EXPECT_EQ(s.thread_kept, 32u);
  EXPECT_EQ(s.cached_blocks, 32u);
  EXPECT_EQ(s.cached_bytes, upstream.live_bytes());
  EXPECT_GT(s.thread_cached_bytes, 0u);
  EXPECT_LE(s.thread_cached_bytes, 64u * 1024u);
  // Everything comes back without an upstream call.
  blocks.clear();
  for (int i = 0; i < 32; ++i) blocks.push_back(cache.Acquire(8192, 16));
  EXPECT_EQ(upstream.acquires(), 32);
  s = cache.GetStats();
  EXPECT_EQ(s.hits, 32u);
  EXPECT_GT(s.thread_hits, s.hits / 2) << "refills serve most acquisitions";
  EXPECT_EQ(s.cached_blocks, 0u);
  for (Block b : blocks) cache.Release(b);
  cache.Trim();
  EXPECT_EQ(cache.GetStats().cached_bytes, 0u);
  EXPECT_EQ(upstream.live_blocks(), 0);
}

TEST(CachingBlockSourceTest, ThreadCachesBetweenThreads) {
  CountingBlockSource upstream;
  CachingBlockSource cache(&upstream, 1 << 20, 256 * 1024);
  RunTwoThreads(&cache);
  EXPECT_GT(cache.GetStats().thread_hits, 0u);
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
  EXPECT_EQ(upstream.bad_releases(), 0);
}

// Whether this process runs with MCX_BLOCK_SOURCE=system (CI's memcheck and
// checking-asan runs): the default source is then the system allocator.
bool SystemSourceFromTheEnvironment() {
  const char* env = std::getenv("MCX_BLOCK_SOURCE");
  return (env != nullptr && std::strcmp(env, "system") == 0) || internal::kDirect;
}

// Root contexts use the process-wide cache by default.
TEST(CachingBlockSourceTest, DefaultSourceIsTheProcessCache) {
  if (SystemSourceFromTheEnvironment()) {
    GTEST_SKIP() << "MCX_BLOCK_SOURCE=system: the default source is not the cache";
  }
  EXPECT_EQ(DefaultBlockSource(), DefaultBlockCache());
  EXPECT_EQ(DefaultBlockCache()->max_cached_bytes(), kDefaultBlockCacheBytes);
  Context* ctx = Context::Create(nullptr, "root", PoolKind());
  EXPECT_EQ(ctx->block_source(), DefaultBlockSource());
  ctx->Destroy();
  CachingBlockSource::Stats s = DefaultBlockCache()->GetStats();
  EXPECT_GE(s.kept, 1u);
}

// The tree reaches the default cache's thread cache inline (AcquireFrom and
// ReleaseTo, internal/context_impl.h), not through Acquire and Release: a
// child's first block, its blocks and their release must still count as
// the cache's hits and keeps, come from the thread's own cache in steady
// state, and leave the cache as they found it.
TEST(CachingBlockSourceTest, TheTreesInlinePathCountsAsAcquireAndRelease) {
  if (SystemSourceFromTheEnvironment()) {
    GTEST_SKIP() << "MCX_BLOCK_SOURCE=system: the default source is not the cache";
  }
  CachingBlockSource* cache = DefaultBlockCache();
  Context* root = Context::Create(nullptr, "root", PoolKind());
  // Warm: the child's sizes are in the thread's cache after one round.
  for (int round = 0; round < 2; ++round) {
    Context* child = root->CreateChild("child", PoolKind());
    std::memset(child->Alloc(64 * 1024), 0x5a, 64 * 1024);  // a block beyond the first
    child->Destroy();
  }
  const CachingBlockSource::Stats before = cache->GetStats();
  Context* child = root->CreateChild("child", PoolKind());
  auto* p = static_cast<char*>(child->Alloc(64 * 1024));
  std::memset(p, 0x5a, 64 * 1024);
  EXPECT_EQ(p[64 * 1024 - 1], 0x5a);
  EXPECT_EQ(child->num_blocks(), 2u);
  const CachingBlockSource::Stats taken = cache->GetStats();
  EXPECT_EQ(taken.thread_hits, before.thread_hits + 2);  // the first block and the large one
  EXPECT_EQ(taken.misses, before.misses);
  EXPECT_EQ(taken.thread_cached_bytes + child->bytes_in_blocks(), before.thread_cached_bytes);
  child->Destroy();
  // Checking builds hold a destroyed context's first block in a quarantine
  // (context.cc) and release an older one instead.
  if (!internal::kChecking) {
    const CachingBlockSource::Stats back = cache->GetStats();
    EXPECT_EQ(back.thread_kept, taken.thread_kept + 2);
    EXPECT_EQ(back.thread_cached_bytes, before.thread_cached_bytes);
  }
  root->Destroy();
}

// MCX_BLOCK_SOURCE chooses the default source at its first use: "system" is
// the system allocator, "cache" or nothing the cache, anything else the
// cache with a warning. Each case runs in a fresh process (threadsafe death
// tests re-execute the binary), since this one has chosen already.
TEST(DefaultBlockSourceDeathTest, EnvironmentChoosesAtFirstUse) {
  if (internal::kDirect) GTEST_SKIP() << "direct builds always use the system source";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto exit_with_choice = [](const char* value) {
    if (value != nullptr) {
      setenv("MCX_BLOCK_SOURCE", value, /*overwrite=*/1);
    } else {
      unsetenv("MCX_BLOCK_SOURCE");
    }
    BlockSource* const chosen = DefaultBlockSource();
    setenv("MCX_BLOCK_SOURCE", "system", 1);  // too late: the choice stands
    const bool system = dynamic_cast<SystemBlockSource*>(chosen) != nullptr;
    const bool stable = DefaultBlockSource() == chosen;
    Context* ctx = Context::Create(nullptr, "root", PoolKind());
    const bool used = ctx->block_source() == chosen;
    ctx->Destroy();
    std::_Exit(!stable || !used ? 3 : system ? 1 : chosen == DefaultBlockCache() ? 2 : 4);
  };
  EXPECT_EXIT(exit_with_choice("system"), ::testing::ExitedWithCode(1), "");
  EXPECT_EXIT(exit_with_choice("cache"), ::testing::ExitedWithCode(2), "");
  EXPECT_EXIT(exit_with_choice(nullptr), ::testing::ExitedWithCode(2), "");
  EXPECT_EXIT(exit_with_choice(""), ::testing::ExitedWithCode(2), "");
  EXPECT_EXIT(exit_with_choice("System"), ::testing::ExitedWithCode(2),
              "MCX_BLOCK_SOURCE is neither \"system\" nor \"cache\"");
}

// Two caching sources stacked, both with thread caches, both outliving the
// thread: at its exit the upper cache spills beyond its cap into the lower
// one, whose thread cache was flushed a moment before; those blocks must
// reach the lower cache's shared lists, not a slot of the dying caches.
TEST(CachingBlockSourceTest, StackedThreadCachesLoseNothingAtThreadExit) {
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  CachingBlockSource lower(&upstream, 64 << 20, 1 << 20);
  CachingBlockSource upper(&lower, 64 * 1024, 64 * 1024);
  std::thread t([&] {
    lower.Release(lower.Acquire(8192, 16));  // the lower cache takes the first slot
    std::vector<Block> blocks;
    for (int i = 0; i < 16; ++i) blocks.push_back(upper.Acquire(8192, 16));
    // Eight fill the upper thread cache, spill to its shared lists (its cap),
    // and eight more fill it again: at exit they have nowhere but upstream.
    for (Block b : blocks) upper.Release(b);
    CachingBlockSource::Stats s = upper.GetStats();
    EXPECT_EQ(s.thread_cached_bytes, 8u * 8192u);
    EXPECT_EQ(s.cached_bytes, 16u * 8192u);
  });
  t.join();
  // Every block is in one of the two caches' shared lists.
  EXPECT_EQ(upper.GetStats().cached_bytes, 8u * 8192u);
  EXPECT_EQ(upper.GetStats().cached_bytes + lower.GetStats().cached_bytes,
            upstream.live_bytes());
  upper.Trim();
  lower.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
  EXPECT_EQ(upstream.bad_releases(), 0);
}

// A context destroyed by a thread_local's destructor after the thread's
// caches were flushed at its exit (thread_locals die in reverse order of
// construction): its blocks go to the shared lists.
struct LateHolder {
  Context* ctx = nullptr;
  ~LateHolder() {
    if (ctx != nullptr) ctx->Destroy();
  }
};

LateHolder& ThisThreadsLateHolder() {
  static thread_local LateHolder holder;
  return holder;
}

TEST(CachingBlockSourceTest, ContextDestroyedAfterTheThreadCachesUsesTheSharedLists) {
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  CachingBlockSource cache(&upstream, 64 << 20, 1 << 20);
  std::thread t([&] {
    LateHolder& holder = ThisThreadsLateHolder();  // constructed before the caches
    ContextOptions o;
    o.block_source = &cache;
    for (int i = 0; i < 50; ++i) Context::Create(nullptr, "warm", PoolKind(), o)->Destroy();
    holder.ctx = Context::Create(nullptr, "late", PoolKind(), o);
    for (int i = 0; i < 40; ++i) holder.ctx->Alloc(5000);  // large: a block each
    EXPECT_GT(holder.ctx->num_blocks(), 10u);
  });
  t.join();
  CachingBlockSource::Stats s = cache.GetStats();
  EXPECT_EQ(s.cached_bytes, upstream.live_bytes()) << "every block is in the shared lists";
  EXPECT_GT(s.cached_blocks, 10u);
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
  EXPECT_EQ(upstream.bad_releases(), 0);
}

// A cap of 0 turns caching off, thread caches included; a higher cap turns
// it on again. Every release is counted once, as kept or as returned.
TEST(CachingBlockSourceTest, CapZeroTurnsCachingOff) {
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  CachingBlockSource cache(&upstream, 1 << 20, 256 * 1024);
  cache.Release(cache.Acquire(8192, 16));
  EXPECT_EQ(cache.GetStats().thread_cached_bytes, 8192u);
  cache.SetMaxCachedBytes(0);
  EXPECT_EQ(cache.max_cached_bytes(), 0u);
  EXPECT_EQ(cache.GetStats().cached_bytes, 0u);
  EXPECT_EQ(upstream.live_blocks(), 0);
  for (int i = 0; i < 10; ++i) cache.Release(cache.Acquire(8192, 16));
  CachingBlockSource::Stats s = cache.GetStats();
  EXPECT_EQ(s.hits, 0u);
  EXPECT_EQ(s.misses, 11u);
  EXPECT_EQ(s.kept, 1u);
  EXPECT_EQ(s.returned, 10u);
  EXPECT_EQ(s.cached_bytes, 0u);
  EXPECT_EQ(upstream.acquires(), 11);
  EXPECT_EQ(upstream.live_blocks(), 0);

  cache.SetMaxCachedBytes(1 << 20);
  cache.Release(cache.Acquire(8192, 16));
  cache.Release(cache.Acquire(8192, 16));
  s = cache.GetStats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.kept, 3u);
  EXPECT_EQ(s.cached_bytes, 8192u);
  cache.Trim();
  s = cache.GetStats();
  EXPECT_EQ(s.kept + s.returned, 13u) << "a trim is not a release";
  EXPECT_EQ(upstream.live_blocks(), 0);
}

// Every release is counted once, as kept or as returned, and `returned` is
// what the upstream source received, with thread caches on as well as off
// (finding B9: blocks a full thread cache spilled upstream were counted
// nowhere, and stayed counted as kept).
TEST(CachingBlockSourceTest, FindingB9ReturnedCountsEveryUpstreamRelease) {
  constexpr int kBlocks = 200;
  constexpr size_t kBlockBytes = 16 << 10;
  for (size_t thread_cache : {size_t{0}, size_t{1} << 20}) {
    SCOPED_TRACE(thread_cache);
    SystemBlockSource system;
    CountingBlockSource upstream(&system);
    CachingBlockSource cache(&upstream, 64 << 10, thread_cache);
    std::vector<Block> blocks;
    for (int i = 0; i < kBlocks; ++i) blocks.push_back(cache.Acquire(kBlockBytes, 16));
    for (Block b : blocks) cache.Release(b);
    const CachingBlockSource::Stats s = cache.GetStats();
    EXPECT_GT(upstream.releases(), 0);
    EXPECT_EQ(s.returned, static_cast<uint64_t>(upstream.releases()));
    EXPECT_EQ(s.kept + s.returned, static_cast<uint64_t>(kBlocks));
    EXPECT_EQ(s.cached_blocks, s.kept) << "no hits: every kept block is still cached";
    EXPECT_LE(s.thread_kept, s.kept);
    EXPECT_EQ(s.cached_bytes, upstream.live_bytes());
    cache.Trim();
    EXPECT_EQ(upstream.live_blocks(), 0);
  }
}

// The same accounting with threads that release into full thread caches and
// exit (their caches spill into full shared lists): after they are joined the
// counters match the upstream source exactly (run under tsan too).
TEST(CachingBlockSourceTest, FindingB9CountersStayExactAcrossThreads) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 200;
  constexpr int kBlocksPerRound = 12;
  SystemBlockSource system;
  CountingBlockSource upstream(&system);
  CachingBlockSource cache(&upstream, 64 << 10, 32 << 10);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&cache, t] {
      std::vector<Block> blocks;
      for (int round = 0; round < kRounds; ++round) {
        for (int i = 0; i < kBlocksPerRound; ++i) {
          blocks.push_back(cache.Acquire(4096 + 4096 * ((round + i + t) % 3), 16));
        }
        for (Block b : blocks) cache.Release(b);
        blocks.clear();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const CachingBlockSource::Stats s = cache.GetStats();
  const uint64_t releases = uint64_t{kThreads} * kRounds * kBlocksPerRound;
  EXPECT_GT(s.returned, 0u);
  EXPECT_EQ(s.returned, static_cast<uint64_t>(upstream.releases()));
  EXPECT_EQ(s.kept + s.returned, releases);
  EXPECT_EQ(s.hits + s.misses, releases);
  EXPECT_EQ(s.misses, static_cast<uint64_t>(upstream.acquires()));
  EXPECT_EQ(s.cached_blocks, s.kept - s.hits) << "every kept block is cached or was reused";
  EXPECT_LE(s.thread_kept, s.kept);
  EXPECT_LE(s.thread_hits, s.hits);
  EXPECT_EQ(s.cached_bytes, upstream.live_bytes());
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
  EXPECT_EQ(upstream.bad_releases(), 0);
}

// Lowering the cap below what a thread cache holds sends the calling
// thread's surplus upstream at once; what stays fits the new cap.
TEST(CachingBlockSourceTest, LowerCapShrinksTheCallingThreadsCache) {
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  CachingBlockSource cache(&upstream, 1 << 20, 256 * 1024);
  std::vector<Block> blocks;
  for (int i = 0; i < 8; ++i) blocks.push_back(cache.Acquire(8192, 16));
  for (Block b : blocks) cache.Release(b);
  EXPECT_EQ(cache.GetStats().thread_cached_bytes, 8u * 8192u);
  cache.SetMaxCachedBytes(3 * 8192);
  CachingBlockSource::Stats s = cache.GetStats();
  EXPECT_LE(s.cached_bytes, 3u * 8192u);
  EXPECT_EQ(s.cached_bytes, upstream.live_bytes());
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
}

// A lent block's pages go back through upstream, which lent the block.
TEST(CachingBlockSourceTest, PurgeOfALentBlockGoesUpstream) {
  CountingBlockSource counting(DefaultBlockSource());
  CachingBlockSource cache(&counting, 1 << 20);
  Block b = cache.Acquire(64 << 10, kMinBlockAlignment);
  ASSERT_NE(b.ptr, nullptr);
  std::memset(b.ptr, 3, b.size);
  const size_t purged = cache.Purge(static_cast<char*>(b.ptr) + 100, 32 << 10);
  EXPECT_EQ(counting.purges(), 1);
  EXPECT_EQ(counting.purge_requested_bytes(), size_t{32} << 10);
  EXPECT_EQ(counting.purged_bytes(), purged);
  EXPECT_EQ(counting.bad_purges(), 0);
  EXPECT_EQ(static_cast<char*>(b.ptr)[99], 3);
  cache.Release(b);
}

// Blocks that stay kept while the cache serves other blocks decay: after
// kDecayOperations operations their pages go back through upstream's Purge,
// each block once, and they stay kept and usable. The block in use never
// decays.
TEST(CachingBlockSourceTest, BlocksKeptUnusedDecay) {
  constexpr int kOld = 4;
  constexpr size_t kOldBytes = size_t{64} << 10;
  constexpr size_t kBusyBytes = size_t{16} << 10;
  CountingBlockSource counting(DefaultBlockSource());
  CachingBlockSource cache(&counting, size_t{8} << 20);  // no thread caches
  std::vector<Block> old;
  for (int i = 0; i < kOld; ++i) old.push_back(cache.Acquire(kOldBytes, kMinBlockAlignment));
  for (Block b : old) {
    ASSERT_NE(b.ptr, nullptr);
    std::memset(b.ptr, 7, b.size);
    cache.Release(b);
  }
  // One acquisition and one release per round: twice the decay period, and
  // then some, so that a decay run falls after the old blocks aged.
  for (uint64_t i = 0; i < CachingBlockSource::kDecayOperations * 2; ++i) {
    Block b = cache.Acquire(kBusyBytes, kMinBlockAlignment);
    ASSERT_NE(b.ptr, nullptr);
    std::memset(b.ptr, 1, kBusyBytes);
    cache.Release(b);
  }
  CachingBlockSource::Stats s = cache.GetStats();
  EXPECT_EQ(s.purged_blocks, static_cast<uint64_t>(kOld));
  EXPECT_EQ(counting.purges(), kOld);
  EXPECT_EQ(counting.bad_purges(), 0);
  EXPECT_EQ(s.purged_bytes, counting.purged_bytes());
  EXPECT_EQ(s.cached_blocks, static_cast<size_t>(kOld + 1));
  // Still kept: taken again without asking upstream, and usable.
  const int64_t acquires = counting.acquires();
  Block b = cache.Acquire(kOldBytes, kMinBlockAlignment);
  ASSERT_NE(b.ptr, nullptr);
  EXPECT_EQ(counting.acquires(), acquires);
  std::memset(b.ptr, 9, b.size);
  EXPECT_EQ(static_cast<char*>(b.ptr)[b.size - 1], 9);
  cache.Release(b);
  // Each block once: more rounds purge only the block that came back.
  for (uint64_t i = 0; i < CachingBlockSource::kDecayOperations * 2; ++i) {
    cache.Release(cache.Acquire(kBusyBytes, kMinBlockAlignment));
  }
  EXPECT_EQ(counting.purges(), kOld + 1);
  EXPECT_EQ(cache.GetStats().purged_blocks, static_cast<uint64_t>(kOld + 1));
}


// Learning: a program that releases and takes back more than the cap.
constexpr size_t kCycleBlockBytes = size_t{64} << 10;
constexpr size_t kCycleCapBytes = size_t{1} << 20;  // 16 blocks
constexpr int kCycleBlocks = 48;                    // 3 MiB per cycle

// Takes kCycleBlocks blocks, writes them, gives them all back.
void Cycle(CachingBlockSource& cache) {
  std::vector<Block> blocks;
  for (int i = 0; i < kCycleBlocks; ++i) {
    Block b = cache.Acquire(kCycleBlockBytes, kMinBlockAlignment);
    ASSERT_NE(b.ptr, nullptr);
    std::memset(b.ptr, i, b.size);
    blocks.push_back(b);
  }
  for (Block b : blocks) cache.Release(b);
}

// A cycle larger than the cap: the first turns 32 blocks away, the second
// misses them and learns their bytes, and from the third on the cycle is
// kept whole and the upstream source sees no call.
TEST(CachingBlockSourceTest, RetentionLearnsACycleLargerThanTheCap) {
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  {
    CachingBlockSource cache(&upstream, kCycleCapBytes, 0, size_t{8} << 20);
    Cycle(cache);
    // The first cycle's misses are growth, not reuse: nothing learned.
    EXPECT_EQ(cache.GetStats().learned_bytes, 0u);
    EXPECT_EQ(upstream.live_blocks(), 16);
    Cycle(cache);
    EXPECT_EQ(cache.GetStats().learned_bytes, 32 * kCycleBlockBytes);
    EXPECT_EQ(upstream.live_blocks(), kCycleBlocks) << "the second cycle is kept whole";
    const int64_t acquires = upstream.acquires();
    const int64_t releases = upstream.releases();
    for (int round = 0; round < 10; ++round) Cycle(cache);
    EXPECT_EQ(upstream.acquires(), acquires);
    EXPECT_EQ(upstream.releases(), releases);
    CachingBlockSource::Stats s = cache.GetStats();
    EXPECT_EQ(s.cached_bytes, kCycleBlocks * kCycleBlockBytes);
    EXPECT_EQ(s.learned_bytes, 32 * kCycleBlockBytes);
    // Forgotten when the program sets the cap: back to 16 blocks kept.
    cache.SetMaxCachedBytes(kCycleCapBytes);
    EXPECT_EQ(cache.GetStats().learned_bytes, 0u);
    EXPECT_EQ(cache.GetStats().cached_bytes, kCycleCapBytes);
    EXPECT_EQ(upstream.live_blocks(), 16);
  }
  EXPECT_EQ(upstream.live_blocks(), 0);
  EXPECT_EQ(upstream.bad_releases(), 0);
}

// Without learning (the default for a cache a program makes) the cap is
// fixed: every cycle turns the same blocks away and asks for them again.
// With a ceiling, learning stops there.
TEST(CachingBlockSourceTest, RetentionLearnsNothingWithoutACeilingAndStopsAtIt) {
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  for (size_t ceiling : {size_t{0}, 8 * kCycleBlockBytes}) {
    CachingBlockSource cache(&upstream, kCycleCapBytes, 0, ceiling);
    EXPECT_EQ(cache.max_learned_bytes(), ceiling);
    for (int round = 0; round < 3; ++round) Cycle(cache);
    EXPECT_EQ(cache.GetStats().learned_bytes, ceiling);
    const int64_t acquires = upstream.acquires();
    Cycle(cache);
    EXPECT_EQ(upstream.acquires() - acquires, 32 - static_cast<int64_t>(ceiling / kCycleBlockBytes));
    EXPECT_EQ(cache.GetStats().cached_bytes, kCycleCapBytes + ceiling);
  }
  EXPECT_EQ(upstream.live_blocks(), 0);
}

// What was learned goes as the blocks kept for it decay unused; lowering
// the ceiling trims at once.
TEST(CachingBlockSourceTest, RetentionIsUnlearnedAsKeptBlocksDecay) {
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  CachingBlockSource cache(&upstream, kCycleCapBytes, 0, size_t{8} << 20);
  for (int round = 0; round < 3; ++round) Cycle(cache);
  ASSERT_EQ(cache.GetStats().learned_bytes, 32 * kCycleBlockBytes);
  constexpr size_t kBusyBytes = kCycleBlockBytes * 4;
  // The program moves on to other work: the cycle's blocks sit unused.
  for (uint64_t i = 0; i < CachingBlockSource::kDecayOperations * 2; ++i) {
    cache.Release(cache.Acquire(kCycleBlockBytes * 4, kMinBlockAlignment));
  }
  // Every block of the cycle decayed and was unlearned: those beyond the
  // cap went upstream whole, and the rest, as many as fit beside the one
  // block the program does reuse, stay kept with their pages purged.
  CachingBlockSource::Stats s = cache.GetStats();
  EXPECT_EQ(s.purged_blocks, static_cast<uint64_t>(kCycleBlocks));
  EXPECT_EQ(s.learned_bytes, 0u);
  EXPECT_EQ(s.cached_bytes, kCycleCapBytes);
  EXPECT_EQ(s.cached_bytes, upstream.live_bytes());
  EXPECT_EQ(upstream.purges(),
            static_cast<int64_t>((kCycleCapBytes - kBusyBytes) / kCycleBlockBytes));
  // Learned again by the next cycles, then trimmed by a lower ceiling.
  for (int round = 0; round < 2; ++round) Cycle(cache);
  EXPECT_GT(cache.GetStats().learned_bytes, 0u);
  cache.SetMaxLearnedBytes(kCycleBlockBytes);
  s = cache.GetStats();
  EXPECT_EQ(s.learned_bytes, kCycleBlockBytes);
  EXPECT_LE(s.cached_bytes, kCycleCapBytes + kCycleBlockBytes);
  EXPECT_EQ(s.cached_bytes, upstream.live_bytes());
}

TEST(CachingBlockSourceTest, TheDefaultCacheLearns) {
  EXPECT_EQ(DefaultBlockCache()->max_learned_bytes(), kDefaultBlockCacheLearnedBytes);
}


// A large block (one large chunk's, above the largest block a kind grows
// to) skips the thread cache and is kept without its pages until a block
// of its size is taken back; from then on such blocks are kept warm, until
// one decays unused.
TEST(CachingBlockSourceTest, LargeBlocksAreKeptColdUntilTheirSizeIsReused) {
  constexpr size_t kLarge = size_t{3} << 20;
  constexpr size_t kSmall = size_t{16} << 10;
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  // Thread caches on, but no thread cache holds a large block.
  CachingBlockSource cache(&upstream, size_t{64} << 20, size_t{8} << 20);
  Block b = cache.Acquire(kLarge, kMinBlockAlignment);
  ASSERT_NE(b.ptr, nullptr);
  std::memset(b.ptr, 1, b.size);
  cache.Release(b);
  CachingBlockSource::Stats s = cache.GetStats();
  EXPECT_EQ(s.cached_bytes, kLarge);
  EXPECT_EQ(s.thread_cached_bytes, 0u);
  EXPECT_EQ(upstream.purges(), 1) << "kept without its pages";
  EXPECT_EQ(s.purged_blocks, 1u);
  // Taken back: a hit, usable; its size is warm from now on.
  const int64_t acquires = upstream.acquires();
  b = cache.Acquire(kLarge, kMinBlockAlignment);
  ASSERT_NE(b.ptr, nullptr);
  EXPECT_EQ(upstream.acquires(), acquires);
  std::memset(b.ptr, 2, b.size);
  EXPECT_EQ(static_cast<char*>(b.ptr)[b.size - 1], 2);
  cache.Release(b);
  EXPECT_EQ(upstream.purges(), 1) << "a reused size is kept warm";
  // Unused while the cache serves other blocks (through its shared lists:
  // a cache without thread caches), the large block decays, and its size
  // is cold again.
  CachingBlockSource shared(&upstream, size_t{64} << 20);
  b = shared.Acquire(kLarge, kMinBlockAlignment);
  ASSERT_NE(b.ptr, nullptr);
  shared.Release(b);
  b = shared.Acquire(kLarge, kMinBlockAlignment);  // warm
  ASSERT_NE(b.ptr, nullptr);
  shared.Release(b);
  const int64_t purges = upstream.purges();
  for (uint64_t i = 0; i < CachingBlockSource::kDecayOperations * 2; ++i) {
    shared.Release(shared.Acquire(kSmall, kMinBlockAlignment));
  }
  EXPECT_EQ(upstream.purges(), purges + 1) << "the warm large block decayed";
  // Another block of that size, released without one being taken back
  // first (it comes from the source the cache gives its blocks back to).
  b = upstream.Acquire(kLarge, kMinBlockAlignment);
  ASSERT_NE(b.ptr, nullptr);
  shared.Release(b);
  EXPECT_EQ(upstream.purges(), purges + 2) << "cold again: kept without its pages";
  EXPECT_EQ(upstream.bad_purges(), 0);
}

// Has the calling thread take and give back a block of `bytes` until its
// acquisitions, counted in `*acquisitions`, reach `until`: a loop's work,
// which ticks its thread cache's decay clock once per acquisition.
void CycleUntil(CachingBlockSource* cache, size_t bytes, uint64_t* acquisitions,
                uint64_t until) {
  for (; *acquisitions < until; ++*acquisitions) {
    cache->Release(cache->Acquire(bytes, kMinBlockAlignment));
  }
}

// Blocks a thread cache's decay moves beyond the shared cap go upstream as
// returns, but teach the cache nothing: taking blocks of their size again
// soon after is not reuse that the cap turned away, and learned_bytes stays.
TEST(CachingBlockSourceTest, ThreadCacheDecayBeyondTheCapTeachesNothing) {
  constexpr int kIdle = 3;
  constexpr size_t kIdleBytes = size_t{16} << 10;
  constexpr size_t kBusyBytes = size_t{8} << 10;
  constexpr int kFillers = 4;
  constexpr size_t kFillerBytes = size_t{12} << 10;
  constexpr size_t kCap = size_t{64} << 10;
  constexpr uint64_t kTicks = CachingBlockSource::kThreadDecayTicks;
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  CachingBlockSource cache(&upstream, kCap, size_t{1} << 20, size_t{1} << 20);
  // Another thread leaves 48 KiB in the shared lists as it exits: room for
  // one idle block more.
  std::thread([&] {
    std::vector<Block> fillers;
    for (int i = 0; i < kFillers; ++i) {
      fillers.push_back(cache.Acquire(kFillerBytes, kMinBlockAlignment));
    }
    for (Block b : fillers) cache.Release(b);
  }).join();
  ASSERT_EQ(cache.GetStats().cached_bytes, kFillers * kFillerBytes);
  std::thread t([&] {
    std::vector<Block> idle;
    for (int i = 0; i < kIdle; ++i) idle.push_back(cache.Acquire(kIdleBytes, kMinBlockAlignment));
    for (Block b : idle) cache.Release(b);
    uint64_t acquisitions = kIdle;
    CycleUntil(&cache, kBusyBytes, &acquisitions, 2 * kTicks);
    CachingBlockSource::Stats s = cache.GetStats();
    EXPECT_EQ(s.thread_decayed_blocks, static_cast<uint64_t>(kIdle));
    EXPECT_EQ(s.cached_bytes, kFillers * kFillerBytes + kIdleBytes + kBusyBytes);
    EXPECT_EQ(upstream.releases(), kIdle - 1);
    EXPECT_EQ(s.returned, static_cast<uint64_t>(kIdle - 1));
    // The program takes blocks of that size again at once: two misses.
    for (int i = 0; i < kIdle; ++i) idle[i] = cache.Acquire(kIdleBytes, kMinBlockAlignment);
    EXPECT_EQ(upstream.acquires(), kFillers + 1 + 2 * kIdle - 1);
    EXPECT_EQ(cache.GetStats().learned_bytes, 0u);
    for (Block b : idle) cache.Release(b);
  });
  t.join();
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
}

// Thread caches decay on their thread's own clock, its acquisitions: blocks
// of one size left in a thread cache while the thread works on another size
// go to the shared lists, purged, once the thread has taken between
// kThreadDecayTicks and twice as many blocks without them; the block the
// thread cycles never leaves. Counted exactly: the thread cache's clock
// starts at its first acquisition, and a run comes every kThreadDecayTicks.
TEST(CachingBlockSourceTest, ThreadCacheBlocksLeftUnusedDecay) {
  constexpr int kIdle = 4;
  constexpr size_t kIdleBytes = size_t{16} << 10;
  constexpr size_t kBusyBytes = size_t{8} << 10;
  constexpr uint64_t kTicks = CachingBlockSource::kThreadDecayTicks;
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  CachingBlockSource cache(&upstream, size_t{8} << 20, size_t{1} << 20);
  std::thread t([&] {
    std::vector<Block> idle;
    for (int i = 0; i < kIdle; ++i) idle.push_back(cache.Acquire(kIdleBytes, kMinBlockAlignment));
    for (Block b : idle) cache.Release(b);
    uint64_t acquisitions = kIdle;
    auto busy = [&](uint64_t until) { CycleUntil(&cache, kBusyBytes, &acquisitions, until); };
    // The first run (at kTicks) marks the idle blocks; the second takes
    // them, not one acquisition sooner.
    busy(2 * kTicks - 1);
    CachingBlockSource::Stats s = cache.GetStats();
    EXPECT_EQ(s.thread_decayed_blocks, 0u);
    EXPECT_EQ(s.thread_cached_bytes, kIdle * kIdleBytes + kBusyBytes);
    EXPECT_EQ(upstream.purges(), 0);
    busy(2 * kTicks);
    s = cache.GetStats();
    EXPECT_EQ(s.thread_decayed_blocks, static_cast<uint64_t>(kIdle));
    EXPECT_EQ(s.thread_decayed_bytes, kIdle * kIdleBytes);
    EXPECT_EQ(s.thread_cached_bytes, kBusyBytes);
    // In the shared lists, kept, with their pages gone through Purge once.
    EXPECT_EQ(s.cached_blocks, static_cast<size_t>(kIdle) + 1);
    EXPECT_EQ(s.cached_bytes, kIdle * kIdleBytes + kBusyBytes);
    EXPECT_EQ(s.purged_blocks, static_cast<uint64_t>(kIdle));
    EXPECT_EQ(upstream.purges(), kIdle);
    EXPECT_EQ(upstream.bad_purges(), 0);
    // The busy block stays through many more runs, and nothing more moves.
    busy(12 * kTicks);
    s = cache.GetStats();
    EXPECT_EQ(s.thread_decayed_blocks, static_cast<uint64_t>(kIdle));
    EXPECT_EQ(s.thread_cached_bytes, kBusyBytes);
    EXPECT_EQ(upstream.purges(), kIdle);
    EXPECT_EQ(upstream.acquires(), kIdle + 1) << "the busy block came from upstream once";
    EXPECT_EQ(upstream.releases(), 0);
    // The decayed blocks are still kept: taking them back costs no call.
    for (int i = 0; i < kIdle; ++i) idle[i] = cache.Acquire(kIdleBytes, kMinBlockAlignment);
    EXPECT_EQ(upstream.acquires(), kIdle + 1);
    for (Block b : idle) cache.Release(b);
  });
  t.join();
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
  EXPECT_EQ(upstream.bad_releases(), 0);
}

// A decay run reads where each list's old tail starts instead of walking
// the blocks above it; a block taken from inside a list by a probe (the
// head did not fit) may be that start, and the tail then starts below it.
// Here the block taken was the whole old tail's top: the next runs see the
// blocks that stayed, and move them after they sat through a period, as
// when every block was flagged in turn.
TEST(CachingBlockSourceTest, ThreadCacheDecayFollowsABlockTakenFromInsideAList) {
  constexpr size_t kSmall = size_t{16} << 10, kMid = size_t{20} << 10, kBig = size_t{30} << 10;
  constexpr size_t kBusyBytes = size_t{8} << 10;
  constexpr uint64_t kTicks = CachingBlockSource::kThreadDecayTicks;
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  CachingBlockSource cache(&upstream, size_t{8} << 20, size_t{1} << 20);
  std::thread t([&] {
    Block small = cache.Acquire(kSmall, kMinBlockAlignment);
    Block mid = cache.Acquire(kMid, kMinBlockAlignment);
    cache.Release(small);
    cache.Release(mid);  // one list: mid, small
    uint64_t acquisitions = 2;
    auto busy = [&](uint64_t until) { CycleUntil(&cache, kBusyBytes, &acquisitions, until); };
    busy(kTicks);  // the first run: mid and small are old, mid on top
    // A block that neither fits, from upstream, on top of them...
    Block big = cache.Acquire(kBig, kMinBlockAlignment);
    ++acquisitions;
    EXPECT_EQ(upstream.acquires(), 4) << "small, mid, the busy block and big";
    cache.Release(big);  // big, mid, small
    // ... so that a request for `mid` passes the head and takes mid.
    Block taken = cache.Acquire(kMid, kMinBlockAlignment);
    ++acquisitions;
    EXPECT_EQ(taken.ptr, mid.ptr);
    EXPECT_EQ(upstream.acquires(), 4);
    // big and small sit unused from here: seen at the next run (2 kTicks),
    // marked at the one after, moved at the fourth.
    busy(4 * kTicks - 1);
    CachingBlockSource::Stats s = cache.GetStats();
    EXPECT_EQ(s.thread_decayed_blocks, 0u);
    EXPECT_EQ(s.thread_cached_bytes, kBig + kSmall + kBusyBytes);
    busy(4 * kTicks);
    s = cache.GetStats();
    EXPECT_EQ(s.thread_decayed_blocks, 2u);
    EXPECT_EQ(s.thread_decayed_bytes, kBig + kSmall);
    EXPECT_EQ(s.thread_cached_bytes, kBusyBytes);
    cache.Release(taken);
  });
  t.join();
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
  EXPECT_EQ(upstream.bad_releases(), 0);
}

// The clock is the thread's acquisitions, not its releases: bursts larger
// than the decay period (a large tree built, then destroyed, W4's shape)
// age nothing, since the thread cache (1,024 of these blocks) is taken
// whole by each build, and the blocks cycle through it and the shared
// lists with no decay and no upstream call, round after round.
TEST(CachingBlockSourceTest, ThreadCacheBlocksCycledInBurstsNeverDecay) {
  constexpr size_t kBlocks = 3 * CachingBlockSource::kThreadDecayTicks;
  constexpr size_t kBlockBytes = size_t{8} << 10;
  constexpr size_t kThreadCacheBytes = size_t{8} << 20;
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  CachingBlockSource cache(&upstream, size_t{64} << 20, kThreadCacheBytes);
  std::thread t([&] {
    std::vector<Block> blocks(kBlocks);
    for (int round = 0; round < 6; ++round) {
      for (Block& b : blocks) b = cache.Acquire(kBlockBytes, kMinBlockAlignment);
      for (Block b : blocks) cache.Release(b);
    }
    CachingBlockSource::Stats s = cache.GetStats();
    EXPECT_EQ(s.thread_decayed_blocks, 0u);
    EXPECT_EQ(s.cached_bytes, kBlocks * kBlockBytes);
    // The cycle (48 MiB) is more than the thread's cap at its highest.
    EXPECT_EQ(s.thread_cache_cap, 4 * kThreadCacheBytes);
    EXPECT_LE(s.thread_cached_bytes, s.thread_cache_cap);
    EXPECT_EQ(upstream.acquires(), static_cast<int64_t>(kBlocks));
    EXPECT_EQ(upstream.releases(), 0);
    EXPECT_EQ(upstream.purges(), 0);
  });
  t.join();
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
}

// Takes `n` blocks of `bytes`, then gives them all back: one cycle of a
// tree's creation and destroy.
void AcquireThenRelease(CachingBlockSource* cache, size_t bytes, size_t n) {
  std::vector<Block> blocks(n);
  for (Block& b : blocks) b = cache->Acquire(bytes, kMinBlockAlignment);
  for (Block b : blocks) cache->Release(b);
}

constexpr size_t kSmallThreadCap = size_t{64} << 10;
constexpr size_t kSmallBlock = size_t{4} << 10;

// Runs `body(cache, upstream)` on a thread of its own, against a cache with
// a 64 KiB thread cap over a counting source; after a Trim, every block it
// took went back.
template <typename F>
void OnThreadWithSmallCap(F body) {
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  CachingBlockSource cache(&upstream, size_t{8} << 20, kSmallThreadCap);
  std::thread t([&] { body(cache, upstream); });
  t.join();
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
}

// A thread that cycles more than its cap (24 blocks of 4 KiB against
// 64 KiB) spills its full cache to the shared lists and takes the blocks
// back under the lock: its cap doubles once, and from then on the cycle
// stays in the thread cache, with no shared-list hit and no upstream call.
TEST(CachingBlockSourceTest, ThreadCapRisesForACycleBeyondIt) {
  constexpr size_t kCycle = 24;
  OnThreadWithSmallCap([](CachingBlockSource& cache, CountingBlockSource& upstream) {
    EXPECT_EQ(cache.GetStats().thread_cache_cap, 0u);  // none before the first use
    AcquireThenRelease(&cache, kSmallBlock, 1);
    EXPECT_EQ(cache.GetStats().thread_cache_cap, kSmallThreadCap);
    for (int round = 0; round < 3; ++round) AcquireThenRelease(&cache, kSmallBlock, kCycle);
    CachingBlockSource::Stats s = cache.GetStats();
    EXPECT_EQ(s.thread_cap_raises, 1u);
    EXPECT_EQ(s.thread_cache_cap, 2 * kSmallThreadCap);
    const uint64_t shared_hits = s.hits - s.thread_hits;
    EXPECT_GT(shared_hits, 0u);
    for (int round = 0; round < 10; ++round) AcquireThenRelease(&cache, kSmallBlock, kCycle);
    s = cache.GetStats();
    EXPECT_EQ(s.hits - s.thread_hits, shared_hits);
    EXPECT_EQ(s.thread_cap_raises, 1u);
    EXPECT_EQ(s.thread_cached_bytes, kCycle * kSmallBlock);
    EXPECT_EQ(upstream.acquires(), static_cast<int64_t>(kCycle));
    EXPECT_EQ(upstream.releases(), 0);
  });
}

// The rise stops at four times thread_cache_bytes: a cycle of 1 MiB against
// 64 KiB doubles the cap twice, and spills the rest as before.
TEST(CachingBlockSourceTest, ThreadCapRiseIsBounded) {
  constexpr size_t kCycle = 256;
  OnThreadWithSmallCap([](CachingBlockSource& cache, CountingBlockSource& upstream) {
    for (int round = 0; round < 8; ++round) AcquireThenRelease(&cache, kSmallBlock, kCycle);
    CachingBlockSource::Stats s = cache.GetStats();
    EXPECT_EQ(s.thread_cap_raises, 2u);
    EXPECT_EQ(s.thread_cache_cap, 4 * kSmallThreadCap);
    EXPECT_LE(s.thread_cached_bytes, 4 * kSmallThreadCap);
    EXPECT_EQ(upstream.acquires(), static_cast<int64_t>(kCycle));
  });
}

// A thread whose cycle shrinks (from 24 blocks to one) keeps more than it
// reuses: the blocks its loop no longer reaches decay, and the raised cap
// comes back down to thread_cache_bytes.
TEST(CachingBlockSourceTest, ThreadCapComesDownWhenBlocksDecay) {
  OnThreadWithSmallCap([](CachingBlockSource& cache, CountingBlockSource&) {
    for (int round = 0; round < 3; ++round) AcquireThenRelease(&cache, kSmallBlock, 24);
    ASSERT_EQ(cache.GetStats().thread_cache_cap, 2 * kSmallThreadCap);
    uint64_t acquisitions = 3 * 24;
    CycleUntil(&cache, kSmallBlock, &acquisitions, 4 * CachingBlockSource::kThreadDecayTicks);
    CachingBlockSource::Stats s = cache.GetStats();
    EXPECT_GT(s.thread_decayed_blocks, 0u);
    EXPECT_EQ(s.thread_cache_cap, kSmallThreadCap);
    EXPECT_EQ(s.thread_cap_raises, 1u);
  });
}

// A spill long before the thread takes blocks of that size back (two decay
// runs of other work in between) is no evidence: the cap stays.
TEST(CachingBlockSourceTest, ThreadCapIgnoresAnOldSpill) {
  OnThreadWithSmallCap([](CachingBlockSource& cache, CountingBlockSource&) {
    AcquireThenRelease(&cache, kSmallBlock, 24);  // spills when full
    uint64_t acquisitions = 24;
    CycleUntil(&cache, size_t{8} << 10, &acquisitions,
               24 + 2 * CachingBlockSource::kThreadDecayTicks);
    AcquireThenRelease(&cache, kSmallBlock, 24);  // refills from the shared lists
    CachingBlockSource::Stats s = cache.GetStats();
    EXPECT_GT(s.hits - s.thread_hits, 0u);
    EXPECT_EQ(s.thread_cap_raises, 0u);
    EXPECT_EQ(s.thread_cache_cap, kSmallThreadCap);
  });
}

// A thread that keeps more blocks of the size it uses than it needs (a
// spike's, released together) keeps only what its loop reaches: the rest,
// below the lowest point the loop took in a whole period, decays at the
// second run, exactly.
TEST(CachingBlockSourceTest, ThreadCacheKeepsWhatItsLoopReaches) {
  constexpr int kSpike = 100;
  constexpr size_t kBlockBytes = size_t{8} << 10;
  constexpr uint64_t kTicks = CachingBlockSource::kThreadDecayTicks;
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  CachingBlockSource cache(&upstream, size_t{8} << 20, size_t{1} << 20);
  std::thread t([&] {
    std::vector<Block> spike;
    for (int i = 0; i < kSpike; ++i) spike.push_back(cache.Acquire(kBlockBytes, kMinBlockAlignment));
    for (Block b : spike) cache.Release(b);
    uint64_t acquisitions = kSpike;
    auto loop = [&](uint64_t until) { CycleUntil(&cache, kBlockBytes, &acquisitions, until); };
    loop(2 * kTicks - 1);
    EXPECT_EQ(cache.GetStats().thread_decayed_blocks, 0u);
    loop(2 * kTicks);
    CachingBlockSource::Stats s = cache.GetStats();
    EXPECT_EQ(s.thread_decayed_blocks, static_cast<uint64_t>(kSpike - 1));
    EXPECT_EQ(s.thread_cached_bytes, kBlockBytes);
    EXPECT_EQ(upstream.purges(), kSpike - 1);
    loop(10 * kTicks);
    s = cache.GetStats();
    EXPECT_EQ(s.thread_decayed_blocks, static_cast<uint64_t>(kSpike - 1));
    EXPECT_EQ(s.thread_cached_bytes, kBlockBytes);
    EXPECT_EQ(upstream.acquires(), kSpike);
    EXPECT_EQ(upstream.releases(), 0);
  });
  t.join();
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
}

// A worker that marks itself idle hands its cache to the shared lists at
// once, counted as kept; another thread then takes those blocks without
// asking upstream. A thread that never used the cache marks itself idle
// for nothing. Without MarkThreadIdle the blocks stay in the idle thread's
// cache, out of every other thread's reach.
// A thread that only looks at a source (GetStats), trims it, caps it or
// marks itself idle claims no thread cache: the source may be destroyed
// while that thread lives on, and its exit then touches nothing of it.
TEST(CachingBlockSourceTest, LookingClaimsNoThreadCache) {
  CountingBlockSource upstream;
  auto* cache = new CachingBlockSource(&upstream, size_t{1} << 20, size_t{1} << 16);
  std::mutex m;
  std::condition_variable cv;
  bool looked = false, deleted = false;
  CachingBlockSource::Stats seen;
  std::thread monitor([&] {
    seen = cache->GetStats();
    cache->Trim();
    cache->SetMaxCachedBytes(size_t{1} << 19);
    cache->MarkThreadIdle();
    std::unique_lock<std::mutex> lock(m);
    looked = true;
    cv.notify_all();
    cv.wait(lock, [&] { return deleted; });
  });
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return looked; });
  }
  EXPECT_EQ(seen.thread_cache_cap, 0u);
  EXPECT_EQ(seen.thread_cached_bytes, 0u);
  Block b = cache->Acquire(8192, kMinBlockAlignment);  // this thread's own cache
  cache->Release(b);
  cache->Trim();
  delete cache;  // before the monitor exits (ASan: no use after free there)
  {
    std::lock_guard<std::mutex> lock(m);
    deleted = true;
  }
  cv.notify_all();
  monitor.join();
  EXPECT_EQ(upstream.live_blocks(), 0);
}

// A fork while another thread is inside the source: the child starts with
// the source's lock free (taken around the fork, as malloc's are) and can
// use it. Without that, a child forked while the worker held the lock
// waits for it forever.
TEST(CachingBlockSourceTest, AForkedChildCanUseTheSource) {
#if defined(ABSL_HAVE_THREAD_SANITIZER)
  GTEST_SKIP() << "ThreadSanitizer does not follow a multithreaded fork";
#endif
  CountingBlockSource upstream;
  // Two caches, one over the other: the upper takes its lock and then the
  // lower's when it hands blocks down past its small cap, and the fork
  // takes them in that order. No thread caches: every call locks.
  CachingBlockSource lower(&upstream, size_t{8} << 20);
  CachingBlockSource cache(&lower, size_t{16} << 10);
  std::atomic<bool> stop{false};
  std::thread worker([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      Block b[3];
      for (Block& one : b) one = cache.Acquire(8192, kMinBlockAlignment);
      for (Block& one : b) cache.Release(one);  // past the cap: down to `lower`
    }
  });
  constexpr int kForks = 100;
  constexpr unsigned kChildSeconds = 5;  // a child still waiting then is stuck
  // The child's exit status when the source gave it no block. (Under
  // memcheck a child exits with memcheck's own status for the worker
  // thread it leaves behind, which is not this one.)
  constexpr int kNoBlock = 42;
  int stuck = 0;
  for (int i = 0; i < kForks && stuck == 0; ++i) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      alarm(kChildSeconds);
      Block b = cache.Acquire(8192, kMinBlockAlignment);
      cache.Release(b);
      _exit(b.ptr != nullptr ? 0 : kNoBlock);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status)) ++stuck;
    else EXPECT_NE(WEXITSTATUS(status), kNoBlock);
  }
  stop = true;
  worker.join();
  EXPECT_EQ(stuck, 0);
  cache.Trim();
  lower.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
}

TEST(CachingBlockSourceTest, AThreadMarkedIdleHandsItsCacheToTheOthers) {
  constexpr int kBlocks = 10;
  constexpr size_t kBlockBytes = size_t{8} << 10;
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  CachingBlockSource cache(&upstream, size_t{8} << 20, size_t{1} << 20);
  auto acquire_all = [&] {
    std::vector<Block> blocks;
    for (int i = 0; i < kBlocks; ++i) {
      blocks.push_back(cache.Acquire(kBlockBytes, kMinBlockAlignment));
      std::memset(blocks.back().ptr, 0x5a, kBlockBytes);
    }
    return blocks;
  };
  std::thread worker([&] {
    for (Block b : acquire_all()) cache.Release(b);
    CachingBlockSource::Stats s = cache.GetStats();
    EXPECT_EQ(s.thread_cached_bytes, kBlocks * kBlockBytes);
    cache.MarkThreadIdle();
    s = cache.GetStats();
    EXPECT_EQ(s.thread_cached_bytes, 0u);
    EXPECT_EQ(s.cached_bytes, kBlocks * kBlockBytes);  // all in the shared lists
    EXPECT_EQ(s.kept, static_cast<uint64_t>(kBlocks));
    EXPECT_EQ(s.returned, 0u);
    cache.MarkThreadIdle();  // twice: nothing more to move
    EXPECT_EQ(cache.GetStats().cached_bytes, kBlocks * kBlockBytes);
  });
  worker.join();
  std::thread other([&] {
    cache.MarkThreadIdle();  // never used the cache: nothing to do
    std::vector<Block> blocks = acquire_all();
    EXPECT_EQ(upstream.acquires(), kBlocks) << "the idle thread's blocks serve this one";
    for (Block b : blocks) cache.Release(b);
  });
  other.join();
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
}

// A thread cache deeper than a period's acquisitions (6,144 blocks of 1 KiB
// in an 8 MiB thread cache), drained and refilled whole each round: the
// low water mark moves at every run, so nothing decays and no upstream
// call happens after the first round.
TEST(CachingBlockSourceTest, ThreadCacheDrainedDeeperThanAPeriodDoesNotDecay) {
  constexpr size_t kBlocks = 3 * CachingBlockSource::kThreadDecayTicks;
  constexpr size_t kBlockBytes = size_t{1} << 10;
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  CachingBlockSource cache(&upstream, size_t{64} << 20, size_t{8} << 20);
  std::thread t([&] {
    std::vector<Block> blocks(kBlocks);
    for (int round = 0; round < 6; ++round) {
      for (Block& b : blocks) b = cache.Acquire(kBlockBytes, kMinBlockAlignment);
      for (Block b : blocks) cache.Release(b);
    }
    CachingBlockSource::Stats s = cache.GetStats();
    EXPECT_EQ(s.thread_decayed_blocks, 0u);
    EXPECT_EQ(s.thread_cached_bytes, kBlocks * kBlockBytes);
    EXPECT_EQ(upstream.acquires(), static_cast<int64_t>(kBlocks));
    EXPECT_EQ(upstream.releases(), 0);
    EXPECT_EQ(upstream.purges(), 0);
  });
  t.join();
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
}

// Trim returns the calling thread's cache and the shared lists, never
// another thread's cache: a block idle there stays until that thread's own
// decay moves it to the shared lists, where the next Trim reaches it.
TEST(CachingBlockSourceTest, TrimReachesAnotherThreadsIdleBlocksOnlyAfterTheyDecay) {
  constexpr size_t kIdleBytes = size_t{16} << 10;
  constexpr size_t kBusyBytes = size_t{8} << 10;
  ExactBlockSource exact;
  CountingBlockSource upstream(&exact);
  CachingBlockSource cache(&upstream, size_t{8} << 20, size_t{1} << 20);
  std::mutex mu;
  std::condition_variable cv;
  int step = 0;
  auto advance_to = [&](int next) {
    std::lock_guard<std::mutex> lock(mu);
    step = next;
    cv.notify_all();
  };
  auto wait_for = [&](int want) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return step == want; });
  };
  std::thread t([&] {
    cache.Release(cache.Acquire(kIdleBytes, kMinBlockAlignment));
    advance_to(1);
    wait_for(2);
    // Work on another size for two decay periods: the idle block leaves.
    uint64_t acquisitions = 1;
    CycleUntil(&cache, kBusyBytes, &acquisitions, 2 * CachingBlockSource::kThreadDecayTicks);
    advance_to(3);
    wait_for(4);
  });
  wait_for(1);
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 1) << "the other thread's cache keeps its block";
  advance_to(2);
  wait_for(3);
  EXPECT_EQ(upstream.live_blocks(), 2);
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 1) << "decayed to the shared lists, trimmed from there";
  EXPECT_EQ(upstream.live_bytes(), kBusyBytes);
  advance_to(4);
  t.join();
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
  EXPECT_EQ(upstream.bad_releases(), 0);
}
}  // namespace
}  // namespace mcx
