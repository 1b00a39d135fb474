// File: mcx/shared/shared.h
//
// The shared kind: one context that many threads allocate from at the same
// time, without a lock on the fast path, as protobuf's ThreadSafeArena.
// Each thread bumps in a run of blocks of its own (protobuf's SerialArena),
// found through a one-entry thread-local cache; only a thread's first
// allocation in the context, and each new block, take the context's lock.
//
// Contract:
//   - From any thread, at the same time: `SharedAlloc`, `TrySharedAlloc`,
//     and the context's own allocation calls (`Alloc`, `TryAlloc`,
//     `AllocZero`, `AllocAligned`, `AllocBytes`, `Strdup`, the sized
//     `Realloc`), which reach the same runs through the kind; `Free`, a
//     no-op (memory goes back at reset, as a pool's small chunks);
//     registering, removing and running cleanups (`AddCleanup`,
//     `mcx::New<T>`, `RemoveCleanup`, `RunCleanup`); creating and destroying
//     children, which are ordinary contexts of any kind, each used by one
//     thread at a time.
//   - From one thread, when every other thread is done with the context
//     (joined, or told through a barrier, a latch or a queue): `Reset`,
//     `Destroy`, `SetParent`, `SetLimit`, reports, `Check`, `Inspect`.
//     Checking builds report a reset or destroy that overlaps an allocation,
//     and an allocation during the teardown. After a reset every thread may
//     allocate again.
//   - The unsized `Realloc` and `ChunkSize` are unsupported (chunks carry no
//     header). A failed allocation on two threads at once leaves one of the
//     two reasons in `last_failure()`.
//   - No context above a shared one, and the shared context itself, may
//     carry a limit or a soft limit (`ContextOptions::limit`, `SetLimit`,
//     `SetSoftLimit`): a limit is checked and charged in two steps by one
//     thread. Each way to put one there fails with kBadArgument: creating
//     a shared context with a limit or under one, setting one on it or an
//     ancestor, moving it (or a subtree that holds it) under one. Attach a
//     `Budget` (mcx/context/budget.h), which is charged atomically, to
//     bound memory that several threads allocate.
//   - Savepoints are refused (`Mark`: kUnsupported): threads bump at once
//     in runs of their own, so there is no one point to rewind to.
//
// Example (docs/threads.md has the thread model for every kind):
//
//   mcx::Context* scan = mcx::Context::Create(query, "scan", mcx::SharedKind());
//   std::vector<std::thread> workers;
//   for (int w = 0; w < 4; ++w) {
//     workers.emplace_back([&, w] {
//       for (const Row& row : Part(w)) {
//         auto* out = static_cast<Tuple*>(mcx::SharedAlloc(scan, sizeof(Tuple)));
//         Fill(out, row);
//       }
//     });
//   }
//   for (std::thread& t : workers) t.join();
//   Consume(scan);
//   scan->Destroy();          // one thread, once the workers are done

#ifndef MCX_SHARED_SHARED_H_
#define MCX_SHARED_SHARED_H_

#include <cstddef>

#include "absl/base/optimization.h"
#include "mcx/context/context.h"
#include "mcx/context/kind.h"
#include "mcx/shared/internal/shared_state.h"

namespace mcx {

struct SharedOptions {
  // The context's first block holds its header and name only (0: as small
  // as they allow); each thread's run starts with a block of
  // `thread_block_size` bytes, and each later block of the run doubles, up
  // to `max_block_size`.
  size_t initial_block_size = 0;
  size_t thread_block_size = 8 * 1024;
  size_t max_block_size = 1024 * 1024;
  // Larger requests get a block of their own (taken under the lock).
  size_t max_small = 8 * 1024;
};

KindSpec SharedKind(const SharedOptions& options);
const KindSpec& SharedKind();

// Whether `ctx` is a shared context.
bool IsShared(const Context* ctx);

// Allocates `size` bytes in the shared context `ctx` from any thread: a
// bump in the calling thread's run, inline; else the context's `Alloc`
// (a new run or block, or the failure path: the handler, then a throw).
inline void* SharedAlloc(Context* ctx, size_t size) {
  void* p;
  if (ABSL_PREDICT_TRUE(shared_internal::TryBump(ctx, size, kDefaultAlignment, &p))) return p;
  return ctx->Alloc(size);
}

// As SharedAlloc; nullptr on failure.
inline void* TrySharedAlloc(Context* ctx, size_t size) noexcept {
  void* p;
  if (ABSL_PREDICT_TRUE(shared_internal::TryBump(ctx, size, kDefaultAlignment, &p))) return p;
  return ctx->TryAlloc(size);
}

}  // namespace mcx

#endif  // MCX_SHARED_SHARED_H_
