// Internal to mcx; do not include from outside.
// IWYU pragma: private, include "mcx/context/failure.h"
//
// The one place misuse is reported. Kinds and the generic tree call
// `ReportMisuse` with a printf-style message; the process-wide handler (abort
// by default) receives the formatted line.

#ifndef MCX_CONTEXT_INTERNAL_FAILURE_H_
#define MCX_CONTEXT_INTERNAL_FAILURE_H_

#include "absl/base/attributes.h"

namespace mcx {
namespace internal {

// Formats the message and hands it to the misuse handler. Returns only if a
// test handler returns.
ABSL_ATTRIBUTE_NOINLINE ABSL_ATTRIBUTE_COLD void ReportMisuse(const char* format,
                                                              ...)
    ABSL_PRINTF_ATTRIBUTE(1, 2);

}  // namespace internal
}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_FAILURE_H_
