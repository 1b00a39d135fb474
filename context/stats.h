// File: mcx/context/stats.h
//
// Where the memory is: per-context counters and a report of a tree, in the
// shape of PostgreSQL's MemoryContextStats.
//
// Contract:
//   - `GetCounters(ctx)` describes one context: block bytes and block count
//     are O(1) (kept as blocks come and go); free bytes and free chunks ask
//     the kind, which may walk its freelists.
//   - `GetSubtreeCounters(ctx)` sums a subtree (an iterative walk).
//   - `StatsReport` prints one line per context, indented two spaces per
//     level, at most `max_depth` levels below the root and `max_children`
//     children per context; each line ends with "; live L (peak P); blocks
//     peak B" (live bytes and the high-water marks, below). What is cut is summarised in one line per parent
//     ("N more child contexts containing ..."), so the totals always add up.
//     The last line is the grand total of the whole subtree. A context with
//     a reserve adds "; reserve R bytes in N blocks (U used)" to its line.
//     Names stay on their line, escaped C-style: `\\`, `\n`, `\t`, `\r`,
//     and `\xNN` for every other control byte (C1 controls included) and
//     every byte that starts no well-formed UTF-8 sequence; printable ASCII
//     and valid UTF-8 appear as given (DumpStats and the dump on failure
//     escape the same way).
//   - `ReportFormat::kJson` gives the same tree, cut the same way, as JSON.
//     JSON must be UTF-8: each byte of a name that starts no well-formed
//     UTF-8 sequence shows as U+FFFD.
//   - Every report is one walk of the tree (`WalkReport`, report.h) rendered
//     by a sink: text (also `DumpStats`, dump.h, byte for byte), JSON, and,
//     outside the core, the Graphviz drawing (`DotReport` in
//     mcx/context/dot.h, Bazel target //context:dot, CMake mcx::dot), which
//     the core does not link.
//
// Example:
//
//   std::fputs(mcx::StatsReport(top).c_str(), stderr);
//   // From ./mcx demo:
//   // top: 8200 total in 1 blocks; 7768 free (0 chunks); 432 used
//   //   query: 8200 total in 1 blocks; 7616 free (0 chunks); 584 used
//   //     spill: 8200 total in 1 blocks; 7520 free (50 chunks); 680 used
//   // ...
//
//   // As JSON:
//   mcx::ReportOptions json;
//   json.format = mcx::ReportFormat::kJson;
//   std::string tree = mcx::StatsReport(top, json);

#ifndef MCX_CONTEXT_STATS_H_
#define MCX_CONTEXT_STATS_H_

#include <cstddef>
#include <string>

#include "mcx/context/config.h"  // IWYU pragma: keep (config.h: the link check)

namespace mcx {

class Context;

struct ContextCounters {
  size_t total_bytes = 0;  // bytes in blocks and the side record
  size_t blocks = 0;
  size_t free_bytes = 0;   // bytes in blocks not handed out
  size_t free_chunks = 0;  // chunks on freelists
  size_t contexts = 0;     // contexts counted
  size_t reserve_bytes = 0;   // held in reserves (ContextOptions::reserve_blocks)
  size_t reserve_blocks = 0;
  size_t reserve_uses = 0;    // reserve blocks handed out so far
  // O(1) per context (docs/design.md, "Counters"): bytes in live chunks as
  // the kind counts them (0 for a kind that keeps no count), and the
  // high-water marks of those and of bytes in blocks since creation or the
  // last ResetPeak. Summed over a subtree, a peak is the sum of the
  // contexts' peaks: at least the subtree's own peak, reached if every
  // context peaked at once.
  size_t live_bytes = 0;
  size_t peak_live_bytes = 0;
  size_t peak_block_bytes = 0;

  size_t used_bytes() const { return total_bytes - free_bytes; }
  void Add(const ContextCounters& other);
};

ContextCounters GetCounters(const Context* ctx);
ContextCounters GetSubtreeCounters(const Context* ctx);

// Starts the high-water marks of every context in `ctx`'s subtree again
// from what each holds now (Context::ResetPeak on each; a walk).
void ResetSubtreePeaks(Context* ctx);

enum class ReportFormat { kText, kJson };

struct ReportOptions {
  int max_depth = 100;     // levels shown below the root
  int max_children = 100;  // children shown per context
  ReportFormat format = ReportFormat::kText;
};

std::string StatsReport(const Context* root, const ReportOptions& options = {});

}  // namespace mcx

#endif  // MCX_CONTEXT_STATS_H_
