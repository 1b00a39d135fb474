// The stats report written to a file descriptor without allocating, and the
// dump mcx writes on its own when an allocation runs out of memory or hits a
// limit.
//
// The report itself is StatsReport's: the one walk (report.cc, WalkReport)
// with the text sink (internal/report_text.h). What is here is the output
// the sink writes to, a buffer on the stack flushed with write(2), because
// StatsReport's std::string allocates, which is the one thing a report
// printed because allocation failed must not do. The test
// (tests/context/dump_test.cc) still holds the two byte for byte equal, and
// counts allocations.

#include "mcx/context/dump.h"

#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>

#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/internal/failure.h"
#include "mcx/context/internal/report_json.h"
#include "mcx/context/internal/report_text.h"
#include "mcx/context/report.h"

namespace mcx {
namespace {

static_assert(kDumpTrackedLevels == kReportTrackedLevels, "dump.h describes the walk's stack");

// Bytes formatted before each write(2). Small, because the caller may be a
// signal handler on an alternate stack; a typical line fits.
constexpr size_t kBufferBytes = 512;

// PipeSignalHold
//
// Blocks SIGPIPE on this thread for its lifetime, and on leaving discards
// the SIGPIPE that its writes raised (one that was pending before is left
// for the program), so a write to a pipe with no reader fails with EPIPE
// and the program never sees the signal. The calls are async-signal-safe
// (pthread_sigmask, sigpending, sigemptyset, sigaddset, sigismember) but
// for sigtimedwait, a system call that takes no lock and touches no memory
// of the process but its arguments. A signal raised by the write is
// directed at the thread, so the thread's mask holds it.
class PipeSignalHold {
 public:
  PipeSignalHold() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigemptyset(&pending);
    was_pending_ = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
    held_ = pthread_sigmask(SIG_BLOCK, &pipe_, &old_) == 0;
  }
  ~PipeSignalHold() {
    if (!held_) return;
    const int saved_errno = errno;
    sigset_t pending;
    sigemptyset(&pending);
    if (!was_pending_ && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
      const timespec now = {0, 0};
      while (sigtimedwait(&pipe_, nullptr, &now) < 0 && errno == EINTR) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
    errno = saved_errno;
  }
  PipeSignalHold(const PipeSignalHold&) = delete;
  PipeSignalHold& operator=(const PipeSignalHold&) = delete;

 private:
  sigset_t pipe_;
  sigset_t old_;
  bool was_pending_ = false;
  bool held_ = false;
};

// FdWriter
//
// Formats into a buffer on the stack and writes it with write(2) when full;
// a piece at least as large as the buffer (deep indentation, a long name) is
// written straight from where it is, after what is buffered. After the first
// write error it drops everything (the walk stops early).
class FdWriter final : public internal::ReportOut {
 public:
  explicit FdWriter(int fd) : fd_(fd) {}
  FdWriter(const FdWriter&) = delete;
  FdWriter& operator=(const FdWriter&) = delete;

  bool failed() const override { return !ok_; }

  void Append(const char* s, size_t n) override {
    if (!ok_) return;
    if (n <= kBufferBytes - used_) {
      std::memcpy(buffer_ + used_, s, n);
      used_ += n;
      return;
    }
    if (n >= kBufferBytes) {
      if (Flush()) WriteAll(s, n);
      return;
    }
    while (ok_ && n > 0) {
      if (used_ == kBufferBytes) {
        Flush();
        continue;
      }
      size_t room = kBufferBytes - used_;
      size_t k = n < room ? n : room;
      std::memcpy(buffer_ + used_, s, k);
      used_ += k;
      s += k;
      n -= k;
    }
  }

  bool Flush() {
    if (ok_ && used_ > 0) WriteAll(buffer_, used_);
    used_ = 0;
    return ok_;
  }

 private:
  // write(2) until every byte is out: EINTR (a signal arrived before any byte
  // went) is retried, a short write (a signal arrived after some did, or a
  // pipe had less room) continues with the rest. SIGPIPE is held off the
  // thread meanwhile (PipeSignalHold): a dump mcx writes on its own, to a
  // pipe whose reader has gone (`prog 2>&1 | head`), must end with EPIPE,
  // not kill the program before its failure handler runs.
  void WriteAll(const char* p, size_t n) {
    PipeSignalHold hold;
    while (n > 0) {
      ssize_t written = ::write(fd_, p, n);
      if (written > 0) {
        p += written;
        n -= static_cast<size_t>(written);
        continue;
      }
      if (written < 0 && errno == EINTR) continue;
      // write(2) returns 0 for a nonzero count only where no progress is
      // possible; report it as an I/O error rather than spin.
      if (written == 0) errno = EIO;
      ok_ = false;
      return;
    }
  }

  int fd_;
  bool ok_ = true;
  size_t used_ = 0;  // bytes of buffer_ not yet written
  char buffer_[kBufferBytes];
};

// The text report of `root` to `w`: the walk with the text sink.
void WriteReport(FdWriter* w, const Context* root, const DumpOptions& options,
                 SharedContextWalk shared = SharedContextWalk::kRead) {
  internal::TextReportSink sink(w);
  WalkReport(root, options.max_depth, options.max_children, &sink, shared);
}

// Whether any thread may use `c` (a shared context).
bool AnyThreadMayUse(const Context* c) { return c->kind()->lock != nullptr; }

// Set while this thread writes a failure dump. Trivially initialised
// thread_local: reading it allocates nothing.
thread_local bool writing_failure_dump = false;

}  // namespace

bool DumpStats(const Context* root, int fd, const DumpOptions& options) {
  if (root == nullptr) {
    errno = EINVAL;
    return false;
  }
  FdWriter w(fd);
  WriteReport(&w, root, options);
  return w.Flush();
}

namespace internal {

bool WriteReportToFd(int fd, const Context* root, int max_depth, int max_children, bool json) {
  FdWriter w(fd);
  if (json) {
    JsonReportSink sink(&w);
    WalkReport(root, max_depth, max_children, &sink, SharedContextWalk::kSkip);
  } else {
    TextReportSink sink(&w);
    WalkReport(root, max_depth, max_children, &sink, SharedContextWalk::kSkip);
  }
  return w.Flush();
}

// DumpOnFailure
//
// Called by Context::Fail for throwing calls that ran out of memory or hit a
// limit, before the failure handler. The setting is looked up now, not
// cached, so that it follows reparenting as the failure handler does. The
// failed call has changed nothing, so the tree is consistent.
//
// Note: nothing here may fail into Context::Fail again. The dump allocates
// nothing; the guard is for a failure on this thread while the dump is being
// written (a kind's stats method allocating would be a bug, but must not
// become an endless loop of dumps).
void DumpOnFailure(const Context* ctx, Failure failure, size_t size) {
  const Context* setter = ctx;
  while (setter != nullptr && setter->failure_dump().fd == kFailureDumpInherit) {
    setter = setter->parent();
  }
  if (setter == nullptr || writing_failure_dump) return;
  const FailureDumpOptions settings = setter->failure_dump();
  if (settings.fd < 0) return;  // kFailureDumpOff
  writing_failure_dump = true;
  const int saved_errno = errno;

  // The tree this thread owns: up to the root, or to just below the
  // nearest shared context (whose other children, and what is above it,
  // other threads may be changing now); a shared context that failed is
  // itself the root, not read. Within, shared contexts are not read
  // (SharedContextWalk::kSkip).
  const Context* root = ctx;
  if (!AnyThreadMayUse(root)) {
    while (root->parent() != nullptr && !AnyThreadMayUse(root->parent())) root = root->parent();
  }
  FdWriter w(settings.fd);
  w.AppendLiteral("mcx: ");
  w.AppendString(FailureName(failure));
  w.AppendLiteral(" on a request of ");
  w.AppendNumber(size);
  w.AppendLiteral(" bytes in context '");
  w.AppendTextName(ctx->name());
  w.AppendLiteral("'\n");
  DumpOptions options;
  options.max_depth = settings.max_depth;
  options.max_children = settings.max_children;
  WriteReport(&w, root, options, SharedContextWalk::kSkip);
  w.Flush();  // a dump that cannot be written is not a second failure

  errno = saved_errno;
  writing_failure_dump = false;
}

}  // namespace internal
}  // namespace mcx
