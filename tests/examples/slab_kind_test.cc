// Tests for examples/slab_kind, the worked example of docs/adding_a_kind.md:
// the conformance suite every kind runs, the slab's own behaviour (slots,
// dedicated blocks, chunk headers, misuse) and a fault-injection sweep.

#include "examples/slab_kind/slab_kind.h"

#include <cstdint>
#include <new>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/new.h"
#include "mcx/context/stats.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/kind_conformance.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace test {

// [START conformance]
// The suite allocates sizes of every kind; up to 200 bytes in bulk where it
// checks that a reset keeps capacity. 256-byte slots serve those from slots;
// larger requests exercise the dedicated blocks.
struct SlabTraits {
  static KindSpec Spec() {
    examples::SlabOptions options;
    options.slot_size = 256;
    return examples::SlabKind(options);
  }
  static constexpr bool kFreeReleasesSmall = true;  // freed slots are reused
  static constexpr bool kUnsizedRealloc = true;     // a slot's size is known
};

INSTANTIATE_TYPED_TEST_SUITE_P(Slab, KindConformanceTest, SlabTraits);
// [END conformance]

}  // namespace test

namespace {

using examples::SlabKind;
using examples::SlabOptions;
using test::CountingBlockSource;
using test::FailingBlockSource;
using test::Fill;
using test::Holds;

constexpr size_t kObjectBytes = 48;
constexpr size_t kSlotsPerBlock = 16;

class SlabTest : public ::testing::Test {
 protected:
  Context* Make(size_t slot_size = kObjectBytes, size_t slots = kSlotsPerBlock) {
    ContextOptions o;
    o.block_source = &source_;
    SlabOptions so;
    so.slot_size = slot_size;
    so.slots_per_block = slots;
    return Context::Create(nullptr, "slab", SlabKind(so), o);
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

// Stats count free slots and never-used slot space.
TEST_F(SlabTest, StatsCountFreeSlots) {
  Context* ctx = Make();
  std::vector<void*> slots;
  for (int i = 0; i < 10; ++i) slots.push_back(ctx->Alloc(kObjectBytes));
  const size_t free_before = GetCounters(ctx).free_bytes;
  for (int i = 0; i < 4; ++i) ctx->Free(slots[i]);
  ContextCounters c = GetCounters(ctx);
  EXPECT_EQ(c.free_chunks, 4u);
  EXPECT_GT(c.free_bytes, free_before);
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

// Objects with destructors work as on any kind.
TEST_F(SlabTest, NewRegistersDestructors) {
  Context* ctx = Make();
  struct Counted {
    explicit Counted(int* count) : n(count) { ++*n; }
    ~Counted() { --*n; }
    int* n;
  };
  int live = 0;
  for (int i = 0; i < 100; ++i) New<Counted>(ctx, &live);
  EXPECT_EQ(live, 100);
  ctx->Reset();
  EXPECT_EQ(live, 0);
  ctx->Destroy();
}

// Options out of range are refused; nothing is acquired for good.
TEST_F(SlabTest, InvalidOptionsAreRefused) {
  Context* parent = Context::Create(nullptr, "parent", PoolKind());
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

// Fault injection: fail the Nth block acquisition for every N. Each failure
// is std::bad_alloc, the context stays consistent, nothing leaks.
TEST(SlabFaultInjectionTest, EveryFailedAcquisitionLeavesTheSlabUsable) {
  for (int n = 1;; ++n) {
    FailingBlockSource source;
    ContextOptions o;
    o.block_source = &source;
    SlabOptions so;
    so.slot_size = kObjectBytes;
    so.slots_per_block = kSlotsPerBlock;
    Context* top = Context::Create(nullptr, "top", PoolKind(), o);
    source.FailNth(n);
    bool failed = false;
    Context* slab = nullptr;
    try {
      slab = top->CreateChild("slab", SlabKind(so));
      std::vector<void*> live;
      for (int i = 0; i < 200; ++i) {
        live.push_back(slab->Alloc(i % 10 == 0 ? 1000 : kObjectBytes));
        if (i % 3 == 0) {
          auto victim = live.begin() + static_cast<ptrdiff_t>(live.size() / 2);
          mcx::Free(*victim);
          live.erase(victim);
        }
      }
      void* grown = slab->Alloc(10);
      for (size_t size = 100; size < 100000; size *= 3) grown = slab->Realloc(grown, size);
      slab->Reset(ResetOptions::KeepBytes(4096));
      for (int i = 0; i < 100; ++i) slab->Alloc(kObjectBytes);
    } catch (const std::bad_alloc&) {
      failed = true;
    }
    ASSERT_EQ(failed, source.failures() > 0) << "acquisition " << n;
    source.Heal();
    if (slab != nullptr) {
      std::string error;
      ASSERT_TRUE(slab->Check(&error)) << "acquisition " << n << ": " << error;
      ASSERT_NE(slab->Alloc(kObjectBytes), nullptr);
      ASSERT_NE(slab->Alloc(5000), nullptr);
    }
    top->Destroy();
    ASSERT_EQ(source.live_blocks(), 0) << "leak after failing acquisition " << n;
    ASSERT_EQ(source.bad_releases(), 0);
    if (!failed) {
      EXPECT_GT(n, 10) << "the workload should acquire many blocks";
      return;
    }
  }
}

// Misuse is reported in every build: one line naming the chunk.
TEST(SlabDeathTest, DoubleFreeIsReported) {
  Context* ctx = Context::Create(nullptr, "slab", SlabKind());
  void* p = ctx->Alloc(8);
  ctx->Free(p);
  EXPECT_DEATH(ctx->Free(p), "double free of chunk .* in slab 'slab'");
  ctx->Destroy();
}

TEST(SlabDeathTest, FreeThroughTheWrongContextIsReported) {
  Context* a = Context::Create(nullptr, "a", SlabKind());
  Context* b = Context::Create(nullptr, "b", SlabKind());
  void* p = a->Alloc(8);
  EXPECT_DEATH(b->Free(p), "through slab 'b', but it belongs to 'a'");
  b->Destroy();
  a->Destroy();
}

}  // namespace
}  // namespace mcx
