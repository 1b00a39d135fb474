// File: mcx/testing/test_block_sources.h
//
// Block sources for tests: one that counts and tracks every block, and one
// that fails on command. Both are thread-safe, as the BlockSource contract
// requires.
//
// Example:
//
//   mcx::test::CountingBlockSource source;
//   mcx::ContextOptions o;
//   o.block_source = &source;
//   mcx::Context* ctx = mcx::Context::Create(nullptr, "t", mcx::PoolKind(), o);
//   ...
//   ctx->Destroy();
//   EXPECT_EQ(source.live_blocks(), 0);

#ifndef MCX_TESTING_TEST_BLOCK_SOURCES_H_
#define MCX_TESTING_TEST_BLOCK_SOURCES_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>

#include "mcx/context/block_source.h"

namespace mcx {
namespace test {

// Counts calls and remembers every live block, so a test can assert that
// everything acquired was released, with the size it was acquired with.
class CountingBlockSource : public BlockSource {
 public:
  explicit CountingBlockSource(BlockSource* upstream = DefaultBlockSource())
      : upstream_(upstream) {}

  Block Acquire(size_t min_size, size_t alignment) override;
  void Release(Block block) override;
  Block Reallocate(Block block, size_t keep, size_t new_min_size, size_t alignment) override;
  // Fills the range with kPurgeScribbleByte (a kind must not read what it
  // purged), forwards to upstream and counts: the calls, the bytes asked
  // for, the bytes upstream gave back. A range that does not lie inside a
  // live block is a bad purge, and is neither touched nor forwarded.
  size_t Purge(void* ptr, size_t size) override;
  static constexpr unsigned char kPurgeScribbleByte = 0xA5;

  int64_t acquires() const;
  int64_t releases() const;
  int64_t reallocates() const;
  int64_t live_blocks() const;
  size_t live_bytes() const;
  // Releases of a pointer this source never gave out, or with a wrong size.
  int64_t bad_releases() const;
  int64_t purges() const;
  size_t purge_requested_bytes() const;
  size_t purged_bytes() const;
  int64_t bad_purges() const;

 protected:
  BlockSource* upstream_;

 private:
  mutable std::mutex mu_;
  std::map<void*, size_t> live_;  // ptr -> size handed out
  int64_t acquires_ = 0;
  int64_t releases_ = 0;
  int64_t reallocates_ = 0;
  int64_t bad_releases_ = 0;
  int64_t purges_ = 0;
  size_t purge_requested_bytes_ = 0;
  size_t purged_bytes_ = 0;
  int64_t bad_purges_ = 0;
};

// Blocks of exactly the size asked for, straight from aligned_alloc: the
// system source and the default cache report malloc's slack, which differs
// between builds, so tests that state exact block layouts use this one.
class ExactBlockSource final : public BlockSource {
 public:
  Block Acquire(size_t min_size, size_t alignment) override;
  void Release(Block block) override;
  int live() const { return live_; }

 private:
  int live_ = 0;
};

// A counting source that can be told to fail: the Nth acquisition from now
// (1-based), every acquisition from the Nth on, or all reallocations.
class FailingBlockSource : public CountingBlockSource {
 public:
  using CountingBlockSource::CountingBlockSource;

  // Fails exactly the `n`th Acquire from now (1 = the next one).
  void FailNth(int64_t n);
  // Fails the `n`th Acquire from now and every one after it.
  void FailFrom(int64_t n);
  void FailReallocate(bool fail);
  void Heal();  // no more failures
  int64_t failures() const;

  Block Acquire(size_t min_size, size_t alignment) override;
  Block Reallocate(Block block, size_t keep, size_t new_min_size, size_t alignment) override;

 private:
  mutable std::mutex fail_mu_;
  int64_t countdown_ = 0;  // 0: no failure armed
  bool sticky_ = false;
  bool fail_reallocate_ = false;
  int64_t failures_ = 0;
};

// True when the test runs under Valgrind's memcheck (the memcheck config of
// .bazelrc sets MCX_UNDER_MEMCHECK): tests of misuse detection that read a
// freed block on purpose (where detection stops, docs/reliability.md) skip
// there, since memcheck rightly reports the read.
bool UnderMemcheck();

}  // namespace test
}  // namespace mcx

#endif  // MCX_TESTING_TEST_BLOCK_SOURCES_H_
