// File: mcx/slab/typed_slab.h
//
// `mcx::Slab<T>`: typed objects in a slab context (slab.h), one T per slot:
// `New(args...)` constructs a T in a free slot, `Delete(obj)` destroys it
// and frees the slot, both O(1) with no header per object. The context is
// an ordinary member of the tree: when it is reset or destroyed (or an
// ancestor is), the destructor of every T still allocated runs, as for
// `mcx::New<T>`, but with no cleanup record per object.
//
// Contract:
//   - A Slab<T> is a handle (copyable, a pointer in size) to a slab context
//     made with `Slab<T>::Options()`: object size sizeof(T), alignment
//     alignof(T) (at least 8, so 24-byte nodes sit 24 bytes apart), and
//     the ~T cleanup. The handle does not own the context: destroy it, or
//     its parent, as any context.
//   - New throws as Context::Alloc does (the failure handler first); if T's
//     constructor throws, the slot is freed and the exception propagates.
//   - At reset or destroy the destructors of the remaining objects run
//     after the context's cleanups and children, in no particular order
//     (not newest first). A destructor may Delete other objects of the same
//     slab, whether their turn came already or not: each T is destroyed
//     exactly once. It must not allocate in the slab.
//   - Delete of an object of another slab, or twice, is misuse, reported as
//     for Context::Free (after ~T ran on it: as `delete` of a bad pointer).
//
// Example:
//
//   struct Node { Node* left; Node* right; int key; };
//   auto nodes = mcx::Slab<Node>::Create(query, "nodes");
//   Node* n = nodes.New(Node{nullptr, nullptr, 42});
//   nodes.Delete(n);
//   query->Destroy();   // the slab context and any Node left go with it

#ifndef MCX_SLAB_TYPED_SLAB_H_
#define MCX_SLAB_TYPED_SLAB_H_

#include <cstddef>
#include <new>
#include <type_traits>
#include <utility>

#include "mcx/context/context.h"
#include "mcx/slab/slab.h"

namespace mcx {
namespace slab_internal {

enum class DeleteClaim {
  kFree,         // the usual case: destroy the object, then free it
  kDestroyOnly,  // a reset is finishing the slab: destroy it; the reset frees it
  kFinished,     // a reset destroyed it already (or it is no object): nothing to do
};

// Delete's question to the slab kind; cheap outside a reset (one load).
DeleteClaim ClaimForDelete(Context* slab, void* object);

}  // namespace slab_internal

template <typename T>
class Slab {
 public:
  static_assert(!std::is_array_v<T> && !std::is_reference_v<T> && std::is_object_v<T>,
                "Slab<T> holds objects");
  static_assert(alignof(T) <= kMaxSlabAlignment, "T is more aligned than a slab allows");

  // The options of a slab for T: `base` with T's size, alignment and
  // destructor filled in.
  static SlabOptions Options(SlabOptions base = SlabOptions()) {
    base.object_size = sizeof(T);
    base.alignment = static_cast<uint32_t>(alignof(T) < 8 ? 8 : alignof(T));
    base.constructor = nullptr;
    base.destructor = nullptr;
    base.live_cleanup = std::is_trivially_destructible_v<T> ? nullptr : &DestroyLive;
    return base;
  }

  // A new slab context for T under `parent` (nullptr: a root). Throws as
  // Context::Create does.
  static Slab Create(Context* parent, const char* name, const SlabOptions& base = SlabOptions(),
                     const ContextOptions& context_options = ContextOptions()) {
    return Slab(CreateSlabContext(parent, name, Options(base), context_options));
  }

  // A handle to `slab`, which must have been made with Options().
  explicit Slab(Context* slab) : ctx_(slab) {}

  template <typename... Args>
  T* New(Args&&... args) {
    void* mem = alignof(T) <= kDefaultAlignment ? ctx_->Alloc(sizeof(T))
                                                : ctx_->AllocAligned(sizeof(T), alignof(T));
    try {
      return ::new (mem) T(std::forward<Args>(args)...);
    } catch (...) {
      ctx_->Free(mem);
      throw;
    }
  }

  void Delete(T* obj) {
    if (obj == nullptr) return;
    const slab_internal::DeleteClaim claim =
        std::is_trivially_destructible_v<T> ? slab_internal::DeleteClaim::kFree
                                            : slab_internal::ClaimForDelete(ctx_, obj);
    if (claim == slab_internal::DeleteClaim::kFinished) return;
    obj->~T();
    if (claim == slab_internal::DeleteClaim::kFree) ctx_->Free(obj);
  }

  Context* context() const { return ctx_; }

 private:
  static void DestroyLive(void* object, void* /*arg*/) noexcept {
    static_cast<T*>(object)->~T();
  }

  Context* ctx_;
};

}  // namespace mcx

#endif  // MCX_SLAB_TYPED_SLAB_H_
