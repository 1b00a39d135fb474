// The block ledger: every block a context holds comes and goes through here.
// It keeps the accounting (bytes and blocks per context, O(1)), charges and
// uncharges limits before the source is asked (so a limit never costs a
// system call), and keeps the reserve. Kinds reach it through
// AcquireBlock, ReleaseBlock and ReallocateBlock.
//
// Limits: a limited context keeps the bytes of its whole subtree in its side
// record. A block acquired anywhere below is charged to every limited
// ancestor-or-self, found by walking up the parents (one load when no
// context in the process has a limit).

#include <atomic>
#include <cstdint>
#include <cstring>

#include "mcx/context/budget.h"
#include "mcx/context/context.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/context_impl.h"
#include "mcx/context/internal/extras.h"
#include "mcx/context/internal/sanitizer.h"

namespace mcx {

using internal::ContextExtras;
using internal::ReserveBlock;

namespace internal {
std::atomic<size_t> limited_contexts{0};
}  // namespace internal

namespace {
// Set by ChargeLimitsSlow when a budget, not a context's limit, refused:
// the reserve then serves the block (its blocks are charged already).
__thread bool budget_refused;
}  // namespace

// --- Limits ------------------------------------------------------------------

// Context::NearestLimited
//
// The nearest ancestor-or-self with a limit. The walk costs the distance to
// it; programs without limits pay one load.
Context* Context::NearestLimited() {
  if (!internal::AnyLimited()) return nullptr;
  for (Context* c = this; c != nullptr; c = c->parent_) {
    if (c->extras_ != nullptr && c->extras_->Limited()) return c;
  }
  return nullptr;
}

// The next limited context above this (limited) one.
Context* Context::NextLimited() { return parent_ != nullptr ? parent_->NearestLimited() : nullptr; }

// Limits are checked before any budget is charged, and budgets (atomic,
// shared with other threads) are charged one by one; a refusal gives back
// what the earlier ones took. With `pressure` (ChargeBlock: the first charge
// of a block an allocation needs), a soft limit that the block would cross
// refuses it first, so that the front runs its callback and retries
// (pressure.cc).
bool Context::ChargeLimitsSlow(size_t bytes, bool pressure) {
  budget_refused = false;
  Context* first = NearestLimited();
  if (first == nullptr) return true;
  if (pressure && PressureDue(first, bytes)) return false;
  for (Context* l = first; l != nullptr; l = l->NextLimited()) {
    if (bytes > l->extras_->limit - l->extras_->subtree_bytes) {
      // Not a refusal the front can serve: an older one is forgotten.
      if (pressure) internal::ledger_refusal.refused = nullptr;
      return false;
    }
  }
  for (Context* l = first; l != nullptr; l = l->NextLimited()) {
    Budget* b = l->extras_->budget;
    if (b == nullptr) continue;
    const bool call_back = pressure && b->soft_fn_ != nullptr && BudgetSoftLimitArmed(l);
    const Budget::Charged charged = b->Charge(bytes, call_back);
    if (charged == Budget::Charged::kYes) continue;
    for (Context* u = first; u != l; u = u->NextLimited()) {
      if (u->extras_->budget != nullptr) u->extras_->budget->Uncharge(bytes);
    }
    if (charged == Budget::Charged::kSoftLimit) {
      RefuseForBudget(l, bytes);
      return false;
    }
    budget_refused = true;
    if (pressure) internal::ledger_refusal.refused = nullptr;  // as for a hard limit
    return false;
  }
  for (Context* l = first; l != nullptr; l = l->NextLimited()) {
    l->extras_->subtree_bytes += bytes;
  }
  return true;
}

// Context::LimitHeadroom
//
// The most bytes a block acquired here could have without crossing any
// limit above: the smallest headroom of the limited ancestors-or-self.
size_t Context::LimitHeadroom() {
  size_t room = kNoLimit;
  for (Context* l = NearestLimited(); l != nullptr; l = l->NextLimited()) {
    const size_t held = l->extras_->subtree_bytes;
    const size_t left = held < l->extras_->limit ? l->extras_->limit - held : 0;
    if (left < room) room = left;
  }
  return room;
}

void Context::UnchargeLimitsSlow(size_t bytes) {
  for (Context* l = NearestLimited(); l != nullptr; l = l->NextLimited()) {
    l->extras_->subtree_bytes -= bytes;
    if (l->extras_->budget != nullptr) l->extras_->budget->Uncharge(bytes);
  }
}

// Context::TrySetBudget
//
// A budget counts as a limit for the ledger: the context keeps its
// subtree's bytes, and the count of limited contexts (one per limit, one
// per budget) keeps the ledger off its one-load fast path.
Failure Context::TrySetBudget(Budget* budget) {
  Budget* old = extras_ != nullptr ? extras_->budget : nullptr;
  if (budget == old) return Failure::kNone;
  if (budget == nullptr) {
    old->Uncharge(extras_->subtree_bytes);
    extras_->budget = nullptr;
    internal::CountLimitedChange(true, extras_->Limited());
    return Failure::kNone;
  }
  if (old != nullptr) {
    last_failure_ = Failure::kBadArgument;
    return Failure::kBadArgument;
  }
  ContextExtras* x = Extras();  // in the memory SubtreeBytes counts below
  if (x == nullptr) return last_failure_;
  const size_t held = SubtreeBytes();
  if (budget->Charge(held, /*call_back=*/false) != Budget::Charged::kYes) {
    last_failure_ = Failure::kLimit;
    return Failure::kLimit;
  }
  const bool was = x->Limited();
  if (!was) x->subtree_bytes = held;  // a limit or soft limit keeps it already
  x->budget = budget;
  internal::CountLimitedChange(was, true);
  return Failure::kNone;
}

Budget* Context::budget() const { return extras_ != nullptr ? extras_->budget : nullptr; }

// Context::TrySetLimit
//
// The side record is made first (it is in the memory SubtreeBytes counts);
// SetLimit (status.cc) tells the two failures apart by whether it exists.
Failure Context::TrySetLimit(size_t bytes) {
  // Nothing shared below a context already limited: only a first limit
  // walks the subtree for one.
  const bool limited =
      extras_ != nullptr && (extras_->limit != kNoLimit || extras_->soft_limit != kNoLimit);
  if (bytes != kNoLimit && !limited && SharedAtOrBelow()) {
    last_failure_ = Failure::kBadArgument;
    return Failure::kBadArgument;
  }
  if (bytes == kNoLimit) {
    if (extras_ != nullptr) {
      const bool was = extras_->Limited();
      extras_->limit = kNoLimit;
      internal::CountLimitedChange(was, extras_->Limited());
    }
    return Failure::kNone;
  }
  ContextExtras* x = Extras();  // in the memory SubtreeBytes counts below
  if (x == nullptr) return last_failure_;  // Extras says why
  size_t held = SubtreeBytes();
  if (held > bytes) {
    last_failure_ = Failure::kLimit;
    return Failure::kLimit;
  }
  const bool was = x->Limited();
  x->limit = bytes;
  x->subtree_bytes = held;
  internal::CountLimitedChange(was, true);
  return Failure::kNone;
}

size_t Context::limit() const { return extras_ != nullptr ? extras_->limit : kNoLimit; }

size_t Context::side_record_bytes() const { return extras_ != nullptr ? extras_->bytes : 0; }

namespace {

// Whether `found` holds for a context of the subtree at `root` (root
// first, then depth first), in constant stack space: stops at the first.
template <typename Found>
bool AnyInSubtree(const Context* root, Found found) {
  const Context* c = root;
  while (c != nullptr) {
    if (found(c)) return true;
    if (c->first_child() != nullptr) {
      c = c->first_child();
      continue;
    }
    while (c != root && c->next_sibling() == nullptr) c = c->parent();
    c = (c == root) ? nullptr : c->next_sibling();
  }
  return false;
}

}  // namespace

bool Context::SharedAtOrBelow() const {
  return AnyInSubtree(this, [](const Context* c) { return c->methods_->lock != nullptr; });
}

size_t Context::SubtreeBytes() const {
  size_t total = 0;
  AnyInSubtree(this, [&total](const Context* c) {
    total += c->mem_allocated_;
    if (c->extras_ != nullptr) total += c->extras_->bytes + c->extras_->reserve_bytes;
    return false;
  });
  return total;
}

// --- Blocks ------------------------------------------------------------------

// Context::AcquireBlock
//
// Every block a kind uses comes through here: the limits are charged before
// the source is asked (so a limit never costs a system call), and the charge
// is undone if the source fails. It is also where the thread meets its
// safe points: a soft limit's callback due, or a report request posted to
// the thread, refuses the block (the kind fails as for a limit, having
// changed nothing) and the front runs them and retries (pressure.cc).
//
// Limits mean data: when the block the kind would like (`min_size`) would
// cross a hard limit but a smaller one the kind can still work with
// (`usable_size`) fits, the block takes what is left under the limit
// instead. Blocks grow geometrically, so without this a limited context
// would be refused with up to half its limit unused. A soft limit's refusal
// is not cut down: it goes back to the front, which calls back and retries.
void* Context::AcquireBlock(size_t min_size, size_t alignment, size_t* actual,
                           size_t usable_size) {
  // Inside a NoAllocScope no block is taken (nor the reserve's): the one
  // check release builds make, where the source may call malloc.
  if (AllocationForbidden()) {
    last_failure_ = Failure::kForbidden;
    return nullptr;
  }
  if (ABSL_PREDICT_FALSE(internal::AnyReportRequests()) && RefuseForRequests()) return nullptr;
  if (!ChargeBlock(min_size)) {
    if (budget_refused) {
      // A budget refused (not a limit): the reserve serves, as for a
      // source that failed; a budget is never given a smaller block.
      if (void* r = TakeFromReserve(usable_size != 0 ? usable_size : min_size, alignment, actual)) {
        return r;
      }
      last_failure_ = Failure::kLimit;
      return nullptr;
    }
    // Only where the kind can work with less, and never below that.
    const bool smaller = usable_size != 0 && usable_size < min_size &&
                         internal::ledger_refusal.refused != this;
    const size_t room = smaller ? LimitHeadroom() : 0;
    if (!smaller || room < usable_size || room >= min_size || !ChargeLimits(room)) {
      last_failure_ = Failure::kLimit;
      return nullptr;
    }
    min_size = room;
  }
  Block block = internal::AcquireFrom(source_, min_size, alignment);
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
  if (mem_allocated_ > peak_blocks_) peak_blocks_ = mem_allocated_;
  mem_allocated_ -= size;
  --num_blocks_;
  ClobberReleased(block, size);
  if (KeepForReserve(block, size)) return;
  UnchargeLimits(size);
  internal::ReleaseTo(source_, Block{block, size});
}

Block Context::ReallocateBlock(Block block, size_t keep, size_t new_min_size,
                               size_t alignment) {
  if (AllocationForbidden()) {
    last_failure_ = Failure::kForbidden;
    return Block{};
  }
  const size_t grow = new_min_size > block.size ? new_min_size - block.size : 0;
  if (ABSL_PREDICT_FALSE(internal::AnyReportRequests()) && RefuseForRequests()) return Block{};
  if (grow != 0 && !ChargeBlock(grow)) {
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
  if (mem_allocated_ > peak_blocks_) peak_blocks_ = mem_allocated_;
  mem_allocated_ = mem_allocated_ - block.size + size;
  fresh.size = size;
  return fresh;
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
  ContextExtras* x = Extras();
  if (x == nullptr) return false;
  if (block_size < sizeof(ReserveBlock)) block_size = sizeof(ReserveBlock);
  // The whole reserve must be a size mcx could hand out at all: refused
  // before any reserve block is acquired (an absurd count would otherwise
  // take blocks until the source fails).
  if (blocks > kMaxAllocSize / block_size) {
    last_failure_ = Failure::kBadSize;
    return false;
  }
  x->reserve_target = blocks;
  x->reserve_block_size = block_size;
  while (x->reserve_count < blocks) {
    if (AllocationForbidden()) {
      last_failure_ = Failure::kForbidden;
      return false;
    }
    if (!ChargeLimits(block_size)) {
      last_failure_ = Failure::kLimit;
      return false;
    }
    Block b = internal::AcquireFrom(source_, block_size, alignment);
    if (b.ptr == nullptr) {
      UnchargeLimits(block_size);
      last_failure_ = Failure::kOutOfMemory;
      return false;
    }
    // Its slack is not charged, so it is not used either.
    auto* r = static_cast<ReserveBlock*>(b.ptr);
    r->size = block_size;
    r->next = x->reserve;
    x->reserve = r;
    ++x->reserve_count;
    x->reserve_bytes += block_size;
  }
  return true;
}

// The first reserve block that is large enough and whose address has the
// alignment: reserve blocks are acquired with the kind's block alignment (a
// rewind_on_free pool aligns its blocks to their size), and blocks kept from
// returns have whatever alignment they came with.
void* Context::TakeFromReserve(size_t min_size, size_t alignment, size_t* actual) {
  if (extras_ == nullptr) return nullptr;
  ContextExtras* x = extras_;
  ReserveBlock** link = &x->reserve;
  while (*link != nullptr && ((*link)->size < min_size ||
                              (reinterpret_cast<uintptr_t>(*link) & (alignment - 1)) != 0)) {
    link = &(*link)->next;
  }
  ReserveBlock* r = *link;
  if (r == nullptr) return nullptr;
  *link = r->next;
  --x->reserve_count;
  x->reserve_bytes -= r->size;
  ++x->reserve_uses;
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
  ContextExtras* x = extras_;
  if (x == nullptr || x->reserve_count >= x->reserve_target ||
      size < x->reserve_block_size || size / kMaxOversize > x->reserve_block_size) {
    return false;
  }
  auto* r = static_cast<ReserveBlock*>(block);
  // The kind may have left the block poisoned, and under Valgrind a reset has
  // already announced its chunks freed: the header is the reserve's now.
  internal::UnpoisonMemoryRegion(r, sizeof(ReserveBlock));
  r->size = size;
  r->next = x->reserve;
  x->reserve = r;
  ++x->reserve_count;
  x->reserve_bytes += size;
  return true;
}

void Context::ReleaseReserve() {
  ContextExtras* x = extras_;
  x->reserve_target = 0;
  while (ReserveBlock* r = x->reserve) {
    x->reserve = r->next;
    size_t size = r->size;
    UnchargeLimits(size);
    source_->Release(Block{r, size});
  }
  x->reserve_count = 0;
  x->reserve_bytes = 0;
}

// --- Counters ----------------------------------------------------------------

size_t Context::live_bytes() const {
  if (methods_->live == nullptr) return kUnknownSize;
  LiveCounts counts;
  methods_->live(this, &counts);
  return counts.live_bytes;
}

size_t Context::peak_live_bytes() const {
  if (methods_->live == nullptr) return kUnknownSize;
  LiveCounts counts;
  methods_->live(this, &counts);
  return counts.peak_live_bytes;
}

void Context::ResetPeak() {
  peak_blocks_ = mem_allocated_;
  if (methods_->reset_peak != nullptr) methods_->reset_peak(this);
}

size_t Context::reserve_blocks() const { return extras_ != nullptr ? extras_->reserve_count : 0; }
size_t Context::reserve_bytes() const { return extras_ != nullptr ? extras_->reserve_bytes : 0; }
uint64_t Context::reserve_uses() const { return extras_ != nullptr ? extras_->reserve_uses : 0; }

}  // namespace mcx
