// The freelist kind: PostgreSQL's AllocSet (src/backend/utils/mmgr/aset.c)
// with finer size classes, and memory that follows the live data. What is
// kept from aset.c, and why:
//   - An 8-byte chunk header that names the kind and leads back to the
//     block, so free and realloc need no context and no lookup structure.
//   - LIFO freelists per class: the chunk freed last is hot in cache, and
//     the fast paths are a pop and a push (W3: about 105 instructions per
//     free-and-allocate step, the benchmark loop included).
//   - Chunks carved back to back in the order they are asked for, whatever
//     their class: a context that holds a handful of chunks costs a handful
//     of chunks, not a page per size class (mimalloc's heaps pay that).
//   - Chunks above chunk_limit get a dedicated block that goes back to the
//     source when freed: one huge chunk must not pin a class forever.
// What aset.c lacks, and this kind adds (freelist_block.h has the layout):
//   - Blocks are split into 4 KiB units with a descriptor each. A sweep,
//     run after a number of frees proportional to the chunks carved, counts
//     the free chunks of each unit; a unit whose chunks are all free is
//     taken off the freelists and given back to its block, where a later
//     run of carving of any size reuses it; a block whose units are all free
//     goes back to the block source, beyond a few spares. aset.c keeps every
//     freed chunk on its class's list until reset, so a long-lived context
//     holds the sum of each class's high-water mark.
//   - Sweeps run by frees purge the free units of the blocks that stay
//     (PurgeFreeUnits): their pages go back to the system through the block
//     source, so resident memory follows the live data where a few live
//     chunks pin a block; aset.c's blocks stay resident until reset.
//   - Sweeps that give little back make the next one later (a backoff), so
//     churn over a steady set of live chunks pays almost nothing for them;
//     a sweep also runs before a new block is acquired, if enough was freed
//     since the last, so that freed units are reused before the context
//     grows.
//   - The freelist heads live in a table made at the first free, as a chunk
//     of the context; until then the state points at a static empty table
//     whose heads are all null, so the allocation fast path needs no test
//     for it. A context that never frees (most children) keeps a 120-byte
//     state instead of one with a head per class.
//   - Reallocation grows or shrinks the chunk carved last in place (up to
//     kInPlaceGrowthLimit, then moves it to a dedicated block), moves a
//     growing chunk to a class at least a quarter larger (a chain of small
//     steps copies O(log n) times), and moves a shrinking chunk to a class
//     that takes at most half the memory. A dedicated chunk that grew by
//     realloc (kGrowthChunk) grows in place in the room its block has.
// Remote frees (a later cross-thread free): a chunk leads to its owner
// through its header alone, and nothing the owner's fast paths touch must
// be written by another thread, so a remote free can be one atomic push of
// the chunk onto a list in the table, drained by the owner's slow paths
// (the allocation slow path, the sweep) into the class lists; the free bit then has to be
// set by the owner when it drains, not by the remote thread.

#include "mcx/freelist/freelist.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "absl/numeric/bits.h"
#include "mcx/context/block_list.h"
#include "mcx/context/inspect.h"
#include "mcx/context/internal/format.h"
#include "mcx/context/kind_api.h"
#include "mcx/freelist/internal/freelist_block.h"

namespace mcx {

using freelist_internal::AllUnits;
using freelist_internal::BlockHeader;
using freelist_internal::BlockHeaderBytes;
using freelist_internal::BlockOfDesc;
using freelist_internal::DedicatedHeader;
using freelist_internal::Descs;
using freelist_internal::FreelistState;
using freelist_internal::FreeTable;
using freelist_internal::HeaderOf;
using freelist_internal::kMaxBlockUnits;
using freelist_internal::kMaxPageBlockBytes;
using freelist_internal::kDeferredFrees;
using freelist_internal::kMostlyFree;
using freelist_internal::kNoChunkStart;
using freelist_internal::kSourceHeaderAllowance;
using freelist_internal::kStraddledInto;
using freelist_internal::kUnitBytes;
using freelist_internal::kUnitPhase;
using freelist_internal::kUnitPurged;
using freelist_internal::kUnitParking;
using freelist_internal::kTrimTail;
using freelist_internal::kUnitReleasing;
using freelist_internal::kUnitShift;
using freelist_internal::OnList;
using freelist_internal::UnitDesc;
using freelist_internal::UnitsStart;
using freelist_internal::UnitBase;
using freelist_internal::UnitStart;
using freelist_internal::UnitsBase;
using freelist_internal::UnitsBaseAt;

namespace {

static_assert(kMaxFreelistBlocksOfChunks == kMaxPageBlockBytes, "freelist.h says it");

// Checking and ASan builds record each chunk's requested size (PostgreSQL's
// MEMORY_CONTEXT_CHECKING does the same): checking builds guard it with a
// sentinel, ASan builds unpoison exactly that many bytes.
constexpr bool kChecking = kCheckingBuild;
constexpr bool kTracksRequested = kChecking || kAddressSanitizerBuild || kValgrindBuild;
// Frees are deferred (FreelistFree, "Deferred frees") in release builds
// only: checking, sanitizer, Valgrind and direct builds check each chunk in
// the call that frees it, where a report of a bad free belongs.
constexpr bool kDeferFrees =
    !kChecking && !kAddressSanitizerBuild && !kValgrindBuild && !kDirectBuild;

// Bytes before each payload: the header word, plus the requested size when
// it is tracked.
constexpr size_t kHeaderBytes = kFreelistChunkHeaderBytes;
static_assert(kHeaderBytes == (kTracksRequested ? 16 : 8), "freelist.h and this file agree");

constexpr size_t RoundUp16(size_t n) { return (n + 15) & ~size_t{15}; }

// Distance between consecutive chunks of class `c`. In release builds this
// is class + 8, already a multiple of 16.
inline size_t Stride(size_t c) { return RoundUp16(SizeClassBytes(c) + kHeaderBytes); }

// Payload offset of a dedicated chunk inside its block.
constexpr size_t kDedicatedPayload = RoundUp16(sizeof(DedicatedHeader) + kHeaderBytes);

// Bytes at the start of a released block that its source may write: the
// caching source's 16-byte node, glibc's free-list words (32 bytes in its
// large bins). A freed dedicated chunk's header word lies beyond them, so
// its free bit survives the release.
constexpr size_t kReleasedBlockScratch = 32;
static_assert(kDedicatedPayload - sizeof(uint64_t) >= kReleasedBlockScratch,
              "a dedicated chunk's header word must survive its block's release");

// The first block: after the name, a block header with one descriptor for
// the whole area, then chunks.
constexpr size_t kFirstChunkOffset = BlockHeaderBytes(1);

// Room the first block keeps after all headers, so a context made with a
// tiny initial_block_size still serves a few requests from its first block.
constexpr size_t kMinFirstBlockSpace = 256;

// Sweeps. The first comes after kMinSweepFrees frees, later ones after an
// eighth of the chunks carved have been freed (at least kMinSweepFrees): a
// sweep walks the free chunks, so its cost is spread over at least as many
// frees as it may walk, in proportion. A sweep that gives back less than a
// quarter of what it walked (units given back, chunks saved by coalescing)
// doubles the next interval, up to 8 times: a steady churn, where units
// rarely empty, then pays little for sweeps, while a heap whose sizes shift
// is swept often enough to reuse what it freed (64 times left W8 at 1.36x
// its live peak, 8 times at 1.33x, with coalescing at half free).
constexpr uint64_t kMinSweepFrees = 4096;
constexpr uint64_t kSweepDivisor = 8;
constexpr uint64_t kGoodYieldDivisor = 4;
constexpr uint32_t kMaxSweepBackoff = 8;
// A unit is coalesced at a sweep when more than a quarter of the chunks
// that start in it are free (half left W8 at 1.33x its live peak, a
// quarter at 1.28x), and at least two: two free neighbours are the least
// that can become one larger chunk.
constexpr uint32_t kCoalesceDivisor = 4;
constexpr uint32_t kMinCoalesceFree = 2;
// Parking. When the live data has shrunk, the class lists, refilled by
// random frees, keep a small live set spread over every unit that held the
// large one: each allocation takes a chunk of some sparse unit, which then
// never drains. A sweep run by frees therefore parks the free chunks of
// sparse units (at most 1/kSparseDivisor of their chunks live) on lists of
// their own, so that allocations fill denser units and fresh runs while the
// sparse ones drain until a sweep gives them back, when
//   - the context holds more than kDrainHeldNumerator/kDrainHeldDenominator
//     times its live bytes in blocks (it is loose),
//   - its live bytes fell below 1/kShrinkDivisor of the most a sweep saw
//     since it was last not loose (it shrank: a steady churn, loose or not,
//     is left alone, as parking there only spreads it over more units),
//   - and more than 1/kDrainDivisor of the bytes of its chunks are free.
// Parked chunks go back to the lists at the next sweep that does not park
// them, and before the context would acquire a block for a run.
// docs/performance.md (W8) has how the bounds were chosen.
constexpr uint32_t kSparseDivisor = 3;
constexpr uint64_t kDrainDivisor = 4;
constexpr size_t kDrainHeldNumerator = 2, kDrainHeldDenominator = 1;
constexpr size_t kShrinkDivisor = 2;

// Chunks of a unit or more (classes from kFirstReuseUpClass) run into the
// units after the one they start in, so coalescing, which stops at a
// unit's end, never merges them, and in a wide mix of large sizes a free
// one waits long for a request of its own class while new ones are
// carved. A request of such a class whose list is empty takes a free chunk
// of one of the kReuseUpClasses classes above, whole (at most half a
// doubling larger: the waste is bounded as for the rounding to a class,
// and the chunk was idle anyway), before carving.
constexpr size_t kFirstReuseUpClass =
    size_class_internal::kLookup[(kUnitBytes + 7) >> 4];  // SizeClassOf(kUnitBytes)
constexpr size_t kReuseUpClasses = 8;

// Empty blocks a sweep keeps for reuse: up to an eighth of the bytes in
// use, and at least one largest block, so a context whose live data
// breathes does not acquire and release the same block over and over.
constexpr size_t kSpareDivisor = 8;
constexpr size_t kMinSpareBytes = kMaxPageBlockBytes;

// A growing realloc that must move takes a class at least a quarter larger
// than the old one, so a buffer grown in small steps is copied O(log n)
// times; a shrinking one moves only if the new class takes at most half the
// old chunk's bytes (smaller savings are not worth a copy).
constexpr size_t kGrowthJumpDivisor = 4;
constexpr size_t kShrinkMoveFactor = 2;

// The chunk carved last grows in place up to this many bytes; a growth
// beyond moves it to a dedicated block, where the block source grows it
// (a kept block with room, glibc's realloc, mremap), as aset.c gives every
// chunk above 8 KiB a block of its own. Left in the run, a buffer that
// outgrows the largest class is copied whole when it does (64 KiB); moved
// here, its one copy is at most this size, below the size from which
// glibc's memcpy switches to `rep movsb`, several times slower per byte
// where it was measured (docs/performance.md, R.chain). Buffers that end
// between this size and chunk_limit then hold a block of their own, exact
// to the byte, that goes back to the source when freed.
constexpr size_t kInPlaceGrowthLimit = 4096;

// The header value of a dedicated chunk that grew by realloc (others have
// 0): its block may hold more than it asked for (DedicatedHeader::asked),
// as a block source may resize a block into a larger one it kept (the
// block cache does, block_source.h), and it grows in place within it with
// no call to the source. A realloc that leaves it using at most half its
// block gives the room back, as for any dedicated chunk.
constexpr uint64_t kGrowthChunk = 1;

// Later blocks are at least this large (aset.c: "We somewhat arbitrarily
// enforce a minimum 1K block size"): a smaller block would hold a handful
// of chunks and cost an acquisition for each handful.
constexpr size_t kMinGrowthBlockSize = 1024;

// Header bit of a live chunk of a parked unit (kUnitParking), set by the
// sweep that parks the unit: it sends the chunk's free off the fast path
// (it is in kFastMask), to the parked list while the unit stays parked.
// Left on a chunk whose unit is no longer parked, it costs that free the
// slow path once; the free writes the header without it.
constexpr uint64_t kParkedUnitBit = uint64_t{1} << 7;

// Header checks on the free fast path, in one compare: our kind, our magic,
// not free, not dedicated, not of a parked unit.
constexpr uint64_t kFastMask = kChunkKindMask | kChunkExternalBit | kChunkFreeBit | kChunkMagicMask |
                               kParkedUnitBit;
constexpr uint64_t kFastExpect = kChunkKindFreelist | (kChunkMagic << kChunkMagicShift);

// Header bit of a chunk another thread freed (remote_free.h), set with the
// free bit: the chunk waits on the remote list, on no freelist, until the
// owner takes it back. A sweep coalesces only chunks without it. Bits 6
// and 7 of a header are the kind's own (chunk_header.h).
constexpr uint64_t kRemoteFreeBit = uint64_t{1} << 6;
static_assert((kRemoteFreeBit & (kChunkKindMask | kChunkExternalBit | kChunkFreeBit |
                                 (kChunkValueMask << kChunkValueShift))) == 0,
              "the remote bit is a spare header bit");

static_assert((kParkedUnitBit & (kRemoteFreeBit | kChunkKindMask | kChunkExternalBit |
                                 kChunkFreeBit | (kChunkValueMask << kChunkValueShift))) == 0,
              "the parked bit is a spare header bit");

// The table every context reads until its first free: all heads null, so
// the allocation fast path falls to the slow path for every class, and
// never written (the free path makes a real table first).
const FreeTable kEmptyTable = {};

FreeTable* EmptyTable() { return const_cast<FreeTable*>(&kEmptyTable); }
bool HasTable(const FreelistState* st) { return st->table != &kEmptyTable; }

// The state right after the context header. KindState (kind_api.h) finds
// it for any context address; a context header always starts a block,
// aligned to at least kMinBlockAlignment, so here the offset is a
// constant, and the fast paths save the two instructions that align it.
static_assert(kKindStateStart % alignof(FreelistState) == 0 &&
                  alignof(FreelistState) <= kMinBlockAlignment,
              "the state follows the context header at a fixed offset");
ABSL_ATTRIBUTE_ALWAYS_INLINE inline FreelistState* StateOf(Context* ctx) {
  return reinterpret_cast<FreelistState*>(reinterpret_cast<char*>(ctx) + kKindStateStart);
}

// --- Chunks, units and blocks -------------------------------------------------

UnitDesc* DescOf(const void* p, uint64_t h) {
  return reinterpret_cast<UnitDesc*>(const_cast<char*>(static_cast<const char*>(p)) - 8 -
                                     ChunkHeaderOffset(h));
}

DedicatedHeader* DedicatedOf(const void* p, uint64_t h) {
  return reinterpret_cast<DedicatedHeader*>(const_cast<char*>(static_cast<const char*>(p)) - 8 -
                                            ChunkHeaderOffset(h));
}

// The context a chunk's header leads to (the block's first word).
Context* OwnerOf(const void* p, uint64_t h) {
  if (ChunkHeaderIsExternal(h)) return DedicatedOf(p, h)->link.owner;
  return BlockOfDesc(DescOf(p, h))->link.owner;
}

char* ChunkStart(void* p) { return static_cast<char*>(p) - kHeaderBytes; }

// One past the last usable byte of a block of chunks: its last unit may be
// short (a small block, or a source's odd size).
char* UnitsEnd(BlockHeader* b) {
  char* end = UnitBase(b, b->units);
  char* block_end = reinterpret_cast<char*>(b) + b->link.size;
  return block_end < end ? block_end : end;
}
char* UnitEnd(BlockHeader* b, size_t i) {
  char* end = UnitStart(b, i + 1);
  char* units_end = UnitsEnd(b);
  return units_end < end ? units_end : end;
}
// Where carving that ends in unit `i` stops: short of the next unit by
// twice kUnitPhase, that is kUnitPhase before the next unit's page, so that
// no chunk a run or a cut tail leaves at the end of unit `i` lies on that
// page. When the next unit is free, its page can then be purged whatever
// becomes of those chunks; live, one of them would keep it resident. The
// bytes between lie unused until unit `i` goes back. Chunks that cross the
// boundary inside a run are unaffected: both units hold chunks.
char* CarveEnd(BlockHeader* b, size_t i) {
  char* end = UnitEnd(b, i);
  return i + 1 < b->units ? end - 2 * kUnitPhase : end;
}
size_t UnitIndex(BlockHeader* b, const char* at) {
  return static_cast<size_t>(at - UnitsBase(b)) >> kUnitShift;
}
size_t FreeUnitBytes(BlockHeader* b) {
  size_t bytes = 0;
  for (uint64_t m = b->free_units; m != 0; m &= m - 1) {
    size_t i = static_cast<size_t>(absl::countr_zero(m));
    bytes += static_cast<size_t>(UnitEnd(b, i) - UnitStart(b, i));
  }
  return bytes;
}

// Lays out the units of the block of `size` bytes at `b` (units and
// units_offset): as many as cover it, at most 64. Where the boundaries fall
// depends on the block's address, and where the units start on the count
// of descriptors before them, so the count is raised until the descriptors
// cover the units they lead to; the first unit and the last may be short.
void LayOutUnits(BlockHeader* b, size_t size) {
  char* const start = reinterpret_cast<char*>(b);
  char* const end = start + size;
  size_t n = 1;
  for (;;) {
    char* base = UnitsBaseAt(start + BlockHeaderBytes(n));
    size_t cover = (static_cast<size_t>(end - base) + kUnitBytes - 1) >> kUnitShift;
    if (cover > kMaxBlockUnits) cover = kMaxBlockUnits;
    if (cover <= n) {
      b->units = static_cast<uint8_t>(cover);
      b->units_offset = static_cast<uint16_t>(BlockHeaderBytes(n));
      return;
    }
    n = cover;
  }
}

void InitDescs(BlockHeader* b) {
  UnitDesc* d = Descs(b);
  for (size_t i = 0; i < b->units; ++i) {
    d[i] = UnitDesc{0, 0, kNoChunkStart, static_cast<uint8_t>(i), 0};
  }
}

// The state's lists of blocks of chunks: heads only, linked through
// KindBlock's prev and next.
KindBlock** ListOf(FreelistState* st, OnList l) {
  switch (l) {
    case OnList::kPartial: return &st->partial;
    case OnList::kFull: return &st->full;
    case OnList::kSpare: return &st->spare;
    case OnList::kNone: break;
  }
  return nullptr;
}

void MoveTo(FreelistState* st, BlockHeader* b, OnList l) {
  if (b->list == l) return;
  if (KindBlock** from = ListOf(st, b->list)) {
    KindBlock* k = &b->link;
    if (k->prev != nullptr) k->prev->next = k->next; else *from = k->next;
    if (k->next != nullptr) k->next->prev = k->prev;
  }
  if (KindBlock** to = ListOf(st, l)) {
    KindBlock* k = &b->link;
    k->prev = nullptr;
    k->next = *to;
    if (*to != nullptr) (*to)->prev = k;
    *to = k;
  }
  b->list = l;
}

// Calls f(BlockHeader*) for each block on list `l`; f may move the block to
// another list or release it (the next one is read before).
template <typename F>
void ForEachOn(const FreelistState* st, OnList l, F f) {
  KindBlock* const* head = ListOf(const_cast<FreelistState*>(st), l);
  for (KindBlock* b = *head; b != nullptr;) {
    KindBlock* next = b->next;
    f(HeaderOf(b));
    b = next;
  }
}

template <typename F>
void ForEachPageBlock(const FreelistState* st, F f) {
  ForEachOn(st, OnList::kPartial, f);
  ForEachOn(st, OnList::kFull, f);
  ForEachOn(st, OnList::kSpare, f);
}

// --- Checking-build helpers (compiled out otherwise) -------------------------

size_t RequestedSize(const void* p) {
  size_t n;
  CopyFromPoisoned(&n, static_cast<const char*>(p) - 16, sizeof(n));
  return n;
}

// Checking builds keep each chunk's site (kind_api.h, PendingSite) in the
// 4 bytes right after its sentinel, unaligned. Every class is 8 more than a
// multiple of 16, so with the 16-byte header a chunk of class c has c + 8
// bytes before the next header: at least 8 past any request it serves,
// enough for the sentinel and the site. Dedicated chunks ask for them.
constexpr size_t kCheckingTailBytes = 1 + sizeof(SiteId);  // sentinel, site
static_assert(kCheckingTailBytes <= 8, "the sentinel and the site fit after any chunk");

// Makes a chunk live with `size` requested bytes out of `capacity` (the
// bytes up to the next chunk or the block's end): under ASan exactly `size`
// bytes become addressable; tracked builds record `size`; checking builds
// put the sentinel right after it, then `site`.
void MarkLive(void* p, size_t size, size_t capacity, SiteId site) {
  PoisonMemoryRegion(p, capacity);
  UnpoisonMemoryRegion(p, size);
  if (kTracksRequested) {
    CopyToPoisoned(static_cast<char*>(p) - 16, &size, sizeof(size));
  }
  if (kChecking) {
    CopyToPoisoned(static_cast<char*>(p) + size, &kSentinelByte, 1);
    CopyToPoisoned(static_cast<char*>(p) + size + 1, &site, sizeof(site));
  }
  PoisonMemoryRegion(static_cast<char*>(p) - kHeaderBytes, kHeaderBytes);  // the header
}

// The site MarkLive stored (checking builds).
SiteId ChunkSite(const void* p) {
  SiteId site;
  CopyFromPoisoned(&site, static_cast<const char*>(p) + RequestedSize(p) + 1, sizeof(site));
  return site;
}

bool SentinelOk(const void* p) {
  unsigned char b;
  CopyFromPoisoned(&b, static_cast<const char*>(p) + RequestedSize(p), 1);
  return b == kSentinelByte;
}

// Checking builds: false (after the report) if `p` is not a live chunk of
// `ctx` with its sentinel intact. The caller then leaves the chunk alone, as
// the pool kind does: with a misuse handler that returns, a chunk of another
// context must not land on this context's freelists.
bool VerifyLiveChunk(Context* ctx, void* p, uint64_t h, const char* operation) {
  if (!kChecking) return true;
  Context* owner = OwnerOf(p, h);
  if (owner != ctx) {
    ReportMisuse("%s of chunk %p through context '%s', but it belongs to context '%s'",
                 operation, p, ctx->name(), owner->name());
    return false;
  }
  if (!SentinelOk(p)) {
    ReportMisuse("sentinel of chunk %p (%zu bytes) in context '%s' was overwritten: "
                 "a write past the end of the chunk",
                 p, RequestedSize(p), ctx->name());
    return false;
  }
  return true;
}

// Overwrites memory given back (checking builds) and poisons it.
void EmptyMemory(char* from, char* to) {
  if (from >= to) return;
  if (kChecking) {
    UnpoisonMemoryRegion(from, static_cast<size_t>(to - from));
    std::memset(from, kClobberByte, static_cast<size_t>(to - from));
  }
  PoisonMemoryRegion(from, static_cast<size_t>(to - from));
}

// --- Freelists ------------------------------------------------------------------

// The next chunk on a freelist, read past the poison.
void* NextFree(const void* p) {
  void* next;
  CopyFromPoisoned(&next, p, sizeof(next));
  return next;
}

// Freelists a sweep walks side by side (WalkFreelists): a walk of one list
// is a chain of cache misses, each chunk holding the next one's address, so
// it waits for memory at every chunk; walking several chains at once keeps
// as many misses in flight. Eight: what the free's ring keeps in flight too
// (kDeferredFrees), within the dozen or so misses a core tracks.
constexpr size_t kWalkLanes = 8;

// Each class's list and parked list, as lists 2c and 2c + 1: what a
// sweep's walks go down (WalkFreelists).
void ClassLists(const FreeTable* t, void** lists) {
  for (size_t c = 0; c < kNumSizeClasses; ++c) {
    lists[2 * c] = t->heads[c];
    lists[2 * c + 1] = t->parked != nullptr ? t->parked[c] : nullptr;
  }
}

// Calls f(i, p) for every chunk p of the freelists starting at starts[0..n),
// i naming the list, each list in its order, kWalkLanes lists at a time.
// f may relink p: its successor is read first.
template <typename F>
void WalkFreelists(void* const* starts, size_t n, F f) {
  void* at[kWalkLanes];
  size_t list[kWalkLanes];
  size_t lanes = 0, next_list = 0;
  // Puts the next nonempty list in `lane`; false if none is left.
  auto take = [&](size_t lane) {
    while (next_list < n) {
      const size_t i = next_list++;
      if (starts[i] != nullptr) {
        at[lane] = starts[i];
        list[lane] = i;
        return true;
      }
    }
    return false;
  };
  while (lanes < kWalkLanes && take(lanes)) ++lanes;
  while (lanes > 0) {
    for (size_t lane = 0; lane < lanes;) {
      void* p = at[lane];
      void* next = NextFree(p);
      if (next != nullptr) __builtin_prefetch(static_cast<char*>(next) - sizeof(uint64_t));
      f(list[lane], p);
      if (next != nullptr) {
        at[lane++] = next;
      } else if (take(lane)) {
        ++lane;
      } else {  // the lane ends; the last one moves into it
        --lanes;
        at[lane] = at[lanes];
        list[lane] = list[lanes];
      }
    }
  }
}

void SetNextFree(void* p, void* next) { CopyToPoisoned(p, &next, sizeof(next)); }

ABSL_ATTRIBUTE_ALWAYS_INLINE inline void PushOnto(void** head, void* p, uint64_t h,
                                                   size_t stride) {
  WriteChunkHeader(p, h | kChunkFreeBit);
  UnpoisonMemoryRegion(p, sizeof(void*));
  std::memcpy(p, head, sizeof(void*));
  // The link too: ASan reports any read of a freed chunk.
  PoisonMemoryRegion(p, stride - kHeaderBytes);
  *head = p;
}

ABSL_ATTRIBUTE_ALWAYS_INLINE inline void PushFree(FreeTable* t, void* p, uint64_t h) {
  const size_t c = ChunkHeaderValue(h);
  PushOnto(&t->heads[c], p, h, Stride(c));
}

// Before the table exists, freed chunks wait here, all classes mixed; the
// next allocation that reaches the slow path makes the table and files
// them. A free never acquires a block.
void PushOrphan(FreelistState* st, void* p, uint64_t h) {
  PushOnto(&st->orphans, p, h, Stride(ChunkHeaderValue(h)));
}

// The header with the free bit cleared, as a chunk leaves a freelist. In
// release builds one byte is rewritten in place (the bit is in the lowest
// byte); elsewhere the header is poisoned and goes through its accessors.
inline void ClearFreeBit(void* p) {
  if (!kAddressSanitizerBuild && !kValgrindBuild) {
    unsigned char* low = static_cast<unsigned char*>(p) - 8;
    *low = static_cast<unsigned char>(*low & ~kChunkFreeBit);
  } else {
    WriteChunkHeader(p, ReadChunkHeader(p) & ~kChunkFreeBit);
  }
}

// --- Carving --------------------------------------------------------------------

// A run being carved: [ptr, end) in `block`.
struct Run {
  BlockHeader* block = nullptr;
  char* ptr = nullptr;
  char* end = nullptr;
};

Run CurrentRun(const FreelistState* st) { return Run{st->bump_block, st->bump_ptr, st->bump_end}; }
void SetCurrentRun(FreelistState* st, const Run& r) {
  st->bump_block = r.block;
  st->bump_ptr = r.ptr;
  st->bump_end = r.end;
}

// Carves a chunk of class `c` at `r->ptr` and advances it: the header leads
// to the descriptor of the unit the chunk starts in, units it runs into are
// marked, and the count of carved chunks follows.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void* CarveAt(FreelistState* st, Run* r, size_t c) {
  char* start = r->ptr;
  const size_t stride = Stride(c);
  BlockHeader* b = r->block;
  UnitDesc* d = Descs(b);
  if (b != st->first) {
    const size_t from_units = static_cast<size_t>(start - UnitsBase(b));
    const size_t u = from_units >> kUnitShift;
    const size_t last = (from_units + stride - 1) >> kUnitShift;
    d += u;
    if (d->starts == 0) d->first = static_cast<uint16_t>(from_units & (kUnitBytes - 1));
    for (size_t j = 1; j <= last - u; ++j) d[j].flags |= kStraddledInto;
  }
  ++d->starts;
  if (HasTable(st)) ++st->table->carved;  // else CountCarved counts when it is made
  char* payload = start + kHeaderBytes;
  WriteChunkHeader(payload,
                   MakeChunkHeader(kChunkKindFreelist, false, static_cast<uint8_t>(c),
                                   static_cast<uint64_t>(payload - 8 - reinterpret_cast<char*>(d))));
  r->ptr = start + stride;
  return payload;
}

ABSL_ATTRIBUTE_ALWAYS_INLINE inline void* CarveChunk(FreelistState* st, size_t c) {
  Run r = CurrentRun(st);
  void* p = CarveAt(st, &r, c);
  st->bump_ptr = r.ptr;
  return p;
}

// aset.c's "split the remaining free space into chunks": the largest class
// that fits, repeatedly, until less than the smallest stride is left. The
// chunks go on the freelists, or wait as orphans for the table.
void CarveRemainder(FreelistState* st, Run* r) {
  for (;;) {
    const size_t avail = static_cast<size_t>(r->end - r->ptr);
    if (avail < Stride(0)) break;
    const size_t fit = avail - kHeaderBytes;
    size_t c = SizeClassOf(fit < kMaxSizeClassBytes ? fit : kMaxSizeClassBytes);
    while (Stride(c) > avail) --c;
    void* p = CarveAt(st, r, c);
    const uint64_t h = ReadChunkHeader(p);
    if (HasTable(st)) {
      PushFree(st->table, p, h);
    } else {
      PushOrphan(st, p, h);
    }
  }
}

// Puts a block on the list its free units say: full, partial, or spare
// (every unit free, not being carved).
void Refile(FreelistState* st, BlockHeader* b) {
  if (b->free_units == 0) return MoveTo(st, b, OnList::kFull);
  if (b->free_units != AllUnits(b->units) || b == st->bump_block) {
    return MoveTo(st, b, OnList::kPartial);
  }
  MoveTo(st, b, OnList::kSpare);
}

// Releases spare blocks beyond the budget: an eighth of the bytes in use,
// at least one largest block. Only sweeps run by frees do this; a sweep
// before growth keeps them, since more memory is needed at once.
//
// A block released here goes back because the live data shrank, not at a
// reset or destroy: its pages go back first (those a sweep did not purge
// already), so that it does not stay resident in a block cache, which
// keeps what it is given until it decays. Reset and destroy release their
// blocks warm: short-lived work reuses them at once; so does the sweep of a
// context that empties (SweepEmpty), which may be refilled at once as
// well (`warm`).
void TrimSpares(Context* ctx, FreelistState* st, bool warm) {
  size_t spare = 0;
  ForEachOn(st, OnList::kSpare, [&](BlockHeader* b) { spare += b->link.size; });
  const size_t in_use = ctx->bytes_in_blocks() - spare;
  const size_t budget = std::max(kMinSpareBytes, in_use / kSpareDivisor);
  ForEachOn(st, OnList::kSpare, [&](BlockHeader* b) {
    if (spare <= budget) return;
    spare -= b->link.size;
    MoveTo(st, b, OnList::kNone);
    const UnitDesc* d = Descs(b);
    bool purged = true;
    for (size_t i = 0; i < b->units; ++i) purged &= (d[i].flags & kUnitPurged) != 0;
    if (!purged && !warm && b->units != 0) {
      char* from = UnitStart(b, 0);
      PurgeBlockBytes(ctx, from, static_cast<size_t>(UnitEnd(b, b->units - 1) - from));
    }
    ReleaseKindBlock(ctx, &b->link);
  });
}

// Ends the run `r` (no longer current): whole units it did not reach go back
// to the block; what is left of the last unit it reached is carved into free
// chunks. The first block's area is carved to its end.
void RetireRun(FreelistState* st, Run r) {
  if (r.block == nullptr) return;
  BlockHeader* b = r.block;
  if (b == st->first) {
    CarveRemainder(st, &r);
    return;
  }
  // An exhausted run has nothing to give back; its end may lie inside the
  // block's last unit, which is shorter than the others, so UnitIndex of
  // the end would name that unit, which a sweep may since have given back
  // and a new run taken.
  size_t u = UnitIndex(b, r.ptr);
  const size_t last = UnitIndex(b, r.end - 1);
  if (r.ptr < r.end && u <= last) {
    const UnitDesc& d = Descs(b)[u];
    if (d.starts != 0 || (d.flags & kStraddledInto) != 0) {
      Run tail{b, r.ptr, CarveEnd(b, u)};
      if (tail.ptr < tail.end) CarveRemainder(st, &tail);
      ++u;
    }
    for (size_t j = u; j <= last; ++j) b->free_units |= uint64_t{1} << j;
  }
  Refile(st, b);
}

// The first run of free units in `b` with at least `need` bytes, made as
// long as the free units allow.
bool FindRunIn(BlockHeader* b, size_t need, Run* r) {
  uint64_t m = b->free_units;
  while (m != 0) {
    const size_t s = static_cast<size_t>(absl::countr_zero(m));
    const uint64_t from_s = m >> s;
    const size_t len = ~from_s == 0 ? 64 - s : static_cast<size_t>(absl::countr_zero(~from_s));
    const size_t e = s + len;
    if (CarveEnd(b, e - 1) > UnitStart(b, s) &&
        static_cast<size_t>(CarveEnd(b, e - 1) - UnitStart(b, s)) >= need) {
      const uint64_t bits = (len == 64 ? ~uint64_t{0} : ((uint64_t{1} << len) - 1)) << s;
      b->free_units &= ~bits;
      *r = Run{b, UnitStart(b, s), CarveEnd(b, e - 1)};
      return true;
    }
    m &= ~(((len == 64 ? ~uint64_t{0} : ((uint64_t{1} << len) - 1))) << s);
  }
  return false;
}

// A run for `need` bytes among the blocks held: partial blocks first (so
// spares stay empty, to be released), then spares.
bool FindRun(FreelistState* st, size_t need, Run* r) {
  for (KindBlock* k = st->partial; k != nullptr; k = k->next) {
    if (FindRunIn(HeaderOf(k), need, r)) return true;
  }
  for (KindBlock* k = st->spare; k != nullptr; k = k->next) {
    if (FindRunIn(HeaderOf(k), need, r)) return true;
  }
  return false;
}

// A new block of chunks for at least `need` bytes of carving, sized by the
// growth policy. A refusal fails the call with nothing changed: the front
// of the call decides whether to retry (kind_api.h).
BlockHeader* AcquirePageBlock(Context* ctx, FreelistState* st, size_t need) {
  const size_t least = BlockHeaderBytes(1) + need;
  // Two units more than `need` fills: the first and the last may be short
  // (LayOutUnits).
  size_t units = ((need + kUnitBytes - 1) >> kUnitShift) + 2;
  size_t least_units = BlockHeaderBytes(units) + need;
  const size_t min_size = least_units > least ? least_units : least;
  size_t want = st->next_block_size - kSourceHeaderAllowance;
  if (want < min_size) want = min_size;
  KindBlock* kb = AcquireKindBlock(ctx, want, kMinBlockAlignment, min_size);
  if (kb == nullptr) return nullptr;
  // The live count leaves out the chunks' headers and the units' layout;
  // the run about to be carved is the request.
  FirstBlockOutgrown(ctx, FirstBlockNeededFromLive(ctx, st->live.live(), need));
  BlockHeader* b = HeaderOf(kb);
  LayOutUnits(b, kb->size);
  b->free_units = AllUnits(b->units);
  b->list = OnList::kNone;
  b->touched_units = 0;
  b->marked = 0;
  InitDescs(b);
  PoisonMemoryRegion(UnitsStart(b), static_cast<size_t>(UnitsEnd(b) - UnitsStart(b)));
  if (st->next_block_size < st->max_block_size) {
    size_t doubled = size_t{st->next_block_size} * 2;
    st->next_block_size =
        static_cast<uint32_t>(doubled < st->max_block_size ? doubled : st->max_block_size);
  }
  return b;
}

// What a sweep does with the memory it frees: keeps it for the growth
// that called it, or gives back spare blocks and purges free units (a
// sweep run by frees), or gives back spare blocks warm and purges nothing
// (the context emptied: SweepEmpty).
enum class SweepRelease { kKeep, kPurged, kWarm };
void Sweep(Context* ctx, FreelistState* st, SweepRelease release);
void FlushDeferred(Context* ctx, FreelistState* st);
inline void FinishPending(Context* ctx, FreelistState* st);
void UnparkAll(FreelistState* st);
void SweepEmpty(Context* ctx);

// Whether enough was freed since the last sweep to sweep before growing:
// an eighth of a scheduled interval (a new block costs more than a sweep).
constexpr uint64_t kGrowthSweepDivisor = 8;
bool WorthSweepingBeforeGrowth(const FreelistState* st) {
  if (!HasTable(st)) return false;
  const FreeTable* t = st->table;
  const uint64_t since = t->sweep_interval - static_cast<uint64_t>(st->sweep_countdown);
  return since * kGrowthSweepDivisor >= t->sweep_interval;
}

// Starts a new run for a chunk of `stride` bytes: free units of a block
// held, or (after a sweep, if one is due soon) a new block. The old run is
// retired only once the new one is in hand, so a failure changes nothing.
//
// With `refiled` given, what the lists may now hold comes before a new
// block: if the sweep ran (it may have coalesced chunks of the class
// wanted) or parked chunks wait, NewRun returns false with *refiled set,
// for the caller to look at its class's lists again.
bool NewRun(Context* ctx, FreelistState* st, size_t stride, bool* refiled = nullptr) {
  const size_t need = stride;
  Run r;
  bool found = FindRun(st, need, &r);
  // The pending frees ("Deferred frees") before the context grows: one of
  // them may serve the request, and a context at its limit that frees a
  // chunk must get it back rather than a refusal.
  bool flushed = false;
  if (!found && refiled != nullptr && HasTable(st) && st->table->deferred_count != 0) {
    FlushDeferred(ctx, st);
    flushed = true;
  }
  if (!found && WorthSweepingBeforeGrowth(st)) {
    Sweep(ctx, st, SweepRelease::kKeep);
    found = FindRun(st, need, &r);
    if (!found && refiled != nullptr) {
      *refiled = true;
      return false;
    }
  }
  if (!found && refiled != nullptr &&
      (flushed || (HasTable(st) && st->table->parked_chunks != 0))) {
    *refiled = true;
    return false;
  }
  if (!found) {
    BlockHeader* b = AcquirePageBlock(ctx, st, need);
    if (b == nullptr) return false;
    FindRunIn(b, need, &r);
  }
  const Run old = CurrentRun(st);
  SetCurrentRun(st, r);
  if (HasTable(st)) st->table->runs_since_empty = 1;
  Refile(st, r.block);
  if (old.block != r.block || old.ptr != r.ptr) RetireRun(st, old);
  return true;
}

uint64_t CountCarved(const FreelistState* st) {
  uint64_t n = Descs(st->first)->starts;
  ForEachPageBlock(st, [&](BlockHeader* b) {
    for (size_t i = 0; i < b->units; ++i) n += Descs(b)[i].starts;
  });
  return n;
}

void Schedule(FreelistState* st, uint64_t walked, uint64_t released) {
  FreeTable* t = st->table;
  uint64_t interval = t->carved / kSweepDivisor;
  if (interval < kMinSweepFrees) interval = kMinSweepFrees;
  if (released * kGoodYieldDivisor < walked) {
    if (t->sweep_backoff < kMaxSweepBackoff) t->sweep_backoff *= 2;
  } else {
    t->sweep_backoff = 1;
  }
  interval *= t->sweep_backoff;
  t->sweep_interval = interval;
  st->sweep_countdown = static_cast<int64_t>(interval);
}

// The table's class.
size_t TableClass() { return SizeClassOf(sizeof(FreeTable)); }

// The parked lists' heads: a chunk of this class.
constexpr size_t kParkedTableBytes = kNumSizeClasses * sizeof(void*);
size_t ParkedTableClass() { return SizeClassOf(kParkedTableBytes); }

void* ParkedHead(const FreeTable* t, size_t c) {
  return t->parked != nullptr ? t->parked[c] : nullptr;
}

size_t Room(const FreelistState* st) { return static_cast<size_t>(st->bump_end - st->bump_ptr); }

// The live bytes above which a free is deferred (FreelistFree, "Deferred
// frees"): kDeferredFrees frees pending and one being made, none larger
// than the largest class, leave a live chunk when the context holds more
// than theirs, so a context deferring a free cannot be empty. SIZE_MAX, no
// deferring, while there is no table to hold them, and while a dedicated
// chunk is live: its free gives its block back at once (a program that
// frees a large buffer and then idles would otherwise hold the block until
// frees that never come), and the free cannot tell it from a class chunk
// without the header it defers reading. So every pending free is a class
// chunk's.
void SetDeferBound(FreelistState* st) {
  if (!kDeferFrees || !HasTable(st)) return;
  st->defer_above =
      st->dedicated_live == 0 ? (kDeferredFrees + 1) * kMaxSizeClassBytes : SIZE_MAX;
}

// Live dedicated bytes change by `delta` (a chunk's bytes as `live` counts
// them).
void AddDedicatedLive(FreelistState* st, ptrdiff_t delta) {
  st->dedicated_live += static_cast<size_t>(delta);
  SetDeferBound(st);
}

// Carves the table from the current run, which has room for it, as a chunk
// like any other (it never goes on a list, so its unit stays while the
// table lives); then files the orphans, oldest first, so that each class
// keeps its newest-first order.
void InstallTable(FreelistState* st) {
  const size_t c = TableClass();
  void* p = CarveChunk(st, c);
  // No site: the table is the kind's own, which VisitLiveChunks skips.
  MarkLive(p, sizeof(FreeTable), Stride(c) - kHeaderBytes, kUnknownSiteId);
  FreeTable* t = new (p) FreeTable();
  t->sweep_backoff = 1;
  t->runs_since_empty = 1;
  st->table = t;
  SetDeferBound(st);
  t->carved = CountCarved(st);
  Schedule(st, 0, 0);
  void* reversed = nullptr;
  while (st->orphans != nullptr) {
    void* o = st->orphans;
    st->orphans = NextFree(o);
    SetNextFree(o, reversed);
    reversed = o;
  }
  while (reversed != nullptr) {
    void* o = reversed;
    reversed = NextFree(o);
    PushFree(t, o, ReadChunkHeader(o) & ~kChunkFreeBit);
  }
}

// Orphans looked at for one of a class while there is no room for a table:
// they are few (the first run that fits the table files them), and the
// walk stays short whatever happens.
constexpr int kMaxOrphanWalk = 64;

// The newest orphan of class `c` among the first kMaxOrphanWalk, taken off
// the list with its free bit cleared; nullptr if there is none.
void* TakeOrphan(FreelistState* st, size_t c) {
  void* prev = nullptr;
  int walked = 0;
  for (void* p = st->orphans; p != nullptr && walked < kMaxOrphanWalk; p = NextFree(p), ++walked) {
    if (ChunkHeaderValue(ReadChunkHeader(p)) != c) {
      prev = p;
      continue;
    }
    if (prev != nullptr) SetNextFree(prev, NextFree(p)); else st->orphans = NextFree(p);
    ClearFreeBit(p);
    return p;
  }
  return nullptr;
}

// A chunk of class `c` from the current run, live for `size` bytes
// allocated at `site`.
ABSL_ATTRIBUTE_RETURNS_NONNULL void* CarveLive(FreelistState* st, size_t c, size_t size, SiteId site) {
  void* p = CarveChunk(st, c);
  st->live.Add(SizeClassBytes(c));
  MarkLive(p, size, Stride(c) - kHeaderBytes, site);
  return p;
}

// The first chunk of the list at `*head`, of class `c`, taken off it and
// counted live (its site and requested size are the caller's to mark);
// nullptr if the list is empty. The slow paths' pop; FreelistAllocFast has
// its own.
void* PopLive(FreelistState* st, void** head, size_t c) {
  void* p = *head;
  if (p == nullptr) return nullptr;
  *head = NextFree(p);
  ClearFreeBit(p);
  st->live.Add(SizeClassBytes(c));
  return p;
}

// A free chunk of one of the kReuseUpClasses classes above `c`, the
// nearest first, taken as PopLive does (a chunk of its own class: it is
// handed out whole); nullptr if there is none.
void* TakeFromClassAbove(FreelistState* st, size_t c) {
  FreeTable* t = st->table;
  const size_t last = std::min(c + kReuseUpClasses, kNumSizeClasses - 1);
  for (size_t u = c + 1; u <= last; ++u) {
    if (void* p = PopLive(st, &t->heads[u], u); p != nullptr) return p;
  }
  return nullptr;
}

// Everything FreelistAllocFast declines for a chunk of a class: no table yet
// while chunks wait for one, a run too short, or other threads' frees to
// take back first. Chunks freed before there was a table wait as orphans;
// the table is made here, from the current run or from the run acquired
// for this request anyway, so that a failed request acquires nothing and a
// free never acquires a block. Otherwise a new run (NewRun).
void ReclaimRemote(Context* ctx, FreelistState* st);

// A chunk TakeFromClassAbove handed out, live for `size` bytes: usable to
// the end of its own class.
void* MarkTakenLive(Context* ctx, void* p, size_t size) {
  MarkLive(p, size, Stride(ChunkHeaderValue(ReadChunkHeader(p))) - kHeaderBytes, PendingSite(ctx));
  return p;
}

ABSL_ATTRIBUTE_NOINLINE void* AllocFromNewRun(Context* ctx, FreelistState* st, size_t size,
                                              size_t c) {
  const size_t stride = Stride(c);
  // Chunks other threads freed come back before a new run or block.
  if (st->remote.HasAny()) {
    ReclaimRemote(ctx, st);
    if (HasTable(st)) {
      if (void* p = PopLive(st, &st->table->heads[c], c); p != nullptr) {
        MarkLive(p, size, stride - kHeaderBytes, PendingSite(ctx));
        return p;
      }
    }
    if (stride <= Room(st) && (HasTable(st) || st->orphans == nullptr)) {
      return CarveLive(st, c, size, PendingSite(ctx));
    }
  }
  if (!HasTable(st) && st->orphans != nullptr) {
    const size_t table_stride = Stride(TableClass());
    if (table_stride > Room(st) && stride <= Room(st)) {
      // No room for the table yet (the next run will hold it): an orphan
      // of the class, if one is near the top, else a new chunk.
      if (void* p = TakeOrphan(st, c); p != nullptr) {
        st->live.Add(SizeClassBytes(c));
        MarkLive(p, size, stride - kHeaderBytes, PendingSite(ctx));
        return p;
      }
      return CarveLive(st, c, size, PendingSite(ctx));
    }
    if (table_stride > Room(st) && !NewRun(ctx, st, table_stride + stride)) return nullptr;
    InstallTable(st);
    if (void* p = PopLive(st, &st->table->heads[c], c); p != nullptr) {
      MarkLive(p, size, stride - kHeaderBytes, PendingSite(ctx));
      return p;
    }
  }
  if (c >= kFirstReuseUpClass && HasTable(st)) {
    if (void* p = TakeFromClassAbove(st, c); p != nullptr) return MarkTakenLive(ctx, p, size);
  }
  if (stride > Room(st)) {
    bool refiled = false;
    if (!NewRun(ctx, st, stride, &refiled)) {
      if (!refiled) return nullptr;
      // A parked chunk of the class, rather than a new block: the others
      // stay parked.
      FreeTable* t = st->table;
      void* p = PopLive(st, &t->heads[c], c);
      if (p == nullptr && t->parked != nullptr) {
        p = PopLive(st, &t->parked[c], c);
        if (p != nullptr) --t->parked_chunks;
      }
      if (p != nullptr) {
        MarkLive(p, size, stride - kHeaderBytes, PendingSite(ctx));
        return p;
      }
      // Or, for a chunk of a unit or more, one of a class just above that
      // the sweep made or a finished free filed.
      if (c >= kFirstReuseUpClass) p = TakeFromClassAbove(st, c);
      if (p != nullptr) return MarkTakenLive(ctx, p, size);
      if (stride > Room(st) && !NewRun(ctx, st, stride)) return nullptr;
    }
  }
  return CarveLive(st, c, size, PendingSite(ctx));
}

// --- Sweeps --------------------------------------------------------------------

// Marks the units of `b` whose chunks are all free, and that no live chunk
// runs into: a unit a chunk runs into goes only with the unit that chunk
// starts in (so a unit entirely inside a going chunk goes too). The units
// being carved stay. Units more than a quarter free are marked too
// (FinishBlock coalesces their free chunks). Only units with free chunks are
// looked at (`touched_units`), in address order; the counts are cleared.
// Returns kMarkedRelease if a unit goes, kMarked if only marks were made
// (FinishBlock then clears them), 0 for nothing.
constexpr int kMarked = 1;
constexpr int kMarkedRelease = 2;

// The start of the last chunk of unit `i` of `b`, which holds chunks.
char* LastChunkOf(BlockHeader* b, size_t i) {
  const UnitDesc& d = Descs(b)[i];
  char* chunk = UnitBase(b, i) + d.first;
  for (uint32_t k = 1; k < d.starts; ++k) {
    chunk += Stride(ChunkHeaderValue(ReadChunkHeader(chunk + kHeaderBytes)));
  }
  return chunk;
}

// Whether `last`, the last chunk of unit `i` (LastChunkOf), which runs
// past CarveEnd, is free (and not waiting on the remote list) and what lies
// of it before CarveEnd can be carved into chunks, or is nothing (the chunk
// then goes).
bool TailTrimmable(BlockHeader* b, size_t i, const char* last) {
  const uint64_t h = ReadChunkHeader(last + kHeaderBytes);
  return ChunkHeaderIsFree(h) && (h & kRemoteFreeBit) == 0 &&
         CarveEnd(b, i) >= last &&
         (CarveEnd(b, i) == last || static_cast<size_t>(CarveEnd(b, i) - last) >= Stride(0));
}
int MarkReleasable(const FreelistState* st, BlockHeader* b, bool park) {
  UnitDesc* d = Descs(b);
  size_t lo = b->units, hi = 0;
  if (b == st->bump_block && st->bump_ptr < st->bump_end) {
    lo = UnitIndex(b, st->bump_ptr);
    hi = UnitIndex(b, st->bump_end - 1);
  }
  auto gone = [&](size_t i) {
    return ((b->free_units >> i) & 1) != 0 || (d[i].flags & kUnitReleasing) != 0;
  };
  int marks = 0;
  for (uint64_t m = b->touched_units; m != 0; m &= m - 1) {
    const size_t i = static_cast<size_t>(absl::countr_zero(m));
    const uint32_t free = d[i].sweep_free;
    d[i].sweep_free = 0;
    if (i >= lo && i <= hi) continue;  // being carved
    if (free != d[i].starts) {  // a live chunk starts here
      if (park && (d[i].starts - free) * kSparseDivisor <= d[i].starts) {
        d[i].flags |= kUnitParking;
        marks |= kMarked;
      } else {
        d[i].flags = static_cast<uint8_t>(d[i].flags & ~kUnitParking);
      }
      if (free >= kMinCoalesceFree && free * kCoalesceDivisor > d[i].starts) {
        d[i].flags |= kMostlyFree;
        marks |= kMarked;
      }
      // The next unit went back while this unit's last chunk, ending on
      // its page (past CarveEnd), was live; freed since, it is cut short of
      // that page as it would have been then (below), so that handing it
      // out never brings the purged page back.
      if (kUnitPhase != 0 && i + 1 < b->units && ((b->free_units >> (i + 1)) & 1) != 0 &&
          d[i].starts != 0) {
        char* last = LastChunkOf(b, i);
        const size_t stride = Stride(ChunkHeaderValue(ReadChunkHeader(last + kHeaderBytes)));
        if (last + stride > CarveEnd(b, i) && TailTrimmable(b, i, last)) {
          d[i].flags = static_cast<uint8_t>((d[i].flags | kTrimTail) & ~kMostlyFree);
          marks |= kMarked;
        }
      }
      continue;
    }
    if ((d[i].flags & kStraddledInto) != 0 && (i == 0 || !gone(i - 1))) {
      // The chunk running in from the unit before: if it is free, it is
      // cut at that unit's end (TrimTail) and this unit goes all the same.
      // Without this, one live chunk in a unit would pin the next one too.
      const size_t j = i - 1;
      if (i == 0 || (j >= lo && j <= hi) || d[j].starts == 0 ||
          !TailTrimmable(b, j, LastChunkOf(b, j))) {
        continue;
      }
      d[j].flags = static_cast<uint8_t>((d[j].flags | kTrimTail) & ~kMostlyFree);
    } else if (kUnitPhase != 0 && i > 0 && !gone(i - 1) && !(i - 1 >= lo && i - 1 <= hi) &&
               d[i - 1].starts != 0) {
      // The last chunk of the unit before may end right at this unit's
      // start, on its page (past CarveEnd): if it is free, it is cut short
      // of the page too, so that it never brings the page back once purged.
      const size_t j = i - 1;
      char* last = LastChunkOf(b, j);
      const size_t stride = Stride(ChunkHeaderValue(ReadChunkHeader(last + kHeaderBytes)));
      if (last + stride > CarveEnd(b, j) && TailTrimmable(b, j, last)) {
        d[j].flags = static_cast<uint8_t>((d[j].flags | kTrimTail) & ~kMostlyFree);
      }
    }
    d[i].flags |= kUnitReleasing;
    marks |= kMarkedRelease;
    // Units lying wholly inside the last chunk of this one go with it.
    for (size_t j = i + 1; j < b->units && d[j].starts == 0 && !((b->free_units >> j) & 1) &&
                           (d[j].flags & kStraddledInto) != 0 && !(j >= lo && j <= hi);
         ++j) {
      d[j].flags |= kUnitReleasing;
    }
  }
  b->touched_units = 0;
  return marks;
}

// Refiles every class list without the chunks of units being released or
// coalesced (CoalesceUnit files the latter again), keeping each list's
// order: the chunks of parking units go to the parked lists, the parked
// chunks of units no longer parking come back after the listed ones.
// Returns the chunks of units being released; `listed_tails` gets the last
// chunk of each class list.
uint64_t RebuildLists(FreelistState* st, void** listed_tails) {
  FreeTable* t = st->table;
  uint64_t dropped = 0;
  uint64_t parked = 0;
  t->parked_chunks = 0;
  // Lists 2c and 2c + 1 (class c's list and parked list) are walked side
  // by side (WalkFreelists); each files its chunks on its own pair of new
  // lists (listed, parked), joined per class in the old order at the end:
  // the chunks from the class list, then those from the parked list.
  void* lists[2 * kNumSizeClasses];
  ClassLists(t, lists);
  void* heads[2 * kNumSizeClasses][2] = {};  // [list][listed, parked]
  void* tails[2 * kNumSizeClasses][2] = {};
  WalkFreelists(lists, 2 * kNumSizeClasses, [&](size_t i, void* p) {
    const size_t c = i / 2;
    auto append = [&](int to) {
      SetNextFree(p, nullptr);
      if (tails[i][to] != nullptr) SetNextFree(tails[i][to], p); else heads[i][to] = p;
      tails[i][to] = p;
    };
    const UnitDesc* d = DescOf(p, ReadChunkHeader(p));
    if ((d->flags & kUnitReleasing) != 0) {
      ++dropped;
    } else if ((d->flags & kTrimTail) != 0 &&
               ChunkStart(p) + Stride(c) > CarveEnd(BlockOfDesc(d), d->index)) {
      // TrimTail files its pieces
    } else if ((d->flags & kMostlyFree) != 0) {
      // CoalesceUnit files it again
    } else if ((d->flags & kUnitParking) != 0) {
      append(1);
      ++parked;
    } else {
      append(0);
    }
  });
  for (size_t c = 0; c < kNumSizeClasses; ++c) {
    void* const* first = heads[2 * c];  // from the class list
    void* const* second = heads[2 * c + 1];  // from the parked list
    for (int to = 0; to < 2; ++to) {
      if (first[to] != nullptr && second[to] != nullptr) SetNextFree(tails[2 * c][to], second[to]);
    }
    t->heads[c] = first[0] != nullptr ? first[0] : second[0];
    listed_tails[c] = second[0] != nullptr ? tails[2 * c + 1][0] : tails[2 * c][0];
    if (t->parked != nullptr) t->parked[c] = first[1] != nullptr ? first[1] : second[1];
  }
  t->parked_chunks += parked;  // CoalesceUnit counts what it parks
  return dropped;
}

// Files every parked chunk on its class list again, after the listed ones
// (the context is about to grow: what it holds is used first).
void UnparkAll(FreelistState* st) {
  FreeTable* t = st->table;
  if (t->parked == nullptr) return;
  for (size_t c = 0; c < kNumSizeClasses; ++c) {
    void* p = t->parked[c];
    if (p == nullptr) continue;
    void* last = p;
    auto unpark_unit = [](void* q) {
      UnitDesc* d = DescOf(q, ReadChunkHeader(q));
      d->flags = static_cast<uint8_t>(d->flags & ~kUnitParking);
    };
    unpark_unit(last);
    for (void* n = NextFree(last); n != nullptr; n = NextFree(n)) {
      last = n;
      unpark_unit(n);
    }
    SetNextFree(last, t->heads[c]);
    t->heads[c] = p;
    t->parked[c] = nullptr;
  }
  t->parked_chunks = 0;
}

// Carves [from, to), which lies in the unit of `d` and held free chunks
// only, into free chunks of the largest classes that fit, and files them.
// Every piece keeps a stride of at least the smallest class's, so the
// chunks still lie back to back. Returns the chunks carved.
uint32_t RecarveFree(void** heads, UnitDesc* d, char* from, char* to) {
  uint32_t made = 0;
  while (from < to) {
    const size_t avail = static_cast<size_t>(to - from);
    const size_t fit = avail - kHeaderBytes;
    size_t c = SizeClassOf(fit < kMaxSizeClassBytes ? fit : kMaxSizeClassBytes);
    while (c > 0 && (Stride(c) > avail ||
                     (Stride(c) < avail && avail - Stride(c) < Stride(0)))) {
      --c;
    }
    char* payload = from + kHeaderBytes;
    const uint64_t h = MakeChunkHeader(kChunkKindFreelist, false, static_cast<uint8_t>(c),
                                       static_cast<uint64_t>(payload - 8 -
                                                             reinterpret_cast<char*>(d)));
    PushOnto(&heads[c], payload, h, Stride(c));
    from += Stride(c);
    ++made;
  }
  return made;
}

// CoalesceUnit
//
// A unit found mostly free (its chunks were taken off the lists by
// RebuildLists): each run of free chunks that lie back to back within the
// unit becomes as few chunks as the classes allow, filed again, so freed
// space of small classes serves larger ones (glibc coalesces neighbours at
// every free; here it is done in bulk, at a sweep). A chunk that runs into
// the next unit stays as it is: the pieces must start in this unit. Returns
// the chunks saved.
uint64_t CoalesceUnit(FreelistState* st, BlockHeader* b, size_t i) {
  FreeTable* t = st->table;
  UnitDesc* d = &Descs(b)[i];
  char* const unit_end = UnitEnd(b, i);
  char* chunk = UnitBase(b, i) + d->first;
  char* run = nullptr;  // start of the run of free chunks being gathered
  // A parking unit's chunks go to the parked lists, coalesced all the same:
  // when they come back, they serve the larger classes.
  const bool parking = (d->flags & kUnitParking) != 0;
  void** heads = parking ? t->parked : t->heads;
  const uint32_t old_starts = d->starts;
  uint32_t starts = 0;
  uint32_t filed = 0;
  for (uint32_t k = 0; k < old_starts; ++k) {
    char* payload = chunk + kHeaderBytes;
    const uint64_t h = ReadChunkHeader(payload);
    const size_t c = ChunkHeaderValue(h);
    char* next = chunk + Stride(c);
    const bool free = ChunkHeaderIsFree(h) && (h & kRemoteFreeBit) == 0;
    if (free && next <= unit_end) {
      if (run == nullptr) run = chunk;
    } else {
      if (run != nullptr) {
        const uint32_t made = RecarveFree(heads, d, run, chunk);
        starts += made;
        filed += made;
      }
      run = nullptr;
      if (free) {
        PushOnto(&heads[c], payload, h & ~kChunkFreeBit, Stride(c));
        ++filed;
      }
      ++starts;
    }
    chunk = next;
  }
  if (run != nullptr) {
    const uint32_t made = RecarveFree(heads, d, run, chunk);
    starts += made;
    filed += made;
  }
  if (parking) t->parked_chunks += filed;
  d->starts = starts;
  t->carved -= old_starts - starts;
  return old_starts - starts;
}

// Cuts the last chunk of unit `i` of `b` (free, off the lists: RebuildLists)
// at CarveEnd, for the next unit to go back: what lies before it is carved
// into free chunks and filed (parked, if the unit parks).
void TrimTail(FreelistState* st, BlockHeader* b, size_t i) {
  FreeTable* t = st->table;
  UnitDesc* d = &Descs(b)[i];
  const bool parking = (d->flags & kUnitParking) != 0;
  const uint32_t made = RecarveFree(parking ? t->parked : t->heads, d, LastChunkOf(b, i),
                                    CarveEnd(b, i));
  d->starts = d->starts - 1 + made;  // made may be 0: the chunk went
  t->carved = t->carved - 1 + made;
  if (parking) t->parked_chunks += made;
  d->flags = static_cast<uint8_t>(d->flags & ~kTrimTail);
}

// Sets kParkedUnitBit on the live chunks of unit `i` of `b`, which parks:
// their frees go to the parked lists.
void MarkParkedChunks(BlockHeader* b, size_t i) {
  const UnitDesc* d = &Descs(b)[i];
  char* chunk = UnitBase(b, i) + d->first;
  for (uint32_t k = 0; k < d->starts; ++k) {
    char* payload = chunk + kHeaderBytes;
    const uint64_t h = ReadChunkHeader(payload);
    if (!ChunkHeaderIsFree(h)) WriteChunkHeader(payload, h | kParkedUnitBit);
    chunk += Stride(ChunkHeaderValue(h));
  }
}

// Coalesces the mostly free units of `b`, gives back the units marked for
// release and clears the marks; refiles the block (an empty one becomes a
// spare). Returns the chunks saved by coalescing.
uint64_t FinishBlock(FreelistState* st, BlockHeader* b) {
  UnitDesc* d = Descs(b);
  bool released = false;
  uint64_t saved = 0;
  // Most units of a block carry no mark: one test passes them.
  constexpr uint8_t kMarks = kTrimTail | kMostlyFree | kUnitReleasing | kUnitParking;
  for (size_t i = 0; i < b->units; ++i) {
    if ((d[i].flags & kMarks) == 0) continue;
    if ((d[i].flags & kTrimTail) != 0) TrimTail(st, b, i);
    if ((d[i].flags & kMostlyFree) != 0) saved += CoalesceUnit(st, b, i);
    if ((d[i].flags & kUnitReleasing) != 0) {
      st->table->carved -= d[i].starts;
      EmptyMemory(UnitStart(b, i), UnitEnd(b, i));
      d[i] = UnitDesc{0, 0, kNoChunkStart, static_cast<uint8_t>(i), 0};
      b->free_units |= uint64_t{1} << i;
      // What ran into the next unit went with this one.
      if (i + 1 < b->units && (d[i + 1].flags & kUnitReleasing) == 0) {
        d[i + 1].flags = static_cast<uint8_t>(d[i + 1].flags & ~kStraddledInto);
      }
      released = true;
    } else {
      if ((d[i].flags & kUnitParking) != 0) MarkParkedChunks(b, i);
      d[i].flags = static_cast<uint8_t>(d[i].flags & ~kMostlyFree);
    }
  }
  b->marked = 0;
  if (released) Refile(st, b);
  return saved;
}

// The page at or before `p` (units are page-sized: freelist_block.h).
char* PageFloor(char* p) {
  return reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(p) & ~uintptr_t{kUnitBytes - 1});
}

// Where purging a run of free units that starts at unit `s` may start: the
// page under the unit's base when the kUnitPhase bytes of it below the base
// hold nothing anyone reads, else the next page. Those bytes belong to unit
// s - 1: no chunk covers them when its last chunk ends short of the page
// (runs and cut tails stop there: CarveEnd), and one that does may still be
// free with its list link before the page. With 16-byte chunk headers the
// base is the page itself.
char* PurgeStart(BlockHeader* b, size_t s) {
  char* page = PageFloor(UnitBase(b, s));
  if (s == 0) return page + kUnitBytes;  // the block's header
  if (kUnitPhase == 0) return page;
  // Unit s - 1 holds chunks (a run of free units starts at s) and its last
  // one runs no further than unit s's start (s is free).
  if (Descs(b)[s - 1].starts == 0) return page + kUnitBytes;
  char* last = LastChunkOf(b, s - 1);
  const uint64_t h = ReadChunkHeader(last + kHeaderBytes);
  if (last + Stride(ChunkHeaderValue(h)) <= page) return page;
  const bool link_below = last + kHeaderBytes + sizeof(void*) <= page;
  return ChunkHeaderIsFree(h) && link_below ? page : page + kUnitBytes;
}

// PurgeFreeUnits
//
// Resident memory that follows the live data: a unit given back to its
// block is free, but its pages stay resident while the block stays, pinned
// by a few live chunks in other units; mimalloc purges such pages inside its
// segments. Each run of free units of the partial and spare blocks (full
// blocks have none) that holds a unit not yet purged goes to the block
// source's Purge, once: kUnitPurged remembers (freelist_block.h), so a unit
// carved again is purged again only once it is free again. Units lie on
// pages, so a single free unit covers one (but see PurgeStart); a run that
// covers none waits until a neighbour joins it. The cost is a look at each
// free unit's descriptor, at sweeps only. Called only by sweeps that frees
// run, after TrimSpares: a sweep before growth frees units to reuse them at
// once, and purging them would cost a fault per page. The space is poisoned
// and (checking builds) clobbered already; purged pages read as zero
// afterwards, which no one reads: free units hold no chunks, carving writes
// every header, and a free chunk's end below a unit's base is read only
// after an allocation hands it out.
void PurgeFreeUnits(Context* ctx, FreelistState* st) {
  auto purge = [&](BlockHeader* b) {
    UnitDesc* d = Descs(b);
    uint64_t m = b->free_units;
    while (m != 0) {
      const size_t s = static_cast<size_t>(absl::countr_zero(m));
      const uint64_t from_s = m >> s;
      const size_t len = ~from_s == 0 ? 64 - s : static_cast<size_t>(absl::countr_zero(~from_s));
      m &= ~((len == 64 ? ~uint64_t{0} : ((uint64_t{1} << len) - 1)) << s);
      // A unit's flag says that its page (the one under its base) went:
      // the first unit's page may not go yet (PurgeStart), and then waits
      // for a later sweep; unit 0's holds the block's header and never goes.
      char* from = PurgeStart(b, s);
      const size_t first = s != 0 && from == PageFloor(UnitBase(b, s)) ? s : s + 1;
      bool todo = false;
      for (size_t i = first; i < s + len; ++i) todo |= (d[i].flags & kUnitPurged) == 0;
      if (!todo) continue;
      char* to = PageFloor(UnitEnd(b, s + len - 1));
      if (to <= from) continue;  // no whole page: wait for a neighbour
      PurgeBlockBytes(ctx, from, static_cast<size_t>(to - from));
      for (size_t i = first; i < s + len; ++i) d[i].flags |= kUnitPurged;
    }
  };
  ForEachOn(st, OnList::kPartial, purge);
  ForEachOn(st, OnList::kSpare, purge);
}

// Makes the parked lists' heads, during a sweep that found the context
// shrunk: from the current run, whose block the context keeps anyway, else
// from a free chunk of the smallest class that holds them (uncounted again:
// `*walked` and its unit's count), which then pins its unit. A free never
// acquires a block: without either, the sweep does not park.
bool MakeParkedTable(FreelistState* st, uint64_t* walked) {
  FreeTable* t = st->table;
  size_t c = ParkedTableClass();
  void* p = nullptr;
  if (Stride(c) <= Room(st)) {
    p = CarveChunk(st, c);
  } else {
    while (c + 1 < kNumSizeClasses && t->heads[c] == nullptr) ++c;
    p = t->heads[c];
    if (p == nullptr) return false;
    t->heads[c] = NextFree(p);
    ClearFreeBit(p);
    --DescOf(p, ReadChunkHeader(p))->sweep_free;
    --*walked;
  }
  // No site: the heads are the kind's own, which VisitLiveChunks skips.
  MarkLive(p, kParkedTableBytes, Stride(c) - kHeaderBytes, kUnknownSiteId);
  t->parked = static_cast<void**>(p);
  std::fill(t->parked, t->parked + kNumSizeClasses, nullptr);
  return true;
}

// Files the parked chunks again and frees the parked lists' heads, during
// a sweep that does not park, counted as a free chunk found by the sweep:
// a context that stops parking (or empties) keeps no chunk for them.
void DropParkedTable(FreelistState* st, uint64_t* walked) {
  FreeTable* t = st->table;
  UnparkAll(st);
  void* p = t->parked;
  t->parked = nullptr;
  const uint64_t h = ReadChunkHeader(p);
  PushFree(t, p, h);
  UnitDesc* d = DescOf(p, h);
  ++d->sweep_free;
  BlockOfDesc(d)->touched_units |= uint64_t{1} << d->index;
  ++*walked;
}

// Sweep
//
// Counts the free chunks of each unit (a walk of the freelists), gives back
// the units whose chunks are all free (MarkReleasable), refiles the lists
// without their chunks, releases spare blocks beyond the budget and purges
// free units (PurgeFreeUnits) as `release` says, and schedules the next
// sweep. Cost: the freelists' length, plus the units of the blocks holding
// free chunks.
void Sweep(Context* ctx, FreelistState* st, SweepRelease release) {
  FreeTable* t = st->table;
  void* lists[2 * kNumSizeClasses];
  ClassLists(t, lists);
  uint64_t free_of[kNumSizeClasses] = {};
  WalkFreelists(lists, 2 * kNumSizeClasses, [&](size_t i, void* p) {
    UnitDesc* d = DescOf(p, ReadChunkHeader(p));
    ++d->sweep_free;
    BlockOfDesc(d)->touched_units |= uint64_t{1} << d->index;
    ++free_of[i / 2];
  });
  uint64_t walked = 0;
  size_t free_bytes = 0;
  for (size_t c = 0; c < kNumSizeClasses; ++c) {
    walked += free_of[c];
    free_bytes += static_cast<size_t>(free_of[c]) * SizeClassBytes(c);
  }
  // A sweep run by frees decides whether to park; one before growth parks
  // as the last did (what is parked of the class wanted is taken one chunk
  // at a time before a new block, AllocFromNewRun); one of a context that
  // emptied does not park. Bytes, not chunks, say whether
  // the chunks are mostly free: after a shift to smaller sizes, a few large
  // free chunks hold more than many small live ones. (The live count
  // includes dedicated chunks: then the kind parks later, not sooner.)
  const size_t live = st->live.live();
  const bool loose = ctx->bytes_in_blocks() / kDrainHeldNumerator > live / kDrainHeldDenominator;
  if (!loose || live > t->live_high) t->live_high = live;
  bool park = release == SweepRelease::kPurged
                  ? loose && live * kShrinkDivisor < t->live_high &&
                        free_bytes * kDrainDivisor > free_bytes + live
                  : release == SweepRelease::kKeep && t->parked != nullptr;
  if (park && t->parked == nullptr) park = MakeParkedTable(st, &walked);
  if (!park && t->parked != nullptr) DropParkedTable(st, &walked);
  bool any = t->parked_chunks != 0;
  auto mark = [&](BlockHeader* b) {
    if (b->touched_units == 0) return;
    const int marks = MarkReleasable(st, b, park);
    b->marked = marks != 0;
    any |= marks != 0;
  };
  ForEachOn(st, OnList::kPartial, mark);
  ForEachOn(st, OnList::kFull, mark);
  void* listed[kNumSizeClasses];
  void* listed_tails[kNumSizeClasses];
  uint64_t released = 0;
  if (any) {
    released = RebuildLists(st, listed_tails);
    for (size_t c = 0; c < kNumSizeClasses; ++c) {
      listed[c] = t->heads[c];
      t->heads[c] = nullptr;
    }
  }
  auto finish = [&](BlockHeader* b) {
    if (b->marked) released += FinishBlock(st, b);
  };
  // Blocks only move from full to partial or spare here, and a partial
  // block never becomes full: each is finished once.
  ForEachOn(st, OnList::kPartial, finish);
  ForEachOn(st, OnList::kFull, finish);
  if (any) {
    // The chunks that coalescing filed (of units more than a quarter free)
    // and the pieces of cut tails go after those of the denser units:
    // allocations fill the dense units first, and the sparse ones drain.
    for (size_t c = 0; c < kNumSizeClasses; ++c) {
      if (listed[c] == nullptr) continue;
      SetNextFree(listed_tails[c], t->heads[c]);
      t->heads[c] = listed[c];
    }
  }
  Descs(st->first)->sweep_free = 0;
  st->first->touched_units = 0;
  if (release != SweepRelease::kKeep) TrimSpares(ctx, st, release == SweepRelease::kWarm);
  if (release == SweepRelease::kPurged) PurgeFreeUnits(ctx, st);
  // A sweep that parks is never backed off: the units it parks drain only
  // as fast as sweeps give them back.
  Schedule(st, walked, park ? walked : released);
}

// --- Allocation -------------------------------------------------------------------

void* AllocDedicated(Context* ctx, FreelistState* st, size_t size) {
  // A slow path too: chunks other threads freed come back first (a program
  // of large chunks alone, or direct mode, never reaches AllocFromNewRun).
  if (st->remote.HasAny()) ReclaimRemote(ctx, st);
  // So do the pending frees ("Deferred frees"): one of them may be a
  // dedicated chunk, whose block would otherwise be held beside the new
  // one, and refused by a limit that holds one.
  FinishPending(ctx, st);
  const size_t want = kDedicatedPayload + size + (kChecking ? kCheckingTailBytes : 0);
  KindBlock* kb = AcquireKindBlock(ctx, want, kMinBlockAlignment);
  if (kb == nullptr) return nullptr;
  auto* b = reinterpret_cast<DedicatedHeader*>(kb);
  char* mem = reinterpret_cast<char*>(b);
  b->end = mem + kb->size;
  st->dedicated.PushFront(kb);
  char* payload = mem + kDedicatedPayload;
  WriteChunkHeader(payload, MakeChunkHeader(kChunkKindFreelist, true, 0, kDedicatedPayload - 8));
  st->live.Add(static_cast<size_t>(b->end - payload));
  AddDedicatedLive(st, b->end - payload);
  MarkLive(payload, size, static_cast<size_t>(b->end - payload), PendingSite(ctx));
  return payload;
}

// FreelistAllocFast
//
// FreelistAlloc for the tree's slow path (kind_api.h, AllocFast): the pop,
// or a chunk carved from the current run (which cannot fail); nullptr, with
// nothing changed, for anything that may fail or needs another block.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void* FreelistAllocFast(Context* ctx, FreelistState* st,
                                                            size_t size, size_t alignment) {
  if (ABSL_PREDICT_FALSE(alignment > kDefaultAlignment || size > st->chunk_limit)) return nullptr;
  const size_t c = SizeClassOf(size);
  FreeTable* t = st->table;
  void* p = t->heads[c];
  if (ABSL_PREDICT_FALSE(p == nullptr)) {
    // Chunks other threads freed are taken back (AllocFromNewRun) before
    // new ones are carved: a producer whose chunks a consumer frees reuses
    // them rather than spreading over new runs.
    // A chunk of a unit or more first looks for a free chunk of a class
    // just above (AllocFromNewRun).
    if (Stride(c) <= Room(st) && (HasTable(st) || st->orphans == nullptr) &&
        !st->remote.HasAny() && c < kFirstReuseUpClass) {
      return CarveLive(st, c, size, PendingSite(ctx));
    }
    return nullptr;
  }
  t->heads[c] = NextFree(p);
  ClearFreeBit(p);
  st->live.Add(SizeClassBytes(c));
  MarkLive(p, size, Stride(c) - kHeaderBytes, PendingSite(ctx));
  return p;
}

// FreelistAlloc
//
// FreelistAllocFast, and where it declines, the paths that may acquire a
// block: aligned chunks, dedicated chunks, a new run (after other threads'
// frees are taken back).
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void* FreelistAlloc(Context* ctx, FreelistState* st,
                                                        size_t size, size_t alignment) {
  if (void* p = FreelistAllocFast(ctx, st, size, alignment); ABSL_PREDICT_TRUE(p != nullptr)) {
    return p;
  }
  if (alignment > kDefaultAlignment) return AllocAlignedRedirect(ctx, size, alignment);
  if (size > st->chunk_limit) return AllocDedicated(ctx, st, size);
  return AllocFromNewRun(ctx, st, size, SizeClassOf(size));
}

// --- Free ---------------------------------------------------------------------------

// Whether `b`, the block a dedicated chunk's header leads to, is a live
// dedicated block of `ctx`. A block that went back to its source may hold
// anything in its first 16 bytes (the caching source's node, glibc's
// free-list words), so the owner word is read first, past any poison, and
// the links are followed only once it names `ctx`: a live block's neighbours
// point back at it. Only a chunk whose free bit is clear gets here; a freed
// one was reported from its header alone.
bool IsLiveDedicated(const Context* ctx, const FreelistState* st, const DedicatedHeader* b) {
  return st->dedicated.HoldsBlockOf(ctx, &b->link);
}

// Reports misuse and returns false if `p` is not a live dedicated chunk of
// `ctx`: its memory was reused, or it is a stale pointer to a chunk of a
// context that was reset or destroyed and whose block came back to this one.
bool VerifyDedicated(Context* ctx, FreelistState* st, void* p, uint64_t h, const char* operation) {
  if (IsLiveDedicated(ctx, st, DedicatedOf(p, h))) return true;
  ReportMisuse("%s of chunk %p in context '%s': not a live dedicated chunk of this "
               "context (already freed, or its memory reused)",
               operation, p, ctx->name());
  return false;
}

// The block goes back with the chunk's free bit set: the bit sits past what a
// source writes into a released block (kReleasedBlockScratch), so a second
// free, a realloc or an mcx::Free of the chunk reads it and reports a double
// free for as long as the memory is not reused.
void ReleaseDedicatedBlock(Context* ctx, KindBlock* b) {
  char* payload = reinterpret_cast<char*>(b) + kDedicatedPayload;
  WriteChunkHeader(payload, ReadChunkHeader(payload) | kChunkFreeBit);
  ReleaseKindBlock(ctx, b);
}

void FreeDedicated(Context* ctx, FreelistState* st, void* p, uint64_t h) {
  if (!VerifyDedicated(ctx, st, p, h, "free")) return;
  DedicatedHeader* b = DedicatedOf(p, h);
  st->live.Remove(static_cast<size_t>(b->end - static_cast<char*>(p)));
  AddDedicatedLive(st, -(b->end - static_cast<char*>(p)));
  st->dedicated.Remove(&b->link);
  ReleaseDedicatedBlock(ctx, &b->link);
  if (st->live.Empty()) SweepEmpty(ctx);
}

void FreeNow(Context* ctx, FreelistState* st, void* p);
void FreeParked(Context* ctx, void* p, uint64_t h);

// A free of a chunk that is free already, or whose free is pending.
ABSL_ATTRIBUTE_NOINLINE void ReportDoubleFree(Context* ctx, void* p) {
  ReportMisuse("double free of chunk %p in context '%s'", p, ctx->name());
}

// Everything but the common case: dedicated chunks, aligned chunks, and
// every kind of bad pointer.
ABSL_ATTRIBUTE_NOINLINE void FreeSlow(Context* ctx, void* p, uint64_t h) {
  if ((h & kFastMask) == (kFastExpect | kParkedUnitBit)) return FreeParked(ctx, p, h);
  if (!ChunkHeaderMagicOk(h)) return ReportBadChunk(p, "free");
  unsigned kind = ChunkHeaderKind(h);
  // The real chunk goes straight to the kind: only the aligned address was
  // announced to Valgrind (Context::Free announces its release).
  if (kind == kChunkKindAlignedRedirect) return FreeNow(ctx, StateOf(ctx), AlignedRedirectTarget(p));
  if (kind != kChunkKindFreelist) return ReportBadChunk(p, "free");
  if (ChunkHeaderIsFree(h)) {
    return ReportDoubleFree(ctx, p);
  }
  if (!VerifyLiveChunk(ctx, p, h, "free")) return;
  FreeDedicated(ctx, StateOf(ctx), p, h);
}

// Where the countdown of frees ends: the chunk waits as an orphan if there
// is no table yet; else it is filed and a sweep runs.
ABSL_ATTRIBUTE_NOINLINE void FreeAndSweep(Context* ctx, void* p, uint64_t h) {
  FreelistState* st = StateOf(ctx);
  if (!HasTable(st)) {
    PushOrphan(st, p, h);
    st->sweep_countdown = 1;
    return;
  }
  PushFree(st->table, p, h);
  Sweep(ctx, st, SweepRelease::kPurged);
}

// The free that leaves no chunk live: a sweep, if blocks beyond the first
// hold units, gives them back now rather than after the countdown, which
// may not end for as long as the context lives (an engine that frees all
// its data at a close and then idles). The blocks go back warm: a context
// that empties and refills over and over (W7's buffers) takes them back
// from the block cache at once, and one that stays empty leaves them to
// the cache's decay, which purges them. Such a context sweeps once per
// cycle, at the cost of walking what the cycle freed.
//
// Only if a run was started since the last such sweep: that sweep left
// only units it could not give back (the run being carved, the freelist
// heads' unit) and their free chunks, and a context that then goes from
// one chunk to none over and over, served by its lists, would otherwise
// walk them at every free (100 times the cost of the free).
// (The static empty table's flag is 0: no table, no sweep.)
ABSL_ATTRIBUTE_NOINLINE void SweepEmpty(Context* ctx) {
  FreelistState* st = StateOf(ctx);
  if (st->table->runs_since_empty == 0) return;
  st->table->runs_since_empty = 0;
  if (st->partial == nullptr && st->full == nullptr) return;
  Sweep(ctx, st, SweepRelease::kWarm);
}

// Files a verified chunk of a block (header `h`, not free) as the owner's
// free: the countdown, the push, and the sweep when the context empties.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void FileFree(Context* ctx, FreelistState* st, void* p,
                                                  uint64_t h) {
  const size_t bytes = SizeClassBytes(ChunkHeaderValue(h));
  st->live.Remove(bytes);
  if (kChecking) {
    UnpoisonMemoryRegion(p, bytes);
    std::memset(p, kClobberByte, bytes);
  }
  if (ABSL_PREDICT_FALSE(--st->sweep_countdown == 0)) return FreeAndSweep(ctx, p, h);
  PushFree(st->table, p, h);
  if (ABSL_PREDICT_FALSE(st->live.Empty()) && st->table->runs_since_empty != 0) {
    SweepEmpty(ctx);
  }
}

// FreeParked
//
// A chunk of a unit that was parked when the sweep marked it
// (kParkedUnitBit): to its parked list while the unit stays parked, so that
// the unit drains; else the ordinary way. The countdown and the emptied
// context's sweep as for any free.
ABSL_ATTRIBUTE_NOINLINE void FreeParked(Context* ctx, void* p, uint64_t h) {
  FreelistState* st = StateOf(ctx);
  h &= ~kParkedUnitBit;
  if (kChecking && !VerifyLiveChunk(ctx, p, h, "free")) return;
  const UnitDesc* d = DescOf(p, h);
  FreeTable* t = st->table;
  if (!HasTable(st) || t->parked == nullptr || (d->flags & kUnitParking) == 0) {
    return FileFree(ctx, st, p, h);
  }
  const size_t c = ChunkHeaderValue(h);
  st->live.Remove(SizeClassBytes(c));
  if (kChecking) {
    UnpoisonMemoryRegion(p, SizeClassBytes(c));
    std::memset(p, kClobberByte, SizeClassBytes(c));
  }
  PushOnto(&t->parked[c], p, h, Stride(c));
  ++t->parked_chunks;
  if (--st->sweep_countdown == 0) return Sweep(ctx, st, SweepRelease::kPurged);
  if (st->live.Empty() && t->runs_since_empty != 0) SweepEmpty(ctx);
}

// A free from a thread other than the owner (remote_free.h): the chunk is
// checked and marked free at once, so that a second free is reported here
// or by the owner rather than looping the list, and waits on the remote
// list, with one compare-and-swap, for the owner to take it back.
// An aligned chunk is freed as the chunk its redirect leads to, marked
// free here like any other: a second free of it, from any thread, then
// finds the mark and is reported, where pushing the aligned pointer again
// would link it to itself on the list.
ABSL_ATTRIBUTE_NOINLINE void FreeRemote(Context* ctx, void* p) {
  FreelistState* st = StateOf(ctx);
  void* const freed = p;
  uint64_t h = ReadChunkHeader(p);
  if (ChunkHeaderMagicOk(h) && ChunkHeaderKind(h) == kChunkKindAlignedRedirect) {
    p = AlignedRedirectTarget(p);
    h = ReadChunkHeader(p);
  }
  if (!ChunkHeaderMagicOk(h) || ChunkHeaderKind(h) != kChunkKindFreelist) {
    return ReportBadChunk(freed, "free");
  }
  if (ChunkHeaderIsFree(h)) return ReportDoubleFree(ctx, freed);
  if (!VerifyLiveChunk(ctx, p, h, "free")) return;
  WriteChunkHeader(p, h | kChunkFreeBit | kRemoteFreeBit);
  // The list's link goes in the chunk's first word, which ASan builds keep
  // poisoned before an aligned chunk's start.
  if (p != freed) UnpoisonMemoryRegion(p, sizeof(void*));
  st->remote.Push(p);
}

void FlushDeferred(Context* ctx, FreelistState* st);

// Finishes the pending frees ("Deferred frees"), if there are any.
inline void FinishPending(Context* ctx, FreelistState* st) {
  if (kDeferFrees && ABSL_PREDICT_FALSE(st->table->deferred_count != 0)) FlushDeferred(ctx, st);
}

// Takes back what other threads freed: each chunk as its owner's free.
// With a table, the chunks of blocks are filed in one pass and counted
// once (the live bytes and the sweep's countdown), the sweep, if one came
// due, after the last; without one, each goes the owner's way.
void ReclaimRemote(Context* ctx, FreelistState* st) {
  // The owner's pending frees first: one may be of a chunk another thread
  // freed too, which then reads free and is reported, before the chunk is
  // filed and handed out again.
  FinishPending(ctx, st);
  void* p = st->remote.TakeAll();
  const bool batch = HasTable(st);
  size_t freed_bytes = 0;
  int64_t freed = 0;
  while (p != nullptr) {
    void* next = RemoteFreeList::Next(p);
    uint64_t h = ReadChunkHeader(p);
    const uint64_t owned = h & ~(kChunkFreeBit | kRemoteFreeBit);
    // Chunks of blocks were verified when they were pushed, and filing
    // rewrites the header; dedicated and aligned chunks go the owner's
    // slow way, which reads it.
    if (ABSL_PREDICT_TRUE((owned & kFastMask) == kFastExpect)) {
      if (batch) {
        const size_t bytes = SizeClassBytes(ChunkHeaderValue(owned));
        freed_bytes += bytes;
        ++freed;
        if (kChecking) {
          UnpoisonMemoryRegion(p, bytes);
          std::memset(p, kClobberByte, bytes);
        }
        PushFree(st->table, p, owned);
      } else {
        FileFree(ctx, st, p, owned);
      }
    } else {
      if (ChunkHeaderKind(h) == kChunkKindFreelist) {
        h = owned;
        WriteChunkHeader(p, h);
      }
      FreeSlow(ctx, p, h);
    }
    p = next;
  }
  if (freed == 0) return;
  st->live.Remove(freed_bytes);
  if ((st->sweep_countdown -= freed) <= 0) return Sweep(ctx, st, SweepRelease::kPurged);
  if (st->live.Empty()) SweepEmpty(ctx);
}

// FreelistFree
//
// Cost note: the owner test, one header load and compare, a countdown, a
// push and a header store: about 17 instructions.
// The owner's free, finished in the call: the header read and checked, the
// chunk filed.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void FreeNow(Context* ctx, FreelistState* st, void* p) {
  const uint64_t h = ReadChunkHeader(p);
  if (ABSL_PREDICT_FALSE((h & kFastMask) != kFastExpect)) return FreeSlow(ctx, p, h);
  if (kChecking && !VerifyLiveChunk(ctx, p, h, "free")) return;
  FileFree(ctx, st, p, h);
}

// Deferred frees
//
// A chunk freed at random in a context larger than the caches is a cache
// miss: its header was last touched when the chunk was handed out, and the
// free waits for it (to check the chunk and find its class) before the
// program goes on. So in release builds a context holding more than
// `defer_above` live bytes does not read it: the free prefetches the
// header, puts the chunk in the table's ring of kDeferredFrees slots, and
// finishes the free the slot held, made kDeferredFrees frees before, whose
// header has arrived meanwhile. A pending free is finished later, and all
// of them at a free below the bound, a realloc, ResetPeak and an
// allocation that would otherwise take a new block (FlushDeferred); not at
// every new run, which would pay the flush for at most eight chunks'
// reuse. What stays true:
//   - live_bytes is exact: Live subtracts the pending chunks. The peak
//     counts a free from when it is finished, so it may exceed the most
//     that was live by the pending chunks' bytes (eight chunks at most):
//     an exact peak would need their sizes, that is their headers, at
//     every allocation that reaches it, and a churn at its high-water mark
//     reaches it at every allocation.
//   - a context with a free pending is never empty (SetDeferBound), so the
//     sweep of an emptied context runs when it empties; below the bound
//     the pending frees are finished before the free that may empty it.
//   - no allocation hands out a pending chunk: it is on no list.
//   - a bad free (a double free, a pointer that is not a chunk) is
//     reported when it is finished: within the context's next
//     kDeferredFrees frees or at its next realloc, ResetPeak or
//     allocation that takes a new block; a second free of a chunk still
//     pending is reported at once (IsPending).

// FreeTable::deferred_next is the byte offset of the next slot.
static_assert((kDeferredFrees & (kDeferredFrees - 1)) == 0, "the ring wraps by a mask");
constexpr uint32_t kDeferredSlotMask = kDeferredFrees * sizeof(void*) - 1;

// Finishes every pending free, oldest first. Each slot is emptied before
// its free is finished, so a failure handler that leaves by longjmp
// leaves the ring consistent.
ABSL_ATTRIBUTE_NOINLINE void FlushDeferred(Context* ctx, FreelistState* st) {
  const uint32_t next = st->table->deferred_next / sizeof(void*);
  for (uint32_t k = 0; k < kDeferredFrees; ++k) {
    FreeTable* t = st->table;
    const uint32_t i = (next + k) % kDeferredFrees;
    void* q = t->deferred[i];
    if (q == nullptr) continue;
    t->deferred[i] = nullptr;
    --t->deferred_count;
    FreeNow(ctx, st, q);
  }
}

// Whether `p`'s free is pending: a compare and a branch per slot, never
// taken but for a double free (a loop or a branchless fold of the compares
// costs several times more instructions).
ABSL_ATTRIBUTE_ALWAYS_INLINE inline bool IsPending(const FreeTable* t, const void* p) {
  static_assert(kDeferredFrees == 8, "one compare per slot below");
  const void* const* d = t->deferred;
  return d[0] == p || d[1] == p || d[2] == p || d[3] == p || d[4] == p || d[5] == p ||
         d[6] == p || d[7] == p;
}

// Puts `p` in the ring and finishes the free its slot held. No empty test:
// above defer_above the context keeps a live chunk.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void DeferFree(Context* ctx, FreelistState* st, void* p) {
  FreeTable* t = st->table;
  __builtin_prefetch(static_cast<char*>(p) - sizeof(uint64_t), 1);
  // A chunk whose free is pending, freed again: reported now, as the free
  // bit would be. Left in the ring, the first free could be finished and
  // the chunk handed out again before the second's turn, which would then
  // file a live chunk. The slots are one cache line, in hand.
  if (ABSL_PREDICT_FALSE(IsPending(t, p))) return ReportDoubleFree(ctx, p);
  // The slot as a byte offset: one add and one mask to the next.
  const uint32_t at = t->deferred_next;
  char* slot = reinterpret_cast<char*>(t->deferred) + at;
  void* q;
  std::memcpy(&q, slot, sizeof(q));
  std::memcpy(slot, &p, sizeof(p));
  t->deferred_next = (at + sizeof(void*)) & kDeferredSlotMask;
  if (ABSL_PREDICT_FALSE(q == nullptr)) {
    ++t->deferred_count;
    return;
  }
  const uint64_t h = ReadChunkHeader(q);
  if (ABSL_PREDICT_FALSE((h & kFastMask) != kFastExpect)) return FreeSlow(ctx, q, h);
  // FileFree without its empty test, on the table in hand (FileFree reads
  // it again after the slot's stores: one instruction per free).
  st->live.Remove(SizeClassBytes(ChunkHeaderValue(h)));
  if (ABSL_PREDICT_FALSE(--st->sweep_countdown == 0)) return FreeAndSweep(ctx, q, h);
  PushFree(t, q, h);
}

// The pending frees, then `p`'s: out of line, so that the inline free
// saves no register for the call.
ABSL_ATTRIBUTE_NOINLINE void FlushThenFree(Context* ctx, FreelistState* st, void* p) {
  FlushDeferred(ctx, st);
  FreeNow(ctx, st, p);
}

// The owner's free: deferred in a context too full to empty, else
// finished now (after the pending ones, so that an emptied context sees
// itself empty).
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void FreeOwned(Context* ctx, FreelistState* st, void* p) {
  if constexpr (kDeferFrees) {
    if (st->live.live() > st->defer_above) return DeferFree(ctx, st, p);
    if (ABSL_PREDICT_FALSE(st->table->deferred_count != 0)) return FlushThenFree(ctx, st, p);
  }
  FreeNow(ctx, st, p);
}

ABSL_ATTRIBUTE_ALWAYS_INLINE inline void FreelistFree(Context* ctx, FreelistState* st, void* p) {
  if (ABSL_PREDICT_FALSE(st->remote.FromOtherThread())) return FreeRemote(ctx, p);
  FreeOwned(ctx, st, p);
}

// --- Realloc ------------------------------------------------------------------------

// The header of a dedicated chunk that grew by realloc.
uint64_t GrowthHeader(uint64_t h) {
  return (h & ~(kChunkValueMask << kChunkValueShift)) | (kGrowthChunk << kChunkValueShift);
}

// Marks the new dedicated chunk `p` as one that grew by realloc to `asked`.
void MarkGrowth(void* p, size_t asked) {
  const uint64_t h = GrowthHeader(ReadChunkHeader(p));
  DedicatedOf(p, h)->asked = asked;
  WriteChunkHeader(p, h);
}

void* ReallocDedicated(Context* ctx, FreelistState* st, void* p, uint64_t h, size_t new_size) {
  if (!VerifyDedicated(ctx, st, p, h, "realloc")) {
    SetFailure(ctx, Failure::kBadArgument);
    return nullptr;
  }
  DedicatedHeader* b = DedicatedOf(p, h);
  const size_t old_usable = b->link.size - kDedicatedPayload;
  constexpr size_t kTail = kChecking ? kCheckingTailBytes : 0;
  // A chunk that grew by realloc grows on in its block while the block has
  // room, and shrinks in place while it uses more than half of it: no call
  // to the source. (Direct builds move every chunk at every realloc.)
  if (!kDirectBuild && ChunkHeaderValue(h) == kGrowthChunk && new_size <= old_usable - kTail &&
      (new_size >= b->asked || new_size * kShrinkMoveFactor > old_usable)) {
    b->asked = new_size;
    MarkLive(p, new_size, old_usable, PendingSite(ctx));
    return p;
  }
  // Shrunk to a class: the chunk moves into the context's blocks, and the
  // dedicated block goes back. (A chunk that left its run growing, below
  // chunk_limit, grows through the source like any dedicated chunk.)
  if (new_size <= st->chunk_limit && new_size <= old_usable) {
    void* q = FreelistAlloc(ctx, st, new_size, kDefaultAlignment);
    if (q != nullptr) {
      // A dedicated chunk shrunk in place may hold fewer bytes than asked.
      const size_t old_bytes = kTracksRequested ? RequestedSize(p) : old_usable;
      std::memcpy(q, p, old_bytes < new_size ? old_bytes : new_size);
      FreeDedicated(ctx, st, p, h);
      return q;
    }
    // Out of memory for a shrink: the block shrinks in place below.
  }
  // A growth makes it a chunk that grew by realloc, once it succeeded.
  const uint64_t moved_h = new_size > old_usable && !kDirectBuild ? GrowthHeader(h) : h;
  const size_t keep = kDedicatedPayload + (old_usable < new_size ? old_usable : new_size);
  // If the block moves, the old one goes back to the source marked freed, as
  // FreeDedicated leaves it: the old address is then a freed chunk. The copy
  // carries the bit along; it is cleared below.
  WriteChunkHeader(p, h | kChunkFreeBit);
  // The source may copy `keep` bytes itself; none of them may be poisoned
  // (WriteChunkHeader poisons the header again, so this comes after it).
  UnpoisonMemoryRegion(b, b->link.size);
  Block nb = ReallocateBlock(ctx, Block{b, b->link.size}, keep,
                             kDedicatedPayload + new_size + (kChecking ? kCheckingTailBytes : 0),
                             kMinBlockAlignment);
  if (nb.ptr == nullptr) {
    WriteChunkHeader(p, h);
    MarkLive(p, kTracksRequested ? RequestedSize(p) : old_usable, old_usable,
             kChecking ? ChunkSite(p) : kUnknownSiteId);
    return nullptr;
  }
  // The copy's links still name the old block's neighbours.
  auto* moved = static_cast<DedicatedHeader*>(nb.ptr);
  moved->asked = new_size;
  st->live.Remove(old_usable);
  st->live.Add(nb.size - kDedicatedPayload);
  AddDedicatedLive(st, static_cast<ptrdiff_t>(nb.size - kDedicatedPayload) -
                           static_cast<ptrdiff_t>(old_usable));
  moved->link.size = nb.size;
  moved->end = static_cast<char*>(nb.ptr) + nb.size;
  st->dedicated.Replace(&moved->link);
  char* payload = static_cast<char*>(nb.ptr) + kDedicatedPayload;
  WriteChunkHeader(payload, moved_h);
  MarkLive(payload, new_size, static_cast<size_t>(moved->end - payload), PendingSite(ctx));
  return payload;
}

// Resizes the chunk carved last, in place: the run's pointer moves with its
// end. Units it now runs into are marked; units it left are not any more.
void ResizeLast(FreelistState* st, void* p, uint64_t h, size_t c, size_t nc) {
  char* start = ChunkStart(p);
  char* old_end = start + Stride(c);
  char* new_end = start + Stride(nc);
  BlockHeader* b = st->bump_block;
  if (b != st->first) {
    UnitDesc* d = Descs(b);
    const size_t from = UnitIndex(b, start);
    const size_t old_last = UnitIndex(b, old_end - 1);
    const size_t new_last = UnitIndex(b, new_end - 1);
    for (size_t j = from + 1; j <= new_last; ++j) d[j].flags |= kStraddledInto;
    for (size_t j = new_last + 1; j <= old_last; ++j) {
      d[j].flags = static_cast<uint8_t>(d[j].flags & ~kStraddledInto);
    }
  }
  WriteChunkHeader(p, (h & ~(kChunkValueMask << kChunkValueShift)) |
                          (uint64_t{static_cast<uint8_t>(nc)} << kChunkValueShift));
  if (new_end < old_end) PoisonMemoryRegion(new_end, static_cast<size_t>(old_end - new_end));
  st->bump_ptr = new_end;
}

void* FreelistRealloc(Context* ctx, FreelistState* st, void* p, size_t /*old_size*/,
                      size_t new_size) {
  // A realloc of a chunk whose free is pending is reported as one after a
  // free.
  FinishPending(ctx, st);
  const uint64_t h = ReadChunkHeader(p);
  if ((h & (kFastMask & ~(kChunkExternalBit | kParkedUnitBit))) != kFastExpect) {
    if (IsAlignedRedirect(p)) return ReallocAlignedRedirect(ctx, p, new_size);
    if (ChunkHeaderMagicOk(h) && ChunkHeaderKind(h) == kChunkKindFreelist) {
      ReportMisuse("realloc of chunk %p in context '%s' after it was freed", p, ctx->name());
    } else {
      ReportBadChunk(p, "realloc");
    }
    SetFailure(ctx, Failure::kBadArgument);
    return nullptr;
  }
  if (!VerifyLiveChunk(ctx, p, h, "realloc")) {
    SetFailure(ctx, Failure::kBadArgument);
    return nullptr;
  }
  if (ChunkHeaderIsExternal(h)) return ReallocDedicated(ctx, st, p, h, new_size);
  const size_t c = ChunkHeaderValue(h);
  const size_t usable = SizeClassBytes(c);
  const size_t old_bytes = kTracksRequested ? RequestedSize(p) : usable;
  const SiteId site = PendingSite(ctx);
  if (new_size <= st->chunk_limit) {
    const size_t nc = SizeClassOf(new_size);
    if (nc == c) {
      MarkLive(p, new_size, Stride(c) - kHeaderBytes, site);
      return p;
    }
    // The chunk carved last grows or shrinks in place while its run allows,
    // up to kInPlaceGrowthLimit; beyond, it moves to a dedicated block. If
    // a limit refuses that block, the chunk grows in its run after all: a
    // limit must not refuse what fits in blocks the context already holds
    // (the source's own failure is reported, as for any block).
    char* start = ChunkStart(p);
    if (start + Stride(c) == st->bump_ptr &&
        Stride(nc) <= static_cast<size_t>(st->bump_end - start)) {
      if (!kDirectBuild && new_size > kInPlaceGrowthLimit && nc > c) {
        const Failure before = LastFailure(ctx);
        void* q = AllocDedicated(ctx, st, new_size);
        if (q != nullptr) {
          MarkGrowth(q, new_size);
          std::memcpy(q, p, old_bytes);
          FreeNow(ctx, st, p);
          return q;
        }
        if (LastFailure(ctx) != Failure::kLimit) return nullptr;
        WithdrawRefusal(ctx, before);
      }
      ResizeLast(st, p, h, c, nc);
      st->live.Remove(usable);
      st->live.Add(SizeClassBytes(nc));
      MarkLive(p, new_size, Stride(nc) - kHeaderBytes, site);
      return p;
    }
    if (nc < c && Stride(nc) * kShrinkMoveFactor > Stride(c)) {
      MarkLive(p, new_size, Stride(c) - kHeaderBytes, site);  // not worth a copy
      return p;
    }
  }
  size_t want = new_size;
  if (new_size > usable) {
    const size_t jump = usable + usable / kGrowthJumpDivisor;
    if (want < jump && jump <= st->chunk_limit) want = jump;
  }
  const Failure before = LastFailure(ctx);
  void* q = FreelistAlloc(ctx, st, want, kDefaultAlignment);
  // A limit that refuses the jump's block must not refuse the size asked
  // for, which may fit the lists or the run the context holds already.
  if (q == nullptr && want != new_size && LastFailure(ctx) == Failure::kLimit) {
    WithdrawRefusal(ctx, before);
    want = new_size;
    q = FreelistAlloc(ctx, st, want, kDefaultAlignment);
  }
  // Out of the classes by growing: a chunk that grew by realloc.
  if (q != nullptr && new_size > st->chunk_limit && !kDirectBuild) {
    MarkGrowth(q, new_size);
  }
  if (q == nullptr) {
    if (new_size > usable) return nullptr;
    MarkLive(p, new_size, Stride(c) - kHeaderBytes, site);  // a shrink never fails
    return p;
  }
  // A jump is always to a class (it stays within chunk_limit): the chunk
  // is live for what was asked.
  if (want != new_size) MarkLive(q, new_size, Stride(SizeClassOf(want)) - kHeaderBytes, site);
  std::memcpy(q, p, old_bytes < new_size ? old_bytes : new_size);
  FreeNow(ctx, st, p);
  return q;
}


size_t FreelistChunkSize(const void* p) {
  const uint64_t h = ReadChunkHeader(p);
  if (ChunkHeaderKind(h) == kChunkKindAlignedRedirect) return GetChunkSize(p);
  // Checking builds guard the requested bytes with a sentinel right after
  // them, ASan builds poison what follows: the usable size is exactly what
  // was asked for.
  if (kTracksRequested) return RequestedSize(p);
  if (ChunkHeaderIsExternal(h)) return DedicatedOf(p, h)->link.size - kDedicatedPayload;
  return SizeClassBytes(ChunkHeaderValue(h));
}

// --- Reset, release, stats, check ---------------------------------------------------

void ReleaseDedicated(Context* ctx, FreelistState* st) {
  // A stale pointer to a chunk reads "freed" for as long as its block stays.
  st->dedicated.ForEach([&](KindBlock* b) { ReleaseDedicatedBlock(ctx, b); });
  st->dedicated.Clear();
}

char* FirstAreaStart(const FreelistState* st) {
  return reinterpret_cast<char*>(st->first) + kFirstChunkOffset;
}
char* FirstAreaEnd(const Context* ctx, const FreelistState* st) {
  const char* block_end = reinterpret_cast<const char*>(ctx) + ctx->first_block_size();
  const char* cap = reinterpret_cast<const char*>(st->first) + kMaxFreelistBlockSize;
  return const_cast<char*>(block_end < cap ? block_end : cap);
}

void StartFirstArea(const Context* ctx, FreelistState* st) {
  *Descs(st->first) = UnitDesc{0, 0, kNoChunkStart, 0, 0};
  st->first->touched_units = 0;
  SetCurrentRun(st, Run{st->first, FirstAreaStart(st), FirstAreaEnd(ctx, st)});
}

void EmptyBlock(BlockHeader* b) {
  b->free_units = AllUnits(b->units);
  b->touched_units = 0;
  b->marked = 0;
  InitDescs(b);
}

void FreelistReset(Context* ctx, FreelistState* st, const ResetOptions& options) {
  st->remote.TakeAll();  // those chunks lie in the memory about to be emptied
  ReleaseDedicated(ctx, st);
  // What was handed out is emptied first; blocks are then kept while they
  // fit (block_list.h), all units free, as spares used before new ones.
  EmptyMemory(reinterpret_cast<char*>(st->first) + kFirstChunkOffset, FirstAreaEnd(ctx, st));
  BlockList all;
  ForEachPageBlock(st, [&](BlockHeader* b) {
    EmptyMemory(UnitsStart(b), UnitsEnd(b));
    all.PushBack(&b->link);
  });
  st->partial = st->full = st->spare = nullptr;
  BlockList kept;
  ResetBlocks(ctx, &all, options, ctx->first_block_size(), &kept, nullptr);
  kept.ForEach([&](KindBlock* k) {
    BlockHeader* b = HeaderOf(k);
    EmptyBlock(b);
    b->list = OnList::kNone;
    MoveTo(st, b, OnList::kSpare);
  });
  st->table = EmptyTable();
  st->sweep_countdown = 1;
  st->orphans = nullptr;
  StartFirstArea(ctx, st);
  st->next_block_size = st->base_block_size;
  st->live.Clear();
  // The deferred frees lay in the table, emptied with the rest.
  st->dedicated_live = 0;
  st->defer_above = SIZE_MAX;
}

void FreelistReleaseAll(Context* ctx, FreelistState* st) {
  st->remote.TakeAll();
  ReleaseDedicated(ctx, st);
  ForEachPageBlock(st, [&](BlockHeader* b) {
    b->list = OnList::kNone;
    ReleaseKindBlock(ctx, &b->link);
  });
  st->partial = st->full = st->spare = nullptr;
}

// Calls f(payload) for every free chunk: the class lists (parked or not),
// then the orphans.
template <typename F>
void ForEachFreeChunk(const FreelistState* st, F f) {
  for (size_t c = 0; c < kNumSizeClasses; ++c) {
    for (void* p = st->table->heads[c]; p != nullptr; p = NextFree(p)) f(p);
    for (void* p = ParkedHead(st->table, c); p != nullptr; p = NextFree(p)) f(p);
  }
  for (void* p = st->orphans; p != nullptr; p = NextFree(p)) f(p);
}

void FreelistStats(const Context* /*ctx*/, const FreelistState* st, KindStats* out) {
  ForEachFreeChunk(st, [&](void* p) {
    out->free_bytes += Stride(ChunkHeaderValue(ReadChunkHeader(p)));
    ++out->free_chunks;
  });
  out->free_bytes += static_cast<size_t>(st->bump_end - st->bump_ptr);
  ForEachPageBlock(st, [&](BlockHeader* b) { out->free_bytes += FreeUnitBytes(b); });
}

// Calls f(chunk start, payload, header) for each chunk carved in the area of
// `d` (a unit, or the first block's area), from `from`, as many as it
// counts; false if a header cannot be read as one of ours (f is not called
// for it) or a chunk runs past `limit`.
template <typename F>
bool WalkChunks(const UnitDesc* d, char* from, char* limit, F f) {
  char* chunk = from;
  for (uint32_t k = 0; k < d->starts; ++k) {
    char* payload = chunk + kHeaderBytes;
    if (payload > limit) return false;
    const uint64_t h = ReadChunkHeader(payload);
    const bool ok = ChunkHeaderMagicOk(h) && ChunkHeaderKind(h) == kChunkKindFreelist &&
                    !ChunkHeaderIsExternal(h) && ChunkHeaderValue(h) < kNumSizeClasses &&
                    DescOf(payload, h) == d;
    if (!ok) return false;
    f(chunk, payload, h);
    chunk += Stride(ChunkHeaderValue(h));
  }
  return true;
}

bool FreelistCheck(const Context* ctx, const FreelistState* st, std::string* error) {
  bool ok = true;
  auto fail = [&](const char* format, const auto&... args) {
    if (ok) {
      internal::AppendFormat(error, "freelist '%s': ", ctx->name());
      internal::AppendFormat(error, format, args...);
      error->push_back('\n');
    }
    ok = false;
  };
  size_t free_marked = 0;
  auto visit = [&](char*, char* payload, uint64_t h) {
    if (ChunkHeaderIsFree(h)) {
      ++free_marked;
    } else if (kChecking && !SentinelOk(payload)) {
      fail("sentinel of chunk %p (%d bytes) overwritten",
                           static_cast<void*>(payload), RequestedSize(payload));
    }
  };
  // The first block's area.
  if (st->first->link.owner != ctx) fail("the first block names another owner");
  if (!WalkChunks(Descs(st->first), FirstAreaStart(st), FirstAreaEnd(ctx, st), visit)) {
    fail("a chunk of the first block has a corrupt header");
  }
  // Blocks of chunks: lists agree with the free units, units with chunks.
  size_t blocks = 1;
  auto check_block = [&](BlockHeader* b, OnList l) {
    ++blocks;
    if (!ok) return;
    if (b->link.owner != ctx || b->list != l || b->units == 0 || b->units > kMaxBlockUnits) {
      return fail("block %p names another owner or list", static_cast<void*>(b));
    }
    const uint64_t all = AllUnits(b->units);
    const bool carving = b == st->bump_block;
    const bool right_list = l == OnList::kFull    ? b->free_units == 0
                            : l == OnList::kSpare ? b->free_units == all && !carving
                                                  : b->free_units != 0 &&
                                                        (b->free_units != all || carving);
    if (!right_list || (b->free_units & ~all) != 0) {
      return fail("block %p is on the wrong list for its free units",
                                  static_cast<void*>(b));
    }
    for (size_t i = 0; i < b->units && ok; ++i) {
      const UnitDesc& d = Descs(b)[i];
      if (d.index != i || d.sweep_free != 0 || (d.flags & kUnitReleasing) != 0) {
        return fail("unit %d of block %p has a corrupt descriptor",
                                    static_cast<int>(i), static_cast<void*>(b));
      }
      if ((b->free_units >> i) & 1) {
        if (d.starts != 0) {
          fail("free unit %d of block %p holds chunks", static_cast<int>(i),
                               static_cast<void*>(b));
        }
        continue;
      }
      if (d.starts == 0) continue;
      // Chunks of the unit being carved end at the bump pointer; an
      // exhausted run's pointer may be the next unit's start.
      char* limit = carving && st->bump_ptr < st->bump_end && UnitIndex(b, st->bump_ptr) == i
                        ? st->bump_ptr
                        : UnitsEnd(b);
      if (d.first >= kUnitBytes ||
          !WalkChunks(&d, UnitBase(b, i) + d.first, limit, visit)) {
        fail("a chunk of unit %d of block %p has a corrupt header",
                             static_cast<int>(i), static_cast<void*>(b));
      }
    }
  };
  ForEachOn(st, OnList::kPartial, [&](BlockHeader* b) { check_block(b, OnList::kPartial); });
  ForEachOn(st, OnList::kFull, [&](BlockHeader* b) { check_block(b, OnList::kFull); });
  ForEachOn(st, OnList::kSpare, [&](BlockHeader* b) { check_block(b, OnList::kSpare); });
  if (!ok) return false;
  if (st->bump_block != st->first && st->bump_block->list == OnList::kNone) {
    fail("the block being carved is on no list");
  }
  // Every chunk marked free is on a list (or an orphan), of its class.
  size_t listed = 0;
  size_t parked = 0;
  for (size_t c = 0; c < kNumSizeClasses && ok; ++c) {
    for (void* list : {st->table->heads[c], ParkedHead(st->table, c)}) {
      for (void* p = list; p != nullptr && ok; p = NextFree(p)) {
        const uint64_t h = ReadChunkHeader(p);
        if (!ChunkHeaderIsFree(h) || ChunkHeaderValue(h) != c || OwnerOf(p, h) != ctx) {
          fail("chunk %p on freelist %d is not a free chunk of that class", p,
               static_cast<int>(c));
        }
        ++listed;
        parked += list != st->table->heads[c];
      }
    }
  }
  if (ok && parked != st->table->parked_chunks) {
    fail("%d chunks on the parked lists but %d counted", parked,
         static_cast<int64_t>(st->table->parked_chunks));
  }
  for (void* p = st->orphans; p != nullptr && ok; p = NextFree(p)) {
    const uint64_t h = ReadChunkHeader(p);
    if (!ChunkHeaderIsFree(h) || OwnerOf(p, h) != ctx) {
      fail("orphan %p is not a free chunk of this context", p);
    }
    ++listed;
  }
  // Chunks other threads freed are marked free and wait on the remote list.
  for (const void* p = st->remote.Peek(); p != nullptr; p = RemoteFreeList::Next(p)) {
    const uint64_t h = ReadChunkHeader(p);
    if (ChunkHeaderKind(h) != kChunkKindFreelist || ChunkHeaderIsExternal(h)) continue;
    if ((h & kRemoteFreeBit) == 0 || OwnerOf(p, h) != ctx) {
      fail("chunk %p on the remote list is not a chunk of this context freed remotely", p);
    }
    ++listed;
  }
  if (!ok) return false;
  if (HasTable(st) && st->orphans != nullptr) fail("orphans wait although there is a table");
  if (listed != free_marked) {
    fail("%d chunks marked free but %d on freelists", free_marked, listed);
  }
  if (HasTable(st) && st->table->carved != CountCarved(st)) {
    fail("%d chunks counted as carved, %d in the units",
                         static_cast<int64_t>(st->table->carved),
                         static_cast<int64_t>(CountCarved(st)));
  }
  st->dedicated.ForEach([&](KindBlock* b) {
    char* payload = reinterpret_cast<char*>(b) + kDedicatedPayload;
    if (ok && (b->owner != ctx || (kChecking && !SentinelOk(payload)))) {
      fail("dedicated chunk %p is corrupt", static_cast<void*>(payload));
    }
  });
  if (!ok) return false;
  blocks += st->dedicated.count();
  if (blocks != ctx->num_blocks()) {
    fail("%d blocks on the lists but %d accounted", blocks, ctx->num_blocks());
  }
  return ok;
}

// Checking builds: every live chunk with its site, for LiveChunksReport
// (kind_api.h). Walks the chunks as Check does: the first block's area, the
// carved units of each block (a walk stops at a header it cannot read,
// which Check reports), then the dedicated chunks. The free table is the
// kind's own chunk, not the program's: it is left out.
void FreelistVisitLiveChunks(const Context* ctx, const FreelistState* st,
                             LiveChunkVisitor* visitor) {
  if (!kChecking) return;
  auto visit = [&](char*, char* payload, uint64_t h) {
    if (ChunkHeaderIsFree(h) || payload == reinterpret_cast<char*>(st->table) ||
        payload == reinterpret_cast<char*>(st->table->parked)) {
      return;
    }
    visitor->VisitChunk(payload, RequestedSize(payload), ChunkSite(payload));
  };
  WalkChunks(Descs(st->first), FirstAreaStart(st), FirstAreaEnd(ctx, st), visit);
  ForEachPageBlock(st, [&](BlockHeader* b) {
    const bool carving = b == st->bump_block;
    for (size_t i = 0; i < b->units && i < kMaxBlockUnits; ++i) {
      const UnitDesc& d = Descs(b)[i];
      if (((b->free_units >> i) & 1) != 0 || d.starts == 0 || d.first >= kUnitBytes) continue;
      // Chunks of the unit being carved end at the bump pointer; an
      // exhausted run's pointer may be the next unit's start.
      char* limit = carving && st->bump_ptr < st->bump_end && UnitIndex(b, st->bump_ptr) == i
                        ? st->bump_ptr
                        : UnitsEnd(b);
      WalkChunks(&d, UnitBase(b, i) + d.first, limit, visit);
    }
  });
  st->dedicated.ForEach([&](KindBlock* b) {
    char* payload = reinterpret_cast<char*>(b) + kDedicatedPayload;
    visitor->VisitChunk(payload, RequestedSize(payload), ChunkSite(payload));
  });
}

// --- Inspection ---------------------------------------------------------------------

// Free chunks and their bytes in the area of one descriptor (a walk, as
// Check does; it stops at a header it cannot read).
void CountFreeIn(const UnitDesc* d, char* from, char* limit, BlockInfo* info) {
  WalkChunks(d, from, limit, [&](char*, char*, uint64_t h) {
    if (ChunkHeaderIsFree(h)) {
      info->freelist_bytes += Stride(ChunkHeaderValue(h));
      ++info->freelist_chunks;
    }
  });
}

// Describes the first block. Its free bytes are the rest of the run being
// carved, if that is still the first block's area.
BlockInfo DescribeFirst(const Context* ctx, const FreelistState* st) {
  BlockInfo info;
  const char* base = reinterpret_cast<const char*>(ctx);
  info.start = base;
  info.size = ctx->first_block_size();
  info.header_bytes = static_cast<size_t>(FirstAreaStart(st) - base);
  info.role = BlockRole::kFirst;
  if (st->bump_block == st->first) {
    info.current = true;
    info.last_offset = static_cast<size_t>(st->bump_ptr - base);
    info.end_offset = static_cast<size_t>(st->bump_end - base);
  } else {
    info.last_offset = info.end_offset = info.size;
  }
  info.free_bytes = info.end_offset - info.last_offset;
  CountFreeIn(Descs(st->first), FirstAreaStart(st), FirstAreaEnd(ctx, st), &info);
  info.used_bytes = info.size - info.header_bytes - info.free_bytes - info.freelist_bytes;
  return info;
}

// Describes a block of chunks. Its free units count as free bytes, shown
// at the block's end (the run being carved included).
BlockInfo DescribeBlock(const FreelistState* st, BlockHeader* b) {
  BlockInfo info;
  info.start = b;
  info.size = b->link.size;
  info.header_bytes = static_cast<size_t>(UnitsStart(b) - reinterpret_cast<char*>(b));
  info.role = b->list == OnList::kSpare ? BlockRole::kSpare : BlockRole::kNormal;
  info.current = b == st->bump_block;
  info.free_bytes = FreeUnitBytes(b);
  if (info.current) info.free_bytes += static_cast<size_t>(st->bump_end - st->bump_ptr);
  for (size_t i = 0; i < b->units; ++i) {
    const UnitDesc& d = Descs(b)[i];
    if (((b->free_units >> i) & 1) || d.starts == 0 || d.first >= kUnitBytes) continue;
    CountFreeIn(&d, UnitBase(b, i) + d.first, UnitsEnd(b), &info);
  }
  info.end_offset = info.size;
  info.last_offset = info.size - info.free_bytes;
  info.used_bytes = info.size - info.header_bytes - info.free_bytes - info.freelist_bytes;
  return info;
}

// Inspect
//
// The first block, then the blocks of chunks (partial, full, spare), then
// the dedicated blocks, newest first; then every size class with its
// freelist, head first (chunks freed before the table existed follow, in
// the order they will be filed).
void FreelistInspect(const Context* ctx, const FreelistState* st, InspectVisitor* visitor) {
  visitor->VisitBlock(DescribeFirst(ctx, st));
  ForEachPageBlock(st, [&](BlockHeader* b) { visitor->VisitBlock(DescribeBlock(st, b)); });
  st->dedicated.ForEach([&](KindBlock* b) {
    BlockInfo info;
    info.start = b;
    info.size = b->size;
    info.header_bytes = kDedicatedPayload;  // block header and chunk header
    info.used_bytes = b->size - kDedicatedPayload;
    info.last_offset = info.end_offset = b->size;
    info.role = BlockRole::kOversize;
    info.label = "dedicated";
    visitor->VisitBlock(info);
  });
  for (size_t c = 0; c < kNumSizeClasses; ++c) {
    SizeClassInfo info;
    info.index = c;
    info.class_bytes = SizeClassBytes(c);
    info.chunk_bytes = Stride(c);
    auto orphan_of_class = [&](void* p) { return ChunkHeaderValue(ReadChunkHeader(p)) == c; };
    for (void* list : {st->table->heads[c], ParkedHead(st->table, c)}) {
      for (void* p = list; p != nullptr; p = NextFree(p)) ++info.free_chunks;
    }
    for (void* p = st->orphans; p != nullptr; p = NextFree(p)) info.free_chunks += orphan_of_class(p);
    visitor->VisitSizeClass(info);
    for (void* list : {st->table->heads[c], ParkedHead(st->table, c)}) {
      for (void* p = list; p != nullptr; p = NextFree(p)) visitor->VisitFreeChunk(info, p);
    }
    for (void* p = st->orphans; p != nullptr; p = NextFree(p)) {
      if (orphan_of_class(p)) visitor->VisitFreeChunk(info, p);
    }
  }
}

// --- Context-free entry points (mcx::Free and friends) ------------------------------

// A chunk whose free is pending ("Deferred frees") reads as free, as it
// will once its free is finished: its header does not say so yet, so the
// owner's ring is asked. Only by the owning thread, the one that writes
// the ring; another thread sees the header alone.
Context* LiveChunkOwner(const void* p, const char* operation) {
  uint64_t h = ReadChunkHeader(p);
  Context* ctx = ChunkHeaderIsFree(h) ? nullptr : OwnerOf(p, h);
  if (kDeferFrees && ctx != nullptr) {
    const FreelistState* st = StateOf(ctx);
    if (!st->remote.FromOtherThread() && st->table->deferred_count != 0 &&
        IsPending(st->table, p)) {
      ctx = nullptr;
    }
  }
  if (ctx == nullptr) ReportMisuse("cannot %s chunk %p: it was already freed", operation, p);
  return ctx;
}

Context* ChunkContext(const void* p) { return LiveChunkOwner(p, "find the context of"); }

size_t ChunkFreeSize(const void* p) {
  Context* ctx = LiveChunkOwner(p, "size");
  return ctx != nullptr ? FreelistChunkSize(p) : 0;
}

// mcx::Free(p) in release builds (ChunkKindMethods::free): the owner from
// the header, then the owner's free or, from another thread, the push of
// FreeRemote, from one reading of the header. Anything else (a dedicated
// or aligned chunk, a freed one, a bad pointer) goes through the owner's
// Free, which sorts and reports it.
void FreeChunk(void* p) {
  uint64_t h = ReadChunkHeader(p);
  if (ABSL_PREDICT_TRUE((h & kFastMask) == kFastExpect)) {
    Context* ctx = BlockOfDesc(DescOf(p, h))->link.owner;
    FreelistState* st = StateOf(ctx);
    if (ABSL_PREDICT_FALSE(st->remote.FromOtherThread())) {
      WriteChunkHeader(p, h | kChunkFreeBit | kRemoteFreeBit);
      st->remote.Push(p);
      return;
    }
    // The header is in hand: nothing to gain by deferring. The pending
    // frees are finished first: one may be this chunk's, and the header
    // then says free.
    if (kDeferFrees && ABSL_PREDICT_FALSE(st->table->deferred_count != 0)) {
      FlushDeferred(ctx, st);
      h = ReadChunkHeader(p);
      if ((h & kFastMask) != kFastExpect) return FreeSlow(ctx, p, h);
    }
    return FileFree(ctx, st, p, h);
  }
  if (Context* ctx = LiveChunkOwner(p, "free")) ctx->Free(p);
}

const ChunkKindMethods kChunkMethods = {"freelist", &ChunkContext, &ChunkFreeSize, &FreeChunk};

// The live bytes of the chunks whose frees are pending, as finishing them
// would count them: a pointer whose header is not a live chunk's counts
// nothing, as finishing its free reports it and changes nothing. A
// pointer is pending once at most (DeferFree reports a second free at
// once); an aligned chunk and its real chunk both pending, a misuse, count
// the chunk once.
size_t PendingLiveBytes(const Context* ctx, const FreelistState* st) {
  const FreeTable* t = st->table;
  if (t->deferred_count == 0) return 0;
  void* seen[kDeferredFrees];
  size_t n = 0, bytes = 0;
  for (void* q : t->deferred) {
    if (q == nullptr) continue;
    uint64_t h = ReadChunkHeader(q);
    if (ChunkHeaderMagicOk(h) && ChunkHeaderKind(h) == kChunkKindAlignedRedirect) {
      q = AlignedRedirectTarget(q);
      h = ReadChunkHeader(q);
    }
    if (std::find(seen, seen + n, q) != seen + n) continue;
    seen[n++] = q;
    if (!ChunkHeaderMagicOk(h) || ChunkHeaderKind(h) != kChunkKindFreelist ||
        ChunkHeaderIsFree(h)) {
      continue;
    }
    if (ChunkHeaderIsExternal(h)) {
      const DedicatedHeader* b = DedicatedOf(q, h);
      if (IsLiveDedicated(ctx, st, b)) bytes += static_cast<size_t>(b->end - static_cast<char*>(q));
    } else if (ChunkHeaderValue(h) < kNumSizeClasses) {
      bytes += SizeClassBytes(ChunkHeaderValue(h));
    }
  }
  return bytes;
}

// --- Creation -----------------------------------------------------------------------

// The kind, for MakeKindMethods (kind_api.h).
struct Freelist {
  using Options = FreelistOptions;
  using State = FreelistState;
  static constexpr const char* kName = "freelist";

  static size_t FirstBlockSize(const Options& o, size_t header_bytes, size_t learned) {
    // Refused before any block is acquired (0: kBadSize), not after.
    if (o.initial_block_size > kMaxFreelistBlockSize) return 0;
    if (o.initial_block_size == 0) {
      return LearnedFirstBlockSize(header_bytes, kFirstChunkOffset + kHeaderBytes, learned);
    }
    size_t min = header_bytes + kFirstChunkOffset + kHeaderBytes + kMinFirstBlockSpace;
    return o.initial_block_size < min ? min : o.initial_block_size;
  }

  static bool Init(Context* ctx, State* st, const Options& o, char* space, char* block_end) {
    // A valid state first: a refused context is released through ReleaseAll.
    new (st) State();
    auto* first = reinterpret_cast<BlockHeader*>(space);
    std::memset(static_cast<void*>(first), 0, kFirstChunkOffset);
    first->link.owner = ctx;
    first->link.size = 0;  // the tree releases the first block
    first->list = OnList::kNone;
    st->first = first;
    st->table = EmptyTable();
    st->sweep_countdown = 1;
    StartFirstArea(ctx, st);
    PoisonMemoryRegion(space + kFirstChunkOffset,
                       static_cast<size_t>(st->bump_end - (space + kFirstChunkOffset)));
    (void)block_end;
    if (o.chunk_limit > kMaxSizeClassBytes || o.max_block_size > kMaxFreelistBlockSize ||
        !RegisterChunkKind(kChunkKindFreelist, &kChunkMethods)) {
      SetFailure(ctx, Failure::kBadArgument);
      return false;
    }
    // Direct mode: every chunk a dedicated block (nginx's NGX_DEBUG_PALLOC).
    st->chunk_limit = static_cast<uint32_t>(kDirectBuild ? 0 : o.chunk_limit);
    // Later blocks start at the first block's size (whoever chose it), and
    // hold at most 64 units: memory goes back a block at a time.
    size_t base = o.initial_block_size != 0 ? o.initial_block_size : ctx->first_block_size();
    if (base < kMinGrowthBlockSize) base = kMinGrowthBlockSize;
    constexpr size_t kLargest = kMaxPageBlockBytes + kSourceHeaderAllowance;  // 256 KiB
    if (base > kLargest) base = kLargest;
    size_t max = o.max_block_size < base ? base : o.max_block_size;
    if (max > kLargest) max = kLargest;
    st->base_block_size = st->next_block_size = static_cast<uint32_t>(base);
    st->max_block_size = static_cast<uint32_t>(max);
    st->remote.Init();  // the creating thread owns the context
    return true;
  }

  // The fast paths take the state at its constant offset (StateOf), which
  // is `st`.
  static void* Alloc(Context* ctx, State* /*st*/, size_t size, size_t alignment) {
    return FreelistAlloc(ctx, StateOf(ctx), size, alignment);
  }
  static void* AllocFast(Context* ctx, State* /*st*/, size_t size, size_t alignment) {
    return FreelistAllocFast(ctx, StateOf(ctx), size, alignment);
  }
  static void Free(Context* ctx, State* /*st*/, void* p) { FreelistFree(ctx, StateOf(ctx), p); }
  static void* Realloc(Context* ctx, State* st, void* p, size_t old_size, size_t new_size) {
    return FreelistRealloc(ctx, st, p, old_size, new_size);
  }
  static size_t ChunkSize(const Context*, const State*, const void* p) {
    return FreelistChunkSize(p);
  }
  // Checking builds keep the size asked for before each chunk; an aligned
  // chunk's redirect keeps none (its ChunkSize counts from the real chunk).
  static size_t RequestedSize(const Context*, const State*, const void* p) {
    if (!kChecking || ChunkHeaderKind(ReadChunkHeader(p)) == kChunkKindAlignedRedirect) {
      return kUnknownSize;
    }
    return mcx::RequestedSize(p);
  }
  static void Reset(Context* ctx, State* st, const ResetOptions& options) {
    FreelistReset(ctx, st, options);
  }
  static void ReleaseAll(Context* ctx, State* st) { FreelistReleaseAll(ctx, st); }
  static void Live(const Context* ctx, const State* st, LiveCounts* out) {
    st->live.Report(out);
    if (kDeferFrees) out->live_bytes -= PendingLiveBytes(ctx, st);
  }
  static void ResetPeak(Context* ctx, State* st) {
    FinishPending(ctx, st);
    st->live.ResetPeak();
  }
  static void Stats(const Context* ctx, const State* st, KindStats* out) {
    FreelistStats(ctx, st, out);
  }
  static bool Check(const Context* ctx, const State* st, std::string* error) {
    return FreelistCheck(ctx, st, error);
  }
  static void Inspect(const Context* ctx, const State* st, InspectVisitor* visitor) {
    FreelistInspect(ctx, st, visitor);
  }
  static void VisitLiveChunks(const Context* ctx, const State* st, LiveChunkVisitor* visitor) {
    FreelistVisitLiveChunks(ctx, st, visitor);
  }
};

RemoteFreeList* RemoteFrees(Context* ctx) { return &StateOf(ctx)->remote; }

constexpr KindMethods MakeFreelistMethods() {
  KindMethods m = MakeKindMethods<Freelist>();
  m.remote_frees = &RemoteFrees;
  return m;
}

constexpr KindMethods kFreelistMethods = MakeFreelistMethods();

}  // namespace

KindSpec FreelistKind(const FreelistOptions& options) {
  return KindSpec(&kFreelistMethods, options);
}

const KindSpec& FreelistKind() {
  static const KindSpec spec(&kFreelistMethods, FreelistOptions());
  return spec;
}

Context* CreateFreelistContext(Context* parent, const char* name, const FreelistOptions& options,
                               const ContextOptions& context_options) {
  return Context::Create(parent, name, FreelistKind(options), context_options);
}

}  // namespace mcx
