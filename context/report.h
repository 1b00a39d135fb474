// File: mcx/context/report.h
//
// One walk of a tree for every report. The text report (`StatsReport`,
// stats.h), the allocation-free dump (`DumpStats`, dump.h), JSON, and the
// Graphviz drawing outside the core (`DotReport`, dot.h) are renderings of
// the same walk: `WalkReport` decides what is shown and what is cut, and
// hands each step to a `ReportSink`, which only formats. PostgreSQL's
// MemoryContextStats works the same way with its print callback
// (MemoryStatsPrintFunc).
//
// Contract:
//   - Order. `BeginContext` for the root (depth 0); then, for each child
//     shown, in the tree's order (newest first), the same for its subtree,
//     one level deeper; then, if some of the context's children were not
//     shown, one `MoreChildren` for them; then `EndContext` for the context.
//     Last, `GrandTotal`. Each context shown is begun and ended exactly once,
//     in pre-order, and nothing of a context's subtree comes between its
//     `EndContext` and the next `BeginContext` of another subtree.
//   - The cut. A context at depth d shows its children only while
//     d < `max_depth`, and at most `max_children` of them (the first in the
//     tree's order). The rest of its children, with their subtrees, are
//     summed into its one `MoreChildren` (how many, and their
//     `GetSubtreeCounters` added up). Zero or negative limits show no
//     children at all.
//   - Counters. `BeginContext` gets `GetCounters` of its context; the grand
//     total is the sum of every context's counters (those shown and those
//     summarised), which is `GetSubtreeCounters(root)`: the totals always add
//     up (but for shared contexts not read, below). Each context's counters
//     are asked of its kind once per walk.
//   - No allocation, no recursion. The walk follows the parent and sibling
//     links; it keeps on the stack only the number of children shown for the
//     first `kReportTrackedLevels` levels (deeper, it counts them again when
//     it climbs back), so its stack use (a few hundred bytes) does not
//     depend on the depth or width of the tree. With a sink that allocates
//     nothing and calls only async-signal-safe functions the walk is
//     async-signal-safe and allocation-free (DumpStats relies on it).
//   - Stopping. `Stopped()` is asked before each step; once it returns true
//     the walk ends without further calls (no grand total). A sink that
//     writes stops after a write error.
//   - Shared contexts. With `SharedContextWalk::kSkip` a context that any
//     thread may use (a shared context) is not read, nor anything below
//     it: `NotRead` stands for it, in its place among its siblings (it
//     counts as one of the `max_children` shown; in a `MoreChildren` it
//     counts as a child and adds nothing to the totals), and the grand
//     total leaves it out. A walk then reads only what one thread owns
//     (the contexts a shared context's children are, and everything they
//     hold, belong to the threads that made them). The reports mcx makes
//     on its own, at any point of a thread's work, walk so: the dump on
//     failure (dump.h) and the reports on request (report_request.h).
//   - The sink must not change the tree. Threads: as every use of a tree,
//     one thread at a time.
//   - Cost. O(contexts in the subtree) plus what the kinds' counters cost.
//     More than `kReportTrackedLevels` levels down, returning to a parent
//     costs a count of the children it has shown (at most `max_children`).
//
// Example: counting what a report would show.
//
//   class Counter : public mcx::ReportSink {
//    public:
//     void BeginContext(const mcx::Context*, int, const mcx::ContextCounters&) override {
//       ++shown;
//     }
//     void MoreChildren(const mcx::Context*, int, size_t count,
//                       const mcx::ContextCounters&) override { cut += count; }
//     void EndContext(const mcx::Context*, int) override {}
//     void GrandTotal(const mcx::ContextCounters&) override {}
//     size_t shown = 0, cut = 0;
//   };
//   Counter counter;
//   mcx::WalkReport(top, /*max_depth=*/4, /*max_children=*/20, &counter);

#ifndef MCX_CONTEXT_REPORT_H_
#define MCX_CONTEXT_REPORT_H_

#include <cstddef>

#include "mcx/context/config.h"  // IWYU pragma: keep (config.h: the link check)
#include "mcx/context/stats.h"

namespace mcx {

class Context;

// Receives one walk of a tree (`WalkReport`); see the contract above.
class ReportSink {
 public:
  virtual ~ReportSink();

  // A context shown, `depth` levels below the root, with its own counters.
  virtual void BeginContext(const Context* context, int depth,
                            const ContextCounters& counters) = 0;
  // `count` children of `parent` (at `depth`, one below the parent's) were
  // not shown; `totals` sums their subtrees. After the children shown.
  virtual void MoreChildren(const Context* parent, int depth, size_t count,
                            const ContextCounters& totals) = 0;
  // The end of `context`'s children (and of its MoreChildren).
  virtual void EndContext(const Context* context, int depth) = 0;
  // The last call: the whole subtree's counters.
  virtual void GrandTotal(const ContextCounters& totals) = 0;
  // A context that any thread may use (a shared context), at `depth`, in
  // a walk that does not read such contexts (SharedContextWalk::kSkip): in
  // place of its BeginContext, subtree and EndContext. The default does
  // nothing.
  virtual void NotRead(const Context* context, int depth);
  // True ends the walk early. Asked before every call above.
  virtual bool Stopped() const;
};

// What a walk reads of a context that any thread may use (a shared
// context, shared.h): its counters and its children are other threads' to
// change while this one walks.
enum class SharedContextWalk {
  kRead,  // like any other: the caller knows the other threads are done
  kSkip,  // nothing of it or of its subtree: one NotRead stands for them
};

// Levels of the walk whose count of children shown `WalkReport` keeps on the
// stack; deeper levels count it again (see Cost above).
inline constexpr int kReportTrackedLevels = 64;

// Walks `root`'s subtree (root must not be null), cut by `max_depth` and
// `max_children`, calling `sink`. Allocates nothing itself.
void WalkReport(const Context* root, int max_depth, int max_children, ReportSink* sink,
                SharedContextWalk shared = SharedContextWalk::kRead);

}  // namespace mcx

#endif  // MCX_CONTEXT_REPORT_H_
