// A budget's count and its soft limit.
//
// Why one compare-and-swap loop rather than an add and an undo: with
// fetch_add, a charge that goes over and is then taken back lets the usage
// stand above the limit for a moment, and a concurrent reader, or another
// charge that is refused because of it, would see a budget "exceeded" that
// never admitted those bytes. The loop never stores a value above the
// limit, so `usage() <= limit()` holds at every instant.
//
// Why the soft limit is tested inside the loop: the test and the charge
// then see the same usage, so a charge that crosses the soft limit is
// either refused for the callback or made while the callback is not due
// (running, or passed for this allocation); no crossing slips between a
// test and a charge on another thread. The test is two comparisons on a
// value already loaded, and a budget without a soft limit never passes the
// first (its soft limit is the largest size).
//
// Why the callback is claimed with an atomic flag rather than a lock: the
// budget is charged from several threads at once, and a thread that meets
// the soft limit while another thread's callback runs must neither run it
// again nor wait for it (it may hold nothing the other needs, but waiting
// on another thread's user code from an allocation is how deadlocks
// start). So the flag is taken with one exchange, and whoever does not get
// it proceeds.

#include "mcx/context/budget.h"

#include <atomic>
#include <cstddef>

namespace mcx {

Budget::Charged Budget::Charge(size_t bytes, bool call_back) {
  size_t old = usage_.load(std::memory_order_relaxed);
  size_t next;
  do {
    if (call_back && old <= soft_limit_ && bytes > soft_limit_ - old && soft_fn_ != nullptr &&
        !soft_running_.load(std::memory_order_relaxed)) {
      return Charged::kSoftLimit;
    }
    if (bytes > limit_ || old > limit_ - bytes) {
      refusals_.fetch_add(1, std::memory_order_relaxed);
      return Charged::kOverLimit;
    }
    next = old + bytes;
  } while (!usage_.compare_exchange_weak(old, next, std::memory_order_relaxed));
  size_t peak = peak_.load(std::memory_order_relaxed);
  while (next > peak && !peak_.compare_exchange_weak(peak, next, std::memory_order_relaxed)) {
  }
  return Charged::kYes;
}

// A longjmp out of `fn` skips the release below: the flag stays set, as the
// contract says, until SetSoftLimit. Nothing else of the call is on the
// stack.
bool Budget::CallBack(size_t bytes) {
  if (soft_fn_ == nullptr) return false;
  const size_t usage = usage_.load(std::memory_order_relaxed);
  if (usage > soft_limit_ || bytes <= soft_limit_ - usage) return false;  // no longer crosses
  if (soft_running_.exchange(true, std::memory_order_acquire)) return false;
  try {
    soft_fn_(this, usage, soft_arg_);
  } catch (...) {
    soft_running_.store(false, std::memory_order_release);
    throw;
  }
  soft_running_.store(false, std::memory_order_release);
  return true;
}

bool Budget::TryCharge(size_t bytes) {
  Charged charged = Charge(bytes, /*call_back=*/true);
  if (charged == Charged::kSoftLimit) {
    CallBack(bytes);
    charged = Charge(bytes, /*call_back=*/false);
  }
  return charged == Charged::kYes;
}

}  // namespace mcx
