// Tests for mcx/context/no_alloc.h: what a NoAllocScope refuses in each
// build, through which path, the contexts it allows, and a failure handler
// that throws or longjmps out of a scope.

#include "mcx/context/no_alloc.h"

#include <csetjmp>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/new.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"

namespace mcx {
namespace {

// Larger than any block a fresh context holds: it needs a block from the
// source, so every build refuses it inside a scope.
constexpr size_t kNeedsABlock = size_t{1} << 20;
// Fits the first block of a fresh context: only checking builds (and direct
// mode, where every chunk is a block) refuse it.
constexpr size_t kFitsHeld = 64;
// Whether a small allocation from held blocks is refused too.
constexpr bool kRefusesEvery = internal::kChecking || internal::kDirect;

// Counts its calls; the argument is an int counter.
void CountingHandler(const FailureInfo& info) {
  ++*static_cast<int*>(info.arg);
  EXPECT_EQ(info.failure, Failure::kForbidden);
}

class NoAllocTest : public ::testing::Test {
 protected:
  void TearDown() override { EXPECT_EQ(NoAllocScope::Depth(), 0); }
};

// A chunk that needs a block: refused in every build, by nullptr from the
// Try form and by the handler and std::logic_error from the throwing form,
// with the context unchanged; allowed again after the scope.
TEST_F(NoAllocTest, RefusesWhatNeedsABlock) {
  for (const char* kind : {"pool", "freelist"}) {
    SCOPED_TRACE(kind);
    Context* ctx = std::string(kind) == "pool" ? CreatePoolContext(nullptr, "wal")
                                                : CreateFreelistContext(nullptr, "wal");
    int calls = 0;
    ASSERT_TRUE(ctx->SetFailureHandler(&CountingHandler, &calls));
    const size_t blocks = ctx->num_blocks();
    const size_t bytes = GetCounters(ctx).total_bytes;
    {
      NoAllocScope no_alloc;
      EXPECT_EQ(NoAllocScope::Depth(), 1);
      EXPECT_EQ(ctx->TryAlloc(kNeedsABlock), nullptr);
      EXPECT_EQ(ctx->last_failure(), Failure::kForbidden);
      EXPECT_EQ(calls, 0);  // Try forms do not call the handler
      try {
        ctx->Alloc(kNeedsABlock);
        ADD_FAILURE() << "no exception";
      } catch (const std::logic_error& e) {
        EXPECT_NE(std::string(e.what()).find("NoAllocScope"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("'wal'"), std::string::npos) << e.what();
      }
      EXPECT_EQ(calls, 1);
      EXPECT_EQ(ctx->num_blocks(), blocks);
      EXPECT_EQ(GetCounters(ctx).total_bytes, bytes);
    }
    EXPECT_EQ(NoAllocScope::Depth(), 0);
    char* p = static_cast<char*>(ctx->Alloc(kNeedsABlock));
    std::memset(p, 1, kNeedsABlock);
    EXPECT_TRUE(ctx->Check(nullptr));
    ctx->Destroy();
  }
}

// An allocation from blocks already held: refused in checking builds (and
// direct mode), served in release builds, whose inline path checks nothing.
TEST_F(NoAllocTest, SmallAllocationsAreRefusedInCheckingBuilds) {
  Context* ctx = CreatePoolContext(nullptr, "page");
  Context* fl = CreateFreelistContext(nullptr, "tuples");
  {
    NoAllocScope no_alloc;
    void* p = ctx->TryAlloc(kFitsHeld);
    void* q = fl->TryAlloc(kFitsHeld);
    void* r = ctx->TryAllocBytes(3);
    if (kRefusesEvery) {
      EXPECT_EQ(p, nullptr);
      EXPECT_EQ(q, nullptr);
      EXPECT_EQ(r, nullptr);
      EXPECT_EQ(ctx->last_failure(), Failure::kForbidden);
      EXPECT_EQ(fl->last_failure(), Failure::kForbidden);
      EXPECT_THROW(New<std::string>(ctx, "not constructed"), std::logic_error);
    } else {
      EXPECT_NE(p, nullptr);
      EXPECT_NE(q, nullptr);
      EXPECT_NE(r, nullptr);
    }
  }
  ctx->Destroy();
  fl->Destroy();
}

// No context is created inside a scope, with or without a parent; the
// parent's handler runs for a child.
TEST_F(NoAllocTest, CreationIsRefused) {
  Context* top = CreatePoolContext(nullptr, "top");
  int calls = 0;
  ASSERT_TRUE(top->SetFailureHandler(&CountingHandler, &calls));
  const size_t children = GetSubtreeCounters(top).contexts;
  {
    NoAllocScope no_alloc;
    EXPECT_EQ(Context::TryCreate(nullptr, "root", PoolKind()), nullptr);
    EXPECT_EQ(Context::TryCreate(top, "child", PoolKind()), nullptr);
    EXPECT_EQ(top->last_failure(), Failure::kForbidden);
    EXPECT_THROW(top->CreateChild("child", FreelistKind()), std::logic_error);
    EXPECT_EQ(calls, 1);
    EXPECT_THROW(Context::Create(nullptr, "root", PoolKind()), std::logic_error);
  }
  EXPECT_EQ(GetSubtreeCounters(top).contexts, children);
  top->CreateChild("child", PoolKind());
  top->Destroy();
}

// An allowed context allocates inside a scope, whatever the size; its
// children and other contexts do not. Options give the same.
TEST_F(NoAllocTest, AllowedContextsAllocate) {
  Context* err = CreatePoolContext(nullptr, "error");
  ASSERT_TRUE(err->AllowInNoAllocScope());
  EXPECT_TRUE(err->allowed_in_no_alloc_scope());
  Context* child = err->CreateChild("child", PoolKind());
  EXPECT_FALSE(child->allowed_in_no_alloc_scope());
  ContextOptions o;
  o.allow_in_no_alloc_scope = true;
  Context* opt = Context::Create(nullptr, "by options", FreelistKind(), o);
  EXPECT_TRUE(opt->allowed_in_no_alloc_scope());
  {
    NoAllocScope no_alloc;
    char* msg = err->Strdup("could not write block 7");
    EXPECT_STREQ(msg, "could not write block 7");
    void* big = err->Alloc(kNeedsABlock);
    std::memset(big, 2, kNeedsABlock);
    EXPECT_NE(opt->Alloc(kNeedsABlock), nullptr);
    EXPECT_EQ(child->TryAlloc(kNeedsABlock), nullptr);
    EXPECT_EQ(child->last_failure(), Failure::kForbidden);
  }
  ASSERT_TRUE(err->AllowInNoAllocScope(false));
  {
    NoAllocScope no_alloc;
    EXPECT_EQ(err->TryAlloc(kNeedsABlock), nullptr);
  }
  err->Destroy();
  opt->Destroy();
}

// Scopes nest; freeing, resetting, destroying and growing in place stay
// allowed; a realloc that needs a new block is refused and leaves the old
// chunk as it was.
TEST_F(NoAllocTest, NestsAndAllowsFreeing) {
  Context* fl = CreateFreelistContext(nullptr, "buffers");
  Context* doomed = CreatePoolContext(nullptr, "doomed");
  char* big = static_cast<char*>(fl->Alloc(kNeedsABlock));  // a block of its own
  std::memset(big, 'b', kNeedsABlock);
  void* small = fl->Alloc(100);
  {
    NoAllocScope outer;
    {
      NoAllocScope inner;
      EXPECT_EQ(NoAllocScope::Depth(), 2);
      EXPECT_EQ(fl->TryRealloc(big, 4 * kNeedsABlock), nullptr);
      EXPECT_EQ(fl->last_failure(), Failure::kForbidden);
    }
    EXPECT_EQ(NoAllocScope::Depth(), 1);
    EXPECT_EQ(fl->TryAlloc(kNeedsABlock), nullptr);
    fl->Free(small);
    doomed->Reset();
    doomed->Destroy();
  }
  for (size_t i = 0; i < kNeedsABlock; i += 4096) ASSERT_EQ(big[i], 'b');
  big = static_cast<char*>(fl->Realloc(big, 4 * kNeedsABlock));
  EXPECT_EQ(big[kNeedsABlock - 1], 'b');
  EXPECT_TRUE(fl->Check(nullptr));
  fl->Destroy();
}

// The scope is the calling thread's: another thread allocates freely.
TEST_F(NoAllocTest, ScopesArePerThread) {
  Context* mine = CreatePoolContext(nullptr, "mine");
  {
    NoAllocScope no_alloc;
    std::thread other([] {
      EXPECT_EQ(NoAllocScope::Depth(), 0);
      Context* theirs = CreatePoolContext(nullptr, "theirs");
      EXPECT_NE(theirs->TryAlloc(kNeedsABlock), nullptr);
      theirs->Destroy();
    });
    other.join();
    EXPECT_EQ(mine->TryAlloc(kNeedsABlock), nullptr);
  }
  mine->Destroy();
}

struct HandlerThrew {};

void ThrowingHandler(const FailureInfo&) { throw HandlerThrew(); }

// A handler that throws its own exception unwinds the scope like any other
// destructor: the depth is back to 0, the context serves the next call.
TEST_F(NoAllocTest, HandlerThatThrowsUnwindsTheScope) {
  Context* ctx = CreateFreelistContext(nullptr, "ctx");
  ASSERT_TRUE(ctx->SetFailureHandler(&ThrowingHandler));
  try {
    NoAllocScope no_alloc;
    ctx->Alloc(kNeedsABlock);
    ADD_FAILURE() << "no exception";
  } catch (const HandlerThrew&) {
  }
  EXPECT_EQ(NoAllocScope::Depth(), 0);
  EXPECT_NE(ctx->Alloc(kNeedsABlock), nullptr);
  EXPECT_TRUE(ctx->Check(nullptr));
  ctx->Destroy();
}

std::jmp_buf landing;

void LongjmpHandler(const FailureInfo& info) {
  ++*static_cast<int*>(info.arg);
  std::longjmp(landing, 1);
}

// A handler that longjmps (a C engine's elog) skips the scope's destructor;
// the landing point restores the depth it saved, and the context, which
// the refusal left unchanged, serves the next call. The scope lives in
// plain storage in this frame, as a C engine's begin/end would: a longjmp
// may not skip a C++ destructor.
TEST_F(NoAllocTest, HandlerThatLongjmpsAndTheLandingRestores) {
  Context* ctx = CreatePoolContext(nullptr, "ctx");
  static int calls = 0;
  ASSERT_TRUE(ctx->SetFailureHandler(&LongjmpHandler, &calls));
  const size_t blocks = ctx->num_blocks();
  alignas(NoAllocScope) static unsigned char storage[sizeof(NoAllocScope)];
  const int saved = NoAllocScope::Depth();
  if (setjmp(landing) == 0) {
    new (storage) NoAllocScope();
    ctx->Alloc(kNeedsABlock);
    ADD_FAILURE() << "the handler did not jump";
  }
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(NoAllocScope::Depth(), saved + 1);  // the scope was never ended
  NoAllocScope::RestoreDepth(saved);
  EXPECT_EQ(ctx->num_blocks(), blocks);
  EXPECT_TRUE(ctx->Check(nullptr));
  EXPECT_NE(ctx->Alloc(kNeedsABlock), nullptr);
  ctx->Destroy();
}

// A negative depth, which no Depth() returns, is misuse: reported, and
// the nesting left as it was (a negative one would forbid every block
// acquisition on the thread).
std::string restore_report;

TEST_F(NoAllocTest, RestoringANegativeDepthIsMisuse) {
  const MisuseHandler previous =
      SetMisuseHandler([](const char* message) { restore_report = message; });
  restore_report.clear();
  NoAllocScope::RestoreDepth(-1);
  EXPECT_NE(restore_report.find("cannot restore the no-allocation depth to -1"),
            std::string::npos)
      << restore_report;
  EXPECT_EQ(NoAllocScope::Depth(), 0);
  Context* ctx = CreatePoolContext(nullptr, "ctx");
  EXPECT_NE(ctx->Alloc(kNeedsABlock), nullptr);
  ctx->Destroy();
  SetMisuseHandler(previous);
}

}  // namespace
}  // namespace mcx
