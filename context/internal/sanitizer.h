// Internal to mcx; do not include from outside.
// IWYU pragma: private
//
// AddressSanitizer annotations. In an ASan build of mcx (MCX_SANITIZE_ADDRESS,
// recorded in mcx/context/config.h by --config=asan or CMake
// -DMCX_SANITIZE=address), block space that is not handed out, freed
// chunks, chunk headers and reset memory are poisoned, and an allocation
// unpoisons exactly the requested bytes, so ASan reports a read after reset
// or free and a write past a chunk inside a context's blocks. Elsewhere these
// compile to nothing. The same shape as Abseil's container_memory.h helpers,
// which are internal to Abseil.
//
// The recorded configuration decides, not the compiler's own sanitizer
// flags: inline code of a consumer compiled without -fsanitize=address
// poisons exactly as the library does (the ASan runtime it then calls comes
// with the library's link flags). That is why the runtime's functions are
// called rather than its ASAN_POISON_MEMORY_REGION macros, which are empty
// outside instrumented code.

#ifndef MCX_CONTEXT_INTERNAL_SANITIZER_H_
#define MCX_CONTEXT_INTERNAL_SANITIZER_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "mcx/context/config.h"

#if MCX_SANITIZE_ADDRESS
#include <sanitizer/asan_interface.h>
#endif

// --config=valgrind (MCX_VALGRIND): the same poisoning as Valgrind memcheck
// requests, and a mempool per context (internal/valgrind.h). Outside
// Valgrind the requests cost a few instructions each.
#if MCX_VALGRIND
#include <valgrind/memcheck.h>
#endif

namespace mcx {
namespace internal {

inline constexpr bool kAddressSanitizer = MCX_SANITIZE_ADDRESS != 0;

inline constexpr bool kValgrind = MCX_VALGRIND != 0;

inline void PoisonMemoryRegion(const void* p, size_t size) {
#if MCX_SANITIZE_ADDRESS
  __asan_poison_memory_region(p, size);
#elif MCX_VALGRIND
  VALGRIND_MAKE_MEM_NOACCESS(p, size);
#else
  (void)p;
  (void)size;
#endif
}

inline void UnpoisonMemoryRegion(const void* p, size_t size) {
#if MCX_SANITIZE_ADDRESS
  __asan_unpoison_memory_region(p, size);
#elif MCX_VALGRIND
  VALGRIND_MAKE_MEM_DEFINED(p, size);
#else
  (void)p;
  (void)size;
#endif
}

// True if any byte of the region is poisoned.
inline bool IsPoisoned(const void* p, size_t size) {
#if MCX_SANITIZE_ADDRESS
  return __asan_region_is_poisoned(const_cast<void*>(p), size) != nullptr;
#elif MCX_VALGRIND
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

//
// AddressSanitizer keeps one addressable prefix per 8-byte granule: making
// [to, to + size) addressable also makes the bytes before `to` in its
// granule addressable, and poisoning it again cannot take them back unless
// the poisoned range starts where the granule's prefix ended. So it starts
// there (a checking build's sentinel stays poisoned when the site after it
// is written).
inline void CopyToPoisoned(void* to, const void* from, size_t size) {
  bool poisoned = IsPoisoned(to, size);
  if (!poisoned) {
    std::memcpy(to, from, size);
    return;
  }
  char* start = static_cast<char*>(to);
#if MCX_SANITIZE_ADDRESS
  constexpr uintptr_t kGranule = 8;  // ASan's shadow granularity
  char* granule = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(to) & ~(kGranule - 1));
  if (granule != start) {
    void* first = __asan_region_is_poisoned(granule, static_cast<size_t>(start - granule));
    if (first != nullptr) start = static_cast<char*>(first);
  }
#endif
  UnpoisonMemoryRegion(to, size);
  std::memcpy(to, from, size);
  PoisonMemoryRegion(start, static_cast<size_t>(static_cast<char*>(to) + size - start));
}

}  // namespace internal
}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_SANITIZER_H_
