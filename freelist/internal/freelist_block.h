// Internal to mcx; do not include from outside.
// IWYU pragma: private, include "mcx/freelist/freelist.h"
//
// Layout of the freelist kind. Every block, and every dedicated chunk's
// block, starts with a BlockHeader whose first word is the owning context;
// a chunk header's offset leads back to it, which is how a chunk finds its
// context without being told.
//
//   block:   | BlockHeader | hdr | payload ...   | hdr | payload ... | ... | tail |
//                            ^ 8-byte word, offset back to BlockHeader
//   freed:   | hdr (free bit set) | next free chunk of the class | stale ... |
//
// In checking builds every chunk header is 16 bytes: the requested size,
// then the header word; a sentinel byte follows the requested bytes.

#ifndef MCX_FREELIST_INTERNAL_FREELIST_BLOCK_H_
#define MCX_FREELIST_INTERNAL_FREELIST_BLOCK_H_

#include <cstddef>

#include "mcx/context/block_list.h"
#include "mcx/context/remote_free.h"
#include "mcx/freelist/size_class.h"

namespace mcx {

class Context;

namespace freelist_internal {

// A block of chunks, or a dedicated chunk's block. `link.owner` is its
// first word (block_list.h): a chunk header's offset leads here.
struct BlockHeader {
  KindBlock link;     // must stay the first field
  char* carved_end;   // chunks lie back to back from the first to here
  char* end;          // one past the last usable byte
};

inline BlockHeader* HeaderOf(KindBlock* b) { return reinterpret_cast<BlockHeader*>(b); }

struct FreelistState {
  void* freelists[kNumSizeClasses];  // payload of the newest free chunk
  BlockList blocks;     // in use, newest (the one being carved) first
  BlockList spare;      // empty blocks kept by a reset, used before new ones
  BlockList dedicated;  // dedicated chunks' blocks
  BlockHeader* first;   // the first block's header (after the context's name)
  char* free_ptr;       // next chunk start in the newest block
  char* free_end;
  size_t chunk_limit;      // bytes; larger requests get a dedicated block
  size_t next_block_size;  // doubles up to max_block_size
  size_t base_block_size;
  size_t max_block_size;
  RemoteFreeList remote;   // chunks freed by other threads (remote_free.h)
};

}  // namespace freelist_internal
}  // namespace mcx

#endif  // MCX_FREELIST_INTERNAL_FREELIST_BLOCK_H_
