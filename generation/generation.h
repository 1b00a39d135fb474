// File: mcx/generation/generation.h
//
// The generation kind: PostgreSQL's Generation context
// (src/backend/utils/mmgr/generation.c), for data that dies roughly in the
// order it was born: queues, change buffers, tuples that are built,
// processed and thrown away. Chunks are bumped out of the newest block and
// never reused one by one; each block counts its live chunks, and a block
// whose count drops to zero is reused or released whole.
//
// Contract:
//   - Every chunk carries an 8-byte chunk header (chunk_header.h, kind id
//     kChunkKindGeneration), so it can be freed one by one, and
//     `mcx::Free(p)`, `mcx::Realloc(p, n)`, `mcx::GetChunkContext(p)` work
//     without naming the context. (Chunks above 4 KiB, and every chunk of
//     checking, ASan and Valgrind builds, have 24 bytes before them: their
//     size, the requested size and the header word; checking builds add
//     16, for the allocation site that LiveChunksReport and leak reports
//     show, live_chunks.h.)
//   - Allocation always goes to the newest ("current") block; when it is
//     full, the next block is an empty one kept for reuse, or a new block
//     (blocks double from the first block's size up to `max_block_size`).
//     Requests above `chunk_limit` get a dedicated block, released when the
//     chunk is freed.
//   - Free marks the chunk free and counts it in its block. A block whose
//     chunks are all free is emptied for reuse if it is the current block
//     or the first block; else it becomes the one empty block kept for
//     reuse (generation.c's `freeblock`, when `keep_free_block`), or goes
//     back to the block source. Freed chunks in a block that still has live
//     chunks are dead space until that block empties: a long-lived chunk
//     pins its whole block.
//   - Realloc stays in place while the new size fits the chunk (its size
//     rounded up so that header and chunk fill a multiple of 16 bytes);
//     otherwise the chunk moves.
//   - A double free is detected in every build (the header's free bit), a
//     dedicated chunk's too while its memory is not reused; a free through
//     the wrong context and an overwritten sentinel in checking builds.
//   - Reset empties the first block and keeps whole blocks per
//     ResetOptions (kept blocks are used before new ones).
//   - Direct mode (kDirectBuild): every chunk gets a dedicated block.
//
// Example:
//
//   mcx::Context* changes = mcx::CreateGenerationContext(txn, "changes");
//   Change* c = static_cast<Change*>(changes->Alloc(sizeof(Change) + len));
//   queue.push_back(c);
//   ...
//   mcx::Free(queue.front());   // the oldest first: its block empties and is reused
//   queue.pop_front();

#ifndef MCX_GENERATION_GENERATION_H_
#define MCX_GENERATION_GENERATION_H_

#include <cstddef>

#include "mcx/context/context.h"
#include "mcx/context/kind.h"

namespace mcx {

struct GenerationOptions {
  // Bytes of the first block, context header included. 0 leaves it to the
  // tree, as for the other kinds (kind.h): kDefaultFirstBlockSize for a
  // root, and for a child a small block that follows what its parent's
  // children need, up to 8 KiB.
  size_t initial_block_size = 0;
  // Later blocks double, from the first block's size (at least 1 KiB), up
  // to this (at most kMaxGenerationBlockSize).
  size_t max_block_size = 1024 * 1024;
  // Requests above this get a dedicated block; 0: an eighth of
  // max_block_size (generation.c's Generation_CHUNK_FRACTION), so a block
  // always holds several chunks.
  size_t chunk_limit = 0;
  // Keep one emptied block for reuse instead of releasing it (generation.c's
  // `freeblock`): a queue then cycles through its blocks without a call to
  // the block source at each block.
  bool keep_free_block = true;
};

// Chunk headers store a 32-bit offset to their block.
inline constexpr size_t kMaxGenerationBlockSize = size_t{1} << 30;

// Refuses (kBadArgument) a max_block_size above kMaxGenerationBlockSize or
// a chunk_limit larger than max_block_size can hold; an initial_block_size
// above it is a first block no source gives (kBadSize, as for every kind:
// docs/reliability.md).
KindSpec GenerationKind(const GenerationOptions& options = GenerationOptions());

Context* CreateGenerationContext(Context* parent, const char* name,
                                 const GenerationOptions& options = GenerationOptions(),
                                 const ContextOptions& context_options = ContextOptions());

}  // namespace mcx

#endif  // MCX_GENERATION_GENERATION_H_
