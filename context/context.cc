// The generic context tree: lifecycle, teardown order, cleanups, limits and
// block accounting. Everything kind-specific goes through `KindMethods`.

#include "mcx/context/context.h"

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "absl/strings/str_format.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/chunk.h"
#include "mcx/context/chunk_header.h"
#include "mcx/context/internal/cleanup.h"
#include "mcx/context/internal/failure.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/context/internal/valgrind.h"

namespace mcx {

using internal::CleanupRecord;

void RegisterDirectChunks();

namespace {

// Bumped whenever the set of limited ancestors of some context may change
// (SetParent, SetLimit). Contexts compare it with the epoch of their cached
// nearest-limited link; a mismatch only costs a walk up to the next valid
// cache. Relaxed is enough: each thread reads the links of its own tree.
std::atomic<uint64_t> limit_epoch{1};

void BumpLimitEpoch() { limit_epoch.fetch_add(1, std::memory_order_relaxed); }

// Live contexts with a limit, process-wide. Most programs set none, and then
// limit bookkeeping (NearestLimited on every block acquired and released:
// about a tenth of creating and destroying a small context) is one load.
// A thread only ever asks about its own trees, and a limit in its trees was
// set by itself, so a relaxed count is exact where it matters.
std::atomic<size_t> limited_contexts{0};

void CountLimited(size_t old_limit, size_t new_limit) {
  if ((old_limit == kNoLimit) == (new_limit == kNoLimit)) return;
  if (new_limit != kNoLimit) {
    limited_contexts.fetch_add(1, std::memory_order_relaxed);
  } else {
    limited_contexts.fetch_sub(1, std::memory_order_relaxed);
  }
}

// Starts loading every cache line of a context header.
void PrefetchHeader(const Context* ctx) {
  constexpr size_t kCacheLine = 64;
  const char* p = reinterpret_cast<const char*>(ctx);
  for (size_t off = 0; off < sizeof(Context); off += kCacheLine) __builtin_prefetch(p + off);
}

// A source that hands back less than asked has broken its contract: the
// block goes back and the call fails as out of memory, rather than letting a
// kind write past the block's end. (Alignment is the source's to keep: a
// test for it would cost every context creation more than this one.)
ABSL_ATTRIBUTE_ALWAYS_INLINE inline Block AcquireFrom(BlockSource* source, size_t min_size,
                                                      size_t alignment) {
  Block b = source->Acquire(min_size, alignment);
  // One test covers failure too: a failed acquisition has size 0.
  if (ABSL_PREDICT_FALSE(b.size < min_size)) {
    if (b.ptr != nullptr) source->Release(b);
    return Block{};
  }
  return b;
}

// Failures of arguments rather than of memory: std::invalid_argument.
bool ThrowsInvalidArgument(Failure failure) {
  return failure == Failure::kBadAlignment || failure == Failure::kUnsupported ||
         failure == Failure::kBadArgument || failure == Failure::kCycle;
}

// The exception for a failure of a throwing call. The message is made by
// the caller before the failure handler runs: a handler may reset or destroy
// the context that failed.
[[noreturn]] void ThrowFor(Failure failure, const char* message) {
  if (failure == Failure::kBadSize) throw std::bad_array_new_length();
  if (ThrowsInvalidArgument(failure)) throw std::invalid_argument(message);
  throw std::bad_alloc();
}

// A root's failed creation, out of line: the message's formatting would
// weigh on every creation's frame.
[[noreturn]] ABSL_ATTRIBUTE_NOINLINE ABSL_ATTRIBUTE_COLD void ThrowCreateFailure(Failure failure,
                                                                               const char* name) {
  ThrowFor(failure, absl::StrFormat("mcx: %s creating context '%s'", FailureName(failure),
                                    name != nullptr ? name : "(null)")
                        .c_str());
}

// Bytes of a failure message: the longest name it quotes is cut to fit.
constexpr size_t kFailureMessageBytes = 256;

constexpr size_t RoundUp(size_t n, size_t alignment) {
  return (n + alignment - 1) & ~(alignment - 1);
}

bool IsPowerOfTwo(size_t n) { return n != 0 && (n & (n - 1)) == 0; }

}  // namespace

// --- Checks ------------------------------------------------------------------

namespace {

// Checking builds: the first blocks of destroyed contexts on the default
// source wait here before they go back, so that a second Destroy of the same
// context finds the dead magic (and clobbered memory) instead of a new
// context in the same block: the default cache hands a released block to
// the next creation at once. A stale Destroy is caught until this many more
// contexts have been destroyed.
constexpr size_t kQuarantinedFirstBlocks = 64;

class FirstBlockQuarantine {
 public:
  void Add(Block block) {
    internal::PoisonMemoryRegion(block.ptr, block.size);
    Block evicted;
    {
      std::lock_guard<std::mutex> lock(mu_);
      evicted = ring_[next_];
      ring_[next_] = block;
      next_ = (next_ + 1) % kQuarantinedFirstBlocks;
    }
    if (evicted.ptr != nullptr) {
      internal::UnpoisonMemoryRegion(evicted.ptr, evicted.size);
      DefaultBlockSource()->Release(evicted);
    }
  }

 private:
  std::mutex mu_;
  Block ring_[kQuarantinedFirstBlocks];
  size_t next_ = 0;
};

void QuarantineFirstBlock(Block block) {
  static FirstBlockQuarantine* quarantine = new FirstBlockQuarantine;  // never destroyed
  quarantine->Add(block);
}

}  // namespace

namespace {
// Its address identifies the calling thread to the concurrency check.
thread_local char thread_token;
}  // namespace

Context::UseGuard::UseGuard(Context* ctx) : ctx_(ctx) {
  if (!internal::kChecking) return;
  const void* me = &thread_token;
  const void* expected = nullptr;
  if (!ctx->user_.compare_exchange_strong(expected, me, std::memory_order_acquire) &&
      expected != me) {
    internal::ReportMisuse("context '%s' at %p is used from two threads at the same time",
                           ctx->name_, static_cast<void*>(ctx));
  }
  ++ctx->use_depth_;
}

Context::UseGuard::~UseGuard() {
  if (!internal::kChecking) return;
  if (--ctx_->use_depth_ == 0) ctx_->user_.store(nullptr, std::memory_order_release);
}

// Context::CheckLive
//
// A destroyed context's header says so until its memory is reused. Checked
// on every teardown (cheap, and a double destroy would otherwise free blocks
// twice), and on every operation in checking builds.
bool Context::CheckLive(const char* operation) const {
  // Under ASan, read past any poison: a destroyed context's block may sit
  // poisoned in a cache or the checking build's quarantine, and the report
  // is the point. (Memcheck has no exact poison query: it reports the read.)
  uint32_t magic;
  if (internal::kAddressSanitizer) {
    internal::CopyFromPoisoned(&magic, &magic_, sizeof(magic));
  } else {
    magic = magic_;
  }
  if (magic == kLiveMagic) return true;
  internal::ReportMisuse("%s of context at %p, which was already destroyed (or was never a context)",
                         operation, static_cast<const void*>(this));
  return false;
}

// --- Lifecycle ---------------------------------------------------------------

Context* Context::Create(Context* parent, const char* name,
                         const KindSpec& kind, const ContextOptions& options) {
  return CreateImpl(parent, name, kind, options, kThrow);
}

Context* Context::TryCreate(Context* parent, const char* name,
                            const KindSpec& kind,
                            const ContextOptions& options) noexcept {
  return CreateImpl(parent, name, kind, options, kNoThrow);
}

// Context::CreateImpl
//
// The context header, the kind state and a copy of the name share the first
// block, so creating a child costs one block acquisition (PostgreSQL and nginx
// do the same). The block is charged to the parent's limits before it is
// acquired, so a limit refuses the child without touching the source.
Context* Context::CreateImpl(Context* parent, const char* name,
                             const KindSpec& kind,
                             const ContextOptions& options, unsigned flags) {
  auto fail = [&](Failure failure, size_t size) -> Context* {
    if (parent != nullptr) return static_cast<Context*>(parent->Fail(failure, size, flags));
    if (flags & kNoThrow) return nullptr;
    ThrowCreateFailure(failure, name);
  };
  const KindMethods* methods = kind.methods();
  if (name == nullptr || methods == nullptr) return fail(Failure::kBadArgument, 0);
  if (parent != nullptr && parent->state_ == State::kTearingDown) {
    internal::ReportMisuse("creating a child of context '%s' while it is being torn down",
                           parent->name_);
    return fail(Failure::kBadArgument, 0);
  }
  const size_t name_len = std::strlen(name);
  const size_t state_offset = RoundUp(sizeof(Context), methods->state_alignment);
  const size_t name_offset = state_offset + methods->state_size;
  if (name_len > kMaxAllocSize - name_offset) return fail(Failure::kBadSize, name_len);
  const size_t header_bytes = RoundUp(name_offset + name_len + 1, kDefaultAlignment);
  const size_t want = methods->first_block_size(kind.options(), header_bytes);
  const size_t alignment = methods->first_block_alignment(kind.options(), want);
  if (want == 0 || want < header_bytes) return fail(Failure::kBadSize, want);
  if (options.limit != kNoLimit && want > options.limit) return fail(Failure::kLimit, want);

  BlockSource* source = options.block_source;
  if (source == nullptr) source = parent ? parent->source_ : DefaultBlockSource();
  if (parent != nullptr && !parent->ChargeLimits(want)) return fail(Failure::kLimit, want);
  Block block = AcquireFrom(source, want, alignment);
  if (block.ptr == nullptr) {
    if (parent != nullptr) parent->UnchargeLimits(want);
    return fail(Failure::kOutOfMemory, want);
  }
  // Use the source's slack only where every limit has room for it.
  size_t size = want;
  if (block.size > want) {
    size_t slack = block.size - want;
    bool fits = options.limit == kNoLimit || block.size <= options.limit;
    if (fits && (parent == nullptr || parent->ChargeLimits(slack))) size = block.size;
  }

  Context* ctx = new (block.ptr) Context();
  internal::ValgrindCreatePool(ctx);
  if (internal::kDirect) RegisterDirectChunks();
  ctx->methods_ = methods;
  ctx->source_ = source;
  ctx->mem_allocated_ = size;
  ctx->num_blocks_ = 1;
  ctx->first_block_size_ = size;
  ctx->header_bytes_ = header_bytes;
  CountLimited(kNoLimit, options.limit);
  ctx->limit_ = options.limit;
  ctx->subtree_bytes_ = size;
  ctx->failure_handler_ = options.failure_handler;
  ctx->failure_handler_arg_ = options.failure_handler_arg;
  ctx->SetFailureDump(options.failure_dump);
  char* name_copy = reinterpret_cast<char*>(ctx) + name_offset;
  std::memcpy(name_copy, name, name_len + 1);
  ctx->name_ = name_copy;
  // Link first: the kind's init may acquire blocks, which charge ancestors.
  // A new context has no descendants, so no cached limit link can be stale:
  // no epoch bump.
  ctx->LinkUnder(parent);
  char* base = reinterpret_cast<char*>(ctx);
  if (!methods->init(ctx, kind.options(), base + header_bytes, base + size)) {
    Failure why = ctx->last_failure_;
    ctx->ReleaseSelf();
    return fail(why == Failure::kNone ? Failure::kBadArgument : why, want);
  }
  if (options.reserve_blocks != 0 &&
      !ctx->FillReserve(options.reserve_blocks, options.reserve_block_size,
                        alignment > kMinBlockAlignment ? alignment : kMinBlockAlignment)) {
    Failure why = ctx->last_failure_;
    ctx->ReleaseSelf();
    return fail(why, options.reserve_block_size);
  }
  return ctx;
}

void Context::Destroy() { TearDown(/*destroy_self=*/true, ResetOptions()); }

void Context::Reset(const ResetOptions& options) {
  TearDown(/*destroy_self=*/false, options);
}

// --- Teardown ----------------------------------------------------------------
//
// A teardown runs user code (cleanups, and failure handlers called from
// them) that may throw, longjmp, or tear down contexts itself. So nothing
// about a running teardown lives on the C++ stack, where a longjmp would
// strand it (PostgreSQL's MemoryContextDelete keeps no state across its
// callbacks for the same reason):
//   - Its progress is in the tree: a context it has reached is marked
//     kTearingDown, a cleanup is unlinked before it runs, a context is
//     unlinked from its parent when it is released. Walking the tree again
//     from any context finishes an abandoned teardown, and runs only what
//     has not run.
//   - What a running walk must learn from nested teardowns (its root or its
//     current context was released under it) is in a thread-local array of
//     walk records, not in stack frames. A longjmp leaves a record behind;
//     it is recognised as dead by its stack frame address (a live walk's
//     frame is above every frame of the code it runs) and dropped when the
//     next walk starts below it, and it is only ever compared, never read
//     through.

namespace {

struct Walk {
  const Context* root;     // compared with released contexts, never read
  const Context* node;     // the context the walk is at
  uintptr_t frame;         // the walk's stack frame
  bool root_visited;       // a nested teardown reached the root
  bool root_released;
  bool node_released;
  std::exception_ptr* error;  // the first exception a cleanup threw, if any
};

// Plain thread-local storage, with no destructor: a context may be torn down
// by a thread_local's destructor after every other thread_local of its
// thread is gone. Walks nest only when cleanups tear contexts down, so a few
// records are inline; deeper nesting moves them to the heap.
constexpr size_t kInlineWalks = 16;

struct WalkStack {
  Walk inline_walks[kInlineWalks];
  Walk* heap;        // when more than kInlineWalks are needed
  size_t capacity;   // of `heap`
  size_t count;
};

__thread WalkStack walk_stack;

Walk* Walks() { return walk_stack.heap != nullptr ? walk_stack.heap : walk_stack.inline_walks; }
Walk& WalkAt(size_t i) { return Walks()[i]; }

// Frees a thread's heap records when the thread exits (registered on first
// growth; a later teardown in the same exit starts again inline).
void DropWalks(size_t keep) {
  while (walk_stack.count > keep) {
    Walk& w = WalkAt(--walk_stack.count);
    delete w.error;
    w.error = nullptr;
  }
}

struct WalkHeapOwner {
  ~WalkHeapOwner() {
    DropWalks(0);  // no walk runs while thread_locals are destroyed
    std::free(walk_stack.heap);
    walk_stack.heap = nullptr;
    walk_stack.capacity = 0;
  }
};

// The stack grows down: a frame at a lower address than the current one
// belongs to a call that has returned (or was left by longjmp). Inlined, so
// it is the caller's frame.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline uintptr_t FrameAddress() {
  return reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
}

// Starts a walk record for `root` at stack frame `frame`; returns its index.
size_t PushWalk(const Context* root, uintptr_t frame) {
  // Records of walks whose frames are at or below this one are dead.
  size_t live = walk_stack.count;
  while (live > 0 && WalkAt(live - 1).frame <= frame) --live;
  DropWalks(live);
  if (walk_stack.count == kInlineWalks && walk_stack.heap == nullptr) {
    static thread_local WalkHeapOwner owner;
    (void)owner;
  }
  const size_t capacity = walk_stack.heap != nullptr ? walk_stack.capacity : kInlineWalks;
  if (walk_stack.count == capacity) {
    const size_t grown = capacity * 2;
    auto* heap = static_cast<Walk*>(std::malloc(grown * sizeof(Walk)));
    if (heap == nullptr) throw std::bad_alloc();
    std::memcpy(heap, Walks(), walk_stack.count * sizeof(Walk));
    std::free(walk_stack.heap);
    walk_stack.heap = heap;
    walk_stack.capacity = grown;
  }
  WalkAt(walk_stack.count) = Walk{root, root, frame, false, false, false, nullptr};
  return walk_stack.count++;
}

// Tells the other walks that the walk `me` (or nothing, for kNoWalk) has
// reached or released `ctx`.
constexpr size_t kNoWalk = ~size_t{0};

void NoteVisited(const Context* ctx, size_t me) {
  Walk* w = Walks();
  for (size_t i = 0; i < walk_stack.count; ++i) {
    if (i != me && w[i].root == ctx) w[i].root_visited = true;
  }
}

void NoteReleased(const Context* ctx, size_t me) {
  Walk* w = Walks();
  for (size_t i = 0; i < walk_stack.count; ++i) {
    if (i == me) continue;
    if (w[i].root == ctx) w[i].root_released = true;
    if (w[i].node == ctx) w[i].node_released = true;
  }
}

// Keeps the first exception a cleanup of walk `me` throws.
void KeepError(size_t me) {
  Walk& w = WalkAt(me);
  if (w.error == nullptr) w.error = new std::exception_ptr(std::current_exception());
}

// Ends walk `me` (and any dead records above it) and returns its error.
std::exception_ptr PopWalk(size_t me) {
  std::exception_ptr error;
  Walk& w = WalkAt(me);
  if (w.error != nullptr) error = std::move(*w.error);
  DropWalks(me);
  return error;
}

// Pops the walk record when the walk is left by an exception (the walk
// itself never throws past a cleanup; this covers the allocator failing).
class WalkScope {
 public:
  explicit WalkScope(size_t me) : me_(me) {}
  ~WalkScope() {
    if (me_ != kNoWalk && me_ < walk_stack.count) DropWalks(me_);
  }
  WalkScope(const WalkScope&) = delete;
  WalkScope& operator=(const WalkScope&) = delete;
  void Release() { me_ = kNoWalk; }

 private:
  size_t me_;
};

}  // namespace

// Context::DestroyChildren
//
// Each child is a teardown of its own; an exception from one is held until
// every child is gone. A walk record for this context tells the loop when a
// child's cleanup has torn this context down itself.
void Context::DestroyChildren() {
  if (!CheckLive("destroying the children")) return;
  const size_t me = PushWalk(this, FrameAddress());
  WalkScope scope(me);
  std::exception_ptr error;
  while (!WalkAt(me).root_released && first_child_ != nullptr) {
    Context* child = first_child_;
    try {
      child->Destroy();
    } catch (...) {
      if (error == nullptr) error = std::current_exception();
    }
    if (WalkAt(me).root_visited) {
      WalkAt(me).root_visited = false;
      internal::ReportMisuse(
          "a cleanup reset or destroyed context %p, or an ancestor of it, while its "
          "children were being destroyed; the inner call finished the teardown",
          static_cast<const void*>(this));
    }
    if (!WalkAt(me).root_released && first_child_ == child) break;  // refused
  }
  scope.Release();
  PopWalk(me);
  if (error != nullptr) std::rethrow_exception(error);
}

// Context::TearDown
//
// One iterative walk does reset and destroy for a whole subtree. Visiting a
// context marks it and runs its kBeforeChildren cleanups; we then descend to
// its newest child while it has children; a context without children runs
// its kAfterChildren cleanups and is released, and the walk climbs to its
// parent. So each context is torn down completely before its older sibling,
// and before its parent's kAfterChildren cleanups.
//
// Note: do not use recursion here. A chain of a million nested contexts must
// tear down in constant stack space.
//
// The walk re-reads the tree after every cleanup, so cleanups may destroy or
// create children of a context that is not yet torn down. After a cleanup
// returns, the walk's record says whether a nested teardown released the
// context the walk was at (it restarts from its root, whose subtree holds
// what is left) or the root itself (nothing is left to do).
void Context::TearDown(bool destroy_self, const ResetOptions& options) {
  if (!CheckLive(destroy_self ? "destroy" : "reset")) return;
  { UseGuard use(this); }  // another thread inside an operation now is misuse
  const size_t me = PushWalk(this, FrameAddress());
  WalkScope scope(me);
  Context* node = this;
  for (;;) {
    WalkAt(me).node = node;
    NoteVisited(node, me);
    if (node->state_ != State::kTearingDown) {
      node->state_ = State::kTearingDown;
      // Every allocation now takes the slow path, where checking builds
      // report it; the kind republishes the window when a reset ends.
      node->max_bump_ = 0;
    }
    // Also on later visits: a cleanup of a child may have registered one.
    bool undisturbed = node->RunCleanups(CleanupPhase::kBeforeChildren, me);
    if (undisturbed && node->first_child_ != nullptr) {
      node = node->first_child_;
      // Its sibling comes next: start the cache misses on its header now
      // (a destroy reads every line of it; in a big tree they are cold).
      if (node->next_sibling_ != nullptr) PrefetchHeader(node->next_sibling_);
      continue;
    }
    if (undisturbed) undisturbed = node->RunCleanups(CleanupPhase::kAfterChildren, me);
    if (!undisturbed) {
      Walk& w = WalkAt(me);
      if (w.root_visited) {
        // Report with nothing of the root read: it may be gone.
        w.root_visited = false;
        internal::ReportMisuse(
            "a cleanup reset or destroyed context %p, or an ancestor of it, while that "
            "context was being torn down; the inner call finished the teardown",
            static_cast<const void*>(this));
      }
      if (w.root_released) break;
      w.node_released = false;
      node = this;
      continue;
    }
    if (node->first_child_ != nullptr || node->cleanups_[0] != nullptr) continue;
    if (node == this) break;
    Context* parent = node->parent_;
    NoteReleased(node, me);
    node->ReleaseSelf();
    node = parent;
  }
  const bool root_released = WalkAt(me).root_released;
  scope.Release();
  std::exception_ptr error = PopWalk(me);
  if (!root_released) {
    if (destroy_self) {
      NoteReleased(this, kNoWalk);
      ReleaseSelf();
    } else {
      UseGuard use(this);
      // Every chunk of the context goes: memcheck forgets them all at once,
      // before the kind hands blocks back (a block source may write into
      // them).
      internal::ValgrindDestroyPool(this);
      ReleaseDirect();
      methods_->reset(this, options);
      internal::ValgrindCreatePool(this);
      cleanups_[0] = cleanups_[1] = nullptr;
      spare_cleanups_ = nullptr;  // their memory was just reset
      cleanup_floor_ = cleanup_serial_;  // every handle made so far is stale
      state_ = State::kLive;
    }
  }
  if (error != nullptr) std::rethrow_exception(error);
}

// Context::ReleaseSelf
//
// The header lives in the first block, so everything needed after the
// kind's release is read before the first block goes back.
void Context::ReleaseSelf() {
  internal::ValgrindDestroyPool(this);  // before blocks go back: see Reset
  if (internal::kDirect) ReleaseDirect();
  methods_->release_all(this);
  if (reserve_ != nullptr) ReleaseReserve();
  BlockSource* source = source_;
  Block first{this, first_block_size_};
  UnchargeLimits(first.size);
  CountLimited(limit_, kNoLimit);
  Unlink();
  // Checking builds clobber the first block past the header fields that the
  // release still needs; the magic below is written last.
  if (internal::kChecking) ClobberReleased(reinterpret_cast<char*>(this) + sizeof(Context),
                                           first.size - sizeof(Context));
  // Volatile: the store precedes the destructor, and an optimiser may drop
  // stores to an object whose lifetime ends next (GCC does at -O2).
  static_cast<volatile uint32_t&>(magic_) = kDeadMagic;
  this->~Context();
  if (internal::kChecking && source == DefaultBlockSource()) {
    QuarantineFirstBlock(first);
    return;
  }
  source->Release(first);
}

void Context::LinkUnder(Context* parent) {
  parent_ = parent;
  prev_sibling_ = nullptr;
  next_sibling_ = nullptr;
  if (parent == nullptr) return;
  next_sibling_ = parent->first_child_;
  if (next_sibling_ != nullptr) next_sibling_->prev_sibling_ = this;
  parent->first_child_ = this;
}

void Context::Unlink() {
  if (parent_ == nullptr) return;
  if (prev_sibling_ != nullptr) {
    prev_sibling_->next_sibling_ = next_sibling_;
  } else {
    parent_->first_child_ = next_sibling_;
  }
  if (next_sibling_ != nullptr) next_sibling_->prev_sibling_ = prev_sibling_;
  parent_ = prev_sibling_ = next_sibling_ = nullptr;
}

bool Context::IsAncestorOf(const Context* other) const {
  for (const Context* c = other ? other->parent_ : nullptr; c != nullptr; c = c->parent_) {
    if (c == this) return true;
  }
  return false;
}

// Context::SetParent
//
// PostgreSQL does not look for multi-level loops; we do, because a loop
// makes every later teardown run forever. Limits are kept exact: the moved
// subtree's bytes leave the old limited ancestors and join the new ones,
// except where the two chains share a context (a move inside one limited
// subtree changes nothing for it).
absl::Status Context::SetParent(Context* new_parent) {
  if (new_parent == parent_) return absl::OkStatus();
  if (new_parent == this || IsAncestorOf(new_parent)) {
    last_failure_ = Failure::kCycle;
    return absl::InvalidArgumentError(absl::StrFormat(
        "mcx: cannot move context '%s' under '%s': it would become its own ancestor",
        name_, new_parent->name_));
  }
  if (state_ == State::kTearingDown ||
      (new_parent != nullptr && new_parent->state_ == State::kTearingDown)) {
    last_failure_ = Failure::kBadArgument;
    return absl::FailedPreconditionError(absl::StrFormat(
        "mcx: cannot move context '%s' while a context involved is being torn down", name_));
  }
  Context* old_chain = parent_ ? parent_->NearestLimited() : nullptr;
  Context* new_chain = new_parent ? new_parent->NearestLimited() : nullptr;
  if (old_chain != nullptr || new_chain != nullptr) {
    const size_t bytes = SubtreeBytes();
    auto in_chain = [](Context* start, Context* target) {
      for (Context* l = start; l != nullptr; l = l->NextLimited()) {
        if (l == target) return true;
      }
      return false;
    };
    for (Context* l = new_chain; l != nullptr; l = l->NextLimited()) {
      if (!in_chain(old_chain, l) && bytes > l->limit_ - l->subtree_bytes_) {
        last_failure_ = Failure::kLimit;
        return absl::ResourceExhaustedError(absl::StrFormat(
            "mcx: moving context '%s' (%d bytes) under '%s' would exceed the limit of '%s' (%d bytes)",
            name_, bytes, new_parent->name_, l->name_, l->limit_));
      }
    }
    for (Context* l = old_chain; l != nullptr; l = l->NextLimited()) {
      if (!in_chain(new_chain, l)) l->subtree_bytes_ -= bytes;
    }
    for (Context* l = new_chain; l != nullptr; l = l->NextLimited()) {
      if (!in_chain(old_chain, l)) l->subtree_bytes_ += bytes;
    }
  }
  Unlink();
  LinkUnder(new_parent);
  BumpLimitEpoch();
  return absl::OkStatus();
}

// --- Limits and block accounting ---------------------------------------------

// Context::NearestLimited
//
// The nearest ancestor-or-self with a limit. Walks up to the first context
// whose cache is current (or that has a limit), then writes the answer into
// every context on the way, so a deep chain pays for the walk once per epoch.
Context* Context::NearestLimited() {
  if (limited_contexts.load(std::memory_order_relaxed) == 0) return nullptr;
  const uint64_t epoch = limit_epoch.load(std::memory_order_relaxed);
  Context* stop = this;
  Context* answer = nullptr;
  for (; stop != nullptr; stop = stop->parent_) {
    if (stop->limit_epoch_ == epoch) {
      answer = stop->limit_link_;
      break;
    }
    if (stop->limit_ != kNoLimit) {
      answer = stop;
      break;
    }
  }
  for (Context* c = this; c != stop; c = c->parent_) {
    c->limit_link_ = answer;
    c->limit_epoch_ = epoch;
  }
  if (stop != nullptr) {
    stop->limit_link_ = answer;
    stop->limit_epoch_ = epoch;
  }
  return answer;
}

// The next limited context above this (limited) one.
Context* Context::NextLimited() { return parent_ != nullptr ? parent_->NearestLimited() : nullptr; }

bool Context::ChargeLimits(size_t bytes) {
  Context* first = NearestLimited();
  if (first == nullptr) return true;
  for (Context* l = first; l != nullptr; l = l->NextLimited()) {
    if (bytes > l->limit_ - l->subtree_bytes_) return false;
  }
  for (Context* l = first; l != nullptr; l = l->NextLimited()) {
    l->subtree_bytes_ += bytes;
  }
  return true;
}

void Context::UnchargeLimits(size_t bytes) {
  for (Context* l = NearestLimited(); l != nullptr; l = l->NextLimited()) {
    l->subtree_bytes_ -= bytes;
  }
}

absl::Status Context::SetLimit(size_t bytes) {
  if (bytes == kNoLimit) {
    CountLimited(limit_, kNoLimit);
    limit_ = kNoLimit;
    BumpLimitEpoch();
    return absl::OkStatus();
  }
  size_t held = SubtreeBytes();
  if (held > bytes) {
    last_failure_ = Failure::kLimit;
    return absl::FailedPreconditionError(absl::StrFormat(
        "mcx: context '%s' already holds %d bytes in its subtree, more than the limit %d",
        name_, held, bytes));
  }
  CountLimited(limit_, bytes);
  limit_ = bytes;
  subtree_bytes_ = held;
  BumpLimitEpoch();
  return absl::OkStatus();
}

size_t Context::SubtreeBytes() const {
  size_t total = 0;
  const Context* c = this;
  while (c != nullptr) {
    total += c->mem_allocated_ + c->reserve_bytes_ + c->direct_bytes_;
    if (c->first_child_ != nullptr) {
      c = c->first_child_;
      continue;
    }
    while (c != this && c->next_sibling_ == nullptr) c = c->parent_;
    c = (c == this) ? nullptr : c->next_sibling_;
  }
  return total;
}

// Context::AcquireBlock
//
// Every block a kind uses comes through here: the limits are charged before
// the source is asked (so a limit never costs a system call), and the charge
// is undone if the source fails.
void* Context::AcquireBlock(size_t min_size, size_t alignment, size_t* actual,
                           size_t usable_size) {
  if (!ChargeLimits(min_size)) {
    last_failure_ = Failure::kLimit;
    return nullptr;
  }
  Block block = AcquireFrom(source_, min_size, alignment);
  if (block.ptr == nullptr) {
    UnchargeLimits(min_size);
    if (void* r = TakeFromReserve(usable_size != 0 ? usable_size : min_size, alignment, actual)) {
      return r;
    }
    last_failure_ = Failure::kOutOfMemory;
    return nullptr;
  }
  size_t size = min_size;
  if (block.size > min_size && ChargeLimits(block.size - min_size)) size = block.size;
  mem_allocated_ += size;
  ++num_blocks_;
  *actual = size;
  return block.ptr;
}

void Context::ReleaseBlock(void* block, size_t size) {
  mem_allocated_ -= size;
  --num_blocks_;
  ClobberReleased(block, size);
  if (KeepForReserve(block, size)) return;
  UnchargeLimits(size);
  source_->Release(Block{block, size});
}

// Checking builds clobber every block they give back, so a stale pointer
// into it reads 0x7F (and its chunk header reserved kind id 15: "freed, reset
// or destroyed") for as long as the memory is not reused.
void Context::ClobberReleased(void* block, size_t size) {
  if (!internal::kChecking) return;
  internal::UnpoisonMemoryRegion(block, size);
  std::memset(block, internal::kClobberByte, size);
}

// --- The reserve -------------------------------------------------------------
//
// Reserve blocks stay charged to the limits while they are held: the reserve
// is memory the subtree owns. Handing one out or taking one back moves bytes
// between the reserve and bytes_in_blocks() without touching the limits.

bool Context::FillReserve(size_t blocks, size_t block_size, size_t alignment) {
  if (block_size < sizeof(ReserveBlock)) block_size = sizeof(ReserveBlock);
  // The whole reserve must be a size mcx could hand out at all: refused
  // before any reserve block is acquired (an absurd count would otherwise
  // take blocks until the source fails).
  if (blocks > kMaxAllocSize / block_size) {
    last_failure_ = Failure::kBadSize;
    return false;
  }
  reserve_target_ = blocks;
  reserve_block_size_ = block_size;
  while (reserve_count_ < blocks) {
    if (!ChargeLimits(block_size)) {
      last_failure_ = Failure::kLimit;
      return false;
    }
    Block b = AcquireFrom(source_, block_size, alignment);
    if (b.ptr == nullptr) {
      UnchargeLimits(block_size);
      last_failure_ = Failure::kOutOfMemory;
      return false;
    }
    // Its slack is not charged, so it is not used either.
    auto* r = static_cast<ReserveBlock*>(b.ptr);
    r->size = block_size;
    r->next = reserve_;
    reserve_ = r;
    ++reserve_count_;
    reserve_bytes_ += block_size;
  }
  return true;
}

// The first reserve block that is large enough and whose address has the
// alignment: reserve blocks are acquired with the kind's block alignment (a
// rewind_on_free pool aligns its blocks to their size), and blocks kept from
// returns have whatever alignment they came with.
void* Context::TakeFromReserve(size_t min_size, size_t alignment, size_t* actual) {
  ReserveBlock** link = &reserve_;
  while (*link != nullptr && ((*link)->size < min_size ||
                              (reinterpret_cast<uintptr_t>(*link) & (alignment - 1)) != 0)) {
    link = &(*link)->next;
  }
  ReserveBlock* r = *link;
  if (r == nullptr) return nullptr;
  *link = r->next;
  --reserve_count_;
  reserve_bytes_ -= r->size;
  ++reserve_uses_;
  mem_allocated_ += r->size;
  ++num_blocks_;
  *actual = r->size;
  return r;
}

// Keeps a returning block for the reserve when the reserve is short and the
// block is a sensible size for it (at least a reserve block, and not so
// large that keeping it would pin much more than the reserve was asked for).
bool Context::KeepForReserve(void* block, size_t size) {
  constexpr size_t kMaxOversize = 4;  // a kept block may be up to 4x a reserve block
  if (reserve_count_ >= reserve_target_ || size < reserve_block_size_ ||
      size / kMaxOversize > reserve_block_size_) {
    return false;
  }
  auto* r = static_cast<ReserveBlock*>(block);
  // The kind may have left the block poisoned, and under Valgrind a reset has
  // already announced its chunks freed: the header is the reserve's now.
  internal::UnpoisonMemoryRegion(r, sizeof(ReserveBlock));
  r->size = size;
  r->next = reserve_;
  reserve_ = r;
  ++reserve_count_;
  reserve_bytes_ += size;
  return true;
}

void Context::ReleaseReserve() {
  reserve_target_ = 0;
  while (ReserveBlock* r = reserve_) {
    reserve_ = r->next;
    size_t size = r->size;
    UnchargeLimits(size);
    source_->Release(Block{r, size});
  }
  reserve_count_ = 0;
  reserve_bytes_ = 0;
}

Block Context::ReallocateBlock(Block block, size_t keep, size_t new_min_size,
                               size_t alignment) {
  const size_t grow = new_min_size > block.size ? new_min_size - block.size : 0;
  if (grow != 0 && !ChargeLimits(grow)) {
    last_failure_ = Failure::kLimit;
    return Block{};
  }
  Block fresh = source_->Reallocate(block, keep, new_min_size, alignment);
  if (fresh.ptr == nullptr) {
    if (grow != 0) UnchargeLimits(grow);
    last_failure_ = Failure::kOutOfMemory;
    return Block{};
  }
  // Account the new size exactly: the charge so far covers max(old, new_min).
  size_t charged = block.size + grow;
  size_t size = new_min_size;
  if (fresh.size > new_min_size && ChargeLimits(fresh.size - new_min_size)) {
    size = fresh.size;
    charged += fresh.size - new_min_size;
  }
  UnchargeLimits(charged - size);
  mem_allocated_ = mem_allocated_ - block.size + size;
  fresh.size = size;
  return fresh;
}

// --- Allocation --------------------------------------------------------------

// Context::AllocSlow
//
// Everything the inline fast path does not serve: sizes it does not take,
// kinds without a bump window, a full window. The kind's alloc may acquire
// blocks; it reports failure by returning nullptr with last_failure_ set.
// The concurrency check (UseGuard) covers the kind's work only: it is
// released before Fail calls the failure handler, which may longjmp past
// any destructor or tear this context down.
void* Context::AllocSlow(size_t size, size_t alignment, unsigned flags) {
  if (ABSL_PREDICT_FALSE(size > kMaxAllocSize)) return Fail(Failure::kBadSize, size, flags);
  if (internal::kChecking && !CheckLive("allocation")) return Fail(Failure::kBadArgument, size, flags);
  void* p;
  {
    UseGuard use(this);
    CheckNotTearingDown("allocation");
    p = internal::kDirect ? DirectAlloc(size, alignment) : methods_->alloc(this, size, alignment);
  }
  if (ABSL_PREDICT_FALSE(p == nullptr)) return Fail(last_failure_, size, flags);
  internal::ValgrindChunkAlloc(this, p, size);
  return p;
}

void* Context::AllocAlignedImpl(size_t size, size_t alignment, unsigned flags) {
  if (!IsPowerOfTwo(alignment) || alignment > kMaxAlignment) {
    return Fail(Failure::kBadAlignment, size, flags);
  }
  if (alignment < kDefaultAlignment) alignment = kDefaultAlignment;
  void* p = TryBump(size, alignment);
  if (p != nullptr) return p;
  return AllocSlow(size, alignment, flags);
}

void* Context::AllocAligned(size_t size, size_t alignment) {
  return AllocAlignedImpl(size, alignment, kThrow);
}

void* Context::TryAllocAligned(size_t size, size_t alignment) noexcept {
  return AllocAlignedImpl(size, alignment, kNoThrow);
}

void* Context::AllocZeroArray(size_t count, size_t size) {
  size_t bytes;
  if (__builtin_mul_overflow(count, size, &bytes)) return Fail(Failure::kBadSize, ~size_t{0}, kThrow);
  return AllocZero(bytes);
}

void* Context::TryAllocZeroArray(size_t count, size_t size) noexcept {
  size_t bytes;
  if (__builtin_mul_overflow(count, size, &bytes)) return Fail(Failure::kBadSize, ~size_t{0}, kNoThrow);
  return TryAllocZero(bytes);
}

char* Context::Strdup(std::string_view s) {
  if (s.size() >= kMaxAllocSize) return static_cast<char*>(Fail(Failure::kBadSize, s.size(), kThrow));
  char* p = static_cast<char*>(AllocBytes(s.size() + 1));
  std::memcpy(p, s.data(), s.size());
  p[s.size()] = '\0';
  return p;
}

void* Context::ReallocImpl(void* p, size_t old_size, size_t new_size, unsigned flags) {
  if (p == nullptr) return AllocSlow(new_size, kDefaultAlignment, flags);
  if (new_size > kMaxAllocSize) return Fail(Failure::kBadSize, new_size, flags);
  void* q;
  {
    UseGuard use(this);  // not across Fail: see AllocSlow
    q = internal::kDirect ? DirectRealloc(p, new_size)
                          : methods_->realloc(this, p, old_size, new_size);
  }
  if (q == nullptr) return Fail(last_failure_, new_size, flags);
  internal::ValgrindChunkMove(this, p, q, new_size);
  return q;
}

void* Context::Realloc(void* p, size_t new_size) {
  return ReallocImpl(p, kUnknownSize, new_size, kThrow);
}
void* Context::TryRealloc(void* p, size_t new_size) noexcept {
  return ReallocImpl(p, kUnknownSize, new_size, kNoThrow);
}
void* Context::Realloc(void* p, size_t old_size, size_t new_size) {
  return ReallocImpl(p, old_size, new_size, kThrow);
}
void* Context::TryRealloc(void* p, size_t old_size, size_t new_size) noexcept {
  return ReallocImpl(p, old_size, new_size, kNoThrow);
}

void Context::FreeChecked(void* p) {
  if (internal::kChecking && !CheckLive("free")) return;
  UseGuard use(this);
  if (internal::kDirect) {
    DirectFree(p);
  } else {
    methods_->free(this, p);
  }
  internal::ValgrindChunkFree(this, p);
}

size_t Context::ChunkSize(const void* p) const {
  if (p == nullptr) return 0;
  if (internal::kDirect) return DirectChunkSize(p);
  return methods_->chunk_size(this, p);
}

bool Context::Check(std::string* error) const {
  std::string scratch;
  return methods_->check(this, error != nullptr ? error : &scratch);
}

// Context::Fail
//
// The one failure path. Try-calls stop at recording the reason; throwing
// calls give the nearest handler a chance (it may log, dump stats, longjmp or
// throw its own exception) and then throw.
//
// Out of memory and limits first write the failure dump, if one is set
// (dump.h), as PostgreSQL prints MemoryContextStats before its "out of
// memory" error: before the handler, which may longjmp past any later point.
// Try-calls do not dump, like PostgreSQL's MCXT_ALLOC_NO_OOM: they expect
// to fail and handle it.
void* Context::Fail(Failure failure, size_t size, unsigned flags) {
  last_failure_ = failure;
  if (flags & kNoThrow) return nullptr;
  if (failure == Failure::kOutOfMemory || failure == Failure::kLimit) {
    internal::DumpOnFailure(this, failure, size);
  }
  // Nothing of this context is read after the handler: it may have reset
  // or destroyed an ancestor, and this context with it. The message is made
  // before, in a buffer on the stack: a handler that longjmps must not leave
  // a heap string behind.
  char message[kFailureMessageBytes];
  message[0] = '\0';
  if (ThrowsInvalidArgument(failure)) {
    std::snprintf(message, sizeof(message), "mcx: %s in context '%s'", FailureName(failure),
                  name_);
  }
  for (Context* c = this; c != nullptr; c = c->parent_) {
    if (c->failure_handler_ != nullptr) {
      FailureInfo info{this, name_, failure, size, c->failure_handler_arg_};
      c->failure_handler_(info);
      break;
    }
  }
  ThrowFor(failure, message);
}

// --- Cleanups ----------------------------------------------------------------

CleanupRecord* Context::NewCleanupRecord(unsigned flags) {
  if (spare_cleanups_ != nullptr) {
    CleanupRecord* r = spare_cleanups_;
    spare_cleanups_ = r->next;
    return r;
  }
  static_assert(alignof(CleanupRecord) <= kDefaultAlignment, "");
  return static_cast<CleanupRecord*>(flags & kNoThrow ? TryAlloc(sizeof(CleanupRecord))
                                                      : Alloc(sizeof(CleanupRecord)));
}

void Context::ReturnCleanupRecord(CleanupRecord* r) {
  r->serial = 0;
  r->next = spare_cleanups_;
  spare_cleanups_ = r;
}

CleanupHandle Context::CommitCleanup(CleanupRecord* r, CleanupFn fn, void* arg,
                                     CleanupFn destroy, CleanupPhase phase) {
  r->fn = fn;
  r->arg = arg;
  r->destroy = destroy;
  r->serial = ++cleanup_serial_;
  LinkCleanup(r, phase);
  return CleanupHandle(r, r->serial);
}

void Context::LinkCleanup(CleanupRecord* r, CleanupPhase phase) {
  CleanupRecord*& head = cleanups_[static_cast<int>(phase)];
  r->phase = phase;
  r->owner = this;
  r->prev = nullptr;
  r->next = head;
  if (head != nullptr) head->prev = r;
  head = r;
}

// Unlinks and recycles a record; its serial goes, so every handle of it is
// stale from now on.
void Context::UnlinkCleanup(CleanupRecord* r) {
  CleanupRecord*& head = cleanups_[static_cast<int>(r->phase)];
  if (r->prev != nullptr) {
    r->prev->next = r->next;
  } else {
    head = r->next;
  }
  if (r->next != nullptr) r->next->prev = r->prev;
  r->prev = nullptr;
  ReturnCleanupRecord(r);
}

void Context::CheckNotTearingDown(const char* operation) const {
  if (internal::kChecking && state_ == State::kTearingDown) {
    internal::ReportMisuse("%s in context '%s' at %p while it is being torn down", operation,
                           name_, static_cast<const void*>(this));
  }
}

CleanupHandle Context::AddCleanup(CleanupFn fn, void* arg, CleanupPhase phase) {
  CheckNotTearingDown("registering a cleanup");
  if (fn == nullptr) {
    Fail(Failure::kBadArgument, 0, kThrow);
  }
  return CommitCleanup(NewCleanupRecord(kThrow), fn, arg, nullptr, phase);
}

CleanupHandle Context::TryAddCleanup(CleanupFn fn, void* arg, CleanupPhase phase) noexcept {
  CheckNotTearingDown("registering a cleanup");
  if (fn == nullptr) {
    last_failure_ = Failure::kBadArgument;
    return CleanupHandle();
  }
  CleanupRecord* r = NewCleanupRecord(kNoThrow);
  if (r == nullptr) return CleanupHandle();
  return CommitCleanup(r, fn, arg, nullptr, phase);
}

// Context::LiveCleanup
//
// The record behind a handle if that registration is still in place on this
// context; nullptr for an empty or stale handle. A handle from before this
// context's latest reset, or with a serial this context never gave, is
// refused without reading the record (its memory may be gone). Otherwise
// the record is in live memory: a handle of another context whose serial
// happens to be in range is misuse (reported when `report_foreign`), and a
// record whose serial differs has run, been removed or been reused.
CleanupRecord* Context::LiveCleanup(CleanupHandle handle, bool report_foreign) const {
  CleanupRecord* r = handle.record_;
  if (r == nullptr || handle.serial_ <= cleanup_floor_ || handle.serial_ > cleanup_serial_) {
    return nullptr;
  }
  if (r->owner != this) {
    if (report_foreign) {
      internal::ReportMisuse("cleanup %p belongs to context '%s', not '%s'",
                             static_cast<void*>(r), r->owner->name_, name_);
    }
    return nullptr;
  }
  return r->serial == handle.serial_ ? r : nullptr;
}

bool Context::RemoveCleanup(CleanupHandle handle) {
  CleanupRecord* r = LiveCleanup(handle, /*report_foreign=*/true);
  if (r == nullptr) return false;
  CleanupFn destroy = r->destroy;
  void* storage = r->arg;
  UnlinkCleanup(r);
  if (destroy != nullptr) {  // a callable: destroy it unrun, free its storage
    destroy(storage);
    Free(storage);
  }
  return true;
}

bool Context::RunCleanup(CleanupHandle handle) {
  CleanupRecord* r = LiveCleanup(handle, /*report_foreign=*/true);
  if (r == nullptr) return false;
  CleanupFn fn = r->fn;
  void* arg = r->arg;
  bool owned = r->destroy != nullptr;
  UnlinkCleanup(r);
  if (!owned) {
    fn(arg);
    return true;
  }
  // The callable's storage goes either way (a teardown frees it wholesale).
  try {
    fn(arg);
  } catch (...) {
    Free(arg);
    throw;
  }
  Free(arg);
  return true;
}

// Context::RunCleanups
//
// Pops before calling, as PostgreSQL does: a cleanup is removed when it runs,
// so it can never run twice, whatever it does. An exception is kept in the
// walk's record (the first one) and the walk goes on. Returns false when a
// nested teardown reached the walk's root or released the context it is at
// (this one): the caller must look before touching anything.
bool Context::RunCleanups(CleanupPhase phase, size_t walk) {
  CleanupRecord** head = &cleanups_[static_cast<int>(phase)];
  while (*head != nullptr) {
    CleanupRecord* r = *head;
    CleanupFn fn = r->fn;
    void* arg = r->arg;
    UnlinkCleanup(r);
    try {
      fn(arg);
    } catch (...) {
      KeepError(walk);
    }
    const Walk& w = WalkAt(walk);
    if (w.root_visited || w.root_released || w.node_released) return false;
  }
  return true;
}

// --- Direct mode ---------------------------------------------------------------
//
// Every chunk is a block of its own, acquired from the context's source with
// exactly the bytes it needs, so the chunk ends where the block ends and
// AddressSanitizer's redzone follows it. The chunks of a context are on a
// doubly linked list, released at reset and destroy; limits apply as to any
// block. Layout: [padding][DirectHeader][header word][payload], the payload
// at max(64, alignment) bytes from the block's start.

struct Context::DirectHeader {
  DirectHeader* prev;
  DirectHeader* next;
  Context* owner;
  size_t block_size;  // bytes acquired
  size_t requested;
  size_t offset;      // from the block's start to the payload
};

namespace {
constexpr size_t kDirectPrefix = 64;  // header (48) + header word (8), 16-aligned
static_assert(6 * sizeof(void*) + sizeof(uint64_t) <= kDirectPrefix, "direct header");
}  // namespace

void* Context::DirectAlloc(size_t size, size_t alignment) {
  const size_t prefix = alignment > kDirectPrefix ? alignment : kDirectPrefix;
  const size_t want = prefix + (size == 0 ? 1 : size);
  if (!ChargeLimits(want)) {
    last_failure_ = Failure::kLimit;
    return nullptr;
  }
  Block b = AcquireFrom(source_, want,
                        alignment > kMinBlockAlignment ? alignment : kMinBlockAlignment);
  if (b.ptr == nullptr) {
    UnchargeLimits(want);
    last_failure_ = Failure::kOutOfMemory;
    return nullptr;
  }
  char* payload = static_cast<char*>(b.ptr) + prefix;
  auto* h = reinterpret_cast<DirectHeader*>(payload - sizeof(uint64_t) - sizeof(DirectHeader));
  *h = DirectHeader{nullptr, direct_head_, this, want, size, prefix};
  if (direct_head_ != nullptr) direct_head_->prev = h;
  direct_head_ = h;
  WriteChunkHeader(payload, MakeChunkHeader(kChunkKindDirect, true, 0, sizeof(DirectHeader)));
  direct_bytes_ += want;
  ++direct_chunks_;
  return payload;
}

void Context::DirectFree(void* p) {
  const uint64_t word = ReadChunkHeader(p);
  if (!ChunkHeaderMagicOk(word) || ChunkHeaderKind(word) != kChunkKindDirect) {
    return internal::ReportBadChunk(p, "free");
  }
  auto* h = reinterpret_cast<DirectHeader*>(static_cast<char*>(p) - sizeof(uint64_t) -
                                            sizeof(DirectHeader));
  if (h->owner != this) {
    return internal::ReportMisuse("free of chunk %p through context '%s', but it belongs to '%s'",
                                  p, name_, h->owner->name_);
  }
  if (h->prev != nullptr) h->prev->next = h->next; else direct_head_ = h->next;
  if (h->next != nullptr) h->next->prev = h->prev;
  direct_bytes_ -= h->block_size;
  --direct_chunks_;
  UnchargeLimits(h->block_size);
  source_->Release(Block{static_cast<char*>(p) - h->offset, h->block_size});
}

void* Context::DirectRealloc(void* p, size_t new_size) {
  const uint64_t word = ReadChunkHeader(p);
  if (!ChunkHeaderMagicOk(word) || ChunkHeaderKind(word) != kChunkKindDirect) {
    internal::ReportBadChunk(p, "realloc");
    last_failure_ = Failure::kBadArgument;
    return nullptr;
  }
  const size_t old = DirectChunkSize(p);
  void* q = DirectAlloc(new_size, kDefaultAlignment);
  if (q == nullptr) return nullptr;
  std::memcpy(q, p, old < new_size ? old : new_size);
  DirectFree(p);
  return q;
}

size_t Context::DirectChunkSize(const void* p) const {
  return reinterpret_cast<const DirectHeader*>(static_cast<const char*>(p) - sizeof(uint64_t) -
                                               sizeof(DirectHeader))
      ->requested;
}

void Context::ReleaseDirect() {
  while (direct_head_ != nullptr) {
    DirectFree(reinterpret_cast<char*>(direct_head_) + sizeof(DirectHeader) + sizeof(uint64_t));
  }
}

// mcx::Free(p) and friends reach direct chunks through their header word.
struct DirectChunkAccess {
  static Context* Owner(const void* p) {
    return reinterpret_cast<const Context::DirectHeader*>(static_cast<const char*>(p) -
                                                          sizeof(uint64_t) -
                                                          sizeof(Context::DirectHeader))
        ->owner;
  }
  static size_t Size(const void* p) { return Owner(p)->DirectChunkSize(p); }
};

void RegisterDirectChunks() {
  static const ChunkKindMethods kDirectMethods = {"direct", &DirectChunkAccess::Owner,
                                                  &DirectChunkAccess::Size};
  RegisterChunkKind(kChunkKindDirect, &kDirectMethods);
}

}  // namespace mcx
