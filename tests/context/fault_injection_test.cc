// Fault injection: for each workload, fail the Nth block acquisition for
// every N until the workload completes (mcx::test::SweepFailures, the
// kit's sweep). Each failure must surface as the documented error
// (std::bad_alloc from a throwing call), leave every context consistent and
// usable, and leak nothing once the tree is destroyed.

#include <new>
#include <stdexcept>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/new.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/sweep.h"

namespace mcx {
namespace {

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

// Limited contexts of both kinds filled to their limit: the last blocks are
// the smaller ones cut to the headroom, and a failed acquisition there must
// be as clean as anywhere. The limit goes when the context is full, or when
// the source failed, so the sweep's own requests are not refused. A peak reset midway and the counters
// stay consistent whatever failed.
void LimitedFill(Context* top) {
  for (const bool pool : {true, false}) {
    ContextOptions o;
    o.limit = 96 * 1024;
    Context* c = top->CreateChild("limited", pool ? PoolKind() : FreelistKind(), o);
    for (int i = 0;; ++i) {
      const size_t before = c->live_bytes();
      void* p = c->TryAlloc(200 + static_cast<size_t>(i * 61 % 800));
      if (p == nullptr) {
        if (c->last_failure() != Failure::kLimit) {
          c->TrySetLimit(kNoLimit);  // for the sweep's own requests
          throw std::bad_alloc();
        }
        if (c->live_bytes() != before) throw std::logic_error("a refused call counted bytes");
        break;
      }
      if (i == 20) c->ResetPeak();
    }
    if (c->peak_live_bytes() < c->live_bytes() || c->live_bytes() < 80 * 1024) {
      throw std::logic_error("the limited context did not fill with data");
    }
    if (c->TrySetLimit(kNoLimit) != Failure::kNone) throw std::logic_error("limit not lifted");
  }
}

// Each workload starts in a pool root, as an engine's top context is.
void Sweep(const test::Workload& workload) {
  EXPECT_GE(test::SweepFailures(PoolKind(), workload), 3)
      << "the workload should acquire several blocks";
}

TEST(FaultInjectionTest, EngineDay) { Sweep(EngineDay); }
TEST(FaultInjectionTest, ReallocGrowth) { Sweep(ReallocGrowth); }
TEST(FaultInjectionTest, TreeOfObjects) { Sweep(TreeOfObjects); }
TEST(FaultInjectionTest, LimitedFill) { Sweep(LimitedFill); }

}  // namespace
}  // namespace mcx
