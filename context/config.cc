// The definition behind mcx/context/config.h's link check: every translation
// unit that includes mcx's headers references MCX_CONFIG_LINK_SYMBOL, whose
// name spells the configuration of those headers, and only this one
// definition, in the library, exists. A consumer compiled against the
// headers of another configuration therefore fails to link, and the
// linker's message names the configuration it expected.
//
// It is also where the library checks that the configuration it records is
// the one it is compiled in: a sanitizer the compiler instruments for must
// be recorded (the headers' poisoning depends on it), and a recorded one
// must be instrumented for (its runtime is what the poisoning calls).

#include "mcx/context/config.h"

#include "absl/base/config.h"

#if MCX_SANITIZE_ADDRESS && !defined(ABSL_HAVE_ADDRESS_SANITIZER)
#error "mcx: configured for AddressSanitizer (MCX_SANITIZE_ADDRESS) but not compiled with -fsanitize=address"
#endif
#if !MCX_SANITIZE_ADDRESS && defined(ABSL_HAVE_ADDRESS_SANITIZER)
#error "mcx: compiled with -fsanitize=address but not configured for it: use Bazel --config=asan (--define=mcx_sanitize_address=1) or CMake -DMCX_SANITIZE=address"
#endif
#if MCX_SANITIZE_THREAD && !defined(ABSL_HAVE_THREAD_SANITIZER)
#error "mcx: configured for ThreadSanitizer (MCX_SANITIZE_THREAD) but not compiled with -fsanitize=thread"
#endif
#if !MCX_SANITIZE_THREAD && defined(ABSL_HAVE_THREAD_SANITIZER)
#error "mcx: compiled with -fsanitize=thread but not configured for it: use Bazel --config=tsan (--define=mcx_sanitize_thread=1) or CMake -DMCX_SANITIZE=thread"
#endif

// Visible from a shared library too, whatever the default visibility.
extern "C" __attribute__((visibility("default"))) const char MCX_CONFIG_LINK_SYMBOL = 0;
