// The tree fuzz harness: byte string -> program of operations on mcx
// contexts, checked against a shadow model. See tree_fuzz_lib.h and
// tests/fuzz/README.md (the encoding is documented there; keep them in sync).

#include "tests/fuzz/tree_fuzz_lib.h"

#include <algorithm>
#include <csetjmp>
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

#include "absl/base/attributes.h"
#include "absl/status/status.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

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
// pattern of testing/patterns.h. Since 7 is odd that is 7 * (i + k)
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
  bool tearing = false;   // reached by a teardown a longjmp abandoned
  uint8_t handler = 0;     // HandlerMode (below): kHandlerNone
  // The high-water marks last seen: they never go down until ResetPeak.
  size_t peak_live_seen = 0;
  size_t peak_blocks_seen = 0;
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

// --- Exits: cleanups and failure handlers that throw or longjmp ----------------
//
// A cleanup may leave by throwing or by longjmp, itself or through a failure
// handler of a failing call it makes (on the harness's "engine" context);
// a context's failure handler may longjmp, throw, or return. Every call that
// can run such code runs inside Guarded(), whose setjmp is the target of the
// longjmps; nothing between it and the exit has a destructor to skip.

enum ExitKind : uint8_t {
  kExitNone,
  kExitThrow,          // the cleanup throws FuzzError
  kExitJump,           // the cleanup longjmps
  kExitHandlerThrow,   // a failing call on the engine; its handler throws
  kExitHandlerJump,    // a failing call on the engine; its handler longjmps
};

bool ExitJumps(uint8_t e) { return e == kExitJump || e == kExitHandlerJump; }
bool ExitThrows(uint8_t e) { return e == kExitThrow || e == kExitHandlerThrow; }

// A context's failure handler (its argument is the mode).
enum HandlerMode : uint8_t { kHandlerNone, kHandlerJump, kHandlerThrow, kHandlerReturn };

struct FuzzError {
  int id;  // the cleanup that threw, or -1 for a context's handler
};

std::jmp_buf* g_jump_target = nullptr;  // the innermost Guarded()
int g_jumps = 0;   // longjmps that landed in Guarded() (for the trace)
int g_throws = 0;  // FuzzErrors caught there
Context* g_engine = nullptr;
uint8_t g_engine_mode = kExitNone;
int g_engine_cleanup = -1;
int g_handler_calls = 0;
const Context* g_handler_context = nullptr;

[[noreturn]] void JumpOut() {
  if (g_jump_target == nullptr) {
    std::fprintf(stderr, "mcx tree fuzz: harness bug: a longjmp outside Guarded()\n");
    std::abort();
  }
  std::longjmp(*g_jump_target, 1);
}

void EngineHandler(const FailureInfo&) {
  if (g_engine_mode == kExitHandlerJump) JumpOut();
  throw FuzzError{g_engine_cleanup};
}

void ContextHandler(const FailureInfo& info) {
  ++g_handler_calls;
  g_handler_context = info.context;
  switch (reinterpret_cast<uintptr_t>(info.arg)) {
    case kHandlerJump:
      JumpOut();
    case kHandlerThrow:
      throw FuzzError{-1};
    default:
      return;  // the call throws mcx's exception
  }
}

void LeaveCleanup(int id, uint8_t exit) {
  switch (exit) {
    case kExitThrow:
      throw FuzzError{id};
    case kExitJump:
      JumpOut();
    case kExitHandlerThrow:
    case kExitHandlerJump:
      g_engine_mode = exit;
      g_engine_cleanup = id;
      g_engine->AllocAligned(16, 3);  // kBadAlignment: the handler leaves
      std::fprintf(stderr, "mcx tree fuzz: the engine's failing call returned\n");
      std::abort();
    default:
      return;
  }
}

struct CleanupArg {
  std::vector<int>* log;
  int id;
  uint8_t exit;
};

void RecordCleanup(void* arg) {
  auto* a = static_cast<CleanupArg*>(arg);
  a->log->push_back(a->id);
  LeaveCleanup(a->id, a->exit);
}

// How a guarded call ended.
enum class Ended {
  kReturned,
  kJumped,
  kFuzzError,       // id in *thrown_id
  kBadArrayNewLength,
  kBadAlloc,
  kInvalidArgument,
};

const char* EndedName(Ended e) {
  static const char* const kNames[] = {"returned", "longjmp", "FuzzError", "bad_array_new_length",
                                       "bad_alloc", "invalid_argument"};
  return kNames[static_cast<int>(e)];
}

// Runs `f`; a longjmp out of it lands here. Not inlined (setjmp), and `f`
// keeps its results in its caller's frame, which the longjmp does not skip.
template <typename F>
ABSL_ATTRIBUTE_NOINLINE Ended Guarded(F&& f, int* thrown_id = nullptr) {
  std::jmp_buf buf;
  std::jmp_buf* volatile outer = g_jump_target;
  if (setjmp(buf) != 0) {
    g_jump_target = outer;
    ++g_jumps;
    return Ended::kJumped;
  }
  g_jump_target = &buf;
  Ended e = Ended::kReturned;
  try {
    f();
  } catch (const FuzzError& err) {
    if (thrown_id != nullptr) *thrown_id = err.id;
    ++g_throws;
    e = Ended::kFuzzError;
  } catch (const std::bad_array_new_length&) {
    e = Ended::kBadArrayNewLength;
  } catch (const std::bad_alloc&) {
    e = Ended::kBadAlloc;
  } catch (const std::invalid_argument&) {
    e = Ended::kInvalidArgument;
  }
  g_jump_target = outer;
  return e;
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
  kAddExitCleanup,
  kSetHandler,
};

const char* const kOpNames[] = {
    "create-child", "create-root", "destroy",         "reset",       "destroy-children",
    "set-parent",   "alloc",       "free",            "realloc",     "add-cleanup",
    "remove-cleanup", "run-cleanup", "set-limit",     "fail-source", "query-chunk",
    "add-exit-cleanup", "set-handler",
};

// Opcode byte % 64 -> operation: allocation-heavy, like real use. The
// second half repeats the first (an opcode keeps its meaning modulo 32)
// except for five slots: the exits.
const Op kOpTable[64] = {
    kCreateChild, kCreateChild, kCreateChild, kCreateRoot, kCreateChild,   kDestroy,
    kReset,       kReset,       kDestroyChildren, kSetParent, kSetParent,  kAlloc,
    kAlloc,       kAlloc,       kAlloc,       kAlloc,       kAlloc,        kAlloc,
    kFree,        kFree,        kFree,        kRealloc,     kRealloc,      kRealloc,
    kAddCleanup,  kAddCleanup,  kRemoveCleanup, kRunCleanup, kSetLimit,    kFailSource,
    kFailSource,  kQueryChunk,
    // 32..63
    kCreateChild, kAddExitCleanup, kCreateChild, kCreateRoot, kCreateChild, kDestroy,
    kReset,       kReset,       kDestroyChildren, kSetParent, kSetParent,  kAlloc,
    kAddExitCleanup, kAlloc,    kSetHandler,  kAlloc,       kAddExitCleanup, kAlloc,
    kFree,        kFree,        kFree,        kRealloc,     kRealloc,      kRealloc,
    kAddCleanup,  kAddCleanup,  kRemoveCleanup, kRunCleanup, kSetLimit,    kSetHandler,
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
    // The engine: a root outside the model (on the default source), whose
    // failing calls the exiting cleanups make.
    g_engine = Context::Create(nullptr, "engine", PoolKind());
    g_engine->SetFailureHandler(&EngineHandler);
    for (int i = 0; i < roots; ++i) {
      in_ = NextRecord();
      in_.U8();
      CreateRoot();
    }
    while (pos_ < size_ && op_index_ < kMaxOps) {
      ++op_index_;
      in_ = NextRecord();
      Op op = kOpTable[in_.U8() % 64];
      op_name_ = kOpNames[op];
      Step(op);
      if (Trace()) {
        size_t tearing = 0;
        for (const CtxModel& m : ctxs_) tearing += m.live && m.tearing;
        std::fprintf(stderr,
                     "op %d %s: %zu contexts (%zu in abandoned teardowns), %zu chunks, %zu "
                     "cleanups, %lld failures; %d longjmps, %d throws so far\n",
                     op_index_, op_name_, LiveContexts().size(), tearing, chunks_.size(),
                     pending_.size(), static_cast<long long>(source_.failures()),
                     g_jumps - jumps_at_start_, g_throws - throws_at_start_);
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

  // A context that takes new memory and children: not part of a teardown a
  // longjmp abandoned (allocating there is misuse, reported by checking
  // builds). -1 if the pick is such a context or there is none.
  int PickUsableContext() {
    int c = PickContext();
    return c >= 0 && !ctxs_[c].tearing ? c : -1;
  }

  // The failure handler a throwing call on `c` meets: the nearest
  // ancestor-or-self's.
  uint8_t EffectiveHandler(int c) const {
    for (int k = c; k >= 0; k = ctxs_[k].parent) {
      if (ctxs_[k].handler != kHandlerNone) return ctxs_[k].handler;
    }
    return kHandlerNone;
  }

  // A throwing call on `c` failed (or should have): it must have ended as
  // the handler on its path says, `standard` being mcx's own exception.
  void CheckFailedCall(int c, Ended e, Ended standard, int handler_calls_before,
                       const char* what) {
    uint8_t h = EffectiveHandler(c);
    Ended want = h == kHandlerJump ? Ended::kJumped
                 : h == kHandlerThrow ? Ended::kFuzzError
                                      : standard;
    if (e != want) {
      Violation("%s on '%s' failed by %s, expected %s", what, ctxs_[c].name.c_str(),
                EndedName(e), EndedName(want));
    }
    int calls = g_handler_calls - handler_calls_before;
    if (calls != (h == kHandlerNone ? 0 : 1)) {
      Violation("%s on '%s': the failure handler ran %d times", what, ctxs_[c].name.c_str(), calls);
    }
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
    int parent = PickUsableContext();
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

  // The teardown of `c` as the library does it (context.h), on the model:
  // kBeforeChildren cleanups newest first, the children newest first each
  // completely, kAfterChildren cleanups newest first, each cleanup removed
  // before it runs and appended to the expected log. A throwing cleanup
  // does not stop it (the first one is kept in first_error_); a longjmp
  // does: the model is left as the library leaves the tree, every context
  // reached marked `tearing`, and true is returned. A later teardown of any
  // of them, or of an ancestor, picks up from there.
  bool SimTeardown(int c, bool destroy) {
    ctxs_[c].tearing = true;
    while (!ctxs_[c].before.empty()) {
      int id = ctxs_[c].before.back();
      ctxs_[c].before.pop_back();
      if (SimRunCleanup(id)) return true;
    }
    while (!ctxs_[c].children.empty()) {
      if (SimTeardown(ctxs_[c].children.back(), true)) return true;
    }
    while (!ctxs_[c].after.empty()) {
      int id = ctxs_[c].after.back();
      ctxs_[c].after.pop_back();
      if (SimRunCleanup(id)) return true;
    }
    DropChunksOf(c);
    if (destroy) {
      Unparent(c);
      ctxs_[c].live = false;
      ctxs_[c].ctx = nullptr;
    } else {
      ctxs_[c].tearing = false;
    }
    return false;
  }

  // A cleanup leaves the model's pending list and runs; true if it jumps.
  bool SimRunCleanup(int id) {
    for (size_t k = 0; k < pending_.size(); ++k) {
      if (pending_[k].id == id) {
        pending_[k] = pending_.back();
        pending_.pop_back();
        break;
      }
    }
    expected_log_.push_back(id);
    uint8_t exit = exits_[static_cast<size_t>(id)];
    if (ExitThrows(exit) && first_error_ == kNoError) first_error_ = id;
    return ExitJumps(exit);
  }

  void DropChunksOf(int c) {
    for (size_t k = 0; k < chunks_.size();) {
      if (chunks_[k].ctx == c) {
        DropChunk(k);
      } else {
        ++k;
      }
    }
  }

  // A teardown call ended: as the model says (returned, jumped, or threw the
  // first cleanup exception).
  void CheckTeardownEnding(Ended e, bool jumped, int thrown_id, const char* what) {
    Ended want = jumped ? Ended::kJumped
                 : first_error_ != kNoError ? Ended::kFuzzError
                                            : Ended::kReturned;
    if (e != want) Violation("%s ended by %s, expected %s", what, EndedName(e), EndedName(want));
    if (e == Ended::kFuzzError && thrown_id != first_error_) {
      Violation("%s threw the exception of cleanup %d, expected the first one, %d", what,
                thrown_id, first_error_);
    }
  }

  void Unparent(int c) {
    int p = ctxs_[c].parent;
    if (p < 0) return;
    auto& v = ctxs_[p].children;
    v.erase(std::find(v.begin(), v.end(), c));
    ctxs_[c].parent = -1;
  }

  // A teardown, a few calls deep in the real program and from different
  // depths (a longjmp leaves walk records on the stack; the library must
  // tell dead ones from live ones whatever the depth of the next walk).
  template <typename F>
  ABSL_ATTRIBUTE_NOINLINE Ended DeepTeardown(F&& f, int* thrown_id) {
    volatile char scratch[512];
    scratch[0] = 0;
    Ended e = (op_index_ % 3 == 0) ? Guarded(f, thrown_id) : Guarded([&] { Deeper(f); }, thrown_id);
    (void)scratch[0];
    return e;
  }
  template <typename F>
  ABSL_ATTRIBUTE_NOINLINE static void Deeper(F& f) {
    volatile char scratch[3000];
    scratch[0] = 0;
    f();
    (void)scratch[0];
  }

  // After a longjmp: write over the stack where the abandoned frames were.
  ABSL_ATTRIBUTE_NOINLINE static void ScribbleStack() {
    volatile char line[8192];
    for (size_t i = 0; i < sizeof(line); ++i) line[i] = static_cast<char>(0x5A);
  }

  void Destroy() {
    int c = PickContext();
    if (c < 0) return;
    Context* ctx = ctxs_[c].ctx;
    first_error_ = kNoError;
    bool jumped = SimTeardown(c, true);
    int thrown = kNoError;
    Ended e = DeepTeardown([ctx] { ctx->Destroy(); }, &thrown);
    if (e == Ended::kJumped) ScribbleStack();
    CheckTeardownEnding(e, jumped, thrown, "Destroy");
    need_full_verify_ = true;
  }

  void Reset() {
    int c = PickContext();
    if (c < 0) return;
    uint8_t mode = in_.U8() % 3;
    size_t keep = static_cast<size_t>(in_.U16()) * 4;
    Context* ctx = ctxs_[c].ctx;
    ResetOptions o = mode == 0   ? ResetOptions::KeepFirstBlock()
                     : mode == 1 ? ResetOptions::KeepBytes(keep)
                                 : ResetOptions::ReleaseAll();
    first_error_ = kNoError;
    bool jumped = SimTeardown(c, false);
    int thrown = kNoError;
    Ended e = DeepTeardown([ctx, o] { ctx->Reset(o); }, &thrown);
    if (e == Ended::kJumped) ScribbleStack();
    CheckTeardownEnding(e, jumped, thrown, "Reset");
    need_full_verify_ = true;
    if (jumped) return;
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
  }

  // The cleanups of `c`'s teardown, in the order they would run.
  void PureOrder(int c, std::vector<int>* out) const {
    const CtxModel& m = ctxs_[c];
    for (auto it = m.before.rbegin(); it != m.before.rend(); ++it) out->push_back(*it);
    for (auto it = m.children.rbegin(); it != m.children.rend(); ++it) PureOrder(*it, out);
    for (auto it = m.after.rbegin(); it != m.after.rend(); ++it) out->push_back(*it);
  }

  void DestroyChildren() {
    int c = PickContext();
    if (c < 0) return;
    first_error_ = kNoError;
    bool jumped = false;
    while (!jumped && !ctxs_[c].children.empty()) {
      jumped = SimTeardown(ctxs_[c].children.back(), true);
    }
    Context* ctx = ctxs_[c].ctx;
    int thrown = kNoError;
    Ended e = DeepTeardown([ctx] { ctx->DestroyChildren(); }, &thrown);
    if (e == Ended::kJumped) ScribbleStack();
    CheckTeardownEnding(e, jumped, thrown, "DestroyChildren");
    if (!jumped && ctx->first_child() != nullptr) Violation("DestroyChildren left a child");
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
    // A context in an abandoned teardown neither moves nor takes children.
    bool tearing_refusal = !cycle && target != m.parent &&
                           (m.tearing || (target >= 0 && ctxs_[target].tearing));
    bool limit_refusal = false;
    if (!cycle && !tearing_refusal && target != m.parent && target >= 0) {
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
    } else if (tearing_refusal) {
      if (s.code() != absl::StatusCode::kFailedPrecondition ||
          m.ctx->last_failure() != Failure::kBadArgument) {
        Violation("SetParent('%s' under '%s') with a context being torn down gave %s",
                  m.name.c_str(), target >= 0 ? ctxs_[target].name.c_str() : "(root)",
                  s.ToString().c_str());
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
    int c = PickUsableContext();
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
      case 1: {
        what = "Alloc";
        const int calls = g_handler_calls;
        Ended e = Guarded([&] { p = static_cast<char*>(ctx->Alloc(size)); });
        if (e == Ended::kReturned) {
          if (p == nullptr) Violation("throwing Alloc returned nullptr");
        } else {
          threw = true;
          p = nullptr;
          CheckFailedCall(c, e, Ended::kBadAlloc, calls, what);
        }
        break;
      }
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
        const int calls = g_handler_calls;
        Ended e = Guarded([&] { p = ctx->Strdup(str); });
        if (e == Ended::kReturned) {
          if (std::memcmp(p, str.data(), len) != 0 || p[len] != '\0') {
            Violation("Strdup copied the wrong bytes");
          }
        } else {
          threw = true;
          p = nullptr;
          CheckFailedCall(c, e, Ended::kBadAlloc, calls, what);
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
        const int calls = g_handler_calls;
        Ended e = Guarded([&] { p = static_cast<char*>(ctx->AllocAligned(size, 3)); });
        if (e == Ended::kReturned) Violation("AllocAligned(%zu, 3) did not throw", size);
        CheckFailedCall(c, e, Ended::kInvalidArgument, calls, "AllocAligned(n, 3)");
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
    const size_t live_before = m.ctx->live_bytes();
    if (!m.pool && how % 2 == 1) {
      mcx::Free(ch.p);
    } else if (how % 4 == 2) {
      m.ctx->Free(ch.p, ch.size);  // the sized free
    } else {
      m.ctx->Free(ch.p);
    }
    // A freelist chunk (where the kind counts), and a pool's large one, take at least their size
    // out of the live bytes; a pool's small chunk stays until the reset
    // (or its block rewinds).
    const size_t live_after = m.ctx->live_bytes();
    if (live_before == kUnknownSize) return;  // a kind that keeps no count
    if (live_after > live_before ||
        ((!m.pool || ch.pool_large) && live_before - live_after < ch.size)) {
      Violation("free of a %zu-byte chunk of '%s' took live bytes from %zu to %zu", ch.size,
                m.name.c_str(), live_before, live_after);
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
    if (m.tearing) return;  // its context is in an abandoned teardown
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
      {
        what = "Realloc(p, old, new)";
        const int calls = g_handler_calls;
        Ended e = Guarded([&] { q = m.ctx->Realloc(ch.p, ch.size, new_size); });
        if (e != Ended::kReturned) {
          q = nullptr;
          CheckFailedCall(ch.ctx, e, Ended::kBadAlloc, calls, what);
        }
        break;
      }
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

  // add-cleanup, and add-exit-cleanup (`exits`): a cleanup that throws or
  // longjmps, itself or through a failing call's handler.
  void AddCleanup(bool exits) {
    int c = PickUsableContext();
    uint8_t how = in_.U8();
    const uint8_t exit = exits ? static_cast<uint8_t>(kExitThrow + in_.U8() % 4) : kExitNone;
    if (c < 0 || pending_.size() >= kMaxPendingCleanups) return;
    CtxModel& m = ctxs_[c];
    CleanupPhase phase = how % 2 ? CleanupPhase::kBeforeChildren : CleanupPhase::kAfterChildren;
    int id = next_cleanup_id_++;
    exits_.push_back(exit);
    Snapshot before = Snap();
    // The first cleanup makes the context's side record (its lists), which
    // a failure of what follows keeps.
    const bool first_cleanup = m.ctx->side_record_bytes() == 0;
    CleanupHandle h;
    const bool callable = (how / 2) % 2 != 0;  // its storage, then the record
    if (!callable) {
      args_.push_back({&log_, id, exit});
      h = m.ctx->TryAddCleanup(&RecordCleanup, &args_.back(), phase);
    } else {
      // Captures trivially destructible: a longjmp destroys nothing.
      std::vector<int>* log = &log_;
      const int calls = g_handler_calls;
      Ended e = Guarded([&] {
        h = m.ctx->AddCleanup(
            [log, id, exit] {
              log->push_back(id);
              LeaveCleanup(id, exit);
            },
            phase);
      });
      if (e == Ended::kReturned) {
        if (!h) Violation("throwing AddCleanup returned an empty handle");
      } else {
        h = CleanupHandle();
        CheckFailedCall(c, e, Ended::kBadAlloc, calls, "AddCleanup(callable)");
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
      const uint8_t exit = exits_[static_cast<size_t>(cm.id)];
      bool ran = false;
      int thrown = kNoError;
      Ended e = Guarded([&] { ran = ctx->RunCleanup(cm.handle); }, &thrown);
      if (e == Ended::kJumped) ScribbleStack();
      Ended want = ExitJumps(exit) ? Ended::kJumped
                   : ExitThrows(exit) ? Ended::kFuzzError
                                      : Ended::kReturned;
      if (e != want) {
        Violation("RunCleanup of cleanup %d ended by %s, expected %s", cm.id, EndedName(e),
                  EndedName(want));
      }
      if (e == Ended::kFuzzError && thrown != cm.id) {
        Violation("RunCleanup of cleanup %d threw cleanup %d's exception", cm.id, thrown);
      }
      if (e == Ended::kReturned && !ran) Violation("RunCleanup of a live cleanup returned false");
      if (ctx->HoldsCleanup(cm.handle)) Violation("a cleanup that ran is still registered");
    } else {
      if (!ctx->RemoveCleanup(cm.handle)) {
        Violation("RemoveCleanup of a live cleanup returned false");
      }
    }
  }

  // --- Limits and failures ---

  void SetLimit() {
    int c = PickUsableContext();
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

  // A failure handler on any context: none, one that longjmps, one that
  // throws, one that returns (the call then throws mcx's exception).
  void SetHandler() {
    int c = PickContext();
    uint8_t mode = in_.U8() % 4;
    if (c < 0) return;
    // The handler is kept in the context's side record: setting one on a
    // context without a record makes it, which can fail for want of memory
    // (then nothing changed).
    Snapshot before = Snap();
    bool set = mode == kHandlerNone
                   ? ctxs_[c].ctx->SetFailureHandler(nullptr)
                   : ctxs_[c].ctx->SetFailureHandler(
                         &ContextHandler, reinterpret_cast<void*>(static_cast<uintptr_t>(mode)));
    if (!set) {
      CheckCapacityFailure(c, ctxs_[c].ctx->last_failure(), before);
      return;
    }
    ctxs_[c].handler = mode;
  }

  void QueryChunk() {
    int k = PickChunk();
    if (k < 0) return;
    const ChunkModel& ch = chunks_[static_cast<size_t>(k)];
    if (!Holds(ch.p, ch.size, ch.seed)) Violation("chunk contents lost");
    CheckChunkQueries(ch);
    // Now and then (by the chunk's seed: no input is read for it), the
    // marks start again from what the context holds.
    if (ch.seed % 8 == 0) {
      CtxModel& m = ctxs_[ch.ctx];
      m.ctx->ResetPeak();
      if (m.ctx->peak_live_bytes() != m.ctx->live_bytes() ||
          m.ctx->peak_bytes_in_blocks() != m.ctx->bytes_in_blocks()) {
        Violation("ResetPeak('%s') left marks above what it holds", m.name.c_str());
      }
      m.peak_live_seen = m.ctx->peak_live_bytes();
      m.peak_blocks_seen = m.ctx->peak_bytes_in_blocks();
    }
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
      case kAddCleanup: return AddCleanup(false);
      case kAddExitCleanup: return AddCleanup(true);
      case kSetHandler: return SetHandler();
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

  // Live bytes cover every live chunk of the model, and the marks cover
  // what is held and never go down (QueryChunk resets them).
  void CheckCounters(CtxModel& m, size_t model_bytes) {
    const size_t live = m.ctx->live_bytes();
    const size_t peak = m.ctx->peak_live_bytes();
    const size_t peak_blocks = m.ctx->peak_bytes_in_blocks();
    if (live < model_bytes || peak < live || peak < m.peak_live_seen) {
      Violation("'%s': live bytes %zu (peak %zu, last seen %zu) for %zu bytes of live chunks",
                m.name.c_str(), live, peak, m.peak_live_seen, model_bytes);
    }
    if (peak_blocks < m.ctx->bytes_in_blocks() || peak_blocks < m.peak_blocks_seen) {
      Violation("'%s': blocks peak %zu (last seen %zu) below %zu in blocks", m.name.c_str(),
                peak_blocks, m.peak_blocks_seen, m.ctx->bytes_in_blocks());
    }
    m.peak_live_seen = peak;
    m.peak_blocks_seen = peak_blocks;
  }

  void FullVerify() {
    need_full_verify_ = false;
    std::vector<size_t> model_bytes(ctxs_.size(), 0);
    for (const ChunkModel& ch : chunks_) model_bytes[static_cast<size_t>(ch.ctx)] += ch.size;
    for (size_t i = 0; i < ctxs_.size(); ++i) {
      if (ctxs_[i].live) CheckCounters(ctxs_[i], model_bytes[i]);
    }
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
    // Each root is destroyed; a cleanup that longjmps abandons that
    // teardown, and the same Destroy is made again (each run consumes a
    // cleanup, so this ends).
    for (size_t i = 0; i < ctxs_.size(); ++i) {
      while (ctxs_[i].live && ctxs_[i].parent < 0) {
        Context* ctx = ctxs_[i].ctx;
        first_error_ = kNoError;
        bool jumped = SimTeardown(static_cast<int>(i), true);
        int thrown = kNoError;
        Ended e = DeepTeardown([ctx] { ctx->Destroy(); }, &thrown);
        if (e == Ended::kJumped) ScribbleStack();
        CheckTeardownEnding(e, jumped, thrown, "the final Destroy");
        CheckLog();
        if (jumped) FullVerify();
      }
    }
    CheckLog();
    g_engine->Destroy();
    g_engine = nullptr;
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
  test::FailingBlockSource source_;
  std::vector<CtxModel> ctxs_;
  std::vector<ChunkModel> chunks_;
  std::map<uintptr_t, size_t> ranges_;  // live chunk address -> extent
  std::vector<CleanupModel> pending_;
  std::deque<CleanupArg> args_;  // stable addresses for cleanup arguments
  std::vector<int> log_;
  std::vector<int> expected_log_;
  std::vector<uint8_t> exits_;  // by cleanup id: ExitKind
  static constexpr int kNoError = -2;
  int first_error_ = kNoError;  // the first cleanup that threw in a teardown
  const int jumps_at_start_ = g_jumps;
  const int throws_at_start_ = g_throws;
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
