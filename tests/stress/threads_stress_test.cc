// Eight threads for a bounded time (MCX_STRESS_SECONDS, default 2): each
// round, every thread creates contexts of each kind under a shared context
// of the round, allocates in both, registers cleanups, and hands some of
// its contexts to the next thread through a queue, which checks their bytes
// and destroys them; one thread then destroys the round's shared context
// with what is left under it. Everything charges one budget. At the end
// every block acquired has been released, every cleanup ran once, and the
// budget is back at zero. Written for ThreadSanitizer (CI's tsan step).

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/budget.h"
#include "mcx/context/context.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/shared/shared.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

constexpr int kThreads = 8;
constexpr double kDefaultSeconds = 2.0;

// A context handed between threads, with the bytes it must still hold.
struct Handoff {
  Context* ctx;
  unsigned char* p;
  size_t size;
  unsigned char fill;
};

class Queue {
 public:
  void Push(Handoff h) {
    std::lock_guard<std::mutex> lock(mu_);
    items_.push_back(h);
  }
  bool Pop(Handoff* h) {
    std::lock_guard<std::mutex> lock(mu_);
    if (items_.empty()) return false;
    *h = items_.front();
    items_.pop_front();
    return true;
  }

 private:
  std::mutex mu_;
  std::deque<Handoff> items_;
};

// A reusable barrier (std::barrier is C++20).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    int gen = generation_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return gen != generation_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const int n_;
  int arrived_ = 0;
  int generation_ = 0;
};

double StressSeconds() {
  const char* s = std::getenv("MCX_STRESS_SECONDS");
  return s != nullptr ? std::atof(s) : kDefaultSeconds;
}

TEST(ThreadsStressTest, CreateShareHandOffDestroy) {
  test::CountingBlockSource source;
  Budget budget(size_t{1} << 30);
  ContextOptions o;
  o.block_source = &source;
  Context* root = Context::Create(nullptr, "server", PoolKind(), o);
  ASSERT_EQ(root->TrySetBudget(&budget), Failure::kNone);
  std::vector<Queue> queues(kThreads);
  Barrier barrier(kThreads);
  std::atomic<Context*> round_ctx{nullptr};
  std::atomic<bool> stop{false};
  std::atomic<int64_t> cleanups_registered{0};
  std::atomic<int64_t> cleanups_ran{0};
  std::atomic<int64_t> bad_bytes{0};
  std::atomic<int64_t> rounds{0};
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(StressSeconds());

  auto check_and_destroy = [&](const Handoff& h) {
    for (size_t i = 0; i < h.size; ++i) {
      if (h.p[i] != h.fill) bad_bytes.fetch_add(1);
    }
    h.ctx->Destroy();
  };

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(2026 + t);
      for (;;) {
        if (t == 0) {
          if (std::chrono::steady_clock::now() > deadline) stop.store(true);
          round_ctx.store(stop.load() ? nullptr : root->CreateChild("round", SharedKind()));
        }
        barrier.Wait();
        Context* shared = round_ctx.load();
        if (shared == nullptr) break;
        for (int i = 0; i < 50; ++i) {
          Context* mine = shared->CreateChild("mine", i % 2 == 0 ? PoolKind() : FreelistKind());
          size_t size = 8 + rng() % 512;
          auto* p = static_cast<unsigned char*>(mine->Alloc(size));
          auto fill = static_cast<unsigned char>(rng());
          std::memset(p, fill, size);
          auto* s = static_cast<unsigned char*>(SharedAlloc(shared, size));
          std::memset(s, fill, size);
          if (s[size - 1] != fill) bad_bytes.fetch_add(1);
          shared->AddCleanup([&cleanups_ran] { cleanups_ran.fetch_add(1); });
          cleanups_registered.fetch_add(1);
          switch (rng() % 3) {
            case 0:  // to the next thread, which destroys it
              queues[(t + 1) % kThreads].Push({mine, p, size, fill});
              break;
            case 1:
              mine->Destroy();
              break;
            default:  // left for the shared context's destroy
              break;
          }
          Handoff h;
          while (queues[t].Pop(&h)) check_and_destroy(h);
        }
        barrier.Wait();
        Handoff h;
        while (queues[t].Pop(&h)) check_and_destroy(h);
        barrier.Wait();
        if (t == 0) {
          shared->Destroy();
          rounds.fetch_add(1);
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_GT(rounds.load(), 0);
  EXPECT_EQ(bad_bytes.load(), 0);
  EXPECT_EQ(cleanups_ran.load(), cleanups_registered.load());
  EXPECT_EQ(budget.usage(), root->SubtreeBytes());
  root->Destroy();
  EXPECT_EQ(budget.usage(), 0u);
  EXPECT_EQ(source.live_blocks(), 0);
  EXPECT_EQ(source.bad_releases(), 0);
  std::printf("%lld rounds, %lld contexts handed between threads or destroyed\n",
              static_cast<long long>(rounds.load()),
              static_cast<long long>(cleanups_registered.load()));
}

}  // namespace
}  // namespace mcx
