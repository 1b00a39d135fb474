// Allocation sites (site.h) and the live chunks report (live_chunks.h):
// exact counts, bytes and text per site, for every kind that keeps sites
// (pool, freelist, generation, slab), in checking builds; "not recorded"
// elsewhere.

#include "mcx/context/live_chunks.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/new.h"
#include "mcx/context/site.h"
#include "mcx/freelist/freelist.h"
#include "mcx/generation/generation.h"
#include "mcx/pool/pool.h"
#include "mcx/slab/slab.h"

namespace mcx {
namespace {

constexpr bool kChecking = internal::kChecking;

AllocationSite Here(int line) { return AllocationSite(__FILE__, line); }

std::string Line(int line, size_t chunks, size_t bytes) {
  return absl::StrCat("  ", __FILE__, ":", line, ": ", chunks, " chunks, ", bytes, " bytes\n");
}

// A helper that allocates for its caller passes the caller's site on.
void* AllocForCaller(Context* ctx, size_t n, AllocationSite site = AllocationSite::Current()) {
  return ctx->Alloc(n, site);
}

// Default arguments name the caller's line, also through ContextAtSite's
// implicit conversion (the first parameter of New<T> and the string helpers).
TEST(SiteTest, DefaultArgumentsNameTheCaller) {
  AllocationSite s = AllocationSite::Current();
  EXPECT_STREQ(s.file(), __FILE__);
  EXPECT_EQ(s.line(), __LINE__ - 2);
  auto take = [](ContextAtSite at) { return at.site(); };
  Context* none = nullptr;
  AllocationSite t = take(none);
  EXPECT_EQ(t.line(), __LINE__ - 1);
  EXPECT_STREQ(t.file(), __FILE__);
  EXPECT_EQ(AllocationSite().file(), nullptr);
}

// One id per (file, line), stable, and given back by SiteOf; the reserved
// ids for an unknown site and mcx's own chunks.
TEST(SiteTest, InterningGivesOneIdPerSite) {
  using internal::InternSite;
  using internal::SiteOf;
  const internal::SiteId a = InternSite(Here(1000));
  const internal::SiteId b = InternSite(Here(1001));
  EXPECT_GE(a, internal::kFirstSiteId);
  EXPECT_NE(a, b);
  EXPECT_EQ(InternSite(Here(1000)), a);
  EXPECT_STREQ(SiteOf(a).file(), __FILE__);
  EXPECT_EQ(SiteOf(a).line(), 1000);
  EXPECT_EQ(SiteOf(b).line(), 1001);
  EXPECT_EQ(InternSite(AllocationSite()), internal::kUnknownSiteId);
  EXPECT_EQ(SiteOf(internal::kUnknownSiteId).file(), nullptr);
  EXPECT_EQ(InternSite(internal::InternalSite()), internal::kInternalSiteId);
  EXPECT_STREQ(SiteOf(internal::kInternalSiteId).file(), "mcx internal (cleanup records)");
  EXPECT_EQ(SiteOf(~internal::SiteId{0}).file(), nullptr);  // never given
}

// Threads interning the same new sites at once agree on every id.
TEST(SiteTest, ConcurrentInterningAgrees) {
  constexpr int kThreads = 4;
  constexpr int kSites = 500;
  std::vector<std::vector<internal::SiteId>> ids(kThreads, std::vector<internal::SiteId>(kSites));
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < kThreads) {
      }
      for (int i = 0; i < kSites; ++i) ids[t][i] = internal::InternSite(Here(20000 + i));
    });
  }
  for (auto& th : threads) th.join();
  for (int i = 0; i < kSites; ++i) {
    for (int t = 1; t < kThreads; ++t) ASSERT_EQ(ids[t][i], ids[0][i]) << i;
    EXPECT_EQ(internal::SiteOf(ids[0][i]).line(), 20000 + i);
  }
}

// The report of each kind: chunks grouped by site, most bytes first, freed
// chunks gone, a realloc moving its chunk to the realloc's site.
void ExpectSitesOf(Context* ctx, size_t large) {
  void* a1 = ctx->Alloc(100);  const int kLineA = __LINE__;
  void* a2 = ctx->Alloc(100, Here(kLineA));
  char* b = ctx->Strdup("seven!");  const int kLineB = __LINE__;
  void* c = AllocForCaller(ctx, 48);  const int kLineC = __LINE__;
  void* d = ctx->Alloc(large);  const int kLineD = __LINE__;
  void* gone = ctx->Alloc(64);
  ctx->Free(gone);
  ASSERT_STREQ(b, "seven!");
  std::memset(a1, 1, 100);
  std::memset(a2, 2, 100);
  std::memset(c, 3, 48);
  std::memset(d, 4, large);

  LiveChunkSummary s = SummarizeLiveChunks(ctx);
  if (!kChecking) {
    EXPECT_FALSE(s.recorded);
    EXPECT_EQ(LiveChunksReport(ctx),
              absl::StrCat("live chunks of context '", ctx->name(),
                           "': not recorded (allocation sites are kept in checking builds only)\n"));
    return;
  }
  ASSERT_TRUE(s.recorded);
  EXPECT_EQ(s.chunks, 5u);
  EXPECT_EQ(s.bytes, 100 + 100 + 7 + 48 + large);
  ASSERT_EQ(s.sites.size(), 4u);
  EXPECT_EQ(s.sites[0].site.line(), kLineD);
  EXPECT_EQ(s.sites[1].site.line(), kLineA);
  EXPECT_EQ(s.sites[1].chunks, 2u);
  EXPECT_EQ(s.sites[1].bytes, 200u);
  EXPECT_FALSE(s.sites[1].internal);
  EXPECT_EQ(s.sites[2].site.line(), kLineC);
  EXPECT_EQ(s.sites[3].site.line(), kLineB);
  EXPECT_EQ(LiveChunksReport(ctx),
            absl::StrCat("live chunks of context '", ctx->name(), "': 5 chunks, ", 255 + large,
                         " bytes\n", Line(kLineD, 1, large), Line(kLineA, 2, 200),
                         Line(kLineC, 1, 48), Line(kLineB, 1, 7)));

  // A realloc (sized: every kind does it) takes the chunk to its own site,
  // with the new size; a large chunk's realloc too.
  c = ctx->Realloc(c, 48, 60);  const int kLineR = __LINE__;
  d = ctx->Realloc(d, large, large + 8);  const int kLineR2 = __LINE__;
  EXPECT_EQ(static_cast<unsigned char*>(c)[47], 3);
  EXPECT_EQ(static_cast<unsigned char*>(d)[large - 1], 4);
  s = SummarizeLiveChunks(ctx);
  EXPECT_EQ(s.chunks, 5u);
  ASSERT_EQ(s.sites.size(), 4u);
  EXPECT_EQ(s.sites[0].site.line(), kLineR2);
  EXPECT_EQ(s.sites[0].bytes, large + 8);
  EXPECT_EQ(s.sites[2].site.line(), kLineR);
  EXPECT_EQ(s.sites[2].bytes, 60u);

  ctx->Reset();
  s = SummarizeLiveChunks(ctx);
  EXPECT_TRUE(s.recorded);
  EXPECT_EQ(s.chunks, 0u);
  EXPECT_TRUE(s.sites.empty());
  EXPECT_EQ(LiveChunksReport(ctx),
            absl::StrCat("live chunks of context '", ctx->name(), "': 0 chunks, 0 bytes\n"));
}

TEST(LiveChunksTest, PoolChunksByAllocationSite) {
  PoolOptions o;
  o.max_small = 1024;
  Context* ctx = CreatePoolContext(nullptr, "pool", o);
  ExpectSitesOf(ctx, 4000);  // a large chunk: a block of its own
  ctx->Destroy();
}

TEST(LiveChunksTest, FreelistChunksByAllocationSite) {
  Context* ctx = CreateFreelistContext(nullptr, "freelist");
  ExpectSitesOf(ctx, 20000);  // a dedicated chunk
  ctx->Destroy();
}

TEST(LiveChunksTest, GenerationChunksByAllocationSite) {
  Context* ctx = CreateGenerationContext(nullptr, "generation");
  ExpectSitesOf(ctx, 20000);  // a dedicated chunk
  ctx->Destroy();
}

// A generation context's chunks across several blocks, with freed ones
// between live ones, and its in-place realloc.
TEST(LiveChunksTest, GenerationChunksAcrossBlocks) {
  if (!kChecking) GTEST_SKIP() << "sites are kept in checking builds";
  GenerationOptions o;
  o.initial_block_size = 1024;
  o.max_block_size = 4096;
  Context* ctx = CreateGenerationContext(nullptr, "generation", o);
  std::vector<void*> kept;
  for (int i = 0; i < 60; ++i) {
    void* p = ctx->Alloc(40);
    if (i % 3 == 0) {
      ctx->Free(p);
    } else {
      kept.push_back(p);
    }
  }
  ASSERT_GT(ctx->num_blocks(), 2u);
  void* grown = ctx->Realloc(kept.back(), 40, 41);  const int kLineR = __LINE__;
  EXPECT_EQ(grown, kept.back());  // the chunk's rounded-up size holds it
  const LiveChunkSummary s = SummarizeLiveChunks(ctx);
  ASSERT_TRUE(s.recorded);
  EXPECT_EQ(s.chunks, 40u);
  EXPECT_EQ(s.bytes, 39u * 40 + 41);
  ASSERT_EQ(s.sites.size(), 2u);
  EXPECT_EQ(s.sites[0].chunks, 39u);
  EXPECT_EQ(s.sites[1].site.line(), kLineR);
  EXPECT_EQ(s.sites[1].bytes, 41u);
  ctx->Destroy();
}

// Slab objects all have the object size; a dedicated chunk its requested
// bytes. Freed objects, also those another thread freed (waiting on the
// remote list), are not live.
TEST(LiveChunksTest, SlabObjectsByAllocationSite) {
  SlabOptions o;
  o.object_size = 48;
  o.larger = SlabLarger::kDedicatedBlock;
  Context* ctx = CreateSlabContext(nullptr, "slab", o);
  void* a1 = ctx->Alloc(48);  const int kLineA = __LINE__;
  void* a2 = ctx->Alloc(20, Here(kLineA));
  void* b = ctx->Alloc(48);  const int kLineB = __LINE__;
  void* gone = ctx->Alloc(48);
  void* remote = ctx->Alloc(48);
  void* big = ctx->Alloc(5000);  const int kLineD = __LINE__;
  ctx->Free(gone);
  std::thread([ctx, remote] { ctx->Free(remote); }).join();  // a remote free
  std::memset(a1, 1, 48);
  std::memset(a2, 2, 48);
  std::memset(b, 3, 48);
  std::memset(big, 4, 5000);
  LiveChunkSummary s = SummarizeLiveChunks(ctx);
  if (!kChecking) {
    EXPECT_FALSE(s.recorded);
    ctx->Destroy();
    return;
  }
  ASSERT_TRUE(s.recorded);
  EXPECT_EQ(s.chunks, 4u);
  EXPECT_EQ(s.bytes, 3u * 48 + 5000);
  EXPECT_EQ(LiveChunksReport(ctx),
            absl::StrCat("live chunks of context 'slab': 4 chunks, 5144 bytes\n",
                         Line(kLineD, 1, 5000), Line(kLineA, 2, 96), Line(kLineB, 1, 48)));
  // A realloc in place takes the object (and the dedicated chunk) to its
  // site.
  EXPECT_EQ(ctx->Realloc(b, 48, 40), b);  const int kLineR = __LINE__;
  EXPECT_EQ(ctx->Realloc(big, 5000, 4000), big);  const int kLineR2 = __LINE__;
  s = SummarizeLiveChunks(ctx);
  ASSERT_EQ(s.sites.size(), 3u);
  EXPECT_EQ(s.sites[0].site.line(), kLineR2);
  EXPECT_EQ(s.sites[0].bytes, 4000u);
  EXPECT_EQ(s.sites[2].site.line(), kLineR);
  EXPECT_EQ(s.sites[2].bytes, 48u);
  EXPECT_EQ(static_cast<unsigned char*>(b)[39], 3);
  ctx->Reset();
  EXPECT_EQ(SummarizeLiveChunks(ctx).chunks, 0u);
  ctx->Destroy();
}

// The freelist kind's in-place realloc (within the size class) and its
// unsized realloc move the site too; an over-aligned chunk counts its
// padding; a chunk freed through mcx::Free is gone.
TEST(LiveChunksTest, FreelistReallocInPlaceAlignedAndContextFreeFree) {
  if (!kChecking) GTEST_SKIP() << "sites are kept in checking builds";
  Context* ctx = CreateFreelistContext(nullptr, "freelist");
  void* p = ctx->Alloc(20);
  void* q = ctx->Realloc(p, 22);  const int kLineQ = __LINE__;
  EXPECT_EQ(p, q);  // class 24: in place
  void* r = ctx->AllocAligned(100, 256);  const int kLineR = __LINE__;
  void* f = ctx->Alloc(10);
  mcx::Free(f);
  LiveChunkSummary s = SummarizeLiveChunks(ctx);
  ASSERT_EQ(s.sites.size(), 2u);
  EXPECT_EQ(s.sites[0].site.line(), kLineR);
  EXPECT_EQ(s.sites[0].bytes, 100u + 256u);
  EXPECT_EQ(s.sites[1].site.line(), kLineQ);
  EXPECT_EQ(s.sites[1].bytes, 22u);
  mcx::Free(r);
  mcx::Free(q);
  EXPECT_EQ(SummarizeLiveChunks(ctx).chunks, 0u);
  ctx->Destroy();
}

struct Logged {
  ~Logged() { ++*count; }
  int* count;
};

// mcx's own chunks (cleanup records, callables' storage) are one internal
// group; objects of New<T> are the New call's.
TEST(LiveChunksTest, CleanupRecordsAreInternal) {
  if (!kChecking) GTEST_SKIP() << "sites are kept in checking builds";
  Context* ctx = CreatePoolContext(nullptr, "objects");
  int destroyed = 0;
  New<Logged>(ctx, Logged{&destroyed});  const int kLineNew = __LINE__;
  ctx->AddCleanup([] {});
  LiveChunkSummary s = SummarizeLiveChunks(ctx);
  ASSERT_EQ(s.sites.size(), 2u);
  const SiteUsage& internal = s.sites[0].internal ? s.sites[0] : s.sites[1];
  const SiteUsage& object = s.sites[0].internal ? s.sites[1] : s.sites[0];
  EXPECT_TRUE(internal.internal);
  EXPECT_EQ(internal.chunks, 3u);  // two records and one callable
  EXPECT_FALSE(object.internal);
  EXPECT_EQ(object.site.line(), kLineNew);
  EXPECT_EQ(object.chunks, 1u);
  EXPECT_NE(LiveChunksReport(ctx).find("\n  mcx internal (cleanup records): 3 chunks, "),
            std::string::npos);
  ctx->Destroy();
  EXPECT_EQ(destroyed, 2);  // the temporary and the object
}

// A kind whose table has no VisitLiveChunks says so; the name is escaped.
TEST(LiveChunksTest, KindWithoutSitesIsNotRecorded) {
  static const KindMethods kNoSites = [] {
    KindMethods m = *PoolKind().methods();
    m.visit_live_chunks = nullptr;
    return m;
  }();
  Context* ctx = Context::Create(nullptr, "no\nsites", KindSpec(&kNoSites, PoolOptions()));
  ctx->Alloc(10);
  EXPECT_FALSE(SummarizeLiveChunks(ctx).recorded);
  EXPECT_EQ(LiveChunksReport(ctx),
            kChecking ? "live chunks of context 'no\\nsites': not recorded (its kind keeps no "
                        "allocation sites)\n"
                      : "live chunks of context 'no\\nsites': not recorded (allocation sites "
                        "are kept in checking builds only)\n");
  ctx->Destroy();
}


// --- ExpectAllFreed: leaks at reset and destroy ------------------------------------

std::vector<std::string>* reports = nullptr;
void Record(const char* message) { reports->push_back(message); }

class LeakTest : public ::testing::Test {
 protected:
  void SetUp() override {
    reports = &seen_;
    previous_ = SetMisuseHandler(&Record);
  }
  void TearDown() override {
    SetMisuseHandler(previous_);
    reports = nullptr;
  }
  std::vector<std::string> seen_;
  MisuseHandler previous_ = nullptr;
};

std::string Site(int line, size_t chunks, size_t bytes) {
  return absl::StrCat(__FILE__, ":", line, ": ", chunks, " chunks, ", bytes, " bytes");
}

// A reset that finds chunks the program said it would free reports them, by
// site, most bytes first, in one line; mcx's own chunks and chunks freed by
// a cleanup do not count; the context is reset all the same.
void ExpectLeaksAtReset(Context* ctx, std::vector<std::string>* seen) {
  ctx->ExpectAllFreed();
  void* a = ctx->Alloc(40);  const int kLineA = __LINE__;
  ctx->Alloc(30, Here(kLineA));
  ctx->Alloc(100);  const int kLineB = __LINE__;
  ctx->Free(a);
  void* freed_by_cleanup = ctx->Alloc(24);
  ctx->AddCleanup([ctx, freed_by_cleanup] { ctx->Free(freed_by_cleanup); });
  ctx->Reset();
  if (!kChecking) {
    EXPECT_TRUE(seen->empty());
    return;
  }
  ASSERT_EQ(seen->size(), 1u);
  EXPECT_EQ((*seen)[0],
            absl::StrCat("leak in context '", ctx->name(),
                         "' at its reset: 2 chunks (130 bytes) that the program said it would "
                         "free (ExpectAllFreed): ",
                         Site(kLineB, 1, 100), "; ", Site(kLineA, 1, 30)));
  seen->clear();
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  EXPECT_EQ(SummarizeLiveChunks(ctx).chunks, 0u);
  // Everything freed: nothing to report, also with cleanups registered.
  void* b = ctx->Alloc(10);
  ctx->AddCleanup([] {});
  ctx->Free(b);
  ctx->Reset();
  EXPECT_TRUE(seen->empty()) << (*seen)[0];
}

TEST_F(LeakTest, PoolLeaksAreReportedAtReset) {
  Context* ctx = CreatePoolContext(nullptr, "pool");
  ExpectLeaksAtReset(ctx, &seen_);
  ctx->Destroy();
  EXPECT_TRUE(seen_.empty());
}

TEST_F(LeakTest, FreelistLeaksAreReportedAtReset) {
  Context* ctx = CreateFreelistContext(nullptr, "freelist");
  ExpectLeaksAtReset(ctx, &seen_);
  ctx->Destroy();
  EXPECT_TRUE(seen_.empty());
}

TEST_F(LeakTest, GenerationLeaksAreReportedAtReset) {
  Context* ctx = CreateGenerationContext(nullptr, "generation");
  ExpectLeaksAtReset(ctx, &seen_);
  ctx->Destroy();
  EXPECT_TRUE(seen_.empty());
}

// A slab's leaks: its objects (of the object size) by site, at reset and
// at destroy.
TEST_F(LeakTest, SlabLeaksAreReportedAtResetAndDestroy) {
  SlabOptions o;
  o.object_size = 32;
  Context* ctx = CreateSlabContext(nullptr, "slab", o);
  ctx->ExpectAllFreed();
  void* a = ctx->Alloc(32);  const int kLineA = __LINE__;
  ctx->Alloc(32, Here(kLineA));
  ctx->Alloc(32);  const int kLineB = __LINE__;
  ctx->Free(a);
  ctx->Reset();
  if (!kChecking) {
    EXPECT_TRUE(seen_.empty());
    ctx->Destroy();
    return;
  }
  ASSERT_EQ(seen_.size(), 1u);
  EXPECT_EQ(seen_[0], absl::StrCat("leak in context 'slab' at its reset: 2 chunks (64 bytes) that "
                                   "the program said it would free (ExpectAllFreed): ",
                                   Site(kLineA, 1, 32), "; ", Site(kLineB, 1, 32)));
  seen_.clear();
  ctx->Alloc(32);  const int kLineC = __LINE__;
  void* freed = ctx->Alloc(32);
  ctx->Free(freed);
  ctx->Destroy();
  ASSERT_EQ(seen_.size(), 1u);
  EXPECT_EQ(seen_[0], absl::StrCat("leak in context 'slab' at its destroy: 1 chunks (32 bytes) "
                                   "that the program said it would free (ExpectAllFreed): ",
                                   Site(kLineC, 1, 32)));
}

struct Node {
  ~Node() {}
  int value = 0;
};

// A destroy reports too, for each flagged context of the subtree and only
// those (the flag is not inherited); ContextOptions sets it; an object of
// New<T> left to the teardown is a leak at the New call.
TEST_F(LeakTest, DestroyReportsEachFlaggedContext) {
  ContextOptions o;
  o.expect_all_freed = true;
  Context* top = Context::Create(nullptr, "top", PoolKind(), o);
  Context* child = top->CreateChild("child", FreelistKind());
  Context* flagged = top->CreateChild("flagged", FreelistKind(), o);
  child->Alloc(10);  // not flagged: no report
  New<Node>(flagged);  const int kLineNode = __LINE__;
  top->Alloc(8);  const int kLineTop = __LINE__;
  top->Destroy();
  if (!kChecking) {
    EXPECT_TRUE(seen_.empty());
    return;
  }
  ASSERT_EQ(seen_.size(), 2u);
  // Children go first. The object's chunk holds its cleanup handle too.
  const size_t node_bytes = internal::HandleSlotBytes<Node>() + sizeof(Node);
  EXPECT_EQ(seen_[0], absl::StrCat("leak in context 'flagged' at its destroy: 1 chunks (",
                                   node_bytes,
                                   " bytes) that the program said it would free "
                                   "(ExpectAllFreed): ",
                                   Site(kLineNode, 1, node_bytes)));
  EXPECT_EQ(seen_[1], absl::StrCat("leak in context 'top' at its destroy: 1 chunks (8 bytes) "
                                   "that the program said it would free (ExpectAllFreed): ",
                                   Site(kLineTop, 1, 8)));
}

// The flag can be taken back; a context created without it reports nothing.
TEST_F(LeakTest, ExpectAllFreedCanBeCleared) {
  Context* ctx = CreateFreelistContext(nullptr, "ctx");
  ctx->ExpectAllFreed();
  ctx->ExpectAllFreed(false);
  ctx->Alloc(10);
  ctx->Reset();
  ctx->Destroy();
  EXPECT_TRUE(seen_.empty());
}

// Many sites: the line stays one line within the misuse handler's bound and
// says how many sites it left out.
TEST_F(LeakTest, ManySitesAreCountedNotListed) {
  if (!kChecking) GTEST_SKIP() << "sites are kept in checking builds";
  Context* ctx = CreateFreelistContext(nullptr, "many");
  ctx->ExpectAllFreed();
  constexpr int kSites = 40;
  for (int i = 0; i < kSites; ++i) ctx->Alloc(static_cast<size_t>(100 + i), Here(5000 + i));
  ctx->Destroy();
  ASSERT_EQ(seen_.size(), 1u);
  const std::string& line = seen_[0];
  EXPECT_LT(line.size(), 512u);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  // The largest first: line 5039 (139 bytes).
  EXPECT_NE(line.find(absl::StrCat(": ", Site(5039, 1, 139), "; ")), std::string::npos) << line;
  // Listed sites are separated by "; ", and "; and N more sites" ends it.
  const int listed = static_cast<int>(std::count(line.begin(), line.end(), ';'));
  EXPECT_GT(listed, 2);
  EXPECT_EQ(line.substr(line.rfind("; and ")),
            absl::StrCat("; and ", kSites - listed, " more sites"))
      << line;
}

// With the default handler a leak stops the program, as other misuse does.
TEST(LeakDeathTest, DefaultHandlerAborts) {
  if (!kChecking) GTEST_SKIP() << "leaks are found in checking builds";
  EXPECT_DEATH(
      {
        Context* ctx = CreatePoolContext(nullptr, "leaky");
        ctx->ExpectAllFreed();
        ctx->Alloc(16);
        ctx->Destroy();
      },
      "mcx: leak in context 'leaky' at its destroy: 1 chunks \\(16 bytes\\)");
}

}  // namespace
}  // namespace mcx
