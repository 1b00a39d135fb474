// File: mcx/context/pressure.h
//
// Memory pressure before failure: a soft limit whose callback runs before an
// allocation would take a subtree past it, so that an engine can spill a
// hash table or evict a cache then, instead of polling its accounting
// (PostgreSQL's hash aggregation checks its memory after each new group) or
// failing at the hard limit. The callback type is shared by everything that
// calls back under pressure; a context's soft limit is set with
// `Context::TrySetSoftLimit` (context.h).
//
// Contract:
//   - When. A soft limit of S bytes on context L counts the block bytes of
//     L's subtree, as a limit does. When a block acquisition for an
//     allocation in the subtree (`Alloc` and friends, `Realloc`, a child's
//     first block, `AddCleanup`, `New`) would take them past S, the
//     callback runs first, once, and then the allocation proceeds: it is
//     retried, and the soft limits of L and of every limited context
//     between the allocating one and L are not consulted again for it. An
//     ancestor's own soft limit may still call its callback on the retry.
//     Allocations served from blocks the subtree already holds (the bump
//     window, a freelist) never call back: the check is on block
//     acquisition only, and costs nothing on the fast path.
//   - What the callback may do. Free memory anywhere: free chunks, reset or
//     destroy contexts (in L's subtree or elsewhere), reset the very context
//     that is allocating, raise or remove the soft limit. It runs outside
//     the kind, with nothing half-done, as a failure handler does. It must
//     not destroy the allocating context or an ancestor of it, nor, during
//     a `Realloc`, free the chunk being reallocated.
//   - Re-entry. While L's callback runs, L's soft limit is not consulted:
//     allocations the callback makes (a spill buffer in the same subtree)
//     proceed without calling it again, also after the callback has set
//     the soft limit again (raised it, say).
//   - The hard limit still holds: it is checked on the retry, after the
//     callback, and refuses as usual (kLimit, the failure handler, the
//     failure dump).
//   - Leaving the callback. By throwing: a throwing call propagates the
//     exception and has allocated nothing; a `Try*` call catches it and
//     fails with kLimit. By longjmp: nothing has been allocated and the tree
//     is consistent, but L's soft limit stays marked as running, so it calls
//     back no more until it is set again (`TrySetSoftLimit`), which is what
//     an engine's error recovery does when it starts the next query. Set
//     again from where the longjmp landed or from any frame above the
//     allocation that called back; the running mark tells a setting from
//     inside the callback by its deeper stack frame.
//   - Threads. The callback runs on the allocating thread, which owns the
//     tree.
//
// Example: a hash aggregation that spills instead of failing.
//
//   void Spill(const mcx::PressureInfo& info) {
//     auto* agg = static_cast<HashAgg*>(info.arg);
//     agg->WritePartitionsToDisk();
//     agg->table_context()->Reset();   // the memory comes back here
//   }
//   agg_ctx->TrySetSoftLimit(64 << 20, &Spill, &agg);
//   agg_ctx->SetLimit(80 << 20);        // the hard limit, as a backstop

#ifndef MCX_CONTEXT_PRESSURE_H_
#define MCX_CONTEXT_PRESSURE_H_

#include <cstddef>

#include "mcx/context/config.h"  // IWYU pragma: keep (config.h: the link check)

namespace mcx {

class Context;

// What a pressure callback is told.
struct PressureInfo {
  Context* context;   // the context the allocation is for
  Context* limited;   // the context whose soft limit it would cross
  size_t held;        // bytes the soft limit counts now
  size_t request;     // bytes the block acquisition would add
  size_t soft_limit;  // the soft limit, in bytes
  void* arg;          // the argument given with the callback
};

// Called before an allocation would cross a soft limit; see the contract.
using PressureCallback = void (*)(const PressureInfo& info);

}  // namespace mcx

#endif  // MCX_CONTEXT_PRESSURE_H_
