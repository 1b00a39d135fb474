// The table of allocation sites: (file pointer, line) -> a 32-bit id, so
// that kinds keep 4 bytes per chunk instead of 16, and chunks of one site
// compare by id.
//
// Checking builds intern a site on every allocation, so lookups must be
// cheap and take no lock: the table is open-addressed with linear probing,
// in static storage (no allocation, ever), and slots are only ever filled,
// never emptied or moved. A reader that reaches an empty slot knows the
// site is absent; only then does it take the lock, probe again and fill a
// slot. A slot's line is written before its file pointer is published
// (release), and read only after the pointer is seen (acquire).
//
// Sites are keyed by the file pointer, not the file's text: a header's
// inline function can see different copies of one file name in different
// translation units, which then get different ids. Reports merge sites by
// their text (live_chunks.cc), so the split never shows.

#include "mcx/context/site.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

namespace mcx {
namespace internal {

const char kInternalSiteFile[] = "mcx internal (cleanup records)";

namespace {

// Slots of the table: a power of two. An engine has a few thousand
// allocation sites (PostgreSQL's backend calls palloc from about 5,000
// places); the table fills to kMaxSites, three quarters, so that probes stay
// short, and holds 24,576 sites. 16 bytes a slot: 512 KiB of zeroed static
// storage, which pages never touched do not make resident.
constexpr size_t kSiteTableSlots = size_t{1} << 15;
constexpr size_t kMaxSites = kSiteTableSlots / 4 * 3;

struct SiteSlot {
  std::atomic<const char*> file{nullptr};  // nullptr: empty; published last
  int line = 0;                            // written before `file`
};

SiteSlot site_table[kSiteTableSlots];
std::mutex site_table_mu;
size_t site_count = 0;  // filled slots; guarded by site_table_mu

size_t Slot(const char* file, int line) {
  // The pointer's low bits are alignment and its high bits constant: mix
  // (a Fibonacci multiply of both), then take the top bits.
  uint64_t h = (reinterpret_cast<uintptr_t>(file) ^ (uint64_t{static_cast<uint32_t>(line)} << 40)) *
               0x9E3779B97F4A7C15ull;
  constexpr int kBits = __builtin_ctzll(kSiteTableSlots);
  return static_cast<size_t>(h >> (64 - kBits));
}

// The slot holding the site (`*found` set), or the empty slot where the
// probe ended (kSiteTableSlots if there is none).
size_t Probe(const char* file, int line, bool* found) {
  size_t i = Slot(file, line);
  for (size_t n = 0; n < kSiteTableSlots; ++n, i = (i + 1) & (kSiteTableSlots - 1)) {
    const char* f = site_table[i].file.load(std::memory_order_acquire);
    *found = f == file && site_table[i].line == line;
    if (f == nullptr || *found) return i;
  }
  return kSiteTableSlots;
}

}  // namespace

SiteId InternSite(AllocationSite site) {
  const char* file = site.file();
  if (file == nullptr) return kUnknownSiteId;
  if (file == kInternalSiteFile) return kInternalSiteId;
  bool found;
  size_t i = Probe(file, site.line(), &found);
  if (found) return static_cast<SiteId>(i + kFirstSiteId);
  std::lock_guard<std::mutex> lock(site_table_mu);
  // Another thread may have filled slots since (with this site or others):
  // probe again, now that no one else can.
  i = Probe(file, site.line(), &found);
  if (found) return static_cast<SiteId>(i + kFirstSiteId);
  if (i == kSiteTableSlots || site_count == kMaxSites) return kUnknownSiteId;
  ++site_count;
  site_table[i].line = site.line();
  site_table[i].file.store(file, std::memory_order_release);
  return static_cast<SiteId>(i + kFirstSiteId);
}

AllocationSite SiteOf(SiteId id) {
  if (id == kInternalSiteId) return InternalSite();
  if (id < kFirstSiteId || id - kFirstSiteId >= kSiteTableSlots) return AllocationSite();
  const SiteSlot& s = site_table[id - kFirstSiteId];
  const char* file = s.file.load(std::memory_order_acquire);
  if (file == nullptr) return AllocationSite();
  return AllocationSite(file, s.line);
}

}  // namespace internal
}  // namespace mcx
