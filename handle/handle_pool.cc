// Handle pools (handle_pool.h): slots in blocks of a context's memory, a
// version per slot, a tag per pool. The generation checks are those of the
// real-time pools in the seeds and of game engines' handle tables; the
// retirement of a slot whose version is used up, instead of letting the
// version wrap, is what makes "never someone else's data" hold without a
// probability attached.

#include "mcx/handle/handle_pool.h"

#include <atomic>
#include <cstring>
#include <new>
#include <string>

#include "mcx/context/internal/checking.h"
#include "mcx/context/internal/failure.h"
#include "mcx/context/internal/format.h"
#include "mcx/context/internal/sanitizer.h"

namespace mcx {
namespace {

// A check message (internal::AppendFormat: the kinds' formatter, which links
// no Abseil library).
template <typename... Args>
std::string Message(const char* format, const Args&... args) {
  std::string out;
  internal::AppendFormat(&out, format, args...);
  return out;
}

// Tags 1..65535, process-wide: a pool made after a reset (or in another
// context at the same address) refuses the handles of the pools before it.
std::atomic<uint32_t> next_tag{0};

uint32_t NextTag() {
  constexpr uint32_t kTags = (uint32_t{1} << kHandleTagBits) - 1;
  return next_tag.fetch_add(1, std::memory_order_relaxed) % kTags + 1;
}

size_t RoundUp(size_t n, size_t a) { return (n + a - 1) & ~(a - 1); }

uint32_t CeilLog2(uint32_t v) { return v <= 1 ? 0 : 32 - __builtin_clz(v - 1); }

bool IsPow2(size_t v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace

bool HandlePool::Validate(const HandlePoolOptions& o) {
  const char* why = nullptr;
  size_t bad = 0;
  if (o.num_classes == 0 || o.num_classes > kMaxHandleClasses) {
    why = "needs 1 to 16 classes";
    bad = o.num_classes;
  } else if (!IsPow2(o.alignment) || o.alignment > kMaxAlignment) {
    why = "alignment is not a power of two up to kMaxAlignment";
    bad = o.alignment;
  } else if (o.max_version > kMaxHandleVersion) {
    why = "max_version is above kMaxHandleVersion";
    bad = o.max_version;
  } else {
    for (size_t i = 0; i < o.num_classes && why == nullptr; ++i) {
      const HandleClass& c = o.classes[i];
      bad = i;
      if (c.slot_size == 0 || c.slot_size > kMaxAllocSize / kMaxHandleSlots) {
        why = "a class's slot size is 0 or too large";
      } else if (i > 0 && c.slot_size <= o.classes[i - 1].slot_size) {
        why = "slot sizes do not ascend at class";
      } else if (c.count > kMaxHandleSlots || c.grow > kMaxHandleSlots / 2) {
        why = "a class has more slots than a handle can index, at class";
      } else if (c.count == 0 && c.grow == 0) {
        why = "a class has no slots and no growth, at class";
      }
    }
  }
  if (why == nullptr) return true;
  internal::ReportMisuse("handle pool options: %s (%zu)", why, bad);
  return false;
}

HandlePool* HandlePool::Create(Context* ctx, const HandlePoolOptions& options) {
  return CreateImpl(ctx, options, /*throws=*/true);
}

HandlePool* HandlePool::TryCreate(Context* ctx, const HandlePoolOptions& options) noexcept {
  return CreateImpl(ctx, options, /*throws=*/false);
}

// HandlePool::CreateImpl
//
// The header, each class's block table and first block, then the cleanup,
// last: whatever fails, what was taken so far is freed and nothing is
// registered. The throwing form makes the context's throwing calls (so its
// failure handler runs) and frees on the way out.
HandlePool* HandlePool::CreateImpl(Context* ctx, const HandlePoolOptions& o, bool throws) {
  if (!Validate(o)) return nullptr;
  void* mem = throws ? ctx->Alloc(sizeof(HandlePool)) : ctx->TryAlloc(sizeof(HandlePool));
  if (mem == nullptr) return nullptr;
  HandlePool* pool = new (mem) HandlePool();
  pool->ctx_ = ctx;
  pool->tag_ = NextTag();
  pool->num_classes_ = static_cast<uint32_t>(o.num_classes);
  pool->max_version_ = o.max_version;
  pool->alignment_ = o.alignment;
  pool->spill_ = o.spill;
  pool->bytes_ = sizeof(HandlePool);
  for (uint32_t i = 0; i < pool->num_classes_; ++i) {
    Class& c = pool->classes_[i];
    c = Class{};
    c.slot_size = o.classes[i].slot_size;
    c.stride = RoundUp(c.slot_size, o.alignment);
    c.first_count = o.classes[i].count;
    c.grows = o.classes[i].grow != 0;
    c.grow_shift = c.grows ? CeilLog2(o.classes[i].grow) : 0;
    c.free_head = kEnd;
    c.blocks = nullptr;
  }
  auto undo = [pool] { pool->ReleaseMemory(); };
  try {
    for (uint32_t i = 0; i < pool->num_classes_; ++i) {
      Failure why;
      if (!pool->AddBlock(&pool->classes_[i], pool->classes_[i].first_count, throws, &why)) {
        undo();
        return nullptr;
      }
    }
    pool->cleanup_ = throws ? ctx->AddCleanup(&OnTeardown, pool, CleanupPhase::kAfterChildren)
                            : ctx->TryAddCleanup(&OnTeardown, pool, CleanupPhase::kAfterChildren);
  } catch (...) {
    undo();
    throw;
  }
  if (!pool->cleanup_) {
    undo();
    return nullptr;
  }
  return pool;
}

// The context's reset or destroy: the memory goes with the context right
// after; the header is marked so that a use of this pool from now on is
// recognised while the memory is not reused.
void HandlePool::OnTeardown(void* p) { static_cast<HandlePool*>(p)->magic_ = kDeadMagic; }

void HandlePool::Destroy() {
  CheckAlive("Destroy");
  ctx_->RemoveCleanup(cleanup_);
  ReleaseMemory();
}

// Frees every block, table and the header as ctx->Free frees them (the pool
// kind keeps small chunks until its reset). The slots are unpoisoned first:
// the kind may read or write the chunk it takes back.
void HandlePool::ReleaseMemory() {
  Context* ctx = ctx_;
  for (uint32_t i = 0; i < num_classes_; ++i) {
    Class& c = classes_[i];
    for (uint32_t b = 0; b < c.num_blocks; ++b) {
      if (c.blocks[b].slots == nullptr) continue;
      const uint32_t count = b == 0 ? c.first_count : uint32_t{1} << c.grow_shift;
      internal::UnpoisonMemoryRegion(c.blocks[b].slots, BlockBytes(c, count));
      ctx->Free(c.blocks[b].slots);
    }
    ctx->Free(c.blocks);
  }
  magic_ = kDeadMagic;
  this->~HandlePool();
  ctx->Free(this);
}

size_t HandlePool::BlockBytes(const Class& c, uint32_t count) {
  return RoundUp(size_t{count} * c.stride, alignof(SlotMeta)) + size_t{count} * sizeof(SlotMeta);
}

// HandlePool::AddBlock
//
// `count` more slots for class `c`, taken before any other free slot (in
// index order). Block 0 is the first block, possibly empty; later blocks all
// hold 1 << grow_shift slots, so an index finds its block with a shift.
bool HandlePool::AddBlock(Class* c, uint32_t count, bool throws, Failure* why) {
  *why = Failure::kOutOfMemory;
  if (count > kMaxHandleSlots - c->capacity) return false;  // no index left
  if (c->num_blocks == c->table_size) {
    const uint32_t size = c->table_size == 0 ? (c->grows ? 4 : 1) : c->table_size * 2;
    const size_t table_bytes = size * sizeof(SlotBlock);
    auto* table = static_cast<SlotBlock*>(throws ? ctx_->Alloc(table_bytes)
                                                  : ctx_->TryAlloc(table_bytes));
    if (table == nullptr) {
      *why = ctx_->last_failure();
      return false;
    }
    if (c->num_blocks != 0) std::memcpy(table, c->blocks, c->num_blocks * sizeof(SlotBlock));
    if (c->blocks != nullptr) {
      ctx_->Free(c->blocks);
      bytes_ -= c->table_size * sizeof(SlotBlock);
    }
    c->blocks = table;
    c->table_size = size;
    bytes_ += table_bytes;
  }
  SlotBlock b{nullptr, nullptr};
  if (count != 0) {
    const size_t bytes = BlockBytes(*c, count);
    char* mem = static_cast<char*>(throws ? ctx_->AllocAligned(bytes, alignment_)
                                          : ctx_->TryAllocAligned(bytes, alignment_));
    if (mem == nullptr) {
      *why = ctx_->last_failure();
      return false;
    }
    b.slots = mem;
    b.meta = reinterpret_cast<SlotMeta*>(mem + RoundUp(size_t{count} * c->stride,
                                                       alignof(SlotMeta)));
    for (uint32_t k = 0; k < count; ++k) {
      b.meta[k].version = 0;
      b.meta[k].next = k + 1 < count ? c->capacity + k + 1 : c->free_head;
    }
    c->free_head = c->capacity;
    if (internal::kChecking) std::memset(mem, internal::kClobberByte, size_t{count} * c->stride);
    internal::PoisonMemoryRegion(mem, size_t{count} * c->stride);
    bytes_ += bytes;
  }
  c->blocks[c->num_blocks++] = b;
  c->capacity += count;
  c->free += count;
  return true;
}

Handle HandlePool::Take(uint32_t cls) {
  Class& c = classes_[cls];
  const uint32_t index = c.free_head;
  SlotMeta* meta;
  char* slot;
  Locate(c, index, &meta, &slot);
  c.free_head = meta->next;
  meta->next = kLive;
  --c.free;
  ++c.live;
  ++live_;
  ++allocations_;
  // Only the slot's size: ASan reports a write into the padding to the next.
  internal::UnpoisonMemoryRegion(slot, c.slot_size);
  return Handle::Make(tag_, meta->version, cls, index);
}

// HandlePool::Allocate
//
// The fitting class's free list; else its growth, if it grows; else the
// first larger class with a free slot (no growth of those: a small request
// must not grow a class of large slots).
Handle HandlePool::Allocate(size_t size) {
  CheckAlive("Allocate");
  uint32_t cls = 0;
  while (cls < num_classes_ && classes_[cls].slot_size < size) ++cls;
  if (cls == num_classes_) {
    last_failure_ = Failure::kBadSize;
    ++failed_;
    return Handle();
  }
  Class& c = classes_[cls];
  if (ABSL_PREDICT_TRUE(c.free_head != kEnd)) return Take(cls);
  Failure why = Failure::kOutOfMemory;
  if (c.grows && AddBlock(&c, uint32_t{1} << c.grow_shift, /*throws=*/false, &why)) {
    return Take(cls);
  }
  for (uint32_t k = cls + 1; spill_ && k < num_classes_; ++k) {
    if (classes_[k].free_head != kEnd) {
      ++spills_;
      return Take(k);
    }
  }
  last_failure_ = why;
  ++failed_;
  return Handle();
}

bool HandlePool::Free(Handle h) {
  CheckAlive("Free");
  if (!h) return false;  // as free(nullptr)
  const uint32_t cls = h.size_class();
  const uint32_t index = h.index();
  if (h.tag() != tag_ || cls >= num_classes_ || index >= classes_[cls].capacity) {
    internal::ReportMisuse(
        "free of handle 0x%016llx, which handle pool %p (tag %u, in context '%s') did not hand "
        "out: it is another pool's, or from before its context's reset",
        static_cast<unsigned long long>(h.bits()), static_cast<const void*>(this), tag_,
        ctx_->name());
    return false;
  }
  Class& c = classes_[cls];
  SlotMeta* meta;
  char* slot;
  Locate(c, index, &meta, &slot);
  if (meta->next != kLive || meta->version != h.version()) {
    if (h.version() > meta->version) {
      internal::ReportMisuse(
          "free of handle 0x%016llx of handle pool %p: version %u was never handed out (the "
          "slot is at version %u)",
          static_cast<unsigned long long>(h.bits()), static_cast<const void*>(this), h.version(),
          meta->version);
      return false;
    }
    ++stale_frees_;
    return false;
  }
  if (internal::kChecking) std::memset(slot, internal::kClobberByte, c.slot_size);
  internal::PoisonMemoryRegion(slot, c.stride);
  if (meta->version >= max_version_) {
    meta->next = kRetired;  // its versions are used up: never again
    ++c.retired;
  } else {
    ++meta->version;
    meta->next = c.free_head;
    c.free_head = index;
    ++c.free;
  }
  --c.live;
  --live_;
  ++frees_;
  return true;
}

void HandlePool::ReportDead(const char* operation) const {
  internal::ReportMisuse("%s on handle pool %p, which is gone (its context was reset or "
                         "destroyed, or the pool destroyed)",
                         operation, static_cast<const void*>(this));
}

HandlePool::Stats HandlePool::GetStats() const {
  Stats s;
  s.num_classes = num_classes_;
  for (uint32_t i = 0; i < num_classes_; ++i) {
    const Class& c = classes_[i];
    ClassStats& cs = s.classes[i];
    cs.slot_size = c.slot_size;
    cs.stride = c.stride;
    cs.slots = c.capacity;
    cs.live = c.live;
    cs.free = c.free;
    cs.retired = c.retired;
    cs.blocks = 0;
    for (uint32_t b = 0; b < c.num_blocks; ++b) cs.blocks += c.blocks[b].slots != nullptr;
  }
  s.allocations = allocations_;
  s.frees = frees_;
  s.spills = spills_;
  s.failed = failed_;
  s.stale_frees = stale_frees_;
  s.bytes = bytes_;
  return s;
}

bool HandlePool::Check(std::string* error) const {
  auto fail = [error](std::string what) {
    if (error != nullptr) *error = std::move(what);
    return false;
  };
  if (magic_ != kLiveMagic) return fail("the pool is gone");
  size_t live = 0;
  for (uint32_t cls = 0; cls < num_classes_; ++cls) {
    const Class& c = classes_[cls];
    uint32_t n_live = 0, n_retired = 0;
    for (uint32_t i = 0; i < c.capacity; ++i) {
      SlotMeta* meta;
      char* slot;
      Locate(c, i, &meta, &slot);
      if (meta->version > max_version_) {
        return fail(Message("class %d slot %d: version %d above the maximum", cls, i,
                                    meta->version));
      }
      if (meta->next == kLive) ++n_live;
      if (meta->next == kRetired) ++n_retired;
    }
    uint32_t n_free = 0;
    for (uint32_t i = c.free_head; i != kEnd; ++n_free) {
      if (i >= c.capacity || n_free > c.capacity) {
        return fail(Message("class %d: the free list is broken at %d", cls, i));
      }
      SlotMeta* meta;
      char* slot;
      Locate(c, i, &meta, &slot);
      if (meta->next == kLive || meta->next == kRetired) {
        return fail(Message("class %d: slot %d is on the free list and not free", cls, i));
      }
      if (internal::kChecking) {
        for (size_t k = 0; k < c.slot_size; ++k) {
          unsigned char byte;
          internal::CopyFromPoisoned(&byte, slot + k, 1);
          if (byte != static_cast<unsigned char>(internal::kClobberByte)) {
            return fail(Message("class %d: free slot %d was written at byte %d", cls, i,
                                        k));
          }
        }
      }
      i = meta->next;
    }
    if (n_live != c.live || n_free != c.free || n_retired != c.retired ||
        n_live + n_free + n_retired != c.capacity) {
      return fail(Message("class %d: %d live, %d free, %d retired of %d; counted %d, %d, "
                                  "%d",
                                  cls, c.live, c.free, c.retired, c.capacity, n_live, n_free,
                                  n_retired));
    }
    live += n_live;
  }
  if (live != live_) return fail(Message("%d live slots, counted %d", live_, live));
  return true;
}

}  // namespace mcx
