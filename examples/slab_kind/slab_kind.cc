// The slab kind: the worked example of docs/adding_a_kind.md, written on the
// kind API alone (mcx/context/kind_api.h and block_list.h; no
// mcx/context/internal/ header, which //examples/slab_kind:kind_api_only_test
// checks). The document quotes the sections below.
//
// Layout. Every block, the context's first block included, starts with a
// SlabBlock whose first word is the owning context (its KindBlock); slots
// follow back to back, each an 8-byte chunk header and then the slot. A chunk
// header's offset leads back to its SlabBlock, which is how `mcx::Free(p)`
// finds the context.
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
#include <new>
#include <string>

#include "absl/base/attributes.h"
#include "absl/strings/str_format.h"
#include "mcx/context/block_list.h"
#include "mcx/context/context.h"
#include "mcx/context/inspect.h"
#include "mcx/context/kind_api.h"

namespace mcx {
namespace examples {
namespace {

constexpr bool kChecking = kCheckingBuild;

// [START layout]
struct SlabBlock {
  KindBlock link;  // first: its owner word is where chunk headers lead
  char* end;       // one past the last slot, or the dedicated chunk's end
};

SlabBlock* SlabOf(KindBlock* b) { return reinterpret_cast<SlabBlock*>(b); }

struct SlabState {
  void* free_slots;      // payload of the slot freed last; LIFO
  size_t free_count;     // slots on that list
  BlockList blocks;      // blocks with slots, newest (being carved) first
  BlockList spare;       // empty blocks a KeepBytes reset kept
  BlockList dedicated;   // one chunk each
  SlabBlock* first;      // the first block's SlabBlock (after the name)
  char* carve;           // next never-used slot of `blocks.head()`, its header
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

// A released block's first bytes may be written by its source (the caching
// source's node, glibc's free-list words: 32 bytes at most). A dedicated
// chunk's header lies past them, so the free bit it gets at its release is
// still there for a second free to read while the memory is not reused.
static_assert(kFirstSlotOffset >= 32, "a freed dedicated chunk's header must survive");
// [END layout]

char* FirstSlot(SlabBlock* b) { return reinterpret_cast<char*>(b) + kFirstSlotOffset; }
char* FirstSlot(KindBlock* b) { return FirstSlot(SlabOf(b)); }

SlabBlock* BlockOf(const void* p, uint64_t h) {
  return reinterpret_cast<SlabBlock*>(const_cast<char*>(static_cast<const char*>(p)) -
                                      kHeaderBytes - ChunkHeaderOffset(h));
}

size_t Stride(const SlabOptions& o) { return RoundUp16(o.slot_size + kHeaderBytes); }

// Bytes of a block with `slots_per_block` slots; 0 if the options are out of
// range (so nothing below overflows).
size_t BlockBytes(const SlabOptions& o) {
  if (o.slot_size > kMaxSlotSize || o.slots_per_block == 0 ||
      o.slots_per_block > (kMaxSlabBlockBytes - kFirstSlotOffset) / Stride(o)) {
    return 0;
  }
  return kFirstSlotOffset + o.slots_per_block * Stride(o);
}

// The next slot on the free list. The link lives in the freed slot, which is
// poisoned under ASan: read it past the poison.
void* NextFree(const void* p) {
  void* next;
  CopyFromPoisoned(&next, p, sizeof(next));
  return next;
}

// Every block holds exactly `slots_per_block` slots. A source's slack past
// them is left unused: predictable blocks are the point of a slab.
char* SlotsEnd(const SlabState* st, SlabBlock* b) {
  return FirstSlot(b) + st->slots_per_block * st->stride;
}

// Makes `b` the block being carved: its slot space is all unused.
void StartCarving(SlabState* st, KindBlock* b) {
  st->blocks.PushFront(b);
  st->carve = FirstSlot(b);
  st->carve_end = SlabOf(b)->end;
  PoisonMemoryRegion(st->carve, static_cast<size_t>(st->carve_end - st->carve));
}

// --- Allocation -------------------------------------------------------------------

// [START alloc]
void* CarveSlot(SlabState* st) {
  char* payload = st->carve + kHeaderBytes;
  const auto* b = reinterpret_cast<const char*>(st->blocks.head());
  WriteChunkHeader(payload, MakeChunkHeader(kChunkKindSlab, /*external=*/false, /*value=*/0,
                                            static_cast<uint64_t>(st->carve - b)));
  st->carve += st->stride;
  return payload;
}

// Out of line: taken once per `slots_per_block` allocations at most.
ABSL_ATTRIBUTE_NOINLINE void* SlotFromNewBlock(Context* ctx, SlabState* st) {
  KindBlock* b = st->spare.head();
  if (b != nullptr) {
    st->spare.Remove(b);  // kept by a reset: no block source call
  } else {
    b = AcquireKindBlock(ctx, kFirstSlotOffset + st->slots_per_block * st->stride,
                         kMinBlockAlignment);
    if (b == nullptr) return nullptr;  // the ledger recorded why
    SlabOf(b)->end = SlotsEnd(st, SlabOf(b));
  }
  StartCarving(st, b);
  return CarveSlot(st);
}

// A chunk larger than a slot: a block of its own, on the dedicated list.
void* AllocDedicated(Context* ctx, SlabState* st, size_t size) {
  KindBlock* b = AcquireKindBlock(ctx, kPayloadOffset + size, kMinBlockAlignment);
  if (b == nullptr) return nullptr;
  char* mem = reinterpret_cast<char*>(b);
  SlabOf(b)->end = mem + b->size;
  st->dedicated.PushFront(b);
  char* payload = mem + kPayloadOffset;
  WriteChunkHeader(payload, MakeChunkHeader(kChunkKindSlab, /*external=*/true, 0,
                                            kFirstSlotOffset));
  UnpoisonMemoryRegion(payload, b->size - kPayloadOffset);
  return payload;
}

void* SlabAlloc(Context* ctx, SlabState* st, size_t size, size_t alignment) {
  // Over-aligned requests: a bigger chunk and a redirect header inside it.
  if (alignment > kDefaultAlignment) return AllocAlignedRedirect(ctx, size, alignment);
  // Direct mode: every request a block of its own (nginx's NGX_DEBUG_PALLOC).
  if (kDirectBuild || size > st->slot_size) return AllocDedicated(ctx, st, size);
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
// Whether `b`, the block a dedicated chunk's header leads to, is a live
// dedicated block of `ctx` (block_list.h: HoldsBlockOf trusts nothing in a
// block before its owner word and its links place it on the list, in O(1)).
bool IsLiveDedicated(const Context* ctx, const SlabState* st, const SlabBlock* b) {
  return st->dedicated.HoldsBlockOf(ctx, &b->link);
}

// The block goes back with its chunk's free bit set: a second free, a
// realloc or an mcx::Free of the chunk reads it and reports a double free
// for as long as the memory is not reused.
void ReleaseDedicatedBlock(Context* ctx, KindBlock* b) {
  char* payload = reinterpret_cast<char*>(b) + kPayloadOffset;
  WriteChunkHeader(payload, ReadChunkHeader(payload) | kChunkFreeBit);
  ReleaseKindBlock(ctx, b);
}

void SlabFree(Context* ctx, SlabState* st, void* p) {
  const uint64_t h = ReadChunkHeader(p);
  if (!ChunkHeaderMagicOk(h)) return ReportBadChunk(p, "free");
  if (ChunkHeaderKind(h) == kChunkKindAlignedRedirect) {
    return SlabFree(ctx, st, AlignedRedirectTarget(p));
  }
  if (ChunkHeaderKind(h) != kChunkKindSlab) return ReportBadChunk(p, "free");
  if (ChunkHeaderIsFree(h)) {
    return ReportMisuse("double free of chunk %p in slab '%s'", p, ctx->name());
  }
  SlabBlock* b = BlockOf(p, h);
  if (ChunkHeaderIsExternal(h)) {  // a dedicated block goes back at once
    if (!IsLiveDedicated(ctx, st, b)) {
      return ReportMisuse("free of chunk %p through slab '%s': not a live dedicated chunk of "
                          "this slab (already freed, of another context, or its memory reused)",
                          p, ctx->name());
    }
    st->dedicated.Remove(&b->link);
    return ReleaseDedicatedBlock(ctx, &b->link);
  }
  // A slot with a live header: its block stays with its context until a
  // reset, so its owner can be named.
  if (b->link.owner != ctx) {
    return ReportMisuse("free of chunk %p through slab '%s', but it belongs to '%s'", p,
                        ctx->name(), b->link.owner->name());
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
  if (!IsLiveDedicated(ctx, st, b)) {
    ReportMisuse("realloc of chunk %p through slab '%s': not a live dedicated chunk of this slab",
                 p, ctx->name());
    SetFailure(ctx, Failure::kBadArgument);
    return nullptr;
  }
  const size_t size = b->link.size;
  const size_t usable = size - kPayloadOffset;
  const size_t keep = kPayloadOffset + (usable < new_size ? usable : new_size);
  // If the block moves, the old one goes back to the source marked freed, as
  // a free leaves it; the copy carries the bit along, and loses it below.
  WriteChunkHeader(p, h | kChunkFreeBit);
  // The source may copy `keep` bytes itself: none of them may be poisoned.
  UnpoisonMemoryRegion(b, size);
  Block nb = ReallocateBlock(ctx, Block{b, size}, keep, kPayloadOffset + new_size,
                             kMinBlockAlignment);
  if (nb.ptr == nullptr) {
    WriteChunkHeader(p, h);  // the old chunk is untouched
    return nullptr;
  }
  auto* moved = static_cast<SlabBlock*>(nb.ptr);
  moved->link.size = nb.size;
  moved->end = static_cast<char*>(nb.ptr) + nb.size;
  st->dedicated.Replace(&moved->link);  // the copy's links name the old neighbours
  char* payload = static_cast<char*>(nb.ptr) + kPayloadOffset;
  WriteChunkHeader(payload, h);
  UnpoisonMemoryRegion(payload, nb.size - kPayloadOffset);  // a source's block may come poisoned
  return payload;
}

void* SlabRealloc(Context* ctx, SlabState* st, void* p, size_t old_size, size_t new_size) {
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
  std::memcpy(q, p, old_size < st->slot_size ? old_size : st->slot_size);
  SlabFree(ctx, st, p);
  return q;
}

size_t SlabChunkSize(const SlabState* st, const void* p) {
  const uint64_t h = ReadChunkHeader(p);
  if (ChunkHeaderKind(h) == kChunkKindAlignedRedirect) return GetChunkSize(p);
  if (ChunkHeaderIsExternal(h)) return BlockOf(p, h)->link.size - kPayloadOffset;
  return st->slot_size;
}

// --- Reset and release ------------------------------------------------------------

// Every slot of `b` becomes unused: checking builds clobber what was there
// (a stale pointer then reads 0x7F), ASan builds poison it.
void EmptyBlock(KindBlock* kb) {
  char* from = FirstSlot(kb);
  const size_t bytes = static_cast<size_t>(SlabOf(kb)->end - from);
  if (kChecking) {
    UnpoisonMemoryRegion(from, bytes);
    std::memset(from, kClobberByte, bytes);
  }
  PoisonMemoryRegion(from, bytes);
}

// [START reset]
void ReleaseDedicated(Context* ctx, SlabState* st) {
  st->dedicated.ForEach([ctx](KindBlock* b) { ReleaseDedicatedBlock(ctx, b); });
  st->dedicated.Clear();
}

// ResetBlocks (block_list.h) reads the reset modes as every kind does:
// blocks are kept, in order, while ResetOptions::KeepsBlock says so, and
// the others released; the first block is the tree's and always stays.
void SlabReset(Context* ctx, SlabState* st, const ResetOptions& options) {
  ReleaseDedicated(ctx, st);
  st->free_slots = nullptr;
  st->free_count = 0;
  KindBlock* first = &st->first->link;
  BlockList kept;
  const size_t bytes =
      ResetBlocks(ctx, &st->blocks, options, ctx->first_block_size(), &kept, first);
  ResetBlocks(ctx, &st->spare, options, bytes, &kept, first);
  kept.ForEach(EmptyBlock);
  st->spare = kept;
  EmptyBlock(first);
  StartCarving(st, first);
}

void SlabReleaseAll(Context* ctx, SlabState* st) {
  ReleaseDedicated(ctx, st);
  ReleaseBlocks(ctx, &st->blocks, /*keep=*/&st->first->link);  // the tree releases it
  ReleaseBlocks(ctx, &st->spare);
}
// [END reset]

// --- Stats and check ----------------------------------------------------------------

void SlabStats(const SlabState* st, KindStats* out) {
  out->free_chunks += st->free_count;
  out->free_bytes += st->free_count * st->stride;
  out->free_bytes += static_cast<size_t>(st->carve_end - st->carve);
  st->spare.ForEach([out](KindBlock* b) {
    out->free_bytes += static_cast<size_t>(SlabOf(b)->end - FirstSlot(b));
  });
}

// [START check]
bool SlabCheck(const Context* ctx, const SlabState* st, std::string* error) {
  bool ok = true;
  auto fail = [&](const std::string& what) {
    if (ok) absl::StrAppendFormat(error, "slab '%s': %s\n", ctx->name(), what);
    ok = false;
  };
  size_t slots = 0;
  size_t marked_free = 0;
  for (const BlockList* list : {&st->blocks, &st->spare, &st->dedicated}) {
    list->ForEach([&](KindBlock* b) {
      if (ok && (b->owner != ctx || !list->Holds(b))) {
        fail(absl::StrFormat("block %p names another owner or has a broken link",
                             static_cast<void*>(b)));
      }
    });
  }
  st->blocks.ForEach([&](KindBlock* b) {
    char* end = b == st->blocks.head() ? st->carve : SlabOf(b)->end;
    for (char* slot = FirstSlot(b); ok && slot < end; slot += st->stride) {
      const uint64_t h = ReadChunkHeader(slot + kHeaderBytes);
      if (!ChunkHeaderMagicOk(h) || ChunkHeaderKind(h) != kChunkKindSlab ||
          ChunkHeaderIsExternal(h) || &BlockOf(slot + kHeaderBytes, h)->link != b) {
        fail(absl::StrFormat("slot %p has a corrupt header 0x%016x",
                             static_cast<void*>(slot + kHeaderBytes), h));
      }
      ++slots;
      if (ChunkHeaderIsFree(h)) ++marked_free;
    }
  });
  st->dedicated.ForEach([&](KindBlock* b) {
    const uint64_t h = ReadChunkHeader(reinterpret_cast<char*>(b) + kPayloadOffset);
    if (ok && (!ChunkHeaderMagicOk(h) || !ChunkHeaderIsExternal(h) || ChunkHeaderIsFree(h))) {
      fail(absl::StrFormat("dedicated block %p has a corrupt chunk header 0x%016x",
                           static_cast<void*>(b), h));
    }
  });
  if (!ok) return false;
  size_t listed = 0;
  for (void* p = st->free_slots; p != nullptr && listed <= slots; p = NextFree(p)) {
    const uint64_t h = ReadChunkHeader(p);
    if (!ChunkHeaderIsFree(h) || BlockOf(p, h)->link.owner != ctx) {
      fail(absl::StrFormat("%p on the free list is not a free slot", p));
      return false;
    }
    ++listed;
  }
  if (listed != st->free_count || listed != marked_free) {
    fail(absl::StrFormat("%d slots marked free, %d listed, %d counted", marked_free, listed,
                         st->free_count));
    return false;
  }
  // A block acquired and lost shows here: the lists against the ledger.
  const size_t blocks = st->blocks.count() + st->spare.count() + st->dedicated.count();
  if (blocks != ctx->num_blocks()) {
    fail(absl::StrFormat("%d blocks on the lists but %d accounted", blocks, ctx->num_blocks()));
  }
  return ok;
}
// [END check]

// --- Inspect ----------------------------------------------------------------------

// [START inspect]
// A block of slots, as inspect.h counts its bytes: headers up to the first
// slot's chunk header; free bytes, the never-used slots from `last` to
// `end`; freelist bytes, the slots marked free; used bytes, the rest (live
// slots with their chunk headers, and the source's slack past the last slot).
BlockInfo DescribeSlots(const Context* ctx, const SlabState* st, KindBlock* b, BlockRole role) {
  const bool first = role == BlockRole::kFirst;
  // The first block's header is the context's, at the block's start.
  const char* base = first ? reinterpret_cast<const char*>(ctx) : reinterpret_cast<char*>(b);
  char* last = SlabOf(b)->end;  // a full block
  if (role == BlockRole::kSpare) {
    last = FirstSlot(b);
  } else if (b == st->blocks.head()) {
    last = st->carve;
  }
  BlockInfo info;
  info.start = base;
  info.size = first ? ctx->first_block_size() : b->size;
  info.header_bytes = static_cast<size_t>(FirstSlot(b) - base);
  info.last_offset = static_cast<size_t>(last - base);
  info.end_offset = static_cast<size_t>(SlabOf(b)->end - base);
  info.free_bytes = info.end_offset - info.last_offset;
  info.role = role;
  info.current = b == st->blocks.head();
  for (char* slot = FirstSlot(b); slot < last; slot += st->stride) {
    if (ChunkHeaderIsFree(ReadChunkHeader(slot + kHeaderBytes))) {
      info.freelist_bytes += st->stride;
      ++info.freelist_chunks;
    }
  }
  info.used_bytes = info.size - info.header_bytes - info.free_bytes - info.freelist_bytes;
  return info;
}

// The blocks of slots oldest first (the first block, then the others in the
// order they were acquired; the newest is the one being carved), the spare
// blocks, the dedicated blocks newest first; then the one size class, the
// slot, with its free list, head first.
void SlabInspect(const Context* ctx, const SlabState* st, InspectVisitor* visitor) {
  for (KindBlock* b = st->blocks.tail(); b != nullptr; b = b->prev) {
    visitor->VisitBlock(DescribeSlots(
        ctx, st, b, b == &st->first->link ? BlockRole::kFirst : BlockRole::kNormal));
  }
  st->spare.ForEach([&](KindBlock* b) {
    visitor->VisitBlock(DescribeSlots(ctx, st, b, BlockRole::kSpare));
  });
  st->dedicated.ForEach([&](KindBlock* b) {
    BlockInfo info;
    info.start = b;
    info.size = b->size;
    info.header_bytes = kPayloadOffset;  // block header and chunk header
    info.used_bytes = b->size - kPayloadOffset;
    info.last_offset = info.end_offset = b->size;
    info.role = BlockRole::kOversize;
    info.label = "dedicated";
    visitor->VisitBlock(info);
  });
  SizeClassInfo slot;
  slot.class_bytes = st->slot_size;
  slot.chunk_bytes = st->stride;
  slot.free_chunks = st->free_count;
  visitor->VisitSizeClass(slot);
  for (void* p = st->free_slots; p != nullptr; p = NextFree(p)) visitor->VisitFreeChunk(slot, p);
}
// [END inspect]

// --- Chunks without a context (mcx::Free and friends) -----------------------------

// [START chunk_kind]
Context* SlabChunkContext(const void* p) {
  const uint64_t h = ReadChunkHeader(p);
  if (ChunkHeaderIsFree(h)) {
    ReportMisuse("chunk %p of a slab was already freed", p);
    return nullptr;
  }
  return BlockOf(p, h)->link.owner;
}

size_t SlabChunkSizeOf(const void* p) {
  Context* ctx = SlabChunkContext(p);
  return ctx != nullptr ? SlabChunkSize(KindState<SlabState>(ctx), p) : 0;
}

const ChunkKindMethods kSlabChunkMethods = {"slab_example", &SlabChunkContext, &SlabChunkSizeOf};
// [END chunk_kind]

// --- The kind -----------------------------------------------------------------------

// [START kind]
// The kind, for MakeKindMethods (kind_api.h): a class of static members,
// each checked against its signature at compile time.
struct Slab {
  using Options = SlabOptions;
  using State = SlabState;
  static constexpr const char* kName = "slab_example";

  static size_t FirstBlockSize(const Options& o, size_t header_bytes) {
    const size_t block = BlockBytes(o);
    // Invalid options still get a block: Init refuses them (kBadArgument).
    return header_bytes + (block != 0 ? block : kFirstSlotOffset);
  }

  static bool Init(Context* ctx, State* st, const Options& o, char* space, char* block_end) {
    new (st) State();  // valid first: a refused context is released through ReleaseAll
    auto* first = reinterpret_cast<SlabBlock*>(space);
    first->link.owner = ctx;
    first->link.size = 0;  // the tree releases the first block
    st->first = first;
    // RegisterChunkKind refuses an id that another kind holds (and reports it).
    if (BlockBytes(o) == 0 || !RegisterChunkKind(kChunkKindSlab, &kSlabChunkMethods)) {
      SetFailure(ctx, Failure::kBadArgument);
      return false;
    }
    st->stride = Stride(o);
    st->slot_size = st->stride - kHeaderBytes;
    st->slots_per_block = o.slots_per_block;
    first->end = SlotsEnd(st, first);  // block_end may lie beyond it: slack
    if (first->end > block_end) {      // cannot happen: FirstBlockSize made room
      SetFailure(ctx, Failure::kBadSize);
      return false;
    }
    StartCarving(st, &first->link);
    return true;
  }

  static void* Alloc(Context* ctx, State* st, size_t size, size_t alignment) {
    return SlabAlloc(ctx, st, size, alignment);
  }
  static void Free(Context* ctx, State* st, void* p) { SlabFree(ctx, st, p); }
  static void* Realloc(Context* ctx, State* st, void* p, size_t old_size, size_t new_size) {
    return SlabRealloc(ctx, st, p, old_size, new_size);
  }
  static size_t ChunkSize(const Context*, const State* st, const void* p) {
    return SlabChunkSize(st, p);
  }
  static void Reset(Context* ctx, State* st, const ResetOptions& options) {
    SlabReset(ctx, st, options);
  }
  static void ReleaseAll(Context* ctx, State* st) { SlabReleaseAll(ctx, st); }
  static void Stats(const Context*, const State* st, KindStats* out) { SlabStats(st, out); }
  static bool Check(const Context* ctx, const State* st, std::string* error) {
    return SlabCheck(ctx, st, error);
  }
  static void Inspect(const Context* ctx, const State* st, InspectVisitor* visitor) {
    SlabInspect(ctx, st, visitor);
  }
};

constexpr KindMethods kSlabMethods = MakeKindMethods<Slab>();

}  // namespace

KindSpec SlabKind(const SlabOptions& options) { return KindSpec(&kSlabMethods, options); }
// [END kind]

}  // namespace examples
}  // namespace mcx
