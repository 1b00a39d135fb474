// File: mcx/testing/inspect_check.h
//
// The invariants of inspect.h, as one check that any kind's description of
// a context must pass. The conformance suite runs it after a churn of every
// size and both resets (kind_conformance.h); a kind's own tests can call it
// at any point.
//
// Example:
//
//   EXPECT_TRUE(mcx::test::ExpectInspectAddsUp(ctx)) << "MyKind has an inspect method";

#ifndef MCX_TESTING_INSPECT_CHECK_H_
#define MCX_TESTING_INSPECT_CHECK_H_

#include "mcx/context/context.h"

namespace mcx {
namespace test {

// ExpectInspectAddsUp()
//
// For a kind with an inspect method, checks with GoogleTest assertions what
// inspect.h promises of any kind's description of a context:
//   - every block holds exactly its bytes: header + used + free + freelist
//     bytes == size, with free bytes from last_offset to end_offset <= size;
//   - the blocks listed are the blocks the context holds (num_blocks()), the
//     first block first and only once, at the context, of
//     first_block_size() bytes; no two blocks overlap;
//   - summed, the sizes are bytes_in_blocks(), and free + freelist bytes are
//     the free bytes of GetCounters (stats.h);
//   - for a kind with size classes, each class's freelist has free_chunks
//     chunks, all inside the context's blocks, and the classes hold as many
//     free chunks as the blocks and GetCounters say.
// Returns false, checking nothing, if the kind has no inspect method.
bool ExpectInspectAddsUp(const Context* ctx);

}  // namespace test
}  // namespace mcx

#endif  // MCX_TESTING_INSPECT_CHECK_H_
