// Internal to mcx; do not include from outside.
// IWYU pragma: private
//
// What the C API (c/mcx.cc) keeps in a context. A C failure handler or
// soft-limit callback is a function and an argument, where the context
// keeps one argument with its handler and one with its callback. The C API
// sets a trampoline of its own whose argument points at the C pair, kept in
// the context's side record (ContextExtras::c_handler, c_pressure): the
// pair lives exactly as long as the setting that reads it, through resets,
// until the context is destroyed, and is kept nowhere else.
//
// Interface:
//   CApiAccess::SetFailureHandler   a trampoline and its C pair
//   CApiAccess::SetSoftLimit        a soft limit, a trampoline and its C pair

#ifndef MCX_CONTEXT_INTERNAL_C_API_H_
#define MCX_CONTEXT_INTERNAL_C_API_H_

#include <cstddef>

#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/internal/extras.h"
#include "mcx/context/pressure.h"

namespace mcx {
namespace internal {

struct CApiAccess {
  // As ctx->SetFailureHandler(trampoline, arg), with `arg` pointing at a
  // copy of `pair` in the side record. False, with nothing changed, if the
  // record cannot be had (last_failure() says why).
  static bool SetFailureHandler(Context* ctx, FailureHandler trampoline, CCallback pair) {
    ContextExtras* x = ctx->Extras();
    if (x == nullptr) return false;
    x->c_handler = pair;
    x->handler = trampoline;
    x->handler_arg = &x->c_handler;
    return true;
  }

  // As ctx->TrySetSoftLimit(bytes, trampoline, arg), with `arg` pointing at
  // a copy of `pair` in the side record. The soft limit is set first, so
  // that a refusal leaves the pair of the one already set as it was.
  static Failure SetSoftLimit(Context* ctx, size_t bytes, PressureCallback trampoline,
                              CCallback pair) {
    const Failure failure = ctx->TrySetSoftLimit(bytes, trampoline, nullptr);
    if (failure != Failure::kNone || bytes == kNoLimit) return failure;
    ContextExtras* x = ctx->extras_;  // there now
    x->c_pressure = pair;
    x->pressure_arg = &x->c_pressure;
    return Failure::kNone;
  }
};

}  // namespace internal
}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_C_API_H_
