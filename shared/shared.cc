// The shared kind. Why it is built this way:
//
//   - One run of blocks per thread, not one bump pointer for all: a shared
//     pointer advanced with an atomic add would make every allocation a
//     contended cache line between the threads (protobuf measured the same
//     and moved to SerialArena per thread). With a run per thread, the fast
//     path touches only the thread's own cache line and one word of the
//     context that never changes between resets.
//   - Runs are found through a one-entry thread-local cache tagged with the
//     context's generation number, which is unique in the process and
//     changes at every reset. A stale entry (another context, an earlier
//     generation, a destroyed context whose memory now holds another) can
//     never match, so nothing has to visit the threads' caches when a
//     context is reset or destroyed: the cost of invalidation is one store.
//   - A thread that misses its cache finds its run on the context's list
//     without a lock (runs are published with a release store and never
//     leave the list before a reset); only creating a run and acquiring a
//     block take the lock, because the ledger (bytes and blocks held, the
//     block source's calls, the reserve) is kept per context.
//   - Threads are told apart by a number that is never reused, not by a
//     thread id or a thread-local address, which a new thread may inherit
//     from a dead one: a run is only ever bumped by the thread that made it.

#include "mcx/shared/shared.h"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>
#include <string>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "mcx/context/context.h"
#include "mcx/context/internal/format.h"
#include "mcx/context/kind_api.h"
#include "mcx/shared/internal/shared_state.h"

namespace mcx {
namespace shared_internal {

__thread ThreadCache thread_cache;

namespace {

constexpr size_t RoundUp(size_t n, size_t alignment) {
  return (n + alignment - 1) & ~(alignment - 1);
}

// Generations: 0 is the value of an empty thread cache, so numbering
// starts at 1. 64 bits do not wrap.
std::atomic<uint64_t> next_generation{1};
uint64_t NewGeneration() { return next_generation.fetch_add(1, std::memory_order_relaxed); }

std::atomic<uint64_t> next_thread{1};
__thread uint64_t thread_number;

uint64_t ThreadNumber() {
  if (ABSL_PREDICT_FALSE(thread_number == 0)) {
    thread_number = next_thread.fetch_add(1, std::memory_order_relaxed);
  }
  return thread_number;
}

// Space a block keeps for its link (and, in a run's first block, the run).
constexpr size_t kBlockHeader = RoundUp(sizeof(SharedBlock), kDefaultAlignment);
constexpr size_t kRunHeader = RoundUp(sizeof(SharedBlock) + sizeof(ThreadRun), kDefaultAlignment);
// The least a run's block may be: its headers and a few chunks.
constexpr size_t kMinRunBlock = 256;

// Checking builds: counts an allocation under way (a reset meanwhile is
// reported).
class InFlight {
 public:
  explicit InFlight(SharedState* st) : st_(st) {
    if (kCheckingBuild) st_->in_flight.fetch_add(1, std::memory_order_acq_rel);
  }
  ~InFlight() {
    if (kCheckingBuild) st_->in_flight.fetch_sub(1, std::memory_order_acq_rel);
  }
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;

 private:
  SharedState* st_;
};

// A block for a run, from the blocks a reset kept if one fits, else from
// the ledger. Called with the lock held.
SharedBlock* TakeBlock(Context* ctx, SharedState* st, size_t want) {
  for (SharedBlock** link = &st->spare; *link != nullptr; link = &(*link)->next) {
    if ((*link)->size >= want) {
      SharedBlock* b = *link;
      *link = b->next;
      return b;
    }
  }
  size_t actual = 0;
  void* mem = AcquireBlock(ctx, want, kMinBlockAlignment, &actual);
  if (mem == nullptr) return nullptr;
  auto* b = static_cast<SharedBlock*>(mem);
  b->size = actual;
  return b;
}

// The calling thread's run in the current generation, made if it has none;
// nullptr (failure recorded) if its first block cannot be had.
ThreadRun* RunFor(Context* ctx, SharedState* st) {
  const uint64_t generation = st->id.load(std::memory_order_relaxed);
  ThreadCache& c = thread_cache;
  if (c.id == generation) return c.run;
  const uint64_t me = ThreadNumber();
  for (ThreadRun* r = st->runs.load(std::memory_order_acquire); r != nullptr; r = r->next) {
    if (r->thread == me) {
      c = ThreadCache{generation, r};
      return r;
    }
  }
  std::lock_guard<std::recursive_mutex> lock(st->mu);
  SharedBlock* b = TakeBlock(ctx, st, st->block_size);
  if (b == nullptr) return nullptr;
  b->next = nullptr;
  auto* r = reinterpret_cast<ThreadRun*>(reinterpret_cast<char*>(b) + sizeof(SharedBlock));
  r->ptr = reinterpret_cast<char*>(b) + kRunHeader;
  r->end = reinterpret_cast<char*>(b) + b->size;
  r->blocks = b;
  r->next_block_size = st->block_size * 2 < st->max_block_size ? st->block_size * 2
                                                               : st->max_block_size;
  r->thread = me;
  r->next = st->runs.load(std::memory_order_relaxed);
  st->runs.store(r, std::memory_order_release);
  c = ThreadCache{generation, r};
  return r;
}

// Bumps `size` at `alignment` in the run's current block, or nullptr.
void* Bump(ThreadRun* r, size_t size, size_t alignment) {
  uintptr_t p = RoundUp(reinterpret_cast<uintptr_t>(r->ptr), alignment);
  if (p + size > reinterpret_cast<uintptr_t>(r->end) || p < reinterpret_cast<uintptr_t>(r->ptr)) {
    return nullptr;
  }
  r->ptr = reinterpret_cast<char*>(p + size);
  return reinterpret_cast<void*>(p);
}

// A chunk with a block of its own, on the large list.
void* AllocLarge(Context* ctx, SharedState* st, size_t size, size_t alignment) {
  // The front refused sizes above kMaxAllocSize; up to it, the block's
  // size cannot overflow (kMaxAllocSize leaves half the address space),
  // and one that large is the source's to refuse: out of memory, as in
  // every kind.
  const size_t offset = RoundUp(kBlockHeader, alignment);
  static_assert(kMaxAllocSize + kBlockHeader + kMaxAlignment > kMaxAllocSize,
                "a block's size does not overflow");
  std::lock_guard<std::recursive_mutex> lock(st->mu);
  size_t actual = 0;
  void* mem = AcquireBlock(ctx, offset + size,
                           alignment > kMinBlockAlignment ? alignment : kMinBlockAlignment, &actual);
  if (mem == nullptr) return nullptr;
  auto* b = static_cast<SharedBlock*>(mem);
  b->size = actual;
  b->next = st->large;
  st->large = b;
  return static_cast<char*>(mem) + offset;
}

// The run's current block is full: a new one, doubling.
void* AllocFromNewBlock(Context* ctx, SharedState* st, ThreadRun* r, size_t size,
                        size_t alignment) {
  size_t want = r->next_block_size;
  const size_t need = kBlockHeader + RoundUp(size, alignment) + alignment;
  if (want < need) want = need;
  std::lock_guard<std::recursive_mutex> lock(st->mu);
  SharedBlock* b = TakeBlock(ctx, st, want);
  if (b == nullptr) return nullptr;
  FirstBlockOutgrown(ctx, FirstBlockNeededFromLive(ctx, 0, size));
  b->next = r->blocks;
  r->blocks = b;
  r->ptr = reinterpret_cast<char*>(b) + kBlockHeader;
  r->end = reinterpret_cast<char*>(b) + b->size;
  if (r->next_block_size < st->max_block_size) {
    r->next_block_size = r->next_block_size * 2 < st->max_block_size ? r->next_block_size * 2
                                                                     : st->max_block_size;
  }
  return Bump(r, size, alignment);
}

void ReportOverlap(const Context* ctx, const char* operation) {
  ReportMisuse("%s of shared context '%s' at %p while another thread allocates in it", operation,
               ctx->name(), static_cast<const void*>(ctx));
}

// Gives back every block but the first (which holds the context), keeping
// those `options` keep on the spare list. Runs go with their blocks; the
// new generation makes every thread's cached run stale.
void Empty(Context* ctx, SharedState* st, const ResetOptions& options, const char* operation) {
  if (kCheckingBuild && st->in_flight.load(std::memory_order_acquire) != 0) {
    ReportOverlap(ctx, operation);
  }
  size_t kept = ctx->first_block_size();
  SharedBlock* keep = nullptr;
  auto drop = [&](SharedBlock* b) {
    while (b != nullptr) {
      SharedBlock* next = b->next;
      if (options.KeepsBlock(kept, b->size)) {
        kept += b->size;
        b->next = keep;
        keep = b;
      } else {
        ReleaseBlock(ctx, b, b->size);
      }
      b = next;
    }
  };
  ThreadRun* runs = st->runs.load(std::memory_order_acquire);
  while (runs != nullptr) {
    ThreadRun* next = runs->next;  // the record is in the blocks about to go
    drop(runs->blocks);
    runs = next;
  }
  drop(st->spare);
  for (SharedBlock* b = st->large; b != nullptr;) {
    SharedBlock* next = b->next;
    ReleaseBlock(ctx, b, b->size);
    b = next;
  }
  st->large = nullptr;
  st->spare = keep;
  st->runs.store(nullptr, std::memory_order_relaxed);
  st->id.store(NewGeneration(), std::memory_order_relaxed);
}

}  // namespace

// The kind, for MakeKindMethods (kind_api.h).
struct SharedImpl {
  using Options = SharedOptions;
  using State = SharedState;
  static constexpr const char* kName = "shared";

  static size_t FirstBlockSize(const Options& o, size_t header_bytes) {
    if (o.thread_block_size > o.max_block_size || o.max_block_size > kMaxAllocSize ||
        o.max_small > kMaxAllocSize) {
      return 0;
    }
    constexpr size_t kLine = 64;
    size_t size = o.initial_block_size > header_bytes ? o.initial_block_size : header_bytes;
    return RoundUp(size, kLine);
  }

  // Every field first: a failed Init is undone through ReleaseAll.
  static bool Init(Context* ctx, State* st, const Options& o, char* /*space*/, char* /*end*/) {
    new (&st->mu) std::recursive_mutex();
    st->id.store(NewGeneration(), std::memory_order_relaxed);
    st->runs.store(nullptr, std::memory_order_relaxed);
    st->large = nullptr;
    st->spare = nullptr;
    st->block_size = o.thread_block_size < kMinRunBlock ? kMinRunBlock : o.thread_block_size;
    st->max_block_size = o.max_block_size < st->block_size ? st->block_size : o.max_block_size;
    st->max_small = kDirectBuild ? 0 : o.max_small;
    if (st->max_small > st->max_block_size / 2) st->max_small = st->max_block_size / 2;
    st->in_flight.store(0, std::memory_order_relaxed);
    // A limit above is checked and charged by one thread; this context's
    // blocks would be charged to it from several (shared.h: use a Budget).
    for (const Context* c = ctx->parent(); c != nullptr; c = c->parent()) {
      if (c->limit() != kNoLimit || c->soft_limit() != kNoLimit) {
        SetFailure(ctx, Failure::kBadArgument);
        return false;
      }
    }
    // Threads walking up the tree read the side record's pointer without
    // the lock: it must not appear later, when a cleanup is registered.
    return MakeSideRecord(ctx);
  }

  static void* Alloc(Context* ctx, State* st, size_t size, size_t alignment) {
    InFlight in_flight(st);
    if (size == 0) size = 1;  // a unique pointer
    if (size > st->max_small || alignment > kDefaultAlignment * 16) {
      return AllocLarge(ctx, st, size, alignment);
    }
    ThreadRun* r = RunFor(ctx, st);
    if (r == nullptr) return nullptr;
    if (void* p = Bump(r, size, alignment)) return p;
    return AllocFromNewBlock(ctx, st, r, size, alignment);
  }

  // Chunks go back at reset, as a pool's small chunks.
  static void Free(Context* /*ctx*/, State* /*st*/, void* /*p*/) {}

  static void* Realloc(Context* ctx, State* st, void* p, size_t old_size, size_t new_size) {
    if (old_size == kUnknownSize) {
      SetFailure(ctx, Failure::kUnsupported);
      return nullptr;
    }
    if (new_size <= old_size) return p;
    void* q = Alloc(ctx, st, new_size, kDefaultAlignment);
    if (q != nullptr) std::memcpy(q, p, old_size);
    return q;
  }

  static size_t ChunkSize(const Context* /*ctx*/, const State* /*st*/, const void* /*p*/) {
    return kUnknownSize;
  }

  static void Reset(Context* ctx, State* st, const ResetOptions& options) {
    Empty(ctx, st, options, "reset");
  }

  static void ReleaseAll(Context* ctx, State* st) {
    Empty(ctx, st, ResetOptions::ReleaseAll(), "destroy");
    st->mu.~recursive_mutex();
  }

  // Counts at quiescence: a run's free space is its thread's to change.
  static void Stats(const Context* /*ctx*/, const State* st, KindStats* out) {
    for (ThreadRun* r = st->runs.load(std::memory_order_acquire); r != nullptr; r = r->next) {
      out->free_bytes += static_cast<size_t>(r->end - r->ptr);
    }
    for (SharedBlock* b = st->spare; b != nullptr; b = b->next) out->free_bytes += b->size;
  }

  static bool Check(const Context* ctx, const State* st, std::string* error) {
    bool ok = true;
    for (ThreadRun* r = st->runs.load(std::memory_order_acquire); r != nullptr; r = r->next) {
      const char* base = reinterpret_cast<const char*>(r->blocks);
      if (r->blocks == nullptr || r->ptr < base || r->end != base + r->blocks->size ||
          r->ptr > r->end) {
        internal::AppendFormat(error, "shared context '%s': run of thread %d is outside its block\n",
                               ctx->name(), r->thread);
        ok = false;
      }
    }
    return ok;
  }
};

namespace {

void LockContext(Context* ctx) { StateOf(ctx)->mu.lock(); }
void UnlockContext(Context* ctx) { StateOf(ctx)->mu.unlock(); }

constexpr KindMethods MakeSharedMethods() {
  KindMethods m = MakeKindMethods<SharedImpl>();
  m.lock = &LockContext;
  m.unlock = &UnlockContext;
  return m;
}

constexpr KindMethods kSharedMethods = MakeSharedMethods();

}  // namespace
}  // namespace shared_internal

KindSpec SharedKind(const SharedOptions& options) {
  return KindSpec(&shared_internal::kSharedMethods, options);
}

const KindSpec& SharedKind() {
  static const KindSpec* spec = new KindSpec(&shared_internal::kSharedMethods, SharedOptions());
  return *spec;
}

bool IsShared(const Context* ctx) { return ctx->kind() == &shared_internal::kSharedMethods; }

}  // namespace mcx
