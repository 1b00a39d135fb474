// A parser that backtracks: each statement is tried against alternative
// rules in turn; a rule that fails part-way throws away what it built and
// the next one starts from the same point. Four ways to throw it away:
//
//   mcx_savepoint  one pool context; Mark before the statement, RewindTo on
//                  a failed rule, DropMark when one succeeds
//   mcx_child      a child pool context per attempt, destroyed on failure
//   talloc_child   a talloc child context per attempt, freed on failure
//   apr_subpool    an APR subpool per attempt, destroyed on failure
//
// The input is made once from a fixed seed: documents of kStatements
// statements of 4-12 tokens; 40% of the statements match the first rule,
// the others fail one or two rules after 1..n-1 tokens first. Each token
// consumed allocates a 40-byte node linked to the previous one, and every
// other token copies its 6-13-byte identifier. The parse context is reset
// after each document (talloc_free_children, apr_pool_clear).
//
// Run (optimized; the figures in docs/performance.md come from these):
//   ./mcx bazel run -c opt //bench:backtrack_benchmark
//   bench/backtrack_callgrind.sh     instructions per document, under callgrind
//
//   --callgrind=STRATEGY   parses kCallgrindDocuments documents with one
//                          strategy, counting instructions only around them
//                          (run under `valgrind --tool=callgrind
//                          --collect-atstart=no`), and prints {"ops": N}.
//   --callgrind=rewind:N   counts one RewindTo after N 16-byte chunks since
//                          the mark, and prints the blocks they took.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <vector>

#include <apr_general.h>
#include <apr_pools.h>
#include <apr_strings.h>
#include <talloc.h>

#include "benchmark/benchmark.h"
#include "mcx/context/context.h"
#include "mcx/pool/pool.h"

#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#define MCX_BENCH_CALLGRIND_TOGGLE() CALLGRIND_TOGGLE_COLLECT
#else
#define MCX_BENCH_CALLGRIND_TOGGLE() ((void)0)
#endif

namespace {

constexpr int kStatements = 200;           // per document
constexpr int kRules = 3;                  // alternatives per statement
constexpr int kFirstRuleMatchesPercent = 40;
constexpr int kMinTokens = 4;
constexpr int kMaxTokens = 12;
constexpr uint32_t kSeed = 20261206;
constexpr int kCallgrindDocuments = 200;

struct Statement {
  int tokens;
  int matching_rule;        // the rule that succeeds
  int fail_at[kRules];      // tokens a failing rule consumes first
  const char* idents[kMaxTokens];
  int ident_len[kMaxTokens];
};

struct Node {
  Node* prev;
  const char* ident;
  int kind;
  int rule;
  int64_t value;
  int64_t pad;
};
static_assert(sizeof(Node) == 40, "a 40-byte node");

const std::vector<Statement>& Document() {
  static const std::vector<Statement>* doc = [] {
    static const char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz_0123456789";
    static std::vector<std::string> names;
    std::mt19937 rng(kSeed);
    names.reserve(kStatements * kMaxTokens);
    auto* d = new std::vector<Statement>(kStatements);
    for (Statement& s : *d) {
      s.tokens = kMinTokens + static_cast<int>(rng() % (kMaxTokens - kMinTokens + 1));
      s.matching_rule = static_cast<int>(rng() % 100) < kFirstRuleMatchesPercent
                            ? 0
                            : 1 + static_cast<int>(rng() % (kRules - 1));
      for (int r = 0; r < kRules; ++r) s.fail_at[r] = 1 + static_cast<int>(rng() % (s.tokens - 1));
      for (int t = 0; t < s.tokens; ++t) {
        std::string name(6 + rng() % 8, 'x');
        for (char& c : name) c = kAlphabet[rng() % (sizeof(kAlphabet) - 1)];
        names.push_back(name);
        s.ident_len[t] = static_cast<int>(name.size());
      }
    }
    size_t k = 0;
    for (Statement& s : *d) {
      for (int t = 0; t < s.tokens; ++t) s.idents[t] = names[k++].c_str();
    }
    return d;
  }();
  return *doc;
}

// Parses `s` with `rule` into memory from `alloc` and `strndup`: true if
// the rule matches, false after it consumed its failing prefix.
template <typename Alloc, typename Strndup>
bool ParseRule(const Statement& s, int rule, Alloc alloc, Strndup strndup, Node** out) {
  const int consumed = rule == s.matching_rule ? s.tokens : s.fail_at[rule];
  Node* prev = nullptr;
  for (int t = 0; t < consumed; ++t) {
    auto* n = static_cast<Node*>(alloc(sizeof(Node)));
    n->prev = prev;
    n->ident = t % 2 == 0 ? strndup(s.idents[t], s.ident_len[t]) : nullptr;
    n->kind = t;
    n->rule = rule;
    n->value = prev != nullptr ? prev->value + t : t;
    prev = n;
  }
  *out = prev;
  return rule == s.matching_rule;
}

// --- The strategies: each parses one document into its parse context. -----

struct McxSavepoint {
  static constexpr const char* kName = "mcx_savepoint";
  mcx::Context* ctx = mcx::Context::Create(nullptr, "parse", mcx::PoolKind());
  ~McxSavepoint() { ctx->Destroy(); }
  int64_t Document() {
    int64_t sum = 0;
    auto alloc = [this](size_t n) { return ctx->Alloc(n); };
    auto strndup = [this](const char* p, int n) {
      auto* s = static_cast<char*>(ctx->AllocBytes(static_cast<size_t>(n) + 1));
      std::memcpy(s, p, static_cast<size_t>(n));
      s[n] = '\0';
      return s;
    };
    for (const Statement& s : ::Document()) {
      mcx::Mark m = ctx->Mark();
      for (int rule = 0; rule < kRules; ++rule) {
        Node* ast;
        if (ParseRule(s, rule, alloc, strndup, &ast)) {
          sum += ast->value;
          ctx->DropMark(m);
          break;
        }
        ctx->RewindTo(m);
      }
    }
    ctx->Reset();
    return sum;
  }
};

struct McxChild {
  static constexpr const char* kName = "mcx_child";
  mcx::Context* ctx = mcx::Context::Create(nullptr, "parse", mcx::PoolKind());
  ~McxChild() { ctx->Destroy(); }
  int64_t Document() {
    int64_t sum = 0;
    for (const Statement& s : ::Document()) {
      for (int rule = 0; rule < kRules; ++rule) {
        mcx::Context* attempt = ctx->CreateChild("attempt", mcx::PoolKind());
        auto alloc = [attempt](size_t n) { return attempt->Alloc(n); };
        auto strndup = [attempt](const char* p, int n) {
          auto* c = static_cast<char*>(attempt->AllocBytes(static_cast<size_t>(n) + 1));
          std::memcpy(c, p, static_cast<size_t>(n));
          c[n] = '\0';
          return c;
        };
        Node* ast;
        if (ParseRule(s, rule, alloc, strndup, &ast)) {
          sum += ast->value;
          break;
        }
        attempt->Destroy();
      }
    }
    ctx->Reset();
    return sum;
  }
};

void* TallocChecked(void* p) {
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

struct TallocChild {
  static constexpr const char* kName = "talloc_child";
  void* ctx = TallocChecked(talloc_new(nullptr));
  ~TallocChild() { talloc_free(ctx); }
  int64_t Document() {
    int64_t sum = 0;
    for (const Statement& s : ::Document()) {
      for (int rule = 0; rule < kRules; ++rule) {
        void* attempt = TallocChecked(talloc_new(ctx));
        auto alloc = [attempt](size_t n) { return TallocChecked(talloc_size(attempt, n)); };
        auto strndup = [attempt](const char* p, int n) {
          return static_cast<char*>(TallocChecked(talloc_strndup(attempt, p, static_cast<size_t>(n))));
        };
        Node* ast;
        if (ParseRule(s, rule, alloc, strndup, &ast)) {
          sum += ast->value;
          break;
        }
        talloc_free(attempt);
      }
    }
    talloc_free_children(ctx);
    return sum;
  }
};

struct AprSubpool {
  static constexpr const char* kName = "apr_subpool";
  apr_pool_t* pool = nullptr;
  AprSubpool() {
    static const bool initialized = apr_initialize() == APR_SUCCESS;
    if (!initialized || apr_pool_create(&pool, nullptr) != APR_SUCCESS) throw std::bad_alloc();
  }
  ~AprSubpool() { apr_pool_destroy(pool); }
  int64_t Document() {
    int64_t sum = 0;
    for (const Statement& s : ::Document()) {
      for (int rule = 0; rule < kRules; ++rule) {
        apr_pool_t* attempt = nullptr;
        if (apr_pool_create(&attempt, pool) != APR_SUCCESS) throw std::bad_alloc();
        auto alloc = [attempt](size_t n) { return apr_palloc(attempt, n); };
        auto strndup = [attempt](const char* p, int n) {
          return apr_pstrmemdup(attempt, p, static_cast<apr_size_t>(n));
        };
        Node* ast;
        if (ParseRule(s, rule, alloc, strndup, &ast)) {
          sum += ast->value;
          break;
        }
        apr_pool_destroy(attempt);
      }
    }
    apr_pool_clear(pool);
    return sum;
  }
};

template <typename Strategy>
void BM_Backtrack(benchmark::State& state) {
  Strategy strategy;
  ::Document();
  strategy.Document();  // warm the block caches
  for (auto _ : state) benchmark::DoNotOptimize(strategy.Document());
  state.SetItemsProcessed(state.iterations() * kStatements);
  state.SetLabel(Strategy::kName);
}

BENCHMARK_TEMPLATE(BM_Backtrack, McxSavepoint);
BENCHMARK_TEMPLATE(BM_Backtrack, McxChild);
BENCHMARK_TEMPLATE(BM_Backtrack, TallocChild);
BENCHMARK_TEMPLATE(BM_Backtrack, AprSubpool);

template <typename Strategy>
int RunForCallgrind() {
  Strategy strategy;
  ::Document();
  int64_t sum = strategy.Document();  // warm-up, not counted
  MCX_BENCH_CALLGRIND_TOGGLE();
  for (int i = 0; i < kCallgrindDocuments; ++i) sum += strategy.Document();
  MCX_BENCH_CALLGRIND_TOGGLE();
  benchmark::DoNotOptimize(sum);
  std::printf("{\"ops\": %d}\n", kCallgrindDocuments);
  return 0;
}

// One rewind after `chunks` 16-byte chunks since the mark, counted alone:
// its cost follows the blocks since the mark, not the chunks.
int RewindForCallgrind(int chunks) {
  mcx::Context* ctx = mcx::Context::Create(nullptr, "rewind", mcx::PoolKind());
  mcx::Mark m = ctx->Mark();
  for (int i = 0; i < chunks; ++i) benchmark::DoNotOptimize(ctx->Alloc(16));
  const size_t blocks = ctx->num_blocks();
  MCX_BENCH_CALLGRIND_TOGGLE();
  ctx->RewindTo(m);
  MCX_BENCH_CALLGRIND_TOGGLE();
  std::printf("{\"ops\": 1, \"blocks\": %zu}\n", blocks);
  ctx->Destroy();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--callgrind=", 0) != 0) continue;
    const std::string name = arg.substr(std::strlen("--callgrind="));
    if (name.rfind("rewind:", 0) == 0) return RewindForCallgrind(std::atoi(name.c_str() + 7));
    if (name == McxSavepoint::kName) return RunForCallgrind<McxSavepoint>();
    if (name == McxChild::kName) return RunForCallgrind<McxChild>();
    if (name == TallocChild::kName) return RunForCallgrind<TallocChild>();
    if (name == AprSubpool::kName) return RunForCallgrind<AprSubpool>();
    std::fprintf(stderr, "backtrack_benchmark: no such strategy: %s\n", name.c_str());
    return 2;
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
