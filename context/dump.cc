// The stats report written to a file descriptor without allocating, and the
// dump mcx writes on its own when an allocation runs out of memory or hits a
// limit.
//
// Why a second implementation of the text report: StatsReport builds a
// std::string with absl::StrFormat and keeps its walk in a std::vector, and
// every one of those allocates, which is the one thing a report printed
// because allocation failed must not do. The test
// (tests/context/dump_test.cc) holds the two byte for byte equal.
//
// Note: do not use recursion here, and do not keep frames: a chain of a
// million contexts must dump in constant stack. The walk keeps only the
// context whose children it is listing, its depth, the next child and how
// many were shown; climbing back finds the parent through `parent()` and the
// next child through `next_sibling()`.

#include "mcx/context/dump.h"

#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <limits>

#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/internal/failure.h"
#include "mcx/context/internal/text.h"
#include "mcx/context/stats.h"

namespace mcx {
namespace {

// Bytes formatted before each write(2). Small, because the caller may be a
// signal handler on an alternate stack; a typical line fits.
constexpr size_t kBufferBytes = 512;
// Decimal digits of the largest size_t.
constexpr size_t kMaxDigits = std::numeric_limits<size_t>::digits10 + 1;
// StatsReport indents two spaces per level.
constexpr size_t kIndentPerLevel = 2;
// Indentation that does not fit the buffer is written straight from this
// run of spaces (read-only data), so a line a million levels deep costs a few
// large writes, not thousands of buffer flushes.
constexpr size_t kSpaceRunBytes = 4096;

struct SpaceRun {
  char bytes[kSpaceRunBytes];
};

constexpr SpaceRun MakeSpaceRun() {
  SpaceRun run{};
  for (char& c : run.bytes) c = ' ';
  return run;
}

// Constant-initialised: no static initialisation at run time, so no guard
// variable and nothing that a signal handler could find half done.
constexpr SpaceRun kSpaces = MakeSpaceRun();

// FdWriter
//
// Formats into a buffer on the stack and writes it with write(2) when full.
// After the first write error it drops everything (the walk stops early).
class FdWriter {
 public:
  explicit FdWriter(int fd) : fd_(fd) {}
  FdWriter(const FdWriter&) = delete;
  FdWriter& operator=(const FdWriter&) = delete;

  bool ok() const { return ok_; }

  void Append(const char* s, size_t n) {
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

  // A NUL-terminated string (context names may be long: copied in pieces).
  void AppendString(const char* s) { Append(s, std::strlen(s)); }

  // A context name, escaped as StatsReport's text escapes it (stats.cc's
  // TextName): a name must not start a line of its own.
  void AppendName(const char* name) {
    internal::AppendTextName(name, [this](const char* piece, size_t n) { Append(piece, n); });
  }

  // As absl::StrFormat's "%d" prints a size_t: unsigned decimal.
  void AppendNumber(size_t value) {
    char digits[kMaxDigits];
    size_t i = kMaxDigits;
    do {
      digits[--i] = static_cast<char>('0' + value % 10);
      value /= 10;
    } while (value != 0);
    Append(digits + i, kMaxDigits - i);
  }

  void AppendSpaces(size_t n) {
    if (n <= kBufferBytes - used_) {
      std::memset(buffer_ + used_, ' ', n);
      used_ += n;
      return;
    }
    Flush();
    while (ok_ && n > 0) {
      size_t k = n < kSpaceRunBytes ? n : kSpaceRunBytes;
      WriteAll(kSpaces.bytes, k);
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
  // pipe had less room) continues with the rest.
  void WriteAll(const char* p, size_t n) {
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

template <size_t N>
void AppendLiteral(FdWriter* w, const char (&s)[N]) {
  w->Append(s, N - 1);
}

// "%d total in %d blocks; %d free (%d chunks); %d used", then the reserve:
// stats.cc's TextTotals.
void AppendTotals(FdWriter* w, const ContextCounters& c) {
  w->AppendNumber(c.total_bytes);
  AppendLiteral(w, " total in ");
  w->AppendNumber(c.blocks);
  AppendLiteral(w, " blocks; ");
  w->AppendNumber(c.free_bytes);
  AppendLiteral(w, " free (");
  w->AppendNumber(c.free_chunks);
  AppendLiteral(w, " chunks); ");
  w->AppendNumber(c.used_bytes());
  AppendLiteral(w, " used");
  if (c.reserve_blocks != 0 || c.reserve_uses != 0) {
    AppendLiteral(w, "; reserve ");
    w->AppendNumber(c.reserve_bytes);
    AppendLiteral(w, " bytes in ");
    w->AppendNumber(c.reserve_blocks);
    AppendLiteral(w, " blocks (");
    w->AppendNumber(c.reserve_uses);
    AppendLiteral(w, " used)");
  }
}

void AppendContextLine(FdWriter* w, int depth, const Context* c) {
  w->AppendSpaces(static_cast<size_t>(depth) * kIndentPerLevel);
  w->AppendName(c->name());
  AppendLiteral(w, ": ");
  AppendTotals(w, GetCounters(c));
  AppendLiteral(w, "\n");
}

// The line that stands for `first` and its older siblings, none of them
// shown. GetSubtreeCounters walks through the links too: no allocation.
void AppendSummaryLine(FdWriter* w, int depth, const Context* first) {
  ContextCounters sum;
  size_t count = 0;
  for (const Context* c = first; c != nullptr; c = c->next_sibling()) {
    sum.Add(GetSubtreeCounters(c));
    ++count;
  }
  w->AppendSpaces(static_cast<size_t>(depth) * kIndentPerLevel);
  w->AppendNumber(count);
  AppendLiteral(w, " more child contexts containing ");
  AppendTotals(w, sum);
  AppendLiteral(w, "\n");
}

// How many children of `child`'s parent come before `child`, counting no
// further than `limit` (all the caller needs to know is whether the parent
// may show another one).
int CountOlderSiblingsBefore(const Context* child, int limit) {
  int n = 0;
  for (const Context* c = child->parent()->first_child(); c != child && n < limit;
       c = c->next_sibling()) {
    ++n;
  }
  return n;
}

// WriteReport
//
// StatsReport's walk (stats.cc, TextReport) without its vector of frames. At
// each step `node` is the context whose children are being listed, at
// `depth`; `next` is the next child to show or summarise and `shown` how many
// were shown. A child is shown while `depth < max_depth` and `shown <
// max_children`; the rest become one summary line. When a context's children
// are done the walk climbs: the parent is `node->parent()`, its next child
// `node->next_sibling()`, and its count comes from `shown_at` (the first
// kDumpTrackedLevels levels) or is counted again.
void WriteReport(FdWriter* w, const Context* root, const DumpOptions& options) {
  int shown_at[kDumpTrackedLevels];
  AppendContextLine(w, 0, root);
  const Context* node = root;
  int depth = 0;
  const Context* next = root->first_child();
  int shown = 0;
  while (w->ok()) {
    if (next != nullptr && depth < options.max_depth && shown < options.max_children) {
      if (depth < kDumpTrackedLevels) shown_at[depth] = shown + 1;
      node = next;
      ++depth;
      AppendContextLine(w, depth, node);
      next = node->first_child();
      shown = 0;
      continue;
    }
    if (next != nullptr) AppendSummaryLine(w, depth + 1, next);
    if (node == root) break;
    const Context* done = node;
    node = done->parent();
    next = done->next_sibling();
    --depth;
    shown = depth < kDumpTrackedLevels
                ? shown_at[depth]
                : CountOlderSiblingsBefore(done, options.max_children) + 1;
  }
  ContextCounters grand = GetSubtreeCounters(root);
  AppendLiteral(w, "Grand total: ");
  w->AppendNumber(grand.total_bytes);
  AppendLiteral(w, " bytes in ");
  w->AppendNumber(grand.blocks);
  AppendLiteral(w, " blocks; ");
  w->AppendNumber(grand.free_bytes);
  AppendLiteral(w, " free (");
  w->AppendNumber(grand.free_chunks);
  AppendLiteral(w, " chunks); ");
  w->AppendNumber(grand.used_bytes());
  AppendLiteral(w, " used\n");
}

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

  const Context* root = ctx;
  while (root->parent() != nullptr) root = root->parent();
  FdWriter w(settings.fd);
  AppendLiteral(&w, "mcx: ");
  w.AppendString(FailureName(failure));
  AppendLiteral(&w, " on a request of ");
  w.AppendNumber(size);
  AppendLiteral(&w, " bytes in context '");
  w.AppendName(ctx->name());
  AppendLiteral(&w, "'\n");
  DumpOptions options;
  options.max_depth = settings.max_depth;
  options.max_children = settings.max_children;
  WriteReport(&w, root, options);
  w.Flush();  // a dump that cannot be written is not a second failure

  errno = saved_errno;
  writing_failure_dump = false;
}

}  // namespace internal
}  // namespace mcx
