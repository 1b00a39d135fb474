// File: mcx/context/current.h
//
// An optional current context per thread, as PostgreSQL's
// CurrentMemoryContext and MemoryContextSwitchTo. Nothing in mcx requires it:
// every call that uses it also exists on an explicit `Context*`.
//
// Contract:
//   - The current context starts as nullptr on every thread.
//   - `SwitchTo(ctx)` makes `ctx` current and returns the previous one.
//   - `ScopedContextSwitch` switches in its constructor and restores the
//     previous context in its destructor, also when an exception unwinds.
//   - Destroying the current context does not clear it: switch away first,
//     as in PostgreSQL.
//   - `CurrentAlloc` and friends report misuse if no context is current.
//
// Example:
//
//   mcx::ScopedContextSwitch in_row(row_ctx);
//   char* s = mcx::CurrentStrdup("temporary");   // in row_ctx

#ifndef MCX_CONTEXT_CURRENT_H_
#define MCX_CONTEXT_CURRENT_H_

#include <cstddef>
#include <string_view>

#include "mcx/context/config.h"  // IWYU pragma: keep (config.h: the link check)
#include "mcx/context/site.h"

namespace mcx {

class Context;

Context* CurrentContext();
Context* SwitchTo(Context* ctx);

class ScopedContextSwitch {
 public:
  explicit ScopedContextSwitch(Context* ctx) : previous_(SwitchTo(ctx)) {}
  ~ScopedContextSwitch() { SwitchTo(previous_); }
  ScopedContextSwitch(const ScopedContextSwitch&) = delete;
  ScopedContextSwitch& operator=(const ScopedContextSwitch&) = delete;

 private:
  Context* previous_;
};

// PostgreSQL's palloc, palloc0 and pstrdup.
void* CurrentAlloc(size_t size, AllocationSite site = AllocationSite::Current());
void* CurrentAllocZero(size_t size, AllocationSite site = AllocationSite::Current());
char* CurrentStrdup(std::string_view s, AllocationSite site = AllocationSite::Current());

}  // namespace mcx

#endif  // MCX_CONTEXT_CURRENT_H_
