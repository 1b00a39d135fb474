// Reports on request (report_request.h): answered at the owner's safe points
// (a block acquisition, ServiceRequests), byte for byte StatsReport's text or
// JSON under the request's cut, without allocating, into the buffer or to a
// descriptor; busy, cancelled, closed and truncated requests; and another
// thread asking while the owner allocates (run under --config=tsan too).

#include "mcx/context/report_request.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"

// Counts operator new on threads that ask for it: the answer must not
// allocate.
namespace {
thread_local bool counting_news = false;
thread_local int news = 0;
}  // namespace

void* operator new(size_t size) {
  if (counting_news) ++news;
  void* p = std::malloc(size == 0 ? 1 : size);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace mcx {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds kNoWait(0);
constexpr milliseconds kPatience(20000);  // for another thread; sanitizers are slow

// A tree with some width and depth, so that cuts show.
Context* MakeTree() {
  Context* root = Context::Create(nullptr, "server", PoolKind());
  for (int i = 0; i < 5; ++i) {
    Context* session = root->CreateChild("session", FreelistKind());
    session->Alloc(100 * (i + 1));
    Context* query = session->CreateChild("query \"q\"", PoolKind());
    query->Alloc(3000);
  }
  return root;
}

ReportOptions Json(int depth, int children) {
  ReportOptions o;
  o.format = ReportFormat::kJson;
  o.max_depth = depth;
  o.max_children = children;
  return o;
}

TEST(ReportRequestTest, AnsweredByServiceRequestsAsStatsReport) {
  Context* root = MakeTree();
  ReportEndpoint endpoint(root);
  ReportTarget target = endpoint.target();
  EXPECT_EQ(ServiceRequests(), 0);
  for (const ReportOptions& o : {Json(100, 100), Json(1, 2), Json(0, 0), ReportOptions()}) {
    ASSERT_EQ(target.Post(o), RequestStatus::kPending);
    EXPECT_EQ(target.Wait(kNoWait), RequestStatus::kPending);
    counting_news = true;
    news = 0;
    EXPECT_EQ(ServiceRequests(), 1);
    counting_news = false;
    EXPECT_EQ(news, 0) << "the answer allocated";
    EXPECT_EQ(target.Wait(kNoWait), RequestStatus::kDone);
    const std::string expected = StatsReport(root, o);
    EXPECT_EQ(target.needed(), expected.size());
    EXPECT_EQ(target.Take(), expected);
  }
  EXPECT_EQ(target.Wait(kNoWait), RequestStatus::kNone);  // taken
  EXPECT_EQ(ServiceRequests(), 0);
  root->Destroy();
}

// A block acquisition is a safe point: the allocation that needs a block
// writes the report first, then proceeds.
TEST(ReportRequestTest, AnsweredAtTheNextBlockAcquisition) {
  Context* root = MakeTree();
  Context* work = root->CreateChild("work", PoolKind());
  ReportEndpoint endpoint(root);
  ReportTarget target = endpoint.target();
  ASSERT_EQ(target.Post(Json(100, 100)), RequestStatus::kPending);
  const size_t blocks = work->num_blocks();
  std::string before;  // the report just before the allocation that took a block
  int allocs = 0;
  while (work->num_blocks() == blocks) {
    EXPECT_EQ(target.Wait(kNoWait), RequestStatus::kPending);
    before = StatsReport(root, Json(100, 100));
    std::memset(work->Alloc(500), 7, 500);
    ++allocs;
  }
  // direct mode: every chunk is a block
  if (!kDirectBuild) {
    EXPECT_GT(allocs, 1);
  }
  EXPECT_EQ(target.Wait(kNoWait), RequestStatus::kDone);
  EXPECT_EQ(target.Take(), before);  // written before the new block
  EXPECT_EQ(work->last_failure(), Failure::kNone);
  std::string error;
  EXPECT_TRUE(work->Check(&error)) << error;
  // And through TryAlloc, Realloc and a freelist context the same way.
  Context* cache = root->CreateChild("cache", FreelistKind());
  ASSERT_EQ(target.Post(ReportOptions()), RequestStatus::kPending);
  void* p = cache->Realloc(nullptr, 10);
  p = cache->Realloc(p, 100000);
  EXPECT_NE(p, nullptr);
  EXPECT_EQ(target.Wait(kNoWait), RequestStatus::kDone);
  EXPECT_NE(target.Take().find("Grand total: "), std::string::npos);
  root->Destroy();
}

TEST(ReportRequestTest, ToADescriptor) {
  Context* root = MakeTree();
  ReportEndpoint endpoint(root);
  ReportTarget target = endpoint.target();
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  ReportOptions text;
  text.max_depth = 1;
  ASSERT_EQ(target.Post(text, fds[1]), RequestStatus::kPending);
  EXPECT_EQ(ServiceRequests(), 1);
  EXPECT_EQ(target.Wait(kNoWait), RequestStatus::kDone);
  EXPECT_EQ(target.Take(), "");
  close(fds[1]);
  std::string got;
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0) got.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  EXPECT_EQ(got, StatsReport(root, text));
  // A descriptor that cannot be written: kWriteError.
  ASSERT_EQ(target.Post(text, fds[1]), RequestStatus::kPending);
  EXPECT_EQ(ServiceRequests(), 1);
  EXPECT_EQ(target.Wait(kNoWait), RequestStatus::kWriteError);
  target.Take();
  root->Destroy();
}

TEST(ReportRequestTest, TruncatedToTheBufferWithTheSizeNeeded) {
  Context* root = MakeTree();
  constexpr size_t kSmall = 100;
  ReportEndpoint endpoint(root, kSmall);
  ReportTarget target = endpoint.target();
  ASSERT_EQ(target.Post(Json(100, 100)), RequestStatus::kPending);
  ServiceRequests();
  EXPECT_EQ(target.Wait(kNoWait), RequestStatus::kTruncated);
  const std::string full = StatsReport(root, Json(100, 100));
  EXPECT_EQ(target.needed(), full.size());
  EXPECT_EQ(target.Take(), full.substr(0, kSmall));
  root->Destroy();
}

TEST(ReportRequestTest, BusyCancelledAndClosed) {
  Context* root = MakeTree();
  ReportTarget target;
  EXPECT_EQ(target.Post(ReportOptions()), RequestStatus::kNone);
  {
    ReportEndpoint endpoint(root);
    target = endpoint.target();
    ASSERT_EQ(target.Post(ReportOptions()), RequestStatus::kPending);
    EXPECT_EQ(target.Post(ReportOptions()), RequestStatus::kBusy);
    EXPECT_TRUE(target.Cancel());
    EXPECT_FALSE(target.Cancel());
    EXPECT_EQ(ServiceRequests(), 0);
    ASSERT_EQ(target.Post(ReportOptions()), RequestStatus::kPending);
  }  // closed with a request waiting: answered kClosed
  EXPECT_EQ(target.Wait(kNoWait), RequestStatus::kClosed);
  EXPECT_EQ(target.Take(), "");
  EXPECT_EQ(target.Post(ReportOptions()), RequestStatus::kClosed);
  std::string out;
  EXPECT_EQ(target.Ask(&out, ReportOptions(), kNoWait), RequestStatus::kClosed);
  EXPECT_STREQ(RequestStatusName(RequestStatus::kTruncated), "truncated");
  root->Destroy();
}

// Another thread asks while the owner works: answered at its block
// acquisitions, with no ServiceRequests call, many times over.
TEST(ReportRequestTest, AnotherThreadAsksWhileTheOwnerAllocates) {
  std::atomic<bool> ready{false}, stop{false};
  ReportTarget target;
  std::thread owner([&] {
    Context* root = Context::Create(nullptr, "worker", PoolKind());
    ReportEndpoint endpoint(root);
    target = endpoint.target();
    ready.store(true);
    while (!stop.load()) {
      Context* request = root->CreateChild("request", PoolKind());
      for (int i = 0; i < 200; ++i) std::memset(request->Alloc(300), 1, 300);
      request->Destroy();
    }
    root->Destroy();
  });
  while (!ready.load()) std::this_thread::yield();
  constexpr int kAsks = 20;
  int done = 0;
  for (int i = 0; i < kAsks; ++i) {
    std::string json;
    const RequestStatus s = target.Ask(&json, Json(100, 100), kPatience);
    if (s != RequestStatus::kDone) {
      ADD_FAILURE() << RequestStatusName(s);
      break;
    }
    ++done;
    EXPECT_EQ(json.rfind("{\"tree\": {\"name\": \"worker\", \"kind\": \"pool\"", 0), 0u) << json;
    EXPECT_NE(json.find("\"grand_total\": {\"contexts\": "), std::string::npos) << json;
  }
  EXPECT_EQ(done, kAsks);
  stop.store(true);
  owner.join();
  EXPECT_EQ(target.Post(ReportOptions()), RequestStatus::kClosed);
}

}  // namespace
}  // namespace mcx
