// File: mcx/context/remote_free.h
//
// Frees from other threads (mimalloc's delayed free), for any kind whose
// chunks can be freed one by one. A context is used by one thread at a time,
// its owner; a chunk freed by any other thread is not put back on the
// kind's lists (that would race with the owner) but pushed on the
// context's remote-free list with one atomic exchange loop, and the owner
// takes the whole list back at its next allocation slow path (before it
// asks for a new block), at a reset, or at the destroy.
//
// Contract:
//   - The owner is the thread that created the context, or the last one
//     that called `AdoptContext` on it (a context handed to a worker: the
//     worker adopts it once, before it allocates or frees). Frees by the
//     owner are ordinary frees.
//   - Any thread may free a live chunk of the context at any time while the
//     context lives, with `ctx->Free(p)` or `mcx::Free(p)`; a free must
//     happen before the context's reset or destroy (as any use of a chunk).
//   - The chunk's memory is reused by the owner only after it has taken the
//     list back, so a remote free costs the freeing thread one push.
//
// For kind authors: embed a `RemoteFreeList` in the kind's state, `Init` it
// in the kind's Init, start the kind's Free with
// `if (list.FromOtherThread()) return list.Push(p)` (after any check of the
// chunk itself), `TakeAll` at the allocation slow path, reset and
// release, and give the list to the tree with `KindMethods::remote_frees`
// (so that checking builds do not report a remote free as two threads using
// the context). The freelist and slab kinds do exactly this.
//
// Example:
//
//   mcx::Context* rows = mcx::Context::Create(query, "rows", mcx::FreelistKind());
//   Row* r = mcx::New<Row>(rows);
//   queue.Push(r);                   // a consumer thread: mcx::Free(r)
//   ...
//   rows->Alloc(64);                 // the owner reclaims the freed rows here

#ifndef MCX_CONTEXT_REMOTE_FREE_H_
#define MCX_CONTEXT_REMOTE_FREE_H_

#include <atomic>
#include <cstdint>
#include <cstring>

#include "absl/base/config.h"

namespace mcx {

class Context;

namespace internal {
// Its address names the calling thread where the thread pointer cannot.
extern __thread char remote_thread_token;

// A value that names the calling thread while it runs: the thread pointer,
// one load (the owner test is on every free), else the token's address.
inline const void* ThisThreadName() {
#if ABSL_HAVE_BUILTIN(__builtin_thread_pointer)
  return __builtin_thread_pointer();
#else
  return &remote_thread_token;
#endif
}
}  // namespace internal

class RemoteFreeList {
 public:
  // Empty, owned by the calling thread.
  void Init() {
    head_.store(nullptr, std::memory_order_relaxed);
    Adopt();
  }
  void Adopt() { owner_.store(internal::ThisThreadName(), std::memory_order_relaxed); }

  bool FromOtherThread() const {
    return owner_.load(std::memory_order_relaxed) != internal::ThisThreadName();
  }

  // Links `chunk` (at least a pointer's worth of bytes, no longer used by
  // anyone) through its first word.
  void Push(void* chunk) {
    void* head = head_.load(std::memory_order_relaxed);
    do {
      std::memcpy(chunk, &head, sizeof(head));
    } while (!head_.compare_exchange_weak(head, chunk, std::memory_order_release,
                                          std::memory_order_relaxed));
  }

  bool HasAny() const { return head_.load(std::memory_order_relaxed) != nullptr; }
  // The newest chunk pushed, for a walk at quiescence (a kind's Check).
  const void* Peek() const { return head_.load(std::memory_order_acquire); }

  // The owner: every chunk pushed so far, newest first, linked through their
  // first words (Next).
  void* TakeAll() { return head_.exchange(nullptr, std::memory_order_acquire); }
  static void* Next(const void* chunk) {
    void* next;
    std::memcpy(&next, chunk, sizeof(next));
    return next;
  }

 private:
  std::atomic<void*> head_;
  std::atomic<const void*> owner_;
};

// Makes the calling thread the owner of `ctx`: its frees are then ordinary
// ones, and other threads' go on the remote list. Nothing for a kind without
// remote frees.
void AdoptContext(Context* ctx);

}  // namespace mcx

#endif  // MCX_CONTEXT_REMOTE_FREE_H_
