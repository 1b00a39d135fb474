// The kind API's method table builder (kind_api.h): what MakeKindMethods
// puts in the table for a kind's optional members, and the allocation slow
// path it builds from Alloc and AllocFast, with both failure modes of the
// tree behind it.

#include "mcx/context/kind_api.h"

#include <cstddef>
#include <cstring>
#include <new>

#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/internal/checking.h"

namespace mcx {
namespace {

// A kind that bumps through its first block and nothing else: AllocFast
// serves requests up to `fast_limit` bytes, Alloc the rest, until the block
// is full (kOutOfMemory). The counters say which member served what.
struct CountingOptions {
  size_t arena_bytes;
  size_t fast_limit;
};

struct CountingState {
  char* ptr;
  char* end;
  size_t fast_limit;
  int fast_calls;
  int fast_served;
  int alloc_calls;
};

// Room for the context header, the state and the name, besides the arena.
constexpr size_t kHeaderAllowance = 1024;

// The kind without AllocFast.
struct NoFastKind {
  using Options = CountingOptions;
  using State = CountingState;
  static constexpr const char* kName = "no_fast";

  static size_t FirstBlockSize(const Options& o, size_t header_bytes) {
    return header_bytes + kHeaderAllowance + o.arena_bytes;
  }
  static bool Init(Context*, State* st, const Options& o, char* space, char* end) {
    *st = State{space, end, o.fast_limit, 0, 0, 0};
    return true;
  }
  static void* Bump(State* st, size_t size) {
    const size_t rounded = (size + kDefaultAlignment - 1) & ~(kDefaultAlignment - 1);
    if (static_cast<size_t>(st->end - st->ptr) < rounded) return nullptr;
    void* p = st->ptr;
    st->ptr += rounded;
    return p;
  }
  static void* Alloc(Context* ctx, State* st, size_t size, size_t alignment) {
    ++st->alloc_calls;
    void* p = alignment > kDefaultAlignment ? nullptr : Bump(st, size);
    if (p == nullptr) SetFailure(ctx, Failure::kOutOfMemory);
    return p;
  }
  static void Free(Context*, State*, void*) {}
  static void* Realloc(Context* ctx, State*, void*, size_t, size_t) {
    SetFailure(ctx, Failure::kUnsupported);
    return nullptr;
  }
  static size_t ChunkSize(const Context*, const State*, const void*) { return kUnknownSize; }
  static void Reset(Context*, State*, const ResetOptions&) {}
  static void ReleaseAll(Context*, State*) {}
  static void Stats(const Context*, const State*, KindStats*) {}
  static bool Check(const Context*, const State*, std::string*) { return true; }
};

// The kind with AllocFast.
struct CountingKind : NoFastKind {
  static constexpr const char* kName = "counting";
  static void* AllocFast(Context*, State* st, size_t size, size_t alignment) {
    ++st->fast_calls;
    if (size > st->fast_limit || alignment > kDefaultAlignment) return nullptr;
    void* p = Bump(st, size);
    if (p != nullptr) ++st->fast_served;
    return p;
  }
};

constexpr KindMethods kCountingMethods = MakeKindMethods<CountingKind>();
constexpr KindMethods kNoFastMethods = MakeKindMethods<NoFastKind>();

// The tree runs AllocFast only where it takes the one-call slow path:
// release builds (checking and Valgrind builds guard and mark each chunk
// around the kind's Alloc).
constexpr bool kOneCallSlowPath = !internal::kChecking && !MCX_VALGRIND;

// The table's two entries (kind.h): the call throws, or returns nullptr.
constexpr int kThrowIndex = 0;
constexpr int kNoThrowIndex = 1;

CountingState* StateOf(Context* ctx) { return KindState<CountingState>(ctx); }

TEST(KindApiTest, TheTableHasBothFailureModesWithOrWithoutAllocFast) {
  using Counting = kind_internal::Trampolines<CountingKind>;
  using NoFast = kind_internal::Trampolines<NoFastKind>;
  EXPECT_EQ(kCountingMethods.alloc_or_refuse[kThrowIndex], &Counting::AllocOrRefuse<0>);
  EXPECT_EQ(kCountingMethods.alloc_or_refuse[kNoThrowIndex], &Counting::AllocOrRefuse<1>);
  EXPECT_EQ(kNoFastMethods.alloc_or_refuse[kThrowIndex], &NoFast::AllocThenRefuse<0>);
  EXPECT_EQ(kNoFastMethods.alloc_or_refuse[kNoThrowIndex], &NoFast::AllocThenRefuse<1>);
}

TEST(KindApiTest, AllocFastServesWhatItCanAndAllocTheRest) {
  Context* ctx = Context::Create(nullptr, "counting",
                                 KindSpec(&kCountingMethods, CountingOptions{4096, 64}));
  CountingState* st = StateOf(ctx);
  auto* small = static_cast<char*>(ctx->Alloc(48));
  std::memset(small, 0x11, 48);
  auto* large = static_cast<char*>(ctx->Alloc(200));
  std::memset(large, 0x22, 200);
  EXPECT_EQ(small + 48, large);  // 48 is a multiple of the alignment
  EXPECT_EQ(small[47], 0x11);
  if (kOneCallSlowPath) {
    EXPECT_EQ(st->fast_calls, 2);
    EXPECT_EQ(st->fast_served, 1);
    EXPECT_EQ(st->alloc_calls, 1);  // only the request AllocFast turned down
  } else {
    EXPECT_EQ(st->fast_calls, 0);
    EXPECT_EQ(st->alloc_calls, 2);
  }
  ctx->Destroy();
}

TEST(KindApiTest, AFailedAllocAfterAllocFastThrowsOrReturnsNull) {
  for (const KindMethods* methods : {&kCountingMethods, &kNoFastMethods}) {
    SCOPED_TRACE(methods->name);
    Context* ctx = Context::Create(nullptr, "full", KindSpec(methods, CountingOptions{256, 64}));
    CountingState* st = StateOf(ctx);
    // Fill the arena (and whatever slack the source gave the first block).
    while (ctx->TryAlloc(16) != nullptr) {
    }
    EXPECT_EQ(ctx->last_failure(), Failure::kOutOfMemory);
    const int alloc_calls = st->alloc_calls;
    EXPECT_EQ(ctx->TryAlloc(32), nullptr);
    EXPECT_EQ(ctx->last_failure(), Failure::kOutOfMemory);
    EXPECT_THROW(ctx->Alloc(32), std::bad_alloc);
    EXPECT_EQ(st->alloc_calls, alloc_calls + 2);  // AllocFast's nullptr went on to Alloc
    // Still usable: an aligned request goes the same way and fails the same.
    EXPECT_EQ(ctx->TryAllocAligned(32, 64), nullptr);
    ctx->Destroy();
  }
}

}  // namespace
}  // namespace mcx
