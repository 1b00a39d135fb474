// Internal to mcx; do not include from outside.
// IWYU pragma: private, include "mcx/context/stats.h"
//
// The JSON report as a sink of the one report walk (report.h), writing to
// any `ReportOut` (internal/report_text.h): a std::string for StatsReport
// (stats.cc), a descriptor or a fixed buffer for reports on request
// (report_request.cc). Nothing here allocates; it stops when its output has failed.
//
// Interface:
//   AppendJsonString   a name as a JSON string
//   AppendJsonTotals   a context's counters as JSON members
//   JsonReportSink     the tree as one JSON object

#ifndef MCX_CONTEXT_INTERNAL_REPORT_JSON_H_
#define MCX_CONTEXT_INTERNAL_REPORT_JSON_H_

#include <cstddef>

#include "mcx/context/context.h"
#include "mcx/context/internal/report_text.h"
#include "mcx/context/report.h"
#include "mcx/context/stats.h"

namespace mcx {
namespace internal {

// A name as a JSON string: quoted; `"`, `\\`, newline and tab escaped by
// name, other control characters as \u00XX; each byte that starts no
// well-formed UTF-8 sequence becomes U+FFFD (REPLACEMENT CHARACTER), since
// JSON must be UTF-8.
void AppendJsonString(ReportOut* out, const char* s);
void AppendJsonTotals(ReportOut* out, const ContextCounters& c);

// The report of `root`, text (DumpStats's bytes) or JSON, written to `fd`
// as DumpStats writes (dump.cc): a buffer on the stack, write(2), nothing
// allocated. False after a write error.
bool WriteReportToFd(int fd, const Context* root, int max_depth, int max_children, bool json);

// JsonReportSink
//
//   {"tree": {"name": ..., "kind": ..., <totals>, "children": [<child>, ...]
//             [, "more_children": {"contexts": N, <totals>}]},
//    "grand_total": {"contexts": N, <totals>}}
// and a context that the walk does not read (SharedContextWalk::kSkip):
//   {"name": ..., "kind": ..., "not_read": "any thread may use it", "children": []}
// Siblings are separated by a comma: a context begun right after another
// ended is the next sibling of it.
class JsonReportSink final : public ReportSink {
 public:
  explicit JsonReportSink(ReportOut* out) : out_(out) {}

  void BeginContext(const Context* context, int depth, const ContextCounters& counters) override {
    OpenNode(context, depth);
    AppendJsonTotals(out_, counters);
    out_->AppendLiteral(", \"children\": [");
    after_end_ = false;
  }

  void MoreChildren(const Context* /*parent*/, int /*depth*/, size_t count,
                    const ContextCounters& totals) override {
    out_->AppendLiteral("], \"more_children\": {\"contexts\": ");
    out_->AppendNumber(count);
    out_->AppendLiteral(", ");
    AppendJsonTotals(out_, totals);
    out_->AppendLiteral("}");
    children_closed_ = true;
  }

  void NotRead(const Context* context, int depth) override {
    OpenNode(context, depth);
    out_->AppendLiteral("\"not_read\": \"any thread may use it\", \"children\": []}");
    after_end_ = true;
  }

  void EndContext(const Context* /*context*/, int /*depth*/) override {
    if (!children_closed_) out_->AppendLiteral("]");
    out_->AppendLiteral("}");
    children_closed_ = false;
    after_end_ = true;
  }

  bool Stopped() const override { return out_->failed(); }

  void GrandTotal(const ContextCounters& totals) override {
    out_->AppendLiteral(", \"grand_total\": {\"contexts\": ");
    out_->AppendNumber(totals.contexts);
    out_->AppendLiteral(", ");
    AppendJsonTotals(out_, totals);
    out_->AppendLiteral("}}\n");
  }

 private:
  // A context's object up to its name and kind, and the comma after them:
  // the tree's opening at depth 0, and a sibling's separator.
  void OpenNode(const Context* context, int depth) {
    if (depth == 0) out_->AppendLiteral("{\"tree\": ");
    if (after_end_) out_->AppendLiteral(", ");
    out_->AppendLiteral("{\"name\": ");
    AppendJsonString(out_, context->name());
    out_->AppendLiteral(", \"kind\": ");
    AppendJsonString(out_, context->kind_name());
    out_->AppendLiteral(", ");
  }

  ReportOut* out_;
  bool after_end_ = false;        // the last call was EndContext
  bool children_closed_ = false;  // MoreChildren closed the list already
};

}  // namespace internal
}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_REPORT_JSON_H_
