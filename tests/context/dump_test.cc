// DumpStats writes the stats report to a file descriptor without allocating,
// and mcx dumps on its own when a throwing call runs out of memory or hits a
// limit (context/dump.h).
//
// How the test sees what it must not see:
//   - Allocation. This binary replaces operator new and delete (every form)
//     and, outside the sanitizers (which own malloc), malloc, calloc,
//     realloc and the aligned forms, forwarding to glibc's __libc_* entry
//     points. While counting is on, every call is counted, from any library.
//   - Writes. It also replaces write(2) (forwarding to the system call), so
//     that a test can make every third call fail with EINTR and every other
//     one write only half of what it was asked to: DumpStats must still
//     write every byte.

#include "mcx/context/dump.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/base/config.h"
#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

// --- Allocation counting -------------------------------------------------------

namespace {

std::atomic<bool> counting{false};
std::atomic<int64_t> counted{0};

void Count() {
  if (counting.load(std::memory_order_relaxed)) counted.fetch_add(1, std::memory_order_relaxed);
}

void StartCounting() {
  counted.store(0);
  counting.store(true);
}

int64_t StopCounting() {
  counting.store(false);
  return counted.load();
}

void* NewOrThrow(size_t n) {
  Count();
  void* p = std::malloc(n != 0 ? n : 1);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void* AlignedNewOrThrow(size_t n, std::align_val_t al) {
  Count();
  size_t alignment = static_cast<size_t>(al);
  if (alignment < sizeof(void*)) alignment = sizeof(void*);
  void* p = nullptr;
  if (posix_memalign(&p, alignment, n != 0 ? n : 1) != 0) throw std::bad_alloc();
  return p;
}

}  // namespace

void* operator new(size_t n) { return NewOrThrow(n); }
void* operator new[](size_t n) { return NewOrThrow(n); }
void* operator new(size_t n, const std::nothrow_t&) noexcept {
  try {
    return NewOrThrow(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](size_t n, const std::nothrow_t&) noexcept {
  try {
    return NewOrThrow(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new(size_t n, std::align_val_t al) { return AlignedNewOrThrow(n, al); }
void* operator new[](size_t n, std::align_val_t al) { return AlignedNewOrThrow(n, al); }
void* operator new(size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  try {
    return AlignedNewOrThrow(n, al);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  try {
    return AlignedNewOrThrow(n, al);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  std::free(p);
}

// The sanitizers replace malloc themselves; elsewhere, count it too.
#if defined(__GLIBC__) && !defined(ABSL_HAVE_ADDRESS_SANITIZER) &&  \
    !defined(ABSL_HAVE_THREAD_SANITIZER) &&                           \
    !defined(ABSL_HAVE_MEMORY_SANITIZER) &&                           \
    !defined(ABSL_HAVE_HWADDRESS_SANITIZER)
#define MCX_TEST_COUNTS_MALLOC 1
extern "C" {
void* __libc_malloc(size_t n) noexcept;
void* __libc_calloc(size_t n, size_t size) noexcept;
void* __libc_realloc(void* p, size_t n) noexcept;
void* __libc_memalign(size_t alignment, size_t n) noexcept;

void* malloc(size_t n) noexcept {
  Count();
  return __libc_malloc(n);
}
void* calloc(size_t n, size_t size) noexcept {
  Count();
  return __libc_calloc(n, size);
}
void* realloc(void* p, size_t n) noexcept {
  Count();
  return __libc_realloc(p, n);
}
void* memalign(size_t alignment, size_t n) noexcept {
  Count();
  return __libc_memalign(alignment, n);
}
void* aligned_alloc(size_t alignment, size_t n) noexcept {
  Count();
  return __libc_memalign(alignment, n);
}
int posix_memalign(void** out, size_t alignment, size_t n) noexcept {
  Count();
  if (alignment < sizeof(void*) || (alignment & (alignment - 1)) != 0) return EINVAL;
  void* p = __libc_memalign(alignment, n);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
}  // extern "C"
#else
#define MCX_TEST_COUNTS_MALLOC 0
#endif

// --- write(2) fault injection ----------------------------------------------------

namespace {

std::atomic<bool> inject_write_faults{false};
std::atomic<int64_t> write_calls{0};
std::atomic<int64_t> injected_eintr{0};
std::atomic<int64_t> injected_short{0};
// Bytes written to one descriptor (/dev/null in the deep test).
std::atomic<int> measured_fd{-1};
std::atomic<int64_t> measured_bytes{0};

}  // namespace

extern "C" ssize_t write(int fd, const void* buffer, size_t n) {
  if (inject_write_faults.load(std::memory_order_relaxed) && n > 0) {
    // Every third call: interrupted before any byte went. The others: at
    // most half the bytes (a signal after some went, or a nearly full pipe).
    if (write_calls.fetch_add(1) % 3 == 2) {
      injected_eintr.fetch_add(1);
      errno = EINTR;
      return -1;
    }
    if (n > 1) {
      n /= 2;
      injected_short.fetch_add(1);
    }
  }
  ssize_t written = static_cast<ssize_t>(syscall(SYS_write, fd, buffer, n));
  if (written > 0 && fd == measured_fd.load(std::memory_order_relaxed)) {
    measured_bytes.fetch_add(written, std::memory_order_relaxed);
  }
  return written;
}

namespace mcx {
namespace {

// An in-memory file: what was written to `fd()` comes back from `Take()`.
class MemFile {
 public:
  MemFile() : fd_(memfd_create("mcx_dump_test", MFD_CLOEXEC)) {}
  ~MemFile() { close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;

  int fd() const { return fd_; }
  size_t size() const {
    struct stat st;
    return fstat(fd_, &st) == 0 ? static_cast<size_t>(st.st_size) : 0;
  }
  // Everything written so far; the file is empty afterwards.
  std::string Take() {
    std::string out(size(), '\0');
    size_t done = 0;
    while (done < out.size()) {
      ssize_t n = pread(fd_, &out[done], out.size() - done, static_cast<off_t>(done));
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    out.resize(done);
    EXPECT_EQ(ftruncate(fd_, 0), 0);
    EXPECT_EQ(lseek(fd_, 0, SEEK_SET), 0);
    return out;
  }

 private:
  int fd_;
};

std::string Dump(const Context* root, const DumpOptions& options = {}) {
  MemFile file;
  EXPECT_TRUE(DumpStats(root, file.fd(), options));
  return file.Take();
}

std::string Report(const Context* root, int max_depth, int max_children) {
  ReportOptions o;
  o.max_depth = max_depth;
  o.max_children = max_children;
  return StatsReport(root, o);
}

// The cut settings every tree is compared under: the defaults, no levels,
// one of each, small cuts, no children, negative values, cuts around
// kDumpTrackedLevels.
const DumpOptions kCuts[] = {{100, 100}, {0, 100}, {1, 1},    {2, 3},   {100, 0},
                             {-1, -1},   {3, 1000}, {1000, 2}, {70, 2}, {66, 1}};

void ExpectDumpEqualsReport(const Context* root) {
  for (const DumpOptions& cut : kCuts) {
    EXPECT_EQ(Dump(root, cut), Report(root, cut.max_depth, cut.max_children))
        << "max_depth " << cut.max_depth << ", max_children " << cut.max_children;
  }
}

PoolOptions Tiny() {
  PoolOptions o;
  o.initial_block_size = 512;
  return o;
}

// The demo's shape, with everything a line can show: free chunks, dedicated
// blocks, a reserve that was used, an empty name, a name longer than the
// dump's buffer.
class DemoTree {
 public:
  DemoTree() : long_name_(2000, 'n') {
    top_ = Context::Create(nullptr, "top", PoolKind());
    Context* query = top_->CreateChild("query", PoolKind());
    Context* spill = query->CreateChild("spill", FreelistKind());
    std::vector<void*> chunks;
    for (int i = 0; i < 100; ++i) chunks.push_back(spill->Alloc(24 + i));
    for (size_t i = 0; i < chunks.size(); i += 2) spill->Free(chunks[i]);
    Context* row = query->CreateChild("row", PoolKind());
    for (int i = 0; i < 10; ++i) row->Alloc(45);
    Context* cache = top_->CreateChild("cache", FreelistKind());
    for (int i = 0; i < 500; ++i) {
      void* p = cache->Alloc(static_cast<size_t>(16 + (i * 37) % 900));
      if (i % 3 == 0) cache->Free(p);
    }
    cache->Alloc(20000);  // a dedicated block
    ContextOptions reserved;
    reserved.block_source = &source_;
    reserved.reserve_blocks = 2;
    reserved.reserve_block_size = 16 * 1024;
    Context* spare = top_->CreateChild("spare", PoolKind(), reserved);
    source_.FailNth(1);
    spare->Alloc(6000);  // from the reserve
    top_->CreateChild("", FreelistKind());
    top_->CreateChild(long_name_.c_str(), PoolKind(Tiny()))->CreateChild("leaf", PoolKind());
  }
  ~DemoTree() { top_->Destroy(); }
  Context* top() const { return top_; }

 private:
  std::string long_name_;
  test::FailingBlockSource source_;
  Context* top_;
};

// --- DumpStats writes StatsReport's text -------------------------------------

// The dump is a second implementation of the text report; it must never
// drift from StatsReport, whatever the cut.
TEST(DumpTest, EqualsStatsReportForTheDemoTree) {
  DemoTree tree;
  std::string report = StatsReport(tree.top());
  ASSERT_NE(report.find("; reserve "), std::string::npos) << report;
  ASSERT_NE(report.find("chunks); "), std::string::npos) << report;
  ExpectDumpEqualsReport(tree.top());
  // A subtree: the walk stops at its root, not at the tree's.
  ExpectDumpEqualsReport(tree.top()->first_child());
}

// Wide: more children than max_children, so "N more child contexts" lines
// appear at two levels.
TEST(DumpTest, EqualsStatsReportForAWideTree) {
  Context* root = Context::Create(nullptr, "wide", PoolKind(Tiny()));
  for (int i = 0; i < 150; ++i) {
    Context* c = root->CreateChild("child", i % 2 ? PoolKind(Tiny()) : FreelistKind());
    c->Alloc(static_cast<size_t>(i * 3));
    for (int j = 0; j < 4; ++j) c->CreateChild("grandchild", PoolKind(Tiny()))->Alloc(10);
  }
  EXPECT_NE(Dump(root).find("50 more child contexts containing "), std::string::npos);
  ExpectDumpEqualsReport(root);
  root->Destroy();
}

// Deeper than the levels whose sibling counts the dump keeps on the stack:
// climbing back there recounts them, and must cut exactly as StatsReport.
TEST(DumpTest, EqualsStatsReportBelowTheTrackedLevels) {
  constexpr int kChain = kDumpTrackedLevels + 16;
  Context* root = Context::Create(nullptr, "root", PoolKind(Tiny()));
  Context* c = root;
  for (int d = 0; d < kChain; ++d) {
    c->CreateChild("old", PoolKind(Tiny()));
    Context* next = c->CreateChild("chain", PoolKind(Tiny()));
    c->CreateChild("new", PoolKind(Tiny()))->Alloc(static_cast<size_t>(d));
    c = next;
  }
  ExpectDumpEqualsReport(root);
  root->Destroy();
}

// One context, and the same tree after a reset.
TEST(DumpTest, EqualsStatsReportForASingleContextAndAfterReset) {
  Context* root = Context::Create(nullptr, "alone", FreelistKind());
  ExpectDumpEqualsReport(root);
  root->CreateChild("gone", PoolKind());
  root->Alloc(100000);
  root->Reset();
  ExpectDumpEqualsReport(root);
  root->Destroy();
}

// A name is shown on one line whatever bytes it holds: a newline, tab,
// carriage return, backslash, other control bytes, C1 controls and bytes that
// start no UTF-8 sequence are escaped C-style, valid UTF-8 stays readable, and
// the dump escapes exactly as StatsReport does (finding B12: a name with a
// newline forged report lines).
TEST(DumpTest, FindingB12NamesAreEscapedOnOneLine) {
  Context* top = Context::Create(nullptr, "top", PoolKind(Tiny()));
  top->CreateChild(
      "q1\n  spill: 999999999 total in 1 blocks; 0 free (0 chunks); 999999999 used",
      PoolKind(Tiny()));
  top->CreateChild("tab\tcr\rback\\slash bell\a esc\x1b del\x7f c1\xc2\x85 "
                   "latin1 caf\xe9 utf8 caf\xc3\xa9 \xe2\x82\xac lone \xc3",
                   PoolKind(Tiny()));
  const std::string report = StatsReport(top);
  const std::string expected_names[] = {
      "  q1\\n  spill: 999999999 total in 1 blocks; 0 free (0 chunks); 999999999 used: ",
      "  tab\\tcr\\rback\\\\slash bell\\x07 esc\\x1b del\\x7f c1\\xc2\\x85 "
      "latin1 caf\\xe9 utf8 caf\xc3\xa9 \xe2\x82\xac lone \\xc3: ",
  };
  for (const std::string& name : expected_names) {
    EXPECT_NE(report.find("\n" + name), std::string::npos) << name << "\nin:\n" << report;
  }
  // One line per context and the grand total: nothing forged.
  EXPECT_EQ(std::count(report.begin(), report.end(), '\n'), 4) << report;
  ExpectDumpEqualsReport(top);
  top->Destroy();
}

// --- Allocation ----------------------------------------------------------------

// The counting hooks must see allocations, or the tests below prove nothing.
TEST(DumpTest, TheAllocationCounterWorks) {
  DemoTree tree;
  StartCounting();
  std::string report = StatsReport(tree.top());
  int64_t by_report = StopCounting();
  EXPECT_GT(by_report, 0);
#if MCX_TEST_COUNTS_MALLOC
  StartCounting();
  void* volatile p = std::malloc(64);
  int64_t by_malloc = StopCounting();
  std::free(p);
  EXPECT_EQ(by_malloc, 1);
#endif
}

// DumpStats allocates nothing, whatever the tree and the cut.
TEST(DumpTest, AllocatesNothing) {
  DemoTree tree;
  MemFile file;
  StartCounting();
  bool all_ok = true;
  for (const DumpOptions& cut : kCuts) all_ok &= DumpStats(tree.top(), file.fd(), cut);
  all_ok &= !DumpStats(tree.top(), -1);  // the error path too
  int64_t allocations = StopCounting();
  EXPECT_TRUE(all_ok);
  EXPECT_EQ(allocations, 0);
  EXPECT_GT(file.size(), 0u);
}

struct HandlerProbe {
  int fd = -1;                  // where the handler dumps, if >= 0
  int calls = 0;
  int64_t allocations = -1;     // counted up to the handler's start
  int64_t handler_allocations = -1;  // counted in the handler's own dump
  size_t file_size_at_call = 0;
  int errno_at_call = 0;
  const MemFile* file = nullptr;
};

const Context* RootOf(const Context* c) {
  while (c->parent() != nullptr) c = c->parent();
  return c;
}

// The handler stops the count started before the failing call (so what the
// failure path did before the handler is counted), then dumps the tree with
// counting on again.
void ProbingHandler(const FailureInfo& info) {
  auto* probe = static_cast<HandlerProbe*>(info.arg);
  probe->errno_at_call = errno;
  probe->allocations = StopCounting();
  ++probe->calls;
  if (probe->file != nullptr) probe->file_size_at_call = probe->file->size();
  if (probe->fd >= 0) {
    StartCounting();
    DumpStats(RootOf(info.context), probe->fd);
    probe->handler_allocations = StopCounting();
  }
}

// A failure handler may dump: when the block source fails, the handler's
// DumpStats allocates nothing and writes the tree as it is (the failed call
// changed nothing).
TEST(DumpTest, RunsInsideAFailureHandlerWhenTheSourceFails) {
  test::FailingBlockSource source;
  MemFile file;
  HandlerProbe probe;
  probe.fd = file.fd();
  ContextOptions o;
  o.block_source = &source;
  o.failure_handler = &ProbingHandler;
  o.failure_handler_arg = &probe;
  Context* top = Context::Create(nullptr, "top", PoolKind(), o);
  Context* query = top->CreateChild("query", FreelistKind());
  for (int i = 0; i < 50; ++i) query->Alloc(100);
  source.FailNth(1);
  StartCounting();
  EXPECT_THROW(query->Alloc(1 << 20), std::bad_alloc);
  EXPECT_EQ(probe.calls, 1);
  EXPECT_EQ(probe.allocations, 0);
  EXPECT_EQ(probe.handler_allocations, 0);
  EXPECT_EQ(file.Take(), StatsReport(top));
  top->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

// --- Writes ----------------------------------------------------------------------

// Interrupted and short writes are resumed until every byte is out.
TEST(DumpTest, ResumesInterruptedAndShortWrites) {
  DemoTree tree;
  MemFile file;
  write_calls.store(0);
  injected_eintr.store(0);
  injected_short.store(0);
  inject_write_faults.store(true);
  bool ok = DumpStats(tree.top(), file.fd());
  inject_write_faults.store(false);
  EXPECT_TRUE(ok);
  EXPECT_GT(injected_eintr.load(), 10);
  EXPECT_GT(injected_short.load(), 10);
  EXPECT_EQ(file.Take(), StatsReport(tree.top()));
}

// Other write errors end the dump and are reported, with errno.
TEST(DumpTest, ReportsWriteErrors) {
  Context* root = Context::Create(nullptr, "root", PoolKind());
  errno = 0;
  EXPECT_FALSE(DumpStats(root, -1));
  EXPECT_EQ(errno, EBADF);
  errno = 0;
  EXPECT_FALSE(DumpStats(nullptr, STDERR_FILENO));
  EXPECT_EQ(errno, EINVAL);

  // A pipe nobody reads: EPIPE, and no SIGPIPE (its default action would
  // end this test), none left pending, and the thread's mask as it was.
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  close(fds[0]);
  sigset_t mask_before;
  ASSERT_EQ(pthread_sigmask(SIG_SETMASK, nullptr, &mask_before), 0);
  errno = 0;
  EXPECT_FALSE(DumpStats(root, fds[1]));
  EXPECT_EQ(errno, EPIPE);
  sigset_t mask_after;
  sigset_t pending;
  ASSERT_EQ(pthread_sigmask(SIG_SETMASK, nullptr, &mask_after), 0);
  ASSERT_EQ(sigpending(&pending), 0);
  EXPECT_EQ(sigismember(&mask_after, SIGPIPE), sigismember(&mask_before, SIGPIPE));
  EXPECT_EQ(sigismember(&pending, SIGPIPE), 0);

  // A SIGPIPE the program had pending (blocked) before the dump stays
  // pending for it.
  sigset_t pipe_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &pipe_set, nullptr), 0);
  ASSERT_EQ(pthread_kill(pthread_self(), SIGPIPE), 0);
  EXPECT_FALSE(DumpStats(root, fds[1]));
  ASSERT_EQ(sigpending(&pending), 0);
  EXPECT_EQ(sigismember(&pending, SIGPIPE), 1);
  const timespec now = {0, 0};
  EXPECT_EQ(sigtimedwait(&pipe_set, nullptr, &now), SIGPIPE);
  ASSERT_EQ(pthread_sigmask(SIG_SETMASK, &mask_before, nullptr), 0);
  close(fds[1]);
  root->Destroy();
}

// --- Depth -----------------------------------------------------------------------

constexpr int kDeepChain = 100000;

struct DeepDump {
  const Context* root;
  int fd;
  bool ok;
};

void* RunDeepDump(void* arg) {
  auto* job = static_cast<DeepDump*>(arg);
  DumpOptions all;
  all.max_depth = kDeepChain;
  job->ok = DumpStats(job->root, job->fd, all);
  return nullptr;
}

// The stack a dump uses, dump.h's figure: what a thread that dumps a small
// tree of every common kind touches of its own stack, beyond what a thread
// that does nothing touches, measured on a stack filled with a pattern.
struct StackJob {
  const Context* root;
  int fd;
};

void* RunStackJob(void* arg) {
  auto* job = static_cast<StackJob*>(arg);
  if (job->root != nullptr) DumpStats(job->root, job->fd);
  return nullptr;
}

size_t StackTouched(const StackJob& job) {
  constexpr size_t kStackBytes = 256 * 1024;
  constexpr unsigned char kPattern = 0xA5;
  void* stack = nullptr;
  if (posix_memalign(&stack, 4096, kStackBytes) != 0) return kStackBytes;
  std::memset(stack, kPattern, kStackBytes);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstack(&attr, stack, kStackBytes);
  pthread_t thread;
  StackJob copy = job;
  size_t untouched = 0;
  if (pthread_create(&thread, &attr, RunStackJob, &copy) == 0) {
    pthread_join(thread, nullptr);
    const auto* bytes = static_cast<const unsigned char*>(stack);
    while (untouched < kStackBytes && bytes[untouched] == kPattern) ++untouched;
  }
  pthread_attr_destroy(&attr);
  std::free(stack);
  return kStackBytes - untouched;
}

TEST(DumpTest, UsesAboutTwoKiBOfStack) {
  // Memcheck takes an exited thread's stack away (reading it is an error)
  // and runs the code on its own terms: the figure is the native build's.
  if (std::getenv("MCX_UNDER_MEMCHECK") != nullptr) GTEST_SKIP() << "native stacks only";
  Context* root = Context::Create(nullptr, "root", PoolKind());
  Context* list = root->CreateChild("freelist", FreelistKind());
  list->Free(list->Alloc(100));
  root->CreateChild("pool", PoolKind())->CreateChild("below", PoolKind())->Alloc(100);
  const int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  const size_t idle = StackTouched(StackJob{nullptr, fd});
  const size_t dumping = StackTouched(StackJob{root, fd});
  close(fd);
  root->Destroy();
  constexpr size_t kDumpStackBound = 3 * 1024;
  EXPECT_LT(dumping - idle, kDumpStackBound) << dumping << " against " << idle;
}

// A chain of 100,000 contexts: cut at the default depth the dump equals the
// report (its summary line sums 99,900 levels); uncut, on a thread with a
// 256 KiB stack, it writes all 100,000 lines (10 GB of indentation, to
// /dev/null, counted). Any recursion, even 3 bytes a level, would overflow
// that stack.
TEST(DumpTest, DeepChainDumpsInConstantStack) {
  test::CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* root = Context::Create(nullptr, "root", PoolKind(Tiny()), o);
  Context* c = root;
  for (int d = 0; d < kDeepChain; ++d) c = c->CreateChild("n", PoolKind(Tiny()));
  EXPECT_EQ(Dump(root), StatsReport(root));

  // Every context of the chain has the same line, indented 2 spaces a level.
  std::string first_two = Report(root, 1, 1);  // root, "  n: ...", summary, total
  size_t root_line = first_two.find('\n') + 1;
  size_t n_line = first_two.find('\n', root_line) + 1 - root_line - 2;
  std::string grand = first_two.substr(first_two.rfind("Grand total: "));
  const int64_t levels = kDeepChain;
  const int64_t expected_bytes = static_cast<int64_t>(root_line + grand.size()) +
                                 levels * static_cast<int64_t>(n_line) + levels * (levels + 1);

  constexpr size_t kSmallStack = 256 * 1024;
  DeepDump job{root, open("/dev/null", O_WRONLY | O_CLOEXEC), false};
  ASSERT_GE(job.fd, 0);
  measured_bytes.store(0);
  measured_fd.store(job.fd);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  ASSERT_EQ(pthread_attr_setstacksize(&attr, kSmallStack), 0);
  pthread_t thread;
  ASSERT_EQ(pthread_create(&thread, &attr, &RunDeepDump, &job), 0);
  pthread_join(thread, nullptr);
  pthread_attr_destroy(&attr);
  measured_fd.store(-1);
  close(job.fd);
  EXPECT_TRUE(job.ok);
  EXPECT_EQ(measured_bytes.load(), expected_bytes);
  root->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

// --- Dumps on failure -------------------------------------------------------------

constexpr size_t kLimit = 64 * 1024;
constexpr size_t kTooBig = 100000;

// top -> query -> worker (limited) -> row, plus a few siblings to cut.
class FailureDumpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ContextOptions o;
    o.block_source = &source_;
    o.failure_handler = &ProbingHandler;
    o.failure_handler_arg = &probe_;
    top_ = Context::Create(nullptr, "top", PoolKind(), o);
    for (int i = 0; i < 5; ++i) top_->CreateChild("sibling", PoolKind(Tiny()));
    query_ = top_->CreateChild("query", PoolKind());
    ContextOptions limited;
    limited.limit = kLimit;
    worker_ = query_->CreateChild("worker", FreelistKind(), limited);
    row_ = worker_->CreateChild("row", PoolKind());
    row_->Alloc(1000);
    probe_.file = &file_;
  }
  void TearDown() override {
    top_->Destroy();
    EXPECT_EQ(source_.live_blocks(), 0);
  }

  std::string Line(const char* failure, size_t size, const char* name) {
    return std::string("mcx: ") + failure + " on a request of " + std::to_string(size) +
           " bytes in context '" + name + "'\n";
  }

  test::FailingBlockSource source_;
  MemFile file_;
  HandlerProbe probe_;
  Context* top_ = nullptr;
  Context* query_ = nullptr;
  Context* worker_ = nullptr;
  Context* row_ = nullptr;
};

// A limit: the line names the failure, the size and the context; the report
// is the whole tree from its root with the setting's cut; it is written
// before the handler runs, and the failure path allocates nothing up to the
// handler.
TEST_F(FailureDumpTest, LimitDumpsTheLineAndTheTreeBeforeTheHandler) {
  top_->SetFailureDump({file_.fd(), 2, 3});
  StartCounting();
  EXPECT_THROW(row_->Alloc(kTooBig), std::bad_alloc);
  EXPECT_EQ(probe_.calls, 1);
  EXPECT_EQ(probe_.allocations, 0);
  std::string dump = file_.Take();
  EXPECT_EQ(probe_.file_size_at_call, dump.size());
  EXPECT_EQ(dump, Line("memory limit exceeded", kTooBig, "row") + Report(top_, 2, 3));
  EXPECT_NE(dump.find("more child contexts containing"), std::string::npos) << dump;
}

// Out of memory (the block source fails), set at creation on a descendant:
// the report still starts at the root (PostgreSQL's TopMemoryContext).
TEST_F(FailureDumpTest, OutOfMemoryDumpsFromTheRoot) {
  ContextOptions o;
  o.failure_dump = {file_.fd(), 10, 10};
  Context* batch = query_->CreateChild("batch", PoolKind(), o);
  source_.FailNth(1);
  StartCounting();
  EXPECT_THROW(batch->Alloc(kTooBig), std::bad_alloc);
  EXPECT_EQ(probe_.allocations, 0);
  EXPECT_EQ(file_.Take(), Line("out of memory", kTooBig, "batch") + Report(top_, 10, 10));
  // The setting is the nearest ancestor-or-self's: top has none.
  EXPECT_THROW(row_->Alloc(kTooBig), std::bad_alloc);
  EXPECT_EQ(file_.size(), 0u);
}

// Realloc, child creation and typed cleanups fail through the same path.
TEST_F(FailureDumpTest, EveryThrowingCallDumps) {
  top_->SetFailureDump({file_.fd(), 1, 1});
  Context* pool_worker = worker_->CreateChild("large", FreelistKind());
  void* p = pool_worker->Alloc(100);
  EXPECT_THROW(pool_worker->Realloc(p, kTooBig), std::bad_alloc);
  EXPECT_EQ(file_.Take().rfind(Line("memory limit exceeded", kTooBig, "large"), 0), 0u);
  PoolOptions big;
  big.initial_block_size = 2 * kLimit;
  EXPECT_THROW(worker_->CreateChild("child", PoolKind(big)), std::bad_alloc);
  EXPECT_EQ(file_.Take().rfind("mcx: memory limit exceeded on a request of ", 0), 0u);
}

// No setting, Try* calls and failures that are not about memory: no dump.
TEST_F(FailureDumpTest, NoDumpWhenOffForTryCallsAndForOtherFailures) {
  EXPECT_THROW(row_->Alloc(kTooBig), std::bad_alloc);
  EXPECT_EQ(probe_.calls, 1);
  top_->SetFailureDump({file_.fd(), 2, 3});
  EXPECT_EQ(row_->TryAlloc(kTooBig), nullptr);
  EXPECT_EQ(row_->last_failure(), Failure::kLimit);
  EXPECT_THROW(row_->AllocAligned(10, 3), std::invalid_argument);
  EXPECT_THROW(row_->Alloc(kMaxAllocSize + 1), std::bad_array_new_length);
  EXPECT_EQ(file_.size(), 0u);
  // kFailureDumpOff turns a subtree off; its siblings still dump.
  worker_->SetFailureDump({kFailureDumpOff, 2, 3});
  EXPECT_THROW(row_->Alloc(kTooBig), std::bad_alloc);
  EXPECT_EQ(file_.size(), 0u);
  ContextOptions limited;
  limited.limit = kLimit;
  Context* other = query_->CreateChild("other", PoolKind(), limited);
  EXPECT_THROW(other->Alloc(kTooBig), std::bad_alloc);
  EXPECT_GT(file_.size(), 0u);
}

// A descriptor that cannot be written is not a second failure: the handler
// runs, errno is what it was, the call throws as always.
TEST_F(FailureDumpTest, WriteErrorsAreIgnoredAndErrnoIsKept) {
  top_->SetFailureDump({/*fd=*/1000000, 2, 3});
  errno = ENOTTY;
  EXPECT_THROW(row_->Alloc(kTooBig), std::bad_alloc);
  EXPECT_EQ(probe_.calls, 1);
  EXPECT_EQ(probe_.errno_at_call, ENOTTY);
}

// A dump to a pipe whose reader has gone (`prog 2>&1 | head`) does not
// kill the program with SIGPIPE: the handler runs and the call throws.
TEST_F(FailureDumpTest, APipeWithNoReaderDoesNotKillTheProgram) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  close(fds[0]);
  top_->SetFailureDump({fds[1], 2, 3});
  errno = ENOTTY;
  EXPECT_THROW(row_->Alloc(kTooBig), std::bad_alloc);
  EXPECT_EQ(probe_.calls, 1);
  EXPECT_EQ(probe_.errno_at_call, ENOTTY);
  sigset_t pending;
  ASSERT_EQ(sigpending(&pending), 0);
  EXPECT_EQ(sigismember(&pending, SIGPIPE), 0);
  top_->SetFailureDump({kFailureDumpOff, 2, 3});
  close(fds[1]);
}

// The failure line escapes the failing context's name as the report does
// (finding B12).
TEST_F(FailureDumpTest, FindingB12TheFailureLineEscapesTheName) {
  ContextOptions limited;
  limited.limit = kLimit;
  Context* forged = query_->CreateChild("x'\nmcx: out of memory\tin '\\", PoolKind(), limited);
  top_->SetFailureDump({file_.fd(), 10, 10});
  EXPECT_THROW(forged->Alloc(kTooBig), std::bad_alloc);
  const std::string dump = file_.Take();
  EXPECT_EQ(dump, Line("memory limit exceeded", kTooBig, "x'\\nmcx: out of memory\\tin '\\\\") +
                      Report(top_, 10, 10));
  EXPECT_NE(Report(top_, 10, 10).find("    x'\\nmcx: out of memory\\tin '\\\\: "),
            std::string::npos);
}

// The defaults, inheritance and the one-byte limits.
TEST_F(FailureDumpTest, SettingDefaultsAndClamping) {
  FailureDumpOptions none = row_->failure_dump();
  EXPECT_EQ(none.fd, kFailureDumpInherit);
  EXPECT_EQ(none.max_depth, kFailureDumpDefaultDepth);
  EXPECT_EQ(none.max_children, kFailureDumpDefaultChildren);
  row_->SetFailureDump({file_.fd(), 1000, -5});
  FailureDumpOptions clamped = row_->failure_dump();
  EXPECT_EQ(clamped.fd, file_.fd());
  EXPECT_EQ(clamped.max_depth, kFailureDumpMaxLimit);
  EXPECT_EQ(clamped.max_children, 0);
  // With the defaults the dump is short: 4 levels, 20 children.
  top_->SetFailureDump({file_.fd()});
  row_->SetFailureDump({});
  EXPECT_THROW(row_->Alloc(kTooBig), std::bad_alloc);
  EXPECT_EQ(file_.Take(), Line("memory limit exceeded", kTooBig, "row") +
                              Report(top_, kFailureDumpDefaultDepth,
                                     kFailureDumpDefaultChildren));
}

}  // namespace
}  // namespace mcx
