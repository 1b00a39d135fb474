// File: mcx/context/caching_block_source.h
//
// A block source that keeps released blocks for reuse, as APR's allocator
// keeps freed nodes: creating and destroying a per-request context then
// costs no call to the system allocator in steady state, and no page faults
// (glibc hands freed memory back to the kernel at almost every context
// destroy, and each page faulted back in costs about 2 microseconds).
//
// Contract:
//   - Released blocks are kept in shared lists, grouped by size, while the
//     bytes there stay within `max_cached_bytes` (APR's `max_free`); beyond
//     that they go back to the upstream source at once. Thread caches (below)
//     hold their blocks in addition, each within its own cap.
//   - `Acquire(n, alignment)` reuses a kept block whose size is at least `n`
//     and at most `n` plus a quarter (so a small request does not pin a huge
//     block) and whose address has the alignment; else it asks upstream.
//   - Thread-safe (one mutex; contexts call a source only on their slow
//     paths), and fork-safe: the mutex is held across a fork, so a child
//     forked while another thread was inside the source can use it.
//     Destroying the source returns every kept block upstream.
//   - Optionally, each thread keeps up to `thread_cache_bytes` (never more
//     than `max_cached_bytes`) of released blocks of its own in front of the
//     shared lists (tcmalloc's thread caches, at block granularity): a
//     thread that creates and destroys its contexts then takes no lock at
//     all, and two threads never contend. A thread's blocks go to the shared
//     lists when it exits; a context destroyed later in its exit (by a
//     thread_local's destructor) uses the shared lists. Only a source
//     that outlives every thread that uses it may have thread caches (the
//     default cache is never destroyed); 0 (the default) turns them off.
//     Stats count a thread's hits and kept blocks when its cache spills or
//     the thread exits, and the calling thread's own at once.
//   - A thread's cap follows its cycle: a thread that takes back from the
//     shared lists what its full cache spilled there shortly before (within
//     two of its decay runs, below) cycles more than its cap, and its cap
//     doubles, up to four times `thread_cache_bytes`; a decay run that finds
//     blocks the thread no longer reaches halves a raised cap.
//   - Decay: a block that stays in the shared lists while they serve
//     `kDecayOperations` acquisitions and releases of other blocks is not
//     part of what the program reuses; its pages go back through upstream's
//     `Purge` (all but the cache's node), once, and it stays kept, to be
//     reused without a system call to get it (each page it touches again
//     costs a fault). The clock is the cache's own use, not time: no
//     thread, no timer, and a program that stops using the cache keeps what
//     it had then.
//   - Thread caches decay too, on their own thread's clock: a block that
//     stays in a thread cache while its thread takes between
//     kThreadDecayTicks and three times as many other blocks (twice, unless
//     the thread reordered the list just before it stopped using it) goes
//     to the shared
//     lists (in a batch, under the lock) with its pages purged, and stays
//     kept there. A block the thread takes again within that time stays,
//     and so does a list the thread is still working its way down (one
//     deeper than a period's acquisitions). Releases do not age blocks. A
//     thread that stops acquiring blocks keeps its thread cache (at most
//     its cap) until it exits or calls Trim or MarkThreadIdle: other
//     threads cannot take it without a lock on its fast path.
//   - Large blocks (above the largest block a kind grows to by default,
//     about 1 MiB: one large chunk each) skip the thread caches, and are
//     kept without their pages (upstream's Purge at once) until a block of
//     their size is taken back; from then on blocks of that size are kept
//     warm, until one decays. A program that frees a large buffer and never
//     asks for one again does not keep it resident (glibc unmaps such
//     chunks at their free), and one that reuses its large buffers faults
//     their pages in once.
//   - `Reallocate` that grows a block moves it into a kept block when one
//     has room: the largest of up to kGrowthReuseFactor times the size
//     asked (copying `keep` bytes; the old block is kept in its place).
//     A buffer grown by realloc again and again (a chain of doublings,
//     freed and grown anew, as glibc grows a chunk at the top of its heap)
//     then takes the block the last one left, warm, and grows in place
//     there (the freelist kind's dedicated chunks do), instead of upstream
//     growing it into fresh memory each time while the blocks it gave back
//     sit here unused. Otherwise, and for a shrink, upstream resizes it.
//   - Retention that follows reuse: beyond `max_cached_bytes` the cache may
//     keep up to `max_learned_bytes` more, learned from the program. When
//     the shared lists are full, a released block goes upstream and the
//     cache remembers its bytes; an acquisition that then misses, within
//     kDecayOperations, proves that the program wanted such a block back,
//     and the cache raises its cap by the request (by no more than it turned
//     away). A program that cycles more than the cap (a context of 256 MiB
//     made and destroyed again and again; four threads filling one shared
//     context) then keeps its cycle after one round, as APR, which keeps
//     everything, does; a program whose blocks come back within the cap
//     learns nothing. What was learned is unlearned as kept blocks decay
//     unused: each decaying block lowers the learned bytes by its size, and
//     goes upstream whole (not purged and kept) while the shared lists hold
//     more than the lowered cap, so that stale blocks never take the room
//     of the ones the program reuses.
//     SetMaxCachedBytes forgets what was learned. 0 (the default, but not
//     the default cache's) keeps the cap fixed.
//
// Example:
//
//   mcx::CachingBlockSource cache(mcx::DefaultBlockSource(), 8 << 20);
//   mcx::ContextOptions o;
//   o.block_source = &cache;
//   mcx::Context* server = mcx::Context::Create(nullptr, "server", mcx::PoolKind(), o);
//   // children of `server` share the cache

#ifndef MCX_CONTEXT_CACHING_BLOCK_SOURCE_H_
#define MCX_CONTEXT_CACHING_BLOCK_SOURCE_H_

#include <cstddef>
#include <atomic>
#include <cstdint>
#include <mutex>

#include "mcx/context/block_source.h"

namespace mcx {

class CachingBlockSource final : public BlockSource {
 public:
  struct Stats {
    uint64_t hits = 0;       // acquisitions served from the cache
    uint64_t misses = 0;     // acquisitions passed upstream
    uint64_t kept = 0;       // releases kept in the cache
    // Releases passed upstream because the cache was full: at the release,
    // or later, when a full thread cache or an exiting thread's cache spills
    // beyond the shared cap. `kept + returned` counts every release once;
    // blocks trimmed later (cap lowered, Trim) stay counted as kept.
    uint64_t returned = 0;
    // Of `hits` and `kept`: those served by thread caches.
    uint64_t thread_hits = 0;
    uint64_t thread_kept = 0;
    size_t thread_cached_bytes = 0;  // of cached_bytes: the calling thread's
    size_t cached_bytes = 0;
    size_t cached_blocks = 0;
    // Decay: kept blocks whose pages went back through upstream's Purge
    // (or that went upstream whole, beyond a cap lowered by unlearning),
    // and the bytes given back for them (each block counted once).
    uint64_t purged_blocks = 0;
    size_t purged_bytes = 0;
    // Retention above max_cached_bytes that reuse earned (at most
    // max_learned_bytes): the shared lists' cap is the sum of the two.
    size_t learned_bytes = 0;
    // Thread caches' decay: blocks that sat unused in a thread cache and
    // went to the shared lists (or upstream, beyond the shared cap), and
    // their bytes.
    uint64_t thread_decayed_blocks = 0;
    size_t thread_decayed_bytes = 0;
    // Thread caches' own caps: how often a thread's cap doubled because it
    // took back what its full cache had spilled (all threads), and the
    // calling thread's cap now (0 without a thread cache).
    uint64_t thread_cap_raises = 0;
    size_t thread_cache_cap = 0;
  };

  // Acquisitions and releases on the shared lists that a kept block must
  // sit through, unused, before its pages go back: long enough that the
  // blocks a server's requests cycle through never decay (they come back
  // within a few operations), short enough that blocks a long-lived
  // context gave back stop being resident while the program goes on.
  static constexpr uint64_t kDecayOperations = 4096;
  // A thread cache's decay clock ticks at each acquisition its thread
  // makes (its demand: a block none of them took was not needed), not at
  // its releases (that would cost both fast paths): a thread in steady
  // state takes as many blocks as it releases, so this many acquisitions
  // stand for about kDecayOperations operations. A decay run every
  // kThreadDecayTicks acquisitions moves out the blocks that sat unused
  // through the whole period since the previous run.
  static constexpr uint64_t kThreadDecayTicks = kDecayOperations / 2;

  CachingBlockSource(BlockSource* upstream, size_t max_cached_bytes,
                     size_t thread_cache_bytes = 0, size_t max_learned_bytes = 0);
  ~CachingBlockSource() override;
  CachingBlockSource(const CachingBlockSource&) = delete;
  CachingBlockSource& operator=(const CachingBlockSource&) = delete;

  Block Acquire(size_t min_size, size_t alignment) override;
  void Release(Block block) override;
  // Acquire and Release without the virtual call, for the tree's own use
  // of the default cache (defined in internal/thread_cache.h).
  Block AcquireInline(size_t min_size, size_t alignment);
  void ReleaseInline(Block block);
  Block Reallocate(Block block, size_t keep, size_t new_min_size, size_t alignment) override;
  // A lent block's pages go back through upstream (every lent block came
  // from there); kept blocks are the cache's own business.
  size_t Purge(void* ptr, size_t size) override;

  // Changes the cap; blocks beyond the new cap go upstream now (the calling
  // thread's cache included; other threads' caches at their next release
  // beyond it, or when they exit). Thread caches keep at most the cap too: 0
  // turns caching off.
  void SetMaxCachedBytes(size_t bytes);
  size_t max_cached_bytes() const;
  // Changes how much more than max_cached_bytes reuse may earn; what was
  // learned beyond the new value is forgotten, and blocks beyond the cap
  // that leaves go upstream now.
  void SetMaxLearnedBytes(size_t bytes);
  size_t max_learned_bytes() const;
  size_t thread_cache_bytes() const { return thread_cache_bytes_; }
  // Returns every kept block upstream: the shared lists' and the calling
  // thread's own (other threads' caches stay theirs: each thread's goes at
  // its exit, at its own Trim or MarkThreadIdle, or to its decay while it
  // works).
  void Trim();
  // For a thread about to idle (a worker waiting for work): moves its
  // cache, if it has one here, to the shared lists (beyond the shared cap,
  // upstream), where other threads take its blocks and decay purges those
  // none takes, and frees its slot; otherwise its cache stays as it is
  // until the thread calls again or exits (tcmalloc's MarkThreadIdle). One
  // lock; the thread's next call starts a new cache, at the default cap.
  void MarkThreadIdle();
  Stats GetStats() const;

 private:
  // A kept block's first bytes hold this node.
  struct Node {
    Node* next;
    size_t size;
    // The decay clock when the block entered the shared lists (no meaning
    // in a thread cache): in each shared list it falls from head to tail.
    uint64_t kept_at;
    // Released into a thread cache (counted in thread_kept): if the block
    // later goes upstream as returned, thread_kept gives its count back too.
    bool thread_kept;
    bool purged;   // its pages went to upstream's Purge (decay, or a large block's keep)
    // Decay has seen it old (in each shared list the decayed blocks are a
    // tail: a decay run stops at the first). Thread caches neither read nor
    // write it (each of their lists keeps where its old tail starts,
    // old_tops); ShareListLocked clears it as a block comes back.
    bool decayed;
  };
  // Bucket k holds blocks of size in [2^k, 2^(k+1)).
  static constexpr int kBuckets = 64;
  struct ThreadCache;

 public:
  struct ThreadCaches;  // per thread; public only for its thread-local pointer

 private:

  static ThreadCaches* ThisThreadCaches();
  // The calling thread's cache for this source, claimed on first use;
  // nullptr without thread caches or when the thread's slots are taken.
  ThreadCache* OwnThreadCache() const;
  ThreadCache* OwnThreadCacheSlow() const;
  // The calling thread's cache if it has one, claiming no slot: for calls
  // that only look at it, trim it or cap it (a slot claimed there would
  // outlive the source when the thread never uses it).
  ThreadCache* ExistingThreadCache() const;
  static Block TakeFromThreadCache(ThreadCache* tc, Node* n);
  // Everything AcquireInline does not serve (out of line).
  Block AcquireMiss(size_t min_size, size_t alignment);
  void KeepInThreadCache(ThreadCache* tc, Block block);
  void ReleaseSlow(Block block);
  // Everything but a thread-cache hit at the head of its list.
  Block AcquireSlow(ThreadCache* tc, size_t min_size, size_t alignment);
  Block AcquireBeyondHead(ThreadCache* tc, size_t min_size, size_t alignment);
  // Reallocate's growth: the largest kept block of min_size .. max_size
  // bytes, or an empty block; never upstream.
  Block TakeRoom(size_t min_size, size_t max_size, size_t alignment);
  // Why a thread cache's blocks leave it: kFull when the cache or its thread
  // is done with them (blocks beyond the shared cap are returned, and
  // counted so), kTrim when the caller asked (they stay counted as kept),
  // kDecay when they sat unused through the thread's decay period (returned
  // as kFull's, but not remembered as turned away: a later miss is no sign
  // that the cap was too small for what the program reuses).
  enum class SpillReason { kFull, kTrim, kDecay };
  void FlushThreadCache(ThreadCache* tc, SpillReason reason);
  void SpillThreadCache(ThreadCache* tc, SpillReason reason);
  // Moves a list of bucket `b`'s blocks, taken out of thread cache `tc`, to
  // the shared lists; those beyond the cap go onto `to_release` (mu_ held).
  // `decayed`: the blocks sat unused through the thread's decay period,
  // and are kept with their pages purged. Returns the list's bytes, and
  // its blocks in `*blocks`.
  size_t ShareListLocked(ThreadCache* tc, int b, Node* list, SpillReason reason, bool decayed,
                         Node** to_release, size_t* blocks);
  // Moves a thread cache's counts to stats_ (mu_ held).
  void SyncThreadCountsLocked(ThreadCache* tc);
  // One tick of the thread cache's decay clock (an acquisition); a run
  // every kThreadDecayTicks. Inline: a decrement and a branch.
  void TickThreadCache(ThreadCache* tc);
  void ForgetOldTop(ThreadCache* tc, const Node* n);
  void DecayThreadCache(ThreadCache* tc);
  static Block DecayThenTake(Node* n);
  // Release to the shared lists (or upstream, beyond the cap).
  void ReleaseShared(Block block);
  void TrimLocked(size_t target, Node** to_release);
  void ReleaseUpstream(Node* list);
  void PurgeKeptLocked(Node* n);
  // Advances the decay clock by one operation on the shared lists and, now
  // and then, purges the blocks kept for kDecayOperations (mu_ held).
  void TickLocked();
  // Whether `size` more bytes fit the shared lists' cap, max_cached_bytes
  // plus what was learned (mu_ held).
  bool FitsShared(size_t size) const;
  // A block of `size` bytes went upstream because the shared lists were
  // full (mu_ held).
  void NoteTurnedAway(size_t size);
  // An acquisition of `size` bytes found nothing kept: if blocks were turned
  // away lately, the cap was too small for what the program reuses (mu_).
  void LearnFromMiss(size_t size);
  // What one thread may keep: its own cap, within the shared one.
  size_t ThreadCacheCap(const ThreadCache* tc) const;
  void RaiseThreadCapLocked(ThreadCache* tc);
  // Counts the kept block `n`, just unlinked from the shared lists, as a
  // hit; a large one marks its size as reused (mu_ held).
  void CountSharedHitLocked(const Node* n);

  // fork(): every live source's lock is taken before a fork and let go
  // after it, in the parent and in the child (pthread_atfork), so that the
  // child never starts with a lock another thread held (glibc's malloc,
  // jemalloc and tcmalloc do the same with theirs).
  static void LockAllBeforeFork();
  static void UnlockAllAfterFork();

  BlockSource* const upstream_;
  mutable std::mutex mu_;
  Node* buckets_[kBuckets] = {};
  // Written under mu_; read without it where thread caches check their cap.
  std::atomic<size_t> max_cached_bytes_;
  const size_t thread_cache_bytes_;
  Stats stats_;
  uint64_t clock_ = 0;       // operations on the shared lists (mu_)
  uint64_t next_decay_ = 0;  // the clock at which TickLocked next purges
  // Learning (mu_): its ceiling, what it earned, and the blocks turned away
  // that a miss may still count as evidence (bytes; the clock of the last).
  size_t max_learned_bytes_;
  size_t learned_bytes_ = 0;
  size_t turned_away_bytes_ = 0;
  uint64_t turned_away_at_ = 0;
  // Buckets of large blocks (one chunk's, kept without their pages) whose
  // size the program has taken back: their blocks are kept warm (mu_).
  uint64_t warm_large_ = 0;
};

// The cache behind DefaultBlockSource(). APR keeps every freed block by
// default (max_free unlimited); glibc hands memory back to the kernel at
// almost every context destroy, and each page faulted back costs about 2
// microseconds. The cap is the middle: the first blocks of several thousand
// contexts (a tree of 4,681 contexts with 8 KiB first blocks holds 37 MiB),
// small next to any engine's working set. Change it with
// DefaultBlockCache()->SetMaxCachedBytes(n); 0 turns caching off.
inline constexpr size_t kDefaultBlockCacheBytes = size_t{64} << 20;
// What the default cache may learn beyond that cap (see "Retention that
// follows reuse"): a program that frees and takes back more than 64 MiB in
// a cycle keeps the cycle, up to this much more; blocks kept so and left
// unused decay (their pages go back) and are unlearned. Change it with
// DefaultBlockCache()->SetMaxLearnedBytes(n); 0 keeps the cap fixed.
inline constexpr size_t kDefaultBlockCacheLearnedBytes = size_t{1} << 30;
// Per thread, in front of the shared lists: the blocks of a few requests'
// contexts, so that a thread in steady state never takes the cache's lock.
inline constexpr size_t kDefaultThreadCacheBytes = size_t{4} << 20;
CachingBlockSource* DefaultBlockCache();

}  // namespace mcx

#endif  // MCX_CONTEXT_CACHING_BLOCK_SOURCE_H_
