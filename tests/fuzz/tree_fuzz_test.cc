// Replays the fuzz harness (tree_fuzz_lib.h) inside the ordinary test suite,
// so every build configuration (default, asan, ubsan, checking) runs it: every
// file of the checked-in corpus, then pseudo-random programs from a fixed
// seed. A violation aborts with a message naming the input.

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/fuzz/tree_fuzz_lib.h"

namespace mcx {
namespace fuzz {
namespace {

std::string CorpusDir() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  std::string base = srcdir != nullptr ? srcdir : ".";
  return base + "/" + (workspace != nullptr ? workspace : "mcx") + "/tests/fuzz/corpus";
}

TEST(TreeFuzzTest, CorpusFilesPass) {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(CorpusDir())) {
    files.push_back(entry.path().string());
  }
  ASSERT_GE(files.size(), 20u) << "corpus missing under " << CorpusDir();
  for (const std::string& path : files) {
    std::ifstream f(path, std::ios::binary);
    ASSERT_TRUE(f) << path;
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    SetTreeProgramLabel(path.c_str());
    RunTreeProgram(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  }
  SetTreeProgramLabel(nullptr);
}

TEST(TreeFuzzTest, RandomProgramsPass) {
  std::mt19937 rng(20261122);
  constexpr int kPrograms = 3000;
  std::vector<uint8_t> bytes;
  std::string label;
  for (int i = 0; i < kPrograms; ++i) {
    bytes.resize(16 + rng() % 1024);
    for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
    label = "random program " + std::to_string(i) + " (seed 20261122)";
    SetTreeProgramLabel(label.c_str());
    RunTreeProgram(bytes.data(), bytes.size());
  }
  SetTreeProgramLabel(nullptr);
}

TEST(TreeFuzzTest, EdgeInputsPass) {
  RunTreeProgram(nullptr, 0);
  for (int b = 0; b < 256; ++b) {
    std::vector<uint8_t> same(64, static_cast<uint8_t>(b));
    RunTreeProgram(same.data(), same.size());
  }
}

}  // namespace
}  // namespace fuzz
}  // namespace mcx
