// File: mcx/freelist/freelist.h
//
// The freelist kind: PostgreSQL's AllocSet, with finer size classes. Any
// chunk can be freed or reallocated, with or without naming its context
// (`mcx::Free(p)`), because each carries an 8-byte header.
//
// Contract:
//   - Requests up to `chunk_limit` bytes are rounded up to a size class
//     (size_class.h: under 12.5% waste for every size) and served from that
//     class's LIFO freelist, else carved from the context's blocks, back to
//     back in the order asked for.
//   - Memory follows the live data: blocks are split into 4 KiB units, and
//     after a number of frees proportional to the chunks carved (a sweep),
//     units whose chunks are all free leave the freelists and go back to
//     their block, where chunks of any size are carved from them again;
//     runs of free neighbours in units with many free chunks become chunks
//     of larger classes (coalescing); a
//     block whose units are all free goes back to the block source, beyond
//     a few spare blocks (up to an eighth of the bytes in use) kept against
//     a context whose data breathes; the pages of free units in blocks
//     that stay go back to the system through the block source's Purge
//     (block_source.h), so resident memory follows the live data even
//     where a few live chunks keep a block. Sweeps that find little to
//     give back come less and less often, so steady churn barely pays.
//   - Larger requests get a dedicated block, which goes back to the block
//     source as soon as the chunk is freed (or the context reset), and is
//     resized through the source (realloc) when the chunk is reallocated.
//   - Realloc stays in place within the class, and grows or shrinks the
//     chunk carved last in place while the space after it allows, up to
//     4 KiB (beyond, it moves to a dedicated block); a growing chunk that
//     must move takes a class at least a quarter larger, a shrinking one
//     moves to a smaller class when that halves its bytes. A dedicated
//     chunk that grew by realloc grows in place while its block has room
//     (a block cache may give it a kept block with room, block_source.h),
//     and shrinks in place while it uses more than half of its block.
//   - Blocks double from `initial_block_size` up to `max_block_size`, at
//     most 64 units (about 257 KiB).
//   - Reset empties every freelist; blocks are released or kept per
//     ResetOptions (kept blocks are reused before new ones are acquired).
//   - A double free is detected in every build (the header's free bit), a
//     dedicated chunk's too: its block goes back to the source with the bit
//     set, so a second Free, Realloc or mcx::Free of it is reported while
//     that memory is not reused. Beyond any check: a block the source handed
//     to the system allocator, which unmapped it (glibc unmaps blocks above
//     its mmap threshold, 128 KiB at first), faults on the second free; an
//     address reused for a new chunk of the same context (a dedicated
//     chunk's block, or a unit given back and carved again) is that chunk
//     (as with any allocator). A dedicated chunk freed through the wrong
//     context is reported in every build; a small chunk, and a sentinel
//     overwritten, in checking builds.
//
// Example:
//
//   mcx::Context* cache = mcx::Context::Create(top, "cache", mcx::FreelistKind());
//   void* entry = cache->Alloc(72);
//   entry = mcx::Realloc(entry, 400);   // no context needed
//   mcx::Free(entry);

#ifndef MCX_FREELIST_FREELIST_H_
#define MCX_FREELIST_FREELIST_H_

#include <cstddef>

#include "mcx/context/context.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/context/kind.h"
#include "mcx/freelist/internal/freelist_block.h"
#include "mcx/freelist/size_class.h"

namespace mcx {

// The largest block of chunks: 256 KiB less glibc's 16-byte chunk header
// (64 units of 4 KiB, the last one short, and their descriptors).
inline constexpr size_t kMaxFreelistBlocksOfChunks = 262128;

struct FreelistOptions {
  // Bytes of the first block, context header included (at most
  // kMaxFreelistBlockSize; larger is refused with kBadSize). 0, the default,
  // leaves it to the tree (kind.h, kDefaultFirstBlockSize): 8 KiB for a
  // root, and for a child a small block that follows what its parent's
  // children need, up to 8 KiB.
  size_t initial_block_size = 0;
  // Later blocks double, from the first block's size (at least 1 KiB), up
  // to this. Larger values (up to kMaxFreelistBlockSize) are accepted and
  // mean kMaxFreelistBlocksOfChunks: a block goes back to the source only
  // when all its units are free, so blocks stay small.
  size_t max_block_size = kMaxFreelistBlocksOfChunks;
  // Requests above this get a dedicated block (at most kMaxSizeClassBytes).
  size_t chunk_limit = kMaxSizeClassBytes;
};

// Bytes of header before each chunk: 8; 16 in checking, ASan and Valgrind
// builds, which also record the requested size (ChunkSize then returns
// exactly it).
inline constexpr size_t kFreelistChunkHeaderBytes = freelist_internal::kChunkHeaderBytes;

// Chunk headers store a 32-bit offset to their block: the largest first
// block (initial_block_size).
inline constexpr size_t kMaxFreelistBlockSize = size_t{1} << 30;

KindSpec FreelistKind(const FreelistOptions& options);
// The default options' spec, made once: what `FreelistKind()` costs a caller
// that creates a context with it is a reference, not a copy.
const KindSpec& FreelistKind();

Context* CreateFreelistContext(Context* parent, const char* name,
                               const FreelistOptions& options = FreelistOptions(),
                               const ContextOptions& context_options = ContextOptions());

}  // namespace mcx

#endif  // MCX_FREELIST_FREELIST_H_
