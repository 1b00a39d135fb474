// The members of Context that return absl::Status: SetParent and SetLimit.
//
// Why a file (and a Bazel target, //context) of their own: absl::Status
// brings Abseil's Cord and its friends, about thirty libraries at link time
// (`pkg-config --libs absl_status`), and the core, the kinds and the C API
// need none of them. The core does the work and returns the reason
// (TrySetParent, TrySetLimit, in context.cc and block_ledger.cc); this file
// only turns a reason into a status with a message, for C++ callers, who
// link //context (CMake: mcx::mcx). docs/design.md has the decision.

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"

namespace mcx {

absl::Status Context::SetParent(Context* new_parent) {
  const Context* limited = nullptr;
  size_t bytes = 0;
  switch (Reparent(new_parent, &limited, &bytes)) {
    case Failure::kNone:
      return absl::OkStatus();
    case Failure::kCycle:
      return absl::InvalidArgumentError(absl::StrFormat(
          "mcx: cannot move context '%s' under '%s': it would become its own ancestor", name(),
          new_parent->name()));
    case Failure::kLimit:
      return absl::ResourceExhaustedError(absl::StrFormat(
          "mcx: moving context '%s' (%d bytes) under '%s' would exceed the limit of '%s' (%d "
          "bytes)",
          name(), bytes, new_parent->name(), limited->name(), limited->limit()));
    case Failure::kBadArgument:
      if (state_ == State::kTearingDown ||
          (new_parent != nullptr && new_parent->state_ == State::kTearingDown)) {
        break;
      }
      return absl::InvalidArgumentError(absl::StrFormat(
          "mcx: cannot move context '%s' under '%s': it is or holds a shared context, and a "
          "context there or above it has a limit (attach a Budget instead)",
          name(), new_parent->name()));
    default:
      break;
  }
  return absl::FailedPreconditionError(absl::StrFormat(
      "mcx: cannot move context '%s' while a context involved is being torn down", name()));
}

absl::Status Context::SetLimit(size_t bytes) {
  const Failure failure = TrySetLimit(bytes);
  if (failure == Failure::kNone) return absl::OkStatus();
  if (failure == Failure::kBadArgument) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "mcx: cannot limit context '%s': it is or holds a shared context, whose threads "
        "cannot be charged against a limit (attach a Budget instead)",
        name()));
  }
  if (extras_ == nullptr) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "mcx: no memory to record a limit on context '%s': %s", name(), FailureName(failure)));
  }
  return absl::FailedPreconditionError(absl::StrFormat(
      "mcx: context '%s' already holds %d bytes in its subtree, more than the limit %d", name(),
      SubtreeBytes(), bytes));
}

}  // namespace mcx
