// The generation kind: PostgreSQL's Generation context
// (src/backend/utils/mmgr/generation.c) as an mcx kind. What is kept, and
// why:
//   - No free space management at all: chunks are bumped out of the newest
//     block, a free only counts, and a block is reused or released once all
//     its chunks are free. For data freed roughly in the order it was born
//     that is nearly free, and memory goes back block by block.
//   - One emptied block is kept for reuse (`freeblock`): a FIFO queue then
//     moves from block to block without asking the source each time.
//   - The current block and the first block (the keeper) are only marked
//     empty when their chunks are all freed, never released.
//   - Requests above chunk_limit (an eighth of the largest block) get a
//     dedicated block: a huge chunk must not pin a block of small ones.
//   - Blocks double from an initial to a maximum size.
// What changes:
//   - The chunk header is mcx's 8-byte word (chunk_header.h). PostgreSQL
//     keeps the chunk size in its header's 30-bit value; mcx's value field
//     has 8 bits, so it holds the chunk's bytes / 16 up to 4080 and chunks
//     above that carry their size in a word of their own (24 bytes before
//     them; half a percent of a chunk that large). Checking builds add a
//     word for the chunk's allocation site (kind_api.h, PendingSite).
//   - An emptied first block is reused when the current block fills, as a
//     spare would be (generation.c leaves it idle until a reset).
//   - A current block left behind empty is treated as any emptied block
//     (generation.c keeps it on its list until a reset).
//   - A free bit in the header catches a double free in every build.

#include "mcx/generation/generation.h"

#include <cstring>
#include <new>
#include <string>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "mcx/context/block_list.h"
#include "mcx/context/inspect.h"
#include "mcx/context/internal/format.h"
#include "mcx/context/kind_api.h"
#include "mcx/generation/internal/generation_block.h"

namespace mcx {

using generation_internal::AsGenerationBlock;
using generation_internal::GenerationBlock;
using generation_internal::GenerationState;

namespace {

constexpr bool kChecking = kCheckingBuild;
// Checking, ASan and Valgrind builds record each chunk's requested size:
// checking builds guard it with a sentinel, the tools unpoison exactly it.
constexpr bool kTracked = kChecking || kAddressSanitizerBuild || kValgrindBuild;

constexpr size_t RoundUp16(size_t n) { return (n + 15) & ~size_t{15}; }

// Bytes before a payload: the header word alone, or the chunk's size, its
// requested size and the header word; checking builds put the site of the
// call that allocated or last reallocated the chunk (4 bytes in a word of
// its own, so that the payload stays 16-aligned) between the size and the
// requested size.
constexpr size_t kShortPrefix = 8;
constexpr size_t kSiteOffset = 24;  // the site is at p - kSiteOffset
constexpr size_t kLongPrefix = kChecking ? 40 : 24;
// The largest chunk (header included) whose size the header's 8-bit value
// field holds, in units of 16 bytes.
constexpr size_t kMaxShortChunk = 255 * 16;

// Chunks start 8 bytes past a multiple of 16 (their payloads are 16-aligned
// after 8 or 24 bytes of prefix); blocks are 16-aligned.
constexpr size_t kFirstChunkOffset = RoundUp16(sizeof(GenerationBlock) + kShortPrefix) - kShortPrefix;
static_assert((kFirstChunkOffset + kShortPrefix) % 16 == 0 &&
                  (kFirstChunkOffset + kLongPrefix) % 16 == 0,
              "payloads are 16-aligned");

// Payload offset of a dedicated chunk in its block.
constexpr size_t kDedicatedPayload = RoundUp16(sizeof(GenerationBlock) + (kTracked ? kLongPrefix : kShortPrefix));
// A released block's first bytes may be written by its source (the caching
// source's node, glibc's free-list words): a freed dedicated chunk's header
// word lies past them, so its free bit survives.
constexpr size_t kReleasedBlockScratch = 32;
static_assert(kDedicatedPayload - kShortPrefix >= kReleasedBlockScratch,
              "a dedicated chunk's header word must survive its block's release");

// Room the first block keeps after all headers (as the other kinds do).
constexpr size_t kMinFirstBlockSpace = 256;
// Later blocks are at least this large (generation.c, after aset.c: "a
// minimum 1K block size").
constexpr size_t kMinGrowthBlockSize = 1024;
// generation.c's Generation_CHUNK_FRACTION: chunks above an eighth of the
// largest block get a dedicated block.
constexpr size_t kChunkFraction = 8;

// Free's fast path checks the header in one compare: our kind, our magic,
// not free, not dedicated.
constexpr uint64_t kFastMask = kChunkKindMask | kChunkExternalBit | kChunkFreeBit | kChunkMagicMask;
constexpr uint64_t kFastExpect = kChunkKindGeneration | (kChunkMagic << kChunkMagicShift);

char* FirstChunk(GenerationBlock* b) { return reinterpret_cast<char*>(b) + kFirstChunkOffset; }
const char* FirstChunk(const GenerationBlock* b) {
  return reinterpret_cast<const char*>(b) + kFirstChunkOffset;
}

GenerationBlock* BlockOf(const void* p, uint64_t h) {
  return reinterpret_cast<GenerationBlock*>(const_cast<char*>(static_cast<const char*>(p)) -
                                            kShortPrefix - ChunkHeaderOffset(h));
}

// Bytes a chunk of `size` takes (prefix, and the checking build's sentinel,
// included), and its prefix.
size_t Footprint(size_t size, size_t* prefix) {
  const size_t short_bytes = RoundUp16(size + kShortPrefix);
  if (!kTracked && short_bytes <= kMaxShortChunk) {
    *prefix = kShortPrefix;
    return short_bytes;
  }
  *prefix = kLongPrefix;
  return RoundUp16(size + kLongPrefix + (kChecking ? 1 : 0));
}

// The words of a long prefix, read and written past the poison.
size_t ReadWord(const char* at) {
  size_t v;
  CopyFromPoisoned(&v, at, sizeof(v));
  return v;
}
void WriteWord(char* at, size_t v) { CopyToPoisoned(at, &v, sizeof(v)); }

// A chunk's bytes, prefix included (not for dedicated chunks).
size_t FootprintOf(const void* p, uint64_t h) {
  const unsigned value = ChunkHeaderValue(h);
  return value != 0 ? size_t{value} * 16 : ReadWord(static_cast<const char*>(p) - kLongPrefix);
}

size_t PrefixOf(uint64_t h) { return ChunkHeaderValue(h) != 0 ? kShortPrefix : kLongPrefix; }

size_t DedicatedCapacity(const GenerationBlock* b) {
  return b->link.size - kDedicatedPayload - (kChecking ? 1 : 0);
}

// Usable bytes of a chunk carved with `footprint` and `prefix`.
size_t CarvedCapacity(size_t footprint, size_t prefix) {
  return footprint - prefix - (kChecking ? 1 : 0);
}

// Usable bytes of a live chunk.
size_t Capacity(const void* p, uint64_t h) {
  if (ChunkHeaderIsExternal(h)) return DedicatedCapacity(BlockOf(p, h));
  return FootprintOf(p, h) - PrefixOf(h) - (kChecking ? 1 : 0);
}

size_t RequestedSize(const void* p) { return ReadWord(static_cast<const char*>(p) - 16); }

// Makes a chunk live with `size` requested bytes of `capacity`: under ASan
// exactly `size` bytes become addressable, tracked builds record `size`,
// checking builds put the sentinel after it.
void MarkLive(char* p, size_t size, size_t capacity) {
  PoisonMemoryRegion(p, capacity + (kChecking ? 1 : 0));
  if (kTracked) WriteWord(p - 16, size);
  if (kChecking) CopyToPoisoned(p + size, &kSentinelByte, 1);
  UnpoisonMemoryRegion(p, size);
}

// Checking builds: the chunk's site.
void WriteSite(char* p, SiteId site) { CopyToPoisoned(p - kSiteOffset, &site, sizeof(site)); }
SiteId ReadSite(const char* p) {
  SiteId site;
  CopyFromPoisoned(&site, p - kSiteOffset, sizeof(site));
  return site;
}

bool SentinelOk(const char* p) {
  unsigned char b;
  CopyFromPoisoned(&b, p + RequestedSize(p), 1);
  return b == kSentinelByte;
}

// --- Blocks ---------------------------------------------------------------------------

// Empties a block for reuse: checking builds clobber what was handed out (a
// stale pointer then reads 0x7F, and a chunk header there reserved id 15),
// ASan builds poison the whole block space.
void MarkEmpty(GenerationBlock* b) {
  char* from = FirstChunk(b);
  if (kChecking) {
    UnpoisonMemoryRegion(from, static_cast<size_t>(b->free_ptr - from));
    std::memset(from, kClobberByte, static_cast<size_t>(b->free_ptr - from));
  }
  PoisonMemoryRegion(from, static_cast<size_t>(b->end - from));
  b->free_ptr = from;
  b->nchunks = b->nfree = 0;
}

// A dedicated chunk's prefix (padding, requested size, header word) is not
// the caller's.
void PoisonPrefix(GenerationBlock* b) {
  PoisonMemoryRegion(b + 1, kDedicatedPayload - sizeof(GenerationBlock));
}

bool Fits(const GenerationBlock* b, size_t footprint) {
  return footprint <= static_cast<size_t>(b->end - b->free_ptr);
}

// Every chunk of `b` is free. generation.c's cases: the current block and
// the first block (the keeper) are emptied in place; another block becomes
// the one spare block, or goes back to the source.
void BlockEmptied(Context* ctx, GenerationState* st, GenerationBlock* b) {
  if (b == st->current || b == st->first) {
    MarkEmpty(b);
    return;
  }
  st->blocks.Remove(&b->link);
  if (st->keep_free_block && st->spare.empty()) {
    MarkEmpty(b);
    st->spare.PushFront(&b->link);
    return;
  }
  ReleaseKindBlock(ctx, &b->link);
}

// --- Allocation -------------------------------------------------------------------------

// Carves a chunk of `size` bytes (`footprint` with its `prefix`) from `b`
// for the call whose site is pending in `ctx`.
ABSL_ATTRIBUTE_RETURNS_NONNULL void* Carve(const Context* ctx, GenerationBlock* b, size_t size,
                                           size_t footprint, size_t prefix) {
  char* p = b->free_ptr + prefix;
  b->free_ptr += footprint;
  ++b->nchunks;
  const uint64_t value = prefix == kShortPrefix ? footprint / 16 : 0;
  WriteChunkHeader(p, MakeChunkHeader(kChunkKindGeneration, false, static_cast<uint8_t>(value),
                                      static_cast<uint64_t>(p - kShortPrefix -
                                                            reinterpret_cast<char*>(b))));
  if (prefix == kLongPrefix) WriteWord(p - kLongPrefix, footprint);
  if (kChecking) WriteSite(p, PendingSite(ctx));
  MarkLive(p, size, CarvedCapacity(footprint, prefix));
  return p;
}

// The current block is full: the next block is a spare that fits, else the
// first block if it is empty and fits, else a new block. Out of line: once
// per block.
ABSL_ATTRIBUTE_NOINLINE void* AllocFromNewBlock(Context* ctx, GenerationState* st, size_t size,
                                                size_t footprint, size_t prefix) {
  GenerationBlock* old = st->current;
  GenerationBlock* b = nullptr;
  for (KindBlock* s = st->spare.head(); s != nullptr; s = s->next) {
    if (Fits(AsGenerationBlock(s), footprint)) {
      b = AsGenerationBlock(s);
      st->spare.Remove(s);
      break;
    }
  }
  if (b == nullptr && st->first != old && st->first->nchunks == 0 && Fits(st->first, footprint)) {
    b = st->first;
    st->blocks.Remove(&b->link);
  }
  if (b == nullptr) {
    const size_t need = kFirstChunkOffset + footprint;
    const size_t want = st->next_block_size < need ? need : st->next_block_size;
    KindBlock* kb = AcquireKindBlock(ctx, want, kMinBlockAlignment, need);
    if (kb == nullptr) return nullptr;  // the failure is recorded; nothing changed
    FirstBlockOutgrown(ctx, FirstBlockNeededFromLive(ctx, st->live.live(), footprint));
    b = AsGenerationBlock(kb);
    // Chunk headers hold a 32-bit offset: never carve past it.
    const size_t usable = kb->size < kMaxGenerationBlockSize ? kb->size : kMaxGenerationBlockSize;
    b->end = reinterpret_cast<char*>(b) + usable;
    b->free_ptr = FirstChunk(b);
    b->nchunks = b->nfree = 0;
    PoisonMemoryRegion(b->free_ptr, static_cast<size_t>(b->end - b->free_ptr));
    if (st->next_block_size < st->max_block_size) {
      const size_t doubled = st->next_block_size * 2;
      st->next_block_size = doubled < st->max_block_size ? doubled : st->max_block_size;
    }
  }
  st->blocks.PushFront(&b->link);
  st->current = b;
  // Left behind with no live chunk (all freed while it was current): it is
  // an emptied block like any other now.
  if (old->nfree == old->nchunks) BlockEmptied(ctx, st, old);
  st->live.Add(CarvedCapacity(footprint, prefix));
  return Carve(ctx, b, size, footprint, prefix);
}

// A request above chunk_limit: a block of its own.
void* AllocDedicated(Context* ctx, GenerationState* st, size_t size) {
  KindBlock* kb = AcquireKindBlock(ctx, kDedicatedPayload + size + (kChecking ? 1 : 0),
                                   kMinBlockAlignment);
  if (kb == nullptr) return nullptr;
  GenerationBlock* b = AsGenerationBlock(kb);
  char* mem = reinterpret_cast<char*>(b);
  b->end = b->free_ptr = mem + kb->size;
  b->nchunks = 1;
  b->nfree = 0;
  st->dedicated.PushFront(kb);
  char* p = mem + kDedicatedPayload;
  PoisonPrefix(b);
  WriteChunkHeader(p, MakeChunkHeader(kChunkKindGeneration, /*external=*/true, 0,
                                      kDedicatedPayload - kShortPrefix));
  st->live.Add(DedicatedCapacity(b));
  if (kChecking) WriteSite(p, PendingSite(ctx));
  MarkLive(p, size, DedicatedCapacity(b));
  return p;
}

// GenerationAlloc
//
// Cost note: a compare for the size, a subtraction and a compare for room,
// the header store; no list, no search.
void* GenerationAlloc(Context* ctx, GenerationState* st, size_t size, size_t alignment) {
  if (alignment > kDefaultAlignment) return AllocAlignedRedirect(ctx, size, alignment);
  if (kDirectBuild || size > st->chunk_limit) return AllocDedicated(ctx, st, size);
  size_t prefix;
  const size_t footprint = Footprint(size, &prefix);
  GenerationBlock* b = st->current;
  if (ABSL_PREDICT_FALSE(!Fits(b, footprint))) {
    return AllocFromNewBlock(ctx, st, size, footprint, prefix);
  }
  st->live.Add(CarvedCapacity(footprint, prefix));
  return Carve(ctx, b, size, footprint, prefix);
}

// GenerationAllocFast
//
// GenerationAlloc for the tree's slow path (kind_api.h, AllocFast): a chunk
// from the newest block, or nullptr, with nothing changed, for anything
// that needs another block or a call.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void* GenerationAllocFast(const Context* ctx,
                                                              GenerationState* st, size_t size,
                                                              size_t alignment) {
  if (ABSL_PREDICT_FALSE(alignment > kDefaultAlignment || kDirectBuild ||
                         size > st->chunk_limit)) {
    return nullptr;
  }
  size_t prefix;
  const size_t footprint = Footprint(size, &prefix);
  GenerationBlock* b = st->current;
  if (ABSL_PREDICT_FALSE(!Fits(b, footprint))) return nullptr;
  st->live.Add(CarvedCapacity(footprint, prefix));
  return Carve(ctx, b, size, footprint, prefix);
}

// --- Free -------------------------------------------------------------------------------

// Whether `b`, which a dedicated chunk's header leads to, is a live
// dedicated block of `ctx`. A released block's first words belong to its
// source now: the owner is read past any poison, and the links followed
// only once it names `ctx`.
bool IsLiveDedicated(const Context* ctx, const GenerationState* st, const GenerationBlock* b) {
  return st->dedicated.HoldsBlockOf(ctx, &b->link);
}

// Checking builds (and the owner in every build, for blocks of chunks):
// false, after the report, if `p` is not a live chunk of `ctx` with its
// sentinel intact; the chunk is then left alone.
bool VerifyLiveChunk(const Context* ctx, const GenerationState* st, const void* p, uint64_t h,
                     const char* operation) {
  const GenerationBlock* b = BlockOf(p, h);
  if (ChunkHeaderIsExternal(h) ? !IsLiveDedicated(ctx, st, b) : b->link.owner != ctx) {
    if (ChunkHeaderIsExternal(h)) {
      ReportMisuse("%s of chunk %p in generation '%s': not a live dedicated chunk of this "
                   "context (already freed, or its memory reused)",
                   operation, p, ctx->name());
    } else {
      ReportMisuse("%s of chunk %p through generation '%s', but it belongs to context '%s'",
                   operation, p, ctx->name(), b->link.owner->name());
    }
    return false;
  }
  if (kChecking && !SentinelOk(static_cast<const char*>(p))) {
    ReportMisuse("sentinel of chunk %p (%zu bytes) in generation '%s' was overwritten: a write "
                 "past the end of the chunk",
                 p, RequestedSize(p), ctx->name());
    return false;
  }
  return true;
}

// The block goes back with the chunk's free bit set, past what its source
// may write: a second free reads it while the memory is not reused.
void ReleaseDedicatedBlock(Context* ctx, KindBlock* b) {
  char* p = reinterpret_cast<char*>(b) + kDedicatedPayload;
  WriteChunkHeader(p, ReadChunkHeader(p) | kChunkFreeBit);
  ReleaseKindBlock(ctx, b);
}

void GenerationFree(Context* ctx, GenerationState* st, void* p);

// Everything but the common case: dedicated chunks, aligned chunks, and
// every kind of bad pointer.
ABSL_ATTRIBUTE_NOINLINE void FreeSlow(Context* ctx, GenerationState* st, void* p, uint64_t h) {
  if (!ChunkHeaderMagicOk(h)) return ReportBadChunk(p, "free");
  const unsigned kind = ChunkHeaderKind(h);
  // The real chunk goes straight to the kind: only the aligned address was
  // announced to Valgrind (Context::Free announces its release).
  if (kind == kChunkKindAlignedRedirect) return GenerationFree(ctx, st, AlignedRedirectTarget(p));
  if (kind != kChunkKindGeneration) return ReportBadChunk(p, "free");
  if (ChunkHeaderIsFree(h)) {
    return ReportMisuse("double free of chunk %p in generation '%s'", p, ctx->name());
  }
  if (!VerifyLiveChunk(ctx, st, p, h, "free")) return;
  // Only dedicated chunks are left.
  GenerationBlock* b = BlockOf(p, h);
  st->live.Remove(DedicatedCapacity(b));
  st->dedicated.Remove(&b->link);
  ReleaseDedicatedBlock(ctx, &b->link);
}

// GenerationFree
//
// Cost note: the header load and one compare, the owner compare, the free
// bit, and a count in the block's header; a block's worth of frees once
// empties it.
void GenerationFree(Context* ctx, GenerationState* st, void* p) {
  const uint64_t h = ReadChunkHeader(p);
  if (ABSL_PREDICT_FALSE((h & kFastMask) != kFastExpect)) return FreeSlow(ctx, st, p, h);
  GenerationBlock* b = BlockOf(p, h);
  // The owner is checked in every build (the block's header is read anyway,
  // for its count); checking builds verify the sentinel too.
  if (ABSL_PREDICT_FALSE(b->link.owner != ctx || kChecking) &&
      !VerifyLiveChunk(ctx, st, p, h, "free")) {
    return;
  }
  if (kChecking) {
    // An aligned chunk's target has poisoned padding: lift it first.
    const size_t n = RequestedSize(p);
    UnpoisonMemoryRegion(p, n);
    std::memset(p, kClobberByte, n);
  }
  st->live.Remove(Capacity(p, h));
  WriteChunkHeader(p, h | kChunkFreeBit);
  if (kAddressSanitizerBuild || kValgrindBuild) PoisonMemoryRegion(p, RequestedSize(p));
  if (++b->nfree == b->nchunks) BlockEmptied(ctx, st, b);
}

// --- Realloc and chunk size -------------------------------------------------------------

void* ReallocDedicated(Context* ctx, GenerationState* st, void* p, uint64_t h, size_t new_size) {
  GenerationBlock* b = BlockOf(p, h);
  const size_t old_usable = DedicatedCapacity(b);
  // In place while it fits and uses at least half of the block: a chunk
  // that shrinks further gives the rest back through the source.
  if (new_size <= old_usable && new_size >= old_usable / 2) {
    if (kChecking) WriteSite(static_cast<char*>(p), PendingSite(ctx));  // the realloc's caller
    MarkLive(static_cast<char*>(p), new_size, old_usable);
    return p;
  }
  const size_t keep =
      kDedicatedPayload + (old_usable < new_size ? old_usable : new_size);
  // If the block moves, the old one goes back with the chunk marked freed,
  // as a free leaves it; the copy carries the bit along and it is cleared
  // below. The source may copy the kept bytes itself: none may be poisoned.
  WriteChunkHeader(p, h | kChunkFreeBit);
  UnpoisonMemoryRegion(b, keep);
  Block nb = ReallocateBlock(ctx, Block{b, b->link.size}, keep,
                             kDedicatedPayload + new_size + (kChecking ? 1 : 0),
                             kMinBlockAlignment);
  if (nb.ptr == nullptr) {
    PoisonPrefix(b);
    WriteChunkHeader(p, h);
    MarkLive(static_cast<char*>(p), kTracked ? RequestedSize(p) : old_usable, old_usable);
    return nullptr;  // the old chunk is untouched
  }
  auto* moved = static_cast<GenerationBlock*>(nb.ptr);
  moved->link.size = nb.size;
  moved->end = moved->free_ptr = static_cast<char*>(nb.ptr) + nb.size;
  st->live.Remove(old_usable);
  st->live.Add(DedicatedCapacity(moved));
  st->dedicated.Replace(&moved->link);
  char* q = static_cast<char*>(nb.ptr) + kDedicatedPayload;
  PoisonPrefix(moved);
  WriteChunkHeader(q, h);
  if (kChecking) WriteSite(q, PendingSite(ctx));
  MarkLive(q, new_size, DedicatedCapacity(moved));
  return q;
}

void* GenerationRealloc(Context* ctx, GenerationState* st, void* p, size_t /*old_size*/,
                        size_t new_size) {
  const uint64_t h = ReadChunkHeader(p);
  if (!ChunkHeaderMagicOk(h) || ChunkHeaderKind(h) != kChunkKindGeneration) {
    if (IsAlignedRedirect(p)) return ReallocAlignedRedirect(ctx, p, new_size);
    ReportBadChunk(p, "realloc");
    SetFailure(ctx, Failure::kBadArgument);
    return nullptr;
  }
  if (ChunkHeaderIsFree(h)) {
    ReportMisuse("realloc of chunk %p in generation '%s' after it was freed", p, ctx->name());
    SetFailure(ctx, Failure::kBadArgument);
    return nullptr;
  }
  if (!VerifyLiveChunk(ctx, st, p, h, "realloc")) {
    SetFailure(ctx, Failure::kBadArgument);
    return nullptr;
  }
  if (ChunkHeaderIsExternal(h)) return ReallocDedicated(ctx, st, p, h, new_size);
  const size_t capacity = Capacity(p, h);
  if (new_size <= capacity) {  // generation.c: "the allocated area already is >= the new size"
    if (kChecking) WriteSite(static_cast<char*>(p), PendingSite(ctx));
    MarkLive(static_cast<char*>(p), new_size, capacity);
    return p;
  }
  void* q = GenerationAlloc(ctx, st, new_size, kDefaultAlignment);
  if (q == nullptr) return nullptr;
  std::memcpy(q, p, kTracked ? RequestedSize(p) : capacity);
  GenerationFree(ctx, st, p);
  return q;
}

size_t ChunkSizeOf(const void* p) {
  const uint64_t h = ReadChunkHeader(p);
  if (ChunkHeaderKind(h) == kChunkKindAlignedRedirect) return GetChunkSize(p);
  // Tracked builds guard the requested bytes: exactly those are usable.
  if (kTracked) return RequestedSize(p);
  return Capacity(p, h);
}

// --- Reset and release ------------------------------------------------------------------

void ReleaseDedicated(Context* ctx, GenerationState* st) {
  st->dedicated.ForEach([&](KindBlock* b) { ReleaseDedicatedBlock(ctx, b); });
  st->dedicated.Clear();
}

void GenerationReset(Context* ctx, GenerationState* st, const ResetOptions& options) {
  ReleaseDedicated(ctx, st);
  // Blocks in use and spare ones alike are kept while they fit the options
  // (block_list.h); kept ones are emptied and wait on `spare`.
  BlockList kept;
  const size_t bytes =
      ResetBlocks(ctx, &st->blocks, options, ctx->first_block_size(), &kept, &st->first->link);
  ResetBlocks(ctx, &st->spare, options, bytes, &kept);
  kept.ForEach([&](KindBlock* b) {
    MarkEmpty(AsGenerationBlock(b));
    st->spare.PushBack(b);
  });
  MarkEmpty(st->first);
  st->blocks.PushFront(&st->first->link);
  st->current = st->first;
  st->next_block_size = st->base_block_size;
  st->live.Clear();
}

void GenerationReleaseAll(Context* ctx, GenerationState* st) {
  ReleaseDedicated(ctx, st);
  ReleaseBlocks(ctx, &st->blocks, &st->first->link);
  ReleaseBlocks(ctx, &st->spare);
}

// --- Stats, check, inspect --------------------------------------------------------------

// Freed chunks in a block that still has live ones are not free space: they
// come back only with their block. They count as used.
void GenerationStats(const Context* /*ctx*/, const GenerationState* st, KindStats* out) {
  auto add = [&](KindBlock* kb) {
    const GenerationBlock* b = AsGenerationBlock(kb);
    out->free_bytes += static_cast<size_t>(b->end - b->free_ptr);
  };
  st->blocks.ForEach(add);
  st->spare.ForEach(add);
}

// Walks the chunks of `b`; on a problem appends it to `error`.
bool CheckChunks(const Context* ctx, const GenerationBlock* b, std::string* error) {
  uint32_t chunks = 0, freed = 0;
  for (const char* c = FirstChunk(b); c < b->free_ptr;) {
    // A size word is below 2^30; a header word has the magic in bits 16..31:
    // the first word of a chunk says which prefix it has.
    uint64_t first;
    CopyFromPoisoned(&first, c, sizeof(first));
    const bool short_prefix = ChunkHeaderMagicOk(first) && ChunkHeaderValue(first) != 0;
    const char* p = c + (short_prefix ? kShortPrefix : kLongPrefix);
    const uint64_t h = ReadChunkHeader(p);
    const size_t footprint = ChunkHeaderMagicOk(h) ? FootprintOf(p, h) : 0;
    if (!ChunkHeaderMagicOk(h) || ChunkHeaderKind(h) != kChunkKindGeneration ||
        ChunkHeaderIsExternal(h) || BlockOf(p, h) != b || footprint < 16 ||
        footprint > static_cast<size_t>(b->free_ptr - c)) {
      internal::AppendFormat(error, "generation '%s': chunk %p has a corrupt header 0x%016x\n",
                            ctx->name(), static_cast<const void*>(p), h);
      return false;
    }
    ++chunks;
    if (ChunkHeaderIsFree(h)) {
      ++freed;
    } else if (kChecking && !SentinelOk(p)) {
      internal::AppendFormat(error, "generation '%s': sentinel of chunk %p (%d bytes) overwritten\n",
                            ctx->name(), static_cast<const void*>(p), RequestedSize(p));
      return false;
    }
    c += footprint;
  }
  if (chunks != b->nchunks || freed != b->nfree) {
    internal::AppendFormat(error,
                          "generation '%s': block %p counts %d chunks, %d free; it holds %d, %d free\n",
                          ctx->name(), static_cast<const void*>(b), b->nchunks, b->nfree, chunks,
                          freed);
    return false;
  }
  return true;
}

bool GenerationCheck(const Context* ctx, const GenerationState* st, std::string* error) {
  size_t blocks = 1;
  bool ok = true;
  auto check_block = [&](const BlockList& list, KindBlock* kb, bool spare) {
    const GenerationBlock* b = AsGenerationBlock(kb);
    if (!ok) return;
    if (kb->owner != ctx || !list.Holds(kb) || b->free_ptr < FirstChunk(b) ||
        b->free_ptr > b->end || (spare && b->nchunks != 0)) {
      internal::AppendFormat(error, "generation '%s': block %p is corrupt\n", ctx->name(),
                            static_cast<const void*>(b));
      ok = false;
      return;
    }
    if (b != st->first) ++blocks;
    ok = CheckChunks(ctx, b, error);
  };
  st->blocks.ForEach([&](KindBlock* b) { check_block(st->blocks, b, false); });
  st->spare.ForEach([&](KindBlock* b) { check_block(st->spare, b, true); });
  if (!ok) return false;
  if (&st->current->link != st->blocks.head()) {
    internal::AppendFormat(error, "generation '%s': the current block is not the newest\n",
                          ctx->name());
    return false;
  }
  st->dedicated.ForEach([&](KindBlock* kb) {
    const char* p = reinterpret_cast<const char*>(kb) + kDedicatedPayload;
    const uint64_t h = ReadChunkHeader(p);
    if (ok && (kb->owner != ctx || !st->dedicated.Holds(kb) || !ChunkHeaderMagicOk(h) ||
               ChunkHeaderKind(h) != kChunkKindGeneration || !ChunkHeaderIsExternal(h) ||
               ChunkHeaderIsFree(h) || (kChecking && !SentinelOk(p)))) {
      internal::AppendFormat(error, "generation '%s': dedicated chunk %p is corrupt\n",
                            ctx->name(), static_cast<const void*>(p));
      ok = false;
    }
    ++blocks;
  });
  if (!ok) return false;
  if (blocks != ctx->num_blocks()) {
    internal::AppendFormat(error, "generation '%s': %d blocks on the lists but %d accounted\n",
                          ctx->name(), blocks, ctx->num_blocks());
    return false;
  }
  return true;
}

BlockInfo DescribeBlock(const Context* ctx, const GenerationState* st, const GenerationBlock* b,
                        BlockRole role) {
  const bool first = b == st->first;
  // The first block's header is the context's, at the block's start.
  const char* base = first ? reinterpret_cast<const char*>(ctx) : reinterpret_cast<const char*>(b);
  BlockInfo info;
  info.start = base;
  info.size = first ? ctx->first_block_size() : b->link.size;
  info.header_bytes = static_cast<size_t>(FirstChunk(b) - base);
  info.last_offset = static_cast<size_t>(b->free_ptr - base);
  info.end_offset = static_cast<size_t>(b->end - base);
  info.free_bytes = info.end_offset - info.last_offset;
  // Chunks live and dead, and any bytes past `end`.
  info.used_bytes = info.size - info.header_bytes - info.free_bytes;
  info.role = role;
  info.current = b == st->current;
  info.SetCounter("chunks", b->nchunks - b->nfree);
  return info;
}

// Inspect
//
// The first block, then the other blocks of chunks newest first (the
// current block is the newest), then the spare blocks, then the dedicated
// chunks, newest first. No size classes.
void GenerationInspect(const Context* ctx, const GenerationState* st, InspectVisitor* visitor) {
  visitor->VisitBlock(DescribeBlock(ctx, st, st->first, BlockRole::kFirst));
  st->blocks.ForEach([&](KindBlock* b) {
    if (AsGenerationBlock(b) != st->first) {
      visitor->VisitBlock(DescribeBlock(ctx, st, AsGenerationBlock(b), BlockRole::kNormal));
    }
  });
  st->spare.ForEach([&](KindBlock* b) {
    visitor->VisitBlock(DescribeBlock(ctx, st, AsGenerationBlock(b), BlockRole::kSpare));
  });
  st->dedicated.ForEach([&](KindBlock* b) {
    BlockInfo info;
    info.start = b;
    info.size = b->size;
    info.header_bytes = kDedicatedPayload;
    info.used_bytes = b->size - kDedicatedPayload;
    info.last_offset = info.end_offset = b->size;
    info.role = BlockRole::kOversize;
    info.label = "dedicated";
    visitor->VisitBlock(info);
  });
}

// VisitLiveChunks
//
// Checking builds: every chunk not freed, by walking each block's chunks as
// Check does (spare blocks hold none), then the dedicated chunks.
void GenerationVisitLiveChunks(const Context* /*ctx*/, const GenerationState* st,
                               LiveChunkVisitor* visitor) {
  if (!kChecking) return;
  st->blocks.ForEach([&](KindBlock* kb) {
    const GenerationBlock* b = AsGenerationBlock(kb);
    // Checking builds give every chunk the long prefix: its first word is
    // its size.
    for (const char* c = FirstChunk(b); c < b->free_ptr; c += ReadWord(c)) {
      const char* p = c + kLongPrefix;
      if (!ChunkHeaderIsFree(ReadChunkHeader(p))) {
        visitor->VisitChunk(p, RequestedSize(p), ReadSite(p));
      }
    }
  });
  st->dedicated.ForEach([&](KindBlock* kb) {
    const char* p = reinterpret_cast<const char*>(kb) + kDedicatedPayload;
    visitor->VisitChunk(p, RequestedSize(p), ReadSite(p));
  });
}

// --- Context-free entry points (mcx::Free and friends) ------------------------------

Context* LiveChunkOwner(const void* p, const char* operation) {
  const uint64_t h = ReadChunkHeader(p);
  if (ChunkHeaderIsFree(h)) {
    ReportMisuse("cannot %s chunk %p: it was already freed", operation, p);
    return nullptr;
  }
  Context* owner;
  CopyFromPoisoned(&owner, &BlockOf(p, h)->link.owner, sizeof(owner));
  return owner;
}

Context* ChunkContext(const void* p) { return LiveChunkOwner(p, "find the context of"); }

size_t ChunkFreeSize(const void* p) {
  return LiveChunkOwner(p, "size") != nullptr ? ChunkSizeOf(p) : 0;
}

const ChunkKindMethods kChunkMethods = {"generation", &ChunkContext, &ChunkFreeSize};

// --- The kind ---------------------------------------------------------------------------

struct GenerationImpl {
  using Options = GenerationOptions;
  using State = GenerationState;
  static constexpr const char* kName = "generation";

  static size_t FirstBlockSize(const Options& o, size_t header_bytes, size_t learned) {
    // Refused before any block is acquired (0: kBadSize), not after.
    if (o.initial_block_size > kMaxGenerationBlockSize) return 0;
    if (o.initial_block_size == 0) {
      return LearnedFirstBlockSize(header_bytes, kFirstChunkOffset + kLongPrefix, learned);
    }
    const size_t min = header_bytes + kFirstChunkOffset + kMinFirstBlockSpace;
    return o.initial_block_size < min ? min : o.initial_block_size;
  }

  static bool Init(Context* ctx, State* st, const Options& o, char* space, char* block_end) {
    // A valid state first: a refused context is released through ReleaseAll.
    new (st) State();
    auto* first = reinterpret_cast<GenerationBlock*>(space);
    first->link.owner = ctx;
    first->link.size = 0;  // the tree releases the first block
    if (block_end - space > static_cast<ptrdiff_t>(kMaxGenerationBlockSize)) {
      block_end = space + kMaxGenerationBlockSize;
    }
    first->end = block_end;
    first->free_ptr = FirstChunk(first);
    first->nchunks = first->nfree = 0;
    PoisonMemoryRegion(first->free_ptr, static_cast<size_t>(block_end - first->free_ptr));
    st->first = st->current = first;
    st->blocks.PushFront(&first->link);
    // Later blocks start at the first block's size (whoever chose it).
    size_t base = o.initial_block_size != 0 ? o.initial_block_size : ctx->first_block_size();
    if (base < kMinGrowthBlockSize) base = kMinGrowthBlockSize;
    st->base_block_size = st->next_block_size = base;
    st->max_block_size = o.max_block_size < base ? base : o.max_block_size;
    st->chunk_limit = o.chunk_limit != 0 ? o.chunk_limit : st->max_block_size / kChunkFraction;
    st->keep_free_block = o.keep_free_block;
    // A chunk at the limit must fit a block of the largest size: above it,
    // every such chunk would take a block larger than max_block_size.
    if (o.max_block_size > kMaxGenerationBlockSize ||
        st->chunk_limit > st->max_block_size - kFirstChunkOffset - kLongPrefix - 16 ||
        !RegisterChunkKind(kChunkKindGeneration, &kChunkMethods)) {
      SetFailure(ctx, Failure::kBadArgument);
      return false;
    }
    return true;
  }

  static void* Alloc(Context* ctx, State* st, size_t size, size_t alignment) {
    return GenerationAlloc(ctx, st, size, alignment);
  }
  static void* AllocFast(Context* ctx, State* st, size_t size, size_t alignment) {
    return GenerationAllocFast(ctx, st, size, alignment);
  }
  static void Free(Context* ctx, State* st, void* p) { GenerationFree(ctx, st, p); }
  static void* Realloc(Context* ctx, State* st, void* p, size_t old_size, size_t new_size) {
    return GenerationRealloc(ctx, st, p, old_size, new_size);
  }
  static size_t ChunkSize(const Context*, const State*, const void* p) { return ChunkSizeOf(p); }
  // Checking builds keep the size asked for before each chunk; an aligned
  // chunk's redirect keeps none.
  static size_t RequestedSize(const Context*, const State*, const void* p) {
    if (!kChecking || ChunkHeaderKind(ReadChunkHeader(p)) == kChunkKindAlignedRedirect) {
      return kUnknownSize;
    }
    return mcx::RequestedSize(p);
  }
  static void Reset(Context* ctx, State* st, const ResetOptions& options) {
    GenerationReset(ctx, st, options);
  }
  static void ReleaseAll(Context* ctx, State* st) { GenerationReleaseAll(ctx, st); }
  static void Live(const Context* /*ctx*/, const State* st, LiveCounts* out) {
    st->live.Report(out);
  }
  static void ResetPeak(Context* /*ctx*/, State* st) { st->live.ResetPeak(); }
  static void Stats(const Context* ctx, const State* st, KindStats* out) {
    GenerationStats(ctx, st, out);
  }
  static bool Check(const Context* ctx, const State* st, std::string* error) {
    return GenerationCheck(ctx, st, error);
  }
  static void Inspect(const Context* ctx, const State* st, InspectVisitor* visitor) {
    GenerationInspect(ctx, st, visitor);
  }
  static void VisitLiveChunks(const Context* ctx, const State* st, LiveChunkVisitor* visitor) {
    GenerationVisitLiveChunks(ctx, st, visitor);
  }
};

constexpr KindMethods kGenerationMethods = MakeKindMethods<GenerationImpl>();

}  // namespace

KindSpec GenerationKind(const GenerationOptions& options) {
  return KindSpec(&kGenerationMethods, options);
}

Context* CreateGenerationContext(Context* parent, const char* name,
                                 const GenerationOptions& options,
                                 const ContextOptions& context_options) {
  return Context::Create(parent, name, GenerationKind(options), context_options);
}

}  // namespace mcx
