// File: mcx/context/block_source.h
//
// A `BlockSource` is where contexts get their memory from: large, aligned
// blocks that a context carves into chunks. Contexts never call the system
// allocator directly; every byte they hold came from a block source, so a
// source is the one place to count, cap, cache or fail memory.
//
// Contract:
//   - `Acquire(min_size, alignment)` returns a block of at least `min_size`
//     bytes aligned to `alignment` (a power of two, at least
//     `kMinBlockAlignment`), and says how many bytes it actually holds in
//     `Block::size`; the caller may use all of them. On failure it returns an
//     empty block (`ptr == nullptr`) and changes nothing.
//   - `Release(block)` takes back a block that `Acquire` returned: the same
//     `ptr`, and a `size` no larger than `Acquire` reported (a context may
//     decline the slack beyond what it asked for, when a limit has no room
//     for it, and then reports only the bytes it used).
//   - `Reallocate(block, keep, new_min_size, alignment)` resizes a block,
//     preserving its first `keep` bytes; it may move the block. On failure it
//     returns an empty block and the old block is untouched.
//   - `Purge(ptr, size)` says that bytes of a lent block hold nothing the
//     caller needs: the source may give their pages back to the operating
//     system, so resident memory follows what the block's owner still uses.
//     The block stays lent and every byte of it usable; purged bytes read as
//     zero or as what they held. Returns the bytes given back (0: none; the
//     default gives nothing back, which every source may do).
//   - Every method is thread-safe: one source serves contexts that live on
//     different threads. Contexts themselves are single-owner.
//
// Example:
//
//   mcx::SystemBlockSource source;
//   mcx::Block b = source.Acquire(8192, mcx::kMinBlockAlignment);
//   if (b.ptr != nullptr) source.Release(b);
//
// Contexts take their source from `ContextOptions::block_source`, else from
// their parent, else `DefaultBlockSource()`.

#ifndef MCX_CONTEXT_BLOCK_SOURCE_H_
#define MCX_CONTEXT_BLOCK_SOURCE_H_

#include <cstddef>

#include "mcx/context/config.h"  // IWYU pragma: keep (config.h: the link check)

namespace mcx {

// Every block is at least this aligned: chunks inside a block are aligned to
// `alignof(std::max_align_t)`, so the block must be too.
inline constexpr size_t kMinBlockAlignment = alignof(std::max_align_t);

// A block handed out by a `BlockSource`.
struct Block {
  void* ptr = nullptr;  // first byte; nullptr means "no block"
  size_t size = 0;      // bytes usable from `ptr`
};

class BlockSource {
 public:
  virtual ~BlockSource();

  virtual Block Acquire(size_t min_size, size_t alignment) = 0;
  virtual void Release(Block block) = 0;

  // The default acquires a new block, copies `keep` bytes and releases the old
  // one. Sources that can grow in place (realloc, mremap) override it.
  virtual Block Reallocate(Block block, size_t keep, size_t new_min_size,
                           size_t alignment);

  // Optional: gives back the whole pages of [ptr, ptr + size), which lies in
  // a block this source lent and holds nothing the caller needs. Kinds call
  // it (through PurgeBlockBytes, kind_api.h) on their slow paths for free
  // space that stays free, never per chunk. The default keeps the pages and
  // returns 0: right for a source over memory the caller owns (a static
  // region, where giving pages back could mean re-reading a file mapping).
  virtual size_t Purge(void* ptr, size_t size);
};

// The system allocator: `malloc`/`aligned_alloc`/`realloc`/`free`. Reports the
// usable size glibc actually gave (`malloc_usable_size`), so a context can use
// the slack instead of wasting it. `Purge` gives the range's whole pages back
// to the kernel (madvise; resident memory falls at once, and the pages read
// as zero when next touched). Stateless and thread-safe. In ASan and TSan
// builds a request above 1 TiB, the most their malloc serves, is refused
// without asking it (it would end the program rather than return null).
class SystemBlockSource final : public BlockSource {
 public:
  Block Acquire(size_t min_size, size_t alignment) override;
  void Release(Block block) override;
  Block Reallocate(Block block, size_t keep, size_t new_min_size,
                   size_t alignment) override;
  size_t Purge(void* ptr, size_t size) override;
};

// The source that root contexts use when none is given: the process-wide
// `DefaultBlockCache()` over the system allocator. It lives for the whole
// process (never destroyed, so contexts may be torn down from static
// destructors).
//
// The environment variable MCX_BLOCK_SOURCE=system makes it a plain
// `SystemBlockSource` instead: every block a context releases goes straight
// back to free(), so Valgrind's memcheck and AddressSanitizer see a use of a
// destroyed context's memory (the cache would keep the block, and reuse it).
// `cache` (or unset, or empty) is the default; any other value is reported
// on stderr and ignored. Read once, at the first call; later changes to the
// environment have no effect. Direct builds (MCX_DIRECT) always use the
// system source. `DefaultBlockCache()` exists either way.
BlockSource* DefaultBlockSource();

// Makes `source` what DefaultBlockSource() returns, for a program whose root
// contexts must all live in one place: a static buddy region on an embedded
// target (mcx/buddy/buddy_source.h), a test in which the system allocator
// aborts. Only before DefaultBlockSource() has decided, at its first call
// (the first root context created without a source, or any direct call):
// then true; afterwards, or for nullptr, false and nothing changes (blocks
// must go back to the source they came from). Takes precedence over
// MCX_BLOCK_SOURCE and over direct mode's system source. `source` must
// outlive every context that uses it. Thread-safe.
bool SetDefaultBlockSource(BlockSource* source);

}  // namespace mcx

#endif  // MCX_CONTEXT_BLOCK_SOURCE_H_
