// File: mcx/context/context.h
//
// A memory context: a named owner of memory in a tree of owners. Every
// allocation belongs to a context; destroying or resetting a context releases
// everything in it and in all its descendants at once, and runs the cleanups
// registered on them. Each context is backed by a kind (pool, freelist) that
// decides how chunks are carved from blocks.
//
// Contract (docs/design.md has the full semantics):
//   - Tree. A context has a name (copied), a kind, a parent (none for a root)
//     and children. `SetParent` moves a whole subtree; it refuses a cycle.
//   - Allocation. `Alloc` returns memory aligned to `kDefaultAlignment`
//     (alignof(std::max_align_t)); `AllocAligned` takes any power of two up
//     to `kMaxAlignment`; `AllocBytes` is unaligned (byte strings). Size 0
//     returns a valid, unique pointer. Sizes above `kMaxAllocSize`, and
//     count * size products that overflow, are errors.
//   - Failure. `Try*` calls return nullptr. The others call the failure
//     handler (inherited from the nearest ancestor that has one) and then
//     throw (failure.h). After a failure nothing has changed.
//   - Reset and Destroy. Order, always: cleanups registered
//     `kBeforeChildren`, newest first; then the children, newest first, each
//     torn down completely; then `kAfterChildren` cleanups, newest first; then
//     the memory. `Reset` keeps the context (name, kind, options, parent,
//     limit, handler) and what the `ResetOptions` keep. Tree walks are
//     iterative: any depth works.
//   - Threads. A context and its subtree are used by one thread at a time.
//     Block sources are thread-safe.
//
// Example:
//
//   mcx::Context* query = mcx::Context::Create(nullptr, "query", mcx::PoolKind());
//   mcx::Context* row = query->CreateChild("row", mcx::FreelistKind());
//   for (int i = 0; i < rows; ++i) {
//     char* buf = static_cast<char*>(row->Alloc(128));
//     ...
//     row->Reset();           // everything for the row, in one step
//   }
//   query->Destroy();         // row goes with it

#ifndef MCX_CONTEXT_CONTEXT_H_
#define MCX_CONTEXT_CONTEXT_H_

#include <cstddef>
#include <cstdint>
#include <atomic>
#include <cstring>
#include <new>
#include <string_view>
#include <type_traits>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "absl/status/status.h"
#include "mcx/context/block_source.h"
#include "mcx/context/dump.h"
#include "mcx/context/failure.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/context/kind.h"
#include "mcx/context/pressure.h"
#include "mcx/context/site.h"

namespace mcx {

inline constexpr size_t kDefaultAlignment = alignof(std::max_align_t);
// Largest alignment `AllocAligned` accepts: a 2 MiB huge page.
inline constexpr size_t kMaxAlignment = size_t{1} << 21;
// Largest single request. Half the address space leaves room for headers and
// alignment without overflow anywhere in the size arithmetic.
inline constexpr size_t kMaxAllocSize = ~size_t{0} >> 1;
// `SetLimit` value meaning "no limit".
inline constexpr size_t kNoLimit = ~size_t{0};

class Budget;

namespace internal {
struct CApiAccess;
struct CleanupRecord;
struct CleanupAccess;
struct FailAccess;
// live_chunks.cc: reports `ctx`'s live chunks as leaks, if it has any.
ABSL_ATTRIBUTE_NOINLINE void ReportLeaks(const Context* ctx, const char* operation);
// The calling thread's nesting of NoAllocScope (no_alloc.h; no_alloc.cc).
// __thread: constant-initialised, so reading it is one load, without the
// initialisation guard an extern thread_local costs at every read.
extern __thread int no_alloc_depth;
struct ContextExtras;
struct CreateAccess;
struct KindAccess;
struct MarkRecord;
struct PassedLimits;

// A context's last failure, which the threads of a shared context may set
// at once (two failing together: one of the reasons stays). Relaxed atomic
// loads and stores, plain moves where mcx runs; read and set as a Failure.
class FailureSlot {
 public:
  explicit FailureSlot(Failure f) : value_(f) {}
  FailureSlot(const FailureSlot&) = delete;
  FailureSlot& operator=(const FailureSlot&) = delete;
  FailureSlot& operator=(Failure f) {
    value_.store(f, std::memory_order_relaxed);
    return *this;
  }
  operator Failure() const { return value_.load(std::memory_order_relaxed); }  // NOLINT

 private:
  std::atomic<Failure> value_;
};
}  // namespace internal

enum class CleanupPhase : unsigned char {
  kBeforeChildren = 0,  // APR's pre-cleanups: run before the children go
  kAfterChildren = 1,   // the default: run after the children are gone
};

using CleanupFn = void (*)(void* arg);

// Names a registered cleanup: the record and the serial number it was
// registered with. Once the cleanup has run or been removed, or its context
// has been reset, the handle is stale: `RemoveCleanup` and `RunCleanup`
// refuse it (return false) and never act on a later cleanup that reuses the
// record. A stale handle is recognised without reading the record when its
// context was reset since. A handle must not outlive its context.
class CleanupHandle {
 public:
  CleanupHandle() = default;
  explicit operator bool() const { return record_ != nullptr; }

  // For language bindings (the C API) that carry handles as two words.
  void* record() const { return record_; }
  uint64_t serial() const { return serial_; }
  static CleanupHandle FromParts(void* record, uint64_t serial) {
    return CleanupHandle(static_cast<internal::CleanupRecord*>(record), serial);
  }

 private:
  friend class Context;
  CleanupHandle(internal::CleanupRecord* r, uint64_t serial) : record_(r), serial_(serial) {}
  internal::CleanupRecord* record_ = nullptr;
  uint64_t serial_ = 0;
};

// A savepoint of a context (Context::Mark): copy it freely. Empty (false)
// when marking failed. It names the mark by its record and serial number;
// once a rewind to an older mark, a DropMark or a reset has passed it, it is
// stale, and RewindTo and DropMark refuse it (kStaleMark) without reading
// anything it points to. A mark must not outlive its context.
class Mark {
 public:
  Mark() = default;
  explicit operator bool() const { return record_ != nullptr; }
  Context* context() const { return context_; }

  // For language bindings (the C API) that carry marks as three words.
  void* record() const { return record_; }
  uint64_t serial() const { return serial_; }
  static Mark FromParts(Context* context, void* record, uint64_t serial) {
    return Mark(context, static_cast<internal::MarkRecord*>(record), serial);
  }

 private:
  friend class Context;
  Mark(Context* context, internal::MarkRecord* r, uint64_t serial)
      : context_(context), record_(r), serial_(serial) {}
  Context* context_ = nullptr;
  internal::MarkRecord* record_ = nullptr;
  uint64_t serial_ = 0;
};

// What a rewind does with the cleanups registered on the context since the
// mark (the children that joined since are destroyed either way, with all
// their cleanups).
enum class RewindCleanups : unsigned char {
  kRun,   // run them, newest first, as a reset would
  kDrop,  // unregister them unrun (a callable's captures are still destroyed)
};

struct ContextOptions {
  // Where blocks come from; nullptr: the parent's, or DefaultBlockSource().
  BlockSource* block_source = nullptr;
  // Bound on the block bytes of this context's whole subtree.
  size_t limit = kNoLimit;
  // Called on allocation failure; nullptr: inherit from the ancestors.
  FailureHandler failure_handler = nullptr;
  void* failure_handler_arg = nullptr;
  // The Linux kernel's mempool idea: blocks acquired at creation and used
  // only when the block source fails, so that allocation still makes
  // progress (an error path can still allocate its message). Refilled from
  // blocks that come back to the context (a freed dedicated chunk, a reset).
  // A request larger than `reserve_block_size` cannot use the reserve.
  size_t reserve_blocks = 0;
  size_t reserve_block_size = 16 * 1024;
  // On out of memory or a limit in a throwing call in this subtree, write a
  // line and the tree's stats report to `failure_dump.fd` before the failure
  // handler runs (dump.h). The default inherits from the ancestors.
  FailureDumpOptions failure_dump;
  // The program frees every chunk of this context itself: in checking
  // builds a reset or destroy that finds live chunks reports them as leaks
  // (ExpectAllFreed).
  bool expect_all_freed = false;
  // Allocation in this context stays allowed inside a NoAllocScope
  // (AllowInNoAllocScope).
  bool allow_in_no_alloc_scope = false;
};

class Context {
 public:
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // --- Lifecycle -----------------------------------------------------------

  // Creates a context under `parent` (nullptr: a root). The context header,
  // the kind's state and a copy of `name` live in the first block. Throws
  // (after the failure handler) if the first block cannot be had.
  static Context* Create(Context* parent, const char* name,
                         const KindSpec& kind,
                         const ContextOptions& options);
  static Context* TryCreate(Context* parent, const char* name,
                            const KindSpec& kind,
                            const ContextOptions& options) noexcept;
  Context* CreateChild(const char* name, const KindSpec& kind,
                       const ContextOptions& options) {
    return Create(this, name, kind, options);
  }
  // With default ContextOptions (the common case, which then reads none).
  ABSL_ATTRIBUTE_ALWAYS_INLINE static Context* Create(Context* parent, const char* name,
                                                     const KindSpec& kind) {
    return CreateDefault(parent, name, kind, kThrow);
  }
  ABSL_ATTRIBUTE_ALWAYS_INLINE static Context* TryCreate(Context* parent, const char* name,
                                                        const KindSpec& kind) noexcept {
    return CreateDefault(parent, name, kind, kNoThrow);
  }
  ABSL_ATTRIBUTE_ALWAYS_INLINE Context* CreateChild(const char* name, const KindSpec& kind) {
    return CreateDefault(this, name, kind, kThrow);
  }

  // Tears down the subtree (see the order above) and releases this context.
  //
  // Cleanups and failure handlers run during a teardown may leave it by
  // throwing or by longjmp (a C engine's error path):
  //   - A cleanup that throws does not stop the teardown: every other
  //     cleanup still runs once, in order, every block is released, and the
  //     first exception propagates when the teardown is over (later ones are
  //     dropped). A callable cleanup's captures are destroyed either way.
  //   - A longjmp out of a cleanup or handler abandons the teardown where it
  //     is. Nothing of it stays on the stack: the contexts it reached stay
  //     "being torn down", and resetting or destroying any of them, or an
  //     ancestor, later finishes the job (cleanups that ran do not run
  //     again; those that did not, run then) and releases everything.
  //   - A cleanup that resets or destroys the context being torn down, or an
  //     ancestor of it, is misuse: the inner call finishes the teardown, and
  //     the interrupted one reports the misuse when it resumes.
  void Destroy();
  // The same teardown, but this context survives, empty.
  void Reset(const ResetOptions& options = ResetOptions());
  // Destroys every child, keeps this context and its memory. A throwing
  // cleanup does not stop it: every child goes, then the first exception
  // propagates.
  void DestroyChildren();

  // Moves this context and its subtree under `new_parent` (nullptr: make it
  // a root). Fails without changing anything if `new_parent` is this context
  // or one of its descendants, or if the moved bytes would exceed a limit of
  // the new ancestors. The move is O(1); the cycle check walks the new
  // parent's ancestors; a limit on either side adds a walk of the subtree.
  // The status's message names the contexts (and the limit) involved.
  //
  // The two members that return an absl::Status (this and SetLimit) are
  // defined in //context (status.cc), not in the core //context:core, so
  // that the core and the C API link no Abseil library; `TrySetParent` is
  // the same move, returning the reason.
  absl::Status SetParent(Context* new_parent);
  // As SetParent; returns Failure::kNone, or why nothing was moved
  // (kCycle, kLimit, kBadArgument during a teardown or for a shared
  // context moved under a limit), as last_failure().
  Failure TrySetParent(Context* new_parent);

  // --- Allocation ----------------------------------------------------------
  //
  // Each call takes its caller's site (site.h) as a last, defaulted
  // argument: checking builds keep it with the chunk (live_chunks.h), release
  // builds drop it. Code that allocates for its own caller passes that
  // caller's site on.

  ABSL_ATTRIBUTE_ALWAYS_INLINE inline void* Alloc(
      size_t size, AllocationSite site = AllocationSite::Current());
  ABSL_ATTRIBUTE_ALWAYS_INLINE inline void* TryAlloc(
      size_t size, AllocationSite site = AllocationSite::Current()) noexcept;
  void* AllocZero(size_t size, AllocationSite site = AllocationSite::Current()) {
    return Zero(Alloc(size, site), size);
  }
  void* TryAllocZero(size_t size, AllocationSite site = AllocationSite::Current()) noexcept {
    return Zero(TryAlloc(size, site), size);
  }
  // calloc: `count * size` zeroed bytes; an overflowing product is kBadSize.
  void* AllocZeroArray(size_t count, size_t size,
                       AllocationSite site = AllocationSite::Current()) {
    return AllocZeroArrayImpl(count, size, kThrow, site);
  }
  void* TryAllocZeroArray(size_t count, size_t size,
                          AllocationSite site = AllocationSite::Current()) noexcept {
    return AllocZeroArrayImpl(count, size, kNoThrow, site);
  }
  void* AllocAligned(size_t size, size_t alignment,
                     AllocationSite site = AllocationSite::Current()) {
    NoteAllocation(size, site);
    return AllocAlignedImpl(size, alignment, kThrow);
  }
  void* TryAllocAligned(size_t size, size_t alignment,
                        AllocationSite site = AllocationSite::Current()) noexcept {
    NoteAllocation(size, site);
    return AllocAlignedImpl(size, alignment, kNoThrow);
  }
  // No alignment at all: for byte strings (nginx's ngx_pnalloc).
  inline void* AllocBytes(size_t size, AllocationSite site = AllocationSite::Current());
  inline void* TryAllocBytes(size_t size,
                             AllocationSite site = AllocationSite::Current()) noexcept;
  // A NUL-terminated copy of `s` (strings.h has Strndup, Printf, StrCat).
  char* Strdup(std::string_view s, AllocationSite site = AllocationSite::Current());

  // Resizes a chunk of this context, keeping min(old, new) bytes. nullptr
  // allocates. The unsized form needs a kind that knows chunk sizes (the
  // freelist kind, pool large chunks); the sized form works for every chunk.
  // The chunk's site becomes the caller's.
  void* Realloc(void* p, size_t new_size, AllocationSite site = AllocationSite::Current()) {
    NoteAllocation(new_size, site);
    return ReallocImpl(p, kUnknownSize, new_size, kThrow);
  }
  void* TryRealloc(void* p, size_t new_size,
                   AllocationSite site = AllocationSite::Current()) noexcept {
    NoteAllocation(new_size, site);
    return ReallocImpl(p, kUnknownSize, new_size, kNoThrow);
  }
  void* Realloc(void* p, size_t old_size, size_t new_size,
                AllocationSite site = AllocationSite::Current()) {
    NoteAllocation(new_size, site);
    return ReallocImpl(p, old_size, new_size, kThrow);
  }
  void* TryRealloc(void* p, size_t old_size, size_t new_size,
                   AllocationSite site = AllocationSite::Current()) noexcept {
    NoteAllocation(new_size, site);
    return ReallocImpl(p, old_size, new_size, kNoThrow);
  }

  // Gives a chunk back. nullptr is a no-op; so is a small pool chunk (it is
  // released by Reset/Destroy), unless the pool rewinds (pool.h).
  inline void Free(void* p);
  // Sized free (C++ sized delete, std::pmr, Lua's allocator): `size` is the
  // size the chunk was allocated or last resized with. Release builds free
  // as Free(p) does; checking builds report a size the chunk does not have
  // (a size above its usable bytes, or, where the kind keeps it, other than
  // the size it was asked for) as misuse, and then free it.
  inline void Free(void* p, size_t size);
  // Usable bytes of a chunk, or kUnknownSize if the kind cannot tell.
  size_t ChunkSize(const void* p) const;

  // --- Cleanups ------------------------------------------------------------

  // Registers `fn(arg)` to run when this context is reset or destroyed. The
  // record lives in this context's memory. Throws on allocation failure.
  CleanupHandle AddCleanup(CleanupFn fn, void* arg,
                           CleanupPhase phase = CleanupPhase::kAfterChildren);
  CleanupHandle TryAddCleanup(
      CleanupFn fn, void* arg,
      CleanupPhase phase = CleanupPhase::kAfterChildren) noexcept;
  // Any callable; it is moved into this context's memory. If registering
  // fails, the callable is destroyed unrun and its storage freed as Free
  // frees it (on the pool kind, a small chunk's space stays until the reset).
  template <typename F,
            typename = std::enable_if_t<std::is_invocable_v<std::decay_t<F>&>>>
  CleanupHandle AddCleanup(F&& f,
                           CleanupPhase phase = CleanupPhase::kAfterChildren);
  // Unregisters without running. False if the handle is empty or stale
  // (CleanupHandle), or belongs to another context (which is reported as
  // misuse).
  bool RemoveCleanup(CleanupHandle handle);
  // Unregisters, then runs it now. False (and nothing runs) in the cases
  // where RemoveCleanup is false. If the cleanup throws, a callable's
  // captures and storage are still released and the exception propagates.
  bool RunCleanup(CleanupHandle handle);
  // Whether `handle` names a cleanup registered on this context now (false
  // for empty, stale and foreign handles; nothing is reported).
  bool HoldsCleanup(CleanupHandle handle) const {
    return LiveCleanup(handle, /*report_foreign=*/false) != nullptr;
  }

  // --- Savepoints ----------------------------------------------------------
  //
  // `mcx::Mark m = ctx->Mark();` saves the context's state; `ctx->RewindTo(m)`
  // returns to it, in the order of a reset: the cleanups registered on
  // the context since the mark with kBeforeChildren (newest first), then the
  // children that joined it since (created or moved in; newest first, each
  // destroyed completely), then the kAfterChildren cleanups registered since
  // (newest first), then every chunk and block allocated since is released:
  // the counters, the limits' charges and the blocks held are what they were
  // at the mark. What those cleanups and teardowns register on the context
  // or create in it is since the mark too: the steps run again until nothing
  // since the mark is left, each cleanup once, and only then is the memory
  // released. A chunk allocated before the mark and freed or reallocated
  // after it stays freed. Marks nest as a stack (a subtransaction inside a
  // transaction): a mark stays valid across rewinds to it, and a rewind to
  // an older mark, a DropMark of an older mark, or a reset passes every newer
  // one; rewinding to a passed mark is refused (kStaleMark).
  //
  // A kind supports savepoints or refuses Mark (kUnsupported), as its method
  // table declares (kind_api.h): the pool supports them (not with
  // rewind_on_free), the freelist refuses. On the pool a rewind costs time
  // in proportion to the blocks from the marked block on and the large
  // chunks since, never to the small chunks; a mark costs a 32-byte record
  // plus the kind's position in the context's memory.
  //
  // Cleanups run by a rewind may throw or longjmp as in a teardown: a throw
  // does not stop the rewind (the first exception propagates when it is
  // over); a longjmp abandons it with the mark still valid, and rewinding
  // to the mark again (or resetting or destroying the context) finishes it
  // without running anything twice. A cleanup may reset or destroy the
  // context, or rewind it further: the rewind then stops there.
  //
  // Example:
  //
  //   mcx::Mark m = ctx->Mark();
  //   if (!ParseStatement(ctx, &tokens)) ctx->RewindTo(m);  // try another rule
  //   ctx->DropMark(m);                                     // keep what is there

  // Throws (after the failure handler) if the kind refuses or the record
  // cannot be allocated; TryMark returns an empty mark (last_failure says
  // why).
  mcx::Mark Mark();
  mcx::Mark TryMark() noexcept;
  // Refused with kStaleMark for a passed mark and kBadArgument for an empty
  // one or another context's, changing nothing; the throwing form calls
  // the failure handler and throws std::invalid_argument.
  void RewindTo(const mcx::Mark& mark, RewindCleanups cleanups = RewindCleanups::kRun);
  Failure TryRewindTo(const mcx::Mark& mark, RewindCleanups cleanups = RewindCleanups::kRun);
  // Forgets `mark` and every newer mark, keeping everything allocated since
  // (a subtransaction's commit). Refused as RewindTo is.
  void DropMark(const mcx::Mark& mark);
  Failure TryDropMark(const mcx::Mark& mark);
  // Marks on the stack now.
  size_t mark_depth() const;

  // --- Failure and limits --------------------------------------------------

  // Sets the handler that failing throwing calls in this subtree call
  // (failure.h). False (out of memory: last_failure says why) if the
  // context's side record, which keeps what only some contexts use, could
  // not be had; true if it was set.
  bool SetFailureHandler(FailureHandler handler, void* arg = nullptr);
  // The reason for the most recent failed call on this context.
  Failure last_failure() const { return last_failure_; }

  // Where and how much mcx dumps when a throwing call in this subtree runs
  // out of memory or hits a limit (dump.h has what is written and when).
  // `max_depth` and `max_children` are kept in one byte each: clamped to
  // 0..kFailureDumpMaxLimit. False as for SetFailureHandler.
  bool SetFailureDump(const FailureDumpOptions& options);
  // This context's own setting (fd kFailureDumpInherit: none).
  FailureDumpOptions failure_dump() const;

  // Declares that the program frees every chunk of this context itself
  // (talloc's leak report, for one context). In checking builds, a reset or
  // destroy that finds live chunks, once the cleanups have run, reports
  // them as misuse, grouped by allocation site (live_chunks.h); mcx's own
  // chunks (cleanup records) do not count. Not inherited by children.
  // Release builds keep no sites and check nothing.
  void ExpectAllFreed(bool expect = true) {
#if MCX_CHECKING
    expect_all_freed_ = expect;
#else
    (void)expect;
#endif
  }

  // Lets this context allocate inside a NoAllocScope (no_alloc.h), as
  // PostgreSQL's MemoryContextAllowInCriticalSection lets its ErrorContext:
  // the one context a critical section may still use, for its error
  // message. Not inherited by children. False as for SetFailureHandler
  // (outside a scope: the side record may have to be acquired).
  bool AllowInNoAllocScope(bool allow = true);
  bool allowed_in_no_alloc_scope() const;

  // Bounds the block bytes of this subtree, checked whenever a block is
  // acquired. Fails if the subtree already holds more. (In //context, as
  // SetParent.)
  absl::Status SetLimit(size_t bytes);
  // As SetLimit; returns Failure::kNone, or why nothing changed (kLimit,
  // kBadArgument on or above a shared context (mcx/shared/shared.h), or
  // kOutOfMemory / kLimit if the limit could not be recorded), as
  // last_failure().
  Failure TrySetLimit(size_t bytes);
  size_t limit() const;

  // Charges this subtree's block bytes, from now on and what it holds
  // already, to `budget` (budget.h), shared with contexts in other trees and
  // threads; nullptr detaches and gives the bytes back. Returns
  // Failure::kNone, or why nothing changed: kLimit if the budget has no
  // room for what the subtree holds, kBadArgument if another budget is
  // attached (detach it first), or the side record's failure.
  Failure TrySetBudget(Budget* budget);
  Budget* budget() const;

  // A soft limit on the block bytes of this subtree, with the callback that
  // runs once before an allocation would take them past it; the allocation
  // then proceeds (pressure.h has the contract). `kNoLimit` removes it.
  // Setting it again re-arms a callback that was left by longjmp, when set
  // from outside it: where the longjmp landed, any frame not deeper than
  // the allocation that called back, or another thread; set (or removed)
  // from inside the running callback, the callback is not re-entered. Returns
  // Failure::kNone, kBadArgument for a null callback or on or above a
  // shared context (mcx/shared/shared.h), or kOutOfMemory /
  // kLimit if the side record could not be had (as last_failure()).
  Failure TrySetSoftLimit(size_t bytes, PressureCallback callback, void* arg = nullptr);
  size_t soft_limit() const;

  // --- Introspection -------------------------------------------------------

  const char* name() const;
  const char* kind_name() const { return methods_->name; }
  const KindMethods* kind() const { return methods_; }
  Context* parent() const { return parent_; }
  Context* first_child() const { return first_child_; }  // newest child
  Context* next_sibling() const { return next_sibling_; }  // next older
  BlockSource* block_source() const { return source_; }
  bool IsAncestorOf(const Context* other) const;

  // O(1): bytes in blocks held by this context alone, and their count.
  size_t bytes_in_blocks() const { return mem_allocated_; }
  size_t num_blocks() const { return num_blocks_; }
  // O(1): the high-water mark of bytes_in_blocks() since creation or the
  // last ResetPeak.
  size_t peak_bytes_in_blocks() const {
    return mem_allocated_ > peak_blocks_ ? mem_allocated_ : peak_blocks_;
  }
  // O(1): bytes in this context's live chunks as its kind counts them
  // (docs/design.md, "Counters"), and their high-water mark since creation
  // or the last ResetPeak; kUnknownSize for a kind that keeps no count.
  size_t live_bytes() const;
  size_t peak_live_bytes() const;
  // Starts both high-water marks of this context again from what it holds
  // now. Reset and Destroy leave the marks alone.
  void ResetPeak();
  // Bytes of the side record that contexts with a limit, a handler, a dump
  // setting, a reserve or cleanups keep (0 without one); counted against
  // limits.
  size_t side_record_bytes() const;
  // Walks the subtree: blocks, side records and reserve blocks, everything
  // that counts against limits.
  size_t SubtreeBytes() const;

  // The reserve (ContextOptions::reserve_blocks): blocks and bytes held now,
  // and how many blocks it has handed out since creation.
  size_t reserve_blocks() const;
  size_t reserve_bytes() const;
  uint64_t reserve_uses() const;


  // Runs the kind's invariant checks. In checking builds every chunk's
  // sentinel is verified too.
  bool Check(std::string* error) const;

  // Bytes of the first block taken by the header, the kind's state and the
  // name; the first block's size.
  size_t header_bytes() const;
  size_t first_block_size() const;

 private:
  friend struct internal::CApiAccess;  // internal/c_api.h
  friend struct internal::CleanupAccess;
  friend struct internal::FailAccess;
  friend struct internal::CreateAccess;  // internal/create.h
  friend struct internal::KindAccess;  // kind_api.h

  // kCreating: until the kind's init has returned; its blocks are never
  // refused for a soft limit or a report request (nothing would retry).
  // The state doubles as the magic: every state of a context that is still
  // one shares the high bits kStateMagic, and kDead is written just before
  // the first block goes back, so a second Destroy of the same context (or
  // a pointer that never was one) is recognised.
  enum class State : uint16_t {
    kLive = 0x6D31,  // "m1"
    kTearingDown = 0x6D32,
    kCreating = 0x6D33,
    kDead = 0xDEAD,
  };
  static constexpr uint16_t kStateMagicMask = 0xFFF0;
  static constexpr uint16_t kStateMagic = 0x6D30;
  static bool IsContextState(uint16_t state) { return (state & kStateMagicMask) == kStateMagic; }
  static constexpr uint16_t kMaxBumpField = 0xFFFF;
  // The largest first block: the kinds keep block sizes in 32 bits.
  static constexpr size_t kMaxFirstBlockSize = ~uint32_t{0} & ~size_t{15};

  // Checking builds: APR's concurrency check. Every operation marks the
  // context in use by the calling thread; another thread arriving meanwhile
  // is misuse. Nested use from the same thread (a cleanup freeing memory in
  // its own context) is fine. Never held across user code.
  // Inline, so that release builds keep nothing of it.
  class UseGuard {
   public:
    explicit UseGuard(Context* ctx) : ctx_(ctx) {
      if (internal::kChecking) Enter(ctx);
    }
    ~UseGuard() {
      if (internal::kChecking) Leave(ctx_);
    }
    UseGuard(const UseGuard&) = delete;
    UseGuard& operator=(const UseGuard&) = delete;

   private:
    static void Enter(Context* ctx);
    static void Leave(Context* ctx);
    Context* ctx_;
  };
  enum AllocFlags : unsigned { kThrow = 0, kNoThrow = 1 };

  // The header of a new context in the first block of `size` bytes.
  Context(const KindMethods* methods, BlockSource* source, size_t size)
      : peak_blocks_(0),
        num_blocks_(1),
        methods_(methods),
        source_(source),
        mem_allocated_(size) {}
  ~Context() = default;

  // `options` nullptr: the defaults.
  static Context* CreateImpl(Context* parent, const char* name,
                             const KindSpec& kind,
                             const ContextOptions* options, unsigned flags);
  // Default options: the kind's composed creation where its table has one
  // (KindMethods::create_child), else CreateImpl. Inline, so that a literal
  // name's length is a constant.
  ABSL_ATTRIBUTE_ALWAYS_INLINE static Context* CreateDefault(Context* parent, const char* name,
                                                             const KindSpec& kind,
                                                             unsigned flags) {
    const KindMethods* methods = kind.methods();
    if (ABSL_PREDICT_TRUE(methods != nullptr && methods->create_child != nullptr &&
                          name != nullptr)) {
      return methods->create_child(parent, name, std::strlen(name), kind, flags);
    }
    return CreateImpl(parent, name, kind, nullptr, flags);
  }
  // A failed creation: through `parent`'s failure path, or for a root a
  // throw (or nullptr under kNoThrow).
  ABSL_ATTRIBUTE_NOINLINE static Context* CreateFailed(Context* parent, Failure failure,
                                                       size_t size, unsigned flags,
                                                       const char* name);
  // A new context refused after its header was placed (its init, side
  // record or reserve failed): released, then CreateFailed.
  ABSL_ATTRIBUTE_NOINLINE static Context* UndoCreate(Context* ctx, Failure why, size_t size,
                                                     unsigned flags, const char* name);
  // Bumps the window for `size` bytes at `alignment` into `*out`; false
  // (nothing changed) if the window cannot serve it. A bool rather than a
  // null pointer, so that the caller branches on the window's compares
  // themselves and not once more on the result.
  ABSL_ATTRIBUTE_ALWAYS_INLINE bool TryBump(size_t size, size_t alignment, void** out) {
    // `size - 1` wraps for 0, so zero-size requests take the slow path,
    // which hands out a unique pointer. Tested first, alone: a kind without
    // a window (max_bump_ 0) leaves after a load and a compare, before the
    // window's pointer is read.
    if (ABSL_PREDICT_FALSE(size - 1 >= max_bump_)) return false;
    uintptr_t p = (reinterpret_cast<uintptr_t>(bump_ptr_) + alignment - 1) &
                  ~(alignment - 1);
    if (ABSL_PREDICT_TRUE(p + size <= reinterpret_cast<uintptr_t>(bump_end_))) {
      bump_ptr_ = reinterpret_cast<char*>(p + size);
      internal::UnpoisonMemoryRegion(reinterpret_cast<void*>(p), size);  // ASan only
      *out = reinterpret_cast<void*>(p);
      return true;
    }
    return false;
  }
  // One slow path per failure mode, so that the mode is a constant in each
  // rather than a value kept across the kind's call (allocation.cc).
  ABSL_ATTRIBUTE_NOINLINE void* AllocSlow(size_t size, size_t alignment);
  ABSL_ATTRIBUTE_NOINLINE void* TryAllocSlow(size_t size, size_t alignment);
  void* AllocSlow(size_t size, size_t alignment, unsigned flags) {
    return (flags & kNoThrow) ? TryAllocSlow(size, alignment) : AllocSlow(size, alignment);
  }
  ABSL_ATTRIBUTE_ALWAYS_INLINE inline void* AllocSlowBody(size_t size, size_t alignment,
                                                          unsigned flags);
  // Free with the checking build's checks, direct mode and Valgrind's
  // bookkeeping; release builds call the kind inline instead.
  void FreeChecked(void* p);
  void CheckFreeSize(const void* p, size_t size) const;
  void* AllocAlignedImpl(size_t size, size_t alignment, unsigned flags);
  void* AllocZeroArrayImpl(size_t count, size_t size, unsigned flags, AllocationSite site);
  // Every public allocation call starts here. Checking builds keep the
  // site for the kind (kind_api.h, PendingSite); release builds do nothing.
  void NoteAllocation(size_t size, AllocationSite site) {
    if (internal::kChecking) NoteAllocationChecked(size, site);
  }
  ABSL_ATTRIBUTE_NOINLINE void NoteAllocationChecked(size_t size, AllocationSite site);
  // Whether a NoAllocScope forbids this context to allocate now: one
  // thread-local load outside any scope (no_alloc.cc).
  bool AllocationForbidden() const {
    return ABSL_PREDICT_FALSE(internal::no_alloc_depth != 0) && !allowed_in_no_alloc_scope();
  }
  void* ReallocImpl(void* p, size_t old_size, size_t new_size, unsigned flags);
  ABSL_ATTRIBUTE_NOINLINE void* Fail(Failure failure, size_t size,
                                     unsigned flags);
  // A block the ledger refused so that this front could run a soft limit's
  // callback or write a requested report first (pressure.cc): they run, then
  // the call is retried; with nothing of that kind due, the call fails.
  ABSL_ATTRIBUTE_NOINLINE void* AllocRefused(size_t size, size_t alignment, unsigned flags);
  ABSL_ATTRIBUTE_NOINLINE void* ReallocRefused(void* p, size_t old_size, size_t new_size,
                                               unsigned flags);
  ABSL_ATTRIBUTE_NOINLINE bool ChargeRefused(size_t bytes, unsigned flags);
  bool ServeRefusal(internal::PassedLimits* passed, unsigned flags);
  ABSL_ATTRIBUTE_NOINLINE bool RefuseForRequests();
  void WithdrawRefusal(Failure before);
  bool PressureDue(Context* first, size_t bytes);
  bool BudgetSoftLimitArmed(const Context* l) const;
  void RefuseForBudget(Context* l, size_t bytes);
  static void* Zero(void* p, size_t size) {
    if (p != nullptr) std::memset(p, 0, size);
    return p;
  }

  // The side record (internal/extras.h): created on first use as a small
  // block from the source, kept across resets, gone with the context.
  // Extras() creates it (nullptr, with last_failure set, if it cannot be
  // had).
  internal::ContextExtras* Extras();
  void ReleaseExtras();

  // Cleanups (cleanup.cc).
  // A record taken before the object a cleanup is for is made (New<T>, a
  // callable): making it may throw or longjmp, and must not leave a
  // registered cleanup for an object that does not exist. nullptr (after
  // Fail) on failure. An unused record goes back with ReturnCleanupRecord.
  internal::CleanupRecord* NewCleanupRecord(unsigned flags);
  void ReturnCleanupRecord(internal::CleanupRecord* r);
  // Registers `r`. With `destroy` set, `arg` is storage in this context
  // owned by the record: `fn` runs and destroys it, `destroy` only destroys
  // it, and RunCleanup and RemoveCleanup free it.
  CleanupHandle CommitCleanup(internal::CleanupRecord* r, CleanupFn fn, void* arg,
                              CleanupFn destroy, CleanupPhase phase);
  internal::CleanupRecord* LiveCleanup(CleanupHandle handle, bool report_foreign) const;
  bool OnCleanupList(const internal::CleanupRecord* r) const;
  void LinkCleanup(internal::CleanupRecord* r, CleanupPhase phase);
  void UnlinkCleanup(internal::CleanupRecord* r);
  bool HasCleanups(CleanupPhase phase) const {
    return extras_ != nullptr && ExtrasHaveCleanups(phase);
  }
  bool ExtrasHaveCleanups(CleanupPhase phase) const;
  bool RunCleanups(CleanupPhase phase, size_t walk);
  void ForgetCleanups();

  // Savepoints (savepoint.cc; the rewind's walk is in context.cc).
  mcx::Mark MarkImpl(unsigned flags);
  internal::MarkRecord* FindMark(const mcx::Mark& mark) const;
  Failure RejectMark(const mcx::Mark& mark);
  Failure RewindImpl(const mcx::Mark& mark, RewindCleanups cleanups, uintptr_t frame);
  // Runs (or drops) this context's `phase` cleanups registered since
  // `mark`; false when user code disturbed the rewind (walk `walk`).
  bool RewindCleanupsSince(CleanupPhase phase, const mcx::Mark& mark, RewindCleanups cleanups,
                           size_t walk);
  // `child` is leaving this context: marks whose boundary it is move to its
  // older sibling.
  void MoveMarkBoundaries(const Context* child);
  bool SinceMarkRunsUserCode(const internal::MarkRecord* m) const;
  void FinishRewind(internal::MarkRecord* m);
  bool HasMarks() const;

  // The tree (context.cc).
  bool CheckLive(const char* operation) const;
  // Checking builds: reports `operation` on a context being torn down.
  void CheckNotTearingDown(const char* operation) const {
    if (internal::kChecking && state_ == State::kTearingDown) ReportTearingDown(operation);
  }
  ABSL_ATTRIBUTE_NOINLINE void ReportTearingDown(const char* operation) const;
  // Checking builds: ExpectAllFreed's check, before the kind lets go of the
  // chunks (live_chunks.cc).
  void CheckAllFreed(const char* operation) const {
#if MCX_CHECKING
    if (expect_all_freed_) internal::ReportLeaks(this, operation);
#else
    (void)operation;
#endif
  }
  // `frame`: the stack frame of the public call (Destroy, Reset).
  void TearDown(bool destroy_self, const ResetOptions& options, uintptr_t frame);
  void ReleaseSelf();
  // ReleaseSelf's body (context.cc). `head_child`: this context is its
  // parent's newest child and the parent's kind takes no tree lock, so
  // unlinking it is two stores.
  inline void ReleaseSelfImpl(bool head_child);
  Context* ReleasePlainLeaves(size_t walk);
  inline void LinkUnder(Context* parent);  // internal/context_impl.h
  inline void Unlink();
  // TrySetParent's work. On kLimit, `*limited` is the ancestor whose limit
  // refused and `*bytes` the bytes that would have moved (SetParent's
  // message).
  Failure Reparent(Context* new_parent, const Context** limited, size_t* bytes);
  size_t NameOffset() const;

  // The block ledger (block_ledger.cc): blocks for kinds (kind_api.h),
  // limits and the reserve.
  void* AcquireBlock(size_t min_size, size_t alignment, size_t* actual, size_t usable_size);
  void ReleaseBlock(void* block, size_t size);
  Block ReallocateBlock(Block block, size_t keep, size_t new_min_size, size_t alignment);
  void SetBumpWindow(char* ptr, char* end, size_t max) {
    bump_ptr_ = ptr;
    bump_end_ = end;
    // Under --config=valgrind every chunk must be announced to memcheck,
    // which the inline path does not do: it is off. So it is in checking
    // builds, where the kind keeps each chunk's site (and its checks).
    // Larger requests than the field holds take the slow path, where the
    // kind serves them alike.
    max_bump_ = internal::kValgrind || internal::kChecking ? 0
                : max < kMaxBumpField                       ? static_cast<uint16_t>(max)
                                                            : kMaxBumpField;
  }
  // The learned first block (kind.h, kDefaultFirstBlockSize): kinds report
  // growth; creation reads the parent's size.
  static constexpr size_t kLearnedUnit = 64;
  static_assert(kDefaultFirstBlockSize / kLearnedUnit <= 0xFF,
                "the learned first block fits its byte");
  size_t LearnedFirstBlock() const {
    return size_t{learned_first_block_.load(std::memory_order_relaxed)} * kLearnedUnit;
  }
  void FirstBlockOutgrown(size_t needed);
  bool FirstBlockLearns() const {
    return parent_ != nullptr &&
           parent_->learned_first_block_.load(std::memory_order_relaxed) <
               kDefaultFirstBlockSize / kLearnedUnit;
  }
  bool FillReserve(size_t blocks, size_t block_size, size_t alignment);
  void* TakeFromReserve(size_t min_size, size_t alignment, size_t* actual);
  bool KeepForReserve(void* block, size_t size);
  void ReleaseReserve();
  void ClobberReleased(void* block, size_t size);
  // Whether this context or one below it is shared by threads (its kind
  // takes the tree lock): no limit or soft limit may be on it or above it,
  // since one thread checks and charges a limit in two steps (shared.h).
  bool SharedAtOrBelow() const;
  // The nearest ancestor-or-self with a limit, and the next one above a
  // limited context.
  Context* NearestLimited();
  Context* NextLimited();
  size_t LimitHeadroom();
  // Inline (internal/context_impl.h): one load when no context anywhere
  // has a limit.
  inline bool ChargeLimits(size_t bytes);
  // As ChargeLimits, for the first charge of a block an allocation needs:
  // a soft limit may refuse it for its callback (pressure.h).
  inline bool ChargeBlock(size_t bytes);
  inline void UnchargeLimits(size_t bytes);
  bool ChargeLimitsSlow(size_t bytes, bool pressure = false);
  void UnchargeLimitsSlow(size_t bytes);


  // The header: 96 bytes in release builds (PostgreSQL's MemoryContextData
  // is 80, nginx's ngx_pool_t 80). Fast-path fields first, in one cache
  // line; what only some contexts use is in the side record; the first
  // block's size is in that block, right after this header and before the
  // kind's state (kFirstBlockSizeOffset in internal/create.h; PostgreSQL keeps its
  // keeper block's end in that block too). The block mark takes 48 bits (more than a 64-bit process
  // can address), so that it shares its word with the window's limit.
  char* bump_ptr_ = nullptr;
  char* bump_end_ = nullptr;
  // The high-water mark of mem_allocated_, recorded when it goes down (the
  // mark so far is the larger of the two): growth pays nothing for it.
  uint64_t peak_blocks_ : 48;
  uint16_t max_bump_ = 0;         // largest request the window serves; 0: none
  State state_ = State::kCreating;
  internal::FailureSlot last_failure_{Failure::kNone};
  // The first-block size this context's children start with when their kind
  // leaves it to the tree, in units of kLearnedUnit (0: the smallest); it
  // grows when a child outgrows its first block. Atomic (relaxed): a child's
  // growth may store it while another thread creates a sibling.
  std::atomic<uint8_t> learned_first_block_{0};
  uint32_t num_blocks_ = 0;       // blocks held, the first included
  const KindMethods* methods_ = nullptr;
  Context* parent_ = nullptr;
  Context* first_child_ = nullptr;   // newest child
  Context* next_sibling_ = nullptr;  // older sibling
  Context* prev_sibling_ = nullptr;  // newer sibling
  BlockSource* source_ = nullptr;
  size_t mem_allocated_ = 0;         // bytes in blocks held by this context
  internal::ContextExtras* extras_ = nullptr;  // the side record, or none
#if MCX_CHECKING
  std::atomic<const void*> user_{nullptr};  // thread in an operation
  int use_depth_ = 0;                       // nesting of that thread's operations
  // The site of the allocation being served (NoteAllocation), for the kind.
  // Relaxed atomic: every thread allocating in a shared context sets it.
  std::atomic<internal::SiteId> pending_site_{internal::kUnknownSiteId};
  bool expect_all_freed_ = false;  // ExpectAllFreed
#endif
};

// --- Inline definitions -----------------------------------------------------

// Context::Alloc
//
// Cost note: with a bump window (pool kind) this is an add and a mask, two
// compares and a store, behind one well-predicted branch; a kind without a
// window (freelist, slab) is called through its table here, in release
// builds, with no wrapper between (as Free calls it); everything else is
// out of line. Always inlined: GCC otherwise keeps it out of line at some
// call sites, a call on the pool's fast path. The site is not used in
// release builds, and vanishes with the inlining.
inline void* Context::Alloc(size_t size, AllocationSite site) {
  NoteAllocation(size, site);
  void* p;
  if (ABSL_PREDICT_TRUE(TryBump(size, kDefaultAlignment, &p))) return p;
  // A kind without a window is called here: release builds check nothing
  // else on the way (AllocSlowBody).
  if (!internal::kChecking && !internal::kValgrind && ABSL_PREDICT_TRUE(size <= kMaxAllocSize)) {
    return methods_->alloc_or_refuse[kThrow](this, size, kDefaultAlignment);
  }
  return AllocSlow(size, kDefaultAlignment);
}

inline void* Context::TryAlloc(size_t size, AllocationSite site) noexcept {
  NoteAllocation(size, site);
  void* p;
  if (ABSL_PREDICT_TRUE(TryBump(size, kDefaultAlignment, &p))) return p;
  if (!internal::kChecking && !internal::kValgrind && ABSL_PREDICT_TRUE(size <= kMaxAllocSize)) {
    return methods_->alloc_or_refuse[kNoThrow](this, size, kDefaultAlignment);
  }
  return TryAllocSlow(size, kDefaultAlignment);
}

inline void* Context::AllocBytes(size_t size, AllocationSite site) {
  NoteAllocation(size, site);
  void* p;
  if (ABSL_PREDICT_TRUE(TryBump(size, 1, &p))) return p;
  return AllocSlow(size, 1);
}

inline void* Context::TryAllocBytes(size_t size, AllocationSite site) noexcept {
  NoteAllocation(size, site);
  void* p;
  if (ABSL_PREDICT_TRUE(TryBump(size, 1, &p))) return p;
  return TryAllocSlow(size, 1);
}

// Context::Free
//
// Release builds go straight to the kind: a call through the table, no
// wrapper call in between (W3 churn frees on every step).
inline void Context::Free(void* p) {
  if (p == nullptr) return;
  if (!internal::kChecking && !internal::kValgrind) {
    methods_->free(this, p);
    return;
  }
  FreeChecked(p);
}

inline void Context::Free(void* p, size_t size) {
  if (internal::kChecking && p != nullptr) CheckFreeSize(p, size);
  Free(p);
}

namespace internal {

// A callable moved into context memory, run by a trampoline. Its captures
// are destroyed after it runs, also when it throws.
template <typename F>
struct CallableCleanup {
  static void Run(void* self) {
    struct Destroyer {
      F* f;
      ~Destroyer() { f->~F(); }
    } destroyer{static_cast<F*>(self)};
    (*destroyer.f)();
  }
  static void Destroy(void* self) { static_cast<F*>(self)->~F(); }
};

// The failure path (failure.h) for helpers outside the class (strings.h,
// new.h): Try forms record the reason and return nullptr, the others call
// the handler and throw.
struct FailAccess {
  static void* Fail(Context* ctx, Failure failure, size_t size, bool may_throw) {
    return ctx->Fail(failure, size, may_throw ? Context::kThrow : Context::kNoThrow);
  }
};

// What New<T> (new.h) needs of the cleanup machinery.
struct CleanupAccess {
  static CleanupRecord* Reserve(Context* ctx) { return ctx->NewCleanupRecord(Context::kThrow); }
  static void Return(Context* ctx, CleanupRecord* r) { ctx->ReturnCleanupRecord(r); }
  static CleanupHandle Commit(Context* ctx, CleanupRecord* r, CleanupFn fn, void* arg) {
    return ctx->CommitCleanup(r, fn, arg, nullptr, CleanupPhase::kAfterChildren);
  }
};

}  // namespace internal

// A plain context's header (release builds; checking builds add the
// concurrency check's fields). tests/context/context_test.cc says so too.
#if !MCX_CHECKING
static_assert(sizeof(Context) <= 96, "the context header is at most 96 bytes");
#endif

// Context::AddCleanup (callable)
//
// The record and the storage come first, the callable is moved in last, so
// a failure leaves the callable unconsumed and nothing registered, and a
// move constructor that throws leaves nothing behind but freed storage.
template <typename F, typename>
CleanupHandle Context::AddCleanup(F&& f, CleanupPhase phase) {
  using Fn = std::decay_t<F>;
  static_assert(alignof(Fn) <= kDefaultAlignment,
                "over-aligned cleanup callables are not supported");
  CheckNotTearingDown("registering a cleanup");
  internal::CleanupRecord* r = NewCleanupRecord(kThrow);
  void* mem = TryAlloc(sizeof(Fn), internal::InternalSite());
  if (mem == nullptr) {
    ReturnCleanupRecord(r);
    Fail(last_failure_, sizeof(Fn), kThrow);
  }
  Fn* fn;
  try {
    fn = new (mem) Fn(std::forward<F>(f));
  } catch (...) {
    Free(mem);
    ReturnCleanupRecord(r);
    throw;
  }
  return CommitCleanup(r, &internal::CallableCleanup<Fn>::Run,
                       fn, &internal::CallableCleanup<Fn>::Destroy, phase);
}

}  // namespace mcx

#endif  // MCX_CONTEXT_CONTEXT_H_
