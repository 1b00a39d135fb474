// The freelist kind: PostgreSQL's AllocSet (src/backend/utils/mmgr/aset.c)
// with finer size classes. What is kept, and why:
//   - An 8-byte chunk header that names the kind and leads back to the
//     block, so free and realloc need no context and no lookup structure.
//   - LIFO freelists per class: the chunk freed last is hot in cache.
//   - The unused tail of an exhausted block is carved into freelist chunks,
//     so a new block never strands the old block's last bytes.
//   - Chunks above chunk_limit get a dedicated block that goes back to the
//     source when freed: one huge chunk must not pin a class forever.
//   - Blocks double from an initial to a maximum size: small contexts stay
//     small, big ones take few blocks.
// What changes: four classes per doubling instead of one (aset.c wastes about
// a third of the bytes on power-of-two rounding), class sizes that make
// header + chunk a multiple of 16 (no padding between chunks), a free bit in
// the header that catches double frees in every build, and kept blocks
// (ResetMode::kKeepBytes) that are reused before new ones are acquired.

#include "mcx/freelist/freelist.h"

#include <cstring>
#include <new>
#include <string>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "mcx/context/block_list.h"
#include "mcx/context/inspect.h"
#include "mcx/context/internal/format.h"
#include "mcx/context/kind_api.h"
#include "mcx/freelist/internal/freelist_block.h"

namespace mcx {

using freelist_internal::BlockHeader;
using freelist_internal::FreelistState;
using freelist_internal::HeaderOf;

namespace {

// Checking and ASan builds record each chunk's requested size (PostgreSQL's
// MEMORY_CONTEXT_CHECKING does the same): checking builds guard it with a
// sentinel, ASan builds unpoison exactly that many bytes.
constexpr bool kChecking = kCheckingBuild;
constexpr bool kTracksRequested = kChecking || kAddressSanitizerBuild || kValgrindBuild;

// Bytes before each payload: the header word, plus the requested size when
// it is tracked.
constexpr size_t kHeaderBytes = kFreelistChunkHeaderBytes;
static_assert(kHeaderBytes == (kTracksRequested ? 16 : 8), "freelist.h and this file agree");

constexpr size_t RoundUp16(size_t n) { return (n + 15) & ~size_t{15}; }

// Distance between consecutive chunks of class `c`. In release builds this
// is class + 8, already a multiple of 16.
inline size_t Stride(size_t c) { return RoundUp16(SizeClassBytes(c) + kHeaderBytes); }

// Payload offset of a dedicated chunk inside its block.
constexpr size_t kDedicatedPayload = RoundUp16(sizeof(BlockHeader) + kHeaderBytes);

// Bytes at the start of a released block that its source may write: the
// caching source's 16-byte node, glibc's free-list words (32 bytes in its
// large bins). A freed dedicated chunk's header word lies beyond them, so
// its free bit survives the release.
constexpr size_t kReleasedBlockScratch = 32;
static_assert(kDedicatedPayload - sizeof(uint64_t) >= kReleasedBlockScratch,
              "a dedicated chunk's header word must survive its block's release");

// Room the first block keeps after all headers, so a context made with a
// tiny initial_block_size still serves a few requests from its first block.
constexpr size_t kMinFirstBlockSpace = 256;

// Later blocks are at least this large (aset.c: "We somewhat arbitrarily
// enforce a minimum 1K block size"): a smaller block would hold a handful
// of chunks and cost an acquisition for each handful.
constexpr size_t kMinGrowthBlockSize = 1024;

// Header checks on the free fast path, in one compare: our kind, our magic,
// not free, not dedicated.
constexpr uint64_t kFastMask = kChunkKindMask | kChunkExternalBit | kChunkFreeBit | kChunkMagicMask;
constexpr uint64_t kFastExpect = kChunkKindFreelist | (kChunkMagic << kChunkMagicShift);

FreelistState* StateOf(Context* ctx) { return KindState<FreelistState>(ctx); }

// Blocks are 16-aligned, so the first chunk sits at a fixed offset.
constexpr size_t kFirstChunkOffset = RoundUp16(sizeof(BlockHeader) + kHeaderBytes) - kHeaderBytes;

char* FirstChunk(BlockHeader* b) { return reinterpret_cast<char*>(b) + kFirstChunkOffset; }
char* FirstChunk(KindBlock* b) { return FirstChunk(HeaderOf(b)); }

// The block being carved: the newest on `blocks`.
BlockHeader* Carving(const FreelistState* st) { return HeaderOf(st->blocks.head()); }

BlockHeader* BlockOf(const void* p, uint64_t h) {
  return reinterpret_cast<BlockHeader*>(const_cast<char*>(static_cast<const char*>(p)) - 8 -
                                        ChunkHeaderOffset(h));
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
  Context* owner = BlockOf(p, h)->link.owner;
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

// --- Allocation ---------------------------------------------------------------

void* CarveChunk(FreelistState* st, size_t c, BlockHeader* block) {
  char* payload = st->free_ptr + kHeaderBytes;
  WriteChunkHeader(payload,
                   MakeChunkHeader(kChunkKindFreelist, false, static_cast<uint8_t>(c),
                                   static_cast<uint64_t>(payload - 8 - reinterpret_cast<char*>(block))));
  st->free_ptr += Stride(c);
  return payload;
}

void PushFree(FreelistState* st, void* p, uint64_t h, size_t c) {
  WriteChunkHeader(p, h | kChunkFreeBit);
  UnpoisonMemoryRegion(p, sizeof(void*));
  std::memcpy(p, &st->freelists[c], sizeof(void*));
  // The link too: ASan reports any read of a freed chunk.
  PoisonMemoryRegion(p, Stride(c) - kHeaderBytes);
  st->freelists[c] = p;
}

// The next chunk on a freelist, read past the poison.
void* NextFree(const void* p) {
  void* next;
  CopyFromPoisoned(&next, p, sizeof(next));
  return next;
}

// aset.c's "split the remaining free space into chunks": the largest class
// that fits, repeatedly, until less than the smallest stride is left.
void CarveRemainder(FreelistState* st) {
  BlockHeader* b = Carving(st);
  for (;;) {
    size_t avail = static_cast<size_t>(st->free_end - st->free_ptr);
    if (avail < Stride(0)) break;
    size_t fit = avail - kHeaderBytes;
    size_t c = SizeClassOf(fit < kMaxSizeClassBytes ? fit : kMaxSizeClassBytes);
    while (Stride(c) > avail) --c;
    void* p = CarveChunk(st, c, b);
    PushFree(st, p, ReadChunkHeader(p), c);
  }
  b->carved_end = st->free_ptr;
}

ABSL_ATTRIBUTE_NOINLINE void* AllocFromNewBlock(Context* ctx, FreelistState* st, size_t c) {
  const size_t need = kFirstChunkOffset + Stride(c);
  BlockHeader* b = HeaderOf(st->spare.head());
  if (b != nullptr && static_cast<size_t>(b->end - FirstChunk(b)) >= Stride(c)) {
    CarveRemainder(st);
    st->spare.Remove(&b->link);
  } else {
    size_t want = st->next_block_size < need ? need : st->next_block_size;
    KindBlock* kb = AcquireKindBlock(ctx, want, kMinBlockAlignment, need);
    if (kb == nullptr) return nullptr;
    FirstBlockOutgrown(ctx);
    // Only now, with the new block in hand, give up the old block's tail.
    CarveRemainder(st);
    b = HeaderOf(kb);
    // Chunk headers hold a 32-bit offset: never carve past it.
    const size_t usable = kb->size > kMaxFreelistBlockSize ? kMaxFreelistBlockSize : kb->size;
    b->end = reinterpret_cast<char*>(b) + usable;
    if (st->next_block_size < st->max_block_size) {
      size_t doubled = st->next_block_size * 2;
      st->next_block_size = doubled < st->max_block_size ? doubled : st->max_block_size;
    }
  }
  st->blocks.PushFront(&b->link);
  PoisonMemoryRegion(FirstChunk(b), static_cast<size_t>(b->end - FirstChunk(b)));
  st->free_ptr = FirstChunk(b);
  st->free_end = b->end;
  b->carved_end = st->free_ptr;
  return CarveChunk(st, c, b);
}

void* AllocDedicated(Context* ctx, FreelistState* st, size_t size) {
  const size_t want = kDedicatedPayload + size + (kChecking ? kCheckingTailBytes : 0);
  KindBlock* kb = AcquireKindBlock(ctx, want, kMinBlockAlignment);
  if (kb == nullptr) return nullptr;
  BlockHeader* b = HeaderOf(kb);
  char* mem = reinterpret_cast<char*>(b);
  b->end = mem + kb->size;
  b->carved_end = b->end;
  st->dedicated.PushFront(kb);
  char* payload = mem + kDedicatedPayload;
  WriteChunkHeader(payload, MakeChunkHeader(kChunkKindFreelist, true, 0, kDedicatedPayload - 8));
  MarkLive(payload, size, static_cast<size_t>(b->end - payload), PendingSite(ctx));
  return payload;
}

void* FreelistAlloc(Context* ctx, FreelistState* st, size_t size, size_t alignment) {
  if (alignment > kDefaultAlignment) return AllocAlignedRedirect(ctx, size, alignment);
  if (size > st->chunk_limit) return AllocDedicated(ctx, st, size);
  const size_t c = SizeClassOf(size);
  void* p = st->freelists[c];
  if (p != nullptr) {
    st->freelists[c] = NextFree(p);
    WriteChunkHeader(p, ReadChunkHeader(p) & ~kChunkFreeBit);
  } else if (Stride(c) <= static_cast<size_t>(st->free_end - st->free_ptr)) {
    p = CarveChunk(st, c, Carving(st));
  } else {
    p = AllocFromNewBlock(ctx, st, c);
    if (p == nullptr) return nullptr;
  }
  MarkLive(p, size, Stride(c) - kHeaderBytes, PendingSite(ctx));
  return p;
}

// --- Free ---------------------------------------------------------------------------

// Whether `b`, the block a dedicated chunk's header leads to, is a live
// dedicated block of `ctx`. A block that went back to its source may hold
// anything in its first 16 bytes (the caching source's node, glibc's
// free-list words), so the owner word is read first, past any poison, and
// the links are followed only once it names `ctx`: a live block's neighbours
// point back at it. Only a chunk whose free bit is clear gets here; a freed
// one was reported from its header alone.
bool IsLiveDedicated(const Context* ctx, const FreelistState* st, const BlockHeader* b) {
  Context* owner;
  CopyFromPoisoned(&owner, &b->link.owner, sizeof(owner));
  if (owner != ctx || b->link.prev == &b->link || b->link.next == &b->link) return false;
  return st->dedicated.Holds(&b->link);
}

// Reports misuse and returns false if `p` is not a live dedicated chunk of
// `ctx`: its memory was reused, or it is a stale pointer to a chunk of a
// context that was reset or destroyed and whose block came back to this one.
bool VerifyDedicated(Context* ctx, FreelistState* st, void* p, uint64_t h, const char* operation) {
  if (IsLiveDedicated(ctx, st, BlockOf(p, h))) return true;
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
  BlockHeader* b = BlockOf(p, h);
  st->dedicated.Remove(&b->link);
  ReleaseDedicatedBlock(ctx, &b->link);
}

void FreelistFree(Context* ctx, FreelistState* st, void* p);

// Everything but the common case: dedicated chunks, aligned chunks, and
// every kind of bad pointer.
ABSL_ATTRIBUTE_NOINLINE void FreeSlow(Context* ctx, void* p, uint64_t h) {
  if (!ChunkHeaderMagicOk(h)) return ReportBadChunk(p, "free");
  unsigned kind = ChunkHeaderKind(h);
  // The real chunk goes straight to the kind: only the aligned address was
  // announced to Valgrind (Context::Free announces its release).
  if (kind == kChunkKindAlignedRedirect) return FreelistFree(ctx, StateOf(ctx), AlignedRedirectTarget(p));
  if (kind != kChunkKindFreelist) return ReportBadChunk(p, "free");
  if (ChunkHeaderIsFree(h)) {
    return ReportMisuse("double free of chunk %p in context '%s'", p, ctx->name());
  }
  if (!VerifyLiveChunk(ctx, p, h, "free")) return;
  FreeDedicated(ctx, StateOf(ctx), p, h);
}

void FreelistFree(Context* ctx, FreelistState* st, void* p) {
  const uint64_t h = ReadChunkHeader(p);
  if (ABSL_PREDICT_FALSE((h & kFastMask) != kFastExpect)) return FreeSlow(ctx, p, h);
  const size_t c = ChunkHeaderValue(h);
  if (kChecking) {
    if (!VerifyLiveChunk(ctx, p, h, "free")) return;
    UnpoisonMemoryRegion(p, SizeClassBytes(c));
    std::memset(p, kClobberByte, SizeClassBytes(c));
  }
  PushFree(st, p, h, c);
}

// --- Realloc ------------------------------------------------------------------------

void* ReallocDedicated(Context* ctx, FreelistState* st, void* p, uint64_t h, size_t new_size) {
  if (!VerifyDedicated(ctx, st, p, h, "realloc")) {
    SetFailure(ctx, Failure::kBadArgument);
    return nullptr;
  }
  BlockHeader* b = BlockOf(p, h);
  const size_t old_usable = b->link.size - kDedicatedPayload;
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
  auto* moved = static_cast<BlockHeader*>(nb.ptr);
  moved->link.size = nb.size;
  moved->end = static_cast<char*>(nb.ptr) + nb.size;
  moved->carved_end = moved->end;
  st->dedicated.Replace(&moved->link);
  char* payload = static_cast<char*>(nb.ptr) + kDedicatedPayload;
  WriteChunkHeader(payload, h);
  MarkLive(payload, new_size, static_cast<size_t>(moved->end - payload), PendingSite(ctx));
  return payload;
}

void* FreelistRealloc(Context* ctx, FreelistState* st, void* p, size_t /*old_size*/, size_t new_size) {
  const uint64_t h = ReadChunkHeader(p);
  if ((h & (kFastMask & ~kChunkExternalBit)) != kFastExpect) {
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
  if (new_size <= usable) {
    MarkLive(p, new_size, Stride(c) - kHeaderBytes, PendingSite(ctx));
    return p;
  }
  void* q = FreelistAlloc(ctx, st, new_size, kDefaultAlignment);
  if (q == nullptr) return nullptr;
  std::memcpy(q, p, kTracksRequested ? RequestedSize(p) : usable);
  FreelistFree(ctx, st, p);
  return q;
}

size_t FreelistChunkSize(const void* p) {
  const uint64_t h = ReadChunkHeader(p);
  if (ChunkHeaderKind(h) == kChunkKindAlignedRedirect) return GetChunkSize(p);
  // Checking builds guard the requested bytes with a sentinel right after
  // them, ASan builds poison what follows: the usable size is exactly what
  // was asked for.
  if (kTracksRequested) return RequestedSize(p);
  if (ChunkHeaderIsExternal(h)) return BlockOf(p, h)->link.size - kDedicatedPayload;
  return SizeClassBytes(ChunkHeaderValue(h));
}

// --- Reset, release, stats, check ---------------------------------------------------

// Empties a block's memory for reuse: checking builds clobber what was
// handed out (a stale pointer then reads 0x7F, and its header holds reserved
// kind id 15), ASan builds poison the whole block space.
void EmptyBlockMemory(BlockHeader* b, char* used_end) {
  char* from = FirstChunk(b);
  if (kChecking) {
    UnpoisonMemoryRegion(from, static_cast<size_t>(used_end - from));
    std::memset(from, kClobberByte, static_cast<size_t>(used_end - from));
  }
  PoisonMemoryRegion(from, static_cast<size_t>(b->end - from));
}

void ReleaseDedicated(Context* ctx, FreelistState* st) {
  // A stale pointer to a chunk reads "freed" for as long as its block stays.
  st->dedicated.ForEach([&](KindBlock* b) { ReleaseDedicatedBlock(ctx, b); });
  st->dedicated.Clear();
}

void FreelistReset(Context* ctx, FreelistState* st, const ResetOptions& options) {
  BlockHeader* first = st->first;
  ReleaseDedicated(ctx, st);
  std::memset(st->freelists, 0, sizeof(st->freelists));
  // What was handed out is emptied first; blocks in use and spare blocks
  // alike are then kept while they fit (block_list.h), and kept ones wait on
  // `spare`, to be used before new ones.
  EmptyBlockMemory(Carving(st), st->free_ptr);
  st->blocks.ForEach([&](KindBlock* b) {
    if (b != st->blocks.head()) EmptyBlockMemory(HeaderOf(b), HeaderOf(b)->carved_end);
  });
  BlockList kept;
  size_t bytes = ResetBlocks(ctx, &st->blocks, options, ctx->first_block_size(), &kept, &first->link);
  ResetBlocks(ctx, &st->spare, options, bytes, &kept, &first->link);
  kept.ForEach([](KindBlock* b) { HeaderOf(b)->carved_end = FirstChunk(b); });
  st->spare = kept;
  st->blocks.PushFront(&first->link);
  st->free_ptr = first->carved_end = FirstChunk(first);
  st->free_end = first->end;
  st->next_block_size = st->base_block_size;
}

void FreelistReleaseAll(Context* ctx, FreelistState* st) {
  ReleaseDedicated(ctx, st);
  ReleaseBlocks(ctx, &st->blocks, &st->first->link);
  ReleaseBlocks(ctx, &st->spare);
}

void FreelistStats(const Context* /*ctx*/, const FreelistState* st, KindStats* out) {
  for (size_t c = 0; c < kNumSizeClasses; ++c) {
    for (void* p = st->freelists[c]; p != nullptr; p = NextFree(p)) {
      out->free_bytes += Stride(c);
      ++out->free_chunks;
    }
  }
  out->free_bytes += static_cast<size_t>(st->free_end - st->free_ptr);
  st->spare.ForEach([&](KindBlock* b) {
    out->free_bytes += static_cast<size_t>(HeaderOf(b)->end - FirstChunk(b));
  });
}

bool FreelistCheck(const Context* ctx, const FreelistState* st, std::string* error) {
  size_t blocks = 1;
  size_t free_in_blocks = 0;
  bool ok = true;
  st->blocks.ForEach([&](KindBlock* kb) {
    BlockHeader* b = HeaderOf(kb);
    if (!ok) return;
    if (kb->owner != ctx || !st->blocks.Holds(kb)) {
      internal::AppendFormat(error, "freelist '%s': block %p names another owner or a broken link\n",
                            ctx->name(), static_cast<void*>(b));
      ok = false;
      return;
    }
    if (b != st->first) ++blocks;
    char* end = kb == st->blocks.head() ? st->free_ptr : b->carved_end;
    for (char* chunk = FirstChunk(b); chunk < end;) {
      char* payload = chunk + kHeaderBytes;
      uint64_t h = ReadChunkHeader(payload);
      bool good = ChunkHeaderMagicOk(h) && ChunkHeaderKind(h) == kChunkKindFreelist &&
                  !ChunkHeaderIsExternal(h) && ChunkHeaderValue(h) < kNumSizeClasses &&
                  ChunkHeaderOffset(h) ==
                      static_cast<uint64_t>(payload - 8 - reinterpret_cast<char*>(b));
      if (!good) {
        internal::AppendFormat(error, "freelist '%s': chunk %p has a corrupt header 0x%016x\n",
                              ctx->name(), static_cast<void*>(payload), h);
        ok = false;
        return;
      }
      if (ChunkHeaderIsFree(h)) {
        ++free_in_blocks;
      } else if (kChecking && !SentinelOk(payload)) {
        internal::AppendFormat(error, "freelist '%s': sentinel of chunk %p (%d bytes) overwritten\n",
                              ctx->name(), static_cast<void*>(payload), RequestedSize(payload));
        ok = false;
        return;
      }
      chunk += Stride(ChunkHeaderValue(h));
    }
  });
  if (!ok) return false;
  size_t on_lists = 0;
  for (size_t c = 0; c < kNumSizeClasses; ++c) {
    for (void* p = st->freelists[c]; p != nullptr; p = NextFree(p)) {
      uint64_t h = ReadChunkHeader(p);
      if (!ChunkHeaderIsFree(h) || ChunkHeaderValue(h) != c || BlockOf(p, h)->link.owner != ctx) {
        internal::AppendFormat(error, "freelist '%s': chunk %p on freelist %d is not a free chunk of that class\n",
                              ctx->name(), p, c);
        return false;
      }
      ++on_lists;
    }
  }
  if (on_lists != free_in_blocks) {
    internal::AppendFormat(error, "freelist '%s': %d chunks marked free but %d on freelists\n",
                          ctx->name(), free_in_blocks, on_lists);
    return false;
  }
  st->dedicated.ForEach([&](KindBlock* b) {
    char* payload = reinterpret_cast<char*>(b) + kDedicatedPayload;
    if (ok && (b->owner != ctx || (kChecking && !SentinelOk(payload)))) {
      internal::AppendFormat(error, "freelist '%s': dedicated chunk %p is corrupt\n", ctx->name(),
                            static_cast<void*>(payload));
      ok = false;
    }
  });
  if (!ok) return false;
  blocks += st->dedicated.count() + st->spare.count();
  if (blocks != ctx->num_blocks()) {
    internal::AppendFormat(error, "freelist '%s': %d blocks on the lists but %d accounted\n",
                          ctx->name(), blocks, ctx->num_blocks());
    return false;
  }
  return true;
}

// Checking builds: every live chunk with its site, for LiveChunksReport
// (kind_api.h). Walks the blocks' chunks as Check does (stopping at a
// header it cannot read, which Check reports), then the dedicated chunks.
void FreelistVisitLiveChunks(const Context* /*ctx*/, const FreelistState* st,
                             LiveChunkVisitor* visitor) {
  if (!kChecking) return;
  st->blocks.ForEach([&](KindBlock* kb) {
    BlockHeader* b = HeaderOf(kb);
    char* end = kb == st->blocks.head() ? st->free_ptr : b->carved_end;
    for (char* chunk = FirstChunk(b); chunk < end;) {
      char* payload = chunk + kHeaderBytes;
      uint64_t h = ReadChunkHeader(payload);
      if (!ChunkHeaderMagicOk(h) || ChunkHeaderValue(h) >= kNumSizeClasses) break;
      if (!ChunkHeaderIsFree(h)) visitor->VisitChunk(payload, RequestedSize(payload), ChunkSite(payload));
      chunk += Stride(ChunkHeaderValue(h));
    }
  });
  st->dedicated.ForEach([&](KindBlock* b) {
    char* payload = reinterpret_cast<char*>(b) + kDedicatedPayload;
    visitor->VisitChunk(payload, RequestedSize(payload), ChunkSite(payload));
  });
}

// --- Inspection ---------------------------------------------------------------------

// Describes a block of chunks (first, normal or spare). Free chunks are found
// by walking the block's chunks, as Check does; the walk stops at a header it
// cannot read rather than trust a bad class.
BlockInfo DescribeBlock(const Context* ctx, const FreelistState* st, BlockHeader* b,
                        BlockRole role) {
  const KindBlock* kb = &b->link;
  const bool first = role == BlockRole::kFirst;
  // The first block's header is the context's, at the block's start.
  const char* base = first ? reinterpret_cast<const char*>(ctx) : reinterpret_cast<const char*>(b);
  BlockInfo info;
  info.start = base;
  info.size = first ? ctx->first_block_size() : kb->size;
  info.header_bytes = static_cast<size_t>(FirstChunk(b) - base);
  info.role = role;
  const char* chunks_end;
  if (role == BlockRole::kSpare) {
    chunks_end = FirstChunk(b);
    info.end_offset = static_cast<size_t>(b->end - base);
  } else if (kb == st->blocks.head()) {
    chunks_end = st->free_ptr;
    info.end_offset = static_cast<size_t>(st->free_end - base);
    info.current = true;
  } else {
    // Exhausted: CarveRemainder left less than the smallest chunk, counted
    // as used.
    chunks_end = b->carved_end;
    info.end_offset = static_cast<size_t>(b->carved_end - base);
  }
  info.last_offset = static_cast<size_t>(chunks_end - base);
  info.free_bytes = info.end_offset - info.last_offset;
  for (const char* chunk = FirstChunk(b); chunk < chunks_end;) {
    uint64_t h = ReadChunkHeader(chunk + kHeaderBytes);
    if (!ChunkHeaderMagicOk(h) || ChunkHeaderValue(h) >= kNumSizeClasses) break;
    const size_t stride = Stride(ChunkHeaderValue(h));
    if (ChunkHeaderIsFree(h)) {
      info.freelist_bytes += stride;
      ++info.freelist_chunks;
    }
    chunk += stride;
  }
  info.used_bytes = info.size - info.header_bytes - info.free_bytes - info.freelist_bytes;
  return info;
}

// Inspect
//
// The blocks of chunks oldest first (the first block, then the others in the
// order they were acquired; the newest is the one being carved), then the
// spare blocks, then the dedicated blocks, newest first; then every size
// class with its freelist, head first.
void FreelistInspect(const Context* ctx, const FreelistState* st, InspectVisitor* visitor) {
  for (KindBlock* b = st->blocks.tail(); b != nullptr; b = b->prev) {
    visitor->VisitBlock(DescribeBlock(ctx, st, HeaderOf(b),
                                      HeaderOf(b) == st->first ? BlockRole::kFirst
                                                               : BlockRole::kNormal));
  }
  st->spare.ForEach([&](KindBlock* b) {
    visitor->VisitBlock(DescribeBlock(ctx, st, HeaderOf(b), BlockRole::kSpare));
  });
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
    for (void* p = st->freelists[c]; p != nullptr; p = NextFree(p)) ++info.free_chunks;
    visitor->VisitSizeClass(info);
    for (void* p = st->freelists[c]; p != nullptr; p = NextFree(p)) visitor->VisitFreeChunk(info, p);
  }
}

// --- Context-free entry points (mcx::Free and friends) ------------------------------

Context* LiveChunkOwner(const void* p, const char* operation) {
  uint64_t h = ReadChunkHeader(p);
  if (ChunkHeaderIsFree(h)) {
    ReportMisuse("cannot %s chunk %p: it was already freed", operation, p);
    return nullptr;
  }
  return BlockOf(p, h)->link.owner;
}

Context* ChunkContext(const void* p) { return LiveChunkOwner(p, "find the context of"); }

size_t FreelistChunkSize(const void* p);

size_t ChunkFreeSize(const void* p) {
  Context* ctx = LiveChunkOwner(p, "size");
  return ctx != nullptr ? FreelistChunkSize(p) : 0;
}

const ChunkKindMethods kChunkMethods = {"freelist", &ChunkContext, &ChunkFreeSize};

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
      return LearnedFirstBlockSize(header_bytes, sizeof(BlockHeader) + kHeaderBytes, learned);
    }
    size_t min = header_bytes + sizeof(BlockHeader) + kHeaderBytes + kMinFirstBlockSpace;
    return o.initial_block_size < min ? min : o.initial_block_size;
  }

  static bool Init(Context* ctx, State* st, const Options& o, char* space, char* block_end) {
    // A valid state first: a refused context is released through ReleaseAll.
    new (st) State();
    std::memset(static_cast<void*>(st->freelists), 0, sizeof(st->freelists));
    auto* first = reinterpret_cast<BlockHeader*>(space);
    first->link.owner = ctx;
    first->link.size = 0;  // the tree releases the first block
    if (block_end - space > static_cast<ptrdiff_t>(kMaxFreelistBlockSize)) {
      block_end = space + kMaxFreelistBlockSize;
    }
    first->end = block_end;
    st->first = first;
    st->blocks.PushFront(&first->link);
    st->free_ptr = first->carved_end = FirstChunk(first);
    st->free_end = block_end;
    PoisonMemoryRegion(st->free_ptr, static_cast<size_t>(block_end - st->free_ptr));
    if (o.chunk_limit > kMaxSizeClassBytes || o.max_block_size > kMaxFreelistBlockSize ||
        !RegisterChunkKind(kChunkKindFreelist, &kChunkMethods)) {
      SetFailure(ctx, Failure::kBadArgument);
      return false;
    }
    // Direct mode: every chunk a dedicated block (nginx's NGX_DEBUG_PALLOC).
    st->chunk_limit = kDirectBuild ? 0 : o.chunk_limit;
    // Later blocks start at the first block's size (whoever chose it).
    size_t base = o.initial_block_size != 0 ? o.initial_block_size : ctx->first_block_size();
    if (base < kMinGrowthBlockSize) base = kMinGrowthBlockSize;
    st->base_block_size = st->next_block_size = base;
    st->max_block_size = o.max_block_size < base ? base : o.max_block_size;
    return true;
  }

  static void* Alloc(Context* ctx, State* st, size_t size, size_t alignment) {
    return FreelistAlloc(ctx, st, size, alignment);
  }
  static void Free(Context* ctx, State* st, void* p) { FreelistFree(ctx, st, p); }
  static void* Realloc(Context* ctx, State* st, void* p, size_t old_size, size_t new_size) {
    return FreelistRealloc(ctx, st, p, old_size, new_size);
  }
  static size_t ChunkSize(const Context*, const State*, const void* p) {
    return FreelistChunkSize(p);
  }
  static void Reset(Context* ctx, State* st, const ResetOptions& options) {
    FreelistReset(ctx, st, options);
  }
  static void ReleaseAll(Context* ctx, State* st) { FreelistReleaseAll(ctx, st); }
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

constexpr KindMethods kFreelistMethods = MakeKindMethods<Freelist>();

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
