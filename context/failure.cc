#include "mcx/context/failure.h"

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>

#include "mcx/context/internal/failure.h"

namespace mcx {

const char* FailureName(Failure failure) {
  switch (failure) {
    case Failure::kNone:
      return "no failure";
    case Failure::kOutOfMemory:
      return "out of memory";
    case Failure::kLimit:
      return "memory limit exceeded";
    case Failure::kBadSize:
      return "invalid allocation size";
    case Failure::kBadAlignment:
      return "invalid alignment";
    case Failure::kUnsupported:
      return "operation not supported by this kind";
    case Failure::kCycle:
      return "reparenting would create a cycle";
    case Failure::kBadArgument:
      return "invalid argument";
  }
  return "unknown failure";
}

namespace {

void DefaultMisuseHandler(const char* message) {
  std::fprintf(stderr, "mcx: %s\n", message);
  std::fflush(stderr);
  std::abort();
}

// Atomic because misuse can be reported from any thread.
std::atomic<MisuseHandler> misuse_handler{&DefaultMisuseHandler};

}  // namespace

MisuseHandler SetMisuseHandler(MisuseHandler handler) {
  if (handler == nullptr) handler = &DefaultMisuseHandler;
  return misuse_handler.exchange(handler);
}

namespace internal {

// ReportMisuse
//
// Formats into a stack buffer: misuse is often reported from a state where
// the heap cannot be trusted, so this path must not allocate.
void ReportMisuse(const char* format, ...) {
  char line[512];
  va_list args;
  va_start(args, format);
  std::vsnprintf(line, sizeof(line), format, args);
  va_end(args);
  misuse_handler.load()(line);
}

}  // namespace internal
}  // namespace mcx
