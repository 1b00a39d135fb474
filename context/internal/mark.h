// Internal to mcx; do not include from outside.
// IWYU pragma: private, include "mcx/context/context.h"
//
// The record of a savepoint (Context::Mark). It lives in its context's own
// memory, allocated before the kind records its position, so a rewind to
// the mark never releases it, and a rewind to an older mark releases it
// with everything else since. Records form a stack in the side record,
// newest first; a Mark value names one by address and serial, and is
// validated by a walk down the stack (which holds only live records), never
// by reading the record it names.

#ifndef MCX_CONTEXT_INTERNAL_MARK_H_
#define MCX_CONTEXT_INTERNAL_MARK_H_

#include <cstddef>
#include <cstdint>

#include "mcx/context/context.h"

namespace mcx {
namespace internal {

struct alignas(kDefaultAlignment) MarkRecord {
  MarkRecord* older;        // the mark below on the stack
  uint64_t serial;          // the mark's number, increasing per context
  uint64_t cleanup_serial;  // the last cleanup serial given before the mark
  // The newest child at the mark (nullptr: none). Children newer than it
  // joined since; when it leaves, its older sibling takes its place.
  Context* boundary;

  // The kind's position (KindMethods::mark_size bytes) follows the record.
  void* position() { return this + 1; }
};

}  // namespace internal
}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_MARK_H_
