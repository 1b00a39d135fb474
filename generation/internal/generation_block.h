// Internal to mcx; do not include from outside.
// IWYU pragma: private, include "mcx/generation/generation.h"
//
// Layout of the generation kind. Every block, the first one included (after
// the context header, the state and the name), starts with a
// GenerationBlock whose first word is the owning context; chunks follow back
// to back, each led by its header:
//
//   block:  | GenerationBlock | chunk | chunk | ... | free space          |
//                                                    ^ free_ptr           ^ end
//   chunk, up to 4080 bytes with its header, release builds:
//           | header word | payload |      (value field: bytes / 16)
//   larger chunks, and every chunk of checking, ASan and Valgrind builds:
//           | size word | requested size | header word | payload |   (value 0)
//
// A chunk starts 8 bytes past a multiple of 16, and its bytes (header
// included) are a multiple of 16, so every payload is 16-aligned and the
// next chunk starts where this one ends. The header word's offset leads
// back to the GenerationBlock. A freed chunk keeps its bytes (its free bit
// set) until its block empties.

#ifndef MCX_GENERATION_INTERNAL_GENERATION_BLOCK_H_
#define MCX_GENERATION_INTERNAL_GENERATION_BLOCK_H_

#include <cstddef>
#include <cstdint>

#include "mcx/context/block_list.h"
#include "mcx/context/kind_api.h"

namespace mcx {
namespace generation_internal {

struct GenerationBlock {
  KindBlock link;     // first: owner, list links (newest first), bytes acquired
  char* free_ptr;     // where the next chunk starts
  char* end;          // one past the last usable byte
  uint32_t nchunks;   // chunks carved since the block was last emptied
  uint32_t nfree;     // of those, freed
};

inline GenerationBlock* AsGenerationBlock(KindBlock* b) {
  return reinterpret_cast<GenerationBlock*>(b);
}
inline const GenerationBlock* AsGenerationBlock(const KindBlock* b) {
  return reinterpret_cast<const GenerationBlock*>(b);
}

struct GenerationState {
  GenerationBlock* first;    // the first block's header (after the name)
  GenerationBlock* current;  // the newest block: every chunk goes here
  BlockList blocks;          // blocks with chunks, newest first (current at the head)
  BlockList spare;           // empty blocks kept for reuse (the freeblock, and a reset's)
  BlockList dedicated;       // dedicated chunks' blocks, newest first
  size_t chunk_limit;        // bytes; larger requests get a dedicated block
  size_t next_block_size;    // doubles up to max_block_size
  size_t base_block_size;    // where next_block_size restarts after a reset
  size_t max_block_size;
  bool keep_free_block;
  // Bytes of live chunks (each chunk's usable bytes), as they are carved and
  // freed.
  LiveTally live;
};

}  // namespace generation_internal
}  // namespace mcx

#endif  // MCX_GENERATION_INTERNAL_GENERATION_BLOCK_H_
