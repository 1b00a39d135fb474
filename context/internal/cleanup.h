// Internal to mcx; do not include from outside.
// IWYU pragma: private, include "mcx/context/context.h"
//
// The cleanup record. Records live in their context's own memory (allocated
// with the context's kind), on one doubly linked list per phase, newest at
// the head, so that removal by handle is O(1) and teardown pops from the
// head. Removed or run records go on the context's spare list and are reused
// by the next registration: a pool context cannot free them one by one.
// A registration's serial number (CleanupHandle) tells a handle of the
// current registration from a stale one.

#ifndef MCX_CONTEXT_INTERNAL_CLEANUP_H_
#define MCX_CONTEXT_INTERNAL_CLEANUP_H_

#include "mcx/context/context.h"

namespace mcx {
namespace internal {

struct CleanupRecord {
  CleanupRecord* prev;  // newer record; nullptr at the head
  CleanupRecord* next;  // older record
  CleanupFn fn;
  void* arg;
  CleanupFn destroy;    // for callables: destroys `arg` without running it
  Context* owner;
  uint64_t serial;      // of the registration; 0 while not registered
  CleanupPhase phase;
};

}  // namespace internal
}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_CLEANUP_H_
