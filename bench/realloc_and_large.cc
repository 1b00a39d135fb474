// Two measurements of a long-lived freelist context against malloc in the
// same run (bench/README.md):
//
//   R.chain     one buffer grown from 1 byte by doubling to 1 MiB, each
//               step a Realloc to twice the size; the last byte of every
//               new size is written and the first byte checked, then the
//               buffer is freed. The context lives across chains, as a
//               long-lived heap does. Run each contender alone
//               (--benchmark_filter): malloc's time depends on the state
//               of the heap an earlier case leaves.
//   L.resident  large chunks: a live set of random 8 B .. 64 KiB chunks
//               (every byte written) churned by random allocations and
//               frees around a live target; resident bytes against live
//               bytes, sampled while it runs. Each contender runs in a
//               forked child, a process that has allocated little, so that
//               what one contender freed cannot hide another's cost.
//
// glibc is the malloc contender of `realloc_and_large`; jemalloc and
// tcmalloc replace it under LD_PRELOAD, and `realloc_and_large_mimalloc`
// links mimalloc (its malloc contender is then mimalloc).

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>

#include "benchmark/benchmark.h"
#include "bench/contenders.h"
#include "bench/live_set.h"

namespace mcx_bench {
namespace {

// --- R.chain -------------------------------------------------------------------

constexpr size_t kChainFirst = 1;
constexpr size_t kChainLast = size_t{1} << 20;  // 1 MiB

template <typename C>
void BM_ReallocChain(benchmark::State& state) {
  typename C::Arena a;
  uint64_t sum = 0, steps = 0;
  for (auto _ : state) {
    size_t n = kChainFirst;
    auto* p = static_cast<unsigned char*>(a.Alloc(n));
    p[0] = 0x5a;
    while (n < kChainLast) {
      p = static_cast<unsigned char*>(a.Realloc(p, n, 2 * n));
      n *= 2;
      p[n - 1] = static_cast<unsigned char>(n);
      sum += p[0];  // the first byte survived every move
      ++steps;
    }
    a.Free(p, n);
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(static_cast<int64_t>(steps));  // reallocations
}

// --- L.resident ----------------------------------------------------------------

constexpr uint32_t kLargeMinSize = 8;
constexpr uint32_t kLargeMaxSize = 64 << 10;  // 64 KiB
// A live target of 32 MiB at about 32 KiB a chunk: about a thousand live
// chunks, and 400,000 operations replace each of them a couple of hundred
// times, long enough for any allocator's reuse to settle.
constexpr size_t kLargeLiveTarget = size_t{32} << 20;
constexpr size_t kLargeOps = 400000;
constexpr size_t kLargeMaxLiveChunks = 1 << 16;
constexpr size_t kLargeSampleEvery = 1000;
constexpr uint64_t kLargeSeed = 0x6c61726765ULL;  // "large"

// xorshift64*: the same sequence for every contender.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t Next() {
    s_ ^= s_ >> 12;
    s_ ^= s_ << 25;
    s_ ^= s_ >> 27;
    return s_ * 0x2545F4914F6CDD1DULL;
  }
  uint32_t Uniform(uint32_t lo, uint32_t hi) {
    return lo + static_cast<uint32_t>(Next() % (hi - lo + 1));
  }

 private:
  uint64_t s_;
};

struct LargeResult {
  double seconds;
  double peak_ratio;  // peak resident / peak live
  double mean_ratio;  // mean over samples of resident / live
  double end_ratio;   // resident / live at the end
  double blocks_ratio;  // mcx: peak bytes in blocks / peak live; 0 otherwise
};

// Below the target an operation allocates with probability 3/4, above it
// it frees: the live data climbs to the target and then churns around it,
// chunks of every size replacing chunks of every other size.
template <typename C>
LargeResult MeasureLarge() {
  LiveSet set(kLargeMaxLiveChunks);
  Rng rng(kLargeSeed);
  auto* a = new typename C::Arena();
  const size_t before = ResidentBytes();
  size_t resident_peak = 0, blocks_peak = 0, resident = 0;
  double ratio_sum = 0;
  size_t samples = 0;
  const auto start = std::chrono::steady_clock::now();
  for (size_t op = 0; op < kLargeOps; ++op) {
    set.Step(a, rng, op, kLargeLiveTarget, kLargeMinSize, kLargeMaxSize);
    if ((op + 1) % kLargeSampleEvery == 0) {
      const size_t r = ResidentBytes();
      resident = r > before ? r - before : 0;
      resident_peak = std::max(resident_peak, resident);
      ratio_sum += static_cast<double>(resident) / static_cast<double>(set.live());
      ++samples;
      if constexpr (std::is_base_of_v<McxMarker, C>) {
        blocks_peak = std::max(blocks_peak, a->context()->bytes_in_blocks());
      }
    }
  }
  const size_t live = set.live(), live_peak = set.live_peak();
  LargeResult r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.peak_ratio = static_cast<double>(resident_peak) / static_cast<double>(live_peak);
  r.mean_ratio = ratio_sum / static_cast<double>(samples);
  r.end_ratio = static_cast<double>(resident) / static_cast<double>(live);
  r.blocks_ratio = static_cast<double>(blocks_peak) / static_cast<double>(live_peak);
  benchmark::DoNotOptimize(set.sum());
  set.FreeAll(a);
  delete a;
  return r;
}

// The measurement in a forked child; its result comes back through a pipe.
template <typename C>
bool LargeInChild(LargeResult* out) {
  int fds[2];
  if (pipe(fds) != 0) return false;
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    close(fds[0]);
    const LargeResult r = MeasureLarge<C>();
    const bool ok = write(fds[1], &r, sizeof r) == static_cast<ssize_t>(sizeof r);
    _exit(ok ? 0 : 1);
  }
  close(fds[1]);
  const bool got = read(fds[0], out, sizeof *out) == static_cast<ssize_t>(sizeof *out);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return got && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

template <typename C>
void BM_LargeResident(benchmark::State& state) {
  LargeResult r{};
  for (auto _ : state) {
    if (!LargeInChild<C>(&r)) {
      state.SkipWithError("the measuring child failed");
      return;
    }
    state.SetIterationTime(r.seconds);
  }
  state.counters["resident_per_live_peak"] = r.peak_ratio;
  state.counters["resident_per_live_mean"] = r.mean_ratio;
  state.counters["resident_per_live_end"] = r.end_ratio;
  if constexpr (std::is_base_of_v<McxMarker, C>) {
    state.counters["blocks_per_live_peak"] = r.blocks_ratio;
  }
  state.counters["ns_per_op"] = r.seconds * 1e9 / static_cast<double>(kLargeOps);
}

using Freelist = McxContender<FreelistTraits>;

BENCHMARK_TEMPLATE(BM_ReallocChain, Freelist)->Name("R.chain/mcx_freelist");
BENCHMARK_TEMPLATE(BM_ReallocChain, Malloc)->Name("R.chain/malloc");
BENCHMARK_TEMPLATE(BM_LargeResident, Freelist)
    ->Name("L.resident/mcx_freelist")
    ->Iterations(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_LargeResident, Malloc)
    ->Name("L.resident/malloc")
    ->Iterations(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace mcx_bench

BENCHMARK_MAIN();
