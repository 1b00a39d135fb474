// File: mcx/context/chunk.h
//
// Operations on a chunk that need no context argument, as PostgreSQL's
// pfree/repalloc/GetMemoryChunkContext: the 8-byte chunk header
// (chunk_header.h) names the kind, and the kind finds the context.
//
// Contract:
//   - They work on chunks of kinds with chunk headers (the freelist kind, and
//     aligned chunks of such kinds). On anything else (a pool chunk, a
//     pointer from malloc, a stack address, a freed chunk) they report misuse
//     through the misuse handler: the header's kind id is reserved or
//     unregistered, or its magic does not match. Garbage can still look
//     valid by chance; checking builds validate far more.
//   - `Free(nullptr)` is a no-op. `Realloc(nullptr, n)` is misuse: with no
//     context named there is nowhere to allocate.
//
// Example:
//
//   void* p = cache->Alloc(100);     // cache is a freelist context
//   p = mcx::Realloc(p, 300);        // stays in cache
//   assert(mcx::GetChunkContext(p) == cache);
//   mcx::Free(p);

#ifndef MCX_CONTEXT_CHUNK_H_
#define MCX_CONTEXT_CHUNK_H_

#include <cstddef>

#include "mcx/context/config.h"  // IWYU pragma: keep (config.h: the link check)
#include "mcx/context/site.h"

namespace mcx {

class Context;

void Free(void* p);
// Throws as Context::Realloc does; the chunk's site becomes the caller's.
void* Realloc(void* p, size_t new_size, AllocationSite site = AllocationSite::Current());
void* TryRealloc(void* p, size_t new_size,
                 AllocationSite site = AllocationSite::Current()) noexcept;
Context* GetChunkContext(const void* p);
// Usable bytes of the chunk (at least what was requested).
size_t GetChunkSize(const void* p);

namespace internal {

// For kinds with chunk headers: serves `alignment` > kDefaultAlignment by
// allocating `size + alignment` from `ctx` and writing, just before the
// aligned address, a redirect header (kChunkKindAlignedRedirect) holding the
// distance back to the real chunk and log2(alignment). Free, Realloc,
// GetChunkContext and GetChunkSize follow the redirect. nullptr on failure.
void* AllocAlignedRedirect(Context* ctx, size_t size, size_t alignment);
bool IsAlignedRedirect(const void* p);
// The real chunk behind an aligned redirect.
void* AlignedRedirectTarget(const void* p);
// Realloc of an aligned chunk: a fresh aligned chunk, a copy, a free.
void* ReallocAlignedRedirect(Context* ctx, void* p, size_t new_size);
// Reports a bad chunk header through the misuse handler.
void ReportBadChunk(const void* p, const char* operation);

}  // namespace internal
}  // namespace mcx

#endif  // MCX_CONTEXT_CHUNK_H_
