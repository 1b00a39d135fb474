// File: mcx/context/budget.h
//
// A budget: one byte limit that contexts in different trees, used on
// different threads, are charged against together (a server's cap on the
// memory of all its sessions). The count is one atomic word; a block that
// would take it over the limit is refused before the block source is asked,
// through the same failure path as a context's own limit: `Try*` calls
// return nullptr with `kLimit`, throwing calls run the failure handler and
// throw, and a context's reserve serves the request (its blocks were
// charged when they were set aside).
//
// Contract:
//   - `Context::TrySetBudget(&budget)` attaches a context; every byte its
//     subtree holds in blocks (the bytes a limit counts: blocks, side
//     records, the reserve) is charged, from then on and for what it holds
//     already. A context under another budget-bearing context is charged to
//     both. Destroying the context, or `TrySetBudget(nullptr)`, gives its
//     bytes back.
//   - `usage()`, `peak()` and `refusals()` may be read from any thread at
//     any time; at quiescence `usage()` is exactly the bytes the attached
//     subtrees hold.
//   - A soft limit calls `fn(budget, usage, arg)` on the thread whose charge
//     took the usage from below it to at or above it (once per crossing),
//     before the hard limit refuses anything: the place to shed load. The
//     callback must not allocate in, reset or destroy a context (it may run
//     while a shared context's lock is held); it may record, signal or set a
//     flag.
//   - The budget must outlive every context attached to it. Set the soft
//     limit before contexts are attached.
//
// Example:
//
//   mcx::Budget sessions(256 << 20);
//   sessions.SetSoftLimit(200 << 20, [](mcx::Budget*, size_t, void* server) {
//     static_cast<Server*>(server)->StopAccepting();
//   }, &server);
//   // On each session's thread:
//   mcx::Context* session = mcx::Context::Create(nullptr, "session", mcx::PoolKind());
//   session->TrySetBudget(&sessions);
//   ...
//   session->Destroy();   // its bytes go back to the budget

#ifndef MCX_CONTEXT_BUDGET_H_
#define MCX_CONTEXT_BUDGET_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace mcx {

class Budget;
using BudgetCallback = void (*)(Budget* budget, size_t usage, void* arg);

class Budget {
 public:
  explicit Budget(size_t limit) : limit_(limit) {}
  Budget(const Budget&) = delete;
  Budget& operator=(const Budget&) = delete;

  size_t limit() const { return limit_; }
  size_t usage() const { return usage_.load(std::memory_order_relaxed); }
  size_t peak() const { return peak_.load(std::memory_order_relaxed); }
  // Charges refused because they would have gone over the limit.
  uint64_t refusals() const { return refusals_.load(std::memory_order_relaxed); }

  // `fn` runs when a charge takes the usage from below `bytes` to `bytes` or
  // more. `fn` nullptr: none.
  void SetSoftLimit(size_t bytes, BudgetCallback fn, void* arg) {
    soft_limit_ = bytes;
    soft_fn_ = fn;
    soft_arg_ = arg;
  }
  size_t soft_limit() const { return soft_limit_; }

  // Adds `bytes` unless that would exceed the limit (then false, and a
  // refusal is counted). Contexts charge through their block ledger; direct
  // calls are for memory a program holds outside mcx under the same cap.
  bool TryCharge(size_t bytes);
  void Uncharge(size_t bytes) { usage_.fetch_sub(bytes, std::memory_order_relaxed); }

 private:
  const size_t limit_;
  std::atomic<size_t> usage_{0};
  std::atomic<size_t> peak_{0};
  std::atomic<uint64_t> refusals_{0};
  size_t soft_limit_ = ~size_t{0};
  BudgetCallback soft_fn_ = nullptr;
  void* soft_arg_ = nullptr;
};

}  // namespace mcx

#endif  // MCX_CONTEXT_BUDGET_H_
