// Tutorial, part 10: standard containers in a context, through
// std::pmr::memory_resource and through an allocator type.

#include <memory_resource>
#include <string>
#include <vector>

#include "docs/tutorial/check.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/memory_resource.h"
#include "mcx/context/new.h"
#include "mcx/freelist/freelist.h"

namespace {

// Counts live objects, so the test sees destructors run.
struct Tracked {
  explicit Tracked(int* counter) : live(counter) { ++*live; }
  Tracked(const Tracked& other) : live(other.live) { ++*live; }
  ~Tracked() { --*live; }
  int* live;
};

}  // namespace

int main() {
  // [START pmr]
  mcx::Context* ctx = mcx::Context::Create(nullptr, "cache", mcx::FreelistKind());
  mcx::MemoryResource resource(ctx);  // a view of ctx: must not outlive it
  {
    std::pmr::vector<int> ids(&resource);
    for (int i = 0; i < 1000; ++i) ids.push_back(i);
    CHECK(mcx::GetChunkContext(ids.data()) == ctx);  // the buffer is a chunk of ctx
    std::pmr::string name("a string too long for the small-string buffer", &resource);
    CHECK(mcx::GetChunkContext(name.data()) == ctx);
  }  // the containers give their chunks back to ctx here
  // [END pmr]

  // [START allocator]
  {
    std::vector<double, mcx::Allocator<double>> scores{mcx::Allocator<double>(ctx)};
    scores.assign(100, 0.5);
    CHECK(mcx::GetChunkContext(scores.data()) == ctx);
  }
  // [END allocator]

  // [START tied]
  int live = 0;
  auto* rows = mcx::New<std::pmr::vector<Tracked>>(ctx, &resource);
  for (int i = 0; i < 10; ++i) rows->emplace_back(&live);
  CHECK(live == 10);
  ctx->Reset();     // ~vector ran first, then the memory went
  CHECK(live == 0);
  // [END tied]
  ctx->Destroy();
  return 0;
}
