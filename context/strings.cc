// Text and bytes in a context (strings.h): one chunk per result, exactly
// its size, and no heap buffer on the way.

#include "mcx/context/strings.h"

#include <cstring>

#include "mcx/context/context.h"
#include "mcx/context/failure.h"

namespace mcx {
namespace internal {
namespace {

// The result's chunk: `n` bytes and a NUL. Sizes from kMaxAllocSize up are
// refused (kBadSize) by the allocation itself.
char* AllocString(Context* ctx, AllocationSite site, bool may_throw, size_t n) {
  void* p = may_throw ? ctx->AllocBytes(n + 1, site) : ctx->TryAllocBytes(n + 1, site);
  return static_cast<char*>(p);
}

}  // namespace

void FormatSink::Write(absl::string_view piece) {
  if (size_ < capacity_) {
    const size_t room = capacity_ - size_;
    std::memcpy(buffer_ + size_, piece.data(), piece.size() < room ? piece.size() : room);
  }
  size_ += piece.size();
}

// FormatIn
//
// PostgreSQL's psprintf formats into a guessed buffer and starts over with
// the size vsnprintf reports; so does this, with the guess on the stack.
// The first pass either holds the whole result (one copy into the chunk)
// or has measured it: the chunk then gets exactly that size, and the second
// pass writes straight into it.
//
// Note: the arguments are formatted twice for a long result. Abseil's
// conversions are deterministic; a user type whose AbslFormatConvert is not
// (a counter, a clock) gets what its second pass writes, cut to the first
// pass's length, and always NUL-terminated.
char* FormatIn(Context* ctx, AllocationSite site, bool may_throw,
               absl::FunctionRef<bool(FormatSink*)> format) {
  char stack[kFormatStackBytes];
  FormatSink first(stack, sizeof(stack));
  if (!format(&first)) {
    return static_cast<char*>(FailAccess::Fail(ctx, Failure::kBadArgument, 0, may_throw));
  }
  const size_t n = first.size();
  char* out = AllocString(ctx, site, may_throw, n);
  if (out == nullptr) return nullptr;
  size_t written = n;
  if (n <= sizeof(stack)) {
    std::memcpy(out, stack, n);
  } else {
    FormatSink second(out, n);
    format(&second);
    if (second.size() < n) written = second.size();
  }
  out[written] = '\0';
  return out;
}

char* ConcatIn(Context* ctx, AllocationSite site, bool may_throw,
               std::initializer_list<absl::string_view> pieces) {
  size_t n = 0;
  for (absl::string_view piece : pieces) n += piece.size();
  char* out = AllocString(ctx, site, may_throw, n);
  if (out == nullptr) return nullptr;
  char* at = out;
  for (absl::string_view piece : pieces) {
    if (!piece.empty()) std::memcpy(at, piece.data(), piece.size());
    at += piece.size();
  }
  *at = '\0';
  return out;
}

char* StrndupIn(Context* ctx, AllocationSite site, bool may_throw, const char* s, size_t n) {
  if (s == nullptr && n != 0) {
    return static_cast<char*>(FailAccess::Fail(ctx, Failure::kBadArgument, n, may_throw));
  }
  const size_t length = n == 0 ? 0 : strnlen(s, n);
  char* out = AllocString(ctx, site, may_throw, length);
  if (out == nullptr) return nullptr;
  if (length != 0) std::memcpy(out, s, length);
  out[length] = '\0';
  return out;
}

void* MemdupIn(Context* ctx, AllocationSite site, bool may_throw, const void* p, size_t n) {
  if (p == nullptr && n != 0) return FailAccess::Fail(ctx, Failure::kBadArgument, n, may_throw);
  void* out = may_throw ? ctx->Alloc(n, site) : ctx->TryAlloc(n, site);
  if (out != nullptr && n != 0) std::memcpy(out, p, n);
  return out;
}

}  // namespace internal
}  // namespace mcx
