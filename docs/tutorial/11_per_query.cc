// Tutorial, part 11: embedding mcx in an engine. One long-lived context for
// the engine, a context per query (destroyed on every path), a context per
// row (reset for every row), a limit per query, and results that outlive the
// query copied into a context the caller owns. Last, a worker thread's tree
// reported on request to another thread.

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>

#include "docs/tutorial/check.h"
#include "mcx/context/context.h"
#include "mcx/context/owned.h"
#include "mcx/context/report_request.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"

namespace {

// [START engine]
class Engine {
 public:
  Engine() : root_(mcx::Context::Create(nullptr, "engine", mcx::PoolKind())) {}

  // Runs `query` over `rows` rows; returns the longest row, copied into `out`
  // (a context of the caller). Throws on an error in the query, and
  // std::bad_alloc when the query needs more than its limit.
  const char* Run(const std::string& query, int rows, mcx::Context* out) {
    mcx::ContextOptions options;
    options.limit = kQueryLimit;  // a runaway query stops here, not the engine
    mcx::ScopedChild q(root_.get(), "query", mcx::PoolKind(), options);  // every path
    mcx::Context* row = q->CreateChild("row", mcx::PoolKind());
    const char* longest = "";
    for (int r = 0; r < rows; ++r) {
      if (query == "fail" && r == rows / 2) throw std::runtime_error("division by zero");
      const char* text = Render(row, query == "sort" ? kWideRow : 16 + r % 50, r);
      if (query == "sort") q->Strdup(text);  // a sort keeps every row to the end
      if (std::strlen(text) > std::strlen(longest)) longest = q->Strdup(text);
      row->Reset();                          // the row's memory, in one step
    }
    return out->Strdup(longest);             // the result outlives the query
  }

  mcx::Context* root() const { return root_.get(); }

 private:
  static constexpr size_t kQueryLimit = 1 << 20;
  static constexpr size_t kWideRow = 64 * 1024;

  static const char* Render(mcx::Context* row, size_t width, int r) {
    char* text = static_cast<char*>(row->Alloc(width + 1));
    std::memset(text, 'a' + r % 26, width);
    text[width] = '\0';
    return text;
  }

  mcx::ContextPtr root_;  // destroys the engine's tree with the engine
};
// [END engine]

}  // namespace

int main() {
  // [START use]
  Engine engine;
  mcx::Context* session = mcx::Context::Create(nullptr, "session", mcx::FreelistKind());
  const char* result = engine.Run("scan", 1000, session);
  CHECK(std::strlen(result) == 16 + 49);
  CHECK(engine.root()->first_child() == nullptr);  // the query is gone

  int errors = 0;
  try {
    engine.Run("fail", 1000, session);  // an error half way through
  } catch (const std::runtime_error&) {
    ++errors;
  }
  try {
    engine.Run("sort", 1000, session);  // 64 MB of rows against a 1 MiB limit
  } catch (const std::bad_alloc&) {
    ++errors;
  }
  CHECK(errors == 2 && engine.root()->first_child() == nullptr);  // gone as well
  std::fputs(mcx::StatsReport(engine.root()).c_str(), stdout);
  session->Destroy();
  // [END use]

  // [START report_request]
  std::atomic<bool> published{false}, done{false};
  mcx::ReportTarget target;
  std::thread worker([&] {
    mcx::ContextPtr root(mcx::Context::Create(nullptr, "worker", mcx::PoolKind()));
    mcx::ReportEndpoint endpoint(root.get());  // goes before the root does
    target = endpoint.target();
    published = true;
    while (!done) {
      mcx::ScopedChild request(root.get(), "request", mcx::PoolKind());
      request->Alloc(300);
      mcx::ServiceRequests();  // a safe point: one load when nobody asks
    }
  });
  while (!published) std::this_thread::yield();
  mcx::ReportOptions json;
  json.format = mcx::ReportFormat::kJson;
  std::string tree;
  CHECK(target.Ask(&tree, json, std::chrono::seconds(10)) == mcx::RequestStatus::kDone);
  CHECK(tree.rfind("{\"tree\": {\"name\": \"worker\"", 0) == 0);
  done = true;
  worker.join();
  // [END report_request]
  return 0;
}
