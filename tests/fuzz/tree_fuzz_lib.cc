// The tree fuzz harness: byte string -> program of operations on mcx
// contexts, checked against a shadow model. See tree_fuzz_lib.h and
// tests/fuzz/README.md (the encoding is documented there; keep them in sync).

#include "tests/fuzz/tree_fuzz_lib.h"

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "tests/testing/test_block_sources.h"

namespace mcx {
namespace fuzz {
namespace {

const char* g_label = nullptr;

// MCX_TREE_FUZZ_TRACE=1 prints one line per operation (to follow a crash).
bool Trace() {
  static const bool trace = std::getenv("MCX_TREE_FUZZ_TRACE") != nullptr;
  return trace;
}

// Program bounds: keep one input fast (the replay test runs thousands).
constexpr int kMaxOps = 600;
constexpr size_t kMaxLiveContexts = 40;
constexpr size_t kMaxLiveChunks = 300;
constexpr size_t kMaxPendingCleanups = 150;
// A full verification (every chunk's contents, every context's Check()) runs
// every this many operations, after every teardown, and at the end. The
// cheap checks (accounting, limits, cleanup log, overlap on insert) run after
// every operation.
constexpr int kFullVerifyEvery = 4;
// Every operation is one record of this many bytes: an opcode byte and its
// operands, so that a mutation of one operation leaves the others in place.
constexpr size_t kRecordBytes = 8;

// --- Chunk contents -----------------------------------------------------------

// Every live chunk holds byte i = seed * 131 + i * 7 + 1 (mod 256), the
// pattern of tests/testing/patterns.h. Since 7 is odd that is 7 * (i + k)
// for k = (seed * 131 + 1) * 7^-1, so filling and checking are one memcpy /
// memcmp from a table (fast under ASan, which checks ranges, not bytes).
constexpr size_t kMaxChunkBytes = 1 << 14;  // Reader::Size() stays below this

const unsigned char* PatternTable() {
  static const unsigned char* const table = [] {
    auto* t = new unsigned char[256 + kMaxChunkBytes];
    for (size_t j = 0; j < 256 + kMaxChunkBytes; ++j) t[j] = static_cast<unsigned char>(j * 7);
    return t;
  }();
  return table;
}

const unsigned char* PatternFor(uint32_t seed) {
  constexpr unsigned kInverseOf7 = 183;  // 7 * 183 = 1281 = 5 * 256 + 1
  unsigned k = ((seed * 131u + 1u) * kInverseOf7) & 255u;
  return PatternTable() + k;
}

void Fill(void* p, size_t n, uint32_t seed) { std::memcpy(p, PatternFor(seed), n); }

bool Holds(const void* p, size_t n, uint32_t seed) {
  return std::memcmp(p, PatternFor(seed), n) == 0;
}

// --- Upstream block source -------------------------------------------------

// Under the FailingBlockSource: plain aligned malloc (no cache, so ASan sees
// every released block), handing out `slack` bytes more than asked for, as a
// real allocator's rounding does.
class SlackBlockSource final : public BlockSource {
 public:
  explicit SlackBlockSource(size_t slack) : slack_(slack) {}
  Block Acquire(size_t min_size, size_t alignment) override {
    size_t size = min_size + slack_;
    if (size == 0) size = 1;
    if (alignment < alignof(std::max_align_t)) alignment = alignof(std::max_align_t);
    void* p = nullptr;
    if (posix_memalign(&p, alignment, size) != 0) return Block{};
    return Block{p, size};
  }
  void Release(Block block) override { std::free(block.ptr); }

 private:
  size_t slack_;
};

// --- Input ------------------------------------------------------------------

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool done() const { return pos_ >= size_; }
  uint8_t U8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t U16() {
    uint16_t lo = U8();
    return static_cast<uint16_t>(lo | (U8() << 8));
  }
  // Mostly small sizes; some that need a block of their own.
  size_t Size() {
    uint8_t b = U8();
    switch (b >> 6) {
      case 0:
        return b & 63;
      case 1:
        return (static_cast<size_t>(b & 63) << 8 | U8()) % 600;
      case 2:
        return U16() % 5000;
      default:
        return (static_cast<size_t>(b & 63) << 8 | U8());  // < 16384
    }
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// --- Model --------------------------------------------------------------------

struct CtxModel {
  Context* ctx = nullptr;
  bool live = false;
  bool pool = false;
  int parent = -1;
  std::vector<int> children;  // oldest first
  std::vector<int> before;    // kBeforeChildren cleanup ids, oldest first
  std::vector<int> after;     // kAfterChildren cleanup ids, oldest first
  size_t limit = kNoLimit;
  size_t max_small = 0;   // pool
  std::string name;
};

struct ChunkModel {
  char* p;
  size_t size;
  uint32_t seed;
  int ctx;
  size_t align;     // alignment the chunk must have
  bool pool_large;  // pool: certainly on the large list
};

struct CleanupModel {
  int id;
  int ctx;
  CleanupHandle handle;
};

struct CleanupArg {
  std::vector<int>* log;
  int id;
};

void RecordCleanup(void* arg) {
  auto* a = static_cast<CleanupArg*>(arg);
  a->log->push_back(a->id);
}

enum Op {
  kCreateChild,
  kCreateRoot,
  kDestroy,
  kReset,
  kDestroyChildren,
  kSetParent,
  kAlloc,
  kFree,
  kRealloc,
  kAddCleanup,
  kRemoveCleanup,
  kRunCleanup,
  kSetLimit,
  kFailSource,
  kQueryChunk,
};

const char* const kOpNames[] = {
    "create-child", "create-root", "destroy",         "reset",       "destroy-children",
    "set-parent",   "alloc",       "free",            "realloc",     "add-cleanup",
    "remove-cleanup", "run-cleanup", "set-limit",     "fail-source", "query-chunk",
};

// Opcode byte % 32 -> operation: allocation-heavy, like real use.
const Op kOpTable[32] = {
    kCreateChild, kCreateChild, kCreateChild, kCreateRoot, kCreateChild,   kDestroy,
    kReset,       kReset,       kDestroyChildren, kSetParent, kSetParent,  kAlloc,
    kAlloc,       kAlloc,       kAlloc,       kAlloc,       kAlloc,        kAlloc,
    kFree,        kFree,        kFree,        kRealloc,     kRealloc,      kRealloc,
    kAddCleanup,  kAddCleanup,  kRemoveCleanup, kRunCleanup, kSetLimit,    kFailSource,
    kFailSource,  kQueryChunk,
};

class Program {
 public:
  Program(const uint8_t* data, size_t size)
      : data_(data),
        size_(size),
        in_(NextRecord()),
        upstream_slack_(kSlacks[in_.U8() % 4]),
        upstream_(upstream_slack_),
        source_(&upstream_) {}

  void Run() {
    // Header record: [slack, roots, ...]; then one record per initial root
    // (its opcode byte is ignored), then one record per operation.
    int roots = 1 + in_.U8() % 3;
    for (int i = 0; i < roots; ++i) {
      in_ = NextRecord();
      in_.U8();
      CreateRoot();
    }
    while (pos_ < size_ && op_index_ < kMaxOps) {
      ++op_index_;
      in_ = NextRecord();
      Op op = kOpTable[in_.U8() % 32];
      op_name_ = kOpNames[op];
      Step(op);
      if (Trace()) {
        std::fprintf(stderr, "op %d %s: %zu contexts, %zu chunks, %zu cleanups, %lld failures\n",
                     op_index_, op_name_, LiveContexts().size(), chunks_.size(), pending_.size(),
                     static_cast<long long>(source_.failures()));
      }
      CheckLog();
      LightVerify();
      if (op_index_ % kFullVerifyEvery == 0) FullVerify();
    }
    Finish();
  }

 private:
  static constexpr size_t kSlacks[4] = {0, 8, 64, 1000};

  // The next fixed-size record of the input (short at the end: the reader
  // then yields zeros).
  Reader NextRecord() {
    const uint8_t* p = data_ == nullptr ? nullptr : data_ + pos_;
    size_t n = std::min(kRecordBytes, size_ - pos_);
    pos_ += n;
    return Reader(p, n);
  }

  // --- Reporting ---

  [[noreturn]] __attribute__((format(printf, 2, 3))) void Violation(const char* fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "mcx tree fuzz: VIOLATION%s%s at op %d (%s): %s\n",
                 g_label ? " in " : "", g_label ? g_label : "", op_index_, op_name_, msg);
    std::fflush(stderr);
    std::abort();
  }

  // --- Selection helpers ---

  std::vector<int> LiveContexts() const {
    std::vector<int> out;
    for (size_t i = 0; i < ctxs_.size(); ++i) {
      if (ctxs_[i].live) out.push_back(static_cast<int>(i));
    }
    return out;
  }

  // A live context chosen by the next byte, or -1 if there is none.
  int PickContext() {
    uint8_t b = in_.U8();
    std::vector<int> live = LiveContexts();
    if (live.empty()) return -1;
    return live[b % live.size()];
  }

  bool IsAncestorOrSelf(int ancestor, int c) const {
    for (int k = c; k >= 0; k = ctxs_[k].parent) {
      if (k == ancestor) return true;
    }
    return false;
  }

  bool HasLimitedAncestorOrSelf(int c) const {
    for (int k = c; k >= 0; k = ctxs_[k].parent) {
      if (ctxs_[k].limit != kNoLimit) return true;
    }
    return false;
  }

  // --- Failure bookkeeping ---

  struct Snapshot {
    int64_t failures;
    int64_t live_blocks;
    size_t live_bytes;
  };
  Snapshot Snap() const {
    return {source_.failures(), source_.live_blocks(), source_.live_bytes()};
  }

  // A call that could only fail for want of memory did fail: the reason must
  // be one the situation allows, and nothing may have been kept, except by a
  // call made of two allocations whose first succeeded (`may_keep`): its
  // memory is freed as Free frees it, and a pool keeps a small chunk's block
  // until the reset.
  void CheckCapacityFailure(int c, Failure why, const Snapshot& before, bool extra_limit = false,
                            bool may_keep = false) {
    Snapshot now = Snap();
    if (why == Failure::kOutOfMemory) {
      if (now.failures == before.failures) {
        Violation("'%s' failed with 'out of memory' but the block source failed nothing",
                  ctxs_[c].name.c_str());
      }
    } else if (why == Failure::kLimit) {
      if (!extra_limit && !HasLimitedAncestorOrSelf(c)) {
        Violation("'%s' failed with 'limit' but no context on its path has a limit",
                  ctxs_[c].name.c_str());
      }
    } else {
      Violation("'%s' failed with unexpected reason '%s'", ctxs_[c].name.c_str(),
                FailureName(why));
    }
    const bool kept =
        now.live_blocks != before.live_blocks || now.live_bytes != before.live_bytes;
    if (kept && !(may_keep && now.live_blocks > before.live_blocks)) {
      Violation("a failed call kept memory: %lld blocks / %zu bytes before, %lld / %zu after",
                static_cast<long long>(before.live_blocks), before.live_bytes,
                static_cast<long long>(now.live_blocks), now.live_bytes);
    }
  }

  void CheckUnchanged(const Snapshot& before, const char* what) {
    Snapshot now = Snap();
    if (now.live_blocks != before.live_blocks || now.live_bytes != before.live_bytes) {
      Violation("%s changed the blocks held: %lld / %zu before, %lld / %zu after", what,
                static_cast<long long>(before.live_blocks), before.live_bytes,
                static_cast<long long>(now.live_blocks), now.live_bytes);
    }
  }

  // --- Chunks ---

  static size_t Extent(size_t size) { return size == 0 ? 1 : size; }

  // Inserts a live chunk's range, checking it overlaps no other live chunk
  // (a zero-size chunk still needs a unique address).
  void InsertRange(char* p, size_t size) {
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    uintptr_t end = a + Extent(size);
    auto next = ranges_.lower_bound(a);
    if (next != ranges_.end() && next->first < end) {
      Violation("new chunk [%p, +%zu) overlaps live chunk at %#llx (+%zu)", static_cast<void*>(p),
                size, static_cast<unsigned long long>(next->first), next->second);
    }
    if (next != ranges_.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second > a) {
        Violation("new chunk [%p, +%zu) overlaps live chunk at %#llx (+%zu)",
                  static_cast<void*>(p), size, static_cast<unsigned long long>(prev->first),
                  prev->second);
      }
    }
    ranges_[a] = Extent(size);
  }

  void EraseRange(char* p) {
    if (ranges_.erase(reinterpret_cast<uintptr_t>(p)) != 1) Violation("model lost a range");
  }

  void CheckAligned(const void* p, size_t align, const char* what) {
    if (reinterpret_cast<uintptr_t>(p) % align != 0) {
      Violation("%s returned %p, not aligned to %zu", what, p, align);
    }
  }

  // What can be asked about any live chunk.
  void CheckChunkQueries(const ChunkModel& ch) {
    const CtxModel& m = ctxs_[ch.ctx];
    size_t cs = m.ctx->ChunkSize(ch.p);
    if (m.pool) {
      if (cs != kUnknownSize && cs < ch.size) {
        Violation("pool ChunkSize(%p) = %zu < %zu requested", static_cast<void*>(ch.p), cs,
                  ch.size);
      }
      if (ch.pool_large && cs == kUnknownSize) {
        Violation("pool ChunkSize(%p) of a large chunk (%zu bytes) is unknown",
                  static_cast<void*>(ch.p), ch.size);
      }
      return;
    }
    if (cs == kUnknownSize || cs < ch.size) {
      Violation("freelist ChunkSize(%p) = %zu, %zu requested", static_cast<void*>(ch.p), cs,
                ch.size);
    }
    if (GetChunkContext(ch.p) != m.ctx) {
      Violation("GetChunkContext(%p) is not '%s'", static_cast<void*>(ch.p), m.name.c_str());
    }
    size_t gs = GetChunkSize(ch.p);
    if (gs < ch.size) {
      Violation("GetChunkSize(%p) = %zu < %zu requested", static_cast<void*>(ch.p), gs, ch.size);
    }
  }

  void AddChunk(int c, char* p, size_t size, size_t align, const char* what) {
    if (align > 1) CheckAligned(p, align, what);
    InsertRange(p, size);
    ChunkModel ch{p, size, next_seed_++, c, align, ctxs_[c].pool && size > ctxs_[c].max_small};
    Fill(p, size, ch.seed);
    chunks_.push_back(ch);
    CheckChunkQueries(chunks_.back());
  }

  void DropChunk(size_t k) {
    EraseRange(chunks_[k].p);
    chunks_[k] = chunks_.back();
    chunks_.pop_back();
  }

  // --- Contexts ---

  KindSpec DecodeKind(bool pool, size_t* max_small) {
    uint8_t a = in_.U8();
    uint8_t b = in_.U8();
    if (pool) {
      static constexpr size_t kInitial[] = {0, 256, 512, 1024, 2048, 4096, 700, 8192};
      static constexpr size_t kMaxSmall[] = {0, 16, 100, 256, 512, 700, 2000, 4096};
      PoolOptions o;
      o.initial_block_size = kInitial[a % 8];
      o.max_block_size = o.initial_block_size << ((a >> 3) % 5);
      o.max_small = kMaxSmall[b % 8];
      o.rewind_on_free = (b >> 3) % 3 == 0;
      *max_small = o.max_small;
      return PoolKind(o);
    }
    static constexpr size_t kInitial[] = {0, 512, 1024, 1500, 2048, 4096, 8192, 300};
    static constexpr size_t kChunkLimit[] = {0, 8, 24, 100, 500, 1500, 4000, kMaxSizeClassBytes};
    FreelistOptions o;
    o.initial_block_size = kInitial[a % 8];
    o.max_block_size = std::max<size_t>(o.initial_block_size, 1024) << ((a >> 3) % 5);
    o.chunk_limit = kChunkLimit[b % 8];
    *max_small = 0;
    return FreelistKind(o);
  }

  std::string DecodeName() {
    size_t len = in_.U8() % 40;
    std::string name = "c" + std::to_string(ctxs_.size());
    for (size_t i = 0; i < len; ++i) name.push_back(static_cast<char>('a' + (len * 7 + i) % 26));
    return name;
  }

  int AddContext(Context* ctx, bool pool, int parent, size_t limit, size_t max_small,
                 std::string name) {
    CtxModel m;
    m.ctx = ctx;
    m.live = true;
    m.pool = pool;
    m.parent = parent;
    m.limit = limit;
    m.max_small = max_small;
    m.name = std::move(name);
    if (std::strcmp(ctx->name(), m.name.c_str()) != 0) {
      Violation("context name '%s', expected '%s'", ctx->name(), m.name.c_str());
    }
    if (ctx->parent() != (parent >= 0 ? ctxs_[parent].ctx : nullptr)) {
      Violation("new context '%s' has the wrong parent", m.name.c_str());
    }
    if (ctx->num_blocks() != 1) Violation("new context has %zu blocks", ctx->num_blocks());
    ctxs_.push_back(std::move(m));
    int id = static_cast<int>(ctxs_.size() - 1);
    if (parent >= 0) ctxs_[parent].children.push_back(id);
    if (limit != kNoLimit) limit_ever_ = true;
    return id;
  }

  void CreateRoot() {
    if (LiveContexts().size() >= kMaxLiveContexts) return;
    bool pool = in_.U8() % 2 == 0;
    size_t max_small;
    KindSpec spec = DecodeKind(pool, &max_small);
    std::string name = DecodeName();
    ContextOptions o;
    o.block_source = &source_;
    uint8_t l = in_.U8();
    if (l % 4 == 0) o.limit = 1024 * (1 + l / 4);
    Snapshot before = Snap();
    Context* ctx = Context::TryCreate(nullptr, name.c_str(), spec, o);
    if (ctx == nullptr) {
      Snapshot now = Snap();
      if (now.failures == before.failures && o.limit == kNoLimit) {
        Violation("root creation failed though nothing made it fail");
      }
      CheckUnchanged(before, "a failed root creation");
      return;
    }
    AddContext(ctx, pool, -1, o.limit, max_small, std::move(name));
  }

  void CreateChild() {
    int parent = PickContext();
    if (parent < 0 || LiveContexts().size() >= kMaxLiveContexts) return;
    bool pool = in_.U8() % 2 == 0;
    size_t max_small;
    KindSpec spec = DecodeKind(pool, &max_small);
    std::string name = DecodeName();
    ContextOptions o;
    uint8_t l = in_.U8();
    if (l % 8 == 0) o.limit = 512 * (1 + l / 8);
    Snapshot before = Snap();
    Context* ctx = Context::TryCreate(ctxs_[parent].ctx, name.c_str(), spec, o);
    if (ctx == nullptr) {
      CheckCapacityFailure(parent, ctxs_[parent].ctx->last_failure(), before,
                           o.limit != kNoLimit);
      return;
    }
    if (ctx->block_source() != &source_) Violation("child did not inherit the block source");
    AddContext(ctx, pool, parent, o.limit, max_small, std::move(name));
  }

  // Expected cleanup order for the teardown of `c` (its own cleanups
  // included): before-children newest first, children newest first each
  // completely, after-children newest first.
  void ExpectTeardown(int c, std::vector<int>* out) const {
    const CtxModel& m = ctxs_[c];
    for (auto it = m.before.rbegin(); it != m.before.rend(); ++it) out->push_back(*it);
    for (auto it = m.children.rbegin(); it != m.children.rend(); ++it) ExpectTeardown(*it, out);
    for (auto it = m.after.rbegin(); it != m.after.rend(); ++it) out->push_back(*it);
  }

  // Forgets the chunks and cleanups of `c` and, recursively, its children
  // (which die).
  void ForgetContents(int c) {
    CtxModel& m = ctxs_[c];
    for (int child : m.children) {
      ForgetContents(child);
      ctxs_[child].live = false;
      ctxs_[child].ctx = nullptr;
    }
    m.children.clear();
    m.before.clear();
    m.after.clear();
    for (size_t k = 0; k < chunks_.size();) {
      if (chunks_[k].ctx == c) {
        DropChunk(k);
      } else {
        ++k;
      }
    }
    for (size_t k = 0; k < pending_.size();) {
      if (pending_[k].ctx == c) {
        pending_[k] = pending_.back();
        pending_.pop_back();
      } else {
        ++k;
      }
    }
  }

  void Unparent(int c) {
    int p = ctxs_[c].parent;
    if (p < 0) return;
    auto& v = ctxs_[p].children;
    v.erase(std::find(v.begin(), v.end(), c));
    ctxs_[c].parent = -1;
  }

  void Destroy() {
    int c = PickContext();
    if (c < 0) return;
    ExpectTeardown(c, &expected_log_);
    Context* ctx = ctxs_[c].ctx;
    ForgetContents(c);
    Unparent(c);
    ctxs_[c].live = false;
    ctxs_[c].ctx = nullptr;
    ctx->Destroy();
    need_full_verify_ = true;
  }

  void Reset() {
    int c = PickContext();
    if (c < 0) return;
    uint8_t mode = in_.U8() % 3;
    size_t keep = static_cast<size_t>(in_.U16()) * 4;
    ExpectTeardown(c, &expected_log_);
    ForgetContents(c);
    Context* ctx = ctxs_[c].ctx;
    ResetOptions o = mode == 0   ? ResetOptions::KeepFirstBlock()
                     : mode == 1 ? ResetOptions::KeepBytes(keep)
                                 : ResetOptions::ReleaseAll();
    ctx->Reset(o);
    if (ctx->first_child() != nullptr) Violation("reset left a child");
    if (mode != 1) {
      if (ctx->num_blocks() != 1 || ctx->bytes_in_blocks() != ctx->first_block_size()) {
        Violation("reset (mode %d) kept %zu blocks, %zu bytes; first block is %zu bytes", mode,
                  ctx->num_blocks(), ctx->bytes_in_blocks(), ctx->first_block_size());
      }
    } else if (ctx->bytes_in_blocks() != ctx->first_block_size() &&
               ctx->bytes_in_blocks() > keep) {
      Violation("KeepBytes(%zu) reset kept %zu bytes in %zu blocks", keep,
                ctx->bytes_in_blocks(), ctx->num_blocks());
    }
    need_full_verify_ = true;
  }

  void DestroyChildren() {
    int c = PickContext();
    if (c < 0) return;
    CtxModel& m = ctxs_[c];
    for (auto it = m.children.rbegin(); it != m.children.rend(); ++it) {
      ExpectTeardown(*it, &expected_log_);
    }
    std::vector<int> kids = m.children;
    for (int k : kids) {
      ForgetContents(k);
      ctxs_[k].live = false;
      ctxs_[k].ctx = nullptr;
    }
    ctxs_[c].children.clear();
    ctxs_[c].ctx->DestroyChildren();
    if (ctxs_[c].ctx->first_child() != nullptr) Violation("DestroyChildren left a child");
    need_full_verify_ = true;
  }

  void SetParent() {
    int c = PickContext();
    if (c < 0) return;
    uint8_t t = in_.U8();
    int target = -1;
    if (t % 8 != 0) {  // else: make it a root
      std::vector<int> live = LiveContexts();
      target = live[(t / 8) % live.size()];
    }
    CtxModel& m = ctxs_[c];
    Context* new_parent = target >= 0 ? ctxs_[target].ctx : nullptr;
    bool cycle = target >= 0 && IsAncestorOrSelf(c, target);
    bool limit_refusal = false;
    if (!cycle && target != m.parent && target >= 0) {
      size_t moved = m.ctx->SubtreeBytes();
      for (int l = target; l >= 0; l = ctxs_[l].parent) {
        if (ctxs_[l].limit == kNoLimit) continue;
        if (m.parent >= 0 && IsAncestorOrSelf(l, m.parent)) continue;  // shared chain
        if (moved > ctxs_[l].limit - ctxs_[l].ctx->SubtreeBytes()) limit_refusal = true;
      }
    }
    Snapshot before = Snap();
    absl::Status s = m.ctx->SetParent(new_parent);
    CheckUnchanged(before, "SetParent");
    if (cycle) {
      if (s.code() != absl::StatusCode::kInvalidArgument || m.ctx->last_failure() != Failure::kCycle) {
        Violation("SetParent('%s' under its descendant-or-self '%s') gave %s",
                  m.name.c_str(), ctxs_[target].name.c_str(), s.ToString().c_str());
      }
    } else if (limit_refusal) {
      if (s.code() != absl::StatusCode::kResourceExhausted ||
          m.ctx->last_failure() != Failure::kLimit) {
        Violation("SetParent('%s' under '%s') should exceed a limit but gave %s", m.name.c_str(),
                  ctxs_[target].name.c_str(), s.ToString().c_str());
      }
    } else if (!s.ok()) {
      Violation("SetParent('%s' under '%s') refused: %s", m.name.c_str(),
                target >= 0 ? ctxs_[target].name.c_str() : "(root)", s.ToString().c_str());
    } else if (target != m.parent) {
      Unparent(c);
      ctxs_[c].parent = target;
      if (target >= 0) ctxs_[target].children.push_back(c);
    }
    if (ctxs_[c].ctx->parent() != new_parent && s.ok()) Violation("SetParent did not move");
  }

  // --- Allocation ---

  void Alloc() {
    int c = PickContext();
    if (c < 0) return;
    uint8_t flavor = in_.U8() % 8;
    size_t size = in_.Size();
    if (chunks_.size() >= kMaxLiveChunks) return;
    Context* ctx = ctxs_[c].ctx;
    Snapshot before = Snap();
    char* p = nullptr;
    size_t align = kDefaultAlignment;
    const char* what = "";
    bool threw = false;
    std::string str;
    switch (flavor) {
      case 0:
        what = "TryAlloc";
        p = static_cast<char*>(ctx->TryAlloc(size));
        break;
      case 1:
        what = "Alloc";
        try {
          p = static_cast<char*>(ctx->Alloc(size));
          if (p == nullptr) Violation("throwing Alloc returned nullptr");
        } catch (const std::bad_alloc&) {
          threw = true;
        }
        break;
      case 2:
      case 3: {
        size_t count = size;
        size_t elem = 1;
        if (flavor == 3) {
          static constexpr size_t kElem[] = {1, 2, 4, 8, 24};
          elem = kElem[in_.U8() % 5];
          count = size / elem;
          size = count * elem;
          what = "TryAllocZeroArray";
          p = static_cast<char*>(ctx->TryAllocZeroArray(count, elem));
        } else {
          what = "TryAllocZero";
          p = static_cast<char*>(ctx->TryAllocZero(size));
        }
        if (p != nullptr) {
          static const char kZeros[kMaxChunkBytes] = {};
          if (std::memcmp(p, kZeros, size) != 0) Violation("%s(%zu) is not zeroed", what, size);
        }
        break;
      }
      case 4:
        what = "TryAllocAligned";
        align = size_t{1} << (in_.U8() % 13);
        p = static_cast<char*>(ctx->TryAllocAligned(size, align));
        break;
      case 5:
        what = "TryAllocBytes";
        align = 1;
        p = static_cast<char*>(ctx->TryAllocBytes(size));
        break;
      case 6: {
        what = "Strdup";
        align = 1;
        size_t len = size % 200;
        for (size_t i = 0; i < len; ++i) str.push_back(static_cast<char>(next_seed_ * 31 + i * 13));
        size = len + 1;
        try {
          p = ctx->Strdup(str);
          if (std::memcmp(p, str.data(), len) != 0 || p[len] != '\0') {
            Violation("Strdup copied the wrong bytes");
          }
        } catch (const std::bad_alloc&) {
          threw = true;
        }
        break;
      }
      default:
        BadRequest(c, size);
        return;
    }
    if (p == nullptr) {
      if (flavor == 1 || flavor == 6) {
        if (!threw) Violation("%s failed without throwing", what);
      }
      CheckCapacityFailure(c, ctx->last_failure(), before);
      return;
    }
    AddChunk(c, p, size, align, what);
  }

  // Requests that must fail without touching anything.
  void BadRequest(int c, size_t size) {
    Context* ctx = ctxs_[c].ctx;
    Snapshot before = Snap();
    uint8_t kind = in_.U8() % 5;
    Failure want = Failure::kBadSize;
    void* p = nullptr;
    switch (kind) {
      case 0: {
        static constexpr size_t kBad[] = {0, 3, 24, 48, 1000, kMaxAlignment * 2, 6144};
        want = Failure::kBadAlignment;
        p = ctx->TryAllocAligned(size, kBad[in_.U8() % 7]);
        break;
      }
      case 1:
        p = ctx->TryAllocZeroArray(~size_t{0} / 2 + 1 + size, 4);
        break;
      case 2:
        p = ctx->TryAlloc(kMaxAllocSize + 1 + size);
        break;
      case 3:
        p = ctx->TryAllocBytes(~size_t{0} - size);
        break;
      default:
        want = Failure::kBadAlignment;
        try {
          p = ctx->AllocAligned(size, 3);
          Violation("AllocAligned(%zu, 3) did not throw", size);
        } catch (const std::invalid_argument&) {
        }
        break;
    }
    if (p != nullptr) Violation("a bad request (%d) succeeded", kind);
    if (ctx->last_failure() != want) {
      Violation("a bad request (%d) failed with '%s', expected '%s'", kind,
                FailureName(ctx->last_failure()), FailureName(want));
    }
    CheckUnchanged(before, "a bad request");
  }

  int PickChunk() {
    uint16_t b = in_.U16();
    if (chunks_.empty()) return -1;
    return static_cast<int>(b % chunks_.size());
  }

  void Free() {
    int k = PickChunk();
    uint8_t how = in_.U8();
    if (k < 0) return;
    ChunkModel ch = chunks_[static_cast<size_t>(k)];
    CtxModel& m = ctxs_[ch.ctx];
    if (!Holds(ch.p, ch.size, ch.seed)) Violation("chunk contents lost before free");
    DropChunk(static_cast<size_t>(k));
    if (!m.pool && how % 2 == 1) {
      mcx::Free(ch.p);
    } else {
      m.ctx->Free(ch.p);
    }
  }

  void Realloc() {
    int k = PickChunk();
    uint8_t how = in_.U8() % 6;
    size_t new_size = in_.Size();
    if (k < 0) return;
    ChunkModel& ch = chunks_[static_cast<size_t>(k)];
    CtxModel& m = ctxs_[ch.ctx];
    if (!Holds(ch.p, ch.size, ch.seed)) Violation("chunk contents lost before realloc");
    Snapshot before = Snap();
    void* q = nullptr;
    const char* what = "";
    bool unsized = false;
    switch (how) {
      case 0:
      case 1:
        what = "TryRealloc(p, old, new)";
        q = m.ctx->TryRealloc(ch.p, ch.size, new_size);
        break;
      case 2:
        what = "Realloc(p, old, new)";
        try {
          q = m.ctx->Realloc(ch.p, ch.size, new_size);
        } catch (const std::bad_alloc&) {
        }
        break;
      case 3:
        what = "TryRealloc(p, new)";
        unsized = true;
        q = m.ctx->TryRealloc(ch.p, new_size);
        break;
      case 4:
        if (m.pool) {
          what = "TryRealloc(p, new) on a pool chunk";
          unsized = true;
          q = m.ctx->TryRealloc(ch.p, new_size);
        } else {
          what = "mcx::TryRealloc(p, new)";
          q = mcx::TryRealloc(ch.p, new_size);
        }
        break;
      default: {
        what = "TryRealloc to a bad size";
        q = m.ctx->TryRealloc(ch.p, ch.size, kMaxAllocSize + 1 + new_size);
        if (q != nullptr || m.ctx->last_failure() != Failure::kBadSize) {
          Violation("realloc to a bad size gave %p, '%s'", q, FailureName(m.ctx->last_failure()));
        }
        CheckUnchanged(before, what);
        return;
      }
    }
    if (q == nullptr) {
      Failure why = m.ctx->last_failure();
      if (m.pool && unsized && why == Failure::kUnsupported) {
        if (ch.pool_large) Violation("unsized realloc of a large pool chunk is 'unsupported'");
        CheckUnchanged(before, what);
        return;
      }
      CheckCapacityFailure(ch.ctx, why, before);
      return;
    }
    char* p = static_cast<char*>(q);
    if (!Holds(p, std::min(ch.size, new_size), ch.seed)) {
      Violation("%s (%zu -> %zu) lost the contents", what, ch.size, new_size);
    }
    size_t align = m.pool ? std::min(ch.align, kDefaultAlignment) : ch.align;
    if (align > 1) CheckAligned(p, align, what);
    EraseRange(ch.p);
    InsertRange(p, new_size);
    ch.p = p;
    ch.size = new_size;
    ch.align = align;
    ch.pool_large = m.pool && (ch.pool_large || new_size > m.max_small);
    Fill(p, new_size, ch.seed);
    CheckChunkQueries(ch);
  }

  // --- Cleanups ---

  void AddCleanup() {
    int c = PickContext();
    uint8_t how = in_.U8();
    if (c < 0 || pending_.size() >= kMaxPendingCleanups) return;
    CtxModel& m = ctxs_[c];
    CleanupPhase phase = how % 2 ? CleanupPhase::kBeforeChildren : CleanupPhase::kAfterChildren;
    int id = next_cleanup_id_++;
    Snapshot before = Snap();
    // The first cleanup makes the context's side record (its lists), which
    // a failure of what follows keeps.
    const bool first_cleanup = m.ctx->side_record_bytes() == 0;
    CleanupHandle h;
    const bool callable = (how / 2) % 2 != 0;  // its storage, then the record
    if (!callable) {
      args_.push_back({&log_, id});
      h = m.ctx->TryAddCleanup(&RecordCleanup, &args_.back(), phase);
    } else {
      std::vector<int>* log = &log_;
      try {
        h = m.ctx->AddCleanup([log, id] { log->push_back(id); }, phase);
        if (!h) Violation("throwing AddCleanup returned an empty handle");
      } catch (const std::bad_alloc&) {
      }
    }
    if (!h) {
      CheckCapacityFailure(c, m.ctx->last_failure(), before, /*extra_limit=*/false,
                           /*may_keep=*/callable || first_cleanup);
      return;
    }
    (phase == CleanupPhase::kBeforeChildren ? m.before : m.after).push_back(id);
    pending_.push_back({id, c, h});
  }

  void ForgetCleanup(size_t k) {
    CleanupModel cm = pending_[k];
    pending_[k] = pending_.back();
    pending_.pop_back();
    for (auto* v : {&ctxs_[cm.ctx].before, &ctxs_[cm.ctx].after}) {
      auto it = std::find(v->begin(), v->end(), cm.id);
      if (it != v->end()) v->erase(it);
    }
  }

  void RemoveOrRunCleanup(bool run) {
    uint16_t b = in_.U16();
    if (pending_.empty()) {
      // An empty handle is refused.
      std::vector<int> live = LiveContexts();
      if (!live.empty()) {
        Context* ctx = ctxs_[live[b % live.size()]].ctx;
        bool r = run ? ctx->RunCleanup(CleanupHandle()) : ctx->RemoveCleanup(CleanupHandle());
        if (r) Violation("an empty cleanup handle was accepted");
      }
      return;
    }
    size_t k = b % pending_.size();
    CleanupModel cm = pending_[k];
    Context* ctx = ctxs_[cm.ctx].ctx;
    ForgetCleanup(k);
    if (run) {
      expected_log_.push_back(cm.id);
      if (!ctx->RunCleanup(cm.handle)) Violation("RunCleanup of a live cleanup returned false");
    } else {
      if (!ctx->RemoveCleanup(cm.handle)) {
        Violation("RemoveCleanup of a live cleanup returned false");
      }
    }
  }

  // --- Limits and failures ---

  void SetLimit() {
    int c = PickContext();
    uint8_t mode = in_.U8();
    uint16_t delta = in_.U16();
    if (c < 0) return;
    CtxModel& m = ctxs_[c];
    size_t held = m.ctx->SubtreeBytes();
    size_t n;
    if (mode % 4 == 0) {
      n = kNoLimit;
    } else if (mode % 4 == 1) {
      n = held > delta % 4096 ? held - delta % 4096 : 0;  // usually refused
    } else {
      n = held + delta % 40000;
    }
    Snapshot before = Snap();
    const bool had_side_record = m.ctx->side_record_bytes() != 0;
    absl::Status s = m.ctx->SetLimit(n);
    if (had_side_record || n == kNoLimit) {
      CheckUnchanged(before, "SetLimit");
    } else {
      // The limit is kept in the context's side record, made now: one block
      // (or nothing, when the record could not be had: the call fails).
      Snapshot now = Snap();
      if (!s.ok() && now.live_blocks == before.live_blocks &&
          now.live_bytes == before.live_bytes) {
        Failure why = m.ctx->last_failure();
        if (why != Failure::kLimit && why != Failure::kOutOfMemory) {
          Violation("SetLimit failed without its side record for '%s'", FailureName(why));
        }
        return;
      }
      // (The source may hold slack that a limit kept the record from using.)
      if (now.live_blocks != before.live_blocks + 1 ||
          now.live_bytes < before.live_bytes + m.ctx->side_record_bytes()) {
        Violation("SetLimit made more than the side record: %lld / %zu before, %lld / %zu after",
                  static_cast<long long>(before.live_blocks), before.live_bytes,
                  static_cast<long long>(now.live_blocks), now.live_bytes);
      }
      held += m.ctx->side_record_bytes();
    }
    bool refuse = n != kNoLimit && held > n;
    if (refuse) {
      if (s.ok() || m.ctx->last_failure() != Failure::kLimit) {
        Violation("SetLimit(%zu) with %zu held gave %s", n, held, s.ToString().c_str());
      }
      return;
    }
    if (!s.ok()) Violation("SetLimit(%zu) with %zu held refused: %s", n, held, s.ToString().c_str());
    m.limit = n;
    if (m.ctx->limit() != n) Violation("limit() is %zu after SetLimit(%zu)", m.ctx->limit(), n);
    if (n != kNoLimit) limit_ever_ = true;
  }

  void FailSource() {
    uint8_t b = in_.U8();
    int64_t n = 1 + (b >> 3) % 6;
    switch (b % 8) {
      case 0:
      case 1:
        source_.FailNth(n);
        break;
      case 2:
        source_.FailFrom(n);
        break;
      case 3:
        source_.FailReallocate(true);
        break;
      default:
        source_.Heal();
    }
  }

  void QueryChunk() {
    int k = PickChunk();
    if (k < 0) return;
    const ChunkModel& ch = chunks_[static_cast<size_t>(k)];
    if (!Holds(ch.p, ch.size, ch.seed)) Violation("chunk contents lost");
    CheckChunkQueries(ch);
  }

  void Step(Op op) {
    switch (op) {
      case kCreateChild: return CreateChild();
      case kCreateRoot: return CreateRoot();
      case kDestroy: return Destroy();
      case kReset: return Reset();
      case kDestroyChildren: return DestroyChildren();
      case kSetParent: return SetParent();
      case kAlloc: return Alloc();
      case kFree: return Free();
      case kRealloc: return Realloc();
      case kAddCleanup: return AddCleanup();
      case kRemoveCleanup: return RemoveOrRunCleanup(false);
      case kRunCleanup: return RemoveOrRunCleanup(true);
      case kSetLimit: return SetLimit();
      case kFailSource: return FailSource();
      case kQueryChunk: return QueryChunk();
    }
  }

  // --- Verification ---

  static std::string Join(const std::vector<int>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 40; ++i) s += (i ? " " : "") + std::to_string(v[i]);
    if (v.size() > 40) s += " ...";
    return s;
  }

  void CheckLog() {
    if (log_ != expected_log_) {
      Violation("cleanups ran as [%s], expected [%s]", Join(log_).c_str(),
                Join(expected_log_).c_str());
    }
    log_.clear();
    expected_log_.clear();
  }

  void LightVerify() {
    size_t total = 0, blocks = 0, contexts = 0, live = 0;
    for (size_t i = 0; i < ctxs_.size(); ++i) {
      const CtxModel& m = ctxs_[i];
      if (!m.live) continue;
      ++live;
      // A side record (a limit, cleanups) is a block of the source too.
      if (m.ctx->side_record_bytes() != 0) ++blocks;
      if (m.limit != kNoLimit && m.ctx->SubtreeBytes() > m.limit) {
        Violation("'%s' holds %zu bytes in its subtree, over its limit %zu", m.name.c_str(),
                  m.ctx->SubtreeBytes(), m.limit);
      }
      if (m.parent >= 0) continue;
      ContextCounters sc = GetSubtreeCounters(m.ctx);
      if (sc.total_bytes != m.ctx->SubtreeBytes()) {
        Violation("GetSubtreeCounters('%s') = %zu bytes, SubtreeBytes() = %zu", m.name.c_str(),
                  sc.total_bytes, m.ctx->SubtreeBytes());
      }
      if (sc.free_bytes > sc.total_bytes) {
        Violation("'%s' subtree: %zu free of %zu", m.name.c_str(), sc.free_bytes, sc.total_bytes);
      }
      total += sc.total_bytes;
      blocks += sc.blocks;
      contexts += sc.contexts;
    }
    size_t src_bytes = source_.live_bytes();
    bool exact = upstream_slack_ == 0 || !limit_ever_;
    if (exact ? total != src_bytes : total > src_bytes) {
      Violation("contexts report %zu bytes in blocks, the source holds %zu%s", total, src_bytes,
                exact ? "" : " (may exceed: refused slack)");
    }
    if (static_cast<int64_t>(blocks) != source_.live_blocks()) {
      Violation("contexts report %zu blocks, the source holds %lld", blocks,
                static_cast<long long>(source_.live_blocks()));
    }
    if (contexts != live) Violation("%zu contexts counted, %zu live in the model", contexts, live);
    if (source_.bad_releases() != 0) Violation("the source saw a bad release");
    if (need_full_verify_) FullVerify();
  }

  void FullVerify() {
    need_full_verify_ = false;
    for (const CtxModel& m : ctxs_) {
      if (!m.live) continue;
      std::string error;
      if (!m.ctx->Check(&error)) Violation("Check('%s') failed: %s", m.name.c_str(), error.c_str());
      ContextCounters cc = GetCounters(m.ctx);
      if (cc.total_bytes != m.ctx->bytes_in_blocks() + m.ctx->side_record_bytes() ||
          cc.blocks != m.ctx->num_blocks() ||
          cc.free_bytes > cc.total_bytes) {
        Violation("GetCounters('%s') disagrees with the context", m.name.c_str());
      }
      // The child list, newest first, is the model's, newest first.
      Context* k = m.ctx->first_child();
      for (auto it = m.children.rbegin(); it != m.children.rend(); ++it) {
        if (k != ctxs_[*it].ctx) Violation("'%s' has its children in the wrong order", m.name.c_str());
        if (k->parent() != m.ctx) Violation("'%s' has a child with another parent", m.name.c_str());
        k = k->next_sibling();
      }
      if (k != nullptr) Violation("'%s' has more children than the model", m.name.c_str());
      if (m.parent < 0 && m.ctx->parent() != nullptr) Violation("'%s' should be a root", m.name.c_str());
    }
    for (const ChunkModel& ch : chunks_) {
      if (!Holds(ch.p, ch.size, ch.seed)) {
        Violation("chunk %p (%zu bytes) of '%s' lost its contents", static_cast<void*>(ch.p),
                  ch.size, ctxs_[ch.ctx].name.c_str());
      }
    }
  }

  void Finish() {
    op_name_ = "final teardown";
    source_.Heal();
    CheckLog();
    LightVerify();
    FullVerify();
    for (size_t i = 0; i < ctxs_.size(); ++i) {
      if (!ctxs_[i].live || ctxs_[i].parent >= 0) continue;
      ExpectTeardown(static_cast<int>(i), &expected_log_);
      Context* ctx = ctxs_[i].ctx;
      ForgetContents(static_cast<int>(i));
      ctxs_[i].live = false;
      ctxs_[i].ctx = nullptr;
      ctx->Destroy();
    }
    CheckLog();
    if (!chunks_.empty() || !pending_.empty()) Violation("model kept chunks or cleanups");
    if (source_.live_blocks() != 0 || source_.live_bytes() != 0) {
      Violation("after destroying every root the source still holds %lld blocks, %zu bytes",
                static_cast<long long>(source_.live_blocks()), source_.live_bytes());
    }
    if (source_.bad_releases() != 0) Violation("the source saw a bad release");
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  Reader in_;  // the current record
  size_t upstream_slack_;
  SlackBlockSource upstream_;
  testing::FailingBlockSource source_;
  std::vector<CtxModel> ctxs_;
  std::vector<ChunkModel> chunks_;
  std::map<uintptr_t, size_t> ranges_;  // live chunk address -> extent
  std::vector<CleanupModel> pending_;
  std::deque<CleanupArg> args_;  // stable addresses for cleanup arguments
  std::vector<int> log_;
  std::vector<int> expected_log_;
  uint32_t next_seed_ = 1;
  int next_cleanup_id_ = 0;
  int op_index_ = 0;
  const char* op_name_ = "setup";
  bool limit_ever_ = false;
  bool need_full_verify_ = false;
};

constexpr size_t Program::kSlacks[4];

}  // namespace

void SetTreeProgramLabel(const char* label) { g_label = label; }

void RunTreeProgram(const uint8_t* data, size_t size) {
  Program program(data, size);
  program.Run();
}

}  // namespace fuzz
}  // namespace mcx
