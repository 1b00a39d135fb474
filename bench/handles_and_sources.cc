// Handle pools against the freelist kind and glibc malloc, and the buddy
// block source against the system source and the caching source. Run with
// the rest by ./mcx bench (bench/run.py), or alone:
//
//   ./mcx bazel run -c opt --copt=-fomit-frame-pointer //bench:handles_and_sources
//
// H.churn        10,000 live 64-byte objects; each step frees a random one,
//                allocates one in its place and reads 4 random live ones
//                (through their handle, or their pointer) (ns per step)
// H.get          reads of random live objects only (ns per read)
// H.alloc_free   allocate one object and free it at once (ns per pair)
// B.churn        64 live blocks of 8..64 KiB; each step releases a random one
//                and acquires one in its place (ns per step)
// B.cycle        acquire an 8 KiB block and release it (ns per pair): a
//                per-request context's first block
//
// For bench/run.py's --callgrind, `--callgrind=W:C` runs workload W for
// contender C with Callgrind's collection switched on only around the
// measured steps, and prints the number of steps (run it under
// `valgrind --tool=callgrind --collect-atstart=no`).

#include <benchmark/benchmark.h>

#include <cinttypes>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "mcx/buddy/buddy_source.h"
#include "mcx/context/block_source.h"
#include "mcx/context/caching_block_source.h"
#include "mcx/context/context.h"
#include "mcx/freelist/freelist.h"
#include "mcx/handle/handle_pool.h"

#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#define MCX_BENCH_CALLGRIND_TOGGLE() CALLGRIND_TOGGLE_COLLECT
#else
#define MCX_BENCH_CALLGRIND_TOGGLE() ((void)0)
#endif

namespace {

constexpr size_t kObjectSize = 64;
constexpr size_t kLiveObjects = 10000;
constexpr size_t kLiveBlocks = 64;

// The same sequence for every contender.
struct Rng {
  uint64_t s;
  uint32_t Next() {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<uint32_t>(s >> 33);
  }
};

// --- Objects: by handle or by pointer ------------------------------------------

struct HandlePoolObjects {
  static constexpr const char* kName = "handle_pool";
  using Ref = mcx::Handle;
  HandlePoolObjects() : ctx_(mcx::Context::Create(nullptr, "objects", mcx::FreelistKind())) {
    mcx::HandlePoolOptions o;
    o.AddClass(kObjectSize, kLiveObjects, /*grow=*/1024);
    pool_ = mcx::HandlePool::Create(ctx_, o);
  }
  ~HandlePoolObjects() { ctx_->Destroy(); }
  Ref New() { return pool_->Allocate(kObjectSize); }
  void* Get(Ref r) const { return pool_->Get(r); }
  void Delete(Ref r) { pool_->Free(r); }

 private:
  mcx::Context* ctx_;
  mcx::HandlePool* pool_;
};

struct FreelistObjects {
  static constexpr const char* kName = "mcx_freelist";
  using Ref = void*;
  FreelistObjects() : ctx_(mcx::Context::Create(nullptr, "objects", mcx::FreelistKind())) {}
  ~FreelistObjects() { ctx_->Destroy(); }
  Ref New() { return ctx_->Alloc(kObjectSize); }
  void* Get(Ref r) const { return r; }
  void Delete(Ref r) { ctx_->Free(r); }

 private:
  mcx::Context* ctx_;
};

struct MallocObjects {
  static constexpr const char* kName = "glibc";
  using Ref = void*;
  Ref New() { return std::malloc(kObjectSize); }
  void* Get(Ref r) const { return r; }
  void Delete(Ref r) { std::free(r); }
};

template <typename C>
void Write(C& c, typename C::Ref r, uint64_t v) {
  void* p = c.Get(r);
  std::memcpy(p, &v, sizeof v);
  benchmark::DoNotOptimize(p);
}

template <typename C>
uint64_t Read(const C& c, typename C::Ref r) {
  uint64_t v;
  std::memcpy(&v, c.Get(r), sizeof v);
  return v;
}

// --- Workload bodies, shared by the benchmarks and the callgrind mode --------

// H.churn and H.get: kLiveObjects live objects, each holding its index.
template <typename C>
class LiveObjects {
 public:
  explicit LiveObjects(uint64_t seed) : live_(kLiveObjects), rng_{seed} {
    for (size_t i = 0; i < live_.size(); ++i) {
      live_[i] = c_.New();
      Write(c_, live_[i], i);
    }
  }
  ~LiveObjects() {
    for (auto& r : live_) c_.Delete(r);
  }
  // H.churn: one object replaced, four read.
  void ChurnStep(uint64_t& sum) {
    const size_t i = rng_.Next() % kLiveObjects;
    c_.Delete(live_[i]);
    live_[i] = c_.New();
    Write(c_, live_[i], i);
    for (int k = 0; k < 4; ++k) sum += Read(c_, live_[rng_.Next() % kLiveObjects]);
  }
  // H.get: one object read.
  void GetStep(uint64_t& sum) { sum += Read(c_, live_[rng_.Next() % kLiveObjects]); }

 private:
  C c_;
  std::vector<typename C::Ref> live_;
  Rng rng_;
};

// H.alloc_free: one object allocated, written and freed.
template <typename C>
void AllocFreeStep(C& c, uint64_t i) {
  typename C::Ref r = c.New();
  Write(c, r, i);
  c.Delete(r);
}

template <typename C>
void BM_HChurn(benchmark::State& state) {
  LiveObjects<C> objects(42);
  uint64_t sum = 0;
  for (auto _ : state) objects.ChurnStep(sum);
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations());
}

template <typename C>
void BM_HGet(benchmark::State& state) {
  LiveObjects<C> objects(7);
  uint64_t sum = 0;
  for (auto _ : state) objects.GetStep(sum);
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations());
}

template <typename C>
void BM_HAllocFree(benchmark::State& state) {
  C c;
  uint64_t i = 0;
  for (auto _ : state) AllocFreeStep(c, ++i);
  state.SetItemsProcessed(state.iterations());
}

// --- Block sources ------------------------------------------------------------------

mcx::BlockSource* Buddy() {
  alignas(1 << 20) static unsigned char region[64 << 20];
  static mcx::BuddyBlockSource source(region, sizeof region, [] {
    mcx::BuddyOptions o;
    o.min_block = 4096;
    o.max_block = 1 << 20;
    return o;
  }());
  return &source;
}

mcx::BlockSource* System() {
  static mcx::SystemBlockSource source;
  return &source;
}

// As the default cache is set up: 64 MiB shared, 1 MiB per thread.
mcx::BlockSource* Caching() {
  static mcx::CachingBlockSource source(System(), mcx::kDefaultBlockCacheBytes,
                                        mcx::kDefaultThreadCacheBytes);
  return &source;
}

struct Named {
  const char* name;
  mcx::BlockSource* (*source)();
};

// B.churn: kLiveBlocks live blocks of 8..64 KiB.
class LiveBlocks {
 public:
  explicit LiveBlocks(mcx::BlockSource* source) : source_(source), live_(kLiveBlocks) {
    for (mcx::Block& b : live_) b = source_->Acquire(Size(), mcx::kMinBlockAlignment);
  }
  ~LiveBlocks() {
    for (mcx::Block& b : live_) {
      if (b.ptr != nullptr) source_->Release(b);
    }
  }
  // One block released, one acquired in its place; false if that failed.
  bool Step() {
    mcx::Block& b = live_[rng_.Next() % kLiveBlocks];
    source_->Release(b);
    b = source_->Acquire(Size(), mcx::kMinBlockAlignment);
    if (b.ptr == nullptr) return false;
    static_cast<char*>(b.ptr)[0] = 1;
    benchmark::DoNotOptimize(b.ptr);
    return true;
  }

 private:
  size_t Size() { return size_t{8192} << (rng_.Next() % 4); }

  mcx::BlockSource* source_;
  std::vector<mcx::Block> live_;
  Rng rng_{3};
};

// B.cycle: an 8 KiB block acquired, written and released.
void CycleStep(mcx::BlockSource* source) {
  mcx::Block b = source->Acquire(8192, mcx::kMinBlockAlignment);
  static_cast<char*>(b.ptr)[0] = 1;
  benchmark::DoNotOptimize(b.ptr);
  source->Release(b);
}

void BM_BChurn(benchmark::State& state, mcx::BlockSource* (*get)()) {
  LiveBlocks blocks(get());
  for (auto _ : state) {
    if (!blocks.Step()) {
      state.SkipWithError("out of memory");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_BCycle(benchmark::State& state, mcx::BlockSource* (*get)()) {
  mcx::BlockSource* source = get();
  for (auto _ : state) CycleStep(source);
  state.SetItemsProcessed(state.iterations());
}

// --- Callgrind mode ------------------------------------------------------------

// Steps per measured round under Callgrind, after as many unmeasured ones
// (which fill caches and free lists): enough to repeat exactly, few enough
// for a simulator.
constexpr uint64_t kCallgrindSteps = 20000;

// Runs `step` kCallgrindSteps times unmeasured, then as many measured.
template <typename F>
uint64_t Measured(F&& step) {
  for (uint64_t i = 0; i < kCallgrindSteps; ++i) step(i);
  MCX_BENCH_CALLGRIND_TOGGLE();
  for (uint64_t i = 0; i < kCallgrindSteps; ++i) step(i);
  MCX_BENCH_CALLGRIND_TOGGLE();
  return kCallgrindSteps;
}

template <typename C>
uint64_t CallgrindObjects(const std::string& workload, uint64_t& sum) {
  if (workload == "H.churn") {
    LiveObjects<C> objects(42);
    return Measured([&](uint64_t) { objects.ChurnStep(sum); });
  }
  if (workload == "H.get") {
    LiveObjects<C> objects(7);
    return Measured([&](uint64_t) { objects.GetStep(sum); });
  }
  if (workload == "H.alloc_free") {
    C c;
    return Measured([&](uint64_t i) { AllocFreeStep(c, i); });
  }
  return 0;
}

uint64_t CallgrindSource(const std::string& workload, mcx::BlockSource* source) {
  if (workload == "B.churn") {
    LiveBlocks blocks(source);
    bool ok = true;
    const uint64_t ops = Measured([&](uint64_t) { ok = blocks.Step() && ok; });
    return ok ? ops : 0;
  }
  if (workload == "B.cycle") return Measured([&](uint64_t) { CycleStep(source); });
  return 0;
}

template <typename C>
void RegisterObjects() {
  benchmark::RegisterBenchmark((std::string("H.churn/") + C::kName).c_str(), BM_HChurn<C>);
  benchmark::RegisterBenchmark((std::string("H.get/") + C::kName).c_str(), BM_HGet<C>);
  benchmark::RegisterBenchmark((std::string("H.alloc_free/") + C::kName).c_str(),
                               BM_HAllocFree<C>);
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--callgrind=", 0) != 0) continue;
    const std::string spec = arg.substr(std::strlen("--callgrind="));
    const size_t colon = spec.find(':');
    const std::string w = spec.substr(0, colon);
    const std::string c = colon == std::string::npos ? "" : spec.substr(colon + 1);
    uint64_t sum = 0, ops = 0;
    if (c == HandlePoolObjects::kName) ops = CallgrindObjects<HandlePoolObjects>(w, sum);
    if (c == FreelistObjects::kName) ops = CallgrindObjects<FreelistObjects>(w, sum);
    if (c == MallocObjects::kName) ops = CallgrindObjects<MallocObjects>(w, sum);
    if (c == "buddy") ops = CallgrindSource(w, Buddy());
    if (c == "system") ops = CallgrindSource(w, System());
    if (c == "caching") ops = CallgrindSource(w, Caching());
    if (ops == 0) {
      std::fprintf(stderr, "handles_and_sources: no such callgrind case: %s\n", spec.c_str());
      return 2;
    }
    std::printf("{\"workload\": \"%s\", \"contender\": \"%s\", \"ops\": %" PRIu64
                ", \"checksum\": %" PRIu64 "}\n",
                w.c_str(), c.c_str(), ops, sum);
    return 0;
  }
  RegisterObjects<HandlePoolObjects>();
  RegisterObjects<FreelistObjects>();
  RegisterObjects<MallocObjects>();
  for (const Named& n : {Named{"buddy", &Buddy}, Named{"system", &System},
                         Named{"caching", &Caching}}) {
    benchmark::RegisterBenchmark((std::string("B.churn/") + n.name).c_str(), BM_BChurn, n.source);
    benchmark::RegisterBenchmark((std::string("B.cycle/") + n.name).c_str(), BM_BCycle, n.source);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
