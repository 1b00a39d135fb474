// File: mcx/context/kind_api.h
//
// Everything a kind author needs, in one header: how a leaf allocator
// ("kind") plugs into the context tree. Users never include it; they meet a
// kind as a `KindSpec` (kind.h). PostgreSQL draws the same line between
// palloc.h/memutils.h (users) and memutils_internal.h (kinds).
//
// Contract for a kind (docs/adding_a_kind.md walks through it):
//   - The context header lives at the start of the context's first block;
//     the kind's state follows it, then the name, then the kind's own space
//     ([space, block_end) in Init). Every other block the kind holds comes
//     from `AcquireBlock` and goes back with `ReleaseBlock` (the ledger keeps
//     accounting, limits and the reserve right). A kind never calls a block
//     source itself.
//   - Alloc returns nullptr after recording the reason with `SetFailure`; it
//     never throws. Size 0 returns a unique pointer. Sizes are already
//     checked against kMaxAllocSize; alignments are powers of two no larger
//     than kMaxAlignment.
//   - Reset empties the context and releases blocks per ResetOptions, keeping
//     the first block; ReleaseAll releases every block except the first (the
//     tree releases the first block itself). Neither may fail.
//   - Free, Realloc and ChunkSize of a pointer the kind did not hand out, or
//     handed out and took back, report misuse (`ReportMisuse`) rather than
//     crash, where the kind can tell.
//   - In direct mode (`kDirectBuild`), every request goes down the kind's own
//     path for chunks that take a block of their own (nginx's
//     NGX_DEBUG_PALLOC), so that AddressSanitizer sees each chunk alone.
//   - Kinds whose chunks carry a chunk header (chunk_header.h) register their
//     id with `RegisterChunkKind` in Init, so `mcx::Free(p)` can dispatch.
//   - Inspect is optional: it describes every block and size class to an
//     `InspectVisitor` (inspect.h) without changing anything.
//   - AllocFast is optional: the part of Alloc that serves a request
//     without a call that can fail (a pop from a freelist, a chunk carved
//     from room already held), or returns nullptr having changed nothing,
//     and Alloc is called next. The tree's allocation slow path runs it
//     first, so that serving a request there saves no registers; a kind
//     whose every Alloc needs a block (or whose fast path is the bump
//     window) leaves it out.
//   - Allocation sites (checking builds): a kind that keeps a header on its
//     chunks there stores `PendingSite(ctx)` (4 bytes) with each chunk it
//     hands out in Alloc or moves in Realloc, and optionally offers
//     VisitLiveChunks, which reports every live chunk with its requested
//     bytes and site to a `LiveChunkVisitor`: LiveChunksReport and leak
//     reports (live_chunks.h) are built on it. A kind without it shows as
//     "not recorded" there. Checking builds keep no bump window, so every
//     allocation reaches the kind.
//   - Savepoints are optional: a kind that can return to a saved position
//     declares `using Position = ...;` (trivially copyable), `Mark` (records
//     the position; given nullptr, only says whether it can, or refuses with
//     SetFailure, changing nothing) and `Rewind` (releases every
//     chunk and block handed out since; cannot fail). MakeKindMethods puts
//     them in the table; a kind without them refuses Context::Mark with
//     kUnsupported. The tree does the rest: cleanups, children, validation.
//
// Example (the shape of a kind; examples/slab_kind is a whole one):
//
//   struct Bump {                    // a kind is a class of static members
//     using Options = BumpOptions;   // trivially copyable, as KindSpec holds it
//     using State = BumpState;       // lives after the context header
//     static constexpr const char* kName = "bump";
//     static size_t FirstBlockSize(const Options& o, size_t header_bytes, size_t learned);
//     static bool Init(Context* ctx, State* st, const Options& o, char* space, char* end);
//     static void* Alloc(Context* ctx, State* st, size_t size, size_t alignment);
//     static void Free(Context* ctx, State* st, void* p);
//     static void* Realloc(Context* ctx, State* st, void* p, size_t old_size, size_t new_size);
//     static size_t ChunkSize(const Context* ctx, const State* st, const void* p);
//     static void Reset(Context* ctx, State* st, const ResetOptions& options);
//     static void ReleaseAll(Context* ctx, State* st);
//     static void Stats(const Context* ctx, const State* st, KindStats* out);
//     static bool Check(const Context* ctx, const State* st, std::string* error);
//     // Optional: Inspect (inspect.h), VisitLiveChunks (below), FirstBlockAlignment,
//     // AllocFast (same signature as Alloc).
//     // Optional: savepoints (Context::Mark, RewindTo).
//     using Position = BumpPosition;
//     static bool Mark(Context* ctx, State* st, Position* at);
//     static void Rewind(Context* ctx, State* st, const Position& at);
//   };
//   constexpr mcx::KindMethods kBumpMethods = mcx::MakeKindMethods<Bump>();
//   mcx::KindSpec BumpKind(const BumpOptions& o) { return mcx::KindSpec(&kBumpMethods, o); }
//
// Interface:
//   KindMethods, MakeKindMethods<Kind>()   the method table, and its builder
//   KindStats                              what Stats reports
//   LiveCounts, LiveTally                  what the optional Live reports,
//                                          and the tally that keeps it
//   AcquireBlock, ReleaseBlock, ReallocateBlock, SetFailure
//                                          the block ledger
//   PurgeBlockBytes                        free pages of a held block back
//                                          to the system
//   SetBumpWindow, BumpPointer             the inline fast path's window
//   KindState<State>, LearnedFirstBlockSize, FirstBlockOutgrown,
//   FirstBlockNeededFromLive, FirstBlockLearns
//                                          the first block
//   ChunkKindMethods, RegisterChunkKind    chunk ids (chunk_header.h)
//   SiteId, PendingSite, LiveChunkVisitor  allocation sites (checking builds)
//   ReportMisuse, ReportBadChunk           misuse reports
//   PoisonMemoryRegion, UnpoisonMemoryRegion, CopyFromPoisoned,
//   CopyToPoisoned, IsPoisoned             sanitizer and Valgrind hooks
//   kCheckingBuild, kDirectBuild, kAddressSanitizerBuild, kValgrindBuild,
//   kClobberByte, kSentinelByte            the build and its checks
//   AllocAlignedRedirect and friends       over-aligned chunks for kinds
//                                          with chunk headers (chunk.h)
//   block_list.h                           blocks on lists: link, unlink,
//                                          walk, release, reset

#ifndef MCX_CONTEXT_KIND_API_H_
#define MCX_CONTEXT_KIND_API_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "mcx/context/block_source.h"
#include "mcx/context/chunk.h"
#include "mcx/context/chunk_header.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/failure.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/context/kind.h"
#include "mcx/context/remote_free.h"
#include "mcx/context/site.h"

namespace mcx {

class InspectVisitor;

// --- Allocation sites (checking builds) ----------------------------------------

// Sites are 32-bit ids (site.h); kUnknownSiteId is "none recorded".
using internal::kUnknownSiteId;
using internal::SiteId;

// What a kind's VisitLiveChunks reports: every chunk handed out and not
// freed (nor released by a reset), its payload address (what Alloc
// returned), the bytes requested for it, and the site it was stored with.
class LiveChunkVisitor {
 public:
  virtual void VisitChunk(const void* chunk, size_t requested_bytes, SiteId site) = 0;

 protected:
  ~LiveChunkVisitor() = default;
};

// --- The method table ----------------------------------------------------------

// KindStats and KindMethods, the method table, are declared in kind.h
// (a context holds a pointer to its kind's table); build a table with
// MakeKindMethods below.

// Where the kind state may start in the first block: after the context
// header and the first block's size, which the tree keeps there (in the
// header's second cache line, which a release reads anyway).
inline constexpr size_t kKindStateStart = sizeof(Context) + sizeof(size_t);

// The kind state that follows the context header in the first block.
template <typename State>
State* KindState(Context* ctx) {
  constexpr size_t kAlign = alignof(State);
  // A context sits at the start of its first block: with the alignment
  // known, the offset is a constant.
  auto* base = static_cast<char*>(__builtin_assume_aligned(ctx, kMinBlockAlignment));
  constexpr size_t kOffset = (kKindStateStart + kAlign - 1) & ~(kAlign - 1);
  return reinterpret_cast<State*>(base + kOffset);
}

template <typename State>
const State* KindState(const Context* ctx) {
  return KindState<State>(const_cast<Context*>(ctx));
}

namespace kind_internal {

// Detection of a kind's members, for MakeKindMethods.
template <typename K, typename = void>
struct HasInspect : std::false_type {};
template <typename K>
struct HasInspect<K, std::void_t<decltype(&K::Inspect)>> : std::true_type {};
template <typename K, typename = void>
struct HasVisitLiveChunks : std::false_type {};
template <typename K>
struct HasVisitLiveChunks<K, std::void_t<decltype(&K::VisitLiveChunks)>> : std::true_type {};
template <typename K, typename = void>
struct HasLive : std::false_type {};
template <typename K>
struct HasLive<K, std::void_t<decltype(&K::Live), decltype(&K::ResetPeak)>> : std::true_type {};
template <typename K, typename = void>
struct HasFirstBlockAlignment : std::false_type {};
template <typename K>
struct HasFirstBlockAlignment<K, std::void_t<decltype(&K::FirstBlockAlignment)>>
    : std::true_type {};
template <typename K, typename = void>
struct HasAllocFast : std::false_type {};
template <typename K>
struct HasAllocFast<K, std::void_t<decltype(&K::AllocFast)>> : std::true_type {};
template <typename K, typename = void>
struct HasPlainAlignment : std::false_type {};
template <typename K>
struct HasPlainAlignment<K, std::void_t<decltype(&K::PlainAlignment)>> : std::true_type {};
template <typename K, typename = void>
struct HasRequestedSize : std::false_type {};
template <typename K>
struct HasRequestedSize<K, std::void_t<decltype(&K::RequestedSize)>> : std::true_type {};
template <typename K, typename = void>
struct HasRewind : std::false_type {};
template <typename K>
struct HasRewind<K, std::void_t<decltype(&K::Rewind)>> : std::true_type {};
// Each half of the optional pairs alone, so that a half without the other
// is a compile error rather than a pair quietly left out.
template <typename K, typename = void>
struct HasLiveMember : std::false_type {};
template <typename K>
struct HasLiveMember<K, std::void_t<decltype(&K::Live)>> : std::true_type {};
template <typename K, typename = void>
struct HasResetPeakMember : std::false_type {};
template <typename K>
struct HasResetPeakMember<K, std::void_t<decltype(&K::ResetPeak)>> : std::true_type {};
template <typename K, typename = void>
struct HasMarkMember : std::false_type {};
template <typename K>
struct HasMarkMember<K, std::void_t<decltype(&K::Mark)>> : std::true_type {};
template <typename K, typename = void>
struct HasPositionType : std::false_type {};
template <typename K>
struct HasPositionType<K, std::void_t<typename K::Position>> : std::true_type {};
// Whether each optional pair (trio) is all there or all absent.
template <typename K>
inline constexpr bool kLivePairWhole = HasLiveMember<K>::value == HasResetPeakMember<K>::value;
template <typename K>
inline constexpr bool kSavepointsWhole = HasMarkMember<K>::value == HasRewind<K>::value &&
                                         HasPositionType<K>::value == HasRewind<K>::value;

// What a kind's failed allocation becomes (Context::AllocRefused): a soft
// limit's callback or a report request and a retry, or the failure path.
ABSL_ATTRIBUTE_NOINLINE void* AllocRefused(Context* ctx, size_t size, size_t alignment,
                                           unsigned flags);

// The one place a Context* becomes a kind's state and options.
template <typename K>
struct Trampolines {
  using State = typename K::State;
  using Options = typename K::Options;
  static const Options& OptionsOf(const void* o) { return *static_cast<const Options*>(o); }

  // The kind's FirstBlockSize and FirstBlockAlignment in one call: a
  // context's creation makes one indirect call for both.
  static FirstBlockSpec FirstBlock(const void* o, size_t header_bytes, size_t learned) {
    size_t size;
    if constexpr (std::is_same_v<decltype(&K::FirstBlockSize),
                                 size_t (*)(const Options&, size_t, size_t)>) {
      size = K::FirstBlockSize(OptionsOf(o), header_bytes, learned);
    } else {
      (void)learned;
      size = K::FirstBlockSize(OptionsOf(o), header_bytes);
    }
    if constexpr (HasFirstBlockAlignment<K>::value) {
      return FirstBlockSpec{size, K::FirstBlockAlignment(OptionsOf(o), size)};
    } else {
      return FirstBlockSpec{size, kMinBlockAlignment};
    }
  }
  static bool Init(Context* ctx, const void* o, char* space, char* end) {
    return K::Init(ctx, KindState<State>(ctx), OptionsOf(o), space, end);
  }
  // FirstBlock and Init inlined into the tree's creation (internal/create.h).
  static Context* CreateChild(Context* parent, const char* name, size_t name_len,
                              const KindSpec& kind, unsigned flags);
  // Out of line for AllocThenRefuse too, so that the kind's own slow paths
  // stay tail calls.
  ABSL_ATTRIBUTE_NOINLINE static void* Alloc(Context* ctx, size_t size, size_t alignment) {
    return K::Alloc(ctx, KindState<State>(ctx), size, alignment);
  }
  // The allocation slow path of the tree (Context::AllocSlow and
  // TryAllocSlow: `kFlags` is Context's AllocFlags), as one tail call. A
  // kind's AllocFast makes no call that can fail, so that AllocOrRefuse
  // saves no registers when it serves the request; anything else goes on to
  // AllocThenRefuse, which is the whole path of a kind without AllocFast.
  template <unsigned kFlags>
  static void* AllocOrRefuse(Context* ctx, size_t size, size_t alignment) {
    void* p = K::AllocFast(ctx, KindState<State>(ctx), size, alignment);
    if (ABSL_PREDICT_TRUE(p != nullptr)) return p;
    return AllocThenRefuse<kFlags>(ctx, size, alignment);
  }
  template <unsigned kFlags>
  ABSL_ATTRIBUTE_NOINLINE static void* AllocThenRefuse(Context* ctx, size_t size,
                                                       size_t alignment) {
    void* p = Alloc(ctx, size, alignment);
    if (ABSL_PREDICT_TRUE(p != nullptr)) return p;
    return AllocRefused(ctx, size, alignment, kFlags);
  }
  static void Free(Context* ctx, void* p) { K::Free(ctx, KindState<State>(ctx), p); }
  static void* Realloc(Context* ctx, void* p, size_t old_size, size_t new_size) {
    return K::Realloc(ctx, KindState<State>(ctx), p, old_size, new_size);
  }
  static size_t ChunkSize(const Context* ctx, const void* p) {
    return K::ChunkSize(ctx, KindState<State>(ctx), p);
  }
  static void Reset(Context* ctx, const ResetOptions& options) {
    K::Reset(ctx, KindState<State>(ctx), options);
  }
  static void ReleaseAll(Context* ctx) { K::ReleaseAll(ctx, KindState<State>(ctx)); }
  static void Stats(const Context* ctx, KindStats* out) {
    K::Stats(ctx, KindState<State>(ctx), out);
  }
  static bool Check(const Context* ctx, std::string* error) {
    return K::Check(ctx, KindState<State>(ctx), error);
  }
  static void Inspect(const Context* ctx, InspectVisitor* visitor) {
    K::Inspect(ctx, KindState<State>(ctx), visitor);
  }
  static void VisitLiveChunks(const Context* ctx, LiveChunkVisitor* visitor) {
    K::VisitLiveChunks(ctx, KindState<State>(ctx), visitor);
  }
  static void Live(const Context* ctx, LiveCounts* out) {
    K::Live(ctx, KindState<State>(ctx), out);
  }
  static void ResetPeak(Context* ctx) { K::ResetPeak(ctx, KindState<State>(ctx)); }
  static size_t PlainAlignment(const Context* ctx, size_t size) {
    return K::PlainAlignment(ctx, KindState<State>(ctx), size);
  }
  static size_t RequestedSize(const Context* ctx, const void* p) {
    return K::RequestedSize(ctx, KindState<State>(ctx), p);
  }
  template <typename Position>
  static bool Mark(Context* ctx, void* position) {
    return K::Mark(ctx, KindState<State>(ctx), static_cast<Position*>(position));
  }
  template <typename Position>
  static void Rewind(Context* ctx, const void* position) {
    K::Rewind(ctx, KindState<State>(ctx), *static_cast<const Position*>(position));
  }
};

}  // namespace kind_internal

// LiveTally
//
// The count of live bytes a kind keeps for `Live` (O(1)): Add when a chunk
// is handed out, Remove when it comes back, with its exact high-water mark.
// It keeps the mark and the headroom below it rather than the count, so
// that a free is one add to memory and an allocation one subtract and a
// branch that is taken only when the mark rises (the count is the mark less
// the headroom).
class LiveTally {
 public:
  void Add(size_t n) {
    if (ABSL_PREDICT_FALSE((headroom_ -= static_cast<int64_t>(n)) < 0)) RaisePeak();
  }
  void Remove(size_t n) { headroom_ += static_cast<int64_t>(n); }
  // Whether no byte is live: the headroom is the whole mark.
  bool Empty() const { return headroom_ == static_cast<int64_t>(peak_); }
  void Clear() { headroom_ = static_cast<int64_t>(peak_); }
  void ResetPeak() {
    peak_ = live();
    headroom_ = 0;
  }
  size_t live() const { return peak_ - static_cast<size_t>(headroom_); }
  size_t peak() const { return peak_; }
  void Report(LiveCounts* out) const {
    out->live_bytes = live();
    out->peak_live_bytes = peak();
  }

 private:
  // Out of line, reading the headroom again: the allocation path keeps a
  // subtract to memory and a branch.
  ABSL_ATTRIBUTE_NOINLINE void RaisePeak() {
    peak_ += static_cast<size_t>(-headroom_);
    headroom_ = 0;
  }

  size_t peak_ = 0;
  int64_t headroom_ = 0;  // the peak less the count: never negative between calls
};

// MakeKindMethods<Kind>()
//
// The method table of a kind written as a class of static members (the
// example at the top). A missing or mistyped required member is a compile
// error naming it, as LLVM's AllocatorBase checks its implementers; Inspect,
// VisitLiveChunks, Live with ResetPeak (the O(1) count of live bytes, see
// LiveTally), FirstBlockAlignment (default: kMinBlockAlignment),
// PlainAlignment (KindMethods::plain_alignment; for a kind that packs
// chunks below kDefaultAlignment) and RequestedSize
// (KindMethods::requested_size; checking builds) are optional, and
// FirstBlockSize may leave out `learned` (a kind that sizes its first
// block itself).
template <typename K>
constexpr KindMethods MakeKindMethods() {
  using State = typename K::State;
  using Options = typename K::Options;
  static_assert(std::is_trivially_copyable_v<Options> && sizeof(Options) <= KindSpec::kMaxOptionsSize,
                "Kind::Options must be trivially copyable and fit a KindSpec");
  static_assert(alignof(State) <= kMinBlockAlignment,
                "Kind::State may not need more alignment than a block has");
  static_assert(kind_internal::kLivePairWhole<K>,
                "Kind::Live and Kind::ResetPeak come together: define both or neither");
  static_assert(kind_internal::kSavepointsWhole<K>,
                "Kind::Position, Kind::Mark and Kind::Rewind come together: all or none");
  static_assert(
      std::is_same_v<decltype(&K::FirstBlockSize), size_t (*)(const Options&, size_t, size_t)> ||
          std::is_same_v<decltype(&K::FirstBlockSize), size_t (*)(const Options&, size_t)>,
      "Kind::FirstBlockSize(const Options&, size_t header_bytes[, size_t learned]) -> size_t");
  static_assert(
      std::is_same_v<decltype(&K::Init), bool (*)(Context*, State*, const Options&, char*, char*)>,
      "Kind::Init(Context*, State*, const Options&, char* space, char* end) -> bool");
  static_assert(std::is_same_v<decltype(&K::Alloc), void* (*)(Context*, State*, size_t, size_t)>,
                "Kind::Alloc(Context*, State*, size_t size, size_t alignment) -> void*");
  static_assert(std::is_same_v<decltype(&K::Free), void (*)(Context*, State*, void*)>,
                "Kind::Free(Context*, State*, void*)");
  static_assert(
      std::is_same_v<decltype(&K::Realloc), void* (*)(Context*, State*, void*, size_t, size_t)>,
      "Kind::Realloc(Context*, State*, void*, size_t old_size, size_t new_size) -> void*");
  static_assert(
      std::is_same_v<decltype(&K::ChunkSize), size_t (*)(const Context*, const State*, const void*)>,
      "Kind::ChunkSize(const Context*, const State*, const void*) -> size_t");
  static_assert(
      std::is_same_v<decltype(&K::Reset), void (*)(Context*, State*, const ResetOptions&)>,
      "Kind::Reset(Context*, State*, const ResetOptions&)");
  static_assert(std::is_same_v<decltype(&K::ReleaseAll), void (*)(Context*, State*)>,
                "Kind::ReleaseAll(Context*, State*)");
  static_assert(
      std::is_same_v<decltype(&K::Stats), void (*)(const Context*, const State*, KindStats*)>,
      "Kind::Stats(const Context*, const State*, KindStats*)");
  static_assert(std::is_same_v<decltype(&K::Check),
                               bool (*)(const Context*, const State*, std::string*)>,
                "Kind::Check(const Context*, const State*, std::string*) -> bool");
  using T = kind_internal::Trampolines<K>;
  void (*inspect)(const Context*, InspectVisitor*) = nullptr;
  if constexpr (kind_internal::HasInspect<K>::value) {
    static_assert(std::is_same_v<decltype(&K::Inspect),
                                 void (*)(const Context*, const State*, InspectVisitor*)>,
                  "Kind::Inspect(const Context*, const State*, InspectVisitor*)");
    inspect = &T::Inspect;
  }
  void (*visit_live_chunks)(const Context*, LiveChunkVisitor*) = nullptr;
  if constexpr (kind_internal::HasVisitLiveChunks<K>::value) {
    static_assert(std::is_same_v<decltype(&K::VisitLiveChunks),
                                 void (*)(const Context*, const State*, LiveChunkVisitor*)>,
                  "Kind::VisitLiveChunks(const Context*, const State*, LiveChunkVisitor*)");
    visit_live_chunks = &T::VisitLiveChunks;
  }
  void (*live)(const Context*, LiveCounts*) = nullptr;
  void (*reset_peak)(Context*) = nullptr;
  if constexpr (kind_internal::HasLive<K>::value) {
    static_assert(std::is_same_v<decltype(&K::Live),
                                 void (*)(const Context*, const State*, LiveCounts*)>,
                  "Kind::Live(const Context*, const State*, LiveCounts*)");
    static_assert(std::is_same_v<decltype(&K::ResetPeak), void (*)(Context*, State*)>,
                  "Kind::ResetPeak(Context*, State*)");
    live = &T::Live;
    reset_peak = &T::ResetPeak;
  }
  void* (*alloc_or_refuse[2])(Context*, size_t, size_t) = {&T::template AllocThenRefuse<0>,
                                                           &T::template AllocThenRefuse<1>};
  if constexpr (kind_internal::HasAllocFast<K>::value) {
    static_assert(
        std::is_same_v<decltype(&K::AllocFast), void* (*)(Context*, State*, size_t, size_t)>,
        "Kind::AllocFast(Context*, State*, size_t size, size_t alignment) -> void*");
    alloc_or_refuse[0] = &T::template AllocOrRefuse<0>;
    alloc_or_refuse[1] = &T::template AllocOrRefuse<1>;
  }
  size_t mark_size = 0;
  bool (*mark)(Context*, void*) = nullptr;
  void (*rewind)(Context*, const void*) = nullptr;
  if constexpr (kind_internal::HasRewind<K>::value) {
    using Position = typename K::Position;
    static_assert(std::is_trivially_copyable_v<Position> && alignof(Position) <= kDefaultAlignment,
                  "Kind::Position must be trivially copyable, aligned at most to "
                  "kDefaultAlignment");
    static_assert(std::is_same_v<decltype(&K::Mark), bool (*)(Context*, State*, Position*)>,
                  "Kind::Mark(Context*, State*, Position*) -> bool");
    static_assert(
        std::is_same_v<decltype(&K::Rewind), void (*)(Context*, State*, const Position&)>,
        "Kind::Rewind(Context*, State*, const Position&)");
    mark_size = sizeof(Position);
    mark = &T::template Mark<Position>;
    rewind = &T::template Rewind<Position>;
  }
  KindMethods methods{K::kName,
                     sizeof(State),
                     alignof(State),
                     &T::FirstBlock,
                     &T::Init,
                     &T::Alloc,
                     {alloc_or_refuse[0], alloc_or_refuse[1]},
                     &T::Free,
                     &T::Realloc,
                     &T::ChunkSize,
                     &T::Reset,
                     &T::ReleaseAll,
                     &T::Stats,
                     &T::Check,
                     inspect,
                     visit_live_chunks,
                     live,
                     reset_peak,
                     mark_size,
                     mark,
                     rewind};
  methods.create_child = &T::CreateChild;
  if constexpr (kind_internal::HasPlainAlignment<K>::value) {
    static_assert(std::is_same_v<decltype(&K::PlainAlignment),
                                 size_t (*)(const Context*, const State*, size_t)>,
                  "Kind::PlainAlignment(const Context*, const State*, size_t size) -> size_t");
    methods.plain_alignment = &T::PlainAlignment;
  }
  if constexpr (kind_internal::HasRequestedSize<K>::value) {
    static_assert(std::is_same_v<decltype(&K::RequestedSize),
                                 size_t (*)(const Context*, const State*, const void*)>,
                  "Kind::RequestedSize(const Context*, const State*, const void* p) -> size_t");
    methods.requested_size = &T::RequestedSize;
  }
  return methods;
}

// --- Chunk ids -----------------------------------------------------------------------

// Methods reached from a chunk header when no context is named.
struct ChunkKindMethods {
  const char* name;
  // The context that owns a live chunk (misuse is reported for a freed one);
  // mcx::Free and mcx::Realloc then go through that context.
  Context* (*chunk_context)(const void* p);
  size_t (*chunk_size)(const void* p);
  // Optional (nullptr: mcx::Free goes through chunk_context and the
  // context's Free). Frees a chunk with no context named, reading its
  // header once for the owner and the free, as the owner's free or, from
  // another thread, its remote free. Release builds only: checking and
  // Valgrind builds go through the context, whose checks apply.
  void (*free)(void* p) = nullptr;
};

// Makes chunks with header id `id` dispatchable from `mcx::Free(p)`. Call it
// from Init: idempotent and thread-safe for the same table. An id that is
// reserved (chunk_header.h), or taken by another table, is refused: false,
// and a misuse report naming the kind that holds it. Two kinds must never
// share an id, or each would free the other's chunks.
bool RegisterChunkKind(unsigned id, const ChunkKindMethods* methods);
const ChunkKindMethods* LookupChunkKind(unsigned id);

// --- The block ledger ----------------------------------------------------------

namespace internal {

// The kind API's access to the context (its friend).
struct KindAccess {
  static void* AcquireBlock(Context* ctx, size_t min_size, size_t alignment, size_t* actual,
                            size_t usable_size) {
    return ctx->AcquireBlock(min_size, alignment, actual, usable_size);
  }
  static void ReleaseBlock(Context* ctx, void* block, size_t size) {
    ctx->ReleaseBlock(block, size);
  }
  static Block ReallocateBlock(Context* ctx, Block block, size_t keep, size_t new_min_size,
                               size_t alignment) {
    return ctx->ReallocateBlock(block, keep, new_min_size, alignment);
  }
  static void SetFailure(Context* ctx, Failure failure) { ctx->last_failure_ = failure; }
  static Failure LastFailure(const Context* ctx) { return ctx->last_failure_; }
  static void WithdrawRefusal(Context* ctx, Failure before) { ctx->WithdrawRefusal(before); }
  static void* AllocRefused(Context* ctx, size_t size, size_t alignment, unsigned flags) {
    return ctx->AllocRefused(size, alignment, flags);
  }
  static void SetBumpWindow(Context* ctx, char* ptr, char* end, size_t max) {
    ctx->SetBumpWindow(ptr, end, max);
  }
  static char* BumpPointer(const Context* ctx) { return ctx->bump_ptr_; }
  static SiteId PendingSite(const Context* ctx) {
#if MCX_CHECKING
    return ctx->pending_site_.load(std::memory_order_relaxed);
#else
    (void)ctx;
    return kUnknownSiteId;
#endif
  }
  static void FirstBlockOutgrown(Context* ctx, size_t needed) {
    ctx->FirstBlockOutgrown(needed);
  }
  static bool FirstBlockLearns(const Context* ctx) { return ctx->FirstBlockLearns(); }
  static bool MakeSideRecord(Context* ctx) { return ctx->Extras() != nullptr; }
};

}  // namespace internal

// A block of at least `min_size` bytes, after the limit checks; nullptr
// (with the failure recorded) on failure. `*actual` receives its real size,
// which is what ReleaseBlock must be given back. When the source fails, a
// reserve block of at least `usable_size` bytes (the least the kind can work
// with; 0: `min_size`) is handed out instead.
//
// A refusal is also how a soft limit's callback (pressure.h) and a report
// request (report_request.h) get to run: the ledger refuses the block with
// kLimit, the kind fails its call with nothing changed, as for any refusal,
// and the front of the call runs them outside the kind and calls the kind
// again. Blocks asked for in alloc and realloc may be refused this way
// (their callers retry; a kind never retries a refusal itself); blocks asked
// for in init never are.
inline void* AcquireBlock(Context* ctx, size_t min_size, size_t alignment, size_t* actual,
                          size_t usable_size = 0) {
  return internal::KindAccess::AcquireBlock(ctx, min_size, alignment, actual, usable_size);
}

inline void ReleaseBlock(Context* ctx, void* block, size_t size) {
  internal::KindAccess::ReleaseBlock(ctx, block, size);
}

// Resizes a block through the source (a chunk that is a block of its own),
// keeping its first `keep` bytes. Returns the new block or an empty one
// (with the failure recorded); the old block is then untouched. Accounting
// follows.
inline Block ReallocateBlock(Context* ctx, Block block, size_t keep, size_t new_min_size,
                             size_t alignment) {
  return internal::KindAccess::ReallocateBlock(ctx, block, keep, new_min_size, alignment);
}

// Says that [from, from + bytes), inside a block the context holds, is free
// space the kind will not read: the block source may give its whole pages
// back to the operating system (BlockSource::Purge), so resident memory
// follows the live data while the block stays. The bytes stay usable and
// read as zero or as they were; sanitizer and Valgrind marks do not change
// (free space stays poisoned). Accounting does not change either: the block
// is still held. Returns the bytes given back (0 from a source that keeps
// its pages). A system call: for slow paths and space that stays free.
inline size_t PurgeBlockBytes(Context* ctx, void* from, size_t bytes) {
  return ctx->block_source()->Purge(from, bytes);
}

// Records why a kind's call is about to return nullptr (Context::Fail then
// reports it).
inline void SetFailure(Context* ctx, Failure failure) {
  internal::KindAccess::SetFailure(ctx, failure);
}

// For a kind that can serve a call without a block the ledger refused with
// kLimit (a chunk that grows within room the kind already holds rather
// than in a block of its own): takes the refusal back, so the call succeeds
// with last_failure() as it was (`before`, read before the acquisition),
// and a soft limit's callback or report request that refused the block
// waits for the next block. Not for kOutOfMemory: the source's failure is
// reported.
inline Failure LastFailure(const Context* ctx) { return internal::KindAccess::LastFailure(ctx); }
inline void WithdrawRefusal(Context* ctx, Failure before) {
  internal::KindAccess::WithdrawRefusal(ctx, before);
}

// The site of the allocation the kind is serving (the caller of Alloc,
// Realloc, ...), to store with the chunk. Checking builds only: elsewhere
// kUnknownSiteId, and nothing need be stored.
inline SiteId PendingSite(const Context* ctx) { return internal::KindAccess::PendingSite(ctx); }

// --- The first block -------------------------------------------------------------

// Room for a few small chunks in the smallest first block the tree chooses:
// a child that holds one or two strings needs no second block, and a
// million such children cost their header and this, not a page each.
inline constexpr size_t kSmallFirstBlockRoom = 192;

// The first block of a kind whose options leave its size to the tree (see
// kDefaultFirstBlockSize): `learned`, but at least the header, `kind_bytes`
// the kind keeps in its first block, and kSmallFirstBlockRoom, rounded up to
// a cache line.
inline size_t LearnedFirstBlockSize(size_t header_bytes, size_t kind_bytes, size_t learned) {
  constexpr size_t kLine = 64;
  size_t least = (header_bytes + kind_bytes + kSmallFirstBlockRoom + kLine - 1) & ~(kLine - 1);
  return learned > least ? learned : least;
}

// Tells the tree that `ctx` needed a block beyond its first one: `needed`
// is the first block that would have held what `ctx` keeps there and the
// request that did not fit (the first block's size and the request, when
// the kind cannot say closer). Kinds call it where they acquire a block to
// carry on allocating (not for a chunk that gets a block of its own): the
// contexts created after it under its parent and every ancestor, whose kind
// leaves the first block to the tree, then start with `needed` rounded up
// to 64 bytes, up to kDefaultFirstBlockSize.
inline void FirstBlockOutgrown(Context* ctx, size_t needed) {
  internal::KindAccess::FirstBlockOutgrown(ctx, needed);
}
// `needed` for FirstBlockOutgrown from what a kind counts in O(1): the
// larger of `ctx`'s first block and its header with `live_bytes` (what
// the kind holds in chunks, where it keeps such a count; 0 otherwise),
// and the request. For kinds whose first block holds more than their
// chunks (layout, chunk headers) or that cannot say how much of it is used.
inline size_t FirstBlockNeededFromLive(const Context* ctx, size_t live_bytes, size_t request) {
  const size_t first = ctx->first_block_size();
  const size_t held = ctx->header_bytes() + live_bytes;
  return (held > first ? held : first) + request;
}
// Whether FirstBlockOutgrown(ctx, ...) can still teach anything: false for
// a root, and once the parent starts its children at the default. A kind
// whose `needed` costs more than a few loads asks first.
inline bool FirstBlockLearns(const Context* ctx) {
  return internal::KindAccess::FirstBlockLearns(ctx);
}

// Makes the context's side record (cleanups, limits, budgets) now rather
// than on first use. A kind whose contexts many threads use at once calls
// it from Init, so that the record never appears while other threads walk
// the tree through the context. False (failure recorded) if it cannot be
// had.
inline bool MakeSideRecord(Context* ctx) { return internal::KindAccess::MakeSideRecord(ctx); }

// --- The bump window -------------------------------------------------------------

// The inline fast path (Context::Alloc) bumps inside [ptr, end) for requests
// of 1..max bytes without calling the kind. A kind that publishes a window
// must treat BumpPointer() as the authoritative next free byte of that range
// (and read it back before it looks at the block itself).
inline void SetBumpWindow(Context* ctx, char* ptr, char* end, size_t max) {
  internal::KindAccess::SetBumpWindow(ctx, ptr, end, max);
}
inline char* BumpPointer(const Context* ctx) { return internal::KindAccess::BumpPointer(ctx); }

// --- Misuse, sanitizers and the build ------------------------------------------------

// One formatted line to the misuse handler (failure.h); returns only if a
// test handler returns:
//   void ReportMisuse(const char* format, ...);   // printf's format
using internal::ReportMisuse;
// A bad chunk header, reported with what the header says:
//   void ReportBadChunk(const void* p, const char* operation);
using internal::ReportBadChunk;

// AddressSanitizer and Valgrind annotations; no-ops in other builds. Poison
// block space not handed out and freed chunks; unpoison exactly what Alloc
// hands out (what ChunkSize reports); read and write the kind's own words
// in poisoned memory (a freelist link, a sentinel) through the Copy
// functions, which lift the poison around the access:
//   void PoisonMemoryRegion(const void* p, size_t size);
//   void UnpoisonMemoryRegion(const void* p, size_t size);
//   bool IsPoisoned(const void* p, size_t size);   // any byte of the range
//   void CopyFromPoisoned(void* to, const void* from, size_t size);
//   void CopyToPoisoned(void* to, const void* from, size_t size);
using internal::CopyFromPoisoned;
using internal::CopyToPoisoned;
using internal::IsPoisoned;
using internal::PoisonMemoryRegion;
using internal::UnpoisonMemoryRegion;

// The build (config.h): checking adds per-chunk checks (sentinels, clobbering
// of freed memory); direct mode sends every request down a kind's path for
// chunks with a block of their own.
inline constexpr bool kCheckingBuild = internal::kChecking;
inline constexpr bool kDirectBuild = internal::kDirect;
inline constexpr bool kAddressSanitizerBuild = internal::kAddressSanitizer;
inline constexpr bool kValgrindBuild = internal::kValgrind;
// Freed and reset memory is overwritten with kClobberByte in checking
// builds; kSentinelByte follows each chunk there.
using internal::kClobberByte;
using internal::kSentinelByte;

// --- Over-aligned chunks (kinds with chunk headers) ------------------------------------

using internal::AlignedRedirectTarget;
using internal::AllocAlignedRedirect;
using internal::IsAlignedRedirect;
using internal::ReallocAlignedRedirect;

}  // namespace mcx

// Last: it composes the declarations above into a context's creation.
#include "mcx/context/internal/create.h"  // IWYU pragma: export

#endif  // MCX_CONTEXT_KIND_API_H_
