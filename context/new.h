// File: mcx/context/new.h
//
// Typed objects in a context, as protobuf's Arena::Create: `New<T>` constructs
// a T in the context and, when T is not trivially destructible, registers its
// destructor as a cleanup so that Reset/Destroy runs it. `NewArray<T>` does
// the same for n objects with one cleanup record for all of them (LLVM's
// SpecificBumpPtrAllocator destroys its objects in bulk too; protobuf and
// talloc keep a record per object).
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
//   - Arrays: one chunk, one record (none for trivially destructible T),
//     elements destroyed last to first at teardown or by `DeleteArray`.
//   - The first parameter is a `ContextAtSite` (site.h): write a Context*.
//
// Example:
//
//   auto* conn = mcx::New<Connection>(query_ctx, "db.example", 5432);
//   auto* cols = mcx::NewArray<std::string>(query_ctx, ncols);  // one record
//   ...
//   query_ctx->Destroy();   // the strings, then ~Connection(), run here

#ifndef MCX_CONTEXT_NEW_H_
#define MCX_CONTEXT_NEW_H_

#include <cstddef>
#include <exception>
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

// Frees an object's chunk when Delete or DeleteArray leaves, also when a
// destructor throws: its cleanup has run (and is gone) either way.
struct FreeOnExit {
  Context* ctx;
  void* mem;
  ~FreeOnExit() { ctx->Free(mem); }
};

// Non-trivial objects are laid out as [handle slot][T] in one chunk, so that
// Delete can find the cleanup from the object alone.
template <typename T>
constexpr size_t HandleSlotBytes() {
  constexpr size_t a = alignof(T) > alignof(CleanupHandle) ? alignof(T) : alignof(CleanupHandle);
  return (sizeof(CleanupHandle) + a - 1) & ~(a - 1);
}

// What an object of T and the handle slot or array header before it
// need: a kind that packs chunks below kDefaultAlignment (a pool's
// chunk_alignment 8, a slab's alignment 8) then packs objects too, and
// every other kind gives kDefaultAlignment at least (AllocAligned raises
// smaller alignments).
template <typename T>
constexpr size_t ObjectAlignment() {
  constexpr size_t kHeader =
      alignof(CleanupHandle) > alignof(size_t) ? alignof(CleanupHandle) : alignof(size_t);
  return alignof(T) > kHeader ? alignof(T) : kHeader;
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

// NewArray<T>()
//
// `n` value-initialised T (as `new T[n]()`) in one chunk of `ctx`, or `n`
// copies of `value`. When T is not trivially destructible, one cleanup
// record covers the whole array: teardown destroys the elements last to
// first, in the cleanup order (as one object made by New<T> at this call).
// Trivially destructible elements take no record at all.
//
// If a constructor throws, the elements built so far are destroyed, last
// first, the record and the memory go back (a small pool chunk's space
// stays until the reset) and the exception propagates: nothing is
// registered. `n * sizeof(T)` that overflows is kBadSize
// (std::bad_array_new_length after the failure handler). `n == 0` gives a
// unique pointer and no record.
template <typename T>
T* NewArray(ContextAtSite at, size_t n);
template <typename T>
T* NewArray(ContextAtSite at, size_t n, const T& value);

// Destroys an array made by NewArray<T>(ctx, n) now, last element first,
// unregisters its cleanup, and frees it where the kind can.
template <typename T>
void DeleteArray(Context* ctx, T* array);

// Destroys an object made by New<T>(ctx, ...) before its context goes, and
// frees it where the kind can (also when its destructor throws, which
// then propagates).
template <typename T>
void Delete(Context* ctx, T* obj) {
  if (obj == nullptr) return;
  if constexpr (std::is_trivially_destructible_v<T>) {
    ctx->Free(obj);
  } else {
    constexpr size_t kSlot = internal::HandleSlotBytes<T>();
    char* mem = reinterpret_cast<char*>(obj) - kSlot;
    CleanupHandle h = *reinterpret_cast<CleanupHandle*>(mem + kSlot - sizeof(CleanupHandle));
    internal::FreeOnExit free_on_exit{ctx, mem};
    ctx->RunCleanup(h);
  }
}

// --- Arrays ------------------------------------------------------------------------

namespace internal {

// What precedes the elements of an array of a type that is not trivially
// destructible: its count and the handle of its one cleanup, right before
// the first element, so DeleteArray finds them from the array alone.
struct ArrayHeader {
  CleanupHandle handle;  // empty when the array is empty
  size_t count;
};

// Bytes before the first element: the header, padded so that the elements
// keep T's alignment.
template <typename T>
constexpr size_t ArrayHeaderBytes() {
  constexpr size_t a = alignof(T) > alignof(ArrayHeader) ? alignof(T) : alignof(ArrayHeader);
  return (sizeof(ArrayHeader) + a - 1) & ~(a - 1);
}

// Destroys `count` elements from the last to the first. A destructor that
// throws does not stop it: every element is destroyed, then the first
// exception propagates (as a teardown does with throwing cleanups).
template <typename T>
void DestroyBackward(T* first, size_t count) {
  if constexpr (std::is_nothrow_destructible_v<T>) {
    while (count > 0) first[--count].~T();
  } else {
    std::exception_ptr error;
    while (count > 0) {
      try {
        first[--count].~T();
      } catch (...) {
        if (error == nullptr) error = std::current_exception();
      }
    }
    if (error != nullptr) std::rethrow_exception(error);
  }
}

template <typename T>
void DestroyArray(void* header) {
  auto* h = static_cast<ArrayHeader*>(header);
  DestroyBackward(reinterpret_cast<T*>(h + 1), h->count);
}

// NewArray's work: `construct(p)` makes one element at `p`.
template <typename T, typename Construct>
T* NewArrayWith(ContextAtSite at, size_t n, Construct construct) {
  Context* ctx = at.context();
  constexpr bool kTrivial = std::is_trivially_destructible_v<T>;
  constexpr size_t kHeader = kTrivial ? 0 : ArrayHeaderBytes<T>();
  size_t bytes;
  if (__builtin_mul_overflow(n, sizeof(T), &bytes) ||
      __builtin_add_overflow(bytes, kHeader, &bytes)) {
    FailAccess::Fail(ctx, Failure::kBadSize, ~size_t{0}, /*may_throw=*/true);
  }
  char* mem = static_cast<char*>(ctx->AllocAligned(bytes, ObjectAlignment<T>(), at.site()));
  T* first = reinterpret_cast<T*>(mem + kHeader);
  // As New<T>: the record before the elements, linked once they all exist.
  CleanupRecord* record = nullptr;
  if (!kTrivial && n != 0) {
    try {
      record = CleanupAccess::Reserve(ctx);
    } catch (...) {
      ctx->Free(mem);
      throw;
    }
  }
  size_t built = 0;
  try {
    for (; built < n; ++built) construct(first + built);
  } catch (...) {
    try {
      DestroyBackward(first, built);
    } catch (...) {
      // The constructor's exception is the one that propagates.
    }
    if (record != nullptr) CleanupAccess::Return(ctx, record);
    ctx->Free(mem);
    throw;
  }
  if constexpr (!kTrivial) {
    auto* h = new (mem + kHeader - sizeof(ArrayHeader)) ArrayHeader{CleanupHandle(), n};
    if (record != nullptr) h->handle = CleanupAccess::Commit(ctx, record, &DestroyArray<T>, h);
  }
  return first;
}

}  // namespace internal

template <typename T>
T* NewArray(ContextAtSite at, size_t n) {
  return internal::NewArrayWith<T>(at, n, [](T* p) { new (p) T(); });
}

template <typename T>
T* NewArray(ContextAtSite at, size_t n, const T& value) {
  return internal::NewArrayWith<T>(at, n, [&value](T* p) { new (p) T(value); });
}

template <typename T>
void DeleteArray(Context* ctx, T* array) {
  if (array == nullptr) return;
  if constexpr (std::is_trivially_destructible_v<T>) {
    ctx->Free(array);
  } else {
    char* mem = reinterpret_cast<char*>(array) - internal::ArrayHeaderBytes<T>();
    auto* h = reinterpret_cast<internal::ArrayHeader*>(array) - 1;
    internal::FreeOnExit free_on_exit{ctx, mem};
    if (h->count != 0) ctx->RunCleanup(h->handle);
  }
}

}  // namespace mcx

#endif  // MCX_CONTEXT_NEW_H_
