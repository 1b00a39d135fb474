// File: bench/workloads.cc
//
// The benchmark workloads W1-W8 and W11 (bench/README.md) and the scaling curves, for
// every contender of contenders.h, in one Google Benchmark program. The same
// source builds two binaries: `workloads` (glibc malloc and every non-malloc
// peer; jemalloc and tcmalloc run its malloc contender through LD_PRELOAD)
// and `workloads_mimalloc` (links mimalloc, so its malloc contender is
// mimalloc, plus mimalloc's heap-local mi_heap API).
//
// Besides the benchmarks, two modes serve bench/run.py:
//   --memory             W5: for each contender and size, a forked child
//                        allocates ~64 MiB in chunks and reports resident
//                        bytes per requested byte and bytes of header per
//                        chunk, one JSON object per line; and W11's resident
//                        bytes per context for the hierarchical contenders,
//                        and W8 (long-lived heap: resident bytes sampled
//                        over 10^7 operations) for the contenders that free.
//   --memory=W8          W8 alone.
//   --memory=W8:C        W8 for contender C alone (e.g. mcx_freelist).
//   --memory-w12-w13     W12's and W13's memory (bench/fixed_and_fifo.h).
//   --callgrind=W:C      runs workload W (W1.rand, W1.32B, W2, W3, W4, W11;
//                        W12.*, W13) for contender C (mcx_pool_buddy: W2
//                        only) with Callgrind collection switched on only
//                        around the measured rounds, and prints the number
//                        of operations (run it under
//                        `valgrind --tool=callgrind --collect-atstart=no`).
//
// Why the design is what it is:
//   - Sizes, request shapes and churn indices come from one seeded generator
//     (kSeed) and are generated before any timing, identical for everyone.
//   - Every chunk is written at both ends and the pointer escapes
//     (benchmark::DoNotOptimize), so no allocation can be optimised away,
//     and a checksum of what was written is kept.
//   - Malloc-style contenders free every chunk; arena-style contenders drop
//     everything at once (reset, clear, release, destroy): that difference is
//     the point of the comparison.
//   - CPU time per operation is reported for one thread (less disturbed by
//     other load on a shared machine); W6 uses real time, as throughput of
//     two threads must.

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <type_traits>
#include <vector>

#include "benchmark/benchmark.h"
#include "bench/contenders.h"
#include "bench/live_set.h"
#include "mcx/generation/generation.h"  // W12, W13 (fixed_and_fifo.h)
#include "mcx/slab/slab.h"

#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#define MCX_BENCH_CALLGRIND_TOGGLE() CALLGRIND_TOGGLE_COLLECT
#else
#define MCX_BENCH_CALLGRIND_TOGGLE() ((void)0)
#endif

namespace mcx_bench {
namespace {

// One seed for every generated input: every contender sees the same sizes.
constexpr uint64_t kSeed = 20261122;

// W1: allocations per round (about 1.3 MB for random 8..256 B).
constexpr size_t kW1Allocs = 10000;
constexpr uint32_t kW1MinSize = 8, kW1MaxSize = 256, kW1FixedSize = 32;
// W1 at large cycles: rounds of about 8, 64 and 256 MiB of random 8..256 B
// chunks, where what a block cache keeps between rounds decides whether
// every block is faulted in again (measured for the pool and APR).
constexpr size_t kW1AverageSize = (kW1MinSize + kW1MaxSize) / 2;
constexpr size_t kW1CycleMiB[] = {8, 64, 256};
// W2: small allocations per request, their sizes, and one large allocation
// in one request of kW2LargeEvery.
constexpr uint32_t kW2MinAllocs = 20, kW2MaxAllocs = 200;
constexpr uint32_t kW2MinSize = 16, kW2MaxSize = 512;
constexpr uint32_t kW2MinLarge = 8 << 10, kW2MaxLarge = 64 << 10;
constexpr uint32_t kW2LargeEvery = 8;
constexpr size_t kW2Requests = 1024;  // distinct request shapes, cycled
// W3: live chunks, sizes, and churn steps per benchmark iteration.
constexpr size_t kW3WorkingSet = 10000;
constexpr uint32_t kW3MinSize = 8, kW3MaxSize = 1024;
constexpr size_t kW3Steps = 1000;
constexpr size_t kW3Stream = size_t{1} << 20;  // pre-generated steps, cycled
// W4: tree shape and allocations per context.
constexpr int kW4Depth = 4, kW4Fanout = 8, kW4AllocsPerContext = 4;
// Rounds before the one the callgrind mode counts.
constexpr int kCallgrindW4WarmRounds = 3;
constexpr uint32_t kW4MinSize = 16, kW4MaxSize = 128;
// W11: contexts under one parent, each with one allocation of these sizes.
constexpr size_t kW11Contexts = 1000000;
constexpr uint32_t kW11MinSize = 16, kW11MaxSize = 64;
// W5: bytes requested per measurement, and the fixed sizes measured.
constexpr size_t kW5RequestedBytes = size_t{64} << 20;
constexpr uint32_t kW5Sizes[] = {24, 100};
// W8: a long-lived heap. kW8Ops operations in kW8Phases phases of equal
// length; each phase has its own size range (kW8Phases below) and a target
// of live bytes: the peak, or a tenth of it, alternately, so the live data
// grows, shrinks to a tenth and grows again with other sizes. Resident
// bytes are sampled every kW8SampleEvery operations.
constexpr size_t kW8Ops = 10000000;
constexpr size_t kW8PeakLive = size_t{64} << 20;
constexpr size_t kW8ShrinkDivisor = 10;
constexpr size_t kW8SampleEvery = 100000;
// Live chunks the bookkeeping holds at most: the peak in 8-byte chunks
// never happens (the smallest range starts at 8, averages far more).
constexpr size_t kW8MaxLiveChunks = size_t{4} << 20;
struct W8Phase {
  uint32_t min_size, max_size;
  bool grow;  // toward the peak, else toward a tenth of it
};
constexpr W8Phase kW8PhaseList[] = {
    {8, 256, true},   {8, 4096, false}, {1024, 4096, true},
    {8, 512, false},  {64, 2048, true}, {256, 4096, false},
};
constexpr size_t kW8Phases = sizeof(kW8PhaseList) / sizeof(kW8PhaseList[0]);
// W7: buffers grown at once, from kW7Start by half again plus kW7Step until
// above kW7Max, then freed.
constexpr size_t kW7Buffers = 256;
constexpr size_t kW7Start = 16, kW7Step = 16, kW7Max = 16 << 10;

// A small deterministic generator (splitmix64): identical streams on every
// platform and standard library, unlike std::uniform_int_distribution.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  uint32_t Uniform(uint32_t lo, uint32_t hi) {
    return lo + static_cast<uint32_t>(Next() % (uint64_t{hi} - lo + 1));
  }

 private:
  uint64_t s_;
};

std::vector<uint32_t> Sizes(size_t n, uint32_t lo, uint32_t hi, uint64_t salt) {
  Rng rng(kSeed ^ salt);
  std::vector<uint32_t> v(n);
  for (auto& s : v) s = rng.Uniform(lo, hi);
  return v;
}

struct Request {
  uint32_t first;  // index into Inputs::w2_sizes
  uint32_t count;  // allocations, the large one included
};

struct Inputs {
  std::vector<uint32_t> w1_rand = Sizes(kW1Allocs, kW1MinSize, kW1MaxSize, 1);
  std::vector<uint32_t> w1_fixed = std::vector<uint32_t>(kW1Allocs, kW1FixedSize);
  std::vector<uint32_t> w2_sizes;
  std::vector<Request> w2_requests;
  size_t w2_max_count = 0;
  std::vector<uint32_t> w3_sizes = Sizes(kW3Stream, kW3MinSize, kW3MaxSize, 3);
  std::vector<uint32_t> w3_index = Sizes(kW3Stream, 0, 0xffffffffu, 4);
  std::vector<uint32_t> w4_sizes = Sizes(1 << 16, kW4MinSize, kW4MaxSize, 5);
  std::vector<uint32_t> w11_sizes = Sizes(1 << 16, kW11MinSize, kW11MaxSize, 11);

  Inputs() {
    Rng rng(kSeed ^ 2);
    for (size_t r = 0; r < kW2Requests; ++r) {
      Request req{static_cast<uint32_t>(w2_sizes.size()),
                  rng.Uniform(kW2MinAllocs, kW2MaxAllocs)};
      for (uint32_t i = 0; i < req.count; ++i) {
        w2_sizes.push_back(rng.Uniform(kW2MinSize, kW2MaxSize));
      }
      if (rng.Uniform(1, kW2LargeEvery) == 1) {
        // The large one goes somewhere in the middle, as a buffer would.
        w2_sizes.insert(w2_sizes.begin() + req.first + req.count / 2,
                        rng.Uniform(kW2MinLarge, kW2MaxLarge));
        ++req.count;
      }
      w2_max_count = std::max<size_t>(w2_max_count, req.count);
      w2_requests.push_back(req);
    }
  }
};

const Inputs& In() {
  static const Inputs* inputs = new Inputs();
  return *inputs;
}

// Writes the first and last 8 bytes of a chunk (n >= 8) and returns what a
// read of the first word gives back.
inline uint64_t Touch(void* p, size_t n, uint64_t v) {
  char* c = static_cast<char*>(p);
  std::memcpy(c, &v, sizeof v);
  std::memcpy(c + n - sizeof v, &v, sizeof v);
  benchmark::DoNotOptimize(p);
  uint64_t back;
  std::memcpy(&back, c, sizeof back);
  return back;
}

// --- Workload bodies, shared by the benchmarks and the callgrind mode -------

// W1: one round of N allocations, then everything released at once.
template <typename C>
size_t W1Round(typename C::Arena& a, const std::vector<uint32_t>& sizes,
               void** ptrs, uint64_t& sum) {
  const size_t n = sizes.size();
  for (size_t i = 0; i < n; ++i) {
    void* p = a.Alloc(sizes[i]);
    sum += Touch(p, sizes[i], i);
    if constexpr (C::kFreesEach) ptrs[i] = p;
  }
  if constexpr (C::kFreesEach) {
    for (size_t i = 0; i < n; ++i) a.Free(ptrs[i], sizes[i]);
  }
  a.Release();
  return n;
}

// W2: one request: a scope, its allocations, the end of the scope.
template <typename C>
void W2Request(typename C::Parent& parent, const Request& r, void** ptrs,
               uint64_t& sum) {
  const uint32_t* sizes = In().w2_sizes.data() + r.first;
  typename C::Scope scope(parent);
  for (uint32_t i = 0; i < r.count; ++i) {
    void* p = scope.Alloc(sizes[i]);
    sum += Touch(p, sizes[i], i);
    if constexpr (C::kFreesEach) ptrs[i] = p;
  }
  if constexpr (C::kFreesEach) {
    for (uint32_t i = 0; i < r.count; ++i) std::free(ptrs[i]);
  }
}

// W3: a working set of live chunks; each step frees one at random and
// allocates a new one in its place.
template <typename C>
class W3State {
 public:
  W3State(typename C::Arena& a, size_t working_set)
      : a_(a), live_(working_set), size_(working_set) {
    for (size_t i = 0; i < working_set; ++i) {
      size_[i] = In().w3_sizes[(kW3Stream - 1 - i) % kW3Stream];
      live_[i] = a_.Alloc(size_[i]);
      Touch(live_[i], size_[i], i);
    }
  }
  ~W3State() {
    for (size_t i = 0; i < live_.size(); ++i) a_.Free(live_[i], size_[i]);
    a_.Release();
  }
  size_t Steps(size_t steps, uint64_t& sum) {
    const uint32_t* sizes = In().w3_sizes.data();
    const uint32_t* index = In().w3_index.data();
    const size_t ws = live_.size();
    for (size_t k = 0; k < steps; ++k) {
      size_t idx = index[pos_] % ws;
      a_.Free(live_[idx], size_[idx]);
      uint32_t n = sizes[pos_];
      live_[idx] = a_.Alloc(n);
      size_[idx] = n;
      sum += Touch(live_[idx], n, k);
      pos_ = (pos_ + 1) & (kW3Stream - 1);
    }
    return steps;
  }

 private:
  typename C::Arena& a_;
  std::vector<void*> live_;
  std::vector<uint32_t> size_;
  size_t pos_ = 0;
};

// W4: a tree of contexts, a few allocations in each, then the root destroyed.
template <typename C>
class W4Builder {
 public:
  using Tree = typename C::Tree;
  using Node = typename Tree::Node;

  // Builds, destroys, returns the number of contexts.
  size_t Round(int depth, uint64_t& sum) {
    contexts_ = 0;
    nptrs_ = 0;
    Node root = tree_.Root();
    Build(root, depth, sum);
    tree_.Destroy(root);
    if constexpr (C::kFreesEach) {
      for (size_t i = 0; i < nptrs_; ++i) std::free(ptrs_[i]);
    }
    return contexts_;
  }

 private:
  void Build(Node n, int depth, uint64_t& sum) {
    ++contexts_;
    const std::vector<uint32_t>& sizes = In().w4_sizes;
    for (int i = 0; i < kW4AllocsPerContext; ++i) {
      uint32_t s = sizes[size_pos_++ & (sizes.size() - 1)];
      void* p = tree_.Alloc(n, s);
      sum += Touch(p, s, i);
      if constexpr (C::kFreesEach) {
        if (nptrs_ == ptrs_.size()) ptrs_.resize(ptrs_.size() * 2 + 1024);
        ptrs_[nptrs_++] = p;
      }
    }
    if (depth == 0) return;
    for (int f = 0; f < kW4Fanout; ++f) Build(tree_.Child(n), depth - 1, sum);
  }

  Tree tree_;
  size_t contexts_ = 0;
  size_t size_pos_ = 0;
  std::vector<void*> ptrs_;
  size_t nptrs_ = 0;
};

// W11: many small contexts under one parent, each with one allocation; the
// parent destroyed at the end. Malloc-style contenders allocate the chunk
// alone (there is no context to emulate) and free every chunk.
template <typename C>
class W11Builder {
 public:
  using Tree = typename C::Tree;
  using Node = typename Tree::Node;

  // Creates `n` contexts under a new parent and returns the parent.
  Node Build(size_t n, uint64_t& sum) {
    const std::vector<uint32_t>& sizes = In().w11_sizes;
    Node root = tree_.Root();
    if constexpr (C::kFreesEach) ptrs_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      Node child = tree_.Child(root);
      uint32_t s = sizes[i & (sizes.size() - 1)];
      void* p = tree_.Alloc(child, s);
      sum += Touch(p, s, i);
      if constexpr (C::kFreesEach) ptrs_[i] = p;
    }
    return root;
  }

  void Destroy(Node root) {
    tree_.Destroy(root);
    if constexpr (C::kFreesEach) {
      for (void* p : ptrs_) std::free(p);
    }
  }

  size_t Round(size_t n, uint64_t& sum) {
    Destroy(Build(n, sum));
    return n;
  }

 private:
  Tree tree_;
  std::vector<void*> ptrs_;
};

// W7: buffers grown by repeated reallocation, interleaved; returns the
// number of reallocations.
template <typename C>
size_t W7Round(typename C::Arena& a, void** bufs, size_t* sizes, uint64_t& sum) {
  size_t reallocs = 0;
  for (size_t b = 0; b < kW7Buffers; ++b) {
    sizes[b] = kW7Start;
    bufs[b] = a.Alloc(kW7Start);
    Touch(bufs[b], kW7Start, b);
  }
  for (bool growing = true; growing;) {
    growing = false;
    for (size_t b = 0; b < kW7Buffers; ++b) {
      if (sizes[b] > kW7Max) continue;
      size_t n = sizes[b] + sizes[b] / 2 + kW7Step;
      bufs[b] = a.Realloc(bufs[b], sizes[b], n);
      sum += Touch(bufs[b], n, b);  // the first word survived the move
      sizes[b] = n;
      ++reallocs;
      growing = true;
    }
  }
  for (size_t b = 0; b < kW7Buffers; ++b) a.Free(bufs[b], sizes[b]);
  a.Release();
  return reallocs;
}

// --- Benchmarks ---------------------------------------------------------------

// For mcx contenders: calls that reached the system allocator through the
// default block cache while the benchmark ran, per operation (the target
// for W2 is zero in steady state).
class SystemCalls {
 public:
  template <typename C>
  static SystemCalls Start() {
    SystemCalls s;
    s.active_ = !C::kFreesEach && std::is_base_of<McxMarker, C>::value;
    if (s.active_) s.before_ = mcx::DefaultBlockCache()->GetStats();
    return s;
  }
  void Report(benchmark::State& state, uint64_t ops) const {
    if (!active_ || ops == 0) return;
    mcx::CachingBlockSource::Stats after = mcx::DefaultBlockCache()->GetStats();
    state.counters["sys_acquires_per_op"] =
        static_cast<double>(after.misses - before_.misses) / static_cast<double>(ops);
    state.counters["sys_releases_per_op"] =
        static_cast<double>(after.returned - before_.returned) / static_cast<double>(ops);
  }

 private:
  bool active_ = false;
  mcx::CachingBlockSource::Stats before_;
};

template <typename C>
void BM_W1(benchmark::State& state, const std::vector<uint32_t>* sizes) {
  typename C::Arena a;
  std::vector<void*> ptrs(sizes->size());
  uint64_t sum = 0, ops = 0;
  W1Round<C>(a, *sizes, ptrs.data(), sum);  // warm: steady state
  for (auto _ : state) ops += W1Round<C>(a, *sizes, ptrs.data(), sum);
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(static_cast<int64_t>(ops));
}

// W1 at a cycle of `mib` MiB: the sizes are made when the benchmark first
// runs, not when the program starts.
template <typename C>
void BM_W1Cycle(benchmark::State& state, size_t mib) {
  static std::vector<uint32_t> sizes[sizeof(kW1CycleMiB) / sizeof(kW1CycleMiB[0])];
  size_t i = 0;
  while (kW1CycleMiB[i] != mib) ++i;
  if (sizes[i].empty()) {
    sizes[i] = Sizes((mib << 20) / kW1AverageSize, kW1MinSize, kW1MaxSize, 1);
  }
  BM_W1<C>(state, &sizes[i]);
}

// W2 and W6: requests on this thread's own parent, starting at `first` in the
// table of request shapes (threads start at different shapes).
template <typename C>
void RunRequests(benchmark::State& state, size_t first) {
  typename C::Parent parent;
  const auto& reqs = In().w2_requests;
  std::vector<void*> ptrs(In().w2_max_count);
  uint64_t sum = 0, ops = 0;
  size_t r = first % reqs.size();
  for (const Request& req : reqs) W2Request<C>(parent, req, ptrs.data(), sum);
  SystemCalls calls = SystemCalls::Start<C>();
  for (auto _ : state) {
    W2Request<C>(parent, reqs[r], ptrs.data(), sum);
    r = (r + 1) % reqs.size();
    ++ops;
  }
  calls.Report(state, ops);
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(static_cast<int64_t>(ops));
}

template <typename C>
void BM_W2(benchmark::State& state) {
  RunRequests<C>(state, 0);
}

template <typename C>
void BM_W3(benchmark::State& state) {
  typename C::Arena a;
  uint64_t sum = 0, ops = 0;
  {
    W3State<C> w(a, static_cast<size_t>(state.range(0)));
    w.Steps(kW3Steps, sum);
    for (auto _ : state) ops += w.Steps(kW3Steps, sum);
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(static_cast<int64_t>(ops));
}

template <typename C>
void BM_W4(benchmark::State& state) {
  W4Builder<C> b;
  uint64_t sum = 0, ops = 0;
  const int depth = static_cast<int>(state.range(0));
  b.Round(depth, sum);
  for (auto _ : state) ops += b.Round(depth, sum);
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(static_cast<int64_t>(ops));
}

template <typename C>
void BM_W11(benchmark::State& state) {
  W11Builder<C> b;
  uint64_t sum = 0, ops = 0;
  for (auto _ : state) ops += b.Round(kW11Contexts, sum);
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(static_cast<int64_t>(ops));
}

template <typename C>
void BM_W7(benchmark::State& state) {
  typename C::Arena a;
  std::vector<void*> bufs(kW7Buffers);
  std::vector<size_t> sizes(kW7Buffers);
  uint64_t sum = 0, ops = 0;
  W7Round<C>(a, bufs.data(), sizes.data(), sum);
  for (auto _ : state) ops += W7Round<C>(a, bufs.data(), sizes.data(), sum);
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(static_cast<int64_t>(ops));
}

// Scaling: the time of one Destroy of a context holding N allocations of
// 64 bytes (filled outside the timed region). Malloc frees N chunks.
constexpr uint32_t kDestroyChunkBytes = 64;

template <typename C>
void BM_DestroyScaling(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<void*> ptrs(n);
  double blocks = 0;
  for (auto _ : state) {
    auto* a = new typename C::Arena();
    for (size_t i = 0; i < n; ++i) {
      ptrs[i] = a->Alloc(kDestroyChunkBytes);
      Touch(ptrs[i], kDestroyChunkBytes, i);
    }
    if constexpr (!C::kFreesEach) blocks = static_cast<double>(a->context()->num_blocks());
    auto start = std::chrono::steady_clock::now();
    if constexpr (C::kFreesEach) {
      for (size_t i = 0; i < n; ++i) a->Free(ptrs[i], kDestroyChunkBytes);
    }
    delete a;
    auto end = std::chrono::steady_clock::now();
    state.SetIterationTime(std::chrono::duration<double>(end - start).count());
  }
  state.counters["blocks"] = blocks;
  state.counters["allocations"] = static_cast<double>(n);
}

// Each thread runs W2 on its own parent (a Parent per call of the function).
constexpr size_t kW6ThreadStride = 97;  // different request shapes per thread

template <typename C>
void BM_W6(benchmark::State& state) {
  RunRequests<C>(state, static_cast<size_t>(state.thread_index()) * kW6ThreadStride);
}

std::string Name(const char* workload, const char* contender) {
  return std::string(workload) + "/" + contender;
}

template <typename C>
void Register() {
  const Inputs& in = In();
  benchmark::RegisterBenchmark(Name("W1.rand", C::kName).c_str(), BM_W1<C>, &in.w1_rand);
  benchmark::RegisterBenchmark(Name("W1.32B", C::kName).c_str(), BM_W1<C>, &in.w1_fixed);
  if constexpr (C::kHasScope) {
    benchmark::RegisterBenchmark(Name("W2", C::kName).c_str(), BM_W2<C>);
    benchmark::RegisterBenchmark(Name("W6", C::kName).c_str(), BM_W6<C>)
        ->Threads(1)
        ->Threads(2)
        ->UseRealTime();
  }
  if constexpr (C::kCanFree) {
    benchmark::RegisterBenchmark(Name("W3", C::kName).c_str(), BM_W3<C>)
        ->Arg(kW3WorkingSet);
    benchmark::RegisterBenchmark(Name("S.churn", C::kName).c_str(), BM_W3<C>)
        ->RangeMultiplier(10)
        ->Range(100, 1000000);
  }
  if constexpr (C::kHasTree) {
    benchmark::RegisterBenchmark(Name("W4", C::kName).c_str(), BM_W4<C>)->Arg(kW4Depth);
    benchmark::RegisterBenchmark(Name("S.tree", C::kName).c_str(), BM_W4<C>)
        ->DenseRange(1, 5);
    benchmark::RegisterBenchmark(Name("W11", C::kName).c_str(), BM_W11<C>);
  }
  if constexpr (C::kCanRealloc) {
    benchmark::RegisterBenchmark(Name("W7", C::kName).c_str(), BM_W7<C>);
  }
}

// Filling the context is outside the timed region but not free: a fixed
// number of destroys per size (about 10^7 allocations filled in all) keeps
// the run short where the timed part is tiny.
constexpr int64_t kDestroyFillBudget = 10000000;
constexpr int64_t kDestroyMinIterations = 10;

template <typename C>
void RegisterDestroyScaling() {
  for (int64_t n = 100; n <= 1000000; n *= 10) {
    benchmark::RegisterBenchmark(Name("S.destroy", C::kName).c_str(), BM_DestroyScaling<C>)
        ->Arg(n)
        ->Iterations(std::max(kDestroyMinIterations, kDestroyFillBudget / n))
        ->UseManualTime();
  }
}

// --- W5: memory --------------------------------------------------------------

struct MemoryResult {
  double resident_per_requested;
  double header_bytes;   // bytes per chunk beyond its usable size (fixed sizes)
  double stride_bytes;   // median distance between consecutive chunks
};

// Runs in a forked child of a process that has allocated little, so that
// memory freed earlier cannot hide the cost. `size` 0 means random 8..1024.
template <typename C>
MemoryResult MeasureMemory(uint32_t size) {
  const size_t avg = size == 0 ? (kW3MinSize + kW3MaxSize) / 2 : size;
  const size_t n = kW5RequestedBytes / avg;
  // Bookkeeping outside every allocator under test, resident before the baseline.
  size_t book_bytes = n * (sizeof(void*) + sizeof(uint32_t));
  void* book = mmap(nullptr, book_bytes, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (book == MAP_FAILED) OutOfMemory();
  std::memset(book, 1, book_bytes);
  void** ptrs = static_cast<void**>(book);
  uint32_t* sizes = reinterpret_cast<uint32_t*>(ptrs + n);
  Rng rng(kSeed ^ 6);
  for (size_t i = 0; i < n; ++i) sizes[i] = size ? size : rng.Uniform(kW3MinSize, kW3MaxSize);

  auto* a = new typename C::Arena();
  size_t before = ResidentBytes();
  size_t requested = 0;
  for (size_t i = 0; i < n; ++i) {
    ptrs[i] = a->Alloc(sizes[i]);
    std::memset(ptrs[i], 0x5a, sizes[i]);  // resident: every byte written
    requested += sizes[i];
  }
  size_t after = ResidentBytes();
  MemoryResult r{static_cast<double>(after - before) / static_cast<double>(requested), 0, 0};
  if (size != 0) {
    std::vector<intptr_t> strides;
    for (size_t i = 1; i < n; i += 7) {
      intptr_t d = reinterpret_cast<intptr_t>(ptrs[i]) - reinterpret_cast<intptr_t>(ptrs[i - 1]);
      if (d > 0 && d < 4096) strides.push_back(d);
    }
    if (!strides.empty()) {
      std::nth_element(strides.begin(), strides.begin() + strides.size() / 2, strides.end());
      r.stride_bytes = static_cast<double>(strides[strides.size() / 2]);
      r.header_bytes = r.stride_bytes - static_cast<double>(a->Usable(ptrs[n / 2], size));
    }
  }
  return r;
}

// Runs `measure` (which returns one JSON line) in a forked child, a process
// that has allocated little, and copies its line to stdout.
template <typename F>
void InChild(F measure) {
  std::fflush(stdout);
  int fds[2];
  if (pipe(fds) != 0) return;
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    std::string line = measure();
    if (write(fds[1], line.data(), line.size()) != static_cast<ssize_t>(line.size())) _exit(1);
    _exit(0);
  }
  close(fds[1]);
  char buf[512];
  ssize_t got;
  while ((got = read(fds[0], buf, sizeof buf)) > 0) {
    std::fwrite(buf, 1, static_cast<size_t>(got), stdout);
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
}

template <typename C>
void MemoryCase(uint32_t size) {
  InChild([size] {
    MemoryResult r = MeasureMemory<C>(size);
    char line[256];
    int len = std::snprintf(line, sizeof line,
                            "{\"contender\": \"%s\", \"size\": %u, "
                            "\"resident_per_requested\": %.4f, \"header_bytes\": %.1f, "
                            "\"stride_bytes\": %.1f}\n",
                            C::kName, size, r.resident_per_requested, r.header_bytes,
                            r.stride_bytes);
    return std::string(line, static_cast<size_t>(len));
  });
}

// W11's memory: resident bytes per context while kW11Contexts contexts of
// one small allocation each are alive, in a fresh forked child.
template <typename C>
double MeasureW11Resident() {
  W11Builder<C> b;
  uint64_t sum = 0;
  size_t before = ResidentBytes();
  auto root = b.Build(kW11Contexts, sum);
  size_t after = ResidentBytes();
  benchmark::DoNotOptimize(sum);
  b.Destroy(root);
  return static_cast<double>(after - before) / static_cast<double>(kW11Contexts);
}

// --- W8: long-lived heap ---------------------------------------------------------

struct W8Sample {
  size_t op;
  size_t live;      // bytes requested and not freed
  size_t resident;  // process resident bytes above the baseline
  size_t blocks;    // mcx: bytes in the context's blocks; 0 for the others
};

// Runs W8 in a forked child (see kW8Ops). Each operation allocates (every
// byte written) or frees a live chunk chosen at random: below the phase's
// target it allocates with probability 3/4 (frees with 1/4), above it it
// frees, so the live data falls to a tenth even while the new phase's
// chunks are larger than the old ones, and then churns around the target
// with the new sizes. The decisions depend only on the generator and the
// live bytes, identical for every contender.
template <typename C>
std::string MeasureW8() {
  LiveSet set(kW8MaxLiveChunks);
  std::vector<W8Sample> samples;
  samples.reserve(kW8Ops / kW8SampleEvery + kW8Phases + 2);
  std::vector<size_t> phase_end_resident, phase_end_live, phase_end_live_pages;
  std::chrono::steady_clock::duration counting{};  // LivePageBytes, not timed
  Rng rng(kSeed ^ 8);
  auto* a = new typename C::Arena();
  const size_t before = ResidentBytes();
  size_t resident_peak = 0, blocks_peak = 0;
  auto sample = [&](size_t op) {
    size_t r = ResidentBytes();
    r = r > before ? r - before : 0;
    resident_peak = std::max(resident_peak, r);
    size_t blocks = 0;
    if constexpr (std::is_base_of_v<McxMarker, C>) {
      blocks = a->context()->bytes_in_blocks();
      blocks_peak = std::max(blocks_peak, blocks);
    }
    samples.push_back(W8Sample{op, set.live(), r, blocks});
  };
  const auto start = std::chrono::steady_clock::now();
  const size_t per_phase = kW8Ops / kW8Phases;
  for (size_t op = 0; op < kW8Ops; ++op) {
    const W8Phase& ph = kW8PhaseList[std::min(op / per_phase, kW8Phases - 1)];
    const size_t target = ph.grow ? kW8PeakLive : kW8PeakLive / kW8ShrinkDivisor;
    set.Step(a, rng, op, target, ph.min_size, ph.max_size);
    if ((op + 1) % kW8SampleEvery == 0) sample(op + 1);
    if ((op + 1) % per_phase == 0 && op / per_phase < kW8Phases) {
      const size_t r = samples.empty() ? 0 : samples.back().resident;
      phase_end_resident.push_back(r);
      phase_end_live.push_back(set.live());
      const auto counting_start = std::chrono::steady_clock::now();
      phase_end_live_pages.push_back(set.LivePageBytes());
      counting += std::chrono::steady_clock::now() - counting_start;
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start - counting).count();
  benchmark::DoNotOptimize(set.sum());
  const size_t live_peak = set.live_peak();
  std::string line;
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "{\"contender\": \"%s\", \"workload\": \"W8\", \"ns_per_op\": %.1f, "
                "\"live_peak\": %zu, \"resident_peak\": %zu, \"blocks_peak\": %zu",
                C::kName, seconds * 1e9 / static_cast<double>(kW8Ops), live_peak, resident_peak,
                blocks_peak);
  line += buf;
  line += ", \"phase_end_live\": [";
  for (size_t i = 0; i < phase_end_live.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%s%zu", i ? ", " : "", phase_end_live[i]);
    line += buf;
  }
  line += "], \"phase_end_resident\": [";
  for (size_t i = 0; i < phase_end_resident.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%s%zu", i ? ", " : "", phase_end_resident[i]);
    line += buf;
  }
  line += "], \"phase_end_live_pages\": [";
  for (size_t i = 0; i < phase_end_live_pages.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%s%zu", i ? ", " : "", phase_end_live_pages[i]);
    line += buf;
  }
  line += "], \"samples\": [";
  for (size_t i = 0; i < samples.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%s[%zu, %zu, %zu, %zu]", i ? ", " : "", samples[i].op,
                  samples[i].live, samples[i].resident, samples[i].blocks);
    line += buf;
  }
  line += "]}\n";
  set.FreeAll(a);
  delete a;
  return line;
}

template <typename C>
void MemoryW8() {
  if constexpr (C::kFreesEach || std::is_base_of_v<McxMarker, C>) {
    if constexpr (C::kCanFree) InChild([] { return MeasureW8<C>(); });
  }
}

template <typename C>
void Memory() {
  for (uint32_t s : kW5Sizes) MemoryCase<C>(s);
  MemoryCase<C>(0);
  if constexpr (C::kHasTree) {
    InChild([] {
      char line[256];
      int len = std::snprintf(line, sizeof line,
                              "{\"contender\": \"%s\", \"workload\": \"W11\", "
                              "\"resident_per_context\": %.1f}\n",
                              C::kName, MeasureW11Resident<C>());
      return std::string(line, static_cast<size_t>(len));
    });
  }
  MemoryW8<C>();
}

// --- Callgrind mode ------------------------------------------------------------

constexpr int kCallgrindRounds = 3;  // W1 rounds; W2 uses kW2Requests requests
// W3 under Callgrind: a warm-up, then enough steps to hold a dozen of the
// freelist kind's sweeps, which a steady churn runs every few tens of
// thousands of frees: a shorter window holds one or none, by the luck of
// where it falls, and its count moves by 5 per step with that luck.
constexpr size_t kCallgrindW3WarmSteps = 20000;
constexpr size_t kCallgrindW3Steps = 400000;
// W11 under Callgrind: fewer contexts than timed runs (a simulator is slow),
// still far more than any cache holds.
constexpr size_t kCallgrindW11Contexts = 100000;

template <typename C>
bool Callgrind(const std::string& workload) {
  uint64_t sum = 0, ops = 0;
  if (workload == "W1.rand" || workload == "W1.32B") {
    const auto& sizes = workload == "W1.rand" ? In().w1_rand : In().w1_fixed;
    typename C::Arena a;
    std::vector<void*> ptrs(sizes.size());
    W1Round<C>(a, sizes, ptrs.data(), sum);
    MCX_BENCH_CALLGRIND_TOGGLE();
    for (int i = 0; i < kCallgrindRounds; ++i) ops += W1Round<C>(a, sizes, ptrs.data(), sum);
    MCX_BENCH_CALLGRIND_TOGGLE();
  } else if (workload == "W2") {
    if constexpr (C::kHasScope) {
      typename C::Parent parent;
      std::vector<void*> ptrs(In().w2_max_count);
      for (const Request& r : In().w2_requests) W2Request<C>(parent, r, ptrs.data(), sum);
      MCX_BENCH_CALLGRIND_TOGGLE();
      for (const Request& r : In().w2_requests) {
        W2Request<C>(parent, r, ptrs.data(), sum);
        ++ops;
      }
      MCX_BENCH_CALLGRIND_TOGGLE();
    }
  } else if (workload == "W4") {
    if constexpr (C::kHasTree) {
      W4Builder<C> b;
      // Steady state, as the timed benchmark's many rounds: what a block
      // cache learns from a round's destroy pays off two rounds later.
      for (int i = 0; i < kCallgrindW4WarmRounds; ++i) b.Round(kW4Depth, sum);
      MCX_BENCH_CALLGRIND_TOGGLE();
      ops = b.Round(kW4Depth, sum);
      MCX_BENCH_CALLGRIND_TOGGLE();
    }
  } else if (workload == "W11") {
    if constexpr (C::kHasTree) {
      W11Builder<C> b;
      b.Round(kCallgrindW11Contexts, sum);
      MCX_BENCH_CALLGRIND_TOGGLE();
      ops = b.Round(kCallgrindW11Contexts, sum);
      MCX_BENCH_CALLGRIND_TOGGLE();
    }
  } else if (workload == "W3") {
    if constexpr (C::kCanFree) {
      typename C::Arena a;
      W3State<C> w(a, kW3WorkingSet);
      w.Steps(kCallgrindW3WarmSteps, sum);
      MCX_BENCH_CALLGRIND_TOGGLE();
      ops = w.Steps(kCallgrindW3Steps, sum);
      MCX_BENCH_CALLGRIND_TOGGLE();
    }
  }
  if (ops == 0) return false;
  std::printf("{\"workload\": \"%s\", \"contender\": \"%s\", \"ops\": %" PRIu64
              ", \"checksum\": %" PRIu64 "}\n",
              workload.c_str(), C::kName, ops, sum);
  return true;
}

// --- The contenders of this binary ---------------------------------------------

template <typename... Cs>
struct List {
  static void RegisterAll() { (Register<Cs>(), ...); }
  static void MemoryAll() { (Memory<Cs>(), ...); }
  static void MemoryW8All() { (MemoryW8<Cs>(), ...); }
  static bool MemoryW8One(const std::string& c) {
    bool done = false;
    ((!done && c == Cs::kName ? (MemoryW8<Cs>(), done = true, 0) : 0), ...);
    return done;
  }
  static bool CallgrindOne(const std::string& w, const std::string& c) {
    bool done = false;
    ((!done && c == Cs::kName ? (done = Callgrind<Cs>(w), 0) : 0), ...);
    return done;
  }
};

// W12 (fixed-size objects) and W13 (FIFO lifetimes), and their contenders.
#include "bench/fixed_and_fifo.h"

#ifdef MCX_BENCH_MIMALLOC
using W12W13 = FixedAndFifo<List<AnySize<Malloc>>, List<Malloc>>;
#else
using W12W13 = FixedAndFifo<List<McxSlab, AnySize<McxFreelist>, AnySize<Malloc>, AnySize<PmrPool>>,
                            List<McxGeneration, McxFreelist, Malloc>>;
#endif

#ifdef MCX_BENCH_MIMALLOC
using Contenders = List<Malloc, MiHeap>;
void MemoryExtra() {}
void RegisterExtra() {}
bool CallgrindExtra(const std::string&, const std::string&) { return false; }
#else
using Contenders = List<Malloc, McxPool, McxFreelist, Bump, TallocPlain, TallocPool,
                        Apr, PmrMonotonic, PmrPool>;
template <typename C>
void RegisterW1Cycles() {
  for (size_t mib : kW1CycleMiB) {
    benchmark::RegisterBenchmark(Name(("W1." + std::to_string(mib) + "MiB").c_str(), C::kName).c_str(),
                                 BM_W1Cycle<C>, mib);
  }
}

// Measured for memory only (W5): the packed pool's time is the pool's
// without its inline path, which W1-W4 show through the other kinds.
void MemoryExtra() { Memory<McxPool8>(); }
void RegisterExtra() {
  RegisterDestroyScaling<Malloc>();
  RegisterDestroyScaling<McxPool>();
  RegisterDestroyScaling<McxFreelist>();
  // The pool kind on a buddy region: the request workloads only.
  benchmark::RegisterBenchmark(Name("W2", McxPoolBuddy::kName).c_str(), BM_W2<McxPoolBuddy>);
  benchmark::RegisterBenchmark(Name("W6", McxPoolBuddy::kName).c_str(), BM_W6<McxPoolBuddy>)
      ->Threads(1)
      ->Threads(2)
      ->UseRealTime();
  RegisterW1Cycles<McxPool>();
  RegisterW1Cycles<Apr>();
}
// Under Callgrind, W2 of the pool kind on a buddy region.
// (Callgrind<C> needs every workload's types; this contender has W2's.)
bool CallgrindExtra(const std::string& w, const std::string& c) {
  if (w != "W2" || c != McxPoolBuddy::kName) return false;
  uint64_t sum = 0, ops = 0;
  McxPoolBuddy::Parent parent;
  std::vector<void*> ptrs(In().w2_max_count);
  for (const Request& r : In().w2_requests) W2Request<McxPoolBuddy>(parent, r, ptrs.data(), sum);
  MCX_BENCH_CALLGRIND_TOGGLE();
  for (const Request& r : In().w2_requests) {
    W2Request<McxPoolBuddy>(parent, r, ptrs.data(), sum);
    ++ops;
  }
  MCX_BENCH_CALLGRIND_TOGGLE();
  std::printf("{\"workload\": \"%s\", \"contender\": \"%s\", \"ops\": %" PRIu64
              ", \"checksum\": %" PRIu64 "}\n",
              w.c_str(), c.c_str(), ops, sum);
  return true;
}
#endif

int Main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--memory") {
      Contenders::MemoryAll();
      MemoryExtra();
      return 0;
    }
    if (arg == "--memory-w12-w13") {
      W12W13::Memory();
      return 0;
    }
    if (arg == "--memory=W8") {
      Contenders::MemoryW8All();
      return 0;
    }
    if (arg.rfind("--memory=W8:", 0) == 0) {
      const std::string c = arg.substr(std::strlen("--memory=W8:"));
      if (Contenders::MemoryW8One(c)) return 0;
      std::fprintf(stderr, "no W8 contender named '%s'\n", c.c_str());
      return 2;
    }
    if (arg.rfind("--callgrind=", 0) == 0) {
      std::string spec = arg.substr(std::strlen("--callgrind="));
      size_t colon = spec.find(':');
      if (colon == std::string::npos ||
          !(W12W13::Callgrind(spec.substr(0, colon), spec.substr(colon + 1)) ||
            Contenders::CallgrindOne(spec.substr(0, colon), spec.substr(colon + 1)) ||
            CallgrindExtra(spec.substr(0, colon), spec.substr(colon + 1)))) {
        std::fprintf(stderr, "workloads: no such callgrind case: %s\n", spec.c_str());
        return 2;
      }
      return 0;
    }
  }
  Contenders::RegisterAll();
  RegisterExtra();
  W12W13::Register();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace
}  // namespace mcx_bench

int main(int argc, char** argv) { return mcx_bench::Main(argc, argv); }
