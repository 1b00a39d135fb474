// A churn of equal-size objects, the slab kind's case, against the freelist
// kind and malloc/free (the baseline every benchmark carries). A window of
// `kLive` objects stays live; each step frees the oldest and allocates a new
// one, as a server's per-connection records come and go.
//
//   BM_SlotChurn_Slab      examples/slab_kind: one slot size, LIFO slot list
//   BM_SlotChurn_Freelist  the freelist kind: the same size class every time
//   BM_SlotChurn_Malloc    glibc malloc/free
//
// Run: ./mcx bazel run -c opt //examples/slab_kind:slab_benchmark
// Figures depend on the machine; compare runs made one after the other.

#include <cstdlib>
#include <vector>

#include "benchmark/benchmark.h"
#include "examples/slab_kind/slab_kind.h"
#include "mcx/context/context.h"
#include "mcx/freelist/freelist.h"

namespace {

// [START benchmark]
constexpr size_t kObjectBytes = 48;  // a small record
constexpr size_t kLive = 1024;       // objects live at any time

// One step: free the oldest object, allocate its replacement.
template <typename AllocFn, typename FreeFn>
void Churn(benchmark::State& state, AllocFn alloc, FreeFn free) {
  std::vector<void*> live(kLive);
  for (void*& p : live) p = alloc();
  size_t oldest = 0;
  for (auto _ : state) {
    free(live[oldest]);
    live[oldest] = alloc();
    benchmark::DoNotOptimize(live[oldest]);
    oldest = (oldest + 1) % kLive;
  }
  for (void* p : live) free(p);
}

void BM_SlotChurn_Slab(benchmark::State& state) {
  mcx::examples::SlabOptions options;
  options.slot_size = kObjectBytes;
  mcx::Context* ctx =
      mcx::Context::Create(nullptr, "slab", mcx::examples::SlabKind(options));
  Churn(state, [ctx] { return ctx->Alloc(kObjectBytes); }, [ctx](void* p) { ctx->Free(p); });
  ctx->Destroy();
}
BENCHMARK(BM_SlotChurn_Slab);
// [END benchmark]

void BM_SlotChurn_Freelist(benchmark::State& state) {
  mcx::Context* ctx = mcx::Context::Create(nullptr, "freelist", mcx::FreelistKind());
  Churn(state, [ctx] { return ctx->Alloc(kObjectBytes); }, [ctx](void* p) { ctx->Free(p); });
  ctx->Destroy();
}
BENCHMARK(BM_SlotChurn_Freelist);

void BM_SlotChurn_Malloc(benchmark::State& state) {
  Churn(state, [] { return std::malloc(kObjectBytes); }, [](void* p) { std::free(p); });
}
BENCHMARK(BM_SlotChurn_Malloc);

}  // namespace
