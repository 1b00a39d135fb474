// File: mcx/context/strings.h
//
// Text and bytes in a context: formatting (PostgreSQL's psprintf, talloc's
// talloc_asprintf, APR's apr_psprintf), concatenation (apr_pstrcat, in the
// shape of absl::StrCat), a bounded string copy (pnstrdup, talloc_strndup)
// and a copy of any bytes (talloc_memdup). Each result is one chunk of the
// context, released with it. Formatting is Abseil's (absl::StrFormat's
// checked format strings), not mcx's own.
//
// Contract:
//   - A string result is NUL-terminated, in a chunk of exactly its length
//     plus one byte, allocated unaligned (AllocBytes); `Memdup` allocates
//     with the default alignment (Alloc), so a copied struct is aligned.
//   - No intermediate heap allocation: `Printf` formats into a buffer on the
//     stack (kFormatStackBytes) and copies the result into the context; a
//     longer result is measured on that first pass, and the second pass
//     formats straight into the chunk. `StrCat` measures its pieces, then
//     copies each once (numbers are converted by absl::AlphaNum, on the
//     stack).
//   - Failure goes through the context's failure path: the plain calls
//     throw after the failure handler (std::bad_alloc out of memory or at a
//     limit, std::bad_array_new_length for a result longer than
//     kMaxAllocSize, std::invalid_argument for a format that does not match
//     its arguments, which GCC builds can only find when formatting, and a
//     null pointer with a nonzero length); the Try forms return nullptr
//     with `last_failure()` set. Nothing is left allocated by a failure.
//   - The first parameter is a `ContextAtSite` (site.h): write a
//     `Context*`; checking builds record the call's site with the chunk.
//
// Example:
//
//   char* msg = mcx::Printf(query, "relation \"%s\" has %d rows", name, rows);
//   char* key = mcx::StrCat(row, schema, ".", table, "#", id);
//   char* word = mcx::Strndup(row, token.start, token.length);
//   auto* copy = static_cast<Header*>(mcx::Memdup(row, &header, sizeof(header)));

#ifndef MCX_CONTEXT_STRINGS_H_
#define MCX_CONTEXT_STRINGS_H_

#include <cstddef>
#include <initializer_list>

#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "mcx/context/context.h"
#include "mcx/context/site.h"

namespace mcx {

// Bytes of the stack buffer `Printf` formats into first: most formatted
// strings of an engine (names, keys, error messages) fit, and a longer one
// costs a second formatting pass rather than a heap buffer.
inline constexpr size_t kFormatStackBytes = 256;

namespace internal {

// Where the formatting writes: the first `capacity` bytes go to `buffer`,
// everything is counted (absl::Format's FormatRawSink protocol).
class FormatSink {
 public:
  FormatSink(char* buffer, size_t capacity) : buffer_(buffer), capacity_(capacity) {}
  size_t size() const { return size_; }  // bytes written, kept or not

  friend void AbslFormatFlush(FormatSink* sink, absl::string_view piece) { sink->Write(piece); }

 private:
  void Write(absl::string_view piece);
  char* buffer_;
  size_t capacity_;
  size_t size_ = 0;
};

// The work of the functions below, out of line. `format` writes the result to
// the sink and returns false if the format does not match its arguments.
char* FormatIn(Context* ctx, AllocationSite site, bool may_throw,
               absl::FunctionRef<bool(FormatSink*)> format);
char* ConcatIn(Context* ctx, AllocationSite site, bool may_throw,
               std::initializer_list<absl::string_view> pieces);
char* StrndupIn(Context* ctx, AllocationSite site, bool may_throw, const char* s, size_t n);
void* MemdupIn(Context* ctx, AllocationSite site, bool may_throw, const void* p, size_t n);

}  // namespace internal

// Printf()
//
// The string absl::StrFormat(format, args...) would make, in `ctx`.
template <typename... Args>
char* Printf(ContextAtSite ctx, const absl::FormatSpec<Args...>& format, const Args&... args) {
  return internal::FormatIn(ctx.context(), ctx.site(), /*may_throw=*/true,
                            [&](internal::FormatSink* sink) {
                              return absl::Format(sink, format, args...);
                            });
}
// nullptr (last_failure() says why) instead of throwing.
template <typename... Args>
char* TryPrintf(ContextAtSite ctx, const absl::FormatSpec<Args...>& format,
                const Args&... args) {
  return internal::FormatIn(ctx.context(), ctx.site(), /*may_throw=*/false,
                            [&](internal::FormatSink* sink) {
                              return absl::Format(sink, format, args...);
                            });
}

// StrCat()
//
// The string absl::StrCat(args...) would make, in `ctx`: each argument is
// anything absl::AlphaNum takes (strings, string_views, C strings, numbers,
// absl::Hex, absl::Dec). `StrCat(ctx)` is an empty string.
template <typename... Args>
char* StrCat(ContextAtSite ctx, const Args&... args) {
  return internal::ConcatIn(ctx.context(), ctx.site(), /*may_throw=*/true,
                            {absl::AlphaNum(args).Piece()...});
}
template <typename... Args>
char* TryStrCat(ContextAtSite ctx, const Args&... args) {
  return internal::ConcatIn(ctx.context(), ctx.site(), /*may_throw=*/false,
                            {absl::AlphaNum(args).Piece()...});
}

// Strndup()
//
// The first `n` bytes of `s`, or up to its NUL if that comes first, and a
// NUL. `s` may be nullptr only when `n` is 0.
inline char* Strndup(ContextAtSite ctx, const char* s, size_t n) {
  return internal::StrndupIn(ctx.context(), ctx.site(), /*may_throw=*/true, s, n);
}
inline char* TryStrndup(ContextAtSite ctx, const char* s, size_t n) noexcept {
  return internal::StrndupIn(ctx.context(), ctx.site(), /*may_throw=*/false, s, n);
}

// Memdup()
//
// A copy of the `n` bytes at `p`, aligned as Alloc aligns. `p` may be
// nullptr only when `n` is 0 (then, as Alloc(0), a unique pointer).
inline void* Memdup(ContextAtSite ctx, const void* p, size_t n) {
  return internal::MemdupIn(ctx.context(), ctx.site(), /*may_throw=*/true, p, n);
}
inline void* TryMemdup(ContextAtSite ctx, const void* p, size_t n) noexcept {
  return internal::MemdupIn(ctx.context(), ctx.site(), /*may_throw=*/false, p, n);
}

}  // namespace mcx

#endif  // MCX_CONTEXT_STRINGS_H_
