// Tests of the slab kind, as a kind outside mcx tests itself: the exported
// conformance suite (//testing, three lines), a fault-injection sweep of the
// slab's own workload, then what is the slab's own: slots, dedicated blocks,
// its description of itself (inspect) and misuse.

#include "examples/slab_kind/slab_kind.h"

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/inspect.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/stats.h"
#include "mcx/testing/inspect_check.h"
#include "mcx/testing/kind_conformance.h"
#include "mcx/testing/sweep.h"
#include "mcx/testing/test_block_sources.h"

// [START conformance]
// The suite allocates sizes of every kind; up to 200 bytes in bulk where it
// checks that a reset keeps capacity. 256-byte slots serve those from slots;
// larger requests exercise the dedicated blocks.
struct SlabTraits : mcx::test::KindTraitsDefaults {  // frees reuse slots; sizes are known
  static mcx::KindSpec Spec() { return mcx::examples::SlabKind({/*slot_size=*/256}); }
};
MCX_INSTANTIATE_KIND_CONFORMANCE_TEST(Slab, SlabTraits);
// [END conformance]

namespace mcx {
namespace {

using examples::SlabKind;
using examples::SlabOptions;
using test::CountingBlockSource;
using test::Fill;
using test::Holds;

constexpr size_t kObjectBytes = 48;
constexpr size_t kSlotsPerBlock = 16;

SlabOptions SmallSlab(size_t slot_size = kObjectBytes, size_t slots = kSlotsPerBlock) {
  SlabOptions so;
  so.slot_size = slot_size;
  so.slots_per_block = slots;
  return so;
}

// [START sweep]
// Fails every block acquisition of a slab's day in turn: the slab's first
// block (a child created in the workload), slot blocks, dedicated blocks, a
// dedicated block that moves, blocks after a reset that kept some.
TEST(SlabSweepTest, EveryFailedAcquisitionIsClean) {
  const int acquisitions = test::SweepFailures(SlabKind(SmallSlab()), [](Context* top) {
    Context* slab = top->CreateChild("slab", SlabKind(SmallSlab()));
    std::vector<void*> live;
    for (int i = 0; i < 200; ++i) {
      live.push_back(slab->Alloc(i % 10 == 0 ? 1000 : kObjectBytes));
      if (i % 3 == 0) {
        auto victim = live.begin() + static_cast<std::ptrdiff_t>(live.size() / 2);
        mcx::Free(*victim);
        live.erase(victim);
      }
    }
    void* grown = slab->Alloc(10);
    for (size_t size = 100; size < 100000; size *= 3) grown = slab->Realloc(grown, size);
    slab->Reset(ResetOptions::KeepBytes(4096));
    for (int i = 0; i < 100; ++i) slab->Alloc(kObjectBytes);
  });
  EXPECT_GT(acquisitions, 10) << "the workload should acquire many blocks";
}
// [END sweep]

class SlabTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Direct mode sends every request to a dedicated block: no slots.
    if (kDirectBuild) GTEST_SKIP() << "slots: not in direct mode";
  }
  Context* Make(size_t slot_size = kObjectBytes, size_t slots = kSlotsPerBlock) {
    ContextOptions o;
    o.block_source = &source_;
    return Context::Create(nullptr, "slab", SlabKind(SmallSlab(slot_size, slots)), o);
  }
  void ExpectConsistent(const Context* ctx) {
    std::string error;
    EXPECT_TRUE(ctx->Check(&error)) << error;
  }

  CountingBlockSource source_;
};

// Slots are 16-byte multiples after their 8-byte header: 48 rounds to 56.
TEST_F(SlabTest, SlotSizeIsRoundedToFillSixteenByteStrides) {
  Context* ctx = Make(kObjectBytes);
  void* p = ctx->Alloc(1);
  EXPECT_EQ(ctx->ChunkSize(p), 56u);
  EXPECT_EQ(GetChunkSize(p), 56u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kDefaultAlignment, 0u);
  ctx->Destroy();
}

// A freed slot is the next one handed out (LIFO), so churn stays in place.
TEST_F(SlabTest, FreedSlotIsReusedFirst) {
  Context* ctx = Make();
  void* a = ctx->Alloc(kObjectBytes);
  void* b = ctx->Alloc(kObjectBytes);
  ctx->Free(a);
  mcx::Free(b);  // the chunk header finds the context
  EXPECT_EQ(ctx->Alloc(kObjectBytes), b);
  EXPECT_EQ(ctx->Alloc(kObjectBytes), a);
  ExpectConsistent(ctx);
  ctx->Destroy();
}

// Every block holds `slots_per_block` slots, the first block included.
TEST_F(SlabTest, EachBlockHoldsSlotsPerBlockSlots) {
  Context* ctx = Make();
  for (size_t i = 0; i < kSlotsPerBlock; ++i) ctx->Alloc(kObjectBytes);
  EXPECT_EQ(ctx->num_blocks(), 1u);
  ctx->Alloc(kObjectBytes);
  EXPECT_EQ(ctx->num_blocks(), 2u);
  for (size_t i = 1; i < kSlotsPerBlock; ++i) ctx->Alloc(kObjectBytes);
  EXPECT_EQ(ctx->num_blocks(), 2u);
  ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Requests above the slot size get a dedicated block, given back at free.
TEST_F(SlabTest, LargerRequestsGetADedicatedBlock) {
  Context* ctx = Make();
  void* big = ctx->Alloc(1000);
  EXPECT_EQ(ctx->num_blocks(), 2u);
  EXPECT_GE(ctx->ChunkSize(big), 1000u);
  EXPECT_EQ(GetChunkContext(big), ctx);
  Fill(big, 1000, 1);
  big = mcx::Realloc(big, 5000);  // resized through the block source
  EXPECT_TRUE(Holds(big, 1000, 1));
  mcx::Free(big);
  EXPECT_EQ(ctx->num_blocks(), 1u);
  ExpectConsistent(ctx);
  ctx->Destroy();
}

// A slot grows into a dedicated chunk, keeping its bytes.
TEST_F(SlabTest, ReallocBeyondTheSlotMovesToADedicatedBlock) {
  Context* ctx = Make();
  void* p = ctx->Alloc(40);
  Fill(p, 40, 2);
  EXPECT_EQ(ctx->Realloc(p, 50), p);  // still fits the 56-byte slot
  void* q = ctx->Realloc(p, 500);
  EXPECT_NE(q, p);
  EXPECT_TRUE(Holds(q, 40, 2));
  EXPECT_EQ(GetCounters(ctx).free_chunks, 1u);  // the old slot
  ctx->Destroy();
}

// A KeepBytes reset keeps blocks, and later slots come from them.
TEST_F(SlabTest, KeptBlocksAreReusedAfterReset) {
  Context* ctx = Make();
  for (size_t i = 0; i < 4 * kSlotsPerBlock; ++i) ctx->Alloc(kObjectBytes);
  EXPECT_EQ(ctx->num_blocks(), 4u);
  ctx->Reset(ResetOptions::KeepBytes(~size_t{0}));
  EXPECT_EQ(ctx->num_blocks(), 4u);
  ExpectConsistent(ctx);
  const int64_t acquires = source_.acquires();
  for (size_t i = 0; i < 4 * kSlotsPerBlock; ++i) ctx->Alloc(kObjectBytes);
  EXPECT_EQ(source_.acquires(), acquires);
  ctx->Reset();
  EXPECT_EQ(ctx->num_blocks(), 1u);
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Aligned requests work through the redirect header, also without a context.
TEST_F(SlabTest, AlignedChunksFreeWithoutAContext) {
  Context* ctx = Make(256);
  void* p = ctx->AllocAligned(24, 64);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  EXPECT_EQ(GetChunkContext(p), ctx);
  mcx::Free(p);
  EXPECT_EQ(GetCounters(ctx).free_chunks, 1u);
  ExpectConsistent(ctx);
  ctx->Destroy();
}

// The slab describes itself (inspect.h): its blocks of slots, oldest first,
// the one being carved current; spare blocks a reset kept; dedicated
// blocks; and its one size class, the slot, with the free list head first.
TEST_F(SlabTest, InspectShowsSlotsSpareAndDedicatedBlocks) {
  Context* ctx = Make();
  std::vector<void*> slots;
  for (size_t i = 0; i < kSlotsPerBlock + 3; ++i) slots.push_back(ctx->Alloc(kObjectBytes));
  ctx->Free(slots[1]);
  ctx->Free(slots[kSlotsPerBlock + 1]);  // in the second block, freed last
  void* big = ctx->Alloc(1000);
  ContextLayout layout = InspectContext(ctx);
  ASSERT_TRUE(layout.has_detail);
  EXPECT_STREQ(layout.kind, "slab_example");
  ASSERT_EQ(layout.blocks.size(), 3u);
  const BlockInfo& first = layout.blocks[0];
  const BlockInfo& second = layout.blocks[1];
  EXPECT_EQ(first.role, BlockRole::kFirst);
  EXPECT_FALSE(first.current);
  EXPECT_EQ(first.free_bytes, 0u);  // all slots carved
  EXPECT_EQ(first.freelist_chunks, 1u);
  EXPECT_EQ(first.freelist_bytes, 64u);  // one 56-byte slot and its header
  EXPECT_EQ(second.role, BlockRole::kNormal);
  EXPECT_TRUE(second.current);
  EXPECT_EQ(second.freelist_chunks, 1u);
  EXPECT_EQ(second.free_bytes, (kSlotsPerBlock - 3) * 64);
  EXPECT_EQ(layout.blocks[2].role, BlockRole::kDedicated);
  EXPECT_EQ(layout.BlockContaining(big), &layout.blocks[2]);
  ASSERT_EQ(layout.size_classes.size(), 1u);
  EXPECT_EQ(layout.size_classes[0].info.class_bytes, 56u);
  EXPECT_EQ(layout.size_classes[0].info.chunk_bytes, 64u);
  const std::vector<const void*> free_list = {slots[kSlotsPerBlock + 1], slots[1]};
  EXPECT_EQ(layout.size_classes[0].free_list, free_list);
  EXPECT_TRUE(test::ExpectInspectAddsUp(ctx));

  ctx->Reset(ResetOptions::KeepBytes(~size_t{0}));
  layout = InspectContext(ctx);
  ASSERT_EQ(layout.blocks.size(), 2u);  // the dedicated block went back
  EXPECT_TRUE(layout.blocks[0].current);
  EXPECT_EQ(layout.blocks[1].role, BlockRole::kSpare);
  EXPECT_EQ(layout.blocks[1].free_bytes, kSlotsPerBlock * 64);
  EXPECT_TRUE(test::ExpectInspectAddsUp(ctx));
  ctx->Destroy();
}

// Options out of range are refused; nothing is acquired for good.
TEST(SlabOptionsTest, InvalidOptionsAreRefused) {
  Context* parent = Context::Create(nullptr, "parent", SlabKind());
  SlabOptions too_big;
  too_big.slot_size = examples::kMaxSlotSize + 1;
  EXPECT_EQ(Context::TryCreate(parent, "slab", SlabKind(too_big)), nullptr);
  EXPECT_EQ(parent->last_failure(), Failure::kBadArgument);
  SlabOptions no_slots;
  no_slots.slots_per_block = 0;
  EXPECT_THROW(Context::Create(parent, "slab", SlabKind(no_slots)), std::invalid_argument);
  EXPECT_EQ(parent->first_child(), nullptr);
  parent->Destroy();
}

// Misuse is reported in every build, one line naming the chunk; with a
// handler that returns, nothing changes.
std::vector<std::string>* reports = nullptr;
void Record(const char* message) { reports->push_back(message); }

class SlabMisuseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (test::UnderMemcheck()) GTEST_SKIP() << "reads freed blocks on purpose";
    reports = &reports_;
    previous_ = SetMisuseHandler(&Record);
  }
  void TearDown() override {
    if (previous_ != nullptr) SetMisuseHandler(previous_);
    reports = nullptr;
  }
  // The one report since the last call; it must name `p` and say `what`.
  void ExpectOneReport(const void* p, const std::string& what) {
    ASSERT_EQ(reports_.size(), 1u) << (reports_.empty() ? "no report" : reports_.back());
    char address[32];
    std::snprintf(address, sizeof(address), "%p", p);
    EXPECT_NE(reports_[0].find(address), std::string::npos) << reports_[0];
    EXPECT_NE(reports_[0].find(what), std::string::npos) << reports_[0];
    reports_.clear();
  }
  void ExpectSoundThenDestroy(Context* ctx) {
    std::string error;
    EXPECT_TRUE(ctx->Check(&error)) << error;
    ctx->Free(ctx->Alloc(kObjectBytes));
    ctx->Free(ctx->Alloc(5000));
    EXPECT_TRUE(ctx->Check(&error)) << error;
    ctx->Destroy();
    EXPECT_TRUE(reports_.empty()) << reports_.front();
    EXPECT_EQ(source_.live_blocks(), 0);
    EXPECT_EQ(source_.bad_releases(), 0);
  }
  Context* Make(const char* name) {
    ContextOptions o;
    o.block_source = &source_;
    return Context::Create(nullptr, name, SlabKind(SmallSlab()), o);
  }

  CountingBlockSource source_;
  std::vector<std::string> reports_;
  MisuseHandler previous_ = nullptr;
};

TEST_F(SlabMisuseTest, DoubleFreeOfASlotIsReported) {
  if (kDirectBuild) GTEST_SKIP() << "slots: not in direct mode";
  Context* ctx = Make("slab");
  void* p = ctx->Alloc(8);
  ctx->Free(p);
  ctx->Free(p);
  ExpectOneReport(p, "double free of chunk");
  ExpectSoundThenDestroy(ctx);
}

TEST_F(SlabMisuseTest, SlotFreedThroughTheWrongContextIsReported) {
  if (kDirectBuild) GTEST_SKIP() << "slots: not in direct mode";
  Context* a = Make("a");
  Context* b = Make("b");
  void* p = a->Alloc(8);
  b->Free(p);
  ExpectOneReport(p, "through slab 'b', but it belongs to 'a'");
  a->Free(p);  // still a's live slot
  a->Destroy();
  ExpectSoundThenDestroy(b);
}

// A dedicated block goes back with its chunk's free bit set: a second free
// reads "freed" from the header alone and touches nothing else. (Checking
// builds clobber a released block: the header then reads as one.)
TEST_F(SlabMisuseTest, DoubleFreeOfADedicatedChunkIsReported) {
  Context* ctx = Make("slab");
  void* big = ctx->Alloc(5000);
  ctx->Free(big);
  ctx->Free(big);
  ExpectOneReport(big, kCheckingBuild ? "" : "double free of chunk");
  ExpectSoundThenDestroy(ctx);
}

// The same without naming the context: the chunk kind's table finds no
// owner for a freed chunk.
TEST_F(SlabMisuseTest, McxFreeTwiceOfADedicatedChunkIsReported) {
  Context* ctx = Make("slab");
  void* big = ctx->Alloc(5000);
  mcx::Free(big);
  mcx::Free(big);
  ExpectOneReport(big, "freed");
  ExpectSoundThenDestroy(ctx);
}

// Another context's dedicated chunk is refused from the links of its block
// (BlockList::Holds), not trusted: nothing is released, nothing unlinked.
TEST_F(SlabMisuseTest, DedicatedChunkOfAnotherContextIsRefused) {
  Context* a = Make("a");
  Context* b = Make("b");
  void* big = a->Alloc(5000);
  b->Free(big);
  ExpectOneReport(big, "not a live dedicated chunk of this slab");
  EXPECT_EQ(b->TryRealloc(big, 9000), nullptr);
  ExpectOneReport(big, "not a live dedicated chunk of this slab");
  EXPECT_EQ(b->last_failure(), Failure::kBadArgument);
  EXPECT_EQ(a->num_blocks(), 2u);
  a->Free(big);
  a->Destroy();
  ExpectSoundThenDestroy(b);
}

}  // namespace
}  // namespace mcx
