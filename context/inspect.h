// File: mcx/context/inspect.h
//
// What a context's memory looks like inside: its blocks, how each is split
// between headers, chunks handed out, free bump space and freelist chunks,
// and (for kinds with size classes) what sits on each freelist. For reports,
// pictures (DotReport, dot.h; examples/tour.cc) and tests; not for
// the allocation path.
//
// Contract:
//   - The tree never looks inside a kind: the kind describes itself through
//     its optional `KindMethods::inspect` method (kind.h). A kind that leaves
//     it nullptr shows no detail: `InspectContext(ctx, visitor)` returns
//     false and `ContextLayout::has_detail` is false.
//   - Inspecting changes nothing, allocates nothing inside the context, and
//     costs a walk of the blocks and freelists (the freelist kind also walks
//     every chunk of every block).
//   - Every block holds exactly its bytes: `header_bytes + used_bytes +
//     free_bytes + freelist_bytes == size`. Summed over a context's blocks,
//     `size` is `bytes_in_blocks()`, and `free_bytes + freelist_bytes` is the
//     free byte count of `GetCounters` (stats.h).
//   - Addresses are for identification: the memory of free space and free
//     chunks may be poisoned (ASan) and must not be read.
//   - The visitor protocol: `VisitBlock` for each block, the first block
//     first, then the kind's other blocks in its list order; then, for kinds
//     with size classes, for each class in increasing size `VisitSizeClass`
//     followed by one `VisitFreeChunk` per chunk on its freelist, head
//     (the chunk the next request of the class gets) first.
//   - Threads: as for every other use of the context (one thread at a time).
//
// Example:
//
//   mcx::ContextLayout layout = mcx::InspectContext(ctx);
//   for (const mcx::BlockInfo& b : layout.blocks) {
//     std::printf("%s block: %zu bytes, %zu used, %zu free%s\n", b.Name(),
//                 b.size, b.used_bytes, b.free_bytes, b.current ? " (current)" : "");
//   }

#ifndef MCX_CONTEXT_INSPECT_H_
#define MCX_CONTEXT_INSPECT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "mcx/context/config.h"  // IWYU pragma: keep (config.h: the link check)

namespace mcx {

class Context;

// What a block is for, in words every kind shares. A kind says more with
// `BlockInfo::label` and `BlockInfo::counters`: the tree and the reports
// know no kind's vocabulary.
enum class BlockRole : unsigned char {
  kFirst,     // the first block: context header, kind state and name, then chunks
  kNormal,    // a further block that chunks are carved from
  kOversize,  // one chunk in a block of its own (a request too large for blocks)
  kSpare,     // an empty block kept (by a reset) and used before new ones
  // The pool's and the freelist's words for kOversize.
  kLarge = kOversize,
  kDedicated = kOversize,
};

// "first", "normal", "oversize", "spare".
const char* BlockRoleName(BlockRole role);

// A number a kind reports about a block under a name of its own (the pool:
// "failed", nginx's count of requests that did not fit while the block was
// at or after `current`).
struct BlockCounter {
  const char* name = nullptr;  // static storage; nullptr: unused
  uint64_t value = 0;
};

inline constexpr size_t kMaxBlockCounters = 2;

// One block, as its kind describes it. Offsets count from `start`.
struct BlockInfo {
  const void* start = nullptr;  // the block's first byte
  size_t size = 0;              // bytes of the block, as accounted
  // Bytes at the start holding headers: the context header, the kind state
  // and the name in the first block; the kind's block header in the others.
  size_t header_bytes = 0;
  // Bytes of chunks handed out, with their chunk headers and alignment
  // padding, and any bytes the kind cannot use (a tail too small for a chunk).
  size_t used_bytes = 0;
  // Bump space not yet handed out: from `last_offset` to `end_offset`.
  size_t free_bytes = 0;
  size_t freelist_bytes = 0;   // bytes of free chunks on freelists, headers included
  size_t freelist_chunks = 0;  // those chunks
  // nginx's `last` and `end`: the next byte to hand out and one past the last
  // usable byte. Both are `size` for a block that holds one chunk.
  size_t last_offset = 0;
  size_t end_offset = 0;
  BlockRole role = BlockRole::kNormal;
  // The kind's own word for the block (static storage), shown by reports in
  // place of the role's name: "large" (pool), "dedicated" (freelist).
  // nullptr: the role's name.
  const char* label = nullptr;
  // The block new small requests try first: the pool's `current` (it moves
  // past blocks that keep failing), the block the freelist kind carves.
  bool current = false;
  // Numbers of the kind's own about the block, by name.
  BlockCounter counters[kMaxBlockCounters];

  // The label, or the role's name.
  const char* Name() const;
  // The value of the counter `name` (compared as strings), or 0.
  uint64_t Counter(const char* name) const;
  // Sets the counter `name` (static storage) in the first free slot, or
  // the slot that has it; false when every slot holds another name.
  bool SetCounter(const char* name, uint64_t value);
};

// One size class (freelist kind).
struct SizeClassInfo {
  size_t index = 0;        // the class number (SizeClassOf in size_class.h)
  size_t class_bytes = 0;  // usable bytes of a chunk of the class
  size_t chunk_bytes = 0;  // bytes one chunk takes in its block, header included
  size_t free_chunks = 0;  // chunks on the class's freelist
};

// Receives what a kind reports. Every method does nothing by default, so a
// visitor overrides only what it needs.
class InspectVisitor {
 public:
  virtual ~InspectVisitor();
  virtual void VisitBlock(const BlockInfo& block);
  virtual void VisitSizeClass(const SizeClassInfo& size_class);
  // `chunk` is the payload address (what Alloc returned); do not touch it.
  virtual void VisitFreeChunk(const SizeClassInfo& size_class, const void* chunk);
};

// A size class and its freelist, head first.
struct SizeClassLayout {
  SizeClassInfo info;
  std::vector<const void*> free_list;
};

// Everything InspectContext learned about one context.
struct ContextLayout {
  std::string name;
  const char* kind = "";                      // the kind's name ("pool", "freelist")
  bool has_detail = false;                    // false: the kind has no inspect method
  std::vector<BlockInfo> blocks;              // in visit order
  std::vector<SizeClassLayout> size_classes;  // empty for kinds without classes

  // Sums over `blocks`.
  size_t total_bytes() const;
  size_t free_bytes() const;  // bump space and freelist chunks, as GetCounters
  size_t freelist_chunks() const;
  // The block of `role` with index `n` among blocks of that role, or nullptr.
  const BlockInfo* FindBlock(BlockRole role, size_t n = 0) const;
  // The block holding `p`, or nullptr.
  const BlockInfo* BlockContaining(const void* p) const;
};

// InspectContext()
//
// Asks `ctx`'s kind to describe its blocks and size classes. Returns false,
// visiting nothing, if the kind has no inspect method.
bool InspectContext(const Context* ctx, InspectVisitor* visitor);

// The same, collected. Allocates (with the global operator new, never in a
// context).
ContextLayout InspectContext(const Context* ctx);

}  // namespace mcx

#endif  // MCX_CONTEXT_INSPECT_H_
