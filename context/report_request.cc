// Reports on request (report_request.h).
//
// One slot per endpoint, shared by the owner and the askers' handles
// (std::shared_ptr: a handle may outlive the endpoint). The request is the
// slot's state word, moved by compare-and-swap:
//
//   kIdle --Post--> kClaimed --(options written)--> kPosted
//   kPosted --owner--> kServing --(report written)--> kDone --Take--> kIdle
//   kPosted --Cancel--> kIdle
//   kPosted --owner closes--> kDone (answer kClosed)
//
// Only the owner reads the tree, so the report is as consistent as any
// report the owner makes itself. A process-wide count of posted requests
// keeps the test in the ledger (block_ledger.cc) to one relaxed load while
// nobody asks; a thread-local list of the thread's slots tells the ledger
// whether a request waits for this thread.
//
// Closing races with posting: the asker publishes kPosted and then reads
// `closed`; the owner sets `closed` and then reads the state. With both
// sequentially consistent, at least one of them sees the other, and the
// compare-and-swap from kPosted lets exactly one of them withdraw the
// request, so no request is left posted (and counted) forever.

#include "mcx/context/report_request.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "mcx/context/context.h"
#include "mcx/context/internal/context_impl.h"
#include "mcx/context/internal/report_json.h"
#include "mcx/context/internal/report_text.h"
#include "mcx/context/report.h"

namespace mcx {
namespace internal {

std::atomic<size_t> posted_report_requests{0};

enum SlotState : int { kIdle, kClaimed, kPosted, kServing, kDone };

struct ReportSlot {
  std::atomic<int> state{kIdle};
  std::atomic<bool> closed{false};
  // The request: written by the asker between kClaimed and kPosted.
  ReportOptions options;
  int fd = -1;
  // The answer: written by the owner before kDone.
  RequestStatus answer = RequestStatus::kNone;
  size_t needed = 0;
  // The owner's: the root, the buffer, the thread's list of slots.
  const Context* root = nullptr;
  std::unique_ptr<char[]> buffer;
  size_t capacity = 0;
  ReportSlot* next = nullptr;
};

namespace {

// This thread's endpoints' slots. Plain thread-local storage, read by the
// ledger's test (allocates nothing).
thread_local ReportSlot* thread_slots = nullptr;

// The report's bytes into the endpoint's buffer: what fits is kept, the rest
// only counted, so the asker learns the size a complete report needs.
class BufferOut final : public ReportOut {
 public:
  BufferOut(char* buffer, size_t capacity) : buffer_(buffer), capacity_(capacity) {}
  void Append(const char* data, size_t size) override {
    if (used_ < capacity_) {
      const size_t room = capacity_ - used_;
      std::memcpy(buffer_ + used_, data, size < room ? size : room);
    }
    used_ += size;
  }
  size_t used() const { return used_; }

 private:
  char* buffer_;
  size_t capacity_;
  size_t used_ = 0;
};

void Answer(ReportSlot* s) {
  const ReportOptions& o = s->options;
  const bool json = o.format == ReportFormat::kJson;
  if (s->fd >= 0) {
    s->needed = 0;
    s->answer = WriteReportToFd(s->fd, s->root, o.max_depth, o.max_children, json)
                    ? RequestStatus::kDone
                    : RequestStatus::kWriteError;
    return;
  }
  BufferOut out(s->buffer.get(), s->capacity);
  // Only what this thread owns: the reports on request are made at any of
  // its safe points, while other threads may be using a shared context.
  if (json) {
    JsonReportSink sink(&out);
    WalkReport(s->root, o.max_depth, o.max_children, &sink, SharedContextWalk::kSkip);
  } else {
    TextReportSink sink(&out);
    WalkReport(s->root, o.max_depth, o.max_children, &sink, SharedContextWalk::kSkip);
  }
  s->needed = out.used();
  s->answer = out.used() <= s->capacity ? RequestStatus::kDone : RequestStatus::kTruncated;
}

// Withdraws a posted request; true if this call did.
bool Withdraw(ReportSlot* s, int to) {
  int expected = kPosted;
  if (!s->state.compare_exchange_strong(expected, to)) return false;
  posted_report_requests.fetch_sub(1);
  return true;
}

}  // namespace

bool ThisThreadHasRequests() {
  for (ReportSlot* s = thread_slots; s != nullptr; s = s->next) {
    if (s->state.load(std::memory_order_relaxed) == kPosted) return true;
  }
  return false;
}

}  // namespace internal

using internal::ReportSlot;

const char* RequestStatusName(RequestStatus status) {
  switch (status) {
    case RequestStatus::kDone:
      return "done";
    case RequestStatus::kPending:
      return "pending";
    case RequestStatus::kTruncated:
      return "truncated";
    case RequestStatus::kWriteError:
      return "write error";
    case RequestStatus::kClosed:
      return "closed";
    case RequestStatus::kBusy:
      return "busy";
    case RequestStatus::kNone:
      return "nothing posted";
  }
  return "unknown request status";
}

int ServiceRequests() {
  if (!internal::AnyReportRequests()) return 0;
  int answered = 0;
  for (ReportSlot* s = internal::thread_slots; s != nullptr; s = s->next) {
    int expected = internal::kPosted;
    if (!s->state.compare_exchange_strong(expected, internal::kServing,
                                          std::memory_order_acquire)) {
      continue;
    }
    internal::Answer(s);
    s->state.store(internal::kDone, std::memory_order_release);
    internal::posted_report_requests.fetch_sub(1);
    ++answered;
  }
  return answered;
}

// --- The owner's side ----------------------------------------------------------

ReportEndpoint::ReportEndpoint(const Context* root, size_t buffer_bytes)
    : slot_(std::make_shared<ReportSlot>()) {
  slot_->root = root;
  slot_->buffer.reset(new char[buffer_bytes]);
  slot_->capacity = buffer_bytes;
  slot_->next = internal::thread_slots;
  internal::thread_slots = slot_.get();
}

ReportEndpoint::~ReportEndpoint() {
  ReportSlot* s = slot_.get();
  for (ReportSlot** link = &internal::thread_slots; *link != nullptr; link = &(*link)->next) {
    if (*link == s) {
      *link = s->next;
      break;
    }
  }
  s->closed.store(true);
  if (internal::Withdraw(s, internal::kServing)) {
    s->answer = RequestStatus::kClosed;
    s->needed = 0;
    s->state.store(internal::kDone, std::memory_order_release);
  }
  s->root = nullptr;
}

const Context* ReportEndpoint::root() const { return slot_->root; }

// --- The asker's side ------------------------------------------------------------

RequestStatus ReportTarget::Post(const ReportOptions& options, int fd) {
  if (slot_ == nullptr) return RequestStatus::kNone;
  ReportSlot* s = slot_.get();
  if (s->closed.load()) return RequestStatus::kClosed;
  int expected = internal::kIdle;
  if (!s->state.compare_exchange_strong(expected, internal::kClaimed)) return RequestStatus::kBusy;
  s->options = options;
  s->fd = fd;
  s->answer = RequestStatus::kNone;
  internal::posted_report_requests.fetch_add(1);
  s->state.store(internal::kPosted);
  if (s->closed.load() && internal::Withdraw(s, internal::kIdle)) return RequestStatus::kClosed;
  return RequestStatus::kPending;
}

RequestStatus ReportTarget::Wait(std::chrono::milliseconds timeout) {
  if (slot_ == nullptr) return RequestStatus::kNone;
  // Reports come at the owner's safe points, which may be far apart: poll,
  // backing off from a short sleep to a longer one.
  constexpr auto kFirstSleep = std::chrono::microseconds(50);
  constexpr auto kLongestSleep = std::chrono::milliseconds(5);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::chrono::microseconds sleep = kFirstSleep;
  for (;;) {
    const int state = slot_->state.load(std::memory_order_acquire);
    if (state == internal::kDone) return slot_->answer;
    if (state == internal::kIdle) return RequestStatus::kNone;
    if (std::chrono::steady_clock::now() >= deadline) return RequestStatus::kPending;
    std::this_thread::sleep_for(sleep);
    if (sleep < kLongestSleep) sleep *= 2;
  }
}

std::string ReportTarget::Take() {
  if (slot_ == nullptr) return std::string();
  ReportSlot* s = slot_.get();
  if (s->state.load(std::memory_order_acquire) != internal::kDone) return std::string();
  std::string out;
  if (s->fd < 0 && (s->answer == RequestStatus::kDone || s->answer == RequestStatus::kTruncated)) {
    out.assign(s->buffer.get(), s->needed < s->capacity ? s->needed : s->capacity);
  }
  s->state.store(internal::kIdle, std::memory_order_release);
  return out;
}

bool ReportTarget::Cancel() {
  return slot_ != nullptr && internal::Withdraw(slot_.get(), internal::kIdle);
}

size_t ReportTarget::needed() const { return slot_ != nullptr ? slot_->needed : 0; }

RequestStatus ReportTarget::Ask(std::string* out, const ReportOptions& options,
                                std::chrono::milliseconds timeout) {
  RequestStatus posted = Post(options);
  if (posted != RequestStatus::kPending) return posted;
  RequestStatus answer = Wait(timeout);
  if (answer == RequestStatus::kPending) {
    if (Cancel()) return RequestStatus::kPending;
    // The owner has begun answering: the answer is moments away.
    constexpr auto kPatience = std::chrono::milliseconds(100);
    while ((answer = Wait(kPatience)) == RequestStatus::kPending) {
    }
  }
  *out = Take();
  return answer;
}

}  // namespace mcx
