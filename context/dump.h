// File: mcx/context/dump.h
//
// The stats report of a tree, written to a file descriptor without allocating
// memory, for the moments when allocating is what failed: PostgreSQL calls
// MemoryContextStats(TopMemoryContext) before it reports "out of memory".
// `DumpStats` can be called from a failure handler (failure.h), and mcx can
// call it itself when an allocation runs out of memory or hits a limit.
//
// Contract:
//   - Output. `DumpStats(root, fd, {max_depth, max_children})` writes exactly
//     the bytes of `StatsReport(root, {max_depth, max_children,
//     ReportFormat::kText})` (stats.h): one line per context, the same cut
//     rules and "N more child contexts containing ..." lines, the grand total.
//     It is the same report: the one walk of report.h with the same text
//     sink, writing to a descriptor instead of a string.
//   - No allocation. Nothing is allocated: no operator new, no malloc, no
//     std::string, no stdio. Lines are formatted into a fixed buffer on the
//     stack and written with write(2), in pieces. The tree is walked through
//     its parent and sibling links, without recursion and without a stack of
//     frames (WalkReport, report.h), so the stack used (about 2 KiB: a
//     512-byte line buffer, the signal sets that hold SIGPIPE off, and a
//     few frames; under 3 KiB in every build the tests run,
//     `DumpTest.UsesAboutTwoKiBOfStack`) does not depend on the depth or
//     width of the tree, and no context is changed.
//   - Writes. A write interrupted by a signal (EINTR) is retried; a short
//     write continues where it stopped. Any other error (EBADF, EPIPE, EAGAIN
//     on a non-blocking descriptor, ENOSPC) ends the dump: the result is
//     false, with errno as write(2) left it; what was written stays written.
//     A write to a pipe nobody reads fails with EPIPE and raises no
//     SIGPIPE: the signal is blocked on the thread while the dump writes
//     and the one its write raised is discarded (one already pending is
//     left), so `prog 2>&1 | head` is not killed by its own failure dump.
//   - Signal safety. The system calls are write(2), the signal mask's
//     (pthread_sigmask, sigpending) and sigtimedwait (to discard the
//     SIGPIPE a write raised); the library calls are memcpy, strlen and the
//     signal-set functions, all async-signal-safe (POSIX.1-2016) but for
//     sigtimedwait, a system call that takes no lock and uses no memory but
//     its arguments; there are no locks, no static state and no static
//     initialisation. A signal handler may dump a tree if the code it
//     interrupted was not in the middle of changing that tree (creating,
//     destroying or reparenting a context, or allocating or freeing in one):
//     the walk reads the links and the kinds' counters as they are. The
//     handler should save and restore errno.
//   - Failure handlers. When a failure handler runs, the failed call has
//     changed nothing, so the tree is consistent and `DumpStats` is safe.
//   - Cost. O(contexts in the subtree), plus what the kinds' counters cost
//     (the freelist kind walks its freelists). More than `kDumpTrackedLevels`
//     levels down, returning to a parent costs a count of the children it
//     has shown so far (at most `max_children`; 1 in a chain).
//   - Threads. As every use of a tree: one thread at a time.
//
// Dumps on failure (`FailureDumpOptions`, set with
// `ContextOptions::failure_dump` or `Context::SetFailureDump`):
//   - When a throwing call (`Alloc`, `Realloc`, `CreateChild`, `AddCleanup`,
//     `New`, and the C API's calls that use them) fails with
//     `Failure::kOutOfMemory` or `Failure::kLimit`, mcx writes, before the
//     failure handler runs, one line
//       mcx: <FailureName> on a request of <size> bytes in context '<name>'
//     (the name escaped as in the report, stats.h)
//     and then the report of the failing context's whole tree, from its root
//     (PostgreSQL's TopMemoryContext), with the setting's `max_depth` and
//     `max_children`, which keep the dump short. The report covers what the
//     failing thread owns: a shared context (shared.h), which other threads
//     may be using as it fails, is shown as "not read" with nothing of its
//     subtree (report.h, SharedContextWalk::kSkip), and a context below a
//     shared one is dumped from just below it (the failing thread owns that
//     subtree; what is above, and the shared context's other children,
//     other threads may be changing). `Try*` calls do not dump:
//     they expect to fail and handle it (PostgreSQL's MCXT_ALLOC_NO_OOM does
//     not dump either). Other failures (a bad size or alignment) are caller
//     bugs, not memory pressure, and do not dump.
//   - The setting is inherited: the nearest ancestor-or-self whose `fd` is
//     not `kFailureDumpInherit` decides, at the time of the failure (so
//     reparenting changes it). `kFailureDumpOff` turns dumps off for a
//     subtree.
//   - A dump cannot fail into another failure: it allocates nothing, and a
//     failure while one is being written on the same thread does not dump
//     again. errno is preserved; write errors are ignored.
//
// Example:
//
//   // From a failure handler:
//   void OnFailure(const mcx::FailureInfo& info) {
//     mcx::DumpStats(info.context, STDERR_FILENO);
//   }
//
//   // Or let mcx do it, for every context under `top`:
//   mcx::Context* top = mcx::Context::Create(nullptr, "top", mcx::PoolKind());
//   top->SetFailureDump({STDERR_FILENO, /*max_depth=*/4, /*max_children=*/20});
//   // On out of memory anywhere below top, stderr gets:
//   //   mcx: out of memory on a request of 1048576 bytes in context 'row'
//   //   top: 8200 total in 1 blocks; 7768 free (0 chunks); 432 used
//   //     query: ...
//   //   Grand total: ...

#ifndef MCX_CONTEXT_DUMP_H_
#define MCX_CONTEXT_DUMP_H_

#include "mcx/context/config.h"  // IWYU pragma: keep (config.h: the link check)

namespace mcx {

class Context;

struct DumpOptions {
  int max_depth = 100;     // levels shown below the root (ReportOptions's default)
  int max_children = 100;  // children shown per context
};

// Levels of the walk whose position among their siblings `DumpStats` keeps
// on the stack; deeper levels recount it (see Cost above). The walk's
// kReportTrackedLevels (report.h).
inline constexpr int kDumpTrackedLevels = 64;

// Writes the text stats report of `root`'s subtree to `fd`. True if every
// byte was written. Allocates nothing (see the contract above).
bool DumpStats(const Context* root, int fd, const DumpOptions& options = {});

// `FailureDumpOptions::fd` values that are not descriptors.
inline constexpr int kFailureDumpInherit = -1;  // as the nearest ancestor says
inline constexpr int kFailureDumpOff = -2;      // no dump for this subtree
// A context keeps its dump limits in one byte each: larger values are this.
inline constexpr int kFailureDumpMaxLimit = 255;

// Short by default: enough levels to see which subtree holds the memory; the
// "N more child contexts" lines keep the totals exact.
inline constexpr int kFailureDumpDefaultDepth = 4;
inline constexpr int kFailureDumpDefaultChildren = 20;

struct FailureDumpOptions {
  int fd = kFailureDumpInherit;  // a descriptor, or one of the values above
  int max_depth = kFailureDumpDefaultDepth;        // 0..kFailureDumpMaxLimit
  int max_children = kFailureDumpDefaultChildren;  // 0..kFailureDumpMaxLimit
};

}  // namespace mcx

#endif  // MCX_CONTEXT_DUMP_H_
