// File: mcx/buddy/buddy_source.h
//
// A block source over memory the caller supplies (a static array, a
// memory-mapped region, shared memory), in the manner of Zephyr's
// k_mem_pool / sys_mem_pool: buddy allocation of power-of-two blocks between
// a minimum and a maximum size, free buddies merged as they come back. Every
// context kind runs over it unchanged; nothing of it reaches the system
// allocator, and when the region is exhausted, acquisition fails and the
// context's reserve and failure handler take over as with any source.
//
// Contract:
//   - Blocks. The region is carved into blocks of `max_block` bytes (and, at
//     a tail that holds no whole one, the largest blocks that fit). A block
//     is split into two halves (BuddySplit::kBinary) or four quarters
//     (kQuad, Zephyr's quad-block scheme), down to `min_block`; when every
//     part of a split block is free again, they merge back into it.
//   - Acquire(n, alignment) hands out the smallest block of at least n
//     bytes (at least `min_block`) and reports its whole size in
//     Block::size. Requests larger than `max_block`, or beyond what is free,
//     return an empty block and count as failures; nothing changes.
//   - Alignment. A block at offset o from the region's start (o is a
//     multiple of the block's size) is aligned to min(size, A), A being the
//     alignment of the start address (capped at max_block). A request with
//     alignment up to A is served by a block of at least that size;
//     alignment beyond A is refused (an empty block; counted in
//     Stats::refused_alignment). Align the region to the alignments you
//     need: MCX_BUDDY_SOURCE_DEFINE aligns its array to `max_block`, mmap
//     gives page alignment. The slab kind aligns its blocks to their size
//     (SlabOptions::block_size, 64 KiB by default): over a region aligned
//     to a page, give it blocks of at most region_alignment(), or each of
//     its blocks is refused and its allocations fail kOutOfMemory.
//   - Release(block) takes back a block this source handed out; the size may
//     be smaller than handed out (BlockSource's contract). A pointer it did
//     not hand out, or handed out and took back, is reported as misuse.
//   - Reallocate resizes in place where the buddy system allows (shrinking
//     always; growing when the block is the first part of larger blocks whose
//     other parts are free), else acquires, copies and releases.
//   - Constant time bounds: Acquire and Release take at most one step per
//     level (levels = log2(max_block / min_block) for kBinary, half that for
//     kQuad; at most 32), each step O(1): a free list per level, doubly
//     linked through the free blocks themselves, and one state byte per
//     `min_block` of the region. No step depends on how many blocks are in
//     use. Reallocate's copy is O(kept bytes).
//   - Memory. The state bytes (one per `min_block`) live in the region's last
//     bytes, or in a separate array (the second constructor, the macro).
//     Nothing else: the free list links are kept in the free blocks.
//   - Thread-safe, as every block source: one std::mutex around each call
//     (a context calls its source only on its slow paths). The region is not
//     read or written before the first call, so a source can be defined as a
//     constant-initialized global (the macro) and used from static
//     constructors of other files.
//   - Checking and sanitizers: free blocks are poisoned (ASan, Valgrind's
//     memcheck), except the two words of their free-list link.
//
// Example, at run time over any region:
//
//   static unsigned char arena[1 << 20];        // or mmap(), shared memory
//   mcx::BuddyOptions bo;
//   bo.min_block = 1024;
//   bo.max_block = 256 * 1024;
//   mcx::BuddyBlockSource region(arena, sizeof arena, bo);
//   mcx::ContextOptions o;
//   o.block_source = &region;
//   mcx::Context* subsystem = mcx::Context::Create(nullptr, "sensor", mcx::PoolKind(), o);
//
// and at compile time, as Zephyr's K_MEM_POOL_DEFINE (at namespace scope):
//
//   MCX_BUDDY_SOURCE_DEFINE(sensor_region, 256, 64 * 1024, 16);   // 16 x 64 KiB
//   ... o.block_source = &sensor_region;

#ifndef MCX_BUDDY_BUDDY_SOURCE_H_
#define MCX_BUDDY_BUDDY_SOURCE_H_

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

#include "mcx/context/block_source.h"

namespace mcx {

// How a block splits: into two halves (classic binary buddies) or four
// quarters (Zephyr's k_mem_pool). Binary wastes less for sizes just above a
// power of two; quad has half the levels.
enum class BuddySplit : uint8_t {
  kBinary = 1,  // log2 of the parts per block
  kQuad = 2,
};

struct BuddyOptions {
  // Smallest block: a power of two, at least kMinBuddyBlock.
  size_t min_block = 4096;
  // Largest block: a power of two, min_block times a power of the split
  // factor (2 or 4), in at most kMaxBuddyLevels levels.
  size_t max_block = size_t{1} << 20;
  BuddySplit split = BuddySplit::kBinary;
};

// The smallest min_block: a free block holds its two free-list links.
inline constexpr size_t kMinBuddyBlock = 64;
// Levels are numbered from 0 (max_block) down; at most this many.
inline constexpr int kMaxBuddyLevels = 32;

// Whether the options describe a buddy system (compile-time checkable).
constexpr bool BuddyOptionsValid(size_t min_block, size_t max_block,
                                 BuddySplit split = BuddySplit::kBinary) {
  auto pow2 = [](size_t v) { return v != 0 && (v & (v - 1)) == 0; };
  if (!pow2(min_block) || !pow2(max_block) || min_block < kMinBuddyBlock ||
      max_block < min_block) {
    return false;
  }
  int steps = 0;
  for (size_t s = min_block; s < max_block; s <<= 1) ++steps;
  const int shift = static_cast<int>(split);
  return (shift == 1 || shift == 2) && steps % shift == 0 && steps / shift < kMaxBuddyLevels;
}

// Bytes of state a region of `region_bytes` needs (one per min_block).
constexpr size_t BuddyStateBytes(size_t region_bytes, size_t min_block) {
  return min_block == 0 ? 0 : region_bytes / min_block;
}

class BuddyBlockSource final : public BlockSource {
 public:
  struct Stats {
    size_t region_bytes = 0;     // bytes managed (the region less the state)
    size_t state_bytes = 0;      // of the state bytes (in the region or not)
    size_t used_bytes = 0;       // in blocks handed out, whole block sizes
    size_t peak_used_bytes = 0;
    size_t used_blocks = 0;
    size_t free_bytes = 0;
    size_t free_blocks = 0;
    size_t largest_free_block = 0;  // what the next large Acquire can get
    uint64_t acquires = 0;          // successful ones
    uint64_t releases = 0;
    uint64_t reallocated_in_place = 0;
    uint64_t failures = 0;           // Acquire found no block that large
    uint64_t refused_alignment = 0;  // alignment beyond the region's
  };

  // Over [region, region + bytes); the state bytes are carved from the end.
  BuddyBlockSource(void* region, size_t bytes, const BuddyOptions& options = BuddyOptions());
  // Over [region, region + bytes) with the state in [state, state +
  // state_bytes) (at least BuddyStateBytes(bytes, min_block)). Touches
  // nothing: the region is set up at the first call. constexpr, so that a
  // global defined with it is initialized before any code runs.
  constexpr BuddyBlockSource(unsigned char* region, size_t bytes, unsigned char* state,
                             size_t state_bytes, const BuddyOptions& options)
      : region_(region),
        region_bytes_(bytes),
        state_(state),
        state_bytes_(state_bytes),
        options_(options) {}
  ~BuddyBlockSource() override;
  BuddyBlockSource(const BuddyBlockSource&) = delete;
  BuddyBlockSource& operator=(const BuddyBlockSource&) = delete;

  Block Acquire(size_t min_size, size_t alignment) override;
  void Release(Block block) override;
  Block Reallocate(Block block, size_t keep, size_t new_min_size, size_t alignment) override;

  // False if the options or the region cannot make a single block (every
  // Acquire then fails; the first call reports why as misuse).
  bool valid() const;
  Stats GetStats() const;
  const BuddyOptions& options() const { return options_; }
  // The alignment every block of at least this size has (capped at
  // max_block): the region start's.
  size_t region_alignment() const;
  // Block size at a level (0: max_block), and the number of levels.
  size_t LevelSize(int level) const;
  int levels() const;

  // Visits every block, in address order: f(ptr, size, used). For tests and
  // pictures; holds the lock, so f must not call this source.
  template <typename F>
  void ForEachBlock(F f) const {
    std::lock_guard<std::mutex> lock(mu_);
    if (!EnsureInitLocked()) return;
    for (size_t off = 0; off < managed_;) {
      const uint8_t s = state_[off / options_.min_block];
      const int level = s & kLevelMask;
      const size_t size = LevelSizeOf(level);
      f(static_cast<const void*>(region_ + off), size, (s & kUsedBit) != 0);
      off += size;
    }
  }

  // The invariants: blocks tile the region, free blocks are on the list of
  // their level, no complete set of free parts was left unmerged, the
  // counters add up.
  bool Check(std::string* error) const;

 private:
  struct Node {
    Node* prev;
    Node* next;
  };
  static constexpr uint8_t kStartBit = 0x80;
  static constexpr uint8_t kUsedBit = 0x40;
  static constexpr uint8_t kLevelMask = 0x3F;

  // Sets the region up at the first call (mu_ held). Queries (const) may be
  // the first call, hence the const_cast inside: no source is const.
  bool EnsureInitLocked() const;
  bool InitLocked();
  size_t LevelSizeOf(int level) const { return options_.max_block >> (level * shift_); }
  // The deepest level whose blocks hold `size` bytes, or -1.
  int LevelFor(size_t size) const;
  size_t UnitOf(size_t offset) const { return offset / options_.min_block; }
  void PushFree(size_t offset, int level);
  void Unlink(size_t offset, int level);
  // Offset of a block handed out, or ~0 (after reporting misuse).
  size_t CheckHandedOut(const void* p, size_t size, const char* what) const;
  // A free block of exactly `level`, split from a larger one if need be;
  // ~0 if none. Marks it used.
  size_t TakeLocked(int level);
  void ReleaseLocked(size_t offset, int level);
  bool GrowInPlaceLocked(size_t offset, int from, int to);
  void ShrinkInPlaceLocked(size_t offset, int from, int to);

  // Fixed at construction.
  unsigned char* const region_;
  const size_t region_bytes_;
  unsigned char* const state_;
  const size_t state_bytes_;
  const BuddyOptions options_;

  // Set up at the first call (mu_ held).
  mutable std::mutex mu_;
  bool initialized_ = false;
  bool valid_ = false;
  int shift_ = 1;          // log2 of the parts per block
  int levels_ = 0;
  size_t managed_ = 0;     // bytes carved into blocks
  size_t alignment_ = 0;   // of the region's start, capped at max_block
  Node* free_[kMaxBuddyLevels] = {};
  size_t free_count_[kMaxBuddyLevels] = {};
  uint64_t nonempty_ = 0;  // bit l: free_[l] has a block
  Stats stats_;
};

}  // namespace mcx

// MCX_BUDDY_SOURCE_DEFINE(name, min_block, max_block, count)
//
// Defines `mcx::BuddyBlockSource name` over a static array of `count`
// blocks of `max_block` bytes, aligned to `max_block`, with its state in a
// second static array: the whole array is blocks, as K_MEM_POOL_DEFINE's
// buffer is. The options are checked at compile time; the source is
// constant-initialized (no constructor runs at startup), so contexts may use
// it from any static constructor. Use it at namespace scope; elsewhere,
// declare it as `extern mcx::BuddyBlockSource name;`. Binary split; for
// quad-block, MCX_BUDDY_SOURCE_DEFINE_SPLIT(..., mcx::BuddySplit::kQuad).
#define MCX_BUDDY_SOURCE_DEFINE(name, min_block, max_block, count) \
  MCX_BUDDY_SOURCE_DEFINE_SPLIT(name, min_block, max_block, count, ::mcx::BuddySplit::kBinary)

#define MCX_BUDDY_SOURCE_DEFINE_SPLIT(name, min_block, max_block, count, split)               \
  static_assert(::mcx::BuddyOptionsValid((min_block), (max_block), (split)),                 \
                "MCX_BUDDY_SOURCE_DEFINE: min_block and max_block must be powers of two, "   \
                "min_block >= 64, max_block = min_block times a power of the split factor"); \
  static_assert((count) > 0, "MCX_BUDDY_SOURCE_DEFINE: count must be positive");             \
  alignas(max_block) static unsigned char name##_mcx_buddy_region[size_t{max_block} * (count)]; \
  static unsigned char                                                                        \
      name##_mcx_buddy_state[::mcx::BuddyStateBytes(size_t{max_block} * (count), (min_block))]; \
  ::mcx::BuddyBlockSource name(name##_mcx_buddy_region, sizeof(name##_mcx_buddy_region),     \
                               name##_mcx_buddy_state, sizeof(name##_mcx_buddy_state),       \
                               ::mcx::BuddyOptions{(min_block), (max_block), (split)})

#endif  // MCX_BUDDY_BUDDY_SOURCE_H_
