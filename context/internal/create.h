// Internal to mcx; do not include from outside.
// IWYU pragma: private
//
// A context's creation, as the two ways in share it. The generic creation
// (Context::CreateImpl, context.cc) handles every case: roots, options,
// limits, failures, through the kind's method table. A kind built with
// MakeKindMethods also gets CreateChildOf<its trampolines> in its table
// (KindMethods::create_child): the common case, a child with default
// options while no context of the process has a limit, with the kind's
// first-block rule and Init inlined instead of called through the table,
// and the state's size a constant. It hands every other case, untouched, to
// the generic creation, and shares its header placement with it.
//
// Interface:
//   kFirstBlockSizeOffset    where the first block's size is kept
//   CopyName                 a name and its NUL into the first block
//   CreateAccess::PlaceHeader     a new context's header, name and link
//   CreateAccess::CreateChildOf   the composed creation of a child
//
// Included at the end of kind_api.h, whose declarations it uses.

#ifndef MCX_CONTEXT_INTERNAL_CREATE_H_
#define MCX_CONTEXT_INTERNAL_CREATE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "mcx/context/block_source.h"
#include "mcx/context/context.h"
#include "mcx/context/internal/context_impl.h"
#include "mcx/context/internal/valgrind.h"
#include "mcx/context/kind.h"
#include "mcx/context/kind_api.h"

namespace mcx {
namespace internal {

// Copies `n` bytes (a name and its NUL). Names are short, and for them two
// overlapping loads and stores cost less than the call to memcpy.
inline void CopyName(char* to, const char* from, size_t n) {
  if (n > 16) {
    std::memcpy(to, from, n);
  } else if (n >= 8) {
    uint64_t head, tail;
    std::memcpy(&head, from, 8);
    std::memcpy(&tail, from + n - 8, 8);
    std::memcpy(to, &head, 8);
    std::memcpy(to + n - 8, &tail, 8);
  } else if (n >= 4) {
    uint32_t head, tail;
    std::memcpy(&head, from, 4);
    std::memcpy(&tail, from + n - 4, 4);
    std::memcpy(to, &head, 4);
    std::memcpy(to + n - 4, &tail, 4);
  } else {
    to[0] = from[0];
    to[n / 2] = from[n / 2];
    to[n - 1] = from[n - 1];
  }
}

// Where a context keeps its first block's size: right after the header,
// before the kind's state (kind_api.h, kKindStateStart), in the line a
// release reads for the header's last fields anyway (context.cc reads it).
inline constexpr size_t kFirstBlockSizeOffset = sizeof(Context);
static_assert(kFirstBlockSizeOffset + sizeof(size_t) == kKindStateStart,
              "the first block's size lies between the header and the kind state");

struct CreateAccess {
  // Where a kind's state of `state_size` bytes aligned to `state_alignment`
  // puts the name: after the context header, the first block's size and
  // the state.
  static constexpr size_t NameOffset(size_t state_alignment, size_t state_size) {
    return ((kKindStateStart + state_alignment - 1) & ~(state_alignment - 1)) + state_size;
  }

  // The header of a new context in its first block (`size` bytes at
  // `block`), with a copy of `name` at `name_offset`, linked under `parent`
  // (nullptr: a root). The kind's init comes next.
  ABSL_ATTRIBUTE_ALWAYS_INLINE static Context* PlaceHeader(const KindMethods* methods,
                                                           BlockSource* source, void* block,
                                                           size_t size, const char* name,
                                                           size_t name_len, size_t name_offset,
                                                           Context* parent) {
    Context* ctx = new (block) Context(methods, source, size);
    std::memcpy(static_cast<char*>(block) + kFirstBlockSizeOffset, &size, sizeof(size));
    ValgrindCreatePool(ctx);
    CopyName(static_cast<char*>(block) + name_offset, name, name_len + 1);
    if (parent != nullptr) {
      // Grandchildren start from what this context's siblings needed.
      ctx->learned_first_block_.store(
          parent->learned_first_block_.load(std::memory_order_relaxed),
          std::memory_order_relaxed);
    }
    // Linked before the kind's init: init and the side record may acquire
    // blocks, which charge ancestors. The common parent, whose kind takes
    // no lock, links the new header (whose links are null) in place.
    if (parent != nullptr && ABSL_PREDICT_TRUE(parent->methods_->lock == nullptr)) {
      ctx->parent_ = parent;
      Context* next = parent->first_child_;
      ctx->next_sibling_ = next;
      if (next != nullptr) next->prev_sibling_ = ctx;
      parent->first_child_ = ctx;
    } else {
      ctx->LinkUnder(parent);
    }
    return ctx;
  }

  // A child of `parent` with default options, made by the kind whose
  // trampolines are `Ops` (kind_api.h). Anything but the common case goes to
  // the generic creation before anything is acquired, so that it is judged
  // and reported in one place.
  // `name` is not nullptr; `name_len` is its length (Context::CreateDefault).
  template <typename Ops>
  static Context* CreateChildOf(Context* parent, const char* name, size_t name_len,
                                const KindSpec& kind, unsigned flags) {
    using State = typename Ops::State;
    constexpr size_t kNameOffset = NameOffset(alignof(State), sizeof(State));
    // A name that leaves no room for a first block goes to CreateImpl too,
    // to be refused there; below the bound, header_bytes is at most
    // kMaxFirstBlockSize.
    constexpr size_t kMaxNameLen = Context::kMaxFirstBlockSize - kNameOffset - kDefaultAlignment;
    if (ABSL_PREDICT_FALSE(parent == nullptr || parent->state_ == Context::State::kTearingDown ||
                           no_alloc_depth != 0 || AnyLimited() || name_len > kMaxNameLen)) {
      return Context::CreateImpl(parent, name, kind, nullptr, flags);
    }
    const size_t header_bytes = (kNameOffset + name_len + 1 + kDefaultAlignment - 1) &
                                ~(kDefaultAlignment - 1);
    const FirstBlockSpec first =
        Ops::FirstBlock(kind.options(), header_bytes, parent->LearnedFirstBlock());
    // One compare for 0, too small and too large alike (unsigned wrap).
    if (ABSL_PREDICT_FALSE(first.size - header_bytes >
                           Context::kMaxFirstBlockSize - header_bytes)) {
      return Context::CreateImpl(parent, name, kind, nullptr, flags);
    }
    BlockSource* source = parent->source_;
    const Block block = AcquireFrom(source, first.size, first.alignment);
    if (ABSL_PREDICT_FALSE(block.ptr == nullptr)) {
      return Context::CreateFailed(parent, Failure::kOutOfMemory, first.size, flags, name);
    }
    // The source's slack too, as far as the kinds' 32-bit fields can say
    // it: no limit anywhere to charge it to.
    const size_t size =
        block.size < Context::kMaxFirstBlockSize ? block.size : Context::kMaxFirstBlockSize;
    Context* ctx = PlaceHeader(kind.methods(), source, block.ptr, size, name, name_len,
                               kNameOffset, parent);
    char* base = reinterpret_cast<char*>(ctx);
    if (ABSL_PREDICT_FALSE(!Ops::Init(ctx, kind.options(), base + header_bytes, base + size))) {
      return Context::UndoCreate(ctx, ctx->last_failure_, first.size, flags, name);
    }
    ctx->state_ = Context::State::kLive;  // as CreateImpl: see there
    return ctx;
  }
};

}  // namespace internal

namespace kind_internal {

template <typename K>
Context* Trampolines<K>::CreateChild(Context* parent, const char* name, size_t name_len,
                                     const KindSpec& kind, unsigned flags) {
  return internal::CreateAccess::CreateChildOf<Trampolines<K>>(parent, name, name_len, kind,
                                                                flags);
}

}  // namespace kind_internal
}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_CREATE_H_
