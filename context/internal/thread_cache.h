// Internal to mcx; do not include from outside.
// IWYU pragma: private
//
// The block cache's thread caches (caching_block_source.h), with the fast
// paths of Acquire and Release: a hit at the head of the thread's list for
// the size, and a release that fits the thread's cap. They are here, inline,
// so that the tree reaches them without the virtual call for the default
// cache (AcquireFrom and ReleaseTo, context_impl.h): a context's creation
// and destroy each make one such call. caching_block_source.cc has the rest
// and calls the same functions, so there is one fast path.
//
// Interface:
//   this_thread_caches      the calling thread's caches (one load)
//   default_block_cache     the cache behind DefaultBlockCache(), once made
//   CachingBlockSource::ThreadCache, ThreadCaches, and the inline members
//   AcquireInline, ReleaseInline, TakeFromThreadCache, KeepInThreadCache,
//   ThreadCacheCap
//   cache_internal::BucketOf, GoodFit, IsLarge, Claim, kThreadCacheSlots

#ifndef MCX_CONTEXT_INTERNAL_THREAD_CACHE_H_
#define MCX_CONTEXT_INTERNAL_THREAD_CACHE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "mcx/context/block_source.h"
#include "mcx/context/caching_block_source.h"
#include "mcx/context/internal/sanitizer.h"

namespace mcx {
namespace cache_internal {

inline int BucketOf(size_t size) {
  return 63 - __builtin_clzll(static_cast<unsigned long long>(size));
}

// A kept block may be up to a quarter larger than asked for: reuse beats a
// system call, but a small request must not pin a block many times its size.
inline bool GoodFit(size_t have, size_t want) { return have >= want && have - want <= want / 4; }

// Blocks above this are larger than any kind grows its blocks by default
// (pool and shared contexts to 1 MiB, the freelist to 256 KiB; the rest
// is room for a source's slack): each holds one large chunk. Programs free
// such buffers and rarely ask for one of the same size again, so they skip
// the thread caches and, until a block of their size is reused, give their
// pages back when kept (as glibc unmaps a large chunk at its free, until
// its threshold learns that such sizes come back).
inline constexpr size_t kLargeBlockBytes = (size_t{1} << 20) + (size_t{64} << 10);

inline bool IsLarge(size_t size) { return size > kLargeBlockBytes; }

// A kept block's node, readable. Under Valgrind a context announces a
// chunk's free after its kind has released the chunk's block (a large or
// dedicated chunk is its block), which marks the block's first bytes, this
// node, inaccessible again; the node is the cache's, so it claims the bytes
// back before reading them. Elsewhere a no-op.
template <typename Node>
Node* Claim(Node* n) {
  if (internal::kValgrind && n != nullptr) internal::UnpoisonMemoryRegion(n, sizeof(Node));
  return n;
}

// Sources with thread caches that one thread can use at once; a thread
// using more gets the shared lists of the others. Sources stack (a test's
// counting source over the default cache), so one slot would not do.
inline constexpr int kThreadCacheSlots = 4;

}  // namespace cache_internal

// One thread's kept blocks for one source.
struct CachingBlockSource::ThreadCache {
  CachingBlockSource* owner = nullptr;
  Node* buckets[kBuckets] = {};
  size_t bytes = 0;  // its blocks are counted by GetStats, which walks them
  // This thread's cap (ThreadCacheCap): thread_cache_bytes at first, raised
  // when the thread takes back from the shared lists what a full cache
  // spilled there, lowered when blocks decay (RaiseThreadCapLocked,
  // DecayThreadCache). Between `bytes` and the counters: GCC pairs the
  // updates of two adjacent counters in one vector add, eight instructions
  // on a fast path instead of two.
  size_t cap = 0;
  uint64_t hits = 0;
  uint64_t kept = 0;
  // Per list, where the previous decay run left the low water mark: the
  // first block it found old, or the head (DecayThreadCache). Compared,
  // never followed.
  Node* decay_marks[kBuckets] = {};
  // Per list, the first block that was in it at the last decay run (or
  // nullptr): that block and every block below it have sat in the list
  // since, as the lists are stacks. Kept up to date where a block leaves a
  // list (ForgetOldTop), so that a decay run reads it instead of walking
  // the young blocks above it.
  Node* old_tops[kBuckets] = {};
  // Acquisitions left before the next decay run (TickThreadCache). Not next to
  // `kept`: there GCC pairs the two updates in one vector add, five
  // instructions on the release fast path instead of one.
  uint64_t decay_countdown = kThreadDecayTicks;
  // Decay runs for which a spill of the full cache still counts as the
  // evidence a refill needs to raise the cap; 0: no recent spill.
  int full_spill_runs = 0;
};

// The caches live in a thread_local object (its destructor flushes them at
// thread exit, caching_block_source.cc); a plain __thread pointer to it makes
// the common access one load, without the guard a thread_local with a
// destructor costs each time.
struct CachingBlockSource::ThreadCaches {
  ThreadCache slots[cache_internal::kThreadCacheSlots];
  ~ThreadCaches();
};

namespace internal {

extern __thread CachingBlockSource::ThreadCaches* this_thread_caches;

// DefaultBlockCache() once it is made, else nullptr (block_source.cc):
// compared with a context's source, never called through before that.
extern std::atomic<CachingBlockSource*> default_block_cache;

}  // namespace internal

ABSL_ATTRIBUTE_ALWAYS_INLINE inline Block CachingBlockSource::TakeFromThreadCache(ThreadCache* tc,
                                                                                 Node* n) {
  tc->bytes -= n->size;
  ++tc->hits;
  internal::UnpoisonMemoryRegion(n, n->size);
  return Block{n, n->size};
}

ABSL_ATTRIBUTE_ALWAYS_INLINE inline void CachingBlockSource::KeepInThreadCache(ThreadCache* tc,
                                                                              Block block) {
  Node* n = static_cast<Node*>(block.ptr);
  internal::UnpoisonMemoryRegion(n, sizeof(Node));
  n->size = block.size;
  n->thread_kept = true;
  n->purged = false;
  Node** head = &tc->buckets[cache_internal::BucketOf(block.size)];
  n->next = *head;
  *head = n;
  tc->bytes += block.size;
  ++tc->kept;
  internal::PoisonMemoryRegion(reinterpret_cast<char*>(n) + sizeof(Node),
                               block.size - sizeof(Node));
}

inline size_t CachingBlockSource::ThreadCacheCap(const ThreadCache* tc) const {
  const size_t cap = max_cached_bytes_.load(std::memory_order_relaxed);
  return cap < tc->cap ? cap : tc->cap;
}

// Steady state: the head of the thread's list for this size fits. Few
// values live, so that no register is saved; the rest is AcquireMiss's.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline Block CachingBlockSource::AcquireInline(size_t min_size,
                                                                           size_t alignment) {
  ThreadCaches* all = internal::this_thread_caches;
  if (ABSL_PREDICT_TRUE(all != nullptr && all->slots[0].owner == this && min_size >= sizeof(Node))) {
    ThreadCache* tc = &all->slots[0];
    const int b = cache_internal::BucketOf(min_size);
    Node** head = &tc->buckets[b];
    Node* n = cache_internal::Claim(*head);
    if (ABSL_PREDICT_TRUE(n != nullptr && cache_internal::GoodFit(n->size, min_size) &&
                          (reinterpret_cast<uintptr_t>(n) & (alignment - 1)) == 0)) {
      *head = n->next;
      if (ABSL_PREDICT_FALSE(n == tc->old_tops[b])) tc->old_tops[b] = n->next;
      if (n->next != nullptr) __builtin_prefetch(n->next);
      // The decay clock ticks once the block is out of the lists.
      if (ABSL_PREDICT_FALSE(--tc->decay_countdown == 0)) return DecayThenTake(n);
      return TakeFromThreadCache(tc, n);
    }
  }
  return AcquireMiss(min_size, alignment);
}

// Into the thread's own cache while it stays within its cap (and the shared
// cap: 0 turns the thread caches off); the rest is ReleaseSlow's.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void CachingBlockSource::ReleaseInline(Block block) {
  ThreadCaches* all = internal::this_thread_caches;
  if (ABSL_PREDICT_TRUE(all != nullptr && all->slots[0].owner == this &&
                        block.size >= sizeof(Node) && !cache_internal::IsLarge(block.size))) {
    ThreadCache* tc = &all->slots[0];
    const size_t cap = ThreadCacheCap(tc);
    if (ABSL_PREDICT_TRUE(block.size <= cap - tc->bytes && tc->bytes <= cap)) {
      KeepInThreadCache(tc, block);
      return;
    }
  }
  ReleaseSlow(block);
}

}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_THREAD_CACHE_H_
