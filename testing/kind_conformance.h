// File: mcx/testing/kind_conformance.h
//
// The semantics every kind must honour, as one typed test suite: a kind
// author instantiates it for a new kind and gets every shared rule checked
// (chunks, sizes and alignments, realloc, the reset modes, teardown order,
// cleanups, stats, limits, block-source failures, savepoints (rewound, or
// refused as the kind's method table says), a fault-injection sweep
// of a standard workload, and, for a kind with an inspect method, the
// invariants of inspect.h), always against a block source that counts every
// block.
//
// A kind is described by a traits struct: `Spec()`, the kind with the
// options to test, and two capabilities, which KindTraitsDefaults sets to
// what most kinds do:
//   kFreeReleasesSmall  Free of a small chunk makes its space reusable (the
//                       pool's small chunks stay until a reset: false)
//   kUnsizedRealloc     Realloc(p, n) works on small chunks (the kind knows
//                       their size)
// and, optionally, kContextFreeCalls: `mcx::Free(p)`, `GetChunkSize(p)` and
// `GetChunkContext(p)` work on its chunks without their context (a kind
// with chunk headers and a registered chunk id; default false), and
// kOddSizeAlignment: the alignment of chunks whose size is
// not a multiple of kDefaultAlignment asked for with at most that alignment
// (default kDefaultAlignment; a pool with PoolOptions::chunk_alignment 8
// packs them to 8), and kSourceBytes: the bytes the default block source
// can hand out at once, for a suite run over a bounded region (a buddy
// source, mcx/buddy/buddy_source.h, made the default). 0, the default, is
// no bound. Below kSuiteSourceBytes the few tests that hold the most (up to
// 4.1 MB of chunks live, over 8 MB of power-of-two blocks) hold
// proportionally fewer chunks and children, and the largest alignment
// checked is the largest whose chunk fits a quarter of the source: a
// kMaxAlignment chunk, its header before it, takes a block of twice
// kMaxAlignment, which a power-of-two source of 4 MiB can give only when
// nothing else is in it.
//
// Example, at namespace scope (a test that links //testing, or
// mcx::testing with CMake, and GoogleTest's main):
//
//   #include "mcx/testing/kind_conformance.h"
//
//   struct MyKindTraits : mcx::test::KindTraitsDefaults {
//     static mcx::KindSpec Spec() { return MyKind(MyOptions()); }
//   };
//   MCX_INSTANTIATE_KIND_CONFORMANCE_TEST(MyKind, MyKindTraits);
//
// Kind-specific behaviour (the pool's no-op free, the freelist's classes)
// is tested in each kind's own test file; sweep.h sweeps a workload of the
// kind's own.

#ifndef MCX_TESTING_KIND_CONFORMANCE_H_
#define MCX_TESTING_KIND_CONFORMANCE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/stats.h"
#include "mcx/testing/inspect_check.h"
#include "mcx/testing/patterns.h"
#include "mcx/testing/sweep.h"
#include "mcx/testing/test_block_sources.h"

// MCX_INSTANTIATE_KIND_CONFORMANCE_TEST(Prefix, Traits)
//
// Runs the suite for the kind `Traits` describes; its tests are named
// Prefix/KindConformanceTest/0.<test>. Use it at global namespace scope
// (GoogleTest's INSTANTIATE_TYPED_TEST_SUITE_P must name the suite
// unqualified, from its own namespace; this opens it).
#define MCX_INSTANTIATE_KIND_CONFORMANCE_TEST(Prefix, Traits) \
  namespace mcx {                                              \
  namespace test {                                             \
  INSTANTIATE_TYPED_TEST_SUITE_P(Prefix, KindConformanceTest, Traits); \
  }                                                            \
  }                                                            \
  static_assert(true, "")  // so that the macro takes a semicolon

namespace mcx {
namespace test {

// What most kinds can do; a traits struct derives from it and overrides
// what its kind cannot (a constant of the same name hides these).
struct KindTraitsDefaults {
  static constexpr bool kFreeReleasesSmall = true;
  static constexpr bool kUnsizedRealloc = true;
  static constexpr size_t kOddSizeAlignment = kDefaultAlignment;
  static constexpr size_t kSourceBytes = 0;
};

// The source bytes the suite's largest live sets are sized for: they fit a
// buddy region of this size (blocks round up to powers of two, and a free
// block of a size is found only where its whole buddy is free).
inline constexpr size_t kSuiteSourceBytes = size_t{16} << 20;
static_assert(2 * kMaxAlignment <= kSuiteSourceBytes / 4,
              "a kMaxAlignment chunk fits a quarter of kSuiteSourceBytes");

namespace conformance_internal {
template <typename T, typename = void>
struct OddSizeAlignment {
  static constexpr size_t kValue = kDefaultAlignment;
};
template <typename T>
struct OddSizeAlignment<T, std::void_t<decltype(T::kOddSizeAlignment)>> {
  static constexpr size_t kValue = T::kOddSizeAlignment;
};
template <typename T, typename = void>
struct ContextFreeCalls {
  static constexpr bool kValue = false;
};
template <typename T>
struct ContextFreeCalls<T, std::void_t<decltype(T::kContextFreeCalls)>> {
  static constexpr bool kValue = T::kContextFreeCalls;
};
template <typename T, typename = void>
struct SourceBytes {
  static constexpr size_t kValue = 0;
};
template <typename T>
struct SourceBytes<T, std::void_t<decltype(T::kSourceBytes)>> {
  static constexpr size_t kValue = T::kSourceBytes;
};
// The largest alignment a chunk placed after a header can have in a block
// of a quarter of the source (kMaxAlignment from kSuiteSourceBytes on).
constexpr size_t LargestAlignmentFor(size_t source_bytes) {
  size_t a = kMaxAlignment;
  while (a > kDefaultAlignment && 2 * a > source_bytes / 4) a /= 2;
  return a;
}
}  // namespace conformance_internal

// `n` (chunks, children, rounds) scaled to the kind's source: n itself for
// an unbounded source or one of at least kSuiteSourceBytes, else
// proportionally fewer, at least 1.
template <typename Traits>
constexpr size_t ScaledToSource(size_t n) {
  const size_t bytes = conformance_internal::SourceBytes<Traits>::kValue;
  if (bytes == 0 || bytes >= kSuiteSourceBytes) return n;
  const size_t scaled = n * (bytes / 1024) / (kSuiteSourceBytes / 1024);
  return scaled > 0 ? scaled : 1;
}

// The largest alignment the suite asks for: kMaxAlignment, or for a bounded
// source the largest that fits (kSourceBytes above).
template <typename Traits>
constexpr size_t LargestTestedAlignment() {
  const size_t bytes = conformance_internal::SourceBytes<Traits>::kValue;
  return bytes == 0 ? kMaxAlignment : conformance_internal::LargestAlignmentFor(bytes);
}

// The alignment a chunk of `n` bytes asked for with `alignment` must have.
template <typename Traits>
size_t ExpectedAlignment(size_t n, size_t alignment) {
  const size_t odd = conformance_internal::OddSizeAlignment<Traits>::kValue;
  if (alignment > kDefaultAlignment || n % kDefaultAlignment == 0 || odd >= alignment) {
    return alignment;
  }
  return odd;
}

template <typename Traits>
class KindConformanceTest : public ::testing::Test {
 protected:
  Context* NewRoot(const char* name = "root") {
    ContextOptions o;
    o.block_source = &source_;
    return Context::Create(nullptr, name, Traits::Spec(), o);
  }
  void ExpectConsistent(Context* ctx) {
    std::string error;
    EXPECT_TRUE(ctx->Check(&error)) << error;
  }

  FailingBlockSource source_;
};

TYPED_TEST_SUITE_P(KindConformanceTest);

// Live chunks never overlap and keep their contents while others come and go.
TYPED_TEST_P(KindConformanceTest, ChunksAreDistinctAndKeepContents) {
  Context* ctx = this->NewRoot();
  std::mt19937 rng(42);
  struct Live {
    void* p;
    size_t n;
    uint32_t seed;
  };
  std::vector<Live> live;
  const uint32_t chunks = static_cast<uint32_t>(ScaledToSource<TypeParam>(3000));
  for (uint32_t i = 0; i < chunks; ++i) {
    size_t n = (rng() % 8 == 0) ? 1 + rng() % 20000 : 1 + rng() % 300;
    void* p = ctx->Alloc(n);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % ExpectedAlignment<TypeParam>(n, kDefaultAlignment),
              0u);
    Fill(p, n, i);
    live.push_back({p, n, i});
  }
  for (const Live& l : live) ASSERT_TRUE(Holds(l.p, l.n, l.seed)) << l.n;
  std::sort(live.begin(), live.end(), [](const Live& a, const Live& b) { return a.p < b.p; });
  for (size_t i = 1; i < live.size(); ++i) {
    ASSERT_LE(static_cast<char*>(live[i - 1].p) + live[i - 1].n, static_cast<char*>(live[i].p));
  }
  this->ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_EQ(this->source_.live_blocks(), 0);
}

// Chunks freed and allocated again, at random, never overlap a live one:
// each live chunk keeps its contents through the churn (a free list that
// hands out a chunk still live, or a piece of one, breaks this).
TYPED_TEST_P(KindConformanceTest, ChunksKeepContentsThroughFreesAndReuse) {
  Context* ctx = this->NewRoot();
  std::mt19937 rng(7);
  struct Live {
    void* p;
    size_t n;
    uint32_t seed;
  };
  std::vector<Live> live;
  const uint32_t steps = static_cast<uint32_t>(ScaledToSource<TypeParam>(6000));
  for (uint32_t i = 0; i < steps; ++i) {
    if (!live.empty() && rng() % 2 == 0) {
      const size_t k = rng() % live.size();
      ASSERT_TRUE(Holds(live[k].p, live[k].n, live[k].seed)) << "step " << i;
      ctx->Free(live[k].p, live[k].n);
      live[k] = live.back();
      live.pop_back();
      continue;
    }
    const size_t n = (rng() % 16 == 0) ? 1 + rng() % 9000 : 1 + rng() % 400;
    void* p = ctx->Alloc(n);
    ASSERT_NE(p, nullptr);
    Fill(p, n, i);
    live.push_back({p, n, i});
  }
  for (const Live& l : live) ASSERT_TRUE(Holds(l.p, l.n, l.seed)) << l.n;
  this->ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_EQ(this->source_.live_blocks(), 0);
}

// ChunkSize, where the kind can tell, is at least the size asked for, and
// every byte it reports is the chunk's: written in full, in one order and
// then the other, no chunk's bytes or header are overwritten (a size that
// reaches into the next chunk breaks a neighbour's contents, the kind's
// Check, or a free). Aligned chunks too. With kContextFreeCalls, the
// context-free calls agree with the context's.
TYPED_TEST_P(KindConformanceTest, ChunkSizeIsAtLeastTheRequestAndAllUsable) {
  Context* ctx = this->NewRoot();
  struct Sized {
    void* p;
    size_t n;
    size_t usable;
  };
  std::vector<Sized> chunks;
  auto add = [&](void* p, size_t n) {
    ASSERT_NE(p, nullptr);
    const size_t usable = ctx->ChunkSize(p);
    if (usable == kUnknownSize) return;  // the kind cannot tell (a pool's small chunk)
    EXPECT_GE(usable, n) << "ChunkSize below the size asked for";
    if (conformance_internal::ContextFreeCalls<TypeParam>::kValue) {
      EXPECT_EQ(GetChunkSize(p), usable) << n;
      EXPECT_EQ(GetChunkContext(p), ctx) << n;
    }
    chunks.push_back({p, n, usable});
  };
  for (int round = 0; round < 3; ++round) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{15}, size_t{16},
                     size_t{17}, size_t{24}, size_t{100}, size_t{1000}, size_t{4096},
                     size_t{5000}, size_t{70000}}) {
      add(ctx->Alloc(n), n);
    }
    for (size_t a : {size_t{64}, size_t{256}, size_t{4096}}) add(ctx->AllocAligned(100, a), 100);
  }
  for (size_t i = 0; i < chunks.size(); ++i) Fill(chunks[i].p, chunks[i].usable, i);
  for (size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_TRUE(Holds(chunks[i].p, chunks[i].usable, i)) << chunks[i].n;
  }
  for (size_t i = chunks.size(); i-- > 0;) Fill(chunks[i].p, chunks[i].usable, i + 1000);
  for (size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_TRUE(Holds(chunks[i].p, chunks[i].usable, i + 1000)) << chunks[i].n;
  }
  this->ExpectConsistent(ctx);
  for (const Sized& c : chunks) {
    if (conformance_internal::ContextFreeCalls<TypeParam>::kValue) {
      Free(c.p);
    } else {
      ctx->Free(c.p);
    }
  }
  this->ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_EQ(this->source_.live_blocks(), 0);
}

// Size 0 gives a valid pointer, distinct from every other live chunk.
TYPED_TEST_P(KindConformanceTest, ZeroSizeAllocationsAreUnique) {
  Context* ctx = this->NewRoot();
  std::vector<void*> ptrs;
  for (int i = 0; i < 100; ++i) {
    void* p = ctx->Alloc(0);
    ASSERT_NE(p, nullptr);
    ptrs.push_back(p);
    ptrs.push_back(ctx->AllocBytes(0));
  }
  std::sort(ptrs.begin(), ptrs.end());
  EXPECT_EQ(std::adjacent_find(ptrs.begin(), ptrs.end()), ptrs.end());
  ctx->Destroy();
}

// Every power of two up to kMaxAlignment is honoured; others are refused.
TYPED_TEST_P(KindConformanceTest, AlignedAllocationHonoursAnyPowerOfTwo) {
  Context* ctx = this->NewRoot();
  for (size_t a = 1; a <= (size_t{1} << 16); a <<= 1) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{24}, size_t{5000}}) {
      void* p = ctx->AllocAligned(n, a);
      ASSERT_NE(p, nullptr);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % ExpectedAlignment<TypeParam>(n, a), 0u)
          << "alignment " << a;
      Fill(p, n, 3);
      EXPECT_TRUE(Holds(p, n, 3));
    }
  }
  const size_t largest = LargestTestedAlignment<TypeParam>();
  void* big = ctx->AllocAligned(100, largest);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(big) % largest, 0u);
  size_t blocks = ctx->num_blocks();
  for (size_t bad : {size_t{0}, size_t{3}, size_t{48}, kMaxAlignment * 2}) {
    EXPECT_EQ(ctx->TryAllocAligned(16, bad), nullptr);
    EXPECT_EQ(ctx->last_failure(), Failure::kBadAlignment);
    EXPECT_THROW(ctx->AllocAligned(16, bad), std::invalid_argument);
  }
  EXPECT_EQ(ctx->num_blocks(), blocks);
  this->ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_EQ(this->source_.live_blocks(), 0);
}

// Sizes that overflow are errors, not small allocations.
TYPED_TEST_P(KindConformanceTest, OverflowingSizesAreErrors) {
  Context* ctx = this->NewRoot();
  size_t blocks = ctx->num_blocks();
  for (size_t n : {kMaxAllocSize + 1, ~size_t{0}, ~size_t{0} - 7}) {
    EXPECT_EQ(ctx->TryAlloc(n), nullptr);
    EXPECT_EQ(ctx->last_failure(), Failure::kBadSize);
    EXPECT_EQ(ctx->TryAllocBytes(n), nullptr);
    EXPECT_EQ(ctx->TryAllocAligned(n, 64), nullptr);
    EXPECT_THROW(ctx->Alloc(n), std::bad_array_new_length);
  }
  EXPECT_EQ(ctx->TryAllocZeroArray(size_t{1} << 40, size_t{1} << 40), nullptr);
  EXPECT_EQ(ctx->last_failure(), Failure::kBadSize);
  EXPECT_THROW(ctx->AllocZeroArray(~size_t{0} / 2, 3), std::bad_array_new_length);
  EXPECT_EQ(ctx->num_blocks(), blocks);
  EXPECT_NE(ctx->Alloc(10), nullptr);  // still usable
  ctx->Destroy();
  EXPECT_EQ(this->source_.live_blocks(), 0);
}

// Zeroed allocation is zero even where memory was used before.
TYPED_TEST_P(KindConformanceTest, ZeroedAllocationIsZero) {
  Context* ctx = this->NewRoot();
  for (int round = 0; round < 3; ++round) {
    for (size_t n : {size_t{1}, size_t{17}, size_t{300}, size_t{9000}}) {
      auto* z = static_cast<unsigned char*>(ctx->AllocZero(n));
      EXPECT_TRUE(std::all_of(z, z + n, [](unsigned char c) { return c == 0; }));
      std::memset(z, 0xAB, n);
      auto* a = static_cast<unsigned char*>(ctx->AllocZeroArray(n, 3));
      EXPECT_TRUE(std::all_of(a, a + 3 * n, [](unsigned char c) { return c == 0; }));
      std::memset(a, 0xCD, 3 * n);
    }
    ctx->Reset();
  }
  ctx->Destroy();
}

// Sized realloc keeps min(old, new) bytes, growing and shrinking, small and
// large; unsized realloc does too where the kind supports it.
TYPED_TEST_P(KindConformanceTest, ReallocKeepsContents) {
  Context* ctx = this->NewRoot();
  size_t size = 5;
  void* p = ctx->Alloc(size);
  Fill(p, size, 9);
  for (size_t next : {size_t{40}, size_t{41}, size_t{700}, size_t{30000}, size_t{100000},
                      size_t{64}, size_t{3}, size_t{5000}}) {
    void* q = ctx->Realloc(p, size, next);
    ASSERT_NE(q, nullptr);
    EXPECT_TRUE(Holds(q, std::min(size, next), 9)) << size << " -> " << next;
    Fill(q, next, 9);
    p = q;
    size = next;
  }
  if (TypeParam::kUnsizedRealloc) {
    void* s = ctx->Alloc(10);
    Fill(s, 10, 4);
    s = ctx->Realloc(s, 2000);
    EXPECT_TRUE(Holds(s, 10, 4));
  }
  // Large chunks: every kind knows their size.
  void* big = ctx->Alloc(50000);
  Fill(big, 50000, 5);
  big = ctx->Realloc(big, 200000);
  EXPECT_TRUE(Holds(big, 50000, 5));
  EXPECT_EQ(ctx->Realloc(nullptr, 10) != nullptr, true);
  // To size 0: a chunk still (not C's free), which grows again.
  void* z = ctx->Alloc(100);
  Fill(z, 100, 6);
  z = ctx->Realloc(z, 100, 0);
  ASSERT_NE(z, nullptr);
  z = ctx->Realloc(z, 0, 300);
  ASSERT_NE(z, nullptr);
  Fill(z, 300, 6);
  ctx->Free(z, 300);
  this->ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_EQ(this->source_.live_blocks(), 0);
  EXPECT_EQ(this->source_.bad_releases(), 0);
}

// A failed realloc leaves the old chunk intact and the context usable.
TYPED_TEST_P(KindConformanceTest, FailedReallocLosesNothing) {
  Context* ctx = this->NewRoot();
  void* p = ctx->Alloc(100);
  Fill(p, 100, 2);
  this->source_.FailFrom(1);
  this->source_.FailReallocate(true);
  EXPECT_EQ(ctx->TryRealloc(p, 100, 1 << 20), nullptr);
  EXPECT_EQ(ctx->last_failure(), Failure::kOutOfMemory);
  EXPECT_THROW(ctx->Realloc(p, 100, 1 << 20), std::bad_alloc);
  EXPECT_TRUE(Holds(p, 100, 2));
  this->source_.Heal();
  void* q = ctx->Realloc(p, 100, 1 << 20);
  EXPECT_TRUE(Holds(q, 100, 2));
  // A chunk with a block of its own, whose realloc fails: intact, and still
  // live (its free is no double free).
  constexpr size_t kBig = 100000;  // above every kind's largest class
  void* big = ctx->Alloc(kBig);
  Fill(big, kBig, 8);
  this->source_.FailFrom(1);
  this->source_.FailReallocate(true);
  EXPECT_EQ(ctx->TryRealloc(big, kBig, 1 << 21), nullptr);
  EXPECT_EQ(ctx->last_failure(), Failure::kOutOfMemory);
  this->source_.Heal();
  EXPECT_TRUE(Holds(big, kBig, 8));
  ctx->Free(big, kBig);  // a double free would be reported (by default, abort)
  this->ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_EQ(this->source_.live_blocks(), 0);
}

// Reset keeps the first block by default and the context stays usable.
TYPED_TEST_P(KindConformanceTest, ResetEmptiesAndKeepsFirstBlock) {
  Context* ctx = this->NewRoot();
  const size_t first = ctx->first_block_size();
  EXPECT_EQ(ctx->bytes_in_blocks(), first);
  for (size_t i = 0, n = ScaledToSource<TypeParam>(2000); i < n; ++i) ctx->Alloc(100 + i % 900);
  for (int i = 0; i < 5; ++i) ctx->Alloc(100000);
  EXPECT_GT(ctx->num_blocks(), 5u);
  ctx->Reset();
  EXPECT_EQ(ctx->num_blocks(), 1u);
  EXPECT_EQ(ctx->bytes_in_blocks(), first);
  EXPECT_EQ(this->source_.live_blocks(), 1);
  this->ExpectConsistent(ctx);
  void* p = ctx->Alloc(64);
  Fill(p, 64, 1);
  EXPECT_TRUE(Holds(p, 64, 1));
  ctx->Reset(ResetOptions::ReleaseAll());
  EXPECT_EQ(ctx->num_blocks(), 1u);
  EXPECT_STREQ(ctx->name(), "root");
  ctx->Destroy();
  EXPECT_EQ(this->source_.live_blocks(), 0);
}

// kKeepBytes keeps whole blocks up to the budget, and reuses them.
TYPED_TEST_P(KindConformanceTest, ResetKeepBytesKeepsCapacity) {
  Context* ctx = this->NewRoot();
  for (int i = 0; i < 4000; ++i) ctx->Alloc(200);
  const size_t grown = ctx->bytes_in_blocks();
  const size_t budget = grown / 2;
  ctx->Reset(ResetOptions::KeepBytes(budget));
  EXPECT_LE(ctx->bytes_in_blocks(), std::max(budget, ctx->first_block_size()));
  // Direct mode gives every chunk a block of its own, which a reset does not
  // keep: there is no capacity to keep or reuse.
  if (!kDirectBuild) {
    EXPECT_GT(ctx->num_blocks(), 1u);
  }
  this->ExpectConsistent(ctx);
  const int64_t acquires = this->source_.acquires();
  const size_t kept = ctx->bytes_in_blocks();
  // Filling the kept capacity needs no new block.
  size_t filled = 0;
  while (filled + 200 + 64 < kept / 2) {
    ctx->Alloc(200);
    filled += 200 + 64;
  }
  if (!kDirectBuild) {
    EXPECT_EQ(this->source_.acquires(), acquires);
  }
  ctx->Reset(ResetOptions::KeepBytes(~size_t{0}));
  EXPECT_EQ(ctx->bytes_in_blocks(), kept);
  ctx->Destroy();
  EXPECT_EQ(this->source_.live_blocks(), 0);
}

// Destroy releases every block of every descendant, exactly as acquired.
TYPED_TEST_P(KindConformanceTest, DestroyReleasesEveryBlockOfTheSubtree) {
  Context* root = this->NewRoot();
  std::vector<Context*> all = {root};
  std::mt19937 rng(7);
  const size_t children = ScaledToSource<TypeParam>(60);
  for (size_t i = 0; i < children; ++i) {
    Context* parent = all[rng() % all.size()];
    Context* c = parent->CreateChild("child", TypeParam::Spec());
    all.push_back(c);
    for (int j = 0; j < 50; ++j) c->Alloc(1 + rng() % 2000);
    c->Alloc(20000 + rng() % 20000);
  }
  EXPECT_GT(this->source_.live_blocks(), static_cast<int64_t>(children) + 1);
  root->Destroy();
  EXPECT_EQ(this->source_.live_blocks(), 0);
  EXPECT_EQ(this->source_.bad_releases(), 0);
  EXPECT_EQ(this->source_.acquires(), this->source_.releases());
}

// Cleanups fire once each, in the documented order, across a tree.
TYPED_TEST_P(KindConformanceTest, CleanupsRunOnceInOrder) {
  Context* root = this->NewRoot();
  std::vector<std::string> log;
  struct Entry {
    std::vector<std::string>* log;
    std::string text;
  };
  auto add = [&log](Context* c, const char* text, CleanupPhase phase) {
    auto* e = new Entry{&log, text};
    c->AddCleanup(
        [](void* arg) {
          auto* e = static_cast<Entry*>(arg);
          e->log->push_back(e->text);
          delete e;
        },
        e, phase);
  };
  Context* a = root->CreateChild("a", TypeParam::Spec());
  Context* b = root->CreateChild("b", TypeParam::Spec());
  Context* a1 = a->CreateChild("a1", TypeParam::Spec());
  add(root, "root-before-1", CleanupPhase::kBeforeChildren);
  add(root, "root-before-2", CleanupPhase::kBeforeChildren);
  add(root, "root-after-1", CleanupPhase::kAfterChildren);
  add(root, "root-after-2", CleanupPhase::kAfterChildren);
  add(a, "a-before", CleanupPhase::kBeforeChildren);
  add(a, "a-after", CleanupPhase::kAfterChildren);
  add(a1, "a1-after", CleanupPhase::kAfterChildren);
  add(b, "b-after", CleanupPhase::kAfterChildren);
  root->Reset();
  const std::vector<std::string> expected = {
      "root-before-2", "root-before-1",  // before children, newest first
      "b-after",                          // newest child first, completely
      "a-before", "a1-after", "a-after",  // then the older child
      "root-after-2", "root-after-1",     // after children, newest first
  };
  EXPECT_EQ(log, expected);
  log.clear();
  root->Reset();  // all ran and were removed: nothing runs twice
  EXPECT_TRUE(log.empty());
  EXPECT_EQ(root->first_child(), nullptr);
  root->Destroy();
  EXPECT_EQ(this->source_.live_blocks(), 0);
}

// The counters add up: block bytes, free bytes, subtree totals.
TYPED_TEST_P(KindConformanceTest, StatsAddUp) {
  Context* root = this->NewRoot();
  Context* child = root->CreateChild("child", TypeParam::Spec());
  for (int i = 0; i < 500; ++i) {
    root->Alloc(64);
    child->Alloc(300);
  }
  child->Alloc(70000);
  ContextCounters r = GetCounters(root);
  ContextCounters c = GetCounters(child);
  EXPECT_EQ(r.total_bytes, root->bytes_in_blocks());
  EXPECT_EQ(r.blocks, root->num_blocks());
  EXPECT_LE(r.free_bytes, r.total_bytes);
  EXPECT_GE(c.used_bytes(), 500u * 300u + 70000u);
  ContextCounters sub = GetSubtreeCounters(root);
  EXPECT_EQ(sub.total_bytes, r.total_bytes + c.total_bytes);
  EXPECT_EQ(sub.blocks, r.blocks + c.blocks);
  EXPECT_EQ(sub.contexts, 2u);
  EXPECT_EQ(sub.total_bytes, root->SubtreeBytes());
  EXPECT_EQ(sub.total_bytes, this->source_.live_bytes());
  child->Destroy();
  EXPECT_EQ(root->SubtreeBytes(), root->bytes_in_blocks());
  // Freed chunks stop counting as used: as free bytes, or as blocks given
  // back (a kind whose small chunks stay until a reset is exempt).
  // In a context of their own, so that every block they lie in empties
  // (a generation context reuses a block's space only then).
  if (TypeParam::kFreeReleasesSmall) {
    Context* fresh = root->CreateChild("fresh", TypeParam::Spec());
    std::vector<void*> freed;
    for (int i = 0; i < 64; ++i) freed.push_back(fresh->Alloc(40));
    const size_t used = GetCounters(fresh).used_bytes();
    for (void* p : freed) fresh->Free(p, 40);
    EXPECT_LE(GetCounters(fresh).used_bytes() + 64u * 40u, used);
  }
  root->Destroy();
}

// When the block source fails, the call fails cleanly and nothing leaks.
TYPED_TEST_P(KindConformanceTest, SourceFailureLeavesContextUsable) {
  Context* ctx = this->NewRoot();
  void* keep = ctx->Alloc(40);
  Fill(keep, 40, 8);
  this->source_.FailFrom(1);
  int failed = 0;
  for (int i = 0; i < 1000; ++i) {
    if (ctx->TryAlloc(500) == nullptr) {
      ++failed;
      EXPECT_EQ(ctx->last_failure(), Failure::kOutOfMemory);
    }
  }
  EXPECT_GT(failed, 0);
  EXPECT_THROW(ctx->Alloc(100000), std::bad_alloc);
  // Too large for any block the context holds (as the Alloc above): 100
  // bytes could land in a held block whose free space happens to span an
  // address with the alignment.
  EXPECT_EQ(ctx->TryAllocAligned(100000, 4096 * 4), nullptr);
  EXPECT_EQ(Context::TryCreate(ctx, "child", TypeParam::Spec()), nullptr);
  EXPECT_THROW(ctx->CreateChild("child", TypeParam::Spec()), std::bad_alloc);
  this->ExpectConsistent(ctx);
  this->source_.Heal();
  EXPECT_TRUE(Holds(keep, 40, 8));
  EXPECT_NE(ctx->Alloc(100000), nullptr);
  ctx->Destroy();
  EXPECT_EQ(this->source_.live_blocks(), 0);
}

// A limit bounds the whole subtree's block bytes.
TYPED_TEST_P(KindConformanceTest, LimitBoundsTheSubtree) {
  Context* root = this->NewRoot();
  ASSERT_TRUE(root->SetLimit(256 * 1024).ok());
  Context* child = root->CreateChild("child", TypeParam::Spec());
  size_t got = 0;
  while (child->TryAlloc(1000) != nullptr) got += 1000;
  EXPECT_EQ(child->last_failure(), Failure::kLimit);
  EXPECT_GT(got, 100u * 1000u);
  EXPECT_LE(root->SubtreeBytes(), 256u * 1024u);
  EXPECT_THROW(child->Alloc(256 * 1024), std::bad_alloc);
  this->ExpectConsistent(child);
  child->Reset();
  EXPECT_NE(child->TryAlloc(1000), nullptr);  // room again
  root->Destroy();
  EXPECT_EQ(this->source_.live_blocks(), 0);
}

// Free of nullptr is a no-op; large chunks give their block back.
TYPED_TEST_P(KindConformanceTest, FreeOfLargeChunkReleasesItsBlock) {
  Context* ctx = this->NewRoot();
  ctx->Free(nullptr);
  const size_t blocks = ctx->num_blocks();
  void* big = ctx->Alloc(1 << 20);
  EXPECT_EQ(ctx->num_blocks(), blocks + 1);
  EXPECT_GE(ctx->ChunkSize(big), size_t{1} << 20);
  ctx->Free(big);
  EXPECT_EQ(ctx->num_blocks(), blocks);
  if (TypeParam::kFreeReleasesSmall && !kDirectBuild) {
    // Freed small chunks are reused: a churn of one size needs no new block
    // (in direct mode, every chunk is a block of its own).
    std::vector<void*> ptrs;
    for (int i = 0; i < 10; ++i) ptrs.push_back(ctx->Alloc(48));
    auto churn = [&](int rounds) {
      for (int round = 0; round < rounds; ++round) {
        for (void*& p : ptrs) {
          ctx->Free(p);
          p = ctx->Alloc(48);
        }
      }
    };
    churn(1000);  // reach the steady state
    const int64_t acquires = this->source_.acquires();
    churn(10000);
    EXPECT_EQ(this->source_.acquires(), acquires);
  }
  this->ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_EQ(this->source_.live_blocks(), 0);
}

// Inspect (for a kind that has the method) describes every byte of every
// block, through a churn of every size, frees, reallocs and both resets.
TYPED_TEST_P(KindConformanceTest, InspectDescribesEveryByte) {
  Context* ctx = this->NewRoot();
  if (!ExpectInspectAddsUp(ctx)) {
    ctx->Destroy();
    GTEST_SKIP() << "the kind has no inspect method";
  }
  std::mt19937 rng(11);
  struct Live {
    void* p;
    size_t n;
  };
  std::vector<Live> live;
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(testing::Message() << "round " << round);
    for (size_t i = 0, chunks = ScaledToSource<TypeParam>(1500); i < chunks; ++i) {
      const size_t n = i % 50 == 0 ? 20000 + rng() % 50000 : rng() % 400;
      void* p = i % 17 == 0 ? ctx->AllocAligned(n, 64) : ctx->Alloc(n);
      live.push_back({p, n});
      if (i % 3 == 0) {
        const size_t k = rng() % live.size();
        ctx->Free(live[k].p);
        live[k] = live.back();
        live.pop_back();
      } else if (i % 7 == 0) {
        Live& l = live[rng() % live.size()];
        const size_t grown = l.n + 1 + rng() % 3000;
        l.p = ctx->Realloc(l.p, l.n, grown);
        l.n = grown;
      }
    }
    ASSERT_TRUE(ExpectInspectAddsUp(ctx));
    live.clear();
    if (round == 0) {
      ctx->Reset(ResetOptions::KeepBytes(ctx->bytes_in_blocks() / 2));
    } else {
      ctx->Reset();
    }
    ASSERT_TRUE(ExpectInspectAddsUp(ctx));
  }
  ctx->Destroy();
  EXPECT_EQ(this->source_.live_blocks(), 0);
}

// Savepoints (Context::Mark, RewindTo): a kind supports them or refuses
// Mark cleanly, as its method table says. Where supported, a rewind
// returns to the mark: chunks from before it keep their contents, cleanups
// and children since go in teardown order, the counters, the subtree's
// bytes and the blocks held are those of the mark, nested marks behave as a
// stack and a passed mark is refused (kStaleMark), changing nothing.
TYPED_TEST_P(KindConformanceTest, SavepointsRewindOrRefuseClearly) {
  Context* ctx = this->NewRoot();
  std::vector<std::pair<void*, size_t>> before;
  for (uint32_t i = 0; i < 300; ++i) {
    const size_t n = i % 30 == 0 ? 20000 : 1 + i * 13 % 400;
    void* p = ctx->Alloc(n);
    Fill(p, n, i);
    before.emplace_back(p, n);
  }
  auto counters = [&] {
    return std::vector<size_t>{ctx->bytes_in_blocks(), ctx->num_blocks(), ctx->SubtreeBytes(),
                               GetCounters(ctx).free_bytes,
                               static_cast<size_t>(this->source_.live_blocks())};
  };
  const std::vector<size_t> unmarked = counters();
  Mark m = ctx->TryMark();
  if (!m) {
    // Refused: the table says so (or the options do), nothing changed, and
    // the throwing form throws std::invalid_argument.
    EXPECT_EQ(ctx->last_failure(), Failure::kUnsupported);
    EXPECT_THROW(ctx->Mark(), std::invalid_argument);
    EXPECT_EQ(counters(), unmarked);
    EXPECT_EQ(ctx->mark_depth(), 0u);
    EXPECT_NE(ctx->Alloc(100), nullptr);
    this->ExpectConsistent(ctx);
    ctx->Destroy();
    EXPECT_EQ(this->source_.live_blocks(), 0);
    return;
  }
  EXPECT_NE(ctx->kind()->rewind, nullptr);
  const std::vector<size_t> at_mark = counters();
  std::vector<std::string> log;
  auto add = [&log](Context* c, const char* text, CleanupPhase phase) {
    c->AddCleanup([&log, text] { log.emplace_back(text); }, phase);
  };
  add(ctx, "before", CleanupPhase::kBeforeChildren);
  Context* child = ctx->CreateChild("child", TypeParam::Spec());
  add(child, "child", CleanupPhase::kAfterChildren);
  add(ctx, "after", CleanupPhase::kAfterChildren);
  void* grown = ctx->Alloc(10);
  for (size_t size = 10; size < 100000; size *= 4) grown = ctx->Realloc(grown, size, size * 4);
  for (int i = 0; i < 2000; ++i) {
    void* p = i % 9 == 0 ? ctx->AllocAligned(1 + i % 3000, 128) : ctx->Alloc(1 + i % 700);
    std::memset(p, 0xEE, 1);
    if (i % 5 == 0) ctx->Free(p);
  }
  Mark inner = ctx->Mark();
  for (int i = 0; i < 500; ++i) ctx->Alloc(1 + i % 5000);
  ctx->RewindTo(m);
  EXPECT_EQ(log, (std::vector<std::string>{"before", "child", "after"}));
  EXPECT_EQ(ctx->first_child(), nullptr);
  EXPECT_EQ(counters(), at_mark);
  for (uint32_t i = 0; i < before.size(); ++i) {
    ASSERT_TRUE(Holds(before[i].first, before[i].second, i)) << i;
  }
  this->ExpectConsistent(ctx);
  EXPECT_EQ(ctx->TryRewindTo(inner), Failure::kStaleMark);
  EXPECT_THROW(ctx->RewindTo(inner), std::invalid_argument);
  EXPECT_EQ(counters(), at_mark);
  // The mark stays: allocate and rewind again.
  for (int i = 0; i < 1000; ++i) ctx->Alloc(1 + i % 900);
  ctx->RewindTo(m);
  EXPECT_EQ(counters(), at_mark);
  ctx->DropMark(m);
  EXPECT_EQ(ctx->mark_depth(), 0u);
  ctx->Destroy();
  EXPECT_EQ(this->source_.live_blocks(), 0);
  EXPECT_EQ(this->source_.bad_releases(), 0);
}

// Every block acquisition of a standard workload fails in turn
// (SweepFailures, sweep.h): each failure is std::bad_alloc, and the
// contexts stay consistent, usable and leak-free.
TYPED_TEST_P(KindConformanceTest, SweepFailsEveryAcquisitionCleanly) {
  const int acquisitions = SweepFailures(TypeParam::Spec(), [](Context* top) {
    Context* a = top->CreateChild("a", TypeParam::Spec());
    Context* b = a->CreateChild("b", TypeParam::Spec());
    std::vector<std::pair<Context*, void*>> live;
    for (int i = 0; i < 400; ++i) {
      Context* c = i % 2 != 0 ? a : b;
      const size_t n = i % 25 == 0 ? 30000 : 8 + static_cast<size_t>(i * 37 % 500);
      live.emplace_back(c, c->Alloc(n));
      if (i % 4 == 0) {
        auto victim = live.begin() + static_cast<std::ptrdiff_t>(live.size() / 2);
        victim->first->Free(victim->second);
        live.erase(victim);
      }
    }
    void* grown = a->Alloc(10);
    for (size_t size = 10; size < 200000; size *= 3) {
      grown = a->Realloc(grown, size, size * 3);
    }
    b->AllocAligned(100, 4096);
    b->Reset(ResetOptions::KeepBytes(16 * 1024));
    for (int i = 0; i < 200; ++i) b->Alloc(100);
    a->Reset();
    top->CreateChild("c", TypeParam::Spec())->Alloc(1000);
  });
  EXPECT_GT(acquisitions, 10) << "the workload should acquire many blocks";
}

REGISTER_TYPED_TEST_SUITE_P(KindConformanceTest, ChunksAreDistinctAndKeepContents,
                            ChunksKeepContentsThroughFreesAndReuse,
                            ChunkSizeIsAtLeastTheRequestAndAllUsable,
                            ZeroSizeAllocationsAreUnique, AlignedAllocationHonoursAnyPowerOfTwo,
                            OverflowingSizesAreErrors, ZeroedAllocationIsZero,
                            ReallocKeepsContents, FailedReallocLosesNothing,
                            ResetEmptiesAndKeepsFirstBlock, ResetKeepBytesKeepsCapacity,
                            DestroyReleasesEveryBlockOfTheSubtree, CleanupsRunOnceInOrder,
                            StatsAddUp, SourceFailureLeavesContextUsable, LimitBoundsTheSubtree,
                            FreeOfLargeChunkReleasesItsBlock, InspectDescribesEveryByte,
                            SavepointsRewindOrRefuseClearly, SweepFailsEveryAcquisitionCleanly);

}  // namespace test
}  // namespace mcx

#endif  // MCX_TESTING_KIND_CONFORMANCE_H_
