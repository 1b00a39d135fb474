// Soft limits and their callbacks (pressure.h): when they run, what they may
// do, how they are left, and a hash aggregation that spills when called
// back and so stays under its limit over ten times its limit of data.

#include "mcx/context/pressure.h"

#include <algorithm>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/base/attributes.h"
#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"

namespace mcx {
namespace {

constexpr size_t kSoft = 64 * 1024;

// What the callbacks of these tests saw.
struct Seen {
  int calls = 0;
  PressureInfo last{};
  size_t subtree_at_call = 0;  // the limited context's SubtreeBytes then
  Context* reset_on_call = nullptr;
  size_t alloc_on_call = 0;    // bytes the callback allocates in `last.context`
  bool throw_on_call = false;
  std::jmp_buf* jump_on_call = nullptr;
};

void Record(const PressureInfo& info) {
  auto* seen = static_cast<Seen*>(info.arg);
  ++seen->calls;
  seen->last = info;
  seen->subtree_at_call = info.limited->SubtreeBytes();
  if (seen->reset_on_call != nullptr) seen->reset_on_call->Reset();
  if (seen->alloc_on_call != 0) info.context->Alloc(seen->alloc_on_call);
  if (seen->throw_on_call) throw std::runtime_error("spill failed");
  if (seen->jump_on_call != nullptr) std::longjmp(*seen->jump_on_call, 1);
}

class PressureTest : public ::testing::TestWithParam<bool> {
 protected:
  KindSpec Kind() const { return GetParam() ? PoolKind() : FreelistKind(); }
  const char* KindName() const { return GetParam() ? "pool" : "freelist"; }
};

INSTANTIATE_TEST_SUITE_P(Kinds, PressureTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Pool" : "Freelist"; });

// The callback runs once, before the block that would cross the soft limit
// is charged, with what it would add; then the allocation proceeds.
TEST_P(PressureTest, CallsBackOnceBeforeCrossingThenProceeds) {
  Context* top = Context::Create(nullptr, "top", Kind());
  Seen seen;
  ASSERT_EQ(top->TrySetSoftLimit(kSoft, &Record, &seen), Failure::kNone);
  EXPECT_EQ(top->soft_limit(), kSoft);
  size_t allocs = 0;
  while (top->SubtreeBytes() <= kSoft) {
    const size_t before = top->SubtreeBytes();
    const int calls = seen.calls;
    char* p = static_cast<char*>(top->Alloc(1000));
    std::memset(p, 0x5A, 1000);
    ++allocs;
    if (seen.calls != calls) {
      EXPECT_EQ(seen.calls, calls + 1);
      EXPECT_EQ(seen.subtree_at_call, before);  // before: nothing charged yet
      EXPECT_EQ(seen.last.held, before);
      EXPECT_GT(seen.last.held + seen.last.request, kSoft);
      EXPECT_EQ(seen.last.context, top);
      EXPECT_EQ(seen.last.limited, top);
      EXPECT_EQ(seen.last.soft_limit, kSoft);
      EXPECT_EQ(seen.last.arg, &seen);
    }
  }
  EXPECT_EQ(seen.calls, 1);  // the one allocation that crossed
  EXPECT_GT(allocs, kSoft / 1000 / 4);  // blocks double: the crossing one may be half
  // Past the soft limit, every further block calls back again (once each).
  const int calls = seen.calls;
  for (int i = 0; i < 100; ++i) top->Alloc(1000);
  EXPECT_GT(seen.calls, calls);
  EXPECT_LE(seen.calls, calls + 100);  // 100 only in direct mode: a block per chunk
  if (!kDirectBuild) {
    EXPECT_LT(seen.calls, calls + 100);
  }
  std::string error;
  EXPECT_TRUE(top->Check(&error)) << error;
  top->Destroy();
}

// A callback that frees memory (resets a child holding the bulk) keeps the
// subtree under the soft limit for good.
TEST_P(PressureTest, CallbackThatFreesKeepsTheSubtreeUnderTheSoftLimit) {
  Context* top = Context::Create(nullptr, "top", Kind());
  Context* bulk = top->CreateChild("bulk", Kind());
  Seen seen;
  seen.reset_on_call = bulk;
  ASSERT_EQ(top->TrySetSoftLimit(kSoft, &Record, &seen), Failure::kNone);
  size_t peak = 0;
  for (int i = 0; i < 2000; ++i) {
    std::memset(bulk->Alloc(500), 1, 500);
    peak = std::max(peak, top->SubtreeBytes());
  }
  EXPECT_GE(seen.calls, 5);  // about 1 MB through a 64 KiB limit
  EXPECT_LE(peak, kSoft);
  std::string error;
  EXPECT_TRUE(bulk->Check(&error)) << error;
  top->Destroy();
}

// The callback may reset the very context that is allocating: the
// allocation proceeds in the emptied context.
TEST_P(PressureTest, CallbackMayResetTheAllocatingContext) {
  Context* top = Context::Create(nullptr, "top", Kind());
  Seen seen;
  seen.reset_on_call = top;
  ASSERT_EQ(top->TrySetSoftLimit(kSoft, &Record, &seen), Failure::kNone);
  for (int i = 0; i < 300; ++i) {
    char* p = static_cast<char*>(top->Alloc(1000));
    std::memset(p, i & 0xFF, 1000);
    EXPECT_EQ(static_cast<unsigned char>(p[999]), i & 0xFF);
  }
  EXPECT_GE(seen.calls, 2);
  EXPECT_LE(top->SubtreeBytes(), kSoft);
  std::string error;
  EXPECT_TRUE(top->Check(&error)) << error;
  top->Destroy();
}

// While the callback runs, its own allocations in the subtree do not call
// it again, even when they cross the soft limit.
TEST_P(PressureTest, NoReentry) {
  Context* top = Context::Create(nullptr, "top", Kind());
  Seen seen;
  seen.alloc_on_call = 2 * kSoft;  // crosses again, from inside
  ASSERT_EQ(top->TrySetSoftLimit(kSoft, &Record, &seen), Failure::kNone);
  while (seen.calls == 0) top->Alloc(1000);
  EXPECT_EQ(seen.calls, 1);
  EXPECT_GT(top->SubtreeBytes(), 2 * kSoft);
  top->Destroy();
}

// A callback that raises its own soft limit (a setting made from inside
// it) and then allocates past the raised one is still not re-entered; the
// raised limit is armed once the callback has returned.
int raise_calls = 0;
int raise_depth = 0;
int raise_deepest = 0;

void RaiseAndSpill(const PressureInfo& info) {
  ++raise_calls;
  raise_deepest = std::max(raise_deepest, ++raise_depth);
  // Removed and set again, raised: neither re-arms it while it runs.
  ASSERT_EQ(info.limited->TrySetSoftLimit(kNoLimit, &RaiseAndSpill), Failure::kNone);
  ASSERT_EQ(info.limited->TrySetSoftLimit(info.held + 1000, &RaiseAndSpill), Failure::kNone);
  info.context->Alloc(4 * kSoft);  // past the raised limit
  --raise_depth;
}

TEST_P(PressureTest, NoReentryAfterTheCallbackSetsItAgain) {
  Context* top = Context::Create(nullptr, "top", Kind());
  raise_calls = raise_depth = raise_deepest = 0;
  ASSERT_EQ(top->TrySetSoftLimit(kSoft, &RaiseAndSpill), Failure::kNone);
  while (raise_calls == 0) top->Alloc(1000);
  EXPECT_EQ(raise_calls, 1);
  EXPECT_EQ(raise_deepest, 1);
  EXPECT_GT(top->SubtreeBytes(), 4 * kSoft);
  EXPECT_LT(top->soft_limit(), top->SubtreeBytes());
  top->Alloc(2 * kSoft);  // crosses the raised limit: armed again
  EXPECT_EQ(raise_calls, 2);
  EXPECT_EQ(raise_deepest, 1);
  top->Destroy();
}

// The hard limit still refuses, after the callback had its chance.
TEST_P(PressureTest, HardLimitStillHolds) {
  Context* top = Context::Create(nullptr, "top", Kind());
  Seen seen;
  ASSERT_EQ(top->TrySetSoftLimit(kSoft, &Record, &seen), Failure::kNone);
  ASSERT_EQ(top->TrySetLimit(2 * kSoft), Failure::kNone);
  size_t got = 0;
  while (top->TryAlloc(1000) != nullptr) got += 1000;
  EXPECT_EQ(top->last_failure(), Failure::kLimit);
  EXPECT_GE(seen.calls, 2);  // the crossing, and the refused one
  EXPECT_LE(top->SubtreeBytes(), 2 * kSoft);
  EXPECT_GT(got, kSoft / 2);
  EXPECT_THROW(top->Alloc(4 * kSoft), std::bad_alloc);
  top->Destroy();
}

// A callback that throws: a throwing call propagates it, a Try call fails
// with kLimit; nothing was allocated, and the soft limit stays armed.
TEST_P(PressureTest, ThrowingCallbackAllocatesNothing) {
  Context* top = Context::Create(nullptr, "top", Kind());
  Seen seen;
  ASSERT_EQ(top->TrySetSoftLimit(kSoft, &Record, &seen), Failure::kNone);
  while (seen.calls == 0) top->Alloc(1000);
  seen.throw_on_call = true;
  const size_t held = top->SubtreeBytes();
  const size_t blocks = top->num_blocks();
  EXPECT_THROW(top->Alloc(2 * kSoft), std::runtime_error);
  EXPECT_EQ(seen.calls, 2);
  EXPECT_EQ(top->SubtreeBytes(), held);
  EXPECT_EQ(top->num_blocks(), blocks);
  EXPECT_EQ(top->TryAlloc(2 * kSoft), nullptr);
  EXPECT_EQ(top->last_failure(), Failure::kLimit);
  EXPECT_EQ(seen.calls, 3);  // still armed
  EXPECT_EQ(top->SubtreeBytes(), held);
  seen.throw_on_call = false;
  EXPECT_NE(top->Alloc(2 * kSoft), nullptr);
  EXPECT_EQ(seen.calls, 4);
  std::string error;
  EXPECT_TRUE(top->Check(&error)) << error;
  top->Destroy();
}

ABSL_ATTRIBUTE_NOINLINE void RearmFromAHelper(Context* ctx, Seen* seen) {
  ASSERT_EQ(ctx->TrySetSoftLimit(kSoft, &Record, seen), Failure::kNone);
}

// A callback that leaves by longjmp: nothing was allocated, the tree is
// consistent, and the soft limit calls back no more until set again.
TEST_P(PressureTest, LongjmpFromCallbackLeavesTheTreeConsistent) {
  Context* top = Context::Create(nullptr, "top", Kind());
  Seen seen;
  ASSERT_EQ(top->TrySetSoftLimit(kSoft, &Record, &seen), Failure::kNone);
  while (seen.calls == 0) top->Alloc(1000);
  std::jmp_buf env;
  seen.jump_on_call = &env;
  const size_t held = top->SubtreeBytes();
  volatile bool jumped = false;
  if (setjmp(env) == 0) {
    top->TryAlloc(2 * kSoft);
  } else {
    jumped = true;
  }
  EXPECT_TRUE(jumped);
  EXPECT_EQ(seen.calls, 2);
  EXPECT_EQ(top->SubtreeBytes(), held);
  std::string error;
  EXPECT_TRUE(top->Check(&error)) << error;
  seen.jump_on_call = nullptr;
  EXPECT_NE(top->Alloc(2 * kSoft), nullptr);
  EXPECT_EQ(seen.calls, 2);  // marked running: not called
  ASSERT_EQ(top->TrySetSoftLimit(kSoft, &Record, &seen), Failure::kNone);  // re-arms
  EXPECT_NE(top->Alloc(2 * kSoft), nullptr);
  EXPECT_EQ(seen.calls, 3);
  // Again, set by a function that the error recovery calls, deeper than
  // where the longjmp landed but not than the allocation that called back.
  seen.jump_on_call = &env;
  jumped = false;
  if (setjmp(env) == 0) {
    top->TryAlloc(2 * kSoft);
  } else {
    jumped = true;
  }
  EXPECT_TRUE(jumped);
  EXPECT_EQ(seen.calls, 4);
  seen.jump_on_call = nullptr;
  RearmFromAHelper(top, &seen);
  EXPECT_NE(top->Alloc(2 * kSoft), nullptr);
  EXPECT_EQ(seen.calls, 5);
  top->Destroy();
}

// A misuse report made inside the allocation's retry after a callback (a
// freelist context past its deferral bound finishes a free the callback
// made there) whose handler leaves by longjmp: the soft limit, set again,
// calls back again on this thread. The retry's record of the limits it
// passed must not outlive the jump.
std::jmp_buf misuse_jump;
void* bad_free_on_call = nullptr;

void FreeBadly(const PressureInfo& info) {
  ++static_cast<Seen*>(info.arg)->calls;
  info.limited->Free(bad_free_on_call);
}

TEST(PressureMisuseTest, ALongjmpFromAReportInTheRetryLeavesTheLimitArmed) {
  Context* top = Context::Create(nullptr, "top", FreelistKind());
  std::vector<char*> live;
  for (int i = 0; i < 4000; ++i) {
    live.push_back(static_cast<char*>(top->Alloc(500)));
    std::memset(live.back(), 0, 500);  // no chunk header inside
  }
  top->Free(live.back());  // the free table, made at the next new run
  live.pop_back();
  for (int i = 0; i < 100; ++i) live.push_back(static_cast<char*>(top->Alloc(500)));
  bad_free_on_call = live[0] + 64;  // inside a chunk: not one
  Seen seen;
  ASSERT_EQ(top->TrySetSoftLimit(top->SubtreeBytes() + 1, &FreeBadly, &seen), Failure::kNone);
  const MisuseHandler previous = SetMisuseHandler([](const char*) {
    std::longjmp(misuse_jump, 1);
  });
  volatile int reports = 0;
  if (setjmp(misuse_jump) == 0) {
    while (seen.calls == 0) top->Alloc(500);
    top->Alloc(500);  // a checking build reported in the callback already
  } else {
    ++reports;
  }
  SetMisuseHandler(previous);
  EXPECT_EQ(reports, 1);
  std::string error;
  EXPECT_TRUE(top->Check(&error)) << error;
  Seen again;
  ASSERT_EQ(top->TrySetSoftLimit(top->SubtreeBytes() + 1, &Record, &again), Failure::kNone);
  for (int i = 0; i < 1000 && again.calls == 0; ++i) top->Alloc(500);
  EXPECT_EQ(again.calls, 1);
  top->Destroy();
}

// One block crossing two soft limits calls the nearer first, then the
// outer one on the retry, each once.
TEST_P(PressureTest, NestedSoftLimitsEachCallOnce) {
  Context* outer = Context::Create(nullptr, "outer", Kind());
  Context* inner = outer->CreateChild("inner", Kind());
  Seen outer_seen, inner_seen;
  ASSERT_EQ(outer->TrySetSoftLimit(kSoft, &Record, &outer_seen), Failure::kNone);
  ASSERT_EQ(inner->TrySetSoftLimit(kSoft / 2, &Record, &inner_seen), Failure::kNone);
  EXPECT_NE(inner->Alloc(2 * kSoft), nullptr);
  EXPECT_EQ(inner_seen.calls, 1);
  EXPECT_EQ(outer_seen.calls, 1);
  EXPECT_EQ(inner_seen.last.limited, inner);
  EXPECT_EQ(outer_seen.last.limited, outer);
  EXPECT_EQ(outer_seen.last.context, inner);
  outer->Destroy();
}

// Realloc and a child's first block are allocations too.
TEST_P(PressureTest, ReallocAndChildCreationCallBack) {
  Context* top = Context::Create(nullptr, "top", Kind());
  Seen seen;
  ASSERT_EQ(top->TrySetSoftLimit(kSoft, &Record, &seen), Failure::kNone);
  char* p = static_cast<char*>(top->Alloc(100));
  std::memcpy(p, "kept", 5);
  p = static_cast<char*>(top->Realloc(p, 100, 2 * kSoft));
  EXPECT_STREQ(p, "kept");
  EXPECT_EQ(seen.calls, 1);
  const int calls = seen.calls;
  Context* child = top->CreateChild("child", Kind());
  EXPECT_EQ(seen.calls, calls + 1);
  EXPECT_EQ(seen.last.context, top);  // the parent is charged
  child->Destroy();
  top->Destroy();
}

// Removing the soft limit stops the calls; a null callback is refused.
TEST_P(PressureTest, RemovedAndRefused) {
  Context* top = Context::Create(nullptr, "top", Kind());
  Seen seen;
  EXPECT_EQ(top->TrySetSoftLimit(kSoft, nullptr, nullptr), Failure::kBadArgument);
  EXPECT_EQ(top->soft_limit(), kNoLimit);
  ASSERT_EQ(top->TrySetSoftLimit(kSoft, &Record, &seen), Failure::kNone);
  ASSERT_EQ(top->TrySetSoftLimit(kNoLimit, nullptr), Failure::kNone);
  EXPECT_EQ(top->soft_limit(), kNoLimit);
  top->Alloc(4 * kSoft);
  EXPECT_EQ(seen.calls, 0);
  // A limit and a soft limit share the subtree count: removing one keeps it.
  ASSERT_EQ(top->TrySetSoftLimit(8 * kSoft, &Record, &seen), Failure::kNone);
  ASSERT_EQ(top->TrySetLimit(64 * kSoft), Failure::kNone);
  ASSERT_EQ(top->TrySetLimit(kNoLimit), Failure::kNone);
  top->Alloc(8 * kSoft);
  EXPECT_EQ(seen.calls, 1);
  top->Destroy();
}

// --- A hash aggregation that spills ------------------------------------------
//
// GROUP BY key, SUM(value), COUNT(*) over rows whose groups take ten times
// the soft limit. The groups live in a "table" context under "agg", which
// has the soft limit (and a hard limit above it, as a backstop). When called
// back, the aggregation writes every group in memory to one of kPartitions
// temporary files by the hash of its key and resets the table; at the end
// it spills what is left and aggregates each partition alone, which fits.

constexpr size_t kAggSoft = 256 * 1024;
constexpr size_t kAggHard = kAggSoft + 64 * 1024;
// Each partition holds a sixty-fourth of the groups: far under the soft
// limit, with the checking build's larger chunks too.
constexpr int kPartitions = 64;
constexpr size_t kBuckets = 4096;  // chained; a power of two

struct Group {
  uint64_t key;
  int64_t sum;
  uint64_t count;
  Group* next;
};

struct Partial {
  uint64_t key;
  int64_t sum;
  uint64_t count;
};

uint64_t Hash(uint64_t key) { return key * 0x9E3779B97F4A7C15ull; }

class HashAgg {
 public:
  explicit HashAgg(Context* parent) {
    agg_ = parent->CreateChild("agg", PoolKind());
    table_ = agg_->CreateChild("table", PoolKind());
    for (auto& f : partitions_) f = std::tmpfile();
    EXPECT_EQ(agg_->TrySetSoftLimit(kAggSoft, &Spill, this), Failure::kNone);
    EXPECT_EQ(agg_->TrySetLimit(kAggHard), Failure::kNone);
  }
  ~HashAgg() {
    for (auto* f : partitions_) std::fclose(f);
    agg_->Destroy();
  }

  void Add(uint64_t key, int64_t value) {
    if (buckets_ == nullptr) NewTable();
    for (Group* g = buckets_[Hash(key) >> kShift]; g != nullptr; g = g->next) {
      if (g->key == key) {
        g->sum += value;
        ++g->count;
        return;
      }
    }
    const uint64_t generation = generation_;
    auto* g = static_cast<Group*>(table_->Alloc(sizeof(Group)));
    // The allocation may have spilled the table (and reset it): the group
    // is in the new one, the buckets must be too.
    if (generation_ != generation) NewTable();
    Insert(g, key, value, 1);
    Watch();
  }

  // Spills what is in memory, then aggregates each partition on its own.
  std::unordered_map<uint64_t, Partial> Finish() {
    std::unordered_map<uint64_t, Partial> out;
    if (spills_ == 0) {
      Collect(&out);
      return out;
    }
    SpillAll();
    finishing_ = true;
    for (std::FILE* f : partitions_) {
      std::rewind(f);
      NewTable();
      Partial p;
      while (std::fread(&p, sizeof(p), 1, f) == 1) Merge(p);
      Collect(&out);
      table_->Reset();
      buckets_ = nullptr;
    }
    return out;
  }

  int spills() const { return spills_; }
  size_t peak() const { return peak_; }
  bool spilled_while_finishing() const { return spilled_while_finishing_; }

 private:
  static constexpr int kShift = 64 - 12;  // top bits of the hash: kBuckets
  static_assert(kBuckets == size_t{1} << (64 - kShift), "kShift selects kBuckets");

  static void Spill(const PressureInfo& info) {
    auto* self = static_cast<HashAgg*>(info.arg);
    EXPECT_LE(info.held, kAggSoft);
    if (self->finishing_) self->spilled_while_finishing_ = true;
    self->SpillAll();
  }

  void SpillAll() {
    for (size_t b = 0; buckets_ != nullptr && b < kBuckets; ++b) {
      for (Group* g = buckets_[b]; g != nullptr; g = g->next) {
        Partial p{g->key, g->sum, g->count};
        std::fwrite(&p, sizeof(p), 1, partitions_[Hash(g->key) % kPartitions]);
      }
    }
    table_->Reset();
    buckets_ = nullptr;
    ++generation_;
    ++spills_;
  }

  void NewTable() {
    buckets_ = static_cast<Group**>(table_->AllocZero(kBuckets * sizeof(Group*)));
  }

  void Insert(Group* g, uint64_t key, int64_t sum, uint64_t count) {
    Group*& head = buckets_[Hash(key) >> kShift];
    *g = Group{key, sum, count, head};
    head = g;
  }

  void Merge(const Partial& p) {
    for (Group* g = buckets_[Hash(p.key) >> kShift]; g != nullptr; g = g->next) {
      if (g->key == p.key) {
        g->sum += p.sum;
        g->count += p.count;
        return;
      }
    }
    const uint64_t generation = generation_;
    auto* g = static_cast<Group*>(table_->Alloc(sizeof(Group)));
    if (generation_ != generation) NewTable();  // a spill here is reported by the test
    Insert(g, p.key, p.sum, p.count);
    Watch();
  }

  void Collect(std::unordered_map<uint64_t, Partial>* out) {
    for (size_t b = 0; buckets_ != nullptr && b < kBuckets; ++b) {
      for (Group* g = buckets_[b]; g != nullptr; g = g->next) {
        EXPECT_EQ(out->count(g->key), 0u) << "a group in two partitions";
        (*out)[g->key] = Partial{g->key, g->sum, g->count};
      }
    }
  }

  void Watch() { peak_ = std::max(peak_, agg_->SubtreeBytes()); }

  Context* agg_;
  Context* table_;
  Group** buckets_ = nullptr;
  std::FILE* partitions_[kPartitions];
  uint64_t generation_ = 0;
  int spills_ = 0;
  size_t peak_ = 0;
  bool finishing_ = false;
  bool spilled_while_finishing_ = false;
};

TEST(HashAggregationTest, SpillsWhenCalledBackAndStaysUnderItsLimit) {
  // Up to 81,920 groups of 32 bytes, ten times the soft limit, in 400,000
  // rows (6.4 MB of input), checked against a model.
  constexpr size_t kRows = 400000;
  constexpr uint64_t kKeys = 81920;
  static_assert(kKeys * sizeof(Group) == 10 * kAggSoft, "the groups take ten times the limit");
  std::mt19937_64 rng(16);
  std::unordered_map<uint64_t, Partial> model;
  Context* top = Context::Create(nullptr, "query", PoolKind());
  size_t errors = 0;
  top->SetFailureHandler([](const FailureInfo&) { ADD_FAILURE() << "the hard limit refused"; });
  {
    HashAgg agg(top);
    for (size_t i = 0; i < kRows; ++i) {
      const uint64_t key = rng() % kKeys;
      const int64_t value = static_cast<int64_t>(rng() % 1000) - 500;
      agg.Add(key, value);
      Partial& m = model[key];
      m.key = key;
      m.sum += value;
      ++m.count;
    }
    std::unordered_map<uint64_t, Partial> result = agg.Finish();
    EXPECT_GE(model.size() * sizeof(Group), 9 * kAggSoft);
    EXPECT_GE(agg.spills(), 9);
    EXPECT_FALSE(agg.spilled_while_finishing());
    EXPECT_LE(agg.peak(), kAggSoft);
    ASSERT_EQ(result.size(), model.size());
    for (const auto& [key, m] : model) {
      const auto it = result.find(key);
      ASSERT_NE(it, result.end()) << key;
      if (it->second.sum != m.sum || it->second.count != m.count) ++errors;
    }
  }
  EXPECT_EQ(errors, 0u);
  top->Destroy();
}

}  // namespace
}  // namespace mcx
