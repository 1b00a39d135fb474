// A small program for tests/valgrind/memcheck_test.sh: each mode does one
// thing that memcheck should (or should not) report when mcx is built with
// --config=valgrind.

#include <cstdio>
#include <cstring>
#include <string>

#include "mcx/context/context.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"

namespace {

int ReadAfterReset(bool pool) {
  mcx::Context* ctx = mcx::Context::Create(nullptr, "reader",
                                           pool ? mcx::PoolKind() : mcx::FreelistKind());
  char* p = static_cast<char*>(ctx->Alloc(64));
  std::memset(p, 'x', 64);
  ctx->Reset();
  int sum = *static_cast<volatile char*>(p + 8);  // memcheck: invalid read
  ctx->Destroy();
  return sum == 'x' ? 0 : 0;
}

int ReadAfterFree() {
  mcx::Context* ctx = mcx::CreateFreelistContext(nullptr, "reader");
  char* p = static_cast<char*>(ctx->Alloc(100));
  std::memset(p, 'y', 100);
  ctx->Free(p);
  int v = *static_cast<volatile char*>(p + 50);  // memcheck: invalid read
  ctx->Destroy();
  return v == 0 ? 0 : 0;
}

mcx::Context* leaked = nullptr;

int LeakAContext() {
  mcx::Context* ctx = mcx::CreateFreelistContext(nullptr, "leaky");
  for (int i = 0; i < 10; ++i) std::memset(ctx->Alloc(1000), 'z', 1000);
  leaked = nullptr;  // the only pointer is dropped: the context leaks
  return 0;
}

int Clean() {
  mcx::Context* top = mcx::CreatePoolContext(nullptr, "top");
  mcx::Context* cache = top->CreateChild("cache", mcx::FreelistKind());
  for (int round = 0; round < 3; ++round) {
    void* keep = nullptr;
    for (int i = 0; i < 1000; ++i) {
      char* p = static_cast<char*>(cache->Alloc(16 + i % 700));
      std::memset(p, 1, 16 + i % 700);
      p = static_cast<char*>(cache->Realloc(p, 900));
      p[899] = 2;
      if (i % 3 == 0) cache->Free(p); else keep = p;
      char* q = static_cast<char*>(top->Alloc(40));
      std::memset(q, 3, 40);
      char* a = static_cast<char*>(cache->AllocAligned(50, 128));
      std::memset(a, 4, 50);
    }
    (void)keep;
    cache->Reset();
    top->Alloc(100000);
    // A large chunk freed goes back to the block cache (its block is the
    // chunk): the cache must still read its own bookkeeping in the block
    // after the free is announced to memcheck.
    top->Free(top->Alloc(50000));
    void* dedicated = cache->Alloc(20000);
    cache->Free(dedicated);
    // Free of a pool chunk reads the bytes right before it, to tell a large
    // chunk (its header is there) from a small one, whose preceding bytes
    // are the end of the chunk before it and padding, unaddressable to
    // memcheck: the read must not be reported.
    char* odd = static_cast<char*>(top->AllocBytes(13));
    std::memset(odd, 6, 13);
    char* next = static_cast<char*>(top->Alloc(24));
    std::memset(next, 7, 24);
    top->Free(next);
    top->Free(odd);
  }
  // The same in rewind mode, where freed small chunks are counted, with
  // large chunks among them.
  mcx::PoolOptions rewind;
  rewind.rewind_on_free = true;
  mcx::Context* rewinding = top->CreateChild("rewinding", mcx::PoolKind(rewind));
  void* ring[32] = {};
  for (int i = 0; i < 2000; ++i) {
    void*& slot = ring[i % 32];
    if (slot != nullptr) rewinding->Free(slot);
    const size_t size = i % 50 == 0 ? 6000 : 1 + i % 200;
    slot = rewinding->AllocBytes(size);
    std::memset(slot, 9, size);
  }
  // A reset that hands a large chunk's block to the context's reserve.
  mcx::ContextOptions with_reserve;
  with_reserve.reserve_blocks = 1;
  mcx::Context* reserved = top->CreateChild("reserved", mcx::PoolKind(), with_reserve);
  for (int i = 0; i < 3; ++i) {
    std::memset(reserved->Alloc(16 * 1024), 5, 16 * 1024);
    reserved->Reset();
  }
  top->Destroy();
  // The default cache's thread cache is flushed at exit, reading every kept
  // block's node: part of what must be clean.
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "annotated") {
    std::puts(mcx::internal::kValgrind ? "yes" : "no");
    return 0;
  }
  if (mode == "read-after-reset-pool") return ReadAfterReset(true);
  if (mode == "read-after-reset-freelist") return ReadAfterReset(false);
  if (mode == "read-after-free") return ReadAfterFree();
  if (mode == "leak") return LeakAContext();
  if (mode == "clean") return Clean();
  std::fprintf(stderr, "unknown mode '%s'\n", mode.c_str());
  return 2;
}
