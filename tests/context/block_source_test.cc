// Block sources: the system source's Purge gives back the whole pages of a
// range and keeps the rest; a source without Purge keeps every page.

#include "mcx/context/block_source.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/pool/pool.h"

namespace mcx {
namespace {

size_t PageBytes() { return static_cast<size_t>(::sysconf(_SC_PAGESIZE)); }

// Whether each page of [p, p + pages * page) is resident (mincore).
std::vector<bool> Resident(void* p, size_t pages) {
  std::vector<unsigned char> v(pages);
  EXPECT_EQ(::mincore(p, pages * PageBytes(), v.data()), 0);
  std::vector<bool> out;
  for (unsigned char c : v) out.push_back((c & 1) != 0);
  return out;
}

constexpr unsigned char kPattern = 0x5A;
constexpr size_t kPages = 16;

// A request no malloc serves (2 TiB) is out of memory in every build: a
// sanitizer's malloc, which would end the program instead of returning
// null, is not asked (ASan and TSan serve at most 1 TiB).
TEST(SystemBlockSourceTest, AHugeRequestIsRefusedInEveryBuild) {
  constexpr size_t kHuge = size_t{1} << 41;
  SystemBlockSource source;
  EXPECT_EQ(source.Acquire(kHuge, 16).ptr, nullptr);
  EXPECT_EQ(source.Acquire(kHuge, 4096).ptr, nullptr);
  Block b = source.Acquire(100, 16);
  ASSERT_NE(b.ptr, nullptr);
  EXPECT_EQ(source.Reallocate(b, 100, kHuge, 16).ptr, nullptr);
  source.Release(b);
  Context* ctx = Context::Create(nullptr, "huge", PoolKind());
  EXPECT_EQ(ctx->TryAlloc(kHuge), nullptr);
  EXPECT_EQ(ctx->last_failure(), Failure::kOutOfMemory);
  EXPECT_NE(ctx->TryAlloc(100), nullptr);
  ctx->Destroy();
}

// A range that starts and ends inside pages: the whole pages between go back
// (no longer resident, zero when read, usable), the partial pages at either
// end keep their bytes.
TEST(SystemBlockSourceTest, PurgeGivesBackTheWholePagesOfARange) {
  SystemBlockSource source;
  const size_t page = PageBytes();
  Block b = source.Acquire(kPages * page, page);
  ASSERT_NE(b.ptr, nullptr);
  char* base = static_cast<char*>(b.ptr);
  std::memset(base, kPattern, kPages * page);
  EXPECT_EQ(source.Purge(base + page / 2, 8 * page), 7 * page);
  const std::vector<bool> resident = Resident(base, kPages);
  EXPECT_TRUE(resident[0]);
  for (size_t i = 1; i < 8; ++i) EXPECT_FALSE(resident[i]) << "page " << i;
  EXPECT_TRUE(resident[8]);
  for (size_t i = 0; i < page; ++i) {
    ASSERT_EQ(static_cast<unsigned char>(base[i]), kPattern);
    ASSERT_EQ(static_cast<unsigned char>(base[8 * page + i]), kPattern);
  }
  for (size_t i = page; i < 8 * page; ++i) ASSERT_EQ(base[i], 0);
  std::memset(base + page, 1, 7 * page);
  EXPECT_EQ(base[4 * page], 1);
  // Less than a whole page: nothing to give back.
  EXPECT_EQ(source.Purge(base + 10, page - 20), 0u);
  EXPECT_EQ(static_cast<unsigned char>(base[10]), kPattern);
  source.Release(b);
}

// A source over memory the caller owns (here a plain array) keeps its pages:
// the default Purge gives nothing back and changes no byte.
class ArraySource final : public BlockSource {
 public:
  Block Acquire(size_t min_size, size_t alignment) override {
    (void)alignment;
    if (min_size > sizeof(bytes_)) return Block{};
    return Block{bytes_, sizeof(bytes_)};
  }
  void Release(Block block) override { (void)block; }

 private:
  alignas(64) char bytes_[8 << 12];
};

TEST(BlockSourceTest, DefaultPurgeKeepsEveryByte) {
  ArraySource source;
  Block b = source.Acquire(1, kMinBlockAlignment);
  ASSERT_NE(b.ptr, nullptr);
  std::memset(b.ptr, kPattern, b.size);
  EXPECT_EQ(source.Purge(b.ptr, b.size), 0u);
  for (size_t i = 0; i < b.size; ++i) {
    ASSERT_EQ(static_cast<unsigned char>(static_cast<char*>(b.ptr)[i]), kPattern);
  }
  source.Release(b);
}

}  // namespace
}  // namespace mcx
