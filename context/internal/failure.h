// Internal to mcx; do not include from outside.
// IWYU pragma: private, include "mcx/context/failure.h"
//
// The one place misuse is reported. Kinds and the generic tree call
// `ReportMisuse` with a printf-style message; the process-wide handler (abort
// by default) receives the formatted line.
//
// Interface:
//   ReportMisuse   misuse: one formatted line to the misuse handler
//   DumpOnFailure  Context::Fail's dump on out of memory or a limit (dump.h)

#ifndef MCX_CONTEXT_INTERNAL_FAILURE_H_
#define MCX_CONTEXT_INTERNAL_FAILURE_H_

#include <cstddef>

#include "absl/base/attributes.h"
#include "mcx/context/failure.h"

namespace mcx {
namespace internal {

// Formats the message and hands it to the misuse handler. Returns only if a
// test handler returns.
ABSL_ATTRIBUTE_NOINLINE ABSL_ATTRIBUTE_COLD void ReportMisuse(const char* format,
                                                              ...)
    ABSL_PRINTF_ATTRIBUTE(1, 2);

// Writes the failure line and the report of `ctx`'s tree to the descriptor
// of the nearest ancestor-or-self failure-dump setting, if there is one
// (dump.h). Allocates nothing; preserves errno. Defined in dump.cc.
ABSL_ATTRIBUTE_NOINLINE ABSL_ATTRIBUTE_COLD void DumpOnFailure(const Context* ctx,
                                                               Failure failure, size_t size);

}  // namespace internal
}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_FAILURE_H_
