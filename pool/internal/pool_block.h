// Internal to mcx; do not include from outside.
// IWYU pragma: private, include "mcx/pool/pool.h"
//
// The pool kind's block and state layout, shared by pool.cc and tests
// through ContextTestPeer. Drawn for a context with three blocks, the third
// current:
//
//   first block (holds the context)        block 2              block 3
//   +---------+-----------+------+----+    +-------+-----+--+   +-------+---+------+
//   | Context | PoolState | name | .. |    | Block | ... |  |   | Block |...|      |
//   +---------+-----------+------+----+    +-------+-----+--+   +-------+---+------+
//                  | first.next ---------->   next --------->        ^ last  ^ end
//                  | current ---------------------------------------/
//                  | large -> [chunk] <-> [chunk] <-> ...  (live large chunks)
//
// A large chunk (above max_small) fills a block of its own, with its
// LargeHeader right before the payload (aligned chunks: padding first):
//
//   | (padding) | LargeHeader ... check | payload ...  | sentinel (checking) |
//   ^ block                             ^ the chunk's address
//
// For the current block the context's bump window (bump_ptr, bump_end) is
// the authoritative `last`; pool.cc syncs it into the block before looking.

#ifndef MCX_POOL_INTERNAL_POOL_BLOCK_H_
#define MCX_POOL_INTERNAL_POOL_BLOCK_H_

#include <cstddef>
#include <cstdint>

#include "mcx/context/block_list.h"
#include "mcx/context/kind_api.h"

namespace mcx {

class Context;

namespace pool_internal {

struct PoolBlock {
  KindBlock link;     // first: the owner (validates rewind-mode lookups),
                      // the list (prev older, next newer) and the size
                      // acquired (0 for the first block, the context's)
  char* last;         // next free byte
  char* end;          // one past the last usable byte
  char* start;        // first usable byte (where a reset rewinds to)
  uint32_t failed;    // times a small request did not fit while this block
                      // was at or after `current`
  uint32_t live;      // live small chunks (rewind_on_free only)
};

inline PoolBlock* AsPoolBlock(KindBlock* b) { return reinterpret_cast<PoolBlock*>(b); }
inline const PoolBlock* AsPoolBlock(const KindBlock* b) {
  return reinterpret_cast<const PoolBlock*>(b);
}
// The next newer block, or nullptr.
inline PoolBlock* Newer(const PoolBlock* b) { return AsPoolBlock(b->link.next); }

// nginx's ngx_pool_large_t, kept in the large chunk's own block rather than
// in the pool's small memory: freeing the chunk leaves nothing behind, and
// Free finds it at a fixed distance before the chunk's address, in O(1).
struct LargeHeader {
  KindBlock link;     // the owner, the large list (prev newer, next older),
                      // and the bytes of the block: what goes back
  void* block;        // start of the block (before the padding of aligned chunks)
  size_t requested;   // bytes asked for; a sentinel follows in checking builds
  uint64_t serial;    // PoolState::large_serial when allocated or last
                      // reallocated: a rewind frees the chunks newer than
                      // its mark's
  // kLargeLiveCheck ^ the chunk's address while the chunk is live,
  // kLargeFreedCheck ^ it once freed. Last, so that it lies right before
  // the payload, past the bytes a source writes into a released block.
  uintptr_t check;
};

inline LargeHeader* AsLargeHeader(KindBlock* b) { return reinterpret_cast<LargeHeader*>(b); }
inline const LargeHeader* AsLargeHeader(const KindBlock* b) {
  return reinterpret_cast<const LargeHeader*>(b);
}

// Check words of a LargeHeader. Arbitrary 64-bit constants (ASCII "mcxLARGE"
// and "mcxFREED"); mixed with the chunk's address, so that a header copied
// elsewhere (a block copied whole, user data holding a header) does not
// validate at its new address. Large chunks are 16-aligned, so the word's
// low four bits are the constant's: read by mcx::Free as a chunk header,
// they name a reserved kind id (5 and 4), and the pointer is refused.
inline constexpr uintptr_t kLargeLiveCheck = 0x6D63784C41524745;
inline constexpr uintptr_t kLargeFreedCheck = 0x6D63784652454544;

// Checking builds put this at the start of every small region; the chunk's
// header word (chunk_header.h, kind kChunkKindPoolChecking) sits right
// before the payload and a sentinel byte right after the requested bytes.
// Regions lie back to back (16-aligned), so a block can be walked.
struct CheckedHeader {
  size_t region;            // bytes of the region: the walk steps by it
  size_t requested;         // bytes the caller asked for
  Context* owner;
  uint32_t payload_offset;  // from the region's start to the payload
  uint32_t site;            // where it was allocated (kind_api.h, PendingSite)
};

// Checking builds keep a large chunk's site (kind_api.h, PendingSite) in
// the 4 bytes right after its sentinel (pool.cc, kLargeCheckingTail).

struct PoolState {
  PoolBlock first;     // header of the first block
  BlockList blocks;    // oldest first (usually `first`); new blocks at the end
  PoolBlock* current;  // where small requests start looking
  // The block of the most recent small allocation: the context's bump window
  // serves it, and its `last` lives in the window until Sync. It is not
  // `current`: with growing blocks, `current` can sit on a nearly full block
  // for a while (it moves on only after more than kMaxFailures new blocks),
  // and a window there would send nearly every request down the slow path.
  PoolBlock* window;
  BlockList large;     // live large chunks' headers, newest (allocated or
                       // reallocated) first: serials decrease
  size_t max_small;        // bytes; larger requests go to the large list
  size_t next_block_size;  // bytes of the next block; doubles up to max
  size_t max_block_size;
  size_t rewind_block_size;  // power of two; 0 when rewind_on_free is off
  size_t chunk_alignment;    // of small chunks of odd sizes (PoolOptions)
  // Bytes bumped for small chunks (alignment padding included) and bytes of
  // live large chunks, as of each block's `last`: the window block's bytes
  // bumped inline since the last Sync are added when read (PoolImpl::Live)
  // and folded in by Sync, so the inline path counts nothing.
  LiveTally live;
  uint64_t large_serial;     // large chunks allocated or reallocated so far
};

// A savepoint's position (Context::Mark). Marking seals the pool at `block`:
// small requests start there (it becomes `current`), so everything bumped
// since lies past `last` in it or in the blocks after it, and everything
// else since is a block after `tail` or a large chunk newer than
// `large_serial`.
struct PoolPosition {
  PoolBlock* block;        // the newest block holding chunks at the mark
  char* last;              // its next free byte then
  KindBlock* tail;         // the newest block on the list then
  uint64_t large_serial;
  size_t next_block_size;
  uint32_t failed;         // `block`'s
};

}  // namespace pool_internal
}  // namespace mcx

#endif  // MCX_POOL_INTERNAL_POOL_BLOCK_H_
