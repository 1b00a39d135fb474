#include "mcx/testing/test_block_sources.h"

#include <cstdlib>
#include <cstring>
#include <iterator>

#include "mcx/context/kind_api.h"

namespace mcx {
namespace test {

Block CountingBlockSource::Acquire(size_t min_size, size_t alignment) {
  Block b = upstream_->Acquire(min_size, alignment);
  std::lock_guard<std::mutex> lock(mu_);
  ++acquires_;
  if (b.ptr != nullptr) live_[b.ptr] = b.size;
  return b;
}

void CountingBlockSource::Release(Block block) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++releases_;
    auto it = live_.find(block.ptr);
    // A context may use less than the source gave (a limit refused the
    // slack), never more.
    if (it == live_.end() || block.size > it->second) {
      ++bad_releases_;
      return;  // do not free what we did not hand out
    }
    block.size = it->second;
    live_.erase(it);
  }
  upstream_->Release(block);
}

Block CountingBlockSource::Reallocate(Block block, size_t keep, size_t new_min_size,
                                      size_t alignment) {
  size_t recorded;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++reallocates_;
    auto it = live_.find(block.ptr);
    if (it == live_.end() || block.size > it->second) {
      ++bad_releases_;
      return Block{};
    }
    recorded = it->second;
  }
  Block fresh = upstream_->Reallocate(Block{block.ptr, recorded}, keep, new_min_size, alignment);
  if (fresh.ptr == nullptr) return fresh;
  std::lock_guard<std::mutex> lock(mu_);
  live_.erase(block.ptr);
  live_[fresh.ptr] = fresh.size;
  return fresh;
}

size_t CountingBlockSource::Purge(void* ptr, size_t size) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++purges_;
    purge_requested_bytes_ += size;
    // The live block at or before `ptr` must hold the whole range.
    auto it = live_.upper_bound(ptr);
    const bool inside =
        it != live_.begin() &&
        static_cast<char*>(ptr) + size <=
            static_cast<char*>(std::prev(it)->first) + std::prev(it)->second;
    if (!inside) {
      ++bad_purges_;
      return 0;
    }
  }
  // Garbage first: a kind must not read what it purged, whatever the
  // source gives back. The range is free space, poisoned where the build
  // poisons, and stays so.
  UnpoisonMemoryRegion(ptr, size);
  std::memset(ptr, kPurgeScribbleByte, size);
  PoisonMemoryRegion(ptr, size);
  const size_t purged = upstream_->Purge(ptr, size);
  std::lock_guard<std::mutex> lock(mu_);
  purged_bytes_ += purged;
  return purged;
}

int64_t CountingBlockSource::purges() const {
  std::lock_guard<std::mutex> lock(mu_);
  return purges_;
}
size_t CountingBlockSource::purge_requested_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return purge_requested_bytes_;
}
size_t CountingBlockSource::purged_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return purged_bytes_;
}
int64_t CountingBlockSource::bad_purges() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bad_purges_;
}

int64_t CountingBlockSource::acquires() const {
  std::lock_guard<std::mutex> lock(mu_);
  return acquires_;
}
int64_t CountingBlockSource::releases() const {
  std::lock_guard<std::mutex> lock(mu_);
  return releases_;
}
int64_t CountingBlockSource::reallocates() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reallocates_;
}
int64_t CountingBlockSource::live_blocks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(live_.size());
}
size_t CountingBlockSource::live_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t total = 0;
  for (const auto& kv : live_) total += kv.second;
  return total;
}
int64_t CountingBlockSource::bad_releases() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bad_releases_;
}

void FailingBlockSource::FailNth(int64_t n) {
  std::lock_guard<std::mutex> lock(fail_mu_);
  countdown_ = n;
  sticky_ = false;
}
void FailingBlockSource::FailFrom(int64_t n) {
  std::lock_guard<std::mutex> lock(fail_mu_);
  countdown_ = n;
  sticky_ = true;
}
void FailingBlockSource::FailReallocate(bool fail) {
  std::lock_guard<std::mutex> lock(fail_mu_);
  fail_reallocate_ = fail;
}
void FailingBlockSource::Heal() {
  std::lock_guard<std::mutex> lock(fail_mu_);
  countdown_ = 0;
  sticky_ = false;
  fail_reallocate_ = false;
}
int64_t FailingBlockSource::failures() const {
  std::lock_guard<std::mutex> lock(fail_mu_);
  return failures_;
}

Block FailingBlockSource::Acquire(size_t min_size, size_t alignment) {
  {
    std::lock_guard<std::mutex> lock(fail_mu_);
    if (countdown_ > 0) {
      if (countdown_ == 1) {
        if (!sticky_) countdown_ = 0;
        ++failures_;
        return Block{};
      }
      --countdown_;
    }
  }
  return CountingBlockSource::Acquire(min_size, alignment);
}

Block FailingBlockSource::Reallocate(Block block, size_t keep, size_t new_min_size,
                                     size_t alignment) {
  {
    std::lock_guard<std::mutex> lock(fail_mu_);
    if (fail_reallocate_) {
      ++failures_;
      return Block{};
    }
  }
  return CountingBlockSource::Reallocate(block, keep, new_min_size, alignment);
}

Block ExactBlockSource::Acquire(size_t min_size, size_t alignment) {
  size_t rounded = (min_size + alignment - 1) & ~(alignment - 1);
  void* p = std::aligned_alloc(alignment, rounded);
  if (p == nullptr) return {};
  ++live_;
  return {p, min_size};
}

void ExactBlockSource::Release(Block block) {
  --live_;
  std::free(block.ptr);
}

bool UnderMemcheck() {
  const char* v = std::getenv("MCX_UNDER_MEMCHECK");
  return v != nullptr && v[0] == '1';
}

}  // namespace test
}  // namespace mcx
