// File: bench/live_set.h
//
// The churning live set that W8 (workloads.cc) and L.resident
// (realloc_and_large.cc) drive through an allocator, and the resident-bytes
// reading both sample. One operation allocates (every byte written) or
// frees a live chunk chosen at random: below the target it allocates with
// probability 3/4, at or above it it frees, so the live data climbs to the
// target and churns around it. The decisions depend only on the generator
// and the live bytes: identical for every contender.
//
// Example:
//
//   LiveSet set(kMaxChunks);
//   for (size_t op = 0; op < kOps; ++op) set.Step(arena, rng, op, kTarget, 8, 4096);
//   set.FreeAll(arena);

#ifndef MCX_BENCH_LIVE_SET_H_
#define MCX_BENCH_LIVE_SET_H_

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace mcx_bench {

// The process's resident bytes, from /proc/self/statm.
inline size_t ResidentBytes() {
  long pages_total = 0, pages_resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  if (std::fscanf(f, "%ld %ld", &pages_total, &pages_resident) != 2) pages_resident = 0;
  std::fclose(f);
  return static_cast<size_t>(pages_resident) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

class LiveSet {
 public:
  // The book of live chunks lives outside every allocator under test, and
  // is resident before a measurement takes its baseline.
  explicit LiveSet(size_t max_chunks)
      : max_chunks_(max_chunks),
        book_bytes_(max_chunks * (sizeof(void*) + sizeof(uint32_t) + sizeof(uint64_t))) {
    void* book = mmap(nullptr, book_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    if (book == MAP_FAILED) {
      std::fputs("live set: out of memory\n", stderr);
      std::abort();
    }
    std::memset(book, 1, book_bytes_);
    ptrs_ = static_cast<void**>(book);
    scratch_ = reinterpret_cast<uint64_t*>(ptrs_ + max_chunks);
    sizes_ = reinterpret_cast<uint32_t*>(scratch_ + max_chunks);
  }
  ~LiveSet() { munmap(ptrs_, book_bytes_); }
  LiveSet(const LiveSet&) = delete;
  LiveSet& operator=(const LiveSet&) = delete;

  // One operation number `op` (it marks the bytes written).
  template <typename Arena, typename Rng>
  void Step(Arena* a, Rng& rng, size_t op, size_t target, uint32_t min_size, uint32_t max_size) {
    const bool alloc = n_ == 0 || (n_ < max_chunks_ && live_ < target && (rng.Next() & 3) != 0);
    if (alloc) {
      const uint32_t size = rng.Uniform(min_size, max_size);
      void* p = a->Alloc(size);
      std::memset(p, static_cast<int>(op), size);
      sum_ += static_cast<unsigned char*>(p)[size - 1];
      ptrs_[n_] = p;
      sizes_[n_] = size;
      ++n_;
      live_ += size;
      live_peak_ = std::max(live_peak_, live_);
    } else {
      const size_t i = static_cast<size_t>(rng.Next() % n_);
      a->Free(ptrs_[i], sizes_[i]);
      live_ -= sizes_[i];
      --n_;
      ptrs_[i] = ptrs_[n_];
      sizes_[i] = sizes_[n_];
    }
  }

  template <typename Arena>
  void FreeAll(Arena* a) {
    for (size_t i = 0; i < n_; ++i) a->Free(ptrs_[i], sizes_[i]);
    n_ = 0;
    live_ = 0;
  }

  // Bytes of the pages that hold at least one live byte (the chunks as
  // requested, no allocator's header or rounding): what any heap that
  // never moves its chunks keeps resident at least, for this placement.
  // Allocates nothing (a scratch part of the book), so it leaves the
  // resident bytes of the heap under test alone.
  size_t LivePageBytes() {
    constexpr unsigned kPageShift = 12;
    // Chunk and size in one word, sorted by address: user addresses lie
    // below 2^47 and on 8 bytes at least, sizes below 1 MiB.
    constexpr unsigned kAlignShift = 3;
    constexpr unsigned kSizeBits = 20;
    for (size_t i = 0; i < n_; ++i) {
      scratch_[i] = ((reinterpret_cast<uint64_t>(ptrs_[i]) >> kAlignShift) << kSizeBits) | sizes_[i];
    }
    std::sort(scratch_, scratch_ + n_);
    size_t pages = 0;
    uint64_t counted_to = 0;  // one past the last page counted
    for (size_t i = 0; i < n_; ++i) {
      const uint64_t start = (scratch_[i] >> kSizeBits) << kAlignShift;
      const uint64_t size = scratch_[i] & ((uint64_t{1} << kSizeBits) - 1);
      if (size == 0) continue;
      uint64_t first = start >> kPageShift;
      const uint64_t end = ((start + size - 1) >> kPageShift) + 1;
      if (first < counted_to) first = counted_to;
      if (end > first) {
        pages += end - first;
        counted_to = end;
      }
    }
    return pages << kPageShift;
  }

  size_t live() const { return live_; }            // bytes requested and not freed
  size_t live_peak() const { return live_peak_; }
  uint64_t sum() const { return sum_; }            // of bytes read back: keeps the writes

 private:
  const size_t max_chunks_;
  const size_t book_bytes_;
  void** ptrs_;
  uint64_t* scratch_;  // LivePageBytes
  uint32_t* sizes_;
  size_t n_ = 0;
  size_t live_ = 0;
  size_t live_peak_ = 0;
  uint64_t sum_ = 0;
};

}  // namespace mcx_bench

#endif  // MCX_BENCH_LIVE_SET_H_
