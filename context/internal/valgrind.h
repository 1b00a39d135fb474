// Internal to mcx; do not include from outside.
// IWYU pragma: private
//
// Valgrind mempool client requests (PostgreSQL's memdebug.h does the same):
// each context is a mempool, each chunk handed out is a mempool chunk, so
// memcheck reports reads of freed or reset chunks and unreachable chunks of
// leaked contexts. Compiled in by --config=valgrind (MCX_VALGRIND=1 in
// mcx/context/config.h); elsewhere these are empty.

#ifndef MCX_CONTEXT_INTERNAL_VALGRIND_H_
#define MCX_CONTEXT_INTERNAL_VALGRIND_H_

#include <cstddef>

#include "mcx/context/config.h"

#if MCX_VALGRIND
#include <valgrind/memcheck.h>
#endif

namespace mcx {
namespace internal {

inline void ValgrindCreatePool(const void* pool) {
#if MCX_VALGRIND
  VALGRIND_CREATE_MEMPOOL(pool, 0, false);
#else
  (void)pool;
#endif
}

inline void ValgrindDestroyPool(const void* pool) {
#if MCX_VALGRIND
  VALGRIND_DESTROY_MEMPOOL(pool);
#else
  (void)pool;
#endif
}

inline void ValgrindChunkAlloc(const void* pool, const void* p, size_t size) {
#if MCX_VALGRIND
  VALGRIND_MEMPOOL_ALLOC(pool, p, size);
#else
  (void)pool;
  (void)p;
  (void)size;
#endif
}

inline void ValgrindChunkFree(const void* pool, const void* p) {
#if MCX_VALGRIND
  VALGRIND_MEMPOOL_FREE(pool, p);
#else
  (void)pool;
  (void)p;
#endif
}

// A chunk resized, perhaps moved; its bytes keep their definedness.
inline void ValgrindChunkMove(const void* pool, const void* from, const void* to, size_t size) {
#if MCX_VALGRIND
  VALGRIND_MEMPOOL_CHANGE(pool, from, to, size);
#else
  (void)pool;
  (void)from;
  (void)to;
  (void)size;
#endif
}

}  // namespace internal
}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_VALGRIND_H_
