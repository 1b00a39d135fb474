// Savepoints: marks, their validation, dropping them, and the boundary
// among a context's children that a mark keeps. The rewind itself walks
// user code (cleanups, children's teardowns) and lives beside the teardown
// in context.cc, whose walk records it shares.
//
// Why the pieces are where they are:
//   - A mark's record is allocated in the context before the kind records
//     its position: a rewind to the mark never releases it, a rewind to an
//     older one releases it with the rest, and nothing else needs freeing.
//   - A Mark value is validated by walking the stack of live records from
//     the top, comparing addresses and serials; the record it names is
//     never read, since a passed mark's record may be in released memory.
//   - The children that joined since a mark are the ones newer than the
//     newest child at the mark (children are linked newest first). When
//     that child leaves (destroyed, moved away), its older sibling becomes
//     the boundary: the children newer than it are still exactly those that
//     joined since. The context header has no room for a creation number.

#include <cstddef>
#include <cstdint>
#include <new>

#include "mcx/context/context.h"
#include "mcx/context/internal/extras.h"
#include "mcx/context/internal/failure.h"
#include "mcx/context/internal/mark.h"

namespace mcx {

using internal::ContextExtras;
using internal::MarkRecord;

namespace {

constexpr size_t RecordBytes(size_t position_bytes) {
  return sizeof(MarkRecord) + position_bytes;
}

}  // namespace

mcx::Mark Context::Mark() { return MarkImpl(kThrow); }

mcx::Mark Context::TryMark() noexcept { return MarkImpl(kNoThrow); }

// Context::MarkImpl
//
// The kind is asked first whether it can rewind at all (its table, then its
// options: a refusal changes nothing), then the record is allocated, then
// the kind records its position: whatever the allocation took is before the
// position.
mcx::Mark Context::MarkImpl(unsigned flags) {
  if (!CheckLive("mark")) return {};
  if (state_ == State::kTearingDown) {
    CheckNotTearingDown("marking");
    Fail(Failure::kBadArgument, 0, flags);
    return {};
  }
  if (methods_->rewind == nullptr || methods_->mark == nullptr) {
    Fail(Failure::kUnsupported, 0, flags);
    return {};
  }
  last_failure_ = Failure::kNone;
  if (!methods_->mark(this, nullptr)) {  // the kind refuses for its options
    Fail(last_failure_ != Failure::kNone ? last_failure_ : Failure::kUnsupported, 0, flags);
    return {};
  }
  ContextExtras* x = Extras();  // the stack lives in the side record
  if (x == nullptr) {
    Fail(last_failure_, sizeof(ContextExtras), flags);
    return {};
  }
  const size_t bytes = RecordBytes(methods_->mark_size);
  // mcx's own chunk, as a cleanup record is (live_chunks.h).
  void* mem = TryAlloc(bytes, internal::InternalSite());
  if (mem == nullptr) {
    Fail(last_failure_, bytes, flags);
    return {};
  }
  auto* r = new (mem) MarkRecord();
  if (!methods_->mark(this, r->position())) {
    const Failure why = last_failure_ != Failure::kNone ? last_failure_ : Failure::kUnsupported;
    Free(mem);
    Fail(why, 0, flags);
    return {};
  }
  r->older = x->marks;
  r->serial = ++x->mark_serial;
  r->cleanup_serial = x->cleanup_serial;
  r->boundary = first_child_;
  x->marks = r;
  return mcx::Mark(this, r, r->serial);
}

// Context::FindMark
//
// Serials grow up the stack: the walk stops at the first record older than
// the mark.
MarkRecord* Context::FindMark(const mcx::Mark& mark) const {
  if (mark.context_ != this || mark.record_ == nullptr || extras_ == nullptr) return nullptr;
  for (MarkRecord* r = extras_->marks; r != nullptr && r->serial >= mark.serial_; r = r->older) {
    if (r == mark.record_ && r->serial == mark.serial_) return r;
  }
  return nullptr;
}

// Why `mark` is not on the stack: another context's or empty (kBadArgument),
// or passed (kStaleMark). Recorded as last_failure.
Failure Context::RejectMark(const mcx::Mark& mark) {
  last_failure_ = mark.context_ == this && mark.record_ != nullptr ? Failure::kStaleMark
                                                                   : Failure::kBadArgument;
  return last_failure_;
}

// Context::TryDropMark
//
// The records stay where they are, in the memory of the marks below (or of
// the context), and go with it, by a rewind or a reset: O(1) after the
// lookup, as a commit should be.
Failure Context::TryDropMark(const mcx::Mark& mark) {
  if (!CheckLive("dropping a mark")) return Failure::kBadArgument;
  MarkRecord* r = FindMark(mark);
  if (r == nullptr) return RejectMark(mark);
  extras_->marks = r->older;
  return Failure::kNone;
}

void Context::DropMark(const mcx::Mark& mark) {
  const Failure failure = TryDropMark(mark);
  if (failure != Failure::kNone) Fail(failure, 0, kThrow);
}

size_t Context::mark_depth() const {
  size_t n = 0;
  if (extras_ != nullptr) {
    for (const MarkRecord* r = extras_->marks; r != nullptr; r = r->older) ++n;
  }
  return n;
}

bool Context::HasMarks() const { return extras_ != nullptr && extras_->marks != nullptr; }

void Context::MoveMarkBoundaries(const Context* child) {
  for (MarkRecord* r = extras_->marks; r != nullptr; r = r->older) {
    if (r->boundary == child) r->boundary = child->next_sibling_;
  }
}

}  // namespace mcx
