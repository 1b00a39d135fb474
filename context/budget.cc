// A budget's count. Why one compare-and-swap loop rather than an add and an
// undo: with fetch_add, a charge that goes over and is then taken back lets
// the usage stand above the limit for a moment, and a concurrent reader, or
// another charge that is refused because of it, would see a budget
// "exceeded" that never admitted those bytes. The loop never stores a value
// above the limit, so `usage() <= limit()` holds at every instant.

#include "mcx/context/budget.h"

#include <atomic>
#include <cstddef>

namespace mcx {

bool Budget::TryCharge(size_t bytes) {
  size_t old = usage_.load(std::memory_order_relaxed);
  size_t next;
  do {
    if (bytes > limit_ || old > limit_ - bytes) {
      refusals_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    next = old + bytes;
  } while (!usage_.compare_exchange_weak(old, next, std::memory_order_relaxed));
  size_t peak = peak_.load(std::memory_order_relaxed);
  while (next > peak && !peak_.compare_exchange_weak(peak, next, std::memory_order_relaxed)) {
  }
  if (soft_fn_ != nullptr && old < soft_limit_ && next >= soft_limit_) {
    soft_fn_(this, next, soft_arg_);
  }
  return true;
}

}  // namespace mcx
