// File: mcx/testing/patterns.h
//
// Byte patterns that tests write into chunks and verify later, so that a
// chunk that overlaps another, or loses bytes in a realloc, is caught.

#ifndef MCX_TESTING_PATTERNS_H_
#define MCX_TESTING_PATTERNS_H_

#include <cstddef>
#include <cstdint>

namespace mcx {
namespace test {

// Fills `n` bytes at `p` with a pattern derived from `seed`.
inline void Fill(void* p, size_t n, uint32_t seed) {
  auto* b = static_cast<unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<unsigned char>(seed * 131 + i * 7 + 1);
}

// True if the `n` bytes at `p` still hold Fill's pattern for `seed`.
inline bool Holds(const void* p, size_t n, uint32_t seed) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) {
    if (b[i] != static_cast<unsigned char>(seed * 131 + i * 7 + 1)) return false;
  }
  return true;
}

}  // namespace test
}  // namespace mcx

#endif  // MCX_TESTING_PATTERNS_H_
