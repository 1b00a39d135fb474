// The block-list toolkit for kinds (block_list.h).

#include "mcx/context/block_list.h"

#include "mcx/context/kind_api.h"

namespace mcx {

KindBlock* AcquireKindBlock(Context* ctx, size_t min_size, size_t alignment,
                            size_t usable_size) {
  size_t actual;
  auto* b = static_cast<KindBlock*>(AcquireBlock(ctx, min_size, alignment, &actual, usable_size));
  if (b == nullptr) return nullptr;
  b->owner = ctx;
  b->prev = b->next = nullptr;
  b->size = actual;
  return b;
}

void ReleaseKindBlock(Context* ctx, KindBlock* b) { ReleaseBlock(ctx, b, b->size); }

void ReleaseBlocks(Context* ctx, BlockList* list, KindBlock* keep) {
  // A context that never grew (or an empty list, keep nullptr): nothing to
  // release. Every destroy of a small context comes here.
  if (list->IsOnly(keep)) return;
  bool kept = false;
  list->ForEach([&](KindBlock* b) {
    if (b == keep) {
      kept = true;
    } else {
      ReleaseKindBlock(ctx, b);
    }
  });
  list->Clear();
  if (kept) list->PushBack(keep);
}

size_t ResetBlocks(Context* ctx, BlockList* list, const ResetOptions& options, size_t kept,
                   BlockList* kept_list, const KindBlock* keep) {
  BlockList walk = *list;
  list->Clear();
  walk.ForEach([&](KindBlock* b) {
    if (b == keep) return;
    if (options.KeepsBlock(kept, b->size)) {
      kept += b->size;
      kept_list->PushBack(b);
    } else {
      ReleaseKindBlock(ctx, b);
    }
  });
  return kept;
}

}  // namespace mcx
