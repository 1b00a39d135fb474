// NoAllocScope's state (no_alloc.h) and what a context keeps of it.
//
// The depth is a plain thread_local int, constant-initialised, so reading
// it is one load with no initialisation guard: the check costs that on each
// block acquisition (and each allocation in checking builds). Whether a
// context is allowed lives in its side record, read only inside a scope:
// the 96-byte header has no room, and most contexts never need it.

#include "mcx/context/no_alloc.h"

#include "mcx/context/context.h"
#include "mcx/context/internal/extras.h"
#include "mcx/context/internal/failure.h"

namespace mcx {
namespace internal {

__thread int no_alloc_depth = 0;

}  // namespace internal

void NoAllocScope::RestoreDepth(int depth) {
  if (depth < 0) {
    internal::ReportMisuse("cannot restore the no-allocation depth to %d: no Depth() returns it",
                           depth);
    return;
  }
  internal::no_alloc_depth = depth;
}

bool Context::AllowInNoAllocScope(bool allow) {
  if (!allow && extras_ == nullptr) return true;
  internal::ContextExtras* x = Extras();
  if (x == nullptr) return false;
  x->allow_in_no_alloc_scope = allow;
  return true;
}

bool Context::allowed_in_no_alloc_scope() const {
  return extras_ != nullptr && extras_->allow_in_no_alloc_scope;
}

}  // namespace mcx
