// The freelist kind: conformance, plus headers, classes, freelists,
// dedicated chunks and the context-free entry points.

#include "mcx/freelist/freelist.h"

#include <algorithm>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/budget.h"
#include "mcx/context/caching_block_source.h"
#include "mcx/context/chunk.h"
#include "mcx/context/chunk_header.h"
#include "mcx/context/failure.h"
#include "mcx/context/inspect.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/pressure.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/internal/freelist_block.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/kind_conformance.h"
#include "mcx/testing/live_count.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

using test::CountingBlockSource;
using test::Fill;
using test::Holds;

struct FreelistTraits {
  static KindSpec Spec() { return FreelistKind(); }
  static constexpr bool kFreeReleasesSmall = true;
  static constexpr bool kUnsizedRealloc = true;
  static constexpr bool kContextFreeCalls = true;  // chunk headers
};

// Small blocks and a low chunk limit exercise block changes and dedicated
// chunks much more often.
struct SmallFreelistTraits {
  static KindSpec Spec() {
    FreelistOptions o;
    o.initial_block_size = 1024;
    o.max_block_size = 4096;
    o.chunk_limit = 512;
    return FreelistKind(o);
  }
  static constexpr bool kFreeReleasesSmall = true;
  static constexpr bool kUnsizedRealloc = true;
  static constexpr bool kContextFreeCalls = true;  // chunk headers
};

}  // namespace

namespace test {
INSTANTIATE_TYPED_TEST_SUITE_P(Freelist, KindConformanceTest, FreelistTraits);
INSTANTIATE_TYPED_TEST_SUITE_P(SmallFreelist, KindConformanceTest, SmallFreelistTraits);
}  // namespace test

namespace {

class FreelistTest : public ::testing::Test {
 protected:
  Context* Make(const FreelistOptions& o = FreelistOptions()) {
    ContextOptions co;
    co.block_source = &source_;
    return CreateFreelistContext(nullptr, "freelist", o, co);
  }
  CountingBlockSource source_;
};

// The chunk header is 8 bytes (16 in checking builds): chunks of a class sit
// exactly header + class bytes apart.
TEST_F(FreelistTest, ChunkHeaderIsEightBytes) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make();
  char* a = static_cast<char*>(ctx->Alloc(24));
  char* b = static_cast<char*>(ctx->Alloc(24));
  // Checking and ASan builds add the requested size (and padding for the
  // sentinel); release builds pack header + class with no gap.
  EXPECT_EQ(b - a, kFreelistChunkHeaderBytes == 8 ? 24 + 8 : 24 + 16 + 8);
  uint64_t h = ReadChunkHeader(a);
  EXPECT_EQ(ChunkHeaderKind(h), kChunkKindFreelist);
  EXPECT_TRUE(ChunkHeaderMagicOk(h));
  EXPECT_FALSE(ChunkHeaderIsFree(h));
  ctx->Destroy();
}

// Freelists are LIFO per class: the chunk freed last comes back first.
TEST_F(FreelistTest, FreelistsAreLifoPerClass) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make();
  void* a = ctx->Alloc(100);
  void* b = ctx->Alloc(100);
  void* c = ctx->Alloc(300);
  ctx->Free(a);
  ctx->Free(b);
  ctx->Free(c);
  EXPECT_EQ(GetCounters(ctx).free_chunks, 3u);
  EXPECT_EQ(ctx->Alloc(97), b);   // same class (104): newest first
  EXPECT_EQ(ctx->Alloc(104), a);
  EXPECT_EQ(ctx->Alloc(320), c);  // class 328
  EXPECT_EQ(GetCounters(ctx).free_chunks, 0u);
  ctx->Destroy();
}

// Realloc stays in place within the class, and beyond it moves to a class
// at least a quarter larger (a buffer grown in small steps is copied
// O(log n) times). The chunk is not the last carved, which grows in place.
TEST_F(FreelistTest, ReallocInPlaceWithinTheClass) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make();
  void* p = ctx->Alloc(90);
  ctx->Alloc(8);  // p is not the chunk carved last
  Fill(p, 90, 1);
  EXPECT_EQ(ctx->Realloc(p, 104), p);
  // 60 bytes is class 72, which would save less than half: no move.
  EXPECT_EQ(ctx->Realloc(p, 60), p);
  // The class, or exactly the request where the size is tracked.
  EXPECT_EQ(ctx->ChunkSize(p), kFreelistChunkHeaderBytes == 8 ? 104u : 60u);
  void* q = ctx->Realloc(p, 105);
  EXPECT_NE(q, p);
  EXPECT_TRUE(Holds(q, 60, 1));
  // 104 + 104 / 4 = 130: class 136, not 120.
  EXPECT_EQ(ctx->ChunkSize(q), kFreelistChunkHeaderBytes == 8 ? 136u : 105u);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
}

// The chunk carved last grows and shrinks in place while its run has room:
// a buffer built alone (a string builder) is never copied.
TEST_F(FreelistTest, ReallocGrowsTheLastChunkInPlace) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make();
  void* p = ctx->Alloc(16);
  Fill(p, 16, 2);
  for (size_t n = 32; n <= 4096; n *= 2) {
    ASSERT_EQ(ctx->Realloc(p, n), p) << n;
    Fill(p, n, 2);
  }
  EXPECT_EQ(ctx->Realloc(p, 10), p);
  EXPECT_TRUE(Holds(p, 10, 2));
  EXPECT_EQ(ctx->ChunkSize(p), kFreelistChunkHeaderBytes == 8 ? 24u : 10u);
  // The space after it came back: the next chunk follows it directly.
  char* next = static_cast<char*>(ctx->Alloc(8));
  EXPECT_EQ(next, static_cast<char*>(p) + (kFreelistChunkHeaderBytes == 8 ? 32 : 48));
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
}

// A shrink that at least halves a chunk's bytes moves it to the smaller
// class; the old chunk is free for others (finding A2: shrinking reallocs
// kept their original class).
TEST_F(FreelistTest, ReallocShrinkMovesToASmallerClass) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make();
  void* p = ctx->Alloc(1000);
  ctx->Alloc(8);
  Fill(p, 1000, 3);
  void* q = ctx->Realloc(p, 100);
  EXPECT_NE(q, p);
  EXPECT_TRUE(Holds(q, 100, 3));
  EXPECT_EQ(GetCounters(ctx).free_chunks, 1u);
  EXPECT_EQ(ctx->Alloc(1000), p);  // the old chunk serves its class
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
}

// The chunk carved last grows in place up to 4 KiB; beyond, it moves to a
// dedicated block (one copy of at most 4 KiB), where it grows on through
// the source, below chunk_limit too, and a shrink takes it back to a
// class. The live count follows: the old chunk's class goes, the block's
// bytes come.
TEST_F(FreelistTest, ReallocMovesTheLastChunkOutOfItsRunBeyondFourKiB) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  FreelistOptions o;
  o.initial_block_size = 64 << 10;  // a run with room for 8 KiB after the chunk
  // Straight to the system allocator: blocks of odd sizes left in the
  // process's block cache would serve later tests' exact counts.
  SystemBlockSource system;
  CountingBlockSource source(&system);
  ContextOptions co;
  co.block_source = &source;
  Context* ctx = CreateFreelistContext(nullptr, "freelist", o, co);
  void* p = ctx->Alloc(16);
  Fill(p, 16, 4);
  for (size_t n = 32; n <= 4096; n *= 2) {
    ASSERT_EQ(ctx->Realloc(p, n), p) << n;
    Fill(p, n, 4);
  }
  const int64_t blocks = source.live_blocks();
  const size_t live = ctx->live_bytes();
  const size_t held = ctx->bytes_in_blocks();
  void* q = ctx->Realloc(p, 8192);
  EXPECT_NE(q, p);
  EXPECT_TRUE(ChunkHeaderIsExternal(ReadChunkHeader(q)));
  EXPECT_TRUE(Holds(q, 4096, 4));
  EXPECT_EQ(source.live_blocks(), blocks + 1);
  constexpr size_t kPayload =
      (sizeof(freelist_internal::DedicatedHeader) + kFreelistChunkHeaderBytes + 15) & ~size_t{15};
  EXPECT_EQ(ctx->live_bytes(),
            live - SizeClassBytes(SizeClassOf(4096)) + ctx->bytes_in_blocks() - held - kPayload);
  Fill(q, 8192, 5);
  for (size_t n = 16384; n <= 65536; n *= 2) {
    void* r = ctx->Realloc(q, n);
    ASSERT_TRUE(Holds(r, n / 2, 5)) << n;
    EXPECT_TRUE(ChunkHeaderIsExternal(ReadChunkHeader(r))) << n;
    Fill(r, n, 5);
    q = r;
  }
  EXPECT_EQ(source.live_blocks(), blocks + 1);
  void* small = ctx->Realloc(q, 100);
  EXPECT_FALSE(ChunkHeaderIsExternal(ReadChunkHeader(small)));
  EXPECT_TRUE(Holds(small, 100, 5));
  EXPECT_EQ(source.live_blocks(), blocks);
  EXPECT_EQ(ctx->live_bytes(), live - SizeClassBytes(SizeClassOf(4096)) + SizeClassBytes(6));
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
}

// A chunk of 16 bytes grown by doublings to 16 KiB, each step in place
// (the chunk carved last, in a run with room), filled with `tag`; nullptr
// (and a test failure) if a step moved it or lost its contents.
void* GrowInItsRun(Context* ctx, uint32_t tag) {
  void* p = ctx->Alloc(16);
  Fill(p, 16, tag);
  for (size_t n = 32; n <= 16384; n *= 2) {
    void* q = ctx->Realloc(p, n);
    EXPECT_EQ(q, p) << n;
    EXPECT_TRUE(q == p && Holds(p, n / 2, tag)) << n;
    if (q != p) return nullptr;
    Fill(p, n, tag);
  }
  return p;
}

// Under a limit that refuses the dedicated block, the chunk carved last
// grows on in its run instead: the limit does not refuse what fits in the
// blocks the context holds, and the call succeeds with no failure left on
// record.
TEST_F(FreelistTest, ReallocGrowsInItsRunWhenTheDedicatedBlockIsRefused) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  FreelistOptions o;
  o.initial_block_size = 64 << 10;
  Context* ctx = CreateFreelistContext(nullptr, "limited", o);
  // Room for the limit's own record, not for an 8 KiB block.
  const absl::Status set = ctx->SetLimit(ctx->bytes_in_blocks() + 4096);
  ASSERT_TRUE(set.ok()) << set;
  const size_t held = ctx->bytes_in_blocks();
  void* p = GrowInItsRun(ctx, 6);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(ctx->last_failure(), Failure::kNone);
  EXPECT_EQ(ctx->bytes_in_blocks(), held);
  EXPECT_GE(ctx->ChunkSize(p), 16384u);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  // Beyond the run, the limit refuses: nothing changes.
  EXPECT_EQ(ctx->TryRealloc(p, 128 << 10), nullptr);
  EXPECT_EQ(ctx->last_failure(), Failure::kLimit);
  EXPECT_TRUE(Holds(p, 16384, 6));
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
}

// A growing chunk that moves asks for a class a quarter larger (a chain of
// small steps then copies O(log n) times); where a limit refuses the block
// that class needs, the size asked for is tried before refusing: here a
// chunk of its class waits on the list.
TEST_F(FreelistTest, AReallocRefusedItsJumpTakesTheSizeAskedFor) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  FreelistOptions o;
  o.initial_block_size = 16 << 10;
  Context* ctx = Make(o);
  ctx->Free(ctx->Alloc(8));                   // the free table, made now
  void* spare = ctx->Alloc(2057);             // a chunk of the class asked for below
  char* a = static_cast<char*>(ctx->Alloc(2000));
  Fill(a, 2000, 5);
  ASSERT_EQ(ctx->TrySetLimit(size_t{1} << 30), Failure::kNone);  // the side record
  ASSERT_EQ(ctx->TrySetLimit(ctx->bytes_in_blocks() + ctx->side_record_bytes()), Failure::kNone);
  std::vector<void*> filler;
  while (void* f = ctx->TryAlloc(8)) filler.push_back(f);  // the run is used up
  ASSERT_EQ(ctx->last_failure(), Failure::kLimit);
  ctx->Free(spare);
  const size_t held = ctx->bytes_in_blocks();
  void* q = ctx->TryRealloc(a, 2000, 2057);
  ASSERT_NE(q, nullptr) << FailureName(ctx->last_failure());
  EXPECT_EQ(q, spare);
  EXPECT_TRUE(Holds(q, 2000, 5));
  EXPECT_EQ(ctx->bytes_in_blocks(), held);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  for (void* f : filler) ctx->Free(f);
  ctx->Free(q);
  EXPECT_EQ(ctx->live_bytes(), 0u);
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// A soft limit that refuses the dedicated block is not crossed either: the
// chunk grows in its run without a callback, and the next block that does
// cross the limit calls back once.
TEST_F(FreelistTest, ReallocInItsRunDoesNotCallASoftLimitBack) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  FreelistOptions o;
  o.initial_block_size = 64 << 10;
  Context* ctx = CreateFreelistContext(nullptr, "soft", o);
  static int calls;
  calls = 0;
  ASSERT_EQ(ctx->TrySetSoftLimit(ctx->bytes_in_blocks() + 4096,
                                 [](const PressureInfo&) { ++calls; }),
            Failure::kNone);
  const size_t held = ctx->bytes_in_blocks();
  void* p = GrowInItsRun(ctx, 7);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(ctx->bytes_in_blocks(), held);
  EXPECT_EQ(ctx->last_failure(), Failure::kNone);
  void* big = ctx->Alloc(128 << 10);  // a block of its own
  EXPECT_NE(big, nullptr);
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(Holds(p, 16384, 7));
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
}

// A chain from 1 byte doubling to 1 MiB, freed and grown again, through a
// block cache: from the third chain on, the chunk moves to a dedicated
// block at 8 KiB (the block the last chain left there), moves once more at
// 16 KiB, into the 1 MiB block the last chain freed, and grows in place
// there to the end, with no call upstream. Contents survive every step; the
// chunk counts its whole block; a shrink to more than half of it stays in
// place, one below half gives the room back.
TEST(FreelistGrowthTest, AChainOfDoublingsGrowsInTheRoomTheLastOneLeft) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every realloc moves the chunk";
  // Upstream of the test's cache is the system allocator, not the process's
  // block cache, whose kept blocks (other tests') would serve growths too.
  SystemBlockSource system;
  CountingBlockSource upstream(&system);
  CachingBlockSource cache(&upstream, 16 << 20);
  ContextOptions co;
  co.block_source = &cache;
  Context* ctx = CreateFreelistContext(nullptr, "chain", FreelistOptions(), co);
  constexpr size_t kLast = size_t{1} << 20;
  for (uint32_t chain = 0; chain < 4; ++chain) {
    SCOPED_TRACE(testing::Message() << "chain " << chain);
    const int64_t acquires = upstream.acquires(), reallocates = upstream.reallocates();
    void* p = ctx->Alloc(1);
    Fill(p, 1, chain);
    void* room = nullptr;
    for (size_t n = 2; n <= kLast; n *= 2) {
      const size_t live = ctx->live_bytes();
      void* q = ctx->Realloc(p, n);
      ASSERT_TRUE(Holds(q, n / 2, chain)) << n;
      Fill(q, n, chain);
      if (chain >= 2 && n == 16384) room = q;
      if (chain >= 2 && n > 16384) {
        EXPECT_EQ(q, room) << n;
        EXPECT_EQ(ctx->live_bytes(), live) << n;  // the whole block counted already
      }
      p = q;
    }
    if (chain >= 2) {
      EXPECT_EQ(upstream.acquires(), acquires);
      EXPECT_EQ(upstream.reallocates(), reallocates);
    }
    std::string error;
    EXPECT_TRUE(ctx->Check(&error)) << error;
    if (chain == 3) {
      const size_t held = ctx->bytes_in_blocks();
      EXPECT_EQ(ctx->Realloc(p, kLast * 3 / 4), p);
      EXPECT_TRUE(Holds(p, kLast * 3 / 4, chain));
      void* q = ctx->Realloc(p, kLast / 4);
      EXPECT_TRUE(Holds(q, kLast / 4, chain));
      EXPECT_LT(ctx->bytes_in_blocks(), held - kLast / 2);
      p = q;
    }
    ctx->Free(p);
    EXPECT_EQ(ctx->live_bytes(), 0u);
    EXPECT_TRUE(ctx->Check(&error)) << error;
  }
  ctx->Destroy();
  cache.Trim();
  EXPECT_EQ(upstream.live_blocks(), 0);
  EXPECT_EQ(upstream.bad_releases(), 0);
}

// Chunks above chunk_limit get a dedicated block that goes back to the
// source when freed, and grows through the source on realloc.
TEST_F(FreelistTest, DedicatedChunksLiveInTheirOwnBlock) {
  Context* ctx = Make();
  const int64_t before = source_.live_blocks();
  void* big = ctx->Alloc(100000);
  EXPECT_EQ(source_.live_blocks(), before + 1);
  EXPECT_TRUE(ChunkHeaderIsExternal(ReadChunkHeader(big)));
  Fill(big, 100000, 6);
  void* bigger = mcx::Realloc(big, 3000000);
  EXPECT_EQ(source_.reallocates(), 1);
  EXPECT_TRUE(Holds(bigger, 100000, 6));
  EXPECT_GE(GetChunkSize(bigger), 3000000u);
  EXPECT_EQ(source_.live_blocks(), before + 1);
  mcx::Free(bigger);
  EXPECT_EQ(source_.live_blocks(), before);
  EXPECT_EQ(source_.bad_releases(), 0);
  ctx->Destroy();
}

// When a block runs out, its tail is carved into freelist chunks, not lost.
TEST_F(FreelistTest, ExhaustedBlockTailGoesToFreelists) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  FreelistOptions o;
  o.initial_block_size = 2048;
  Context* ctx = Make(o);
  // Fill the first block with 1000-byte chunks until a new block is needed.
  while (ctx->num_blocks() == 1) ctx->Alloc(1000);
  ContextCounters c = GetCounters(ctx);
  EXPECT_GT(c.free_chunks, 0u);  // the old block's tail
  // A small request is now served from that tail, without a new block.
  const int64_t acquires = source_.acquires();
  void* small = ctx->Alloc(8);
  EXPECT_EQ(GetChunkContext(small), ctx);
  EXPECT_EQ(source_.acquires(), acquires);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
}

// mcx::Free, mcx::Realloc, GetChunkContext and GetChunkSize need no context.
TEST_F(FreelistTest, ContextFreeOperations) {
  Context* a = Make();
  Context* b = a->CreateChild("b", FreelistKind());
  void* pa = a->Alloc(50);
  void* pb = b->Alloc(5000);
  void* aligned = b->AllocAligned(100, 256);
  EXPECT_EQ(GetChunkContext(pa), a);
  EXPECT_EQ(GetChunkContext(pb), b);
  EXPECT_EQ(GetChunkContext(aligned), b);
  EXPECT_GE(GetChunkSize(aligned), 100u);
  EXPECT_EQ(GetChunkSize(pa), kFreelistChunkHeaderBytes == 8 ? 56u : 50u);
  Fill(aligned, 100, 2);
  void* aligned2 = mcx::Realloc(aligned, 1000);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(aligned2) % 256, 0u);
  EXPECT_TRUE(Holds(aligned2, 100, 2));
  mcx::Free(aligned2);
  mcx::Free(pa);
  mcx::Free(pb);
  mcx::Free(nullptr);
  std::string error;
  EXPECT_TRUE(a->Check(&error)) << error;
  EXPECT_TRUE(b->Check(&error)) << error;
  a->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Reset clears every freelist: nothing freed before comes back after.
TEST_F(FreelistTest, ResetClearsFreelists) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make();
  for (int i = 0; i < 100; ++i) ctx->Free(ctx->Alloc(40 + i));
  EXPECT_GT(GetCounters(ctx).free_chunks, 0u);
  ctx->Reset();
  EXPECT_EQ(GetCounters(ctx).free_chunks, 0u);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
}

// A small deterministic generator (splitmix64) for the randomised tests.
class TestRng {
 public:
  explicit TestRng(uint64_t seed) : s_(seed) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  size_t Uniform(size_t lo, size_t hi) { return lo + Next() % (hi - lo + 1); }

 private:
  uint64_t s_;
};

// A test's live chunks, each filled with a tag of its own: added at random
// sizes, dropped by index (contents checked, then freed).
struct TaggedChunk {
  void* p;
  size_t size;
  uint32_t tag;
};

class TaggedChunks {
 public:
  TaggedChunks(Context* ctx, TestRng* rng) : ctx_(ctx), rng_(rng) {}
  void Add(size_t lo, size_t hi) {
    const size_t size = rng_->Uniform(lo, hi);
    chunks_.push_back(TaggedChunk{ctx_->Alloc(size), size, ++tag_});
    Fill(chunks_.back().p, size, tag_);
  }
  // False (and a test failure) if the chunk's contents changed.
  bool Drop(size_t i) {
    const bool held = Holds(chunks_[i].p, chunks_[i].size, chunks_[i].tag);
    EXPECT_TRUE(held) << "chunk " << i;
    ctx_->Free(chunks_[i].p);
    chunks_[i] = chunks_.back();
    chunks_.pop_back();
    return held;
  }
  bool DropRandom() { return Drop(rng_->Next() % chunks_.size()); }
  // One step of a churn of sizes in [lo, hi]: every eighth step a random
  // chunk is reallocated (the bytes it keeps checked, then filled again),
  // the others free a random chunk (checked) and allocate one. False if a
  // chunk's contents changed.
  bool ChurnStep(int step, size_t lo, size_t hi) {
    if (step % 8 != 0) {
      if (!DropRandom()) return false;
      Add(lo, hi);
      return true;
    }
    TaggedChunk& c = chunks_[rng_->Next() % chunks_.size()];
    const size_t size = rng_->Uniform(lo, hi);
    void* q = ctx_->Realloc(c.p, size);
    if (!Holds(q, std::min(size, c.size), c.tag)) return false;
    c = TaggedChunk{q, size, ++tag_};
    Fill(q, size, c.tag);
    return true;
  }
  std::vector<TaggedChunk>& chunks() { return chunks_; }
  size_t size() const { return chunks_.size(); }

 private:
  Context* ctx_;
  TestRng* rng_;
  std::vector<TaggedChunk> chunks_;
  uint32_t tag_ = 0;
};

// Frees the chunks of `live` in an order drawn from `rng`, all but those
// `keep` says to keep.
template <typename Keep>
void FreeShuffled(Context* ctx, std::vector<void*>* live, TestRng* rng, Keep keep) {
  for (size_t i = live->size(); i > 1; --i) std::swap((*live)[i - 1], (*live)[rng->Next() % i]);
  std::vector<void*> kept;
  for (void* p : *live) {
    if (keep(p)) {
      kept.push_back(p);
    } else {
      ctx->Free(p);
    }
  }
  *live = kept;
}

// Memory follows the live data: once all but one chunk is freed, in any
// order, the blocks go back to the source, all but the spares kept against
// a context whose data breathes and the block the live chunk pins; their
// pages first (a block cache keeps a released block resident until it
// decays), the units' pages at least. The last free then empties the
// context, whose blocks go back warm (BlocksGoBackWhenTheLastChunkIsFreed):
// no more purges.
TEST_F(FreelistTest, FreedBlocksGoBackToTheSource) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make();
  TestRng rng(13);
  std::vector<void*> live;
  for (int i = 0; i < 200000; ++i) live.push_back(ctx->Alloc(rng.Uniform(8, 512)));
  const size_t peak = ctx->bytes_in_blocks();
  ASSERT_GT(peak, size_t{40} << 20);
  void* const pinned = live[live.size() / 2];
  FreeShuffled(ctx, &live, &rng, [&](void* p) { return p == pinned; });
  // One more sweep's worth of frees, of chunks allocated and freed at once.
  for (int i = 0; i < 100000; ++i) ctx->Free(ctx->Alloc(16));
  // The spares: at least one largest block, at most an eighth of the rest;
  // the block being carved; and the blocks of the live chunks: the pinned
  // one, and the context's own (its free table, the parked lists' heads),
  // which lie wherever the run was when they were made.
  EXPECT_LE(ctx->bytes_in_blocks(), ctx->first_block_size() + 5 * kMaxFreelistBlocksOfChunks);
  // Units are all of a block but its header and descriptors: nine tenths.
  const size_t purged = source_.purge_requested_bytes();
  EXPECT_GE(purged, (peak - ctx->bytes_in_blocks()) / 10 * 9);
  EXPECT_EQ(source_.bad_purges(), 0);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Free(pinned);
  EXPECT_EQ(source_.purge_requested_bytes(), purged);
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// The lowest chunk of each unit among `chunks` (freelist chunks of one
// context), by unit number: units lie on pages, kUnitPhase past a multiple
// of 4 KiB, and a chunk belongs to the unit its first byte lies in.
std::map<uintptr_t, void*> FirstChunkOfEachUnit(const std::vector<void*>& chunks) {
  std::map<uintptr_t, void*> first;
  for (void* p : chunks) {
    const uintptr_t unit = (reinterpret_cast<uintptr_t>(p) - kFreelistChunkHeaderBytes -
                            freelist_internal::kUnitPhase) >>
                           freelist_internal::kUnitShift;
    auto [it, added] = first.emplace(unit, p);
    if (!added && p < it->second) it->second = p;
  }
  return first;
}

// Units lie on pages: a unit that keeps one live chunk keeps one page
// resident, and a single free unit between two such units has its page
// purged. Here every other unit keeps its first chunk and the units between
// them are freed whole; with units that straddled pages, no run of free
// units covered a page and nothing was purged.
TEST_F(FreelistTest, ASingleFreeUnitBetweenLiveOnesIsPurged) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make();
  constexpr size_t kPage = 4096;
  std::vector<void*> chunks;
  for (int i = 0; i < 40000; ++i) {
    chunks.push_back(ctx->Alloc(64));
    std::memset(chunks.back(), 0x5A, 64);
  }
  const std::map<uintptr_t, void*> first_of_unit = FirstChunkOfEachUnit(chunks);
  std::vector<void*> kept;
  size_t freed_units = 0;
  for (const auto& [unit, p] : first_of_unit) {
    if (unit % 2 == 0) kept.push_back(p);
    if (unit % 2 == 1 && first_of_unit.count(unit - 1) && first_of_unit.count(unit + 1)) {
      ++freed_units;
    }
  }
  std::set<void*> keep(kept.begin(), kept.end());
  TestRng rng(21);
  FreeShuffled(ctx, &chunks, &rng, [&](void* p) { return keep.count(p) != 0; });
  // More frees, of one chunk allocated and freed over and over, for the
  // sweeps that give the units back and purge them.
  for (int i = 0; i < 100000; ++i) ctx->Free(ctx->Alloc(16));
  ASSERT_GT(freed_units, size_t{300});
  // A unit's page is purged unless the chunk cut at its base keeps its
  // list link in the page (a 16-byte piece), or the unit was taken again.
  EXPECT_GE(source_.purge_requested_bytes(), freed_units / 2 * kPage);
  EXPECT_EQ(source_.bad_purges(), 0);
  for (void* p : kept) {
    for (int i = 0; i < 64; ++i) ASSERT_EQ(static_cast<unsigned char*>(p)[i], 0x5A);
  }
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Records the ranges a kind purges, and forwards everything to `upstream`.
class PurgeRecorder : public BlockSource {
 public:
  explicit PurgeRecorder(BlockSource* upstream) : upstream_(upstream) {}
  Block Acquire(size_t min_size, size_t alignment) override {
    return upstream_->Acquire(min_size, alignment);
  }
  void Release(Block block) override { upstream_->Release(block); }
  size_t Purge(void* ptr, size_t size) override {
    ranges_.push_back({static_cast<unsigned char*>(ptr), size});
    return upstream_->Purge(ptr, size);
  }
  const std::vector<std::pair<unsigned char*, size_t>>& ranges() const { return ranges_; }

 private:
  BlockSource* upstream_;
  std::vector<std::pair<unsigned char*, size_t>> ranges_;
};

// Places every block at one offset into a page, so that a test sees the
// units of a block lie as a source that puts its blocks there would make
// them; Purge scribbles the range, as CountingBlockSource does.
class PagePlacedSource : public BlockSource {
 public:
  explicit PagePlacedSource(size_t offset) : offset_(offset) {}
  ~PagePlacedSource() override { EXPECT_TRUE(raw_.empty()); }
  Block Acquire(size_t min_size, size_t alignment) override {
    if (alignment > kMinBlockAlignment) return Block{};
    const size_t raw_size = (offset_ + min_size + kPageBytes - 1) / kPageBytes * kPageBytes;
    char* raw = static_cast<char*>(std::aligned_alloc(kPageBytes, raw_size));
    if (raw == nullptr) return Block{};
    raw_[raw + offset_] = raw;
    return Block{raw + offset_, min_size};
  }
  void Release(Block block) override {
    auto it = raw_.find(static_cast<char*>(block.ptr));
    ASSERT_NE(it, raw_.end());
    std::free(it->second);
    raw_.erase(it);
  }
  size_t Purge(void* ptr, size_t size) override {
    UnpoisonMemoryRegion(ptr, size);
    std::memset(ptr, CountingBlockSource::kPurgeScribbleByte, size);
    return size;
  }

 private:
  static constexpr size_t kPageBytes = 4096;
  size_t offset_;
  std::map<char*, char*> raw_;
};

// A free chunk left at the end of a unit (the pieces of a tail cut for the
// next unit to go back, the rest of a run, a chunk that ended right at the
// next unit) stops short of the next unit's page: handed out and written,
// it will not bring back the page of the free unit after it, which a sweep
// purged. Here every other unit keeps its first chunk and the units between
// go back and are purged: no free chunk may run onto their pages. Blocks
// lie at every 16th byte of a page in turn (where units fall depends on
// it): a chunk that ended on the next unit's page and was still live when
// that unit went back was left crossing onto it once freed, at five of the
// 256 offsets, before the sweep cut it too.
TEST_F(FreelistTest, ChunksAtAUnitsEndStayOffTheNextUnitsPage) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  if (freelist_internal::kUnitPhase == 0) {
    GTEST_SKIP() << "with 16-byte chunk headers units end on pages: nothing reaches the next";
  }
  constexpr size_t kPage = 4096;
  // Under memcheck, a few offsets only: each takes seconds there.
  const size_t step = std::getenv("MCX_UNDER_MEMCHECK") != nullptr ? 1024 : 16;
  for (size_t offset = 0; offset < kPage; offset += step) {
    PagePlacedSource placed(offset);
    PurgeRecorder recorder(&placed);
    ContextOptions co;
    co.block_source = &recorder;
    Context* ctx = CreateFreelistContext(nullptr, "ends", FreelistOptions(), co);
    std::vector<void*> chunks;
    for (int i = 0; i < 40000; ++i) chunks.push_back(ctx->Alloc(64));
    std::set<void*> keep;
    for (const auto& [unit, p] : FirstChunkOfEachUnit(chunks)) {
      if (unit % 2 == 0) keep.insert(p);
    }
    TestRng rng(37);
    FreeShuffled(ctx, &chunks, &rng, [&](void* p) { return keep.count(p) != 0; });
    for (int i = 0; i < 100000; ++i) ctx->Free(ctx->Alloc(16));
    // The pages purged and untouched since: the scribble, or zero.
    auto untouched = [&](const unsigned char* page) {
      const unsigned char first = page[0];
      return (first == 0 || first == CountingBlockSource::kPurgeScribbleByte) &&
             std::all_of(page, page + kPage, [&](unsigned char c) { return c == first; });
    };
    std::vector<unsigned char*> pages;
    for (const auto& [from, size] : recorder.ranges()) {
      for (unsigned char* page = from; page + kPage <= from + size; page += kPage) {
        if (untouched(page)) pages.push_back(page);
      }
    }
    ASSERT_GT(pages.size(), size_t{300}) << "offset " << offset;
    // No free chunk, which the next allocations may hand out and have
    // written, begins before one of those pages and runs onto it.
    std::sort(pages.begin(), pages.end());
    size_t crossing = 0;
    for (const SizeClassLayout& sc : InspectContext(ctx).size_classes) {
      for (const void* p : sc.free_list) {
        const auto* start = static_cast<const unsigned char*>(p) - kFreelistChunkHeaderBytes;
        const auto* end = static_cast<const unsigned char*>(p) + sc.info.class_bytes;
        auto it = std::upper_bound(pages.begin(), pages.end(), start);
        crossing += it != pages.end() && *it < end;
      }
    }
    EXPECT_EQ(crossing, size_t{0}) << "of " << pages.size() << " purged pages, blocks at offset "
                                   << offset;
    std::string error;
    EXPECT_TRUE(ctx->Check(&error)) << error;
    ctx->Destroy();
  }
}

// What an empty context may keep: its first block, the block of the run
// being carved, the block holding the freelist heads (a chunk the context
// keeps for itself) and the spares kept against data that breathes (at most
// one largest block when nothing is live).
size_t KeptWhenEmpty(const Context* ctx) {
  return ctx->first_block_size() + 3 * kMaxFreelistBlocksOfChunks;
}

// An engine that frees all its data and then idles (SQLite's close): the
// free that leaves no chunk live gives the blocks back at once, without
// waiting for a countdown of frees that may never end. Whichever chunk is
// freed last, a chunk of a block or a dedicated one.
TEST_F(FreelistTest, BlocksGoBackWhenTheLastChunkIsFreed) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  for (const bool dedicated_last : {false, true}) {
    SCOPED_TRACE(dedicated_last ? "a dedicated chunk last" : "a chunk of a block last");
    Context* ctx = Make();
    TestRng rng(7);
    std::vector<void*> live;
    for (int i = 0; i < 100000; ++i) {
      const size_t size = rng.Uniform(8, 512);
      live.push_back(ctx->Alloc(size));
      Fill(live.back(), size, static_cast<uint32_t>(i));
    }
    void* large = dedicated_last ? ctx->Alloc(kMaxFreelistBlocksOfChunks * 2) : nullptr;
    ASSERT_GT(ctx->bytes_in_blocks(), size_t{20} << 20);
    FreeShuffled(ctx, &live, &rng, [](void*) { return false; });
    if (large != nullptr) {
      // One chunk live: nothing is given back early (the spares, at most).
      EXPECT_GT(ctx->bytes_in_blocks(), size_t{20} << 20);
      ctx->Free(large);
    }
    EXPECT_EQ(ctx->live_bytes(), 0u);
    EXPECT_LE(ctx->bytes_in_blocks(), KeptWhenEmpty(ctx));
    std::string error;
    EXPECT_TRUE(ctx->Check(&error)) << error;
    // And the context serves as before.
    for (int i = 0; i < 1000; ++i) {
      live.push_back(ctx->Alloc(64));
      Fill(live.back(), 64, static_cast<uint32_t>(i));
    }
    for (size_t i = 0; i < live.size(); ++i) {
      EXPECT_TRUE(Holds(live[i], 64, static_cast<uint32_t>(i)));
    }
    ctx->Destroy();
    EXPECT_EQ(source_.live_blocks(), 0);
  }
}

// The same when the owner's own last frees are pending (deferred in
// release builds: docs/design.md) and the rest is freed by mcx::Free (whose
// free reads the header at once) or by another thread (taken back at the
// owner's next slow path): the pending frees are finished, the context
// finds itself empty and gives the blocks back.
TEST_F(FreelistTest, BlocksGoBackWhenTheRestIsFreedOtherwiseWithFreesPending) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  for (const bool other_thread : {false, true}) {
    SCOPED_TRACE(other_thread ? "the rest freed by another thread" : "the rest by mcx::Free");
    Context* ctx = Make();
    TestRng rng(47);
    // A few frees first, so that the context has its free table (where
    // frees wait) from the next slow path on.
    std::vector<void*> small, large;
    for (int i = 0; i < 100; ++i) small.push_back(ctx->Alloc(rng.Uniform(16, 1000)));
    for (void* p : small) ctx->Free(p);
    constexpr size_t kLargeSize = 2000;
    for (int i = 0; i < 2000; ++i) {
      large.push_back(ctx->Alloc(kLargeSize));
      Fill(large.back(), kLargeSize, static_cast<uint32_t>(i));
    }
    // The owner's last frees through the context, then the others, fewer
    // than the frees to the next sweep: only the context's emptying can
    // give the blocks back.
    for (int i = 0; i < 4; ++i) {
      ctx->Free(large.back());
      large.pop_back();
    }
    const auto* st = KindState<freelist_internal::FreelistState>(ctx);
    ASSERT_GT(st->sweep_countdown, static_cast<int64_t>(large.size()));
    auto free_rest = [&large] {
      for (size_t i = 0; i < large.size(); ++i) {
        EXPECT_TRUE(Holds(large[i], kLargeSize, static_cast<uint32_t>(i)));
        mcx::Free(large[i]);
      }
    };
    ASSERT_GT(ctx->bytes_in_blocks(), size_t{3} << 20);
    if (other_thread) {
      std::thread(free_rest).join();
      ASSERT_GT(ctx->bytes_in_blocks(), size_t{3} << 20);
      // A dedicated chunk's allocation is a slow path: the remote frees
      // come back, and the context empties.
      void* dedicated = ctx->Alloc(kMaxFreelistBlocksOfChunks * 2);
      ASSERT_NE(dedicated, nullptr);
      EXPECT_LE(ctx->bytes_in_blocks(), KeptWhenEmpty(ctx) + 3 * kMaxFreelistBlocksOfChunks);
      ctx->Free(dedicated);
    } else {
      free_rest();
      EXPECT_LE(ctx->bytes_in_blocks(), KeptWhenEmpty(ctx))
          << "countdown " << st->sweep_countdown << ", live " << ctx->live_bytes();
    }
    EXPECT_EQ(ctx->live_bytes(), 0u);
    std::string error;
    EXPECT_TRUE(ctx->Check(&error)) << error;
    ctx->Destroy();
    EXPECT_EQ(source_.live_blocks(), 0);
  }
}

// After a context empties and sweeps, a chunk allocated and freed over and
// over empties it at every free; served by its lists, it starts no run and
// leaves nothing a sweep could give back, so no sweep runs (each would walk
// the lists: 100 times the free's cost). A sweep resets the countdown of
// frees to the next one, so the countdown shows whether any ran.
TEST_F(FreelistTest, AChunkFreedOverAndOverAfterAnEmptySweepsNoMore) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make();
  std::vector<void*> live;
  for (int i = 0; i < 100000; ++i) live.push_back(ctx->Alloc(16 + i % 500));
  for (void* p : live) ctx->Free(p);
  ASSERT_LE(ctx->bytes_in_blocks(), KeptWhenEmpty(ctx));  // swept
  const auto* st = KindState<freelist_internal::FreelistState>(ctx);
  const int64_t countdown = st->sweep_countdown;
  constexpr int kSteps = 1000;
  ASSERT_GT(countdown, kSteps);
  for (int i = 0; i < kSteps; ++i) {
    void* p = ctx->Alloc(40);
    Fill(p, 40, static_cast<uint32_t>(i));
    ASSERT_TRUE(Holds(p, 40, static_cast<uint32_t>(i)));
    ctx->Free(p);
  }
  EXPECT_EQ(st->sweep_countdown, countdown - kSteps);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
}

// A context that fills several blocks and empties, over and over: each
// empty gives the blocks back (the spares stay), and every cycle's chunks
// hold their contents.
TEST_F(FreelistTest, AContextThatEmptiesOverAndOverStaysCorrect) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make();
  TestRng rng(11);
  size_t most = 0;
  for (int cycle = 0; cycle < 30; ++cycle) {
    std::vector<std::pair<void*, size_t>> live;
    const int n = static_cast<int>(rng.Uniform(1000, 20000));
    for (int i = 0; i < n; ++i) {
      const size_t size = rng.Uniform(8, 2000);
      live.emplace_back(ctx->Alloc(size), size);
      Fill(live.back().first, size, static_cast<uint32_t>(i + cycle));
    }
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(Holds(live[i].first, live[i].second, static_cast<uint32_t>(i + cycle)));
    }
    most = std::max(most, ctx->bytes_in_blocks());
    for (size_t i = live.size(); i > 1; --i) std::swap(live[i - 1], live[rng.Next() % i]);
    for (auto& c : live) ctx->Free(c.first);
    EXPECT_LE(ctx->bytes_in_blocks(), KeptWhenEmpty(ctx)) << "cycle " << cycle;
    std::string error;
    ASSERT_TRUE(ctx->Check(&error)) << error;
  }
  EXPECT_GT(most, KeptWhenEmpty(ctx));
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// After the live data shrinks to a tenth, in random order, new chunks fill
// fresh units while the sparse units the shrink left drain and go back:
// with a churn over the small live set, the blocks follow it down, rather
// than staying spread over every unit the large set held (each allocation
// taking a free chunk of some sparse unit, which then never empties).
// Contents hold throughout; once the data grows again, the parked chunks
// serve it before any new block.
TEST_F(FreelistTest, AfterAShrinkSparseUnitsDrain) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make();
  TestRng rng(21);
  TaggedChunks live(ctx, &rng);
  for (int i = 0; i < 100000; ++i) live.Add(64, 1024);
  const size_t peak = ctx->bytes_in_blocks();
  while (live.size() > 10000) ASSERT_TRUE(live.DropRandom());
  for (int step = 0; step < 300000; ++step) {
    ASSERT_TRUE(live.DropRandom());
    live.Add(64, 1024);
  }
  size_t live_bytes = 0;
  for (const TaggedChunk& l : live.chunks()) live_bytes += l.size;
  // The bytes of the units that hold chunks (live or free); the free units
  // are purged, or released with their blocks.
  size_t carved = 0;
  for (const BlockInfo& b : InspectContext(ctx).blocks) carved += b.used_bytes + b.freelist_bytes;
  EXPECT_LE(carved, 2 * live_bytes) << "peak " << peak;
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  EXPECT_GT(GetCounters(ctx).free_chunks, 0u);
  // Growing again: what the context holds serves before a new block.
  const size_t held = ctx->bytes_in_blocks();
  const int64_t acquired = source_.acquires();
  while (live_bytes < held / 2) {
    live.Add(64, 1024);
    live_bytes += live.chunks().back().size;
  }
  EXPECT_EQ(source_.acquires(), acquired);
  while (live.size() > 0) ASSERT_TRUE(live.Drop(live.size() - 1));
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// The live chunks of a parked unit carry a header bit that sends their
// free to the parked list (freelist.cc, kParkedUnitBit). Every way of
// handing such a chunk back or asking about it works as for any chunk:
// its size and context, a realloc in place and one that moves it, a free
// through the context and through mcx::Free, and a second free is still
// reported as a double free.
constexpr uint64_t kParkedUnitBitForTest = uint64_t{1} << 7;

// Finishes the frees that a context holding more than a few hundred KiB
// defers in release builds (docs/design.md, "Deferred frees"): ResetPeak,
// like Realloc, finishes them before it starts.
void FinishPendingFrees(Context* ctx) { ctx->ResetPeak(); }

// Leaves the context of `live` parking: 100,000 chunks of 64..1024 B, nine
// in ten freed in random order, then a churn for the sweeps.
void ShrinkUntilParked(Context* ctx, TestRng* rng, TaggedChunks* live) {
  for (int i = 0; i < 100000; ++i) live->Add(64, 1024);
  while (live->size() > 10000) live->DropRandom();
  for (int i = 0; i < 20000; ++i) ctx->Free(ctx->Alloc(rng->Uniform(64, 1024)));
}

TEST_F(FreelistTest, ChunksOfParkedUnitsGoBackEveryWay) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  if (test::UnderMemcheck()) GTEST_SKIP() << "reads a freed chunk's header on purpose";
  Context* ctx = Make();
  TestRng rng(23);
  TaggedChunks chunks(ctx, &rng);
  ShrinkUntilParked(ctx, &rng, &chunks);
  std::vector<TaggedChunk>& live = chunks.chunks();
  std::vector<size_t> parked;
  for (size_t i = 0; i < live.size(); ++i) {
    if ((ReadChunkHeader(live[i].p) & kParkedUnitBitForTest) != 0) parked.push_back(i);
  }
  ASSERT_GE(parked.size(), 5u) << "no unit parked";
  std::string error;
  ASSERT_TRUE(ctx->Check(&error)) << error;
  // Size and context.
  const TaggedChunk a = live[parked[0]];
  EXPECT_GE(GetChunkSize(a.p), a.size);
  EXPECT_EQ(GetChunkContext(a.p), ctx);
  // A realloc within the class stays; one to a larger class moves, with
  // its contents, and the old chunk is free. (Counts of free chunks are
  // compared only where no run starts: a new run may follow a sweep, which
  // coalesces and cuts chunks.)
  TaggedChunk& b = live[parked[1]];
  EXPECT_EQ(ctx->Realloc(b.p, b.size), b.p);
  void* moved = ctx->Realloc(b.p, 4000);
  EXPECT_NE(moved, b.p);
  EXPECT_TRUE(Holds(moved, b.size, b.tag));
  EXPECT_TRUE(ChunkHeaderIsFree(ReadChunkHeader(b.p)));
  b.p = moved;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  // Frees through the context and through mcx::Free.
  void* c = live[parked[2]].p;
  void* d = live[parked[3]].p;
  const size_t free_before = GetCounters(ctx).free_chunks;
  ctx->Free(c);
  mcx::Free(d);
  FinishPendingFrees(ctx);
  EXPECT_TRUE(ChunkHeaderIsFree(ReadChunkHeader(c)));
  EXPECT_TRUE(ChunkHeaderIsFree(ReadChunkHeader(d)));
  EXPECT_EQ(GetCounters(ctx).free_chunks, free_before + 2);
  EXPECT_TRUE(ctx->Check(&error)) << error;
  // A second free is reported, and nothing changes.
  static std::vector<std::string> reports;
  reports.clear();
  const MisuseHandler previous =
      SetMisuseHandler([](const char* message) { reports.push_back(message); });
  ctx->Free(c);
  mcx::Free(d);
  FinishPendingFrees(ctx);
  SetMisuseHandler(previous);
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_TRUE(reports[0].find("double free") != std::string::npos ||
              reports[1].find("double free") != std::string::npos)
      << reports[0] << "\n" << reports[1];
  EXPECT_EQ(GetCounters(ctx).free_chunks, free_before + 2);
  EXPECT_TRUE(ctx->Check(&error)) << error;
  // From another thread: it waits on the remote list until the owner's
  // next slow path (here a dedicated chunk's) takes it back.
  void* e = live[parked[4]].p;
  std::thread([e] { mcx::Free(e); }).join();
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Free(ctx->Alloc(kMaxFreelistBlocksOfChunks * 2));
  EXPECT_EQ(GetCounters(ctx).free_chunks, free_before + 3);
  EXPECT_TRUE(ctx->Check(&error)) << error;
  live[parked[2]].p = live[parked[3]].p = live[parked[4]].p = nullptr;
  for (const TaggedChunk& t : live) {
    if (t.p == nullptr || t.p == b.p) continue;
    EXPECT_TRUE(Holds(t.p, t.size, t.tag));
    ctx->Free(t.p);
  }
  ctx->Free(b.p);
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Deferred frees (docs/design.md): in release builds a context holding
// more than a few hundred KiB finishes each free a few frees later. Live
// bytes stay exact at every step, checked against a model after each
// call (they drop at the free), and the peak is at least what was live at
// the most and at most the bytes of eight pending chunks more, through a
// shrink (frees pending), a growth that raises the peak while they are, a
// churn, and a shuffled free of everything, after which the context is
// empty and has given its blocks back; ResetPeak makes the peak exact.
constexpr size_t kLargestTestChunk = 4000;
// Eight chunks of the largest class a kLargestTestChunk request takes
// (sixteen classes per doubling: under 1/16 more, and a header).
constexpr size_t kPendingPeakSlack = 8 * (kLargestTestChunk + kLargestTestChunk / 16 + 16);

TEST_F(FreelistTest, DeferredFreesKeepLiveBytesExactAndThePeakBounded) {
  Context* ctx = Make();
  TestRng rng(41);
  std::vector<std::pair<void*, size_t>> live;  // chunk, bytes it counts
  size_t model = 0, model_peak = 0;
  auto add = [&](size_t lo, size_t hi) {
    const size_t before = ctx->live_bytes();
    void* p = ctx->Alloc(rng.Uniform(lo, hi));
    ASSERT_NE(p, nullptr);
    ASSERT_GT(ctx->live_bytes(), before);
    live.emplace_back(p, ctx->live_bytes() - before);
    model += live.back().second;
    model_peak = std::max(model_peak, model);
    ASSERT_EQ(ctx->live_bytes(), model);
    ASSERT_GE(ctx->peak_live_bytes(), model_peak);
    ASSERT_LE(ctx->peak_live_bytes(), model_peak + kPendingPeakSlack);
  };
  auto drop = [&](size_t i) {
    ctx->Free(live[i].first);
    model -= live[i].second;
    live[i] = live.back();
    live.pop_back();
    ASSERT_EQ(ctx->live_bytes(), model);
    ASSERT_GE(ctx->peak_live_bytes(), model_peak);
    ASSERT_LE(ctx->peak_live_bytes(), model_peak + kPendingPeakSlack);
  };
  for (int i = 0; i < 20000; ++i) ASSERT_NO_FATAL_FAILURE(add(8, 2000));
  while (live.size() > 10000) ASSERT_NO_FATAL_FAILURE(drop(rng.Next() % live.size()));
  for (int i = 0; i < 20000; ++i) ASSERT_NO_FATAL_FAILURE(add(8, 2000));
  for (int i = 0; i < 20000; ++i) {
    ASSERT_NO_FATAL_FAILURE(drop(rng.Next() % live.size()));
    ASSERT_NO_FATAL_FAILURE(add(8, kLargestTestChunk));
  }
  ctx->ResetPeak();
  model_peak = model;
  EXPECT_EQ(ctx->peak_live_bytes(), model);
  while (!live.empty()) ASSERT_NO_FATAL_FAILURE(drop(rng.Next() % live.size()));
  EXPECT_EQ(ctx->live_bytes(), 0u);
  EXPECT_LE(ctx->bytes_in_blocks(), KeptWhenEmpty(ctx));
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// A double free in a large context (frees deferred in release builds) is
// reported, at the latest when the pending frees are finished, and changes
// nothing: the live bytes count the chunk once, and the chunk is handed out
// once. A handler that leaves the report by longjmp leaves the context
// consistent and usable, its remaining frees finished later.
jmp_buf deferred_report_jump;
int deferred_reports = 0;

TEST_F(FreelistTest, ADeferredDoubleFreeIsReportedOnceAndChangesNothing) {
  Context* ctx = Make();
  TestRng rng(43);
  TaggedChunks chunks(ctx, &rng);
  for (int i = 0; i < 20000; ++i) chunks.Add(64, 1024);
  constexpr size_t kTwiceSize = 500;
  const size_t without = ctx->live_bytes();
  void* twice = ctx->Alloc(kTwiceSize);
  const size_t counted = ctx->live_bytes() - without;
  for (int i = 0; i < 100; ++i) chunks.Add(64, 1024);  // not the chunk carved last
  const size_t before = ctx->live_bytes();
  deferred_reports = 0;
  const MisuseHandler previous = SetMisuseHandler([](const char* message) {
    if (std::strstr(message, "double free") != nullptr) ++deferred_reports;
    std::longjmp(deferred_report_jump, 1);
  });
  if (setjmp(deferred_report_jump) == 0) {
    ctx->Free(twice);
    ctx->Free(twice);
    FinishPendingFrees(ctx);
  }
  SetMisuseHandler(previous);
  EXPECT_EQ(deferred_reports, 1);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  // Counted once, whatever the jump left pending.
  EXPECT_EQ(ctx->live_bytes(), before - counted);
  FinishPendingFrees(ctx);
  EXPECT_EQ(ctx->live_bytes(), before - counted);
  // Handed out at most once, among allocations of its size.
  std::set<void*> seen;
  for (int i = 0; i < 2000; ++i) {
    void* p = ctx->Alloc(kTwiceSize);
    EXPECT_TRUE(seen.insert(p).second) << "chunk " << p << " handed out twice";
    Fill(p, kTwiceSize, static_cast<uint32_t>(i));
  }
  std::vector<TaggedChunk>& live = chunks.chunks();
  for (const TaggedChunk& t : live) EXPECT_TRUE(Holds(t.p, t.size, t.tag));
  while (live.size() > 0) ASSERT_TRUE(chunks.DropRandom());
  for (void* p : seen) ctx->Free(p);
  EXPECT_EQ(ctx->live_bytes(), 0u);
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// A context at its limit that frees a chunk and asks for one of the same
// size gets it, in every build: with frees deferred (release builds, a
// context of more than a few hundred KiB) the chunk just freed waits in
// the ring, and a request that would otherwise need a new block finishes
// the pending frees and looks at its lists again before the limit refuses.
TEST_F(FreelistTest, AChunkFreedAtTheLimitServesTheNextRequest) {
  Context* ctx = Make();
  constexpr size_t kLimitBytes = 2 << 20;
  constexpr size_t kSize = 300;
  const absl::Status set = ctx->SetLimit(kLimitBytes);
  ASSERT_TRUE(set.ok()) << set;
  TestRng rng(47);
  std::vector<void*> live;
  while (void* p = ctx->TryAlloc(kSize)) {
    Fill(p, kSize, static_cast<uint32_t>(live.size()));
    live.push_back(p);
  }
  ASSERT_EQ(ctx->last_failure(), Failure::kLimit);
  ASSERT_GT(live.size(), 1000u);
  for (int i = 0; i < 2000; ++i) {
    const size_t k = rng.Next() % live.size();
    ASSERT_TRUE(Holds(live[k], kSize, static_cast<uint32_t>(k))) << "step " << i;
    ctx->Free(live[k]);
    live[k] = ctx->TryAlloc(kSize);
    ASSERT_NE(live[k], nullptr) << "refused at step " << i << ", "
                                << ctx->live_bytes() << " bytes live";
    Fill(live[k], kSize, static_cast<uint32_t>(k));
  }
  for (size_t k = 0; k < live.size(); ++k) {
    EXPECT_TRUE(Holds(live[k], kSize, static_cast<uint32_t>(k)));
  }
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Small chunks past the deferral bound (release builds), and a few of them
// replaced, as a program frees and allocates between its large requests.
std::vector<void*> SmallChunksPastTheBound(Context* ctx, TestRng* rng) {
  constexpr int kChunks = 4000;  // about 2 MB of 64..1024 B
  std::vector<void*> small;
  for (int i = 0; i < kChunks; ++i) small.push_back(ctx->Alloc(rng->Uniform(64, 1024)));
  return small;
}
void ReplaceSome(Context* ctx, TestRng* rng, std::vector<void*>* small, int n) {
  for (int k = 0; k < n; ++k) {
    const size_t j = rng->Next() % small->size();
    ctx->Free((*small)[j]);
    (*small)[j] = ctx->Alloc(rng->Uniform(64, 1024));
  }
}

// The same for a chunk of a unit or more, which takes a free chunk of a
// class just above: the chunk just freed, once its pending free is finished.
TEST_F(FreelistTest, ALargeChunkFreedAtTheLimitServesASmallerRequest) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make();
  constexpr size_t kLimitBytes = 2 << 20;
  constexpr size_t kFreed = 8000, kAsked = 7000;  // four classes apart
  const absl::Status set = ctx->SetLimit(kLimitBytes);
  ASSERT_TRUE(set.ok()) << set;
  std::vector<void*> large;
  while (void* p = ctx->TryAlloc(kFreed)) large.push_back(p);
  while (ctx->TryAlloc(kAsked) != nullptr) {
  }  // the run used up too
  ASSERT_EQ(ctx->last_failure(), Failure::kLimit);
  for (int i = 0; i < 8; ++i) {
    ctx->Free(large.back());
    large.pop_back();
    EXPECT_NE(ctx->TryAlloc(kAsked), nullptr) << "refused at step " << i;
  }
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// The same for a chunk of a block of its own: a large chunk freed in a
// context past the bound, and asked for again, gets its block back for the
// next request rather than a refusal (the limit would hold one, not two),
// and a context without a limit does not hold both blocks at once.
TEST_F(FreelistTest, ADedicatedChunkFreedAtTheLimitServesTheNextRequest) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make();
  constexpr size_t kLarge = 4 << 20;
  TestRng rng(53);
  std::vector<void*> small = SmallChunksPastTheBound(ctx, &rng);
  const absl::Status set = ctx->SetLimit(ctx->bytes_in_blocks() + kLarge + kLarge / 2);
  ASSERT_TRUE(set.ok()) << set;
  for (int i = 0; i < 20; ++i) {
    void* big = ctx->TryAlloc(kLarge);
    ASSERT_NE(big, nullptr) << "refused at round " << i;
    Fill(big, kLarge, static_cast<uint32_t>(i));
    const size_t held = ctx->bytes_in_blocks();
    ctx->Free(big);
    ReplaceSome(ctx, &rng, &small, 3);
    EXPECT_LE(ctx->bytes_in_blocks(), held);
  }
  EXPECT_EQ(ctx->last_failure(), Failure::kNone);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// A dedicated chunk's block goes back at its free, in every build and
// whatever else the context holds: a program that frees a large buffer and
// then idles makes no further call that could finish a deferred free.
TEST_F(FreelistTest, ADedicatedChunksBlockGoesBackAtItsFree) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make();
  constexpr size_t kLarge = 4 << 20;
  TestRng rng(59);
  std::vector<void*> small = SmallChunksPastTheBound(ctx, &rng);
  for (int round = 0; round < 3; ++round) {
    void* big = ctx->Alloc(kLarge);
    ASSERT_NE(big, nullptr);
    ReplaceSome(ctx, &rng, &small, 5);
    const size_t held = ctx->bytes_in_blocks();
    const size_t source_held = source_.live_bytes();
    ctx->Free(big);
    EXPECT_LE(ctx->bytes_in_blocks() + kLarge, held) << "round " << round;
    EXPECT_LE(source_.live_bytes() + kLarge, source_held) << "round " << round;
  }
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// A double free pending when an allocation takes a new block is reported
// there, by the allocation, whose handler may leave by longjmp: the
// allocation has changed nothing yet, the context stays consistent and the
// next allocation succeeds.
TEST_F(FreelistTest, ADeferredDoubleFreeReportedByAnAllocationLeavesItUsable) {
  Context* ctx = Make();
  TestRng rng(61);
  TaggedChunks chunks(ctx, &rng);
  for (int i = 0; i < 20000; ++i) chunks.Add(64, 1024);
  void* twice = ctx->Alloc(500);
  for (int i = 0; i < 100; ++i) chunks.Add(64, 1024);
  const size_t blocks = ctx->bytes_in_blocks();
  deferred_reports = 0;
  const MisuseHandler previous = SetMisuseHandler([](const char* message) {
    if (std::strstr(message, "double free") != nullptr) ++deferred_reports;
    std::longjmp(deferred_report_jump, 1);
  });
  constexpr size_t kLarge = 1 << 20;
  void* big = nullptr;
  if (setjmp(deferred_report_jump) == 0) {
    ctx->Free(twice);
    ctx->Free(twice);
    big = ctx->Alloc(kLarge);  // a block of its own: the pending frees first
  }
  SetMisuseHandler(previous);
  EXPECT_EQ(deferred_reports, 1);
  EXPECT_EQ(big, nullptr);  // left by the jump
  // (In direct mode the first free gave its block back.)
  if (!kDirectBuild) {
    EXPECT_EQ(ctx->bytes_in_blocks(), blocks);
  }
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  big = ctx->Alloc(kLarge);
  ASSERT_NE(big, nullptr);
  Fill(big, kLarge, 7);
  for (const TaggedChunk& t : chunks.chunks()) EXPECT_TRUE(Holds(t.p, t.size, t.tag));
  EXPECT_TRUE(Holds(big, kLarge, 7));
  ctx->Free(big);
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// A chunk freed a second time while its first free may still be pending
// (release builds defer frees in a context this large) is reported once,
// and never handed out twice, however the second free comes: through the
// context, through mcx::Free, or from another thread. Left pending, the
// first free would be finished and the chunk handed out again, and the
// second would then file a live chunk.
int pending_double_reports = 0;

enum class SecondFree { kContext, kChunk, kOtherThread };

void FreeAgain(Context* ctx, void* p, SecondFree how) {
  switch (how) {
    case SecondFree::kContext:
      ctx->Free(p);
      break;
    case SecondFree::kChunk:
      mcx::Free(p);
      break;
    case SecondFree::kOtherThread:
      std::thread([&] { ctx->Free(p); }).join();
      break;
  }
}

void FreeTwiceWhilePending(Context* ctx, SecondFree how) {
  // 200-byte chunks past the bound, and frees of 300-byte ones to finish
  // the pending: the 200-byte class has no free chunk but the one freed
  // twice, so an allocation of it takes that one when it is filed.
  constexpr size_t kSize = 200, kOther = 300, kChunks = 5000;
  std::vector<void*> others;
  for (size_t i = 0; i < 64; ++i) others.push_back(ctx->Alloc(kOther));
  ctx->Free(others.back());  // the free table, made at the next slow path
  others.pop_back();
  std::vector<void*> live;
  for (size_t i = 0; i < kChunks; ++i) live.push_back(ctx->Alloc(kSize));
  pending_double_reports = 0;
  // mcx::Free in checking builds finds the chunk freed before it finds its
  // context, and says so.
  const MisuseHandler previous = SetMisuseHandler([](const char* message) {
    if (std::strstr(message, "double free") != nullptr ||
        std::strstr(message, "already freed") != nullptr) {
      ++pending_double_reports;
    }
  });
  void* p = live.back();
  live.pop_back();
  ctx->Free(p);
  FreeAgain(ctx, p, how);
  std::set<void*> held(live.begin(), live.end());
  for (int i = 0; i < 40; ++i) {
    void* q = ctx->Alloc(kSize);
    EXPECT_TRUE(held.insert(q).second) << "chunk " << q << " handed out twice, step " << i;
    live.push_back(q);
    ctx->Free(others.back());
    others.pop_back();
  }
  FinishPendingFrees(ctx);
  SetMisuseHandler(previous);
  EXPECT_EQ(pending_double_reports, 1);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  for (void* q : live) ctx->Free(q);
  for (void* q : others) ctx->Free(q);
  EXPECT_EQ(ctx->live_bytes(), 0u);
}

class FreedTwiceWhilePendingTest : public FreelistTest,
                                   public ::testing::WithParamInterface<SecondFree> {};

TEST_P(FreedTwiceWhilePendingTest, IsReportedAndHandedOutOnce) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode the first free gives the block back";
  Context* ctx = Make();
  FreeTwiceWhilePending(ctx, GetParam());
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

INSTANTIATE_TEST_SUITE_P(SecondFrees, FreedTwiceWhilePendingTest,
                         ::testing::Values(SecondFree::kContext, SecondFree::kChunk,
                                           SecondFree::kOtherThread),
                         [](const auto& info) {
                           switch (info.param) {
                             case SecondFree::kContext:
                               return "ThroughTheContext";
                             case SecondFree::kChunk:
                               return "ThroughMcxFree";
                             case SecondFree::kOtherThread:
                               return "FromAnotherThread";
                           }
                           return "Unknown";
                         });

// A chunk just freed reads as freed to GetChunkSize and GetChunkContext
// (a misuse report, 0 and nullptr) in every build: also while its free is
// pending in a context this large, where its header does not say so yet.
// Another thread, which cannot read the owner's pending frees, asks after
// they are finished.
TEST_F(FreelistTest, AChunkJustFreedReadsAsFreedToItsQueries) {
  Context* ctx = Make();
  constexpr size_t kSize = 200, kChunks = 5000;
  std::vector<void*> live;
  for (size_t i = 0; i < kChunks; ++i) live.push_back(ctx->Alloc(kSize));
  ctx->Free(live.back());  // the free table, made at the next slow path
  live.pop_back();
  live.push_back(ctx->Alloc(kSize));
  static int reports;
  reports = 0;
  const MisuseHandler previous = SetMisuseHandler([](const char* message) {
    if (std::strstr(message, "already freed") != nullptr) ++reports;
  });
  for (int i = 0; i < 3; ++i) {
    void* p = live.back();
    live.pop_back();
    ctx->Free(p);
    EXPECT_EQ(GetChunkSize(p), 0u) << "free " << i;
    EXPECT_EQ(GetChunkContext(p), nullptr) << "free " << i;
    EXPECT_EQ(reports, 2 * (i + 1)) << "free " << i;
  }
  void* q = live.back();
  EXPECT_GE(GetChunkSize(q), kSize);
  EXPECT_EQ(GetChunkContext(q), ctx);
  EXPECT_EQ(reports, 6);
  SetMisuseHandler(previous);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  for (void* p : live) ctx->Free(p);
  EXPECT_EQ(ctx->live_bytes(), 0u);
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// A chunk of a unit or more (4 KiB and up) whose class has no free chunk
// takes a free one of a class up to four above, whole, rather than a new
// one: in a wide mix of large sizes the free chunks of each class would
// otherwise wait for a request of their own class while new ones are
// carved. Further above, it does not (the waste stays bounded).
TEST_F(FreelistTest, ALargeRequestTakesAFreeChunkOfAClassJustAbove) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  FreelistOptions o;
  o.initial_block_size = 64 << 10;  // room for the free table at the first slow path
  Context* ctx = Make(o);
  void* big = ctx->Alloc(5000);
  void* far = ctx->Alloc(9000);
  ctx->Alloc(16);  // neither is the chunk carved last
  Fill(big, 5000, 3);
  ctx->Free(big);
  ctx->Free(far);
  ASSERT_GT(SizeClassOf(5000), SizeClassOf(4500));
  ASSERT_LE(SizeClassOf(5000) - SizeClassOf(4500), 4u);
  void* p = ctx->Alloc(4500);
  EXPECT_EQ(p, big);
  EXPECT_EQ(ctx->ChunkSize(p), kFreelistChunkHeaderBytes == 8 ? SizeClassBytes(SizeClassOf(5000)) : 4500u);
  Fill(p, 4500, 4);
  ASSERT_GT(SizeClassOf(9000) - SizeClassOf(4200), 4u);
  void* q = ctx->Alloc(4200);
  EXPECT_NE(q, far);
  EXPECT_TRUE(Holds(p, 4500, 4));
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Free(p);
  ctx->Free(q);
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
}

// A source that places each block at a different distance past a page:
// every multiple of 16 below 4 KiB in turn, and sizes a little above what
// was asked, so that the freelist's units, which lie on pages wherever the
// block lies, meet every layout (a first unit of 16 bytes, a last one of
// one chunk, a block that 64 units do not cover).
class OffsetBlockSource : public BlockSource {
 public:
  Block Acquire(size_t min_size, size_t alignment) override {
    if (alignment > kMinBlockAlignment) return Block{};
    const size_t offset = (next_++ * 37 * 16) % kPage;
    const size_t size = min_size + (next_ % 4) * 16;
    const size_t raw_size = (offset + size + kPage - 1) / kPage * kPage;
    char* raw = static_cast<char*>(std::aligned_alloc(kPage, raw_size));
    if (raw == nullptr) return Block{};
    offsets_.insert(offset);
    raw_[raw + offset] = raw;
    return Block{raw + offset, size};
  }
  void Release(Block block) override {
    auto it = raw_.find(static_cast<char*>(block.ptr));
    ASSERT_NE(it, raw_.end());
    std::free(it->second);
    raw_.erase(it);
  }
  size_t distinct_offsets() const { return offsets_.size(); }

 private:
  static constexpr size_t kPage = 4096;
  size_t next_ = 0;
  std::set<size_t> offsets_;
  std::map<char*, char*> raw_;
};

// Freed space of one size class serves another: after most chunks of a
// small class are freed in random order (a few stay live in every unit, so
// no unit goes back whole), a sweep coalesces the free neighbours into
// chunks of larger classes, which then serve requests of those classes
// without new blocks.
TEST_F(FreelistTest, FreedSmallChunksServeLargerClasses) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  // Blocks placed the same way in every run: where units fall depends on
  // where a block lies against the pages, and with blocks from the shared
  // cache or malloc that depends on what the process did before.
  OffsetBlockSource placed;
  CountingBlockSource counting(&placed);
  ContextOptions co;
  co.block_source = &counting;
  Context* ctx = CreateFreelistContext(nullptr, "freelist", FreelistOptions(), co);
  TestRng rng(14);
  std::vector<void*> live;
  for (int i = 0; i < 100000; ++i) {
    live.push_back(ctx->Alloc(24));
    Fill(live.back(), 24, 5);
  }
  const size_t blocks = ctx->bytes_in_blocks();
  size_t n = 0;
  FreeShuffled(ctx, &live, &rng, [&n](void*) { return ++n % 16 == 0; });
  const size_t stride = (SizeClassBytes(SizeClassOf(24)) + kFreelistChunkHeaderBytes + 15) / 16 * 16;
  const size_t freed_bytes = (100000 - live.size()) * stride;
  for (int i = 0; i < 20000; ++i) ctx->Free(ctx->Alloc(24));
  // More than half the freed bytes are now in chunks of larger classes.
  ContextLayout layout = InspectContext(ctx);
  size_t larger_bytes = 0;
  for (const SizeClassLayout& c : layout.size_classes) {
    if (c.info.class_bytes > 24) larger_bytes += c.info.free_chunks * c.info.chunk_bytes;
  }
  EXPECT_GT(larger_bytes * 2, freed_bytes);
  // Requests of those classes take them: no block is acquired.
  std::vector<std::pair<void*, size_t>> big;
  for (const SizeClassLayout& c : layout.size_classes) {
    if (c.info.class_bytes <= 24) continue;
    for (size_t k = 0; k < c.info.free_chunks; ++k) {
      void* p = ctx->Alloc(c.info.class_bytes);
      Fill(p, c.info.class_bytes, 6);
      big.emplace_back(p, c.info.class_bytes);
    }
  }
  EXPECT_LE(ctx->bytes_in_blocks(), blocks);
  for (void* p : live) EXPECT_TRUE(Holds(p, 24, 5));
  for (const auto& [p, size] : big) EXPECT_TRUE(Holds(p, size, 6));
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(counting.live_blocks(), 0);
}

// Shrinks that park, against a model: in each phase the live set grows to
// 30,000 chunks of the phase's sizes, shrinks to a tenth in random order and
// churns (frees, allocations, reallocs of either direction), so sweeps park
// sparse units, cut tails and take large chunks from the classes above.
// Every chunk's contents are checked when it is freed or moved and at the
// end, the context at intervals; some phase must have parked.
TEST_F(FreelistTest, ShrinksThatParkAgainstAModel) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Make();
  TestRng rng(29);
  TaggedChunks live(ctx, &rng);
  const size_t kRanges[][2] = {{8, 512}, {64, 4096}, {16, 256}, {1024, 9000}};
  bool parked_seen = false;
  std::string error;
  for (const auto& range : kRanges) {
    while (live.size() < 30000) live.Add(range[0], range[1]);
    while (live.size() > 3000) ASSERT_TRUE(live.DropRandom());
    for (int step = 0; step < 60000; ++step) {
      ASSERT_TRUE(live.ChurnStep(step, range[0], range[1]));
      if (step % 5000 == 0) {
        for (const TaggedChunk& c : live.chunks()) {
          parked_seen |= (ReadChunkHeader(c.p) & kParkedUnitBitForTest) != 0;
        }
      }
      if (step % 20000 == 0) {
        ASSERT_TRUE(ctx->Check(&error)) << error;
      }
    }
    ASSERT_TRUE(ctx->Check(&error)) << error;
  }
  EXPECT_TRUE(parked_seen);
  while (live.size() > 0) ASSERT_TRUE(live.Drop(live.size() - 1));
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// The freelist against a model with blocks placed anywhere past a page:
// phases of sizes grown, shrunk (so that sweeps give units back, cut tails
// and purge pages, which the counting source scribbles over) and churned
// with reallocs; contents checked at every free and move, Check() at
// intervals.
TEST_F(FreelistTest, UnitsFollowPagesWhereverTheSourcePutsBlocks) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  OffsetBlockSource placed;
  CountingBlockSource counting(&placed);
  ContextOptions co;
  co.block_source = &counting;
  Context* ctx = CreateFreelistContext(nullptr, "placed", FreelistOptions(), co);
  TestRng rng(31);
  TaggedChunks live(ctx, &rng);
  const size_t kRanges[][2] = {{8, 512}, {64, 4096}, {16, 256}, {1024, 9000}, {8, 64}};
  std::string error;
  for (const auto& range : kRanges) {
    while (live.size() < 20000) live.Add(range[0], range[1]);
    while (live.size() > 2000) ASSERT_TRUE(live.DropRandom());
    for (int step = 0; step < 30000; ++step) {
      ASSERT_TRUE(live.ChurnStep(step, range[0], range[1]));
      if (step % 10000 == 0) {
        ASSERT_TRUE(ctx->Check(&error)) << error;
      }
    }
    ASSERT_TRUE(ctx->Check(&error)) << error;
  }
  EXPECT_GE(placed.distinct_offsets(), size_t{64});
  EXPECT_GT(counting.purge_requested_bytes(), size_t{0});
  EXPECT_EQ(counting.bad_purges(), 0);
  while (live.size() > 0) ASSERT_TRUE(live.Drop(live.size() - 1));
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(counting.live_blocks(), 0);
}

// A long-lived heap against a model: phases of different size ranges, the
// live set grown and shrunk, contents and Check verified throughout.
TEST_F(FreelistTest, PhasesOfSizesAgainstAModel) {
  Context* ctx = Make();
  TestRng rng(15);
  struct Live {
    void* p;
    size_t size;
    int tag;
  };
  std::vector<Live> live;
  const size_t kRanges[][2] = {{8, 128}, {8, 4096}, {512, 4096}, {8, 300}, {100, 9000}};
  int tag = 0;
  for (const auto& range : kRanges) {
    for (int op = 0; op < 30000; ++op) {
      const bool grow = (op / 10000) % 2 == 0;
      if (live.empty() || rng.Next() % 4 < (grow ? 3u : 1u)) {
        const size_t size = rng.Uniform(range[0], range[1]);
        void* p = ctx->Alloc(size);
        ASSERT_NE(p, nullptr);
        Fill(p, size, ++tag);
        live.push_back(Live{p, size, tag});
      } else {
        const size_t i = rng.Next() % live.size();
        ASSERT_TRUE(Holds(live[i].p, live[i].size, live[i].tag));
        if (rng.Next() % 8 == 0) {
          const size_t size = rng.Uniform(range[0], range[1]);
          void* q = ctx->Realloc(live[i].p, size);
          ASSERT_NE(q, nullptr);
          ASSERT_TRUE(Holds(q, std::min(size, live[i].size), live[i].tag));
          Fill(q, size, live[i].tag);
          live[i].p = q;
          live[i].size = size;
          continue;
        }
        ctx->Free(live[i].p);
        live[i] = live.back();
        live.pop_back();
      }
      if (op % 10000 == 0) {
        std::string error;
        ASSERT_TRUE(ctx->Check(&error)) << error;
      }
    }
  }
  for (const Live& l : live) ASSERT_TRUE(Holds(l.p, l.size, l.tag));
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Resident memory follows the live data in blocks that stay: after most
// chunks are freed in random order, a few left live in every block so that
// no block empties, the sweeps hand the free units' pages to the block
// source's Purge, each once. Live chunks keep their contents, the blocks
// stay accounted as held, and the purged space serves new chunks, which
// are purged again once they are freed.
TEST_F(FreelistTest, FreeUnitsOfBlocksThatStayArePurged) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  constexpr int kChunks = 100000;
  constexpr size_t kSize = 64;
  constexpr int kKeepOneIn = 1000;  // a few live chunks per block of 64 units
  Context* ctx = Make();
  TestRng rng(16);
  std::vector<void*> live;
  for (int i = 0; i < kChunks; ++i) {
    live.push_back(ctx->Alloc(kSize));
    Fill(live.back(), kSize, 7);
  }
  EXPECT_EQ(source_.purges(), 0);
  int n = 0;
  FreeShuffled(ctx, &live, &rng, [&n](void*) { return ++n % kKeepOneIn == 0; });
  // One more sweep's worth of frees, of chunks allocated and freed at once.
  for (int i = 0; i < 20000; ++i) ctx->Free(ctx->Alloc(24));
  const size_t held = ctx->bytes_in_blocks();
  EXPECT_GT(source_.purges(), 0);
  EXPECT_EQ(source_.bad_purges(), 0);
  // Most of what is held is free units, and most of their bytes went to
  // Purge (runs end at units pinned by a live chunk).
  EXPECT_GT(source_.purge_requested_bytes() * 2, held);
  // The default source, over the system allocator, gave whole pages back.
  EXPECT_GT(source_.purged_bytes() * 3, held);
  for (void* p : live) ASSERT_TRUE(Holds(p, kSize, 7));
  // Purging changes no account: the blocks are still held, all of them.
  EXPECT_EQ(held, source_.live_bytes());
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  // Each run once: more sweeps that free no unit purge nothing more.
  const int64_t purges = source_.purges();
  for (int i = 0; i < 20000; ++i) ctx->Free(ctx->Alloc(24));
  EXPECT_EQ(source_.purges(), purges);
  // Purged units are carved again: the new chunks hold what is written.
  std::vector<void*> again;
  for (int i = 0; i < kChunks; ++i) {
    again.push_back(ctx->Alloc(kSize));
    Fill(again.back(), kSize, 8);
  }
  // They mostly took the purged units: new blocks hold less than half of them.
  EXPECT_LT(ctx->bytes_in_blocks(), held + kChunks * kSize / 2);
  for (void* p : again) ASSERT_TRUE(Holds(p, kSize, 8));
  for (void* p : live) ASSERT_TRUE(Holds(p, kSize, 7));
  EXPECT_TRUE(ctx->Check(&error)) << error;
  // Freed again, they are purged again.
  FreeShuffled(ctx, &again, &rng, [](void*) { return false; });
  for (int i = 0; i < 20000; ++i) ctx->Free(ctx->Alloc(24));
  EXPECT_GT(source_.purges(), purges);
  EXPECT_EQ(source_.bad_purges(), 0);
  for (void* p : live) ASSERT_TRUE(Holds(p, kSize, 7));
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// A source that keeps its pages (the default Purge) serves the same heap:
// nothing is given back, nothing breaks.
TEST_F(FreelistTest, SourcesThatKeepTheirPagesServeTheSameHeap) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  test::ExactBlockSource exact;
  CountingBlockSource counting(&exact);
  ContextOptions co;
  co.block_source = &counting;
  Context* ctx = CreateFreelistContext(nullptr, "freelist", FreelistOptions(), co);
  TestRng rng(17);
  std::vector<void*> live;
  for (int i = 0; i < 50000; ++i) {
    live.push_back(ctx->Alloc(64));
    Fill(live.back(), 64, 9);
  }
  int n = 0;
  FreeShuffled(ctx, &live, &rng, [&n](void*) { return ++n % 500 == 0; });
  for (int i = 0; i < 20000; ++i) ctx->Free(ctx->Alloc(24));
  EXPECT_GT(counting.purges(), 0);
  EXPECT_EQ(counting.purged_bytes(), 0u);
  for (void* p : live) ASSERT_TRUE(Holds(p, 64, 9));
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(counting.live_blocks(), 0);
}

// The checks below are not optional: a double free is caught in every
// build, thanks to the header's free bit.
TEST(FreelistDeathTest, DoubleFreeIsReported) {
  Context* ctx = CreateFreelistContext(nullptr, "victim");
  void* p = ctx->Alloc(32);
  ctx->Free(p);
  EXPECT_DEATH(ctx->Free(p), "double free of chunk .* in context 'victim'");
  EXPECT_DEATH(mcx::Free(p), "already freed");
  ctx->Destroy();
}

// A pointer mcx never handed out fails loudly: its header holds no magic or
// a reserved kind id.
TEST(FreelistDeathTest, ForeignPointerIsReported) {
  Context* ctx = CreateFreelistContext(nullptr, "ctx");
  alignas(16) unsigned char buffer[64] = {};
  EXPECT_DEATH(mcx::Free(buffer + 16), "not a chunk allocated by mcx");
  EXPECT_DEATH(ctx->Free(buffer + 16), "not a chunk allocated by mcx");
  std::memset(buffer, 0x7F, sizeof(buffer));  // clobbered memory
  EXPECT_DEATH(mcx::GetChunkContext(buffer + 16), "not a chunk allocated by mcx");
  ctx->Destroy();
}

// --- Finding B2: misuse of a dedicated chunk (above chunk_limit) ------------
//
// A freed dedicated chunk's block is back at its source, which may write over
// its start: the process cache puts its own 16-byte node there, glibc its
// free-list words. The tests run every misuse on each kind of source, under a
// misuse handler that records the report and returns. The copying source
// has no Reallocate of its own: a realloc is a fresh block and a memcpy of
// the old one, which ASan checks byte by byte.

enum class SourceKind { kDefault, kSystem, kCounting, kCopying };

std::vector<std::string>* dedicated_reports = nullptr;

void RecordDedicatedMisuse(const char* message) { dedicated_reports->push_back(message); }

// Above chunk_limit (65,544 by default): a dedicated block.
constexpr size_t kDedicatedSize = 100000;

class DedicatedMisuseTest : public ::testing::TestWithParam<SourceKind> {
 protected:
  void SetUp() override {
    // ThreadSanitizer, as memcheck, reports the read of the freed block
    // that the double-free check makes on purpose.
    if (test::UnderMemcheck() || MCX_SANITIZE_THREAD) GTEST_SKIP() << "reads freed blocks on purpose";
    dedicated_reports = &reports_;
    previous_ = SetMisuseHandler(&RecordDedicatedMisuse);
  }
  void TearDown() override {
    if (previous_ != nullptr) SetMisuseHandler(previous_);
    dedicated_reports = nullptr;
  }

  Context* Make(const char* name = "fl") {
    ContextOptions co;
    if (GetParam() == SourceKind::kSystem) co.block_source = &system_;
    if (GetParam() == SourceKind::kCounting) co.block_source = &counting_;
    if (GetParam() == SourceKind::kCopying) co.block_source = &copying_;
    return CreateFreelistContext(nullptr, name, FreelistOptions(), co);
  }

  // The one report since the last call, which must name `p`; empty (and a
  // test failure) if there was none or more than one.
  std::string TakeOneNaming(const void* p) {
    EXPECT_EQ(reports_.size(), 1u) << (reports_.empty() ? std::string("no report") : reports_.back());
    std::string last = reports_.size() == 1 ? reports_.back() : std::string();
    reports_.clear();
    char address[32];
    std::snprintf(address, sizeof(address), "%p", p);
    EXPECT_NE(last.find(address), std::string::npos) << last;
    return last;
  }

  // Consistent, still usable (a dedicated chunk comes and goes), and every
  // block back at the source once destroyed.
  void ExpectSoundThenDestroy(Context* ctx) {
    std::string error;
    EXPECT_TRUE(ctx->Check(&error)) << error;
    void* q = ctx->Alloc(kDedicatedSize);
    Fill(q, kDedicatedSize, 9);
    EXPECT_TRUE(Holds(q, kDedicatedSize, 9));
    ctx->Free(q);
    EXPECT_TRUE(ctx->Check(&error)) << error;
    ctx->Destroy();
    EXPECT_TRUE(reports_.empty()) << reports_.front();
    EXPECT_EQ(counting_.live_blocks(), 0);
    EXPECT_EQ(counting_.bad_releases(), 0);
    EXPECT_EQ(copying_.live(), 0);
  }

  SystemBlockSource system_;
  CountingBlockSource counting_;
  test::ExactBlockSource copying_;
  std::vector<std::string> reports_;
  MisuseHandler previous_ = nullptr;
};

// ctx->Free twice: the second is reported as a double free, and the block is
// not given back a second time.
TEST_P(DedicatedMisuseTest, FindingB2ContextFreeTwiceIsReported) {
  Context* ctx = Make();
  void* p = ctx->Alloc(kDedicatedSize);
  Fill(p, kDedicatedSize, 1);
  ctx->Free(p);
  ctx->Free(p);
  std::string report = TakeOneNaming(p);
  if (!internal::kChecking) {
    EXPECT_NE(report.find("double free of chunk"), std::string::npos) << report;
    EXPECT_NE(report.find("'fl'"), std::string::npos) << report;
  }
  ExpectSoundThenDestroy(ctx);
}

// mcx::Free twice: the chunk kind's table finds no owner for a freed chunk.
TEST_P(DedicatedMisuseTest, FindingB2McxFreeTwiceIsReported) {
  Context* ctx = Make();
  void* p = ctx->Alloc(kDedicatedSize);
  mcx::Free(p);
  mcx::Free(p);
  EXPECT_NE(TakeOneNaming(p).find("freed"), std::string::npos);
  ExpectSoundThenDestroy(ctx);
}

// Two chunks of one size freed, then the second freed again: its block sits
// in the source behind the first one's.
TEST_P(DedicatedMisuseTest, FindingB2SecondOfTwoFreedChunksFreedAgainIsReported) {
  Context* ctx = Make();
  void* p1 = ctx->Alloc(kDedicatedSize);
  void* p2 = ctx->Alloc(kDedicatedSize);
  mcx::Free(p1);
  mcx::Free(p2);
  mcx::Free(p2);
  EXPECT_NE(TakeOneNaming(p2).find("freed"), std::string::npos);
  ctx->Free(p2);
  TakeOneNaming(p2);
  ExpectSoundThenDestroy(ctx);
}

// Realloc of a freed chunk, through the context and without it: reported,
// nullptr, and nothing is resized.
TEST_P(DedicatedMisuseTest, FindingB2ReallocAfterFreeIsReported) {
  Context* ctx = Make();
  void* p = ctx->Alloc(kDedicatedSize);
  ctx->Free(p);
  EXPECT_EQ(ctx->TryRealloc(p, 2 * kDedicatedSize), nullptr);
  EXPECT_EQ(ctx->last_failure(), Failure::kBadArgument);
  TakeOneNaming(p);
  EXPECT_EQ(mcx::TryRealloc(p, 2 * kDedicatedSize), nullptr);
  TakeOneNaming(p);
  EXPECT_EQ(mcx::Realloc(p, 2 * kDedicatedSize), nullptr);
  TakeOneNaming(p);
  EXPECT_EQ(counting_.reallocates(), 0);
  ExpectSoundThenDestroy(ctx);
}

// A dedicated chunk's old address after a realloc that moved it is a freed
// chunk: freeing or reallocating it is reported.
TEST_P(DedicatedMisuseTest, FindingB2OldAddressAfterAMovingReallocIsReported) {
  Context* ctx = Make();
  void* p = ctx->Alloc(kDedicatedSize);
  Fill(p, kDedicatedSize, 3);
  void* q = ctx->Realloc(p, 200 * kDedicatedSize);
  ASSERT_TRUE(Holds(q, kDedicatedSize, 3));
  if (q == p) {
    ctx->Destroy();
    GTEST_SKIP() << "the source grew the block in place";
  }
  ctx->Free(p);
  TakeOneNaming(p);
  mcx::Free(p);
  TakeOneNaming(p);
  EXPECT_TRUE(Holds(q, kDedicatedSize, 3));
  mcx::Free(q);
  ExpectSoundThenDestroy(ctx);
}

// A freed chunk whose block another context took for its own dedicated chunk
// (or whose block still sits in the source): freeing it through the first
// context is reported and leaves the other context's chunk alone.
TEST_P(DedicatedMisuseTest, FindingB2FreeAfterReuseByAnotherContextIsReported) {
  Context* a = Make("a");
  Context* b = Make("b");
  void* p = a->Alloc(kDedicatedSize);
  a->Free(p);
  void* q = b->Alloc(kDedicatedSize);  // often p's block again
  Fill(q, kDedicatedSize, 4);
  a->Free(p);
  TakeOneNaming(p);
  EXPECT_EQ(a->TryRealloc(p, 2 * kDedicatedSize), nullptr);
  TakeOneNaming(p);
  EXPECT_TRUE(Holds(q, kDedicatedSize, 4));
  EXPECT_EQ(GetChunkContext(q), b);
  b->Free(q);
  b->Destroy();
  ExpectSoundThenDestroy(a);
}

// A dedicated chunk of a context that was reset: freeing it is reported.
TEST_P(DedicatedMisuseTest, FindingB2FreeAfterResetIsReported) {
  Context* ctx = Make();
  void* p = ctx->Alloc(kDedicatedSize);
  ctx->Reset();
  ctx->Free(p);
  TakeOneNaming(p);
  mcx::Free(p);
  TakeOneNaming(p);
  ExpectSoundThenDestroy(ctx);
}

INSTANTIATE_TEST_SUITE_P(Sources, DedicatedMisuseTest,
                         ::testing::Values(SourceKind::kDefault, SourceKind::kSystem,
                                           SourceKind::kCounting, SourceKind::kCopying),
                         [](const ::testing::TestParamInfo<SourceKind>& info) {
                           switch (info.param) {
                             case SourceKind::kDefault: return std::string("Default");
                             case SourceKind::kSystem: return std::string("System");
                             case SourceKind::kCounting: return std::string("Counting");
                             case SourceKind::kCopying: return std::string("Copying");
                           }
                           return std::string();
                         });


// live_bytes() counts what the freelist holds for the program: a small
// chunk's class bytes, a dedicated chunk's bytes to its block's end (at
// least what was asked for). Checked against a model over random
// allocations, frees, reallocs across classes and into and out of dedicated
// blocks, resets and ResetPeak; the peak is the count's exact high-water mark.
TEST_F(FreelistTest, LiveBytesFollowTheChunksAgainstAModel) {
  FreelistOptions o;
  o.chunk_limit = 4096;
  Context* ctx = Make(o);
  const bool classes = !kDirectBuild;  // direct mode: every chunk dedicated
  std::mt19937 rng(20261206);
  struct Counted {
    size_t bytes;    // what the chunk counts for
    bool dedicated;  // in a block of its own
  };
  std::map<void*, Counted> counted;
  test::LiveCount model;
  auto size_of = [&] {
    const unsigned r = rng() % 16;
    return r == 0 ? 4097 + rng() % 20000 : 1 + rng() % 600;  // a few dedicated
  };
  auto expect_counted = [&](size_t size, size_t got) {
    EXPECT_GE(got, size);
    if (classes && size <= o.chunk_limit) {
      EXPECT_EQ(got, SizeClassBytes(SizeClassOf(size)));
    }
  };
  for (int step = 0; step < 20000; ++step) {
    const unsigned op = rng() % 100;
    const size_t before = ctx->live_bytes();
    if (op < 45 || counted.empty()) {
      const size_t size = size_of();
      void* p = ctx->Alloc(size);
      const size_t got = ctx->live_bytes() - before;
      expect_counted(size, got);
      counted[p] = Counted{got, !classes || size > o.chunk_limit};
      model.Add(got);
    } else if (op < 85) {
      auto it = std::next(counted.begin(), static_cast<long>(rng() % counted.size()));
      ctx->Free(it->first);
      model.Remove(it->second.bytes);
      counted.erase(it);
    } else if (op < 98) {
      auto it = std::next(counted.begin(), static_cast<long>(rng() % counted.size()));
      const size_t size = size_of();
      void* p = it->first;
      const size_t old = it->second.bytes;
      const bool was_dedicated = it->second.dedicated;
      counted.erase(it);
      void* q = ctx->Realloc(p, size);
      // Growth may jump past the class asked for; never below the request.
      const size_t got = ctx->live_bytes() + old - before;
      EXPECT_GE(got, size);
      const bool dedicated = !classes || size > o.chunk_limit;
      if (!dedicated) {
        EXPECT_EQ(got, SizeClassBytes(SizeClassOf(got)));
      }
      // A move into a new chunk holds both for a moment, and the peak says
      // so; a dedicated block resized by its source does not.
      if (q != p && !(was_dedicated && dedicated)) model.HeldBoth(before, got);
      counted[q] = Counted{got, dedicated};
      model.Remove(old);
      model.Add(got);
    } else if (op < 99) {
      ctx->Reset();
      counted.clear();
      model.Clear();
    } else {
      ctx->ResetPeak();
      model.ResetPeak();
    }
    ASSERT_TRUE(model.Matches(ctx)) << "step " << step;
  }
  ctx->Destroy();
}

}  // namespace
}  // namespace mcx
namespace mcx {
namespace {

// Contexts under a tight limit take small blocks whose last unit is short,
// and empty often (each empty is a sweep): chunks keep their contents and
// the context its consistency after every step, against a model of the
// live chunks. A run used up to the end of such a unit was once given back
// when the next run was taken from the same unit (RetireRun), so two chunks
// overlapped.
TEST(FreelistUnderALimitTest, ChunksStayIntactAgainstAModel) {
  for (const size_t limit_kib : {16, 32, 64}) {
    for (uint32_t seed = 77; seed < 85; ++seed) {
      SCOPED_TRACE(testing::Message() << limit_kib << " KiB, seed " << seed);
      test::CountingBlockSource source;
      Budget budget(limit_kib * 1024);
      ContextOptions co;
      co.block_source = &source;
      Context* root = Context::Create(nullptr, "tree", PoolKind(), co);
      ASSERT_EQ(root->TrySetBudget(&budget), Failure::kNone);
      std::mt19937 rng(seed);
      struct Live {
        unsigned char* p;
        size_t size;
        unsigned char fill;
      };
      std::vector<Live> live;
      Context* child = nullptr;
      for (int step = 0; step < 20000; ++step) {
        const unsigned op = rng() % 16;
        if (child == nullptr || (op == 0 && rng() % 8 == 0)) {
          if (child != nullptr) {
            live.clear();
            child->Destroy();
          }
          child = Context::TryCreate(root, "request", FreelistKind());
          continue;
        }
        if (op < 4 && !live.empty()) {
          const size_t k = rng() % live.size();
          for (size_t i = 0; i < live[k].size; ++i) {
            ASSERT_EQ(live[k].p[i], live[k].fill) << "step " << step;
          }
          child->Free(live[k].p);
          live[k] = live.back();
          live.pop_back();
        } else {
          const size_t size = 16 + rng() % (op == 15 ? 20000 : 600);
          auto* p = static_cast<unsigned char*>(child->TryAlloc(size));
          if (p == nullptr) {
            ASSERT_EQ(child->last_failure(), Failure::kLimit);
            continue;
          }
          const auto fill = static_cast<unsigned char>(rng());
          std::memset(p, fill, size);
          live.push_back({p, size, fill});
        }
        std::string error;
        ASSERT_TRUE(child->Check(&error)) << error << " step " << step;
      }
      root->Destroy();
      EXPECT_EQ(source.live_blocks(), 0);
    }
  }
}

}  // namespace
}  // namespace mcx
