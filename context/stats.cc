// Counters, and the text and JSON reports: the one walk of report.cc
// rendered into a std::string by the text sink (internal/report_text.h, which
// DumpStats shares) or by the JSON sink below.

#include "mcx/context/stats.h"

#include <cstddef>
#include <string>

#include "mcx/context/context.h"
#include "mcx/context/internal/report_json.h"
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
  live_bytes += other.live_bytes;
  peak_live_bytes += other.peak_live_bytes;
  peak_block_bytes += other.peak_block_bytes;
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
  c.peak_block_bytes = ctx->peak_bytes_in_blocks();
  if (ctx->kind()->live != nullptr) {
    LiveCounts live;
    ctx->kind()->live(ctx, &live);
    c.live_bytes = live.live_bytes;
    c.peak_live_bytes = live.peak_live_bytes;
  }
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

void ResetSubtreePeaks(Context* top) {
  Context* c = top;
  while (c != nullptr) {
    c->ResetPeak();
    if (c->first_child() != nullptr) {
      c = c->first_child();
      continue;
    }
    while (c != top && c->next_sibling() == nullptr) c = c->parent();
    c = (c == top) ? nullptr : c->next_sibling();
  }
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

}  // namespace

namespace internal {

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
  out->AppendLiteral(", \"live_bytes\": ");
  out->AppendNumber(c.live_bytes);
  out->AppendLiteral(", \"peak_live_bytes\": ");
  out->AppendNumber(c.peak_live_bytes);
  out->AppendLiteral(", \"peak_block_bytes\": ");
  out->AppendNumber(c.peak_block_bytes);
}

}  // namespace internal

std::string StatsReport(const Context* root, const ReportOptions& options) {
  std::string text;
  StringOut out(&text);
  if (options.format == ReportFormat::kJson) {
    internal::JsonReportSink sink(&out);
    WalkReport(root, options.max_depth, options.max_children, &sink);
  } else {
    internal::TextReportSink sink(&out);
    WalkReport(root, options.max_depth, options.max_children, &sink);
  }
  return text;
}

}  // namespace mcx
