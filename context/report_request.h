// File: mcx/context/report_request.h
//
// Reports on request: any thread asks for the report of a context tree that
// another thread owns, and the owner writes it at its next safe point, as
// text or JSON, to a descriptor or into a buffer the asker reads. PostgreSQL
// has half of this (pg_log_backend_memory_contexts signals a backend, which
// logs its contexts at its next interrupt check); here the answer comes back
// to the asker.
//
// Contract:
//   - Publishing. The thread that owns a tree makes a `ReportEndpoint` for
//     its root. The endpoint belongs to that thread: it is made and
//     destroyed there, and must be destroyed before the root is. Askers get
//     a `ReportTarget` from it (`target()`), a handle they copy freely and
//     use from any thread; it stays valid after the endpoint is gone, and
//     then answers kClosed.
//   - Asking. `Post` leaves a request (the report's options, and a
//     descriptor or none for the buffer) and returns at once; the request is
//     a flag. One request per endpoint is in flight at a time: a second
//     `Post` is kBusy until the first is taken (`Take`) or cancelled.
//     `Wait` waits for the answer, up to a timeout; `Take` reads it and
//     frees the endpoint for the next request. `Ask` is all three.
//   - Answering. The owner writes the report at its next safe point on that
//     thread: an allocation that needs a new block from the ledger (any
//     context, any kind), or an explicit `mcx::ServiceRequests()`, which an
//     event loop calls once per turn (one load when nothing was asked). A
//     thread that neither allocates blocks nor calls ServiceRequests does
//     not answer; askers time out (kPending) and may cancel. Creating a
//     context is not a safe point (its first block is taken before the
//     context exists): a thread whose contexts fit their first blocks
//     answers only at ServiceRequests.
//   - The report. `StatsReport`'s text or JSON (stats.h), cut by the
//     request's `max_depth` and `max_children` exactly as the failure dump
//     is, and like it reading only what the owner owns: a shared context
//     in the tree (shared.h), which other threads may be using at the safe
//     point, is shown as "not read", with nothing of its subtree (report.h,
//     SharedContextWalk::kSkip); to a descriptor it is DumpStats's writer (dump.h: EINTR and short
//     writes handled, a write error ends it: kWriteError). Into the buffer:
//     the endpoint's buffer, of the capacity it was made with; a report that
//     does not fit is cut at the capacity and answered kTruncated, with the
//     size it needed (`needed()`), so the asker can make a larger endpoint.
//   - No allocation where it is answered. The owner's side allocates
//     nothing (the buffer is made with the endpoint), takes no lock and
//     calls no user code; the walk is report.h's, with constant stack.
//     Askers may allocate (`Take` returns a std::string).
//   - Cost. With no request posted anywhere in the process, one relaxed
//     load per block acquisition; nothing on the fast paths.
//
// Example: a server thread asks a worker for its tree as JSON.
//
//   // On the worker, once:
//   mcx::ReportEndpoint endpoint(worker_root);
//   registry.Add(endpoint.target());
//   ... allocate as usual; an idle loop calls mcx::ServiceRequests() ...
//
//   // On the server, any time:
//   std::string json;
//   mcx::ReportOptions options;
//   options.format = mcx::ReportFormat::kJson;
//   if (target.Ask(&json, options, std::chrono::seconds(1)) == mcx::RequestStatus::kDone) {
//     Send(client, json);
//   }

#ifndef MCX_CONTEXT_REPORT_REQUEST_H_
#define MCX_CONTEXT_REPORT_REQUEST_H_

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "mcx/context/config.h"  // IWYU pragma: keep (config.h: the link check)
#include "mcx/context/stats.h"

namespace mcx {

class Context;

namespace internal {
struct ReportSlot;
}  // namespace internal

enum class RequestStatus {
  kDone,        // the report was written in full
  kPending,     // posted, not answered yet (Wait timed out)
  kTruncated,   // into the buffer, cut at its capacity (needed() says how much)
  kWriteError,  // to a descriptor: a write failed (what was written stays)
  kClosed,      // the endpoint is gone, or closed before it answered
  kBusy,        // another request is in flight on this endpoint
  kNone,        // nothing was posted
};

// A short stable name, e.g. "truncated".
const char* RequestStatusName(RequestStatus status);

// Bytes of an endpoint's buffer by default: a JSON tree of a few hundred
// contexts.
inline constexpr size_t kDefaultReportBufferBytes = 64 * 1024;

// The asker's handle on an endpoint. Any thread; copyable.
class ReportTarget {
 public:
  ReportTarget() = default;

  // Leaves a request for the report of the endpoint's tree, cut and
  // formatted by `options`, to be written to `fd` (a descriptor that stays
  // open until the answer), or into the endpoint's buffer if `fd` < 0.
  // kPending if posted; kBusy, kClosed (or kNone for an empty handle)
  // otherwise.
  RequestStatus Post(const ReportOptions& options, int fd = -1);
  // Waits for the answer to the request posted, up to `timeout`: kPending
  // if it has not come, else the answer (kNone if nothing was posted).
  RequestStatus Wait(std::chrono::milliseconds timeout);
  // Once answered: the buffer's bytes (empty for a descriptor), and the
  // endpoint is free for the next request. Empty if not answered yet.
  std::string Take();
  // Withdraws a request not yet being answered; true if withdrawn.
  bool Cancel();
  // Bytes the last buffer report needed (more than the capacity when
  // kTruncated). Read it after Wait has returned the answer.
  size_t needed() const;

  // Post, Wait and Take: the report into `*out`. On a timeout the request
  // is withdrawn and the result is kPending; if the owner had begun
  // answering, Ask waits for that answer instead.
  RequestStatus Ask(std::string* out, const ReportOptions& options,
                    std::chrono::milliseconds timeout);

  explicit operator bool() const { return slot_ != nullptr; }

 private:
  friend class ReportEndpoint;
  explicit ReportTarget(std::shared_ptr<internal::ReportSlot> slot) : slot_(std::move(slot)) {}
  std::shared_ptr<internal::ReportSlot> slot_;
};

// Publishes a tree for reports on request; see the contract above.
class ReportEndpoint {
 public:
  // On the owning thread. Allocates the buffer (`buffer_bytes`) now, with
  // operator new: the answer allocates nothing.
  explicit ReportEndpoint(const Context* root, size_t buffer_bytes = kDefaultReportBufferBytes);
  // On the owning thread: a request not yet answered is answered kClosed.
  ~ReportEndpoint();
  ReportEndpoint(const ReportEndpoint&) = delete;
  ReportEndpoint& operator=(const ReportEndpoint&) = delete;

  ReportTarget target() const { return ReportTarget(slot_); }
  const Context* root() const;

 private:
  std::shared_ptr<internal::ReportSlot> slot_;
};

// Answers every request posted to the calling thread's endpoints: a safe
// point (the tree is not being changed by this thread now). Returns how
// many were answered. One relaxed load when none is posted anywhere.
// Must not be called from a kind's method, a block source or a signal
// handler.
int ServiceRequests();

}  // namespace mcx

#endif  // MCX_CONTEXT_REPORT_REQUEST_H_
