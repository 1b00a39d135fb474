// Frees from other threads (remote_free.h) on the freelist kind: pushed on
// the context's remote list, reclaimed by the owner at its next slow path,
// dropped by reset and destroy, and every block goes back.

#include "mcx/context/remote_free.h"

#include <cstdint>
#include <atomic>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/internal/checking.h"
#include "mcx/freelist/freelist.h"
#include "mcx/testing/hand_off.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

ContextOptions On(BlockSource* source) {
  ContextOptions o;
  o.block_source = source;
  return o;
}

TEST(RemoteFreeTest, OwnerReclaimsWhatAnotherThreadFreed) {
  test::CountingBlockSource source;
  Context* ctx = Context::Create(nullptr, "rows", FreelistKind(), On(&source));
  std::vector<void*> chunks;
  for (int i = 0; i < 64; ++i) chunks.push_back(ctx->Alloc(48));
  void* big = ctx->Alloc(100000);  // a dedicated block
  std::thread([&] {
    for (void* p : chunks) mcx::Free(p);
    ctx->Free(big);
  }).join();
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  const int64_t blocks_before = source.live_blocks();
  if (internal::kDirect) {
    // Every chunk is a block of its own: the next allocation's slow path
    // takes all 65 back before it acquires its own.
    ctx->Alloc(48);
    EXPECT_EQ(source.live_blocks(), blocks_before - 65 + 1);
  } else {
    // The owner takes the remote chunks back before it carves a new one:
    // the next 64 allocations of the class are the 64 chunks freed, though
    // the current run has room.
    std::set<void*> freed(chunks.begin(), chunks.end());
    const size_t bytes = ctx->bytes_in_blocks();
    for (int i = 0; i < 64; ++i) {
      EXPECT_EQ(freed.erase(ctx->Alloc(48)), 1u) << "allocation " << i;
    }
    EXPECT_LE(ctx->bytes_in_blocks(), bytes);
    // The dedicated block went back when it was reclaimed.
    EXPECT_LT(source.live_blocks(), blocks_before + 1);
  }
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

// A program of large chunks alone never carves a small one: dedicated
// allocations take the remote frees back too, so a producer of large
// chunks stays bounded.
TEST(RemoteFreeTest, LargeChunksAloneAreReclaimed) {
  test::CountingBlockSource source;
  Context* ctx = Context::Create(nullptr, "pages", FreelistKind(), On(&source));
  for (int round = 0; round < 20; ++round) {
    std::vector<void*> chunks;
    for (int i = 0; i < 10; ++i) chunks.push_back(ctx->Alloc(100000));
    std::thread([&] {
      for (void* p : chunks) mcx::Free(p);
    }).join();
  }
  // The last round's ten wait; every earlier round's went back.
  EXPECT_LE(source.live_blocks(), 1 + 10 + 10);
  ctx->Alloc(100000);
  EXPECT_LE(source.live_blocks(), 1 + 1 + 10);
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

TEST(RemoteFreeTest, ResetAndDestroyDropPendingFrees) {
  test::CountingBlockSource source;
  Context* ctx = Context::Create(nullptr, "rows", FreelistKind(), On(&source));
  std::vector<void*> chunks;
  for (int i = 0; i < 100; ++i) chunks.push_back(ctx->Alloc(200));
  std::thread([&] {
    for (void* p : chunks) mcx::Free(p);
  }).join();
  ctx->Reset();
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  for (int i = 0; i < 100; ++i) ctx->Alloc(200);
  chunks.clear();
  for (int i = 0; i < 10; ++i) chunks.push_back(ctx->Alloc(5000 + i));
  std::thread([&] {
    for (void* p : chunks) mcx::Free(p);
  }).join();
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
  EXPECT_EQ(source.bad_releases(), 0);
}

TEST(RemoteFreeTest, AdoptedContextFreesLocally) {
  Context* ctx = Context::Create(nullptr, "rows", FreelistKind());
  void* p = ctx->Alloc(32);
  std::thread([&] {
    AdoptContext(ctx);
    mcx::Free(p);
    // Freed locally: the next allocation of the class reuses it at once
    // (in direct mode its block went back at once).
    if (!internal::kDirect) {
      EXPECT_EQ(ctx->Alloc(32), p);
    }
    ctx->Destroy();
  }).join();
}

std::vector<std::string>* reports;
void RecordReport(const char* message) { reports->push_back(message); }

// A second remote free is reported at once, for chunks of every shape: a
// class chunk, a dedicated one, and an aligned one (freed as the chunk its
// redirect leads to); the owner then takes back each chunk once and serves
// on, through mcx::Free as through the context.
TEST(RemoteFreeTest, DoubleRemoteFreeIsReported) {
  std::vector<std::string> seen;
  reports = &seen;
  MisuseHandler previous = SetMisuseHandler(&RecordReport);
  Context* ctx = Context::Create(nullptr, "rows", FreelistKind());
  for (bool through_chunk : {false, true}) {
    SCOPED_TRACE(through_chunk ? "mcx::Free" : "Context::Free");
    seen.clear();
    void* small = ctx->Alloc(32);
    void* large = ctx->Alloc(200000);
    void* aligned = ctx->AllocAligned(64, 256);
    void* aligned_large = ctx->AllocAligned(100000, 4096);
    std::thread([&] {
      for (void* p : {small, large, aligned, aligned_large}) {
        for (int i = 0; i < 2; ++i) through_chunk ? mcx::Free(p) : ctx->Free(p);
      }
    }).join();
    ASSERT_EQ(seen.size(), 4u);
    for (const std::string& report : seen) {  // mcx::Free says "already freed"
      EXPECT_TRUE(report.find("double free") != std::string::npos ||
                  report.find("already freed") != std::string::npos)
          << report;
    }
    // The owner takes each chunk back once (its slow paths reclaim), and
    // serves on.
    for (int i = 0; i < 100; ++i) ctx->Free(ctx->Alloc(100000));
    EXPECT_EQ(ctx->live_bytes(), 0u);
    std::string error;
    EXPECT_TRUE(ctx->Check(&error)) << error;
  }
  SetMisuseHandler(previous);
  ctx->Destroy();
}

// W10's shape: a producer allocates, a consumer frees through a queue, for
// many chunks of 16..256 bytes; the producer's memory stays bounded because
// it keeps reclaiming what the consumer freed.
TEST(RemoteFreeTest, ProducerConsumerStaysBounded) {
  constexpr int kChunks = 200000;
  constexpr size_t kInFlight = 256;
  test::CountingBlockSource source;
  Context* ctx = Context::Create(nullptr, "producer", FreelistKind(), On(&source));
  test::HandOff hand_off(kInFlight);
  int64_t bad = 0;
  std::thread consumer([&] {
    void* v;
    while (hand_off.Pop(&v)) {
      auto* p = static_cast<unsigned char*>(v);
      if (p[0] != p[1]) ++bad;
      mcx::Free(p);
    }
  });
  std::mt19937 rng(10);
  size_t peak = 0;
  for (int i = 0; i < kChunks; ++i) {
    size_t size = 16 + rng() % 241;
    auto* p = static_cast<unsigned char*>(ctx->Alloc(size));
    std::memset(p, static_cast<unsigned char>(i), size);
    hand_off.Push(p);
    if (ctx->bytes_in_blocks() > peak) peak = ctx->bytes_in_blocks();
  }
  hand_off.Close();
  consumer.join();
  EXPECT_EQ(bad, 0);
  // 256 chunks of at most 272 bytes in flight, and what waits to be
  // reclaimed: far below the 200,000 chunks' 27 MB.
  EXPECT_LT(peak, size_t{2} << 20);
  ctx->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

// A context handed to a worker that does not adopt it (correct, only
// slower: its frees are remote), its creator gone; a thread started after
// the creator exited, which glibc gives the creator's stack and thread
// pointer, frees chunks: it is not the owner, and takes the remote path,
// not the owner's unsynchronised one (memory corrupted, before).
TEST(RemoteFreeTest, AThreadOnADeadCreatorsStackIsNotTheOwner) {
  test::CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  std::atomic<Context*> handed{nullptr};
  std::atomic<bool> stop{false};
  std::thread worker([&] {  // started first: it cannot reuse the creator's stack
    Context* ctx;
    while ((ctx = handed.load(std::memory_order_acquire)) == nullptr) std::this_thread::yield();
    std::vector<unsigned char*> mine;
    std::mt19937 rng(3);
    while (!stop.load()) {
      for (int i = 0; i < 64; ++i) {
        const size_t n = 16 + rng() % 200;
        auto* p = static_cast<unsigned char*>(ctx->Alloc(n));
        std::memset(p, 0xAB, n);
        mine.push_back(p);
      }
      for (unsigned char* p : mine) ctx->Free(p);
      mine.clear();
    }
  });
  Context* ctx = nullptr;
  std::vector<void*> chunks;
  std::thread([&] {
    ctx = Context::Create(nullptr, "rows", FreelistKind(), o);
    for (int i = 0; i < 50000; ++i) chunks.push_back(ctx->Alloc(16 + i % 200));
  }).join();
  handed.store(ctx, std::memory_order_release);
  std::thread([&] {
    for (void* p : chunks) mcx::Free(p);
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
