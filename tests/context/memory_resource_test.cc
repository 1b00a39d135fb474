// Standard containers in contexts (pmr and Allocator<T>), and the RAII
// handles.

#include "mcx/context/memory_resource.h"

#include <cstdint>
#include <limits>
#include <list>
#include <map>
#include <memory_resource>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/new.h"
#include "mcx/context/no_alloc.h"
#include "mcx/context/owned.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

class MemoryResourceTest : public ::testing::TestWithParam<bool> {
 protected:
  Context* Make() {
    ContextOptions o;
    o.block_source = &source_;
    return GetParam() ? Context::Create(nullptr, "c", PoolKind(), o)
                      : Context::Create(nullptr, "c", FreelistKind(), o);
  }
  test::CountingBlockSource source_;
};

// pmr containers allocate in the context and keep correct contents.
TEST_P(MemoryResourceTest, PmrContainersLiveInTheContext) {
  Context* ctx = Make();
  MemoryResource resource(ctx);
  {
    std::pmr::vector<int> v(&resource);
    for (int i = 0; i < 10000; ++i) v.push_back(i);
    std::pmr::string s("a string long enough to leave the small buffer", &resource);
    std::pmr::unordered_map<int, std::pmr::string> m(&resource);
    for (int i = 0; i < 1000; ++i) m.emplace(i, std::pmr::string(200, 'x', &resource));
    EXPECT_EQ(v[9999], 9999);
    EXPECT_EQ(m.at(500).size(), 200u);
    EXPECT_GT(ctx->bytes_in_blocks(), 200u * 1000u);
    EXPECT_TRUE(resource.is_equal(resource));
    MemoryResource other_view(ctx);
    EXPECT_TRUE(resource.is_equal(other_view));
  }
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// Allocator<T> serves the ordinary containers, rebinding as they need.
TEST_P(MemoryResourceTest, AllocatorServesStdContainers) {
  Context* ctx = Make();
  {
    using Str = std::basic_string<char, std::char_traits<char>, Allocator<char>>;
    Allocator<int> alloc(ctx);
    std::vector<int, Allocator<int>> v(alloc);
    for (int i = 0; i < 5000; ++i) v.push_back(i * 2);
    std::map<int, int, std::less<int>, Allocator<std::pair<const int, int>>> m(alloc);
    for (int i = 0; i < 1000; ++i) m[i] = i;
    std::list<Str, Allocator<Str>> l(alloc);
    l.emplace_back(300, 'y', Allocator<char>(ctx));
    EXPECT_EQ(v[4999], 9998);
    EXPECT_EQ(m[999], 999);
    EXPECT_EQ(l.front().size(), 300u);
    EXPECT_TRUE(Allocator<int>(ctx) == Allocator<double>(ctx));
    EXPECT_THROW(alloc.allocate(~size_t{0} / 2), std::bad_array_new_length);
  }
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// A container made with New in the context is destroyed by the reset.
TEST_P(MemoryResourceTest, ContainerDestroyedThroughReset) {
  Context* ctx = Make();
  MemoryResource resource(ctx);
  auto* m = New<std::pmr::unordered_map<int, std::pmr::vector<int>>>(ctx, &resource);
  for (int i = 0; i < 100; ++i) (*m)[i].assign(100, i);
  auto* owner_count = New<std::shared_ptr<int>>(ctx, std::make_shared<int>(1));
  std::weak_ptr<int> watch = *owner_count;
  ctx->Reset();  // runs ~unordered_map and ~shared_ptr
  EXPECT_TRUE(watch.expired());
  EXPECT_EQ(ctx->num_blocks(), 1u);
  ctx->Destroy();
  EXPECT_EQ(source_.live_blocks(), 0);
}

// A failing context makes pmr containers throw std::bad_alloc, as the
// standard requires, and leaves them intact.
TEST_P(MemoryResourceTest, LimitSurfacesAsBadAlloc) {
  Context* ctx = Make();
  ASSERT_TRUE(ctx->SetLimit(256 * 1024).ok());
  MemoryResource resource(ctx);
  {
    std::pmr::vector<char> v(&resource);  // must not outlive the context
    EXPECT_THROW(
        {
          for (;;) v.push_back('z');
        },
        std::bad_alloc);
    EXPECT_EQ(v.back(), 'z');
  }
  EXPECT_EQ(ctx->last_failure(), Failure::kLimit);
  ctx->Destroy();
}

// Every failure is a std::bad_alloc, after the failure handler: also an
// alignment above kMaxAlignment (a valid request to a memory resource) and
// a size no context serves, which AllocAligned reports as invalid
// arguments.
int container_failures = 0;

TEST_P(MemoryResourceTest, EveryFailureIsABadAllocAfterTheHandler) {
  ContextOptions o;
  o.failure_handler = [](const FailureInfo&) { ++container_failures; };
  Context* ctx = GetParam() ? Context::Create(nullptr, "c", PoolKind(), o)
                            : Context::Create(nullptr, "c", FreelistKind(), o);
  container_failures = 0;
  MemoryResource resource(ctx);
  std::pmr::memory_resource* r = &resource;
  EXPECT_THROW(static_cast<void>(r->allocate(64, kMaxAlignment * 2)), std::bad_alloc);
  EXPECT_EQ(ctx->last_failure(), Failure::kBadAlignment);
  volatile size_t too_large = kMaxAllocSize + 1;  // not a constant the compiler warns of
  EXPECT_THROW(static_cast<void>(r->allocate(too_large, 16)), std::bad_alloc);
  Allocator<char> chars(ctx);
  EXPECT_THROW(static_cast<void>(chars.allocate(too_large)), std::bad_alloc);
  {
    NoAllocScope no_alloc;  // kForbidden, a std::logic_error from AllocAligned
    EXPECT_THROW(static_cast<void>(r->allocate(1 << 20, 16)), std::bad_alloc);
  }
  EXPECT_EQ(container_failures, 4);
  // A count whose bytes overflow size_t: the handler too, and kBadSize.
  Allocator<uint64_t> words(ctx);
  volatile size_t overflowing = std::numeric_limits<size_t>::max() / 4;
  EXPECT_THROW(static_cast<void>(words.allocate(overflowing)), std::bad_array_new_length);
  EXPECT_EQ(container_failures, 5);
  EXPECT_EQ(ctx->last_failure(), Failure::kBadSize);
  void* p = r->allocate(64, 64);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  r->deallocate(p, 64, 64);
  ctx->Destroy();
}

INSTANTIATE_TEST_SUITE_P(Kinds, MemoryResourceTest, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Pool" : "Freelist";
                         });

// ContextPtr destroys its context once; ScopedChild lives for one scope.
TEST(OwnedTest, ContextPtrAndScopedChild) {
  if (kDirectBuild) GTEST_SKIP() << "in direct mode every chunk is a block of its own";
  test::CountingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  {
    ContextPtr server(Context::Create(nullptr, "server", PoolKind(), o));
    {
      ScopedChild scratch(server.get(), "scratch", FreelistKind());
      scratch->Alloc(100);
      EXPECT_EQ(server->first_child(), scratch.get());
      EXPECT_EQ(source.live_blocks(), 2);
    }
    EXPECT_EQ(server->first_child(), nullptr);
    EXPECT_EQ(source.live_blocks(), 1);
    try {
      ScopedChild doomed(server.get(), "doomed", PoolKind());
      throw std::runtime_error("unwinding");
    } catch (const std::runtime_error&) {
    }
    EXPECT_EQ(source.live_blocks(), 1);
    ContextPtr moved = std::move(server);
    EXPECT_EQ(server, nullptr);
  }
  EXPECT_EQ(source.live_blocks(), 0);
}

}  // namespace
}  // namespace mcx
