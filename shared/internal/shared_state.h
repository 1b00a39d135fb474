// Internal to mcx; do not include from outside.
// IWYU pragma: private, include "mcx/shared/shared.h"
//
// The shared kind's state and each thread's run, laid out here because the
// inline fast path (shared.h) bumps in them without a call.

#ifndef MCX_SHARED_INTERNAL_SHARED_STATE_H_
#define MCX_SHARED_INTERNAL_SHARED_STATE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "mcx/context/context.h"
#include "mcx/context/kind_api.h"

namespace mcx {
namespace shared_internal {

// A block of a shared context; its first bytes link the list it is on.
struct SharedBlock {
  SharedBlock* next;
  size_t size;  // as acquired: what ReleaseBlock is given back
};

// One thread's bump run in one shared context (protobuf's SerialArena). The
// record sits at the start of the run's first block. `ptr` and `end` are
// read and written by that thread only; the rest is written under the
// context's lock, and `thread` and `next` never change once the run is
// published on the context's list.
struct ThreadRun {
  char* ptr;                // next free byte of the current block
  char* end;                // end of the current block
  SharedBlock* blocks;      // this run's blocks, newest first
  size_t next_block_size;   // doubles up to SharedOptions::max_block_size
  uint64_t thread;          // ThreadNumber() of its thread
  ThreadRun* next;          // the context's runs, newest first
};

struct SharedState {
  // The generation: a number no other context, and no earlier generation
  // of this one, ever had. A reset takes a new one, so every thread's cached
  // run of the old generation stops matching without being told.
  std::atomic<uint64_t> id;
  std::atomic<ThreadRun*> runs;  // published with release, read with acquire
  // Slow paths, and what the tree keeps for the context (cleanups, the side
  // record, the child list): recursive, because registering a cleanup
  // allocates its record in the context.
  std::recursive_mutex mu;
  SharedBlock* large;   // chunks with a block of their own (under mu)
  SharedBlock* spare;   // blocks a KeepBytes reset kept (under mu)
  size_t block_size;    // first block of each run
  size_t max_block_size;
  size_t max_small;     // larger requests get a block of their own
  // Checking builds: allocations under way, so that a reset that overlaps
  // one is reported.
  std::atomic<uint32_t> in_flight;
};

// What a thread last used: the generation and its run there. One entry, as
// protobuf's ThreadCache: a thread that alternates between two shared
// contexts finds its run on the context's list, lock-free, each time.
struct ThreadCache {
  uint64_t id;
  ThreadRun* run;
};

// Plain thread-local storage (no constructor, no destructor): read inline
// without a TLS wrapper call.
extern __thread ThreadCache thread_cache;

// The inline path serves requests up to this many bytes; larger ones, and
// every request in the checking, Valgrind and direct builds (whose checks
// and bookkeeping live on the slow path), go through the kind.
inline constexpr size_t kInlineMax =
    (kCheckingBuild || kValgrindBuild || kDirectBuild) ? 0 : 4096;

inline SharedState* StateOf(Context* ctx) { return KindState<SharedState>(ctx); }

// The inline fast path: the thread's cached run, if it belongs to this
// generation of `ctx`, bumped by `size` at `alignment` into *out. A bool
// rather than a null pointer for a miss: the caller then needs no test of
// the address (a test and a branch per allocation in W9's loop).
ABSL_ATTRIBUTE_ALWAYS_INLINE inline bool TryBump(Context* ctx, size_t size, size_t alignment,
                                                 void** out) {
  ThreadCache& c = thread_cache;
  if (ABSL_PREDICT_FALSE(c.id != StateOf(ctx)->id.load(std::memory_order_relaxed))) {
    return false;
  }
  ThreadRun* r = c.run;
  uintptr_t p = (reinterpret_cast<uintptr_t>(r->ptr) + alignment - 1) & ~(alignment - 1);
  // `size - 1` wraps for 0: zero-size requests take the slow path.
  if (ABSL_PREDICT_TRUE(size - 1 < kInlineMax && p + size <= reinterpret_cast<uintptr_t>(r->end))) {
    r->ptr = reinterpret_cast<char*>(p + size);
    *out = reinterpret_cast<void*>(p);
    return true;
  }
  return false;
}

}  // namespace shared_internal
}  // namespace mcx

#endif  // MCX_SHARED_INTERNAL_SHARED_STATE_H_
