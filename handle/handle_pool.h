// File: mcx/handle/handle_pool.h
//
// Handle pools: fixed-size slots named by handles (an index with a version)
// instead of pointers, as real-time and game engines keep their entities,
// sessions and resources. A handle can be stored anywhere, copied, sent
// across an API, and outlive what it names: using it afterwards is detected,
// never answered with someone else's data.
//
// Contract:
//   - Classes. A pool has 1 to kMaxHandleClasses size classes, each a number
//     of slots of one size (ascending). Allocate(n) takes a free slot of the
//     smallest class whose slots hold n bytes; when that class has none, it
//     grows by a block of `grow` slots if the class is configured to (memory
//     from the context), else (or if that fails) the next larger class with
//     a free slot serves (`spill`). Null handle when nothing can serve;
//     last_failure() says why. Allocate never throws.
//   - Handles. 64 bits: the slot index (22 bits), the class (4), the slot's
//     version (22) and the pool's tag (16). A slot's version goes up at every
//     Free, so a handle names the slot only until it is freed. A slot whose
//     version has reached `max_version` is retired at its next Free, never
//     reused while the pool lives: versions never wrap, and a handle from
//     before can never match again. The null handle (0) is never valid.
//   - Get(h): the slot's memory in O(1) (a few compares and two loads), or
//     nullptr if h does not name a live slot of this pool: freed, reused,
//     retired, from a pool that is gone (after a reset), from another pool,
//     or forged. Get never reports.
//   - Free(h): true if h named a live slot, which is freed. A stale handle
//     (the slot was freed since: the version says so) and the null handle
//     return false. A
//     handle that this pool cannot have handed out (another pool's, one from
//     before the context's reset, an index or class out of range) is misuse,
//     reported, then false.
//   - Lifetime. The pool lives in a context: its header, class table and
//     slot blocks are that context's memory, and it registers a cleanup
//     there. Resetting or destroying the context frees every slot and the
//     pool itself (a HandlePool* must not be used afterwards, as any object
//     in the context; checking builds report it while the memory is not
//     reused). Every handle of the pool is then stale for every pool: each
//     pool takes a tag from a process-wide counter, so a pool created after
//     the reset, at the same address, refuses the old handles (until 65,535
//     more pools have been created: tags are 16 bits). `Destroy()` ends a
//     pool before its context does.
//   - ForEach(f) calls f(Handle, void* slot) for every live slot, class by
//     class in index order; f may Free the handle it is given. Slots
//     allocated during the walk may or may not be visited.
//   - Costs. Allocate, Get and Free are O(1), independent of how many slots
//     are live: a LIFO free list per class, an index into a table of slot
//     blocks. Allocate looks at most at every class once (at most 16); a
//     growth is one context allocation (and, once in a while, a doubling of
//     the class's block table).
//   - Threads: single-owner, as its context.
//   - Checking and sanitizers: free slots are poisoned (ASan, Valgrind's
//     memcheck) and, in checking builds, clobbered with kClobberByte.
//
// Example:
//
//   mcx::HandlePoolOptions o;
//   o.AddClass(64, 1024).AddClass(512, 64, /*grow=*/64);
//   mcx::HandlePool* sessions = mcx::HandlePool::Create(server_ctx, o);
//   mcx::Handle h = sessions->Allocate(sizeof(Session));
//   new (sessions->Get(h)) Session(...);
//   ...
//   Session* s = sessions->Get<Session>(h);   // nullptr once h is stale
//   sessions->Free(h);                         // s is gone; h is stale now
//   server_ctx->Reset();                       // every slot, every handle

#ifndef MCX_HANDLE_HANDLE_POOL_H_
#define MCX_HANDLE_HANDLE_POOL_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"

namespace mcx {

inline constexpr int kHandleIndexBits = 22;
inline constexpr int kHandleClassBits = 4;
inline constexpr int kHandleVersionBits = 22;
inline constexpr int kHandleTagBits = 16;
static_assert(kHandleIndexBits + kHandleClassBits + kHandleVersionBits + kHandleTagBits == 64,
              "a handle is one 64-bit word");

inline constexpr size_t kMaxHandleClasses = size_t{1} << kHandleClassBits;   // 16
inline constexpr uint32_t kMaxHandleSlots = uint32_t{1} << kHandleIndexBits;  // per class
inline constexpr uint32_t kMaxHandleVersion = (uint32_t{1} << kHandleVersionBits) - 1;

// A slot's name: 64 bits, copyable, storable anywhere. 0 is the null handle.
class Handle {
 public:
  constexpr Handle() = default;
  // For storage and bindings: a handle is its bits.
  static constexpr Handle FromBits(uint64_t bits) { return Handle(bits); }
  constexpr uint64_t bits() const { return bits_; }
  constexpr explicit operator bool() const { return bits_ != 0; }

  constexpr uint32_t index() const { return static_cast<uint32_t>(bits_ & kIndexMask); }
  constexpr uint32_t size_class() const {
    return static_cast<uint32_t>((bits_ >> kClassShift) & kClassMask);
  }
  constexpr uint32_t version() const {
    return static_cast<uint32_t>((bits_ >> kVersionShift) & kVersionMask);
  }
  constexpr uint32_t tag() const { return static_cast<uint32_t>(bits_ >> kTagShift); }

  friend constexpr bool operator==(Handle a, Handle b) { return a.bits_ == b.bits_; }
  friend constexpr bool operator!=(Handle a, Handle b) { return a.bits_ != b.bits_; }

 private:
  friend class HandlePool;
  static constexpr int kClassShift = kHandleIndexBits;
  static constexpr int kVersionShift = kClassShift + kHandleClassBits;
  static constexpr int kTagShift = kVersionShift + kHandleVersionBits;
  static constexpr uint64_t kIndexMask = (uint64_t{1} << kHandleIndexBits) - 1;
  static constexpr uint64_t kClassMask = (uint64_t{1} << kHandleClassBits) - 1;
  static constexpr uint64_t kVersionMask = (uint64_t{1} << kHandleVersionBits) - 1;

  constexpr explicit Handle(uint64_t bits) : bits_(bits) {}
  static constexpr Handle Make(uint32_t tag, uint32_t version, uint32_t cls, uint32_t index) {
    return Handle(uint64_t{tag} << kTagShift | uint64_t{version} << kVersionShift |
                  uint64_t{cls} << kClassShift | index);
  }
  uint64_t bits_ = 0;
};

// One size class: `count` slots of `slot_size` bytes made at creation;
// `grow` more (rounded up to a power of two) each time they are all taken,
// or none if 0.
struct HandleClass {
  size_t slot_size = 0;
  uint32_t count = 0;
  uint32_t grow = 0;
};

struct HandlePoolOptions {
  HandleClass classes[kMaxHandleClasses] = {};
  size_t num_classes = 0;
  // Of every slot: a power of two up to kMaxAlignment.
  size_t alignment = kDefaultAlignment;
  // When a class (and its growth) has nothing, a larger class serves.
  bool spill = true;
  // A slot retires at the Free that would take its version past this
  // (at most kMaxHandleVersion). Lower it to see retirement in a test.
  uint32_t max_version = kMaxHandleVersion;

  // Appends a class; classes go in ascending slot size.
  HandlePoolOptions& AddClass(size_t slot_size, uint32_t count, uint32_t grow = 0) {
    if (num_classes < kMaxHandleClasses) classes[num_classes] = HandleClass{slot_size, count, grow};
    ++num_classes;  // more than kMaxHandleClasses: refused by Create
    return *this;
  }
};

class HandlePool {
 public:
  struct ClassStats {
    size_t slot_size = 0;  // as configured
    size_t stride = 0;     // bytes between slots (the size, aligned)
    uint32_t slots = 0;    // made so far
    uint32_t live = 0;
    uint32_t free = 0;     // on the free list
    uint32_t retired = 0;  // versions used up
    uint32_t blocks = 0;   // slot blocks (the first and each growth)
  };
  struct Stats {
    size_t num_classes = 0;
    ClassStats classes[kMaxHandleClasses];
    uint64_t allocations = 0;
    uint64_t frees = 0;
    uint64_t spills = 0;          // allocations served by a larger class
    uint64_t failed = 0;          // Allocate calls that returned the null handle
    uint64_t stale_frees = 0;     // Free of a stale handle
    size_t bytes = 0;             // of the context's memory the pool holds
  };

  // Creates a pool in `ctx` (its memory, a cleanup on it). Invalid options
  // (no class, more than kMaxHandleClasses, slot sizes not ascending or 0,
  // more than kMaxHandleSlots slots in a class, a bad alignment or
  // max_version) are misuse: reported, then nullptr. Out of memory: Create
  // calls the context's failure handler and throws, as ctx->Alloc does;
  // TryCreate returns nullptr (ctx->last_failure() says why).
  static HandlePool* Create(Context* ctx, const HandlePoolOptions& options);
  static HandlePool* TryCreate(Context* ctx, const HandlePoolOptions& options) noexcept;

  // Ends the pool before its context's reset: its memory is freed (as
  // ctx->Free frees it), its cleanup removed, every handle stale.
  void Destroy();

  // A free slot of at least `size` bytes (contents unspecified), or the null
  // handle: last_failure() is kBadSize for a size no class holds,
  // kOutOfMemory when every class that could serve is exhausted, or the
  // context's failure (kLimit, kOutOfMemory) when growing failed.
  Handle Allocate(size_t size);
  // The slot h names, or nullptr.
  inline void* Get(Handle h) const;
  template <typename T>
  T* Get(Handle h) const {
    return static_cast<T*>(Get(h));
  }
  // Whether h names a live slot (Get(h) != nullptr).
  bool Contains(Handle h) const { return Get(h) != nullptr; }
  bool Free(Handle h);

  template <typename F>
  void ForEach(F&& f);

  Context* context() const { return ctx_; }
  size_t live() const { return live_; }
  uint32_t tag() const { return tag_; }
  Failure last_failure() const { return last_failure_; }
  Stats GetStats() const;
  // The invariants: free lists, versions, counts. Checking builds also
  // verify that free slots still hold kClobberByte.
  bool Check(std::string* error) const;

  HandlePool(const HandlePool&) = delete;
  HandlePool& operator=(const HandlePool&) = delete;

 private:
  // Per slot, beside its memory: the version, and the free-list link (or
  // kLive, kRetired).
  struct SlotMeta {
    uint32_t version;
    uint32_t next;
  };
  static constexpr uint32_t kLive = 0xFFFFFFFFu;
  static constexpr uint32_t kRetired = 0xFFFFFFFEu;
  static constexpr uint32_t kEnd = 0xFFFFFFFDu;  // end of a free list
  static constexpr uint32_t kLiveMagic = 0x68706F6Fu;  // "hpoo"
  static constexpr uint32_t kDeadMagic = 0x64656164u;  // "dead"

  // A block of slots: the metadata of `count` slots, then their memory.
  struct SlotBlock {
    SlotMeta* meta;
    char* slots;
  };
  struct Class {
    size_t slot_size;
    size_t stride;
    uint32_t first_count;  // slots of block 0
    uint32_t grow_shift;   // later blocks hold 1 << grow_shift slots; 0 and
    bool grows;            // !grows: none
    uint32_t capacity;     // slots made
    uint32_t free_head;    // kEnd if none
    uint32_t live;
    uint32_t free;
    uint32_t retired;
    uint32_t num_blocks;
    uint32_t table_size;   // entries of `blocks`
    SlotBlock* blocks;     // in the context
  };

  HandlePool() = default;
  ~HandlePool() = default;
  static HandlePool* CreateImpl(Context* ctx, const HandlePoolOptions& options, bool throws);
  static bool Validate(const HandlePoolOptions& options);
  static void OnTeardown(void* pool);
  // The slot `index` of class `c` (index < capacity).
  ABSL_ATTRIBUTE_ALWAYS_INLINE static void Locate(const Class& c, uint32_t index,
                                                  SlotMeta** meta, char** slot) {
    uint32_t block = 0, at = index;
    if (index >= c.first_count) {
      const uint32_t beyond = index - c.first_count;
      block = 1 + (beyond >> c.grow_shift);
      at = beyond & ((uint32_t{1} << c.grow_shift) - 1);
    }
    const SlotBlock& b = c.blocks[block];
    *meta = b.meta + at;
    *slot = b.slots + at * c.stride;
  }
  // `count` more slots for `c`; false (with *why) if they cannot be had.
  bool AddBlock(Class* c, uint32_t count, bool throws, Failure* why);
  static size_t BlockBytes(const Class& c, uint32_t count);
  void ReleaseMemory();
  Handle Take(uint32_t cls);
  // A pool whose context was reset (or that was destroyed) is reported.
  void CheckAlive(const char* operation) const {
    if (ABSL_PREDICT_FALSE(magic_ != kLiveMagic)) ReportDead(operation);
  }
  ABSL_ATTRIBUTE_NOINLINE void ReportDead(const char* operation) const;

  Context* ctx_ = nullptr;
  CleanupHandle cleanup_;
  uint32_t magic_ = kLiveMagic;
  uint32_t tag_ = 0;
  uint32_t num_classes_ = 0;
  uint32_t max_version_ = kMaxHandleVersion;
  size_t alignment_ = kDefaultAlignment;
  bool spill_ = true;
  Failure last_failure_ = Failure::kNone;
  size_t live_ = 0;
  size_t bytes_ = 0;
  uint64_t allocations_ = 0;
  uint64_t frees_ = 0;
  uint64_t spills_ = 0;
  uint64_t failed_ = 0;
  uint64_t stale_frees_ = 0;
  Class classes_[kMaxHandleClasses];
};

// --- Inline definitions -----------------------------------------------------

// HandlePool::Get
//
// Cost note: the tag, class and index checks are three compares on the
// handle and the pool header; then the class's block table, the slot's
// metadata word and its address. No call.
inline void* HandlePool::Get(Handle h) const {
  if (internal::kChecking) CheckAlive("Get");
  const uint32_t cls = h.size_class();
  if (ABSL_PREDICT_FALSE(h.tag() != tag_ || cls >= num_classes_)) return nullptr;
  const Class& c = classes_[cls];
  const uint32_t index = h.index();
  if (ABSL_PREDICT_FALSE(index >= c.capacity)) return nullptr;
  SlotMeta* meta;
  char* slot;
  Locate(c, index, &meta, &slot);
  if (ABSL_PREDICT_FALSE(meta->next != kLive || meta->version != h.version())) return nullptr;
  return slot;
}

template <typename F>
void HandlePool::ForEach(F&& f) {
  CheckAlive("ForEach");
  for (uint32_t cls = 0; cls < num_classes_; ++cls) {
    for (uint32_t i = 0; i < classes_[cls].capacity; ++i) {
      SlotMeta* meta;
      char* slot;
      Locate(classes_[cls], i, &meta, &slot);
      if (meta->next == kLive) f(Handle::Make(tag_, meta->version, cls, i), static_cast<void*>(slot));
    }
  }
}

}  // namespace mcx

#endif  // MCX_HANDLE_HANDLE_POOL_H_
