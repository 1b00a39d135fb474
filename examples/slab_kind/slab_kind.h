// File: examples/slab_kind/slab_kind.h
//
// The slab kind: a context kind for many objects of one size, written as the
// worked example of docs/adding_a_kind.md (PostgreSQL's slab.c has the same
// idea). mcx's own slab kind (mcx/slab/slab.h) goes further: no chunk
// header, a free list per block, empty blocks given back. This one is named
// "slab_example" in reports and takes chunk id 13, so both can be used in
// one program. Every block is cut into equal slots; a freed slot goes on a LIFO
// list and is the next one handed out, so a churn of one size reuses the same
// few blocks forever.
//
// Contract:
//   - Requests up to the slot size take a slot. Larger requests (and aligned
//     ones that do not fit a slot) get a dedicated block, which goes back to
//     the block source as soon as the chunk is freed: a kind must serve every
//     size, and this is the slab's answer for the ones it was not built for.
//   - Every chunk carries an 8-byte chunk header (mcx/context/chunk_header.h,
//     kind id `kChunkKindSlab`), so `mcx::Free(p)`, `mcx::Realloc(p, n)` and
//     `mcx::GetChunkContext(p)` work without naming the context.
//   - `ChunkSize(p)` of a slot is the slot's usable size (the requested slot
//     size rounded up so that header and slot fill a multiple of 16 bytes);
//     all of it may be used.
//   - Freed slots stay in their blocks until the context is reset or
//     destroyed: the slab keeps its peak, as a slab should.
//   - A double free, and a free through the wrong context, are reported as
//     misuse in every build; a freed dedicated chunk reads "freed" for as
//     long as its block's memory is not reused.
//   - Inspect (mcx/context/inspect.h) shows the blocks of slots (first,
//     normal, spare) and the dedicated blocks, and one size class: the slot,
//     with its free list.
//   - In direct mode (--config=direct) every request gets a dedicated block,
//     so that AddressSanitizer sees each chunk alone.
//
// Example:
//
//   mcx::examples::SlabOptions options;
//   options.slot_size = sizeof(Session);
//   mcx::Context* sessions =
//       mcx::Context::Create(server, "sessions", mcx::examples::SlabKind(options));
//   auto* s = static_cast<Session*>(sessions->Alloc(sizeof(Session)));
//   mcx::Free(s);   // back on the slot list; no context needed

#ifndef MCX_EXAMPLES_SLAB_KIND_SLAB_KIND_H_
#define MCX_EXAMPLES_SLAB_KIND_SLAB_KIND_H_

#include <cstddef>
#include <cstdint>

#include "mcx/context/kind.h"

namespace mcx {
namespace examples {

// [START slab_options]
struct SlabOptions {
  // Bytes a slot serves. Requests up to this take a slot; larger ones get a
  // dedicated block. Rounded up so that header + slot is a multiple of 16.
  size_t slot_size = 64;
  // Slots in every block, the first block included.
  size_t slots_per_block = 128;
};

// The largest slot: beyond it a dedicated block per chunk wastes less than
// a slot would.
inline constexpr size_t kMaxSlotSize = size_t{64} * 1024;

// Chunk headers store a 32-bit offset to their block: blocks stay below it.
inline constexpr size_t kMaxSlabBlockBytes = size_t{1} << 30;

// The chunk header id of slab chunks. Ids 9, 12 and 13 are free for new
// kinds (mcx/context/chunk_header.h); the example takes the last one. Two kinds
// in one program must not share an id: RegisterChunkKind refuses a taken
// one, and the second kind's contexts then fail to create (kBadArgument).
inline constexpr uint8_t kChunkKindSlab = 13;

KindSpec SlabKind(const SlabOptions& options = SlabOptions());
// [END slab_options]

}  // namespace examples
}  // namespace mcx

#endif  // MCX_EXAMPLES_SLAB_KIND_SLAB_KIND_H_
