// Context-free chunk operations: dispatch on the chunk header's kind id.

#include "mcx/context/chunk.h"

#include <atomic>
#include <cinttypes>
#include <cstring>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "mcx/context/chunk_header.h"
#include "mcx/context/context.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/failure.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/context/internal/valgrind.h"
#include "mcx/context/kind_api.h"

namespace mcx {
namespace {

// Kinds register on first use (when their first context is created, which
// is before any of their chunks exists). Atomic so that contexts created on
// different threads may register concurrently.
std::atomic<const ChunkKindMethods*> chunk_kinds[kNumChunkKinds];

Context* RedirectContext(const void* p) {
  return GetChunkContext(internal::AlignedRedirectTarget(p));
}
size_t RedirectChunkSize(const void* p) {
  const char* target = static_cast<const char*>(internal::AlignedRedirectTarget(p));
  return GetChunkSize(target) - static_cast<size_t>(static_cast<const char*>(p) - target);
}

// The aligned redirect is not a kind of context but a view of another
// chunk; it is built in rather than registered.
const ChunkKindMethods kRedirectMethods = {"aligned", &RedirectContext, &RedirectChunkSize};

// Looks up the methods for `p`, reporting misuse on a bad header.
const ChunkKindMethods* MethodsFor(const void* p, const char* operation) {
  uint64_t h = ReadChunkHeader(p);
  const ChunkKindMethods* m = nullptr;
  if (ChunkHeaderMagicOk(h)) m = LookupChunkKind(ChunkHeaderKind(h));
  if (m == nullptr) internal::ReportBadChunk(p, operation);
  return m;
}

}  // namespace

// RegisterChunkKind
//
// First come, first served, and never overwritten: a second kind that
// claims a taken id would make mcx::Free of either kind's chunks call the
// other's methods.
bool RegisterChunkKind(unsigned id, const ChunkKindMethods* methods) {
  if (id >= kNumChunkKinds || IsReservedChunkKind(id) || id == kChunkKindAlignedRedirect) {
    internal::ReportMisuse("chunk kind id %u for kind '%s' is reserved (chunk_header.h)", id,
                           methods != nullptr ? methods->name : "(null)");
    return false;
  }
  const ChunkKindMethods* expected = nullptr;
  if (chunk_kinds[id].compare_exchange_strong(expected, methods, std::memory_order_acq_rel) ||
      expected == methods) {
    return true;
  }
  internal::ReportMisuse("chunk kind id %u is taken by kind '%s'; kind '%s' must use another",
                         id, expected->name, methods != nullptr ? methods->name : "(null)");
  return false;
}

const ChunkKindMethods* LookupChunkKind(unsigned id) {
  if (id == kChunkKindAlignedRedirect) return &kRedirectMethods;
  if (id >= kNumChunkKinds) return nullptr;
  return chunk_kinds[id].load(std::memory_order_acquire);
}

namespace {

// Through the owning context, so the context's own checks (a destroyed
// context, the concurrency check) and Valgrind's bookkeeping apply.
ABSL_ATTRIBUTE_NOINLINE void FreeThroughContext(void* p) {
  const ChunkKindMethods* m = MethodsFor(p, "free");
  if (m == nullptr) return;
  if (Context* ctx = m->chunk_context(p)) ctx->Free(p);
}

}  // namespace

// In release builds through the kind's own free where it has one, which
// decodes the header once (a free from another thread is most of W10),
// with nothing to save on the way: the aligned chunks' id is never in the
// table, so they go through the context too.
void Free(void* p) {
  if (p == nullptr) return;
  if (!internal::kChecking && !internal::kValgrind) {
    const uint64_t h = ReadChunkHeader(p);
    if (ABSL_PREDICT_TRUE(ChunkHeaderMagicOk(h))) {
      const ChunkKindMethods* m =
          chunk_kinds[ChunkHeaderKind(h)].load(std::memory_order_acquire);
      if (ABSL_PREDICT_TRUE(m != nullptr && m->free != nullptr)) return m->free(p);
    }
  }
  FreeThroughContext(p);
}

void* Realloc(void* p, size_t new_size, AllocationSite site) {
  if (p == nullptr) {
    internal::ReportMisuse("mcx::Realloc(nullptr, %zu): no context to allocate in", new_size);
    return nullptr;
  }
  const ChunkKindMethods* m = MethodsFor(p, "realloc");
  if (m == nullptr) return nullptr;
  // A freed chunk has no owner: the misuse was reported, and a handler
  // that returns gets nullptr, as for a foreign pointer.
  Context* ctx = m->chunk_context(p);
  return ctx != nullptr ? ctx->Realloc(p, new_size, site) : nullptr;
}

void* TryRealloc(void* p, size_t new_size, AllocationSite site) noexcept {
  if (p == nullptr) {
    internal::ReportMisuse("mcx::TryRealloc(nullptr, %zu): no context to allocate in", new_size);
    return nullptr;
  }
  const ChunkKindMethods* m = MethodsFor(p, "realloc");
  if (m == nullptr) return nullptr;
  Context* ctx = m->chunk_context(p);
  return ctx != nullptr ? ctx->TryRealloc(p, new_size, site) : nullptr;
}

Context* GetChunkContext(const void* p) {
  if (p == nullptr) return nullptr;
  const ChunkKindMethods* m = MethodsFor(p, "find the context of");
  return m != nullptr ? m->chunk_context(p) : nullptr;
}

size_t GetChunkSize(const void* p) {
  if (p == nullptr) return 0;
  const ChunkKindMethods* m = MethodsFor(p, "size");
  return m != nullptr ? m->chunk_size(p) : 0;
}

namespace internal {

void* AllocAlignedRedirect(Context* ctx, size_t size, size_t alignment) {
  // size <= kMaxAllocSize and alignment <= kMaxAlignment: no overflow.
  char* raw = static_cast<char*>(ctx->kind()->alloc(ctx, size + alignment, kDefaultAlignment));
  if (raw == nullptr) return nullptr;
  uintptr_t aligned = (reinterpret_cast<uintptr_t>(raw) + sizeof(uint64_t) + alignment - 1) &
                      ~(uintptr_t{alignment} - 1);
  char* p = reinterpret_cast<char*>(aligned);
  uint8_t log2 = static_cast<uint8_t>(__builtin_ctzll(alignment));
  WriteChunkHeader(p, MakeChunkHeader(kChunkKindAlignedRedirect, false, log2,
                                      static_cast<uint64_t>(p - raw)));
  // The padding before the aligned bytes is poisoned under ASan; what
  // follows them is the caller's up to the chunk's end, as ChunkSize
  // (RedirectChunkSize) reports, so it stays as the kind left it.
  PoisonMemoryRegion(raw, static_cast<size_t>(p - raw));
  return p;
}

bool IsAlignedRedirect(const void* p) {
  uint64_t h = ReadChunkHeader(p);
  return ChunkHeaderMagicOk(h) && ChunkHeaderKind(h) == kChunkKindAlignedRedirect;
}

void* AlignedRedirectTarget(const void* p) {
  uint64_t h = ReadChunkHeader(p);
  return const_cast<char*>(static_cast<const char*>(p) - ChunkHeaderOffset(h));
}

void* ReallocAlignedRedirect(Context* ctx, void* p, size_t new_size) {
  uint64_t h = ReadChunkHeader(p);
  size_t alignment = size_t{1} << ChunkHeaderValue(h);
  size_t old_size = RedirectChunkSize(p);
  // Kind-level calls only: the caller (Context::Realloc) announces the move.
  void* q = AllocAlignedRedirect(ctx, new_size, alignment);
  if (q == nullptr) return nullptr;
  UnpoisonMemoryRegion(p, old_size);  // it is freed next; the copy may read its padding
  std::memcpy(q, p, old_size < new_size ? old_size : new_size);
  ctx->kind()->free(ctx, AlignedRedirectTarget(p));
  return q;
}

// What a header reads after the checking build clobbered its memory.
constexpr uint64_t kClobberedWord = 0x0101010101010101ull * kClobberByte;

void ReportBadChunk(const void* p, const char* operation) {
  uint64_t h = ReadChunkHeader(p);
  unsigned id = ChunkHeaderKind(h);
  const char* why = h == kClobberedWord ? "its memory was freed, reset or destroyed (clobbered)"
                    : !ChunkHeaderMagicOk(h) ? "its header has no mcx magic"
                    : IsReservedChunkKind(id) ? "its header holds a reserved kind id"
                                              : "its header names no registered kind";
  ReportMisuse("cannot %s %p: not a chunk allocated by mcx, or already freed (%s: 0x%016" PRIx64 ")",
               operation, p, why, h);
}

}  // namespace internal
}  // namespace mcx
