// Internal to mcx; do not include from outside.
// IWYU pragma: private, include "mcx/context/context.h"
//
// The side record of a context: what only some contexts use (a limit, a
// soft limit, a failure handler, a dump setting, cleanups, a reserve), kept out of the context header so that a plain context costs 104
// bytes of header (PostgreSQL's MemoryContextData is 80). It is created on
// first use as a small block of its own from the context's block source,
// charged to the limits like any block; it survives resets and goes back
// when the context is destroyed. Its bytes count in the context's total
// (stats.h) but not among its blocks, which are the kind's.

#ifndef MCX_CONTEXT_INTERNAL_EXTRAS_H_
#define MCX_CONTEXT_INTERNAL_EXTRAS_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "mcx/context/context.h"
#include "mcx/context/dump.h"
#include "mcx/context/failure.h"
#include "mcx/context/pressure.h"

namespace mcx {
namespace internal {

struct CleanupRecord;
struct MarkRecord;

// A C function and its argument: a failure handler or soft-limit callback
// set through the C API (internal/c_api.h).
struct CCallback {
  void (*fn)() = nullptr;
  void* arg = nullptr;
};

// A block held by the reserve; its first bytes link the list.
struct ReserveBlock {
  ReserveBlock* next;
  size_t size;
};

struct ContextExtras {
  size_t bytes = 0;  // of this record's block, as acquired and charged

  // Limits: a bound on the subtree's bytes, maintained only when set.
  size_t limit = kNoLimit;
  // Atomic: under a budget, contexts below it on several threads (the
  // children of a shared context) charge it at once. A limit is checked and
  // charged in two steps, so no limit may be set above a shared context.
  std::atomic<size_t> subtree_bytes{0};
  // A budget (budget.h) this subtree is charged to, or none; while set,
  // subtree_bytes is maintained as for a limit.
  Budget* budget = nullptr;

  // The soft limit (pressure.h), counted with the same subtree_bytes.
  // `pressure_running` is set while its callback runs (and stays set if the
  // callback leaves by longjmp, until the soft limit is set again from
  // outside it); `pressure_frame` and `pressure_thread` are then the frame
  // and the thread of the call that runs it, below which, on that thread,
  // a setting is made from inside the callback.
  size_t soft_limit = kNoLimit;
  PressureCallback pressure_callback = nullptr;
  void* pressure_arg = nullptr;
  uintptr_t pressure_frame = 0;
  const void* pressure_thread = nullptr;  // the thread that runs it
  bool pressure_running = false;

  // Whether subtree_bytes is kept: a limit, a soft limit or a budget is set.
  bool Limited() const {
    return limit != kNoLimit || soft_limit != kNoLimit || budget != nullptr;
  }

  // Failure: the handler (inherited by descendants that have none) and the
  // failure-dump setting (dump.h).
  FailureHandler handler = nullptr;
  void* handler_arg = nullptr;
  // The C API's handler and soft-limit callback (internal/c_api.h):
  // `handler_arg` and `pressure_arg` point here when they were set from C.
  CCallback c_handler;
  CCallback c_pressure;
  int dump_fd = kFailureDumpInherit;
  uint8_t dump_depth = kFailureDumpDefaultDepth;
  uint8_t dump_children = kFailureDumpDefaultChildren;
  bool allow_in_no_alloc_scope = false;  // Context::AllowInNoAllocScope

  // Cleanups: one list per phase, newest first; records removed or run are
  // kept for reuse. Serial numbers of registrations (CleanupHandle): the
  // last one given, and the last one given before the latest reset. They
  // never restart, so a handle from before a reset is recognised without
  // reading its record.
  CleanupRecord* cleanups[2] = {nullptr, nullptr};
  CleanupRecord* spare_cleanups = nullptr;
  uint64_t cleanup_serial = 0;
  uint64_t cleanup_floor = 0;

  // The reserve (ContextOptions::reserve_blocks).
  ReserveBlock* reserve = nullptr;
  size_t reserve_count = 0;       // blocks held
  size_t reserve_target = 0;      // blocks it refills up to
  size_t reserve_block_size = 0;  // bytes of each
  size_t reserve_bytes = 0;       // bytes held
  uint64_t reserve_uses = 0;      // blocks handed out since creation

  // Savepoints (internal/mark.h): the stack of live marks, newest first, and
  // the last mark serial given. `cleanups_rewound` is set when a rewind
  // dropped registrations whose records lay in the memory it released:
  // handles are then checked against the cleanup lists before any record
  // is read, until the next reset makes every older handle stale anyway.
  MarkRecord* marks = nullptr;
  uint64_t mark_serial = 0;
  bool cleanups_rewound = false;
};

}  // namespace internal
}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_EXTRAS_H_
