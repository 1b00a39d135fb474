// File: bench/fixed_and_fifo.h
//
// Workloads W12 (fixed-size objects) and W13 (FIFO lifetimes) of
// ../shared/workloads.md, for bench/workloads.cc, which includes this file
// inside its namespace after its own helpers (Rng, Touch, ResidentBytes,
// the contenders, List): it is a part of that file, not a header of its
// own.
//
//   W12.churn32, W12.churn200   W3 with one size: 10,000 live objects of 32
//                               (or 200) bytes; each step frees a random one
//                               and allocates another (ns per step)
//   W12.tree                    build a complete binary tree of 2^20 - 1
//                               nodes of 24 bytes depth first, sum it, free
//                               every node bottom up (ns per node)
//   W12.mem                     (--memory-w12-w13) 64 MiB of 32 or 200-byte
//                               objects, every byte written; then 90% of
//                               them freed in random order: resident bytes
//                               per live byte, before and after
//   W13                         a queue of ~10,000 chunks of 16..1024 B:
//                               each step produces one and consumes one of
//                               the 16 oldest, so chunks die nearly in order
//                               of birth (ns per step)
//   W13.mem                     (--memory-w12-w13) W13 for 10^7 steps in a
//                               fresh child: peak resident bytes per peak
//                               live byte
//
// Contenders: the slab kind (W12), the generation kind (W13), the freelist
// kind, glibc malloc (jemalloc and tcmalloc by LD_PRELOAD), mimalloc (the
// workloads_mimalloc binary) and std::pmr::unsynchronized_pool_resource
// (W12). Every contender frees each object: W12 and W13 are about objects
// freed one by one, so nothing is dropped in bulk.

#ifndef MCX_BENCH_FIXED_AND_FIFO_H_
#define MCX_BENCH_FIXED_AND_FIFO_H_

// (workloads.cc includes mcx/slab/slab.h and mcx/generation/generation.h at
// its top: this file is included inside its namespace.)

// --- Contenders -------------------------------------------------------------------

// An allocator for objects of one size, made knowing the size (the slab
// must; the others ignore it).
template <typename C>
struct AnySize {
  static constexpr const char* kName = C::kName;
  class Arena : public C::Arena {
   public:
    explicit Arena(size_t /*object_size*/, size_t /*alignment*/) {}
  };
};

// The slab kind: one context per object size.
struct McxSlab : McxMarker {
  static constexpr const char* kName = "mcx_slab";
  class Arena {
   public:
    Arena(size_t object_size, size_t alignment) {
      mcx::SlabOptions o;
      o.object_size = object_size;
      o.alignment = static_cast<uint32_t>(alignment);
      ctx_ = mcx::CreateSlabContext(nullptr, "slab", o);
    }
    ~Arena() { ctx_->Destroy(); }
    void* Alloc(size_t n) { return ctx_->Alloc(n); }
    void Free(void* p, size_t) { ctx_->Free(p); }
    void Release() { ctx_->Reset(); }

   private:
    mcx::Context* ctx_;
  };
};

struct GenerationTraits {
  static constexpr const char* kName = "mcx_generation";
  static constexpr bool kCanFree = true;
  static const mcx::KindSpec& Kind() {
    static const mcx::KindSpec spec = mcx::GenerationKind();  // made once, as PoolKind()
    return spec;
  }
};
using McxGeneration = McxContender<GenerationTraits>;

// --- Inputs -----------------------------------------------------------------------

constexpr size_t kW12WorkingSet = 10000;
constexpr size_t kW12Steps = 1000;
constexpr uint32_t kW12Sizes[] = {32, 200};
// A complete tree of this depth has 2^20 - 1 nodes: the million of W12.
constexpr int kW12TreeDepth = 19;
constexpr size_t kW12MemBytes = size_t{64} << 20;
constexpr size_t kW12FreedPercent = 90;
constexpr size_t kW13Live = 10000;       // chunks in the queue
constexpr uint32_t kW13MinSize = 16, kW13MaxSize = 1024;
constexpr uint32_t kW13Jitter = 16;      // a consumer takes one of the 16 oldest
constexpr size_t kW13Steps = 1000;
constexpr size_t kW13MemSteps = 10000000;  // the full run: 10^7 operations
constexpr size_t kW13MemSample = 1 << 14;  // resident read every this many steps

// The tree's node: 24 bytes, 8-aligned (the slab packs them 24 apart; malloc
// gives each 32).
struct TreeNode {
  TreeNode* left;
  TreeNode* right;
  uint64_t key;
};

struct W13Inputs {
  std::vector<uint32_t> sizes = Sizes(kW3Stream, kW13MinSize, kW13MaxSize, 13);
  std::vector<uint32_t> jitter = Sizes(kW3Stream, 0, kW13Jitter - 1, 14);
};

const W13Inputs& In13() {
  static const W13Inputs* inputs = new W13Inputs();
  return *inputs;
}

// --- W12: churn of one size ----------------------------------------------------------

template <typename C>
class FixedChurn {
 public:
  FixedChurn(typename C::Arena& a, uint32_t size) : a_(a), size_(size), live_(kW12WorkingSet) {
    for (size_t i = 0; i < live_.size(); ++i) {
      live_[i] = a_.Alloc(size_);
      Touch(live_[i], size_, i);
    }
  }
  ~FixedChurn() {
    for (void* p : live_) a_.Free(p, size_);
  }
  size_t Steps(size_t steps, uint64_t& sum) {
    const uint32_t* index = In().w3_index.data();
    for (size_t k = 0; k < steps; ++k) {
      const size_t i = index[pos_] % live_.size();
      a_.Free(live_[i], size_);
      live_[i] = a_.Alloc(size_);
      sum += Touch(live_[i], size_, k);
      pos_ = (pos_ + 1) & (kW3Stream - 1);
    }
    return steps;
  }

 private:
  typename C::Arena& a_;
  const uint32_t size_;
  std::vector<void*> live_;
  size_t pos_ = 0;
};

template <typename C>
void BM_W12Churn(benchmark::State& state, uint32_t size) {
  typename C::Arena a(size, kAlign);
  uint64_t sum = 0, ops = 0;
  {
    FixedChurn<C> w(a, size);
    w.Steps(kW12Steps, sum);
    for (auto _ : state) ops += w.Steps(kW12Steps, sum);
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(static_cast<int64_t>(ops));
}

// --- W12: a binary tree --------------------------------------------------------------

template <typename C>
TreeNode* BuildTree(typename C::Arena& a, int depth, uint64_t& key) {
  auto* n = static_cast<TreeNode*>(a.Alloc(sizeof(TreeNode)));
  n->key = key++;
  n->left = depth > 0 ? BuildTree<C>(a, depth - 1, key) : nullptr;
  n->right = depth > 0 ? BuildTree<C>(a, depth - 1, key) : nullptr;
  return n;
}

uint64_t SumTree(const TreeNode* n) {
  return n == nullptr ? 0 : n->key + SumTree(n->left) + SumTree(n->right);
}

template <typename C>
void FreeTree(typename C::Arena& a, TreeNode* n) {
  if (n == nullptr) return;
  FreeTree<C>(a, n->left);
  FreeTree<C>(a, n->right);
  a.Free(n, sizeof(TreeNode));
}

// One build, walk and teardown; returns the nodes.
template <typename C>
size_t TreeRound(typename C::Arena& a, int depth, uint64_t& sum) {
  uint64_t key = 0;
  TreeNode* root = BuildTree<C>(a, depth, key);
  benchmark::DoNotOptimize(root);
  sum += SumTree(root);
  FreeTree<C>(a, root);
  return static_cast<size_t>(key);
}

template <typename C>
void BM_W12Tree(benchmark::State& state) {
  typename C::Arena a(sizeof(TreeNode), alignof(TreeNode));
  uint64_t sum = 0, ops = 0;
  TreeRound<C>(a, kW12TreeDepth, sum);  // warm
  for (auto _ : state) ops += TreeRound<C>(a, kW12TreeDepth, sum);
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(static_cast<int64_t>(ops));
}

// --- W13: a queue with jitter --------------------------------------------------------

template <typename C>
class FifoQueue {
 public:
  explicit FifoQueue(typename C::Arena& a) : a_(a), ring_(kRing), sizes_(kRing) {
    while (count_ < kW13Live) Produce(0);
  }
  ~FifoQueue() {
    while (count_ != 0) Consume(0);
  }
  // One step: a chunk produced, then one of the oldest consumed.
  size_t Steps(size_t steps, uint64_t& sum) {
    for (size_t k = 0; k < steps; ++k) {
      sum += Produce(k);
      Consume(In13().jitter[pos_]);
      pos_ = (pos_ + 1) & (kW3Stream - 1);
    }
    return steps;
  }
  size_t live_bytes() const { return live_bytes_; }

 private:
  static constexpr size_t kRing = 1 << 14;  // above kW13Live + 1
  uint64_t Produce(size_t k) {
    const uint32_t n = In13().sizes[pos_];
    void* p = a_.Alloc(n);
    const size_t tail = (head_ + count_) & (kRing - 1);
    ring_[tail] = p;
    sizes_[tail] = n;
    ++count_;
    live_bytes_ += n;
    return Touch(p, n, k);
  }
  // Frees the chunk `j` places after the oldest (it swaps with the oldest).
  void Consume(uint32_t j) {
    const size_t pick = (head_ + (j < count_ ? j : 0)) & (kRing - 1);
    std::swap(ring_[pick], ring_[head_]);
    std::swap(sizes_[pick], sizes_[head_]);
    a_.Free(ring_[head_], sizes_[head_]);
    live_bytes_ -= sizes_[head_];
    head_ = (head_ + 1) & (kRing - 1);
    --count_;
  }

  typename C::Arena& a_;
  std::vector<void*> ring_;
  std::vector<uint32_t> sizes_;
  size_t head_ = 0, count_ = 0, pos_ = 0, live_bytes_ = 0;
};

template <typename C>
void BM_W13(benchmark::State& state) {
  typename C::Arena a;
  uint64_t sum = 0, ops = 0;
  {
    FifoQueue<C> q(a);
    q.Steps(kW13Steps * 10, sum);  // warm: the blocks in circulation
    SystemCalls calls = SystemCalls::Start<C>();  // steady state: none
    for (auto _ : state) ops += q.Steps(kW13Steps, sum);
    calls.Report(state, ops);
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(static_cast<int64_t>(ops));
}

// --- Registration ----------------------------------------------------------------------

template <typename C>
void RegisterW12() {
  for (uint32_t size : kW12Sizes) {
    const std::string w = "W12.churn" + std::to_string(size);
    benchmark::RegisterBenchmark(Name(w.c_str(), C::kName).c_str(), BM_W12Churn<C>, size);
  }
  benchmark::RegisterBenchmark(Name("W12.tree", C::kName).c_str(), BM_W12Tree<C>);
}

template <typename C>
void RegisterW13() {
  benchmark::RegisterBenchmark(Name("W13", C::kName).c_str(), BM_W13<C>);
}

// --- Memory: forked children, as W5 ------------------------------------------------------

// InChild (workloads.cc, W5) runs each measurement in a fresh child.

double CpuNanoseconds() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e9 + static_cast<double>(t.tv_nsec);
}

// W12.mem: resident bytes per live byte with all objects live, then with
// 90% of them freed in random order.
template <typename C>
std::string W12Memory(uint32_t size) {
  const size_t n = kW12MemBytes / size;
  // Bookkeeping outside every allocator under test, resident before the baseline.
  void* book = mmap(nullptr, n * sizeof(void*), PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (book == MAP_FAILED) OutOfMemory();
  void** ptrs = static_cast<void**>(book);
  std::memset(book, 0, n * sizeof(void*));
  auto* a = new typename C::Arena(size, kAlign);
  const size_t before = ResidentBytes();
  for (size_t i = 0; i < n; ++i) {
    ptrs[i] = a->Alloc(size);
    std::memset(ptrs[i], 0x5a, size);
  }
  const size_t full = ResidentBytes() - before;
  // Fisher-Yates with the shared generator: the same order for everyone.
  Rng rng(kSeed ^ 12);
  for (size_t i = n - 1; i > 0; --i) std::swap(ptrs[i], ptrs[rng.Next() % (i + 1)]);
  const size_t freed = n * kW12FreedPercent / 100;
  for (size_t i = 0; i < freed; ++i) a->Free(ptrs[i], size);
  const size_t after = ResidentBytes() - before;
  const double live = static_cast<double>((n - freed) * size);
  char line[256];
  std::snprintf(line, sizeof line,
                "{\"workload\": \"W12.mem\", \"contender\": \"%s\", \"size\": %u, "
                "\"full_per_requested\": %.4f, \"after_per_live\": %.4f, "
                "\"after_mib\": %.1f}\n",
                C::kName, size, static_cast<double>(full) / static_cast<double>(n * size),
                static_cast<double>(after) / live, static_cast<double>(after) / (1 << 20));
  return line;
}

// W13.mem: the queue for 10^7 steps (fewer with MCX_BENCH_W13_STEPS);
// resident bytes are read every kW13MemSample steps.
template <typename C>
std::string W13Memory(size_t steps) {
  In13();  // the inputs are resident before the baseline, not counted as the queue's
  const size_t before = ResidentBytes();
  typename C::Arena a;
  size_t peak = 0, peak_live = 0;
  uint64_t sum = 0;
  // CPU time of this process (a fresh child: the queue alone). Wall time on
  // a shared machine counts other programs' turns as well.
  const double start = CpuNanoseconds();
  {
    FifoQueue<C> q(a);
    for (size_t done = 0; done < steps; done += kW13MemSample) {
      q.Steps(kW13MemSample, sum);
      peak = std::max(peak, ResidentBytes() - before);
      peak_live = std::max(peak_live, q.live_bytes());
    }
  }
  const double ns = CpuNanoseconds() - start;
  benchmark::DoNotOptimize(sum);
  char line[256];
  std::snprintf(line, sizeof line,
                "{\"workload\": \"W13.mem\", \"contender\": \"%s\", \"size\": 0, "
                "\"steps\": %zu, \"peak_mib\": %.1f, \"peak_per_live\": %.3f, "
                "\"ns_per_step\": %.1f}\n",
                C::kName, steps, static_cast<double>(peak) / (1 << 20),
                static_cast<double>(peak) / static_cast<double>(peak_live),
                ns / static_cast<double>(steps));
  return line;
}

size_t W13MemSteps() {
  const char* env = std::getenv("MCX_BENCH_W13_STEPS");
  return env != nullptr && *env != '\0' ? std::strtoull(env, nullptr, 10) : kW13MemSteps;
}

template <typename C>
void MemoryW12() {
  for (uint32_t size : kW12Sizes) InChild([size] { return W12Memory<C>(size); });
}

template <typename C>
void MemoryW13() {
  const size_t steps = W13MemSteps();
  InChild([steps] { return W13Memory<C>(steps); });
}

// --- Callgrind --------------------------------------------------------------------------

constexpr size_t kCallgrindW12Steps = 20000;
constexpr int kCallgrindTreeDepth = 15;
constexpr size_t kCallgrindW13Steps = 20000;

template <typename C>
bool CallgrindW12(const std::string& workload, uint64_t& sum, uint64_t& ops) {
  if (workload == "W12.tree") {
    typename C::Arena a(sizeof(TreeNode), alignof(TreeNode));
    TreeRound<C>(a, kCallgrindTreeDepth, sum);
    MCX_BENCH_CALLGRIND_TOGGLE();
    ops = TreeRound<C>(a, kCallgrindTreeDepth, sum);
    MCX_BENCH_CALLGRIND_TOGGLE();
    return true;
  }
  for (uint32_t size : kW12Sizes) {
    if (workload != "W12.churn" + std::to_string(size)) continue;
    typename C::Arena a(size, kAlign);
    FixedChurn<C> w(a, size);
    w.Steps(kCallgrindW12Steps, sum);
    MCX_BENCH_CALLGRIND_TOGGLE();
    ops = w.Steps(kCallgrindW12Steps, sum);
    MCX_BENCH_CALLGRIND_TOGGLE();
    return true;
  }
  return false;
}

template <typename C>
bool CallgrindW13(const std::string& workload, uint64_t& sum, uint64_t& ops) {
  if (workload != "W13") return false;
  typename C::Arena a;
  FifoQueue<C> q(a);
  q.Steps(kCallgrindW13Steps, sum);
  MCX_BENCH_CALLGRIND_TOGGLE();
  ops = q.Steps(kCallgrindW13Steps, sum);
  MCX_BENCH_CALLGRIND_TOGGLE();
  return true;
}

// The contenders of W12 and W13 in this binary: all of W12's, then W13's.
template <typename W12s, typename W13s>
struct FixedAndFifo;

template <typename... W12s, typename... W13s>
struct FixedAndFifo<List<W12s...>, List<W13s...>> {
  static void Register() {
    (RegisterW12<W12s>(), ...);
    (RegisterW13<W13s>(), ...);
  }
  static void Memory() {
    (MemoryW12<W12s>(), ...);
    (MemoryW13<W13s>(), ...);
  }
  // Runs `workload` for `contender` if it is a W12 or W13 case here.
  static bool Callgrind(const std::string& workload, const std::string& contender) {
    uint64_t sum = 0, ops = 0;
    bool done = false;
    ((!done && contender == W12s::kName ? (done = CallgrindW12<W12s>(workload, sum, ops), 0) : 0),
     ...);
    ((!done && contender == W13s::kName ? (done = CallgrindW13<W13s>(workload, sum, ops), 0) : 0),
     ...);
    if (!done || ops == 0) return false;
    std::printf("{\"workload\": \"%s\", \"contender\": \"%s\", \"ops\": %" PRIu64
                ", \"checksum\": %" PRIu64 "}\n",
                workload.c_str(), contender.c_str(), ops, sum);
    return true;
  }
};

#endif  // MCX_BENCH_FIXED_AND_FIFO_H_
