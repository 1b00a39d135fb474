// The kind API's method table builder (kind_api.h): what MakeKindMethods
// puts in the table for a kind's optional members, the allocation slow
// path it builds from Alloc and AllocFast, with both failure modes of the
// tree behind it, and the creation it composes with the kind's FirstBlock
// and Init (internal/create.h), against the tree's generic creation.

#include "mcx/context/kind_api.h"

#include <cstddef>
#include <cstring>
#include <new>

#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/internal/checking.h"
#include "mcx/testing/test_block_sources.h"

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

// One of an optional pair (Live, ResetPeak) or of the savepoint trio
// (Position, Mark, Rewind) without the others is a compile error in
// MakeKindMethods (its static_asserts read these), not a pair quietly left
// out of the table.
struct LiveOnlyKind : NoFastKind {
  static void Live(const Context*, const State*, LiveCounts*) {}
};
struct LivePairKind : LiveOnlyKind {
  static void ResetPeak(Context*, State*) {}
};
struct MarkOnlyKind : NoFastKind {
  struct Position {
    char* at;
  };
  static bool Mark(Context*, State*, Position*) { return false; }
};
static_assert(!kind_internal::kLivePairWhole<LiveOnlyKind>, "Live without ResetPeak");
static_assert(kind_internal::kLivePairWhole<LivePairKind>, "both");
static_assert(kind_internal::kLivePairWhole<NoFastKind>, "neither");
static_assert(!kind_internal::kSavepointsWhole<MarkOnlyKind>, "Mark without Rewind");
static_assert(kind_internal::kSavepointsWhole<NoFastKind>, "none");
constexpr KindMethods kLivePairMethods = MakeKindMethods<LivePairKind>();

TEST(KindApiTest, AWholeOptionalPairIsInTheTable) {
  EXPECT_NE(kLivePairMethods.live, nullptr);
  EXPECT_NE(kLivePairMethods.reset_peak, nullptr);
  EXPECT_EQ(kNoFastMethods.live, nullptr);
}

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

// --- The composed creation ----------------------------------------------------

// Refuses its options (an arena of 0 bytes) in Init, after the tree has
// placed the header: the tree must release the first block.
struct RefusingKind : NoFastKind {
  static constexpr const char* kName = "refusing";
  static bool Init(Context* ctx, State* st, const Options& o, char* space, char* end) {
    *st = State{space, end, o.fast_limit, 0, 0, 0};
    if (o.arena_bytes != 0) return true;
    SetFailure(ctx, Failure::kBadArgument);
    return false;
  }
};
constexpr KindMethods kRefusingMethods = MakeKindMethods<RefusingKind>();

// Where a context's state says its space starts and ends, from the context.
struct Placement {
  size_t space;
  size_t end;
};
Placement PlacementOf(Context* ctx) {
  const auto* base = reinterpret_cast<const char*>(ctx);
  return Placement{static_cast<size_t>(StateOf(ctx)->ptr - base),
                   static_cast<size_t>(StateOf(ctx)->end - base)};
}

TEST(KindApiTest, TheTableComposesTheCreationOfAChild) {
  EXPECT_EQ(kCountingMethods.create_child, &kind_internal::Trampolines<CountingKind>::CreateChild);
  EXPECT_EQ(kNoFastMethods.create_child, &kind_internal::Trampolines<NoFastKind>::CreateChild);
}

// A child made with default options (the composed creation) is placed as one
// made with options that say nothing (the generic creation): the same header
// bytes, first block, name, state and link, for names of every length the
// name copy treats apart.
TEST(KindApiTest, TheComposedCreationPlacesAChildAsTheGenericOne) {
  SystemBlockSource system;  // exact sizes: no kept block's slack to differ by
  test::CountingBlockSource source(&system);
  ContextOptions root_options;
  root_options.block_source = &source;
  Context* root = Context::Create(nullptr, "root", KindSpec(&kCountingMethods,
                                  CountingOptions{1024, 64}), root_options);
  const KindSpec kind(&kCountingMethods, CountingOptions{3000, 64});
  const std::string long_name(300, 'n');
  for (const char* name : {"", "a", "abc", "abcd", "abcdefg", "abcdefgh", "abcdefghijklmno",
                           "abcdefghijklmnop", "abcdefghijklmnopq", long_name.c_str()}) {
    SCOPED_TRACE(std::strlen(name));
    const int64_t before = source.acquires();
    Context* composed = Context::Create(root, name, kind);
    Context* generic = Context::Create(root, name, kind, ContextOptions());
    EXPECT_EQ(source.acquires(), before + 2);  // one block each
    EXPECT_STREQ(composed->name(), name);
    EXPECT_STREQ(generic->name(), name);
    EXPECT_EQ(composed->header_bytes(), generic->header_bytes());
    EXPECT_EQ(composed->first_block_size(), generic->first_block_size());
    EXPECT_EQ(PlacementOf(composed).space, PlacementOf(generic).space);
    EXPECT_EQ(PlacementOf(composed).end, PlacementOf(generic).end);
    EXPECT_EQ(PlacementOf(composed).space, composed->header_bytes());
    EXPECT_EQ(composed->parent(), root);
    EXPECT_EQ(root->first_child(), generic);  // children are linked at the head
    EXPECT_EQ(generic->next_sibling(), composed);
    // Both work, and hold what they were given.
    for (Context* ctx : {composed, generic}) {
      auto* p = static_cast<char*>(ctx->Alloc(100));
      std::memset(p, 0x5a, 100);
      EXPECT_EQ(p[99], 0x5a);
      EXPECT_EQ(ctx->bytes_in_blocks(), composed->first_block_size());
    }
    generic->Destroy();
    composed->Destroy();
  }
  root->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
  EXPECT_EQ(source.bad_releases(), 0);
}

// A table filled without the composed creation (a kind's own table) still
// creates through the generic one.
TEST(KindApiTest, ATableWithoutTheComposedCreationStillCreates) {
  KindMethods methods = kCountingMethods;
  methods.create_child = nullptr;
  Context* root = Context::Create(nullptr, "root", KindSpec(&methods, CountingOptions{512, 64}));
  Context* child = root->CreateChild("child", KindSpec(&methods, CountingOptions{512, 64}));
  EXPECT_EQ(child->parent(), root);
  EXPECT_STREQ(child->name(), "child");
  EXPECT_NE(child->Alloc(64), nullptr);
  root->Destroy();
}

// What the composed creation hands to the generic one, or fails itself, is
// refused the same way, and nothing leaks: a block the source fails, an
// Init that refuses its options after the header is placed, a missing name,
// a limit on the parent (charged by the generic creation alone).
TEST(KindApiTest, TheComposedCreationFailsAsTheGenericOne) {
  SystemBlockSource system;
  test::FailingBlockSource source(&system);
  ContextOptions root_options;
  root_options.block_source = &source;
  Context* root = Context::Create(nullptr, "root", KindSpec(&kCountingMethods,
                                  CountingOptions{512, 64}), root_options);
  const KindSpec kind(&kCountingMethods, CountingOptions{512, 64});
  for (bool generic : {false, true}) {
    SCOPED_TRACE(generic ? "generic" : "composed");
    auto try_create = [&](const char* name, const KindSpec& k) {
      return generic ? Context::TryCreate(root, name, k, ContextOptions())
                     : Context::TryCreate(root, name, k);
    };
    source.FailNth(1);
    EXPECT_EQ(try_create("failed", kind), nullptr);
    EXPECT_EQ(root->last_failure(), Failure::kOutOfMemory);
    source.FailNth(1);
    EXPECT_THROW(generic ? Context::Create(root, "thrown", kind, ContextOptions())
                         : Context::Create(root, "thrown", kind),
                 std::bad_alloc);
    source.Heal();

    const int64_t live = source.live_blocks();
    EXPECT_EQ(try_create("refused", KindSpec(&kRefusingMethods, CountingOptions{0, 64})),
              nullptr);
    EXPECT_EQ(root->last_failure(), Failure::kBadArgument);
    EXPECT_EQ(source.live_blocks(), live);  // the refused child's block went back

    EXPECT_EQ(try_create(nullptr, kind), nullptr);
    EXPECT_EQ(root->last_failure(), Failure::kBadArgument);
    EXPECT_EQ(root->first_child(), nullptr);

    // A limit the child's block would cross (the side record that keeps it
    // fits).
    const absl::Status limited = root->SetLimit(root->SubtreeBytes() + kHeaderAllowance / 2);
    ASSERT_TRUE(limited.ok()) << limited;
    EXPECT_EQ(try_create("over", kind), nullptr);
    EXPECT_EQ(root->last_failure(), Failure::kLimit);
    ASSERT_TRUE(root->SetLimit(kNoLimit).ok());
    Context* child = try_create("fits", kind);
    ASSERT_NE(child, nullptr);
    EXPECT_EQ(root->first_child(), child);
    child->Destroy();
  }
  root->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
  EXPECT_EQ(source.bad_releases(), 0);
}

}  // namespace
}  // namespace mcx
