// mcx/context/no_alloc.h
//
// Regions where allocation is a bug, as PostgreSQL's critical sections are
// (START_CRIT_SECTION ... END_CRIT_SECTION): code that must not fail for
// lack of memory halfway (a change written to two places that must agree),
// or must not reach malloc (a signal handler). Inside a `NoAllocScope` an
// allocation in any context is refused, through the context's failure
// path, unless the context was allowed (`Context::AllowInNoAllocScope`,
// PostgreSQL's MemoryContextAllowInCriticalSection), so a bug shows where
// it is made and not later as a half-done change.
//
// Contract:
//   - The scope is per thread and nests. What is refused: in checking
//     builds (--config=checking), every allocation, reallocation and
//     context creation; in release builds, those that need a block from the
//     block source (a new context, a chunk that does not fit the blocks the
//     context holds, a side record, a reserve): exactly the calls that may
//     reach malloc, at one thread-local load per block. An allocation served
//     from a block already held is not checked in release builds, so the
//     inline path costs nothing (docs/performance.md).
//   - Refused means Failure::kForbidden: a Try call returns nullptr; a
//     throwing call runs the failure handler (which may longjmp) and throws
//     std::logic_error, not std::bad_alloc, so a catch that spills and
//     retries does not hide the bug. The context is unchanged.
//   - Freeing, resetting and destroying stay allowed, as in PostgreSQL.
//   - A handler that longjmps out of a scope skips its destructor: the
//     landing point puts the depth back with `RestoreDepth`, from `Depth()`
//     saved where it set its jump (PostgreSQL's error recovery resets its
//     CritSectionCount alike). A throw unwinds the scope as any destructor.
//
// Example:
//
//   mcx::Context* err = mcx::Context::Create(nullptr, "error", mcx::PoolKind());
//   err->AllowInNoAllocScope();   // outside the scope: it may take a record
//   {
//     mcx::NoAllocScope no_alloc;  // the buffer manager's critical section
//     page->lsn = lsn;
//     wal->Append(record);         // must not allocate
//     err->Strdup("ok here");      // the one context that may
//   }

#ifndef MCX_CONTEXT_NO_ALLOC_H_
#define MCX_CONTEXT_NO_ALLOC_H_

#include "mcx/context/context.h"

namespace mcx {

class NoAllocScope {
 public:
  NoAllocScope() { ++internal::no_alloc_depth; }
  ~NoAllocScope() { --internal::no_alloc_depth; }
  NoAllocScope(const NoAllocScope&) = delete;
  NoAllocScope& operator=(const NoAllocScope&) = delete;

  // The calling thread's nesting of scopes (0: allocation allowed).
  static int Depth() { return internal::no_alloc_depth; }
  // Sets the nesting to `depth`, a value Depth() returned before: the
  // landing point of a longjmp that left scopes without their destructors.
  // A negative depth, which no Depth() returns, is misuse: it is reported
  // and the nesting is left as it was (a negative one would forbid every
  // block acquisition on the thread).
  static void RestoreDepth(int depth);
};

}  // namespace mcx

#endif  // MCX_CONTEXT_NO_ALLOC_H_
