// libFuzzer target for the handle pool model (handle_pool_model.h). Built
// with --config=fuzz it links libFuzzer's main:
//   ./mcx bazel build --config=fuzz //tests/handle:handle_pool_fuzzer
//   bazel-bin/tests/handle/handle_pool_fuzzer -max_total_time=60
// Without that config it is a replay driver: handle_pool_fuzzer FILE...

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <vector>

#include "tests/handle/handle_pool_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mcx::handle_model::RunProgram(data, size);
  return 0;
}

#ifndef MCX_LIBFUZZER
int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::ifstream in(argv[i], std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "handle_pool_fuzzer: cannot read %s\n", argv[i]);
      return 2;
    }
    std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(data.data(), data.size());
    std::printf("%s: ok\n", argv[i]);
  }
  return 0;
}
#endif
