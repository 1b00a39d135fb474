// The one walk of a tree for reports (WalkReport, mcx/context/report.h): the
// order of the sink's calls, the cut, the grand total, stopping early. The
// renderings are tested by what they print (new_test, dump_test, dot_test);
// this tests what they all receive.

#include "mcx/context/report.h"

#include <cstddef>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/shared/shared.h"

namespace mcx {
namespace {

bool SameCounters(const ContextCounters& a, const ContextCounters& b) {
  return a.total_bytes == b.total_bytes && a.blocks == b.blocks &&
         a.free_bytes == b.free_bytes && a.free_chunks == b.free_chunks &&
         a.contexts == b.contexts && a.reserve_bytes == b.reserve_bytes &&
         a.reserve_blocks == b.reserve_blocks && a.reserve_uses == b.reserve_uses;
}

// Records every call, and checks what can be checked on the way: depths,
// nesting, and that each context's counters are its own.
class RecordingSink : public ReportSink {
 public:
  void BeginContext(const Context* context, int depth, const ContextCounters& counters) override {
    EXPECT_FALSE(done_) << "a call after GrandTotal";
    EXPECT_EQ(depth, static_cast<int>(open_.size()));
    if (!open_.empty()) {
      EXPECT_EQ(context->parent(), open_.back());
    }
    EXPECT_TRUE(SameCounters(counters, GetCounters(context))) << context->name();
    open_.push_back(context);
    begun.push_back(context);
    sum.Add(counters);
    events.push_back(std::string("begin ") + context->name());
  }
  void MoreChildren(const Context* parent, int depth, size_t count,
                    const ContextCounters& totals) override {
    EXPECT_FALSE(open_.empty());
    EXPECT_EQ(parent, open_.back());
    EXPECT_EQ(depth, static_cast<int>(open_.size()));
    sum.Add(totals);
    more_counts.push_back(count);
    more_totals.push_back(totals);
    events.push_back(std::string("more ") + parent->name() + " " + std::to_string(count));
  }
  void EndContext(const Context* context, int depth) override {
    EXPECT_FALSE(open_.empty());
    EXPECT_EQ(context, open_.back());
    EXPECT_EQ(depth, static_cast<int>(open_.size()) - 1);
    open_.pop_back();
    events.push_back(std::string("end ") + context->name());
  }
  void NotRead(const Context* context, int depth) override {
    EXPECT_FALSE(done_) << "a call after GrandTotal";
    EXPECT_EQ(depth, static_cast<int>(open_.size()));
    if (!open_.empty()) {
      EXPECT_EQ(context->parent(), open_.back());
    }
    not_read.push_back(context);
    events.push_back(std::string("not read ") + context->name());
  }
  void GrandTotal(const ContextCounters& totals) override {
    EXPECT_TRUE(open_.empty()) << "GrandTotal before every context ended";
    EXPECT_FALSE(done_);
    done_ = true;
    grand = totals;
    events.push_back("total");
  }

  std::vector<std::string> events;
  std::vector<const Context*> begun;
  std::vector<const Context*> not_read;
  std::vector<size_t> more_counts;
  std::vector<ContextCounters> more_totals;
  ContextCounters sum;    // counters of every BeginContext and MoreChildren
  ContextCounters grand;

 private:
  std::vector<const Context*> open_;
  bool done_ = false;
};

// The contexts of `root`'s subtree in pre-order, newest child first.
std::vector<const Context*> PreOrder(const Context* root) {
  std::vector<const Context*> out;
  std::vector<const Context*> stack = {root};
  while (!stack.empty()) {
    const Context* c = stack.back();
    stack.pop_back();
    out.push_back(c);
    std::vector<const Context*> children;
    for (const Context* k = c->first_child(); k != nullptr; k = k->next_sibling()) {
      children.push_back(k);
    }
    for (auto it = children.rbegin(); it != children.rend(); ++it) stack.push_back(*it);
  }
  return out;
}

// top -> {a -> {a1, a2}, b, c -> {c1}}, created in that order (so listed
// newest first: c, b, a).
class ReportWalkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    top_ = Context::Create(nullptr, "top", PoolKind());
    a_ = top_->CreateChild("a", FreelistKind());
    a_->CreateChild("a1", PoolKind())->Alloc(100);
    a_->CreateChild("a2", PoolKind());
    Context* b = top_->CreateChild("b", PoolKind());
    b->Alloc(3000);
    Context* c = top_->CreateChild("c", FreelistKind());
    c->Free(c->Alloc(40));
    c->CreateChild("c1", PoolKind());
  }
  void TearDown() override { top_->Destroy(); }

  Context* top_ = nullptr;
  Context* a_ = nullptr;
};

// Uncut: each context begun and ended once, in pre-order, newest child
// first; no MoreChildren; the grand total last.
TEST_F(ReportWalkTest, EveryContextOnceInPreOrder) {
  RecordingSink sink;
  WalkReport(top_, 100, 100, &sink);
  const std::vector<std::string> want = {
      "begin top", "begin c", "begin c1", "end c1", "end c",  "begin b",  "end b",
      "begin a",   "begin a2", "end a2",  "begin a1", "end a1", "end a", "end top", "total"};
  EXPECT_EQ(sink.events, want);
  EXPECT_EQ(sink.begun, PreOrder(top_));
  EXPECT_TRUE(sink.more_counts.empty());
}

// max_children: the first children in the tree's order are shown; the rest
// are one MoreChildren, after the children shown and before EndContext,
// counting them and summing their whole subtrees.
TEST_F(ReportWalkTest, MaxChildrenCutsTheOlderChildren) {
  RecordingSink sink;
  WalkReport(top_, 100, 1, &sink);
  const std::vector<std::string> want = {"begin top", "begin c", "begin c1", "end c1", "end c",
                                         "more top 2", "end top", "total"};
  EXPECT_EQ(sink.events, want);
  ContextCounters rest = GetSubtreeCounters(top_->first_child()->next_sibling());  // b
  rest.Add(GetSubtreeCounters(a_));
  ASSERT_EQ(sink.more_totals.size(), 1u);
  EXPECT_TRUE(SameCounters(sink.more_totals[0], rest));
  EXPECT_EQ(sink.more_totals[0].contexts, 4u);  // b, a, a1, a2
}

// max_depth: a context at the last level shown summarises all its
// children; 0 shows only the root.
TEST_F(ReportWalkTest, MaxDepthSummarisesTheLevelBelow) {
  RecordingSink one;
  WalkReport(top_, 1, 100, &one);
  const std::vector<std::string> want = {"begin top", "begin c", "more c 1", "end c",
                                         "begin b",   "end b",   "begin a",  "more a 2",
                                         "end a",     "end top", "total"};
  EXPECT_EQ(one.events, want);

  RecordingSink none;
  WalkReport(top_, 0, 100, &none);
  const std::vector<std::string> root_only = {"begin top", "more top 3", "end top", "total"};
  EXPECT_EQ(none.events, root_only);
  EXPECT_EQ(none.more_totals[0].contexts, 6u);

  // Negative limits show no children either.
  RecordingSink negative;
  WalkReport(top_, -1, -1, &negative);
  EXPECT_EQ(negative.events, root_only);
}

// Whatever the cut, the grand total is the subtree's counters, and it is the
// sum of what the sink was given: the totals always add up.
TEST_F(ReportWalkTest, GrandTotalIsTheSubtreeAndAddsUp) {
  const ContextCounters subtree = GetSubtreeCounters(top_);
  const int cuts[][2] = {{100, 100}, {0, 100}, {1, 1}, {2, 0}, {-1, 5}, {1, 2}};
  for (const auto& cut : cuts) {
    RecordingSink sink;
    WalkReport(top_, cut[0], cut[1], &sink);
    EXPECT_TRUE(SameCounters(sink.grand, subtree)) << cut[0] << " " << cut[1];
    EXPECT_TRUE(SameCounters(sink.sum, subtree)) << cut[0] << " " << cut[1];
    EXPECT_EQ(sink.grand.contexts, 7u);
  }
}

// A subtree is walked from its own root: depth 0, nothing above it.
TEST_F(ReportWalkTest, ASubtreeStartsAtItsRoot) {
  RecordingSink sink;
  WalkReport(a_, 100, 100, &sink);
  const std::vector<std::string> want = {"begin a", "begin a2", "end a2", "begin a1",
                                         "end a1",  "end a",    "total"};
  EXPECT_EQ(sink.events, want);
  EXPECT_TRUE(SameCounters(sink.grand, GetSubtreeCounters(a_)));
}

// Stopped() ends the walk: no call after it says so, not even the total.
class StoppingSink : public RecordingSink {
 public:
  explicit StoppingSink(size_t after) : after_(after) {}
  bool Stopped() const override { return events.size() >= after_; }

 private:
  size_t after_;
};

TEST_F(ReportWalkTest, StoppedEndsTheWalk) {
  for (size_t after = 0; after < 8; ++after) {
    StoppingSink sink(after);
    WalkReport(top_, 100, 1, &sink);
    EXPECT_EQ(sink.events.size(), after);
  }
  StoppingSink never(1000);
  WalkReport(top_, 100, 1, &never);
  EXPECT_EQ(never.events.back(), "total");
}

// Deeper than the levels whose counts the walk keeps on the stack, with
// siblings at every level: climbing back there counts again, and cuts as
// above them. A chain of kChain levels, each with an older and a newer
// sibling of the next link; max_children 2 shows the newer sibling and the
// link, and summarises the older one.
TEST(ReportWalkDeepTest, CutsTheSameBelowTheTrackedLevels) {
  constexpr int kChain = kReportTrackedLevels + 20;
  Context* root = Context::Create(nullptr, "root", PoolKind());
  Context* c = root;
  for (int d = 0; d < kChain; ++d) {
    c->CreateChild("old", PoolKind());
    Context* next = c->CreateChild("link", PoolKind());
    c->CreateChild("new", PoolKind());
    c = next;
  }
  RecordingSink sink;
  WalkReport(root, kChain + 10, 2, &sink);
  // Per level: "new" and "link" shown, "old" summarised.
  EXPECT_EQ(sink.begun.size(), static_cast<size_t>(1 + 2 * kChain));
  ASSERT_EQ(sink.more_counts.size(), static_cast<size_t>(kChain));
  for (size_t count : sink.more_counts) EXPECT_EQ(count, 1u);
  EXPECT_TRUE(SameCounters(sink.grand, GetSubtreeCounters(root)));
  EXPECT_EQ(sink.events.back(), "total");
  root->Destroy();
}

// SharedContextWalk::kSkip: a shared context is one NotRead in its place
// among its siblings, and nothing of its subtree is read; the walk reads
// on below the contexts around it. kRead (the default) walks it as any
// other.
TEST_F(ReportWalkTest, ASkippingWalkDoesNotReadSharedContexts) {
  Context* scan = a_->CreateChild("scan", SharedKind());
  SharedAlloc(scan, 5000);
  Context* worker = scan->CreateChild("worker", PoolKind());
  worker->Alloc(2000);
  worker->CreateChild("below", PoolKind());
  a_->CreateChild("after", PoolKind());

  RecordingSink skip;
  WalkReport(top_, 100, 100, &skip, SharedContextWalk::kSkip);
  EXPECT_EQ(skip.events,
            (std::vector<std::string>{"begin top", "begin c", "begin c1", "end c1", "end c",
                                      "begin b", "end b", "begin a", "begin after", "end after",
                                      "not read scan", "begin a2", "end a2", "begin a1",
                                      "end a1", "end a", "end top", "total"}));
  ContextCounters expected = GetSubtreeCounters(top_);
  const ContextCounters shared = GetSubtreeCounters(scan);
  expected.total_bytes -= shared.total_bytes;
  expected.blocks -= shared.blocks;
  expected.free_bytes -= shared.free_bytes;
  expected.free_chunks -= shared.free_chunks;
  expected.contexts -= shared.contexts;
  EXPECT_TRUE(SameCounters(skip.grand, expected));
  EXPECT_TRUE(SameCounters(skip.sum, expected));

  // From a, cut to one child: "after" shown; scan (counted, nothing of its
  // subtree in the totals), a2 and a1 summarised.
  RecordingSink cut;
  WalkReport(a_, 100, 1, &cut, SharedContextWalk::kSkip);
  EXPECT_TRUE(cut.not_read.empty());
  const size_t rest = GetSubtreeCounters(a_).total_bytes - shared.total_bytes -
                      GetCounters(a_).total_bytes - GetCounters(a_->first_child()).total_bytes;
  ASSERT_EQ(cut.more_counts.size(), 1u);
  EXPECT_EQ(cut.more_counts[0], 3u);
  EXPECT_EQ(cut.more_totals[0].total_bytes, rest);
  EXPECT_EQ(cut.grand.total_bytes, GetSubtreeCounters(a_).total_bytes - shared.total_bytes);

  // A shared root: one NotRead, a zero grand total.
  RecordingSink root;
  WalkReport(scan, 100, 100, &root, SharedContextWalk::kSkip);
  EXPECT_EQ(root.events, (std::vector<std::string>{"not read scan", "total"}));
  EXPECT_TRUE(SameCounters(root.grand, ContextCounters()));

  // kRead, the default: every context.
  RecordingSink read;
  WalkReport(top_, 100, 100, &read);
  EXPECT_TRUE(read.not_read.empty());
  EXPECT_EQ(read.begun.size(), PreOrder(top_).size());
  EXPECT_TRUE(SameCounters(read.grand, GetSubtreeCounters(top_)));
}

// The example of report.h: a sink that counts.
class Counter : public ReportSink {
 public:
  void BeginContext(const Context*, int, const ContextCounters&) override { ++shown; }
  void MoreChildren(const Context*, int, size_t count, const ContextCounters&) override {
    cut += count;
  }
  void EndContext(const Context*, int) override {}
  void GrandTotal(const ContextCounters&) override {}
  size_t shown = 0, cut = 0;
};

TEST_F(ReportWalkTest, TheHeaderExampleCounts) {
  Counter counter;
  WalkReport(top_, /*max_depth=*/1, /*max_children=*/2, &counter);
  EXPECT_EQ(counter.shown, 3u);  // top, c, b
  EXPECT_EQ(counter.cut, 2u);    // a (under top) and c1 (under c)
}

}  // namespace
}  // namespace mcx
