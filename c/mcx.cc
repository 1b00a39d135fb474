// The C API: thin wrappers that turn exceptions into return values. Every
// entry point that can fail calls the throwing C++ form inside a try block,
// so the context's failure handler still runs, and returns NULL (or the
// failure code) instead of throwing across the C boundary.

#include "mcx/mcx.h"

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/dump.h"
#include "mcx/context/internal/c_api.h"
#include "mcx/context/internal/failure.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/no_alloc.h"
#include "mcx/context/pressure.h"
#include "mcx/context/report_request.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"

namespace {

mcx::Context* Cxx(mcx_context* c) { return reinterpret_cast<mcx::Context*>(c); }
const mcx::Context* Cxx(const mcx_context* c) { return reinterpret_cast<const mcx::Context*>(c); }
mcx_context* C(mcx::Context* c) { return reinterpret_cast<mcx_context*>(c); }

mcx_failure ToC(mcx::Failure f) { return static_cast<mcx_failure>(f); }

// mcx_printf's first pass formats into this much stack; a longer result is
// formatted again, straight into its chunk. The size of Printf's
// (kFormatStackBytes, mcx/context/strings.h, which the C API cannot include:
// it is on Abseil's formatting, and C programs link no Abseil library).
constexpr size_t kPrintfStackBytes = 256;

static_assert(static_cast<int>(mcx::Failure::kNone) == MCX_OK &&
                  static_cast<int>(mcx::Failure::kBadArgument) == MCX_BAD_ARGUMENT &&
                  static_cast<int>(mcx::Failure::kStaleMark) == MCX_STALE_MARK &&
                  static_cast<int>(mcx::Failure::kForbidden) == MCX_FORBIDDEN,
              "mcx_failure mirrors mcx::Failure");

// A C failure handler or soft-limit callback is a function and an argument,
// where the context keeps one argument: the pair is kept in the context's
// side record, and the context calls these trampolines with a pointer to it
// (mcx/context/internal/c_api.h). So it survives resets and goes with the
// context, and nothing outlives the contexts it was set on.
using mcx::internal::CApiAccess;
using mcx::internal::CCallback;

template <typename F>
CCallback Pair(F fn, void* arg) {
  return CCallback{reinterpret_cast<void (*)()>(fn), arg};
}

void CallCPressure(const mcx::PressureInfo& info) {
  const auto* pair = static_cast<const CCallback*>(info.arg);
  const auto fn = reinterpret_cast<mcx_pressure_fn>(pair->fn);
  const mcx_pressure_info c{C(info.context), C(info.limited), info.held, info.request,
                            info.soft_limit, pair->arg};
  fn(&c);
}

// The pair is read before the call: the handler may destroy the context
// that keeps it (the failing one or an ancestor).
void CallCHandler(const mcx::FailureInfo& info) {
  const auto* pair = static_cast<const CCallback*>(info.arg);
  const auto fn = reinterpret_cast<mcx_failure_handler>(pair->fn);
  void* const arg = pair->arg;
  fn(C(info.context), info.context_name, ToC(info.failure), info.size, arg);
}

// Runs `f`, mapping any exception (all of them come from the failure path,
// after the handler ran) to `fallback`.
template <typename F, typename R>
R NoThrow(F f, R fallback) {
  try {
    return f();
  } catch (...) {
    return fallback;
  }
}

// The C++ mark a C savepoint names. Out of the extern "C" block: a
// function there has C linkage, which a C++ return type does not allow.
mcx::Mark FromC(mcx_savepoint mark) {
  return mcx::Mark::FromParts(Cxx(static_cast<mcx_context*>(mark.context)), mark.record,
                              mark.serial);
}

}  // namespace

extern "C" {

void mcx_options_init(mcx_options* o) {
  if (o == nullptr) return;
  mcx::PoolOptions pool;
  mcx::FreelistOptions freelist;
  o->initial_block_size = pool.initial_block_size;
  o->max_block_size = 0;  // 0: the kind's default
  o->max_small = pool.max_small;
  o->rewind_on_free = 0;
  o->chunk_limit = freelist.chunk_limit;
  o->limit = MCX_NO_LIMIT;
}

mcx_context* mcx_create(mcx_context* parent, const char* name, mcx_kind kind,
                        const mcx_options* options) {
  mcx_options o;
  mcx_options_init(&o);
  if (options != nullptr) o = *options;
  mcx::ContextOptions co;
  co.limit = o.limit;
  if (kind == MCX_KIND_POOL) {
    mcx::PoolOptions po;
    po.initial_block_size = o.initial_block_size;
    if (o.max_block_size != 0) po.max_block_size = o.max_block_size;
    po.max_small = o.max_small;
    po.rewind_on_free = o.rewind_on_free != 0;
    return C(mcx::Context::TryCreate(Cxx(parent), name, mcx::PoolKind(po), co));
  }
  if (kind == MCX_KIND_FREELIST) {
    mcx::FreelistOptions fo;
    fo.initial_block_size = o.initial_block_size;
    if (o.max_block_size != 0) fo.max_block_size = o.max_block_size;
    fo.chunk_limit = o.chunk_limit;
    return C(mcx::Context::TryCreate(Cxx(parent), name, mcx::FreelistKind(fo), co));
  }
  if (parent != nullptr) mcx::SetFailure(Cxx(parent), mcx::Failure::kBadArgument);
  return nullptr;
}

void mcx_destroy(mcx_context* ctx) {
  if (ctx != nullptr) Cxx(ctx)->Destroy();
}

void mcx_reset(mcx_context* ctx, mcx_reset_mode mode, size_t keep_bytes) {
  if (ctx == nullptr) return;
  mcx::ResetOptions o;
  switch (mode) {
    case MCX_RESET_KEEP_BYTES:
      o = mcx::ResetOptions::KeepBytes(keep_bytes);
      break;
    case MCX_RESET_RELEASE_ALL:
      o = mcx::ResetOptions::ReleaseAll();
      break;
    default:
      o = mcx::ResetOptions::KeepFirstBlock();
  }
  Cxx(ctx)->Reset(o);
}

void mcx_destroy_children(mcx_context* ctx) {
  if (ctx != nullptr) Cxx(ctx)->DestroyChildren();
}

mcx_failure mcx_set_parent(mcx_context* ctx, mcx_context* new_parent) {
  if (ctx == nullptr) return MCX_BAD_ARGUMENT;
  return ToC(Cxx(ctx)->TrySetParent(Cxx(new_parent)));
}

mcx_context* mcx_parent(const mcx_context* ctx) {
  return ctx != nullptr ? C(Cxx(ctx)->parent()) : nullptr;
}

const char* mcx_name(const mcx_context* ctx) { return ctx != nullptr ? Cxx(ctx)->name() : nullptr; }

void* mcx_alloc(mcx_context* ctx, size_t size) {
  if (ctx == nullptr) return nullptr;
  return NoThrow([&] { return Cxx(ctx)->Alloc(size); }, static_cast<void*>(nullptr));
}

void* mcx_alloc_zero(mcx_context* ctx, size_t size) {
  if (ctx == nullptr) return nullptr;
  return NoThrow([&] { return Cxx(ctx)->AllocZero(size); }, static_cast<void*>(nullptr));
}

void* mcx_calloc(mcx_context* ctx, size_t count, size_t size) {
  if (ctx == nullptr) return nullptr;
  return NoThrow([&] { return Cxx(ctx)->AllocZeroArray(count, size); },
                 static_cast<void*>(nullptr));
}

void* mcx_alloc_aligned(mcx_context* ctx, size_t size, size_t alignment) {
  if (ctx == nullptr) return nullptr;
  return NoThrow([&] { return Cxx(ctx)->AllocAligned(size, alignment); },
                 static_cast<void*>(nullptr));
}

void* mcx_alloc_bytes(mcx_context* ctx, size_t size) {
  if (ctx == nullptr) return nullptr;
  return NoThrow([&] { return Cxx(ctx)->AllocBytes(size); }, static_cast<void*>(nullptr));
}

char* mcx_strdup(mcx_context* ctx, const char* s) {
  if (ctx == nullptr) return nullptr;
  if (s == nullptr) {
    mcx::SetFailure(Cxx(ctx), mcx::Failure::kBadArgument);
    return nullptr;
  }
  return NoThrow([&] { return Cxx(ctx)->Strdup(s); }, static_cast<char*>(nullptr));
}

// mcx_vprintf
//
// C varargs cannot go through absl::StrFormat (its arguments are typed at
// compile time), so this is vsnprintf, in the shape of Printf (strings.h):
// a first pass into a buffer on the stack, which either holds the result or
// measures it, then a chunk of exactly that size, written by the second
// pass. `args` is consumed by the second pass only, a copy by the first.
char* mcx_vprintf(mcx_context* ctx, const char* format, va_list args) {
  if (ctx == nullptr) return nullptr;
  if (format == nullptr) {
    mcx::SetFailure(Cxx(ctx), mcx::Failure::kBadArgument);
    return nullptr;
  }
  char stack[kPrintfStackBytes];
  va_list first;
  va_copy(first, args);
  const int n = std::vsnprintf(stack, sizeof(stack), format, first);
  va_end(first);
  if (n < 0) {  // EOVERFLOW (a result above INT_MAX), or a bad format
    mcx::SetFailure(Cxx(ctx), mcx::Failure::kBadArgument);
    return nullptr;
  }
  const size_t size = static_cast<size_t>(n) + 1;
  char* out = NoThrow([&] { return static_cast<char*>(Cxx(ctx)->AllocBytes(size)); },
                      static_cast<char*>(nullptr));
  if (out == nullptr) return nullptr;
  if (size <= sizeof(stack)) {
    std::memcpy(out, stack, size);
  } else {
    std::vsnprintf(out, size, format, args);
  }
  return out;
}

char* mcx_printf(mcx_context* ctx, const char* format, ...) {
  va_list args;
  va_start(args, format);
  char* out = mcx_vprintf(ctx, format, args);
  va_end(args);
  return out;
}

// A NULL `s` or `p` with a nonzero length is a failure value here, as a NULL
// string is for mcx_strdup: checked before the C++ call, whose failure
// handler would run.
char* mcx_strndup(mcx_context* ctx, const char* s, size_t n) {
  if (ctx == nullptr) return nullptr;
  if (s == nullptr && n != 0) {
    mcx::SetFailure(Cxx(ctx), mcx::Failure::kBadArgument);
    return nullptr;
  }
  const size_t length = n == 0 ? 0 : strnlen(s, n);
  char* out = NoThrow([&] { return static_cast<char*>(Cxx(ctx)->AllocBytes(length + 1)); },
                      static_cast<char*>(nullptr));
  if (out == nullptr) return nullptr;
  if (length != 0) std::memcpy(out, s, length);
  out[length] = '\0';
  return out;
}

void* mcx_memdup(mcx_context* ctx, const void* p, size_t n) {
  if (ctx == nullptr) return nullptr;
  if (p == nullptr && n != 0) {
    mcx::SetFailure(Cxx(ctx), mcx::Failure::kBadArgument);
    return nullptr;
  }
  void* out = NoThrow([&] { return Cxx(ctx)->Alloc(n); }, static_cast<void*>(nullptr));
  if (out != nullptr && n != 0) std::memcpy(out, p, n);
  return out;
}

// mcx_strcat
//
// Two passes over the arguments, as apr_pstrcat: the lengths, then one chunk
// of their sum and the copies. (APR keeps the first six lengths to spare
// the second strlen; strings of names and keys are short.)
char* mcx_strcat(mcx_context* ctx, ...) {
  if (ctx == nullptr) return nullptr;
  va_list args;
  va_start(args, ctx);
  size_t n = 0;
  for (const char* s = va_arg(args, const char*); s != nullptr; s = va_arg(args, const char*)) {
    n += std::strlen(s);
  }
  va_end(args);
  char* out = NoThrow([&] { return static_cast<char*>(Cxx(ctx)->AllocBytes(n + 1)); },
                      static_cast<char*>(nullptr));
  if (out == nullptr) return nullptr;
  char* at = out;
  va_start(args, ctx);
  for (const char* s = va_arg(args, const char*); s != nullptr; s = va_arg(args, const char*)) {
    const size_t len = std::strlen(s);
    std::memcpy(at, s, len);
    at += len;
  }
  va_end(args);
  *at = '\0';
  return out;
}

int mcx_no_alloc_begin(void) {
  const int depth = mcx::NoAllocScope::Depth();
  mcx::NoAllocScope::RestoreDepth(depth + 1);
  return depth;
}

// An end with no region open, or a negative depth, would take the thread's
// depth below 0, where every block acquisition is refused as if inside a
// region: misuse, reported, with the depth left as it is.
void mcx_no_alloc_end(void) {
  const int depth = mcx::NoAllocScope::Depth();
  if (depth <= 0) {
    mcx::internal::ReportMisuse("mcx_no_alloc_end with no region open on this thread (depth %d)",
                                depth);
    return;
  }
  mcx::NoAllocScope::RestoreDepth(depth - 1);
}

void mcx_no_alloc_restore(int depth) { mcx::NoAllocScope::RestoreDepth(depth); }

mcx_failure mcx_allow_in_no_alloc(mcx_context* ctx, int allow) {
  if (ctx == nullptr) return MCX_BAD_ARGUMENT;
  return Cxx(ctx)->AllowInNoAllocScope(allow != 0) ? MCX_OK : ToC(Cxx(ctx)->last_failure());
}

void* mcx_realloc(mcx_context* ctx, void* p, size_t new_size) {
  if (ctx == nullptr) return nullptr;
  return NoThrow([&] { return Cxx(ctx)->Realloc(p, new_size); }, static_cast<void*>(nullptr));
}

void* mcx_realloc_sized(mcx_context* ctx, void* p, size_t old_size, size_t new_size) {
  if (ctx == nullptr) return nullptr;
  return NoThrow([&] { return Cxx(ctx)->Realloc(p, old_size, new_size); },
                 static_cast<void*>(nullptr));
}

void mcx_free(mcx_context* ctx, void* p) {
  if (ctx != nullptr) Cxx(ctx)->Free(p);
}

void mcx_free_sized(mcx_context* ctx, void* p, size_t size) {
  if (ctx != nullptr) Cxx(ctx)->Free(p, size);
}

size_t mcx_chunk_size(const mcx_context* ctx, const void* p) {
  return ctx != nullptr ? Cxx(ctx)->ChunkSize(p) : mcx::kUnknownSize;
}

void mcx_free_chunk(void* p) { mcx::Free(p); }

void* mcx_realloc_chunk(void* p, size_t new_size) {
  if (p == nullptr) return nullptr;  // mcx.h: a failure value, not misuse
  return NoThrow([&] { return mcx::Realloc(p, new_size); }, static_cast<void*>(nullptr));
}

mcx_context* mcx_chunk_context(const void* p) { return C(mcx::GetChunkContext(p)); }
size_t mcx_chunk_size_of(const void* p) { return mcx::GetChunkSize(p); }

mcx_failure mcx_set_limit(mcx_context* ctx, size_t bytes) {
  if (ctx == nullptr) return MCX_BAD_ARGUMENT;
  return ToC(Cxx(ctx)->TrySetLimit(bytes));
}

size_t mcx_limit(const mcx_context* ctx) { return ctx != nullptr ? Cxx(ctx)->limit() : MCX_NO_LIMIT; }

// The handler is kept in the context's side record, which a limit, the
// block source or a no-alloc region can refuse: then nothing is set, and
// the caller is told (Context::SetFailureHandler has recorded why).
mcx_failure mcx_set_failure_handler(mcx_context* ctx, mcx_failure_handler handler, void* arg) {
  if (ctx == nullptr) return MCX_BAD_ARGUMENT;
  const bool set = handler == nullptr
                       ? Cxx(ctx)->SetFailureHandler(nullptr, nullptr)
                       : CApiAccess::SetFailureHandler(Cxx(ctx), &CallCHandler, Pair(handler, arg));
  return set ? MCX_OK : ToC(Cxx(ctx)->last_failure());
}

mcx_failure mcx_set_soft_limit(mcx_context* ctx, size_t bytes, mcx_pressure_fn fn, void* arg) {
  if (ctx == nullptr) return MCX_BAD_ARGUMENT;
  if (bytes == MCX_NO_LIMIT) return ToC(Cxx(ctx)->TrySetSoftLimit(mcx::kNoLimit, nullptr));
  if (fn == nullptr) return ToC(Cxx(ctx)->TrySetSoftLimit(bytes, nullptr));  // kBadArgument
  return ToC(CApiAccess::SetSoftLimit(Cxx(ctx), bytes, &CallCPressure, Pair(fn, arg)));
}

size_t mcx_soft_limit(const mcx_context* ctx) {
  return ctx != nullptr ? Cxx(ctx)->soft_limit() : MCX_NO_LIMIT;
}

int mcx_service_requests(void) { return mcx::ServiceRequests(); }

mcx_failure mcx_last_failure(const mcx_context* ctx) {
  return ctx != nullptr ? ToC(Cxx(ctx)->last_failure()) : MCX_BAD_ARGUMENT;
}

const char* mcx_failure_name(mcx_failure failure) {
  return mcx::FailureName(static_cast<mcx::Failure>(failure));
}

mcx_cleanup mcx_add_cleanup(mcx_context* ctx, mcx_cleanup_fn fn, void* arg,
                            int before_children) {
  mcx_cleanup none = MCX_NO_CLEANUP_INIT;
  if (ctx == nullptr) return none;
  mcx::CleanupPhase phase =
      before_children ? mcx::CleanupPhase::kBeforeChildren : mcx::CleanupPhase::kAfterChildren;
  mcx::CleanupHandle h = Cxx(ctx)->TryAddCleanup(fn, arg, phase);
  return mcx_cleanup{h.record(), h.serial()};
}

// A handle of another context is a failure value here, not misuse (mcx.h):
// it is checked before the C++ call, which would report it.
int mcx_remove_cleanup(mcx_context* ctx, mcx_cleanup cleanup) {
  if (ctx == nullptr) return 0;
  mcx::CleanupHandle h = mcx::CleanupHandle::FromParts(cleanup.record, cleanup.serial);
  if (!Cxx(ctx)->HoldsCleanup(h)) return 0;
  return Cxx(ctx)->RemoveCleanup(h) ? 1 : 0;
}

int mcx_run_cleanup(mcx_context* ctx, mcx_cleanup cleanup) {
  if (ctx == nullptr) return 0;
  mcx::CleanupHandle h = mcx::CleanupHandle::FromParts(cleanup.record, cleanup.serial);
  if (!Cxx(ctx)->HoldsCleanup(h)) return 0;
  return Cxx(ctx)->RunCleanup(h) ? 1 : 0;
}

// Savepoints: the Try forms, so that nothing throws into C. A C cleanup
// cannot throw; one that longjmps leaves the rewind as context.h says.
mcx_savepoint mcx_mark(mcx_context* ctx) {
  mcx_savepoint none = {nullptr, nullptr, 0};
  if (ctx == nullptr) return none;
  mcx::Mark m = Cxx(ctx)->TryMark();
  if (!m) return none;
  return mcx_savepoint{ctx, m.record(), m.serial()};
}

mcx_failure mcx_rewind(mcx_context* ctx, mcx_savepoint mark, int drop_cleanups) {
  if (ctx == nullptr) return MCX_BAD_ARGUMENT;
  return ToC(Cxx(ctx)->TryRewindTo(
      FromC(mark), drop_cleanups ? mcx::RewindCleanups::kDrop : mcx::RewindCleanups::kRun));
}

mcx_failure mcx_drop_mark(mcx_context* ctx, mcx_savepoint mark) {
  if (ctx == nullptr) return MCX_BAD_ARGUMENT;
  return ToC(Cxx(ctx)->TryDropMark(FromC(mark)));
}

void mcx_get_counters(const mcx_context* ctx, int subtree, mcx_counters* out) {
  if (out == nullptr) return;
  mcx::ContextCounters c;  // a NULL context: all zero
  if (ctx != nullptr) c = subtree ? mcx::GetSubtreeCounters(Cxx(ctx)) : mcx::GetCounters(Cxx(ctx));
  out->total_bytes = c.total_bytes;
  out->blocks = c.blocks;
  out->free_bytes = c.free_bytes;
  out->free_chunks = c.free_chunks;
  out->used_bytes = c.used_bytes();
  out->contexts = c.contexts;
  out->live_bytes = c.live_bytes;
  out->peak_live_bytes = c.peak_live_bytes;
  out->peak_block_bytes = c.peak_block_bytes;
}

void mcx_reset_peak(mcx_context* ctx, int subtree) {
  if (ctx == nullptr) return;
  if (subtree) {
    mcx::ResetSubtreePeaks(Cxx(ctx));
  } else {
    Cxx(ctx)->ResetPeak();
  }
}

int mcx_report(const mcx_context* ctx, FILE* out, int max_depth, int max_children, int json) {
  if (ctx == nullptr || out == nullptr) return -1;
  mcx::ReportOptions o;
  o.max_depth = max_depth;
  o.max_children = max_children;
  o.format = json ? mcx::ReportFormat::kJson : mcx::ReportFormat::kText;
  std::string text = NoThrow([&] { return mcx::StatsReport(Cxx(ctx), o); }, std::string());
  if (text.empty()) return -1;
  // Flushed, so that a write error is seen here, not at a later fclose:
  // stdio would keep a short report in its buffer.
  if (std::fwrite(text.data(), 1, text.size(), out) != text.size()) return -1;
  return std::fflush(out) == 0 ? 0 : -1;
}

int mcx_dump_stats(const mcx_context* ctx, int fd, int max_depth, int max_children) {
  mcx::DumpOptions o;
  o.max_depth = max_depth;
  o.max_children = max_children;
  return mcx::DumpStats(Cxx(ctx), fd, o) ? 0 : -1;
}

static_assert(MCX_FAILURE_DUMP_INHERIT == mcx::kFailureDumpInherit &&
                  MCX_FAILURE_DUMP_OFF == mcx::kFailureDumpOff,
              "the C values mirror dump.h");

mcx_failure mcx_set_failure_dump(mcx_context* ctx, int fd, int max_depth, int max_children) {
  if (ctx == nullptr) return MCX_BAD_ARGUMENT;
  mcx::FailureDumpOptions o;
  o.fd = fd;
  o.max_depth = max_depth;
  o.max_children = max_children;
  return Cxx(ctx)->SetFailureDump(o) ? MCX_OK : ToC(Cxx(ctx)->last_failure());
}

}  // extern "C"
