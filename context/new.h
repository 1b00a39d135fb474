// File: mcx/context/new.h
//
// Typed objects in a context, as protobuf's Arena::Create: `New<T>` constructs
// a T in the context and, when T is not trivially destructible, registers its
// destructor as a cleanup so that Reset/Destroy runs it.
//
// Contract:
//   - Destructors run at teardown in the cleanup order (newest first, after
//     the children by default), while the context's memory is still readable.
//   - `Delete(ctx, obj)` runs the destructor now, unregisters it, and frees
//     the memory where the kind can (the pool kind keeps small chunks until
//     reset).
//   - If the constructor throws, or memory for the object or its cleanup
//     cannot be had, nothing is registered, the object's memory is freed as
//     `Free` frees it (a pool keeps a small chunk's space until reset) and
//     the exception propagates. The cleanup record is taken before the
//     constructor runs and linked after it returns, so a constructor that
//     leaves by longjmp leaves no cleanup for an object that does not exist
//     (only memory, released with the context).
//
// Example:
//
//   auto* conn = mcx::New<Connection>(query_ctx, "db.example", 5432);
//   ...
//   query_ctx->Destroy();   // ~Connection() runs here

#ifndef MCX_CONTEXT_NEW_H_
#define MCX_CONTEXT_NEW_H_

#include <cstddef>
#include <new>
#include <type_traits>
#include <utility>

#include "mcx/context/context.h"
#include "mcx/context/site.h"

namespace mcx {
namespace internal {

template <typename T>
void DestroyObject(void* p) {
  static_cast<T*>(p)->~T();
}

// Non-trivial objects are laid out as [handle slot][T] in one chunk, so that
// Delete can find the cleanup from the object alone.
template <typename T>
constexpr size_t HandleSlotBytes() {
  constexpr size_t a = alignof(T) > alignof(CleanupHandle) ? alignof(T) : alignof(CleanupHandle);
  return (sizeof(CleanupHandle) + a - 1) & ~(a - 1);
}

template <typename T>
constexpr size_t ObjectAlignment() {
  return alignof(T) > kDefaultAlignment ? alignof(T) : kDefaultAlignment;
}

}  // namespace internal

// `at` is written as a Context*; it carries the site of the call (site.h).
template <typename T, typename... Args>
T* New(ContextAtSite at, Args&&... args) {
  Context* ctx = at.context();
  constexpr size_t kAlign = internal::ObjectAlignment<T>();
  if constexpr (std::is_trivially_destructible_v<T>) {
    void* mem = ctx->AllocAligned(sizeof(T), kAlign, at.site());
    try {
      return new (mem) T(std::forward<Args>(args)...);
    } catch (...) {
      ctx->Free(mem);
      throw;
    }
  } else {
    constexpr size_t kSlot = internal::HandleSlotBytes<T>();
    char* mem = static_cast<char*>(ctx->AllocAligned(kSlot + sizeof(T), kAlign, at.site()));
    // The record first, linked only once the object exists: a failed
    // registration then has nothing to destroy, and a constructor that
    // throws or longjmps leaves no cleanup behind.
    internal::CleanupRecord* record;
    try {
      record = internal::CleanupAccess::Reserve(ctx);
    } catch (...) {
      ctx->Free(mem);
      throw;
    }
    T* obj;
    try {
      obj = new (mem + kSlot) T(std::forward<Args>(args)...);
    } catch (...) {
      internal::CleanupAccess::Return(ctx, record);
      ctx->Free(mem);
      throw;
    }
    CleanupHandle h = internal::CleanupAccess::Commit(ctx, record, &internal::DestroyObject<T>, obj);
    new (mem + kSlot - sizeof(CleanupHandle)) CleanupHandle(h);
    return obj;
  }
}

// Destroys an object made by New<T>(ctx, ...) before its context goes.
template <typename T>
void Delete(Context* ctx, T* obj) {
  if (obj == nullptr) return;
  if constexpr (std::is_trivially_destructible_v<T>) {
    ctx->Free(obj);
  } else {
    constexpr size_t kSlot = internal::HandleSlotBytes<T>();
    char* mem = reinterpret_cast<char*>(obj) - kSlot;
    CleanupHandle h = *reinterpret_cast<CleanupHandle*>(mem + kSlot - sizeof(CleanupHandle));
    ctx->RunCleanup(h);
    ctx->Free(mem);
  }
}

}  // namespace mcx

#endif  // MCX_CONTEXT_NEW_H_
