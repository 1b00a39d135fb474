// The whole kind conformance suite (mcx/testing/kind_conformance.h), for
// the pool kind, the rewinding pool, the freelist kind, the slab kind (the
// option sets of tests/slab) and the generation kind (those of
// tests/generation), with every block from one static buddy region and the system allocator poisoned: main
// installs the region as the default block source (which the suite's
// counting source draws from), arms no_system_alloc.h, and runs the suite;
// an allocation made on behalf of mcx aborts the test, naming its frames.
//
// The region is 4 MiB, as the demo's (demo_on_buddy_test.cc). Each
// traits struct says so (kSourceBytes), and the suite scales down its few
// largest live sets (at full scale over 8 MB of power-of-two blocks at
// once) and checks alignments up to 512 KiB rather than kMaxAlignment: a
// kMaxAlignment chunk has its header before it, so it sits 2 MiB into a
// 4 MiB block, the whole region, while the context's own first block is in
// it. Every kind checks kMaxAlignment over the system source.

#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

#include "absl/base/attributes.h"
#include "gtest/gtest.h"
#include "mcx/buddy/buddy_source.h"
#include "mcx/context/block_source.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/generation/generation.h"
#include "mcx/pool/pool.h"
#include "mcx/slab/slab.h"
#include "mcx/testing/kind_conformance.h"
#include "mcx/testing/test_block_sources.h"
#include "tests/buddy/no_system_alloc.h"

namespace buddy_conformance {
constexpr size_t kRegionBytes = size_t{4} << 20;
}  // namespace buddy_conformance

// One block of 4 MiB, aligned to 4 MiB, split as the contexts ask.
MCX_BUDDY_SOURCE_DEFINE(suite_region, 256, buddy_conformance::kRegionBytes, 1);

namespace buddy_conformance {

// What the suite may hold at once: the region.
struct OverBuddy : mcx::test::KindTraitsDefaults {
  static constexpr size_t kSourceBytes = kRegionBytes;
};
// A quarter of the chunks and children of the largest live sets; chunks
// aligned up to 512 KiB (a block of 1 MiB, a quarter of the region).
static_assert(mcx::test::ScaledToSource<OverBuddy>(3000) == 750, "");
static_assert(mcx::test::LargestTestedAlignment<OverBuddy>() == size_t{512} << 10, "");

// Kinds with blocks of at most the region's largest (4 MiB): the freelist
// kind's blocks would double to 8 MiB.
struct PoolOverBuddy : OverBuddy {
  static mcx::KindSpec Spec() { return mcx::PoolKind(); }
  static constexpr bool kFreeReleasesSmall = false;
  static constexpr bool kUnsizedRealloc = false;
};
struct RewindingPoolOverBuddy : OverBuddy {
  static mcx::KindSpec Spec() {
    mcx::PoolOptions o;
    o.rewind_on_free = true;
    return mcx::PoolKind(o);
  }
  static constexpr bool kUnsizedRealloc = false;
};
struct FreelistOverBuddy : OverBuddy {
  static constexpr bool kContextFreeCalls = true;  // chunk headers
  static mcx::KindSpec Spec() {
    mcx::FreelistOptions o;
    o.max_block_size = 1 << 20;
    return mcx::FreelistKind(o);
  }
};

// The slab option sets of tests/slab/slab_test.cc: objects from blocks of
// 1 or 2 KiB, dedicated blocks (aligned to the block size) for the
// suite's other sizes.
mcx::SlabOptions SlabOver(size_t object_size, size_t block_size) {
  mcx::SlabOptions o;
  o.object_size = object_size;
  o.block_size = block_size;
  o.larger = mcx::SlabLarger::kDedicatedBlock;
  return o;
}
struct SlabOverBuddy : OverBuddy {
  static mcx::KindSpec Spec() { return mcx::SlabKind(SlabOver(256, 2048)); }
};
struct SmallSlabOverBuddy : OverBuddy {
  static mcx::KindSpec Spec() { return mcx::SlabKind(SlabOver(300, 1024)); }
};
void NoteConstructed(void* object, void*) noexcept { std::memset(object, 0x33, 8); }
void NoteDestroyed(void*, void*) noexcept {}
struct ConstructedSlabOverBuddy : OverBuddy {
  static mcx::KindSpec Spec() {
    mcx::SlabOptions o = SlabOver(256, 2048);
    o.constructor = &NoteConstructed;
    o.destructor = &NoteDestroyed;
    return mcx::SlabKind(o);
  }
};
struct GenerationOverBuddy : OverBuddy {
  static constexpr bool kContextFreeCalls = true;  // chunk headers
  static mcx::KindSpec Spec() { return mcx::GenerationKind(); }
};
struct SmallGenerationOverBuddy : OverBuddy {
  static constexpr bool kContextFreeCalls = true;  // chunk headers
  static mcx::KindSpec Spec() {
    mcx::GenerationOptions o;
    o.initial_block_size = 1024;
    o.max_block_size = 4096;
    o.chunk_limit = 512;
    return mcx::GenerationKind(o);
  }
};

// After each test: every block went back to the region, merged.
class RegionEmpty : public ::testing::EmptyTestEventListener {
  void OnTestEnd(const ::testing::TestInfo& info) override {
    const mcx::BuddyBlockSource::Stats s = suite_region.GetStats();
    if (s.used_bytes != 0 || s.free_blocks != 1) {
      std::fprintf(stderr, "%s.%s left %zu bytes in %zu blocks of the region\n",
                   info.test_suite_name(), info.name(), s.used_bytes, s.used_blocks);
      ++leaks;
    }
  }

 public:
  int leaks = 0;
};

}  // namespace buddy_conformance

MCX_INSTANTIATE_KIND_CONFORMANCE_TEST(PoolOverBuddy, buddy_conformance::PoolOverBuddy);
MCX_INSTANTIATE_KIND_CONFORMANCE_TEST(RewindingPoolOverBuddy,
                                      buddy_conformance::RewindingPoolOverBuddy);
MCX_INSTANTIATE_KIND_CONFORMANCE_TEST(FreelistOverBuddy, buddy_conformance::FreelistOverBuddy);
MCX_INSTANTIATE_KIND_CONFORMANCE_TEST(SlabOverBuddy, buddy_conformance::SlabOverBuddy);
MCX_INSTANTIATE_KIND_CONFORMANCE_TEST(SmallSlabOverBuddy, buddy_conformance::SmallSlabOverBuddy);
MCX_INSTANTIATE_KIND_CONFORMANCE_TEST(ConstructedSlabOverBuddy,
                                      buddy_conformance::ConstructedSlabOverBuddy);
MCX_INSTANTIATE_KIND_CONFORMANCE_TEST(GenerationOverBuddy, buddy_conformance::GenerationOverBuddy);
MCX_INSTANTIATE_KIND_CONFORMANCE_TEST(SmallGenerationOverBuddy,
                                      buddy_conformance::SmallGenerationOverBuddy);

namespace mcx {
namespace test {

// The suite's source really drew from the region.
TEST(BuddyConformanceTest, TheDefaultSourceIsTheRegion) {
  EXPECT_EQ(DefaultBlockSource(), &suite_region);
  FailingBlockSource counting;
  Context* ctx = Context::Create(nullptr, "probe", PoolKind(), ContextOptions{&counting});
  const uint64_t before = suite_region.GetStats().acquires;
  ctx->Alloc(100000);
  EXPECT_GT(suite_region.GetStats().acquires, before);
  ctx->Destroy();
  EXPECT_EQ(counting.live_blocks(), 0);
}

}  // namespace test
}  // namespace mcx

namespace mcx {
namespace probe {

// An mcx function that calls operator new, as no mcx code may here: the
// harness must name it in every build, whatever the compiler inlines into
// the replaced operator new.
ABSL_ATTRIBUTE_NOINLINE void* NewOnBehalfOfMcx(size_t n) { return ::operator new(n); }

}  // namespace probe
}  // namespace mcx

TEST(NoSystemAllocTest, OperatorNewOnBehalfOfMcxAborts) {
  if (!no_system_alloc::Armed()) GTEST_SKIP() << "the system allocator is not poisoned here";
  EXPECT_DEATH(mcx::probe::NewOnBehalfOfMcx(100),
               "operator new\\(100\\) on behalf of mcx(.|\n)*NewOnBehalfOfMcx");
}

// The harness itself: an allocation on behalf of mcx aborts (here: a
// context over the system source, whose Acquire calls malloc), naming the
// mcx frame; a stats report (a std::string by contract) and exceptions
// thrown by mcx's throwing calls are not findings.
TEST(NoSystemAllocTest, AnAllocationOnBehalfOfMcxAborts) {
  if (!no_system_alloc::Armed()) GTEST_SKIP() << "the system allocator is not poisoned here";
  mcx::SystemBlockSource system;
  mcx::ContextOptions o;
  o.block_source = &system;
  EXPECT_DEATH(mcx::Context::Create(nullptr, "system", mcx::PoolKind(), o),
               "on behalf of mcx(.|\n)*SystemBlockSource7Acquire");
}

TEST(NoSystemAllocTest, ReportsAndExceptionsAreNotFindings) {
  mcx::Context* ctx = mcx::Context::Create(nullptr, "reported", mcx::PoolKind());
  ctx->Alloc(100);
  EXPECT_NE(mcx::StatsReport(ctx).find("reported"), std::string::npos);
  const uint64_t before = no_system_alloc::ExceptionCalls();
  const uint64_t messages = no_system_alloc::MessageCalls();
  EXPECT_THROW(ctx->AllocAligned(16, 3), std::invalid_argument);
  if (no_system_alloc::Armed()) {
    EXPECT_EQ(no_system_alloc::ExceptionCalls(), before + 1);
    EXPECT_EQ(no_system_alloc::MessageCalls(), messages + 1);  // its what()
  }
  ctx->Destroy();
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (!mcx::SetDefaultBlockSource(&suite_region)) {
    std::fprintf(stderr, "buddy_conformance_test: the default source was already chosen\n");
    return 1;
  }
  auto* empty = new buddy_conformance::RegionEmpty;
  ::testing::UnitTest::GetInstance()->listeners().Append(empty);
  const bool poisoned = no_system_alloc::Prepare();
  no_system_alloc::Arm();
  const int status = RUN_ALL_TESTS();
  const bool armed = no_system_alloc::Armed();
  no_system_alloc::Disarm();
  const mcx::BuddyBlockSource::Stats s = suite_region.GetStats();
  std::printf("region: %llu acquires, %llu releases, peak %zu of %zu bytes, %llu failures, "
              "%llu refused alignments\n",
              static_cast<unsigned long long>(s.acquires),
              static_cast<unsigned long long>(s.releases), s.peak_used_bytes, s.region_bytes,
              static_cast<unsigned long long>(s.failures),
              static_cast<unsigned long long>(s.refused_alignment));
  std::printf("system allocator: %s; calls allowed for the test's own code: %llu; exception "
              "objects from the emergency pool: %llu; exception messages: %llu\n",
              armed ? "poisoned for mcx" : (poisoned ? "not poisoned (memcheck)" : "not poisoned"),
              static_cast<unsigned long long>(no_system_alloc::AllowedCalls()),
              static_cast<unsigned long long>(no_system_alloc::ExceptionCalls()),
              static_cast<unsigned long long>(no_system_alloc::MessageCalls()));
  if (empty->leaks != 0) return 1;
  if (s.acquires == 0 || s.used_bytes != 0) return 1;
  return status;
}
