// Internal to mcx; do not include from outside.
// IWYU pragma: private
//
// The checking build's one switch. `--config=checking` (CMake
// -DMCX_CHECKING=ON) records MCX_CHECKING=1 in mcx/context/config.h, which
// this header includes, so every header of mcx, the library and its
// consumers see one value; code tests `kChecking` in ordinary `if`s so both
// branches always compile.

#ifndef MCX_CONTEXT_INTERNAL_CHECKING_H_
#define MCX_CONTEXT_INTERNAL_CHECKING_H_

#include "mcx/context/config.h"

namespace mcx {
namespace internal {

inline constexpr bool kChecking = MCX_CHECKING != 0;

// Direct mode (--config=direct, MCX_DIRECT): each kind sends every request
// down its own path for chunks with a block of their own (nginx's
// NGX_DEBUG_PALLOC), and root contexts use the system allocator, so that
// AddressSanitizer sees each chunk on its own (APR's pool debugging).
inline constexpr bool kDirect = MCX_DIRECT != 0;

// Freed and reset memory is overwritten with this byte (PostgreSQL's
// CLOBBER_FREED_MEMORY uses the same), so a read after free sees garbage,
// and a chunk header read from clobbered memory holds reserved kind id 15.
inline constexpr unsigned char kClobberByte = 0x7F;

// Written just past the requested size of each chunk in checking builds and
// verified when the chunk is freed, reallocated, reset or checked.
inline constexpr unsigned char kSentinelByte = 0x7E;

}  // namespace internal
}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_CHECKING_H_
