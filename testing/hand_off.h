// File: mcx/testing/hand_off.h
//
// A bounded queue that hands chunks from a producer thread to consumer
// threads, for tests of frees from other threads (mcx/context/remote_free.h):
// the producer allocates and pushes, each consumer pops and frees, and the
// bound keeps a fixed number of chunks in flight, so a test can check that
// the producer's memory stays bounded while it takes back what the
// consumers freed.
//
// Contract:
//   - Push blocks while `capacity` chunks wait; Pop blocks while none waits
//     and returns false once the queue is closed and drained.
//   - Close is called by the producer when it has pushed everything; every
//     consumer then drains what is left and stops.
//   - Thread-safe (one mutex): a test harness, not a benchmark's queue.
//
// Example:
//
//   mcx::test::HandOff hand_off(256);
//   std::thread consumer([&] {
//     void* p;
//     while (hand_off.Pop(&p)) mcx::Free(p);
//   });
//   for (int i = 0; i < n; ++i) hand_off.Push(ctx->Alloc(64));
//   hand_off.Close();
//   consumer.join();

#ifndef MCX_TESTING_HAND_OFF_H_
#define MCX_TESTING_HAND_OFF_H_

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>

namespace mcx {
namespace test {

class HandOff {
 public:
  explicit HandOff(size_t capacity) : capacity_(capacity) {}
  HandOff(const HandOff&) = delete;
  HandOff& operator=(const HandOff&) = delete;

  void Push(void* p) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return queue_.size() < capacity_; });
      queue_.push_back(p);
    }
    cv_.notify_all();
  }

  bool Pop(void** p) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !queue_.empty() || closed_; });
      if (queue_.empty()) return false;
      *p = queue_.front();
      queue_.pop_front();
    }
    cv_.notify_all();
    return true;
  }

  void Close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
    }
    cv_.notify_all();
  }

 private:
  const size_t capacity_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<void*> queue_;
  bool closed_ = false;
};

}  // namespace test
}  // namespace mcx

#endif  // MCX_TESTING_HAND_OFF_H_
