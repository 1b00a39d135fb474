// Internal to mcx; do not include from outside.
// IWYU pragma: private
//
// What the files of the generic tree share: context.cc (the tree: create,
// link, reparent, teardown order), block_ledger.cc (blocks, accounting,
// limits, the reserve), cleanup.cc, allocation.cc (the allocation front) and
// failure.cc (the one failure path).
//
// Interface:
//   AcquireFrom           a block from a source, refusing short ones
//   ReleaseTo             a block back to its source
//   ThrowFor              the exception for a failure
//   ThrowCreateFailure    a root's failed creation
//   ClampDumpLimit        a failure-dump limit to its one-byte field
//   CountLimited          the process-wide count of limited contexts
//   AnyLimited            whether any context has a limit
//   CountLimitedChange    the count, as a context starts or stops counting
//   LedgerRefusal         why the ledger refused a block for the front
//   AnyReportRequests     whether any report request waits, process-wide

//   DefaultSourceInstalled  whether SetDefaultBlockSource chose the default

#ifndef MCX_CONTEXT_INTERNAL_CONTEXT_IMPL_H_
#define MCX_CONTEXT_INTERNAL_CONTEXT_IMPL_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "mcx/context/block_source.h"
#include "mcx/context/caching_block_source.h"
#include "mcx/context/context.h"
#include "mcx/context/dump.h"
#include "mcx/context/failure.h"
#include "mcx/context/internal/thread_cache.h"
#include "mcx/context/kind.h"

namespace mcx {
namespace internal {

// A source that hands back less than asked has broken its contract: the
// block goes back and the call fails as out of memory, rather than letting a
// kind write past the block's end. (Alignment is the source's to keep: a
// test for it would cost every context creation more than this one.)
//
// The default cache (the source of nearly every context) without the
// virtual call: its thread-cache hit inline.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline Block AcquireFrom(BlockSource* source, size_t min_size,
                                                      size_t alignment) {
  CachingBlockSource* cache = default_block_cache.load(std::memory_order_relaxed);
  Block b = source == cache ? cache->AcquireInline(min_size, alignment)
                            : source->Acquire(min_size, alignment);
  // One test covers failure too: a failed acquisition has size 0.
  if (ABSL_PREDICT_FALSE(b.size < min_size)) {
    if (b.ptr != nullptr) source->Release(b);
    return Block{};
  }
  return b;
}

// Gives a block back to its source; the default cache's thread-cache keep
// inline, as AcquireFrom takes.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void ReleaseTo(BlockSource* source, Block block) {
  CachingBlockSource* cache = default_block_cache.load(std::memory_order_relaxed);
  if (source == cache) {
    cache->ReleaseInline(block);
  } else {
    source->Release(block);
  }
}

// Failures of arguments rather than of memory: std::invalid_argument.
bool ThrowsInvalidArgument(Failure failure);

// The exception for a failure of a throwing call: std::bad_alloc,
// std::bad_array_new_length or std::invalid_argument(message). The message
// is made by the caller before the failure handler runs: a handler may
// reset or destroy the context that failed.
[[noreturn]] void ThrowFor(Failure failure, const char* message);

// A root's failed creation (no handler: a root has no ancestors yet).
[[noreturn]] ABSL_ATTRIBUTE_NOINLINE ABSL_ATTRIBUTE_COLD void ThrowCreateFailure(
    Failure failure, const char* name);

inline uint8_t ClampDumpLimit(int n) {
  return static_cast<uint8_t>(n < 0 ? 0 : n > kFailureDumpMaxLimit ? kFailureDumpMaxLimit : n);
}

// Live contexts with a limit, process-wide. Most programs set none, and then
// limit bookkeeping on every block acquired and released is one load. A
// thread only ever asks about its own trees, and a limit in its trees was
// set by itself, so a relaxed count is exact where it matters.
extern std::atomic<size_t> limited_contexts;

inline void CountLimited(size_t old_limit, size_t new_limit) {
  if ((old_limit == kNoLimit) == (new_limit == kNoLimit)) return;
  if (new_limit != kNoLimit) {
    limited_contexts.fetch_add(1, std::memory_order_relaxed);
  } else {
    limited_contexts.fetch_sub(1, std::memory_order_relaxed);
  }
}

inline bool AnyLimited() { return limited_contexts.load(std::memory_order_relaxed) != 0; }

// Holds the lock of a context whose kind many threads use at once
// (KindMethods::lock) while the tree changes what it keeps for it; nothing
// for any other context.
class TreeLock {
 public:
  explicit TreeLock(Context* ctx)
      : ctx_(ctx != nullptr && ctx->kind()->lock != nullptr ? ctx : nullptr) {
    if (ABSL_PREDICT_FALSE(ctx_ != nullptr)) ctx_->kind()->lock(ctx_);
  }
  ~TreeLock() {
    if (ABSL_PREDICT_FALSE(ctx_ != nullptr)) ctx_->kind()->unlock(ctx_);
  }
  TreeLock(const TreeLock&) = delete;
  TreeLock& operator=(const TreeLock&) = delete;

 private:
  Context* ctx_;
};

// A context starts or stops keeping its subtree's bytes (a limit or a soft
// limit set where there was none, or the last one removed).
inline void CountLimitedChange(bool was, bool is) {
  if (was == is) return;
  if (is) {
    limited_contexts.fetch_add(1, std::memory_order_relaxed);
  } else {
    limited_contexts.fetch_sub(1, std::memory_order_relaxed);
  }
}

// Why the ledger refused a block without the block source or a hard limit
// having refused it (pressure.cc): a soft limit's callback is due (a
// context's, or a budget's), or a report request of this thread is posted
// (report_request.h). The front that
// made the call finds it here, runs what is due, and retries. Written only
// by refusals, read only by the refused context's front; plain thread-local
// storage (trivial, no constructor), so reading it allocates nothing.
struct LedgerRefusal {
  const Context* refused;       // the context whose block was refused
  Context* due;                 // the soft-limited context to call back
  Context* due_budget;          // the context whose budget's soft limit calls back
  size_t bytes;                 // the block's bytes
  const Context* passed;        // during a retry: soft limits up to this one are passed
  const Context* passed_budget;  // and the budgets' soft limits up to this one
  Failure saved_failure;        // the refused context's last_failure() before
  bool requests;                // a report request is due
};
extern thread_local LedgerRefusal ledger_refusal;

// The soft limits one call has passed, for its retries: the contexts' up to
// `soft`, the budgets' up to `budget` (each an ancestor-or-self of the
// allocating context, or nullptr for none).
struct PassedLimits {
  const Context* soft = nullptr;
  const Context* budget = nullptr;
};

// Report requests posted and not yet answered, process-wide
// (report_request.cc). One relaxed load on each block acquisition.
extern std::atomic<size_t> posted_report_requests;
inline bool AnyReportRequests() {
  return posted_report_requests.load(std::memory_order_relaxed) != 0;
}
// The stack grows down: a frame at a lower address than the current one
// belongs to a call that has returned (or was left by longjmp), or to one
// the current call made. Inlined, so it is the caller's frame.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline uintptr_t FrameAddress() {
  return reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
}

// Whether a request posted to this thread waits (report_request.cc).
bool ThisThreadHasRequests();

// Whether the default block source is one SetDefaultBlockSource installed
// (block_source.cc): a program's own region, which the checking build's
// first-block quarantine (context.cc) leaves alone.
bool DefaultSourceInstalled();

}  // namespace internal

// Links a new context under `parent` (nullptr: a root), as its first child.
inline void Context::LinkUnder(Context* parent) {
  parent_ = parent;
  prev_sibling_ = nullptr;
  next_sibling_ = nullptr;
  if (parent == nullptr) return;
  auto link = [&] {
    next_sibling_ = parent->first_child_;
    if (next_sibling_ != nullptr) next_sibling_->prev_sibling_ = this;
    parent->first_child_ = this;
  };
  // One test for the common parent, whose kind takes no lock.
  if (ABSL_PREDICT_TRUE(parent->methods_->lock == nullptr)) {
    link();
    return;
  }
  internal::TreeLock lock(parent);  // a shared parent's children come and go on any thread
  link();
}


inline bool Context::ChargeLimits(size_t bytes) {
  return ABSL_PREDICT_TRUE(!internal::AnyLimited()) || ChargeLimitsSlow(bytes);
}

inline bool Context::ChargeBlock(size_t bytes) {
  return ABSL_PREDICT_TRUE(!internal::AnyLimited()) || ChargeLimitsSlow(bytes, /*pressure=*/true);
}

inline void Context::UnchargeLimits(size_t bytes) {
  if (ABSL_PREDICT_FALSE(internal::AnyLimited())) UnchargeLimitsSlow(bytes);
}
}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_CONTEXT_IMPL_H_
