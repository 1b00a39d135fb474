// File: mcx/testing/live_count.h
//
// The model of a context's live-byte counters (Context::live_bytes,
// peak_live_bytes) that a kind's randomised test keeps beside its chunks:
// add what each allocation counted for, remove it at the free, note a move
// that held the old chunk and the new one at once, and check after every
// operation that the context says the same, peak included.
//
// Contract:
//   - Add and Remove keep the live count; the peak follows it up, and a
//     move's moment with both chunks (HeldBoth) raises it too.
//   - Clear after a reset (the peak stays); ResetPeak after the context's.
//   - Matches compares both counters with the context's, for ASSERT_TRUE.
//
// Example:
//
//   mcx::test::LiveCount model;
//   const size_t before = ctx->live_bytes();
//   void* p = ctx->Alloc(100);
//   model.Add(ctx->live_bytes() - before);
//   ASSERT_TRUE(model.Matches(ctx));

#ifndef MCX_TESTING_LIVE_COUNT_H_
#define MCX_TESTING_LIVE_COUNT_H_

#include <cstddef>

#include "gtest/gtest.h"
#include "mcx/context/context.h"

namespace mcx {
namespace test {

class LiveCount {
 public:
  size_t live() const { return live_; }
  size_t peak() const { return peak_; }

  void Add(size_t bytes) {
    live_ += bytes;
    if (live_ > peak_) peak_ = live_;
  }
  void Remove(size_t bytes) { live_ -= bytes; }
  // A move into a new chunk of `bytes`, made when the count was `before`:
  // for a moment the context held both.
  void HeldBoth(size_t before, size_t bytes) {
    if (before + bytes > peak_) peak_ = before + bytes;
  }
  void Clear() { live_ = 0; }
  void ResetPeak() { peak_ = live_; }

  ::testing::AssertionResult Matches(const Context* ctx) const {
    if (ctx->live_bytes() == live_ && ctx->peak_live_bytes() == peak_) {
      return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure()
           << "live bytes " << ctx->live_bytes() << " (model " << live_ << "), peak "
           << ctx->peak_live_bytes() << " (model " << peak_ << ")";
  }

 private:
  size_t live_ = 0;
  size_t peak_ = 0;
};

}  // namespace test
}  // namespace mcx

#endif  // MCX_TESTING_LIVE_COUNT_H_
