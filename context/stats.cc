// Counters and the stats report. The report walks with an explicit stack of
// frames (no C++ recursion): a million-deep chain is cut by max_depth, but the
// walk itself must not depend on the depth of the tree.

#include "mcx/context/stats.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "mcx/context/context.h"

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
  c.total_bytes = ctx->bytes_in_blocks() + ctx->direct_bytes();
  c.blocks = ctx->num_blocks() + ctx->direct_chunks();
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

std::string JsonString(const char* s) {
  std::string out = "\"";
  for (const char* p = s; *p != '\0'; ++p) {
    unsigned char ch = static_cast<unsigned char>(*p);
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
  line(0, absl::StrCat(root->name(), ": ", TextTotals(GetCounters(root))));
  stack.push_back({root, 0, root->first_child(), 0});
  while (!stack.empty()) {
    Frame& f = stack.back();
    if (f.next_child != nullptr && f.depth < options.max_depth && f.shown < options.max_children) {
      const Context* c = f.next_child;
      f.next_child = c->next_sibling();
      ++f.shown;
      int depth = f.depth + 1;
      line(depth, absl::StrCat(c->name(), ": ", TextTotals(GetCounters(c))));
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

}  // namespace

std::string StatsReport(const Context* root, const ReportOptions& options) {
  return options.format == ReportFormat::kJson ? JsonReport(root, options)
                                               : TextReport(root, options);
}

}  // namespace mcx
