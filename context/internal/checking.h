// Internal to mcx; do not include from outside.
// IWYU pragma: private
//
// The checking build's one switch. `--config=checking` defines MCX_CHECKING;
// code tests `kChecking` in ordinary `if`s so both branches always compile.

#ifndef MCX_CONTEXT_INTERNAL_CHECKING_H_
#define MCX_CONTEXT_INTERNAL_CHECKING_H_

namespace mcx {
namespace internal {

#ifdef MCX_CHECKING
inline constexpr bool kChecking = true;
#else
inline constexpr bool kChecking = false;
#endif

// Direct mode (--config=direct, MCX_DIRECT): every allocation is its own
// block from the block source (the system allocator by default), still owned
// by its context, so AddressSanitizer sees each chunk on its own (APR's pool
// debugging, nginx's NGX_DEBUG_PALLOC). The kinds' chunk layouts are bypassed.
#ifdef MCX_DIRECT
inline constexpr bool kDirect = true;
#else
inline constexpr bool kDirect = false;
#endif

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
