// Internal to mcx; do not include from outside.
// IWYU pragma: private
//
// AddressSanitizer annotations. Under ASan (Abseil's
// ABSL_HAVE_ADDRESS_SANITIZER), block space that is not handed out, freed
// chunks, chunk headers and reset memory are poisoned, and an allocation
// unpoisons exactly the requested bytes, so ASan reports a read after reset
// or free and a write past a chunk inside a context's blocks. Elsewhere these
// compile to nothing. The same shape as Abseil's container_memory.h helpers,
// which are internal to Abseil.

#ifndef MCX_CONTEXT_INTERNAL_SANITIZER_H_
#define MCX_CONTEXT_INTERNAL_SANITIZER_H_

#include <cstddef>
#include <cstring>

#include "absl/base/config.h"

#ifdef ABSL_HAVE_ADDRESS_SANITIZER
#include <sanitizer/asan_interface.h>
#endif

// --config=valgrind (MCX_VALGRIND): the same poisoning as Valgrind memcheck
// requests, and a mempool per context (internal/valgrind.h). Outside
// Valgrind the requests cost a few instructions each.
#ifdef MCX_VALGRIND
#include <valgrind/memcheck.h>
#endif

namespace mcx {
namespace internal {

#ifdef ABSL_HAVE_ADDRESS_SANITIZER
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif

#ifdef MCX_VALGRIND
inline constexpr bool kValgrind = true;
#else
inline constexpr bool kValgrind = false;
#endif

inline void PoisonMemoryRegion(const void* p, size_t size) {
#if defined(ABSL_HAVE_ADDRESS_SANITIZER)
  ASAN_POISON_MEMORY_REGION(p, size);
#elif defined(MCX_VALGRIND)
  VALGRIND_MAKE_MEM_NOACCESS(p, size);
#else
  (void)p;
  (void)size;
#endif
}

inline void UnpoisonMemoryRegion(const void* p, size_t size) {
#if defined(ABSL_HAVE_ADDRESS_SANITIZER)
  ASAN_UNPOISON_MEMORY_REGION(p, size);
#elif defined(MCX_VALGRIND)
  VALGRIND_MAKE_MEM_DEFINED(p, size);
#else
  (void)p;
  (void)size;
#endif
}

// True if any byte of the region is poisoned.
inline bool IsPoisoned(const void* p, size_t size) {
#if defined(ABSL_HAVE_ADDRESS_SANITIZER)
  return __asan_region_is_poisoned(const_cast<void*>(p), size) != nullptr;
#elif defined(MCX_VALGRIND)
  // Memcheck cannot be asked without reporting: assume poisoned, which only
  // costs a pair of requests around mcx's own accesses.
  (void)p;
  (void)size;
  return RUNNING_ON_VALGRIND != 0;
#else
  (void)p;
  (void)size;
  return false;
#endif
}

// Reads or writes bytes that are poisoned for users but not for mcx (a
// freelist link, a sentinel): lifts the poison around the access.
inline void CopyFromPoisoned(void* to, const void* from, size_t size) {
  bool poisoned = IsPoisoned(from, size);
  if (poisoned) UnpoisonMemoryRegion(from, size);
  std::memcpy(to, from, size);
  if (poisoned) PoisonMemoryRegion(from, size);
}

inline void CopyToPoisoned(void* to, const void* from, size_t size) {
  bool poisoned = IsPoisoned(to, size);
  if (poisoned) UnpoisonMemoryRegion(to, size);
  std::memcpy(to, from, size);
  if (poisoned) PoisonMemoryRegion(to, size);
}

}  // namespace internal
}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_SANITIZER_H_
