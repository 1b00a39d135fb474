// A structure-aware fuzz harness for the context tree: it decodes a byte
// string into a program of operations on a tree of mcx contexts (both kinds),
// runs it against a shadow model, and aborts with a message on the first
// invariant that does not hold. The decoding and the invariants are described
// in tests/fuzz/README.md.
//
// Shared by the libFuzzer entry point (tree_fuzzer.cc) and the GoogleTest
// replay test (tree_fuzz_test.cc), which runs the checked-in corpus plus
// pseudo-random programs in every ordinary build configuration.

#ifndef MCX_TESTS_FUZZ_TREE_FUZZ_LIB_H_
#define MCX_TESTS_FUZZ_TREE_FUZZ_LIB_H_

#include <cstddef>
#include <cstdint>

namespace mcx {
namespace fuzz {

// Runs one program. Returns normally if every invariant held; otherwise
// prints "mcx tree fuzz: VIOLATION ..." to stderr and aborts.
void RunTreeProgram(const uint8_t* data, size_t size);

// A label (e.g. a corpus file name) printed with any violation report.
// `label` must outlive the next RunTreeProgram call; nullptr clears it.
void SetTreeProgramLabel(const char* label);

}  // namespace fuzz
}  // namespace mcx

#endif  // MCX_TESTS_FUZZ_TREE_FUZZ_LIB_H_
