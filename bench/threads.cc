// File: bench/threads.cc
//
// W9 and W10 (bench/README.md): allocation across threads, for every peer in
// one Google Benchmark program. The same source builds two binaries, as
// workloads.cc does: `threads` (glibc malloc, protobuf's Arena and the mcx
// contenders; jemalloc and tcmalloc run its malloc contender through
// LD_PRELOAD) and `threads_mimalloc` (linked with mimalloc, whose malloc
// contender is then mimalloc).
//
//   W9   T = 1, 2, 4 threads each allocate kW9PerThread chunks of 8..512
//        bytes (sizes from one seeded generator, each chunk written at both
//        ends), then everything goes at once: one destroy of the shared
//        context or protobuf Arena; for malloc, each thread frees its own
//        chunks; for one mcx pool context per thread, each thread destroys
//        its own. Time per allocation, real time of the whole round.
//   W10  a producer thread allocates kW10Chunks chunks of 16..256 bytes and
//        hands them through a single-producer single-consumer ring to a
//        consumer thread, which frees them: malloc's free from another
//        thread against a freelist context's remote free (remote_free.h).
//        Time per chunk.
//
// Why the design is what it is:
//   - Worker threads live for the whole benchmark and meet at a barrier
//     around each round, so that thread creation is not measured; the
//     benchmark's own thread times the round (manual time).
//   - The W10 ring is lock-free and bounded, so the consumer frees while
//     the producer allocates (the case remote free exists for) and the
//     producer's in-flight memory is bounded.
//
// Callgrind mode (bench/threads_callgrind.sh): `threads --callgrind=W9/NAME/T`
// or `--callgrind=W10/NAME` runs one round to warm up, then one round with
// collection on (valgrind --tool=callgrind --collect-atstart=no) in every
// thread around its own part only (collection is per thread), and prints
// {"ops": N}: the instructions of all threads per allocation, no clock.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "benchmark/benchmark.h"
#include "mcx/context/caching_block_source.h"
#include "mcx/context/context.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/shared/shared.h"

#ifndef MCX_BENCH_MIMALLOC
#include "google/protobuf/arena.h"
#endif

#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#define MCX_BENCH_CALLGRIND_TOGGLE() CALLGRIND_TOGGLE_COLLECT
#else
#define MCX_BENCH_CALLGRIND_TOGGLE() ((void)0)
#endif

namespace mcx_bench {
namespace {

constexpr uint32_t kSeed = 20261206;
constexpr size_t kW9PerThread = 100000;
constexpr int kW9MaxThreads = 4;
constexpr size_t kW10Chunks = 1000000;
// A power of two: the ring's index wraps with a mask.
constexpr size_t kW10Ring = 1024;

// Set by the callgrind mode for its measured round: each thread turns
// collection on around its own part.
std::atomic<bool> measuring{false};

// Turns this thread's collection on (or off again) in the measured round.
inline void Toggle() {
  if (measuring.load(std::memory_order_relaxed)) MCX_BENCH_CALLGRIND_TOGGLE();
}

std::vector<uint32_t> Sizes(size_t n, uint32_t lo, uint32_t hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<uint32_t> dist(lo, hi);
  std::vector<uint32_t> v(n);
  for (auto& s : v) s = dist(rng);
  return v;
}

inline void Touch(void* p, size_t size) {
  auto* c = static_cast<unsigned char*>(p);
  c[0] = static_cast<unsigned char>(size);
  c[size - 1] = static_cast<unsigned char>(size >> 1);
  benchmark::DoNotOptimize(p);
}

// A barrier for a fixed set of threads, reusable.
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t gen = generation_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return gen != generation_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const int n_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
};

// T workers that run `round(thread_index)` once per Run(), between barriers.
class Crew {
 public:
  Crew(int threads, std::function<void(int)> round)
      : round_(std::move(round)), start_(threads + 1), end_(threads + 1) {
    for (int t = 0; t < threads; ++t) {
      workers_.emplace_back([this, t] {
        for (;;) {
          start_.Wait();
          if (stop_) return;
          Toggle();
          round_(t);
          Toggle();
          end_.Wait();
        }
      });
    }
  }
  ~Crew() {
    stop_ = true;
    start_.Wait();
    for (std::thread& w : workers_) w.join();
  }
  void Run() {
    start_.Wait();
    end_.Wait();
  }

 private:
  std::function<void(int)> round_;
  Barrier start_;
  Barrier end_;
  bool stop_ = false;  // written before the barrier the workers pass
  std::vector<std::thread> workers_;
};

const std::vector<uint32_t>& W9Sizes(int t) {
  static const std::vector<std::vector<uint32_t>>* all = [] {
    auto* v = new std::vector<std::vector<uint32_t>>;
    for (int i = 0; i < kW9MaxThreads; ++i) v->push_back(Sizes(kW9PerThread, 8, 512, kSeed + i));
    return v;
  }();
  return (*all)[t];
}

// --- W9 contenders: Begin (the benchmark thread), Work (each worker), End.

struct Malloc {
  static constexpr const char* kName = "malloc";
  std::vector<std::vector<void*>> ptrs{kW9MaxThreads, std::vector<void*>(kW9PerThread)};
  void Begin() {}
  void Work(int t) {
    const auto& sizes = W9Sizes(t);
    auto& mine = ptrs[t];
    for (size_t i = 0; i < sizes.size(); ++i) {
      mine[i] = std::malloc(sizes[i]);
      Touch(mine[i], sizes[i]);
    }
    for (void* p : mine) std::free(p);  // malloc has no "all at once"
  }
  void End() {}
};

struct McxShared {
  static constexpr const char* kName = "mcx_shared";
  mcx::Context* ctx = nullptr;
  void Begin() { ctx = mcx::Context::Create(nullptr, "w9", mcx::SharedKind()); }
  void Work(int t) {
    mcx::Context* shared = ctx;  // in a register, as the pool contender's context
    for (uint32_t size : W9Sizes(t)) Touch(mcx::SharedAlloc(shared, size), size);
  }
  void End() { ctx->Destroy(); }
};

struct McxPoolPerThread {
  static constexpr const char* kName = "mcx_pool_per_thread";
  void Begin() {}
  void Work(int t) {
    mcx::Context* ctx = mcx::Context::Create(nullptr, "w9", mcx::PoolKind());
    for (uint32_t size : W9Sizes(t)) Touch(ctx->Alloc(size), size);
    ctx->Destroy();
  }
  void End() {}
};

#ifndef MCX_BENCH_MIMALLOC
struct ProtobufArena {
  static constexpr const char* kName = "protobuf_arena";
  google::protobuf::Arena* arena = nullptr;
  void Begin() { arena = new google::protobuf::Arena(); }
  void Work(int t) {
    for (uint32_t size : W9Sizes(t)) {
      Touch(google::protobuf::Arena::CreateArray<char>(arena, size), size);
    }
  }
  void End() { delete arena; }
};
#endif

template <typename C>
void BM_W9(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  C c;
  Crew crew(threads, [&c](int t) { c.Work(t); });
  for (auto _ : state) {
    auto start = std::chrono::steady_clock::now();
    c.Begin();
    crew.Run();
    c.End();
    auto end = std::chrono::steady_clock::now();
    state.SetIterationTime(std::chrono::duration<double>(end - start).count());
  }
  state.counters["ns_per_alloc"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * threads * kW9PerThread,
      benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// --- W10 -----------------------------------------------------------------------

const std::vector<uint32_t>& W10Sizes() {
  static const auto* v = new std::vector<uint32_t>(Sizes(kW10Chunks, 16, 256, kSeed + 10));
  return *v;
}

// Single producer, single consumer.
class Ring {
 public:
  void Push(void* p) {
    const size_t tail = tail_.load(std::memory_order_relaxed);
    while (tail - head_.load(std::memory_order_acquire) == kW10Ring) std::this_thread::yield();
    slots_[tail & (kW10Ring - 1)] = p;
    tail_.store(tail + 1, std::memory_order_release);
  }
  void* Pop() {
    const size_t head = head_.load(std::memory_order_relaxed);
    while (tail_.load(std::memory_order_acquire) == head) std::this_thread::yield();
    void* p = slots_[head & (kW10Ring - 1)];
    head_.store(head + 1, std::memory_order_release);
    return p;
  }

 private:
  alignas(64) std::atomic<size_t> head_{0};
  alignas(64) std::atomic<size_t> tail_{0};
  alignas(64) void* slots_[kW10Ring];
};

struct W10Malloc {
  static constexpr const char* kName = "malloc";
  void Begin() {}
  void* Alloc(size_t n) { return std::malloc(n); }
  static void Free(void* p) { std::free(p); }
  void End() {}
};

struct W10McxFreelist {
  static constexpr const char* kName = "mcx_freelist";
  mcx::Context* ctx = nullptr;
  void Begin() { ctx = mcx::Context::Create(nullptr, "w10", mcx::FreelistKind()); }
  void* Alloc(size_t n) { return ctx->Alloc(n); }
  static void Free(void* p) { mcx::Free(p); }  // no context: the remote list
  void End() { ctx->Destroy(); }
};

// One W10 round: the producer is the calling thread.
template <typename C>
void W10Round(C& c) {
  const auto& sizes = W10Sizes();
  Ring ring;
  Toggle();
  c.Begin();  // on the producer thread: it owns the context
  std::thread consumer([&ring, n = sizes.size()] {
    Toggle();
    for (size_t i = 0; i < n; ++i) C::Free(ring.Pop());
    Toggle();
  });
  for (uint32_t size : sizes) {
    void* p = c.Alloc(size);
    Touch(p, size);
    ring.Push(p);
  }
  consumer.join();
  c.End();
  Toggle();
}

template <typename C>
void BM_W10(benchmark::State& state) {
  C c;
  const auto& sizes = W10Sizes();
  for (auto _ : state) {
    auto start = std::chrono::steady_clock::now();
    W10Round(c);
    auto end = std::chrono::steady_clock::now();
    state.SetIterationTime(std::chrono::duration<double>(end - start).count());
  }
  state.counters["ns_per_chunk"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * sizes.size(),
      benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

template <typename C>
void RegisterW9() {
  benchmark::RegisterBenchmark((std::string("W9/") + C::kName).c_str(), BM_W9<C>)
      ->Arg(1)
      ->Arg(2)
      ->Arg(4)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
}

template <typename C>
void RegisterW10() {
  benchmark::RegisterBenchmark((std::string("W10/") + C::kName).c_str(), BM_W10<C>)
      ->UseManualTime()
      ->Iterations(10)  // 10 x 10^6 chunks
      ->Unit(benchmark::kMillisecond);
}

// The callgrind mode's rounds (the header comment).
template <typename C>
int CallgrindW9(int threads) {
  C c;
  Crew crew(threads, [&c](int t) { c.Work(t); });
  for (int round = 0; round < 2; ++round) {
    measuring.store(round == 1, std::memory_order_relaxed);  // before the barrier
    Toggle();
    c.Begin();
    Toggle();
    crew.Run();
    Toggle();
    c.End();
    Toggle();
  }
  measuring.store(false, std::memory_order_relaxed);
  std::printf("{\"ops\": %zu}\n", static_cast<size_t>(threads) * kW9PerThread);
  return 0;
}

template <typename C>
int CallgrindW10() {
  C c;
  W10Round(c);
  measuring.store(true, std::memory_order_relaxed);
  W10Round(c);
  measuring.store(false, std::memory_order_relaxed);
  std::printf("{\"ops\": %zu}\n", kW10Chunks);
  return 0;
}

int Callgrind(const std::string& spec) {
  const int threads = std::atoi(spec.substr(spec.rfind('/') + 1).c_str());
  auto is = [&](const char* prefix) { return spec.rfind(prefix, 0) == 0; };
  if (is("W9/malloc/")) return CallgrindW9<Malloc>(threads);
  if (spec == "W10/malloc") return CallgrindW10<W10Malloc>();
#ifndef MCX_BENCH_MIMALLOC
  if (is("W9/mcx_shared/")) return CallgrindW9<McxShared>(threads);
  if (is("W9/mcx_pool_per_thread/")) return CallgrindW9<McxPoolPerThread>(threads);
  if (is("W9/protobuf_arena/")) return CallgrindW9<ProtobufArena>(threads);
  if (spec == "W10/mcx_freelist") return CallgrindW10<W10McxFreelist>();
#endif
  std::fprintf(stderr, "threads: no such case: %s\n", spec.c_str());
  return 2;
}

// --block_cache_mib=N sets the default block cache's cap, and
// --block_cache_learn_mib=N how far it may learn above it (0: a fixed cap):
// W9 on four threads holds more than the default cap (docs/performance.md).
constexpr char kCacheFlag[] = "--block_cache_mib=";
constexpr char kLearnFlag[] = "--block_cache_learn_mib=";
constexpr int kMiBShift = 20;

int Main(int argc, char** argv) {
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--callgrind=", 12) == 0) return Callgrind(argv[i] + 12);
    if (std::strncmp(argv[i], kCacheFlag, sizeof kCacheFlag - 1) == 0) {
      const size_t mib = std::strtoull(argv[i] + sizeof kCacheFlag - 1, nullptr, 10);
      mcx::DefaultBlockCache()->SetMaxCachedBytes(mib << kMiBShift);
      continue;
    }
    if (std::strncmp(argv[i], kLearnFlag, sizeof kLearnFlag - 1) == 0) {
      const size_t mib = std::strtoull(argv[i] + sizeof kLearnFlag - 1, nullptr, 10);
      mcx::DefaultBlockCache()->SetMaxLearnedBytes(mib << kMiBShift);
      continue;
    }
    argv[kept++] = argv[i];
  }
  argc = kept;
  RegisterW9<Malloc>();
  RegisterW10<W10Malloc>();
#ifndef MCX_BENCH_MIMALLOC
  RegisterW9<McxShared>();
  RegisterW9<McxPoolPerThread>();
  RegisterW9<ProtobufArena>();
  RegisterW10<W10McxFreelist>();
#endif
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace
}  // namespace mcx_bench

int main(int argc, char** argv) { return mcx_bench::Main(argc, argv); }
