// Frees from other threads (remote_free.h) on the slab kind: pushed on the
// context's remote list, taken back by the owner when no block has room
// (the freed slots are reused before a new block), with exact counters; a
// constructed object keeps its state across a remote free; reset and
// destroy take pending frees back first (no live cleanup for them), and
// every block goes back.

#include "mcx/context/remote_free.h"

#include <cstdint>
#include <cstring>
#include <algorithm>
#include <atomic>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/stats.h"
#include "mcx/slab/slab.h"
#include "mcx/testing/hand_off.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

constexpr bool kChecking = internal::kChecking;
// Direct mode: every object a block of its own, released when it is freed
// (slab.h), so a freed slot is never seen again; counts still hold.
constexpr bool kDirect = internal::kDirect;

ContextOptions On(BlockSource* source) {
  ContextOptions o;
  o.block_source = source;
  return o;
}

SlabOptions Objects(size_t size) {
  SlabOptions o;
  o.object_size = size;
  return o;
}

void ExpectSameCounters(const ContextCounters& a, const ContextCounters& b) {
  EXPECT_EQ(a.total_bytes, b.total_bytes);
  EXPECT_EQ(a.blocks, b.blocks);
  EXPECT_EQ(a.free_bytes, b.free_bytes);
  EXPECT_EQ(a.free_chunks, b.free_chunks);
}

TEST(SlabRemoteFreeTest, OwnerReusesSlotsAnotherThreadFreed) {
  test::CountingBlockSource source;
  Context* ctx = CreateSlabContext(nullptr, "rows", Objects(64), On(&source));
  const size_t per_block = GetSlabGeometry(ctx).objects_per_block;
  // Two full blocks: the next allocation takes the slow path.
  std::vector<void*> objects;
  for (size_t i = 0; i < 2 * per_block; ++i) objects.push_back(ctx->Alloc(64));
  const ContextCounters full = GetCounters(ctx);
  const int64_t blocks = source.live_blocks();
  // Every other object, freed by another thread.
  std::vector<void*> freed;
  for (size_t i = 0; i < objects.size(); i += 2) freed.push_back(objects[i]);
  std::thread([&] {
    for (void* p : freed) ctx->Free(p);
  }).join();
  // Waiting for the owner: still live for the counters.
  ExpectSameCounters(GetCounters(ctx), full);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  // The owner takes them back at its next allocation, instead of a block.
  const std::set<void*> reusable(freed.begin(), freed.end());
  std::set<void*> reused;
  for (size_t i = 0; i < freed.size(); ++i) {
    void* p = ctx->Alloc(64);
    if (!kDirect) {
      EXPECT_EQ(reusable.count(p), 1u) << "allocation " << i << " took a slot nobody freed";
    }
    reused.insert(p);
    if (i == 0) {
      const ContextCounters after = GetCounters(ctx);
      EXPECT_EQ(after.free_chunks, freed.size() - 1);
      const size_t stride = GetSlabGeometry(ctx).stride;
      EXPECT_EQ(after.free_bytes, full.free_bytes + (freed.size() - 1) * stride);
    }
  }
  if (!kDirect) {
    EXPECT_EQ(reused.size(), freed.size());
  }
  EXPECT_EQ(source.live_blocks(), blocks);
  ExpectSameCounters(GetCounters(ctx), full);
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
  EXPECT_EQ(source.bad_releases(), 0);
}

TEST(SlabRemoteFreeTest, AdoptedContextFreesLocally) {
  Context* ctx = CreateSlabContext(nullptr, "rows", Objects(32));
  void* p = ctx->Alloc(32);
  std::thread([&] {
    AdoptContext(ctx);
    ctx->Free(p);
    // An ordinary free: the next allocation reuses the slot at once.
    void* q = ctx->Alloc(32);
    if (!kDirect) {
      EXPECT_EQ(q, p);
    }
    ctx->Destroy();
  }).join();
}

// What the constructor, destructor and live cleanup saw.
struct Calls {
  int constructed = 0;
  int destroyed = 0;
  int cleaned = 0;
};

struct Node {
  uint64_t stamp;  // set by the constructor, kept while free
  char payload[40];
};
constexpr uint64_t kConstructedStamp = 0x5EED5EED5EED5EEDu;

void ConstructNode(void* object, void* arg) noexcept {
  static_cast<Node*>(object)->stamp = kConstructedStamp;
  std::memset(static_cast<Node*>(object)->payload, 0, sizeof(Node::payload));
  ++static_cast<Calls*>(arg)->constructed;
}
void DestroyNode(void* object, void* arg) noexcept {
  EXPECT_EQ(static_cast<Node*>(object)->stamp, kConstructedStamp);
  ++static_cast<Calls*>(arg)->destroyed;
}
void CleanNode(void* /*object*/, void* arg) noexcept { ++static_cast<Calls*>(arg)->cleaned; }

SlabOptions ConstructedNodes(Calls* calls) {
  SlabOptions o = Objects(sizeof(Node));
  o.constructor = &ConstructNode;
  o.destructor = &DestroyNode;
  o.live_cleanup = &CleanNode;
  o.arg = calls;
  return o;
}

TEST(SlabRemoteFreeTest, ConstructedObjectsKeepTheirStateAcrossARemoteFree) {
  Calls calls;
  test::CountingBlockSource source;
  Context* ctx = CreateSlabContext(nullptr, "nodes", ConstructedNodes(&calls), On(&source));
  const size_t per_block = GetSlabGeometry(ctx).objects_per_block;
  std::vector<Node*> nodes;
  for (size_t i = 0; i < per_block; ++i) {
    auto* n = static_cast<Node*>(SlabAllocObject(ctx));
    ASSERT_EQ(n->stamp, kConstructedStamp);
    std::memset(n->payload, static_cast<int>(i + 1), sizeof(n->payload));
    nodes.push_back(n);
  }
  const int constructed = calls.constructed;
  std::thread([&] {
    for (Node* n : nodes) ctx->Free(n);
  }).join();
  // Taken back at the next allocation; each slot comes back as it was left,
  // link and all kept out of the object, and is not constructed again.
  std::set<Node*> freed(nodes.begin(), nodes.end());
  for (size_t i = 0; i < per_block; ++i) {
    auto* n = static_cast<Node*>(SlabAllocObject(ctx));
    EXPECT_EQ(n->stamp, kConstructedStamp);
    if (kDirect) continue;  // a new block: constructed afresh
    ASSERT_EQ(freed.count(n), 1u);
    const auto index =
        static_cast<size_t>(std::find(nodes.begin(), nodes.end(), n) - nodes.begin());
    EXPECT_EQ(n->payload[0], static_cast<char>(index + 1));
    EXPECT_EQ(n->payload[sizeof(n->payload) - 1], static_cast<char>(index + 1));
  }
  if (!kDirect) {
    EXPECT_EQ(calls.constructed, constructed);
  }
  // Pending remote frees at the destroy: no live cleanup for them, the
  // destructor once on every slot ever constructed.
  std::vector<Node*> live;
  for (size_t i = 0; i < 5; ++i) live.push_back(static_cast<Node*>(SlabAllocObject(ctx)));
  std::thread([&] {
    for (size_t i = 0; i < 3; ++i) ctx->Free(live[i]);
  }).join();
  const int live_objects = static_cast<int>(per_block + live.size() - 3);
  ctx->Destroy();
  EXPECT_EQ(calls.cleaned, live_objects);
  EXPECT_EQ(calls.destroyed, calls.constructed);
  EXPECT_EQ(source.live_blocks(), 0);
  EXPECT_EQ(source.bad_releases(), 0);
}

TEST(SlabRemoteFreeTest, ResetAndDestroyTakePendingFreesBack) {
  test::CountingBlockSource source;
  SlabOptions o = Objects(48);
  o.larger = SlabLarger::kDedicatedBlock;
  Context* ctx = CreateSlabContext(nullptr, "rows", o, On(&source));
  std::vector<void*> chunks;
  for (int i = 0; i < 300; ++i) chunks.push_back(ctx->Alloc(48));
  // Dedicated chunks, one smaller than a link and one aligned to a block.
  chunks.push_back(ctx->Alloc(50));
  chunks.push_back(ctx->Alloc(100000));
  chunks.push_back(ctx->AllocAligned(64, GetSlabGeometry(ctx).block_size));
  std::thread([&] {
    for (void* p : chunks) ctx->Free(p);
  }).join();
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Reset();
  EXPECT_TRUE(ctx->Check(&error)) << error;
  EXPECT_EQ(GetCounters(ctx).free_chunks, 0u);
  chunks.clear();
  for (int i = 0; i < 300; ++i) chunks.push_back(ctx->Alloc(48));
  for (int i = 0; i < 4; ++i) chunks.push_back(ctx->Alloc(5000 + i));
  std::thread([&] {
    for (void* p : chunks) ctx->Free(p);
  }).join();
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
  EXPECT_EQ(source.bad_releases(), 0);
}

// On the default block source: LeakSanitizer (the asan configuration) sees
// any block a destroy with pending frees would leave behind.
TEST(SlabRemoteFreeTest, DestroyWithPendingFreesLeaksNothing) {
  SlabOptions o = Objects(24);
  o.larger = SlabLarger::kDedicatedBlock;
  Context* ctx = CreateSlabContext(nullptr, "rows", o);
  std::vector<void*> chunks;
  for (int i = 0; i < 1000; ++i) chunks.push_back(ctx->Alloc(i % 50 == 0 ? 3000 : 24));
  std::thread([&] {
    for (size_t i = 0; i < chunks.size(); i += 3) ctx->Free(chunks[i]);
  }).join();
  ctx->Destroy();
}

std::vector<std::string>* reports;
void RecordReport(const char* message) { reports->push_back(message); }

TEST(SlabRemoteFreeTest, CheckingBuildsReportADoubleRemoteFree) {
  if (!kChecking) GTEST_SKIP() << "the header word that catches it is a checking build's";
  std::vector<std::string> seen;
  reports = &seen;
  MisuseHandler previous = SetMisuseHandler(&RecordReport);
  Context* ctx = CreateSlabContext(nullptr, "rows", Objects(32));
  void* p = ctx->Alloc(32);
  void* q = ctx->Alloc(32);
  std::thread([&] {
    ctx->Free(p);
    ctx->Free(p);
  }).join();
  ctx->Free(q);
  std::thread([&] { ctx->Free(q); }).join();
  SetMisuseHandler(previous);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_NE(seen[0].find("double free"), std::string::npos) << seen[0];
  EXPECT_NE(seen[1].find("double free"), std::string::npos) << seen[1];
  ctx->Destroy();
}

// W10's shape on a slab: a producer allocates, two consumers free through
// a queue; the producer keeps taking back what they freed, so its blocks
// stay bounded, and at the end the counters are exact.
TEST(SlabRemoteFreeTest, ProducerAndConsumersStayBounded) {
  constexpr int kObjects = 100000;
  constexpr size_t kInFlight = 256;
  constexpr int kConsumers = 2;
  test::CountingBlockSource source;
  Context* ctx = CreateSlabContext(nullptr, "producer", Objects(128), On(&source));
  test::HandOff hand_off(kInFlight);
  std::atomic<int64_t> bad{0};
  std::vector<std::thread> consumers;
  for (int c = 0; c < kConsumers; ++c) {
    consumers.emplace_back([&] {
      void* v;
      while (hand_off.Pop(&v)) {
        auto* p = static_cast<unsigned char*>(v);
        if (p[0] != p[127]) ++bad;
        ctx->Free(p);
      }
    });
  }
  std::mt19937 rng(15);
  int64_t peak = 0;
  for (int i = 0; i < kObjects; ++i) {
    auto* p = static_cast<unsigned char*>(ctx->Alloc(1 + rng() % 128));
    std::memset(p, static_cast<unsigned char>(i), 128);
    hand_off.Push(p);
    peak = std::max(peak, source.live_blocks());
  }
  hand_off.Close();
  for (std::thread& t : consumers) t.join();
  EXPECT_EQ(bad.load(), 0);
  // In flight: the queue, and what the consumers freed since the owner's
  // last slow path; a few blocks of 128-byte objects, not kObjects' worth.
  const size_t per_block = GetSlabGeometry(ctx).objects_per_block;
  EXPECT_LE(static_cast<size_t>(peak), 2 + 4 * kInFlight / per_block + 8) << "peak blocks";
  // The reset takes the pending frees back before it empties the blocks.
  ctx->Reset();
  EXPECT_EQ(GetCounters(ctx).free_chunks, 0u);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
  EXPECT_EQ(source.bad_releases(), 0);
}

// As the freelist's test: a thread on a dead creator's stack is not the
// owner of the slab context the creator made.
TEST(SlabRemoteFreeTest, AThreadOnADeadCreatorsStackIsNotTheOwner) {
  test::CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  std::atomic<Context*> handed{nullptr};
  std::atomic<bool> stop{false};
  std::thread worker([&] {
    Context* ctx;
    while ((ctx = handed.load(std::memory_order_acquire)) == nullptr) std::this_thread::yield();
    std::vector<void*> mine;
    while (!stop.load()) {
      for (int i = 0; i < 64; ++i) {
        void* p = ctx->Alloc(64);
        std::memset(p, 0xAB, 64);
        mine.push_back(p);
      }
      for (void* p : mine) ctx->Free(p);
      mine.clear();
    }
  });
  Context* ctx = nullptr;
  std::vector<void*> chunks;
  std::thread([&] {
    SlabOptions so;
    so.object_size = 64;
    ctx = Context::Create(nullptr, "objects", SlabKind(so), o);
    for (int i = 0; i < 50000; ++i) chunks.push_back(ctx->Alloc(64));
  }).join();
  handed.store(ctx, std::memory_order_release);
  std::thread([&] {
    for (void* p : chunks) ctx->Free(p);
  }).join();
  stop = true;
  worker.join();
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

}  // namespace
}  // namespace mcx
