// Printf, StrCat, Strndup and Memdup (strings.h): exact results, one chunk
// of the context each, no heap allocation on the way, and the context's
// failure path.

#include "mcx/context/strings.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/live_chunks.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

// Counts operator new while a test asks (the helpers must not use the heap).
namespace {
std::atomic<bool> counting{false};
std::atomic<int> heap_allocations{0};
}  // namespace

void* operator new(size_t n) {
  if (counting.load()) heap_allocations.fetch_add(1);
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
// The nothrow form too (std::stable_sort's temporary buffer uses it), so
// that every operator delete frees what malloc gave (ASan checks).
void* operator new(size_t n, const std::nothrow_t&) noexcept {
  if (counting.load()) heap_allocations.fetch_add(1);
  return std::malloc(n == 0 ? 1 : n);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace mcx {
namespace {

class HeapCounter {
 public:
  HeapCounter() {
    heap_allocations = 0;
    counting = true;
  }
  ~HeapCounter() { counting = false; }
  int count() const { return heap_allocations.load(); }
};

// `p` is a chunk of `ctx` of `n` bytes: the freelist kind says whose chunk
// it is, and checking builds list it, with its size, under this file.
void ExpectChunkOf(Context* ctx, const char* p, size_t n) {
  if (std::string(ctx->kind_name()) == "freelist") {
    EXPECT_EQ(GetChunkContext(p), ctx);
    if (internal::kChecking) {
      EXPECT_EQ(ctx->ChunkSize(p), n);  // exactly the request
    }
  }
  if (internal::kChecking) {
    LiveChunkSummary s = SummarizeLiveChunks(ctx);
    bool found = false;
    for (const SiteUsage& u : s.sites) found |= u.bytes == n && std::strcmp(u.site.file(), __FILE__) == 0;
    EXPECT_TRUE(found) << LiveChunksReport(ctx);
  }
}

class StringsTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    ctx_ = GetParam() ? CreateFreelistContext(nullptr, "strings")
                      : CreatePoolContext(nullptr, "strings");
  }
  void TearDown() override { ctx_->Destroy(); }
  Context* ctx_ = nullptr;
};

INSTANTIATE_TEST_SUITE_P(Kinds, StringsTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? std::string("Freelist") : std::string("Pool");
                         });

// Printf makes what absl::StrFormat makes, in one chunk of exactly its
// length plus the NUL, short or long, at the stack buffer's edges too.
TEST_P(StringsTest, PrintfFormatsIntoOneChunk) {
  std::string name = "orders";
  char* s = Printf(ctx_, "relation \"%s\" has %d rows (%.2f%%)", name, 1234, 99.5);
  EXPECT_STREQ(s, "relation \"orders\" has 1234 rows (99.50%)");
  ExpectChunkOf(ctx_, s, std::strlen(s) + 1);
  for (size_t length : {size_t{0}, kFormatStackBytes - 1, kFormatStackBytes,
                        kFormatStackBytes + 1, 5 * kFormatStackBytes}) {
    std::string fill(length, 'x');
    if (length != 0) fill[length / 2] = 'm';
    char* t = Printf(ctx_, "%s", fill);
    EXPECT_EQ(std::string(t), fill) << length;
    EXPECT_EQ(std::strlen(t), length);
    std::string twice = absl::StrFormat("[%s|%d]", fill, -7);
    char* u = Printf(ctx_, "[%s|%d]", fill, -7);
    EXPECT_EQ(std::string(u), twice) << length;
  }
}

// StrCat takes what absl::StrCat takes, and an empty list.
TEST_P(StringsTest, StrCatConcatenatesInOneChunk) {
  std::string schema = "public";
  absl::string_view dot = ".";
  char* s = StrCat(ctx_, schema, dot, "orders", "#", 42, "/", -3, "/", 2.5, "/", absl::Hex(255),
                   "/", uint64_t{18446744073709551615u});
  EXPECT_STREQ(s, "public.orders#42/-3/2.5/ff/18446744073709551615");
  ExpectChunkOf(ctx_, s, std::strlen(s) + 1);
  char* empty = StrCat(ctx_);
  EXPECT_STREQ(empty, "");
  char* one = StrCat(ctx_, std::string(1000, 'z'));
  EXPECT_EQ(std::string(one), std::string(1000, 'z'));
}

// Strndup stops at n or at the NUL; n == 0 and a null pointer with it are
// an empty string.
TEST_P(StringsTest, StrndupCopiesAtMostNBytes) {
  const char text[] = "identifier_with_tail";
  char* a = Strndup(ctx_, text, 10);
  EXPECT_STREQ(a, "identifier");
  ExpectChunkOf(ctx_, a, 11);
  char* b = Strndup(ctx_, text, 1000);  // stops at the NUL: reads no further
  EXPECT_STREQ(b, text);
  const char unterminated[4] = {'a', 'b', 'c', 'd'};
  char* c = Strndup(ctx_, unterminated, sizeof(unterminated));
  EXPECT_STREQ(c, "abcd");
  EXPECT_STREQ(Strndup(ctx_, text, 0), "");
  EXPECT_STREQ(Strndup(ctx_, nullptr, 0), "");
}

// Memdup copies bytes into an aligned chunk; zero bytes give unique
// pointers.
TEST_P(StringsTest, MemdupCopiesAligned) {
  struct Header {
    uint64_t id;
    double weight;
    char tag[5];
  } h{7, 1.5, "abcd"};
  auto* copy = static_cast<Header*>(Memdup(ctx_, &h, sizeof(h)));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(copy) % kDefaultAlignment, 0u);
  EXPECT_EQ(copy->id, 7u);
  EXPECT_EQ(copy->weight, 1.5);
  EXPECT_STREQ(copy->tag, "abcd");
  EXPECT_NE(static_cast<void*>(copy), static_cast<void*>(&h));
  ExpectChunkOf(ctx_, reinterpret_cast<char*>(copy), sizeof(h));
  void* z1 = Memdup(ctx_, nullptr, 0);
  void* z2 = Memdup(ctx_, &h, 0);
  EXPECT_NE(z1, nullptr);
  EXPECT_NE(z1, z2);
}

// Short and long results alike: no operator new on the way (Abseil's
// formatting and AlphaNum work on the stack).
TEST_P(StringsTest, NoHeapAllocation) {
  std::string long_arg(3 * kFormatStackBytes, 'q');
  char* a;
  char* b;
  char* c;
  char* d;
  {
    HeapCounter heap;
    std::string* counted = new std::string("the counter sees the heap");
    EXPECT_GT(heap.count(), 0);
    delete counted;
    heap_allocations = 0;
    a = Printf(ctx_, "%s-%d-%s", "short", 1, "x");
    b = Printf(ctx_, "%s-%d", long_arg, 2);
    c = StrCat(ctx_, long_arg, 3, 4.25);
    d = Strndup(ctx_, long_arg.c_str(), 100);
    EXPECT_EQ(heap.count(), 0);
  }
  EXPECT_STREQ(a, "short-1-x");
  EXPECT_EQ(std::string(b), long_arg + "-2");
  EXPECT_EQ(std::string(c), long_arg + "34.25");
  EXPECT_EQ(std::string(d), long_arg.substr(0, 100));
}

// A type whose formatting differs from call to call: the first pass
// measures, the second writes into the chunk.
struct Fickle {
  mutable int calls = 0;
  size_t first = 0;
  size_t second = 0;
  friend absl::FormatConvertResult<absl::FormatConversionCharSet::kString> AbslFormatConvert(
      const Fickle& f, const absl::FormatConversionSpec&, absl::FormatSink* sink) {
    sink->Append(f.calls++ == 0 ? f.first : f.second, 'f');
    return {true};
  }
};

// A long result formats twice; if the second pass writes less, the string
// ends there, if more, it is cut to the measured length: NUL-terminated in
// the chunk either way.
TEST_P(StringsTest, SecondPassIsCutToTheFirst) {
  const size_t n = 2 * kFormatStackBytes;
  Fickle shrinking{0, n, 10};
  EXPECT_EQ(std::string(Printf(ctx_, "%s", shrinking)), std::string(10, 'f'));
  EXPECT_EQ(shrinking.calls, 2);
  Fickle growing{0, n, n + 50};
  EXPECT_EQ(std::string(Printf(ctx_, "%s", growing)), std::string(n, 'f'));
  Fickle short_one{0, 5, 500};  // fits the stack: formatted once
  EXPECT_EQ(std::string(Printf(ctx_, "%s", short_one)), "fffff");
  EXPECT_EQ(short_one.calls, 1);
}

// Null pointers with a length are kBadArgument, through the failure path.
TEST_P(StringsTest, NullWithLengthIsABadArgument) {
  EXPECT_THROW(Strndup(ctx_, nullptr, 3), std::invalid_argument);
  EXPECT_EQ(ctx_->last_failure(), Failure::kBadArgument);
  EXPECT_THROW(Memdup(ctx_, nullptr, 3), std::invalid_argument);
  EXPECT_EQ(TryStrndup(ctx_, nullptr, 3), nullptr);
  EXPECT_EQ(TryMemdup(ctx_, nullptr, 3), nullptr);
  EXPECT_EQ(ctx_->last_failure(), Failure::kBadArgument);
}

#if !defined(__clang__)
// GCC builds check a format against its arguments when formatting (Clang
// refuses the call at compile time): a mismatch is kBadArgument.
TEST_P(StringsTest, MismatchedFormatIsABadArgument) {
  const size_t before = ctx_->bytes_in_blocks();
  EXPECT_THROW(Printf(ctx_, "%d", "not a number"), std::invalid_argument);
  EXPECT_EQ(ctx_->last_failure(), Failure::kBadArgument);
  EXPECT_EQ(TryPrintf(ctx_, "%d %d", 1), nullptr);
  EXPECT_EQ(ctx_->last_failure(), Failure::kBadArgument);
  EXPECT_EQ(ctx_->bytes_in_blocks(), before);
}
#endif

int handler_calls = 0;
void CountingHandler(const FailureInfo& info) {
  ++handler_calls;
  EXPECT_EQ(info.failure, Failure::kOutOfMemory);
}

// Out of memory: the handler runs and the call throws, the Try form returns
// nullptr; nothing is left behind, and the context serves the next request.
TEST(StringsFailureTest, FailuresGoThroughTheContext) {
  for (bool freelist : {false, true}) {
    test::FailingBlockSource source;
    ContextOptions o;
    o.block_source = &source;
    o.failure_handler = &CountingHandler;
    Context* ctx = freelist ? Context::Create(nullptr, "f", FreelistKind(), o)
                            : Context::Create(nullptr, "f", PoolKind(), o);
    const size_t blocks = ctx->num_blocks();
    const size_t bytes = ctx->bytes_in_blocks();
    std::string big(100000, 'b');  // larger than any first block
    source.FailFrom(1);
    handler_calls = 0;
    EXPECT_THROW(Printf(ctx, "%s!", big), std::bad_alloc);
    EXPECT_THROW(StrCat(ctx, big, "!"), std::bad_alloc);
    EXPECT_THROW(Strndup(ctx, big.c_str(), big.size()), std::bad_alloc);
    EXPECT_THROW(Memdup(ctx, big.data(), big.size()), std::bad_alloc);
    EXPECT_EQ(handler_calls, 4);
    EXPECT_EQ(TryPrintf(ctx, "%s!", big), nullptr);
    EXPECT_EQ(TryStrCat(ctx, big), nullptr);
    EXPECT_EQ(TryStrndup(ctx, big.c_str(), big.size()), nullptr);
    EXPECT_EQ(TryMemdup(ctx, big.data(), big.size()), nullptr);
    EXPECT_EQ(ctx->last_failure(), Failure::kOutOfMemory);
    EXPECT_EQ(handler_calls, 4);  // Try forms do not call it
    EXPECT_EQ(ctx->num_blocks(), blocks);
    EXPECT_EQ(ctx->bytes_in_blocks(), bytes);
    std::string error;
    EXPECT_TRUE(ctx->Check(&error)) << error;
    source.Heal();
    EXPECT_EQ(std::string(Printf(ctx, "%s!", big)), big + "!");
    ctx->Destroy();
    EXPECT_EQ(source.live_blocks(), 0);
  }
}

// A limit refuses the result's chunk like any other.
TEST(StringsFailureTest, LimitRefusesTheResult) {
  ContextOptions o;
  o.limit = 16 * 1024;
  Context* ctx = Context::Create(nullptr, "limited", PoolKind(), o);
  std::string big(64 * 1024, 'l');
  EXPECT_THROW(Printf(ctx, "%s", big), std::bad_alloc);
  EXPECT_EQ(ctx->last_failure(), Failure::kLimit);
  EXPECT_EQ(TryStrCat(ctx, big, big), nullptr);
  EXPECT_EQ(ctx->last_failure(), Failure::kLimit);
  EXPECT_STREQ(Printf(ctx, "%d", 5), "5");
  ctx->Destroy();
}

// Checking builds record the helper's caller as the chunk's site.
TEST(StringsSiteTest, TheCallerIsTheSite) {
  if (!internal::kChecking) GTEST_SKIP() << "sites are kept in checking builds";
  Context* ctx = CreateFreelistContext(nullptr, "sites");
  Printf(ctx, "%d", 1);  const int kLine = __LINE__;
  StrCat(ctx, "a", "b", 3);  const int kLineCat = __LINE__;
  LiveChunkSummary s = SummarizeLiveChunks(ctx);
  ASSERT_EQ(s.sites.size(), 2u);
  EXPECT_EQ(s.sites[0].site.line(), kLineCat);  // 4 bytes before 2
  EXPECT_EQ(s.sites[1].site.line(), kLine);
  EXPECT_STREQ(s.sites[1].site.file(), __FILE__);
  ctx->Destroy();
}

}  // namespace
}  // namespace mcx
