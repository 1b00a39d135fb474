// Savepoints (Context::Mark, RewindTo, DropMark; context/savepoint.cc and
// the rewind in context.cc) on the pool kind, which supports them, and the
// refusals of the kinds and options that do not (the freelist and shared
// kinds, rewinding pools). Each test checks what the
// rewind promises: the pre-mark chunks' contents, the counters and the
// limits' charges as they were, the cleanups and children in teardown
// order (with what they register or create meanwhile), stale marks
// refused through the failure path, and consistency after a cleanup throws,
// longjmps, or resets, destroys or rewinds the context itself. A randomised
// run (fixed seed) checks against a model.

#include <csetjmp>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/new.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/shared/shared.h"
#include "mcx/testing/patterns.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

using test::CountingBlockSource;
using test::Fill;
using test::Holds;

class SavepointTest : public ::testing::Test {
 protected:
  Context* NewPool(const char* name = "pool", PoolOptions po = PoolOptions()) {
    ContextOptions o;
    o.block_source = &source_;
    return Context::Create(nullptr, name, PoolKind(po), o);
  }
  static void ExpectConsistent(const Context* ctx) {
    std::string error;
    EXPECT_TRUE(ctx->Check(&error)) << error;
  }

  CountingBlockSource source_;
};

// What a context looks like from outside, for before-and-after comparisons.
struct Snapshot {
  size_t bytes_in_blocks, num_blocks, subtree_bytes, free_bytes;
  int64_t live_blocks;
  bool operator==(const Snapshot& o) const {
    return bytes_in_blocks == o.bytes_in_blocks && num_blocks == o.num_blocks &&
           subtree_bytes == o.subtree_bytes && free_bytes == o.free_bytes &&
           live_blocks == o.live_blocks;
  }
};

Snapshot Take(const Context* ctx, const CountingBlockSource& source) {
  return Snapshot{ctx->bytes_in_blocks(), ctx->num_blocks(), ctx->SubtreeBytes(),
                  GetCounters(ctx).free_bytes, source.live_blocks()};
}

std::ostream& operator<<(std::ostream& os, const Snapshot& s) {
  return os << "{bytes " << s.bytes_in_blocks << ", blocks " << s.num_blocks << ", subtree "
            << s.subtree_bytes << ", free " << s.free_bytes << ", live " << s.live_blocks << "}";
}

TEST_F(SavepointTest, RewindReleasesEverythingSinceAndKeepsWhatCameBefore) {
  Context* ctx = NewPool();
  std::vector<std::pair<void*, size_t>> before;
  for (uint32_t i = 0; i < 200; ++i) {
    const size_t n = i % 20 == 0 ? 9000 : 1 + i * 7 % 300;
    void* p = ctx->Alloc(n);
    Fill(p, n, i);
    before.emplace_back(p, n);
  }
  mcx::Mark m = ctx->Mark();
  ASSERT_TRUE(m);
  EXPECT_EQ(ctx->mark_depth(), 1u);
  const Snapshot at_mark = Take(ctx, source_);
  void* first_after = nullptr;
  for (int round = 0; round < 3; ++round) {
    // The space since the mark is handed out again, from the same place (in
    // direct mode every chunk is a block of its own, from the source).
    void* first = ctx->Alloc(100);
    if (round == 0) first_after = first;
    if (!kDirectBuild) {
      EXPECT_EQ(first, first_after) << "round " << round;
    }
    for (uint32_t i = 1; i < 5000; ++i) {
      const size_t n = i % 50 == 0 ? 20000 : 1 + i % 500;
      void* p = i % 13 == 0 ? ctx->AllocAligned(n, 256) : ctx->Alloc(n);
      std::memset(p, 0xEE, n);
    }
    EXPECT_GT(ctx->num_blocks(), at_mark.num_blocks);
    ctx->RewindTo(m);
    EXPECT_EQ(Take(ctx, source_), at_mark) << "round " << round;
    ExpectConsistent(ctx);
    for (uint32_t i = 0; i < before.size(); ++i) {
      ASSERT_TRUE(Holds(before[i].first, before[i].second, i)) << i;
    }
  }
  EXPECT_EQ(ctx->mark_depth(), 1u);  // the mark stays valid
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
  EXPECT_EQ(source_.bad_releases(), 0);
}

// The blocks acquired since the mark go back, each once, and nothing else:
// the cost is in blocks, whatever the number of chunks in them.
TEST_F(SavepointTest, RewindReleasesExactlyTheBlocksAcquiredSince) {
  Context* ctx = NewPool();
  ctx->Alloc(100);
  mcx::Mark m = ctx->Mark();
  const int64_t acquires = source_.acquires();
  const int64_t releases = source_.releases();
  for (int i = 0; i < 100000; ++i) ctx->Alloc(16);
  for (int i = 0; i < 10; ++i) ctx->Alloc(100000);
  const int64_t acquired_since = source_.acquires() - acquires;
  EXPECT_GT(acquired_since, 10);
  ctx->RewindTo(m);
  EXPECT_EQ(source_.releases() - releases, acquired_since);
  EXPECT_EQ(source_.acquires() - acquires, acquired_since);
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

struct Log {
  std::vector<std::string> entries;
  void Add(Context* ctx, const char* text, CleanupPhase phase) {
    ctx->AddCleanup([this, text] { entries.emplace_back(text); }, phase);
  }
};

TEST_F(SavepointTest, CleanupsAndChildrenSinceTheMarkGoInTeardownOrder) {
  Context* ctx = NewPool();
  Log log;
  Context* old_child = ctx->CreateChild("old", PoolKind());
  log.Add(old_child, "old-child", CleanupPhase::kAfterChildren);
  log.Add(ctx, "before-mark-before", CleanupPhase::kBeforeChildren);
  log.Add(ctx, "before-mark-after", CleanupPhase::kAfterChildren);
  mcx::Mark m = ctx->Mark();
  log.Add(ctx, "before-1", CleanupPhase::kBeforeChildren);
  log.Add(ctx, "after-1", CleanupPhase::kAfterChildren);
  Context* a = ctx->CreateChild("a", PoolKind());
  log.Add(a, "a-after", CleanupPhase::kAfterChildren);
  Context* a1 = a->CreateChild("a1", PoolKind());
  log.Add(a1, "a1-after", CleanupPhase::kAfterChildren);
  log.Add(a, "a-before", CleanupPhase::kBeforeChildren);
  Context* b = ctx->CreateChild("b", PoolKind());
  log.Add(b, "b-after", CleanupPhase::kAfterChildren);
  log.Add(ctx, "before-2", CleanupPhase::kBeforeChildren);
  log.Add(ctx, "after-2", CleanupPhase::kAfterChildren);
  ctx->RewindTo(m);
  const std::vector<std::string> expected = {
      "before-2", "before-1",             // kBeforeChildren since, newest first
      "b-after",                          // the newest child since, completely
      "a-before", "a1-after", "a-after",  // then the older one
      "after-2", "after-1",               // kAfterChildren since, newest first
  };
  EXPECT_EQ(log.entries, expected);
  EXPECT_EQ(ctx->first_child(), old_child);
  EXPECT_EQ(old_child->next_sibling(), nullptr);
  log.entries.clear();
  ctx->RewindTo(m);  // nothing since: nothing runs
  EXPECT_TRUE(log.entries.empty());
  ctx->Destroy();
  const std::vector<std::string> rest = {"before-mark-before", "old-child", "before-mark-after"};
  EXPECT_EQ(log.entries, rest);
  EXPECT_EQ(source_.live_blocks(), 0);
}

// What the rewind's cleanups and the teardowns of its children register on
// the context or create in it is since the mark too: it goes in the same
// rewind, in the teardown order again, each cleanup once, and nothing of it
// is left behind in the memory the rewind releases.
TEST_F(SavepointTest, WhatTheRewindsCleanupsAddGoesInTheSameRewind) {
  Context* ctx = NewPool();
  Log log;
  log.Add(ctx, "pre", CleanupPhase::kAfterChildren);
  mcx::Mark m = ctx->Mark();
  const Snapshot at_mark = Take(ctx, source_);
  ctx->AddCleanup(
      [ctx, &log] {
        log.entries.emplace_back("A");
        Context* late = ctx->CreateChild("late", PoolKind());
        late->Alloc(5000);
        log.Add(late, "late-child", CleanupPhase::kAfterChildren);
        log.Add(ctx, "B", CleanupPhase::kBeforeChildren);
        log.Add(ctx, "C", CleanupPhase::kAfterChildren);
        for (int i = 0; i < 1000; ++i) ctx->Alloc(100);
      },
      CleanupPhase::kAfterChildren);
  Context* k = ctx->CreateChild("k", PoolKind());
  k->AddCleanup(
      [ctx, &log] {
        log.entries.emplace_back("k");
        log.Add(ctx, "D", CleanupPhase::kBeforeChildren);
      },
      CleanupPhase::kAfterChildren);
  ctx->RewindTo(m);
  // k's teardown, then A and the kAfterChildren cleanup it registered (the
  // phase runs until none since the mark is left); then, in a second pass,
  // the kBeforeChildren cleanups they registered, newest first, and the
  // child A created.
  const std::vector<std::string> expected = {"k", "A", "C", "B", "D", "late-child"};
  EXPECT_EQ(log.entries, expected);
  EXPECT_EQ(ctx->first_child(), nullptr);
  EXPECT_EQ(Take(ctx, source_), at_mark);
  EXPECT_EQ(ctx->mark_depth(), 1u);
  ExpectConsistent(ctx);
  log.entries.clear();
  ctx->RewindTo(m);  // nothing since: nothing runs
  EXPECT_TRUE(log.entries.empty());
  ctx->Destroy();
  EXPECT_EQ(log.entries, std::vector<std::string>{"pre"});
  EXPECT_EQ(source_.live_blocks(), 0);
  EXPECT_EQ(source_.bad_releases(), 0);
}

// In drop mode the children's cleanups still run; what they register on
// the context is dropped with the rest, its captures destroyed.
TEST_F(SavepointTest, DropModeDropsWhatTheChildrenRegisterDuringTheRewind) {
  Context* ctx = NewPool();
  mcx::Mark m = ctx->Mark();
  const Snapshot at_mark = Take(ctx, source_);
  auto captured = std::make_shared<int>(7);
  int late_runs = 0;
  Context* k = ctx->CreateChild("k", PoolKind());
  k->AddCleanup([ctx, captured, &late_runs] {
    ctx->AddCleanup([captured] { ADD_FAILURE() << "a dropped cleanup ran"; },
                    CleanupPhase::kBeforeChildren);
    ctx->CreateChild("late", PoolKind())->AddCleanup([&late_runs] { ++late_runs; });
  });
  ctx->RewindTo(m, RewindCleanups::kDrop);
  EXPECT_EQ(late_runs, 1);  // children go as always
  EXPECT_EQ(captured.use_count(), 1);
  EXPECT_EQ(ctx->first_child(), nullptr);
  EXPECT_EQ(Take(ctx, source_), at_mark);
  ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

struct Counted {
  static int constructed;
  static int destroyed;
  Counted() { ++constructed; }
  ~Counted() { ++destroyed; }
};
int Counted::constructed = 0;
int Counted::destroyed = 0;

TEST_F(SavepointTest, DropModeRunsNothingButDestroysCaptures) {
  Context* ctx = NewPool();
  Log log;
  mcx::Mark m = ctx->Mark();
  log.Add(ctx, "dropped", CleanupPhase::kAfterChildren);
  int plain_runs = 0;
  ctx->AddCleanup([](void* arg) { ++*static_cast<int*>(arg); }, &plain_runs);
  auto captured = std::make_shared<int>(7);
  ctx->AddCleanup([captured] { ADD_FAILURE() << "a dropped cleanup ran"; });
  EXPECT_EQ(captured.use_count(), 2);
  Counted::constructed = Counted::destroyed = 0;
  New<Counted>(ctx);
  Context* child = ctx->CreateChild("child", PoolKind());
  log.Add(child, "child", CleanupPhase::kAfterChildren);  // children go as always
  ctx->RewindTo(m, RewindCleanups::kDrop);
  EXPECT_EQ(log.entries, std::vector<std::string>{"child"});
  EXPECT_EQ(plain_runs, 0);
  EXPECT_EQ(captured.use_count(), 1);  // the capture was destroyed
  EXPECT_EQ(Counted::destroyed, 0);    // New<T>'s destructor is a cleanup: dropped
  EXPECT_EQ(ctx->first_child(), nullptr);
  New<Counted>(ctx);
  ctx->RewindTo(m);  // run mode: the destructor runs
  EXPECT_EQ(Counted::destroyed, 1);
  ctx->Destroy();
}

TEST_F(SavepointTest, NestedMarksAreAStack) {
  Context* ctx = NewPool();
  void* p0 = ctx->Alloc(64);
  Fill(p0, 64, 1);
  mcx::Mark outer = ctx->Mark();
  const Snapshot at_outer = Take(ctx, source_);
  void* p1 = ctx->Alloc(64);
  Fill(p1, 64, 2);
  for (int i = 0; i < 3000; ++i) ctx->Alloc(100);
  mcx::Mark inner = ctx->Mark();
  const Snapshot at_inner = Take(ctx, source_);
  for (int i = 0; i < 3000; ++i) ctx->Alloc(100);
  EXPECT_EQ(ctx->mark_depth(), 2u);
  ctx->RewindTo(inner);
  EXPECT_EQ(Take(ctx, source_), at_inner);
  EXPECT_TRUE(Holds(p1, 64, 2));
  for (int i = 0; i < 3000; ++i) ctx->Alloc(100);
  ctx->RewindTo(inner);  // again: the mark stays
  EXPECT_EQ(Take(ctx, source_), at_inner);
  ctx->RewindTo(outer);  // passes the inner mark
  EXPECT_EQ(Take(ctx, source_), at_outer);
  EXPECT_EQ(ctx->mark_depth(), 1u);
  EXPECT_TRUE(Holds(p0, 64, 1));

  // The passed mark is refused through the failure path, changing nothing.
  ctx->Alloc(5000);
  const Snapshot now = Take(ctx, source_);
  EXPECT_EQ(ctx->TryRewindTo(inner), Failure::kStaleMark);
  EXPECT_EQ(ctx->last_failure(), Failure::kStaleMark);
  EXPECT_EQ(ctx->TryDropMark(inner), Failure::kStaleMark);
  try {
    ctx->RewindTo(inner);
    ADD_FAILURE() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("mark already rewound past"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("'pool'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(Take(ctx, source_), now);
  EXPECT_EQ(ctx->mark_depth(), 1u);
  ctx->RewindTo(outer);  // the outer one still works
  EXPECT_EQ(Take(ctx, source_), at_outer);
  ctx->Destroy();
}

TEST_F(SavepointTest, DropMarkKeepsTheMemoryAndPassesNewerMarks) {
  Context* ctx = NewPool();
  mcx::Mark outer = ctx->Mark();
  const Snapshot at_outer = Take(ctx, source_);
  mcx::Mark middle = ctx->Mark();
  void* kept = ctx->Alloc(3000);
  Fill(kept, 3000, 5);
  mcx::Mark inner = ctx->Mark();
  ctx->Alloc(100);
  ctx->DropMark(middle);  // a subtransaction's commit: middle and inner go
  EXPECT_EQ(ctx->mark_depth(), 1u);
  EXPECT_TRUE(Holds(kept, 3000, 5));
  EXPECT_EQ(ctx->TryRewindTo(inner), Failure::kStaleMark);
  EXPECT_EQ(ctx->TryRewindTo(middle), Failure::kStaleMark);
  EXPECT_THROW(ctx->DropMark(inner), std::invalid_argument);
  ctx->RewindTo(outer);  // what the dropped marks covered goes with the outer one
  EXPECT_EQ(Take(ctx, source_), at_outer);
  ctx->DropMark(outer);
  EXPECT_EQ(ctx->mark_depth(), 0u);
  ctx->Destroy();
}

TEST_F(SavepointTest, EmptyAndForeignMarksAreBadArguments) {
  Context* a = NewPool("a");
  Context* b = NewPool("b");
  mcx::Mark ma = a->Mark();
  EXPECT_EQ(b->TryRewindTo(ma), Failure::kBadArgument);
  EXPECT_EQ(b->TryRewindTo(mcx::Mark()), Failure::kBadArgument);
  EXPECT_THROW(b->RewindTo(ma), std::invalid_argument);
  EXPECT_EQ(b->TryDropMark(ma), Failure::kBadArgument);
  EXPECT_EQ(a->TryRewindTo(ma), Failure::kNone);
  a->Destroy();
  b->Destroy();
}

TEST_F(SavepointTest, ResetPassesEveryMark) {
  Context* ctx = NewPool();
  mcx::Mark m = ctx->Mark();
  ctx->Alloc(100);
  ctx->Reset();
  EXPECT_EQ(ctx->mark_depth(), 0u);
  EXPECT_EQ(ctx->TryRewindTo(m), Failure::kStaleMark);
  mcx::Mark again = ctx->Mark();  // marks work after the reset
  const size_t blocks = ctx->num_blocks();
  ctx->Alloc(50000);
  ctx->RewindTo(again);
  EXPECT_EQ(ctx->num_blocks(), blocks);
  ctx->Destroy();
}

// Blocks with room to spare, resized in place while they have room: a
// large chunk then grows or shrinks without moving.
class RoomyBlockSource : public CountingBlockSource {
 public:
  Block Acquire(size_t min_size, size_t alignment) override {
    return CountingBlockSource::Acquire(min_size + min_size / 2, alignment);
  }
  Block Reallocate(Block block, size_t keep, size_t new_min_size, size_t alignment) override {
    if (new_min_size <= block.size) return block;
    return CountingBlockSource::Reallocate(block, keep, new_min_size, alignment);
  }
};

// Every resize moves the block (BlockSource's own: acquire, copy, release).
class MovingBlockSource : public CountingBlockSource {
 public:
  Block Reallocate(Block block, size_t keep, size_t new_min_size, size_t alignment) override {
    return BlockSource::Reallocate(block, keep, new_min_size, alignment);
  }
};

// A large chunk from before the mark that is reallocated after it stays
// freed: what the realloc returned is since the mark, and the rewind frees
// it, whether the realloc moved the chunk or resized it in place. The large
// chunks from before the mark on either side of it on the large list stay.
TEST_F(SavepointTest, LargeChunkReallocatedSinceTheMarkStaysFreed) {
  struct Case {
    const char* name;
    bool moves;
    size_t new_size;
  };
  for (const Case& c : {Case{"grown, moved", true, 4000000}, Case{"shrunk, moved", true, 3000},
                        Case{"grown in place", false, 14000},
                        Case{"shrunk in place", false, 3000}}) {
    SCOPED_TRACE(c.name);
    MovingBlockSource moving;
    RoomyBlockSource roomy;
    CountingBlockSource& source = c.moves ? static_cast<CountingBlockSource&>(moving) : roomy;
    ContextOptions o;
    o.block_source = &source;
    Context* ctx = Context::Create(nullptr, "pool", PoolKind(), o);
    void* older = ctx->Alloc(20000);
    Fill(older, 20000, 1);
    const size_t bytes_before = ctx->bytes_in_blocks();
    void* big = ctx->Alloc(10000);
    Fill(big, 10000, 2);
    const size_t big_block = ctx->bytes_in_blocks() - bytes_before;
    void* newer = ctx->Alloc(30000);
    Fill(newer, 30000, 3);
    mcx::Mark m = ctx->Mark();
    const Snapshot at_mark = Take(ctx, source);
    const size_t live_at_mark = GetCounters(ctx).live_bytes;
    void* q = ctx->Realloc(big, c.new_size);
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(q != big, c.moves);
    EXPECT_TRUE(Holds(q, c.new_size < 10000 ? c.new_size : 10000, 2));
    ctx->Alloc(40000);  // a large chunk since the mark, newer still
    ctx->RewindTo(m);
    EXPECT_EQ(ctx->bytes_in_blocks(), at_mark.bytes_in_blocks - big_block);
    EXPECT_EQ(ctx->num_blocks(), at_mark.num_blocks - 1);
    EXPECT_EQ(ctx->SubtreeBytes(), at_mark.subtree_bytes - big_block);
    EXPECT_EQ(source.live_blocks(), at_mark.live_blocks - 1);
    EXPECT_EQ(GetCounters(ctx).live_bytes, live_at_mark - 10000);
    EXPECT_TRUE(Holds(older, 20000, 1));
    EXPECT_TRUE(Holds(newer, 30000, 3));
    ExpectConsistent(ctx);
    ctx->Destroy();
    EXPECT_EQ(source.live_blocks(), 0);
    EXPECT_EQ(source.bad_releases(), 0);
  }
}

// A realloc belongs to the marks it follows: a rewind to a mark taken after
// it keeps the chunk, one to a mark taken before it frees the chunk.
TEST_F(SavepointTest, LargeChunkReallocatedBetweenTwoMarks) {
  Context* ctx = NewPool();
  void* big = ctx->Alloc(10000);
  Fill(big, 10000, 2);
  mcx::Mark outer = ctx->Mark();
  const size_t blocks_at_outer = ctx->num_blocks();
  void* q = ctx->Realloc(big, 20000);
  Fill(q, 20000, 4);
  mcx::Mark inner = ctx->Mark();
  const Snapshot at_inner = Take(ctx, source_);
  ctx->Alloc(30000);
  ctx->Realloc(ctx->Alloc(50000), 60000);
  ctx->RewindTo(inner);
  EXPECT_EQ(Take(ctx, source_), at_inner);
  EXPECT_TRUE(Holds(q, 20000, 4));
  ctx->RewindTo(outer);
  EXPECT_EQ(ctx->num_blocks(), blocks_at_outer - 1);
  ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

TEST_F(SavepointTest, LimitsGoBackWithTheMemory) {
  ContextOptions o;
  o.block_source = &source_;
  o.limit = 256 * 1024;
  Context* root = Context::Create(nullptr, "root", PoolKind(), o);
  Context* ctx = root->CreateChild("work", PoolKind());
  mcx::Mark m = ctx->Mark();
  const size_t at_mark = root->SubtreeBytes();
  size_t got = 0;
  while (ctx->TryAlloc(1000) != nullptr) got += 1000;
  EXPECT_EQ(ctx->last_failure(), Failure::kLimit);
  EXPECT_GT(got, 100u * 1000u);
  ctx->RewindTo(m);
  EXPECT_EQ(root->SubtreeBytes(), at_mark);
  size_t again = 0;
  while (ctx->TryAlloc(1000) != nullptr) again += 1000;
  EXPECT_EQ(again, got);  // the whole room is back
  root->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

TEST_F(SavepointTest, KindsAndOptionsThatCannotRewindRefuseClearly) {
  ContextOptions o;
  o.block_source = &source_;
  Context* freelist = Context::Create(nullptr, "cache", FreelistKind(), o);
  EXPECT_EQ(freelist->kind()->rewind, nullptr);  // the table says so
  const Snapshot before = Take(freelist, source_);
  EXPECT_FALSE(freelist->TryMark());
  EXPECT_EQ(freelist->last_failure(), Failure::kUnsupported);
  try {
    freelist->Mark();
    ADD_FAILURE() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("not supported"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'cache'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(Take(freelist, source_), before);
  EXPECT_EQ(freelist->mark_depth(), 0u);
  freelist->Destroy();

  PoolOptions rewinding;
  rewinding.rewind_on_free = true;
  Context* pool = NewPool("rewinding", rewinding);
  EXPECT_NE(pool->kind()->rewind, nullptr);
  EXPECT_FALSE(pool->TryMark());
  EXPECT_EQ(pool->last_failure(), Failure::kUnsupported);
  EXPECT_THROW(pool->Mark(), std::invalid_argument);
  EXPECT_EQ(pool->mark_depth(), 0u);
  ExpectConsistent(pool);
  pool->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// The shared kind: threads bump in runs of their own at once, so there is
// no one point to rewind to. Its table has no rewind; Mark is refused,
// changing nothing, and the context goes on.
TEST_F(SavepointTest, TheSharedKindRefusesMarks) {
  ContextOptions o;
  o.block_source = &source_;
  Context* shared = Context::Create(nullptr, "scan", SharedKind(), o);
  EXPECT_EQ(shared->kind()->rewind, nullptr);
  EXPECT_EQ(shared->kind()->mark, nullptr);
  std::memset(SharedAlloc(shared, 100), 0x5A, 100);
  const Snapshot before = Take(shared, source_);
  EXPECT_FALSE(shared->TryMark());
  EXPECT_EQ(shared->last_failure(), Failure::kUnsupported);
  try {
    shared->Mark();
    ADD_FAILURE() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("not supported"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'scan'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(Take(shared, source_), before);
  EXPECT_EQ(shared->mark_depth(), 0u);
  EXPECT_NE(SharedAlloc(shared, 100), nullptr);
  ExpectConsistent(shared);
  shared->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

TEST_F(SavepointTest, HandlesOfRewoundCleanupsAreStaleOthersStillWork) {
  Context* ctx = NewPool();
  int runs = 0;
  auto count = [](void* arg) { ++*static_cast<int*>(arg); };
  CleanupHandle old_handle = ctx->AddCleanup(count, &runs);
  mcx::Mark m = ctx->Mark();
  CleanupHandle new_handle = ctx->AddCleanup(count, &runs);
  CleanupHandle removed = ctx->AddCleanup(count, &runs);
  EXPECT_TRUE(ctx->RemoveCleanup(removed));
  ctx->RewindTo(m);
  EXPECT_EQ(runs, 1);
  for (int i = 0; i < 1000; ++i) ctx->Alloc(64);  // reuses the released memory
  EXPECT_FALSE(ctx->HoldsCleanup(new_handle));
  EXPECT_FALSE(ctx->RemoveCleanup(new_handle));
  EXPECT_FALSE(ctx->RunCleanup(removed));
  EXPECT_TRUE(ctx->HoldsCleanup(old_handle));
  CleanupHandle fresh = ctx->AddCleanup(count, &runs);
  EXPECT_TRUE(ctx->RunCleanup(fresh));
  EXPECT_EQ(runs, 2);
  EXPECT_TRUE(ctx->RunCleanup(old_handle));
  EXPECT_EQ(runs, 3);
  ctx->Destroy();
  EXPECT_EQ(runs, 3);
}

TEST_F(SavepointTest, ChildBoundarySurvivesTheMarkedChildLeaving) {
  Context* ctx = NewPool();
  Context* other = NewPool("other");
  Context* a = ctx->CreateChild("a", PoolKind());
  Context* b = ctx->CreateChild("b", PoolKind());  // the newest child at the mark
  Context* c = ctx->CreateChild("c", PoolKind());
  mcx::Mark m = ctx->Mark();
  ctx->CreateChild("d", PoolKind());
  c->Destroy();  // the boundary leaves: destroyed
  ctx->CreateChild("e", PoolKind());
  ASSERT_TRUE(b->TrySetParent(other) == Failure::kNone);  // the next one moves away
  Context* moved_in = other->CreateChild("moved-in", PoolKind());
  ASSERT_TRUE(moved_in->TrySetParent(ctx) == Failure::kNone);  // joins since the mark
  ctx->RewindTo(m);
  EXPECT_EQ(ctx->first_child(), a);
  EXPECT_EQ(a->next_sibling(), nullptr);
  EXPECT_EQ(other->first_child(), b);
  ctx->Destroy();
  other->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

TEST_F(SavepointTest, ThrowingCleanupDoesNotStopTheRewind) {
  Context* ctx = NewPool();
  Log log;
  mcx::Mark m = ctx->Mark();
  const Snapshot at_mark = Take(ctx, source_);
  log.Add(ctx, "first", CleanupPhase::kAfterChildren);
  ctx->AddCleanup([] { throw std::runtime_error("one"); });
  Context* child = ctx->CreateChild("child", PoolKind());
  child->AddCleanup([] { throw std::runtime_error("two"); });
  log.Add(ctx, "last", CleanupPhase::kAfterChildren);
  for (int i = 0; i < 1000; ++i) ctx->Alloc(200);
  try {
    ctx->RewindTo(m);
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "two");  // the first one thrown: the child's
  }
  EXPECT_EQ(log.entries, (std::vector<std::string>{"last", "first"}));
  EXPECT_EQ(ctx->first_child(), nullptr);
  EXPECT_EQ(Take(ctx, source_), at_mark);
  ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

std::jmp_buf jump;

TEST_F(SavepointTest, LongjmpFromACleanupLeavesTheRewindToFinishLater) {
  Context* ctx = NewPool();
  static std::vector<int> ran;
  ran.clear();
  mcx::Mark m = ctx->Mark();
  const Snapshot at_mark = Take(ctx, source_);
  auto note = [](void* arg) { ran.push_back(static_cast<int>(reinterpret_cast<intptr_t>(arg))); };
  ctx->AddCleanup(note, reinterpret_cast<void*>(1));
  ctx->AddCleanup([](void*) { std::longjmp(jump, 1); }, nullptr);
  ctx->AddCleanup(note, reinterpret_cast<void*>(3));
  Context* child = ctx->CreateChild("child", PoolKind());
  child->AddCleanup(note, reinterpret_cast<void*>(2), CleanupPhase::kAfterChildren);
  for (int i = 0; i < 1000; ++i) ctx->Alloc(200);
  if (setjmp(jump) == 0) {
    ctx->RewindTo(m);
    ADD_FAILURE() << "the cleanup did not leave";
  }
  // Abandoned after the child went and the newest cleanup ran: the mark is
  // still valid, the memory still there.
  EXPECT_EQ(ran, (std::vector<int>{2, 3}));
  EXPECT_EQ(ctx->mark_depth(), 1u);
  EXPECT_GT(ctx->num_blocks(), at_mark.num_blocks);
  ExpectConsistent(ctx);
  ctx->Alloc(100);  // usable meanwhile
  ctx->RewindTo(m);  // finishes: only what has not run runs
  EXPECT_EQ(ran, (std::vector<int>{2, 3, 1}));
  EXPECT_EQ(Take(ctx, source_), at_mark);
  ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// A kBeforeChildren cleanup registered by a kAfterChildren one during the
// rewind runs in a second pass; one that longjmps there leaves the rewind
// as any other does.
TEST_F(SavepointTest, LongjmpFromASecondPassLeavesTheRewindToFinishLater) {
  Context* ctx = NewPool();
  static std::vector<int> ran;
  ran.clear();
  mcx::Mark m = ctx->Mark();
  const Snapshot at_mark = Take(ctx, source_);
  ctx->AddCleanup(
      [](void* arg) {
        auto* c = static_cast<Context*>(arg);
        auto note = [](void* n) { ran.push_back(static_cast<int>(reinterpret_cast<intptr_t>(n))); };
        ran.push_back(1);
        c->AddCleanup(note, reinterpret_cast<void*>(2), CleanupPhase::kAfterChildren);
        c->AddCleanup(
            [](void*) {
              ran.push_back(3);
              std::longjmp(jump, 1);
            },
            nullptr, CleanupPhase::kBeforeChildren);
        c->CreateChild("late", PoolKind())
            ->AddCleanup(note, reinterpret_cast<void*>(4), CleanupPhase::kAfterChildren);
      },
      ctx, CleanupPhase::kAfterChildren);
  if (setjmp(jump) == 0) {
    ctx->RewindTo(m);
    ADD_FAILURE() << "the cleanup did not leave";
  }
  // Abandoned in the second pass, before the child went.
  EXPECT_EQ(ran, (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(ctx->mark_depth(), 1u);
  EXPECT_NE(ctx->first_child(), nullptr);
  ExpectConsistent(ctx);
  ctx->RewindTo(m);  // finishes: only what has not run runs
  EXPECT_EQ(ran, (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(ctx->first_child(), nullptr);
  EXPECT_EQ(Take(ctx, source_), at_mark);
  ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_EQ(ran, (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(source_.live_blocks(), 0);
}

TEST_F(SavepointTest, CleanupMayResetDestroyOrRewindTheContextFurther) {
  {  // a cleanup rewinds to an older mark: the rewind ends there
    Context* ctx = NewPool();
    mcx::Mark outer = ctx->Mark();
    const Snapshot at_outer = Take(ctx, source_);
    ctx->Alloc(5000);
    mcx::Mark inner = ctx->Mark();
    struct Arg {
      Context* ctx;
      mcx::Mark* outer;
    } arg{ctx, &outer};
    ctx->AddCleanup([](void* p) {
      auto* a = static_cast<Arg*>(p);
      a->ctx->RewindTo(*a->outer);
    }, &arg);
    ctx->Alloc(50000);
    ctx->RewindTo(inner);
    EXPECT_EQ(Take(ctx, source_), at_outer);
    EXPECT_EQ(ctx->TryRewindTo(inner), Failure::kStaleMark);
    ctx->Destroy();
  }
  {  // a cleanup resets the context
    Context* ctx = NewPool();
    mcx::Mark m = ctx->Mark();
    ctx->AddCleanup([](void* p) { static_cast<Context*>(p)->Reset(); }, ctx);
    ctx->Alloc(50000);
    ctx->RewindTo(m);
    EXPECT_EQ(ctx->num_blocks(), 1u);
    EXPECT_EQ(ctx->mark_depth(), 0u);
    ExpectConsistent(ctx);
    ctx->Destroy();
  }
  {  // a cleanup destroys the context
    Context* root = NewPool("root");
    Context* ctx = root->CreateChild("doomed", PoolKind());
    mcx::Mark m = ctx->Mark();
    ctx->AddCleanup([](void* p) { static_cast<Context*>(p)->Destroy(); }, ctx);
    ctx->Alloc(50000);
    ctx->RewindTo(m);
    EXPECT_EQ(root->first_child(), nullptr);
    root->Destroy();
  }
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Random marks, rewinds, drops, allocations and children against a model:
// after each rewind the counters are those taken at the mark, and every
// chunk from before the mark still holds its pattern.
TEST_F(SavepointTest, RandomisedAgainstAModel) {
  Context* ctx = NewPool();
  std::mt19937 rng(1234);
  struct Chunk {
    void* p;
    size_t n;
    uint32_t seed;
  };
  struct Saved {
    mcx::Mark mark;
    Snapshot snapshot;
    size_t chunks;    // chunks live at the mark
    size_t children;  // children at the mark
  };
  std::vector<Chunk> chunks;
  std::vector<Saved> marks;
  size_t children = 0;
  uint32_t seed = 0;
  auto count_children = [&] {
    size_t n = 0;
    for (Context* c = ctx->first_child(); c != nullptr; c = c->next_sibling()) ++n;
    return n;
  };
  for (int step = 0; step < 6000; ++step) {
    const uint32_t op = rng() % 100;
    if (op < 70) {
      const size_t n = rng() % 100 == 0 ? 5000 + rng() % 20000 : 1 + rng() % 200;
      void* p = ctx->Alloc(n);
      Fill(p, n, ++seed);
      chunks.push_back({p, n, seed});
    } else if (op < 75) {
      ctx->CreateChild("child", PoolKind())->Alloc(1 + rng() % 3000);
      ++children;
    } else if (op < 85) {
      mcx::Mark m = ctx->Mark();
      marks.push_back({m, Take(ctx, source_), chunks.size(), children});
    } else if (op < 97 && !marks.empty()) {
      const size_t k = rng() % marks.size();
      ctx->RewindTo(marks[k].mark);
      marks.resize(k + 1);
      ASSERT_EQ(Take(ctx, source_), marks[k].snapshot) << "step " << step;
      chunks.resize(marks[k].chunks);
      children = marks[k].children;
      ASSERT_EQ(count_children(), children);
      // The chunks just below the mark, where a rewind would overreach.
      const size_t from = chunks.size() > 64 ? chunks.size() - 64 : 0;
      for (size_t i = from; i < chunks.size(); ++i) {
        ASSERT_TRUE(Holds(chunks[i].p, chunks[i].n, chunks[i].seed)) << "step " << step;
      }
    } else if (!marks.empty()) {
      const size_t k = rng() % marks.size();
      ctx->DropMark(marks[k].mark);
      marks.resize(k);
    }
    ASSERT_EQ(ctx->mark_depth(), marks.size());
  }
  for (const Chunk& c : chunks) ASSERT_TRUE(Holds(c.p, c.n, c.seed));
  ExpectConsistent(ctx);
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
  EXPECT_EQ(source_.bad_releases(), 0);
}

}  // namespace
}  // namespace mcx
