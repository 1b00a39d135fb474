// The generic context tree: lifecycle, teardown order, cleanups, limits and
// block accounting. Everything kind-specific goes through `KindMethods`.

#include "mcx/context/context.h"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "absl/strings/str_format.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/chunk.h"
#include "mcx/context/chunk_header.h"
#include "mcx/context/internal/cleanup.h"
#include "mcx/context/internal/failure.h"
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
[[noreturn]] void ThrowFor(Failure failure, const std::string& message) {
  if (failure == Failure::kBadSize) throw std::bad_array_new_length();
  if (ThrowsInvalidArgument(failure)) throw std::invalid_argument(message);
  throw std::bad_alloc();
}

// A root's failed creation, out of line: the message's formatting would
// weigh on every creation's frame.
[[noreturn]] ABSL_ATTRIBUTE_NOINLINE ABSL_ATTRIBUTE_COLD void ThrowCreateFailure(Failure failure,
                                                                               const char* name) {
  ThrowFor(failure, absl::StrFormat("mcx: %s creating context '%s'", FailureName(failure),
                                    name != nullptr ? name : "(null)"));
}

constexpr size_t RoundUp(size_t n, size_t alignment) {
  return (n + alignment - 1) & ~(alignment - 1);
}

bool IsPowerOfTwo(size_t n) { return n != 0 && (n & (n - 1)) == 0; }

}  // namespace

// --- Checks ------------------------------------------------------------------

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
  if (magic_ == kLiveMagic) return true;
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
      !ctx->FillReserve(options.reserve_blocks, options.reserve_block_size)) {
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

namespace {

// The teardowns running on this thread, innermost first. A cleanup may start
// another teardown (of a child it owns, say), but never of a context whose
// teardown is already running or of one of its ancestors: that would free
// the memory the running walk stands on. Frames live on the C++ stack.
struct TeardownFrame;
thread_local TeardownFrame* active_teardowns = nullptr;

struct TeardownFrame {
  explicit TeardownFrame(const Context* r) : root(r), outer(active_teardowns) {
    active_teardowns = this;
  }
  // Also on unwind: a cleanup that throws must not leave a dangling frame.
  ~TeardownFrame() { active_teardowns = outer; }
  TeardownFrame(const TeardownFrame&) = delete;
  TeardownFrame& operator=(const TeardownFrame&) = delete;

  const Context* root;
  TeardownFrame* outer;
};

}  // namespace

// Context::CheckTeardownAllowed
//
// Reports misuse and returns false if tearing this context down now would
// pull a running teardown's subtree out from under it.
bool Context::CheckTeardownAllowed(const char* operation) const {
  if (!CheckLive(operation)) return false;
  if (state_ == State::kTearingDown) {
    internal::ReportMisuse("%s of context '%s' at %p while it is being torn down", operation,
                           name_, static_cast<const void*>(this));
    return false;
  }
  for (TeardownFrame* f = active_teardowns; f != nullptr; f = f->outer) {
    if (f->root == this || IsAncestorOf(f->root)) {
      internal::ReportMisuse(
          "%s of context '%s' at %p from a cleanup while its descendant '%s' is being torn down",
          operation, name_, static_cast<const void*>(this), f->root->name_);
      return false;
    }
  }
  return true;
}

void Context::DestroyChildren() {
  if (!CheckTeardownAllowed("destroying the children")) return;
  while (first_child_ != nullptr) {
    Context* child = first_child_;
    child->Destroy();
    if (first_child_ == child) return;  // refused (misuse handler returned)
  }
}

// Context::TearDown
//
// One iterative walk does reset and destroy for a whole subtree. Visiting a
// context the first time marks it and runs its kBeforeChildren cleanups; we
// then descend to its newest child while it has children; a context without
// children runs its kAfterChildren cleanups and is released, and the walk
// climbs to its parent. So each context is torn down completely before its
// older sibling, and before its parent's kAfterChildren cleanups.
//
// Note: do not use recursion here. A chain of a million nested contexts must
// tear down in constant stack space.
//
// The walk re-reads `first_child_` after every cleanup, so cleanups may
// destroy or create children of a context that is not yet torn down.
void Context::TearDown(bool destroy_self, const ResetOptions& options) {
  if (!CheckTeardownAllowed(destroy_self ? "destroy" : "reset")) return;
  UseGuard use(this);
  Context* node = this;
  {
  TeardownFrame frame(this);
  for (;;) {
    if (node->state_ != State::kTearingDown) {
      node->state_ = State::kTearingDown;
      // Every allocation now takes the slow path, where checking builds
      // report it; the kind republishes the window when a reset ends.
      node->max_bump_ = 0;
      node->RunCleanups(CleanupPhase::kBeforeChildren);
    }
    if (node->first_child_ != nullptr) {
      node = node->first_child_;
      // Its sibling comes next: start the cache misses on its header now
      // (a destroy reads every line of it; in a big tree they are cold).
      if (node->next_sibling_ != nullptr) PrefetchHeader(node->next_sibling_);
      continue;
    }
    node->RunCleanups(CleanupPhase::kAfterChildren);
    if (node->first_child_ != nullptr) continue;  // a cleanup made a child
    if (node == this) break;
    Context* parent = node->parent_;
    node->ReleaseSelf();
    node = parent;
  }
  }  // the walk is over: this teardown no longer blocks others
  if (destroy_self) {
    ReleaseSelf();
    return;
  }
  // Every chunk of the context goes: memcheck forgets them all at once,
  // before the kind hands blocks back (a block source may write into them).
  internal::ValgrindDestroyPool(this);
  ReleaseDirect();
  methods_->reset(this, options);
  internal::ValgrindCreatePool(this);
  cleanups_[0] = cleanups_[1] = nullptr;
  spare_cleanups_ = nullptr;  // their memory was just reset
  state_ = State::kLive;
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

bool Context::FillReserve(size_t blocks, size_t block_size) {
  if (block_size < sizeof(ReserveBlock)) block_size = sizeof(ReserveBlock);
  reserve_target_ = blocks;
  reserve_block_size_ = block_size;
  while (reserve_count_ < blocks) {
    if (!ChargeLimits(block_size)) {
      last_failure_ = Failure::kLimit;
      return false;
    }
    Block b = AcquireFrom(source_, block_size, kMinBlockAlignment);
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

void* Context::TakeFromReserve(size_t min_size, size_t alignment, size_t* actual) {
  ReserveBlock* r = reserve_;
  if (r == nullptr || r->size < min_size || alignment > kMinBlockAlignment) return nullptr;
  reserve_ = r->next;
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
void* Context::AllocSlow(size_t size, size_t alignment, unsigned flags) {
  if (ABSL_PREDICT_FALSE(size > kMaxAllocSize)) return Fail(Failure::kBadSize, size, flags);
  if (internal::kChecking && !CheckLive("allocation")) return Fail(Failure::kBadArgument, size, flags);
  UseGuard use(this);
  CheckNotTearingDown("allocation");
  void* p = internal::kDirect ? DirectAlloc(size, alignment) : methods_->alloc(this, size, alignment);
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
  UseGuard use(this);
  void* q = internal::kDirect ? DirectRealloc(p, new_size)
                              : methods_->realloc(this, p, old_size, new_size);
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
  // or destroyed an ancestor, and this context with it. (Memory failures
  // build no message: their path allocates nothing up to the handler.)
  std::string message;
  if (ThrowsInvalidArgument(failure)) {
    message = absl::StrFormat("mcx: %s in context '%s'", FailureName(failure), name_);
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

void Context::LinkCleanup(CleanupRecord* r, CleanupPhase phase) {
  CleanupRecord*& head = cleanups_[static_cast<int>(phase)];
  r->phase = phase;
  r->owner = this;
  r->prev = nullptr;
  r->next = head;
  if (head != nullptr) head->prev = r;
  head = r;
}

void Context::UnlinkCleanup(CleanupRecord* r) {
  CleanupRecord*& head = cleanups_[static_cast<int>(r->phase)];
  if (r->prev != nullptr) {
    r->prev->next = r->next;
  } else {
    head = r->next;
  }
  if (r->next != nullptr) r->next->prev = r->prev;
  r->fn = nullptr;
  r->prev = nullptr;
  r->next = spare_cleanups_;
  spare_cleanups_ = r;
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
  CleanupRecord* r = NewCleanupRecord(kThrow);
  r->fn = fn;
  r->arg = arg;
  r->destroy = nullptr;
  LinkCleanup(r, phase);
  return CleanupHandle(r);
}

CleanupHandle Context::TryAddCleanup(CleanupFn fn, void* arg, CleanupPhase phase) noexcept {
  CheckNotTearingDown("registering a cleanup");
  if (fn == nullptr) {
    last_failure_ = Failure::kBadArgument;
    return CleanupHandle();
  }
  CleanupRecord* r = NewCleanupRecord(kNoThrow);
  if (r == nullptr) return CleanupHandle();
  r->fn = fn;
  r->arg = arg;
  r->destroy = nullptr;
  LinkCleanup(r, phase);
  return CleanupHandle(r);
}

CleanupHandle Context::TryAddOwnedCleanup(CleanupFn run, CleanupFn destroy, void* storage,
                                          CleanupPhase phase) noexcept {
  CleanupHandle h = TryAddCleanup(run, storage, phase);
  if (h) h.record_->destroy = destroy;
  return h;
}

// Context::LiveCleanup
//
// The record behind a handle if it is registered on this context; nullptr
// for an empty or stale handle (already run or removed), and misuse for a
// handle of another context.
CleanupRecord* Context::LiveCleanup(CleanupHandle handle) const {
  CleanupRecord* r = handle.record_;
  if (r == nullptr || r->fn == nullptr) return nullptr;
  if (r->owner != this) {
    internal::ReportMisuse("cleanup %p belongs to context '%s', not '%s'", static_cast<void*>(r),
                           r->owner->name_, name_);
    return nullptr;
  }
  return r;
}

bool Context::RemoveCleanup(CleanupHandle handle) {
  CleanupRecord* r = LiveCleanup(handle);
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
  CleanupRecord* r = LiveCleanup(handle);
  if (r == nullptr) return false;
  CleanupFn fn = r->fn;
  void* arg = r->arg;
  bool owned = r->destroy != nullptr;
  UnlinkCleanup(r);
  fn(arg);
  if (owned) Free(arg);  // the callable's storage; teardown frees it wholesale
  return true;
}

// Context::RunCleanups
//
// Pops before calling, as PostgreSQL does: a cleanup is removed when it runs,
// so it can never run twice, whatever it does.
void Context::RunCleanups(CleanupPhase phase) {
  CleanupRecord** head = &cleanups_[static_cast<int>(phase)];
  while (*head != nullptr) {
    CleanupRecord* r = *head;
    CleanupFn fn = r->fn;
    void* arg = r->arg;
    UnlinkCleanup(r);
    fn(arg);
  }
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
