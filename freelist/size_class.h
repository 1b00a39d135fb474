// File: mcx/freelist/size_class.h
//
// The freelist kind's size classes. A request is rounded up to the smallest
// class that holds it; each class has its own freelist.
//
// The classes: 8, 24, 40, ..., 136 (every 16 bytes), then eight classes per
// doubling up to 1,032 (152, 168, ..., 264, 296, ..., 1032), then sixteen
// per doubling up to 65,544 (1096, 1160, ..., 2056, 2184, ..., 4104, 4360,
// ..., 65544). Every class is 8 more than a multiple of 16, so that a class
// plus the 8-byte chunk header is a multiple of 16 and chunks packed back to
// back keep their payload aligned to 16 with no padding at all.
//
// Bound on rounding waste (class size minus requested size, header not
// counted), for every size up to kMaxSizeClassBytes: at most 15 bytes up to
// 136 bytes; above, less than an eighth of the request up to 1,032 bytes
// and less than a sixteenth above (a class exceeds the class below it by
// base/8 or base/16, and every request above that class exceeds base). For
// sizes drawn uniformly from 8..1024 that is 4.2% of the requested bytes on
// average (tests/freelist/size_class_test.cc computes and prints it);
// PostgreSQL's power-of-two classes waste about 33% on the same
// distribution. SQLite's 4,360-byte pages take the 4,360 class exactly.
//
// Example:
//
//   size_t c = mcx::SizeClassOf(100);     // class 6
//   size_t bytes = mcx::SizeClassBytes(c);  // 104

#ifndef MCX_FREELIST_SIZE_CLASS_H_
#define MCX_FREELIST_SIZE_CLASS_H_

#include <array>
#include <cstddef>
#include <cstdint>

namespace mcx {

// Sizes above this are served by dedicated blocks, never by a class: 64 KiB
// and the header's 8. Up to it, chunks are carved from the context's blocks,
// so freed space of one size serves others once its unit is given back.
inline constexpr size_t kMaxSizeClassBytes = 65544;

namespace size_class_internal {

inline constexpr size_t kFineClasses = 9;        // 8..136 step 16
inline constexpr size_t kFirstGroupLog2 = 7;     // 128
inline constexpr size_t kLastGroupLog2 = 15;     // 32768
// Eight classes per doubling below 1 KiB: the waste bound is base/8 over a
// request above base, under 12.5%. Four (the first design) allowed 25%,
// and SQLite's 4,360-byte pages landed in a 5,128-byte class.
inline constexpr size_t kClassesPerGroup = 8;
// Sixteen per doubling from 1 KiB (a step of at least 64 bytes, still a
// multiple of 16): the bound falls to 6.25% where chunks are large enough
// for the rounding to add up to a heap's worth (a heap of 1..4 KiB chunks
// rounded to eight classes per doubling held 2% more than glibc's), while
// the small classes, where most chunks of most heaps lie, keep the lists
// they share.
inline constexpr size_t kFineGroupLog2 = 10;  // 1024
inline constexpr size_t kClassesPerFineGroup = 16;
constexpr size_t ClassesInGroup(size_t lg) {
  return lg < kFineGroupLog2 ? kClassesPerGroup : kClassesPerFineGroup;
}
constexpr size_t CountClasses() {
  size_t n = kFineClasses;
  for (size_t lg = kFirstGroupLog2; lg <= kLastGroupLog2; ++lg) n += ClassesInGroup(lg);
  return n;
}
inline constexpr size_t kNumClasses = CountClasses();

constexpr std::array<uint32_t, kNumClasses> MakeClassBytes() {
  std::array<uint32_t, kNumClasses> bytes{};
  size_t i = 0;
  for (; i < kFineClasses; ++i) bytes[i] = static_cast<uint32_t>(8 + 16 * i);
  for (size_t lg = kFirstGroupLog2; lg <= kLastGroupLog2; ++lg) {
    const size_t base = size_t{1} << lg;
    const size_t n = ClassesInGroup(lg);
    for (size_t k = 1; k <= n; ++k) bytes[i++] = static_cast<uint32_t>(base + k * (base / n) + 8);
  }
  return bytes;
}

inline constexpr std::array<uint32_t, kNumClasses> kClassBytes = MakeClassBytes();

// Index by (size + 7) / 16: exact, because class sizes are 8 mod 16.
inline constexpr size_t kLookupEntries = (kMaxSizeClassBytes + 7) / 16 + 1;

constexpr std::array<uint8_t, kLookupEntries> MakeLookup() {
  std::array<uint8_t, kLookupEntries> table{};
  size_t c = 0;
  for (size_t t = 0; t < kLookupEntries; ++t) {
    size_t largest = t * 16 + 8;  // the largest size that maps to entry t
    if (largest > kMaxSizeClassBytes) largest = kMaxSizeClassBytes;
    while (kClassBytes[c] < largest) ++c;
    table[t] = static_cast<uint8_t>(c);
  }
  return table;
}

inline constexpr std::array<uint8_t, kLookupEntries> kLookup = MakeLookup();

static_assert(kClassBytes[kNumClasses - 1] == kMaxSizeClassBytes, "class table");
static_assert(kNumClasses <= 255, "a class fits the chunk header's value byte");

}  // namespace size_class_internal

inline constexpr size_t kNumSizeClasses = size_class_internal::kNumClasses;

// The class of a request of `size` bytes; `size` <= kMaxSizeClassBytes.
// Size 0 maps to class 0.
inline size_t SizeClassOf(size_t size) {
  return size_class_internal::kLookup[(size + 7) >> 4];
}

inline size_t SizeClassBytes(size_t size_class) {
  return size_class_internal::kClassBytes[size_class];
}

}  // namespace mcx

#endif  // MCX_FREELIST_SIZE_CLASS_H_
