// The slab kind: PostgreSQL's Slab context (src/backend/utils/mmgr/slab.c)
// as an mcx kind. What is kept from slab.c, and why:
//   - Blocks are kept on a few lists by their number of free slots, and
//     allocation takes a block from the lowest non-empty list above the full
//     one: the fullest blocks fill up first, so the emptiest ones get a
//     chance to drain and go back ("to increase the chances that
//     mostly-empty blocks will eventually become completely empty").
//   - Each block has its own free list, and an `unused` high-water mark:
//     freed slots are reused first (they are warm in the cache), and a new
//     block needs no pass over its slots.
//   - A block whose last object is freed goes back to the source, except a
//     few kept empty for reuse (slab.c keeps 10).
// What changes:
//   - No chunk header. slab.c gives every chunk PostgreSQL's 8-byte
//     MemoryChunk, so that pfree can find its context; here a block is
//     aligned to its power-of-two size, and an object's block is its
//     address with the low bits cleared. The price: `mcx::Free(p)` does not
//     work on slab objects (name the context), as for pool chunks.
//   - A live bitmap per block (one bit per slot), which catches a double
//     free and a pointer that is no object in every build; slab.c checks for
//     those only with MEMORY_CONTEXT_CHECKING.
//   - Objects up to the object size are served (slab.c refuses any size but
//     its own); larger requests are refused, or get a dedicated block.
//   - The kernel's object constructor and destructor (kmem_cache_create), and
//     a cleanup of live objects at reset (the typed front end's ~T).
//   - The context header lives in a small first block of its own, since a
//     block of objects must be free to go back whenever it empties.
//   - Frees from other threads (remote_free.h, mimalloc's delayed free): the
//     freeing thread reads only what the owner never writes while an object
//     is live (its block's owner and role, the state's constants) and pushes
//     the object on the context's remote list through its link word, so a
//     constructed object keeps its state; the live bitmap and the lists stay
//     the owner's, which takes the list back when no block has room (before
//     it reuses an empty block or acquires one), at a reset and at the
//     destroy, each object as its own free.

#include "mcx/slab/slab.h"

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
#include "mcx/slab/internal/slab_block.h"
#include "mcx/slab/typed_slab.h"

namespace mcx {

using slab_internal::AsDedicated;
using slab_internal::AsSlabBlock;
using slab_internal::Bitmap;
using slab_internal::DedicatedBlock;
using slab_internal::kBlocklistCount;
using slab_internal::kRoleDedicated;
using slab_internal::kRoleFreed;
using slab_internal::kRoleSlots;
using slab_internal::ObjectAt;
using slab_internal::SlabBlock;
using slab_internal::SlabState;

namespace {

constexpr bool kChecking = kCheckingBuild;

// Checking builds: a chunk header word before each object (mcx::Free of an
// object is then reported, not guessed at) and a sentinel byte after it.
constexpr size_t kHeaderWord = sizeof(uint64_t);
// Checking builds: before the header word, the site of the call that took
// the object (kind_api.h, PendingSite), for LiveChunksReport and leak
// reports.
constexpr size_t kSiteBytes = sizeof(SiteId);
// The free list's link.
constexpr size_t kLinkBytes = sizeof(char*);

constexpr size_t RoundUp(size_t n, size_t a) { return (n + a - 1) & ~(a - 1); }

bool IsPowerOfTwo(size_t n) { return n != 0 && (n & (n - 1)) == 0; }

// Offset of the object in its slot: room for the site and the header word
// in checking builds, keeping the object aligned.
size_t ObjectOffset(size_t alignment) {
  return kChecking ? RoundUp(kSiteBytes + kHeaderWord, alignment) : 0;
}

// Checking builds: an object's site.
void WriteObjectSite(char* obj, SiteId site) {
  CopyToPoisoned(obj - kHeaderWord - kSiteBytes, &site, sizeof(site));
}
SiteId ReadObjectSite(const char* obj) {
  SiteId site;
  CopyFromPoisoned(&site, obj - kHeaderWord - kSiteBytes, sizeof(site));
  return site;
}

// --- Layout ------------------------------------------------------------------------

// Slots of `stride` bytes that a block of `block` bytes holds after its
// header and bitmap; *first_slot receives the offset of slot 0.
size_t SlotsPerBlock(size_t block, size_t stride, size_t alignment, size_t* first_slot) {
  if (block < sizeof(SlabBlock) + stride) return 0;
  const size_t upper = (block - sizeof(SlabBlock)) / stride;  // before the bitmap
  const size_t words = (upper + 63) / 64;
  *first_slot = RoundUp(sizeof(SlabBlock) + words * sizeof(uint64_t), alignment);
  return *first_slot + stride <= block ? (block - *first_slot) / stride : 0;
}

// Fills the geometry of the options into `st`; false if they are out of
// range (contract in slab.h).
bool ComputeLayout(const SlabOptions& o, SlabState* st) {
  if (o.object_size == 0 || o.object_size > kMaxSlabObjectSize) return false;
  if (!IsPowerOfTwo(o.alignment) || o.alignment > kMaxSlabAlignment) return false;
  const size_t alignment = o.alignment < 8 ? 8 : o.alignment;
  const bool constructed = o.constructor != nullptr;
  // Without a constructor the link lives in the free object itself
  // (slab.c: "Ensure there's enough space to store the pointer to the next
  // free chunk"); with one it follows the object, whose state it must keep
  // (the kernel's SLUB puts its free pointer after a constructed object).
  const size_t object = constructed || o.object_size >= kLinkBytes ? o.object_size : kLinkBytes;
  const size_t object_offset = ObjectOffset(alignment);
  size_t end = object_offset + object + (kChecking ? 1 : 0);
  size_t link = object_offset;
  if (constructed) {
    link = RoundUp(end, kLinkBytes);
    end = link + kLinkBytes;
  }
  const size_t stride = RoundUp(end, alignment);
  size_t block = o.block_size;
  size_t first_slot = 0;
  if (block != 0 &&
      (!IsPowerOfTwo(block) || block < kMinSlabBlockSize || block > kMaxSlabBlockSize)) {
    return false;
  }
  // A block the options name must hold an object in every build, direct
  // mode's included, which chooses its own below.
  if (block != 0 && SlotsPerBlock(block, stride, alignment, &first_slot) == 0) return false;
  if (kDirectBuild) {
    // One object per block: the smallest block that holds one. Direct mode
    // gives every request a block of its own (kind_api.h); the slab's path
    // for that is a block of objects with room for one, not the dedicated
    // path: a dedicated chunk has no constructor, no live bit and no place
    // in the fullest-block lists, and a refusing slab (the default) has no
    // dedicated path at all. The block is released when its object is
    // freed (no empty block is kept), so AddressSanitizer sees each object
    // alone, its block's unused bytes poisoned around it.
    block = kMinSlabBlockSize;
    while (block < kMaxSlabBlockSize && SlotsPerBlock(block, stride, alignment, &first_slot) == 0) {
      block *= 2;
    }
  } else if (block == 0) {
    block = kDefaultSlabBlockSize;
    while (block < kMaxSlabBlockSize &&
           SlotsPerBlock(block, stride, alignment, &first_slot) < kSlabObjectsPerDefaultBlock) {
      block *= 2;
    }
  }
  size_t capacity = SlotsPerBlock(block, stride, alignment, &first_slot);
  if (capacity == 0) return false;  // slab.c: "block size ... is too small for ... chunks"
  if (kDirectBuild) capacity = 1;
  st->block_size = block;
  st->object_size = object;
  st->stride = stride;
  st->first_object = first_slot + object_offset;
  st->link_offset = link - object_offset;
  st->capacity = static_cast<uint32_t>(capacity);
  st->slots_bytes = capacity * stride;
  st->bitmap_words = static_cast<uint32_t>((capacity + 63) / 64);
  st->alignment = static_cast<uint32_t>(alignment);
  // Lemire, Kaser and Kurz, "Faster remainder by direct computation" (2019):
  // for 32-bit n, n / stride is the high word of magic * n, and stride
  // divides n exactly when the low word is below magic.
  st->div_magic = ~uint64_t{0} / stride + 1;
  // The smallest shift that puts a block with every slot free on the last
  // list. (slab.c stops at (capacity >> shift) < 2, one step further when
  // the capacity is a power of two, which leaves its last list unused.)
  st->shift = 0;
  while (((capacity + (size_t{1} << st->shift) - 1) >> st->shift) > kBlocklistCount - 1) {
    ++st->shift;
  }
  st->list_mask = (uint32_t{1} << st->shift) - 1;
  st->keep_empty_blocks = kDirectBuild ? 0 : o.keep_empty_blocks;
  st->larger = o.larger;
  st->constructor = o.constructor;
  st->destructor = o.destructor;
  st->live_cleanup = o.live_cleanup;
  st->arg = o.arg;
  return true;
}

// The list a block with `nfree` free slots is on: 0 for a full block, then
// nfree / 2^shift rounded up (slab.c's SlabBlocklistIndex).
uint32_t ListIndex(const SlabState* st, uint32_t nfree) {
  return (nfree + (uint32_t{1} << st->shift) - 1) >> st->shift;
}

// The fullest list with room: the lowest non-empty list above 0, or 0.
inline uint32_t FindNextList(const SlabState* st) {
  for (uint32_t i = 1; i < kBlocklistCount; ++i) {
    if (!st->blocklist[i].empty()) return i;
  }
  return 0;
}

SlabBlock* BlockOf(const SlabState* st, const void* p) {
  return reinterpret_cast<SlabBlock*>(reinterpret_cast<uintptr_t>(p) & ~(st->block_size - 1));
}

// The slot index of object `p` in `b`, or false if `p` is no object's
// address there. A multiply and a compare, no division.
bool SlotIndex(const SlabState* st, const SlabBlock* b, const void* p, size_t* index) {
  const uint64_t off = static_cast<uint64_t>(static_cast<const char*>(p) -
                                             reinterpret_cast<const char*>(b)) -
                       st->first_object;  // below the first object: wraps, and is refused
  if (off >= st->slots_bytes || off * st->div_magic > st->div_magic - 1) return false;
  *index = static_cast<size_t>((static_cast<unsigned __int128>(st->div_magic) * off) >> 64);
  return true;
}

bool IsLive(const SlabBlock* b, size_t i) {
  return (Bitmap(b)[i >> 6] >> (i & 63) & 1) != 0;
}

// Slots from 0 to this have been used at least once (constructed, with a
// constructor).
uint32_t MadeSlots(const SlabState* st, const SlabBlock* b) { return st->capacity - b->nunused; }

// A free slot's link, read and written past the poison (the slot is not the
// user's).
char* ReadLink(const SlabState* st, const char* obj) {
  char* next;
  CopyFromPoisoned(&next, obj + st->link_offset, sizeof(next));
  return next;
}

void WriteLink(const SlabState* st, char* obj, char* next) {
  CopyToPoisoned(obj + st->link_offset, &next, sizeof(next));
}

// --- Checking builds: header words and sentinels ------------------------------------

void WriteObjectHeader(const SlabBlock* b, char* obj, bool free) {
  const uint64_t offset =
      static_cast<uint64_t>(obj - kHeaderWord - reinterpret_cast<const char*>(b));
  WriteChunkHeader(obj, MakeChunkHeader(kChunkKindSlab, false, 0, offset) |
                            (free ? kChunkFreeBit : 0));
}

void WriteSentinel(char* at) { CopyToPoisoned(at, &kSentinelByte, 1); }

bool SentinelOk(const char* at) {
  unsigned char b;
  CopyFromPoisoned(&b, at, 1);
  return b == kSentinelByte;
}

// --- Blocks -------------------------------------------------------------------------

// Makes `b` a block of never-used slots. Checking builds clobber what a
// kept block held, so a stale pointer into a reset slab reads 0x7F.
void InitBlock(const SlabState* st, SlabBlock* b) {
  char* slots = reinterpret_cast<char*>(b) + st->first_object - ObjectOffset(st->alignment);
  if (kChecking) {
    UnpoisonMemoryRegion(slots, st->slots_bytes);
    std::memset(slots, kClobberByte, st->slots_bytes);
  }
  PoisonMemoryRegion(slots, static_cast<size_t>(reinterpret_cast<char*>(b) + st->block_size - slots));
  b->free_head = nullptr;
  b->unused = ObjectAt(st, b, 0);
  b->nfree = b->nunused = st->capacity;
  b->role = kRoleSlots;
  b->reserved = 0;
  std::memset(Bitmap(b), 0, st->bitmap_words * sizeof(uint64_t));
}

SlabBlock* NewBlock(Context* ctx, SlabState* st) {
  // Aligned to its size: the mask of an object's address finds it. The
  // source's slack past block_size is never used (the mask would miss it).
  KindBlock* kb = AcquireKindBlock(ctx, st->block_size, st->block_size, st->block_size);
  if (kb == nullptr) return nullptr;
  SlabBlock* b = AsSlabBlock(kb);
  InitBlock(st, b);
  return b;
}

// Runs the destructor on every slot of `b` ever used (all are free or, at a
// reset, finished with).
void DestroySlots(SlabState* st, SlabBlock* b) {
  if (st->destructor == nullptr) return;
  for (uint32_t i = 0, made = MadeSlots(st, b); i < made; ++i) {
    char* obj = ObjectAt(st, b, i);
    // Free slots are poisoned, and Valgrind forgot them at a reset.
    UnpoisonMemoryRegion(obj, st->object_size);
    st->destructor(obj, st->arg);
  }
}

void ReleaseSlotBlock(Context* ctx, SlabState* st, SlabBlock* b) {
  DestroySlots(st, b);
  ReleaseKindBlock(ctx, &b->link);
}

// --- Misuse ---------------------------------------------------------------------------

ABSL_ATTRIBUTE_NOINLINE void ReportNotAnObject(const Context* ctx, const void* p,
                                               const char* operation) {
  ReportMisuse("%s of %p through slab '%s': not an object of this slab (an address inside an "
               "object, or memory of another context)",
               operation, p, ctx->name());
}

ABSL_ATTRIBUTE_NOINLINE void ReportDoubleFree(const Context* ctx, const void* p,
                                              const char* operation) {
  if (std::strcmp(operation, "free") == 0) {
    ReportMisuse("double free of object %p in slab '%s'", p, ctx->name());
  } else {
    ReportMisuse("%s of object %p in slab '%s' after it was freed", operation, p, ctx->name());
  }
}

ABSL_ATTRIBUTE_NOINLINE void* AllocDuringTeardown(Context* ctx) {
  ReportMisuse("allocation in slab '%s' from an object's cleanup or destructor during its reset",
               ctx->name());
  SetFailure(ctx, Failure::kBadArgument);
  return nullptr;
}

// Checking builds: the block's place on its list, and the sentinel after an
// object about to be freed.
bool CheckedFree(const Context* ctx, const SlabState* st, const SlabBlock* b, const char* obj,
                 const char* operation) {
  if (!kChecking) return true;
  // The owner word could match by chance in foreign memory: checking
  // builds make sure the block is on the list its count says.
  if (!st->blocklist[ListIndex(st, b->nfree)].Holds(&b->link)) {
    ReportNotAnObject(ctx, obj, operation);
    return false;
  }
  if (!SentinelOk(obj + st->object_size)) {
    ReportMisuse("sentinel of object %p (%zu bytes) in slab '%s' was overwritten: a write past "
                 "the end of the object",
                 obj, st->object_size, ctx->name());
    return false;
  }
  return true;
}

// --- Allocation -----------------------------------------------------------------------

// Marks object `obj` of `b` allocated: its bit; checking builds write its
// header word and sentinel.
inline void MarkTaken(SlabState* st, SlabBlock* b, char* obj) {
  --b->nfree;
  st->live.Add(st->object_size);
  const uint64_t off = static_cast<uint64_t>(obj - reinterpret_cast<char*>(b)) - st->first_object;
  const size_t i = static_cast<size_t>((static_cast<unsigned __int128>(st->div_magic) * off) >> 64);
  Bitmap(b)[i >> 6] |= uint64_t{1} << (i & 63);
  if (kChecking) {
    WriteObjectHeader(b, obj, /*free=*/false);
    WriteSentinel(obj + st->object_size);
  }
}

// The block's first never-used slot, constructed now if there is a
// constructor. Out of line: once per slot in the life of a block.
ABSL_ATTRIBUTE_NOINLINE char* TakeUnusedSlot(SlabState* st, SlabBlock* b) {
  char* obj = b->unused;
  b->unused += st->stride;
  --b->nunused;
  MarkTaken(st, b, obj);
  UnpoisonMemoryRegion(obj, st->object_size);
  if (st->constructor != nullptr) st->constructor(obj, st->arg);
  return obj;
}

// Hands out a slot of `b`, which has one: from its free list (the slot freed
// last, warm in the cache), else its first never-used slot.
//
// Cost note: a pop, a multiply for the bitmap bit, a few stores.
inline char* TakeSlot(Context* ctx, SlabState* st, SlabBlock* b) {
  char* obj = b->free_head;
  if (ABSL_PREDICT_FALSE(obj == nullptr)) return TakeUnusedSlot(st, b);
  b->free_head = ReadLink(st, obj);
  MarkTaken(st, b, obj);
  UnpoisonMemoryRegion(obj, st->object_size);
  if (kChecking && st->constructor == nullptr) {
    // Freed objects were clobbered: anything else there was written after
    // the free (the first bytes hold the link).
    for (size_t k = kLinkBytes; k < st->object_size; ++k) {
      if (static_cast<unsigned char>(obj[k]) != kClobberByte) {
        ReportMisuse("object %p of slab '%s' was written after it was freed (byte %zu)", obj,
                     ctx->name(), k);
        break;
      }
    }
  }
  return obj;
}

// After an allocation from the head of list `cur`, `b` belongs on list `to`
// (a fuller one). Allocation goes on from it while it has room; a full block
// leaves the current list to the next block.
void MoveAfterAlloc(SlabState* st, SlabBlock* b, uint32_t to) {
  BlockList& from = st->blocklist[st->cur];
  from.Remove(&b->link);
  st->blocklist[to].PushFront(&b->link);
  if (to != 0) {
    st->cur = to;
  } else if (from.empty()) {
    st->cur = FindNextList(st);
  }
}

// Takes a slot of the current block, the head of list `cur` (not 0).
//
// Cost note: a load of the current list's head, TakeSlot, and a compare for
// the block's list. Forced inline: it is the whole of an allocation, and a
// call (the compiler's choice once the live count was added) cost more than
// the count itself.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void* AllocFromCurrent(Context* ctx, SlabState* st) {
  SlabBlock* b = AsSlabBlock(st->blocklist[st->cur].head());
  char* obj = TakeSlot(ctx, st, b);
  if (kChecking) WriteObjectSite(obj, PendingSite(ctx));
  // The block changes lists when its free count leaves the current list's
  // range: when nfree, before this allocation, was at the range's bottom.
  if (ABSL_PREDICT_FALSE((b->nfree & st->list_mask) == 0)) {
    if (b->nfree == 0) {
      // Full (in a churn, at every step): to list 0; the next block with
      // room takes over.
      BlockList& from = st->blocklist[st->cur];
      from.Remove(&b->link);
      st->blocklist[0].PushFront(&b->link);
      if (from.empty()) st->cur = FindNextList(st);
    } else {
      MoveAfterAlloc(st, b, ListIndex(st, b->nfree));
    }
  }
  return obj;
}

void ReclaimRemote(Context* ctx, SlabState* st);

// No block has a free slot: the objects other threads freed, if any; else
// an empty block kept for reuse, else a new one. Out of line: at most once
// per block's worth of allocations.
ABSL_ATTRIBUTE_NOINLINE void* AllocFromNewBlock(Context* ctx, SlabState* st) {
  if (st->finalizing) return AllocDuringTeardown(ctx);
  if (st->remote.HasAny()) {
    ReclaimRemote(ctx, st);
    if (st->cur != 0) return AllocFromCurrent(ctx, st);
  }
  SlabBlock* b = AsSlabBlock(st->empty.head());
  if (b != nullptr) {
    st->empty.Remove(&b->link);
  } else {
    b = NewBlock(ctx, st);
    if (b == nullptr) return nullptr;  // the failure is recorded
  }
  char* obj = TakeSlot(ctx, st, b);
  if (kChecking) WriteObjectSite(obj, PendingSite(ctx));
  const uint32_t to = ListIndex(st, b->nfree);
  st->blocklist[to].PushFront(&b->link);
  st->cur = FindNextList(st);
  return obj;
}

// The bytes a dedicated chunk may use: up to its block's end (the source's
// slack included), less the sentinel's byte in checking builds.
size_t DedicatedCapacity(const DedicatedBlock* d) {
  return static_cast<size_t>(reinterpret_cast<const char*>(d) + d->link.size - d->chunk) -
         (kChecking ? 1 : 0);
}

// A chunk larger than a slot (SlabLarger::kDedicatedBlock): a block of its
// own, aligned to block_size (or the chunk's alignment, if larger), with the
// chunk header word right before the chunk.
void* AllocDedicated(Context* ctx, SlabState* st, size_t size, size_t alignment) {
  const size_t a = alignment > kDefaultAlignment ? alignment : kDefaultAlignment;
  const size_t offset = RoundUp(sizeof(DedicatedBlock) + kHeaderWord, a);
  const size_t block_alignment = a > st->block_size ? a : st->block_size;
  KindBlock* kb = AcquireKindBlock(ctx, offset + size + (kChecking ? 1 : 0), block_alignment);
  if (kb == nullptr) return nullptr;
  DedicatedBlock* d = AsDedicated(kb);
  char* mem = reinterpret_cast<char*>(kb);
  char* p = mem + offset;
  d->chunk = p;
  d->requested = size;
  d->reserved0 = a;  // the alignment a moving realloc keeps
  d->role = kRoleDedicated;
  d->site = kChecking ? PendingSite(ctx) : kUnknownSiteId;
  st->dedicated.PushFront(kb);
  st->live.Add(DedicatedCapacity(d));
  PoisonMemoryRegion(mem + sizeof(DedicatedBlock), kb->size - sizeof(DedicatedBlock));
  WriteChunkHeader(p, MakeChunkHeader(kChunkKindSlab, /*external=*/true, 0,
                                      static_cast<uint64_t>(p - kHeaderWord - mem)));
  if (kChecking) WriteSentinel(p + size);
  // The chunk's bytes are what ChunkSize reports: the size asked for in
  // checking builds (its sentinel follows), else the whole block's room.
  UnpoisonMemoryRegion(p, kChecking ? size : DedicatedCapacity(d));
  return p;
}

ABSL_ATTRIBUTE_NOINLINE void* AllocLarger(Context* ctx, SlabState* st, size_t size,
                                          size_t alignment) {
  if (st->finalizing) return AllocDuringTeardown(ctx);
  if (st->larger == SlabLarger::kRefuse) {
    SetFailure(ctx, Failure::kUnsupported);  // slab.c: "unexpected alloc chunk size"
    return nullptr;
  }
  return AllocDedicated(ctx, st, size, alignment);
}

// SlabAlloc
//
// Cost note: two compares, then AllocFromCurrent.
void* SlabAlloc(Context* ctx, SlabState* st, size_t size, size_t alignment) {
  if (ABSL_PREDICT_FALSE(size > st->object_size ||
                         (alignment > kDefaultAlignment && alignment > st->alignment))) {
    return AllocLarger(ctx, st, size, alignment);
  }
  if (ABSL_PREDICT_FALSE(st->cur == 0)) return AllocFromNewBlock(ctx, st);
  return AllocFromCurrent(ctx, st);
}

// SlabAllocFast
//
// SlabAlloc for the tree's slow path (kind_api.h, AllocFast): a slot of the
// current block, or nullptr, with nothing changed, when no block has one.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void* SlabAllocFast(Context* ctx, SlabState* st, size_t size,
                                                        size_t alignment) {
  if (ABSL_PREDICT_FALSE(size > st->object_size ||
                         (alignment > kDefaultAlignment && alignment > st->alignment) ||
                         st->cur == 0)) {
    return nullptr;
  }
  return AllocFromCurrent(ctx, st);
}

// --- Free -----------------------------------------------------------------------------

// What a pointer handed to Free, Realloc or ChunkSize is.
enum class Found {
  kObject,     // a live object: *block, *index
  kDedicated,  // a live dedicated chunk: *dedicated
  kReported,   // misuse, reported
};

// The dedicated chunk at `p`, or a report. Its block is at the mask of its
// address, unless the chunk is aligned to block_size or more (then its
// header word leads to it).
// `owner` says the caller is the owner: checking builds then also find the
// block on the dedicated list (which another thread must not walk).
Found FindDedicated(const Context* ctx, const SlabState* st, const void* p, const char* operation,
                    DedicatedBlock** out, bool owner = true) {
  const DedicatedBlock* d;
  if ((reinterpret_cast<uintptr_t>(p) & (st->block_size - 1)) == 0) {
    const uint64_t h = ReadChunkHeader(p);
    if (!ChunkHeaderMagicOk(h) || ChunkHeaderKind(h) != kChunkKindSlab ||
        !ChunkHeaderIsExternal(h)) {
      ReportNotAnObject(ctx, p, operation);
      return Found::kReported;
    }
    d = reinterpret_cast<const DedicatedBlock*>(static_cast<const char*>(p) - kHeaderWord -
                                                ChunkHeaderOffset(h));
  } else {
    d = reinterpret_cast<const DedicatedBlock*>(BlockOf(st, p));
  }
  // A released block's first words belong to its source now: the role and
  // the chunk lie past them.
  if (d->role == kRoleDedicated && d->chunk == p && d->link.owner == ctx &&
      (!kChecking || !owner || st->dedicated.Holds(&d->link))) {
    *out = const_cast<DedicatedBlock*>(d);
    return Found::kDedicated;
  }
  if (d->role == kRoleFreed && d->chunk == p) {
    ReportDoubleFree(ctx, p, operation);
  } else {
    ReportNotAnObject(ctx, p, operation);
  }
  return Found::kReported;
}

Found Classify(const Context* ctx, const SlabState* st, const void* p, const char* operation,
               SlabBlock** block, size_t* index, DedicatedBlock** dedicated) {
  SlabBlock* b = BlockOf(st, p);
  if (static_cast<const void*>(b) == p || b->role != kRoleSlots || b->link.owner != ctx) {
    return FindDedicated(ctx, st, p, operation, dedicated);
  }
  if (!SlotIndex(st, b, p, index)) {
    ReportNotAnObject(ctx, p, operation);
    return Found::kReported;
  }
  if (!IsLive(b, *index)) {
    ReportDoubleFree(ctx, p, operation);
    return Found::kReported;
  }
  *block = b;
  return Found::kObject;
}

// The dedicated chunk's block goes back at once, saying "freed" past the
// bytes its source may write.
void FreeDedicated(Context* ctx, SlabState* st, DedicatedBlock* d) {
  if (kChecking && !SentinelOk(d->chunk + d->requested)) {
    ReportMisuse("sentinel of chunk %p (%zu bytes) in slab '%s' was overwritten", d->chunk,
                 d->requested, ctx->name());
  }
  st->dedicated.Remove(&d->link);
  st->live.Remove(DedicatedCapacity(d));
  d->role = kRoleFreed;
  ReleaseKindBlock(ctx, &d->link);
}

// After a free, `b` goes from list `from` to the next one (from a full
// block to list 1, every time a full block loses an object), or it emptied.
ABSL_ATTRIBUTE_NOINLINE void MoveAfterFree(Context* ctx, SlabState* st, SlabBlock* b) {
  const uint32_t from = ListIndex(st, b->nfree - 1);
  BlockList& old = st->blocklist[from];
  old.Remove(&b->link);
  if (b->nfree == st->capacity) {
    // Empty: kept for reuse while there is room, else back to the source.
    if (st->empty.count() < st->keep_empty_blocks) {
      st->empty.PushFront(&b->link);
    } else {
      ReleaseSlotBlock(ctx, st, b);
    }
    if (from == st->cur && old.empty()) st->cur = FindNextList(st);
    return;
  }
  const uint32_t to = ListIndex(st, b->nfree);
  st->blocklist[to].PushFront(&b->link);
  if (st->cur == 0 || to < st->cur) {
    st->cur = to;
  } else if (from == st->cur && old.empty()) {
    st->cur = FindNextList(st);
  }
}

ABSL_ATTRIBUTE_NOINLINE void FreeOther(Context* ctx, SlabState* st, void* p) {
  DedicatedBlock* d;
  if (FindDedicated(ctx, st, p, "free", &d) == Found::kDedicated) FreeDedicated(ctx, st, d);
}

// Puts object `obj` of `b` on the block's free list; checking builds first
// clobber it (without a constructor: a freed object keeps its state then).
void PushFree(const SlabState* st, SlabBlock* b, char* obj) {
  if (kChecking) {
    if (st->constructor == nullptr) std::memset(obj, kClobberByte, st->object_size);
    WriteObjectHeader(b, obj, /*free=*/true);
  }
  WriteLink(st, obj, b->free_head);
  PoisonMemoryRegion(obj, st->object_size);
  b->free_head = obj;
}

// The owner's free.
//
// Cost note: a mask, two loads and compares for the block, a multiply and a
// compare for the slot, a bit test and clear, a push; a list move only when
// the block crosses a list boundary.
inline void FreeLocal(Context* ctx, SlabState* st, void* p) {
  SlabBlock* b = BlockOf(st, p);
  if (ABSL_PREDICT_FALSE(static_cast<void*>(b) == p || b->link.owner != ctx ||
                         b->role != kRoleSlots)) {
    return FreeOther(ctx, st, p);
  }
  size_t i;
  if (ABSL_PREDICT_FALSE(!SlotIndex(st, b, p, &i))) return ReportNotAnObject(ctx, p, "free");
  uint64_t* word = &Bitmap(b)[i >> 6];
  const uint64_t bit = uint64_t{1} << (i & 63);
  if (ABSL_PREDICT_FALSE((*word & bit) == 0)) return ReportDoubleFree(ctx, p, "free");
  char* obj = static_cast<char*>(p);
  if (kChecking && !CheckedFree(ctx, st, b, obj, "free")) return;
  // Checking builds: another thread freed it already, and it waits on the
  // remote list (its header says free; its live bit is the owner's).
  if (kChecking && ChunkHeaderIsFree(ReadChunkHeader(obj))) {
    return ReportDoubleFree(ctx, p, "free");
  }
  *word &= ~bit;
  st->live.Remove(st->object_size);
  // During a reset's cleanups the blocks stay where they are: the reset
  // empties them all next.
  if (ABSL_PREDICT_FALSE(st->finalizing)) return;
  PushFree(st, b, obj);
  // The block changes lists when the free count crosses into the next
  // list's range, or reaches the capacity.
  const uint32_t before = b->nfree++;
  if (ABSL_PREDICT_FALSE((before & st->list_mask) == 0 || b->nfree == st->capacity)) {
    if (before == 0 && b->nfree != st->capacity) {
      // A full block lost an object (in a churn, at every step): list 1,
      // the fullest with room, which is now the current list.
      st->blocklist[0].Remove(&b->link);
      st->blocklist[1].PushFront(&b->link);
      st->cur = 1;
      return;
    }
    MoveAfterFree(ctx, st, b);
  }
}

// A free from a thread other than the owner (remote_free.h). Only what the
// owner does not write while the object is live is read here: the block's
// owner and role, written when the block was made, and the state's
// constants. The live bitmap is the owner's: a double free is reported when
// the owner takes the object back, or, in checking builds, here, by the
// header word, which is then marked free. An object goes on the list
// through its link word (after a constructed object, which keeps its
// state); a dedicated chunk through its block's `chunk` field, worked out
// again when it is taken back, since the chunk may be smaller than a link.
ABSL_ATTRIBUTE_NOINLINE void FreeRemote(Context* ctx, SlabState* st, void* p) {
  SlabBlock* b = BlockOf(st, p);
  if (static_cast<void*>(b) == p || b->link.owner != ctx || b->role != kRoleSlots) {
    DedicatedBlock* d;
    if (FindDedicated(ctx, st, p, "free", &d, /*owner=*/false) == Found::kDedicated) {
      st->remote.Push(&d->chunk);
    }
    return;
  }
  size_t i;
  if (!SlotIndex(st, b, p, &i)) return ReportNotAnObject(ctx, p, "free");
  char* obj = static_cast<char*>(p);
  if (kChecking) {
    const uint64_t h = ReadChunkHeader(obj);
    if (ChunkHeaderIsFree(h)) return ReportDoubleFree(ctx, p, "free");
    WriteChunkHeader(obj, h | kChunkFreeBit);
  }
  char* link = obj + st->link_offset;
  if (st->link_offset != 0) UnpoisonMemoryRegion(link, kLinkBytes);  // past the object
  st->remote.Push(link);
}

// The address of a dedicated chunk, from its block (AllocDedicated).
char* DedicatedChunk(const DedicatedBlock* d) {
  return const_cast<char*>(reinterpret_cast<const char*>(d)) +
         RoundUp(sizeof(DedicatedBlock) + kHeaderWord, static_cast<size_t>(d->reserved0));
}

// Takes back what other threads freed, each as the owner's free. A node of
// the list is an object's link word, inside a block of objects, or the
// `chunk` field of a dedicated block, at its start.
void ReclaimRemote(Context* ctx, SlabState* st) {
  char* n = static_cast<char*>(st->remote.TakeAll());
  while (n != nullptr) {
    char* next = static_cast<char*>(RemoteFreeList::Next(n));
    SlabBlock* b = BlockOf(st, n);
    if (b->role == kRoleSlots) {
      char* obj = n - st->link_offset;
      if (st->link_offset != 0) PoisonMemoryRegion(n, kLinkBytes);
      if (kChecking) WriteObjectHeader(b, obj, /*free=*/false);
      FreeLocal(ctx, st, obj);
    } else {
      DedicatedBlock* d = reinterpret_cast<DedicatedBlock*>(b);
      d->chunk = DedicatedChunk(d);
      FreeDedicated(ctx, st, d);
    }
    n = next;
  }
}

// Whether `node` waits on the remote list (a check at quiescence).
bool PendingRemote(const SlabState* st, const void* node) {
  for (const void* n = st->remote.Peek(); n != nullptr; n = RemoteFreeList::Next(n)) {
    if (n == node) return true;
  }
  return false;
}

// SlabFree
//
// Cost note: the owner test (a thread-local address and a compare), then
// FreeLocal.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void SlabFree(Context* ctx, SlabState* st, void* p) {
  if (ABSL_PREDICT_FALSE(st->remote.FromOtherThread())) return FreeRemote(ctx, st, p);
  FreeLocal(ctx, st, p);
}

// --- Realloc and chunk size -------------------------------------------------------------

void* ReallocDedicated(Context* ctx, SlabState* st, DedicatedBlock* d, size_t new_size) {
  char* p = d->chunk;
  if (new_size <= DedicatedCapacity(d)) {
    const size_t old = d->requested;
    d->requested = new_size;
    // Release builds leave the whole room unpoisoned (AllocDedicated).
    if (kChecking && new_size > old) {
      UnpoisonMemoryRegion(p, new_size);
    } else if (kChecking) {
      PoisonMemoryRegion(p + new_size, old - new_size);
    }
    if (kChecking) {
      WriteSentinel(p + new_size);
      d->site = PendingSite(ctx);  // the realloc's caller
    }
    return p;
  }
  // Moved, keeping the chunk's alignment.
  void* q = AllocDedicated(ctx, st, new_size, static_cast<size_t>(d->reserved0));
  if (q == nullptr) return nullptr;
  std::memcpy(q, p, d->requested);
  FreeDedicated(ctx, st, d);
  return q;
}

void* SlabRealloc(Context* ctx, SlabState* st, void* p, size_t old_size, size_t new_size) {
  SlabBlock* b;
  size_t i;
  DedicatedBlock* d;
  switch (Classify(ctx, st, p, "realloc", &b, &i, &d)) {
    case Found::kReported:
      SetFailure(ctx, Failure::kBadArgument);
      return nullptr;
    case Found::kDedicated:
      return ReallocDedicated(ctx, st, d, new_size);
    case Found::kObject:
      break;
  }
  if (new_size <= st->object_size) {  // every object has the object size
    if (kChecking) WriteObjectSite(static_cast<char*>(p), PendingSite(ctx));
    return p;
  }
  if (st->larger == SlabLarger::kRefuse) {
    SetFailure(ctx, Failure::kUnsupported);
    return nullptr;
  }
  // The object's alignment moves with it, as a dedicated chunk's does.
  void* q = AllocDedicated(ctx, st, new_size, st->alignment);
  if (q == nullptr) return nullptr;
  // The object's size is known, so the unsized form works too.
  std::memcpy(q, p, old_size < st->object_size ? old_size : st->object_size);
  SlabFree(ctx, st, p);
  return q;
}

size_t SlabChunkSize(const Context* ctx, const SlabState* st, const void* p) {
  SlabBlock* b;
  size_t i;
  DedicatedBlock* d;
  switch (Classify(ctx, st, p, "size", &b, &i, &d)) {
    case Found::kObject:
      return st->object_size;
    case Found::kDedicated:
      return kChecking ? d->requested : DedicatedCapacity(d);
    case Found::kReported:
      break;
  }
  return kUnknownSize;
}

// --- Reset and release ------------------------------------------------------------------

// Ends every object's life before a reset or destroy: the live cleanup on
// each object still allocated, then the destructor on each slot ever
// constructed. Allocation is refused meanwhile (cur is 0, and the slow path
// sees `finalizing`); a free only clears the object's bit.
void Finalize(SlabState* st) {
  if (st->live_cleanup == nullptr && st->destructor == nullptr) return;
  st->finalizing = true;
  st->cur = 0;
  if (st->live_cleanup != nullptr) {
    for (BlockList& list : st->blocklist) {
      list.ForEach([&](KindBlock* kb) {
        SlabBlock* b = AsSlabBlock(kb);
        for (uint32_t w = 0; w < st->bitmap_words; ++w) {
          // Re-read after each call: a cleanup may free other objects.
          while (uint64_t word = Bitmap(b)[w]) {
            const int bit = absl::countr_zero(word);
            Bitmap(b)[w] = word & ~(uint64_t{1} << bit);  // first: never twice
            // Finished with its cleanup's start: a cleanup that leaves by
            // longjmp leaves the count with the objects still to clean.
            st->live.Remove(st->object_size);
            char* obj = ObjectAt(st, b, size_t{w} * 64 + static_cast<size_t>(bit));
            // Valgrind forgot every chunk before the reset began.
            UnpoisonMemoryRegion(obj, st->object_size);
            st->live_cleanup(obj, st->arg);
          }
        }
      });
    }
  }
  if (st->destructor != nullptr) {
    for (BlockList& list : st->blocklist) {
      list.ForEach([&](KindBlock* b) { DestroySlots(st, AsSlabBlock(b)); });
    }
    st->empty.ForEach([&](KindBlock* b) { DestroySlots(st, AsSlabBlock(b)); });
  }
  st->finalizing = false;
}

void ReleaseDedicated(Context* ctx, SlabState* st) {
  st->dedicated.ForEach([&](KindBlock* b) {
    AsDedicated(b)->role = kRoleFreed;
    ReleaseKindBlock(ctx, b);
  });
  st->dedicated.Clear();
}

bool SlabCheck(const Context* ctx, const SlabState* st, std::string* error);

// Checking builds check every object's sentinel before a reset (slab.c runs
// SlabCheck there too).
void VerifyOrReport(const Context* ctx, const SlabState* st) {
  if (!kChecking) return;
  std::string error;
  if (!SlabCheck(ctx, st, &error)) {
    if (!error.empty() && error.back() == '\n') error.pop_back();
    ReportMisuse("%s", error.c_str());
  }
}

void SlabReset(Context* ctx, SlabState* st, const ResetOptions& options) {
  ReclaimRemote(ctx, st);  // freed objects get no live cleanup
  VerifyOrReport(ctx, st);
  Finalize(st);
  ReleaseDedicated(ctx, st);
  // Blocks are kept while they fit the options (block_list.h), emptied (the
  // destructors ran: nothing in them is constructed any more), and used
  // before new ones.
  BlockList kept;
  size_t bytes = ctx->first_block_size();
  for (BlockList& list : st->blocklist) bytes = ResetBlocks(ctx, &list, options, bytes, &kept);
  ResetBlocks(ctx, &st->empty, options, bytes, &kept);
  kept.ForEach([&](KindBlock* b) {
    InitBlock(st, AsSlabBlock(b));
    st->empty.PushBack(b);
  });
  st->cur = 0;
  st->live.Clear();
}

void SlabReleaseAll(Context* ctx, SlabState* st) {
  ReclaimRemote(ctx, st);
  VerifyOrReport(ctx, st);
  Finalize(st);
  ReleaseDedicated(ctx, st);
  for (BlockList& list : st->blocklist) ReleaseBlocks(ctx, &list);
  ReleaseBlocks(ctx, &st->empty);
  st->cur = 0;
  st->live.Clear();
}

// --- Stats, check, inspect --------------------------------------------------------------

template <typename F>
void ForEachSlotBlock(const SlabState* st, F f) {
  for (const BlockList& list : st->blocklist) list.ForEach([&](KindBlock* b) { f(AsSlabBlock(b)); });
  st->empty.ForEach([&](KindBlock* b) { f(AsSlabBlock(b)); });
}

void SlabStats(const Context* /*ctx*/, const SlabState* st, KindStats* out) {
  ForEachSlotBlock(st, [&](const SlabBlock* b) {
    out->free_bytes += size_t{b->nfree} * st->stride;
    out->free_chunks += b->nfree - b->nunused;
  });
}

// Checks one block of objects; `list_index` is the list it is on (-1: the
// empty list). On a problem appends it to `error` and returns false.
bool CheckBlock(const Context* ctx, const SlabState* st, const SlabBlock* b,
                const BlockList& list, int list_index, std::string* error) {
  auto fail = [&](const char* what) {
    internal::AppendFormat(error, "slab '%s': block %p %s\n", ctx->name(),
                          static_cast<const void*>(b), what);
    return false;
  };
  if (b->link.owner != ctx || b->role != kRoleSlots) return fail("names another owner");
  if (!list.Holds(&b->link)) return fail("has a broken link");
  if (b->nfree > st->capacity || b->nunused > b->nfree) return fail("has bad counts");
  if (list_index < 0 ? b->nfree != st->capacity
                     : ListIndex(st, b->nfree) != static_cast<uint32_t>(list_index) ||
                           b->nfree == st->capacity) {
    return fail("is on the wrong list for its free slots");
  }
  if (b->unused != ObjectAt(st, b, MadeSlots(st, b))) return fail("has a bad unused pointer");
  size_t live = 0;
  for (uint32_t w = 0; w < st->bitmap_words; ++w) {
    const uint64_t word = Bitmap(b)[w];
    live += static_cast<size_t>(absl::popcount(word));
    for (uint64_t bits = word; bits != 0; bits &= bits - 1) {
      const size_t i = size_t{w} * 64 + static_cast<size_t>(absl::countr_zero(bits));
      if (i >= MadeSlots(st, b)) return fail("has a live bit for a never-used slot");
      const char* obj = ObjectAt(st, b, i);
      if (kChecking) {
        const uint64_t h = ReadChunkHeader(obj);
        if (!ChunkHeaderMagicOk(h) || ChunkHeaderKind(h) != kChunkKindSlab ||
            (ChunkHeaderIsFree(h) && !PendingRemote(st, obj + st->link_offset))) {
          internal::AppendFormat(error, "slab '%s': object %p has a corrupt header 0x%016x\n",
                                ctx->name(), static_cast<const void*>(obj), h);
          return false;
        }
        if (!SentinelOk(obj + st->object_size)) {
          internal::AppendFormat(error,
                                "slab '%s': sentinel of object %p (%d bytes) overwritten\n",
                                ctx->name(), static_cast<const void*>(obj), st->object_size);
          return false;
        }
      }
    }
  }
  if (live != st->capacity - b->nfree) return fail("has a bitmap that disagrees with its count");
  size_t listed = 0;
  for (const char* f = b->free_head; f != nullptr; f = ReadLink(st, f)) {
    size_t i;
    if (++listed > b->nfree - b->nunused || !SlotIndex(st, b, f, &i) || i >= MadeSlots(st, b) ||
        IsLive(b, i)) {
      return fail("has a corrupt free list");
    }
  }
  if (listed != b->nfree - b->nunused) return fail("has a free list that disagrees with its count");
  return true;
}

bool SlabCheck(const Context* ctx, const SlabState* st, std::string* error) {
  size_t blocks = 1;  // the first block
  for (int l = 0; l < kBlocklistCount; ++l) {
    const BlockList& list = st->blocklist[l];
    bool ok = true;
    list.ForEach([&](KindBlock* b) {
      if (ok) ok = CheckBlock(ctx, st, AsSlabBlock(b), list, l, error);
      ++blocks;
    });
    if (!ok) return false;
    if (blocks > ctx->num_blocks()) break;  // a list that loops
  }
  bool ok = true;
  st->empty.ForEach([&](KindBlock* b) {
    if (ok) ok = CheckBlock(ctx, st, AsSlabBlock(b), st->empty, -1, error);
    ++blocks;
  });
  if (!ok) return false;
  st->dedicated.ForEach([&](KindBlock* kb) {
    const DedicatedBlock* d = AsDedicated(kb);
    const char* mem = reinterpret_cast<const char*>(kb);
    if (ok && PendingRemote(st, &d->chunk)) {  // its chunk field is a link now
      ++blocks;
      return;
    }
    if (ok && (kb->owner != ctx || d->role != kRoleDedicated || !st->dedicated.Holds(kb) ||
               d->chunk < mem + sizeof(DedicatedBlock) ||
               d->requested > DedicatedCapacity(d) ||
               (kChecking && !SentinelOk(d->chunk + d->requested)))) {
      internal::AppendFormat(error, "slab '%s': dedicated chunk %p is corrupt\n", ctx->name(),
                            static_cast<const void*>(d->chunk));
      ok = false;
    }
    ++blocks;
  });
  if (!ok) return false;
  if (!st->finalizing && st->cur != FindNextList(st)) {
    internal::AppendFormat(error, "slab '%s': the current list is %d, not the fullest with room\n",
                          ctx->name(), st->cur);
    return false;
  }
  if (blocks != ctx->num_blocks()) {
    internal::AppendFormat(error, "slab '%s': %d blocks on the lists but %d accounted\n",
                          ctx->name(), blocks, ctx->num_blocks());
    return false;
  }
  return true;
}

BlockInfo DescribeBlock(const SlabState* st, const SlabBlock* b, BlockRole role, bool current) {
  BlockInfo info;
  info.start = b;
  info.size = b->link.size;
  info.header_bytes = st->first_object - ObjectOffset(st->alignment);
  info.free_bytes = size_t{b->nunused} * st->stride;
  info.freelist_chunks = b->nfree - b->nunused;
  info.freelist_bytes = info.freelist_chunks * st->stride;
  // Live objects, the tail too small for a slot, and the source's slack.
  info.used_bytes = info.size - info.header_bytes - info.free_bytes - info.freelist_bytes;
  info.last_offset = info.header_bytes + size_t{MadeSlots(st, b)} * st->stride;
  info.end_offset = info.header_bytes + st->slots_bytes;
  info.role = role;
  if (role == BlockRole::kSpare) info.label = "empty";
  info.current = current;
  info.SetCounter("objects", st->capacity - b->nfree);
  return info;
}

// Inspect
//
// The first block (the context header only), then the blocks of objects,
// fullest list first (the current block, where allocation goes on, is the
// head of list `cur`), then the empty blocks kept, then the dedicated
// chunks, newest first; then the one size class, the object, with each
// block's free list in the order of the blocks.
void SlabInspect(const Context* ctx, const SlabState* st, InspectVisitor* visitor) {
  BlockInfo first;
  first.start = ctx;
  first.size = ctx->first_block_size();
  first.header_bytes = ctx->header_bytes();
  first.used_bytes = first.size - first.header_bytes;  // slack: no object goes here
  first.last_offset = first.end_offset = first.size;
  first.role = BlockRole::kFirst;
  visitor->VisitBlock(first);
  const KindBlock* current = st->cur != 0 ? st->blocklist[st->cur].head() : nullptr;
  for (const BlockList& list : st->blocklist) {
    list.ForEach([&](KindBlock* b) {
      visitor->VisitBlock(DescribeBlock(st, AsSlabBlock(b), BlockRole::kNormal, b == current));
    });
  }
  st->empty.ForEach([&](KindBlock* b) {
    visitor->VisitBlock(DescribeBlock(st, AsSlabBlock(b), BlockRole::kSpare, false));
  });
  st->dedicated.ForEach([&](KindBlock* kb) {
    const DedicatedBlock* d = AsDedicated(kb);
    BlockInfo info;
    info.start = kb;
    info.size = kb->size;
    info.header_bytes = static_cast<size_t>(DedicatedChunk(d) - reinterpret_cast<const char*>(kb));
    info.used_bytes = info.size - info.header_bytes;
    info.last_offset = info.end_offset = info.size;
    info.role = BlockRole::kOversize;
    info.label = "dedicated";
    visitor->VisitBlock(info);
  });
  SizeClassInfo info;
  info.index = 0;
  info.class_bytes = st->object_size;
  info.chunk_bytes = st->stride;
  ForEachSlotBlock(st, [&](const SlabBlock* b) { info.free_chunks += b->nfree - b->nunused; });
  visitor->VisitSizeClass(info);
  ForEachSlotBlock(st, [&](const SlabBlock* b) {
    for (const char* f = b->free_head; f != nullptr; f = ReadLink(st, f)) {
      visitor->VisitFreeChunk(info, f);
    }
  });
}

// VisitLiveChunks
//
// Checking builds: every object whose live bit is set and whose header is
// not marked freed (another thread's free waits on the remote list with the
// bit still set), with the object size as its bytes; then the dedicated
// chunks not waiting on the remote list.
void SlabVisitLiveChunks(const Context* /*ctx*/, const SlabState* st, LiveChunkVisitor* visitor) {
  if (!kChecking) return;
  for (const BlockList& list : st->blocklist) {
    list.ForEach([&](KindBlock* kb) {
      SlabBlock* b = AsSlabBlock(kb);
      for (uint32_t w = 0; w < st->bitmap_words; ++w) {
        for (uint64_t bits = Bitmap(b)[w]; bits != 0; bits &= bits - 1) {
          const char* obj =
              ObjectAt(st, b, size_t{w} * 64 + static_cast<size_t>(absl::countr_zero(bits)));
          if (ChunkHeaderIsFree(ReadChunkHeader(obj))) continue;
          visitor->VisitChunk(obj, st->object_size, ReadObjectSite(obj));
        }
      }
    });
  }
  st->dedicated.ForEach([&](KindBlock* kb) {
    const DedicatedBlock* d = AsDedicated(kb);
    if (PendingRemote(st, &d->chunk)) return;
    visitor->VisitChunk(d->chunk, d->requested, d->site);
  });
}

// --- Context-free entry points: refused ---------------------------------------------------

// Slab objects have no chunk header outside checking builds: mcx::Free and
// friends cannot find their context. Checking builds write one (and
// dedicated chunks always have one) so that the attempt is reported here.
Context* SlabChunkContext(const void* p) {
  ReportMisuse("cannot find the context of %p: slab objects carry no chunk header; free them "
               "through their context (ctx->Free(p))",
               p);
  return nullptr;
}

size_t SlabChunkSizeOf(const void* p) {
  SlabChunkContext(p);
  return 0;
}

const ChunkKindMethods kSlabChunkMethods = {"slab", &SlabChunkContext, &SlabChunkSizeOf};

// --- The kind ---------------------------------------------------------------------------

struct SlabImpl {
  using Options = SlabOptions;
  using State = SlabState;
  static constexpr const char* kName = "slab";

  // An object has the slab's alignment; a larger request a dedicated block.
  static size_t PlainAlignment(const Context*, const State* st, size_t size) {
    return size <= st->object_size ? st->alignment : kDefaultAlignment;
  }

  // Only the context header, the state and the name: blocks of objects
  // come and go on their own.
  static size_t FirstBlockSize(const Options& /*o*/, size_t header_bytes) { return header_bytes; }

  static bool Init(Context* ctx, State* st, const Options& o, char* /*space*/, char* /*end*/) {
    new (st) State();  // valid first: a refused context is released through ReleaseAll
    st->remote.Init();  // the creating thread owns the context
    if (!ComputeLayout(o, st) || !RegisterChunkKind(kChunkKindSlab, &kSlabChunkMethods)) {
      SetFailure(ctx, Failure::kBadArgument);
      return false;
    }
    return true;
  }

  static void* Alloc(Context* ctx, State* st, size_t size, size_t alignment) {
    return SlabAlloc(ctx, st, size, alignment);
  }
  static void* AllocFast(Context* ctx, State* st, size_t size, size_t alignment) {
    return SlabAllocFast(ctx, st, size, alignment);
  }
  static void Free(Context* ctx, State* st, void* p) { SlabFree(ctx, st, p); }
  static void* Realloc(Context* ctx, State* st, void* p, size_t old_size, size_t new_size) {
    return SlabRealloc(ctx, st, p, old_size, new_size);
  }
  static size_t ChunkSize(const Context* ctx, const State* st, const void* p) {
    return SlabChunkSize(ctx, st, p);
  }
  static void Reset(Context* ctx, State* st, const ResetOptions& options) {
    SlabReset(ctx, st, options);
  }
  static void ReleaseAll(Context* ctx, State* st) { SlabReleaseAll(ctx, st); }
  static void Live(const Context* /*ctx*/, const State* st, LiveCounts* out) {
    st->live.Report(out);
  }
  static void ResetPeak(Context* /*ctx*/, State* st) { st->live.ResetPeak(); }
  static void Stats(const Context* ctx, const State* st, KindStats* out) {
    SlabStats(ctx, st, out);
  }
  static bool Check(const Context* ctx, const State* st, std::string* error) {
    return SlabCheck(ctx, st, error);
  }
  static void Inspect(const Context* ctx, const State* st, InspectVisitor* visitor) {
    SlabInspect(ctx, st, visitor);
  }
  static void VisitLiveChunks(const Context* ctx, const State* st, LiveChunkVisitor* visitor) {
    SlabVisitLiveChunks(ctx, st, visitor);
  }
};

RemoteFreeList* SlabRemoteFrees(Context* ctx) { return &KindState<SlabState>(ctx)->remote; }

constexpr KindMethods MakeSlabMethods() {
  KindMethods m = MakeKindMethods<SlabImpl>();
  m.remote_frees = &SlabRemoteFrees;
  return m;
}

constexpr KindMethods kSlabMethods = MakeSlabMethods();

const SlabState* SlabStateOf(const Context* ctx) {
  return ctx != nullptr && ctx->kind() == &kSlabMethods ? KindState<SlabState>(ctx) : nullptr;
}

}  // namespace

KindSpec SlabKind(const SlabOptions& options) { return KindSpec(&kSlabMethods, options); }

Context* CreateSlabContext(Context* parent, const char* name, const SlabOptions& options,
                           const ContextOptions& context_options) {
  return Context::Create(parent, name, SlabKind(options), context_options);
}

SlabGeometry GetSlabGeometry(const Context* slab) {
  SlabGeometry g;
  const SlabState* st = SlabStateOf(slab);
  if (st == nullptr) return g;
  g.object_size = st->object_size;
  g.stride = st->stride;
  g.block_size = st->block_size;
  g.objects_per_block = st->capacity;
  g.first_object_offset = st->first_object;
  return g;
}

void* SlabAllocObject(Context* slab) {
  const SlabState* st = SlabStateOf(slab);
  if (st == nullptr) {
    ReportMisuse("SlabAllocObject: context '%s' is not a slab context",
                 slab != nullptr ? slab->name() : "(null)");
    return nullptr;
  }
  void* p = slab->Alloc(st->object_size);
  // Memcheck marked the chunk undefined; the constructor's bytes are not.
  if (kValgrindBuild && st->constructor != nullptr) UnpoisonMemoryRegion(p, st->object_size);
  return p;
}

namespace slab_internal {

DeleteClaim ClaimForDelete(Context* slab, void* object) {
  const SlabState* st = SlabStateOf(slab);
  if (st == nullptr || !st->finalizing) return DeleteClaim::kFree;
  // A reset is running live cleanups: the object is either still to be
  // finished (claim it, so the reset does not run its cleanup too) or done.
  SlabBlock* b = BlockOf(st, object);
  size_t i;
  if (static_cast<void*>(b) == object || b->link.owner != slab || b->role != kRoleSlots ||
      !SlotIndex(st, b, object, &i)) {
    ReportNotAnObject(slab, object, "delete");
    return DeleteClaim::kFinished;
  }
  if (!IsLive(b, i)) return DeleteClaim::kFinished;
  Bitmap(b)[i >> 6] &= ~(uint64_t{1} << (i & 63));
  return DeleteClaim::kDestroyOnly;
}

}  // namespace slab_internal
}  // namespace mcx
