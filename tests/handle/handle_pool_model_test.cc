// The handle pool against its model (handle_pool_model.h): pseudo-random
// programs from fixed seeds, and a few written by hand, every one checked
// operation by operation.

#include "tests/handle/handle_pool_model.h"

#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mcx {
namespace handle_model {
namespace {

std::vector<uint8_t> RandomProgram(uint32_t seed, size_t bytes) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> data(bytes);
  for (uint8_t& b : data) b = static_cast<uint8_t>(rng());
  return data;
}

// 2,000 programs of up to 400 operations: every stale-handle case comes up
// many times over (the totals say so).
TEST(HandlePoolModelTest, SeededPrograms) {
  Summary total;
  for (uint32_t seed = 1; seed <= 2000; ++seed) {
    std::vector<uint8_t> data = RandomProgram(seed, 64 + seed % 800);
    Summary s = RunProgram(data.data(), data.size());
    total.ops += s.ops;
    total.allocations += s.allocations;
    total.failed_allocations += s.failed_allocations;
    total.frees += s.frees;
    total.stale_frees += s.stale_frees;
    total.stale_gets += s.stale_gets;
    total.pre_reset_gets += s.pre_reset_gets;
    total.resets += s.resets;
    total.retired += s.retired;
  }
  EXPECT_GT(total.allocations, 10000u);
  EXPECT_GT(total.failed_allocations, 1000u);
  EXPECT_GT(total.stale_frees, 1000u);
  EXPECT_GT(total.stale_gets, 1000u);
  EXPECT_GT(total.pre_reset_gets, 1000u);
  EXPECT_GT(total.resets, 1000u);
  EXPECT_GT(total.retired, 1000u);
  std::printf("ops %llu, allocations %llu (%llu failed), frees %llu, stale frees %llu, "
              "stale gets %llu, pre-reset gets %llu, resets %llu, retired %llu\n",
              static_cast<unsigned long long>(total.ops),
              static_cast<unsigned long long>(total.allocations),
              static_cast<unsigned long long>(total.failed_allocations),
              static_cast<unsigned long long>(total.frees),
              static_cast<unsigned long long>(total.stale_frees),
              static_cast<unsigned long long>(total.stale_gets),
              static_cast<unsigned long long>(total.pre_reset_gets),
              static_cast<unsigned long long>(total.resets),
              static_cast<unsigned long long>(total.retired));
}

// Edge inputs: empty, one byte, all zeros, all ones.
TEST(HandlePoolModelTest, EdgeInputs) {
  RunProgram(nullptr, 0);
  const uint8_t one = 7;
  RunProgram(&one, 1);
  std::vector<uint8_t> zeros(1000, 0), ones(1000, 0xFF);
  RunProgram(zeros.data(), zeros.size());
  RunProgram(ones.data(), ones.size());
}

}  // namespace
}  // namespace handle_model
}  // namespace mcx
