// CachingBlockSource: APR's allocator idea (memory/unix/apr_pools.c keeps
// freed nodes in size-indexed lists, capped by max_free) as a block source.

#include "mcx/context/caching_block_source.h"

#include "mcx/context/internal/sanitizer.h"

namespace mcx {
namespace {

int BucketOf(size_t size) { return 63 - __builtin_clzll(static_cast<unsigned long long>(size)); }

// A kept block may be up to a quarter larger than asked for: reuse beats a
// system call, but a small request must not pin a block many times its size.
bool GoodFit(size_t have, size_t want) { return have >= want && have - want <= want / 4; }

// How many nodes of a bucket are looked at before giving up: steady-state
// workloads ask for the same few sizes, so a fit is near the head or absent.
constexpr int kMaxProbe = 8;

}  // namespace

CachingBlockSource::CachingBlockSource(BlockSource* upstream, size_t max_cached_bytes)
    : upstream_(upstream), max_cached_bytes_(max_cached_bytes) {}

CachingBlockSource::~CachingBlockSource() { Trim(); }

Block CachingBlockSource::Acquire(size_t min_size, size_t alignment) {
  if (min_size < sizeof(Node)) min_size = sizeof(Node);
  {
    std::lock_guard<std::mutex> lock(mu_);
    int first = BucketOf(min_size);
    // The fit window (min_size .. min_size * 5/4) spans at most two buckets.
    for (int b = first; b <= first + 1 && b < kBuckets; ++b) {
      Node** link = &buckets_[b];
      for (int probe = 0; *link != nullptr && probe < kMaxProbe; ++probe) {
        Node* n = *link;
        if (GoodFit(n->size, min_size) && reinterpret_cast<uintptr_t>(n) % alignment == 0) {
          *link = n->next;
          ++stats_.hits;
          stats_.cached_bytes -= n->size;
          --stats_.cached_blocks;
          internal::UnpoisonMemoryRegion(n, n->size);
          return Block{n, n->size};
        }
        link = &n->next;
      }
    }
    ++stats_.misses;
  }
  return upstream_->Acquire(min_size, alignment);
}

void CachingBlockSource::Release(Block block) {
  if (block.size >= sizeof(Node)) {
    std::lock_guard<std::mutex> lock(mu_);
    if (block.size <= max_cached_bytes_ - stats_.cached_bytes &&
        stats_.cached_bytes <= max_cached_bytes_) {
      Node* n = static_cast<Node*>(block.ptr);
      // The context may have left the block poisoned (Valgrind's mempool
      // teardown does): the node is the cache's to write.
      internal::UnpoisonMemoryRegion(n, sizeof(Node));
      n->size = block.size;
      int b = BucketOf(block.size);
      n->next = buckets_[b];
      buckets_[b] = n;
      stats_.cached_bytes += block.size;
      ++stats_.cached_blocks;
      ++stats_.kept;
      // A kept block is free memory: under ASan any use of it through a
      // stale pointer into a destroyed context is reported.
      internal::PoisonMemoryRegion(reinterpret_cast<char*>(n) + sizeof(Node),
                                   block.size - sizeof(Node));
      return;
    }
    ++stats_.returned;
  }
  upstream_->Release(block);
}

Block CachingBlockSource::Reallocate(Block block, size_t keep, size_t new_min_size,
                                     size_t alignment) {
  // Every block came from upstream (kept blocks too), so upstream can resize
  // it in place where it is able to.
  return upstream_->Reallocate(block, keep, new_min_size, alignment);
}

void CachingBlockSource::TrimLocked(size_t target, Node** to_release) {
  // Blocks leaving the cache go upstream unpoisoned, as they came.
  for (int b = kBuckets - 1; b >= 0 && stats_.cached_bytes > target; --b) {
    while (buckets_[b] != nullptr && stats_.cached_bytes > target) {
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
    max_cached_bytes_ = bytes;
    TrimLocked(bytes, &release);
  }
  // Upstream calls happen outside the lock: upstream may be slow.
  while (release != nullptr) {
    Node* next = release->next;
    upstream_->Release(Block{release, release->size});
    release = next;
  }
}

size_t CachingBlockSource::max_cached_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return max_cached_bytes_;
}

void CachingBlockSource::Trim() {
  Node* release = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    TrimLocked(0, &release);
  }
  while (release != nullptr) {
    Node* next = release->next;
    upstream_->Release(Block{release, release->size});
    release = next;
  }
}

CachingBlockSource::Stats CachingBlockSource::GetStats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace mcx
