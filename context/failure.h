// File: mcx/context/failure.h
//
// Every way an mcx call can fail, and the one path failures take.
//
// Contract:
//   - Allocation failures (`kOutOfMemory`, `kLimit`, `kBadSize`,
//     `kBadAlignment`, `kUnsupported`) are reported by the call: `Try*` calls
//     return nullptr; throwing calls first call the context's failure handler
//     (set on the context or inherited from the nearest ancestor that has one)
//     and, if it returns, throw (`std::bad_alloc` for memory and limits,
//     `std::bad_array_new_length` for sizes that overflow,
//     `std::invalid_argument` for bad alignments and unsupported operations).
//     After any failure the context is unchanged and usable.
//   - Misuse that corrupts memory or cannot be a legitimate call (a pointer mcx
//     did not hand out, a double free, a destroyed context) goes to the misuse
//     handler, which prints one line naming the address and the context and
//     aborts. Tests may replace it.
//
// Example:
//
//   ctx->SetFailureHandler([](const mcx::FailureInfo& f) {
//     LogError("%s: %s (%zu bytes)", f.context_name, mcx::FailureName(f.failure),
//              f.size);
//   });

#ifndef MCX_CONTEXT_FAILURE_H_
#define MCX_CONTEXT_FAILURE_H_

#include <cstddef>

#include "mcx/context/config.h"  // IWYU pragma: keep (config.h: the link check)

namespace mcx {

class Context;

enum class Failure : unsigned char {
  kNone = 0,
  kOutOfMemory,   // the block source returned nothing
  kLimit,         // a context's byte limit would be exceeded
  kBadSize,       // a size (or count * size) that overflows or exceeds kMaxAllocSize
  kBadAlignment,  // not a power of two, or above kMaxAlignment
  kUnsupported,   // the kind cannot do this (for example, unsized realloc of a
                  // small pool chunk)
  kCycle,         // SetParent would make a context its own ancestor
  kBadArgument,   // a null name, a null kind, a context in the wrong state
  kStaleMark,     // RewindTo or DropMark of a mark that a rewind to an older
                  // mark, a drop or a reset has already passed (context.h)
  kForbidden,     // an allocation inside a NoAllocScope (no_alloc.h)
};

// A short stable name, e.g. "out of memory".
const char* FailureName(Failure failure);

struct FailureInfo {
  Context* context;          // the context the call was made on
  const char* context_name;  // its name, for messages
  Failure failure;
  size_t size;               // bytes requested (0 when not an allocation)
  void* arg;                 // the argument given with the handler
};

// Called on allocation failure by throwing calls. It may log, dump stats,
// longjmp, throw its own exception, or return (then the call throws).
using FailureHandler = void (*)(const FailureInfo& info);

// Misuse reports: `message` is one complete line without a newline.
using MisuseHandler = void (*)(const char* message);

// Replaces the process-wide misuse handler; returns the previous one. The
// default prints "mcx: <message>" to stderr and aborts. Passing nullptr
// restores the default.
MisuseHandler SetMisuseHandler(MisuseHandler handler);

}  // namespace mcx

#endif  // MCX_CONTEXT_FAILURE_H_
