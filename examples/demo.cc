// An engine's day in miniature, on mcx contexts:
//
//   top (pool)                      lives for the whole run
//   +-- cache (freelist)            entries come and go (churn, realloc)
//   +-- query (pool)                one per query; cleanups close its cursor
//   |   +-- row (pool)              reset for every row
//   +-- runaway (pool, 1 MiB limit) a query that allocates without end
//   +-- join (pool)                 a hash join
//   |   +-- buckets (slab)          its chain nodes, one size, freed one by one
//   +-- changes (generation)        a change queue: entries die in order of birth
//   +-- sessions (freelist)         a handle table of client sessions
//   sensor (pool, a root)           a subsystem in a fixed buddy region
//
// It prints the stats report at the peak and after teardown, and checks its
// own results: the exit status is 0 only if every check holds.
//
// Run: ./mcx demo   (bazel run //examples:demo)

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "mcx/buddy/buddy_source.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/new.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/generation/generation.h"
#include "mcx/handle/handle_pool.h"
#include "mcx/pool/pool.h"
#include "mcx/slab/typed_slab.h"

namespace {

int failures = 0;

void Expect(bool ok, const char* what) {
  std::printf("  [%s] %s\n", ok ? "ok" : "FAILED", what);
  if (!ok) ++failures;
}

// A block source that counts what it hands out, to show that teardown gives
// every block back.
class CountingSource : public mcx::BlockSource {
 public:
  mcx::Block Acquire(size_t min_size, size_t alignment) override {
    mcx::Block b = mcx::DefaultBlockSource()->Acquire(min_size, alignment);
    if (b.ptr != nullptr) ++live_;
    return b;
  }
  void Release(mcx::Block block) override {
    --live_;
    mcx::DefaultBlockSource()->Release(block);
  }
  mcx::Block Reallocate(mcx::Block block, size_t keep, size_t n, size_t alignment) override {
    return mcx::DefaultBlockSource()->Reallocate(block, keep, n, alignment);
  }
  long live() const { return live_; }

 private:
  long live_ = 0;
};

// A simulated resource with an explicit close, as a cursor or a file.
struct Resource {
  const char* name;
  std::vector<std::string>* closed;
};

void Close(void* arg) {
  auto* r = static_cast<Resource*>(arg);
  r->closed->push_back(r->name);
}

// A tuple as an executor would build it: a few fields in the row context.
struct Tuple {
  int64_t id;
  char* name;
  double score;
};

uint64_t RunQuery(mcx::Context* top, int query_no, int rows, std::vector<std::string>* closed,
                  bool print_peak) {
  mcx::Context* query = top->CreateChild("query", mcx::PoolKind());
  // The cursor must close before the query's children go; the lock after.
  auto* cursor = static_cast<Resource*>(query->Alloc(sizeof(Resource)));
  *cursor = {"cursor", closed};
  auto* lock = static_cast<Resource*>(query->Alloc(sizeof(Resource)));
  *lock = {"lock", closed};
  query->AddCleanup(&Close, lock, mcx::CleanupPhase::kAfterChildren);
  query->AddCleanup(&Close, cursor, mcx::CleanupPhase::kBeforeChildren);

  mcx::Context* row = query->CreateChild("row", mcx::PoolKind());
  auto* spill = query->CreateChild("spill", mcx::FreelistKind());
  auto* row_closed = static_cast<Resource*>(row->Alloc(sizeof(Resource)));
  *row_closed = {"row-scratch", closed};
  row->AddCleanup(&Close, row_closed);

  uint64_t checksum = 0;
  std::vector<void*> kept;
  for (int r = 0; r < rows; ++r) {
    auto* t = static_cast<Tuple*>(row->Alloc(sizeof(Tuple)));
    char name[32];
    int len = std::snprintf(name, sizeof(name), "row-%d-%d", query_no, r);
    t->id = r;
    t->name = row->Strdup(std::string_view(name, static_cast<size_t>(len)));
    t->score = r * 0.5;
    // Sorting spills: keep every 100th tuple's name in a freelist context.
    if (r % 100 == 0) {
      char* copy = static_cast<char*>(spill->Alloc(static_cast<size_t>(len) + 1));
      std::memcpy(copy, t->name, static_cast<size_t>(len) + 1);
      kept.push_back(copy);
    }
    for (const char* c = t->name; *c != '\0'; ++c) checksum = checksum * 31 + static_cast<uint8_t>(*c);
    checksum += static_cast<uint64_t>(t->score);
    // Reset the row context for the next row; its cleanup is re-registered.
    if (r + 1 < rows) {
      row->Reset();
      row_closed = static_cast<Resource*>(row->Alloc(sizeof(Resource)));
      *row_closed = {"row-scratch", closed};
      row->AddCleanup(&Close, row_closed);
    }
  }
  for (void* p : kept) mcx::Free(p);  // no context needed
  if (print_peak) {
    std::printf("\n-- stats at the peak (query %d) --\n%s", query_no,
                mcx::StatsReport(top).c_str());
  }
  query->Destroy();
  return checksum;
}

// A hash join's chain nodes: one size, made and dropped one by one while the
// join runs, all gone with the join. A slab context holds them with no
// header per node, and runs ~JoinNode for any left at teardown.
struct JoinNode {
  JoinNode* next;
  int64_t key;
  std::string payload;  // a destructor to run
};

uint64_t RunHashJoin(mcx::Context* top, int* left_at_teardown) {
  mcx::Context* join = top->CreateChild("join", mcx::PoolKind());
  mcx::Slab<JoinNode> nodes = mcx::Slab<JoinNode>::Create(join, "buckets");
  constexpr int kBuckets = 256;
  auto* buckets = static_cast<JoinNode**>(join->AllocZeroArray(kBuckets, sizeof(JoinNode*)));
  for (int64_t key = 0; key < 20000; ++key) {  // build
    JoinNode*& head = buckets[key % kBuckets];
    head = nodes.New(JoinNode{head, key, "row-" + std::to_string(key)});
  }
  for (int b = 0; b < kBuckets; b += 2) {  // a filter drops half the buckets' nodes
    while (JoinNode* n = buckets[b]) {
      buckets[b] = n->next;
      nodes.Delete(n);
    }
  }
  uint64_t matched = 0;
  for (int64_t probe = 0; probe < 20000; probe += 7) {  // probe
    for (JoinNode* n = buckets[probe % kBuckets]; n != nullptr; n = n->next) {
      if (n->key == probe) matched += n->payload.size();
    }
  }
  *left_at_teardown = static_cast<int>(nodes.context()->num_blocks());
  join->Destroy();  // the slab goes with the join: ~JoinNode for the nodes left
  return matched;
}

// A change queue, as a replication stream's: entries are made, shipped and
// freed in about the order they were made. A generation context bumps them
// into its newest block and gives each block back as its last entry goes.
struct ChangeEntry {
  uint64_t lsn;
  uint32_t length;
};

bool RunChangeQueue(mcx::Context* top, size_t* most_blocks) {
  mcx::Context* changes = top->CreateChild("changes", mcx::GenerationKind());
  std::vector<ChangeEntry*> queue;
  size_t head = 0;
  uint64_t shipped = 0;
  *most_blocks = 0;
  for (uint64_t lsn = 0; lsn < 100000; ++lsn) {
    const uint32_t length = 32 + static_cast<uint32_t>(lsn * 7919 % 480);
    auto* e = static_cast<ChangeEntry*>(changes->Alloc(sizeof(ChangeEntry) + length));
    *e = {lsn, length};
    queue.push_back(e);
    if (queue.size() - head > 500) {  // the shipper sends the oldest
      ChangeEntry* oldest = queue[head++];
      shipped += oldest->lsn == shipped ? 1 : 0;
      mcx::Free(oldest);  // the chunk header finds the context
    }
    if (changes->num_blocks() > *most_blocks) *most_blocks = changes->num_blocks();
  }
  while (head < queue.size()) mcx::Free(queue[head++]);
  // What is left: the first block, the current block and the one spare.
  const bool empty = changes->num_blocks() <= 3;
  changes->Destroy();
  return shipped == 100000 - 500 && empty;
}

// Sessions: clients hold handles, never pointers. A closed session's handle
// finds nothing, also once its slot serves another client; a restart of the
// table (a reset) makes every handle stale at once.
struct Session {
  uint64_t id;
  uint32_t requests;
  char user[20];
};

void RunSessions(mcx::Context* top) {
  mcx::Context* sessions = top->CreateChild("sessions", mcx::FreelistKind());
  mcx::HandlePoolOptions options;
  options.AddClass(sizeof(Session), 256, /*grow=*/256);
  mcx::HandlePool* table = mcx::HandlePool::Create(sessions, options);
  std::vector<mcx::Handle> clients;  // what the clients hold
  for (uint64_t id = 0; id < 1000; ++id) {
    mcx::Handle h = table->Allocate(sizeof(Session));
    Session* s = table->Get<Session>(h);
    s->id = id;
    s->requests = 0;
    std::snprintf(s->user, sizeof(s->user), "user-%llu", static_cast<unsigned long long>(id));
    clients.push_back(h);
  }
  std::vector<mcx::Handle> closed;
  for (size_t i = 0; i < clients.size(); i += 3) {
    table->Free(clients[i]);
    closed.push_back(clients[i]);
  }
  // New clients take the closed sessions' slots.
  for (int i = 0; i < 200; ++i) {
    Session* s = table->Get<Session>(table->Allocate(sizeof(Session)));
    s->id = 5000 + static_cast<uint64_t>(i);
    s->requests = 0;
    std::snprintf(s->user, sizeof(s->user), "late-%d", i);
  }
  size_t stale_found = 0;
  for (mcx::Handle h : closed) stale_found += table->Get(h) != nullptr;
  size_t served = 0;
  for (size_t i = 0; i < clients.size(); ++i) {
    if (Session* s = table->Get<Session>(clients[i])) {
      ++s->requests;
      served += s->id == i;
    }
  }
  size_t live = 0;
  table->ForEach([&live](mcx::Handle, void*) { ++live; });
  std::printf("  %zu sessions open (%zu closed, 200 opened in their slots), %zu bytes of the "
              "sessions context\n",
              table->live(), closed.size(), table->GetStats().bytes);
  Expect(stale_found == 0, "a closed session's handle finds nothing, also once its slot is reused");
  Expect(served == clients.size() - closed.size() && live == table->live(),
         "every open session is found by its handle, and only those");
  // A restart: the table goes with its context's reset; a new one refuses
  // every old handle, though its slots are at the same addresses.
  sessions->Reset();
  table = mcx::HandlePool::Create(sessions, options);
  mcx::Handle fresh = table->Allocate(sizeof(Session));
  size_t old_found = 0;
  for (mcx::Handle h : clients) old_found += table->Get(h) != nullptr;
  Expect(old_found == 0 && table->Get(fresh) != nullptr,
         "after the table's restart no handle from before finds anything");
  sessions->Destroy();
}

// A subsystem confined to a fixed region, as on an embedded target: a buddy
// source over a static array; when the region is full, allocation fails
// there and nowhere else. Four 64 KiB blocks, and 1 KiB for the source's
// state (one byte per 512 bytes).
alignas(64 * 1024) unsigned char sensor_memory[256 * 1024 + 1024];

void RunSensor(mcx::Context* top) {
  mcx::BuddyOptions bo;
  bo.min_block = 512;
  bo.max_block = 64 * 1024;
  mcx::BuddyBlockSource region(sensor_memory, sizeof(sensor_memory), bo);
  mcx::ContextOptions o;
  o.block_source = &region;
  mcx::PoolOptions po;
  po.max_block_size = 64 * 1024;  // no larger than the region's blocks
  mcx::Context* sensor = mcx::Context::Create(nullptr, "sensor", mcx::PoolKind(po), o);
  size_t samples = 0;
  while (sensor->TryAlloc(1000) != nullptr) ++samples;
  const mcx::BuddyBlockSource::Stats full = region.GetStats();
  std::printf("  %zu samples of 1000 bytes in a %zu-byte region (%zu used in %zu blocks)\n",
              samples, sizeof(sensor_memory), full.used_bytes, full.used_blocks);
  Expect(sensor->last_failure() == mcx::Failure::kOutOfMemory && samples > 200,
         "the region filled up and the subsystem's allocation failed cleanly");
  Expect(top->TryAlloc(1000) != nullptr, "the rest of the engine did not notice");
  sensor->Destroy();
  const mcx::BuddyBlockSource::Stats after = region.GetStats();
  Expect(after.used_bytes == 0 && after.largest_free_block == 64 * 1024,
         "destroying the subsystem merged the whole region back");
}

}  // namespace

int main() {
  CountingSource source;
  mcx::ContextOptions top_options;
  top_options.block_source = &source;
  mcx::Context* top = mcx::Context::Create(nullptr, "top", mcx::PoolKind(), top_options);

  // The cache: a freelist context with churn. Entries are replaced and
  // resized, as a catalog cache's would be.
  std::printf("== cache churn on the freelist kind ==\n");
  mcx::Context* cache = top->CreateChild("cache", mcx::FreelistKind());
  std::vector<char*> entries(256, nullptr);
  std::vector<size_t> sizes(256, 0);
  uint32_t seed = 12345;
  for (int step = 0; step < 200000; ++step) {
    seed = seed * 1103515245u + 12345u;
    size_t slot = (seed >> 8) % entries.size();
    size_t size = 8 + (seed >> 16) % 1000;
    if (entries[slot] == nullptr) {
      entries[slot] = static_cast<char*>(cache->Alloc(size));
    } else if (step % 3 == 0) {
      entries[slot] = static_cast<char*>(mcx::Realloc(entries[slot], size));
    } else {
      mcx::Free(entries[slot]);
      entries[slot] = static_cast<char*>(cache->Alloc(size));
    }
    std::memset(entries[slot], static_cast<int>(slot), size);
    sizes[slot] = size;
  }
  bool intact = true;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i] == nullptr) continue;
    for (size_t k = 0; k < sizes[i]; ++k) {
      if (static_cast<unsigned char>(entries[i][k]) != static_cast<unsigned char>(i)) intact = false;
    }
  }
  Expect(intact, "every cache entry holds its own bytes after 200000 steps");
  Expect(cache->num_blocks() < 40, "churn reuses freed chunks instead of growing");

  std::printf("\n== queries with a per-row context ==\n");
  std::vector<std::string> closed;
  uint64_t first = RunQuery(top, 1, 5000, &closed, /*print_peak=*/true);
  uint64_t again = RunQuery(top, 1, 5000, &closed, /*print_peak=*/false);
  Expect(first == again && first != 0, "the same query gives the same checksum twice");
  const std::vector<std::string> expected = {"row-scratch", "cursor", "row-scratch", "lock"};
  std::vector<std::string> first_query(closed.begin() + 4999, closed.begin() + 4999 + 3);
  Expect(closed.size() == 2 * (4999 + 3), "every row and query cleanup ran once");
  Expect(closed[4999] == "cursor" && closed[5000] == "row-scratch" && closed[5001] == "lock",
         "query cleanups ran in order: cursor, then the row context, then the lock");
  (void)expected;
  (void)first_query;

  std::printf("\n== a runaway query hits its limit ==\n");
  mcx::ContextOptions limited;
  limited.limit = 1 << 20;
  limited.failure_handler = [](const mcx::FailureInfo& info) {
    std::printf("  handler: context '%s': %s while asking for %zu bytes\n", info.context_name,
                mcx::FailureName(info.failure), info.size);
  };
  mcx::Context* runaway = top->CreateChild("runaway", mcx::PoolKind(), limited);
  size_t got = 0;
  bool stopped = false;
  try {
    for (;;) {
      runaway->Alloc(10000);
      got += 10000;
    }
  } catch (const std::bad_alloc&) {
    stopped = true;
  }
  Expect(stopped && got > 500000 && runaway->SubtreeBytes() <= (1u << 20),
         "the runaway query stopped at its 1 MiB limit");
  Expect(runaway->last_failure() == mcx::Failure::kLimit, "the failure says why: the limit");
  runaway->Destroy();
  char* still = top->Strdup("the engine carries on");
  Expect(std::strcmp(still, "the engine carries on") == 0, "the engine carries on");

  std::printf("\n== a hash join's nodes in a slab context ==\n");
  int blocks_at_teardown = 0;
  const uint64_t matched = RunHashJoin(top, &blocks_at_teardown);
  Expect(matched > 0, "the probe found the rows the filter kept");
  Expect(blocks_at_teardown > 1, "the join's nodes sat in blocks of their own size");

  std::printf("\n== a change queue in a generation context ==\n");
  size_t most_blocks = 0;
  Expect(RunChangeQueue(top, &most_blocks),
         "100000 changes shipped in order; emptied blocks went back");
  Expect(most_blocks < 20, "the queue cycled through a handful of blocks");

  std::printf("\n== sessions in a handle table ==\n");
  RunSessions(top);
  std::printf("\n== a subsystem in a fixed buddy region ==\n");
  RunSensor(top);

  cache->Destroy();
  std::printf("\n-- stats after teardown --\n%s", mcx::StatsReport(top).c_str());
  Expect(top->first_child() == nullptr && top->num_blocks() == 1,
         "after teardown only the top context's first block is left");
  top->Destroy();
  Expect(source.live() == 0, "every block went back to the block source");

  std::printf("\n%s\n", failures == 0 ? "demo: all checks passed" : "demo: CHECKS FAILED");
  return failures == 0 ? 0 : 1;
}
