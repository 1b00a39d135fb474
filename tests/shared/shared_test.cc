// The shared kind: many threads allocating, registering cleanups and making
// children in one context at once; every byte each thread wrote is still
// there afterwards, no two chunks overlap, and every block goes back.

#include "mcx/shared/shared.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "mcx/context/block_source.h"
#include "mcx/context/budget.h"
#include "mcx/context/context.h"
#include "mcx/context/dump.h"
#include "mcx/context/failure.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/new.h"
#include "mcx/context/report_request.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

constexpr int kThreads = 4;
constexpr int kChunksPerThread = 20000;

struct Chunk {
  unsigned char* p;
  size_t size;
  unsigned char fill;
};

// Each thread allocates chunks of 8..512 bytes (fixed seed per thread) and
// fills each with a byte of its own; returns what it allocated.
std::vector<Chunk> Hammer(Context* ctx, int thread, int count, bool through_context) {
  std::mt19937 rng(1234 + thread);
  std::uniform_int_distribution<size_t> size_of(8, 512);
  std::vector<Chunk> chunks;
  chunks.reserve(count);
  for (int i = 0; i < count; ++i) {
    size_t size = size_of(rng);
    void* p = through_context && i % 3 == 0 ? ctx->Alloc(size) : SharedAlloc(ctx, size);
    auto fill = static_cast<unsigned char>(thread * 31 + i);
    std::memset(p, fill, size);
    chunks.push_back({static_cast<unsigned char*>(p), size, fill});
  }
  return chunks;
}

void ExpectIntactAndDisjoint(std::vector<Chunk> all) {
  for (const Chunk& c : all) {
    ASSERT_EQ(reinterpret_cast<uintptr_t>(c.p) % kDefaultAlignment, 0u);
    for (size_t i = 0; i < c.size; ++i) ASSERT_EQ(c.p[i], c.fill) << "chunk byte overwritten";
  }
  std::sort(all.begin(), all.end(), [](const Chunk& a, const Chunk& b) { return a.p < b.p; });
  for (size_t i = 1; i < all.size(); ++i) {
    ASSERT_LE(all[i - 1].p + all[i - 1].size, all[i].p) << "chunks overlap";
  }
}

TEST(SharedTest, ThreadsAllocateAtOnceAndKeepTheirBytes) {
  test::CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* ctx = Context::Create(nullptr, "scan", SharedKind(), o);
  ASSERT_TRUE(IsShared(ctx));
  std::vector<std::vector<Chunk>> per_thread(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] { per_thread[t] = Hammer(ctx, t, kChunksPerThread, true); });
  }
  for (std::thread& t : threads) t.join();
  std::vector<Chunk> all;
  size_t requested = 0;
  for (auto& v : per_thread) {
    for (const Chunk& c : v) requested += c.size;
    all.insert(all.end(), v.begin(), v.end());
  }
  ExpectIntactAndDisjoint(all);
  EXPECT_GE(ctx->bytes_in_blocks(), requested);
  EXPECT_EQ(static_cast<size_t>(source.live_bytes()), ctx->SubtreeBytes());
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
  EXPECT_EQ(source.bad_releases(), 0);
}

TEST(SharedTest, ResetStartsANewGenerationEveryThreadSees) {
  test::CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* ctx = Context::Create(nullptr, "scan", SharedKind(), o);
  for (int round = 0; round < 3; ++round) {
    std::vector<std::vector<Chunk>> per_thread(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] { per_thread[t] = Hammer(ctx, t + round, 2000, false); });
    }
    for (std::thread& t : threads) t.join();
    std::vector<Chunk> all;
    for (auto& v : per_thread) all.insert(all.end(), v.begin(), v.end());
    ExpectIntactAndDisjoint(all);
    ctx->Reset();
    // Only the first block, with the header, is left (and the side record).
    EXPECT_EQ(ctx->num_blocks(), 1u);
    EXPECT_EQ(source.live_blocks(), 2);
  }
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

TEST(SharedTest, KeepBytesResetReusesKeptBlocks) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own: no run";
  test::CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* ctx = Context::Create(nullptr, "scan", SharedKind(), o);
  for (int i = 0; i < 100; ++i) SharedAlloc(ctx, 64);
  const int64_t acquired = source.acquires();
  ctx->Reset(ResetOptions::KeepBytes(1 << 20));
  EXPECT_EQ(ctx->num_blocks(), 2u);  // the first block and the thread's run block
  std::thread([&] {
    for (int i = 0; i < 100; ++i) SharedAlloc(ctx, 64);
  }).join();
  EXPECT_EQ(source.acquires(), acquired) << "the kept block serves the new run";
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

TEST(SharedTest, LargeZeroAlignedAndSizedRealloc) {
  test::CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  SharedOptions so;
  so.max_small = 1024;
  Context* ctx = Context::Create(nullptr, "scan", SharedKind(so), o);
  void* a = ctx->Alloc(0);
  void* b = ctx->Alloc(0);
  EXPECT_NE(a, b);
  auto* big = static_cast<char*>(SharedAlloc(ctx, 100000));
  std::memset(big, 1, 100000);
  void* aligned = ctx->AllocAligned(100, 4096);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(aligned) % 4096, 0u);
  char* s = ctx->Strdup("shared");
  auto* grown = static_cast<char*>(ctx->Realloc(s, 7, 2000));
  EXPECT_STREQ(grown, "shared");
  EXPECT_EQ(ctx->TryRealloc(grown, 10), nullptr);
  EXPECT_EQ(ctx->last_failure(), Failure::kUnsupported);
  EXPECT_EQ(ctx->ChunkSize(grown), kUnknownSize);
  ctx->Free(grown);  // a no-op: memory goes back at the reset
  EXPECT_EQ(big[99999], 1);
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

TEST(SharedTest, CleanupsRegisteredFromEveryThreadRunOnce) {
  Context* ctx = Context::Create(nullptr, "scan", SharedKind());
  std::atomic<int> ran{0};
  std::atomic<int> removed_ran{0};
  constexpr int kPerThread = 500;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        ctx->AddCleanup([&ran] { ran.fetch_add(1); });
        CleanupHandle h = ctx->AddCleanup([&removed_ran] { removed_ran.fetch_add(1); });
        if (i % 2 == 0) {
          EXPECT_TRUE(ctx->RemoveCleanup(h));
        } else {
          EXPECT_TRUE(ctx->RunCleanup(h));
        }
        struct Counted {
          std::atomic<int>* n;
          ~Counted() { n->fetch_add(1); }
        };
        New<Counted>(ctx, Counted{&ran});
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(removed_ran.load(), kThreads * kPerThread / 2);
  // The temporaries passed to New<Counted> already counted once each.
  const int before = ran.load();
  EXPECT_EQ(before, kThreads * kPerThread);
  ctx->Destroy();
  EXPECT_EQ(ran.load(), before + 2 * kThreads * kPerThread);
}

TEST(SharedTest, ChildrenOfEveryKindComeAndGoOnEveryThread) {
  test::CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* ctx = Context::Create(nullptr, "operation", SharedKind(), o);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        Context* child = i % 2 == 0 ? ctx->CreateChild("row", PoolKind())
                                    : ctx->CreateChild("row", FreelistKind());
        void* p = child->Alloc(100 + t);
        std::memset(p, t, 100 + t);
        child->Free(p);
        if (i % 4 != 3) child->Destroy();  // the rest go with the parent
        SharedAlloc(ctx, 32);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  int children = 0;
  for (Context* c = ctx->first_child(); c != nullptr; c = c->next_sibling()) ++children;
  EXPECT_EQ(children, kThreads * 50);
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
  EXPECT_EQ(source.bad_releases(), 0);
}

TEST(SharedTest, RefusedUnderALimit) {
  ContextOptions o;
  o.limit = 1 << 20;
  Context* top = Context::Create(nullptr, "top", PoolKind(), o);
  EXPECT_EQ(Context::TryCreate(top, "scan", SharedKind()), nullptr);
  EXPECT_EQ(top->last_failure(), Failure::kBadArgument);
  top->Destroy();
}

// Every other way to put a limit on or above a shared context is refused
// too, and changes nothing: one of its own at creation, SetLimit and
// SetSoftLimit on it or on an ancestor, and a move under a limited context.
// A budget is the way (shared.h).
TEST(SharedTest, NoLimitOnItOrAboveIt) {
  ContextOptions o;
  o.limit = 1 << 20;
  EXPECT_EQ(Context::TryCreate(nullptr, "scan", SharedKind(), o), nullptr);
  Context* top = Context::Create(nullptr, "top", PoolKind());
  Context* mid = Context::Create(top, "mid", PoolKind());
  Context* scan = Context::Create(mid, "scan", SharedKind());
  Context* child = Context::Create(scan, "worker", FreelistKind());
  PressureCallback callback = [](const PressureInfo&) {};
  for (Context* c : {scan, mid, top}) {
    SCOPED_TRACE(c->name());
    EXPECT_EQ(c->TrySetLimit(1 << 20), Failure::kBadArgument);
    EXPECT_EQ(c->last_failure(), Failure::kBadArgument);
    EXPECT_EQ(c->limit(), kNoLimit);
    EXPECT_EQ(c->TrySetSoftLimit(1 << 20, callback), Failure::kBadArgument);
    EXPECT_EQ(c->soft_limit(), kNoLimit);
    absl::Status status = c->SetLimit(1 << 20);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("shared context"), std::string::npos) << status;
  }
  // Below the shared context, a limit concerns one thread's contexts.
  EXPECT_EQ(child->TrySetLimit(1 << 20), Failure::kNone);
  EXPECT_EQ(top->TrySetLimit(kNoLimit), Failure::kNone);  // removing none is fine
  Context* limited = Context::Create(nullptr, "limited", PoolKind(), o);
  Context* soft = Context::Create(nullptr, "soft", PoolKind());
  ASSERT_EQ(soft->TrySetSoftLimit(1 << 20, callback), Failure::kNone);
  for (Context* target : {limited, soft}) {
    SCOPED_TRACE(target->name());
    EXPECT_EQ(scan->TrySetParent(target), Failure::kBadArgument);
    EXPECT_EQ(mid->TrySetParent(target), Failure::kBadArgument);
    EXPECT_EQ(scan->parent(), mid);
    EXPECT_EQ(mid->parent(), top);
    absl::Status status = mid->SetParent(target);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("shared context"), std::string::npos) << status;
    EXPECT_EQ(target->SubtreeBytes(), target->bytes_in_blocks() + target->side_record_bytes());
  }
  // A budget above it is the way, and a plain context still moves.
  Budget budget(1 << 24);
  EXPECT_EQ(top->TrySetBudget(&budget), Failure::kNone);
  Context* plain = Context::Create(top, "plain", PoolKind());
  EXPECT_EQ(plain->TrySetParent(limited), Failure::kNone);
  std::thread([&] { EXPECT_NE(TrySharedAlloc(scan, 64), nullptr); }).join();
  top->Destroy();
  limited->Destroy();
  soft->Destroy();
  EXPECT_EQ(budget.usage(), 0u);
}

// A budget on or above a shared context is charged by its children's
// threads at once: each charge must be atomic, and the counts exact after.
TEST(SharedTest, ABudgetAboveIsChargedByChildrenOnManyThreads) {
  Budget budget(size_t{1} << 40);
  Context* top = Context::Create(nullptr, "top", PoolKind());
  ASSERT_EQ(top->TrySetBudget(&budget), Failure::kNone);
  Context* scan = Context::Create(top, "scan", SharedKind());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int round = 0; round < 20; ++round) {
        Context* child = Context::Create(scan, "worker", FreelistKind());
        for (int i = 0; i < 20; ++i) child->Alloc(100000);
        TrySharedAlloc(scan, 50000);
        child->Destroy();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(budget.usage(), top->SubtreeBytes());
  top->Destroy();
  EXPECT_EQ(budget.usage(), 0u);
}

TEST(SharedTest, FailureReachesTheHandlerAndLeavesTheContextUsable) {
  test::FailingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* ctx = Context::Create(nullptr, "scan", SharedKind(), o);
  source.FailFrom(1);
  std::thread([&] {
    EXPECT_EQ(TrySharedAlloc(ctx, 64), nullptr);
    EXPECT_THROW(SharedAlloc(ctx, 64), std::bad_alloc);
  }).join();
  EXPECT_EQ(ctx->last_failure(), Failure::kOutOfMemory);
  source.Heal();
  std::thread([&] { EXPECT_NE(TrySharedAlloc(ctx, 64), nullptr); }).join();
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

std::vector<std::string>* reports;
void RecordReport(const char* message) { reports->push_back(message); }

// Checking builds: a thread that allocates while another tears the context
// down is reported.
TEST(SharedTest, AllocationDuringTeardownIsReportedInCheckingBuilds) {
  if (!kCheckingBuild) GTEST_SKIP() << "checking builds only";
  std::vector<std::string> seen;
  reports = &seen;
  MisuseHandler previous = SetMisuseHandler(&RecordReport);
  Context* ctx = Context::Create(nullptr, "scan", SharedKind());
  ctx->AddCleanup([ctx] { std::thread([ctx] { ctx->TryAlloc(16); }).join(); });
  ctx->Destroy();
  SetMisuseHandler(previous);
  ASSERT_FALSE(seen.empty());
  EXPECT_NE(seen[0].find("being torn down"), std::string::npos) << seen[0];
}

// A source whose next acquisition waits until the test lets it go, so that
// an allocation is known to be under way.
class GatedSource : public BlockSource {
 public:
  Block Acquire(size_t min_size, size_t alignment) override {
    if (gate_armed_.exchange(false)) {
      entered_.store(true);
      while (!open_.load()) std::this_thread::yield();
    }
    return upstream_.Acquire(min_size, alignment);
  }
  void Release(Block block) override { upstream_.Release(block); }
  void Arm() { gate_armed_.store(true); }
  bool entered() const { return entered_.load(); }
  void Open() { open_.store(true); }

 private:
  SystemBlockSource upstream_;
  std::atomic<bool> gate_armed_{false};
  std::atomic<bool> entered_{false};
  std::atomic<bool> open_{false};
};

// Checking builds: a reset while another thread is inside an allocation is
// reported.
TEST(SharedTest, ResetDuringAnAllocationIsReportedInCheckingBuilds) {
  if (!kCheckingBuild) GTEST_SKIP() << "checking builds only";
  std::vector<std::string> seen;
  reports = &seen;
  GatedSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* ctx = Context::Create(nullptr, "scan", SharedKind(), o);
  source.Arm();
  std::thread worker([&] { ctx->TryAlloc(16); });  // waits in the source
  while (!source.entered()) std::this_thread::yield();
  MisuseHandler previous = SetMisuseHandler(&RecordReport);
  ctx->Reset();
  SetMisuseHandler(previous);
  source.Open();
  worker.join();
  ASSERT_FALSE(seen.empty());
  EXPECT_NE(seen[0].find("while another thread allocates"), std::string::npos) << seen[0];
  ctx->Destroy();
}

// A request of kMaxAllocSize is a size the context takes, which no source
// can give: out of memory, as in every kind (context.h); above it, a bad
// size.
TEST(SharedTest, TheLargestRequestIsOutOfMemoryAndLargerABadSize) {
  Context* ctx = Context::Create(nullptr, "shared", SharedKind());
  EXPECT_EQ(ctx->TryAlloc(kMaxAllocSize), nullptr);
  EXPECT_EQ(ctx->last_failure(), Failure::kOutOfMemory);
  EXPECT_EQ(ctx->TryAllocAligned(kMaxAllocSize - 4096, kMaxAlignment), nullptr);
  EXPECT_EQ(ctx->last_failure(), Failure::kOutOfMemory);
  volatile size_t too_large = kMaxAllocSize + 1;
  EXPECT_EQ(ctx->TryAlloc(too_large), nullptr);
  EXPECT_EQ(ctx->last_failure(), Failure::kBadSize);
  EXPECT_NE(SharedAlloc(ctx, 100), nullptr);
  ctx->Destroy();
}

// --- Reports mcx makes on its own ------------------------------------------------

// Everything written to a memory file.
std::string ReadAll(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return "";
  std::string out(static_cast<size_t>(st.st_size), '\0');
  const ssize_t n = pread(fd, &out[0], out.size(), 0);
  out.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return out;
}

// The dump on failure reads what the failing thread owns: below a shared
// context, from just below it; above one, the shared context is "not
// read" and nothing of its subtree appears.
TEST(SharedTest, AFailureDumpReadsOnlyWhatTheFailingThreadOwns) {
  const int below_fd = memfd_create("below", MFD_CLOEXEC);
  const int above_fd = memfd_create("above", MFD_CLOEXEC);
  ASSERT_GE(below_fd, 0);
  ASSERT_GE(above_fd, 0);
  Context* top = Context::Create(nullptr, "top", PoolKind());
  Context* scan = top->CreateChild("scan", SharedKind());
  SharedAlloc(scan, 100);
  ContextOptions limited;
  limited.limit = 16 * 1024;
  limited.failure_dump = {below_fd, kFailureDumpDefaultDepth, kFailureDumpDefaultChildren};
  Context* worker = scan->CreateChild("worker", PoolKind(), limited);
  worker->CreateChild("row", PoolKind());
  Context* other = top->CreateChild("other", PoolKind(), limited);
  other->SetFailureDump({above_fd, kFailureDumpDefaultDepth, kFailureDumpDefaultChildren});

  EXPECT_THROW(worker->Alloc(100000), std::bad_alloc);
  const std::string below = ReadAll(below_fd);
  EXPECT_EQ(below.find("mcx: "), 0u) << below;
  const size_t report = below.find('\n') + 1;
  EXPECT_EQ(below.compare(report, 8, "worker: "), 0) << below;
  EXPECT_NE(below.find("\n  row: "), std::string::npos) << below;
  EXPECT_EQ(below.find("top: "), std::string::npos) << below;
  EXPECT_EQ(below.find("scan"), std::string::npos) << below;

  EXPECT_THROW(other->Alloc(100000), std::bad_alloc);
  const std::string above = ReadAll(above_fd);
  EXPECT_NE(above.find("\ntop: "), std::string::npos) << above;
  EXPECT_NE(above.find("\n  scan: not read (any thread may use it)\n"), std::string::npos)
      << above;
  EXPECT_EQ(above.find("worker"), std::string::npos) << above;
  EXPECT_EQ(above.find("row"), std::string::npos) << above;
  EXPECT_NE(above.find("\n  other: "), std::string::npos) << above;
  top->Destroy();
  close(below_fd);
  close(above_fd);
}

// A report on request is answered at the owner's safe point, while other
// threads may use a shared context in its tree: the shared context is
// "not read", in text and in JSON.
TEST(SharedTest, AReportOnRequestDoesNotReadASharedContext) {
  Context* top = Context::Create(nullptr, "top", PoolKind());
  Context* scan = top->CreateChild("scan", SharedKind());
  scan->CreateChild("worker", PoolKind());
  {
    ReportEndpoint endpoint(top);
    ReportTarget target = endpoint.target();
    ReportOptions json;
    json.format = ReportFormat::kJson;
    ASSERT_EQ(target.Post(json), RequestStatus::kPending);
    EXPECT_EQ(ServiceRequests(), 1u);
    ASSERT_EQ(target.Wait(std::chrono::milliseconds(0)), RequestStatus::kDone);
    const std::string j = target.Take();
    EXPECT_NE(j.find("{\"name\": \"scan\", \"kind\": \"shared\", \"not_read\": \"any thread may "
                     "use it\", \"children\": []}"),
              std::string::npos)
        << j;
    EXPECT_EQ(j.find("worker"), std::string::npos) << j;
    ASSERT_EQ(target.Post(ReportOptions()), RequestStatus::kPending);
    EXPECT_EQ(ServiceRequests(), 1u);
    ASSERT_EQ(target.Wait(std::chrono::milliseconds(0)), RequestStatus::kDone);
    const std::string t = target.Take();
    EXPECT_NE(t.find("\n  scan: not read (any thread may use it)\n"), std::string::npos) << t;
    EXPECT_EQ(t.find("worker"), std::string::npos) << t;
  }
  top->Destroy();
}

// Other threads make, use and destroy children of a shared context while
// this one fails with a dump of its tree, and answers reports on request
// of the whole tree: neither reads their contexts (a crash, or a race
// under ThreadSanitizer, before).
TEST(SharedTest, ReportsMcxMakesOnItsOwnRaceWithNoOtherThread) {
  const int devnull = ::open("/dev/null", O_WRONLY);
  ASSERT_GE(devnull, 0);
  ContextOptions dumping;
  dumping.failure_dump = {devnull, kFailureDumpMaxLimit, kFailureDumpMaxLimit};
  Context* top = Context::Create(nullptr, "top", PoolKind(), dumping);
  Context* scan = top->CreateChild("scan", SharedKind());
  std::atomic<bool> stop{false};
  std::vector<std::thread> churn;
  for (int t = 0; t < 2; ++t) {
    churn.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        Context* mine = scan->CreateChild("worker", PoolKind());
        for (int i = 0; i < 8; ++i) mine->Alloc(3000);
        SharedAlloc(scan, 64);
        mine->Destroy();
      }
    });
  }
  int failures = 0;
  size_t answered = 0;
  {
    ReportEndpoint endpoint(top);
    ReportTarget target = endpoint.target();
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(700);
    while (std::chrono::steady_clock::now() < end) {
      ContextOptions limited;
      limited.limit = 16 * 1024;
      Context* mine = scan->CreateChild("limited", PoolKind(), limited);
      try {
        mine->Alloc(100000);
      } catch (const std::bad_alloc&) {
        ++failures;
      }
      mine->Destroy();
      Context* other = top->CreateChild("other", PoolKind(), limited);
      try {
        other->Alloc(100000);
      } catch (const std::bad_alloc&) {
        ++failures;
      }
      other->Destroy();
      target.Post(ReportOptions());
      answered += ServiceRequests();
      target.Take();
    }
  }
  stop.store(true);
  for (std::thread& t : churn) t.join();
  top->Destroy();
  ::close(devnull);
  EXPECT_GT(failures, 0);
  EXPECT_GT(answered, 0u);
}

// --- Threads failing at once ----------------------------------------------------------

// Starts `threads` threads on `body` together.
template <typename F>
void RunTogether(int threads, F body) {
  std::atomic<int> waiting{threads};
  std::vector<std::thread> all;
  for (int t = 0; t < threads; ++t) {
    all.emplace_back([&, t] {
      waiting.fetch_sub(1);
      while (waiting.load() > 0) std::this_thread::yield();
      body(t);
    });
  }
  for (std::thread& t : all) t.join();
}

// Threads failing at once in a shared context: each gets its failure, and
// last_failure() keeps one of the reasons (threads.md), with no data race
// on it (ThreadSanitizer, before).
TEST(SharedTest, ThreadsFailingAtOnceKeepOneReason) {
  test::FailingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* ctx = Context::Create(nullptr, "scan", SharedKind(), o);
  source.FailFrom(1);
  std::atomic<int> failed{0};
  RunTogether(4, [&](int) {
    for (int i = 0; i < 200; ++i) {
      if (TrySharedAlloc(ctx, 20000) == nullptr) failed.fetch_add(1);
    }
  });
  EXPECT_EQ(failed.load(), 800);
  EXPECT_EQ(ctx->last_failure(), Failure::kOutOfMemory);
  source.Heal();
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

void NoBudgetCallback(Budget*, size_t, void*) {}

// A budget's soft limit crossed by several threads of one shared context
// at once: each crossing calls back and the allocation is served (with a
// hard limit of 1 TiB nothing may fail). Before, a thread that recognised
// its refusal by the context's last failure, which another thread had just
// restored, failed its allocation with "no failure".
TEST(SharedTest, ASoftLimitCrossedByThreadsAtOnceFailsNoAllocation) {
  test::CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  constexpr int kRounds = 300;
  for (int round = 0; round < kRounds; ++round) {
    Budget budget(size_t{1} << 40);
    Context* ctx = Context::Create(nullptr, "scan", SharedKind(), o);
    ASSERT_EQ(ctx->TrySetBudget(&budget), Failure::kNone);
    budget.SetSoftLimit(budget.usage() + 8 * 20000, &NoBudgetCallback, nullptr);
    std::atomic<int> failed{0};
    RunTogether(4, [&](int t) {
      for (int i = 0; i < 6; ++i) {
        if (round % 2 == 0) {
          // A chunk with a block of its own, charged to the budget.
          if (TrySharedAlloc(ctx, 20000) == nullptr) failed.fetch_add(1);
        } else if (Context::TryCreate(ctx, "worker", FreelistKind()) == nullptr) {
          failed.fetch_add(1);  // a child's first block, charged to the budget
        }
        (void)t;
      }
    });
    ASSERT_EQ(failed.load(), 0) << "round " << round << ": " << FailureName(ctx->last_failure());
    ctx->Destroy();
    EXPECT_EQ(budget.usage(), 0u);
  }
  EXPECT_EQ(source.live_blocks(), 0);
}

// Checking builds keep each allocation's site for the kind: threads of a
// shared context set it at once without a data race.
TEST(SharedTest, ThreadsAllocatingAtOnceInACheckingBuild) {
  test::CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* ctx = Context::Create(nullptr, "scan", SharedKind(), o);
  RunTogether(2, [&](int t) {
    for (int i = 0; i < 1000; ++i) std::memset(ctx->Alloc(32), t, 32);
  });
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

}  // namespace
}  // namespace mcx
