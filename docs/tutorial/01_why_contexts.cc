// Tutorial, part 1: why contexts. A request's pieces live in one context;
// every path, the error path included, frees them all with one call, and the
// context asks its block source for memory once per block, not per chunk.

#include <cstring>
#include <stdexcept>
#include <string_view>

#include "docs/tutorial/check.h"
#include "mcx/context/block_source.h"
#include "mcx/context/context.h"
#include "mcx/pool/pool.h"

namespace {

// Counts what a context asks of the block source (the default one does the
// work).
class CountingSource : public mcx::BlockSource {
 public:
  mcx::Block Acquire(size_t min_size, size_t alignment) override {
    ++acquires_;
    ++live_;
    return mcx::DefaultBlockSource()->Acquire(min_size, alignment);
  }
  void Release(mcx::Block block) override {
    --live_;
    mcx::DefaultBlockSource()->Release(block);
  }
  int acquires() const { return acquires_; }
  int live() const { return live_; }

 private:
  int acquires_ = 0;
  int live_ = 0;
};

// [START parse]
struct Request {
  char* method;
  char* path;
};

// Every piece goes into `ctx`. The error path just throws: there is nothing
// to free piece by piece, so nothing to forget.
Request* Parse(mcx::Context* ctx, std::string_view line) {
  auto* r = static_cast<Request*>(ctx->Alloc(sizeof(Request)));
  const size_t space = line.find(' ');
  r->method = ctx->Strdup(line.substr(0, space));
  if (space == std::string_view::npos) throw std::invalid_argument("no path");
  r->path = ctx->Strdup(line.substr(space + 1));
  return r;
}
// [END parse]

}  // namespace

int main() {
  CountingSource source;
  mcx::ContextOptions options;
  options.block_source = &source;
  // [START serve]
  mcx::Context* server = mcx::Context::Create(nullptr, "server", mcx::PoolKind(), options);
  constexpr int kRequests = 1000;
  for (int i = 0; i < kRequests; ++i) {
    mcx::Context* request = server->CreateChild("request", mcx::PoolKind());
    try {
      Request* r = Parse(request, i % 10 == 0 ? "BROKEN" : "GET /index.html");
      CHECK(std::strcmp(r->path, "/index.html") == 0);
    } catch (const std::invalid_argument&) {
      // The error path: `request` holds the pieces made so far.
    }
    request->Destroy();  // every piece, on every path, in one call
  }
  // One block per request served all its chunks: three chunks, one call
  // (in a checking build, whose chunks carry checks, the first request
  // outgrows its small first block once; the others start from what it
  // needed).
  CHECK(source.acquires() <= 2 + kRequests);
  CHECK(source.live() == 1);  // only the server's own first block is left
  server->Destroy();
  CHECK(source.live() == 0);
  // [END serve]
  return 0;
}
