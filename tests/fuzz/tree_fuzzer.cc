// libFuzzer entry point for the context-tree harness (tree_fuzz_lib.h).
//
//   bash tests/fuzz/run_fuzzer.sh 60         # build with --config=fuzz and run
//
// Built without --config=fuzz (no libFuzzer), the same binary is a plain
// replay driver: `tree_fuzzer FILE...` runs each file as one program, which
// is how a crash is reproduced under gcc or another sanitizer.

#include <cstddef>
#include <cstdint>

#include "tests/fuzz/tree_fuzz_lib.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mcx::fuzz::RunTreeProgram(data, size);
  return 0;
}

#ifndef MCX_LIBFUZZER
#include <cstdio>
#include <fstream>
#include <iterator>
#include <vector>

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::ifstream f(argv[i], std::ios::binary);
    if (!f) {
      std::fprintf(stderr, "cannot read %s\n", argv[i]);
      return 2;
    }
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    mcx::fuzz::SetTreeProgramLabel(argv[i]);
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    std::printf("ok %s (%zu bytes)\n", argv[i], bytes.size());
  }
  return 0;
}
#endif
