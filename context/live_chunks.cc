// Live chunks by allocation site: the summary and its text. The kinds walk
// their chunks (kind_api.h, VisitLiveChunks); this groups what they report.

#include "mcx/context/live_chunks.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mcx/context/context.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/failure.h"
#include "mcx/context/internal/format.h"
#include "mcx/context/internal/text.h"
#include "mcx/context/kind_api.h"

namespace mcx {
namespace {

struct Counts {
  size_t chunks = 0;
  size_t bytes = 0;
};

// Counts chunks by site id: one map entry per site, however many chunks.
// (A std::unordered_map, not Abseil's: the core links no Abseil library.)
class SiteCounter : public LiveChunkVisitor {
 public:
  void VisitChunk(const void* /*chunk*/, size_t requested_bytes, SiteId site) override {
    Counts& c = by_id_[site];
    ++c.chunks;
    c.bytes += requested_bytes;
  }
  const std::unordered_map<SiteId, Counts>& by_id() const { return by_id_; }

 private:
  std::unordered_map<SiteId, Counts> by_id_;
};

// Orders sites by file name, then line; unknown sites (no file) first.
bool SameSite(const AllocationSite& a, const AllocationSite& b) {
  if ((a.file() == nullptr) != (b.file() == nullptr)) return false;
  return a.line() == b.line() && (a.file() == nullptr || std::strcmp(a.file(), b.file()) == 0);
}

bool SiteBefore(const AllocationSite& a, const AllocationSite& b) {
  if (a.file() == nullptr || b.file() == nullptr) return a.file() == nullptr && b.file() != nullptr;
  int c = std::strcmp(a.file(), b.file());
  return c != 0 ? c < 0 : a.line() < b.line();
}

// Why a context's chunks have no sites, or nullptr if they have.
const char* NotRecordedReason(const Context* ctx) {
  if (!internal::kChecking) return "allocation sites are kept in checking builds only";
  if (ctx->kind()->visit_live_chunks == nullptr) return "its kind keeps no allocation sites";
  return nullptr;
}

void AppendSite(std::string* out, const SiteUsage& u) {
  if (u.internal) {
    out->append(u.site.file());
  } else if (u.site.file() == nullptr) {
    out->append("(unknown site)");
  } else {
    internal::AppendFormat(out, "%s:%d", u.site.file(), u.site.line());
  }
}

}  // namespace

// SummarizeLiveChunks
//
// One pass over the chunks counts them by site id; the ids are then turned
// into sites and merged by text (site.cc: one file can have several ids).
LiveChunkSummary SummarizeLiveChunks(const Context* ctx) {
  LiveChunkSummary summary;
  if (NotRecordedReason(ctx) != nullptr) return summary;
  summary.recorded = true;
  SiteCounter counter;
  ctx->kind()->visit_live_chunks(ctx, &counter);
  std::vector<SiteUsage> sites;
  sites.reserve(counter.by_id().size());
  for (const auto& [id, counts] : counter.by_id()) {
    SiteUsage u;
    u.site = internal::SiteOf(id);
    u.internal = id == internal::kInternalSiteId;
    u.chunks = counts.chunks;
    u.bytes = counts.bytes;
    summary.chunks += counts.chunks;
    summary.bytes += counts.bytes;
    sites.push_back(u);
  }
  std::sort(sites.begin(), sites.end(),
            [](const SiteUsage& a, const SiteUsage& b) { return SiteBefore(a.site, b.site); });
  for (const SiteUsage& u : sites) {
    if (!summary.sites.empty() && SameSite(summary.sites.back().site, u.site)) {
      summary.sites.back().chunks += u.chunks;
      summary.sites.back().bytes += u.bytes;
    } else {
      summary.sites.push_back(u);
    }
  }
  std::stable_sort(summary.sites.begin(), summary.sites.end(),
                   [](const SiteUsage& a, const SiteUsage& b) {
                     if (a.bytes != b.bytes) return a.bytes > b.bytes;
                     return a.chunks > b.chunks;
                   });
  return summary;
}

namespace internal {

namespace {

// Counts the chunks a leak report is about: all but mcx's own. Allocates
// nothing, so a context without leaks costs one walk and no more.
class LeakCounter : public LiveChunkVisitor {
 public:
  void VisitChunk(const void* /*chunk*/, size_t requested_bytes, SiteId site) override {
    if (site == kInternalSiteId) return;
    ++chunks;
    bytes += requested_bytes;
  }
  size_t chunks = 0;
  size_t bytes = 0;
};

// The misuse line: one line, as every misuse report (failure.h), at most
// what ReportMisuse passes on; sites beyond it are counted, not listed.
constexpr size_t kLeakLineBytes = 512;

}  // namespace

// ReportLeaks
//
// ExpectAllFreed's check, run by a reset or destroy once the cleanups and
// the children are gone and before the kind lets go of the chunks, so a
// cleanup that frees chunks frees them in time. The line is made in a
// buffer on the stack; the summary's map and vector may fail to allocate,
// and then the line gives the totals alone: a teardown does not throw.
void ReportLeaks(const Context* ctx, const char* operation) {
  if (!kChecking || ctx->kind()->visit_live_chunks == nullptr) return;
  LeakCounter leaks;
  ctx->kind()->visit_live_chunks(ctx, &leaks);
  if (leaks.chunks == 0) return;
  char line[kLeakLineBytes];
  size_t used = 0;
  auto append = [&](const char* data, size_t size) {
    size_t room = sizeof(line) - 1 - used;
    size_t n = size < room ? size : room;
    std::memcpy(line + used, data, n);
    used += n;
  };
  auto append_format = [&](const char* format, const auto&... args) {
    char piece[kLeakLineBytes];
    int n = std::snprintf(piece, sizeof(piece), format, args...);
    if (n > 0) append(piece, std::min(static_cast<size_t>(n), sizeof(piece) - 1));
  };
  append("leak in context '", 17);
  AppendTextName(ctx->name(), append);
  append_format("' at its %s: %zu chunks (%zu bytes) that the program said it would free "
                "(ExpectAllFreed)",
                operation, leaks.chunks, leaks.bytes);
  try {
    const LiveChunkSummary summary = SummarizeLiveChunks(ctx);
    // Room kept for the tail that says how many sites were left out.
    constexpr size_t kTailRoom = 40;
    const char* separator = ": ";
    size_t sites = 0;
    size_t listed = 0;
    bool full = false;
    for (const SiteUsage& u : summary.sites) {
      if (u.internal) continue;
      ++sites;
      if (full) continue;
      std::string site;
      AppendSite(&site, u);
      char piece[kLeakLineBytes];
      int n = std::snprintf(piece, sizeof(piece), "%s%s: %zu chunks, %zu bytes", separator,
                            site.c_str(), u.chunks, u.bytes);
      if (n < 0 || used + static_cast<size_t>(n) + kTailRoom >= sizeof(line)) {
        full = true;
        continue;
      }
      append(piece, static_cast<size_t>(n));
      separator = "; ";
      ++listed;
    }
    if (listed < sites) append_format("; and %zu more sites", sites - listed);
  } catch (const std::bad_alloc&) {
    append_format("%s", " (sites not listed: out of memory)");
  }
  line[used] = '\0';
  ReportMisuse("%s", line);
}

}  // namespace internal

std::string LiveChunksReport(const Context* ctx) {
  std::string out = "live chunks of context '";
  internal::AppendTextName(ctx->name(), [&](const char* data, size_t size) { out.append(data, size); });
  out.append("': ");
  if (const char* why = NotRecordedReason(ctx)) {
    internal::AppendFormat(&out, "not recorded (%s)\n", why);
    return out;
  }
  const LiveChunkSummary summary = SummarizeLiveChunks(ctx);
  internal::AppendFormat(&out, "%d chunks, %d bytes\n", summary.chunks, summary.bytes);
  for (const SiteUsage& u : summary.sites) {
    out.append("  ");
    AppendSite(&out, u);
    internal::AppendFormat(&out, ": %d chunks, %d bytes\n", u.chunks, u.bytes);
  }
  return out;
}

}  // namespace mcx
