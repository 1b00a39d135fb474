// The everyday helpers against what a program would use otherwise:
//   - a formatted string in an arena: mcx::Printf (Abseil's formatting),
//     mcx_printf (vsnprintf), talloc_asprintf, apr_psprintf, and
//     absl::StrFormat into a std::string (the heap);
//   - a concatenation: mcx::StrCat, apr_pstrcat, absl::StrCat;
//   - n objects with destructors: NewArray<T> (one cleanup record) against
//     n calls of New<T> (a record each), made and torn down with their
//     context.
// Each iteration makes one string (or one array) and the arena is reset
// every kBatch iterations, so the arena's block handling is in the figure
// as it would be in a request. Run: ./mcx bazel run -c opt
// //bench:helpers_benchmark (docs/performance.md has the figures).

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "benchmark/benchmark.h"
#include "mcx/context/context.h"
#include "mcx/context/new.h"
#include "mcx/context/strings.h"
#include "mcx/mcx.h"
#include "mcx/pool/pool.h"

#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#define MCX_BENCH_CALLGRIND_TOGGLE() CALLGRIND_TOGGLE_COLLECT
#else
#define MCX_BENCH_CALLGRIND_TOGGLE() ((void)0)
#endif

#include <apr_general.h>
#include <apr_pools.h>
#include <apr_strings.h>
#include <talloc.h>

namespace {

// Strings made between two resets: about a request's worth of names and
// messages.
constexpr int kBatch = 1000;

// A short result (fits Printf's stack buffer) and a long one (formatted
// twice) as an engine's messages and keys are.
const char* const kTable = "orders";
constexpr int kRow = 123456;
const std::string kLongName(300, 'n');

// The loop of the callgrind mode: `n` iterations, as benchmark::State's.
struct Ops {
  struct Unit {  // what the loop variable holds, as benchmark::State's
    ~Unit() {}   // not trivial: an unused loop variable is not warned about
  };
  struct Iterator {
    int i;
    bool operator!=(const Iterator& other) const { return i != other.i; }
    void operator++() { ++i; }
    Unit operator*() const { return {}; }
  };
  int n;
  Iterator begin() const { return {0}; }
  Iterator end() const { return {n}; }
};

template <typename Loop>
void BM_Printf_McxPrintf(Loop& state, long arg) {
  mcx::Context* ctx = mcx::CreatePoolContext(nullptr, "bench");
  const bool long_result = arg != 0;
  int i = 0;
  for (auto _ : state) {
    char* s = long_result ? mcx::Printf(ctx, "%s.%s row %d", kTable, kLongName, kRow)
                          : mcx::Printf(ctx, "%s row %d", kTable, kRow);
    benchmark::DoNotOptimize(s);
    if (++i == kBatch) {
      ctx->Reset();
      i = 0;
    }
  }
  ctx->Destroy();
}

template <typename Loop>
void BM_Printf_McxCPrintf(Loop& state, long arg) {
  mcx_context* ctx = mcx_create(nullptr, "bench", MCX_KIND_POOL, nullptr);
  const bool long_result = arg != 0;
  int i = 0;
  for (auto _ : state) {
    char* s = long_result ? mcx_printf(ctx, "%s.%s row %d", kTable, kLongName.c_str(), kRow)
                          : mcx_printf(ctx, "%s row %d", kTable, kRow);
    benchmark::DoNotOptimize(s);
    if (++i == kBatch) {
      mcx_reset(ctx, MCX_RESET_KEEP_FIRST_BLOCK, 0);
      i = 0;
    }
  }
  mcx_destroy(ctx);
}

template <typename Loop>
void BM_Printf_TallocAsprintf(Loop& state, long arg) {
  void* ctx = talloc_new(nullptr);
  const bool long_result = arg != 0;
  int i = 0;
  for (auto _ : state) {
    char* s = long_result ? talloc_asprintf(ctx, "%s.%s row %d", kTable, kLongName.c_str(), kRow)
                          : talloc_asprintf(ctx, "%s row %d", kTable, kRow);
    benchmark::DoNotOptimize(s);
    if (++i == kBatch) {
      talloc_free_children(ctx);
      i = 0;
    }
  }
  talloc_free(ctx);
}

template <typename Loop>
void BM_Printf_AprPsprintf(Loop& state, long arg) {
  apr_initialize();
  apr_pool_t* pool = nullptr;
  apr_pool_create(&pool, nullptr);
  const bool long_result = arg != 0;
  int i = 0;
  for (auto _ : state) {
    char* s = long_result ? apr_psprintf(pool, "%s.%s row %d", kTable, kLongName.c_str(), kRow)
                          : apr_psprintf(pool, "%s row %d", kTable, kRow);
    benchmark::DoNotOptimize(s);
    if (++i == kBatch) {
      apr_pool_clear(pool);
      i = 0;
    }
  }
  apr_pool_destroy(pool);
  apr_terminate();
}

// The heap: each string freed when the next replaces it.
template <typename Loop>
void BM_Printf_AbslStrFormat(Loop& state, long arg) {
  const bool long_result = arg != 0;
  for (auto _ : state) {
    std::string s = long_result ? absl::StrFormat("%s.%s row %d", kTable, kLongName, kRow)
                                : absl::StrFormat("%s row %d", kTable, kRow);
    benchmark::DoNotOptimize(s.data());
  }
}

template <typename Loop>
void BM_StrCat_McxStrCat(Loop& state, long arg) {
  mcx::Context* ctx = mcx::CreatePoolContext(nullptr, "bench");
  int i = 0;
  for (auto _ : state) {
    char* s = mcx::StrCat(ctx, "public", ".", kTable, ".", "customer_id");
    benchmark::DoNotOptimize(s);
    if (++i == kBatch) {
      ctx->Reset();
      i = 0;
    }
  }
  ctx->Destroy();
}

template <typename Loop>
void BM_StrCat_McxCStrcat(Loop& state, long arg) {
  mcx_context* ctx = mcx_create(nullptr, "bench", MCX_KIND_POOL, nullptr);
  int i = 0;
  for (auto _ : state) {
    char* s = mcx_strcat(ctx, "public", ".", kTable, ".", "customer_id", static_cast<char*>(nullptr));
    benchmark::DoNotOptimize(s);
    if (++i == kBatch) {
      mcx_reset(ctx, MCX_RESET_KEEP_FIRST_BLOCK, 0);
      i = 0;
    }
  }
  mcx_destroy(ctx);
}

template <typename Loop>
void BM_StrCat_AprPstrcat(Loop& state, long arg) {
  apr_initialize();
  apr_pool_t* pool = nullptr;
  apr_pool_create(&pool, nullptr);
  int i = 0;
  for (auto _ : state) {
    char* s = apr_pstrcat(pool, "public", ".", kTable, ".", "customer_id", static_cast<char*>(nullptr));
    benchmark::DoNotOptimize(s);
    if (++i == kBatch) {
      apr_pool_clear(pool);
      i = 0;
    }
  }
  apr_pool_destroy(pool);
  apr_terminate();
}

template <typename Loop>
void BM_StrCat_AbslStrCat(Loop& state, long arg) {
  for (auto _ : state) {
    std::string s = absl::StrCat("public", ".", kTable, ".", "customer_id");
    benchmark::DoNotOptimize(s.data());
  }
}

// An object with a destructor and no heap of its own, so the figure is the
// context's work: construction, the cleanup records, teardown.
struct Node {
  Node() : value(0) {}
  ~Node() { benchmark::DoNotOptimize(value); }
  long value;
};

// n objects made in a fresh context and torn down with it.
template <typename Loop>
void BM_Objects_NewArray(Loop& state, long arg) {
  const size_t n = static_cast<size_t>(arg);
  for (auto _ : state) {
    mcx::Context* ctx = mcx::CreatePoolContext(nullptr, "plan");
    Node* nodes = mcx::NewArray<Node>(ctx, n);
    benchmark::DoNotOptimize(nodes);
    ctx->Destroy();
  }
}

template <typename Loop>
void BM_Objects_NewEach(Loop& state, long arg) {
  const size_t n = static_cast<size_t>(arg);
  for (auto _ : state) {
    mcx::Context* ctx = mcx::CreatePoolContext(nullptr, "plan");
    for (size_t i = 0; i < n; ++i) benchmark::DoNotOptimize(mcx::New<Node>(ctx));
    ctx->Destroy();
  }
}

// Every case, with its arguments: registered with Google Benchmark, and
// run alone by the callgrind mode.
struct Case {
  const char* name;
  void (*run_benchmark)(benchmark::State&, long);
  void (*run_ops)(Ops&, long);
  long args[2];
  int num_args;
};

#define MCX_CASE(fn, ...) \
  Case { #fn, &fn<benchmark::State>, &fn<Ops>, {__VA_ARGS__}, NumArgs({__VA_ARGS__}) }

constexpr int NumArgs(std::initializer_list<long> args) { return static_cast<int>(args.size()); }

const Case kCases[] = {
    MCX_CASE(BM_Printf_McxPrintf, 0, 1),
    MCX_CASE(BM_Printf_McxCPrintf, 0, 1),
    MCX_CASE(BM_Printf_TallocAsprintf, 0, 1),
    MCX_CASE(BM_Printf_AprPsprintf, 0, 1),
    MCX_CASE(BM_Printf_AbslStrFormat, 0, 1),
    MCX_CASE(BM_StrCat_McxStrCat),
    MCX_CASE(BM_StrCat_McxCStrcat),
    MCX_CASE(BM_StrCat_AprPstrcat),
    MCX_CASE(BM_StrCat_AbslStrCat),
    MCX_CASE(BM_Objects_NewArray, 1000),
    MCX_CASE(BM_Objects_NewEach, 1000),
};

// Operations measured per callgrind run: enough that creating the arena
// weighs less than an instruction per operation.
constexpr int kCallgrindOps = 100000;
// Objects cases make a context of 1,000 objects per operation.
constexpr int kCallgrindObjectOps = 200;

}  // namespace

// ./helpers_benchmark --callgrind=NAME/ARG runs one case for a fixed number
// of operations with collection on around them only (valgrind
// --tool=callgrind --collect-atstart=no), and prints {"ops": N}.
int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--callgrind=", 12) != 0) continue;
    const std::string spec = argv[i] + 12;
    const size_t slash = spec.find('/');
    const std::string name = spec.substr(0, slash);
    const long arg = slash == std::string::npos ? 0 : std::atol(spec.c_str() + slash + 1);
    for (const Case& c : kCases) {
      if (name != c.name) continue;
      const int n = std::strncmp(c.name, "BM_Objects", 10) == 0 ? kCallgrindObjectOps : kCallgrindOps;
      Ops warm{n / 10};
      c.run_ops(warm, arg);
      Ops ops{n};
      MCX_BENCH_CALLGRIND_TOGGLE();
      c.run_ops(ops, arg);
      MCX_BENCH_CALLGRIND_TOGGLE();
      std::printf("{\"ops\": %d}\n", n);
      return 0;
    }
    std::fprintf(stderr, "helpers_benchmark: no such case: %s\n", spec.c_str());
    return 2;
  }
  for (const Case& c : kCases) {
    auto* b = benchmark::RegisterBenchmark(c.name, [&c](benchmark::State& state) {
      c.run_benchmark(state, c.num_args != 0 ? state.range(0) : 0);
    });
    for (int a = 0; a < c.num_args; ++a) b->Arg(c.args[a]);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
