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
//   - A soft limit of S bytes calls `fn(budget, usage, arg)` before a block
//     acquisition would take the usage past S (from S or less to more than
//     S: once per crossing), so that the program frees memory first (spills
//     a hash table, evicts a cache), as a context's soft limit does
//     (pressure.h): the ledger refuses the block, and the allocation's front
//     (outside the kind, with nothing half-done) runs `fn` on the allocating
//     thread and retries the allocation, with this budget's soft limit
//     passed for it. `usage` is the usage when `fn` starts. The allocation
//     then proceeds, whatever `fn` freed; the hard limit still holds (it is
//     checked on the retry, and refuses as usual).
//   - What `fn` may do: what a context's pressure callback may (pressure.h).
//     Free chunks, reset or destroy contexts in any tree that the calling
//     thread may use, including the one allocating; allocate, in contexts
//     under this budget too. It must not destroy the allocating context or
//     an ancestor of it, nor, during a `Realloc`, free the chunk being
//     reallocated. The allocating context may be a child of a shared
//     context; no lock is held while `fn` runs.
//   - Re-entry. `fn` runs on one thread at a time and never re-enters:
//     while it runs, charges to this budget, on its own thread (its spill
//     buffers) or on any other, proceed past S without calling back and
//     without waiting. A thread refused for the soft limit that finds, when
//     it comes to call back, that `fn` runs elsewhere or that the usage no
//     longer crosses S (the other thread's `fn` freed memory) retries
//     without calling back.
//   - Leaving `fn` by throwing: a throwing allocation propagates the
//     exception, a `Try*` call fails with kLimit; nothing was allocated and
//     the next crossing calls back again. By longjmp: nothing was allocated
//     and the tree is consistent, but the soft limit stays marked as
//     running, so it calls back no more until `SetSoftLimit` is called
//     again.
//   - Charges that are not a block an allocation needs (attaching a
//     subtree, reparenting one, a source handing out more than was asked)
//     never call back. A direct `TryCharge` calls `fn` itself, on the
//     calling thread, before the charge that would cross.
//   - The budget must outlive every context attached to it. Set the soft
//     limit before contexts are attached, or when no charge to the budget
//     runs on any thread.
//
// Example:
//
//   mcx::Budget sessions(256 << 20);
//   sessions.SetSoftLimit(200 << 20, [](mcx::Budget*, size_t, void* server) {
//     static_cast<Server*>(server)->EvictResultCache();   // frees memory now
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

  // `fn` runs before a block acquisition would take the usage from `bytes`
  // or less to more than `bytes` (the contract). `fn` nullptr: none. Also
  // re-arms a callback that was left by longjmp.
  void SetSoftLimit(size_t bytes, BudgetCallback fn, void* arg) {
    soft_limit_ = bytes;
    soft_fn_ = fn;
    soft_arg_ = arg;
    soft_running_.store(false, std::memory_order_relaxed);
  }
  size_t soft_limit() const { return soft_limit_; }

  // Adds `bytes` unless that would exceed the limit (then false, and a
  // refusal is counted). Contexts charge through their block ledger; direct
  // calls are for memory a program holds outside mcx under the same cap.
  // A charge that would cross the soft limit calls `fn` first, on this
  // thread; an exception from it propagates, with nothing charged.
  bool TryCharge(size_t bytes);
  void Uncharge(size_t bytes) { usage_.fetch_sub(bytes, std::memory_order_relaxed); }

 private:
  friend class Context;  // the block ledger and the front (pressure.cc)

  enum class Charged : uint8_t { kYes, kOverLimit, kSoftLimit };
  // The ledger's charge. With `call_back`, a charge that would cross the
  // soft limit while `fn` is set and not running is refused with
  // kSoftLimit, nothing charged (and no refusal counted).
  Charged Charge(size_t bytes, bool call_back);
  // Runs `fn` for a charge of `bytes` refused with kSoftLimit, unless it
  // runs already (on any thread) or the charge no longer crosses; whether
  // it ran. An exception from `fn` propagates, `fn` no longer running.
  bool CallBack(size_t bytes);

  const size_t limit_;
  std::atomic<size_t> usage_{0};
  std::atomic<size_t> peak_{0};
  std::atomic<uint64_t> refusals_{0};
  size_t soft_limit_ = ~size_t{0};
  BudgetCallback soft_fn_ = nullptr;
  void* soft_arg_ = nullptr;
  // Claimed by the thread whose `fn` runs: no other thread, and no charge
  // `fn` makes, calls back meanwhile.
  std::atomic<bool> soft_running_{false};
};

}  // namespace mcx

#endif  // MCX_CONTEXT_BUDGET_H_
