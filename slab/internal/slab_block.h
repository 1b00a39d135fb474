// Internal to mcx; do not include from outside.
// IWYU pragma: private, include "mcx/slab/slab.h"
//
// Layout of the slab kind. The context's first block holds only the context
// header, the SlabState and the name (slab.c has no keeper block either):
// every block of objects can go back to the source when it empties.
//
// A block of objects is `block_size` bytes, aligned to `block_size`:
//
//   | SlabBlock (64) | live bitmap | pad | slot 0 | slot 1 | ... | slot n-1 | tail |
//   ^ block = object address & ~(block_size - 1)
//
// A slot is `stride` bytes; the object sits `object_offset` bytes into it:
//
//   release, no constructor:  | object (the free list's link in its first 8 bytes when free) | pad |
//   with a constructor:       | object | pad | link |                (the object keeps its state)
//   checking builds:          | site | chunk header word | object | sentinel | pad | (link) |
//
// Each block keeps its own free list (LIFO, linked through free slots) and
// an `unused` pointer below which every slot has been used once: a new block
// needs no pass over its slots (slab.c). The bitmap has one bit per slot, set
// while the object is allocated: it catches a double free in every build.
//
// A dedicated chunk (SlabLarger::kDedicatedBlock) fills a block of its own,
// aligned to `block_size` as well, with a DedicatedBlock header and a chunk
// header word (id kChunkKindSlab, external) right before the chunk:
//
//   | DedicatedBlock (64) | pad | header word | chunk ... | sentinel (checking) |
//
// A chunk aligned to `block_size` or more sits at a multiple of
// `block_size` (no object ever does: slot 0 follows the block header), so
// its block is found from its header word instead of its address.

#ifndef MCX_SLAB_INTERNAL_SLAB_BLOCK_H_
#define MCX_SLAB_INTERNAL_SLAB_BLOCK_H_

#include <cstddef>
#include <cstdint>

#include "mcx/context/block_list.h"
#include "mcx/context/remote_free.h"
#include "mcx/slab/slab.h"

namespace mcx {
namespace slab_internal {

// What a block is, in its `role` word. Arbitrary 32-bit constants ("SLOT",
// "DEDI", "FREE"), so that a stale or foreign block rarely reads as one.
inline constexpr uint32_t kRoleSlots = 0x534C4F54;
inline constexpr uint32_t kRoleDedicated = 0x44454449;
// A dedicated block released with its chunk freed: past the bytes a source
// writes into a released block, so a second free reads it while the memory
// is not reused.
inline constexpr uint32_t kRoleFreed = 0x46524545;

struct SlabBlock {
  KindBlock link;    // first: owner, the links of its list, bytes acquired
  char* free_head;   // the object of the first slot on the free list, or nullptr
  char* unused;      // the object of the first never-used slot
  uint32_t nfree;    // free slots: on the free list, or never used
  uint32_t nunused;  // never-used slots (from `unused` to the last slot)
  uint32_t role;     // kRoleSlots
  uint32_t reserved;
  // The live bitmap follows: SlabState::bitmap_words 64-bit words.
};

struct DedicatedBlock {
  KindBlock link;      // first: owner, the dedicated list, bytes acquired
  char* chunk;         // the chunk's address
  size_t requested;    // bytes asked for
  uint64_t reserved0;
  uint32_t role;       // kRoleDedicated, kRoleFreed once freed
  uint32_t site;       // checking builds: the chunk's allocation site (SiteId)
};

static_assert(sizeof(SlabBlock) == 64 && sizeof(DedicatedBlock) == 64, "one cache line");
static_assert(offsetof(SlabBlock, role) == offsetof(DedicatedBlock, role),
              "a block's role is read before its type is known");

// Number of lists blocks are kept on by their free slots (slab.c's
// SLAB_BLOCKLIST_COUNT): 0 holds full blocks; higher lists hold blocks with
// more free slots. Few lists mean few moves between them.
inline constexpr int kBlocklistCount = 3;

struct SlabState {
  BlockList blocklist[kBlocklistCount];  // blocks with objects, by free slots
  BlockList empty;       // empty blocks kept for reuse
  BlockList dedicated;   // dedicated chunks' blocks, newest first
  uint32_t cur;          // lowest non-empty blocklist above 0; 0: none
  uint32_t shift;        // nfree >> shift (rounded up) is a block's list
  uint32_t list_mask;    // 2^shift - 1: nfree & list_mask == 0 at a list's bottom
  size_t block_size;     // a power of two: every block's size and alignment
  size_t object_size;    // usable bytes of an object
  size_t stride;         // bytes from one slot to the next
  size_t first_object;   // offset of slot 0's object from its block
  size_t link_offset;    // offset of a free slot's link from its object
  size_t slots_bytes;    // capacity * stride
  uint64_t div_magic;    // Lemire's constant: offset / stride by a multiply
  uint32_t capacity;     // slots per block
  uint32_t bitmap_words;
  uint32_t alignment;    // of every object (at least 8)
  uint16_t keep_empty_blocks;
  SlabLarger larger;
  bool finalizing;       // running live cleanups and destructors (a reset)
  SlabObjectFn constructor;
  SlabObjectFn destructor;
  SlabObjectFn live_cleanup;
  void* arg;
  // Objects and dedicated chunks freed by other threads, waiting for the
  // owner (remote_free.h).
  RemoteFreeList remote;
  // Bytes in live objects (object_size each) and dedicated chunks (their
  // capacity), for Live: an object waiting on `remote` is live until the
  // owner takes it back.
  LiveTally live;
};

inline SlabBlock* AsSlabBlock(KindBlock* b) { return reinterpret_cast<SlabBlock*>(b); }
inline const SlabBlock* AsSlabBlock(const KindBlock* b) {
  return reinterpret_cast<const SlabBlock*>(b);
}
inline DedicatedBlock* AsDedicated(KindBlock* b) { return reinterpret_cast<DedicatedBlock*>(b); }
inline const DedicatedBlock* AsDedicated(const KindBlock* b) {
  return reinterpret_cast<const DedicatedBlock*>(b);
}

// The live bitmap of a block of objects.
inline uint64_t* Bitmap(SlabBlock* b) { return reinterpret_cast<uint64_t*>(b + 1); }
inline const uint64_t* Bitmap(const SlabBlock* b) {
  return reinterpret_cast<const uint64_t*>(b + 1);
}

// The object of slot `i` of `b`.
inline char* ObjectAt(const SlabState* st, const SlabBlock* b, size_t i) {
  return const_cast<char*>(reinterpret_cast<const char*>(b)) + st->first_object + i * st->stride;
}

}  // namespace slab_internal
}  // namespace mcx

#endif  // MCX_SLAB_INTERNAL_SLAB_BLOCK_H_
