// Fault injection: for each workload, fail the Nth block acquisition for
// every N until the workload completes. Each failure must surface as the
// documented error (std::bad_alloc from a throwing call), leave every context
// consistent and usable, and leak nothing once the tree is destroyed.

#include <functional>
#include <new>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/new.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

using Workload = std::function<void(Context* top)>;

// An engine's day in miniature (the demo's shape): a query context, a row
// context reset per row, a cache with churn, cleanups, large rows.
void EngineDay(Context* top) {
  Context* query = top->CreateChild("query", PoolKind());
  Context* cache = top->CreateChild("cache", FreelistKind());
  std::vector<void*> entries;
  Context* row = query->CreateChild("row", PoolKind());
  // Cleanups may run after this frame is gone (when a failure unwinds it and
  // the test destroys the tree): they touch only static state.
  static int open_cursors;
  open_cursors = 1;
  query->AddCleanup([] { --open_cursors; });
  for (int r = 0; r < 300; ++r) {
    char* text = row->Strdup("a row of text that is long enough to matter");
    text[0] = 'A';
    if (r % 50 == 0) row->Alloc(20000);
    void* e = cache->Alloc(16 + static_cast<size_t>(r * 37 % 900));
    entries.push_back(e);
    if (entries.size() > 40) {
      mcx::Free(entries.front());
      entries.erase(entries.begin());
    }
    row->Reset();
  }
  query->Destroy();
  cache->Reset();
}

// A growing buffer, as an interpreter's string builder.
void ReallocGrowth(Context* top) {
  Context* ctx = top->CreateChild("strings", FreelistKind());
  char* buf = static_cast<char*>(ctx->Alloc(1));
  size_t size = 1;
  for (int i = 0; i < 40; ++i) {
    size_t next = size * 3 / 2 + 7;
    buf = static_cast<char*>(ctx->Realloc(buf, next));
    buf[next - 1] = 'x';
    size = next;
  }
  Context* pool = top->CreateChild("pool", PoolKind());
  void* p = pool->Alloc(10);
  for (size_t n = 10; n < 100000; n *= 2) p = pool->Realloc(p, n, n * 2);
}

// A bushy tree with objects that have destructors.
void TreeOfObjects(Context* top) {
  struct Obj {
    explicit Obj(int* live) : live(live) { ++*live; }
    ~Obj() { --*live; }
    int* live;
  };
  static int live;  // outlives this frame, as the objects may
  live = 0;
  std::vector<Context*> level = {top};
  for (int depth = 0; depth < 3; ++depth) {
    std::vector<Context*> next;
    for (Context* parent : level) {
      for (int k = 0; k < 5; ++k) {
        Context* c = parent->CreateChild("node", k % 2 ? PoolKind() : FreelistKind());
        New<Obj>(c, &live);
        c->Alloc(3000);
        next.push_back(c);
      }
    }
    level = next;
  }
  top->DestroyChildren();
  if (live != 0) throw std::logic_error("destructors did not run");
}

void CheckTree(Context* top) {
  std::vector<Context*> stack = {top};
  while (!stack.empty()) {
    Context* c = stack.back();
    stack.pop_back();
    std::string error;
    ASSERT_TRUE(c->Check(&error)) << error;
    for (Context* k = c->first_child(); k != nullptr; k = k->next_sibling()) stack.push_back(k);
  }
}

void Sweep(const Workload& workload) {
  for (int n = 1;; ++n) {
    test::FailingBlockSource source;
    ContextOptions o;
    o.block_source = &source;
    Context* top = Context::Create(nullptr, "top", PoolKind(), o);
    source.FailNth(n);
    bool failed = false;
    try {
      workload(top);
    } catch (const std::bad_alloc&) {
      failed = true;
    }
    ASSERT_EQ(failed, source.failures() > 0) << "acquisition " << n;
    source.Heal();  // the workload may have finished before the Nth
    CheckTree(top);
    // Every context is still usable after the failure.
    ASSERT_NE(top->Alloc(100), nullptr);
    ASSERT_NE(top->CreateChild("after", FreelistKind())->Alloc(100), nullptr);
    top->Destroy();
    ASSERT_EQ(source.live_blocks(), 0) << "leak after failing acquisition " << n;
    ASSERT_EQ(source.bad_releases(), 0);
    if (!failed) {
      EXPECT_GT(n, 3) << "the workload should acquire several blocks";
      return;
    }
  }
}

TEST(FaultInjectionTest, EngineDay) { Sweep(EngineDay); }
TEST(FaultInjectionTest, ReallocGrowth) { Sweep(ReallocGrowth); }
TEST(FaultInjectionTest, TreeOfObjects) { Sweep(TreeOfObjects); }

}  // namespace
}  // namespace mcx
