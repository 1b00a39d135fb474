// The stats report as a Graphviz digraph: a sink of the report walk
// (report.h) that collects what is shown, then draws it. Collecting first is
// what lets every bar of the graph be drawn to one scale.

#include "mcx/context/dot.h"

#include <cmath>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/inspect.h"
#include "mcx/context/internal/text.h"
#include "mcx/context/report.h"
#include "mcx/context/stats.h"

namespace mcx {
namespace {

// The name as UTF-8, each byte that starts no well-formed sequence replaced
// by U+FFFD (REPLACEMENT CHARACTER): Graphviz requires UTF-8.
std::string ValidUtf8(const char* s) {
  std::string out;
  for (const char* p = s; *p != '\0';) {
    const size_t n = internal::Utf8SequenceLength(reinterpret_cast<const unsigned char*>(p));
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++p;
    } else {
      out.append(p, n);
      p += n;
    }
  }
  return out;
}

// Bytes of a name that a label shows: Graphviz refuses a run of text in an
// HTML-like label much longer (16 KiB in the Graphviz of Debian 12), and a
// node that wide is unreadable well before.
constexpr size_t kDotNameBytes = 256;

// Whether `p` starts U+FFFE or U+FFFF: well-formed UTF-8, but characters
// XML does not allow (Graphviz's parser rejects the label).
bool IsXmlNoncharacter(const char* p) {
  return static_cast<unsigned char>(p[0]) == 0xEF && static_cast<unsigned char>(p[1]) == 0xBF &&
         (static_cast<unsigned char>(p[2]) == 0xBE || static_cast<unsigned char>(p[2]) == 0xBF);
}

// Text inside an HTML-like label: XML's specials escaped; a backslash
// doubled, since Graphviz expands escapes such as \N and \G (the node's
// and the graph's names) even there; control characters (C0, DEL and C1)
// and U+FFFE and U+FFFF, which XML does not allow, become '?';
// bytes that are not UTF-8 become U+FFFD; a name longer than kDotNameBytes
// is cut at a character and ends in U+2026 (HORIZONTAL ELLIPSIS).
// Graphviz rejects an empty <B></B>, so an empty name is shown as "".
std::string HtmlText(const char* s) {
  if (*s == '\0') return "&quot;&quot;";
  const std::string text = ValidUtf8(s);
  std::string out;
  for (size_t i = 0; i < text.size();) {
    if (i >= kDotNameBytes) {
      out += "\xE2\x80\xA6";
      break;
    }
    const char* p = text.data() + i;
    const size_t n = internal::Utf8SequenceLength(reinterpret_cast<const unsigned char*>(p));
    i += n;
    if (n == 3 && IsXmlNoncharacter(p)) {
      out += '?';
      continue;
    }
    const bool c1_control = n == 2 && static_cast<unsigned char>(p[0]) == 0xC2 &&
                            static_cast<unsigned char>(p[1]) < 0xA0;
    if (c1_control) {
      out += '?';
      continue;
    }
    if (n > 1) {
      out.append(p, n);
      continue;
    }
    switch (*p) {
      case '\\':
        out += "\\\\";
        break;
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += static_cast<unsigned char>(*p) < 0x20 || *p == '\x7F' ? '?' : *p;
    }
  }
  return out;
}

// Bar colours: headers, chunks handed out, chunks on freelists, free space.
constexpr const char* kHeaderColor = "#b0b0b0";
constexpr const char* kUsedColor = "#4a7fb5";
constexpr const char* kFreelistColor = "#f0a040";
constexpr const char* kFreeColor = "#ffffff";
constexpr int kBarHeightPoints = 12;

class LayoutCollector final : public InspectVisitor {
 public:
  void VisitBlock(const BlockInfo& block) override { blocks.push_back(block); }
  void VisitSizeClass(const SizeClassInfo& size_class) override {
    if (size_class.free_chunks != 0) classes.push_back(size_class);
  }

  std::vector<BlockInfo> blocks;
  std::vector<SizeClassInfo> classes;  // those with chunks on their freelist
};

// One node of the graph: a context, or what the cut left out of a parent.
struct DotNode {
  const Context* ctx = nullptr;  // nullptr: a "more child contexts" node
  int parent = -1;               // index into the nodes; -1 for the root
  size_t more_count = 0;         // "more" nodes: contexts left out
  // A context's own counters; for a "more" node, its contexts' totals.
  ContextCounters counters;
  bool has_detail = false;  // with `blocks`: the kind could be inspected
  LayoutCollector layout;
};

std::string DotTotals(const ContextCounters& c) {
  std::string text = absl::StrFormat("%d total in %d blocks<BR/>%d free (%d chunks); %d used",
                                     c.total_bytes, c.blocks, c.free_bytes, c.free_chunks,
                                     c.used_bytes());
  if (c.reserve_blocks != 0 || c.reserve_uses != 0) {
    absl::StrAppendFormat(&text, "<BR/>reserve %d bytes in %d blocks (%d used)", c.reserve_bytes,
                          c.reserve_blocks, c.reserve_uses);
  }
  absl::StrAppendFormat(&text, "<BR/>live %d (peak %d); blocks peak %d", c.live_bytes,
                        c.peak_live_bytes, c.peak_block_bytes);
  return text;
}

std::string BlockCaption(const BlockInfo& b) {
  std::string text = absl::StrFormat("%s %d: ", b.Name(), b.size);
  if (b.header_bytes != 0) absl::StrAppendFormat(&text, "%d header, ", b.header_bytes);
  absl::StrAppendFormat(&text, "%d used", b.used_bytes);
  if (b.freelist_chunks != 0) {
    absl::StrAppendFormat(&text, ", %d on freelists (%d chunks)", b.freelist_bytes,
                          b.freelist_chunks);
  }
  if (b.free_bytes != 0) absl::StrAppendFormat(&text, ", %d free", b.free_bytes);
  for (const BlockCounter& c : b.counters) {
    if (c.name != nullptr && c.value != 0) absl::StrAppendFormat(&text, ", %s %d", c.name, c.value);
  }
  if (b.current) text += ", current";
  return text;
}

// A bar of fixed-size cells. The bar's table is fixed to the sum of its
// cells and aligned left: otherwise Graphviz stretches a shorter bar to the
// width of the longest one in its column, spreading its cells apart.
std::string BlockBar(const BlockInfo& b, double points_per_byte) {
  std::string cells;
  int total = 0;
  auto piece = [&](size_t bytes, const char* color) {
    if (bytes == 0) return;
    int width = static_cast<int>(std::lround(static_cast<double>(bytes) * points_per_byte));
    if (width < kDotMinPiecePoints) width = kDotMinPiecePoints;
    total += width;
    absl::StrAppendFormat(&cells,
                          "<TD WIDTH=\"%d\" HEIGHT=\"%d\" FIXEDSIZE=\"TRUE\" BGCOLOR=\"%s\"></TD>",
                          width, kBarHeightPoints, color);
  };
  piece(b.header_bytes, kHeaderColor);
  piece(b.used_bytes, kUsedColor);
  piece(b.freelist_bytes, kFreelistColor);
  piece(b.free_bytes, kFreeColor);
  return absl::StrFormat(
      "<TABLE BORDER=\"0\" CELLBORDER=\"1\" CELLSPACING=\"0\" CELLPADDING=\"0\" "
      "FIXEDSIZE=\"TRUE\" WIDTH=\"%d\" HEIGHT=\"%d\" ALIGN=\"LEFT\"><TR>%s</TR></TABLE>",
      total, kBarHeightPoints, cells);
}

std::string ContextLabel(const DotNode& n, bool blocks, double points_per_byte) {
  const Context* c = n.ctx;
  const char* span = blocks ? " COLSPAN=\"2\"" : "";
  std::string rows = absl::StrFormat(
      "<TR><TD%s BGCOLOR=\"#dbe4f0\"><B>%s</B> (%s)</TD></TR>"
      "<TR><TD%s>%s</TD></TR>",
      span, HtmlText(c->name()), HtmlText(c->kind_name()), span, DotTotals(n.counters));
  if (c->limit() != kNoLimit) {
    absl::StrAppendFormat(&rows, "<TR><TD%s>limit %d; subtree %d</TD></TR>", span, c->limit(),
                          c->SubtreeBytes());
  }
  if (c->last_failure() != Failure::kNone) {
    absl::StrAppendFormat(&rows, "<TR><TD%s>last failure: %s</TD></TR>", span,
                          FailureName(c->last_failure()));
  }
  if (blocks && !n.has_detail) {
    absl::StrAppendFormat(&rows,
                          "<TR><TD%s><I>no block detail (kind %s has no inspect)</I></TD></TR>",
                          span, HtmlText(c->kind_name()));
  }
  if (blocks) {
    for (const BlockInfo& b : n.layout.blocks) {
      absl::StrAppendFormat(&rows,
                            "<TR><TD ALIGN=\"LEFT\"><FONT POINT-SIZE=\"9\">%s</FONT></TD>"
                            "<TD ALIGN=\"LEFT\">%s</TD></TR>",
                            BlockCaption(b), BlockBar(b, points_per_byte));
    }
    if (!n.layout.classes.empty()) {
      std::string lists = "freelists:";
      for (const SizeClassInfo& sc : n.layout.classes) {
        absl::StrAppendFormat(&lists, " %d B x%d", sc.class_bytes, sc.free_chunks);
      }
      absl::StrAppendFormat(&rows, "<TR><TD%s><FONT POINT-SIZE=\"9\">%s</FONT></TD></TR>", span,
                            lists);
    }
  }
  return absl::StrCat("<<TABLE BORDER=\"1\" CELLBORDER=\"0\" CELLSPACING=\"0\" CELLPADDING=\"3\">",
                      rows, "</TABLE>>");
}

// DotSink
//
// Keeps one DotNode per context shown and per MoreChildren, in walk order,
// each with the index of its parent's node (the top of `open_`).
class DotSink final : public ReportSink {
 public:
  void BeginContext(const Context* context, int /*depth*/,
                    const ContextCounters& counters) override {
    DotNode n;
    n.ctx = context;
    n.parent = open_.empty() ? -1 : open_.back();
    n.counters = counters;
    nodes_.push_back(std::move(n));
    open_.push_back(static_cast<int>(nodes_.size()) - 1);
  }
  void MoreChildren(const Context* /*parent*/, int /*depth*/, size_t count,
                    const ContextCounters& totals) override {
    DotNode n;
    n.parent = open_.back();
    n.more_count = count;
    n.counters = totals;
    nodes_.push_back(std::move(n));
  }
  void EndContext(const Context* /*context*/, int /*depth*/) override { open_.pop_back(); }
  void GrandTotal(const ContextCounters& totals) override { grand_ = totals; }

  std::vector<DotNode>& nodes() { return nodes_; }
  const ContextCounters& grand() const { return grand_; }

 private:
  std::vector<DotNode> nodes_;
  std::vector<int> open_;  // nodes of the contexts begun and not ended
  ContextCounters grand_;
};

}  // namespace

std::string DotReport(const Context* root, const DotOptions& options) {
  DotSink sink;
  WalkReport(root, options.max_depth, options.max_children, &sink);
  std::vector<DotNode>& nodes = sink.nodes();

  size_t largest = 0;
  if (options.blocks) {
    for (DotNode& n : nodes) {
      if (n.ctx == nullptr) continue;
      n.has_detail = InspectContext(n.ctx, &n.layout);
      for (const BlockInfo& b : n.layout.blocks) largest = b.size > largest ? b.size : largest;
    }
  }
  const double points_per_byte =
      largest == 0 ? 0.0 : static_cast<double>(kDotBarPoints) / static_cast<double>(largest);

  const ContextCounters& grand = sink.grand();
  std::string title = absl::StrFormat(
      "Grand total: %d bytes in %d blocks; %d free (%d chunks); %d used; live %d (peak %d); "
      "blocks peak %d",
      grand.total_bytes, grand.blocks, grand.free_bytes, grand.free_chunks, grand.used_bytes(),
      grand.live_bytes, grand.peak_live_bytes, grand.peak_block_bytes);
  if (options.blocks) {
    title += "\\nblocks to scale: grey headers, blue used, orange on freelists, white free";
  }
  std::string out = absl::StrCat(
      "digraph mcx {\n"
      "  graph [fontname=\"Helvetica\", fontsize=10, labelloc=b, label=\"",
      title,
      "\"];\n"
      "  node [shape=plaintext, fontname=\"Helvetica\", fontsize=10];\n"
      "  edge [color=\"#555555\"];\n");
  int contexts = 0;
  int mores = 0;
  std::vector<std::string> ids(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    const DotNode& n = nodes[i];
    if (n.ctx != nullptr) {
      ids[i] = absl::StrCat("ctx", contexts++);
      absl::StrAppend(&out, "  ", ids[i],
                      " [label=", ContextLabel(n, options.blocks, points_per_byte), "];\n");
    } else {
      ids[i] = absl::StrCat("more", mores++);
      const ContextCounters& t = n.counters;
      absl::StrAppendFormat(
          &out,
          "  %s [shape=note, label=\"%d more child contexts\\n%d total in %d blocks\\n"
          "%d free (%d chunks); %d used\nlive %d (peak %d); blocks peak %d\"];\n",
          ids[i], n.more_count, t.total_bytes, t.blocks, t.free_bytes, t.free_chunks,
          t.used_bytes(), t.live_bytes, t.peak_live_bytes, t.peak_block_bytes);
    }
    if (n.parent >= 0) {
      absl::StrAppend(&out, "  ", ids[static_cast<size_t>(n.parent)], " -> ", ids[i],
                      n.ctx == nullptr ? " [style=dashed]" : "", ";\n");
    }
  }
  out += "}\n";
  return out;
}

}  // namespace mcx
