// The allocation front: the slow paths of the inline calls in context.h,
// and everything that is not inline (aligned, zeroed, arrays, strings,
// realloc, checked free). Each ends in the kind through its method table,
// and failures in Context::Fail (failure.cc).

#include <cstdint>
#include <cstring>
#include <string>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "absl/numeric/bits.h"
#include "mcx/context/context.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/failure.h"
#include "mcx/context/internal/valgrind.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/remote_free.h"

namespace mcx {

// --- Allocation --------------------------------------------------------------

// Context::AllocSlow
//
// Everything the inline fast path does not serve: sizes it does not take,
// kinds without a bump window, a full window. The kind's alloc may acquire
// blocks; it reports failure by returning nullptr with last_failure_ set.
// The concurrency check (UseGuard) covers the kind's work only: it is
// released before Fail calls the failure handler, which may longjmp past
// any destructor or tear this context down. A failed call first goes to
// AllocRefused (pressure.cc), which retries it if the ledger refused the
// block for a soft limit's callback or a report request, and fails it
// otherwise.
inline void* Context::AllocSlowBody(size_t size, size_t alignment, unsigned flags) {
  if (ABSL_PREDICT_FALSE(size > kMaxAllocSize)) return Fail(Failure::kBadSize, size, flags);
  if constexpr (!internal::kChecking && !MCX_VALGRIND) {
    // Nothing guards the kind's work and nothing follows it but the
    // failure path, which a kind with AllocFast reaches itself.
    return methods_->alloc_or_refuse[flags & kNoThrow](this, size, alignment);
  }
  if (internal::kChecking && !CheckLive("allocation")) return Fail(Failure::kBadArgument, size, flags);
  // Checking builds refuse every allocation inside a NoAllocScope here (they
  // keep no bump window, so every one comes here); release builds, only
  // those that take a block from the source (AcquireBlock).
  if (internal::kChecking && AllocationForbidden()) return Fail(Failure::kForbidden, size, flags);
  void* p;
  {
    UseGuard use(this);
    CheckNotTearingDown("allocation");
    p = methods_->alloc(this, size, alignment);
  }
  if (ABSL_PREDICT_FALSE(p == nullptr)) return AllocRefused(size, alignment, flags);
  internal::ValgrindChunkAlloc(this, p, size);
  return p;
}

// Context::NoteAllocationChecked
//
// Checking builds: the first thing every public allocation call does. It
// keeps the call's site for the kind (kind_api.h, PendingSite), interned as
// an id (site.cc). A destroyed context is left alone here: the call reports
// it next, without this having touched its memory.
void Context::NoteAllocationChecked(size_t size, AllocationSite site) {
#if MCX_CHECKING
  (void)size;
  uint16_t state;
  internal::CopyFromPoisoned(&state, &state_, sizeof(state));
  if (!IsContextState(state)) return;
  pending_site_.store(internal::InternSite(site), std::memory_order_relaxed);
#else
  (void)size;
  (void)site;
#endif
}

namespace kind_internal {

void* AllocRefused(Context* ctx, size_t size, size_t alignment, unsigned flags) {
  return internal::KindAccess::AllocRefused(ctx, size, alignment, flags);
}

}  // namespace kind_internal

void* Context::AllocSlow(size_t size, size_t alignment) {
  return AllocSlowBody(size, alignment, kThrow);
}

void* Context::TryAllocSlow(size_t size, size_t alignment) {
  return AllocSlowBody(size, alignment, kNoThrow);
}

namespace {

// What AllocAligned passes a kind that packs chunks below the default,
// where a plain chunk would not have the alignment asked for: the least
// alignment that the kind cannot take for a plain request.
constexpr size_t kAboveDefaultAlignment = 2 * kDefaultAlignment;

}  // namespace

void* Context::AllocAlignedImpl(size_t size, size_t alignment, unsigned flags) {
  if (!absl::has_single_bit(alignment) || alignment > kMaxAlignment) {
    return Fail(Failure::kBadAlignment, size, flags);
  }
  void* p;
  if (alignment <= kDefaultAlignment) {
    // The window aligns to the default; a kind that packs publishes none.
    if (TryBump(size, kDefaultAlignment, &p)) return p;
    // The kind is passed the default for Alloc and for this alike; one that
    // packs chunks tighter than `alignment` is asked for more (kind.h).
    const bool packed = methods_->plain_alignment != nullptr &&
                        methods_->plain_alignment(this, size) < alignment;
    return AllocSlow(size, packed ? kAboveDefaultAlignment : kDefaultAlignment, flags);
  }
  if (TryBump(size, alignment, &p)) return p;
  return AllocSlow(size, alignment, flags);
}

void* Context::AllocZeroArrayImpl(size_t count, size_t size, unsigned flags,
                                  AllocationSite site) {
  size_t bytes;
  if (__builtin_mul_overflow(count, size, &bytes)) return Fail(Failure::kBadSize, ~size_t{0}, flags);
  return flags & kNoThrow ? TryAllocZero(bytes, site) : AllocZero(bytes, site);
}

char* Context::Strdup(std::string_view s, AllocationSite site) {
  if (s.size() >= kMaxAllocSize) return static_cast<char*>(Fail(Failure::kBadSize, s.size(), kThrow));
  char* p = static_cast<char*>(AllocBytes(s.size() + 1, site));
  std::memcpy(p, s.data(), s.size());
  p[s.size()] = '\0';
  return p;
}

void* Context::ReallocImpl(void* p, size_t old_size, size_t new_size, unsigned flags) {
  if (p == nullptr) return AllocSlow(new_size, kDefaultAlignment, flags);
  if (new_size > kMaxAllocSize) return Fail(Failure::kBadSize, new_size, flags);
  if (internal::kChecking && AllocationForbidden()) return Fail(Failure::kForbidden, new_size, flags);
  void* q;
  {
    UseGuard use(this);  // not across Fail: see AllocSlow
    q = methods_->realloc(this, p, old_size, new_size);
  }
  if (q == nullptr) return ReallocRefused(p, old_size, new_size, flags);
  internal::ValgrindChunkMove(this, p, q, new_size);
  return q;
}

void Context::FreeChecked(void* p) {
  if (internal::kChecking && !CheckLive("free")) return;
  if (methods_->remote_frees != nullptr && methods_->remote_frees(this)->FromOtherThread()) {
    // A push on the remote-free list, while the owner may be at work.
    internal::ValgrindChunkFree(this, p);
    methods_->free(this, p);
    return;
  }
  UseGuard use(this);
  methods_->free(this, p);
  internal::ValgrindChunkFree(this, p);
}

// Checking builds: a sized free names the size the chunk was asked for,
// where the kind keeps it (KindMethods::requested_size), else a size the
// chunk can hold. Another size is misuse: the caller confused two chunks,
// or its own sizes (a sized delete through a base class).
void Context::CheckFreeSize(const void* p, size_t size) const {
  const size_t asked =
      methods_->requested_size != nullptr ? methods_->requested_size(this, p) : kUnknownSize;
  if (asked != kUnknownSize) {
    // Kinds serve a request of 0 bytes as one of 1 (a unique pointer).
    if (size != asked && !(size == 0 && asked == 1)) {
      internal::ReportMisuse(
          "sized free of chunk %p in context '%s' with size %zu, but it was allocated with %zu",
          p, name(), size, asked);
    }
    return;
  }
  const size_t holds = ChunkSize(p);
  if (holds != kUnknownSize && size > holds) {
    internal::ReportMisuse("sized free of chunk %p in context '%s' with size %zu, but it holds %zu bytes",
                           p, name(), size, holds);
  }
}

size_t Context::ChunkSize(const void* p) const {
  if (p == nullptr) return 0;
  return methods_->chunk_size(this, p);
}

bool Context::Check(std::string* error) const {
  std::string scratch;
  return methods_->check(this, error != nullptr ? error : &scratch);
}

}  // namespace mcx
