// The generic tree: creation, reparenting, teardown, cleanups by handle,
// failure handlers, limits and block sources. Kind-independent semantics that
// need a kind use both kinds.

#include "mcx/context/context.h"

#include <atomic>
#include <chrono>
#include <csetjmp>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/attributes.h"
#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/new.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

using test::CountingBlockSource;
using test::ExactBlockSource;
using test::FailingBlockSource;

class ContextTest : public ::testing::Test {
 protected:
  Context* Root(const char* name = "root") {
    ContextOptions o;
    o.block_source = &source_;
    return Context::Create(nullptr, name, PoolKind(), o);
  }
  FailingBlockSource source_;
};

// The name is copied into the first block; children are listed newest first.
TEST_F(ContextTest, CreateCopiesNameAndListsNewestChildFirst) {
  std::string name = "transient";
  Context* root = Root(name.c_str());
  name = "changed";
  EXPECT_STREQ(root->name(), "transient");
  EXPECT_STREQ(root->kind_name(), "pool");
  Context* a = root->CreateChild("a", PoolKind());
  Context* b = root->CreateChild("b", FreelistKind());
  EXPECT_EQ(root->first_child(), b);
  EXPECT_EQ(b->next_sibling(), a);
  EXPECT_EQ(a->next_sibling(), nullptr);
  EXPECT_EQ(a->parent(), root);
  EXPECT_EQ(b->block_source(), &source_);  // inherited
  EXPECT_EQ(source_.live_blocks(), 3);     // one first block each
  root->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// With the kinds' default options the tree sizes first blocks: a root gets
// the default, a child starts small, and a child that outgrows its first
// block makes the contexts created after it under its parent and every
// ancestor start with what it needed (its header, its live bytes and the
// request, in 64-byte units), up to the default. Explicit sizes are kept
// exactly.
class LearnedFirstBlockTest : public ::testing::TestWithParam<bool> {
 protected:
  ExactBlockSource source_;  // sizes as asked: no slack to account for
  KindSpec Kind() const { return GetParam() ? FreelistKind() : PoolKind(); }
  // Allocates 64-byte chunks until `c` takes another block; returns the
  // first block `c` would have needed for them, in the tree's 64-byte units
  // (a kind may count a little more: the freelist, the run it carves).
  static size_t Outgrow(Context* c) {
    const size_t blocks = c->num_blocks();
    size_t live = 0;
    while (c->num_blocks() == blocks) {
      live = c->live_bytes();
      c->Alloc(64);
    }
    return (c->header_bytes() + live + 64 + 63) / 64 * 64;
  }
};

TEST_P(LearnedFirstBlockTest, ChildrenStartSmallAndLearnFromSiblings) {
  if (internal::kDirect) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  ContextOptions o;
  o.block_source = &source_;
  Context* root = Context::Create(nullptr, "root", Kind(), o);
  EXPECT_EQ(root->first_block_size(), kDefaultFirstBlockSize);
  Context* first = root->CreateChild("first", Kind());
  const size_t small = first->first_block_size();
  EXPECT_GE(small, first->header_bytes() + kSmallFirstBlockRoom);
  EXPECT_LT(small, 1024u);
  // A child that stays small teaches nothing.
  first->Alloc(32);
  EXPECT_EQ(first->num_blocks(), 1u);
  EXPECT_EQ(root->CreateChild("second", Kind())->first_block_size(), small);
  // One that outgrows its block: later siblings start with what it needed
  // (not a multiple of its block: docs/design.md, the tree).
  const size_t needed = Outgrow(first);
  Context* third = root->CreateChild("third", Kind());
  const size_t learned = third->first_block_size();
  EXPECT_GT(learned, small);
  EXPECT_GE(learned, needed);
  EXPECT_LT(learned, 2 * small);
  // Their children start from what the siblings needed.
  Context* grandchild = third->CreateChild("grandchild", Kind());
  EXPECT_EQ(grandchild->first_block_size(), learned);
  // A grandchild that outgrows teaches its parent and every ancestor: a
  // context created after it anywhere below the root starts with what it
  // needed.
  const size_t more = Outgrow(grandchild);
  const size_t cousin = root->CreateChild("cousin", Kind())->first_block_size();
  EXPECT_GT(cousin, learned);
  EXPECT_GE(cousin, more);
  EXPECT_EQ(third->CreateChild("sibling", Kind())->first_block_size(), cousin);
  // A child that keeps growing teaches more at each block it adds, and
  // growth stops at the default, however big the children grow.
  Context* big = root->CreateChild("big", Kind());
  for (int i = 0; i < 400; ++i) big->Alloc(64);  // more than the default holds
  EXPECT_GT(big->num_blocks(), 2u);
  EXPECT_EQ(root->CreateChild("settled", Kind())->first_block_size(), kDefaultFirstBlockSize);
  // Another parent has learned nothing.
  Context* other = Context::Create(nullptr, "other", Kind(), o);
  EXPECT_EQ(other->CreateChild("fresh", Kind())->first_block_size(), small);
  other->Destroy();
  root->Destroy();
  EXPECT_EQ(source_.live(), 0);
}

TEST_P(LearnedFirstBlockTest, ExplicitSizesAreKept) {
  if (internal::kDirect) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  ContextOptions o;
  o.block_source = &source_;
  PoolOptions pool;
  pool.initial_block_size = 3000;
  FreelistOptions freelist;
  freelist.initial_block_size = 3000;
  const KindSpec fixed = GetParam() ? FreelistKind(freelist) : PoolKind(pool);
  Context* root = Context::Create(nullptr, "root", fixed, o);
  EXPECT_EQ(root->first_block_size(), 3000u);
  Context* a = root->CreateChild("a", fixed);
  EXPECT_EQ(a->first_block_size(), 3000u);
  const size_t needed = Outgrow(a);
  EXPECT_EQ(root->CreateChild("b", fixed)->first_block_size(), 3000u);
  // A learning sibling starts from what `a` needed, in 64-byte units: its
  // block and the request (the freelist's, the run it carves), not twice
  // its block.
  const size_t c = root->CreateChild("c", Kind())->first_block_size();
  EXPECT_GE(c, needed);
  EXPECT_GT(c, 3000u);
  EXPECT_LT(c, 3000u + 512);
  root->Destroy();
}

INSTANTIATE_TEST_SUITE_P(Kinds, LearnedFirstBlockTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Freelist" : "Pool";
                         });

// A null name is a clear error, not a crash.
TEST_F(ContextTest, NullNameIsRefused) {
  Context* root = Root();
  EXPECT_EQ(Context::TryCreate(root, nullptr, PoolKind()), nullptr);
  EXPECT_EQ(root->last_failure(), Failure::kBadArgument);
  EXPECT_THROW(root->CreateChild(nullptr, PoolKind()), std::invalid_argument);
  EXPECT_THROW(Context::Create(nullptr, nullptr, PoolKind()), std::invalid_argument);
  EXPECT_EQ(root->first_child(), nullptr);
  root->Destroy();
}

// SetParent moves a whole subtree; a cycle is refused and changes nothing.
TEST_F(ContextTest, SetParentMovesSubtreesAndRefusesCycles) {
  Context* root = Root();
  Context* a = root->CreateChild("a", PoolKind());
  Context* a1 = a->CreateChild("a1", PoolKind());
  Context* a11 = a1->CreateChild("a11", PoolKind());
  Context* b = root->CreateChild("b", PoolKind());

  absl::Status s = a->SetParent(a11);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("own ancestor"), std::string::npos) << s;
  EXPECT_EQ(a->last_failure(), Failure::kCycle);
  EXPECT_EQ(a->SetParent(a).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a->parent(), root);

  ASSERT_TRUE(a1->SetParent(b).ok());
  EXPECT_EQ(a1->parent(), b);
  EXPECT_EQ(b->first_child(), a1);
  EXPECT_EQ(a->first_child(), nullptr);
  EXPECT_EQ(a11->parent(), a1);  // the subtree came along
  EXPECT_TRUE(root->IsAncestorOf(a11));
  EXPECT_TRUE(b->IsAncestorOf(a11));
  EXPECT_FALSE(a->IsAncestorOf(a11));

  ASSERT_TRUE(a1->SetParent(nullptr).ok());  // now a root of its own
  EXPECT_EQ(a1->parent(), nullptr);
  root->Destroy();
  EXPECT_EQ(source_.live_blocks(), 2);  // a1 and a11 survive their old root
  a1->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Limits follow a moved subtree: its bytes leave the old limited ancestors
// and must fit the new ones, or the move is refused.
TEST_F(ContextTest, SetParentRespectsLimits) {
  Context* root = Root();
  Context* small = root->CreateChild("small", PoolKind());
  ASSERT_TRUE(small->SetLimit(64 * 1024).ok());
  Context* big = root->CreateChild("big", PoolKind());
  for (int i = 0; i < 100; ++i) big->Alloc(1000);
  EXPECT_GT(big->SubtreeBytes(), 64u * 1024u);
  absl::Status s = big->SetParent(small);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(big->parent(), root);

  Context* little = root->CreateChild("little", PoolKind());
  ASSERT_TRUE(little->SetParent(small).ok());
  size_t before = small->SubtreeBytes();
  // The budget now counts `little`: allocations in it are charged to `small`.
  while (little->TryAlloc(1000) != nullptr) {
  }
  EXPECT_EQ(little->last_failure(), Failure::kLimit);
  EXPECT_LE(small->SubtreeBytes(), 64u * 1024u);
  EXPECT_GT(small->SubtreeBytes(), before);
  // Moving it out gives the budget back.
  ASSERT_TRUE(little->SetParent(root).ok());
  EXPECT_NE(small->CreateChild("fits-again", PoolKind()), nullptr);
  root->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// A limit below what the subtree already holds is refused.
TEST_F(ContextTest, SetLimitBelowCurrentUseIsRefused) {
  Context* root = Root();
  root->Alloc(20000);
  absl::Status s = root->SetLimit(1000);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(root->limit(), kNoLimit);
  ASSERT_TRUE(root->SetLimit(kNoLimit).ok());
  root->Destroy();
}

// A child whose first block does not fit its parent's limit is refused.
TEST_F(ContextTest, LimitRefusesNewChildren) {
  ContextOptions o;
  o.block_source = &source_;
  o.limit = 20 * 1024;
  Context* root = Context::Create(nullptr, "root", PoolKind(), o);
  PoolOptions eight_k;
  eight_k.initial_block_size = 8 * 1024;
  Context* c1 = Context::TryCreate(root, "c1", PoolKind(eight_k));
  ASSERT_NE(c1, nullptr);
  EXPECT_EQ(Context::TryCreate(root, "c2", PoolKind(eight_k)), nullptr);
  EXPECT_EQ(root->last_failure(), Failure::kLimit);
  EXPECT_EQ(source_.live_blocks(), 3);  // two first blocks, the root's side record
  root->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Nested limits: the tighter one wins, both are charged.
TEST_F(ContextTest, NestedLimitsAreAllCharged) {
  Context* root = Root();
  ASSERT_TRUE(root->SetLimit(1 << 20).ok());
  Context* mid = root->CreateChild("mid", FreelistKind());
  ASSERT_TRUE(mid->SetLimit(200 * 1024).ok());
  Context* leaf = mid->CreateChild("leaf", FreelistKind());
  while (leaf->TryAlloc(3000) != nullptr) {
  }
  EXPECT_LE(mid->SubtreeBytes(), 200u * 1024u);
  Context* other = root->CreateChild("other", FreelistKind());
  EXPECT_NE(other->TryAlloc(500 * 1024), nullptr);  // root has room left
  EXPECT_EQ(other->TryAlloc(500 * 1024), nullptr);  // now it does not
  EXPECT_EQ(other->last_failure(), Failure::kLimit);
  leaf->Destroy();
  EXPECT_NE(mid->CreateChild("again", FreelistKind())->TryAlloc(100 * 1024), nullptr);
  root->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// The failure handler is inherited from the nearest ancestor that has one,
// sees the failing context and the reason, and the call then throws.
TEST_F(ContextTest, FailureHandlerIsInheritedAndInformed) {
  struct Seen {
    int calls = 0;
    Context* context = nullptr;
    Failure failure = Failure::kNone;
    size_t size = 0;
  } seen;
  Context* root = Root();
  root->SetFailureHandler(
      [](const FailureInfo& info) {
        auto* s = static_cast<Seen*>(info.arg);
        ++s->calls;
        s->context = info.context;
        s->failure = info.failure;
        s->size = info.size;
      },
      &seen);
  Context* child = root->CreateChild("child", PoolKind());
  ASSERT_TRUE(child->SetLimit(16 * 1024).ok());
  EXPECT_THROW(child->Alloc(100000), std::bad_alloc);
  EXPECT_EQ(seen.calls, 1);
  EXPECT_EQ(seen.context, child);
  EXPECT_EQ(seen.failure, Failure::kLimit);
  EXPECT_EQ(seen.size, 100000u);
  EXPECT_EQ(child->TryAlloc(100000), nullptr);  // try-calls skip the handler
  EXPECT_EQ(seen.calls, 1);
  // A handler may throw its own exception.
  child->SetFailureHandler([](const FailureInfo&) { throw std::runtime_error("query cancelled"); });
  EXPECT_THROW(child->Alloc(100000), std::runtime_error);
  root->Destroy();
}

// Cleanups can be removed or run early by handle; each runs exactly once.
TEST_F(ContextTest, CleanupsByHandle) {
  Context* ctx = Root();
  std::vector<int> log;
  auto push = [&log](int v) { return [&log, v] { log.push_back(v); }; };
  CleanupHandle h1 = ctx->AddCleanup(push(1));
  CleanupHandle h2 = ctx->AddCleanup(push(2));
  CleanupHandle h3 = ctx->AddCleanup(push(3), CleanupPhase::kBeforeChildren);
  EXPECT_TRUE(ctx->RunCleanup(h2));
  EXPECT_EQ(log, std::vector<int>({2}));
  EXPECT_FALSE(ctx->RunCleanup(h2));  // already ran
  EXPECT_TRUE(ctx->RemoveCleanup(h1));
  EXPECT_FALSE(ctx->RemoveCleanup(h1));
  EXPECT_FALSE(ctx->RemoveCleanup(CleanupHandle()));
  ctx->Reset();
  EXPECT_EQ(log, std::vector<int>({2, 3}));
  EXPECT_FALSE(h3 ? false : true);
  ctx->Destroy();
  EXPECT_EQ(log, std::vector<int>({2, 3}));
}

// A cleanup runs while its context's memory is still readable.
TEST_F(ContextTest, CleanupSeesLiveMemory) {
  Context* ctx = Root();
  char* text = ctx->Strdup("still here");
  std::string seen;
  ctx->AddCleanup([text, &seen] { seen = text; });
  ctx->Destroy();
  EXPECT_EQ(seen, "still here");
}

// Removed records are reused: registering and removing in a loop does not
// grow the context.
TEST_F(ContextTest, RemovedCleanupRecordsAreReused) {
  Context* ctx = Root();
  auto noop = [](void*) {};
  ctx->RemoveCleanup(ctx->AddCleanup(noop, nullptr));
  size_t used = ctx->bytes_in_blocks();
  size_t free_bytes = GetCounters(ctx).free_bytes;
  for (int i = 0; i < 10000; ++i) ctx->RemoveCleanup(ctx->AddCleanup(noop, nullptr));
  EXPECT_EQ(ctx->bytes_in_blocks(), used);
  EXPECT_EQ(GetCounters(ctx).free_bytes, free_bytes);
  ctx->Destroy();
}

// DestroyChildren keeps the context and its memory.
TEST_F(ContextTest, DestroyChildrenKeepsSelf) {
  if (internal::kDirect) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* root = Root();
  char* s = root->Strdup("kept");
  for (int i = 0; i < 10; ++i) root->CreateChild("c", FreelistKind())->Alloc(100);
  root->DestroyChildren();
  EXPECT_EQ(root->first_child(), nullptr);
  EXPECT_STREQ(s, "kept");
  EXPECT_EQ(source_.live_blocks(), 1);
  root->Destroy();
}

// Strdup and AllocBytes give byte strings with no alignment padding.
TEST_F(ContextTest, StrdupCopiesAndTerminates) {
  if (internal::kDirect) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  Context* ctx = Root();
  char* a = ctx->Strdup("abc");
  char* b = ctx->Strdup(std::string_view("xyz123", 3));
  EXPECT_STREQ(a, "abc");
  EXPECT_STREQ(b, "xyz");
  if (!internal::kChecking) {
    EXPECT_EQ(b, a + 4);  // checking builds add headers
  }
  ctx->Destroy();
}

// A failing first block leaves the parent as it was.
TEST_F(ContextTest, FailedCreateLeavesParentUntouched) {
  Context* root = Root();
  source_.FailNth(1);
  EXPECT_EQ(Context::TryCreate(root, "x", FreelistKind()), nullptr);
  EXPECT_EQ(root->last_failure(), Failure::kOutOfMemory);
  EXPECT_EQ(root->first_child(), nullptr);
  EXPECT_NE(Context::TryCreate(root, "y", FreelistKind()), nullptr);
  root->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Invalid kind options are refused at creation, with nothing leaked.
TEST_F(ContextTest, InvalidKindOptionsAreRefused) {
  Context* root = Root();
  FreelistOptions o;
  o.chunk_limit = kMaxSizeClassBytes + 1;
  EXPECT_EQ(Context::TryCreate(root, "bad", FreelistKind(o)), nullptr);
  EXPECT_EQ(root->last_failure(), Failure::kBadArgument);
  EXPECT_EQ(source_.live_blocks(), 1);
  root->Destroy();
}

// Options that no first block can satisfy are refused before any block is
// acquired: a huge initial block is never asked for.
TEST_F(ContextTest, OversizedOptionsAreRefusedBeforeAnyAcquisition) {
  Context* root = Root();
  const int64_t acquires = source_.acquires();
  FreelistOptions fo;
  fo.initial_block_size = kMaxFreelistBlockSize + 1;
  EXPECT_EQ(Context::TryCreate(root, "f", FreelistKind(fo)), nullptr);
  EXPECT_EQ(root->last_failure(), Failure::kBadSize);
  fo.initial_block_size = SIZE_MAX;
  EXPECT_EQ(Context::TryCreate(root, "f", FreelistKind(fo)), nullptr);
  EXPECT_EQ(root->last_failure(), Failure::kBadSize);
  PoolOptions po;
  po.max_small = kMaxAllocSize + 1;
  EXPECT_EQ(Context::TryCreate(root, "p", PoolKind(po)), nullptr);
  EXPECT_EQ(root->last_failure(), Failure::kBadSize);
  EXPECT_EQ(source_.acquires(), acquires);
  EXPECT_EQ(root->first_child(), nullptr);
  root->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// A root's creation throws what a child's would: an overflowing size is
// std::bad_array_new_length, a bad argument std::invalid_argument.
TEST(ContextRootTest, RootCreationThrowsByFailure) {
  PoolOptions po;
  po.initial_block_size = (size_t{1} << 40) + 1;
  EXPECT_THROW(Context::Create(nullptr, "big", PoolKind(po)), std::bad_array_new_length);
  Context* parent = Context::Create(nullptr, "parent", PoolKind());
  EXPECT_THROW(parent->CreateChild("big", PoolKind(po)), std::bad_array_new_length);
  parent->Destroy();
  EXPECT_THROW(Context::Create(nullptr, nullptr, PoolKind()), std::invalid_argument);
}

// A block source that gives less than it was asked for has broken its
// contract: the block goes back, and the call fails as out of
// memory instead of the kind writing past the block.
class ShortBlockSource final : public BlockSource {
 public:
  Block Acquire(size_t min_size, size_t alignment) override {
    ++acquires;
    if (short_from > 0 && --short_from == 0) {
      ++shorted;
      Block b = upstream.Acquire(min_size, alignment);
      real_size[b.ptr] = b.size;
      b.size = min_size / 2;  // a lie about what it gives
      return b;
    }
    return upstream.Acquire(min_size, alignment);
  }
  void Release(Block block) override {
    auto it = real_size.find(block.ptr);
    if (it != real_size.end()) {
      block.size = it->second;
      real_size.erase(it);
    }
    upstream.Release(block);
  }
  CountingBlockSource upstream;
  std::map<void*, size_t> real_size;  // of the short blocks handed out
  int acquires = 0;
  int short_from = 0;  // the Nth acquisition from now is short
  int shorted = 0;
};

TEST(ContextShortBlockTest, ShortBlocksAreRefusedAndReturned) {
  ShortBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  source.short_from = 1;  // the first block of a root
  EXPECT_EQ(Context::TryCreate(nullptr, "root", PoolKind(), o), nullptr);
  EXPECT_EQ(source.shorted, 1);
  EXPECT_EQ(source.upstream.live_blocks(), 0);

  Context* root = Context::Create(nullptr, "root", PoolKind(), o);
  source.short_from = 1;  // a child's first block
  EXPECT_EQ(Context::TryCreate(root, "child", FreelistKind()), nullptr);
  EXPECT_EQ(root->last_failure(), Failure::kOutOfMemory);
  EXPECT_EQ(root->SubtreeBytes(), root->bytes_in_blocks());
  source.short_from = 1;  // a large chunk's block
  EXPECT_EQ(root->TryAlloc(100000), nullptr);
  EXPECT_EQ(root->last_failure(), Failure::kOutOfMemory);
  EXPECT_EQ(source.shorted, 3);
  EXPECT_EQ(source.upstream.live_blocks(), 1);
  std::string error;
  EXPECT_TRUE(root->Check(&error)) << error;
  void* p = root->Alloc(100000);  // the source behaves again
  std::memset(p, 1, 100000);
  root->Destroy();
  EXPECT_EQ(source.upstream.live_blocks(), 0);
  EXPECT_EQ(source.upstream.bad_releases(), 0);
}

// A failure handler may reset an ancestor of the failing context, which
// destroys it, and return: the call still throws, and reads nothing of the
// context that is gone.
TEST(ContextHandlerTest, HandlerThatResetsTheParentThenReturns) {
  Context* parent = Context::Create(nullptr, "parent", PoolKind());
  Context* child = parent->CreateChild("child", FreelistKind());
  parent->SetFailureHandler([](const FailureInfo& info) { info.context->parent()->Reset(); });
  EXPECT_THROW(child->AllocAligned(64, 3), std::invalid_argument);
  EXPECT_EQ(parent->first_child(), nullptr);
  std::string error;
  EXPECT_TRUE(parent->Check(&error)) << error;
  parent->Destroy();
}

// Removing a callable cleanup destroys the callable unrun.
TEST_F(ContextTest, RemovingACallableCleanupDestroysIt) {
  Context* ctx = Context::Create(nullptr, "c", FreelistKind());
  auto owned = std::make_shared<int>(7);
  bool ran = false;
  CleanupHandle h = ctx->AddCleanup([owned, &ran] { ran = *owned == 7; });
  EXPECT_EQ(owned.use_count(), 2);
  EXPECT_TRUE(ctx->RemoveCleanup(h));
  EXPECT_EQ(owned.use_count(), 1);
  CleanupHandle h2 = ctx->AddCleanup([owned, &ran] { ran = *owned == 7; });
  EXPECT_TRUE(ctx->RunCleanup(h2));
  EXPECT_TRUE(ran);
  EXPECT_EQ(owned.use_count(), 1);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
}

// A cleanup may destroy a child that is not yet torn down.
TEST_F(ContextTest, CleanupMayDestroyAnUnvisitedChild) {
  Context* root = Root();
  Context* older = root->CreateChild("older", FreelistKind());
  Context* newer = root->CreateChild("newer", PoolKind());
  newer->AddCleanup([older] { older->Destroy(); });
  root->Reset();
  EXPECT_EQ(root->first_child(), nullptr);
  EXPECT_EQ(source_.live_blocks(), 1);
  root->Destroy();
}

// Tearing down an ancestor from a descendant's cleanup pulls the ground
// from under the running walk: the inner call finishes the teardown, and the
// interrupted one reports the misuse when it resumes.
TEST(ContextDeathTest, ResetOfAncestorFromCleanupIsReported) {
  EXPECT_DEATH(
      {
        Context* p = CreatePoolContext(nullptr, "parent");
        Context* c = p->CreateChild("child", PoolKind());
        c->AddCleanup([p] { p->Reset(); });
        c->Destroy();
      },
      "a cleanup reset or destroyed context .* while that context was being torn down");
}

// Destroying a context twice is caught while its memory has not been reused
// (ASan reports the stale read itself, since the cached block is poisoned).
TEST(ContextDeathTest, DestroyTwiceIsReported) {
  EXPECT_DEATH(
      {
        Context* ctx = CreatePoolContext(nullptr, "once");
        ctx->Destroy();
        ctx->Destroy();
      },
      "already destroyed|AddressSanitizer");
}

// Checking builds: a context used from two threads at the same time is
// reported (APR's concurrency check). Thread A is inside an allocation (its
// block source is slow to answer) when thread B arrives. (Failure handlers
// are user code and run outside the check: they may longjmp.)
TEST(ContextDeathTest, UseFromTwoThreadsAtOnceIsReported) {
  if (!internal::kChecking) GTEST_SKIP() << "needs --config=checking";
  EXPECT_DEATH(
      {
        static std::atomic<bool> inside{false};
        struct SlowSource : CountingBlockSource {
          Block Acquire(size_t min_size, size_t alignment) override {
            inside = true;
            std::this_thread::sleep_for(std::chrono::seconds(5));
            return CountingBlockSource::Acquire(min_size, alignment);
          }
        };
        static SlowSource slow;
        ContextOptions o;
        o.block_source = &slow;
        inside = false;
        Context* ctx = Context::Create(nullptr, "shared", FreelistKind(), o);
        inside = false;
        std::thread a([ctx] { ctx->Alloc(1 << 20); });  // a dedicated block: slow
        while (!inside) std::this_thread::yield();
        ctx->TryAlloc(100);
        a.join();
      },
      "context 'shared' at .* is used from two threads at the same time");
}

// Checking builds: a cleanup may not allocate in the context it belongs to
// while that context is torn down (the memory is about to go).
TEST(ContextDeathTest, AllocationDuringOwnTeardownIsReported) {
  if (!internal::kChecking) GTEST_SKIP() << "needs --config=checking";
  EXPECT_DEATH(
      {
        Context* ctx = CreatePoolContext(nullptr, "dying");
        ctx->AddCleanup([ctx] { ctx->Alloc(16); });
        ctx->Destroy();
      },
      "allocation in context 'dying' at .* while it is being torn down");
}

// Checking builds: a pointer into a destroyed context reads as clobbered
// memory, and freeing it says so.
TEST(ContextDeathTest, FreeOfAChunkOfADestroyedContextIsReported) {
  if (!internal::kChecking) GTEST_SKIP() << "needs --config=checking";
  EXPECT_DEATH(
      {
        Context* root = CreateFreelistContext(nullptr, "root");
        Context* child = root->CreateChild("child", FreelistKind());
        void* p = child->Alloc(100);
        child->Destroy();
        mcx::Free(p);
      },
      "its memory was freed, reset or destroyed");
}

// Reset and destroy of a context during its own teardown is misuse.
TEST(ContextDeathTest, DestroyDuringOwnTeardownIsReported) {
  EXPECT_DEATH(
      {
        Context* ctx = CreatePoolContext(nullptr, "dying");
        ctx->AddCleanup([ctx] { ctx->Destroy(); });
        ctx->Destroy();
      },
      "being torn down");
}


// A plain context's header is at most 96 bytes in release builds (checking
// builds add the concurrency check's fields); what only some contexts use
// is in a side record, made on first use and counted where limits count.
TEST(ContextLayoutTest, HeaderIsSmallAndTheSideRecordIsMadeOnDemand) {
  if (internal::kDirect) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  if (!internal::kChecking) {
    EXPECT_LE(sizeof(Context), 96u);
  }
  CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* plain = Context::Create(nullptr, "plain", PoolKind(), o);
  EXPECT_EQ(plain->side_record_bytes(), 0u);
  EXPECT_EQ(source.live_blocks(), 1);
  plain->AddCleanup([] {});
  EXPECT_GT(plain->side_record_bytes(), 0u);
  EXPECT_EQ(source.live_blocks(), 2);
  EXPECT_EQ(plain->SubtreeBytes(), plain->bytes_in_blocks() + plain->side_record_bytes());
  plain->Reset();
  EXPECT_EQ(source.live_blocks(), 2);  // the record survives resets
  plain->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

// A source that hands out odd amounts of slack, as a cache reusing a
// larger block does.
class OddSlackSource : public CountingBlockSource {
 public:
  static constexpr size_t kSlack = 13;
  Block Acquire(size_t min_size, size_t alignment) override {
    return CountingBlockSource::Acquire(min_size + kSlack, alignment);
  }
};

// The first block's size is kept in the block (after the kind's state):
// exact for any size a source gives, odd ones included, and all of it is
// used and counted; what the source gave is what goes back.
TEST(ContextLayoutTest, FirstBlockSizesAreExactWhateverTheSourceGives) {
  if (internal::kDirect) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  OddSlackSource source;
  ContextOptions o;
  o.block_source = &source;
  const size_t kAsked[] = {1024, 3000, 4104, 128 * 1024 + 8, 1000 * 1000 + 3,
                           16 * 1024 * 1024 + 1024};
  for (size_t asked : kAsked) {
    PoolOptions po;
    po.initial_block_size = asked;
    Context* ctx = Context::Create(nullptr, "sized", PoolKind(po), o);
    const size_t got = ctx->first_block_size();
    EXPECT_GE(got, asked + OddSlackSource::kSlack) << asked;
    EXPECT_EQ(got, source.live_bytes()) << asked;  // every byte the source gave
    EXPECT_EQ(ctx->bytes_in_blocks(), got);
    Context* child = Context::Create(ctx, "child", PoolKind());
    EXPECT_EQ(child->first_block_size() + got, source.live_bytes()) << asked;
    EXPECT_STREQ(child->name(), "child");
    ctx->Destroy();
    EXPECT_EQ(source.live_blocks(), 0);
    EXPECT_EQ(source.live_bytes(), 0u) << asked;
    EXPECT_EQ(source.bad_releases(), 0) << asked;
  }
}

// --- Findings of 2026-12 (docs/reliability.md lists them) --------------------

std::jmp_buf finding_jump;
void JumpHandler(const FailureInfo&) { std::longjmp(finding_jump, 1); }

// The engine's query runs a few calls deep; its end tears the tree down.
ABSL_ATTRIBUTE_NOINLINE void DestroyDeep(Context* ctx) {
  volatile char scratch[2048];
  scratch[0] = 0;
  ctx->Destroy();
  (void)scratch[0];
}

// What an engine's error path does after the longjmp: it writes over the
// stack where the abandoned teardown's frames were.
ABSL_ATTRIBUTE_NOINLINE void ScribbleStack() {
  volatile char line[8192];
  for (size_t i = 0; i < sizeof(line); ++i) line[i] = static_cast<char>(0x5A);
}

// Finding B1: a failure handler that longjmps out of a cleanup in the middle
// of a teardown. The thread then creates and destroys contexts normally, and
// destroying the half-torn-down tree again releases everything, running the
// cleanups that had not run, once.
TEST(ContextFindingsTest, FindingB1LongjmpOutOfATeardown) {
  CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* r = Context::Create(nullptr, "r", PoolKind(), o);
  r->SetFailureHandler(&JumpHandler);
  ContextOptions limited;
  limited.limit = 16 * 1024;
  Context* a = r->CreateChild("a", PoolKind(), limited);  // torn down second
  Context* b = r->CreateChild("b", PoolKind());           // torn down first
  static int a_ran, r_ran;
  a_ran = r_ran = 0;
  a->AddCleanup([] { ++a_ran; });
  r->AddCleanup([] { ++r_ran; });
  b->AddCleanup([a] {
    PoolOptions big;
    big.initial_block_size = 64 * 1024;  // over a's limit: the handler longjmps
    a->CreateChild("a-child", PoolKind(big));
  });
  if (setjmp(finding_jump) == 0) {
    DestroyDeep(r);
    ADD_FAILURE() << "the handler did not jump";
  }
  ScribbleStack();
  EXPECT_EQ(a_ran, 0);
  Context* x = Context::Create(nullptr, "x", PoolKind(), o);
  x->Reset();
  x->Destroy();
  r->Destroy();  // gives back the half-destroyed tree
  EXPECT_EQ(a_ran, 1);
  EXPECT_EQ(r_ran, 1);
  EXPECT_EQ(source.live_blocks(), 0);
}

// Finding B1, second form: the cleanup itself longjmps (a C engine's
// elog(ERROR) inside a callback), at depth, in the before-children phase;
// the context is then reset (not destroyed), and later cleanups still run
// once, in order.
TEST(ContextFindingsTest, FindingB1CleanupThatLongjmpsThenReset) {
  CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  static std::vector<std::string> order;
  order.clear();
  Context* top = Context::Create(nullptr, "top", FreelistKind(), o);
  Context* query = top->CreateChild("query", PoolKind());
  Context* row = query->CreateChild("row", FreelistKind());
  row->Alloc(50000);
  top->AddCleanup([] { order.push_back("top"); });
  query->AddCleanup([] { order.push_back("query-after"); });
  query->AddCleanup([] { order.push_back("query-before"); }, CleanupPhase::kBeforeChildren);
  row->AddCleanup([] { order.push_back("row-2"); });
  row->AddCleanup(
      [] {
        order.push_back("row-1 jumps");
        std::longjmp(finding_jump, 1);
      },
      CleanupPhase::kBeforeChildren);
  if (setjmp(finding_jump) == 0) {
    top->Reset();
    ADD_FAILURE() << "the cleanup did not jump";
  }
  ScribbleStack();
  EXPECT_EQ(order, (std::vector<std::string>{"query-before", "row-1 jumps"}));
  top->Reset();
  EXPECT_EQ(order, (std::vector<std::string>{"query-before", "row-1 jumps", "row-2",
                                             "query-after", "top"}));
  EXPECT_EQ(top->first_child(), nullptr);
  std::string error;
  EXPECT_TRUE(top->Check(&error)) << error;
  EXPECT_NE(top->Alloc(100), nullptr);  // usable again
  top->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

// Finding B4: a cleanup that throws does not stop the teardown. Every other
// cleanup runs once, in order, every block goes back, and the first
// exception propagates afterwards.
TEST(ContextFindingsTest, FindingB4ThrowingCleanupCompletesTheTeardown) {
  CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  static std::vector<std::string> order;
  order.clear();
  Context* root = Context::Create(nullptr, "root", FreelistKind(), o);
  Context* child = root->CreateChild("child", PoolKind());
  child->Alloc(100000);
  root->AddCleanup([] { order.push_back("root-after"); });
  child->AddCleanup([] {
    order.push_back("child throws");
    throw std::logic_error("second failure");
  });
  root->AddCleanup(
      [] {
        order.push_back("root-before throws");
        throw std::runtime_error("close failed");
      },
      CleanupPhase::kBeforeChildren);
  try {
    root->Destroy();
    ADD_FAILURE() << "Destroy did not throw";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "close failed");
  }
  EXPECT_EQ(order, (std::vector<std::string>{"root-before throws", "child throws",
                                             "root-after"}));
  EXPECT_EQ(source.live_blocks(), 0);
}

// Finding B4: the same on Reset and DestroyChildren: the context is usable
// afterwards and can be destroyed normally.
TEST(ContextFindingsTest, FindingB4ThrowingCleanupOnResetAndDestroyChildren) {
  CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* root = Context::Create(nullptr, "root", FreelistKind(), o);
  static int ran;
  ran = 0;
  for (int i = 0; i < 3; ++i) {
    Context* c = root->CreateChild("c", PoolKind());
    c->AddCleanup([] {
      ++ran;
      throw std::runtime_error("child");
    });
  }
  EXPECT_THROW(root->DestroyChildren(), std::runtime_error);
  EXPECT_EQ(ran, 3);
  EXPECT_EQ(root->first_child(), nullptr);
  root->AddCleanup([] { throw std::runtime_error("reset"); });
  EXPECT_THROW(root->Reset(), std::runtime_error);
  EXPECT_NE(root->Alloc(10), nullptr);
  root->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

// Finding B4: a callable cleanup that throws still destroys its captures,
// run by RunCleanup or by a teardown.
TEST(ContextFindingsTest, FindingB4ThrowingCallableDestroysItsCaptures) {
  auto resource = std::make_shared<int>(42);
  Context* c = Context::Create(nullptr, "c", FreelistKind());
  CleanupHandle h = c->AddCleanup([resource] { throw std::runtime_error("flush failed"); });
  c->AddCleanup([resource] { throw std::runtime_error("at teardown"); });
  EXPECT_EQ(resource.use_count(), 3);
  EXPECT_THROW(c->RunCleanup(h), std::runtime_error);
  EXPECT_EQ(resource.use_count(), 2);
  EXPECT_THROW(c->Destroy(), std::runtime_error);
  EXPECT_EQ(resource.use_count(), 1);
}

// Finding B6: a failure handler that resets the failing context's parent
// (destroying it) and returns: the failing call touches nothing of the
// context that is gone. On the system source, checking+asan builds and
// memcheck see any such access.
TEST(ContextFindingsTest, FindingB6HandlerResetsTheParentAfterALimit) {
  SystemBlockSource system;
  ContextOptions po;
  po.block_source = &system;
  static Context* parent;
  parent = Context::Create(nullptr, "parent", PoolKind(), po);
  parent->SetFailureHandler([](const FailureInfo&) { parent->Reset(); });
  ContextOptions o;
  o.limit = 32 * 1024;
  Context* child = parent->CreateChild("child", PoolKind(), o);
  EXPECT_THROW(child->Alloc(1 << 20), std::bad_alloc);
  EXPECT_EQ(parent->first_child(), nullptr);
  parent->Destroy();
}

// Finding A1: a Destroy reads or writes nothing of the context after its
// first block went back (checking builds held their concurrency guard
// across the release). On the system source, checking+asan and memcheck
// see it.
TEST(ContextFindingsTest, FindingA1DestroyTouchesNothingAfterTheRelease) {
  SystemBlockSource system;
  ContextOptions o;
  o.block_source = &system;
  for (int i = 0; i < 10; ++i) {
    Context* ctx = Context::Create(nullptr, "c", FreelistKind(), o);
    void* p = ctx->Alloc(100);
    ctx->Free(p);
    ctx->Reset();
    ctx->Destroy();
  }
  SUCCEED();
}

// Finding B10: a handle kept after its cleanup ran is stale: removing or
// running it again is refused, and does not act on the cleanup registered
// next in the same record.
TEST(ContextFindingsTest, FindingB10StaleHandleIsRefused) {
  static int closed_file, released_lock;
  closed_file = released_lock = 0;
  Context* c = Context::Create(nullptr, "c", FreelistKind());
  CleanupHandle close_file = c->AddCleanup([](void*) { ++closed_file; }, nullptr);
  EXPECT_TRUE(c->RunCleanup(close_file));
  c->AddCleanup([](void*) { ++released_lock; }, nullptr);  // reuses the record
  EXPECT_FALSE(c->RemoveCleanup(close_file));
  EXPECT_FALSE(c->RunCleanup(close_file));
  EXPECT_EQ(released_lock, 0);
  CleanupHandle before_reset = c->AddCleanup([](void*) {}, nullptr);
  c->Reset();
  EXPECT_EQ(released_lock, 1);
  c->AddCleanup([](void*) { ++released_lock; }, nullptr);
  EXPECT_FALSE(c->RemoveCleanup(before_reset));  // from before the reset
  c->Destroy();
  EXPECT_EQ(closed_file, 1);
  EXPECT_EQ(released_lock, 2);
}

// Finding B7: the reserve serves a rewind_on_free pool (its blocks are
// aligned to their size; reserve blocks are acquired that way too).
TEST(ContextFindingsTest, FindingB7ReserveServesARewindPool) {
  if (internal::kDirect) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  FailingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  o.reserve_blocks = 4;
  o.reserve_block_size = 16 * 1024;
  PoolOptions rewind;
  rewind.rewind_on_free = true;
  Context* c = Context::Create(nullptr, "rewind", PoolKind(rewind), o);
  source.FailFrom(1);
  int served = 0;
  while (c->TryAlloc(1000) != nullptr) ++served;
  EXPECT_EQ(c->reserve_uses(), 4u);
  EXPECT_EQ(c->reserve_blocks(), 0u);
  EXPECT_GT(served, 4 * 7);
  EXPECT_EQ(c->last_failure(), Failure::kOutOfMemory);
  std::string error;
  EXPECT_TRUE(c->Check(&error)) << error;
  source.Heal();
  c->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

// An absurd reserve is refused before any reserve block is acquired, not
// after taking blocks until the source fails.
TEST(ContextFindingsTest, AbsurdReserveIsRefused) {
  CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  o.reserve_blocks = ~size_t{0} / 2;
  EXPECT_EQ(Context::TryCreate(nullptr, "r", PoolKind(), o), nullptr);
  EXPECT_LE(source.acquires(), 2);  // the first block and the side record
  EXPECT_EQ(source.live_blocks(), 0);
}

std::vector<std::string>* finding_reports = nullptr;
void RecordReport(const char* message) {
  if (finding_reports != nullptr) finding_reports->push_back(message);
}

// Finding B11: checking builds catch a second Destroy even though the
// default cache would hand the released block to the next creation at once:
// first blocks wait in a quarantine, and the live context is untouched.
TEST(ContextFindingsTest, FindingB11DestroyTwiceIsCaughtWithTheDefaultSource) {
  if (!internal::kChecking) GTEST_SKIP() << "needs --config=checking";
  std::vector<std::string> reports;
  finding_reports = &reports;
  MisuseHandler previous = SetMisuseHandler(&RecordReport);
  Context* a = Context::Create(nullptr, "a", PoolKind());
  a->Destroy();
  Context* b = Context::Create(nullptr, "b", PoolKind());
  EXPECT_NE(static_cast<void*>(a), static_cast<void*>(b));
  a->Destroy();  // stale pointer: a double destroy
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_NE(reports[0].find("already destroyed"), std::string::npos) << reports[0];
  EXPECT_NE(b->Alloc(64), nullptr);  // b is untouched
  EXPECT_STREQ(b->name(), "b");
  b->Destroy();
  SetMisuseHandler(previous);
  finding_reports = nullptr;
}

// Finding B5 (checking builds): a failure handler that longjmps out of a
// failing allocation leaves no concurrency guard held: the thread can then
// hand the context to another thread.
TEST(ContextFindingsTest, FindingB5LongjmpLeavesNoGuardHeld) {
  if (!internal::kChecking) GTEST_SKIP() << "needs --config=checking";
  std::vector<std::string> reports;
  finding_reports = &reports;
  MisuseHandler previous = SetMisuseHandler(&RecordReport);
  ContextOptions o;
  o.limit = 64 * 1024;
  Context* c = Context::Create(nullptr, "handed-off", FreelistKind(), o);
  c->SetFailureHandler(&JumpHandler);
  if (setjmp(finding_jump) == 0) {
    c->Alloc(1 << 20);
    ADD_FAILURE() << "the handler did not jump";
  }
  std::thread b([c] {
    EXPECT_NE(c->Alloc(100), nullptr);
    c->Destroy();
  });
  b.join();
  EXPECT_TRUE(reports.empty()) << reports.front();
  SetMisuseHandler(previous);
  finding_reports = nullptr;
}

// A cleanup that destroys the context being torn down: the inner Destroy
// finishes the teardown (every cleanup once, every block back) and the outer
// one, when it resumes, reports the misuse without touching the context.
TEST(ContextFindingsTest, CleanupDestroyingItsDyingContextIsReportedAfterwards) {
  CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  std::vector<std::string> reports;
  finding_reports = &reports;
  MisuseHandler previous = SetMisuseHandler(&RecordReport);
  static int ran;
  ran = 0;
  Context* root = Context::Create(nullptr, "root", PoolKind(), o);
  Context* child = root->CreateChild("child", FreelistKind());
  child->AddCleanup([] { ++ran; });
  root->AddCleanup([] { ++ran; });
  root->AddCleanup([root] { root->Destroy(); }, CleanupPhase::kBeforeChildren);
  root->Destroy();
  EXPECT_EQ(ran, 2);
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_NE(reports[0].find("while that context was being torn down"), std::string::npos);
  EXPECT_EQ(source.live_blocks(), 0);
  SetMisuseHandler(previous);
  finding_reports = nullptr;
}

}  // namespace
}  // namespace mcx
