// File: mcx/context/memory_resource.h
//
// Standard-library containers in a context: a `std::pmr::memory_resource`
// view of a context for `std::pmr::` containers, and `mcx::Allocator<T>` for
// the ordinary ones.
//
// Contract:
//   - Both allocate with the context's `AllocAligned` and deallocate with
//     its `Free` (a no-op for small pool chunks: their memory comes back
//     when the context is reset). Every failure throws `std::bad_alloc`
//     after the context's failure handler, as the standard requires: also
//     those that `AllocAligned` reports as a `std::logic_error` (an
//     alignment above kMaxAlignment, a size the kind refuses, a
//     NoAllocScope), which a container does not expect from its allocator.
//   - Two resources (allocators) compare equal when they name the same
//     context, so containers moved between them keep their memory.
//   - A container must not outlive its context. To tie a container's life
//     to the context, create it with `mcx::New` in that context: reset or
//     destroy then runs its destructor while the memory is still there.
//
// Example:
//
//   mcx::MemoryResource resource(query);
//   std::pmr::vector<int> ids(&resource);
//   std::vector<std::string, mcx::Allocator<std::string>> names{mcx::Allocator<std::string>(query)};
//   auto* rows = mcx::New<std::pmr::unordered_map<int, Row>>(query, &resource);
//   query->Reset();   // ~unordered_map ran; its memory went with the reset

#ifndef MCX_CONTEXT_MEMORY_RESOURCE_H_
#define MCX_CONTEXT_MEMORY_RESOURCE_H_

#include <cstddef>
#include <limits>
#include <memory_resource>
#include <new>
#include <stdexcept>

#include "mcx/context/context.h"

namespace mcx {
namespace internal {

// AllocAligned with its failure handler, throwing std::bad_alloc for every
// failure: the std::logic_error of a bad alignment or size
// (std::invalid_argument) or of a NoAllocScope becomes one.
inline void* AllocForContainer(Context* ctx, size_t bytes, size_t alignment) {
  try {
    return ctx->AllocAligned(bytes, alignment);
  } catch (const std::logic_error&) {
    throw std::bad_alloc();
  }
}

}  // namespace internal

class MemoryResource final : public std::pmr::memory_resource {
 public:
  explicit MemoryResource(Context* ctx) : ctx_(ctx) {}
  Context* context() const { return ctx_; }

 private:
  void* do_allocate(size_t bytes, size_t alignment) override {
    return internal::AllocForContainer(ctx_, bytes, alignment);
  }
  void do_deallocate(void* p, size_t /*bytes*/, size_t /*alignment*/) override {
    ctx_->Free(p);
  }
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override {
    const auto* o = dynamic_cast<const MemoryResource*>(&other);
    return o != nullptr && o->ctx_ == ctx_;
  }

  Context* ctx_;
};

template <typename T>
class Allocator {
 public:
  using value_type = T;

  explicit Allocator(Context* ctx) noexcept : ctx_(ctx) {}
  template <typename U>
  Allocator(const Allocator<U>& other) noexcept : ctx_(other.context()) {}  // NOLINT

  // A count whose bytes overflow asks for the largest size, which the
  // context refuses as it refuses any size above kMaxAllocSize: kBadSize,
  // its failure handler, then std::bad_array_new_length (a std::bad_alloc).
  T* allocate(size_t n) {
    constexpr size_t kMaxCount = std::numeric_limits<size_t>::max() / sizeof(T);
    const size_t bytes = n > kMaxCount ? std::numeric_limits<size_t>::max() : n * sizeof(T);
    return static_cast<T*>(internal::AllocForContainer(ctx_, bytes, alignof(T)));
  }
  void deallocate(T* p, size_t /*n*/) noexcept { ctx_->Free(p); }

  Context* context() const noexcept { return ctx_; }

  template <typename U>
  bool operator==(const Allocator<U>& other) const noexcept {
    return ctx_ == other.context();
  }
  template <typename U>
  bool operator!=(const Allocator<U>& other) const noexcept {
    return ctx_ != other.context();
  }

 private:
  Context* ctx_;
};

}  // namespace mcx

#endif  // MCX_CONTEXT_MEMORY_RESOURCE_H_
