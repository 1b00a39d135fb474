// Counters and the stats report. The report walks with an explicit stack of
// frames (no C++ recursion): a million-deep chain is cut by max_depth, but the
// walk itself must not depend on the depth of the tree.

#include "mcx/context/stats.h"

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/inspect.h"
#include "mcx/context/internal/text.h"

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

// The name as UTF-8, each byte that starts no well-formed sequence replaced
// by U+FFFD (REPLACEMENT CHARACTER): JSON and Graphviz both require UTF-8.
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

std::string JsonString(const char* s) {
  std::string out = "\"";
  for (char byte : ValidUtf8(s)) {
    unsigned char ch = static_cast<unsigned char>(byte);
    switch (ch) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (ch < 0x20) {
          absl::StrAppendFormat(&out, "\\u%04x", ch);
        } else {
          out += static_cast<char>(ch);
        }
    }
  }
  out += "\"";
  return out;
}

// A name as the text report shows it: on one line, escaped C-style
// (internal/text.h); dump.cc escapes the same way without allocating.
std::string TextName(const char* s) {
  std::string out;
  internal::AppendTextName(s, [&out](const char* piece, size_t n) { out.append(piece, n); });
  return out;
}

std::string TextTotals(const ContextCounters& c) {
  std::string line = absl::StrFormat("%d total in %d blocks; %d free (%d chunks); %d used",
                                     c.total_bytes, c.blocks, c.free_bytes, c.free_chunks,
                                     c.used_bytes());
  if (c.reserve_blocks != 0 || c.reserve_uses != 0) {
    absl::StrAppendFormat(&line, "; reserve %d bytes in %d blocks (%d used)", c.reserve_bytes,
                          c.reserve_blocks, c.reserve_uses);
  }
  return line;
}

std::string JsonTotals(const ContextCounters& c) {
  return absl::StrFormat(
      "\"total_bytes\": %d, \"blocks\": %d, \"free_bytes\": %d, \"free_chunks\": %d, "
      "\"used_bytes\": %d, \"reserve_bytes\": %d, \"reserve_blocks\": %d, "
      "\"reserve_uses\": %d",
      c.total_bytes, c.blocks, c.free_bytes, c.free_chunks, c.used_bytes(), c.reserve_bytes,
      c.reserve_blocks, c.reserve_uses);
}

struct Frame {
  const Context* ctx;
  int depth;
  const Context* next_child;  // next child to show or summarise
  int shown;                  // children shown so far
};

// Sums the subtrees of `first` and its older siblings.
ContextCounters SumSiblings(const Context* first, size_t* count) {
  ContextCounters sum;
  *count = 0;
  for (const Context* c = first; c != nullptr; c = c->next_sibling()) {
    sum.Add(GetSubtreeCounters(c));
    ++*count;
  }
  return sum;
}

std::string TextReport(const Context* root, const ReportOptions& options) {
  std::string out;
  auto line = [&out](int depth, const std::string& text) {
    out.append(static_cast<size_t>(depth) * 2, ' ');
    out += text;
    out += '\n';
  };
  std::vector<Frame> stack;
  line(0, absl::StrCat(TextName(root->name()), ": ", TextTotals(GetCounters(root))));
  stack.push_back({root, 0, root->first_child(), 0});
  while (!stack.empty()) {
    Frame& f = stack.back();
    if (f.next_child != nullptr && f.depth < options.max_depth && f.shown < options.max_children) {
      const Context* c = f.next_child;
      f.next_child = c->next_sibling();
      ++f.shown;
      int depth = f.depth + 1;
      line(depth, absl::StrCat(TextName(c->name()), ": ", TextTotals(GetCounters(c))));
      stack.push_back({c, depth, c->first_child(), 0});
      continue;
    }
    if (f.next_child != nullptr) {
      size_t count;
      ContextCounters rest = SumSiblings(f.next_child, &count);
      line(f.depth + 1, absl::StrFormat("%d more child contexts containing %s", count,
                                        TextTotals(rest)));
    }
    stack.pop_back();
  }
  ContextCounters grand = GetSubtreeCounters(root);
  out += absl::StrFormat("Grand total: %d bytes in %d blocks; %d free (%d chunks); %d used\n",
                         grand.total_bytes, grand.blocks, grand.free_bytes, grand.free_chunks,
                         grand.used_bytes());
  return out;
}

std::string JsonReport(const Context* root, const ReportOptions& options) {
  std::string out;
  auto open = [&out](const Context* c) {
    absl::StrAppend(&out, "{\"name\": ", JsonString(c->name()), ", \"kind\": ",
                    JsonString(c->kind_name()), ", ", JsonTotals(GetCounters(c)),
                    ", \"children\": [");
  };
  std::vector<Frame> stack;
  open(root);
  stack.push_back({root, 0, root->first_child(), 0});
  while (!stack.empty()) {
    Frame& f = stack.back();
    if (f.next_child != nullptr && f.depth < options.max_depth && f.shown < options.max_children) {
      const Context* c = f.next_child;
      f.next_child = c->next_sibling();
      if (f.shown++ > 0) out += ", ";
      open(c);
      stack.push_back({c, f.depth + 1, c->first_child(), 0});
      continue;
    }
    out += "]";
    if (f.next_child != nullptr) {
      size_t count;
      ContextCounters rest = SumSiblings(f.next_child, &count);
      absl::StrAppend(&out, ", \"more_children\": {\"contexts\": ", count, ", ",
                      JsonTotals(rest), "}");
    }
    out += "}";
    stack.pop_back();
  }
  ContextCounters grand = GetSubtreeCounters(root);
  return absl::StrCat("{\"tree\": ", out, ", \"grand_total\": {\"contexts\": ", grand.contexts,
                      ", ", JsonTotals(grand), "}}\n");
}

// --- DOT ----------------------------------------------------------------------
//
// The DOT report walks the tree as the text report does, but in two passes:
// the first collects what is shown (and, with `blocks`, inspects it), so that
// every bar in the graph can be drawn to one scale; the second prints.

// Text inside an HTML-like label: XML's specials escaped; control
// characters, which XML does not allow, become '?'; bytes that are not
// UTF-8 become U+FFFD. Graphviz rejects an empty <B></B>, so an empty name
// is shown as "".
std::string HtmlText(const char* s) {
  if (*s == '\0') return "&quot;&quot;";
  std::string out;
  for (char ch : ValidUtf8(s)) {
    switch (ch) {
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
        out += static_cast<unsigned char>(ch) < 0x20 ? '?' : ch;
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
  const Context* ctx;  // nullptr: a "more child contexts" node
  int parent;          // index into the nodes; -1 for the root
  size_t more_count;   // "more" nodes: contexts left out, and their totals
  ContextCounters more_totals;
  bool has_detail;     // with `blocks`: the kind could be inspected
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
  return text;
}

std::string BlockCaption(const BlockInfo& b) {
  std::string text = absl::StrFormat("%s %d: ", BlockRoleName(b.role), b.size);
  if (b.header_bytes != 0) absl::StrAppendFormat(&text, "%d header, ", b.header_bytes);
  absl::StrAppendFormat(&text, "%d used", b.used_bytes);
  if (b.freelist_chunks != 0) {
    absl::StrAppendFormat(&text, ", %d on freelists (%d chunks)", b.freelist_bytes,
                          b.freelist_chunks);
  }
  if (b.free_bytes != 0) absl::StrAppendFormat(&text, ", %d free", b.free_bytes);
  if (b.failed != 0) absl::StrAppendFormat(&text, ", failed %d", b.failed);
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
      span, HtmlText(c->name()), HtmlText(c->kind_name()), span, DotTotals(GetCounters(c)));
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

std::string DotReport(const Context* root, const ReportOptions& options) {
  struct DotFrame {
    Frame frame;
    int node;  // index of the context's node
  };
  std::vector<DotNode> nodes;
  auto add_context = [&](const Context* c, int parent) {
    nodes.push_back({c, parent, 0, {}, false, {}});
    return static_cast<int>(nodes.size()) - 1;
  };
  std::vector<DotFrame> stack;
  stack.push_back({{root, 0, root->first_child(), 0}, add_context(root, -1)});
  while (!stack.empty()) {
    DotFrame& f = stack.back();
    if (f.frame.next_child != nullptr && f.frame.depth < options.max_depth &&
        f.frame.shown < options.max_children) {
      const Context* c = f.frame.next_child;
      f.frame.next_child = c->next_sibling();
      ++f.frame.shown;
      int node = add_context(c, f.node);
      stack.push_back({{c, f.frame.depth + 1, c->first_child(), 0}, node});
      continue;
    }
    if (f.frame.next_child != nullptr) {
      DotNode more{nullptr, f.node, 0, {}, false, {}};
      more.more_totals = SumSiblings(f.frame.next_child, &more.more_count);
      nodes.push_back(std::move(more));
    }
    stack.pop_back();
  }

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

  ContextCounters grand = GetSubtreeCounters(root);
  std::string title = absl::StrFormat(
      "Grand total: %d bytes in %d blocks; %d free (%d chunks); %d used", grand.total_bytes,
      grand.blocks, grand.free_bytes, grand.free_chunks, grand.used_bytes());
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
      const ContextCounters& t = n.more_totals;
      absl::StrAppendFormat(
          &out,
          "  %s [shape=note, label=\"%d more child contexts\\n%d total in %d blocks\\n"
          "%d free (%d chunks); %d used\"];\n",
          ids[i], n.more_count, t.total_bytes, t.blocks, t.free_bytes, t.free_chunks,
          t.used_bytes());
    }
    if (n.parent >= 0) {
      absl::StrAppend(&out, "  ", ids[static_cast<size_t>(n.parent)], " -> ", ids[i],
                      n.ctx == nullptr ? " [style=dashed]" : "", ";\n");
    }
  }
  out += "}\n";
  return out;
}

}  // namespace

std::string StatsReport(const Context* root, const ReportOptions& options) {
  switch (options.format) {
    case ReportFormat::kJson:
      return JsonReport(root, options);
    case ReportFormat::kDot:
      return DotReport(root, options);
    case ReportFormat::kText:
      break;
  }
  return TextReport(root, options);
}

}  // namespace mcx
