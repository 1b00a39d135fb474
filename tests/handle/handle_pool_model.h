// A handle pool against a model: any byte string is decoded into a pool
// configuration and a program of operations (allocate, free of live, stale
// and pre-reset handles, get, reset and destroy of the owner, ForEach,
// checks), run on a real HandlePool and on a model that predicts every
// handle exactly (class, index, version: the free lists are LIFO). The first
// difference aborts with "handle pool model: VIOLATION at op N (name): ...".
//
// Two drivers: handle_pool_model_test (seeded programs, every build) and
// handle_pool_fuzzer (libFuzzer with --config=fuzz; else a replay driver).

#ifndef MCX_TESTS_HANDLE_HANDLE_POOL_MODEL_H_
#define MCX_TESTS_HANDLE_HANDLE_POOL_MODEL_H_

#include <cstddef>
#include <cstdint>

namespace mcx {
namespace handle_model {

struct Summary {
  uint64_t ops = 0;
  uint64_t allocations = 0;
  uint64_t failed_allocations = 0;
  uint64_t frees = 0;
  uint64_t stale_frees = 0;
  uint64_t stale_gets = 0;       // Get of a handle known stale: nullptr
  uint64_t pre_reset_gets = 0;   // Get of a handle of a pool that is gone
  uint64_t resets = 0;
  uint64_t retired = 0;
};

// Runs the program `data` encodes; returns what it did (aborts on a
// violation).
Summary RunProgram(const uint8_t* data, size_t size);

}  // namespace handle_model
}  // namespace mcx

#endif  // MCX_TESTS_HANDLE_HANDLE_POOL_MODEL_H_
