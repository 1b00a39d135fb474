// File: mcx/context/live_chunks.h
//
// Who holds a context's memory, by the place in the code that allocated it:
// the live chunks of a context grouped by allocation site (site.h), with
// their counts and bytes, as text or as data. talloc's talloc_report_full
// lists chunks by name; Greenplum's CDB_PALLOC_TAGS and jemalloc's heap
// profiles attribute them to call sites, as this does.
//
// Contract:
//   - Checking builds only (`--config=checking`, MCX_CHECKING): there the
//     pool, freelist, generation and slab kinds keep, with every chunk, the
//     site of the call that allocated it or last reallocated it (4 bytes
//     with the checking header). Release builds keep nothing (a small pool
//     chunk has no header at all): `recorded` is false, and so it is for a
//     kind that keeps no sites (kind_api.h, VisitLiveChunks): the shared
//     kind stores none with its chunks in any build (they have no header),
//     so its contexts say "not recorded".
//   - A chunk is live from its allocation until it is freed (`Free`, also
//     of a small pool chunk, which checking builds mark freed) or its
//     context is reset or destroyed. `bytes` are the bytes requested (for an
//     over-aligned freelist chunk, with its alignment padding; for a slab
//     object, the object size).
//   - mcx's own chunks (cleanup records and callable cleanups' storage,
//     which the program never frees) form one group, `internal`.
//   - Sites are grouped by file name and line; the groups come most bytes
//     first, then most chunks, then by file name and line.
//   - Cost: a walk of every chunk of the context, and a map of its sites.
//   - Leaks: a context whose chunks the program frees itself says so with
//     `ctx->ExpectAllFreed()` (or ContextOptions::expect_all_freed). In
//     checking builds its reset or destroy, once the cleanups and children
//     are gone, reports the live chunks it finds (mcx's own aside) as
//     misuse (failure.h), in one line grouped by site:
//       leak in context 'cache' at its reset: 2 chunks (130 bytes) that the
//       program said it would free (ExpectAllFreed): a.cc:12: 1 chunks, 100
//       bytes; a.cc:9: 1 chunks, 30 bytes
//     Sites that do not fit the line's 512 bytes are counted ("; and N more
//     sites"). A handler that returns lets the teardown finish.
//
// Example:
//
//   std::fputs(mcx::LiveChunksReport(query).c_str(), stderr);
//   // live chunks of context 'query': 3 chunks, 1104 bytes
//   //   executor/hash.cc:120: 2 chunks, 1024 bytes
//   //   executor/scan.cc:88: 1 chunks, 80 bytes

#ifndef MCX_CONTEXT_LIVE_CHUNKS_H_
#define MCX_CONTEXT_LIVE_CHUNKS_H_

#include <cstddef>
#include <string>
#include <vector>

#include "mcx/context/site.h"

namespace mcx {

class Context;

// The live chunks of one site.
struct SiteUsage {
  AllocationSite site;    // file nullptr: unknown (the site table was full)
  bool internal = false;  // mcx's own chunks (cleanup records)
  size_t chunks = 0;
  size_t bytes = 0;       // requested
};

struct LiveChunkSummary {
  // False in release builds and for kinds that keep no sites: then
  // nothing else is filled in.
  bool recorded = false;
  size_t chunks = 0;
  size_t bytes = 0;
  std::vector<SiteUsage> sites;  // in the report's order
};

// The live chunks of `ctx` alone (not its children), by site.
LiveChunkSummary SummarizeLiveChunks(const Context* ctx);

// The same as text: a first line "live chunks of context '<name>': N
// chunks, B bytes", then one line per site, indented two spaces,
// "<file>:<line>: N chunks, B bytes" (mcx's own: "mcx internal (cleanup
// records): ..."; an unknown site: "(unknown site): ..."). Where nothing is
// recorded, the first line ends "not recorded (...)" saying why. The name is
// escaped as in StatsReport.
std::string LiveChunksReport(const Context* ctx);

}  // namespace mcx

#endif  // MCX_CONTEXT_LIVE_CHUNKS_H_
