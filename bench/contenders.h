// File: bench/contenders.h
//
// The allocators the workloads (workloads.cc, ../shared workloads W1-W7 as
// described in bench/README.md) run against, behind one static interface so
// that every contender executes the same workload code:
//
//   struct Contender {
//     static constexpr const char* kName;
//     static constexpr bool kFreesEach;   // malloc-style: the workload frees
//                                         // every chunk; nothing is freed in bulk
//     static constexpr bool kCanFree;     // frees single chunks for reuse (W3)
//     static constexpr bool kCanRealloc;  // W7
//     static constexpr bool kHasTree;     // hierarchical (W4)
//     static constexpr bool kHasScope;    // a scope per request (W2, W6)
//     class Arena {                       // a long-lived allocator (W1, W3, W5, W7)
//       void* Alloc(size_t n);
//       void Free(void* p, size_t n);            // if kCanFree
//       void* Realloc(void* p, size_t old_n, size_t n);  // if kCanRealloc
//       void Release();                     // drop everything, keep the arena
//       size_t Usable(const void* p, size_t n);  // usable bytes of a chunk
//     };
//     class Parent;                        // long-lived parent of scopes
//     class Scope { explicit Scope(Parent&); void* Alloc(size_t n); };
//     struct Tree { using Node; Node Root(); Node Child(Node); void* Alloc(Node, size_t);
//                   void Destroy(Node root); };           // if kHasTree
//         (the root of each tree is a child of a long-lived parent, as a
//         server's per-connection tree is: the parent's allocator persists)
//   };
//
// Sizes passed to Free and Realloc are the requested sizes (pmr needs them).
// Alignment is the platform's `alignof(std::max_align_t)` (16) everywhere
// except APR, whose pools align to 8.

#ifndef MCX_BENCH_CONTENDERS_H_
#define MCX_BENCH_CONTENDERS_H_

#include <malloc.h>

#include <cstddef>
#include <cstdlib>
#include <memory_resource>
#include <new>

#include "bench/bump_arena.h"
#include "mcx/buddy/buddy_source.h"
#include "mcx/context/caching_block_source.h"
#include "mcx/context/context.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"

#ifdef MCX_BENCH_MIMALLOC
#include <mimalloc.h>
#else
#include <apr_general.h>
#include <apr_pools.h>
#include <talloc.h>
#endif

namespace mcx_bench {

inline constexpr size_t kAlign = alignof(std::max_align_t);

inline size_t RoundUp(size_t n, size_t a) { return (n + a - 1) & ~(a - 1); }

[[noreturn]] inline void OutOfMemory() { throw std::bad_alloc(); }

// Checks a peer's result: a benchmark that ran out of memory is void.
inline void* Checked(void* p) {
  if (p == nullptr) OutOfMemory();
  return p;
}

struct NoParent {};

// --- malloc/free: glibc in the main binary; jemalloc and tcmalloc through
// LD_PRELOAD; mimalloc in workloads_mimalloc, which links it. ---------------
struct Malloc {
  static constexpr const char* kName = "malloc";
  static constexpr bool kFreesEach = true;
  static constexpr bool kCanFree = true;
  static constexpr bool kCanRealloc = true;
  static constexpr bool kHasTree = true;
  static constexpr bool kHasScope = true;

  class Arena {
   public:
    void* Alloc(size_t n) { return Checked(std::malloc(n)); }
    void Free(void* p, size_t) { std::free(p); }
    void* Realloc(void* p, size_t, size_t n) { return Checked(std::realloc(p, n)); }
    void Release() {}
    size_t Usable(const void* p, size_t) {
      return malloc_usable_size(const_cast<void*>(p));
    }
  };
  using Parent = NoParent;
  class Scope {
   public:
    explicit Scope(Parent&) {}
    void* Alloc(size_t n) { return Checked(std::malloc(n)); }
  };
  struct Tree {
    using Node = int;  // no nodes: the workload frees each chunk
    Node Root() { return 0; }
    Node Child(Node) { return 0; }
    void* Alloc(Node, size_t n) { return Checked(std::malloc(n)); }
    void Destroy(Node) {}
  };
};

// --- mcx ------------------------------------------------------------------
struct McxMarker {};

template <typename KindTraits>
struct McxContender : McxMarker {
  static constexpr const char* kName = KindTraits::kName;
  static constexpr bool kFreesEach = false;
  static constexpr bool kCanFree = KindTraits::kCanFree;
  static constexpr bool kCanRealloc = KindTraits::kCanFree;
  static constexpr bool kHasTree = true;
  static constexpr bool kHasScope = true;

  class Arena {
   public:
    Arena() : ctx_(mcx::Context::Create(nullptr, "arena", KindTraits::Kind())) {}
    ~Arena() { ctx_->Destroy(); }
    void* Alloc(size_t n) { return ctx_->Alloc(n); }
    void Free(void* p, size_t) { ctx_->Free(p); }
    void* Realloc(void* p, size_t, size_t n) { return ctx_->Realloc(p, n); }
    void Release() { ctx_->Reset(); }
    size_t Usable(const void* p, size_t n) {
      size_t s = ctx_->ChunkSize(p);
      return s == mcx::kUnknownSize ? RoundUp(n, KindTraits::kChunkAlign) : s;
    }
    mcx::Context* context() { return ctx_; }

   private:
    mcx::Context* ctx_;
  };
  class Parent {
   public:
    Parent() : ctx_(mcx::Context::Create(nullptr, "parent", KindTraits::Kind())) {}
    ~Parent() { ctx_->Destroy(); }
    mcx::Context* ctx_;
  };
  class Scope {
   public:
    explicit Scope(Parent& parent)
        : ctx_(parent.ctx_->CreateChild("request", KindTraits::Kind())) {}
    ~Scope() { ctx_->Destroy(); }
    void* Alloc(size_t n) { return ctx_->Alloc(n); }

   private:
    mcx::Context* ctx_;
  };
  struct Tree {
    using Node = mcx::Context*;
    Parent parent;
    Node Root() { return parent.ctx_->CreateChild("root", KindTraits::Kind()); }
    Node Child(Node parent) { return parent->CreateChild("node", KindTraits::Kind()); }
    void* Alloc(Node n, size_t size) { return n->Alloc(size); }
    void Destroy(Node root) { root->Destroy(); }
  };
};

// Kind() hands out the spec a program keeps (a reference, as PoolKind()
// does), not a copy per context: a copy of the 72-byte spec at each
// creation is the harness's cost, which no peer's creation pays.
struct PoolTraits {
  static constexpr const char* kName = "mcx_pool";
  static constexpr bool kCanFree = false;
  static constexpr size_t kChunkAlign = kAlign;
  static const mcx::KindSpec& Kind() { return mcx::PoolKind(); }
};
struct FreelistTraits {
  static constexpr const char* kName = "mcx_freelist";
  static constexpr bool kCanFree = true;
  static constexpr size_t kChunkAlign = kAlign;
  static const mcx::KindSpec& Kind() { return mcx::FreelistKind(); }
};
// The pool packed to 8 bytes (PoolOptions::chunk_alignment), as APR, nginx
// and PostgreSQL align: W5's memory at odd sizes.
struct Pool8Traits {
  static constexpr const char* kName = "mcx_pool8";
  static constexpr bool kCanFree = false;
  static constexpr size_t kChunkAlign = 8;
  static const mcx::KindSpec& Kind() {
    static const mcx::KindSpec spec = [] {
      mcx::PoolOptions o;
      o.chunk_alignment = 8;
      return mcx::PoolKind(o);
    }();
    return spec;
  }
};
using McxPool = McxContender<PoolTraits>;
using McxPool8 = McxContender<Pool8Traits>;
using McxFreelist = McxContender<FreelistTraits>;

// --- mcx pool contexts on a buddy region (W2, W6 only) ------------------------
// The same contexts as McxPool, every block from one 64 MiB buddy region
// (buddy/buddy_source.h) instead of the default block cache: what confining
// an engine to a region of its own costs per request.
inline mcx::BlockSource* BuddyRegion() {
  alignas(1 << 20) static unsigned char region[64 << 20];
  static mcx::BuddyBlockSource source(region, sizeof region, [] {
    mcx::BuddyOptions o;
    o.min_block = 4096;
    o.max_block = 1 << 20;
    return o;
  }());
  return &source;
}

struct McxPoolBuddy : McxMarker {
  static constexpr const char* kName = "mcx_pool_buddy";
  static constexpr bool kFreesEach = false;
  static constexpr bool kCanFree = false;
  static constexpr bool kCanRealloc = false;
  static constexpr bool kHasTree = false;
  static constexpr bool kHasScope = true;

  class Parent {
   public:
    Parent()
        : ctx_(mcx::Context::Create(nullptr, "parent", mcx::PoolKind(),
                                    mcx::ContextOptions{BuddyRegion()})) {}
    ~Parent() { ctx_->Destroy(); }
    mcx::Context* ctx_;
  };
  class Scope {
   public:
    explicit Scope(Parent& parent) : ctx_(parent.ctx_->CreateChild("request", mcx::PoolKind())) {}
    ~Scope() { ctx_->Destroy(); }
    void* Alloc(size_t n) { return ctx_->Alloc(n); }

   private:
    mcx::Context* ctx_;
  };
};

// --- The 30-line pointer-bump arena (bump_arena.h) --------------------------
struct Bump {
  static constexpr const char* kName = "bump";
  static constexpr bool kFreesEach = false;
  static constexpr bool kCanFree = false;
  static constexpr bool kCanRealloc = false;
  static constexpr bool kHasTree = false;
  static constexpr bool kHasScope = true;

  class Arena {
   public:
    void* Alloc(size_t n) { return a_.Alloc(n); }
    void Release() { a_.Reset(); }
    size_t Usable(const void*, size_t n) { return RoundUp(n, BumpArena::kAlign); }

   private:
    BumpArena a_;
  };
  using Parent = NoParent;
  class Scope {
   public:
    explicit Scope(Parent&) {}
    void* Alloc(size_t n) { return a_.Alloc(n); }

   private:
    BumpArena a_;
  };
  struct Tree {};
};

// --- std::pmr (libstdc++) ---------------------------------------------------
template <typename Resource, bool kPool>
struct Pmr {
  static constexpr const char* kName =
      kPool ? "pmr_pool" : "pmr_monotonic";
  static constexpr bool kFreesEach = false;
  static constexpr bool kCanFree = kPool;
  static constexpr bool kCanRealloc = false;
  static constexpr bool kHasTree = false;
  static constexpr bool kHasScope = true;

  class Arena {
   public:
    void* Alloc(size_t n) { return r_.allocate(n, kAlign); }
    void Free(void* p, size_t n) { r_.deallocate(p, n, kAlign); }
    void Release() { r_.release(); }
    // The pool resource packs small blocks tighter than the alignment asked
    // for (24-byte blocks 24 bytes apart): claim only the request.
    size_t Usable(const void*, size_t n) { return kPool ? n : RoundUp(n, kAlign); }

   private:
    Resource r_;
  };
  using Parent = NoParent;
  class Scope {
   public:
    explicit Scope(Parent&) {}
    void* Alloc(size_t n) { return r_.allocate(n, kAlign); }

   private:
    Resource r_;
  };
  struct Tree {};
};
using PmrMonotonic = Pmr<std::pmr::monotonic_buffer_resource, false>;
using PmrPool = Pmr<std::pmr::unsynchronized_pool_resource, true>;

#ifdef MCX_BENCH_MIMALLOC
// --- mimalloc's heap-local API: a heap is an arena that can also free -------
struct MiHeap {
  static constexpr const char* kName = "mi_heap";
  static constexpr bool kFreesEach = false;
  static constexpr bool kCanFree = true;
  static constexpr bool kCanRealloc = true;
  static constexpr bool kHasTree = false;
  static constexpr bool kHasScope = true;

  class Arena {
   public:
    Arena() : h_(mi_heap_new()) {}
    ~Arena() { mi_heap_destroy(h_); }
    void* Alloc(size_t n) { return Checked(mi_heap_malloc(h_, n)); }
    void Free(void* p, size_t) { mi_free(p); }
    void* Realloc(void* p, size_t, size_t n) { return Checked(mi_heap_realloc(h_, p, n)); }
    // A heap has no reset: destroying it frees every chunk at once.
    void Release() {
      mi_heap_destroy(h_);
      h_ = mi_heap_new();
    }
    size_t Usable(const void* p, size_t) { return mi_usable_size(p); }

   private:
    mi_heap_t* h_;
  };
  using Parent = NoParent;
  class Scope {
   public:
    explicit Scope(Parent&) : h_(mi_heap_new()) {}
    ~Scope() { mi_heap_destroy(h_); }
    void* Alloc(size_t n) { return Checked(mi_heap_malloc(h_, n)); }

   private:
    mi_heap_t* h_;
  };
  struct Tree {};
};
#else
// --- talloc -----------------------------------------------------------------
// talloc_pool's size, chosen as a program sizing its pools would: for a
// scope, room for a typical W2 request (about 110 chunks of 264 bytes on
// average); for a long-lived arena, room for a W1 round (about 1.3 MB).
inline constexpr size_t kTallocScopePoolBytes = 32 << 10;
inline constexpr size_t kTallocArenaPoolBytes = 2 << 20;

template <bool kUsePool>
struct Talloc {
  static constexpr const char* kName = kUsePool ? "talloc_pool" : "talloc";
  static constexpr bool kFreesEach = false;
  static constexpr bool kCanFree = !kUsePool;
  static constexpr bool kCanRealloc = !kUsePool;
  static constexpr bool kHasTree = !kUsePool;
  static constexpr bool kHasScope = true;

  static void* New(const void* parent, size_t pool_bytes) {
    return Checked(kUsePool ? talloc_pool(parent, pool_bytes) : talloc_new(parent));
  }

  class Arena {
   public:
    Arena() : ctx_(New(nullptr, kTallocArenaPoolBytes)) {}
    ~Arena() { talloc_free(ctx_); }
    void* Alloc(size_t n) { return Checked(talloc_size(ctx_, n)); }
    void Free(void* p, size_t) { talloc_free(p); }
    void* Realloc(void* p, size_t, size_t n) {
      return Checked(talloc_realloc_size(ctx_, p, n));
    }
    void Release() { talloc_free_children(ctx_); }
    size_t Usable(const void*, size_t n) { return RoundUp(n, kAlign); }

   private:
    void* ctx_;
  };
  class Parent {
   public:
    Parent() : ctx_(Checked(talloc_new(nullptr))) {}
    ~Parent() { talloc_free(ctx_); }
    void* ctx_;
  };
  class Scope {
   public:
    explicit Scope(Parent& parent) : ctx_(New(parent.ctx_, kTallocScopePoolBytes)) {}
    ~Scope() { talloc_free(ctx_); }
    void* Alloc(size_t n) { return Checked(talloc_size(ctx_, n)); }

   private:
    void* ctx_;
  };
  struct Tree {
    using Node = void*;
    Parent parent;
    Node Root() { return Checked(talloc_new(parent.ctx_)); }
    Node Child(Node parent) { return Checked(talloc_new(parent)); }
    void* Alloc(Node n, size_t size) { return Checked(talloc_size(n, size)); }
    void Destroy(Node root) { talloc_free(root); }
  };
};
using TallocPlain = Talloc<false>;
using TallocPool = Talloc<true>;

// --- APR pools: each arena or parent owns its allocator, as a server thread
// does, so that no mutex is involved. ----------------------------------------
struct Apr {
  static constexpr const char* kName = "apr";
  static constexpr bool kFreesEach = false;
  static constexpr bool kCanFree = false;
  static constexpr bool kCanRealloc = false;
  static constexpr bool kHasTree = true;
  static constexpr bool kHasScope = true;
  static constexpr size_t kAprAlign = 8;  // APR_ALIGN_DEFAULT

  static apr_pool_t* NewRoot() {
    static const bool initialized = apr_initialize() == APR_SUCCESS;
    if (!initialized) OutOfMemory();
    apr_allocator_t* allocator = nullptr;
    apr_pool_t* pool = nullptr;
    if (apr_allocator_create(&allocator) != APR_SUCCESS) OutOfMemory();
    if (apr_pool_create_ex(&pool, nullptr, nullptr, allocator) != APR_SUCCESS) {
      OutOfMemory();
    }
    apr_allocator_owner_set(allocator, pool);
    return pool;
  }
  static apr_pool_t* NewChild(apr_pool_t* parent) {
    apr_pool_t* pool = nullptr;
    if (apr_pool_create(&pool, parent) != APR_SUCCESS) OutOfMemory();
    return pool;
  }

  class Arena {
   public:
    Arena() : pool_(NewRoot()) {}
    ~Arena() { apr_pool_destroy(pool_); }
    void* Alloc(size_t n) { return Checked(apr_palloc(pool_, n)); }
    void Release() { apr_pool_clear(pool_); }
    size_t Usable(const void*, size_t n) { return RoundUp(n, kAprAlign); }

   private:
    apr_pool_t* pool_;
  };
  class Parent {
   public:
    Parent() : pool_(NewRoot()) {}
    ~Parent() { apr_pool_destroy(pool_); }
    apr_pool_t* pool_;
  };
  class Scope {
   public:
    explicit Scope(Parent& parent) : pool_(NewChild(parent.pool_)) {}
    ~Scope() { apr_pool_destroy(pool_); }
    void* Alloc(size_t n) { return Checked(apr_palloc(pool_, n)); }

   private:
    apr_pool_t* pool_;
  };
  struct Tree {
    using Node = apr_pool_t*;
    Parent parent;
    Node Root() { return NewChild(parent.pool_); }
    Node Child(Node parent) { return NewChild(parent); }
    void* Alloc(Node n, size_t size) { return Checked(apr_palloc(n, size)); }
    void Destroy(Node root) { apr_pool_destroy(root); }
  };
};
#endif  // MCX_BENCH_MIMALLOC

}  // namespace mcx_bench

#endif  // MCX_BENCH_CONTENDERS_H_
