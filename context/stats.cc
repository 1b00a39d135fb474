// Counters, and the text and JSON reports: the one walk of report.cc
// rendered into a std::string by the text sink (internal/report_text.h, which
// DumpStats shares) or by the JSON sink below.

#include "mcx/context/stats.h"

#include <cstddef>
#include <string>

#include "mcx/context/context.h"
#include "mcx/context/internal/report_text.h"
#include "mcx/context/internal/text.h"
#include "mcx/context/report.h"

namespace mcx {

void ContextCounters::Add(const ContextCounters& other) {
  total_bytes += other.total_bytes;
  blocks += other.blocks;
  free_bytes += other.free_bytes;
  free_chunks += other.free_chunks;
  contexts += other.contexts;
  reserve_bytes += other.reserve_bytes;
  reserve_blocks += other.reserve_blocks;
  reserve_uses += other.reserve_uses;
}

ContextCounters GetCounters(const Context* ctx) {
  ContextCounters c;
  c.total_bytes = ctx->bytes_in_blocks() + ctx->side_record_bytes();
  c.blocks = ctx->num_blocks();
  KindStats ks;
  ctx->kind()->stats(ctx, &ks);
  c.free_bytes = ks.free_bytes;
  c.free_chunks = ks.free_chunks;
  c.contexts = 1;
  c.reserve_bytes = ctx->reserve_bytes();
  c.reserve_blocks = ctx->reserve_blocks();
  c.reserve_uses = ctx->reserve_uses();
  return c;
}

ContextCounters GetSubtreeCounters(const Context* top) {
  ContextCounters total;
  const Context* c = top;
  while (c != nullptr) {
    total.Add(GetCounters(c));
    if (c->first_child() != nullptr) {
      c = c->first_child();
      continue;
    }
    while (c != top && c->next_sibling() == nullptr) c = c->parent();
    c = (c == top) ? nullptr : c->next_sibling();
  }
  return total;
}

namespace {

// A report's bytes into a std::string.
class StringOut final : public internal::ReportOut {
 public:
  explicit StringOut(std::string* out) : out_(out) {}
  void Append(const char* data, size_t size) override { out_->append(data, size); }

 private:
  std::string* out_;
};

// A name as a JSON string: quoted; `"`, `\\`, newline and tab escaped by
// name, other control characters as \u00XX; each byte that starts no
// well-formed UTF-8 sequence becomes U+FFFD (REPLACEMENT CHARACTER), since
// JSON must be UTF-8.
void AppendJsonString(internal::ReportOut* out, const char* s) {
  static constexpr char kHexDigits[] = "0123456789abcdef";
  out->AppendLiteral("\"");
  for (const char* p = s; *p != '\0';) {
    const size_t n = internal::Utf8SequenceLength(reinterpret_cast<const unsigned char*>(p));
    if (n == 0) {
      out->AppendLiteral("\xEF\xBF\xBD");
      ++p;
      continue;
    }
    if (n > 1) {
      out->Append(p, n);
      p += n;
      continue;
    }
    const unsigned char ch = static_cast<unsigned char>(*p++);
    switch (ch) {
      case '"':
        out->AppendLiteral("\\\"");
        break;
      case '\\':
        out->AppendLiteral("\\\\");
        break;
      case '\n':
        out->AppendLiteral("\\n");
        break;
      case '\t':
        out->AppendLiteral("\\t");
        break;
      default:
        if (ch < 0x20) {
          const char escape[] = {'\\', 'u', '0', '0', kHexDigits[ch >> 4], kHexDigits[ch & 0xF]};
          out->Append(escape, sizeof(escape));
        } else {
          const char byte = static_cast<char>(ch);
          out->Append(&byte, 1);
        }
    }
  }
  out->AppendLiteral("\"");
}

void AppendJsonTotals(internal::ReportOut* out, const ContextCounters& c) {
  out->AppendLiteral("\"total_bytes\": ");
  out->AppendNumber(c.total_bytes);
  out->AppendLiteral(", \"blocks\": ");
  out->AppendNumber(c.blocks);
  out->AppendLiteral(", \"free_bytes\": ");
  out->AppendNumber(c.free_bytes);
  out->AppendLiteral(", \"free_chunks\": ");
  out->AppendNumber(c.free_chunks);
  out->AppendLiteral(", \"used_bytes\": ");
  out->AppendNumber(c.used_bytes());
  out->AppendLiteral(", \"reserve_bytes\": ");
  out->AppendNumber(c.reserve_bytes);
  out->AppendLiteral(", \"reserve_blocks\": ");
  out->AppendNumber(c.reserve_blocks);
  out->AppendLiteral(", \"reserve_uses\": ");
  out->AppendNumber(c.reserve_uses);
}

// JsonReportSink
//
//   {"tree": {"name": ..., "kind": ..., <totals>, "children": [<child>, ...]
//             [, "more_children": {"contexts": N, <totals>}]},
//    "grand_total": {"contexts": N, <totals>}}
// Siblings are separated by a comma: a context begun right after another
// ended is the next sibling of it.
class JsonReportSink final : public ReportSink {
 public:
  explicit JsonReportSink(internal::ReportOut* out) : out_(out) {}

  void BeginContext(const Context* context, int depth, const ContextCounters& counters) override {
    if (depth == 0) out_->AppendLiteral("{\"tree\": ");
    if (after_end_) out_->AppendLiteral(", ");
    out_->AppendLiteral("{\"name\": ");
    AppendJsonString(out_, context->name());
    out_->AppendLiteral(", \"kind\": ");
    AppendJsonString(out_, context->kind_name());
    out_->AppendLiteral(", ");
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

  void EndContext(const Context* /*context*/, int /*depth*/) override {
    if (!children_closed_) out_->AppendLiteral("]");
    out_->AppendLiteral("}");
    children_closed_ = false;
    after_end_ = true;
  }

  void GrandTotal(const ContextCounters& totals) override {
    out_->AppendLiteral(", \"grand_total\": {\"contexts\": ");
    out_->AppendNumber(totals.contexts);
    out_->AppendLiteral(", ");
    AppendJsonTotals(out_, totals);
    out_->AppendLiteral("}}\n");
  }

 private:
  internal::ReportOut* out_;
  bool after_end_ = false;        // the last call was EndContext
  bool children_closed_ = false;  // MoreChildren closed the list already
};

}  // namespace

std::string StatsReport(const Context* root, const ReportOptions& options) {
  std::string text;
  StringOut out(&text);
  if (options.format == ReportFormat::kJson) {
    JsonReportSink sink(&out);
    WalkReport(root, options.max_depth, options.max_children, &sink);
  } else {
    internal::TextReportSink sink(&out);
    WalkReport(root, options.max_depth, options.max_children, &sink);
  }
  return text;
}

}  // namespace mcx
