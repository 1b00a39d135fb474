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

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
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

template <typename C>
void BM_HChurn(benchmark::State& state) {
  C c;
  std::vector<typename C::Ref> live(kLiveObjects);
  for (size_t i = 0; i < live.size(); ++i) {
    live[i] = c.New();
    Write(c, live[i], i);
  }
  Rng rng{42};
  uint64_t sum = 0;
  for (auto _ : state) {
    const size_t i = rng.Next() % kLiveObjects;
    c.Delete(live[i]);
    live[i] = c.New();
    Write(c, live[i], i);
    for (int k = 0; k < 4; ++k) sum += Read(c, live[rng.Next() % kLiveObjects]);
  }
  benchmark::DoNotOptimize(sum);
  for (auto& r : live) c.Delete(r);
  state.SetItemsProcessed(state.iterations());
}

template <typename C>
void BM_HGet(benchmark::State& state) {
  C c;
  std::vector<typename C::Ref> live(kLiveObjects);
  for (size_t i = 0; i < live.size(); ++i) {
    live[i] = c.New();
    Write(c, live[i], i);
  }
  Rng rng{7};
  uint64_t sum = 0;
  for (auto _ : state) sum += Read(c, live[rng.Next() % kLiveObjects]);
  benchmark::DoNotOptimize(sum);
  for (auto& r : live) c.Delete(r);
  state.SetItemsProcessed(state.iterations());
}

template <typename C>
void BM_HAllocFree(benchmark::State& state) {
  C c;
  uint64_t i = 0;
  for (auto _ : state) {
    typename C::Ref r = c.New();
    Write(c, r, ++i);
    c.Delete(r);
  }
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

void BM_BChurn(benchmark::State& state, mcx::BlockSource* (*get)()) {
  mcx::BlockSource* source = get();
  std::vector<mcx::Block> live(kLiveBlocks);
  Rng rng{3};
  auto size = [&rng] { return size_t{8192} << (rng.Next() % 4); };
  for (mcx::Block& b : live) b = source->Acquire(size(), mcx::kMinBlockAlignment);
  for (auto _ : state) {
    mcx::Block& b = live[rng.Next() % kLiveBlocks];
    source->Release(b);
    b = source->Acquire(size(), mcx::kMinBlockAlignment);
    if (b.ptr == nullptr) {
      state.SkipWithError("out of memory");
      break;
    }
    static_cast<char*>(b.ptr)[0] = 1;
    benchmark::DoNotOptimize(b.ptr);
  }
  for (mcx::Block& b : live) {
    if (b.ptr != nullptr) source->Release(b);
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_BCycle(benchmark::State& state, mcx::BlockSource* (*get)()) {
  mcx::BlockSource* source = get();
  for (auto _ : state) {
    mcx::Block b = source->Acquire(8192, mcx::kMinBlockAlignment);
    static_cast<char*>(b.ptr)[0] = 1;
    benchmark::DoNotOptimize(b.ptr);
    source->Release(b);
  }
  state.SetItemsProcessed(state.iterations());
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
