// BuddyBlockSource: Zephyr's k_mem_pool (lib/os/mempool.c) as an mcx block
// source. Zephyr keeps a bitmap per level and finds a block's level from a
// header it writes before the memory it hands out; a block source hands out
// whole blocks and gets them back by address, so here one state byte per
// min_block says, for the block starting there, its level and whether it is
// in use. That byte is all a release needs to find the block's level and its
// buddies, and all a merge needs to know whether they are free.

#include "mcx/buddy/buddy_source.h"

#include <cstdint>
#include <cstring>
#include <string>

#include "mcx/context/internal/failure.h"
#include "mcx/context/internal/format.h"
#include "mcx/context/internal/sanitizer.h"

namespace mcx {
namespace {

constexpr size_t kNone = ~size_t{0};

size_t LowBit(uintptr_t v) { return static_cast<size_t>(v & (~v + 1)); }

int Log2(size_t v) { return 63 - __builtin_clzll(static_cast<unsigned long long>(v)); }

// ceil(log2(v)) for v >= 1.
int CeilLog2(size_t v) {
  return v <= 1 ? 0 : 64 - __builtin_clzll(static_cast<unsigned long long>(v - 1));
}

// The state bytes a region of `bytes` can spare from its end: u blocks of
// min_block and u state bytes fit in `bytes` when u * (min_block + 1) <= bytes.
// Runs before the options are checked: a min_block of SIZE_MAX, refused
// there, must not divide by zero here.
size_t UnitsCarved(size_t bytes, size_t min_block) {
  return min_block >= bytes ? 0 : bytes / (min_block + 1);
}

}  // namespace

BuddyBlockSource::BuddyBlockSource(void* region, size_t bytes, const BuddyOptions& options)
    : region_(static_cast<unsigned char*>(region)),
      region_bytes_(UnitsCarved(bytes, options.min_block) * options.min_block),
      state_(static_cast<unsigned char*>(region) +
             UnitsCarved(bytes, options.min_block) * options.min_block),
      state_bytes_(UnitsCarved(bytes, options.min_block)),
      options_(options) {}

// The region is the caller's again, as plain memory (free blocks were
// poisoned): nothing else to give back.
BuddyBlockSource::~BuddyBlockSource() {
  std::lock_guard<std::mutex> lock(mu_);
  if (valid_) internal::UnpoisonMemoryRegion(region_, managed_);
}

bool BuddyBlockSource::EnsureInitLocked() const {
  if (!initialized_) const_cast<BuddyBlockSource*>(this)->InitLocked();
  return valid_;
}

bool BuddyBlockSource::InitLocked() {
  initialized_ = true;
  valid_ = false;
  const size_t min = options_.min_block;
  const size_t max = options_.max_block;
  if (!BuddyOptionsValid(min, max, options_.split)) {
    internal::ReportMisuse(
        "buddy block source %p: min_block %zu and max_block %zu make no buddy system (powers "
        "of two, min_block at least %zu, max_block / min_block a power of %d)",
        static_cast<void*>(this), min, max, kMinBuddyBlock,
        options_.split == BuddySplit::kQuad ? 4 : 2);
    return false;
  }
  shift_ = static_cast<int>(options_.split);
  levels_ = (Log2(max) - Log2(min)) / shift_ + 1;
  size_t units = region_bytes_ / min;
  if (units > state_bytes_) units = state_bytes_;
  managed_ = units * min;
  alignment_ = LowBit(reinterpret_cast<uintptr_t>(region_));
  if (alignment_ > max || region_ == nullptr) alignment_ = max;
  if (region_ == nullptr || managed_ < min || alignment_ < kMinBlockAlignment) {
    internal::ReportMisuse(
        "buddy block source %p: the region at %p of %zu bytes holds no block of %zu bytes "
        "aligned to %zu",
        static_cast<void*>(this), static_cast<void*>(region_), region_bytes_, min,
        kMinBlockAlignment);
    return false;
  }
  // The memory may have served another source (poisoned by it): ours now.
  internal::UnpoisonMemoryRegion(region_, managed_);
  internal::UnpoisonMemoryRegion(state_, units);
  std::memset(state_, 0, units);
  stats_.region_bytes = managed_;
  stats_.state_bytes = units;
  // The largest blocks that fit, each at an offset that is a multiple of its
  // size: max_block blocks, then smaller ones where the tail holds no whole
  // max_block (a run-time region of any size).
  for (size_t offset = 0; offset + min <= managed_;) {
    int level = 0;
    while (offset % LevelSizeOf(level) != 0 || offset + LevelSizeOf(level) > managed_) ++level;
    PushFree(offset, level);
    offset += LevelSizeOf(level);
  }
  valid_ = true;
  return true;
}

int BuddyBlockSource::LevelFor(size_t size) const {
  if (size > options_.max_block) return -1;
  if (size < options_.min_block) size = options_.min_block;
  // Levels up from min_block, each shift_ doublings; round up.
  const int up = (CeilLog2(size) - Log2(options_.min_block) + shift_ - 1) / shift_;
  return levels_ - 1 - up;
}

void BuddyBlockSource::PushFree(size_t offset, int level) {
  const size_t size = LevelSizeOf(level);
  Node* n = reinterpret_cast<Node*>(region_ + offset);
  // The block may come back poisoned by its context: the link is ours.
  internal::UnpoisonMemoryRegion(n, sizeof(Node));
  n->prev = nullptr;
  n->next = free_[level];
  if (n->next != nullptr) n->next->prev = n;
  free_[level] = n;
  ++free_count_[level];
  nonempty_ |= uint64_t{1} << level;
  state_[UnitOf(offset)] = static_cast<unsigned char>(kStartBit | level);
  stats_.free_bytes += size;
  ++stats_.free_blocks;
  internal::PoisonMemoryRegion(region_ + offset + sizeof(Node), size - sizeof(Node));
}

void BuddyBlockSource::Unlink(size_t offset, int level) {
  Node* n = reinterpret_cast<Node*>(region_ + offset);
  if (n->prev != nullptr) {
    n->prev->next = n->next;
  } else {
    free_[level] = n->next;
  }
  if (n->next != nullptr) n->next->prev = n->prev;
  --free_count_[level];
  if (free_[level] == nullptr) nonempty_ &= ~(uint64_t{1} << level);
  state_[UnitOf(offset)] = 0;
  stats_.free_bytes -= LevelSizeOf(level);
  --stats_.free_blocks;
  internal::PoisonMemoryRegion(n, sizeof(Node));
}

// BuddyBlockSource::TakeLocked
//
// The smallest free block that holds the level, split down to it: each split
// keeps the first part and frees the others (Zephyr's block_break). At most
// levels_ - 1 splits.
size_t BuddyBlockSource::TakeLocked(int level) {
  const uint64_t fits = nonempty_ & ((uint64_t{2} << level) - 1);
  if (fits == 0) return kNone;
  const int from = 63 - __builtin_clzll(fits);  // the deepest level that has one
  const size_t offset = static_cast<size_t>(reinterpret_cast<unsigned char*>(free_[from]) - region_);
  Unlink(offset, from);
  const int parts = 1 << shift_;
  for (int l = from; l < level; ++l) {
    const size_t part = LevelSizeOf(l + 1);
    for (int k = parts - 1; k >= 1; --k) PushFree(offset + static_cast<size_t>(k) * part, l + 1);
  }
  state_[UnitOf(offset)] = static_cast<unsigned char>(kStartBit | kUsedBit | level);
  stats_.used_bytes += LevelSizeOf(level);
  ++stats_.used_blocks;
  if (stats_.used_bytes > stats_.peak_used_bytes) stats_.peak_used_bytes = stats_.used_bytes;
  return offset;
}

// BuddyBlockSource::ReleaseLocked
//
// Merges while every other part of the enclosing block is free at this
// level (Zephyr's bfree_recombine), at most levels_ - 1 times. A block of the
// region's tail whose enclosing block would pass the region's end has no
// buddies and never merges.
void BuddyBlockSource::ReleaseLocked(size_t offset, int level) {
  stats_.used_bytes -= LevelSizeOf(level);
  --stats_.used_blocks;
  state_[UnitOf(offset)] = 0;
  const int parts = 1 << shift_;
  while (level > 0) {
    const size_t parent = LevelSizeOf(level - 1);
    const size_t base = offset & ~(parent - 1);
    if (base + parent > managed_) break;
    const size_t part = LevelSizeOf(level);
    const unsigned char free_here = static_cast<unsigned char>(kStartBit | level);
    bool all_free = true;
    for (int k = 0; k < parts && all_free; ++k) {
      const size_t o = base + static_cast<size_t>(k) * part;
      if (o != offset && state_[UnitOf(o)] != free_here) all_free = false;
    }
    if (!all_free) break;
    for (int k = 0; k < parts; ++k) {
      const size_t o = base + static_cast<size_t>(k) * part;
      if (o != offset) Unlink(o, level);
    }
    offset = base;
    --level;
  }
  PushFree(offset, level);
}

size_t BuddyBlockSource::CheckHandedOut(const void* p, size_t size, const char* what) const {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t b = reinterpret_cast<uintptr_t>(region_);
  if (a < b || a - b >= managed_ || (a - b) % options_.min_block != 0) {
    internal::ReportMisuse("%s of %p, which buddy block source %p (region %p, %zu bytes) did not "
                           "hand out",
                           what, p, static_cast<const void*>(this), static_cast<void*>(region_),
                           managed_);
    return kNone;
  }
  const size_t offset = static_cast<size_t>(a - b);
  const unsigned char s = state_[UnitOf(offset)];
  if ((s & (kStartBit | kUsedBit)) != (kStartBit | kUsedBit)) {
    internal::ReportMisuse("%s of block %p of buddy block source %p, which is not in use "
                           "(released twice, or never handed out)",
                           what, p, static_cast<const void*>(this));
    return kNone;
  }
  if (size > LevelSizeOf(s & kLevelMask)) {
    internal::ReportMisuse("%s of block %p of buddy block source %p with %zu bytes; it holds %zu",
                           what, p, static_cast<const void*>(this), size,
                           LevelSizeOf(s & kLevelMask));
    return kNone;
  }
  return offset;
}

Block BuddyBlockSource::Acquire(size_t min_size, size_t alignment) {
  if (min_size == 0) min_size = 1;
  std::lock_guard<std::mutex> lock(mu_);
  if (!EnsureInitLocked()) {
    ++stats_.failures;
    return Block{};
  }
  if (alignment > alignment_) {
    ++stats_.refused_alignment;
    return Block{};
  }
  // A block of at least `alignment` bytes sits at a multiple of its size
  // from a start aligned to at least `alignment`.
  const int level = LevelFor(min_size < alignment ? alignment : min_size);
  const size_t offset = level < 0 ? kNone : TakeLocked(level);
  if (offset == kNone) {
    ++stats_.failures;
    return Block{};
  }
  ++stats_.acquires;
  const size_t size = LevelSizeOf(level);
  internal::UnpoisonMemoryRegion(region_ + offset, size);
  return Block{region_ + offset, size};
}

void BuddyBlockSource::Release(Block block) {
  if (block.ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (!initialized_ || !valid_) {
    internal::ReportMisuse("release of %p to buddy block source %p, which has handed out nothing",
                           block.ptr, static_cast<void*>(this));
    return;
  }
  const size_t offset = CheckHandedOut(block.ptr, block.size, "release");
  if (offset == kNone) return;
  ++stats_.releases;
  ReleaseLocked(offset, state_[UnitOf(offset)] & kLevelMask);
}

void BuddyBlockSource::ShrinkInPlaceLocked(size_t offset, int from, int to) {
  const int parts = 1 << shift_;
  for (int l = from; l < to; ++l) {
    const size_t part = LevelSizeOf(l + 1);
    for (int k = parts - 1; k >= 1; --k) PushFree(offset + static_cast<size_t>(k) * part, l + 1);
  }
  state_[UnitOf(offset)] = static_cast<unsigned char>(kStartBit | kUsedBit | to);
  stats_.used_bytes -= LevelSizeOf(from) - LevelSizeOf(to);
}

// Grows the block at `offset` from level `from` up to `to` (< from) if it is
// the first part of each enclosing block on the way and all their other
// parts are free: checked first, then taken.
bool BuddyBlockSource::GrowInPlaceLocked(size_t offset, int from, int to) {
  const int parts = 1 << shift_;
  for (int l = from; l > to; --l) {
    const size_t parent = LevelSizeOf(l - 1);
    if ((offset & (parent - 1)) != 0 || offset + parent > managed_) return false;
    const unsigned char free_here = static_cast<unsigned char>(kStartBit | l);
    for (int k = 1; k < parts; ++k) {
      if (state_[UnitOf(offset + static_cast<size_t>(k) * LevelSizeOf(l))] != free_here) {
        return false;
      }
    }
  }
  for (int l = from; l > to; --l) {
    for (int k = 1; k < parts; ++k) Unlink(offset + static_cast<size_t>(k) * LevelSizeOf(l), l);
  }
  state_[UnitOf(offset)] = static_cast<unsigned char>(kStartBit | kUsedBit | to);
  stats_.used_bytes += LevelSizeOf(to) - LevelSizeOf(from);
  if (stats_.used_bytes > stats_.peak_used_bytes) stats_.peak_used_bytes = stats_.used_bytes;
  return true;
}

// BuddyBlockSource::Reallocate
//
// In place when the buddy system allows: the same level; a smaller one (the
// parts beyond are freed); a larger one whose other parts are free. Else the
// portable fallback: acquire, copy, release.
Block BuddyBlockSource::Reallocate(Block block, size_t keep, size_t new_min_size,
                                   size_t alignment) {
  if (new_min_size == 0) new_min_size = 1;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!initialized_ || !valid_) {
      internal::ReportMisuse("reallocate of %p in buddy block source %p, which has handed out "
                             "nothing",
                             block.ptr, static_cast<void*>(this));
      return Block{};
    }
    const size_t offset = CheckHandedOut(block.ptr, block.size, "reallocate");
    if (offset == kNone) return Block{};
    if (alignment > alignment_) {
      ++stats_.refused_alignment;
      return Block{};
    }
    const int to = LevelFor(new_min_size < alignment ? alignment : new_min_size);
    if (to < 0) {
      ++stats_.failures;
      return Block{};
    }
    const int from = state_[UnitOf(offset)] & kLevelMask;
    if (to >= from) {
      if (to > from) ShrinkInPlaceLocked(offset, from, to);
      ++stats_.reallocated_in_place;
      return Block{block.ptr, LevelSizeOf(to)};
    }
    if (GrowInPlaceLocked(offset, from, to)) {
      ++stats_.reallocated_in_place;
      internal::UnpoisonMemoryRegion(block.ptr, LevelSizeOf(to));
      return Block{block.ptr, LevelSizeOf(to)};
    }
  }
  return BlockSource::Reallocate(block, keep, new_min_size, alignment);
}

bool BuddyBlockSource::valid() const {
  std::lock_guard<std::mutex> lock(mu_);
  return EnsureInitLocked();
}

BuddyBlockSource::Stats BuddyBlockSource::GetStats() const {
  std::lock_guard<std::mutex> lock(mu_);
  EnsureInitLocked();
  Stats s = stats_;
  // The largest free block is on the shallowest level that has one.
  s.largest_free_block = nonempty_ != 0 ? LevelSizeOf(__builtin_ctzll(nonempty_)) : 0;
  return s;
}

size_t BuddyBlockSource::region_alignment() const {
  std::lock_guard<std::mutex> lock(mu_);
  return EnsureInitLocked() ? alignment_ : 0;
}

size_t BuddyBlockSource::LevelSize(int level) const {
  std::lock_guard<std::mutex> lock(mu_);
  return EnsureInitLocked() && level >= 0 && level < levels_ ? LevelSizeOf(level) : 0;
}

int BuddyBlockSource::levels() const {
  std::lock_guard<std::mutex> lock(mu_);
  return EnsureInitLocked() ? levels_ : 0;
}

bool BuddyBlockSource::Check(std::string* error) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto fail = [error](std::string what) {
    if (error != nullptr) *error = std::move(what);
    return false;
  };
  if (!EnsureInitLocked()) return fail("the source is not valid");
  size_t counted[kMaxBuddyLevels] = {};
  size_t used_bytes = 0, used_blocks = 0, free_bytes = 0;
  const int parts = 1 << shift_;
  for (size_t off = 0; off < managed_;) {
    const unsigned char s = state_[UnitOf(off)];
    const int level = s & kLevelMask;
    if ((s & kStartBit) == 0 || level >= levels_) {
      return fail(internal::Format("offset %d: no block starts there (state 0x%02x)", off, s));
    }
    const size_t size = LevelSizeOf(level);
    if (off % size != 0 || off + size > managed_) {
      return fail(internal::Format("offset %d: a block of %d bytes misplaced", off, size));
    }
    for (size_t u = UnitOf(off) + 1; u < UnitOf(off + size); ++u) {
      if (state_[u] != 0) return fail(internal::Format("offset %d: a start inside a block", off));
    }
    if (s & kUsedBit) {
      used_bytes += size;
      ++used_blocks;
    } else {
      ++counted[level];
      free_bytes += size;
      // A complete set of free parts must have merged.
      if (level > 0) {
        const size_t parent = LevelSizeOf(level - 1);
        const size_t base = off & ~(parent - 1);
        bool all_free = base + parent <= managed_;
        for (int k = 0; k < parts && all_free; ++k) {
          all_free = state_[UnitOf(base + static_cast<size_t>(k) * size)] ==
                     static_cast<unsigned char>(kStartBit | level);
        }
        if (all_free) {
          return fail(internal::Format("offset %d: the parts of a %d-byte block are all free, "
                                      "unmerged",
                                      base, parent));
        }
      }
    }
    off += size;
  }
  for (int l = 0; l < levels_; ++l) {
    size_t n = 0;
    for (const Node* node = free_[l]; node != nullptr; node = node->next, ++n) {
      const size_t off = static_cast<size_t>(reinterpret_cast<const unsigned char*>(node) - region_);
      if (off >= managed_ || state_[UnitOf(off)] != static_cast<unsigned char>(kStartBit | l)) {
        return fail(internal::Format("level %d: a listed block at offset %d is not free there", l,
                                    off));
      }
      if (n > counted[l]) break;
    }
    if (n != counted[l] || n != free_count_[l] || ((nonempty_ >> l) & 1) != (n != 0 ? 1u : 0u)) {
      return fail(internal::Format("level %d: %d blocks listed, %d free, %d counted", l, n,
                                  counted[l], free_count_[l]));
    }
  }
  if (used_bytes != stats_.used_bytes || used_blocks != stats_.used_blocks ||
      free_bytes != stats_.free_bytes || used_bytes + free_bytes != managed_) {
    return fail(internal::Format("counters: %d used bytes in %d blocks (stats %d in %d), %d free "
                                "(stats %d), %d managed",
                                used_bytes, used_blocks, stats_.used_bytes, stats_.used_blocks,
                                free_bytes, stats_.free_bytes, managed_));
  }
  return true;
}

}  // namespace mcx
