#include "mcx/context/block_source.h"

#include "mcx/context/caching_block_source.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/context_impl.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/context/internal/thread_cache.h"

#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

namespace mcx {

BlockSource::~BlockSource() = default;

// BlockSource::Reallocate
//
// The portable fallback: a fresh block and a copy. Correct for every source,
// and the reason subclasses need only two methods.
Block BlockSource::Reallocate(Block block, size_t keep, size_t new_min_size,
                              size_t alignment) {
  Block fresh = Acquire(new_min_size, alignment);
  if (fresh.ptr == nullptr) return fresh;
  std::memcpy(fresh.ptr, block.ptr, keep < fresh.size ? keep : fresh.size);
  Release(block);
  return fresh;
}

// BlockSource::Purge
//
// Keeping the pages is always correct: the caller gets its bytes back either
// way, and a source over memory it does not own must not drop its pages.
size_t BlockSource::Purge(void* ptr, size_t size) {
  (void)ptr;
  (void)size;
  return 0;
}

namespace {

// glibc tells how many bytes a chunk really holds; a context can then carve
// the rounding slack into chunks rather than waste it.
size_t UsableSize(void* p, size_t requested) {
#if defined(__GLIBC__)
  size_t usable = malloc_usable_size(p);
  return usable > requested ? usable : requested;
#else
  (void)p;
  return requested;
#endif
}

}  // namespace

// A sanitizer's malloc ends the program on a request above the largest it
// serves (1 TiB for ASan's and TSan's on x86-64: "allocation-size-too-big")
// unless it runs with allocator_may_return_null=1. Such a request can never
// be served, so in those builds the source refuses it itself, as out of
// memory: `Try*` returns nullptr there as in every other build.
namespace {

constexpr size_t kSanitizerMallocMax = size_t{1} << 40;
constexpr bool kSanitizerMalloc = internal::kAddressSanitizer || MCX_SANITIZE_THREAD != 0;

// glibc's malloc refuses anything above PTRDIFF_MAX; asked, Valgrind
// reports the size as fishy. Either way the answer is no.
bool BeyondMalloc(size_t size) {
  return size > (kSanitizerMalloc ? kSanitizerMallocMax : static_cast<size_t>(PTRDIFF_MAX));
}

}  // namespace

// SystemBlockSource::Acquire
//
// malloc() already aligns to alignof(max_align_t); only stricter alignments
// pay for aligned_alloc(), whose size must be a multiple of the alignment.
Block SystemBlockSource::Acquire(size_t min_size, size_t alignment) {
  if (min_size == 0) min_size = 1;
  if (BeyondMalloc(min_size)) return Block{};
  void* p;
  if (alignment <= kMinBlockAlignment) {
    p = std::malloc(min_size);
  } else {
    if (min_size > SIZE_MAX - alignment) return Block{};
    size_t rounded = (min_size + alignment - 1) & ~(alignment - 1);
    p = std::aligned_alloc(alignment, rounded);
    min_size = rounded;
  }
  if (p == nullptr) return Block{};
  return Block{p, UsableSize(p, min_size)};
}

void SystemBlockSource::Release(Block block) { std::free(block.ptr); }

// SystemBlockSource::Reallocate
//
// realloc() grows in place when the neighbouring memory is free, or remaps
// pages for large blocks; that is the "in place where the source allows" of
// a dedicated chunk's realloc. Over-aligned blocks fall back to a copy since
// realloc() only promises malloc's alignment.
Block SystemBlockSource::Reallocate(Block block, size_t keep,
                                    size_t new_min_size, size_t alignment) {
  if (alignment > kMinBlockAlignment) {
    return BlockSource::Reallocate(block, keep, new_min_size, alignment);
  }
  if (new_min_size == 0) new_min_size = 1;
  if (BeyondMalloc(new_min_size)) return Block{};
  void* p = std::realloc(block.ptr, new_min_size);
  if (p == nullptr) return Block{};
  return Block{p, UsableSize(p, new_min_size)};
}

namespace {

size_t PageBytes() {
  static const size_t page = [] {
    const long n = ::sysconf(_SC_PAGESIZE);
    return n > 0 ? static_cast<size_t>(n) : size_t{4096};
  }();
  return page;
}

}  // namespace

// SystemBlockSource::Purge
//
// MADV_DONTNEED, not MADV_FREE: with MADV_FREE the kernel takes the pages
// only under memory pressure and counts them resident until then, so a
// program (and its operator) would not see its footprint follow its data,
// which is the point of purging; mimalloc and jemalloc make the same choice
// by default where resident memory is what is watched. The pages come back
// zero-filled at the next touch, which costs a fault: callers purge only
// space that stays free. The range's partial pages at either end are kept
// (they hold bytes of the block that are still used). glibc never reads the
// inside of a chunk it lent, so dropping its pages is safe; the interior of
// a lent chunk is what glibc's own trimming of free chunks drops too.
size_t SystemBlockSource::Purge(void* ptr, size_t size) {
  const size_t page = PageBytes();
  const uintptr_t from = (reinterpret_cast<uintptr_t>(ptr) + page - 1) & ~(page - 1);
  const uintptr_t to = (reinterpret_cast<uintptr_t>(ptr) + size) & ~(page - 1);
  if (to <= from) return 0;
  if (::madvise(reinterpret_cast<void*>(from), to - from, MADV_DONTNEED) != 0) return 0;
  return to - from;
}

namespace {

// SetDefaultBlockSource's source, or kDecided once DefaultBlockSource() has
// chosen (the first to swap wins: an installation, or the decision).
constexpr uintptr_t kDecided = 1;
std::atomic<uintptr_t> installed_default{0};

// MCX_BLOCK_SOURCE's values (block_source.h).
constexpr char kBlockSourceEnv[] = "MCX_BLOCK_SOURCE";
constexpr char kSystemSourceName[] = "system";
constexpr char kCacheSourceName[] = "cache";

BlockSource* ChooseDefaultBlockSource() {
  uintptr_t installed = 0;
  if (!installed_default.compare_exchange_strong(installed, kDecided)) {
    return reinterpret_cast<BlockSource*>(installed);
  }
  // Direct mode wants every chunk to be a system allocation that ASan sees
  // come and go: no cache in between. So do memcheck and ASan runs that
  // must see a destroyed context's blocks freed (MCX_BLOCK_SOURCE=system):
  // the cache would keep them, and a use after release would go unseen.
  const char* env = std::getenv(kBlockSourceEnv);
  const bool system =
      internal::kDirect || (env != nullptr && std::strcmp(env, kSystemSourceName) == 0);
  if (!system && env != nullptr && *env != '\0' && std::strcmp(env, kCacheSourceName) != 0) {
    // A typo must not silently test the wrong configuration, and a library
    // must not abort its host over an environment variable: say so, once.
    constexpr char kWarning[] =
        "mcx: MCX_BLOCK_SOURCE is neither \"system\" nor \"cache\"; using the block cache\n";
    (void)!::write(STDERR_FILENO, kWarning, sizeof kWarning - 1);
  }
  if (system) {
    // Leaked on purpose, as the cache is.
    static SystemBlockSource* const source = new SystemBlockSource();
    return source;
  }
  return DefaultBlockCache();
}

}  // namespace

BlockSource* DefaultBlockSource() {
  // Decided once, at first use: a context's blocks must go back to the
  // source they came from, so the default cannot change while contexts live.
  static BlockSource* const source = ChooseDefaultBlockSource();
  return source;
}

bool SetDefaultBlockSource(BlockSource* source) {
  if (source == nullptr) return false;
  uintptr_t expected = 0;
  return installed_default.compare_exchange_strong(expected, reinterpret_cast<uintptr_t>(source));
}

namespace internal {

bool DefaultSourceInstalled() {
  return installed_default.load(std::memory_order_relaxed) > kDecided;
}

}  // namespace internal

namespace internal {
std::atomic<CachingBlockSource*> default_block_cache{nullptr};
}  // namespace internal

CachingBlockSource* DefaultBlockCache() {
  // Leaked on purpose: contexts may be destroyed by static destructors that
  // run after ours would have.
  static CachingBlockSource* const cache = [] {
    auto* c = new CachingBlockSource(new SystemBlockSource(), kDefaultBlockCacheBytes,
                                     kDefaultThreadCacheBytes, kDefaultBlockCacheLearnedBytes);
    internal::default_block_cache.store(c, std::memory_order_relaxed);
    return c;
  }();
  return cache;
}

}  // namespace mcx
