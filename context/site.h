// File: mcx/context/site.h
//
// Where an allocation was made: the file and line of the call, taken from
// default arguments (`__builtin_FILE()` and `__builtin_LINE()`, which GCC
// and Clang evaluate at the call that uses the default), so that callers
// write nothing. Every allocation call of mcx takes one; checking builds keep
// it with the chunk, for `LiveChunksReport` and leak reports
// (live_chunks.h). Release builds ignore it: the inline calls drop it.
//
// Contract:
//   - `AllocationSite::Current()` is the site of the expression that calls
//     it, or of the call whose default argument it is.
//   - Member functions (`ctx->Alloc(n)`) take the site as a last, defaulted
//     argument. Free functions whose last parameters are a pack (`New<T>`,
//     `Printf`, `StrCat`) cannot, so their first parameter is a
//     `ContextAtSite`: written as a `Context*`, it converts implicitly and
//     records the site of the call. Code that allocates on behalf of its own
//     caller passes the caller's site on, explicitly.
//   - A site holds a pointer to the file name, which must outlive it (a
//     string literal, as `__builtin_FILE()` gives, always does).
//
// Example:
//
//   void* Remember(mcx::Context* ctx, size_t n, mcx::AllocationSite site =
//                                                  mcx::AllocationSite::Current()) {
//     return ctx->Alloc(n, site);   // reports show Remember's caller
//   }
//   auto* t = mcx::New<Tuple>(row, in);   // the site is this line

#ifndef MCX_CONTEXT_SITE_H_
#define MCX_CONTEXT_SITE_H_

#include <cstdint>

#include "mcx/context/config.h"  // IWYU pragma: keep (config.h: the link check)

namespace mcx {

class Context;

class AllocationSite {
 public:
  // An unknown site (no file).
  constexpr AllocationSite() = default;
  constexpr AllocationSite(const char* file, int line) : file_(file), line_(line) {}

  // The site of the call, through the default arguments.
  static constexpr AllocationSite Current(const char* file = __builtin_FILE(),
                                          int line = __builtin_LINE()) {
    return AllocationSite(file, line);
  }

  const char* file() const { return file_; }  // nullptr: unknown
  int line() const { return line_; }

 private:
  const char* file_ = nullptr;
  int line_ = 0;
};

// A context together with the site of the call that names it: the first
// parameter of free functions that allocate (new.h, strings.h). Written as
// a `Context*`; the conversion takes the site of the call.
class ContextAtSite {
 public:
  // Implicit on purpose: `mcx::New<T>(ctx, ...)` passes a Context*.
  ContextAtSite(Context* ctx, const char* file = __builtin_FILE(),  // NOLINT
                int line = __builtin_LINE())
      : ctx_(ctx), site_(file, line) {}
  ContextAtSite(Context* ctx, AllocationSite site) : ctx_(ctx), site_(site) {}

  Context* context() const { return ctx_; }
  AllocationSite site() const { return site_; }
  Context* operator->() const { return ctx_; }

 private:
  Context* ctx_;
  AllocationSite site_;
};

namespace internal {

// Sites are kept with chunks as 32-bit ids, interned in a process-wide
// table (site.cc): kinds store 4 bytes, and chunks of one site compare by
// id. Ids below kFirstSiteId are reserved.
using SiteId = uint32_t;
inline constexpr SiteId kUnknownSiteId = 0;   // no site, or the table is full
inline constexpr SiteId kInternalSiteId = 1;  // mcx's own chunks (cleanup records)
inline constexpr SiteId kFirstSiteId = 2;

// The site mcx gives its own chunks: cleanup records and the storage of
// callable cleanups, which the program never frees (they go with the
// context). Leak reports leave them out.
extern const char kInternalSiteFile[];
inline constexpr AllocationSite InternalSite() { return AllocationSite(kInternalSiteFile, 0); }

// The id of `site`, interned on first sight. Thread-safe; lock-free once a
// site is known. kUnknownSiteId for an unknown site, or when the table is
// full (site.cc: kSiteTableSlots).
SiteId InternSite(AllocationSite site);
// The site of an id; an unknown site for kUnknownSiteId and ids never given.
AllocationSite SiteOf(SiteId id);

}  // namespace internal
}  // namespace mcx

#endif  // MCX_CONTEXT_SITE_H_
