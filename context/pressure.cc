// Soft limits and their callbacks (pressure.h, and a budget's: budget.h),
// and the refusal protocol that lets the ledger hand work back to the front
// of an allocation.
//
// Why a refusal: the ledger sees that a block would cross a soft limit (or
// that a report request waits for this thread) while the kind is in the
// middle of serving the call. Running user code there would let it free,
// reset or report on a context whose kind is half-way through an update.
// So the ledger refuses the block, as a limit would; every kind already
// handles a refused block by failing with nothing changed. The front
// (AllocSlow, ReallocImpl, CreateImpl), which is outside the kind, finds the
// reason in a thread-local record, runs the callback or writes the report,
// and calls the kind again. Nothing is added to any path that succeeds: the
// test is in the ledger, which runs only when a block is acquired, and in
// the front's failure branch.
//
// A budget's soft limit takes the same road: the budget refuses the charge
// (the test is inside its compare-and-swap loop, so it costs a charge that
// succeeds two comparisons), the ledger records which budget-bearing
// context refused, and the front runs the budget's callback. The budget is
// shared by threads, so its running mark is an atomic flag in the budget,
// claimed by the thread that calls back (budget.cc).
//
// Nothing of a running callback lives on the stack that a longjmp could
// strand, except the soft limit's `pressure_running` mark (or the budget's
// flag), which the contract says stays set until the soft limit is set
// again.

#include <cstddef>

#include "absl/base/attributes.h"
#include "mcx/context/budget.h"
#include "mcx/context/context.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/context_impl.h"
#include "mcx/context/internal/extras.h"
#include "mcx/context/internal/valgrind.h"
#include "mcx/context/report_request.h"

namespace mcx {
namespace {

// Its address names the calling thread (pressure_thread in the side record).
thread_local char this_thread_token;

}  // namespace


using internal::ContextExtras;

namespace internal {

thread_local LedgerRefusal ledger_refusal;

namespace {

// Marks the soft limits in `passed` as passed for the retry of one call,
// and restores what an enclosing call had (a block source may allocate from
// another context while the kind runs).
class PassedScope {
 public:
  explicit PassedScope(const PassedLimits& passed)
      : saved_{ledger_refusal.passed, ledger_refusal.passed_budget} {
    ledger_refusal.passed = passed.soft;
    ledger_refusal.passed_budget = passed.budget;
  }
  ~PassedScope() {
    ledger_refusal.passed = saved_.soft;
    ledger_refusal.passed_budget = saved_.budget;
  }
  PassedScope(const PassedScope&) = delete;
  PassedScope& operator=(const PassedScope&) = delete;

 private:
  PassedLimits saved_;
};

// Records the ledger's refusal of a block of `refused` for the front: what
// is due (a context's soft limit, a budget's, or report requests), the
// block's bytes, and the failure to restore. The refused call fails with
// kLimit unless the front serves it.
void RecordRefusal(const Context* refused, Context* due, Context* due_budget, size_t bytes,
                   bool requests, FailureSlot* last_failure) {
  LedgerRefusal& r = ledger_refusal;
  r.refused = refused;
  r.due = due;
  r.due_budget = due_budget;
  r.bytes = bytes;
  r.requests = requests;
  r.saved_failure = *last_failure;
  *last_failure = Failure::kLimit;
}

}  // namespace
}  // namespace internal

// Context::PressureDue
//
// Called by the ledger (ChargeLimitsSlow with `pressure`) for the first
// charge of a block: the nearest soft limit that the block would cross, that
// has a callback not running now and that this call has not passed yet,
// refuses it. The thread-local record is read only when there is such a
// limit.
bool Context::PressureDue(Context* first, size_t bytes) {
  if (state_ == State::kCreating) return false;  // the kind's init: no retry
  bool loaded = false;
  const Context* passed = nullptr;
  for (Context* l = first; l != nullptr; l = l->NextLimited()) {
    const ContextExtras* x = l->extras_;
    if (x->pressure_callback == nullptr || x->pressure_running) continue;
    const bool crosses =
        x->subtree_bytes > x->soft_limit || bytes > x->soft_limit - x->subtree_bytes;
    if (!crosses) continue;
    if (!loaded) {
      passed = internal::ledger_refusal.passed;
      loaded = true;
    }
    if (passed != nullptr && (passed == l || passed->IsAncestorOf(l))) continue;
    internal::RecordRefusal(this, l, nullptr, bytes, false, &last_failure_);
    return true;
  }
  return false;
}

// Context::BudgetSoftLimitArmed
//
// Called by the ledger for a limited context `l` whose budget has a soft
// limit callback: whether this charge may be refused for it (not during
// the kind's init, and not once this call has passed it).
bool Context::BudgetSoftLimitArmed(const Context* l) const {
  if (state_ == State::kCreating) return false;
  const Context* passed = internal::ledger_refusal.passed_budget;
  return passed == nullptr || (passed != l && !passed->IsAncestorOf(l));
}

// Context::RefuseForBudget
//
// Called by the ledger when `l`'s budget refused the charge of `bytes` for
// its soft limit (nothing charged anywhere): records it for the front.
void Context::RefuseForBudget(Context* l, size_t bytes) {
  internal::RecordRefusal(this, nullptr, l, bytes, false, &last_failure_);
}

// Context::RefuseForRequests
//
// Called by the ledger when some report request waits somewhere in the
// process: refuses the block if one waits for this thread.
bool Context::RefuseForRequests() {
  if (state_ == State::kCreating || !internal::ThisThreadHasRequests()) return false;
  internal::RecordRefusal(this, nullptr, nullptr, 0, true, &last_failure_);
  return true;
}

// Context::WithdrawRefusal
//
// A kind served the call without the block that was refused: the failure
// goes back to `before`, and a soft limit or report request that refused
// the block is not served for this call (the next block's acquisition
// meets it again).
void Context::WithdrawRefusal(Failure before) {
  internal::LedgerRefusal& r = internal::ledger_refusal;
  if (r.refused == this) {
    r.refused = nullptr;
    r.due = nullptr;
    r.due_budget = nullptr;
    r.requests = false;
  }
  last_failure_ = before;
}

// Context::ServeRefusal
//
// In a front's failure branch: if the failure was the ledger's refusal of a
// block of this context, runs what is due and returns true (the front
// retries, with `*passed` extended past the soft limit that called back);
// false otherwise (the front fails as it would have). A callback that throws
// from a Try-call fails the call with kLimit; from a throwing call the
// exception propagates.
bool Context::ServeRefusal(internal::PassedLimits* passed, unsigned flags) {
  internal::LedgerRefusal& r = internal::ledger_refusal;
  // The record is this thread's; the context's last failure tells whether
  // a later failure of the call replaced the refusal, except in a context
  // any thread may use (a shared one), where another thread's failure may
  // have been set since: there the record alone decides.
  const bool replaced = last_failure_ != Failure::kLimit && methods_->lock == nullptr;
  if (r.refused != this || replaced ||
      (r.due == nullptr && r.due_budget == nullptr && !r.requests)) {
    return false;
  }
  Context* due = r.due;
  Context* due_budget = r.due_budget;
  const bool requests = r.requests;
  const size_t bytes = r.bytes;
  last_failure_ = r.saved_failure;
  r.refused = nullptr;
  r.due = nullptr;
  r.due_budget = nullptr;
  r.requests = false;
  if (requests) {
    ServiceRequests();
    return true;
  }
  if (due_budget != nullptr) {
    // `due_budget` is this context or an ancestor, which the callback must
    // not destroy; the budget outlives it.
    passed->budget = due_budget;
    Budget* b = due_budget->extras_->budget;
    if (b == nullptr) return true;
    try {
      b->CallBack(bytes);
    } catch (...) {
      if (flags & kNoThrow) {
        last_failure_ = Failure::kLimit;
        return false;
      }
      throw;
    }
    return true;
  }
  ContextExtras* x = due->extras_;
  passed->soft = due;
  if (x->pressure_callback == nullptr) return true;
  const PressureInfo info{this, due, x->subtree_bytes, bytes, x->soft_limit, x->pressure_arg};
  x->pressure_running = true;
  x->pressure_frame = internal::FrameAddress();
  x->pressure_thread = &this_thread_token;
  try {
    x->pressure_callback(info);
  } catch (...) {
    // `due` is this context or an ancestor, which the callback must not
    // destroy: its record is still there.
    x->pressure_running = false;
    if (flags & kNoThrow) {
      last_failure_ = Failure::kLimit;
      return false;
    }
    throw;
  }
  x->pressure_running = false;
  return true;
}

void* Context::AllocRefused(size_t size, size_t alignment, unsigned flags) {
  internal::PassedLimits passed;
  while (ServeRefusal(&passed, flags)) {
    if (internal::kChecking && !CheckLive("allocation after a pressure callback")) {
      return Fail(Failure::kBadArgument, size, flags);
    }
    void* p;
    {
      UseGuard use(this);
      internal::PassedScope scope(passed);
      CheckNotTearingDown("allocation");
      p = methods_->alloc(this, size, alignment);
    }
    if (p != nullptr) {
      internal::ValgrindChunkAlloc(this, p, size);
      return p;
    }
  }
  return Fail(last_failure_, size, flags);
}

void* Context::ReallocRefused(void* p, size_t old_size, size_t new_size, unsigned flags) {
  internal::PassedLimits passed;
  while (ServeRefusal(&passed, flags)) {
    if (internal::kChecking && !CheckLive("reallocation after a pressure callback")) {
      return Fail(Failure::kBadArgument, new_size, flags);
    }
    void* q;
    {
      UseGuard use(this);
      internal::PassedScope scope(passed);
      q = methods_->realloc(this, p, old_size, new_size);
    }
    if (q != nullptr) {
      internal::ValgrindChunkMove(this, p, q, new_size);
      return q;
    }
  }
  return Fail(last_failure_, new_size, flags);
}

// A child's first block, charged to this (its parent) by CreateImpl: nothing
// of the child exists yet, so the callback runs with nothing to undo.
bool Context::ChargeRefused(size_t bytes, unsigned flags) {
  internal::PassedLimits passed;
  while (ServeRefusal(&passed, flags)) {
    internal::PassedScope scope(passed);
    if (ChargeBlock(bytes)) return true;
  }
  return false;
}

// --- Setting the soft limit --------------------------------------------------

namespace {

// Whether the soft limit's callback is running below the caller, on its
// thread: marked running, called back on this thread, from a frame above
// the caller's. A setting made there leaves the mark, so the callback is
// not re-entered; one made elsewhere (where a longjmp out of the callback
// landed, or above the allocation that called back, or on the thread a
// context was adopted by) re-arms a callback that the longjmp left marked.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline bool CallbackRunsBelow(const ContextExtras* x,
                                                           uintptr_t frame) {
  return x->pressure_running && x->pressure_thread == &this_thread_token &&
         frame < x->pressure_frame;
}

}  // namespace

Failure Context::TrySetSoftLimit(size_t bytes, PressureCallback callback, void* arg) {
  const uintptr_t frame = internal::FrameAddress();
  if (bytes == kNoLimit) {
    if (extras_ != nullptr) {
      const bool was = extras_->Limited();
      extras_->soft_limit = kNoLimit;
      extras_->pressure_callback = nullptr;
      extras_->pressure_arg = nullptr;
      extras_->pressure_running = CallbackRunsBelow(extras_, frame);
      internal::CountLimitedChange(was, extras_->Limited());
    }
    return Failure::kNone;
  }
  // Nothing shared below a context already limited: only a first limit
  // walks the subtree.
  const bool limited = extras_ != nullptr && (extras_->limit != kNoLimit ||
                                              extras_->soft_limit != kNoLimit);
  if (callback == nullptr || (!limited && SharedAtOrBelow())) {
    last_failure_ = Failure::kBadArgument;
    return Failure::kBadArgument;
  }
  ContextExtras* x = Extras();  // in the memory SubtreeBytes counts below
  if (x == nullptr) return last_failure_;
  const bool was = x->Limited();
  if (!was) x->subtree_bytes = SubtreeBytes();
  x->soft_limit = bytes;
  x->pressure_callback = callback;
  x->pressure_arg = arg;
  x->pressure_running = CallbackRunsBelow(x, frame);
  internal::CountLimitedChange(was, true);
  return Failure::kNone;
}

size_t Context::soft_limit() const { return extras_ != nullptr ? extras_->soft_limit : kNoLimit; }

}  // namespace mcx
