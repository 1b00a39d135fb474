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
//     owner are ordinary frees. Until the new owner has adopted it, the old
//     one is still the owner, and its frees are owner operations, which
//     must not overlap the new owner's: a thread that hands a context over
//     stops using it at the handoff, or frees only after the adoption
//     (which the handoff's synchronisation orders before those frees).
//     A thread that exits owns nothing; no thread started later inherits
//     its ownership.
//   - Any thread may free a live chunk of the context at any time while the
//     context lives, with `ctx->Free(p)` or `mcx::Free(p)`; a free must
//     happen before the context's reset or destroy (as any use of a chunk).
//   - The chunk's memory is reused by the owner only after it has taken the
//     list back, so a remote free costs the freeing thread one push.
//   - A kind's `Check` reads the remote list as it is: the owner calls it
//     with no remote free in flight (it may report a chunk as freed and
//     not yet on the list).
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


namespace mcx {

class Context;

namespace internal {
// The calling thread's number, unique in the process and never reused; 0
// until the thread first owns a context (ThisThreadNumber). Not the thread
// pointer nor a thread-local's address: glibc gives a new thread the stack
// and thread-local block of one that exited, so those can name a dead owner
// and let another thread take the owner's unsynchronised paths; a new
// thread's thread-locals start at zero, so it never has a dead one's number.
// Initial-exec: one load from the thread's block, as the thread pointer was.
extern __thread uint64_t remote_thread_number __attribute__((tls_model("initial-exec")));
// Numbers the calling thread (out of line: once per thread).
uint64_t NumberThisThread();

// The calling thread's number, numbering it if it has none.
inline uint64_t ThisThreadNumber() {
  const uint64_t n = remote_thread_number;
  return n != 0 ? n : NumberThisThread();
}
}  // namespace internal

class RemoteFreeList {
 public:
  // Empty, owned by the calling thread.
  void Init() {
    head_.store(nullptr, std::memory_order_relaxed);
    Adopt();
  }
  void Adopt() { owner_.store(internal::ThisThreadNumber(), std::memory_order_relaxed); }

  // A thread never numbered (0) owns nothing: the owner's number is not 0.
  bool FromOtherThread() const {
    return owner_.load(std::memory_order_relaxed) != internal::remote_thread_number;
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
  std::atomic<uint64_t> owner_;
};

// Makes the calling thread the owner of `ctx`: its frees are then ordinary
// ones, and other threads' go on the remote list. Nothing for a kind without
// remote frees.
void AdoptContext(Context* ctx);

}  // namespace mcx

#endif  // MCX_CONTEXT_REMOTE_FREE_H_
