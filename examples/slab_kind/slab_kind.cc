// The slab kind: the worked example of docs/adding_a_kind.md. Each section
// below is one item of that checklist, and the document quotes them.
//
// Layout. Every block, the context's first block included, starts with a
// SlabBlock whose first word is the owning context; slots follow back to back,
// each an 8-byte chunk header and then the slot. A chunk header's offset leads
// back to its SlabBlock, which is how `mcx::Free(p)` finds the context.
//
//   first block:  | Context | SlabState | name | SlabBlock | h | slot | h | slot | ... |
//   other blocks: | SlabBlock | h | slot | h | slot | ... |
//   dedicated:    | SlabBlock | h | payload (one chunk larger than a slot) ... |
//   freed slot:   | h (free bit set) | next free slot | stale bytes ... |
//
// Why one list of free slots for the whole context rather than one per block
// (as PostgreSQL's slab.c keeps): it makes allocation and free a few
// instructions each, at the price of never giving an emptied block back
// before a reset. For the short-lived, same-size objects a slab is for, the
// peak is what a reset gives back anyway.

#include "examples/slab_kind/slab_kind.h"

#include <cstdint>
#include <cstring>
#include <string>

#include "absl/base/attributes.h"
#include "absl/strings/str_format.h"
#include "mcx/context/context.h"
#include "mcx/context/kind_api.h"

namespace mcx {
namespace examples {
namespace {

constexpr bool kChecking = kCheckingBuild;

// [START layout]
struct SlabBlock {
  Context* owner;   // must stay the first field: chunk headers lead here
  SlabBlock* prev;
  SlabBlock* next;
  size_t size;      // bytes acquired (what goes back); 0 for the first block
  char* end;        // one past the last slot, or the dedicated chunk's end
};

struct SlabState {
  void* free_slots;      // payload of the slot freed last; LIFO
  size_t free_count;     // slots on that list
  SlabBlock* blocks;     // blocks with slots, newest (being carved) first
  SlabBlock* spare;      // empty blocks a KeepBytes reset kept
  SlabBlock* dedicated;  // one chunk each
  char* carve;           // next never-used slot of `blocks`, its header
  char* carve_end;
  size_t slot_size;      // usable bytes of a slot: stride - header
  size_t stride;         // bytes from one slot's header to the next
  size_t slots_per_block;
};

constexpr size_t kHeaderBytes = sizeof(uint64_t);

constexpr size_t RoundUp16(size_t n) { return (n + 15) & ~size_t{15}; }

// The first slot's header sits so that its payload is 16-aligned (blocks
// are): one constant for every block, and for dedicated chunks too.
constexpr size_t kPayloadOffset = RoundUp16(sizeof(SlabBlock) + kHeaderBytes);
constexpr size_t kFirstSlotOffset = kPayloadOffset - kHeaderBytes;
// [END layout]

SlabState* StateOf(Context* ctx) { return KindState<SlabState>(ctx); }
const SlabState* StateOf(const Context* ctx) { return KindState<SlabState>(ctx); }

// The first block's SlabBlock follows the context header, state and name.
SlabBlock* FirstBlock(const Context* ctx) {
  return reinterpret_cast<SlabBlock*>(reinterpret_cast<char*>(const_cast<Context*>(ctx)) +
                                      ctx->header_bytes());
}

char* FirstSlot(SlabBlock* b) { return reinterpret_cast<char*>(b) + kFirstSlotOffset; }

SlabBlock* BlockOf(const void* p, uint64_t h) {
  return reinterpret_cast<SlabBlock*>(const_cast<char*>(static_cast<const char*>(p)) -
                                      kHeaderBytes - ChunkHeaderOffset(h));
}

size_t Stride(const SlabOptions& o) { return RoundUp16(o.slot_size + kHeaderBytes); }

// Bytes of a block with `slots` slots; 0 if the options are out of range (so
// nothing below overflows).
size_t BlockBytes(const SlabOptions& o) {
  if (o.slot_size > kMaxSlotSize || o.slots_per_block == 0 ||
      o.slots_per_block > (kMaxSlabBlockBytes - kFirstSlotOffset) / Stride(o)) {
    return 0;
  }
  return kFirstSlotOffset + o.slots_per_block * Stride(o);
}

void LinkBlock(SlabBlock** head, SlabBlock* b) {
  b->prev = nullptr;
  b->next = *head;
  if (*head != nullptr) (*head)->prev = b;
  *head = b;
}

void UnlinkBlock(SlabBlock** head, SlabBlock* b) {
  if (b->prev != nullptr) b->prev->next = b->next; else *head = b->next;
  if (b->next != nullptr) b->next->prev = b->prev;
}

// The next slot on the free list. The link lives in the freed slot, which is
// poisoned under ASan: read it past the poison.
void* NextFree(const void* p) {
  void* next;
  CopyFromPoisoned(&next, p, sizeof(next));
  return next;
}

// Makes `b` the block being carved: its slot space is all unused.
void StartCarving(SlabState* st, SlabBlock* b) {
  LinkBlock(&st->blocks, b);
  st->carve = FirstSlot(b);
  st->carve_end = b->end;
  PoisonMemoryRegion(st->carve, static_cast<size_t>(st->carve_end - st->carve));
}

// Every block holds exactly `slots_per_block` slots. A source's slack past
// them is left unused: predictable blocks are the point of a slab.
char* SlotsEnd(const SlabState* st, SlabBlock* b) {
  return FirstSlot(b) + st->slots_per_block * st->stride;
}

// --- Allocation -------------------------------------------------------------------

// [START alloc]
void* CarveSlot(SlabState* st) {
  char* payload = st->carve + kHeaderBytes;
  SlabBlock* b = st->blocks;
  const uint64_t offset = static_cast<uint64_t>(st->carve - reinterpret_cast<char*>(b));
  WriteChunkHeader(payload, MakeChunkHeader(kChunkKindSlab, /*external=*/false,
                                            /*value=*/0, offset));
  st->carve += st->stride;
  return payload;
}

// Out of line: taken once per `slots_per_block` allocations at most.
ABSL_ATTRIBUTE_NOINLINE void* SlotFromNewBlock(Context* ctx, SlabState* st) {
  SlabBlock* b = st->spare;
  if (b != nullptr) {
    UnlinkBlock(&st->spare, b);  // kept by a reset: no block source call
  } else {
    const size_t want = kFirstSlotOffset + st->slots_per_block * st->stride;
    size_t actual;
    char* mem = static_cast<char*>(AcquireBlock(ctx, want, kMinBlockAlignment, &actual));
    if (mem == nullptr) return nullptr;  // AcquireBlock said why
    b = reinterpret_cast<SlabBlock*>(mem);
    b->owner = ctx;
    b->size = actual;
    b->end = SlotsEnd(st, b);
  }
  StartCarving(st, b);
  return CarveSlot(st);
}

void* AllocDedicated(Context* ctx, SlabState* st, size_t size) {
  size_t actual;
  char* mem = static_cast<char*>(
      AcquireBlock(ctx, kPayloadOffset + size, kMinBlockAlignment, &actual));
  if (mem == nullptr) return nullptr;
  auto* b = reinterpret_cast<SlabBlock*>(mem);
  b->owner = ctx;
  b->size = actual;
  b->end = mem + actual;
  LinkBlock(&st->dedicated, b);
  char* payload = mem + kPayloadOffset;
  WriteChunkHeader(payload, MakeChunkHeader(kChunkKindSlab, /*external=*/true, 0,
                                            kFirstSlotOffset));
  UnpoisonMemoryRegion(payload, actual - kPayloadOffset);
  return payload;
}

void* SlabAlloc(Context* ctx, size_t size, size_t alignment) {
  SlabState* st = StateOf(ctx);
  // Over-aligned requests: a bigger chunk and a redirect header inside it.
  if (alignment > kDefaultAlignment) {
    return AllocAlignedRedirect(ctx, size, alignment);
  }
  if (size > st->slot_size) return AllocDedicated(ctx, st, size);
  void* p = st->free_slots;
  if (p != nullptr) {
    st->free_slots = NextFree(p);
    --st->free_count;
    WriteChunkHeader(p, ReadChunkHeader(p) & ~kChunkFreeBit);
  } else if (st->carve != st->carve_end) {
    p = CarveSlot(st);
  } else {
    p = SlotFromNewBlock(ctx, st);
    if (p == nullptr) return nullptr;
  }
  UnpoisonMemoryRegion(p, st->slot_size);  // ASan: the whole slot is usable
  return p;
}
// [END alloc]

// --- Free ------------------------------------------------------------------------------

// [START free]
void SlabFree(Context* ctx, void* p) {
  const uint64_t h = ReadChunkHeader(p);
  if (!ChunkHeaderMagicOk(h)) return ReportBadChunk(p, "free");
  if (ChunkHeaderKind(h) == kChunkKindAlignedRedirect) {
    return SlabFree(ctx, AlignedRedirectTarget(p));
  }
  if (ChunkHeaderKind(h) != kChunkKindSlab) return ReportBadChunk(p, "free");
  if (ChunkHeaderIsFree(h)) {
    return ReportMisuse("double free of chunk %p in slab '%s'", p, ctx->name());
  }
  SlabBlock* b = BlockOf(p, h);
  if (b->owner != ctx) {
    return ReportMisuse("free of chunk %p through slab '%s', but it belongs to '%s'",
                                  p, ctx->name(), b->owner->name());
  }
  SlabState* st = StateOf(ctx);
  if (ChunkHeaderIsExternal(h)) {  // a dedicated block goes back at once
    UnlinkBlock(&st->dedicated, b);
    ReleaseBlock(ctx, b, b->size);
    return;
  }
  UnpoisonMemoryRegion(p, st->slot_size);  // an aligned redirect poisons parts
  if (kChecking) std::memset(p, kClobberByte, st->slot_size);
  WriteChunkHeader(p, h | kChunkFreeBit);
  std::memcpy(p, &st->free_slots, sizeof(void*));  // the link lives in the slot
  PoisonMemoryRegion(p, st->slot_size);
  st->free_slots = p;
  ++st->free_count;
}
// [END free]

// --- Realloc and chunk size ----------------------------------------------------------

void* ReallocDedicated(Context* ctx, SlabState* st, void* p, uint64_t h, size_t new_size) {
  SlabBlock* b = BlockOf(p, h);
  const size_t usable = b->size - kPayloadOffset;
  const size_t keep = kPayloadOffset + (usable < new_size ? usable : new_size);
  // The source may copy `keep` bytes itself, the poisoned header among them.
  UnpoisonMemoryRegion(b, b->size);
  Block nb = ReallocateBlock(ctx, Block{b, b->size}, keep, kPayloadOffset + new_size,
                                  kMinBlockAlignment);
  if (nb.ptr == nullptr) {
    PoisonMemoryRegion(static_cast<char*>(p) - kHeaderBytes, kHeaderBytes);
    return nullptr;  // the old chunk is untouched
  }
  auto* moved = static_cast<SlabBlock*>(nb.ptr);
  moved->size = nb.size;
  moved->end = static_cast<char*>(nb.ptr) + nb.size;
  if (moved->prev != nullptr) moved->prev->next = moved; else st->dedicated = moved;
  if (moved->next != nullptr) moved->next->prev = moved;
  char* payload = static_cast<char*>(nb.ptr) + kPayloadOffset;
  PoisonMemoryRegion(payload - kHeaderBytes, kHeaderBytes);
  return payload;
}

void* SlabRealloc(Context* ctx, void* p, size_t old_size, size_t new_size) {
  SlabState* st = StateOf(ctx);
  const uint64_t h = ReadChunkHeader(p);
  if (!ChunkHeaderMagicOk(h) || ChunkHeaderKind(h) != kChunkKindSlab) {
    if (IsAlignedRedirect(p)) return ReallocAlignedRedirect(ctx, p, new_size);
    ReportBadChunk(p, "realloc");
    SetFailure(ctx, Failure::kBadArgument);
    return nullptr;
  }
  if (ChunkHeaderIsFree(h)) {
    ReportMisuse("realloc of chunk %p in slab '%s' after it was freed", p, ctx->name());
    SetFailure(ctx, Failure::kBadArgument);
    return nullptr;
  }
  if (ChunkHeaderIsExternal(h)) return ReallocDedicated(ctx, st, p, h, new_size);
  if (new_size <= st->slot_size) return p;  // every slot has the same size
  void* q = AllocDedicated(ctx, st, new_size);
  if (q == nullptr) return nullptr;
  // The slot's size is known, so the unsized form works too.
  size_t n = old_size < st->slot_size ? old_size : st->slot_size;
  std::memcpy(q, p, n);
  SlabFree(ctx, p);
  return q;
}

size_t SlabChunkSize(const Context* ctx, const void* p) {
  const uint64_t h = ReadChunkHeader(p);
  if (ChunkHeaderKind(h) == kChunkKindAlignedRedirect) return GetChunkSize(p);
  if (ChunkHeaderIsExternal(h)) return BlockOf(p, h)->size - kPayloadOffset;
  return StateOf(ctx)->slot_size;
}

// --- Reset and release ------------------------------------------------------------

void ReleaseDedicated(Context* ctx, SlabState* st) {
  for (SlabBlock* b = st->dedicated; b != nullptr;) {
    SlabBlock* next = b->next;
    ReleaseBlock(ctx, b, b->size);
    b = next;
  }
  st->dedicated = nullptr;
}

// Every slot of `b` becomes unused: checking builds clobber what was there
// (a stale pointer then reads 0x7F), ASan builds poison it.
void EmptyBlock(SlabBlock* b) {
  char* from = FirstSlot(b);
  const size_t bytes = static_cast<size_t>(b->end - from);
  if (kChecking) {
    UnpoisonMemoryRegion(from, bytes);
    std::memset(from, kClobberByte, bytes);
  }
  PoisonMemoryRegion(from, bytes);
}

// [START reset]
void SlabReset(Context* ctx, const ResetOptions& options) {
  SlabState* st = StateOf(ctx);
  ReleaseDedicated(ctx, st);
  st->free_slots = nullptr;
  st->free_count = 0;
  SlabBlock* first = FirstBlock(ctx);
  size_t kept = ctx->first_block_size();
  SlabBlock* lists[] = {st->blocks, st->spare};
  st->spare = nullptr;
  for (SlabBlock* b : lists) {
    while (b != nullptr) {
      SlabBlock* next = b->next;
      if (b == first) {
        EmptyBlock(b);
      } else if (options.KeepsBlock(kept, b->size)) {  // every kind reads modes alike
        kept += b->size;
        EmptyBlock(b);
        LinkBlock(&st->spare, b);
      } else {
        ReleaseBlock(ctx, b, b->size);
      }
      b = next;
    }
  }
  st->blocks = nullptr;
  StartCarving(st, first);
}

void SlabReleaseAll(Context* ctx) {
  SlabState* st = StateOf(ctx);
  ReleaseDedicated(ctx, st);
  SlabBlock* first = FirstBlock(ctx);
  for (SlabBlock* list : {st->blocks, st->spare}) {
    for (SlabBlock* b = list; b != nullptr;) {
      SlabBlock* next = b->next;
      if (b != first) ReleaseBlock(ctx, b, b->size);  // the tree releases the first
      b = next;
    }
  }
  st->blocks = st->spare = nullptr;
}
// [END reset]

// --- Stats and check ----------------------------------------------------------------

void SlabStats(const Context* ctx, KindStats* out) {
  const SlabState* st = StateOf(ctx);
  out->free_chunks += st->free_count;
  out->free_bytes += st->free_count * st->stride;
  out->free_bytes += static_cast<size_t>(st->carve_end - st->carve);
  for (SlabBlock* b = st->spare; b != nullptr; b = b->next) {
    out->free_bytes += static_cast<size_t>(b->end - FirstSlot(b));
  }
}

// [START check]
bool SlabCheck(const Context* ctx, std::string* error) {
  const SlabState* st = StateOf(ctx);
  size_t blocks = 1;  // the first block
  size_t slots = 0;
  size_t marked_free = 0;
  for (SlabBlock* b = st->blocks; b != nullptr; b = b->next) {
    if (b->owner != ctx) {
      absl::StrAppendFormat(error, "slab '%s': block %p names another owner\n", ctx->name(),
                            static_cast<void*>(b));
      return false;
    }
    if (b != FirstBlock(ctx)) ++blocks;
    char* end = b == st->blocks ? st->carve : b->end;
    for (char* slot = FirstSlot(b); slot < end; slot += st->stride) {
      const uint64_t h = ReadChunkHeader(slot + kHeaderBytes);
      if (!ChunkHeaderMagicOk(h) || ChunkHeaderKind(h) != kChunkKindSlab ||
          ChunkHeaderIsExternal(h) || BlockOf(slot + kHeaderBytes, h) != b) {
        absl::StrAppendFormat(error, "slab '%s': slot %p has a corrupt header 0x%016x\n",
                              ctx->name(), static_cast<void*>(slot + kHeaderBytes), h);
        return false;
      }
      ++slots;
      if (ChunkHeaderIsFree(h)) ++marked_free;
    }
  }
  size_t listed = 0;
  for (void* p = st->free_slots; p != nullptr && listed <= slots; p = NextFree(p)) {
    const uint64_t h = ReadChunkHeader(p);
    if (!ChunkHeaderIsFree(h) || BlockOf(p, h)->owner != ctx) {
      absl::StrAppendFormat(error, "slab '%s': %p on the free list is not a free slot\n",
                            ctx->name(), p);
      return false;
    }
    ++listed;
  }
  if (listed != st->free_count || listed != marked_free) {
    absl::StrAppendFormat(error, "slab '%s': %d slots marked free, %d listed, %d counted\n",
                          ctx->name(), marked_free, listed, st->free_count);
    return false;
  }
  for (SlabBlock* b = st->spare; b != nullptr; b = b->next) ++blocks;
  for (SlabBlock* b = st->dedicated; b != nullptr; b = b->next) ++blocks;
  if (blocks != ctx->num_blocks()) {
    absl::StrAppendFormat(error, "slab '%s': %d blocks on the lists but %d accounted\n",
                          ctx->name(), blocks, ctx->num_blocks());
    return false;
  }
  return true;
}
// [END check]

// --- Chunks without a context (mcx::Free and friends) -----------------------------

// [START chunk_kind]
Context* SlabChunkContext(const void* p) {
  const uint64_t h = ReadChunkHeader(p);
  if (ChunkHeaderIsFree(h)) {
    ReportMisuse("chunk %p of a slab was already freed", p);
    return nullptr;
  }
  return BlockOf(p, h)->owner;
}

size_t SlabChunkSizeOf(const void* p) {
  Context* ctx = SlabChunkContext(p);
  return ctx != nullptr ? SlabChunkSize(ctx, p) : 0;
}

const ChunkKindMethods kSlabChunkMethods = {"slab", &SlabChunkContext, &SlabChunkSizeOf};
// [END chunk_kind]

// --- Creation ---------------------------------------------------------------------

// [START init]
size_t SlabFirstBlockSize(const void* options, size_t header_bytes, size_t /*learned*/) {
  const auto* o = static_cast<const SlabOptions*>(options);
  const size_t block = BlockBytes(*o);
  // Invalid options still get a block: init refuses them (kBadArgument).
  return header_bytes + (block != 0 ? block : kFirstSlotOffset);
}

size_t SlabFirstBlockAlignment(const void* /*options*/, size_t /*first_block_size*/) {
  return kMinBlockAlignment;
}

bool SlabInit(Context* ctx, const void* options, char* space, char* block_end) {
  const auto* o = static_cast<const SlabOptions*>(options);
  SlabState* st = StateOf(ctx);
  // Valid state first: a refused context is released through release_all.
  std::memset(static_cast<void*>(st), 0, sizeof(*st));
  if (BlockBytes(*o) == 0) {
    SetFailure(ctx, Failure::kBadArgument);
    return false;
  }
  st->stride = Stride(*o);
  st->slot_size = st->stride - kHeaderBytes;
  st->slots_per_block = o->slots_per_block;
  auto* first = reinterpret_cast<SlabBlock*>(space);
  first->owner = ctx;
  first->size = 0;  // released by the tree, with the context
  first->end = SlotsEnd(st, first);  // block_end may lie beyond it: slack
  if (first->end > block_end) {      // cannot happen: first_block_size made room
    SetFailure(ctx, Failure::kBadSize);
    return false;
  }
  StartCarving(st, first);
  RegisterChunkKind(kChunkKindSlab, &kSlabChunkMethods);  // idempotent
  return true;
}
// [END init]

// [START methods]
const KindMethods kSlabMethods = {
    /*name=*/"slab",
    /*state_size=*/sizeof(SlabState),
    /*state_alignment=*/alignof(SlabState),
    /*first_block_size=*/&SlabFirstBlockSize,
    /*first_block_alignment=*/&SlabFirstBlockAlignment,
    /*init=*/&SlabInit,
    /*alloc=*/&SlabAlloc,
    /*free=*/&SlabFree,
    /*realloc=*/&SlabRealloc,
    /*chunk_size=*/&SlabChunkSize,
    /*reset=*/&SlabReset,
    /*release_all=*/&SlabReleaseAll,
    /*stats=*/&SlabStats,
    /*check=*/&SlabCheck,
    /*inspect=*/nullptr,  // optional: no block detail in reports
    /*visit_live_chunks=*/nullptr,  // optional: no allocation sites (live_chunks.h)
};

}  // namespace

KindSpec SlabKind(const SlabOptions& options) { return KindSpec(&kSlabMethods, options); }
// [END methods]

}  // namespace examples
}  // namespace mcx
