// CachingBlockSource: APR's allocator idea (memory/unix/apr_pools.c keeps
// freed nodes in size-indexed lists, capped by max_free) as a block source,
// with optional per-thread lists in front (tcmalloc's thread caches): the
// shared lists need a lock, and a lock taken for every context created and
// destroyed is what keeps two threads from running twice as fast as one.

#include "mcx/context/caching_block_source.h"

#include <pthread.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/context/internal/thread_cache.h"

namespace mcx {

using cache_internal::BucketOf;
using cache_internal::Claim;
using cache_internal::GoodFit;
using cache_internal::IsLarge;
using cache_internal::kThreadCacheSlots;
using internal::this_thread_caches;

namespace {

// How many nodes of a bucket are looked at before giving up: steady-state
// workloads ask for the same few sizes, so a fit is near the head or absent.
constexpr int kMaxProbe = 8;

// Decay runs this often (in operations on the shared lists), so a block is
// purged between kDecayOperations and a quarter more after it was kept; each
// run walks only the young heads of the lists and the newly old blocks.
constexpr uint64_t kDecayRunDivisor = 4;

// Unlinks and returns a kept block that fits, or nullptr. The fit window
// (min_size .. min_size * 5/4) spans at most two buckets.
template <typename Node>
Node* TakeFit(Node** buckets, int num_buckets, size_t min_size, size_t alignment) {
  int first = BucketOf(min_size);
  for (int b = first; b <= first + 1 && b < num_buckets; ++b) {
    Node** link = &buckets[b];
    for (int probe = 0; Claim(*link) != nullptr && probe < kMaxProbe; ++probe) {
      Node* n = *link;
      if (GoodFit(n->size, min_size) && (reinterpret_cast<uintptr_t>(n) & (alignment - 1)) == 0) {
        *link = n->next;
        // Kept blocks are cold: the next acquisition reads the next node's
        // header, so start that miss now (it was 18% of a tree build).
        if (n->next != nullptr) __builtin_prefetch(n->next);
        return n;
      }
      link = &n->next;
    }
  }
  return nullptr;
}

// Reallocate's window (see the header): a block grown by realloc may move
// into kept room up to this many times the size asked, six doublings: a
// buffer moved out of a freelist context's classes at 8 KiB then takes the
// 1 MiB block a buffer grown the same way left, and grows to it with no
// copy. Kept blocks are memory the process holds already; a context that
// takes one counts it whole, as it counts any block.
constexpr size_t kGrowthReuseFactor = 64;

// Unlinks and returns the largest kept block of min_size .. max_size bytes
// with the alignment, or nullptr.
template <typename Node>
Node* TakeWithin(Node** buckets, int num_buckets, size_t min_size, size_t max_size,
                 size_t alignment) {
  const int first = BucketOf(min_size);
  int last = BucketOf(max_size);
  if (last >= num_buckets) last = num_buckets - 1;
  for (int b = last; b >= first; --b) {
    Node** best = nullptr;
    Node** link = &buckets[b];
    for (int probe = 0; Claim(*link) != nullptr && probe < kMaxProbe; ++probe) {
      Node* n = *link;
      if (n->size >= min_size && n->size <= max_size &&
          (reinterpret_cast<uintptr_t>(n) & (alignment - 1)) == 0 &&
          (best == nullptr || n->size > (*best)->size)) {
        best = link;
      }
      link = &n->next;
    }
    if (best != nullptr) {
      Node* n = *best;
      *best = n->next;
      return n;
    }
  }
  return nullptr;
}

}  // namespace

namespace {

// Blocks moved from the shared lists to a thread cache with one lock when
// the thread cache has none that fits (tcmalloc moves objects in batches):
// a run of them moves with one splice, so a larger batch costs little.
constexpr size_t kRefillBlocks = 64;

// How far a thread's cap may rise above thread_cache_bytes, by doublings:
// far enough for a cycle of a few thousand contexts' first blocks (W4's
// 4,681 take 5 MiB), bounded because a thread that stops calling keeps its
// cache until it exits.
constexpr size_t kMaxThreadCapGrowth = 4;

// A spill of a full thread cache counts as the evidence for a raise while
// the thread's next decay runs come (a run every kThreadDecayTicks
// acquisitions): a destroy that spilled and the creations that take the
// blocks back lie that close, a spill long before a refill proves nothing.
constexpr int kFullSpillEvidenceRuns = 2;

}  // namespace

namespace internal {
__thread CachingBlockSource::ThreadCaches* this_thread_caches = nullptr;
}  // namespace internal

namespace {
// Set when the thread's caches are destroyed at its exit; from then on the
// thread uses the shared lists. It lives outside the object on purpose: a
// store to a member in the destructor is dead to the compiler (the object's
// lifetime ends), and GCC removes it.
__thread bool this_thread_caches_gone = false;
}  // namespace

CachingBlockSource::ThreadCaches::~ThreadCaches() {
  // Gone before the flushes: a flush that spills beyond its source's cap
  // releases upstream, into a stacked caching source that must not claim a
  // slot here again (an already flushed one would never be flushed), and
  // a context destroyed later in this thread's exit (by another
  // thread_local's destructor) must not use these caches either.
  this_thread_caches = nullptr;
  this_thread_caches_gone = true;
  for (ThreadCache& tc : slots) {
    // What does not fit the shared lists goes upstream because they are
    // full: counted as returned, as at a release.
    if (tc.owner != nullptr) tc.owner->FlushThreadCache(&tc, SpillReason::kFull);
  }
}

CachingBlockSource::ThreadCaches* CachingBlockSource::ThisThreadCaches() {
  static thread_local ThreadCaches caches;
  this_thread_caches = &caches;
  return &caches;
}

// The slot of a thread that has used this source before is slot 0 almost
// always (one caching source per process): one load and a compare, inline.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline CachingBlockSource::ThreadCache*
CachingBlockSource::OwnThreadCache() const {
  ThreadCaches* all = this_thread_caches;
  if (ABSL_PREDICT_TRUE(all != nullptr && all->slots[0].owner == this)) return &all->slots[0];
  return OwnThreadCacheSlow();
}

CachingBlockSource::ThreadCache* CachingBlockSource::OwnThreadCacheSlow() const {
  if (thread_cache_bytes_ == 0 || this_thread_caches_gone) return nullptr;
  ThreadCaches* all = ThisThreadCaches();
  ThreadCache* empty = nullptr;
  for (ThreadCache& tc : all->slots) {
    if (tc.owner == this) return &tc;
    if (tc.owner == nullptr && empty == nullptr) empty = &tc;
  }
  if (empty != nullptr) {
    empty->owner = const_cast<CachingBlockSource*>(this);
    empty->cap = thread_cache_bytes_;
    empty->full_spill_runs = 0;
  }
  return empty;
}

CachingBlockSource::ThreadCache* CachingBlockSource::ExistingThreadCache() const {
  ThreadCaches* all = this_thread_caches;
  if (all == nullptr) return nullptr;
  for (ThreadCache& tc : all->slots) {
    if (tc.owner == this) return &tc;
  }
  return nullptr;
}

// Gives a list of blocks (linked through their nodes) back upstream, as
// they came: unpoisoned. Callers hold no lock: upstream may be slow.
void CachingBlockSource::ReleaseUpstream(Node* list) {
  while (list != nullptr) {
    Node* next = list->next;
    internal::UnpoisonMemoryRegion(list, list->size);
    upstream_->Release(Block{list, list->size});
    list = next;
  }
}

// Purges a kept block's pages, once (mu_ held: it is in the lists).
void CachingBlockSource::PurgeKeptLocked(Node* n) {
  if (n->purged) return;
  n->purged = true;
  ++stats_.purged_blocks;
  stats_.purged_bytes += upstream_->Purge(n + 1, n->size - sizeof(Node));
}

// Moves every block of a thread cache to the shared lists under one lock
// (beyond the cap, upstream after it): a thread whose cache overflows pays
// one lock per cache-full of blocks, not one per block.
void CachingBlockSource::SpillThreadCache(ThreadCache* tc, SpillReason reason) {
  Node* release = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    SyncThreadCountsLocked(tc);
    TickLocked();
    for (int b = 0; b < kBuckets; ++b) {
      Node* list = tc->buckets[b];
      tc->old_tops[b] = nullptr;
      if (list == nullptr) continue;
      tc->buckets[b] = nullptr;
      size_t blocks;
      ShareListLocked(tc, b, list, reason, /*decayed=*/false, &release, &blocks);
    }
  }
  ReleaseUpstream(release);
}

void CachingBlockSource::SyncThreadCountsLocked(ThreadCache* tc) {
  // The thread's counts go with its blocks: from here on every block in
  // the shared lists, and every block a thread cache takes from them, has
  // its release counted in stats_, so taking one back out of `kept` below
  // can never make stats_ go below zero.
  stats_.hits += tc->hits;
  stats_.thread_hits += tc->hits;
  stats_.kept += tc->kept;
  stats_.thread_kept += tc->kept;
  tc->hits = tc->kept = 0;
}

size_t CachingBlockSource::ShareListLocked(ThreadCache* tc, int b, Node* list, SpillReason reason,
                                           bool decayed, Node** to_release, size_t* blocks_out) {
  // A whole list that fits the shared cap moves with one splice (the walk
  // only sums its bytes); otherwise block by block, up to the cap.
  size_t bytes = 0, blocks = 0;
  Node* last = nullptr;
  // On top of older blocks, as new: the order of the list holds, and a
  // block purged before it went to the thread is purged again (its pages
  // were touched there, or cost nothing to drop twice). A decayed block
  // was not touched since it came (a release clears `purged`), so one
  // purged then stays so. Two loops: this one runs over a cache-full of
  // blocks at every spill.
  const uint64_t now = clock_;
  if (decayed) {
    for (Node* n = Claim(list); n != nullptr; n = Claim(n->next)) {
      bytes += n->size;
      ++blocks;
      last = n;
      n->kept_at = now;
      n->decayed = false;
    }
  } else {
    for (Node* n = Claim(list); n != nullptr; n = Claim(n->next)) {
      bytes += n->size;
      ++blocks;
      last = n;
      n->kept_at = now;
      n->purged = false;
      n->decayed = false;
    }
  }
  tc->bytes -= bytes;
  *blocks_out = blocks;
  if (FitsShared(bytes)) {
    last->next = buckets_[b];
    buckets_[b] = list;
    stats_.cached_bytes += bytes;
    stats_.cached_blocks += blocks;
    if (decayed) {
      for (Node* n = list; n != last->next; n = n->next) PurgeKeptLocked(n);
    }
    return bytes;
  }
  while (Node* n = Claim(list)) {
    list = n->next;
    if (FitsShared(n->size)) {
      n->next = buckets_[b];
      buckets_[b] = n;
      stats_.cached_bytes += n->size;
      ++stats_.cached_blocks;
      if (decayed) PurgeKeptLocked(n);
      continue;
    }
    if (reason != SpillReason::kTrim) {
      // The shared lists are full: the block goes upstream as it would
      // have at its release had there been no thread cache, so its
      // release was a return, not a keep. A trim leaves it counted.
      --stats_.kept;
      if (n->thread_kept) --stats_.thread_kept;
      ++stats_.returned;
      if (reason == SpillReason::kFull) NoteTurnedAway(n->size);
    }
    n->next = *to_release;
    *to_release = n;
  }
  return bytes;
}

// A block that leaves a thread's list other than from the inline pop (which
// does the same): if it was the top of the list's old tail, the tail now
// starts below it.
inline void CachingBlockSource::ForgetOldTop(ThreadCache* tc, const Node* n) {
  const int b = BucketOf(n->size);
  if (tc->old_tops[b] == n) tc->old_tops[b] = n->next;
}

ABSL_ATTRIBUTE_ALWAYS_INLINE inline void CachingBlockSource::TickThreadCache(ThreadCache* tc) {
  if (ABSL_PREDICT_FALSE(--tc->decay_countdown == 0)) DecayThreadCache(tc);
}

// CachingBlockSource::DecayThreadCache
//
// jemalloc's thread-cache GC at block granularity, run by the owning thread
// every kThreadDecayTicks of its acquisitions: the thread's demand, so a
// block that none of them took was not needed (a burst of releases, as a
// large tree's destroy, ages nothing; the acquisitions that follow take the
// blocks back). A thread cache's lists are stacks (the fast paths push and
// pop the head; a probe or a refill keeps the order of what it leaves), so
// the blocks that were in a list at the previous run and are still there
// are a tail of it, below the lowest point the thread reached in it since
// (jemalloc's low water mark). Its top is `old_tops`, which every removal
// keeps up to date (ForgetOldTop): a run reads it rather than walking the
// blocks pushed since, so it costs the bucket heads, and takes the lock and
// walks a list only when there is a tail to move. A block a loop cycles is
// pushed again before every run and never leaves.
//
// The tail moves only when the low water mark stayed where the previous run
// left it (the same top, or the head then): a thread that is draining a
// list deeper than a period's acquisitions (a tree of more than
// kThreadDecayTicks contexts built from its own cache) moves the mark at
// every run, and its blocks stay until it stops.
//
// The tails go to the shared lists with their pages purged at once, not to
// wait for the shared decay: they have sat through a decay period already,
// and the shared clock counts only operations on the shared lists, which a
// thread that works in its own cache hardly makes (they would wait for
// other threads' traffic). Kept there, any thread reuses them without a
// system call; the shared decay later unlearns them as it does any block.
ABSL_ATTRIBUTE_NOINLINE void CachingBlockSource::DecayThreadCache(ThreadCache* tc) {
  tc->decay_countdown = kThreadDecayTicks;
  if (tc->full_spill_runs > 0) --tc->full_spill_runs;
  Node* stale[kBuckets];
  bool any = false;
  for (int b = 0; b < kBuckets; ++b) {
    Node* n = tc->old_tops[b];
    stale[b] = nullptr;
    if (n != nullptr && n == tc->decay_marks[b]) {
      // The young blocks above the tail stay: walk to the tail's link.
      Node** link = &tc->buckets[b];
      while (Claim(*link) != n) link = &(*link)->next;
      *link = nullptr;
      stale[b] = n;
      any = true;
      n = nullptr;
    }
    tc->decay_marks[b] = n != nullptr ? n : tc->buckets[b];
    // Every block in the list now was there at this run.
    tc->old_tops[b] = tc->buckets[b];
  }
  if (!any) return;
  // The thread keeps more than it reuses: a raised cap comes down a step.
  if (tc->cap > thread_cache_bytes_) tc->cap /= 2;
  Node* release = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    SyncThreadCountsLocked(tc);
    TickLocked();
    for (int b = 0; b < kBuckets; ++b) {
      if (stale[b] == nullptr) continue;
      size_t blocks;
      stats_.thread_decayed_bytes += ShareListLocked(tc, b, stale[b], SpillReason::kDecay,
                                                     /*decayed=*/true, &release, &blocks);
      stats_.thread_decayed_blocks += blocks;
    }
  }
  ReleaseUpstream(release);
}

void CachingBlockSource::FlushThreadCache(ThreadCache* tc, SpillReason reason) {
  SpillThreadCache(tc, reason);  // its counts go with its blocks
  tc->owner = nullptr;           // the slot is the thread's own: no lock
  tc->decay_countdown = kThreadDecayTicks;  // the next owner starts afresh
}

namespace {

// The live caching sources, for fork(). Made once and never destroyed: a
// source may outlive the statics of the file (the default cache does).
struct ForkRegistry {
  std::mutex mu;
  std::vector<CachingBlockSource*> sources;
};

ForkRegistry& Forks() {
  static ForkRegistry* const registry = new ForkRegistry;
  return *registry;
}

}  // namespace

// Newest first: a source over another (created after it) takes its own
// lock and then its upstream's (a release past its cap, a purge), so the
// fork takes them in that order too.
void CachingBlockSource::LockAllBeforeFork() {
  ForkRegistry& forks = Forks();
  forks.mu.lock();
  for (auto s = forks.sources.rbegin(); s != forks.sources.rend(); ++s) (*s)->mu_.lock();
}

void CachingBlockSource::UnlockAllAfterFork() {
  ForkRegistry& forks = Forks();
  for (CachingBlockSource* s : forks.sources) s->mu_.unlock();
  forks.mu.unlock();
}

CachingBlockSource::CachingBlockSource(BlockSource* upstream, size_t max_cached_bytes,
                                       size_t thread_cache_bytes, size_t max_learned_bytes)
    : upstream_(upstream),
      max_cached_bytes_(max_cached_bytes),
      thread_cache_bytes_(thread_cache_bytes),
      max_learned_bytes_(max_learned_bytes) {
  static const bool registered =
      pthread_atfork(&LockAllBeforeFork, &UnlockAllAfterFork, &UnlockAllAfterFork) == 0;
  (void)registered;
  ForkRegistry& forks = Forks();
  std::lock_guard<std::mutex> lock(forks.mu);
  forks.sources.push_back(this);
}

CachingBlockSource::~CachingBlockSource() {
  {
    ForkRegistry& forks = Forks();
    std::lock_guard<std::mutex> lock(forks.mu);
    forks.sources.erase(std::find(forks.sources.begin(), forks.sources.end(), this));
  }
  Trim();
}

// The fast paths (internal/thread_cache.h) keep few values live, so that
// they need no registers saved: everything else is AcquireSlow's and
// ReleaseSlow's.
Block CachingBlockSource::Acquire(size_t min_size, size_t alignment) {
  return AcquireInline(min_size, alignment);
}

ABSL_ATTRIBUTE_NOINLINE Block CachingBlockSource::AcquireMiss(size_t min_size, size_t alignment) {
  if (min_size < sizeof(Node)) min_size = sizeof(Node);
  return AcquireSlow(OwnThreadCache(), min_size, alignment);
}

// For the acquisition fast path, which ticks the thread's first slot: with
// one argument, the fast path moves no register to pass more.
ABSL_ATTRIBUTE_NOINLINE Block CachingBlockSource::DecayThenTake(Node* n) {
  ThreadCache* tc = &this_thread_caches->slots[0];
  tc->owner->DecayThreadCache(tc);
  return TakeFromThreadCache(tc, n);
}

ABSL_ATTRIBUTE_NOINLINE Block CachingBlockSource::AcquireSlow(ThreadCache* tc, size_t min_size,
                                                        size_t alignment) {
  Block block = AcquireBeyondHead(tc, min_size, alignment);
  // After the acquisition, as on the fast path: a refill's blocks are young.
  if (tc != nullptr) TickThreadCache(tc);
  return block;
}

Block CachingBlockSource::AcquireBeyondHead(ThreadCache* tc, size_t min_size, size_t alignment) {
  if (tc != nullptr) {
    if (Node* n = TakeFit(tc->buckets, kBuckets, min_size, alignment)) {
      ForgetOldTop(tc, n);
      return TakeFromThreadCache(tc, n);
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    TickLocked();
    if (Node* n = TakeFit(buckets_, kBuckets, min_size, alignment)) {
      CountSharedHitLocked(n);
      // Refill: a thread that came here will likely ask again for the same
      // size; a batch under this one lock saves a lock per block. Only the
      // run of heads of the same list that fit as well is taken (no
      // probing), and moves with one splice.
      const int b = BucketOf(n->size);
      if (tc != nullptr && !IsLarge(n->size)) {
        if (tc->full_spill_runs > 0) RaiseThreadCapLocked(tc);
        const size_t cap = ThreadCacheCap(tc);
        const size_t room = cap > tc->bytes ? cap - tc->bytes : 0;
        size_t bytes = 0, blocks = 0;
        Node* first = Claim(buckets_[b]);
        Node* last = nullptr;
        for (Node* m = first; m != nullptr && blocks < kRefillBlocks; m = Claim(m->next)) {
          if (!GoodFit(m->size, min_size) || (reinterpret_cast<uintptr_t>(m) & (alignment - 1)) != 0 ||
              m->size > room - bytes) {
            break;
          }
          bytes += m->size;
          ++blocks;
          last = m;
        }
        if (last != nullptr) {
          buckets_[b] = last->next;
          last->next = tc->buckets[b];
          tc->buckets[b] = first;
          stats_.cached_bytes -= bytes;
          stats_.cached_blocks -= blocks;
          tc->bytes += bytes;
        }
      }
      internal::UnpoisonMemoryRegion(n, n->size);
      return Block{n, n->size};
    }
    ++stats_.misses;
    LearnFromMiss(min_size);
  }
  return upstream_->Acquire(min_size, alignment);
}

void CachingBlockSource::Release(Block block) { ReleaseInline(block); }

void CachingBlockSource::ReleaseSlow(Block block) {
  if (block.size < sizeof(Node)) {
    upstream_->Release(block);
    return;
  }
  ThreadCache* tc = OwnThreadCache();
  // Within the shared cap as well: a cap of 0 turns the thread caches off.
  const size_t tc_cap = tc != nullptr && !IsLarge(block.size) ? ThreadCacheCap(tc) : 0;
  if (block.size <= tc_cap) {
    if (tc->bytes + block.size > tc_cap) {
      // Full: make room for this block and the next ones. If the thread
      // takes them back soon, its cap was too small for its cycle.
      SpillThreadCache(tc, SpillReason::kFull);
      tc->full_spill_runs = kFullSpillEvidenceRuns;
    }
    KeepInThreadCache(tc, block);
    return;
  }
  ReleaseShared(block);
}

void CachingBlockSource::ReleaseShared(Block block) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    TickLocked();
    if (FitsShared(block.size)) {
      Node* n = static_cast<Node*>(block.ptr);
      // The context may have left the block poisoned (Valgrind's mempool
      // teardown does): the node is the cache's to write.
      internal::UnpoisonMemoryRegion(n, sizeof(Node));
      n->size = block.size;
      n->kept_at = clock_;
      n->thread_kept = false;
      n->purged = false;
      n->decayed = false;
      int b = BucketOf(block.size);
      n->next = buckets_[b];
      buckets_[b] = n;
      stats_.cached_bytes += block.size;
      ++stats_.cached_blocks;
      ++stats_.kept;
      if (IsLarge(block.size) && (warm_large_ & (uint64_t{1} << b)) == 0) {
        PurgeKeptLocked(n);  // kept for its address, without its pages (above)
      }
      // A kept block is free memory: under ASan any use of it through a
      // stale pointer into a destroyed context is reported.
      internal::PoisonMemoryRegion(reinterpret_cast<char*>(n) + sizeof(Node),
                                   block.size - sizeof(Node));
      return;
    }
    ++stats_.returned;
    NoteTurnedAway(block.size);
  }
  upstream_->Release(block);
}

// CachingBlockSource::Reallocate
//
// A growth moves into kept room (TakeRoom) where there is some: the copy is
// of what the block holds so far, and the block taken is large enough for
// the growths to come. Otherwise every block came from upstream (kept blocks
// too), so upstream can resize it, in place where it is able to.
Block CachingBlockSource::Reallocate(Block block, size_t keep, size_t new_min_size,
                                     size_t alignment) {
  if (new_min_size > block.size && new_min_size <= SIZE_MAX / kGrowthReuseFactor) {
    Block room = TakeRoom(new_min_size, new_min_size * kGrowthReuseFactor, alignment);
    if (room.ptr != nullptr) {
      std::memcpy(room.ptr, block.ptr, keep < block.size ? keep : block.size);
      Release(block);
      return room;
    }
  }
  return upstream_->Reallocate(block, keep, new_min_size, alignment);
}

void CachingBlockSource::CountSharedHitLocked(const Node* n) {
  ++stats_.hits;
  stats_.cached_bytes -= n->size;
  --stats_.cached_blocks;
  // A large block of this size came back: the program reuses such blocks,
  // which from now on are kept warm.
  if (IsLarge(n->size)) warm_large_ |= uint64_t{1} << BucketOf(n->size);
}

// CachingBlockSource::TakeRoom
//
// The thread's cache first (no lock), then the shared lists; in each, the
// largest bucket first, looking at kMaxProbe blocks of a bucket at most (a
// bucket's blocks lie within a factor of two of each other, and the window
// spans a few buckets).
Block CachingBlockSource::TakeRoom(size_t min_size, size_t max_size, size_t alignment) {
  if (min_size < sizeof(Node)) min_size = sizeof(Node);
  if (ThreadCache* tc = OwnThreadCache(); tc != nullptr) {
    if (Node* n = TakeWithin(tc->buckets, kBuckets, min_size, max_size, alignment)) {
      ForgetOldTop(tc, n);
      Block block = TakeFromThreadCache(tc, n);
      TickThreadCache(tc);
      return block;
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  TickLocked();
  Node* n = TakeWithin(buckets_, kBuckets, min_size, max_size, alignment);
  if (n == nullptr) return Block{};
  CountSharedHitLocked(n);
  internal::UnpoisonMemoryRegion(n, n->size);
  return Block{n, n->size};
}

size_t CachingBlockSource::Purge(void* ptr, size_t size) { return upstream_->Purge(ptr, size); }

// CachingBlockSource::TickLocked
//
// Every list is in keeping order, newest at the head (a block enters at the
// head, and leaves from anywhere), so the old blocks of a list are a tail,
// and the tail's decayed blocks a tail of that: the walk stops at the first
// decayed block (not the first purged one: a large block is purged when it
// is kept, and decays later, as the others do). Purging happens under the
// lock, since a block taken from the lists must not lose the bytes its new
// owner writes; it is rare (a block once per stay) and bounded by the
// blocks kept. The node and the rest
// of the block's first page stay as they were: what misuse checks read in a
// released block (a freed dedicated chunk's header word, just past the
// bytes a source may write, freelist.cc's kReleasedBlockScratch) lies there.
void CachingBlockSource::TickLocked() {
  ++clock_;
  if (clock_ < next_decay_) return;
  next_decay_ = clock_ + kDecayOperations / kDecayRunDivisor;
  for (Node** bucket = buckets_; bucket != buckets_ + kBuckets; ++bucket) {
    Node** link = bucket;
    while (Node* n = Claim(*link)) {
      if (clock_ - n->kept_at < kDecayOperations) {
        link = &n->next;
        continue;
      }
      if (n->decayed) break;
      n->decayed = true;
      // Kept and unused: retention learned for such blocks goes too, and a
      // block beyond the cap that leaves goes upstream now rather than stay
      // purged: kept, it would take the room of the blocks the program
      // does reuse, and the cache would learn that room back for nothing.
      // (Under the lock, as purges are: a decay run is rare.)
      learned_bytes_ -= n->size < learned_bytes_ ? n->size : learned_bytes_;
      // A large size left unused goes cold again.
      if (IsLarge(n->size)) warm_large_ &= ~(uint64_t{1} << (bucket - buckets_));
      const size_t cap = max_cached_bytes_.load(std::memory_order_relaxed) + learned_bytes_;
      if (stats_.cached_bytes > cap) {
        *link = n->next;
        stats_.cached_bytes -= n->size;
        --stats_.cached_blocks;
        if (!n->purged) {  // all its pages go (a large block's went already)
          ++stats_.purged_blocks;
          stats_.purged_bytes += n->size;
        }
        internal::UnpoisonMemoryRegion(n, n->size);
        upstream_->Release(Block{n, n->size});
        continue;
      }
      PurgeKeptLocked(n);
      link = &n->next;
    }
  }
}

void CachingBlockSource::TrimLocked(size_t target, Node** to_release) {
  // Blocks leaving the cache go upstream unpoisoned, as they came.
  for (int b = kBuckets - 1; b >= 0 && stats_.cached_bytes > target; --b) {
    while (Claim(buckets_[b]) != nullptr && stats_.cached_bytes > target) {
      Node* n = buckets_[b];
      buckets_[b] = n->next;
      internal::UnpoisonMemoryRegion(n, n->size);
      stats_.cached_bytes -= n->size;
      --stats_.cached_blocks;
      n->next = *to_release;
      *to_release = n;
    }
  }
}

void CachingBlockSource::SetMaxCachedBytes(size_t bytes) {
  Node* release = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    max_cached_bytes_.store(bytes, std::memory_order_relaxed);
    // A cap set by the program starts over: what was learned above the old
    // one says nothing about the new (and a cap of 0 turns caching off).
    learned_bytes_ = 0;
    turned_away_bytes_ = 0;
    TrimLocked(bytes, &release);
  }
  // The calling thread's cache shrinks now; other threads' at their next
  // release beyond the new cap, or when they exit.
  if (ThreadCache* tc = ExistingThreadCache(); tc != nullptr && tc->bytes > ThreadCacheCap(tc)) {
    SpillThreadCache(tc, SpillReason::kTrim);
  }
  // Upstream calls happen outside the lock: upstream may be slow.
  ReleaseUpstream(release);
}

size_t CachingBlockSource::max_cached_bytes() const {
  return max_cached_bytes_.load(std::memory_order_relaxed);
}

void CachingBlockSource::SetMaxLearnedBytes(size_t bytes) {
  Node* release = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    max_learned_bytes_ = bytes;
    if (learned_bytes_ > bytes) learned_bytes_ = bytes;
    TrimLocked(max_cached_bytes_.load(std::memory_order_relaxed) + learned_bytes_, &release);
  }
  ReleaseUpstream(release);
}

size_t CachingBlockSource::max_learned_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return max_learned_bytes_;
}

bool CachingBlockSource::FitsShared(size_t size) const {
  const size_t cap = max_cached_bytes_.load(std::memory_order_relaxed) + learned_bytes_;
  return stats_.cached_bytes <= cap && size <= cap - stats_.cached_bytes;
}

void CachingBlockSource::NoteTurnedAway(size_t size) {
  if (max_learned_bytes_ == learned_bytes_) return;
  // Evidence goes stale with the decay period: a miss long after a block
  // was turned away says nothing about that block.
  if (clock_ - turned_away_at_ > kDecayOperations) turned_away_bytes_ = 0;
  turned_away_bytes_ += size;
  turned_away_at_ = clock_;
}

void CachingBlockSource::LearnFromMiss(size_t size) {
  if (turned_away_bytes_ == 0) return;
  if (clock_ - turned_away_at_ > kDecayOperations ||
      max_cached_bytes_.load(std::memory_order_relaxed) == 0) {
    turned_away_bytes_ = 0;
    return;
  }
  // Raise the cap by the request, but by no more than was turned away (the
  // rest of the miss is growth, not reuse) and within the ceiling.
  size_t grow = size < turned_away_bytes_ ? size : turned_away_bytes_;
  const size_t room = max_learned_bytes_ - learned_bytes_;
  if (grow > room) grow = room;
  turned_away_bytes_ -= grow;
  learned_bytes_ += grow;
}

// A thread took back from the shared lists blocks that its full cache
// spilled there lately: what it cycles is more than its cap, and every
// cycle would take the lock twice. The cap doubles (the shared lists'
// learning, at thread scale), up to kMaxThreadCapGrowth times
// thread_cache_bytes; decay brings it back down when the thread keeps more
// than it reuses.
void CachingBlockSource::RaiseThreadCapLocked(ThreadCache* tc) {
  tc->full_spill_runs = 0;
  const size_t most = thread_cache_bytes_ * kMaxThreadCapGrowth;
  if (tc->cap >= most) return;
  tc->cap = tc->cap * 2 < most ? tc->cap * 2 : most;
  ++stats_.thread_cap_raises;
}

void CachingBlockSource::Trim() {
  if (ThreadCache* tc = ExistingThreadCache()) FlushThreadCache(tc, SpillReason::kTrim);
  Node* release = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    TrimLocked(0, &release);
  }
  ReleaseUpstream(release);
}

void CachingBlockSource::MarkThreadIdle() {
  // Kept, as a trim keeps them counted: the blocks are the program's
  // reuse, handed to the other threads.
  if (ThreadCache* tc = ExistingThreadCache()) FlushThreadCache(tc, SpillReason::kTrim);
}

CachingBlockSource::Stats CachingBlockSource::GetStats() const {
  Stats s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s = stats_;
    s.learned_bytes = learned_bytes_;
  }
  if (const ThreadCache* tc = ExistingThreadCache()) {
    {
      s.hits += tc->hits;
      s.thread_hits += tc->hits;
      s.kept += tc->kept;
      s.thread_kept += tc->kept;
      s.cached_bytes += tc->bytes;
      s.thread_cached_bytes = tc->bytes;
      s.thread_cache_cap = ThreadCacheCap(tc);
      for (Node* const* b = tc->buckets; b != tc->buckets + kBuckets; ++b) {
        for (const Node* n = Claim(*b); n != nullptr; n = Claim(n->next)) ++s.cached_blocks;
      }
    }
  }
  return s;
}

}  // namespace mcx
