// A misuse handler that returns instead of aborting (a test harness, an
// engine that logs and carries on): every misuse is reported once, the
// offending call does nothing and returns its failure value, and the
// contexts involved stay consistent and usable.

#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

std::vector<std::string>* reports = nullptr;

void Record(const char* message) { reports->push_back(message); }

class MisuseHandlerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    reports = &seen_;
    previous_ = SetMisuseHandler(&Record);
  }
  void TearDown() override {
    SetMisuseHandler(previous_);
    reports = nullptr;
  }

  // The one report since the last call, or a failure naming what came.
  std::string TakeOne() {
    EXPECT_EQ(seen_.size(), 1u) << (seen_.empty() ? std::string("no report") : seen_.back());
    std::string last = seen_.empty() ? std::string() : seen_.back();
    seen_.clear();
    return last;
  }

  static void ExpectConsistent(Context* ctx) {
    std::string error;
    EXPECT_TRUE(ctx->Check(&error)) << error;
  }

  std::vector<std::string> seen_;
  MisuseHandler previous_ = nullptr;
};

// A double free through the context and through mcx::Free: reported, and the
// chunk is not put on its freelist a second time (two allocations of its
// size then get two different chunks).
TEST_F(MisuseHandlerTest, DoubleFreeChangesNothing) {
  Context* ctx = CreateFreelistContext(nullptr, "victim");
  void* p = ctx->Alloc(48);
  ctx->Free(p);
  const size_t free_chunks = GetCounters(ctx).free_chunks;

  ctx->Free(p);
  EXPECT_NE(TakeOne().find("victim"), std::string::npos);
  mcx::Free(p);
  EXPECT_NE(TakeOne().find("freed"), std::string::npos);

  EXPECT_EQ(GetCounters(ctx).free_chunks, free_chunks);
  ExpectConsistent(ctx);
  void* a = ctx->Alloc(48);
  void* b = ctx->Alloc(48);
  EXPECT_NE(a, b);
  std::memset(a, 1, 48);
  std::memset(b, 2, 48);
  EXPECT_EQ(static_cast<unsigned char*>(a)[47], 1);
  EXPECT_TRUE(seen_.empty());
  ctx->Destroy();
}

// The context-free calls on a freed chunk return their failure values
// instead of following a missing owner.
TEST_F(MisuseHandlerTest, ContextFreeCallsOnAFreedChunk) {
  Context* ctx = CreateFreelistContext(nullptr, "victim");
  void* keep = ctx->Alloc(100);
  std::memset(keep, 0x5A, 100);
  void* p = ctx->Alloc(100);
  ctx->Free(p);

  EXPECT_EQ(mcx::Realloc(p, 400), nullptr);
  EXPECT_NE(TakeOne().find("freed"), std::string::npos);
  EXPECT_EQ(mcx::TryRealloc(p, 400), nullptr);
  EXPECT_NE(TakeOne().find("freed"), std::string::npos);
  EXPECT_EQ(mcx::GetChunkContext(p), nullptr);
  EXPECT_NE(TakeOne().find("freed"), std::string::npos);
  EXPECT_EQ(mcx::GetChunkSize(p), 0u);
  EXPECT_NE(TakeOne().find("freed"), std::string::npos);

  // The live chunk beside it is untouched and still works context-free.
  EXPECT_EQ(static_cast<unsigned char*>(keep)[99], 0x5A);
  EXPECT_EQ(mcx::GetChunkContext(keep), ctx);
  void* grown = mcx::Realloc(keep, 400);
  ASSERT_NE(grown, nullptr);
  EXPECT_EQ(static_cast<unsigned char*>(grown)[99], 0x5A);
  EXPECT_TRUE(seen_.empty());
  ExpectConsistent(ctx);
  ctx->Destroy();
}

// Memory mcx never handed out (here: zeroed, then clobbered bytes).
TEST_F(MisuseHandlerTest, ForeignPointer) {
  alignas(16) unsigned char buffer[64] = {};
  for (unsigned char fill : {0x00, 0x7F}) {
    std::memset(buffer, fill, sizeof(buffer));
    mcx::Free(buffer + 16);
    EXPECT_NE(TakeOne().find("not a chunk allocated by mcx"), std::string::npos);
    EXPECT_EQ(mcx::Realloc(buffer + 16, 32), nullptr);
    EXPECT_NE(TakeOne().find("not a chunk allocated by mcx"), std::string::npos);
    EXPECT_EQ(mcx::GetChunkContext(buffer + 16), nullptr);
    TakeOne();
  }
  EXPECT_EQ(mcx::Realloc(nullptr, 32), nullptr);
  EXPECT_NE(TakeOne().find("no context to allocate in"), std::string::npos);
}

// A chunk freed through a context that does not own it: checking builds
// compare the owner on every free (release builds, like PostgreSQL's, trust
// the caller: docs/reliability.md).
TEST_F(MisuseHandlerTest, FreeThroughTheWrongContext) {
  if (!internal::kChecking) GTEST_SKIP() << "checked in checking builds only";
  Context* a = CreateFreelistContext(nullptr, "a");
  Context* b = CreateFreelistContext(nullptr, "b");
  void* p = a->Alloc(64);
  std::memset(p, 0x33, 64);
  b->Free(p);
  std::string report = TakeOne();
  EXPECT_NE(report.find("'b'"), std::string::npos) << report;
  EXPECT_NE(report.find("'a'"), std::string::npos) << report;
  EXPECT_EQ(mcx::GetChunkContext(p), a);  // still a's, still live
  EXPECT_EQ(static_cast<unsigned char*>(p)[63], 0x33);
  EXPECT_EQ(b->TryRealloc(p, 200), nullptr);
  EXPECT_NE(TakeOne().find("realloc of chunk"), std::string::npos);
  EXPECT_EQ(b->last_failure(), Failure::kBadArgument);
  EXPECT_EQ(static_cast<unsigned char*>(p)[63], 0x33);
  a->Free(p);
  EXPECT_TRUE(seen_.empty());
  ExpectConsistent(a);
  ExpectConsistent(b);
  a->Destroy();
  b->Destroy();
}

// A sized realloc of a pool chunk that claims more old bytes than the chunk
// holds: checking builds report it and copy only what is there.
TEST_F(MisuseHandlerTest, PoolReallocWithTooLargeOldSize) {
  if (!internal::kChecking) GTEST_SKIP() << "checked in checking builds only";
  Context* ctx = CreatePoolContext(nullptr, "pool");
  char* p = static_cast<char*>(ctx->Alloc(16));
  std::memset(p, 0x44, 16);
  char* q = static_cast<char*>(ctx->Realloc(p, 1000, 2000));
  EXPECT_NE(TakeOne().find("with old size 1000, but it holds 16 bytes"), std::string::npos);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q[15], 0x44);
  ExpectConsistent(ctx);
  EXPECT_TRUE(seen_.empty());
  ctx->Destroy();
}

// A cleanup that destroys an ancestor of the context being torn down: the
// inner Destroy finishes everything (each cleanup once, in order), and the
// interrupted teardown reports the misuse when it resumes, reading nothing
// of what is gone.
TEST_F(MisuseHandlerTest, DestroyOfAnAncestorFromACleanupIsReported) {
  static std::vector<std::string> order;
  order.clear();
  test::CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* root = Context::Create(nullptr, "root", PoolKind(), o);
  Context* query = root->CreateChild("query", PoolKind());
  Context* row = query->CreateChild("row", PoolKind());
  row->AddCleanup([root] {
    order.push_back("row");
    root->Destroy();  // query's teardown stands on root's subtree
  });
  query->AddCleanup([] { order.push_back("query"); });
  root->AddCleanup([] { order.push_back("root"); });
  query->Destroy();
  EXPECT_NE(TakeOne().find("while that context was being torn down"), std::string::npos);
  EXPECT_EQ(order, (std::vector<std::string>{"row", "query", "root"}));
  EXPECT_EQ(source.live_blocks(), 0);
  EXPECT_TRUE(seen_.empty());
}

// Creating a child of a context from one of its own teardown cleanups is
// refused: the new child would be released under the walk that is running.
TEST_F(MisuseHandlerTest, CreatingAChildOfADyingContext) {
  Context* root = CreatePoolContext(nullptr, "root");
  Context* child = nullptr;
  root->AddCleanup([&] { child = Context::TryCreate(root, "late", PoolKind()); },
                   CleanupPhase::kAfterChildren);
  root->Reset();
  EXPECT_EQ(child, nullptr);
  EXPECT_NE(TakeOne().find("being torn down"), std::string::npos);
  EXPECT_EQ(root->first_child(), nullptr);
  ExpectConsistent(root);
  root->Destroy();
  EXPECT_TRUE(seen_.empty());
}

}  // namespace
}  // namespace mcx
