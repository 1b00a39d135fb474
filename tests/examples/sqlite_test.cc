// Tests for examples/sqlite: SQLite with its memory in an mcx context.
//
// SQLite's allocator is process-wide and can only be changed while SQLite is
// shut down, so every test installs the allocator itself and removes it
// (sqlite3_shutdown) before the next test starts; the fixture does both.

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "examples/sqlite/sqlite_allocator.h"
#include "examples/sqlite/sqlite_workload.h"
#include "gtest/gtest.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/kind_api.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/size_class.h"
#include "sqlite3.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace examples {
namespace {

// Smaller than the demo's 100,000 orders, to keep the sanitizer runs short.
constexpr int kTestOrders = 20000;

// Requests SQLite makes range from a few bytes to its page-cache and
// lookaside buffers; these cover every size class boundary region and
// dedicated chunks.
// Requests above this may take a free chunk of a class above their own
// (freelist.cc, kFirstReuseUpClass): chunks of a unit or more.
constexpr size_t kLargeClassRequest = 4096;

std::vector<int> RequestSizes() {
  std::vector<int> sizes;
  for (int n = 1; n <= 9000; ++n) sizes.push_back(n);
  for (int n : {8201, 10000, 65536, 65537, 120000, 1 << 20}) sizes.push_back(n);
  return sizes;
}

class SqliteAllocatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ContextOptions options;
    options.block_source = &source_;
    Install(options);
  }

  void Install(const ContextOptions& options) {
    absl::StatusOr<std::unique_ptr<SqliteAllocator>> allocator =
        SqliteAllocator::Install(nullptr, "sqlite", options);
    ASSERT_TRUE(allocator.ok()) << allocator.status();
    allocator_ = *std::move(allocator);
    ASSERT_NE(allocator_->context(), nullptr);
  }

  // Shutdown (through the allocator's destructor) destroys the context:
  // every block must be back.
  void TearDown() override {
    allocator_.reset();
    EXPECT_EQ(source_.live_blocks(), 0);
    EXPECT_EQ(source_.bad_releases(), 0);
  }

  sqlite3* Open() {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open(":memory:", &db), SQLITE_OK);
    return db;
  }

  test::CountingBlockSource source_;
  std::unique_ptr<SqliteAllocator> allocator_;
};

// The workload's answers, checked by the workload against its own figures.
TEST_F(SqliteAllocatorTest, WorkloadResultsAreRight) {
  sqlite3* db = Open();
  ASSERT_NE(db, nullptr);
  WorkloadOptions options;
  options.orders = kTestOrders;
  options.orders_per_transaction = 5000;
  WorkloadSummary summary;
  absl::Status s = RunWorkload(db, options, &summary);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(summary.orders, kTestOrders);
  EXPECT_EQ(summary.regions, 5);
  EXPECT_GT(summary.queries_checked, 2 * options.lookups);
  EXPECT_GT(allocator_->context()->bytes_in_blocks(), 0u);
  EXPECT_EQ(sqlite3_close(db), SQLITE_OK);
}

// SQLite rounds with xRoundup, allocates that, and then charges xSize: the
// two must agree, and xSize must cover the request.
TEST_F(SqliteAllocatorTest, SizeAndRoundupAnswerWhatSqliteExpects) {
  if (kDirectBuild) GTEST_SKIP() << "direct mode rounds nothing: chunk sizes are exact";
  const sqlite3_mem_methods& m = allocator_->methods();
  for (int n : RequestSizes()) {
    const int rounded = m.xRoundup(n);
    ASSERT_GE(rounded, n);
    ASSERT_EQ(m.xRoundup(rounded), rounded) << n;  // a fixed point
    void* p = m.xMalloc(rounded);
    ASSERT_NE(p, nullptr) << n;
    EXPECT_EQ(GetChunkContext(p), allocator_->context());
    const int size = m.xSize(p);
    EXPECT_GE(size, n);
    if (static_cast<size_t>(n) <= kLargeClassRequest) {
      EXPECT_EQ(size, rounded) << "request " << n;
    } else if (static_cast<size_t>(n) <= kMaxSizeClassBytes) {
      // A request of a large class may take an idle free chunk of a class
      // up to half a doubling above its own (docs/design.md): xSize then
      // reports that class, as malloc_usable_size reports glibc's extra.
      EXPECT_GE(size, rounded) << "request " << n;
      if (size != rounded) {
        EXPECT_EQ(SizeClassBytes(SizeClassOf(static_cast<size_t>(size))),
                  static_cast<size_t>(size))
            << "request " << n;
        EXPECT_LE(2 * size, 3 * rounded) << "request " << n;
      }
    } else {
      // A dedicated chunk ends where its block ends, which only the block
      // source knows; it is at least what was rounded to.
      EXPECT_GE(size, rounded) << "request " << n;
    }
    std::memset(p, 0xA5, static_cast<size_t>(size));  // all of it is usable
    m.xFree(p);
  }
}

// xRealloc keeps the bytes that fit, across classes and dedicated chunks.
TEST_F(SqliteAllocatorTest, ReallocKeepsContents) {
  const sqlite3_mem_methods& m = allocator_->methods();
  int size = 100;
  auto* p = static_cast<unsigned char*>(m.xMalloc(m.xRoundup(size)));
  ASSERT_NE(p, nullptr);
  for (int i = 0; i < size; ++i) p[i] = static_cast<unsigned char>(i * 7);
  for (int next : {200, 5000, 9000, 100000, 300000, 4000, 50}) {
    p = static_cast<unsigned char*>(m.xRealloc(p, m.xRoundup(next)));
    ASSERT_NE(p, nullptr) << next;
    const int kept = size < next ? size : next;
    for (int i = 0; i < kept; ++i) {
      ASSERT_EQ(p[i], static_cast<unsigned char>(i * 7)) << "byte " << i << " after " << next;
    }
    for (int i = kept; i < next; ++i) p[i] = static_cast<unsigned char>(i * 7);
    size = next;
  }
  m.xFree(p);
}

// SQLite's own statistics follow xSize and stay within the context.
TEST_F(SqliteAllocatorTest, MemoryUsedIsSane) {
  const int64_t at_start = sqlite3_memory_used();
  EXPECT_GE(at_start, 0);

  void* p = sqlite3_malloc(1000);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(sqlite3_msize(p), static_cast<sqlite3_uint64>(SqliteAllocator::Roundup(1000)));
  EXPECT_EQ(sqlite3_memory_used() - at_start, static_cast<int64_t>(sqlite3_msize(p)));
  sqlite3_free(p);
  EXPECT_EQ(sqlite3_memory_used(), at_start);

  sqlite3* db = Open();
  ASSERT_NE(db, nullptr);
  WorkloadOptions options;
  options.orders = kTestOrders;
  WorkloadSummary summary;
  ASSERT_TRUE(RunWorkload(db, options, &summary).ok());
  const int64_t peak = sqlite3_memory_used();
  EXPECT_GT(peak, at_start);
  // Every live chunk is inside the context's blocks, with its header.
  EXPECT_LE(static_cast<size_t>(peak),
            GetSubtreeCounters(allocator_->context()).used_bytes());
  EXPECT_GE(sqlite3_memory_highwater(0), peak);
  EXPECT_EQ(sqlite3_close(db), SQLITE_OK);
  EXPECT_EQ(sqlite3_memory_used(), at_start);
}

// sqlite3_shutdown destroys the context; the next initialization makes a
// fresh one, and SQLite works on it.
TEST_F(SqliteAllocatorTest, ShutdownReturnsEverythingAndInitializeStartsAfresh) {
  sqlite3* db = Open();
  ASSERT_NE(db, nullptr);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(100000));",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  EXPECT_GT(source_.live_blocks(), 1);
  ASSERT_EQ(sqlite3_close(db), SQLITE_OK);

  ASSERT_EQ(sqlite3_shutdown(), SQLITE_OK);
  EXPECT_EQ(allocator_->context(), nullptr);
  EXPECT_EQ(source_.live_blocks(), 0);
  EXPECT_EQ(sqlite3_memory_used(), 0);

  ASSERT_EQ(sqlite3_initialize(), SQLITE_OK);
  ASSERT_NE(allocator_->context(), nullptr);
  db = Open();
  ASSERT_NE(db, nullptr);
  EXPECT_EQ(GetChunkContext(db), allocator_->context());
  EXPECT_EQ(sqlite3_close(db), SQLITE_OK);
}

// Under a context limit SQLite fails with SQLITE_NOMEM, stays usable, and
// still gives everything back.
TEST_F(SqliteAllocatorTest, LimitMakesSqliteRunOutOfMemoryCleanly) {
  allocator_.reset();
  ContextOptions options;
  options.block_source = &source_;
  options.limit = 2 * 1024 * 1024;
  Install(options);

  sqlite3* db = Open();
  ASSERT_NE(db, nullptr);
  WorkloadOptions workload;  // 100,000 orders need several MiB
  WorkloadSummary summary;
  absl::Status s = RunWorkload(db, workload, &summary);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_LE(allocator_->context()->SubtreeBytes(), options.limit);
  // The connection survives the failure and answers.
  sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
  ASSERT_EQ(sqlite3_exec(db, "SELECT count(*) FROM customers", nullptr, nullptr, nullptr),
            SQLITE_OK);
  EXPECT_EQ(sqlite3_close(db), SQLITE_OK);
}

// The allocator can only be installed while SQLite is shut down, once.
TEST(SqliteAllocatorInstallTest, RefusedWhileSqliteIsInitializedOrAlreadyInstalled) {
  ASSERT_EQ(sqlite3_initialize(), SQLITE_OK);  // SQLite's own allocator
  absl::StatusOr<std::unique_ptr<SqliteAllocator>> late =
      SqliteAllocator::Install(nullptr, "late");
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_EQ(sqlite3_shutdown(), SQLITE_OK);

  test::CountingBlockSource source;
  ContextOptions options;
  options.block_source = &source;
  absl::StatusOr<std::unique_ptr<SqliteAllocator>> first =
      SqliteAllocator::Install(nullptr, "first", options);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::unique_ptr<SqliteAllocator>> second =
      SqliteAllocator::Install(nullptr, "second", options);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  first->reset();
  EXPECT_EQ(source.live_blocks(), 0);

  // Afterwards SQLite's previous allocator is back and works.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(":memory:", &db), SQLITE_OK);
  EXPECT_EQ(sqlite3_exec(db, "SELECT 1", nullptr, nullptr, nullptr), SQLITE_OK);
  EXPECT_EQ(sqlite3_close(db), SQLITE_OK);
  EXPECT_EQ(sqlite3_shutdown(), SQLITE_OK);
}

}  // namespace
}  // namespace examples
}  // namespace mcx
