// Cleanup records: registration, removal and early runs by handle. (The
// teardown runs them: context.cc.) Records live in the context's own memory,
// on one doubly linked list per phase in the side record, newest first, so
// that removal by handle is O(1); removed and run records are reused.

#include <cstdint>
#include <exception>

#include "absl/base/optimization.h"
#include "mcx/context/context.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/cleanup.h"
#include "mcx/context/internal/context_impl.h"
#include "mcx/context/internal/extras.h"
#include "mcx/context/internal/failure.h"

namespace mcx {

using internal::CleanupRecord;
using internal::ContextExtras;

// --- Cleanups ----------------------------------------------------------------

// Registration, removal and early runs of a context that many threads use
// at once (KindMethods::lock) change the lists under the kind's lock; the
// failure path (the handler, which may longjmp) runs after it is released.
CleanupRecord* Context::NewCleanupRecord(unsigned flags) {
  auto take = [this](unsigned take_flags) -> CleanupRecord* {
    ContextExtras* x = Extras();  // the lists live in the side record
    if (x == nullptr) {
      return static_cast<CleanupRecord*>(Fail(last_failure_, sizeof(ContextExtras), take_flags));
    }
    if (x->spare_cleanups != nullptr) {
      CleanupRecord* r = x->spare_cleanups;
      x->spare_cleanups = r->next;
      return r;
    }
    static_assert(alignof(CleanupRecord) <= kDefaultAlignment, "");
    // mcx's own chunk, which the program never frees (live_chunks.h).
    const AllocationSite site = internal::InternalSite();
    return static_cast<CleanupRecord*>(take_flags & kNoThrow
                                           ? TryAlloc(sizeof(CleanupRecord), site)
                                           : Alloc(sizeof(CleanupRecord), site));
  };
  if (ABSL_PREDICT_TRUE(methods_->lock == nullptr)) return take(flags);
  CleanupRecord* r;
  {
    internal::TreeLock lock(this);
    r = take(kNoThrow);
  }
  if (r == nullptr) return static_cast<CleanupRecord*>(Fail(last_failure_, sizeof(CleanupRecord), flags));
  return r;
}

void Context::ReturnCleanupRecord(CleanupRecord* r) {
  internal::TreeLock lock(this);
  r->serial = 0;
  r->next = extras_->spare_cleanups;
  extras_->spare_cleanups = r;
}

CleanupHandle Context::CommitCleanup(CleanupRecord* r, CleanupFn fn, void* arg,
                                     CleanupFn destroy, CleanupPhase phase) {
  internal::TreeLock lock(this);
  r->fn = fn;
  r->arg = arg;
  r->destroy = destroy;
  r->serial = ++extras_->cleanup_serial;
  LinkCleanup(r, phase);
  return CleanupHandle(r, r->serial);
}

void Context::LinkCleanup(CleanupRecord* r, CleanupPhase phase) {
  CleanupRecord*& head = extras_->cleanups[static_cast<int>(phase)];
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
  CleanupRecord*& head = extras_->cleanups[static_cast<int>(r->phase)];
  if (r->prev != nullptr) {
    r->prev->next = r->next;
  } else {
    head = r->next;
  }
  if (r->next != nullptr) r->next->prev = r->prev;
  r->prev = nullptr;
  ReturnCleanupRecord(r);
}

void Context::ReportTearingDown(const char* operation) const {
  internal::ReportMisuse("%s in context '%s' at %p while it is being torn down", operation,
                         name(), static_cast<const void*>(this));
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
  if (r == nullptr || extras_ == nullptr || handle.serial_ <= extras_->cleanup_floor ||
      handle.serial_ > extras_->cleanup_serial) {
    return nullptr;
  }
  // After a rewind dropped registrations, `r` may lie in released memory:
  // it is read only once found on a list (O(cleanups), until the next reset).
  if (ABSL_PREDICT_FALSE(extras_->cleanups_rewound) && !OnCleanupList(r)) return nullptr;
  if (r->owner != this) {
    if (report_foreign) {
      internal::ReportMisuse("cleanup %p belongs to context '%s', not '%s'",
                             static_cast<void*>(r), r->owner->name(), name());
    }
    return nullptr;
  }
  return r->serial == handle.serial_ ? r : nullptr;
}

bool Context::OnCleanupList(const CleanupRecord* r) const {
  for (const CleanupRecord* head : extras_->cleanups) {
    for (const CleanupRecord* c = head; c != nullptr; c = c->next) {
      if (c == r) return true;
    }
  }
  return false;
}

bool Context::RemoveCleanup(CleanupHandle handle) {
  CleanupFn destroy;
  void* storage;
  {
    internal::TreeLock lock(this);
    CleanupRecord* r = LiveCleanup(handle, /*report_foreign=*/true);
    if (r == nullptr) return false;
    destroy = r->destroy;
    storage = r->arg;
    UnlinkCleanup(r);
  }
  if (destroy != nullptr) {  // a callable: destroy it unrun, free its storage
    destroy(storage);
    Free(storage);
  }
  return true;
}

bool Context::RunCleanup(CleanupHandle handle) {
  CleanupFn fn;
  void* arg;
  bool owned;
  {
    internal::TreeLock lock(this);
    CleanupRecord* r = LiveCleanup(handle, /*report_foreign=*/true);
    if (r == nullptr) return false;
    fn = r->fn;
    arg = r->arg;
    owned = r->destroy != nullptr;
    UnlinkCleanup(r);
  }
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

bool Context::ExtrasHaveCleanups(CleanupPhase phase) const {
  return extras_->cleanups[static_cast<int>(phase)] != nullptr;
}

// After a reset: the records were in the memory just reset, and every handle
// made so far is stale.
void Context::ForgetCleanups() {
  if (extras_ == nullptr) return;
  extras_->cleanups[0] = extras_->cleanups[1] = nullptr;
  extras_->spare_cleanups = nullptr;
  extras_->cleanup_floor = extras_->cleanup_serial;
  extras_->cleanups_rewound = false;  // every handle that could be stale is below the floor
}

}  // namespace mcx
