// File: mcx/slab/slab.h
//
// The slab kind: PostgreSQL's Slab context (src/backend/utils/mmgr/slab.c),
// with the Linux kernel's object constructor (kmem_cache_create), for many
// objects of one size. Allocation and free are O(1) and objects carry no
// chunk header: a block is aligned to its (power-of-two) size, so an
// object's block is its address with the low bits cleared.
//
// Contract:
//   - A slab context serves objects of `object_size` bytes. A request of up
//     to `object_size` bytes (and alignment up to `alignment`) takes one
//     object; `AllocAligned` asking more, even kDefaultAlignment of a slab
//     aligned to 8, is a larger request. What a larger request gets is
//     `SlabOptions::larger`: by default it is refused (`kUnsupported`;
//     throwing calls throw std::invalid_argument), as PostgreSQL's slab.c
//     raises an ERROR for "unexpected alloc chunk size"; with
//     `SlabLarger::kDedicatedBlock` it gets a dedicated block, given back
//     when freed; such a block is aligned to `block_size` (that is how Free
//     tells it from a block of objects), so it costs at least `block_size`
//     bytes: the option is for an occasional request of another size, not
//     for mixed sizes (a freelist context serves those). Note that cleanups (AddCleanup) and `mcx::New<T>` of a
//     non-trivial T allocate records of their own size in the context: on a
//     refusing slab whose objects are smaller, register them on another
//     context.
//   - Blocks are kept on lists by their number of free objects; allocation
//     takes the fullest block that has room, so that nearly empty blocks
//     drain (slab.c's `blocklist`). A block whose last object is freed goes
//     back to the block source at once, except that up to
//     `keep_empty_blocks` empty blocks are kept for reuse.
//   - Free is O(1) with no chunk header: the block is found from the
//     address. For the same reason `mcx::Free(p)`, `mcx::Realloc(p, n)` and
//     `mcx::GetChunkContext(p)` do NOT work on slab objects: name the
//     context (`ctx->Free(p)`), as for pool chunks. Checking builds put a
//     chunk header before each object only so that such a call is reported;
//     elsewhere it reads whatever precedes the object.
//   - A double free, a pointer into the middle of an object and a pointer
//     of another context are reported as misuse in every build (a per-block
//     bitmap of live objects); a write past an object (its sentinel), and a
//     write to a freed object, in checking builds. A pointer to memory the
//     context never held may fault: its "block" is read.
//   - Free from any thread (mcx/context/remote_free.h): `ctx->Free(p)` by a
//     thread other than the context's owner (the thread that created it, or
//     the last to call `AdoptContext`) pushes the object on the context's
//     remote-free list with one atomic operation and touches nothing else
//     the owner uses; the owner takes the list back when no block has room
//     (so freed slots are reused before an empty block is taken or a block
//     is acquired), at a reset and at the destroy, each object as its own
//     free. Until then the object counts as live. A constructed object
//     keeps its state (the link lives after it). Such a free must happen
//     before the reset or destroy, as any use of an object. A double free
//     from another thread is reported in checking builds (by the header
//     word); elsewhere it corrupts the remote list, as a double free does in
//     malloc. Everything else (Alloc, Realloc, ChunkSize, Reset) stays the
//     owner's.
//   - Realloc keeps an object in place up to `object_size` bytes; larger
//     sizes follow `larger`. ChunkSize of an object is `object_size` (at
//     least 8 without a constructor: the free list's link lives in a free
//     object).
//   - With a `constructor`, each object is constructed once, when its slot is
//     first used (not at each allocation); a freed object keeps its state,
//     as the kernel's caches require, so its link lives after it. The
//     `destructor` runs on every slot ever constructed when its block goes
//     back to the source, and at reset and destroy. `live_cleanup` runs at
//     reset and destroy on each object still allocated, before any
//     destructor, in no particular order (the typed front end, typed_slab.h,
//     runs ~T there). The three must return normally and must not allocate
//     in this context; a live_cleanup may free objects of it.
//   - Reset keeps whole blocks per ResetOptions; kept blocks are emptied (no
//     object constructed) and used before new ones.
//   - Direct mode (kDirectBuild): every block holds one object, and none is
//     kept empty, so each object is a block of its own.
//   - The block source must give blocks aligned to `block_size`. The
//     default sources do; a buddy region made at run time
//     (buddy/buddy_source.h) aligns blocks only as far as its start is
//     aligned (a page, for mmap): over it, keep `block_size` at most its
//     region_alignment(), or every block of objects is refused (allocation
//     fails kOutOfMemory, the source counts Stats::refused_alignment; the
//     context itself is created, and its first block holds only its header).
//
// Example:
//
//   mcx::SlabOptions o;
//   o.object_size = sizeof(Tuple);
//   mcx::Context* tuples = mcx::CreateSlabContext(query, "tuples", o);
//   auto* t = static_cast<Tuple*>(tuples->Alloc(sizeof(Tuple)));
//   tuples->Free(t);                  // O(1); name the context (from any thread)
//   tuples->Alloc(2 * sizeof(Tuple));  // throws std::invalid_argument
//
// Typed objects: mcx::Slab<T> (typed_slab.h).

#ifndef MCX_SLAB_SLAB_H_
#define MCX_SLAB_SLAB_H_

#include <cstddef>
#include <cstdint>

#include "mcx/context/context.h"
#include "mcx/context/kind.h"

namespace mcx {

// What a request larger than the object size gets.
enum class SlabLarger : uint8_t {
  kRefuse,          // failure kUnsupported, as slab.c's ERROR (the default)
  kDedicatedBlock,  // a dedicated block, released when the chunk is freed
};

// An object constructor, destructor or cleanup: `object` is the object's
// address, `arg` is SlabOptions::arg. noexcept: it runs inside the kind.
using SlabObjectFn = void (*)(void* object, void* arg) noexcept;

struct SlabOptions {
  // Bytes of one object (1 .. kMaxSlabObjectSize).
  size_t object_size = 64;
  // Bytes of each block: a power of two from kMinSlabBlockSize to
  // kMaxSlabBlockSize that holds at least one object; 0 chooses the
  // smallest power of two of at least kDefaultSlabBlockSize that holds
  // kSlabObjectsPerDefaultBlock objects.
  size_t block_size = 0;
  // Alignment of every object: a power of two up to kMaxSlabAlignment; 1, 2
  // and 4 are taken as 8 (a free object holds an 8-byte link, as slab.c's
  // and the kernel's caches round a smaller alignment up to a word's).
  // Below kDefaultAlignment (16) objects pack tighter (24-byte nodes 24
  // bytes apart), and Alloc on this context returns only this alignment
  // (AllocAligned asking more is a larger request: see `larger`).
  uint32_t alignment = static_cast<uint32_t>(kDefaultAlignment);
  // Empty blocks kept for reuse rather than released (slab.c keeps 10 of
  // 8 KiB; one is enough to stop a block from being released and acquired
  // again at every step of a churn on its boundary).
  uint16_t keep_empty_blocks = 1;
  SlabLarger larger = SlabLarger::kRefuse;
  // kmem_cache_create's ctor and dtor, and the cleanup of live objects
  // (contract above). Each may be nullptr.
  SlabObjectFn constructor = nullptr;
  SlabObjectFn destructor = nullptr;
  SlabObjectFn live_cleanup = nullptr;
  void* arg = nullptr;
};

inline constexpr size_t kMaxSlabObjectSize = size_t{1} << 24;
inline constexpr size_t kMinSlabBlockSize = 256;
// Offsets inside a block are 32-bit; PostgreSQL's limit is the same 1 GiB.
inline constexpr size_t kMaxSlabBlockSize = size_t{1} << 30;
// Eight times slab.c's SLAB_DEFAULT_BLOCK_SIZE, because blocks are aligned to
// their size: glibc (before 2.38) serves an aligned request from its heap
// with a gap of about the alignment before it. The gap's untouched pages are
// never resident, so its cost is a page or two per block: 2x the live data
// for 8 KiB blocks, an eighth for 64 KiB ones (docs/performance.md, W12).
inline constexpr size_t kDefaultSlabBlockSize = 64 * 1024;
inline constexpr size_t kSlabObjectsPerDefaultBlock = 32;
inline constexpr size_t kMaxSlabAlignment = 4096;

// Refuses invalid options at creation (kBadArgument): a zero or too large
// object size, a block size or alignment that is not a power of two in
// range, a block that holds no object (in every build: direct builds then
// choose their own block, one object to each).
KindSpec SlabKind(const SlabOptions& options = SlabOptions());

Context* CreateSlabContext(Context* parent, const char* name,
                           const SlabOptions& options = SlabOptions(),
                           const ContextOptions& context_options = ContextOptions());

// Facts about a slab context's layout (nullptr or another kind: all zero).
struct SlabGeometry {
  size_t object_size = 0;        // usable bytes of an object (ChunkSize)
  size_t stride = 0;             // bytes from one object to the next
  size_t block_size = 0;         // bytes of a block (its alignment too)
  size_t objects_per_block = 0;
  size_t first_object_offset = 0;  // from a block's start: its header and bitmap
};
SlabGeometry GetSlabGeometry(const Context* slab);

// One object of `slab`: slab->Alloc(object_size). With a constructor, under
// Valgrind's memcheck (--config=valgrind), the object's constructed bytes
// stay defined: memcheck marks every chunk a context hands out undefined,
// which would hide the constructor's work. Elsewhere the same as Alloc.
void* SlabAllocObject(Context* slab);

}  // namespace mcx

#endif  // MCX_SLAB_SLAB_H_
