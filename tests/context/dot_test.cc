// The stats report as a Graphviz digraph (DotReport, mcx/context/dot.h, the
// //context:dot target, which this test depends on and the core does not):
// its structure is checked exactly; if graphviz is installed, `dot` must also
// accept it without a warning.

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/dot.h"
#include "mcx/context/inspect.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/freelist/size_class.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

using test::ExactBlockSource;

std::string Dot(const Context* root, int max_depth = 100, int max_children = 100,
                bool blocks = false) {
  DotOptions o;
  o.max_depth = max_depth;
  o.max_children = max_children;
  o.blocks = blocks;
  return DotReport(root, o);
}

std::vector<std::string> Lines(const std::string& dot) {
  return absl::StrSplit(dot, '\n', absl::SkipEmpty());
}

// The line that declares node `id`, or "".
std::string NodeLine(const std::string& dot, const std::string& id) {
  for (const std::string& line : Lines(dot)) {
    if (line.rfind(absl::StrCat("  ", id, " ["), 0) == 0) return line;
  }
  return "";
}

// Occurrences of `needle` in `text`. (No std::regex: GCC 12 warns inside it
// under ASan's -O1.)
int CountOf(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) {
    ++n;
  }
  return n;
}

// Lines declaring a node `<prefix><number>`.
int CountNodes(const std::string& dot, const std::string& prefix) {
  int n = 0;
  for (const std::string& line : Lines(dot)) {
    std::string start = "  " + prefix;
    if (line.rfind(start, 0) != 0) continue;
    size_t i = start.size();
    size_t digits = i;
    while (digits < line.size() && line[digits] >= '0' && line[digits] <= '9') ++digits;
    if (digits > i && line.compare(digits, 2, " [") == 0) ++n;
  }
  return n;
}

// What a context's node must say about its counters.
std::string TotalsText(const ContextCounters& c) {
  return absl::StrFormat("%d total in %d blocks<BR/>%d free (%d chunks); %d used", c.total_bytes,
                         c.blocks, c.free_bytes, c.free_chunks, c.used_bytes());
}

// If graphviz is installed, `dot` must accept the graph and say nothing.
void ExpectDotAccepts(const std::string& dot) {
  if (std::system("test -x /usr/bin/dot") != 0) return;  // graphviz is optional
  const char* tmp = std::getenv("TEST_TMPDIR");
  std::string dir = tmp != nullptr ? tmp : "/tmp";
  std::string in = dir + "/stats_dot_test.dot";
  std::string err = dir + "/stats_dot_test.err";
  std::ofstream(in) << dot;
  std::string cmd = absl::StrCat("/usr/bin/dot -Tsvg ", in, " -o /dev/null 2>", err);
  EXPECT_EQ(std::system(cmd.c_str()), 0) << dot;
  std::ifstream messages(err);
  std::string text((std::istreambuf_iterator<char>(messages)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "") << dot;
}

// One node per context, one edge per parent and child, labels with each
// context's own numbers, and the grand total as the graph's label.
TEST(DotReportTest, OneNodePerContextAndOneEdgePerChild) {
  Context* top = Context::Create(nullptr, "top", PoolKind());
  Context* a = top->CreateChild("a", PoolKind());
  Context* b = top->CreateChild("b", FreelistKind());
  Context* c = b->CreateChild("c", PoolKind());
  a->Alloc(100);
  void* f = b->Alloc(40);
  b->Alloc(40);
  b->Free(f);
  std::string dot = Dot(top);

  EXPECT_EQ(dot.rfind("digraph mcx {\n", 0), 0u);
  EXPECT_EQ(dot.substr(dot.size() - 2), "}\n");
  EXPECT_EQ(CountNodes(dot, "ctx"), 4);
  EXPECT_EQ(CountOf(dot, "->"), 3);
  EXPECT_EQ(CountOf(dot, "more"), 0);
  // Walk order: the root, then the newest child first, depth first.
  const std::vector<std::pair<std::string, const Context*>> order = {
      {"ctx0", top}, {"ctx1", b}, {"ctx2", c}, {"ctx3", a}};
  for (const auto& [id, ctx] : order) {
    std::string line = NodeLine(dot, id);
    ASSERT_NE(line, "") << id;
    EXPECT_NE(line.find(absl::StrCat("<B>", ctx->name(), "</B> (", ctx->kind_name(), ")")),
              std::string::npos)
        << line;
    EXPECT_NE(line.find(TotalsText(GetCounters(ctx))), std::string::npos) << line;
  }
  EXPECT_NE(NodeLine(dot, "ctx1").find("free (1 chunks)"), std::string::npos);
  EXPECT_NE(dot.find("  ctx0 -> ctx1;\n"), std::string::npos);
  EXPECT_NE(dot.find("  ctx1 -> ctx2;\n"), std::string::npos);
  EXPECT_NE(dot.find("  ctx0 -> ctx3;\n"), std::string::npos);
  ContextCounters g = GetSubtreeCounters(top);
  EXPECT_NE(dot.find(absl::StrFormat(
                "label=\"Grand total: %d bytes in %d blocks; %d free (%d chunks); %d used; "
                "live %d (peak %d); blocks peak %d\"",
                g.total_bytes, g.blocks, g.free_bytes, g.free_chunks, g.used_bytes(),
                g.live_bytes, g.peak_live_bytes, g.peak_block_bytes)),
            std::string::npos)
      << dot;
  ExpectDotAccepts(dot);
  top->Destroy();
}

// The cut rules of the text report: what is left out is one "more" node per
// parent, with a dashed edge, whose totals add up.
TEST(DotReportTest, CutsLikeTheTextReport) {
  Context* top = Context::Create(nullptr, "top", PoolKind());
  Context* kids[5];
  for (int i = 0; i < 5; ++i) kids[i] = top->CreateChild(absl::StrCat("k", i).c_str(), PoolKind());
  kids[0]->CreateChild("grandchild", PoolKind());

  std::string dot = Dot(top, /*max_depth=*/100, /*max_children=*/2);
  EXPECT_EQ(CountNodes(dot, "ctx"), 3);  // top, k4, k3
  EXPECT_EQ(CountNodes(dot, "more"), 1);
  EXPECT_EQ(CountOf(dot, "->"), 3);
  EXPECT_NE(dot.find("  ctx0 -> more0 [style=dashed];\n"), std::string::npos);
  // k2, k1, k0 and the grandchild.
  ContextCounters rest;
  for (int i = 0; i < 3; ++i) rest.Add(GetSubtreeCounters(kids[i]));
  EXPECT_NE(NodeLine(dot, "more0")
                .find(absl::StrFormat("3 more child contexts\\n%d total in %d blocks\\n"
                                      "%d free (%d chunks); %d used",
                                      rest.total_bytes, rest.blocks, rest.free_bytes,
                                      rest.free_chunks, rest.used_bytes())),
            std::string::npos)
      << dot;
  ExpectDotAccepts(dot);

  // max_depth 0: the root and one node for all of its children.
  dot = Dot(top, /*max_depth=*/0);
  EXPECT_EQ(CountNodes(dot, "ctx"), 1);
  EXPECT_NE(NodeLine(dot, "more0").find("5 more child contexts"), std::string::npos);
  ExpectDotAccepts(dot);

  // max_depth 1: k0's grandchild is summarised under k0.
  dot = Dot(top, /*max_depth=*/1);
  EXPECT_EQ(CountNodes(dot, "ctx"), 6);
  EXPECT_EQ(CountNodes(dot, "more"), 1);
  EXPECT_NE(dot.find("  ctx5 -> more0 [style=dashed];\n"), std::string::npos) << dot;
  top->Destroy();
}

// Limits, reserves and the last failure are shown where they apply.
TEST(DotReportTest, LimitReserveAndFailureMarkers) {
  ContextOptions o;
  o.limit = 64 * 1024;
  o.reserve_blocks = 1;
  o.reserve_block_size = 4096;
  Context* top = Context::Create(nullptr, "top", PoolKind(), o);
  EXPECT_EQ(top->TryAlloc(1024 * 1024), nullptr);
  std::string line = NodeLine(Dot(top), "ctx0");
  EXPECT_NE(line.find(absl::StrFormat("limit %d; subtree %d", 64 * 1024, top->SubtreeBytes())),
            std::string::npos)
      << line;
  EXPECT_NE(line.find("<BR/>reserve 4096 bytes in 1 blocks (0 used)"), std::string::npos) << line;
  EXPECT_NE(line.find(absl::StrCat("last failure: ", FailureName(Failure::kLimit))),
            std::string::npos)
      << line;
  Context* child = top->CreateChild("child", PoolKind());
  line = NodeLine(Dot(top), "ctx1");
  EXPECT_EQ(line.find("limit"), std::string::npos) << line;
  EXPECT_EQ(line.find("last failure"), std::string::npos) << line;
  ExpectDotAccepts(Dot(top, 100, 100, /*blocks=*/true));
  child->Destroy();
  top->Destroy();
}

// Names are text in HTML-like labels: XML's specials are escaped.
TEST(DotReportTest, NamesAreEscaped) {
  Context* top = Context::Create(nullptr, "a<b>&\"c\"", PoolKind());
  std::string dot = Dot(top);
  EXPECT_NE(dot.find("<B>a&lt;b&gt;&amp;&quot;c&quot;</B>"), std::string::npos) << dot;
  ExpectDotAccepts(dot);
  top->Destroy();
}

// Graphviz needs UTF-8 and rejects an empty <B></B>: an empty name shows as
// "", and a byte that starts no UTF-8 sequence as U+FFFD.
TEST(DotReportTest, EmptyAndNonUtf8NamesStayValid) {
  Context* top = Context::Create(nullptr, "", PoolKind());
  top->CreateChild("caf\xE9", PoolKind());            // Latin-1
  top->CreateChild("caf\xC3\xA9 \xE2\x82\xAC", PoolKind());  // UTF-8: kept
  std::string dot = Dot(top);
  EXPECT_NE(NodeLine(dot, "ctx0").find("<B>&quot;&quot;</B>"), std::string::npos) << dot;
  EXPECT_NE(dot.find("<B>caf\xEF\xBF\xBD</B>"), std::string::npos) << dot;
  EXPECT_NE(dot.find("<B>caf\xC3\xA9 \xE2\x82\xAC</B>"), std::string::npos) << dot;
  ExpectDotAccepts(dot);
  top->Destroy();
}

// U+FFFE and U+FFFF are well-formed UTF-8 that XML does not allow: they
// show as '?'. A long name shows its first 256 bytes, cut at a character,
// and an ellipsis: Graphviz refuses a long run of text in a label.
TEST(DotReportTest, NoncharactersAndLongNamesStayValid) {
  Context* top = Context::Create(nullptr, "a\xEF\xBF\xBE" "b\xEF\xBF\xBF" "c", PoolKind());
  std::string long_name(255, 'n');
  long_name += "\xC3\xA9";  // a character across byte 256
  long_name += std::string(20000, 'm');
  top->CreateChild(long_name.c_str(), PoolKind());
  std::string dot = Dot(top);
  EXPECT_NE(NodeLine(dot, "ctx0").find("<B>a?b?c</B>"), std::string::npos) << dot;
  const std::string shown = "<B>" + long_name.substr(0, 257) + "\xE2\x80\xA6</B>";
  EXPECT_NE(dot.find(shown), std::string::npos) << dot.substr(0, 2000);
  EXPECT_EQ(dot.find(std::string(300, 'm')), std::string::npos);
  ExpectDotAccepts(dot);
  top->Destroy();
}

// Graphviz expands \N, \G, \L and the like even in HTML-like labels (the
// node's name, the graph's name): a name with backslashes is drawn as
// written. Control characters, DEL and C1 included, become '?'.
TEST(DotReportTest, BackslashesAndControlsAreDrawnAsWritten) {
  Context* top = Context::Create(nullptr, "a\\Nb\\Gc\\\\d", PoolKind());
  top->CreateChild("x\x7Fy\xC2\x85z\xC2\xA0w", PoolKind());
  const std::string dot = Dot(top);
  EXPECT_NE(NodeLine(dot, "ctx0").find("<B>a\\\\Nb\\\\Gc\\\\\\\\d</B>"), std::string::npos)
      << dot;
  EXPECT_NE(NodeLine(dot, "ctx1").find("<B>x?y?z\xC2\xA0w</B>"), std::string::npos) << dot;
  ExpectDotAccepts(dot);
  if (std::system("test -x /usr/bin/dot") != 0) return;  // graphviz is optional
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string dir = tmp != nullptr ? tmp : "/tmp";
  std::ofstream(dir + "/backslash.dot") << dot;
  ASSERT_EQ(std::system(("/usr/bin/dot -Tsvg " + dir + "/backslash.dot -o " + dir +
                         "/backslash.svg")
                            .c_str()),
            0);
  std::ifstream in(dir + "/backslash.svg");
  const std::string svg((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(svg.find(">a\\Nb\\Gc\\\\d<"), std::string::npos) << svg;
  top->Destroy();
}

// The widths of a bar's cells.
std::vector<int> Widths(const std::string& bar) {
  std::vector<int> out;
  const std::string cell = "<TD WIDTH=\"";
  for (size_t at = bar.find(cell); at != std::string::npos; at = bar.find(cell, at + 1)) {
    out.push_back(std::atoi(bar.c_str() + at + cell.size()));
  }
  return out;
}

// With `blocks`, one captioned bar per block, to one scale: the largest
// block is kDotBarPoints wide (give or take rounding), pieces are at least
// kDotMinPiecePoints wide, and blocks of one size have bars of one width.
TEST(DotReportTest, BlocksAreDrawnToScale) {
  ExactBlockSource source;
  ContextOptions co;
  co.block_source = &source;
  PoolOptions po;
  po.initial_block_size = po.max_block_size = 1024;
  po.max_small = 600;
  Context* top = CreatePoolContext(nullptr, "top", po, co);
  for (int i = 0; i < 3; ++i) top->Alloc(500);  // three blocks
  top->Alloc(2048 - 64);  // and a large one: 2048 bytes with its 64-byte header
  FreelistOptions fo;
  fo.initial_block_size = fo.max_block_size = 1024;
  Context* fl = top->CreateChild("fl", FreelistKind(fo));
  void* p = fl->Alloc(24);
  fl->Alloc(24);
  fl->Free(p);

  std::string dot = Dot(top, 100, 100, /*blocks=*/true);
  ContextLayout pool = InspectContext(top);
  ContextLayout free = InspectContext(fl);
  ASSERT_EQ(pool.blocks.size(), 4u);
  const std::string bar_open =
      "<TABLE BORDER=\"0\" CELLBORDER=\"1\" CELLSPACING=\"0\" CELLPADDING=\"0\" FIXEDSIZE";
  EXPECT_EQ(CountOf(NodeLine(dot, "ctx0"), bar_open), 4);
  EXPECT_EQ(CountOf(NodeLine(dot, "ctx1"), bar_open), static_cast<int>(free.blocks.size()));

  std::string top_line = NodeLine(dot, "ctx0");
  EXPECT_NE(top_line.find(absl::StrFormat("first 1024: %d header, %d used, %d free, failed 1, "
                                          "current",
                                          pool.blocks[0].header_bytes, pool.blocks[0].used_bytes,
                                          pool.blocks[0].free_bytes)),
            std::string::npos)
      << top_line;
  EXPECT_NE(top_line.find(absl::StrFormat("large %d: %d header, %d used", pool.blocks[3].size,
                                          pool.blocks[3].header_bytes, pool.blocks[3].used_bytes)),
            std::string::npos)
      << top_line;
  std::string fl_line = NodeLine(dot, "ctx1");
  EXPECT_NE(fl_line.find(absl::StrFormat("on freelists (1 chunks)")), std::string::npos);
  EXPECT_NE(fl_line.find(absl::StrFormat("freelists: %d B x1", SizeClassBytes(SizeClassOf(24)))),
            std::string::npos)
      << fl_line;

  // Bar widths, in order: the pool's four blocks, then the freelist's.
  std::vector<std::vector<int>> bars;
  for (const std::string& line : {top_line, fl_line}) {
    size_t at = 0;
    while ((at = line.find(bar_open, at)) != std::string::npos) {
      size_t end = line.find("</TABLE>", at);
      std::string bar = line.substr(at, end - at);
      bars.push_back(Widths(bar));
      // The bar's table is as wide as its cells (else dot would stretch it).
      int total = 0;
      for (int w : bars.back()) total += w;
      EXPECT_NE(bar.find(absl::StrFormat("FIXEDSIZE=\"TRUE\" WIDTH=\"%d\"", total)),
                std::string::npos)
          << bar;
      at = end;
    }
  }
  ASSERT_EQ(bars.size(), 4 + free.blocks.size());
  auto sum = [](const std::vector<int>& w) {
    int s = 0;
    for (int x : w) {
      EXPECT_GE(x, kDotMinPiecePoints);
      s += x;
    }
    return s;
  };
  // The large block (2048 bytes, the largest) has two pieces, its header and
  // its chunk: the whole bar.
  EXPECT_EQ(bars[3].size(), 2u);
  EXPECT_NEAR(sum(bars[3]), kDotBarPoints, 2);
  // 1024-byte blocks: half of it, give or take a point per piece.
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(sum(bars[i]), kDotBarPoints / 2, static_cast<int>(bars[i].size())) << i;
  }
  // Blocks with the same numbers have the same bar: blocks 2 and 3 hold one
  // chunk each (the large chunk's header is in its own block).
  EXPECT_EQ(pool.blocks[1].used_bytes, pool.blocks[2].used_bytes);
  EXPECT_EQ(bars[1], bars[2]);
  ExpectDotAccepts(dot);
  top->Destroy();
}

// A kind without an inspect method shows its counters and says it has no
// block detail.
TEST(DotReportTest, KindWithoutInspect) {
  KindMethods methods = *PoolKind().methods();
  methods.inspect = nullptr;
  Context* top = Context::Create(nullptr, "opaque", KindSpec(&methods, PoolOptions()));
  std::string dot = Dot(top, 100, 100, /*blocks=*/true);
  EXPECT_NE(dot.find("no block detail"), std::string::npos) << dot;
  EXPECT_NE(dot.find(TotalsText(GetCounters(top))), std::string::npos);
  ExpectDotAccepts(dot);
  top->Destroy();
}

}  // namespace
}  // namespace mcx
