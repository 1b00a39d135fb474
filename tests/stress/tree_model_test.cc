// A seeded, randomised mix of operations on a tree of contexts of both
// kinds, checked step by step against a shadow model: live chunks never
// overlap and keep their contents, cleanups run exactly once when their
// context goes, reparenting refuses exactly the cycles the model predicts,
// and the block bytes the contexts report match what the block source holds.
//
// What this is not: a benchmark, or a test of any single operation's edge
// cases (the conformance suite does those). Seeds are fixed; a failure names
// the seed and step to replay.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/patterns.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

using test::Fill;
using test::Holds;

struct ModelChunk {
  char* p;
  size_t size;
  uint32_t seed;
};

struct ModelContext {
  Context* ctx;
  bool is_pool;
  int parent;  // index in the model, -1 for a root
  std::vector<ModelChunk> chunks;
  std::vector<int> cleanup_ids;  // registered, not yet run
};

class TreeModel {
 public:
  TreeModel(uint32_t seed, test::CountingBlockSource* source) : rng_(seed), source_(source) {}

  int AddRoot() {
    ContextOptions o;
    o.block_source = source_;
    Context* c = Context::Create(nullptr, "root", Spec(true), o);
    return Add(c, true, -1);
  }

  void Step() {
    ++step_;
    int op = static_cast<int>(rng_() % 100);
    int i = RandomLive();
    if (op < 8) {
      bool pool = rng_() % 2 == 0;
      Add(contexts_[i].ctx->CreateChild("child", Spec(pool)), pool, i);
    } else if (op < 11) {
      if (contexts_[i].parent >= 0) Destroy(i);
    } else if (op < 14) {
      Reset(i);
    } else if (op < 18) {
      Reparent(i, RandomLive());
    } else if (op < 60) {
      Allocate(i);
    } else if (op < 78) {
      FreeOne(i);
    } else if (op < 92) {
      ReallocOne(i);
    } else {
      AddCleanup(i);
    }
  }

  void Verify() {
    std::vector<ModelChunk> all;
    for (const ModelContext& m : contexts_) {
      if (m.ctx == nullptr) continue;
      std::string error;
      ASSERT_TRUE(m.ctx->Check(&error)) << error << " at step " << step_;
      for (const ModelChunk& c : m.chunks) {
        ASSERT_TRUE(Holds(c.p, c.size, c.seed)) << "contents lost at step " << step_;
        all.push_back(c);
      }
    }
    std::sort(all.begin(), all.end(),
              [](const ModelChunk& a, const ModelChunk& b) { return a.p < b.p; });
    for (size_t k = 1; k < all.size(); ++k) {
      ASSERT_LE(all[k - 1].p + all[k - 1].size, all[k].p) << "overlap at step " << step_;
    }
    size_t reported = 0;
    for (const ModelContext& m : contexts_) {
      if (m.ctx != nullptr && m.parent < 0) reported += GetSubtreeCounters(m.ctx).total_bytes;
    }
    ASSERT_EQ(reported, source_->live_bytes()) << "accounting drift at step " << step_;
  }

  void DestroyAll() {
    for (size_t k = 0; k < contexts_.size(); ++k) {
      if (contexts_[k].ctx != nullptr && contexts_[k].parent < 0) Destroy(static_cast<int>(k));
    }
  }

  int cleanups_registered() const { return next_cleanup_id_; }
  const std::vector<int>& cleanup_runs() const { return runs_; }

 private:
  static KindSpec Spec(bool pool) {
    if (pool) {
      PoolOptions o;
      o.initial_block_size = 1024;
      o.max_block_size = 16384;
      o.max_small = 700;
      return PoolKind(o);
    }
    FreelistOptions o;
    o.initial_block_size = 1024;
    o.max_block_size = 16384;
    o.chunk_limit = 1500;
    return FreelistKind(o);
  }

  int Add(Context* c, bool pool, int parent) {
    contexts_.push_back({c, pool, parent, {}, {}});
    return static_cast<int>(contexts_.size() - 1);
  }

  int RandomLive() {
    for (;;) {
      int i = static_cast<int>(rng_() % contexts_.size());
      if (contexts_[i].ctx != nullptr) return i;
    }
  }

  bool IsDescendantOrSelf(int i, int ancestor) const {
    for (int k = i; k >= 0; k = contexts_[k].parent) {
      if (k == ancestor) return true;
    }
    return false;
  }

  // Model of a teardown: every context in the subtree loses its chunks and
  // runs its cleanups; descendants (and `i` itself if destroyed) go away.
  void TearDownModel(int i, bool destroy_self) {
    for (size_t k = 0; k < contexts_.size(); ++k) {
      ModelContext& m = contexts_[k];
      if (m.ctx == nullptr || !IsDescendantOrSelf(static_cast<int>(k), i)) continue;
      for (int id : m.cleanup_ids) expected_runs_[id] = 1;
      m.cleanup_ids.clear();
      m.chunks.clear();
    }
    for (size_t k = 0; k < contexts_.size(); ++k) {
      if (contexts_[k].ctx == nullptr) continue;
      if (static_cast<int>(k) == i && !destroy_self) continue;
      if (IsDescendantOrSelf(static_cast<int>(k), i)) doomed_.push_back(static_cast<int>(k));
    }
    for (int k : doomed_) contexts_[k].ctx = nullptr;
    doomed_.clear();
  }

  void Destroy(int i) {
    Context* c = contexts_[i].ctx;
    TearDownModel(i, true);
    c->Destroy();
    CheckRuns();
  }

  void Reset(int i) {
    Context* c = contexts_[i].ctx;
    TearDownModel(i, false);
    switch (rng_() % 3) {
      case 0:
        c->Reset();
        break;
      case 1:
        c->Reset(ResetOptions::ReleaseAll());
        break;
      default:
        c->Reset(ResetOptions::KeepBytes(rng_() % 40000));
    }
    CheckRuns();
  }

  void CheckRuns() {
    for (const auto& kv : expected_runs_) {
      ASSERT_EQ(runs_[kv.first], 1) << "cleanup " << kv.first << " at step " << step_;
    }
  }

  void Reparent(int i, int target) {
    bool cycle = IsDescendantOrSelf(target, i);
    absl::Status s = contexts_[i].ctx->SetParent(contexts_[target].ctx);
    if (contexts_[i].parent == target) {
      ASSERT_TRUE(s.ok());
      return;
    }
    ASSERT_EQ(s.ok(), !cycle) << s << " at step " << step_;
    if (s.ok()) contexts_[i].parent = target;
  }

  void Allocate(int i) {
    ModelContext& m = contexts_[i];
    size_t size = rng_() % 10 == 0 ? rng_() % 6000 : rng_() % 300;
    char* p = nullptr;
    switch (rng_() % 4) {
      case 0:
        p = static_cast<char*>(m.ctx->Alloc(size));
        break;
      case 1: {
        p = static_cast<char*>(m.ctx->AllocZero(size));
        for (size_t k = 0; k < size; ++k) ASSERT_EQ(p[k], 0);
        break;
      }
      case 2: {
        size_t alignment = size_t{1} << (rng_() % 10);
        p = static_cast<char*>(m.ctx->AllocAligned(size, alignment));
        ASSERT_EQ(reinterpret_cast<uintptr_t>(p) % alignment, 0u);
        break;
      }
      default:
        p = static_cast<char*>(m.ctx->AllocBytes(size));
    }
    ASSERT_NE(p, nullptr);
    uint32_t seed = next_seed_++;
    Fill(p, size, seed);
    m.chunks.push_back({p, size, seed});
  }

  void FreeOne(int i) {
    ModelContext& m = contexts_[i];
    if (m.chunks.empty()) return;
    size_t k = rng_() % m.chunks.size();
    m.ctx->Free(m.chunks[k].p);  // a no-op for small pool chunks
    m.chunks.erase(m.chunks.begin() + static_cast<ptrdiff_t>(k));
  }

  void ReallocOne(int i) {
    ModelContext& m = contexts_[i];
    if (m.chunks.empty()) return;
    size_t k = rng_() % m.chunks.size();
    ModelChunk& c = m.chunks[k];
    size_t size = rng_() % 4 == 0 ? rng_() % 9000 : rng_() % 400;
    // Aligned chunks keep their alignment through realloc only on the
    // freelist kind; the model only needs the contents.
    char* q = static_cast<char*>(m.ctx->Realloc(c.p, c.size, size));
    ASSERT_NE(q, nullptr);
    ASSERT_TRUE(Holds(q, std::min(c.size, size), c.seed)) << "realloc lost bytes at step " << step_;
    c.p = q;
    c.size = size;
    Fill(q, size, c.seed);
  }

  void AddCleanup(int i) {
    int id = next_cleanup_id_++;
    runs_.push_back(0);
    struct Arg {
      std::vector<int>* runs;
      int id;
    };
    auto* arg = static_cast<Arg*>(contexts_[i].ctx->Alloc(sizeof(Arg)));
    *arg = {&runs_, id};
    contexts_[i].ctx->AddCleanup([](void* p) {
      auto* a = static_cast<Arg*>(p);
      ++(*a->runs)[static_cast<size_t>(a->id)];
    }, arg, rng_() % 2 ? CleanupPhase::kBeforeChildren : CleanupPhase::kAfterChildren);
    contexts_[i].cleanup_ids.push_back(id);
  }

  std::mt19937 rng_;
  test::CountingBlockSource* source_;
  std::vector<ModelContext> contexts_;
  std::vector<int> doomed_;
  std::vector<int> runs_;
  std::map<int, int> expected_runs_;
  uint32_t next_seed_ = 1;
  int next_cleanup_id_ = 0;
  int step_ = 0;
};

class TreeModelTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(TreeModelTest, RandomOperationsMatchTheModel) {
  test::CountingBlockSource source;
  {
    TreeModel model(GetParam(), &source);
    model.AddRoot();
    model.AddRoot();
    for (int step = 0; step < 20000; ++step) {
      model.Step();
      if (::testing::Test::HasFatalFailure()) return;
      if (step % 500 == 0) {
        model.Verify();
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
    model.Verify();
    model.DestroyAll();
    for (int id = 0; id < model.cleanups_registered(); ++id) {
      EXPECT_EQ(model.cleanup_runs()[static_cast<size_t>(id)], 1) << "cleanup " << id;
    }
  }
  EXPECT_EQ(source.live_blocks(), 0);
  EXPECT_EQ(source.bad_releases(), 0);
}

INSTANTIATE_TEST_SUITE_P(Seeds, TreeModelTest, ::testing::Values(1u, 2u, 3u, 20261122u));

}  // namespace
}  // namespace mcx
