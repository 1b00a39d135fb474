// The slab kind: conformance (with SlabLarger::kDedicatedBlock, so that it
// serves every size the suite asks for), then what is the slab's own: no
// header, blocks aligned to their size, the fullest block first, empty
// blocks released or kept, larger requests refused, misuse found by the
// bitmap, the object constructor and destructor, live cleanups, and the
// typed front end.

#include "mcx/slab/slab.h"

#include <algorithm>
#include <csetjmp>
#include <cstring>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/inspect.h"
#include "mcx/context/pressure.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/context/stats.h"
#include "mcx/slab/typed_slab.h"
#include "mcx/testing/kind_conformance.h"
#include "mcx/testing/sweep.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

using test::CountingBlockSource;
using test::Fill;
using test::Holds;

constexpr bool kDirect = internal::kDirect;
constexpr bool kChecking = internal::kChecking;

// The suite asks for many sizes, mostly up to 300 bytes, and relies on them
// being served from blocks (a reset keeps capacity, a limit holds many
// chunks of 1000 bytes): objects of 256 bytes, dedicated blocks for the
// rest, and small blocks, since each dedicated chunk takes a block aligned
// to the block size.
struct SlabTraits {
  static KindSpec Spec() {
    SlabOptions o;
    o.object_size = 256;
    o.block_size = 2048;
    o.larger = SlabLarger::kDedicatedBlock;
    return SlabKind(o);
  }
  static constexpr bool kFreeReleasesSmall = true;
  static constexpr bool kUnsizedRealloc = true;
};

// Three objects per block: block changes, list moves and releases on
// almost every step. (With no empty block kept, a churn on a block's
// boundary acquires a block at every step, which the suite rightly refuses:
// the kind tests cover that setting.)
struct SmallSlabTraits {
  static KindSpec Spec() {
    SlabOptions o;
    o.object_size = 300;
    o.block_size = 1024;
    o.larger = SlabLarger::kDedicatedBlock;
    return SlabKind(o);
  }
  static constexpr bool kFreeReleasesSmall = true;
  static constexpr bool kUnsizedRealloc = true;
};

// With a constructor and destructor (the link then lives after the object).
void NoteConstructed(void* object, void*) noexcept { std::memset(object, 0x33, 8); }
void NoteDestroyed(void*, void*) noexcept {}
struct ConstructedSlabTraits {
  static KindSpec Spec() {
    SlabOptions o;
    o.object_size = 256;
    o.block_size = 2048;
    o.larger = SlabLarger::kDedicatedBlock;
    o.constructor = &NoteConstructed;
    o.destructor = &NoteDestroyed;
    return SlabKind(o);
  }
  static constexpr bool kFreeReleasesSmall = true;
  static constexpr bool kUnsizedRealloc = true;
};

}  // namespace

namespace test {
INSTANTIATE_TYPED_TEST_SUITE_P(Slab, KindConformanceTest, SlabTraits);
INSTANTIATE_TYPED_TEST_SUITE_P(SmallSlab, KindConformanceTest, SmallSlabTraits);
INSTANTIATE_TYPED_TEST_SUITE_P(ConstructedSlab, KindConformanceTest, ConstructedSlabTraits);
}  // namespace test

namespace {

// A soft limit's callback runs when a block of objects would cross it, with
// the kind's call failed and nothing changed; resetting the very slab that
// allocates there is allowed, and the allocation then succeeds on the retry.
TEST(SlabPressureTest, CallbackMayResetTheAllocatingSlab) {
  if (kDirect) GTEST_SKIP() << "one object per block in direct mode";
  test::ExactBlockSource source;  // sizes as asked: the bound below is exact
  ContextOptions co;
  co.block_source = &source;
  SlabOptions o;
  o.object_size = 64;
  o.block_size = 1024;
  Context* slab = CreateSlabContext(nullptr, "slab", o, co);
  int calls = 0;
  struct Arg {
    Context* slab;
    int* calls;
  } arg{slab, &calls};
  ASSERT_EQ(slab->TrySetSoftLimit(slab->bytes_in_blocks() + 4 * o.block_size,
                                  [](const PressureInfo& info) {
                                    auto* a = static_cast<Arg*>(info.arg);
                                    ++*a->calls;
                                    a->slab->Reset();
                                  },
                                  &arg),
            Failure::kNone);
  for (int i = 0; i < 200; ++i) {
    void* p = slab->Alloc(64);  // earlier objects go at each reset
    std::memset(p, i, 64);
  }
  EXPECT_GT(calls, 0);
  EXPECT_LE(slab->bytes_in_blocks(), slab->first_block_size() + 5 * o.block_size);
  std::string error;
  EXPECT_TRUE(slab->Check(&error)) << error;
  slab->Destroy();
  EXPECT_EQ(source.live(), 0);
}

// Slabs the sweep serves its own requests from after each failure (64
// bytes, and 64 KiB through a dedicated block): small blocks, constructed
// objects, no empty block kept, so that the workload acquires and releases
// blocks of objects all the time.
SlabOptions SweptSlab() {
  SlabOptions o;
  o.object_size = 64;
  o.block_size = 1024;
  o.keep_empty_blocks = 0;
  o.larger = SlabLarger::kDedicatedBlock;
  o.constructor = &NoteConstructed;
  o.destructor = &NoteDestroyed;
  return o;
}

// Fails every block acquisition of a slab's day in turn: its first block (a
// child created in the workload), blocks of objects (new, and again after
// one emptied and went back), dedicated blocks and one that moves, and
// blocks after a reset that kept some.
TEST(SlabSweepTest, EveryFailedAcquisitionIsClean) {
  const int acquisitions = test::SweepFailures(SlabKind(SweptSlab()), [](Context* top) {
    Context* slab = top->CreateChild("slab", SlabKind(SweptSlab()));
    std::vector<void*> live;
    for (int i = 0; i < 300; ++i) {
      live.push_back(slab->Alloc(i % 25 == 0 ? 3000 : 48));
      if (i % 4 == 3) {
        // Frees from the middle: blocks drain, empty and go back.
        for (int k = 0; k < 2 && !live.empty(); ++k) {
          auto victim = live.begin() + static_cast<std::ptrdiff_t>(live.size() / 3);
          slab->Free(*victim);
          live.erase(victim);
        }
      }
    }
    void* grown = slab->Alloc(10);
    for (size_t size = 100; size < 100000; size *= 3) grown = slab->Realloc(grown, size);
    slab->Reset(ResetOptions::KeepBytes(4096));
    for (int i = 0; i < 100; ++i) slab->Alloc(64);
  });
  EXPECT_GT(acquisitions, 20) << "the workload should acquire many blocks";
}

// Misuse reports are recorded instead of aborting.
std::vector<std::string>* reports = nullptr;
void Record(const char* message) { reports->push_back(message); }

class SlabTest : public ::testing::Test {
 protected:
  void SetUp() override {
    reports = &seen_;
    previous_ = SetMisuseHandler(&Record);
  }
  void TearDown() override {
    SetMisuseHandler(previous_);
    reports = nullptr;
    EXPECT_EQ(source_.live_blocks(), 0) << "a test leaked a context";
  }

  Context* Make(const SlabOptions& o, const char* name = "slab") {
    ContextOptions co;
    co.block_source = &source_;
    return CreateSlabContext(nullptr, name, o, co);
  }
  static SlabOptions Objects(size_t size) {
    SlabOptions o;
    o.object_size = size;
    return o;
  }
  static void ExpectConsistent(const Context* ctx) {
    std::string error;
    EXPECT_TRUE(ctx->Check(&error)) << error;
  }
  // The one report since the last call.
  std::string TakeOne() {
    EXPECT_EQ(seen_.size(), 1u) << (seen_.empty() ? std::string("no report") : seen_.back());
    std::string last = seen_.empty() ? std::string() : seen_.back();
    seen_.clear();
    return last;
  }

  CountingBlockSource source_;
  std::vector<std::string> seen_;
  MisuseHandler previous_ = nullptr;
};

// No header: objects of one block lie exactly `stride` apart, and the stride
// is the object size rounded to the alignment (release builds; checking
// builds add a header word and a sentinel).
TEST_F(SlabTest, ObjectsCarryNoHeader) {
  if (kDirect) GTEST_SKIP() << "one object per block in direct mode";
  for (size_t size : {size_t{32}, size_t{200}, size_t{8}, size_t{24}}) {
    Context* ctx = Make(Objects(size));
    SlabGeometry g = GetSlabGeometry(ctx);
    if (!kChecking) {
      EXPECT_EQ(g.stride, (size + 15) / 16 * 16) << size;
    }
    EXPECT_EQ(g.object_size, size);
    EXPECT_GE(g.objects_per_block, kSlabObjectsPerDefaultBlock);
    char* a = static_cast<char*>(ctx->Alloc(size));
    char* b = static_cast<char*>(ctx->Alloc(size));
    EXPECT_EQ(static_cast<size_t>(b - a), g.stride);
    EXPECT_EQ(ctx->ChunkSize(a), size);
    ctx->Destroy();
  }
}

// Alignment 8 packs 24-byte objects 24 bytes apart (Slab<T> picks it for an
// 8-aligned T); larger alignments are honoured for every object.
TEST_F(SlabTest, AlignmentOfObjects) {
  if (kDirect) GTEST_SKIP() << "one object per block in direct mode";
  SlabOptions o = Objects(24);
  o.alignment = 8;
  Context* ctx = Make(o);
  if (!kChecking) {
    EXPECT_EQ(GetSlabGeometry(ctx).stride, 24u);
  }
  ctx->Destroy();
  o.alignment = 64;
  ctx = Make(o);
  for (int i = 0; i < 100; ++i) {
    void* p = ctx->AllocAligned(24, 64);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  }
  ExpectConsistent(ctx);
  ctx->Destroy();
}

// Every block is aligned to its size, and the mask of an object's address
// is its block: that is how Free finds it without a header.
TEST_F(SlabTest, BlocksAreAlignedToTheirSize) {
  Context* ctx = Make(Objects(48));
  const SlabGeometry g = GetSlabGeometry(ctx);
  std::set<uintptr_t> blocks;
  for (size_t i = 0; i < 5 * g.objects_per_block; ++i) {
    auto a = reinterpret_cast<uintptr_t>(ctx->Alloc(48));
    blocks.insert(a & ~(g.block_size - 1));
    EXPECT_EQ(((a & (g.block_size - 1)) - g.first_object_offset) % g.stride, 0u);
  }
  EXPECT_EQ(blocks.size(), 5u);
  EXPECT_EQ(ctx->num_blocks(), 6u);  // and the first block, the context's own
  ctx->Destroy();
}

// The default, as slab.c's ERROR: a larger request fails with kUnsupported
// and throws std::invalid_argument; smaller ones take a slot.
TEST_F(SlabTest, LargerRequestsAreRefusedByDefault) {
  Context* ctx = Make(Objects(64));
  EXPECT_EQ(ctx->TryAlloc(65), nullptr);
  EXPECT_EQ(ctx->last_failure(), Failure::kUnsupported);
  EXPECT_THROW(ctx->Alloc(1000), std::invalid_argument);
  EXPECT_EQ(ctx->TryAllocAligned(64, 64), nullptr);  // more than the objects' alignment
  EXPECT_EQ(ctx->last_failure(), Failure::kUnsupported);
  void* small = ctx->Alloc(10);
  void* zero = ctx->Alloc(0);
  EXPECT_NE(small, zero);
  EXPECT_EQ(ctx->ChunkSize(small), 64u);
  EXPECT_EQ(ctx->Realloc(small, 64), small);  // in place up to the object size
  EXPECT_EQ(ctx->TryRealloc(small, 65), nullptr);
  EXPECT_EQ(ctx->last_failure(), Failure::kUnsupported);
  ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_TRUE(seen_.empty());
}

// SlabLarger::kDedicatedBlock: a larger request gets a block of its own,
// released when it is freed; realloc moves an object out to one.
TEST_F(SlabTest, LargerRequestsGetDedicatedBlocks) {
  SlabOptions o = Objects(64);
  o.larger = SlabLarger::kDedicatedBlock;
  Context* ctx = Make(o);
  void* obj = ctx->Alloc(64);
  Fill(obj, 64, 3);
  const size_t blocks = ctx->num_blocks();
  void* big = ctx->Alloc(5000);
  EXPECT_EQ(ctx->num_blocks(), blocks + 1);
  EXPECT_GE(ctx->ChunkSize(big), 5000u);
  void* aligned = ctx->AllocAligned(100, 1 << 16);  // beyond the block size
  EXPECT_EQ(reinterpret_cast<uintptr_t>(aligned) % (1 << 16), 0u);
  Fill(aligned, 100, 4);
  aligned = ctx->Realloc(aligned, 100000);  // moves, keeping its alignment
  EXPECT_EQ(reinterpret_cast<uintptr_t>(aligned) % (1 << 16), 0u);
  EXPECT_TRUE(Holds(aligned, 100, 4));
  ctx->Free(aligned);
  ctx->Free(big);
  EXPECT_EQ(ctx->num_blocks(), blocks);
  void* moved = ctx->Realloc(obj, 64, 300);
  EXPECT_TRUE(Holds(moved, 64, 3));
  // obj's block emptied (kept: one empty block), the chunk has its own.
  if (!kDirect) {
    EXPECT_EQ(ctx->num_blocks(), blocks + 1);
  }
  ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_TRUE(seen_.empty());
}

// A slab aligned to 8 packs 24-byte objects 24 bytes apart; AllocAligned
// asking 16 is a larger request (refused by default, a dedicated block
// with kDedicatedBlock), never an object that is only 8-aligned. Asking 8
// takes an object.
TEST_F(SlabTest, AllocAlignedBeyondAPackedSlabsAlignmentIsALargerRequest) {
  SlabOptions o = Objects(24);
  o.alignment = 8;
  Context* refusing = Make(o);
  EXPECT_EQ(refusing->TryAllocAligned(24, kDefaultAlignment), nullptr);
  EXPECT_EQ(refusing->last_failure(), Failure::kUnsupported);
  void* packed = refusing->AllocAligned(24, 8);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(packed) % 8, 0u);
  refusing->Free(packed);
  refusing->Destroy();
  o.larger = SlabLarger::kDedicatedBlock;
  Context* ctx = Make(o);
  std::vector<void*> got;
  for (int i = 0; i < 8; ++i) {
    got.push_back(ctx->Alloc(24));
    void* p = ctx->AllocAligned(24, kDefaultAlignment);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kDefaultAlignment, 0u) << i;
    Fill(p, 24, i);
    got.push_back(p);
  }
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(Holds(got[2 * i + 1], 24, i));
  for (void* p : got) ctx->Free(p);
  ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_TRUE(seen_.empty());
}

// An object of an over-aligned slab that realloc moves out to a block of
// its own keeps the slab's alignment, as a dedicated chunk that moves does.
TEST_F(SlabTest, AnObjectMovedOutByReallocKeepsItsAlignment) {
  SlabOptions o = Objects(64);
  o.alignment = 256;
  o.larger = SlabLarger::kDedicatedBlock;
  Context* ctx = Make(o);
  void* p = ctx->Alloc(64);
  ASSERT_EQ(reinterpret_cast<uintptr_t>(p) % 256, 0u);
  Fill(p, 64, 5);
  void* q = ctx->Realloc(p, 64, 1000);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(q) % 256, 0u) << q;
  EXPECT_TRUE(Holds(q, 64, 5));
  void* r = ctx->Realloc(q, 1000, 100000);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(r) % 256, 0u) << r;
  EXPECT_TRUE(Holds(r, 64, 5));
  ctx->Free(r);
  ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_TRUE(seen_.empty());
}

// slab.c's policy: allocation takes the fullest block with room, so that
// the emptier blocks can drain and go back.
TEST_F(SlabTest, AllocationTakesTheFullestBlock) {
  if (kDirect) GTEST_SKIP() << "one object per block in direct mode";
  Context* ctx = Make(Objects(64));
  const size_t n = GetSlabGeometry(ctx).objects_per_block;
  const size_t block = GetSlabGeometry(ctx).block_size;
  std::vector<char*> a, b;
  for (size_t i = 0; i < n; ++i) a.push_back(static_cast<char*>(ctx->Alloc(64)));
  for (size_t i = 0; i < n; ++i) b.push_back(static_cast<char*>(ctx->Alloc(64)));
  auto block_of = [&](void* p) { return reinterpret_cast<uintptr_t>(p) & ~(block - 1); };
  ASSERT_NE(block_of(a[0]), block_of(b[0]));
  // Block a: nearly empty; block b: one object freed.
  for (size_t i = 0; i + 1 < n; ++i) ctx->Free(a[i]);
  ctx->Free(b[5]);
  void* next = ctx->Alloc(64);
  EXPECT_EQ(next, b[5]);  // the fullest block, and its free list's head
  void* after = ctx->Alloc(64);
  EXPECT_EQ(block_of(after), block_of(a[0]));  // b is full again: a next
  ExpectConsistent(ctx);
  ctx->Destroy();
}

// A block whose last object is freed goes back at once, beyond the empty
// blocks kept (one by default; none here).
TEST_F(SlabTest, EmptyBlocksGoBackOrAreKept) {
  for (uint16_t keep : {uint16_t{0}, uint16_t{1}, uint16_t{3}}) {
    SlabOptions o = Objects(128);
    o.keep_empty_blocks = keep;
    Context* ctx = Make(o);
    const size_t n = GetSlabGeometry(ctx).objects_per_block;
    std::vector<void*> live;
    for (size_t i = 0; i < 4 * n; ++i) live.push_back(ctx->Alloc(128));
    EXPECT_EQ(ctx->num_blocks(), 1 + (kDirect ? 4 * n : 4));
    for (void* p : live) ctx->Free(p);
    const size_t kept = kDirect ? 0 : std::min<size_t>(keep, 4);
    EXPECT_EQ(ctx->num_blocks(), 1 + kept) << keep;
    ExpectConsistent(ctx);
    // Kept blocks serve the next objects without the source.
    const int64_t acquires = source_.acquires();
    for (size_t i = 0; i < kept * n; ++i) ctx->Alloc(128);
    EXPECT_EQ(source_.acquires(), acquires);
    ctx->Destroy();
  }
}

// A churn on one block's boundary does not acquire and release a block at
// every step: the empty block is kept.
TEST_F(SlabTest, ChurnOnABlockBoundaryKeepsItsBlock) {
  if (kDirect) GTEST_SKIP() << "no block is kept in direct mode";
  Context* ctx = Make(Objects(64));
  const size_t n = GetSlabGeometry(ctx).objects_per_block;
  for (size_t i = 0; i < n; ++i) ctx->Alloc(64);  // one full block
  const int64_t acquires = source_.acquires();
  for (int i = 0; i < 1000; ++i) ctx->Free(ctx->Alloc(64));
  EXPECT_EQ(source_.acquires(), acquires + 1);
  ctx->Destroy();
}

// Misuse the bitmap finds in every build: a double free, an address inside
// an object, an object of another slab. Nothing changes.
TEST_F(SlabTest, MisuseIsReported) {
  if (kDirect) GTEST_SKIP() << "a freed object's block is released at once in direct mode";
  Context* ctx = Make(Objects(64), "victim");
  Context* other = Make(Objects(64), "other");
  char* p = static_cast<char*>(ctx->Alloc(64));
  char* q = static_cast<char*>(ctx->Alloc(64));
  ctx->Free(p);
  ctx->Free(p);
  EXPECT_NE(TakeOne().find("double free of object"), std::string::npos);
  ctx->Free(q + 8);
  EXPECT_NE(TakeOne().find("not an object of this slab"), std::string::npos);
  void* theirs = other->Alloc(64);
  ctx->Free(theirs);
  EXPECT_NE(TakeOne().find("'victim'"), std::string::npos);
  EXPECT_EQ(ctx->TryRealloc(p, 64), nullptr);
  EXPECT_NE(TakeOne().find("after it was freed"), std::string::npos);
  // Two allocations now get two different objects: p was listed free once.
  void* x = ctx->Alloc(64);
  void* y = ctx->Alloc(64);
  EXPECT_NE(x, y);
  ExpectConsistent(ctx);
  ExpectConsistent(other);
  other->Free(theirs);
  other->Destroy();
  ctx->Destroy();
  EXPECT_TRUE(seen_.empty());
}

// mcx::Free cannot find a slab object's context: there is no header. Checking
// builds write one only to report the attempt; elsewhere the call reads
// whatever precedes the object, so it is not made here.
TEST_F(SlabTest, ContextFreeOperationsAreReportedInCheckingBuilds) {
  if (!kChecking) GTEST_SKIP() << "needs --config=checking";
  Context* ctx = Make(Objects(64));
  void* p = ctx->Alloc(64);
  mcx::Free(p);
  EXPECT_NE(TakeOne().find("slab objects carry no chunk header"), std::string::npos);
  EXPECT_EQ(GetChunkContext(p), nullptr);
  TakeOne();
  ctx->Free(p);  // still live
  ExpectConsistent(ctx);
  ctx->Destroy();
}

// Dedicated chunks always carry a header word: mcx::Free of one is reported
// in every build, not followed.
TEST_F(SlabTest, ContextFreeOfADedicatedChunkIsReported) {
  SlabOptions o = Objects(64);
  o.larger = SlabLarger::kDedicatedBlock;
  Context* ctx = Make(o);
  void* p = ctx->Alloc(1000);
  mcx::Free(p);
  EXPECT_NE(TakeOne().find("slab objects carry no chunk header"), std::string::npos);
  ctx->Free(p);
  // The freed block says so while its memory is not reused; the second
  // free reads a released block, which the tools rightly report.
  if (!test::UnderMemcheck() && !internal::kAddressSanitizer) {
    ctx->Free(p);
    EXPECT_EQ(seen_.size(), 1u);
    seen_.clear();
  }
  ctx->Destroy();
}

// Checking builds: a write past an object (its sentinel) and a write to a
// freed object are reported.
TEST_F(SlabTest, CheckingBuildsFindOverrunsAndWritesAfterFree) {
  if (!kChecking || internal::kAddressSanitizer) GTEST_SKIP() << "needs --config=checking, no ASan";
  Context* ctx = Make(Objects(40));
  char* p = static_cast<char*>(ctx->Alloc(40));
  p[40] = 'x';  // the sentinel
  ctx->Free(p);
  EXPECT_NE(TakeOne().find("sentinel"), std::string::npos);
  p[40] = static_cast<char>(0x7E);
  ctx->Free(p);
  p[20] = 'y';  // after the free
  void* again = ctx->Alloc(40);
  EXPECT_EQ(again, p);
  EXPECT_NE(TakeOne().find("written after it was freed"), std::string::npos);
  ctx->Destroy();
}

// The kernel's constructor semantics: an object is constructed once, when
// its slot is first used, and keeps its state across free and allocate; the
// destructor runs on each slot ever used when its block goes back, and at
// reset and destroy.
struct Counts {
  int constructed = 0;
  int destroyed = 0;
  int cleaned = 0;
};

void Construct(void* object, void* arg) noexcept {
  ++static_cast<Counts*>(arg)->constructed;
  *static_cast<uint64_t*>(object) = 0xC0FFEE;
}
void Destroy(void* object, void* arg) noexcept {
  EXPECT_EQ(*static_cast<uint64_t*>(object), 0xC0FFEEu);
  ++static_cast<Counts*>(arg)->destroyed;
}
void Clean(void* object, void* arg) noexcept {
  EXPECT_EQ(*static_cast<uint64_t*>(object), 0xC0FFEEu);
  ++static_cast<Counts*>(arg)->cleaned;
}

TEST_F(SlabTest, ConstructorRunsOncePerSlot) {
  Counts counts;
  SlabOptions o = Objects(32);
  o.constructor = &Construct;
  o.destructor = &Destroy;
  o.live_cleanup = &Clean;
  o.arg = &counts;
  o.keep_empty_blocks = 0;
  Context* ctx = Make(o);
  void* a = SlabAllocObject(ctx);
  EXPECT_EQ(counts.constructed, 1);
  EXPECT_EQ(*static_cast<uint64_t*>(a), 0xC0FFEEu);
  void* b = ctx->Alloc(32);
  ctx->Free(b);
  void* c = ctx->Alloc(32);  // the same slot again: no second construction
  if (!kDirect) {
    EXPECT_EQ(c, b);
  }
  EXPECT_EQ(counts.constructed, kDirect ? 3 : 2);
  EXPECT_EQ(*static_cast<uint64_t*>(c), 0xC0FFEEu);  // the state survived the free
  const size_t n = GetSlabGeometry(ctx).objects_per_block;
  std::vector<void*> block;
  for (size_t i = 0; i < 2 * n; ++i) block.push_back(ctx->Alloc(32));
  const int destroyed = counts.destroyed;
  // Freeing every object of the later blocks releases them: each slot ever
  // used is destroyed.
  for (void* p : block) ctx->Free(p);
  EXPECT_GT(counts.destroyed, destroyed);
  ctx->Reset();
  EXPECT_EQ(counts.cleaned, 2);  // a and c were live
  EXPECT_EQ(counts.constructed, counts.destroyed);  // every slot made was unmade
  ctx->Destroy();
  EXPECT_EQ(counts.constructed, counts.destroyed);
  EXPECT_TRUE(seen_.empty());
}

// live_cleanup runs on objects still allocated at reset and destroy, once
// each; a cleanup may free other objects, which are then not cleaned.
struct Linked {
  Linked* partner;
  int* cleaned;
  Context* ctx;
};

void CleanLinked(void* object, void*) noexcept {
  auto* l = static_cast<Linked*>(object);
  ++*l->cleaned;
  if (l->partner != nullptr) {
    l->partner->partner = nullptr;
    l->ctx->Free(l->partner);  // a free during the reset: allowed
  }
}

TEST_F(SlabTest, LiveCleanupRunsOnceOnEachLiveObject) {
  int cleaned = 0;
  SlabOptions o = Objects(sizeof(Linked));
  o.live_cleanup = &CleanLinked;
  Context* ctx = Make(o);
  std::vector<Linked*> objs;
  for (int i = 0; i < 100; ++i) {
    auto* l = static_cast<Linked*>(ctx->Alloc(sizeof(Linked)));
    *l = {nullptr, &cleaned, ctx};
    objs.push_back(l);
  }
  for (int i = 0; i < 100; i += 2) {
    objs[i]->partner = objs[i + 1];
    objs[i + 1]->partner = objs[i];
  }
  ctx->Free(objs[99]);  // freed before: never cleaned
  objs[98]->partner = nullptr;
  ctx->Reset();
  EXPECT_EQ(cleaned, 50) << "each pair: the one cleaned first frees the other";
  EXPECT_EQ(ctx->num_blocks(), 1u);
  ctx->Destroy();
  EXPECT_TRUE(seen_.empty());
}

// A live cleanup that leaves a reset by longjmp: the objects whose
// cleanups began are finished, and the live count says so at once; the
// reset run again cleans the rest and brings the count to zero.
std::jmp_buf* cleanup_jump = nullptr;
int cleanups_begun = 0;
void JumpOutOfTheSecondCleanup(void*, void*) noexcept {
  if (++cleanups_begun == 2) std::longjmp(*cleanup_jump, 1);
}

TEST_F(SlabTest, LiveBytesFollowALiveCleanupThatLeavesByLongjmp) {
  SlabOptions o = Objects(32);
  o.live_cleanup = &JumpOutOfTheSecondCleanup;
  Context* ctx = Make(o);
  constexpr size_t kObjects = 10;
  for (size_t i = 0; i < kObjects; ++i) ctx->Alloc(32);
  const size_t per_object = ctx->live_bytes() / kObjects;
  ASSERT_EQ(ctx->live_bytes(), kObjects * per_object);
  std::jmp_buf env;
  cleanup_jump = &env;
  cleanups_begun = 0;
  if (setjmp(env) == 0) {
    ctx->Reset();
    ADD_FAILURE() << "the second cleanup jumps out";
  }
  EXPECT_EQ(cleanups_begun, 2);
  EXPECT_EQ(ctx->live_bytes(), (kObjects - 2) * per_object);
  ctx->Reset();
  EXPECT_EQ(cleanups_begun, static_cast<int>(kObjects));
  EXPECT_EQ(ctx->live_bytes(), 0u);
  ExpectConsistent(ctx);
  ctx->Destroy();
}

// ResetOptions: kept blocks are emptied and used before new ones.
TEST_F(SlabTest, ResetKeepsBlocksPerOptions) {
  Context* ctx = Make(Objects(64));
  const SlabGeometry g = GetSlabGeometry(ctx);
  for (size_t i = 0; i < 4 * g.objects_per_block; ++i) ctx->Alloc(64);
  const size_t blocks = ctx->num_blocks();
  ctx->Reset(ResetOptions::KeepBytes(ctx->bytes_in_blocks()));
  EXPECT_EQ(ctx->num_blocks(), blocks);
  ExpectConsistent(ctx);
  const int64_t acquires = source_.acquires();
  for (size_t i = 0; i < 4 * g.objects_per_block; ++i) ctx->Alloc(64);
  EXPECT_EQ(source_.acquires(), acquires);
  ctx->Reset();
  EXPECT_EQ(ctx->num_blocks(), 1u);
  ctx->Destroy();
}

// Inspect: the first block, the blocks of objects with their free lists and
// never-used tails, the empty blocks kept, one size class.
TEST_F(SlabTest, InspectDescribesBlocksAndTheObjectClass) {
  if (kDirect) GTEST_SKIP() << "one object per block in direct mode";
  Context* ctx = Make(Objects(64));
  const SlabGeometry g = GetSlabGeometry(ctx);
  std::vector<void*> live;
  for (size_t i = 0; i < g.objects_per_block + 10; ++i) live.push_back(ctx->Alloc(64));
  for (int i = 0; i < 5; ++i) ctx->Free(live[static_cast<size_t>(i) * 3]);
  ContextLayout layout = InspectContext(ctx);
  ASSERT_TRUE(layout.has_detail);
  EXPECT_EQ(layout.total_bytes(), ctx->bytes_in_blocks());
  EXPECT_EQ(layout.free_bytes(), GetCounters(ctx).free_bytes);
  EXPECT_EQ(layout.blocks.size(), 3u);
  EXPECT_EQ(layout.blocks[0].role, BlockRole::kFirst);
  EXPECT_EQ(layout.freelist_chunks(), 5u);
  ASSERT_EQ(layout.size_classes.size(), 1u);
  EXPECT_EQ(layout.size_classes[0].info.class_bytes, 64u);
  EXPECT_EQ(layout.size_classes[0].free_list.size(), 5u);
  for (const BlockInfo& b : layout.blocks) {
    EXPECT_EQ(b.header_bytes + b.used_bytes + b.free_bytes + b.freelist_bytes, b.size);
  }
  ctx->Destroy();
}

// Direct mode: every object is a block of its own, released when freed.
TEST_F(SlabTest, DirectModeGivesEachObjectABlock) {
  if (!kDirect) GTEST_SKIP() << "needs --config=direct";
  Context* ctx = Make(Objects(64));
  EXPECT_EQ(GetSlabGeometry(ctx).objects_per_block, 1u);
  void* a = ctx->Alloc(64);
  void* b = ctx->Alloc(64);
  EXPECT_EQ(ctx->num_blocks(), 3u);
  ctx->Free(a);
  EXPECT_EQ(ctx->num_blocks(), 2u);
  ctx->Free(b);
  EXPECT_EQ(ctx->num_blocks(), 1u);
  ctx->Destroy();
}

// Invalid options are refused at creation.
TEST_F(SlabTest, InvalidOptionsAreRefused) {
  auto refused = [&](SlabOptions o) {
    ContextOptions co;
    co.block_source = &source_;
    Context* ctx = Context::TryCreate(nullptr, "bad", SlabKind(o), co);
    if (ctx != nullptr) ctx->Destroy();
    return ctx == nullptr;
  };
  SlabOptions o;
  o.object_size = 0;
  EXPECT_TRUE(refused(o));
  o.object_size = kMaxSlabObjectSize + 1;
  EXPECT_TRUE(refused(o));
  o = SlabOptions();
  o.block_size = 3000;
  EXPECT_TRUE(refused(o));
  o.block_size = 256;
  o.object_size = 300;  // no object fits, in direct builds too
  EXPECT_TRUE(refused(o));
  o = SlabOptions();
  o.alignment = 24;
  EXPECT_TRUE(refused(o));
  o.alignment = 8192;
  EXPECT_TRUE(refused(o));
  EXPECT_FALSE(refused(SlabOptions()));
}

// An alignment of 1, 2 or 4 is taken as 8 (slab.h): accepted, and every
// object 8-aligned.
TEST_F(SlabTest, AnAlignmentBelowEightIsEight) {
  for (uint32_t alignment : {1u, 2u, 4u}) {
    SlabOptions o;
    o.object_size = 12;
    o.alignment = alignment;
    ContextOptions co;
    co.block_source = &source_;
    Context* ctx = Context::TryCreate(nullptr, "small", SlabKind(o), co);
    ASSERT_NE(ctx, nullptr) << alignment;
    for (int i = 0; i < 10; ++i) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(ctx->Alloc(12)) % 8, 0u) << alignment;
    }
    ctx->Destroy();
  }
}

// --- The typed front end ------------------------------------------------------------

struct Node {
  Node* left;
  Node* right;
  int key;
};

TEST_F(SlabTest, TypedSlabPacksNodes) {
  ContextOptions co;
  co.block_source = &source_;
  Slab<Node> nodes = Slab<Node>::Create(nullptr, "nodes", SlabOptions(), co);
  Node* a = nodes.New(Node{nullptr, nullptr, 1});
  Node* b = nodes.New(Node{a, nullptr, 2});
  if (!kChecking && !kDirect) {
    EXPECT_EQ(reinterpret_cast<char*>(b) - reinterpret_cast<char*>(a), 24);
  }
  EXPECT_EQ(b->left->key, 1);
  nodes.Delete(a);
  Node* c = nodes.New(Node{nullptr, nullptr, 3});
  if (!kDirect) {
    EXPECT_EQ(c, a);
  }
  nodes.Delete(c);
  nodes.Delete(b);
  nodes.context()->Destroy();
}

// Objects left at destroy are destroyed once each; a destructor that
// deletes others of the same slab destroys each exactly once, whatever the
// order the reset visits them in.
int live_trees = 0;
struct Tree {
  Slab<Tree>* slab;
  Tree* left = nullptr;
  Tree* right = nullptr;
  explicit Tree(Slab<Tree>* s) : slab(s) { ++live_trees; }
  ~Tree() {
    --live_trees;
    slab->Delete(left);
    slab->Delete(right);
  }
};

Tree* Grow(Slab<Tree>* slab, int depth) {
  Tree* t = slab->New(slab);
  if (depth > 0) {
    t->left = Grow(slab, depth - 1);
    t->right = Grow(slab, depth - 1);
  }
  return t;
}

TEST_F(SlabTest, TypedSlabDestroysEachObjectOnceAtTeardown) {
  ContextOptions co;
  co.block_source = &source_;
  Context* parent = CreateSlabContext(nullptr, "parent", Objects(64), co);
  Slab<Tree> trees = Slab<Tree>::Create(parent, "trees");
  Tree* root = Grow(&trees, 8);
  EXPECT_EQ(live_trees, 511);
  trees.Delete(root->left);  // a subtree, deleted the usual way
  root->left = nullptr;
  EXPECT_EQ(live_trees, 256);
  Grow(&trees, 3);           // a second tree, left to the teardown
  parent->Destroy();         // trees goes with its parent
  EXPECT_EQ(live_trees, 0);
  EXPECT_TRUE(seen_.empty());
}

// A constructor that throws leaves no object behind.
struct Throws {
  explicit Throws(bool fail) {
    if (fail) throw std::runtime_error("no");
  }
  ~Throws() {}
  char pad[40];
};

TEST_F(SlabTest, TypedSlabConstructorThatThrowsFreesItsSlot) {
  ContextOptions co;
  co.block_source = &source_;
  Slab<Throws> slab = Slab<Throws>::Create(nullptr, "throws", SlabOptions(), co);
  Throws* a = slab.New(false);
  EXPECT_THROW(slab.New(true), std::runtime_error);
  Throws* b = slab.New(false);
  if (!kDirect) {
    EXPECT_NE(a, b);
  }
  std::string error;
  EXPECT_TRUE(slab.context()->Check(&error)) << error;
  slab.context()->Destroy();
}

// Over-aligned types get their alignment.
struct alignas(64) Line {
  char bytes[64];
};

TEST_F(SlabTest, TypedSlabHonoursOverAlignedTypes) {
  ContextOptions co;
  co.block_source = &source_;
  Slab<Line> lines = Slab<Line>::Create(nullptr, "lines", SlabOptions(), co);
  for (int i = 0; i < 200; ++i) {
    Line* l = lines.New();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(l) % 64, 0u);
  }
  lines.context()->Destroy();
}

// --- ASan: a freed object is poisoned --------------------------------------------------

TEST(SlabDeathTest, UseAfterFreeIsFoundByAddressSanitizer) {
  if (!internal::kAddressSanitizer) GTEST_SKIP() << "needs --config=asan";
  Context* ctx = CreateSlabContext(nullptr, "asan");
  auto* p = static_cast<volatile char*>(ctx->Alloc(64));
  ctx->Free(const_cast<char*>(p));
  EXPECT_DEATH(p[3] = 1, "use-after-poison|heap-use-after-free");
  ctx->Destroy();
}

TEST(SlabDeathTest, MisuseAbortsByDefault) {
  if (kDirect) GTEST_SKIP() << "a freed object's block is released at once in direct mode";
  Context* ctx = CreateSlabContext(nullptr, "victim");
  void* p = ctx->Alloc(64);
  ctx->Free(p);
  EXPECT_DEATH(ctx->Free(p), "double free of object .* in slab 'victim'");
  ctx->Destroy();
}

}  // namespace
}  // namespace mcx
