// File: mcx/context/caching_block_source.h
//
// A block source that keeps released blocks for reuse, as APR's allocator
// keeps freed nodes: creating and destroying a per-request context then
// costs no call to the system allocator in steady state, and no page faults
// (glibc hands freed memory back to the kernel at almost every context
// destroy, and each page faulted back in costs about 2 microseconds).
//
// Contract:
//   - Released blocks are kept, grouped by size, while the bytes kept stay
//     within `max_cached_bytes` (APR's `max_free`); beyond that they go back
//     to the upstream source at once.
//   - `Acquire(n, alignment)` reuses a kept block whose size is at least `n`
//     and at most `n` plus a quarter (so a small request does not pin a huge
//     block) and whose address has the alignment; else it asks upstream.
//   - Thread-safe (one mutex; contexts call a source only on their slow
//     paths). Destroying the source returns every kept block upstream.
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
    uint64_t returned = 0;   // releases passed upstream (cache full)
    size_t cached_bytes = 0;
    size_t cached_blocks = 0;
  };

  CachingBlockSource(BlockSource* upstream, size_t max_cached_bytes);
  ~CachingBlockSource() override;
  CachingBlockSource(const CachingBlockSource&) = delete;
  CachingBlockSource& operator=(const CachingBlockSource&) = delete;

  Block Acquire(size_t min_size, size_t alignment) override;
  void Release(Block block) override;
  Block Reallocate(Block block, size_t keep, size_t new_min_size, size_t alignment) override;

  // Changes the cap; blocks beyond the new cap go upstream now.
  void SetMaxCachedBytes(size_t bytes);
  size_t max_cached_bytes() const;
  // Returns every kept block upstream.
  void Trim();
  Stats GetStats() const;

 private:
  // A kept block's first bytes hold this node.
  struct Node {
    Node* next;
    size_t size;
  };
  // Bucket k holds blocks of size in [2^k, 2^(k+1)).
  static constexpr int kBuckets = 64;

  void TrimLocked(size_t target, Node** to_release);

  BlockSource* const upstream_;
  mutable std::mutex mu_;
  Node* buckets_[kBuckets] = {};
  size_t max_cached_bytes_;
  Stats stats_;
};

// The cache behind DefaultBlockSource(): a modest cap, enough for the blocks
// of a few hundred per-request contexts, small next to any engine's working
// set. Change it with DefaultBlockCache()->SetMaxCachedBytes(n); 0 turns
// caching off.
inline constexpr size_t kDefaultBlockCacheBytes = size_t{4} << 20;
CachingBlockSource* DefaultBlockCache();

}  // namespace mcx

#endif  // MCX_CONTEXT_CACHING_BLOCK_SOURCE_H_
