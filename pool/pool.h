// File: mcx/pool/pool.h
//
// The pool kind: nginx's ngx_pool_t. Small requests are bumped out of linked
// blocks with no per-chunk header; requests above `max_small` get a block of
// their own on the large list; a `current` block skips blocks that keep
// failing. The fastest kind, for request- and query-scoped data that dies
// all at once.
//
// Contract:
//   - Small chunks (size <= max_small) cannot be freed one by one: `Free` on
//     them is a documented no-op; Reset/Destroy releases them. With
//     `rewind_on_free`, each block counts its live small chunks and rewinds
//     when the count drops to zero (see PoolOptions).
//   - Large chunks are freed one by one (`Free`, like ngx_pfree), which
//     releases their block at once. Each large chunk's block starts with a
//     64-byte header (its list links, block, sizes, an allocation serial and
//     a check word) right before the chunk, so the block is the chunk plus
//     64 bytes (for AllocAligned above 64: plus `alignment` bytes); nothing
//     is kept in the pool's small memory. Free, Realloc and ChunkSize read the 64 bytes
//     before the pointer and find a large chunk's header there in O(1),
//     however many large chunks came and went; a pointer whose header does
//     not validate is a small chunk. A large chunk freed twice, or
//     reallocated after its free, is reported in every build while its
//     memory is not reused (the check word says "freed"; telling it from a
//     small chunk that reused the memory costs a walk of the pool's blocks,
//     on that path only). An address reused for a new large chunk of the
//     same pool is that chunk.
//   - `Realloc(p, old_size, new_size)` grows in place when p is the last
//     chunk bumped (in the block of the latest small allocation), shrinks any
//     small chunk in place, and copies otherwise. `old_size` must be the
//     size the chunk was allocated or last resized with (checking builds
//     report a larger one). The unsized `Realloc(p, n)` works for large
//     chunks only (kUnsupported otherwise; in direct builds every chunk is
//     large, docs/reliability.md, "Direct mode"). A chunk that moves gets a plain
//     chunk's alignment (the default, or 8 for an odd size in a pool that
//     packs: chunk_alignment): the pool records no per-chunk alignment, so a
//     chunk from `AllocAligned` that must keep a larger one is allocated
//     anew and copied by the caller (the freelist kind keeps it).
//   - `mcx::Free(p)` without a context does not work on pool chunks: they
//     have no header. Name the context.
//   - Savepoints (Context::Mark, RewindTo) are supported, except with
//     `rewind_on_free` (kUnsupported). A mark seals the pool at its newest
//     block holding chunks (the room left in older blocks is given up
//     until the next reset, also once the mark is dropped); a rewind takes
//     time in proportion to the blocks from that block on and the large
//     chunks since, never to the small chunks.
//
// Example:
//
//   mcx::PoolOptions options;
//   options.max_small = 2048;
//   mcx::Context* req = mcx::Context::Create(server, "request", mcx::PoolKind(options));
//   char* line = static_cast<char*>(req->AllocBytes(len));   // ngx_pnalloc
//   Header* h = static_cast<Header*>(req->AllocZero(sizeof(Header)));
//   req->Destroy();
//
//   // Without a tree (nginx style):
//   mcx::Pool pool;                      // a root pool context, owned
//   void* p = pool.Alloc(64);

#ifndef MCX_POOL_POOL_H_
#define MCX_POOL_POOL_H_

#include <cstddef>

#include "mcx/context/context.h"
#include "mcx/context/kind.h"

namespace mcx {

struct PoolOptions {
  // Bytes of the first block, context header included (at least the header
  // and 256 bytes). 0, the default, leaves it to the tree (kind.h,
  // kDefaultFirstBlockSize): 8 KiB for a root, and for a child a small
  // block that follows what its parent's children need, up to 8 KiB.
  size_t initial_block_size = 0;
  // Later blocks double from the first block's size up to this. Equal to
  // initial_block_size, every block has one size, as in nginx.
  size_t max_block_size = 1024 * 1024;
  // nginx's `max`: larger requests go to the large list.
  size_t max_small = 4096;
  // Count live small chunks per block and rewind a block's bump pointer when
  // its count drops to zero, so that freed small chunks are reused. Blocks
  // then all have one power-of-two size (initial_block_size rounded up) and
  // are aligned to it, which finds a chunk's block in O(1) without a header
  // (with initial_block_size 0, 8 KiB).
  // The inline bump fast path is off in this mode.
  bool rewind_on_free = false;
  // Alignment of small chunks whose size is not a multiple of
  // kDefaultAlignment: 0 (the default) or kDefaultAlignment keeps every
  // chunk aligned to kDefaultAlignment; 8 packs them as APR, nginx and
  // PostgreSQL do (24-byte chunks take 24 bytes, not 32). An object of such
  // a size never needs more than 8: its alignment divides its size. Chunks
  // whose size is a multiple of kDefaultAlignment keep it, and
  // `AllocAligned(n, kDefaultAlignment)` of an odd size gets it (through
  // the path for alignments above the default, which pads). The inline
  // bump fast path is off with 8 (every allocation calls the kind).
  size_t chunk_alignment = 0;
};

KindSpec PoolKind(const PoolOptions& options);
// The default options' spec, made once: what `PoolKind()` costs a caller
// that creates a context with it is a reference, not a copy.
const KindSpec& PoolKind();

// Creates a pool context: the same as Context::Create with PoolKind(options).
Context* CreatePoolContext(Context* parent, const char* name,
                           const PoolOptions& options = PoolOptions(),
                           const ContextOptions& context_options = ContextOptions());

// A root pool context owned by a C++ object, for code that wants nginx's pool
// without a tree. Destroying the Pool destroys the context.
class Pool {
 public:
  explicit Pool(const PoolOptions& options = PoolOptions(),
                const ContextOptions& context_options = ContextOptions(),
                const char* name = "pool");
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  void* Alloc(size_t size) { return ctx_->Alloc(size); }            // ngx_palloc
  void* AllocBytes(size_t size) { return ctx_->AllocBytes(size); }  // ngx_pnalloc
  void* AllocZero(size_t size) { return ctx_->AllocZero(size); }    // ngx_pcalloc
  void* AllocAligned(size_t size, size_t alignment) {               // ngx_pmemalign
    return ctx_->AllocAligned(size, alignment);
  }
  void Free(void* p) { ctx_->Free(p); }                             // ngx_pfree
  CleanupHandle AddCleanup(CleanupFn fn, void* arg) {               // ngx_pool_cleanup_add
    return ctx_->AddCleanup(fn, arg);
  }
  void Reset(const ResetOptions& options = ResetOptions()) { ctx_->Reset(options); }

  Context* context() const { return ctx_; }

 private:
  Context* ctx_;
};

}  // namespace mcx

#endif  // MCX_POOL_POOL_H_
