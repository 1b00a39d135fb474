// File: mcx/context/block_list.h
//
// For kind authors (kind_api.h): the blocks a kind holds, on intrusive
// doubly linked lists, and the few things every kind does with them:
// acquire and link, unlink and release, release them all, and reset them
// under a `ResetOptions` (keep whole blocks while they fit `keep_bytes`).
// PostgreSQL's newer kinds share lib/ilist.h the same way; each mcx kind
// used to carry its own copy of this code.
//
// Contract:
//   - A kind's block header starts with a `KindBlock` (its first member), so
//     that the block's first word is the owning context: a chunk header's
//     offset leads to it, and that is how `mcx::Free(p)` finds the context.
//   - `size` is what the ledger accounted (AcquireBlock's `actual`), and what
//     goes back. The first block, which the tree releases, keeps 0 there.
//   - `Holds(b)` answers in O(1), from b's links alone, whether b is on the
//     list: a pointer a caller handed back is validated before the kind
//     trusts the block behind it (a freed block's links are stale).
//
// Example:
//
//   struct MyBlock {
//     mcx::KindBlock link;   // first
//     char* end;
//   };
//   mcx::KindBlock* b = mcx::AcquireKindBlock(ctx, 64 * 1024, mcx::kMinBlockAlignment);
//   if (b == nullptr) return nullptr;   // the failure is recorded
//   st->blocks.PushFront(b);
//   ...
//   mcx::ReleaseBlocks(ctx, &st->blocks, /*keep=*/first_block);

#ifndef MCX_CONTEXT_BLOCK_LIST_H_
#define MCX_CONTEXT_BLOCK_LIST_H_

#include <cstddef>

#include "mcx/context/config.h"  // IWYU pragma: keep (config.h: the link check)
#include "mcx/context/internal/sanitizer.h"
#include "mcx/context/kind.h"

namespace mcx {

class Context;

struct KindBlock {
  Context* owner;  // must stay the first field
  KindBlock* prev;
  KindBlock* next;
  size_t size;  // bytes acquired (what goes back); 0 for the first block
};

class BlockList {
 public:
  KindBlock* head() const { return head_; }
  KindBlock* tail() const { return tail_; }
  bool empty() const { return head_ == nullptr; }
  // Walks the list: a count kept up to date would cost every kind state
  // eight bytes per list and every link a store, for the reports' sake.
  size_t count() const {
    size_t n = 0;
    for (const KindBlock* b = head_; b != nullptr; b = b->next) ++n;
    return n;
  }
  // Whether `b` is the only block on the list.
  bool IsOnly(const KindBlock* b) const { return head_ == b && tail_ == b; }

  void PushFront(KindBlock* b) {
    b->prev = nullptr;
    b->next = head_;
    if (head_ != nullptr) head_->prev = b; else tail_ = b;
    head_ = b;
  }
  void PushBack(KindBlock* b) {
    b->next = nullptr;
    b->prev = tail_;
    if (tail_ != nullptr) tail_->next = b; else head_ = b;
    tail_ = b;
  }
  // Links `b` just before `pos`, which is on the list.
  void InsertBefore(KindBlock* pos, KindBlock* b) {
    b->next = pos;
    b->prev = pos->prev;
    if (pos->prev != nullptr) pos->prev->next = b; else head_ = b;
    pos->prev = b;
  }
  void Remove(KindBlock* b) {
    if (b->prev != nullptr) b->prev->next = b->next; else head_ = b->next;
    if (b->next != nullptr) b->next->prev = b->prev; else tail_ = b->prev;
    b->prev = b->next = nullptr;
  }
  // After a block moved (ReallocateBlock copied its header, links and all,
  // and released the old one): `moved` takes the old block's place. The old
  // block's memory is not read.
  void Replace(KindBlock* moved) {
    if (moved->prev != nullptr) moved->prev->next = moved; else head_ = moved;
    if (moved->next != nullptr) moved->next->prev = moved; else tail_ = moved;
  }
  // O(1): whether b's links place it on this list.
  bool Holds(const KindBlock* b) const { return Holds(b, *b); }
  // The same for a block at `at` whose links were copied out to `links`
  // (a kind that reads them past sanitizer poison).
  bool Holds(const KindBlock* at, const KindBlock& links) const {
    return (links.prev != nullptr ? links.prev->next == at : head_ == at) &&
           (links.next != nullptr ? links.next->prev == at : tail_ == at);
  }
  // O(1): whether the block at `at`, where a pointer a caller handed back
  // leads (a chunk with a block of its own), is a live block of `owner` on
  // this list. A block that went back to its source may hold anything in
  // its first bytes, so nothing in it is trusted, and no pointer in it
  // followed, before its owner word names `owner` and its links place it
  // here. The links are read past sanitizer poison.
  bool HoldsBlockOf(const Context* owner, const KindBlock* at) const {
    KindBlock links;
    internal::CopyFromPoisoned(&links, at, sizeof(links));
    if (links.owner != owner || links.prev == at || links.next == at) return false;
    return Holds(at, links);
  }
  void Clear() { head_ = tail_ = nullptr; }

  // Calls f(KindBlock*) for each block, head first; f may release the block
  // it is given (the next one is read before).
  template <typename F>
  void ForEach(F f) const {
    for (KindBlock* b = head_; b != nullptr;) {
      KindBlock* next = b->next;
      f(b);
      b = next;
    }
  }

 private:
  KindBlock* head_ = nullptr;
  KindBlock* tail_ = nullptr;
};

// A block of at least `min_size` bytes from the ledger (AcquireBlock), its
// KindBlock filled in (owner, size; not linked). nullptr, with the failure
// recorded, if it cannot be had. `usable_size` as for AcquireBlock.
KindBlock* AcquireKindBlock(Context* ctx, size_t min_size, size_t alignment,
                            size_t usable_size = 0);
// Back to the ledger (the block need not be linked any more).
void ReleaseKindBlock(Context* ctx, KindBlock* b);

// Releases every block of `list` but `keep` (a kind's first block, which
// the tree releases; nullptr: none), and empties the list; `keep`, if it was
// on the list, stays the only one on it.
void ReleaseBlocks(Context* ctx, BlockList* list, KindBlock* keep = nullptr);

// A reset's policy, the same for every kind: walks `list`, head first,
// skipping `keep` (the first block), and keeps a block while
// `options.KeepsBlock(kept, size)` holds (kept blocks move to the back of
// `kept_list`, in order), releasing the others; `kept` counts the bytes kept
// so far (start with the first block's size). `list` ends empty. Returns
// the bytes kept in the end.
size_t ResetBlocks(Context* ctx, BlockList* list, const ResetOptions& options, size_t kept,
                   BlockList* kept_list, const KindBlock* keep = nullptr);

}  // namespace mcx

#endif  // MCX_CONTEXT_BLOCK_LIST_H_
