// Internal to mcx; do not include from outside.
// IWYU pragma: private, include "mcx/context/report.h"
//
// The text report as a sink of the one report walk (report.h), writing to any
// `ReportOut`: a std::string for StatsReport (stats.cc), a buffered file
// descriptor for DumpStats and the dump on failure (dump.cc). One sink for
// both is what keeps the dump byte for byte equal to StatsReport's text.
// Nothing here allocates; what the output does with the bytes is its own
// affair (the descriptor writer allocates nothing either).
//
// Interface:
//   ReportOut        where report bytes go: Append, and the formatting
//                    helpers both sinks share (numbers, names, indentation)
//   TextReportSink   PostgreSQL's MemoryContextStats lines, to a ReportOut

#ifndef MCX_CONTEXT_INTERNAL_REPORT_TEXT_H_
#define MCX_CONTEXT_INTERNAL_REPORT_TEXT_H_

#include <cstddef>

#include "mcx/context/report.h"
#include "mcx/context/stats.h"

namespace mcx {
namespace internal {

// ReportOut
//
// A byte sink. `Append` is the only method an output implements; the helpers
// format through it without allocating.
class ReportOut {
 public:
  virtual void Append(const char* data, size_t size) = 0;
  // True once the output cannot take more (a write error): the walk stops.
  virtual bool failed() const { return false; }

  template <size_t N>
  void AppendLiteral(const char (&s)[N]) {
    Append(s, N - 1);
  }
  // A NUL-terminated string, as it is.
  void AppendString(const char* s);
  // Unsigned decimal, as absl::StrFormat's "%d" prints a size_t.
  void AppendNumber(size_t value);
  // `n` spaces, in pieces of a constant run: a line a million levels deep
  // costs a few large appends, not millions of small ones.
  void AppendSpaces(size_t n);
  // A context name on one line, escaped C-style (internal/text.h).
  void AppendTextName(const char* name);
  // "T total in B blocks; F free (C chunks); U used", and
  // "; reserve R bytes in N blocks (U used)" if the counters have a reserve,
  // then AppendTextPeaks.
  void AppendTextTotals(const ContextCounters& c);
  // "; live L (peak P); blocks peak B".
  void AppendTextPeaks(const ContextCounters& c);

 protected:
  ~ReportOut() = default;
};

// TextReportSink
//
// One line per context shown, indented two spaces per level:
//   name: <totals>
// one line per cut:
//   N more child contexts containing <totals>
// one line per context a walk does not read (SharedContextWalk::kSkip):
//   name: not read (any thread may use it)
// and the last line:
//   Grand total: T bytes in B blocks; F free (C chunks); U used
// Stops when its output has failed.
class TextReportSink final : public ReportSink {
 public:
  explicit TextReportSink(ReportOut* out) : out_(out) {}

  void BeginContext(const Context* context, int depth, const ContextCounters& counters) override;
  void MoreChildren(const Context* parent, int depth, size_t count,
                    const ContextCounters& totals) override;
  void NotRead(const Context* context, int depth) override;
  void EndContext(const Context* context, int depth) override;
  void GrandTotal(const ContextCounters& totals) override;
  bool Stopped() const override { return out_->failed(); }

 private:
  ReportOut* out_;
};

}  // namespace internal
}  // namespace mcx

#endif  // MCX_CONTEXT_INTERNAL_REPORT_TEXT_H_
