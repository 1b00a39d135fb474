// The one walk of a tree for reports, and the text report as its sink.
//
// Note: do not use recursion here, and do not keep frames: a chain of a
// million contexts must be walked in constant stack (DumpStats walks from a
// failure handler or a signal handler, on whatever stack is left). The walk
// keeps only the context whose children it is listing, its depth, the next
// child and how many were shown; climbing back finds the parent through
// `parent()` and the next child through `next_sibling()`.

#include "mcx/context/report.h"

#include <cstddef>
#include <cstring>
#include <limits>

#include "mcx/context/context.h"
#include "mcx/context/internal/report_text.h"
#include "mcx/context/internal/text.h"
#include "mcx/context/stats.h"

namespace mcx {

ReportSink::~ReportSink() = default;

bool ReportSink::Stopped() const { return false; }

namespace {

// How many children of `child`'s parent come before `child`, counting no
// further than `limit` (all the caller needs to know is whether the parent
// may show another one).
int CountOlderSiblingsBefore(const Context* child, int limit) {
  int n = 0;
  for (const Context* c = child->parent()->first_child(); c != child && n < limit;
       c = c->next_sibling()) {
    ++n;
  }
  return n;
}

// Whether any thread may use `c` (a shared context): its counters and its
// children are other threads' to change while this one walks.
bool AnyThreadMayUse(const Context* c) { return c->kind()->lock != nullptr; }

// GetSubtreeCounters of `top`'s subtree without the subtrees of contexts
// that any thread may use (SharedContextWalk::kSkip), and `top` too if it is
// one.
ContextCounters OwnSubtreeCounters(const Context* top) {
  ContextCounters total;
  if (AnyThreadMayUse(top)) return total;
  const Context* c = top;
  while (c != nullptr) {
    total.Add(GetCounters(c));
    const Context* down = c->first_child();
    while (down != nullptr && AnyThreadMayUse(down)) down = down->next_sibling();
    if (down != nullptr) {
      c = down;
      continue;
    }
    for (;;) {
      if (c == top) return total;
      const Context* next = c->next_sibling();
      while (next != nullptr && AnyThreadMayUse(next)) next = next->next_sibling();
      if (next != nullptr) {
        c = next;
        break;
      }
      c = c->parent();
    }
  }
  return total;
}

}  // namespace

void ReportSink::NotRead(const Context* /*context*/, int /*depth*/) {}

// WalkReport
//
// At each step `node` is the context whose children are being listed, at
// `depth`; `next` is the next child to show or summarise and `shown` how many
// were shown. A child is shown while `depth < max_depth` and `shown <
// max_children`; the rest go into one MoreChildren. When a context's
// children are done the walk climbs: the parent is `node->parent()`, its next
// child `node->next_sibling()`, and its count comes from `shown_at` (the
// first kReportTrackedLevels levels) or is counted again.
//
// The grand total is summed on the way (every context is in exactly one
// BeginContext or one MoreChildren), so the subtree is not walked a second
// time for it.
void WalkReport(const Context* root, int max_depth, int max_children, ReportSink* sink,
                SharedContextWalk shared) {
  int shown_at[kReportTrackedLevels];
  ContextCounters grand;
  if (sink->Stopped()) return;
  const bool skip = shared == SharedContextWalk::kSkip;
  if (skip && AnyThreadMayUse(root)) {
    sink->NotRead(root, 0);
    if (sink->Stopped()) return;
    sink->GrandTotal(grand);
    return;
  }
  ContextCounters own = GetCounters(root);
  grand.Add(own);
  sink->BeginContext(root, 0, own);
  const Context* node = root;
  int depth = 0;
  const Context* next = root->first_child();
  int shown = 0;
  for (;;) {
    if (sink->Stopped()) return;
    if (next != nullptr && depth < max_depth && shown < max_children) {
      if (skip && AnyThreadMayUse(next)) {
        // Shown as not read; its siblings are this thread's to read.
        sink->NotRead(next, depth + 1);
        next = next->next_sibling();
        ++shown;
        continue;
      }
      if (depth < kReportTrackedLevels) shown_at[depth] = shown + 1;
      node = next;
      ++depth;
      own = GetCounters(node);
      grand.Add(own);
      sink->BeginContext(node, depth, own);
      next = node->first_child();
      shown = 0;
      continue;
    }
    if (next != nullptr) {
      // `next` and its older siblings, none of them shown. GetSubtreeCounters
      // walks through the links too: no allocation.
      ContextCounters rest;
      size_t count = 0;
      for (const Context* c = next; c != nullptr; c = c->next_sibling()) {
        rest.Add(skip ? OwnSubtreeCounters(c) : GetSubtreeCounters(c));
        ++count;
      }
      grand.Add(rest);
      sink->MoreChildren(node, depth + 1, count, rest);
      if (sink->Stopped()) return;
    }
    sink->EndContext(node, depth);
    if (node == root) break;
    const Context* done = node;
    node = done->parent();
    next = done->next_sibling();
    --depth;
    shown = depth < kReportTrackedLevels ? shown_at[depth]
                                         : CountOlderSiblingsBefore(done, max_children) + 1;
  }
  if (sink->Stopped()) return;
  sink->GrandTotal(grand);
}

namespace internal {
namespace {

// Decimal digits of the largest size_t.
constexpr size_t kMaxDigits = std::numeric_limits<size_t>::digits10 + 1;
// The text report indents two spaces per level.
constexpr size_t kIndentPerLevel = 2;
// Indentation is appended from this run of spaces (read-only data).
constexpr size_t kSpaceRunBytes = 4096;

struct SpaceRun {
  char bytes[kSpaceRunBytes];
};

constexpr SpaceRun MakeSpaceRun() {
  SpaceRun run{};
  for (char& c : run.bytes) c = ' ';
  return run;
}

// Constant-initialised: no static initialisation at run time, so no guard
// variable and nothing that a signal handler could find half done.
constexpr SpaceRun kSpaces = MakeSpaceRun();

}  // namespace

void ReportOut::AppendString(const char* s) { Append(s, std::strlen(s)); }

void ReportOut::AppendNumber(size_t value) {
  char digits[kMaxDigits];
  size_t i = kMaxDigits;
  do {
    digits[--i] = static_cast<char>('0' + value % 10);
    value /= 10;
  } while (value != 0);
  Append(digits + i, kMaxDigits - i);
}

void ReportOut::AppendSpaces(size_t n) {
  while (n > 0 && !failed()) {
    const size_t k = n < kSpaceRunBytes ? n : kSpaceRunBytes;
    Append(kSpaces.bytes, k);
    n -= k;
  }
}

void ReportOut::AppendTextName(const char* name) {
  // The escaper of internal/text.h, which StatsReport and DumpStats share.
  internal::AppendTextName(name, [this](const char* piece, size_t n) { Append(piece, n); });
}

void ReportOut::AppendTextTotals(const ContextCounters& c) {
  AppendNumber(c.total_bytes);
  AppendLiteral(" total in ");
  AppendNumber(c.blocks);
  AppendLiteral(" blocks; ");
  AppendNumber(c.free_bytes);
  AppendLiteral(" free (");
  AppendNumber(c.free_chunks);
  AppendLiteral(" chunks); ");
  AppendNumber(c.used_bytes());
  AppendLiteral(" used");
  if (c.reserve_blocks != 0 || c.reserve_uses != 0) {
    AppendLiteral("; reserve ");
    AppendNumber(c.reserve_bytes);
    AppendLiteral(" bytes in ");
    AppendNumber(c.reserve_blocks);
    AppendLiteral(" blocks (");
    AppendNumber(c.reserve_uses);
    AppendLiteral(" used)");
  }
  AppendTextPeaks(c);
}

void ReportOut::AppendTextPeaks(const ContextCounters& c) {
  AppendLiteral("; live ");
  AppendNumber(c.live_bytes);
  AppendLiteral(" (peak ");
  AppendNumber(c.peak_live_bytes);
  AppendLiteral("); blocks peak ");
  AppendNumber(c.peak_block_bytes);
}

void TextReportSink::BeginContext(const Context* context, int depth,
                                  const ContextCounters& counters) {
  out_->AppendSpaces(static_cast<size_t>(depth) * kIndentPerLevel);
  out_->AppendTextName(context->name());
  out_->AppendLiteral(": ");
  out_->AppendTextTotals(counters);
  out_->AppendLiteral("\n");
}

void TextReportSink::MoreChildren(const Context* /*parent*/, int depth, size_t count,
                                  const ContextCounters& totals) {
  out_->AppendSpaces(static_cast<size_t>(depth) * kIndentPerLevel);
  out_->AppendNumber(count);
  out_->AppendLiteral(" more child contexts containing ");
  out_->AppendTextTotals(totals);
  out_->AppendLiteral("\n");
}

void TextReportSink::NotRead(const Context* context, int depth) {
  out_->AppendSpaces(static_cast<size_t>(depth) * kIndentPerLevel);
  out_->AppendTextName(context->name());
  out_->AppendLiteral(": not read (any thread may use it)\n");
}

void TextReportSink::EndContext(const Context* /*context*/, int /*depth*/) {}

// The grand total has no reserve part: PostgreSQL's line, then the live
// bytes and the peaks.
void TextReportSink::GrandTotal(const ContextCounters& totals) {
  out_->AppendLiteral("Grand total: ");
  out_->AppendNumber(totals.total_bytes);
  out_->AppendLiteral(" bytes in ");
  out_->AppendNumber(totals.blocks);
  out_->AppendLiteral(" blocks; ");
  out_->AppendNumber(totals.free_bytes);
  out_->AppendLiteral(" free (");
  out_->AppendNumber(totals.free_chunks);
  out_->AppendLiteral(" chunks); ");
  out_->AppendNumber(totals.used_bytes());
  out_->AppendLiteral(" used");
  out_->AppendTextPeaks(totals);
  out_->AppendLiteral("\n");
}

}  // namespace internal
}  // namespace mcx
