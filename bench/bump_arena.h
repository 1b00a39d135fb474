// File: bench/bump_arena.h
//
// The speed-of-light reference of the benchmark suite: the smallest useful
// pointer-bump arena. Blocks come from malloc and are kept across Reset, so a
// reused arena allocates with one compare and one add. It has no tree, no
// cleanups, no limits, no accounting and no checks: whatever mcx costs beyond
// it is the price of those.
//
// Example:
//
//   BumpArena a;
//   char* p = static_cast<char*>(a.Alloc(32));
//   a.Reset();  // every chunk is gone; the blocks stay for reuse

#ifndef MCX_BENCH_BUMP_ARENA_H_
#define MCX_BENCH_BUMP_ARENA_H_

#include <cstddef>
#include <cstdlib>
#include <new>

namespace mcx_bench {

class BumpArena {
 public:
  static constexpr size_t kAlign = 16;            // as malloc's
  static constexpr size_t kBlockBytes = 64 << 10;  // nginx's order of size

  BumpArena() = default;
  BumpArena(const BumpArena&) = delete;
  BumpArena& operator=(const BumpArena&) = delete;
  ~BumpArena() {
    for (Block* b = head_; b != nullptr;) {
      Block* next = b->next;
      std::free(b);
      b = next;
    }
  }

  void* Alloc(size_t n) {
    n = (n + kAlign - 1) & ~(kAlign - 1);
    if (n > static_cast<size_t>(end_ - ptr_)) return AllocSlow(n);
    char* p = ptr_;
    ptr_ += n;
    return p;
  }

  void Reset() {
    cur_ = nullptr;
    ptr_ = end_ = nullptr;
  }

 private:
  struct alignas(kAlign) Block {
    Block* next;
    size_t size;
  };

  __attribute__((noinline)) void* AllocSlow(size_t n) {
    // Next kept block, or a new one at the end of the list.
    Block* b = cur_ == nullptr ? head_ : cur_->next;
    if (b == nullptr || b->size < sizeof(Block) + n) {
      size_t size = n + sizeof(Block) > kBlockBytes ? n + sizeof(Block) : kBlockBytes;
      b = static_cast<Block*>(std::malloc(size));
      if (b == nullptr) throw std::bad_alloc();
      b->size = size;
      b->next = cur_ == nullptr ? head_ : cur_->next;
      (cur_ == nullptr ? head_ : cur_->next) = b;
    }
    cur_ = b;
    ptr_ = reinterpret_cast<char*>(b + 1) + n;
    end_ = reinterpret_cast<char*>(b) + b->size;
    return b + 1;
  }

  Block* head_ = nullptr;
  Block* cur_ = nullptr;
  char* ptr_ = nullptr;
  char* end_ = nullptr;
};

}  // namespace mcx_bench

#endif  // MCX_BENCH_BUMP_ARENA_H_
