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
#include <string>

#include "mcx/context/chunk.h"
#include "mcx/context/chunk_header.h"
#include "mcx/context/inspect.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/failure.h"
#include "mcx/context/internal/format.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/freelist/internal/freelist_block.h"

namespace mcx {

using freelist_internal::BlockHeader;
using freelist_internal::FreelistState;
using internal::kChecking;
using internal::PoisonMemoryRegion;
using internal::UnpoisonMemoryRegion;

namespace {

// Checking and ASan builds record each chunk's requested size (PostgreSQL's
// MEMORY_CONTEXT_CHECKING does the same): checking builds guard it with a
// sentinel, ASan builds unpoison exactly that many bytes.
constexpr bool kTracksRequested = kChecking || internal::kAddressSanitizer || internal::kValgrind;

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

// Header checks on the free fast path, in one compare: our kind, our magic,
// not free, not dedicated.
constexpr uint64_t kFastMask = kChunkKindMask | kChunkExternalBit | kChunkFreeBit | kChunkMagicMask;
constexpr uint64_t kFastExpect = kChunkKindFreelist | (kChunkMagic << kChunkMagicShift);

FreelistState* StateOf(Context* ctx) { return KindState<FreelistState>(ctx); }
const FreelistState* StateOf(const Context* ctx) { return KindState<FreelistState>(ctx); }

BlockHeader* FirstBlock(const Context* ctx) {
  return reinterpret_cast<BlockHeader*>(reinterpret_cast<char*>(const_cast<Context*>(ctx)) +
                                        ctx->header_bytes());
}

// Blocks are 16-aligned, so the first chunk sits at a fixed offset.
constexpr size_t kFirstChunkOffset = RoundUp16(sizeof(BlockHeader) + kHeaderBytes) - kHeaderBytes;

char* FirstChunk(BlockHeader* b) { return reinterpret_cast<char*>(b) + kFirstChunkOffset; }

BlockHeader* BlockOf(const void* p, uint64_t h) {
  return reinterpret_cast<BlockHeader*>(const_cast<char*>(static_cast<const char*>(p)) - 8 -
                                        ChunkHeaderOffset(h));
}

// --- Checking-build helpers (compiled out otherwise) -------------------------

size_t RequestedSize(const void* p) {
  size_t n;
  internal::CopyFromPoisoned(&n, static_cast<const char*>(p) - 16, sizeof(n));
  return n;
}

// Makes a chunk live with `size` requested bytes out of `capacity` (the
// bytes up to the next chunk or the block's end): under ASan exactly `size`
// bytes become addressable; tracked builds record `size`; checking builds
// put the sentinel right after it.
void MarkLive(void* p, size_t size, size_t capacity) {
  PoisonMemoryRegion(p, capacity);
  UnpoisonMemoryRegion(p, size);
  if (kTracksRequested) {
    internal::CopyToPoisoned(static_cast<char*>(p) - 16, &size, sizeof(size));
  }
  if (kChecking) {
    internal::CopyToPoisoned(static_cast<char*>(p) + size, &internal::kSentinelByte, 1);
  }
  PoisonMemoryRegion(static_cast<char*>(p) - kHeaderBytes, kHeaderBytes);  // the header
}

bool SentinelOk(const void* p) {
  unsigned char b;
  internal::CopyFromPoisoned(&b, static_cast<const char*>(p) + RequestedSize(p), 1);
  return b == internal::kSentinelByte;
}

// Checking builds: false (after the report) if `p` is not a live chunk of
// `ctx` with its sentinel intact. The caller then leaves the chunk alone, as
// the pool kind does: with a misuse handler that returns, a chunk of another
// context must not land on this context's freelists.
bool VerifyLiveChunk(Context* ctx, void* p, uint64_t h, const char* operation) {
  if (!kChecking) return true;
  Context* owner = BlockOf(p, h)->owner;
  if (owner != ctx) {
    internal::ReportMisuse("%s of chunk %p through context '%s', but it belongs to context '%s'",
                           operation, p, ctx->name(), owner->name());
    return false;
  }
  if (!SentinelOk(p)) {
    internal::ReportMisuse("sentinel of chunk %p (%zu bytes) in context '%s' was overwritten: "
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
  internal::CopyFromPoisoned(&next, p, sizeof(next));
  return next;
}

// aset.c's "split the remaining free space into chunks": the largest class
// that fits, repeatedly, until less than the smallest stride is left.
void CarveRemainder(FreelistState* st) {
  BlockHeader* b = st->blocks;
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

void LinkBlock(BlockHeader** head, BlockHeader* b) {
  b->prev = nullptr;
  b->next = *head;
  if (*head != nullptr) (*head)->prev = b;
  *head = b;
}

void UnlinkBlock(BlockHeader** head, BlockHeader* b) {
  if (b->prev != nullptr) b->prev->next = b->next; else *head = b->next;
  if (b->next != nullptr) b->next->prev = b->prev;
}

ABSL_ATTRIBUTE_NOINLINE void* AllocFromNewBlock(Context* ctx, FreelistState* st, size_t c) {
  const size_t need = kFirstChunkOffset + Stride(c);
  BlockHeader* b = st->spare;
  if (b != nullptr && static_cast<size_t>(b->end - FirstChunk(b)) >= Stride(c)) {
    CarveRemainder(st);
    UnlinkBlock(&st->spare, b);
  } else {
    size_t want = st->next_block_size < need ? need : st->next_block_size;
    size_t actual;
    char* mem = static_cast<char*>(ctx->AcquireBlock(want, kMinBlockAlignment, &actual, need));
    if (mem == nullptr) return nullptr;
    // Only now, with the new block in hand, give up the old block's tail.
    CarveRemainder(st);
    b = reinterpret_cast<BlockHeader*>(mem);
    b->owner = ctx;
    b->size = actual;  // what was accounted, and what goes back
    // Chunk headers hold a 32-bit offset: never carve past it.
    b->end = mem + (actual > kMaxFreelistBlockSize ? kMaxFreelistBlockSize : actual);
    if (st->next_block_size < st->max_block_size) {
      size_t doubled = st->next_block_size * 2;
      st->next_block_size = doubled < st->max_block_size ? doubled : st->max_block_size;
    }
  }
  LinkBlock(&st->blocks, b);
  PoisonMemoryRegion(FirstChunk(b), static_cast<size_t>(b->end - FirstChunk(b)));
  st->free_ptr = FirstChunk(b);
  st->free_end = b->end;
  b->carved_end = st->free_ptr;
  return CarveChunk(st, c, b);
}

void* AllocDedicated(Context* ctx, FreelistState* st, size_t size) {
  const size_t want = kDedicatedPayload + size + (kChecking ? 1 : 0);
  size_t actual;
  char* mem = static_cast<char*>(ctx->AcquireBlock(want, kMinBlockAlignment, &actual));
  if (mem == nullptr) return nullptr;
  auto* b = reinterpret_cast<BlockHeader*>(mem);
  b->owner = ctx;
  b->size = actual;
  b->end = mem + actual;
  b->carved_end = b->end;
  LinkBlock(&st->dedicated, b);
  char* payload = mem + kDedicatedPayload;
  WriteChunkHeader(payload, MakeChunkHeader(kChunkKindFreelist, true, 0, kDedicatedPayload - 8));
  MarkLive(payload, size, static_cast<size_t>(b->end - payload));
  return payload;
}

void* Alloc(Context* ctx, size_t size, size_t alignment) {
  FreelistState* st = StateOf(ctx);
  if (alignment > kDefaultAlignment) return internal::AllocAlignedRedirect(ctx, size, alignment);
  if (size > st->chunk_limit) return AllocDedicated(ctx, st, size);
  const size_t c = SizeClassOf(size);
  void* p = st->freelists[c];
  if (p != nullptr) {
    st->freelists[c] = NextFree(p);
    WriteChunkHeader(p, ReadChunkHeader(p) & ~kChunkFreeBit);
  } else if (Stride(c) <= static_cast<size_t>(st->free_end - st->free_ptr)) {
    p = CarveChunk(st, c, st->blocks);
  } else {
    p = AllocFromNewBlock(ctx, st, c);
    if (p == nullptr) return nullptr;
  }
  MarkLive(p, size, Stride(c) - kHeaderBytes);
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
  internal::CopyFromPoisoned(&owner, &b->owner, sizeof(owner));
  if (owner != ctx || b->prev == b || b->next == b) return false;
  if (b->prev != nullptr ? b->prev->next != b : st->dedicated != b) return false;
  return b->next == nullptr || b->next->prev == b;
}

// Reports misuse and returns false if `p` is not a live dedicated chunk of
// `ctx`: its memory was reused, or it is a stale pointer to a chunk of a
// context that was reset or destroyed and whose block came back to this one.
bool VerifyDedicated(Context* ctx, FreelistState* st, void* p, uint64_t h, const char* operation) {
  if (IsLiveDedicated(ctx, st, BlockOf(p, h))) return true;
  internal::ReportMisuse("%s of chunk %p in context '%s': not a live dedicated chunk of this "
                         "context (already freed, or its memory reused)",
                         operation, p, ctx->name());
  return false;
}

// The block goes back with the chunk's free bit set: the bit sits past what a
// source writes into a released block (kReleasedBlockScratch), so a second
// free, a realloc or an mcx::Free of the chunk reads it and reports a double
// free for as long as the memory is not reused.
void ReleaseDedicatedBlock(Context* ctx, BlockHeader* b) {
  char* payload = reinterpret_cast<char*>(b) + kDedicatedPayload;
  WriteChunkHeader(payload, ReadChunkHeader(payload) | kChunkFreeBit);
  ctx->ReleaseBlock(b, b->size);
}

void FreeDedicated(Context* ctx, FreelistState* st, void* p, uint64_t h) {
  if (!VerifyDedicated(ctx, st, p, h, "free")) return;
  BlockHeader* b = BlockOf(p, h);
  UnlinkBlock(&st->dedicated, b);
  ReleaseDedicatedBlock(ctx, b);
}

void Free(Context* ctx, void* p);

// Everything but the common case: dedicated chunks, aligned chunks, and
// every kind of bad pointer.
ABSL_ATTRIBUTE_NOINLINE void FreeSlow(Context* ctx, void* p, uint64_t h) {
  if (!ChunkHeaderMagicOk(h)) return internal::ReportBadChunk(p, "free");
  unsigned kind = ChunkHeaderKind(h);
  // The real chunk goes straight to the kind: only the aligned address was
  // announced to Valgrind (Context::Free announces its release).
  if (kind == kChunkKindAlignedRedirect) return Free(ctx, internal::AlignedRedirectTarget(p));
  if (kind != kChunkKindFreelist) return internal::ReportBadChunk(p, "free");
  if (ChunkHeaderIsFree(h)) {
    return internal::ReportMisuse("double free of chunk %p in context '%s'", p, ctx->name());
  }
  if (!VerifyLiveChunk(ctx, p, h, "free")) return;
  FreeDedicated(ctx, StateOf(ctx), p, h);
}

void Free(Context* ctx, void* p) {
  const uint64_t h = ReadChunkHeader(p);
  if (ABSL_PREDICT_FALSE((h & kFastMask) != kFastExpect)) return FreeSlow(ctx, p, h);
  FreelistState* st = StateOf(ctx);
  const size_t c = ChunkHeaderValue(h);
  if (kChecking) {
    if (!VerifyLiveChunk(ctx, p, h, "free")) return;
    UnpoisonMemoryRegion(p, SizeClassBytes(c));
    std::memset(p, internal::kClobberByte, SizeClassBytes(c));
  }
  PushFree(st, p, h, c);
}

// --- Realloc ------------------------------------------------------------------------

void* ReallocDedicated(Context* ctx, FreelistState* st, void* p, uint64_t h, size_t new_size) {
  if (!VerifyDedicated(ctx, st, p, h, "realloc")) {
    ctx->SetFailure(Failure::kBadArgument);
    return nullptr;
  }
  BlockHeader* b = BlockOf(p, h);
  const size_t old_usable = b->size - kDedicatedPayload;
  const size_t keep = kDedicatedPayload + (old_usable < new_size ? old_usable : new_size);
  // If the block moves, the old one goes back to the source marked freed, as
  // FreeDedicated leaves it: the old address is then a freed chunk. The copy
  // carries the bit along; it is cleared below.
  WriteChunkHeader(p, h | kChunkFreeBit);
  // The source may copy `keep` bytes itself; none of them may be poisoned
  // (WriteChunkHeader poisons the header again, so this comes after it).
  UnpoisonMemoryRegion(b, b->size);
  Block nb = ctx->ReallocateBlock(Block{b, b->size}, keep,
                                  kDedicatedPayload + new_size + (kChecking ? 1 : 0),
                                  kMinBlockAlignment);
  if (nb.ptr == nullptr) {
    WriteChunkHeader(p, h);
    MarkLive(p, kTracksRequested ? RequestedSize(p) : old_usable, old_usable);
    return nullptr;
  }
  auto* moved = static_cast<BlockHeader*>(nb.ptr);
  moved->size = nb.size;
  moved->end = static_cast<char*>(nb.ptr) + nb.size;
  moved->carved_end = moved->end;
  if (moved->prev != nullptr) moved->prev->next = moved; else st->dedicated = moved;
  if (moved->next != nullptr) moved->next->prev = moved;
  char* payload = static_cast<char*>(nb.ptr) + kDedicatedPayload;
  WriteChunkHeader(payload, h);
  MarkLive(payload, new_size, static_cast<size_t>(moved->end - payload));
  return payload;
}

void* Realloc(Context* ctx, void* p, size_t /*old_size*/, size_t new_size) {
  FreelistState* st = StateOf(ctx);
  const uint64_t h = ReadChunkHeader(p);
  if ((h & (kFastMask & ~kChunkExternalBit)) != kFastExpect) {
    if (internal::IsAlignedRedirect(p)) return internal::ReallocAlignedRedirect(ctx, p, new_size);
    if (ChunkHeaderMagicOk(h) && ChunkHeaderKind(h) == kChunkKindFreelist) {
      internal::ReportMisuse("realloc of chunk %p in context '%s' after it was freed", p, ctx->name());
    } else {
      internal::ReportBadChunk(p, "realloc");
    }
    ctx->SetFailure(Failure::kBadArgument);
    return nullptr;
  }
  if (!VerifyLiveChunk(ctx, p, h, "realloc")) {
    ctx->SetFailure(Failure::kBadArgument);
    return nullptr;
  }
  if (ChunkHeaderIsExternal(h)) return ReallocDedicated(ctx, st, p, h, new_size);
  const size_t c = ChunkHeaderValue(h);
  const size_t usable = SizeClassBytes(c);
  if (new_size <= usable) {
    MarkLive(p, new_size, Stride(c) - kHeaderBytes);
    return p;
  }
  void* q = Alloc(ctx, new_size, kDefaultAlignment);
  if (q == nullptr) return nullptr;
  std::memcpy(q, p, kTracksRequested ? RequestedSize(p) : usable);
  Free(ctx, p);
  return q;
}

size_t ChunkSize(const Context* /*ctx*/, const void* p) {
  const uint64_t h = ReadChunkHeader(p);
  if (ChunkHeaderKind(h) == kChunkKindAlignedRedirect) return GetChunkSize(p);
  // Checking builds guard the requested bytes with a sentinel right after
  // them, ASan builds poison what follows: the usable size is exactly what
  // was asked for.
  if (kTracksRequested) return RequestedSize(p);
  if (ChunkHeaderIsExternal(h)) return BlockOf(p, h)->size - kDedicatedPayload;
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
    std::memset(from, internal::kClobberByte, static_cast<size_t>(used_end - from));
  }
  PoisonMemoryRegion(from, static_cast<size_t>(b->end - from));
}

void ReleaseDedicated(Context* ctx, FreelistState* st) {
  for (BlockHeader* b = st->dedicated; b != nullptr;) {
    BlockHeader* next = b->next;
    ReleaseDedicatedBlock(ctx, b);  // a stale pointer to the chunk reads "freed"
    b = next;
  }
  st->dedicated = nullptr;
}

void Reset(Context* ctx, const ResetOptions& options) {
  FreelistState* st = StateOf(ctx);
  BlockHeader* first = FirstBlock(ctx);
  ReleaseDedicated(ctx, st);
  std::memset(st->freelists, 0, sizeof(st->freelists));
  size_t kept = ctx->first_block_size();
  // Blocks in use and spare blocks alike: keep while they fit the budget.
  BlockHeader* lists[2] = {st->blocks, st->spare};
  st->spare = nullptr;
  for (BlockHeader* b : lists) {
    while (b != nullptr) {
      BlockHeader* next = b->next;
      if (b != first) {
        if (options.KeepsBlock(kept, b->size)) {
          kept += b->size;
          EmptyBlockMemory(b, b == st->blocks ? st->free_ptr : b->carved_end);
          b->carved_end = FirstChunk(b);
          LinkBlock(&st->spare, b);
        } else {
          ctx->ReleaseBlock(b, b->size);
        }
      } else {
        EmptyBlockMemory(b, b == st->blocks ? st->free_ptr : b->carved_end);
      }
      b = next;
    }
  }
  first->prev = first->next = nullptr;
  st->blocks = first;
  st->free_ptr = first->carved_end = FirstChunk(first);
  st->free_end = first->end;
  st->next_block_size = st->base_block_size;
}

void ReleaseAll(Context* ctx) {
  FreelistState* st = StateOf(ctx);
  ReleaseDedicated(ctx, st);
  BlockHeader* first = FirstBlock(ctx);
  for (BlockHeader* list : {st->blocks, st->spare}) {
    for (BlockHeader* b = list; b != nullptr;) {
      BlockHeader* next = b->next;
      if (b != first) ctx->ReleaseBlock(b, b->size);
      b = next;
    }
  }
  st->blocks = first;
  st->spare = nullptr;
}

void Stats(const Context* ctx, KindStats* out) {
  const FreelistState* st = StateOf(ctx);
  for (size_t c = 0; c < kNumSizeClasses; ++c) {
    for (void* p = st->freelists[c]; p != nullptr; p = NextFree(p)) {
      out->free_bytes += Stride(c);
      ++out->free_chunks;
    }
  }
  out->free_bytes += static_cast<size_t>(st->free_end - st->free_ptr);
  for (BlockHeader* b = st->spare; b != nullptr; b = b->next) {
    out->free_bytes += static_cast<size_t>(b->end - FirstChunk(b));
  }
}

bool Check(const Context* ctx, std::string* error) {
  const FreelistState* st = StateOf(ctx);
  size_t blocks = 1;
  size_t free_in_blocks = 0;
  for (BlockHeader* b = st->blocks; b != nullptr; b = b->next) {
    if (b->owner != ctx) {
      internal::AppendFormat(error, "freelist '%s': block %p names another owner\n", ctx->name(),
                            static_cast<void*>(b));
      return false;
    }
    if (b != FirstBlock(ctx)) ++blocks;
    char* end = b == st->blocks ? st->free_ptr : b->carved_end;
    for (char* chunk = FirstChunk(b); chunk < end;) {
      char* payload = chunk + kHeaderBytes;
      uint64_t h = ReadChunkHeader(payload);
      bool ok = ChunkHeaderMagicOk(h) && ChunkHeaderKind(h) == kChunkKindFreelist &&
                !ChunkHeaderIsExternal(h) && ChunkHeaderValue(h) < kNumSizeClasses &&
                ChunkHeaderOffset(h) == static_cast<uint64_t>(payload - 8 - reinterpret_cast<char*>(b));
      if (!ok) {
        internal::AppendFormat(error, "freelist '%s': chunk %p has a corrupt header 0x%016x\n",
                              ctx->name(), static_cast<void*>(payload), h);
        return false;
      }
      if (ChunkHeaderIsFree(h)) {
        ++free_in_blocks;
      } else if (kChecking && !SentinelOk(payload)) {
        internal::AppendFormat(error, "freelist '%s': sentinel of chunk %p (%d bytes) overwritten\n",
                              ctx->name(), static_cast<void*>(payload), RequestedSize(payload));
        return false;
      }
      chunk += Stride(ChunkHeaderValue(h));
    }
  }
  size_t on_lists = 0;
  for (size_t c = 0; c < kNumSizeClasses; ++c) {
    for (void* p = st->freelists[c]; p != nullptr; p = NextFree(p)) {
      uint64_t h = ReadChunkHeader(p);
      if (!ChunkHeaderIsFree(h) || ChunkHeaderValue(h) != c || BlockOf(p, h)->owner != ctx) {
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
  for (BlockHeader* b = st->dedicated; b != nullptr; b = b->next) {
    char* payload = reinterpret_cast<char*>(b) + kDedicatedPayload;
    if (b->owner != ctx || (kChecking && !SentinelOk(payload))) {
      internal::AppendFormat(error, "freelist '%s': dedicated chunk %p is corrupt\n", ctx->name(),
                            static_cast<void*>(payload));
      return false;
    }
    ++blocks;
  }
  for (BlockHeader* b = st->spare; b != nullptr; b = b->next) ++blocks;
  if (blocks != ctx->num_blocks()) {
    internal::AppendFormat(error, "freelist '%s': %d blocks on the lists but %d accounted\n",
                          ctx->name(), blocks, ctx->num_blocks());
    return false;
  }
  return true;
}

// --- Inspection ---------------------------------------------------------------------

// Describes a block of chunks (first, normal or spare). Free chunks are found
// by walking the block's chunks, as Check does; the walk stops at a header it
// cannot read rather than trust a bad class.
BlockInfo DescribeBlock(const Context* ctx, const FreelistState* st, BlockHeader* b,
                        BlockRole role) {
  const bool first = role == BlockRole::kFirst;
  // The first block's header is the context's, at the block's start.
  const char* base = first ? reinterpret_cast<const char*>(ctx) : reinterpret_cast<const char*>(b);
  BlockInfo info;
  info.start = base;
  info.size = first ? ctx->first_block_size() : b->size;
  info.header_bytes = static_cast<size_t>(FirstChunk(b) - base);
  info.role = role;
  const char* chunks_end;
  if (role == BlockRole::kSpare) {
    chunks_end = FirstChunk(b);
    info.end_offset = static_cast<size_t>(b->end - base);
  } else if (b == st->blocks) {
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
void Inspect(const Context* ctx, InspectVisitor* visitor) {
  const FreelistState* st = StateOf(ctx);
  BlockHeader* oldest = st->blocks;
  while (oldest->next != nullptr) oldest = oldest->next;
  for (BlockHeader* b = oldest; b != nullptr; b = b->prev) {
    visitor->VisitBlock(
        DescribeBlock(ctx, st, b, b == FirstBlock(ctx) ? BlockRole::kFirst : BlockRole::kNormal));
  }
  for (BlockHeader* b = st->spare; b != nullptr; b = b->next) {
    visitor->VisitBlock(DescribeBlock(ctx, st, b, BlockRole::kSpare));
  }
  for (BlockHeader* b = st->dedicated; b != nullptr; b = b->next) {
    BlockInfo info;
    info.start = b;
    info.size = b->size;
    info.header_bytes = kDedicatedPayload;  // block header and chunk header
    info.used_bytes = b->size - kDedicatedPayload;
    info.last_offset = info.end_offset = b->size;
    info.role = BlockRole::kDedicated;
    visitor->VisitBlock(info);
  }
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
    internal::ReportMisuse("cannot %s chunk %p: it was already freed", operation, p);
    return nullptr;
  }
  return BlockOf(p, h)->owner;
}

Context* ChunkContext(const void* p) { return LiveChunkOwner(p, "find the context of"); }

size_t ChunkFreeSize(const void* p) {
  Context* ctx = LiveChunkOwner(p, "size");
  return ctx != nullptr ? ChunkSize(ctx, p) : 0;
}

const ChunkKindMethods kChunkMethods = {"freelist", &ChunkContext, &ChunkFreeSize};

// --- Creation -----------------------------------------------------------------------

size_t FirstBlockSize(const void* options, size_t header_bytes) {
  const auto* o = static_cast<const FreelistOptions*>(options);
  // Refused before any block is acquired (0: kBadSize), not after.
  if (o->initial_block_size > kMaxFreelistBlockSize) return 0;
  size_t min = header_bytes + sizeof(BlockHeader) + kHeaderBytes + kMinFirstBlockSpace;
  return o->initial_block_size < min ? min : o->initial_block_size;
}

size_t FirstBlockAlignment(const void*, size_t) { return kMinBlockAlignment; }

bool Init(Context* ctx, const void* options, char* space, char* block_end) {
  const auto* o = static_cast<const FreelistOptions*>(options);
  FreelistState* st = StateOf(ctx);
  std::memset(static_cast<void*>(st), 0, sizeof(*st));
  auto* first = reinterpret_cast<BlockHeader*>(space);
  first->owner = ctx;
  first->prev = first->next = nullptr;
  first->size = 0;
  if (block_end - space > static_cast<ptrdiff_t>(kMaxFreelistBlockSize)) {
    block_end = space + kMaxFreelistBlockSize;
  }
  first->end = block_end;
  st->blocks = first;
  st->free_ptr = first->carved_end = FirstChunk(first);
  st->free_end = block_end;
  PoisonMemoryRegion(st->free_ptr, static_cast<size_t>(block_end - st->free_ptr));
  // (FirstBlockSize has refused an oversized initial_block_size.)
  if (o->chunk_limit > kMaxSizeClassBytes || o->max_block_size > kMaxFreelistBlockSize) {
    ctx->SetFailure(Failure::kBadArgument);
    return false;
  }
  st->chunk_limit = o->chunk_limit;
  size_t base = o->initial_block_size < 1024 ? 1024 : o->initial_block_size;
  st->base_block_size = st->next_block_size = base;
  st->max_block_size = o->max_block_size < base ? base : o->max_block_size;
  RegisterChunkKind(kChunkKindFreelist, &kChunkMethods);
  return true;
}

const KindMethods kFreelistMethods = {
    "freelist",
    sizeof(FreelistState),
    alignof(FreelistState),
    sizeof(FreelistOptions),
    &FirstBlockSize,
    &FirstBlockAlignment,
    &Init,
    &Alloc,
    &Free,
    &Realloc,
    &ChunkSize,
    &Reset,
    &ReleaseAll,
    &Stats,
    &Check,
    &Inspect,
};

}  // namespace

KindSpec FreelistKind(const FreelistOptions& options) {
  return KindSpec(&kFreelistMethods, options);
}

Context* CreateFreelistContext(Context* parent, const char* name, const FreelistOptions& options,
                               const ContextOptions& context_options) {
  return Context::Create(parent, name, FreelistKind(options), context_options);
}

}  // namespace mcx
