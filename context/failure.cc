// The one failure path (Context::Fail), the exceptions it throws, and
// misuse reports.

#include "mcx/context/failure.h"

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>

#include "mcx/context/context.h"
#include "mcx/context/internal/context_impl.h"
#include "mcx/context/internal/extras.h"
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
    case Failure::kStaleMark:
      return "mark already rewound past, dropped or reset";
    case Failure::kForbidden:
      return "allocation inside a NoAllocScope";
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
  // The handler may leave by longjmp, past the scope of an allocation's
  // retry after a pressure callback (pressure.cc, PassedScope), whose
  // record of the soft limits passed would then outlive the call and
  // silence those limits on this thread. A report inside a retry (a kind
  // finishing a free deferred by the callback) clears it first. A handler
  // that returns leaves the rest of that retry without it (a limit it
  // passed may call back once more), and the scope's end restores what
  // was before.
  ledger_refusal.passed = nullptr;
  ledger_refusal.passed_budget = nullptr;
  misuse_handler.load()(line);
}

bool ThrowsInvalidArgument(Failure failure) {
  return failure == Failure::kBadAlignment || failure == Failure::kUnsupported ||
         failure == Failure::kBadArgument || failure == Failure::kCycle ||
         failure == Failure::kStaleMark;
}

void ThrowFor(Failure failure, const char* message) {
  if (failure == Failure::kBadSize) throw std::bad_array_new_length();
  // Not a lack of memory: a bug of the program, which a catch of
  // std::bad_alloc that spills and retries must not swallow.
  if (failure == Failure::kForbidden) throw std::logic_error(message);
  if (ThrowsInvalidArgument(failure)) throw std::invalid_argument(message);
  throw std::bad_alloc();
}

// Out of line: the message's formatting would weigh on every creation's
// frame.
void ThrowCreateFailure(Failure failure, const char* name) {
  const std::string message = std::string("mcx: ") + FailureName(failure) +
                              " creating context '" + (name != nullptr ? name : "(null)") + "'";
  ThrowFor(failure, message.c_str());
}

}  // namespace internal

namespace {

// Bytes of a failure message: the longest name it quotes is cut to fit.
constexpr size_t kFailureMessageBytes = 256;

}  // namespace

// Context::Fail
//
// The one failure path. Try-calls stop at recording the reason; throwing
// calls give the nearest handler a chance (it may log, dump stats, longjmp or
// throw its own exception) and then throw.
//
// Out of memory and limits first write the failure dump, if one is set
// (dump.h), as PostgreSQL prints MemoryContextStats before its "out of
// memory" error: before the handler, which may longjmp past any later point.
// Try-calls do not dump, like PostgreSQL's MCXT_ALLOC_NO_OOM: they expect
// to fail and handle it.
void* Context::Fail(Failure failure, size_t size, unsigned flags) {
  last_failure_ = failure;
  if (flags & kNoThrow) return nullptr;
  if (failure == Failure::kOutOfMemory || failure == Failure::kLimit) {
    internal::DumpOnFailure(this, failure, size);
  }
  // Nothing of this context is read after the handler: it may have reset
  // or destroyed an ancestor, and this context with it. The message is made
  // before, in a buffer on the stack: a handler that longjmps must not leave
  // a heap string behind.
  char message[kFailureMessageBytes];
  message[0] = '\0';
  if (internal::ThrowsInvalidArgument(failure) || failure == Failure::kForbidden) {
    std::snprintf(message, sizeof(message), "mcx: %s in context '%s'", FailureName(failure),
                  name());
  }
  for (Context* c = this; c != nullptr; c = c->parent_) {
    if (c->extras_ != nullptr && c->extras_->handler != nullptr) {
      FailureInfo info{this, name(), failure, size, c->extras_->handler_arg};
      c->extras_->handler(info);
      break;
    }
  }
  internal::ThrowFor(failure, message);
}

}  // namespace mcx
