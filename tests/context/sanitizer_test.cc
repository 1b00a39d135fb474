// Under AddressSanitizer, memory inside a context's blocks is poisoned until
// it is handed out, and again once it is freed or reset, so ASan reports
// misuse that never leaves a context's blocks. Run with --config=asan; in
// other builds these tests are skipped.

#include <cstring>

#include "gtest/gtest.h"
#include "mcx/context/caching_block_source.h"
#include "mcx/context/context.h"
#include "mcx/context/internal/sanitizer.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"

namespace mcx {
namespace {

// Reads through a volatile pointer so the compiler keeps the access.
int ReadByte(const void* p) { return *static_cast<const volatile char*>(p); }
void WriteByte(void* p) { *static_cast<volatile char*>(p) = 1; }

class SanitizerTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (!internal::kAddressSanitizer) GTEST_SKIP() << "needs --config=asan";
  }
  KindSpec Kind() const { return GetParam() ? PoolKind() : FreelistKind(); }
};

TEST_P(SanitizerTest, ReadAfterResetIsReported) {
  EXPECT_DEATH(
      {
        Context* ctx = Context::Create(nullptr, "ctx", Kind());
        char* p = static_cast<char*>(ctx->Alloc(64));
        std::memset(p, 'x', 64);
        ctx->Reset();
        ReadByte(p + 10);
      },
      "AddressSanitizer: use-after-poison");
}

TEST_P(SanitizerTest, WritePastTheChunkIntoFreeBlockSpaceIsReported) {
  EXPECT_DEATH(
      {
        Context* ctx = Context::Create(nullptr, "ctx", Kind());
        ctx->Alloc(100);
        char* p = static_cast<char*>(ctx->Alloc(40));
        WriteByte(p + 40);
      },
      "AddressSanitizer: use-after-poison");
}

TEST_P(SanitizerTest, InBoundsUseIsClean) {
  Context* ctx = Context::Create(nullptr, "ctx", Kind());
  for (size_t n : {size_t{1}, size_t{7}, size_t{40}, size_t{1000}, size_t{20000}}) {
    char* p = static_cast<char*>(ctx->Alloc(n));
    std::memset(p, 'a', n);
    char* q = static_cast<char*>(ctx->Realloc(p, n, n * 2));
    std::memset(q, 'b', n * 2);
    char* a = static_cast<char*>(ctx->AllocAligned(n, 256));
    std::memset(a, 'c', n);
  }
  ctx->Reset();
  std::memset(ctx->Alloc(64), 'd', 64);
  ctx->Destroy();
}

INSTANTIATE_TEST_SUITE_P(Kinds, SanitizerTest, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Pool" : "Freelist";
                         });

TEST(FreelistSanitizerTest, ReadAfterFreeIsReported) {
  if (!internal::kAddressSanitizer) GTEST_SKIP() << "needs --config=asan";
  EXPECT_DEATH(
      {
        Context* ctx = CreateFreelistContext(nullptr, "ctx");
        char* p = static_cast<char*>(ctx->Alloc(64));
        ctx->Free(p);
        ReadByte(p + 3);
      },
      "AddressSanitizer: use-after-poison");
}

// A request rounded up to its class still stops at the requested size.
TEST(FreelistSanitizerTest, OverflowInsideTheClassIsReported) {
  if (!internal::kAddressSanitizer) GTEST_SKIP() << "needs --config=asan";
  EXPECT_DEATH(
      {
        Context* ctx = CreateFreelistContext(nullptr, "ctx");
        char* p = static_cast<char*>(ctx->Alloc(90));  // class 104
        WriteByte(p + 90);
      },
      "AddressSanitizer: use-after-poison");
}

// A destroyed context's blocks kept by the block cache are poisoned too.
// The cache is given explicitly: the default source may be the system
// allocator (MCX_BLOCK_SOURCE=system in CI's checking-asan run).
TEST(CacheSanitizerTest, UseAfterDestroyIsReported) {
  if (!internal::kAddressSanitizer) GTEST_SKIP() << "needs --config=asan";
  EXPECT_DEATH(
      {
        ContextOptions cached;
        cached.block_source = DefaultBlockCache();
        Context* root = CreatePoolContext(nullptr, "root", PoolOptions(), cached);
        Context* child = root->CreateChild("child", PoolKind());
        char* p = static_cast<char*>(child->Alloc(5000));  // a large chunk
        child->Destroy();
        ReadByte(p + 100);
      },
      "AddressSanitizer: use-after-poison");
}

}  // namespace
}  // namespace mcx
