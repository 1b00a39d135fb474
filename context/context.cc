// The generic context tree: creation, the links of the tree, reparenting,
// and teardown in its fixed order. Everything kind-specific goes through
// `KindMethods`; blocks and limits are the ledger's (block_ledger.cc),
// cleanup records cleanup.cc's, allocation allocation.cc's, the failure path
// failure.cc's.

#include "mcx/context/budget.h"
#include "mcx/context/context.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/cleanup.h"
#include "mcx/context/internal/context_impl.h"
#include "mcx/context/internal/extras.h"
#include "mcx/context/internal/failure.h"
#include "mcx/context/internal/mark.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/context/internal/valgrind.h"
#include "mcx/context/kind_api.h"

namespace mcx {

using internal::CleanupRecord;
using internal::ContextExtras;
using internal::MarkRecord;

namespace {

constexpr size_t RoundUp(size_t n, size_t alignment) {
  return (n + alignment - 1) & ~(alignment - 1);
}

// Starts loading every cache line of a context header.
void PrefetchHeader(const Context* ctx) {
  constexpr size_t kCacheLine = 64;
  const char* p = reinterpret_cast<const char*>(ctx);
  for (size_t off = 0; off < sizeof(Context); off += kCacheLine) __builtin_prefetch(p + off);
}

using internal::kFirstBlockSizeOffset;

inline size_t ReadFirstBlockSize(const Context* ctx) {
  size_t size;
  std::memcpy(&size, reinterpret_cast<const char*>(ctx) + kFirstBlockSizeOffset, sizeof(size));
  return size;
}

}  // namespace

// --- Checks ------------------------------------------------------------------

namespace {

// Checking builds: the first blocks of destroyed contexts on the default
// source wait here before they go back, so that a second Destroy of the same
// context finds the dead magic (and clobbered memory) instead of a new
// context in the same block: the default cache hands a released block to
// the next creation at once. A stale Destroy is caught until this many more
// contexts have been destroyed. Not a source that SetDefaultBlockSource
// installed: a program's own region (a small static buddy region) must not
// lose that many blocks to a check, nor see them held after every context
// is gone.
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
[[maybe_unused]] thread_local char thread_token;
}  // namespace

void Context::UseGuard::Enter(Context* ctx) {
#if MCX_CHECKING
  if (ctx->methods_->lock != nullptr) return;  // many threads at once: the kind checks
  const void* me = &thread_token;
  const void* expected = nullptr;
  if (!ctx->user_.compare_exchange_strong(expected, me, std::memory_order_acquire) &&
      expected != me) {
    internal::ReportMisuse("context '%s' at %p is used from two threads at the same time",
                           ctx->name(), static_cast<void*>(ctx));
  }
  ++ctx->use_depth_;
#else
  (void)ctx;
#endif
}

void Context::UseGuard::Leave(Context* ctx) {
#if MCX_CHECKING
  if (ctx->methods_->lock != nullptr) return;
  if (--ctx->use_depth_ == 0) ctx->user_.store(nullptr, std::memory_order_release);
#else
  (void)ctx;
#endif
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
  uint16_t state;
  if (internal::kAddressSanitizer) {
    internal::CopyFromPoisoned(&state, &state_, sizeof(state));
  } else {
    state = static_cast<uint16_t>(state_);
  }
  if (IsContextState(state)) return true;
  internal::ReportMisuse("%s of context at %p, which was already destroyed (or was never a context)",
                         operation, static_cast<const void*>(this));
  return false;
}

// --- Lifecycle ---------------------------------------------------------------

Context* Context::Create(Context* parent, const char* name,
                         const KindSpec& kind, const ContextOptions& options) {
  return CreateImpl(parent, name, kind, &options, kThrow);
}

Context* Context::TryCreate(Context* parent, const char* name,
                            const KindSpec& kind,
                            const ContextOptions& options) noexcept {
  return CreateImpl(parent, name, kind, &options, kNoThrow);
}

Context* Context::CreateFailed(Context* parent, Failure failure, size_t size, unsigned flags,
                               const char* name) {
  if (parent != nullptr) return static_cast<Context*>(parent->Fail(failure, size, flags));
  if (flags & kNoThrow) return nullptr;
  internal::ThrowCreateFailure(failure, name);
}

Context* Context::UndoCreate(Context* ctx, Failure why, size_t size, unsigned flags,
                             const char* name) {
  Context* parent = ctx->parent_;
  ctx->ReleaseSelf();
  return CreateFailed(parent, why == Failure::kNone ? Failure::kBadArgument : why, size, flags,
                      name);
}

namespace {

// Whether creation needs the side record: any option beyond the kind's.
bool NeedsExtras(const ContextOptions& o) {
  return o.limit != kNoLimit || o.failure_handler != nullptr || o.reserve_blocks != 0 ||
         o.failure_dump.fd != kFailureDumpInherit ||
         o.failure_dump.max_depth != kFailureDumpDefaultDepth ||
         o.failure_dump.max_children != kFailureDumpDefaultChildren || o.allow_in_no_alloc_scope;
}

}  // namespace

// Context::CreateImpl
//
// The context header, the kind state and a copy of the name share the first
// block, so creating a child costs one block acquisition (PostgreSQL and nginx
// do the same). The block is charged to the parent's limits before it is
// acquired, so a limit refuses the child without touching the source.
//
// Cost note: this is the whole of a context's creation, on the path of every
// per-request and per-node context (W4, W11). Default options (`options`
// nullptr) read nothing of a ContextOptions; everything else is one test.
Context* Context::CreateImpl(Context* parent, const char* name,
                             const KindSpec& kind,
                             const ContextOptions* options, unsigned flags) {
  auto fail = [&](Failure failure, size_t size) {
    return CreateFailed(parent, failure, size, flags, name);
  };
  const KindMethods* methods = kind.methods();
  if (ABSL_PREDICT_FALSE(name == nullptr || methods == nullptr)) {
    return fail(Failure::kBadArgument, 0);
  }
  if (parent != nullptr && ABSL_PREDICT_FALSE(parent->state_ == State::kTearingDown)) {
    internal::ReportMisuse("creating a child of context '%s' while it is being torn down",
                           parent->name());
    return fail(Failure::kBadArgument, 0);
  }
  const size_t name_len = std::strlen(name);
  // The first block's size, the kind's state, then the name.
  const size_t name_offset =
      internal::CreateAccess::NameOffset(methods->state_alignment, methods->state_size);
  if (ABSL_PREDICT_FALSE(name_len > kMaxAllocSize - name_offset)) {
    return fail(Failure::kBadSize, name_len);
  }
  const size_t header_bytes = RoundUp(name_offset + name_len + 1, kDefaultAlignment);
  const size_t learned = parent != nullptr ? parent->LearnedFirstBlock() : kDefaultFirstBlockSize;
  const FirstBlockSpec first = methods->first_block(kind.options(), header_bytes, learned);
  const size_t want = first.size;
  if (ABSL_PREDICT_FALSE(want == 0 || want < header_bytes || want > kMaxFirstBlockSize)) {
    return fail(Failure::kBadSize, want);
  }
  const size_t alignment = first.alignment;
  const size_t limit = options != nullptr ? options->limit : kNoLimit;
  // A shared context carries no limit of its own (shared.h; its Init
  // refuses one above it).
  if (limit != kNoLimit && methods->lock != nullptr) return fail(Failure::kBadArgument, want);
  if (limit != kNoLimit && want > limit) return fail(Failure::kLimit, want);

  BlockSource* source = options != nullptr ? options->block_source : nullptr;
  if (source == nullptr) source = parent != nullptr ? parent->source_ : DefaultBlockSource();
  // No context is created inside a NoAllocScope: its first block would come
  // from the source.
  if (ABSL_PREDICT_FALSE(internal::no_alloc_depth != 0)) return fail(Failure::kForbidden, want);
  if (parent != nullptr && !parent->ChargeBlock(want) && !parent->ChargeRefused(want, flags)) {
    return fail(Failure::kLimit, want);
  }
  Block block = internal::AcquireFrom(source, want, alignment);
  if (ABSL_PREDICT_FALSE(block.ptr == nullptr)) {
    if (parent != nullptr) parent->UnchargeLimits(want);
    return fail(Failure::kOutOfMemory, want);
  }
  // Use the source's slack only where every limit has room for it, and the
  // kinds' 32-bit fields can say it.
  size_t size = want;
  if (block.size > want) {
    size_t slack = (block.size < kMaxFirstBlockSize ? block.size : kMaxFirstBlockSize) - want;
    bool fits = limit == kNoLimit || want + slack <= limit;
    if (fits && (parent == nullptr || parent->ChargeLimits(slack))) size = want + slack;
  }

  Context* ctx = internal::CreateAccess::PlaceHeader(methods, source, block.ptr, size, name,
                                                     name_len, name_offset, parent);
  auto undo = [&](Failure why, size_t size) { return UndoCreate(ctx, why, size, flags, name); };
  char* base = reinterpret_cast<char*>(ctx);
  if (ABSL_PREDICT_FALSE(!methods->init(ctx, kind.options(), base + header_bytes, base + size))) {
    return undo(ctx->last_failure_, want);
  }
  ctx->state_ = State::kLive;  // the ledger may refuse its blocks from now on (pressure.cc)
  if (options == nullptr) return ctx;
  if (NeedsExtras(*options)) {
    ContextExtras* x = ctx->Extras();
    if (x == nullptr) return undo(ctx->last_failure_, sizeof(ContextExtras));
    x->handler = options->failure_handler;
    x->handler_arg = options->failure_handler_arg;
    x->dump_fd = options->failure_dump.fd;
    x->dump_depth = internal::ClampDumpLimit(options->failure_dump.max_depth);
    x->dump_children = internal::ClampDumpLimit(options->failure_dump.max_children);
    x->allow_in_no_alloc_scope = options->allow_in_no_alloc_scope;
    if (limit != kNoLimit) {
      x->subtree_bytes = ctx->SubtreeBytes();
      if (x->subtree_bytes > limit) return undo(Failure::kLimit, x->subtree_bytes);
      internal::CountLimited(kNoLimit, limit);
      x->limit = limit;
    }
  }
  if (options->reserve_blocks != 0 &&
      !ctx->FillReserve(options->reserve_blocks, options->reserve_block_size,
                        alignment > kMinBlockAlignment ? alignment : kMinBlockAlignment)) {
    return undo(ctx->last_failure_, options->reserve_block_size);
  }
  ctx->ExpectAllFreed(options->expect_all_freed);
  return ctx;
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

using internal::FrameAddress;

// Starts a walk record for `root` at stack frame `frame`; returns its index.
ABSL_ATTRIBUTE_NOINLINE size_t PushWalkSlow(const Context* root, uintptr_t frame) {
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

// The usual case, inline: no other walk on the thread.
inline size_t PushWalk(const Context* root, uintptr_t frame) {
  if (ABSL_PREDICT_TRUE(walk_stack.count == 0 && walk_stack.heap == nullptr)) {
    walk_stack.inline_walks[0] = Walk{root, root, frame, false, false, false, nullptr};
    walk_stack.count = 1;
    return 0;
  }
  return PushWalkSlow(root, frame);
}

// Tells the other walks that the walk `me` (or nothing, for kNoWalk) has
// reached or released `ctx`. Inline, the test for "there are none".
constexpr size_t kNoWalk = ~size_t{0};

ABSL_ATTRIBUTE_NOINLINE void NoteVisitedSlow(const Context* ctx, size_t me) {
  Walk* w = Walks();
  for (size_t i = 0; i < walk_stack.count; ++i) {
    if (i != me && w[i].root == ctx) w[i].root_visited = true;
  }
}

inline void NoteVisited(const Context* ctx, size_t me) {
  if (walk_stack.count > 1) NoteVisitedSlow(ctx, me);
}

ABSL_ATTRIBUTE_NOINLINE void NoteReleasedSlow(const Context* ctx, size_t me) {
  Walk* w = Walks();
  for (size_t i = 0; i < walk_stack.count; ++i) {
    if (i == me) continue;
    if (w[i].root == ctx) w[i].root_released = true;
    if (w[i].node == ctx) w[i].node_released = true;
  }
}

inline void NoteReleased(const Context* ctx, size_t me) {
  if (walk_stack.count > (me == kNoWalk ? 0 : 1)) NoteReleasedSlow(ctx, me);
}

// Keeps the first exception a cleanup of walk `me` throws.
void KeepError(size_t me) {
  Walk& w = WalkAt(me);
  if (w.error == nullptr) w.error = new std::exception_ptr(std::current_exception());
}

// Ends walk `me` (and any dead records above it) and returns its error.
inline std::exception_ptr PopWalk(size_t me) {
  std::exception_ptr error;
  Walk& w = WalkAt(me);
  if (ABSL_PREDICT_TRUE(w.error == nullptr && walk_stack.count == me + 1)) {
    walk_stack.count = me;
    return error;
  }
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

// Destroy, Reset and DestroyChildren are never inlined: a walk record keeps
// the frame of the call that started it (walks started from the same frame
// or above prove it dead), and a nested call must have a frame of its own.
ABSL_ATTRIBUTE_NOINLINE void Context::Destroy() {
  TearDown(/*destroy_self=*/true, ResetOptions(), FrameAddress());
}

ABSL_ATTRIBUTE_NOINLINE void Context::Reset(const ResetOptions& options) {
  TearDown(/*destroy_self=*/false, options, FrameAddress());
}

// Context::DestroyChildren
//
// Each child is a teardown of its own; an exception from one is held until
// every child is gone. A walk record for this context tells the loop when a
// child's cleanup has torn this context down itself.
ABSL_ATTRIBUTE_NOINLINE void Context::DestroyChildren() {
  if (!CheckLive("destroying the children")) return;
  const size_t me = PushWalk(this, FrameAddress());
  WalkScope scope(me);
  while (!WalkAt(me).root_released && first_child_ != nullptr) {
    Context* child = first_child_;
    try {
      child->Destroy();
    } catch (...) {
      KeepError(me);  // in the walk record, where a longjmp cannot strand it
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
  std::exception_ptr error = PopWalk(me);
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
void Context::TearDown(bool destroy_self, const ResetOptions& options, uintptr_t frame) {
  if (!CheckLive(destroy_self ? "destroy" : "reset")) return;
  { UseGuard use(this); }  // another thread inside an operation now is misuse
  const size_t me = PushWalk(this, frame);
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
      // A teardown passes every mark (their records go with the memory).
      if (node->extras_ != nullptr) node->extras_->marks = nullptr;
    }
    // Also on later visits: a cleanup of a child may have registered one.
    bool undisturbed = !node->HasCleanups(CleanupPhase::kBeforeChildren) ||
                       node->RunCleanups(CleanupPhase::kBeforeChildren, me);
    if (undisturbed && node->first_child_ != nullptr) {
      // Leaves with nothing to run go at once; the first child that has
      // children or a side record is visited next. With none left, `node`
      // is visited again (its kAfterChildren cleanups, then its release).
      if (Context* child = node->ReleasePlainLeaves(me)) node = child;
      continue;
    }
    if (undisturbed && node->HasCleanups(CleanupPhase::kAfterChildren)) {
      undisturbed = node->RunCleanups(CleanupPhase::kAfterChildren, me);
    }
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
    if (node->first_child_ != nullptr || node->HasCleanups(CleanupPhase::kBeforeChildren)) continue;
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
      if (parent_ != nullptr && parent_->HasMarks()) parent_->MoveMarkBoundaries(this);
      ReleaseSelf();
    } else {
      UseGuard use(this);
      CheckAllFreed("reset");
      // Every chunk of the context goes: memcheck forgets them all at once,
      // before the kind hands blocks back (a block source may write into
      // them).
      internal::ValgrindDestroyPool(this);
      methods_->reset(this, options);
      internal::ValgrindCreatePool(this);
      ForgetCleanups();  // their records were in the memory just reset
      state_ = State::kLive;
    }
  }
  if (error != nullptr) std::rethrow_exception(error);
}

// Context::ReleasePlainLeaves
//
// A child without children and without a side record has no cleanup to
// run and nothing a nested teardown could see of it: it is released
// without being visited, and this context is not visited again between
// such children. Most contexts of a big tree are such leaves, and this
// loop is most of the cost of destroying them. Returns the first child
// that is not a plain leaf, or nullptr when no child is left.
Context* Context::ReleasePlainLeaves(size_t walk) {
  Context* c = first_child_;
  // Each leaf released is the newest child then: without a tree lock to
  // take, it comes off the list with two stores, inline.
  const bool unlocked = methods_->lock == nullptr;
  // Whether other walks may hold these leaves (NoteReleased), asked once: a
  // plain leaf's release runs no user code, so no walk starts or ends here.
  const bool other_walks = walk_stack.count > (walk == kNoWalk ? 0 : 1);
  while (c != nullptr && c->extras_ == nullptr && c->first_child_ == nullptr) {
    Context* next = c->next_sibling_;
    // The next sibling comes next: start the cache misses on its header
    // now (a release reads most of it; in a big tree they are cold).
    if (next != nullptr) PrefetchHeader(next);
    if (ABSL_PREDICT_FALSE(other_walks)) NoteReleasedSlow(c, walk);
    c->ReleaseSelfImpl(unlocked);
    c = next;
  }
  if (c != nullptr && c->next_sibling_ != nullptr) PrefetchHeader(c->next_sibling_);
  return c;
}

// Context::RunCleanups
//
// Pops before calling, as PostgreSQL does: a cleanup is removed when it runs,
// so it can never run twice, whatever it does. An exception is kept in the
// walk's record (the first one) and the walk goes on. Returns false when a
// nested teardown reached the walk's root or released the context it is at
// (this one): the caller must look before touching anything.
bool Context::RunCleanups(CleanupPhase phase, size_t walk) {
  const int list = static_cast<int>(phase);
  while (extras_ != nullptr && extras_->cleanups[list] != nullptr) {
    CleanupRecord* r = extras_->cleanups[list];
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

// Context::ReleaseSelf
//
// The header lives in the first block, so everything needed after the
// kind's release is read before the first block goes back.
void Context::ReleaseSelf() { ReleaseSelfImpl(/*head_child=*/false); }

ABSL_ATTRIBUTE_ALWAYS_INLINE inline void Context::ReleaseSelfImpl(bool head_child) {
  CheckAllFreed("destroy");
  internal::ValgrindDestroyPool(this);  // before blocks go back: see Reset
  // First, so that no block the kind releases refills the reserve.
  if (extras_ != nullptr) ReleaseExtras();
  methods_->release_all(this);
  BlockSource* source = source_;
  Block first{this, ReadFirstBlockSize(this)};
  UnchargeLimits(first.size);
  if (head_child) {
    parent_->first_child_ = next_sibling_;
    if (next_sibling_ != nullptr) next_sibling_->prev_sibling_ = nullptr;
  } else {
    Unlink();
  }
  // Checking builds clobber the first block past the header fields that the
  // release still needs; the dead state below is written last.
  if (internal::kChecking) ClobberReleased(reinterpret_cast<char*>(this) + sizeof(Context),
                                           first.size - sizeof(Context));
  // Volatile: the store precedes the destructor, and an optimiser may drop
  // stores to an object whose lifetime ends next (GCC does at -O2).
  static_cast<volatile State&>(state_) = State::kDead;
  this->~Context();
  if (internal::kChecking && source == DefaultBlockSource() &&
      !internal::DefaultSourceInstalled()) {
    QuarantineFirstBlock(first);
    return;
  }
  internal::ReleaseTo(source, first);
}

inline void Context::Unlink() {
  if (parent_ == nullptr) return;
  internal::TreeLock lock(parent_);
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

// Context::Reparent
//
// PostgreSQL does not look for multi-level loops; we do, because a loop
// makes every later teardown run forever. Limits are kept exact: the moved
// subtree's bytes leave the old limited ancestors and join the new ones,
// except where the two chains share a context (a move inside one limited
// subtree changes nothing for it). SetParent (status.cc) and TrySetParent
// are this.
Failure Context::Reparent(Context* new_parent, const Context** limited, size_t* bytes_out) {
  if (new_parent == parent_) return Failure::kNone;
  if (new_parent == this || IsAncestorOf(new_parent)) {
    last_failure_ = Failure::kCycle;
    return Failure::kCycle;
  }
  if (state_ == State::kTearingDown ||
      (new_parent != nullptr && new_parent->state_ == State::kTearingDown)) {
    last_failure_ = Failure::kBadArgument;
    return Failure::kBadArgument;
  }
  Context* old_chain = parent_ ? parent_->NearestLimited() : nullptr;
  Context* new_chain = new_parent ? new_parent->NearestLimited() : nullptr;
  // No limit above a shared context (shared.h): a budget is fine.
  for (Context* l = new_chain; l != nullptr; l = l->NextLimited()) {
    if (l->extras_->limit == kNoLimit && l->extras_->soft_limit == kNoLimit) continue;
    if (SharedAtOrBelow()) {
      last_failure_ = Failure::kBadArgument;
      return Failure::kBadArgument;
    }
    break;
  }
  if (old_chain != nullptr || new_chain != nullptr) {
    const size_t bytes = SubtreeBytes();
    auto in_chain = [](Context* start, Context* target) {
      for (Context* l = start; l != nullptr; l = l->NextLimited()) {
        if (l == target) return true;
      }
      return false;
    };
    for (Context* l = new_chain; l != nullptr; l = l->NextLimited()) {
      if (!in_chain(old_chain, l) && bytes > l->extras_->limit - l->extras_->subtree_bytes) {
        last_failure_ = Failure::kLimit;
        if (limited != nullptr) *limited = l;
        if (bytes_out != nullptr) *bytes_out = bytes;
        return Failure::kLimit;
      }
    }
    // Budgets on the new side only are charged (a refusal undoes them),
    // those on the old side only are given the bytes back.
    for (Context* l = new_chain; l != nullptr; l = l->NextLimited()) {
      Budget* b = l->extras_->budget;
      // No soft limit calls back: a move is not an allocation.
      if (b == nullptr || in_chain(old_chain, l)) continue;
      if (b->Charge(bytes, /*call_back=*/false) == Budget::Charged::kYes) continue;
      for (Context* u = new_chain; u != l; u = u->NextLimited()) {
        if (u->extras_->budget != nullptr && !in_chain(old_chain, u)) u->extras_->budget->Uncharge(bytes);
      }
      last_failure_ = Failure::kLimit;
      if (limited != nullptr) *limited = l;
      if (bytes_out != nullptr) *bytes_out = bytes;
      return Failure::kLimit;
    }
    for (Context* l = old_chain; l != nullptr; l = l->NextLimited()) {
      if (in_chain(new_chain, l)) continue;
      l->extras_->subtree_bytes -= bytes;
      if (l->extras_->budget != nullptr) l->extras_->budget->Uncharge(bytes);
    }
    for (Context* l = new_chain; l != nullptr; l = l->NextLimited()) {
      if (!in_chain(old_chain, l)) l->extras_->subtree_bytes += bytes;
    }
  }
  if (parent_ != nullptr && parent_->HasMarks()) parent_->MoveMarkBoundaries(this);
  Unlink();
  LinkUnder(new_parent);
  return Failure::kNone;
}

Failure Context::TrySetParent(Context* new_parent) {
  return Reparent(new_parent, nullptr, nullptr);
}

// Context::FirstBlockOutgrown
//
// What this child needed (its kind says: the first block that would have
// held what it holds there and the request it could not fit), never beyond
// the default (a parent that once had one big child costs later children
// no more than a fixed default would). Not a multiple of the outgrown
// block: the bytes a first block holds beyond what its context uses are
// never written, but they spread the contexts of a tree over more memory,
// and a tree of many small contexts runs at the speed of its memory
// (docs/design.md, the tree). Only ever raised: a smaller guess would send
// every child that needs the larger one through a second block. A slow
// path: once per block a kind adds.
void Context::FirstBlockOutgrown(size_t needed) {
  // A context that grows block after block asks at each one: once its
  // parent knows the most there is to know, it costs a load.
  if (!FirstBlockLearns()) return;
  size_t want = needed;
  if (want > kDefaultFirstBlockSize) want = kDefaultFirstBlockSize;
  const auto units = static_cast<uint8_t>((want + kLearnedUnit - 1) / kLearnedUnit);
  // The parent and every ancestor learn it: a context is created with its
  // parent's learned size, so without the ancestors a tree built depth
  // first would learn again in every subtree. A context knows no more than
  // its parent (it starts with the parent's size, and every raise reaches
  // the parent), so the walk stops at the first ancestor that knows as
  // much; one that SetParent moved under a parent that knows less may stop
  // it early, which costs a lesson, not a block.
  for (Context* a = parent_; a != nullptr; a = a->parent_) {
    std::atomic<uint8_t>& learned = a->learned_first_block_;
    if (learned.load(std::memory_order_relaxed) >= units) break;
    learned.store(units, std::memory_order_relaxed);
  }
}

// --- Savepoints: the rewind ----------------------------------------------------
//
// A rewind runs user code as a teardown does (cleanups, and the teardowns
// of the children that joined since), so it keeps its state where a
// longjmp cannot strand it: in the tree and the mark stack. Newer marks are
// passed first; a cleanup is unlinked before it runs; a child is unlinked
// when its teardown releases it; the memory goes last, once nothing is left
// to run. Rewinding to the same mark again finishes an abandoned rewind,
// and runs only what has not run. A walk record (as a teardown's) tells the
// rewind when a cleanup reset or destroyed this context; after every piece
// of user code the mark is looked up again, in case a cleanup rewound
// further or dropped it.

ABSL_ATTRIBUTE_NOINLINE void Context::RewindTo(const mcx::Mark& mark, RewindCleanups cleanups) {
  const Failure failure = RewindImpl(mark, cleanups, FrameAddress());
  if (failure != Failure::kNone) Fail(failure, 0, kThrow);
}

ABSL_ATTRIBUTE_NOINLINE Failure Context::TryRewindTo(const mcx::Mark& mark,
                                                     RewindCleanups cleanups) {
  return RewindImpl(mark, cleanups, FrameAddress());
}

// Context::RewindCleanupsSince
//
// The registrations since the mark are the head of each list (newest
// first, serials decreasing), also those a cleanup registers meanwhile.
bool Context::RewindCleanupsSince(CleanupPhase phase, const mcx::Mark& mark,
                                  RewindCleanups cleanups, size_t walk) {
  const int list = static_cast<int>(phase);
  for (;;) {
    const Walk& w = WalkAt(walk);
    if (w.root_visited || w.root_released) return false;
    MarkRecord* m = FindMark(mark);
    if (m == nullptr) return false;
    CleanupRecord* r = extras_->cleanups[list];
    if (r == nullptr || r->serial <= m->cleanup_serial) return true;
    CleanupFn fn = cleanups == RewindCleanups::kRun ? r->fn : r->destroy;
    void* arg = r->arg;
    UnlinkCleanup(r);
    if (fn == nullptr) continue;  // dropped: a plain function has nothing to destroy
    try {
      fn(arg);
    } catch (...) {
      KeepError(walk);
    }
  }
}

// Whether anything registered or joined since `m` is left to run: a
// cleanup on either list newer than the mark, or a child newer than its
// boundary.
bool Context::SinceMarkRunsUserCode(const MarkRecord* m) const {
  for (const CleanupRecord* head : extras_->cleanups) {
    if (head != nullptr && head->serial > m->cleanup_serial) return true;
  }
  return first_child_ != m->boundary;
}

// The memory goes last, once nothing since the mark is left to run.
void Context::FinishRewind(MarkRecord* m) {
  extras_->marks = m;  // marks the cleanups made go with the memory
  // Records that went back to the spare list may lie in the memory about
  // to go; those from before the mark are given up until the next reset.
  extras_->spare_cleanups = nullptr;
  if (extras_->cleanup_serial > m->cleanup_serial) extras_->cleanups_rewound = true;
  UseGuard use(this);
  methods_->rewind(this, m->position());
}

Failure Context::RewindImpl(const mcx::Mark& mark, RewindCleanups cleanups, uintptr_t frame) {
  if (!CheckLive("rewind")) return Failure::kBadArgument;
  MarkRecord* m = FindMark(mark);
  if (m == nullptr) return RejectMark(mark);
  extras_->marks = m;  // newer marks are passed; their records go with the memory
  if (!SinceMarkRunsUserCode(m)) {
    // The usual case of a parser's backtracking: only memory to release.
    FinishRewind(m);
    return Failure::kNone;
  }
  const size_t me = PushWalk(this, frame);
  WalkScope scope(me);
  // A cleanup or a child's teardown may register cleanups on this context
  // or create children of it: those are since the mark too, and the phases
  // run again, as a teardown visits a context again, until none is left.
  // The memory goes only then: a cleanup record left on a list would lie in
  // the memory released. A child whose destroy is refused (misuse, already
  // reported) ends the passes, since nothing would remove it.
  bool refused = false;
  for (;;) {
    bool undisturbed = RewindCleanupsSince(CleanupPhase::kBeforeChildren, mark, cleanups, me);
    while (undisturbed && !refused) {
      m = FindMark(mark);
      if (m == nullptr) {
        undisturbed = false;
        break;
      }
      Context* child = first_child_;
      if (child == nullptr || child == m->boundary) break;
      try {
        child->Destroy();
      } catch (...) {
        KeepError(me);
      }
      const Walk& w = WalkAt(me);
      if (w.root_visited || w.root_released) undisturbed = false;
      else if (first_child_ == child) refused = true;
    }
    if (undisturbed) {
      undisturbed = RewindCleanupsSince(CleanupPhase::kAfterChildren, mark, cleanups, me);
    }
    if (!undisturbed) break;
    // RewindCleanupsSince found the mark, and no user code ran since.
    m = FindMark(mark);
    if (refused || !SinceMarkRunsUserCode(m)) {
      FinishRewind(m);
      break;
    }
  }
  scope.Release();
  std::exception_ptr error = PopWalk(me);
  if (error != nullptr) std::rethrow_exception(error);
  return Failure::kNone;
}

// --- Names and the side record ----------------------------------------------

// The name follows the kind state, which follows the header: its place
// follows from the kind, so the header does not keep a pointer to it.
size_t Context::NameOffset() const {
  return RoundUp(kKindStateStart, methods_->state_alignment) + methods_->state_size;
}

size_t Context::first_block_size() const { return ReadFirstBlockSize(this); }

const char* Context::name() const { return reinterpret_cast<const char*>(this) + NameOffset(); }

size_t Context::header_bytes() const {
  return RoundUp(NameOffset() + std::strlen(name()) + 1, kDefaultAlignment);
}

// Context::Extras
//
// A small block of its own from the context's source, charged to the limits
// like any block: it survives resets (a pool's memory does not) without
// being moved, and most contexts never need one.
ContextExtras* Context::Extras() {
  if (ABSL_PREDICT_TRUE(extras_ != nullptr)) return extras_;
  if (AllocationForbidden()) {  // a block from the source, as AcquireBlock
    last_failure_ = Failure::kForbidden;
    return nullptr;
  }
  constexpr size_t kBytes = sizeof(ContextExtras);
  if (!ChargeLimits(kBytes)) {
    last_failure_ = Failure::kLimit;
    return nullptr;
  }
  Block b = internal::AcquireFrom(source_, kBytes, kMinBlockAlignment);
  if (b.ptr == nullptr) {
    UnchargeLimits(kBytes);
    last_failure_ = Failure::kOutOfMemory;
    return nullptr;
  }
  // The source's slack is the record's too, where the limits have room.
  const size_t bytes = b.size > kBytes && ChargeLimits(b.size - kBytes) ? b.size : kBytes;
  extras_ = new (b.ptr) ContextExtras();
  extras_->bytes = bytes;
  return extras_;
}

// Before the kind's blocks go (a destroy): the reserve, then the record.
void Context::ReleaseExtras() {
  ContextExtras* x = extras_;
  if (x->reserve != nullptr) ReleaseReserve();
  if (x->budget != nullptr) TrySetBudget(nullptr);  // what is left: own blocks and this record
  internal::CountLimitedChange(x->Limited(), false);
  extras_ = nullptr;
  const size_t bytes = x->bytes;
  UnchargeLimits(bytes);
  x->~ContextExtras();
  ClobberReleased(x, bytes);
  source_->Release(Block{x, bytes});
}

bool Context::SetFailureHandler(FailureHandler handler, void* arg) {
  if (handler == nullptr && extras_ == nullptr) return true;  // nothing to unset
  ContextExtras* x = Extras();
  if (x == nullptr) return false;
  x->handler = handler;
  x->handler_arg = arg;
  return true;
}

bool Context::SetFailureDump(const FailureDumpOptions& options) {
  ContextExtras* x = Extras();
  if (x == nullptr) return false;
  x->dump_fd = options.fd;
  x->dump_depth = internal::ClampDumpLimit(options.max_depth);
  x->dump_children = internal::ClampDumpLimit(options.max_children);
  return true;
}

FailureDumpOptions Context::failure_dump() const {
  if (extras_ == nullptr) return FailureDumpOptions();
  return {extras_->dump_fd, extras_->dump_depth, extras_->dump_children};
}

}  // namespace mcx
