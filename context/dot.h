// File: mcx/context/dot.h
//
// A tree of contexts as a Graphviz digraph: the stats report (stats.h) drawn,
// optionally with each context's blocks to scale. For pictures (the tour,
// docs/pictures/render.sh) and for looking at a tree by eye; render it with
// `dot -Tsvg`.
//
// Not part of the core: this is the Bazel target //context:dot (CMake:
// mcx::dot, pkg-config mcx-dot), which depends on the core and on Abseil's
// string formatting; //context, //:mcx and the C API do not link it.
//
// Contract:
//   - The walk and the cut are the report's (`WalkReport`, report.h): the
//     contexts shown, the "N more child contexts" summaries and the grand
//     total are those of `StatsReport` with the same `max_depth` and
//     `max_children`.
//   - One node per context shown, named `ctxN` in walk order (the root is
//     `ctx0`), labelled with its name, kind, "T total in N blocks",
//     "F free (C chunks); U used", and, where they apply, its limit (with
//     the subtree's bytes), reserve and last failure; one edge from each
//     parent to each child shown. What the cut leaves out is one node per
//     parent, `moreN` (shape "note", a dashed edge), "N more child contexts"
//     with their totals. The graph's label is the grand total.
//   - Names are text in HTML-like labels, drawn as written: XML's
//     specials are escaped, a backslash is doubled (Graphviz would expand
//     `\N`, `\G` and the like into the node's or the graph's name),
//     control characters (C0, DEL and C1), U+FFFE and U+FFFF (which XML
//     does not allow) become '?', each byte that starts no well-formed UTF-8 sequence
//     becomes U+FFFD (Graphviz needs UTF-8), a name longer than 256 bytes
//     shows its first 256 and an ellipsis (Graphviz refuses long runs of
//     text in a label), and an empty name shows as "".
//   - `blocks = true` adds each context's blocks, drawn to scale as bars
//     (inspect.h): grey for headers, blue for chunks handed out, orange for
//     chunks on freelists, white for free bump space; one scale for the
//     whole graph (the largest block is `kDotBarPoints` wide), and no piece
//     narrower than `kDotMinPiecePoints`. Each bar is captioned with the
//     block's role, size and numbers, "current" and the pool's `failed`
//     count; a last row lists the size classes with chunks on their
//     freelists. A context whose kind has no inspect method says so.
//     Inspecting walks every block (and, for the freelist kind, every chunk).
//   - Allocates (the graph is built in memory, with the global operator
//     new, never in a context); not for failure handlers (use DumpStats).
//
// Example (examples/tour.cc; docs/pictures/render.sh):
//
//   mcx::DotOptions dot;
//   dot.blocks = true;
//   std::ofstream("top.dot") << mcx::DotReport(top, dot);  // dot -Tsvg top.dot

#ifndef MCX_CONTEXT_DOT_H_
#define MCX_CONTEXT_DOT_H_

#include <string>

#include "mcx/context/config.h"  // IWYU pragma: keep (config.h: the link check)

namespace mcx {

class Context;

struct DotOptions {
  int max_depth = 100;     // levels shown below the root (as ReportOptions)
  int max_children = 100;  // children shown per context
  bool blocks = false;     // draw each context's blocks
};

// With `blocks`: width in points of the largest block's bar, and the least
// width of a nonzero piece of a bar (so a few bytes stay visible).
inline constexpr int kDotBarPoints = 240;
inline constexpr int kDotMinPiecePoints = 3;

std::string DotReport(const Context* root, const DotOptions& options = {});

}  // namespace mcx

#endif  // MCX_CONTEXT_DOT_H_
