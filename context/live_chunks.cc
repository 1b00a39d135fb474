// Live chunks by allocation site: the summary and its text. The kinds walk
// their chunks (kind_api.h, VisitLiveChunks); this groups what they report.

#include "mcx/context/live_chunks.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "mcx/context/context.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/text.h"
#include "mcx/context/kind_api.h"

namespace mcx {
namespace {

struct Counts {
  size_t chunks = 0;
  size_t bytes = 0;
};

// Counts chunks by site id: one map entry per site, however many chunks.
class SiteCounter : public LiveChunkVisitor {
 public:
  void VisitChunk(const void* /*chunk*/, size_t requested_bytes, SiteId site) override {
    Counts& c = by_id_[site];
    ++c.chunks;
    c.bytes += requested_bytes;
  }
  const absl::flat_hash_map<SiteId, Counts>& by_id() const { return by_id_; }

 private:
  absl::flat_hash_map<SiteId, Counts> by_id_;
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
    absl::StrAppendFormat(out, "%s:%d", u.site.file(), u.site.line());
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

std::string LiveChunksReport(const Context* ctx) {
  std::string out = "live chunks of context '";
  internal::AppendTextName(ctx->name(), [&](const char* data, size_t size) { out.append(data, size); });
  out.append("': ");
  if (const char* why = NotRecordedReason(ctx)) {
    absl::StrAppendFormat(&out, "not recorded (%s)\n", why);
    return out;
  }
  const LiveChunkSummary summary = SummarizeLiveChunks(ctx);
  absl::StrAppendFormat(&out, "%d chunks, %d bytes\n", summary.chunks, summary.bytes);
  for (const SiteUsage& u : summary.sites) {
    out.append("  ");
    AppendSite(&out, u);
    absl::StrAppendFormat(&out, ": %d chunks, %d bytes\n", u.chunks, u.bytes);
  }
  return out;
}

}  // namespace mcx
