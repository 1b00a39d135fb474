// Internal to mcx; do not include from outside.
// IWYU pragma: private, include "mcx/freelist/freelist.h"
//
// Layout of the freelist kind.
//
// A block of chunks is a header, one descriptor per unit, then the units:
// runs of kUnitBytes (4 KiB, on page boundaries, the first one short) into
// which chunks are carved back to back. A chunk may straddle a unit
// boundary; it belongs to the unit its first byte lies in. The chunk
// header's offset leads to that unit's descriptor, the descriptor's index
// to the block header, whose first word is the owning context: that is how
// a chunk finds its context without being told.
//
//   block:  | BlockHeader | UnitDesc x units | unit 0 | unit 1 | ... |
//                                            ^ short: unit 1 starts on a page
//   unit:   | (tail of a chunk begun before) | hdr | payload | hdr | payload ...
//                                              ^ 8-byte word, offset back to
//                                                this unit's UnitDesc
//   freed:  | hdr (free bit set) | next free chunk of the class | stale ... |
//
// A unit is free (its bit set in `free_units`) or holds chunks. Units go
// back to their block when every chunk overlapping them is free (a sweep
// finds them); a block whose units are all free goes back to the block
// source, keeping a few as spares. Runs of free units in blocks that stay
// have their whole pages purged (given back to the system through the
// block source) by sweeps, and are marked kUnitPurged.
//
// The first block holds the context header, the kind state and the name;
// after them a BlockHeader with a single descriptor covers the rest of the
// first block, one area of any size that is never given back.
//
// A dedicated chunk's block starts with a DedicatedHeader; its chunk header
// has the external bit, and its offset leads to the block itself.
//
// In checking builds every chunk header is 16 bytes: the requested size,
// then the header word; a sentinel byte follows the requested bytes.

#ifndef MCX_FREELIST_INTERNAL_FREELIST_BLOCK_H_
#define MCX_FREELIST_INTERNAL_FREELIST_BLOCK_H_

#include <cstddef>
#include <cstdint>

#include "mcx/context/block_list.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/remote_free.h"
#include "mcx/freelist/size_class.h"

namespace mcx {

class Context;

namespace freelist_internal {

// Bytes of a unit: the granularity at which a block's space is reused by
// other sizes and given back. An operating-system page, so a block of
// mostly free units is one whose free pages a source could give back.
inline constexpr size_t kUnitBytes = 4096;
inline constexpr unsigned kUnitShift = 12;
static_assert(kUnitBytes == size_t{1} << kUnitShift, "unit shift");

// Units in the largest block of chunks: one 64-bit map of free units. A
// block goes back only when all its units are free, so blocks stay small
// (256 KiB of units) next to PostgreSQL's 8 MiB.
inline constexpr unsigned kMaxBlockUnits = 64;

// `first` of a unit in which no chunk starts.
inline constexpr uint16_t kNoChunkStart = 0xFFFF;

// One per unit of a block. 12 bytes: 768 for a block of 64 units.
struct UnitDesc {
  uint32_t starts;      // chunks whose first byte lies in the unit (live or free)
  uint32_t sweep_free;  // a sweep's count of free chunks starting here; 0 between sweeps
  uint16_t first;       // offset of the first chunk start from UnitBase, or kNoChunkStart
  uint8_t index;        // this descriptor's place in its block's array
  uint8_t flags;        // kUnitReleasing, kStraddledInto, kMostlyFree, kUnitPurged,
                        // kUnitParking, kTrimTail
};
static_assert(sizeof(UnitDesc) == 12, "unit descriptors are packed");

// UnitDesc::flags.
inline constexpr uint8_t kUnitReleasing = 1;   // a sweep gives the unit back
inline constexpr uint8_t kStraddledInto = 2;   // a chunk begun in an earlier unit runs into it
inline constexpr uint8_t kMostlyFree = 4;      // a sweep coalesces its free chunks
// A free unit whose pages went to the block source's Purge (freelist.cc,
// PurgeFreeUnits). Meaningful only while the unit is free: a unit given
// back by a sweep or a reset gets a fresh descriptor, and a unit a run took
// but never reached goes back untouched, still purged.
inline constexpr uint8_t kUnitPurged = 8;
// The unit is parked: sparse in a context whose live data shrank, its free
// chunks wait on the parked lists (freelist.cc, "Parking") so that it
// drains rather than being refilled. Set and cleared by sweeps; cleared
// when the parked chunks go back to the lists.
inline constexpr uint8_t kUnitParking = 16;
// During a sweep: the unit's last chunk, free, runs into the next unit,
// which goes back; the chunk is cut at this unit's end (freelist.cc,
// TrimTail).
inline constexpr uint8_t kTrimTail = 32;

// Which list of the kind state a block of chunks is on.
enum class OnList : uint8_t { kNone, kPartial, kFull, kSpare };

// A block of chunks, or the first block's area. `link.owner` is its first
// word (block_list.h): the descriptors lead here.
struct BlockHeader {
  KindBlock link;          // must stay the first field
  uint64_t free_units;     // bit i set: unit i holds no chunk
  uint64_t touched_units;  // during a sweep, bit i set: free chunks start in unit i
  uint8_t units;           // units in the block; 0 for the first block's area
  OnList list;             // the state's list it is on
  uint8_t marked;          // during a sweep: units are marked (FinishBlock clears)
  uint8_t reserved;
  uint16_t units_offset;   // bytes from the header to unit 0 (UnitsStart)
  uint16_t reserved2;
};
static_assert(sizeof(BlockHeader) == 56, "block header layout");

inline UnitDesc* Descs(BlockHeader* b) { return reinterpret_cast<UnitDesc*>(b + 1); }
inline const UnitDesc* Descs(const BlockHeader* b) {
  return reinterpret_cast<const UnitDesc*>(b + 1);
}
inline BlockHeader* BlockOfDesc(const UnitDesc* d) {
  return reinterpret_cast<BlockHeader*>(const_cast<UnitDesc*>(d - d->index)) - 1;
}
inline BlockHeader* HeaderOf(KindBlock* b) { return reinterpret_cast<BlockHeader*>(b); }

// Bytes of a chunk header in this build (freelist.h says why 8 or 16).
inline constexpr size_t kChunkHeaderBytes =
    internal::kChecking || internal::kAddressSanitizer || internal::kValgrind ? 16 : 8;

// Bytes from a block's start to its first unit: the header and the
// descriptors, and as many more as put a chunk's payload on 16 bytes when
// the chunk starts at a unit's first byte.
constexpr size_t BlockHeaderBytes(size_t units) {
  return ((sizeof(BlockHeader) + units * sizeof(UnitDesc) + kChunkHeaderBytes + 15) & ~size_t{15}) -
         kChunkHeaderBytes;
}
// Set when the block is acquired (freelist.cc, LayOutUnits): at least
// BlockHeaderBytes(units), more when fewer units than descriptors fit.
inline char* UnitsStart(BlockHeader* b) { return reinterpret_cast<char*>(b) + b->units_offset; }

// Where unit boundaries lie in the address space: a chunk that starts at a
// boundary has its payload on 16 bytes, so boundaries lie kUnitPhase bytes
// past a multiple of kUnitBytes (8 with 8-byte chunk headers, 0 with 16).
// Units follow the pages rather than the block's start: a unit holding a
// live chunk then keeps one page resident, not the two it would straddle,
// and a single free unit covers a page that a sweep can purge
// (freelist.cc, PurgeFreeUnits). Unit 0 runs from the descriptors' end to
// the first boundary after them, so it is the short one.
inline constexpr size_t kUnitPhase = (16 - kChunkHeaderBytes) & 15;
inline char* UnitsBaseAt(char* units_start) {
  const uintptr_t s = reinterpret_cast<uintptr_t>(units_start);
  return reinterpret_cast<char*>(((s - kUnitPhase) & ~uintptr_t{kUnitBytes - 1}) + kUnitPhase);
}
// The boundary at or before the first unit's start: unit i's boundaries are
// UnitBase(b, i) and UnitBase(b, i + 1), and a descriptor's `first` counts
// from the unit's base.
inline char* UnitsBase(BlockHeader* b) { return UnitsBaseAt(UnitsStart(b)); }
inline char* UnitBase(BlockHeader* b, size_t i) { return UnitsBase(b) + (i << kUnitShift); }
// The first usable byte of unit i.
inline char* UnitStart(BlockHeader* b, size_t i) {
  return i == 0 ? UnitsStart(b) : UnitBase(b, i);
}
// Bytes a block source's allocator may put before a block: glibc's chunk
// header. Blocks are asked for 2^k minus this, so that a block fills 2^k
// bytes of the allocator's heap, or of pages above its mmap threshold,
// rather than spilling into one more page (W5 lost 1.5% to that).
inline constexpr size_t kSourceHeaderAllowance = 16;

// Bytes of the largest block of chunks: 256 KiB, less the allowance. Its
// 64 units cover it when it starts just past a page (glibc's large
// chunks, and the mappings of the block cache's system source do); placed
// anywhere else, up to a unit's worth at its end stays unused, and
// untouched, so not resident.
inline constexpr size_t kMaxPageBlockBytes = (size_t{1} << 18) - kSourceHeaderAllowance;
static_assert(BlockHeaderBytes(kMaxBlockUnits) + (kMaxBlockUnits - 1) * kUnitBytes <
                  kMaxPageBlockBytes,
              "the largest block holds 64 units");
inline uint64_t AllUnits(size_t units) {
  return units == 64 ? ~uint64_t{0} : (uint64_t{1} << units) - 1;
}

// The start of a dedicated chunk's block.
struct DedicatedHeader {
  KindBlock link;  // must stay the first field
  char* end;       // one past the last byte of the block
  // The size a realloc last asked for, for a chunk that grew by realloc
  // (freelist.cc, kGrowthChunk in its header); unused otherwise.
  size_t asked;
};

// The per-class freelist heads and the sweep's bookkeeping. Kept out of the
// kind state, which sits in every context's first block: a context that
// never frees a chunk never has one (it reads kEmptyTable). The first free
// makes it, as a chunk of the context.
// Frees a context defers at most (freelist.cc, "Deferred frees"): each
// chunk's header is fetched this many frees ahead of its use.
inline constexpr uint32_t kDeferredFrees = 8;

struct FreeTable {
  void* heads[kNumSizeClasses];  // payload of the newest free chunk of each class
  // Heads of the lists of parked chunks, one per class: free chunks of
  // sparse units kept off the class lists while the context's carved
  // chunks are mostly free (freelist.cc, "Parking"). A chunk of the
  // context, made by the first sweep that parks; nullptr before.
  void** parked;
  uint64_t parked_chunks;        // chunks on the parked lists
  // The most live bytes a sweep saw since the context last held less than
  // twice its live bytes in blocks: parking follows a shrink from it.
  size_t live_high;
  uint64_t carved;               // chunks carved in the context's blocks, live or free
  uint64_t sweep_interval;       // frees between sweeps, as last set
  uint32_t sweep_backoff;        // 1, doubled after each sweep that gave little back
  // Whether a run was started since the last sweep of an emptied context
  // (SweepEmpty): 1 at first, so the first empty sweeps.
  uint32_t runs_since_empty;
  // Deferred frees (freelist.cc, "Deferred frees"; release builds only):
  // the chunks of the last kDeferredFrees frees, each finished when the
  // slot comes round again, nullptr in an unused slot.
  uint32_t deferred_next;        // byte offset of the slot the next deferred free takes
  uint32_t deferred_count;       // slots in use
  void* deferred[kDeferredFrees];
};

struct FreelistState {
  FreeTable* table;         // &kEmptyTable until the first free
  int64_t sweep_countdown;  // frees until the next sweep; 1 while there is no table
  char* bump_ptr;           // next chunk start in the run being carved
  char* bump_end;           // end of that run
  BlockHeader* bump_block;  // its block (`first` for the first block's area)
  BlockHeader* first;       // the first block's area header (after the name)
  KindBlock* partial;       // blocks with free and used units
  KindBlock* full;          // blocks with no free unit
  KindBlock* spare;         // blocks with no chunk: kept for reuse, then released
  void* orphans;            // chunks freed while no table could be had
  BlockList dedicated;      // dedicated chunks' blocks
  uint32_t chunk_limit;     // bytes; larger requests get a dedicated block
  uint32_t next_block_size;  // bytes; doubles up to max_block_size
  uint32_t base_block_size;
  uint32_t max_block_size;
  RemoteFreeList remote;    // chunks freed by other threads (remote_free.h)
  // Bytes of live chunks (a class's bytes; a dedicated chunk's up to its
  // block's end), counted as chunks are handed out and come back; a chunk
  // another thread frees counts until the owner takes it back, and a
  // deferred free until it is finished.
  LiveTally live;
  // Live bytes above which a free is deferred: kDeferredFrees + 1 chunks of
  // the largest class more than the live dedicated chunks' bytes, so that
  // a context with frees pending can never be empty; SIZE_MAX without a
  // table (freelist.cc, "Deferred frees").
  size_t defer_above = SIZE_MAX;
  size_t dedicated_live = 0;  // bytes of live dedicated chunks, as `live` counts them
};

}  // namespace freelist_internal
}  // namespace mcx

#endif  // MCX_FREELIST_INTERNAL_FREELIST_BLOCK_H_
