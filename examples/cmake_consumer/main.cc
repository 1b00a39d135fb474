// A consumer of mcx: the C++ API and the C API, through the installed include
// layout ("mcx/..."). Exits 0 only if every check passed.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#include "mcx/context/chunk.h"
#include "mcx/context/config.h"
#include "mcx/context/context.h"
#include "mcx/freelist/freelist.h"
#include "mcx/mcx.h"
#include "mcx/pool/pool.h"

namespace {

int failures = 0;

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "consumer: check failed: %s\n", what);
    ++failures;
  }
}

int cleanups_run = 0;

void CountCleanup(void* arg) { ++*static_cast<int*>(arg); }

}  // namespace

int main() {
  // C++ API: a pool tree with a freelist child.
  mcx::Context* top = mcx::Context::Create(nullptr, "top", mcx::PoolKind());
  mcx::Context* row = top->CreateChild("row", mcx::PoolKind());
  top->AddCleanup([] { ++cleanups_run; }, mcx::CleanupPhase::kBeforeChildren);
  char* s = row->Strdup("hello");
  Check(std::strcmp(s, "hello") == 0, "Strdup copies");
  Check(std::strcmp(row->name(), "row") == 0, "the context keeps its name");
  row->Reset();

  mcx::Context* cache = top->CreateChild("cache", mcx::FreelistKind());
  void* p = cache->Alloc(120);
  std::memset(p, 0xAB, 120);
  p = cache->Realloc(p, 400);
  Check(static_cast<unsigned char*>(p)[119] == 0xAB, "Realloc keeps the bytes");
  cache->Free(p);

  // The configuration came with the headers (mcx/context/config.h), without
  // a -D flag here; CI names the one it installed in MCX_EXPECT_CHECKING. The
  // freelist's inline code and the library agree on the chunk layout: in
  // checking builds a chunk's size is exactly the request.
  std::printf("consumer: mcx configuration: checking %d, valgrind %d, direct %d, "
              "asan %d, tsan %d, ubsan %d\n",
              MCX_CHECKING, MCX_VALGRIND, MCX_DIRECT, MCX_SANITIZE_ADDRESS,
              MCX_SANITIZE_THREAD, MCX_SANITIZE_UNDEFINED);
  if (const char* expect = std::getenv("MCX_EXPECT_CHECKING")) {
    Check(std::atoi(expect) == MCX_CHECKING, "the headers carry the expected configuration");
  }
  void* odd = cache->Alloc(37);
  Check(MCX_CHECKING ? mcx::GetChunkSize(odd) == 37 : mcx::GetChunkSize(odd) >= 37,
        "GetChunkSize agrees with the configuration");
  mcx::Free(odd);

  bool threw = false;
  try {
    cache->AllocAligned(16, 3);  // not a power of two
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  Check(threw, "a bad alignment throws std::invalid_argument");
  top->Destroy();
  Check(cleanups_run == 1, "Destroy runs the cleanup once");

  // C API.
  int c_cleanups = 0;
  mcx_context* ctop = mcx_create(nullptr, "ctop", MCX_KIND_POOL, nullptr);
  Check(ctop != nullptr, "mcx_create");
  mcx_context* ccache = mcx_create(ctop, "ccache", MCX_KIND_FREELIST, nullptr);
  Check(ccache != nullptr, "mcx_create (child)");
  Check(mcx_add_cleanup(ccache, CountCleanup, &c_cleanups, /*before_children=*/0).record != nullptr,
        "mcx_add_cleanup");
  char* cs = mcx_strdup(ccache, "world");
  Check(cs != nullptr && std::strcmp(cs, "world") == 0, "mcx_strdup");
  cs = static_cast<char*>(mcx_realloc_chunk(cs, 100));
  Check(cs != nullptr && std::strcmp(cs, "world") == 0, "mcx_realloc_chunk");
  Check(mcx_chunk_context(cs) == ccache, "mcx_chunk_context");
  mcx_free_chunk(cs);
  mcx_destroy(ctop);
  Check(c_cleanups == 1, "mcx_destroy runs the child's cleanup");

  if (failures != 0) {
    std::fprintf(stderr, "consumer: %d check(s) failed\n", failures);
    return 1;
  }
  std::printf("consumer: all checks passed\n");
  return 0;
}
