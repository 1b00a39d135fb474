// New<T>/Delete, the current context, and the stats report.

#include "mcx/context/new.h"

#include <cstdint>
#include <cstring>
#include <regex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/current.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/live_chunks.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace {

struct Tracked {
  Tracked(std::vector<std::string>* log, std::string name) : log(log), name(std::move(name)) {}
  ~Tracked() { log->push_back(name); }
  std::vector<std::string>* log;
  std::string name;  // owns heap memory: leaks if the destructor never runs
};

struct Throws {
  explicit Throws(int) { throw std::runtime_error("constructor failed"); }
  ~Throws() { ADD_FAILURE() << "destructor of a never-constructed object"; }
};

struct alignas(64) Wide {
  char bytes[64];
};

// New<T> registers the destructor; reset runs destructors newest first.
TEST(NewTest, DestructorsRunAtResetNewestFirst) {
  Context* ctx = CreatePoolContext(nullptr, "objects");
  std::vector<std::string> log;
  Tracked* a = New<Tracked>(ctx, &log, "a with a long enough name to allocate");
  New<Tracked>(ctx, &log, "b");
  EXPECT_EQ(a->name, "a with a long enough name to allocate");
  ctx->Reset();
  EXPECT_EQ(log, std::vector<std::string>({"b", "a with a long enough name to allocate"}));
  ctx->Destroy();
}

// Delete runs the destructor now and unregisters it.
TEST(NewTest, DeleteRunsTheDestructorOnce) {
  Context* ctx = CreateFreelistContext(nullptr, "objects");
  std::vector<std::string> log;
  Tracked* a = New<Tracked>(ctx, &log, "a");
  New<Tracked>(ctx, &log, "b");
  Delete(ctx, a);
  EXPECT_EQ(log, std::vector<std::string>({"a"}));
  ctx->Destroy();
  EXPECT_EQ(log, std::vector<std::string>({"a", "b"}));
}

// An object whose destructor throws is freed by Delete all the same, and
// the exception propagates; its cleanup does not run again at destroy.
struct ThrowsOnDestroy {
  explicit ThrowsOnDestroy(int* destroyed) : destroyed(destroyed) {}
  ~ThrowsOnDestroy() noexcept(false) {
    ++*destroyed;
    throw std::runtime_error("destructor");
  }
  int* destroyed;
  char payload[200] = {};
};

TEST(NewTest, DeleteFreesAnObjectWhoseDestructorThrows) {
  Context* ctx = CreateFreelistContext(nullptr, "objects");
  std::vector<std::string> log;
  Delete(ctx, New<Tracked>(ctx, &log, "t"));  // the cleanup records' memory, kept
  const size_t live = ctx->live_bytes();
  int destroyed = 0;
  ThrowsOnDestroy* obj = New<ThrowsOnDestroy>(ctx, &destroyed);
  EXPECT_GE(ctx->live_bytes(), live + sizeof(ThrowsOnDestroy));
  EXPECT_THROW(Delete(ctx, obj), std::runtime_error);
  EXPECT_EQ(destroyed, 1);
  EXPECT_EQ(ctx->live_bytes(), live);
  std::string error;
  EXPECT_TRUE(ctx->Check(&error)) << error;
  ctx->Destroy();
  EXPECT_EQ(destroyed, 1);
}

// Trivially destructible types take no cleanup; alignment is honoured.
TEST(NewTest, TrivialTypesAndAlignment) {
  Context* ctx = CreatePoolContext(nullptr, "objects");
  int* i = New<int>(ctx, 42);
  Wide* w = New<Wide>(ctx);
  EXPECT_EQ(*i, 42);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w) % 64, 0u);
  Delete(ctx, i);
  ctx->Destroy();
}

// Objects take T's alignment, so a context that packs chunks below 16
// packs them too: a packed pool lays 24-byte objects 24 bytes apart, and
// objects with a cleanup and arrays keep the alignment of what precedes
// them. Every other context gives 16.
struct Triple {
  uint64_t a, b, c;
};
struct Counted {
  explicit Counted(int* live) : live(live) { ++*live; }
  ~Counted() { --*live; }
  int* live;
  uint64_t pad[2];
};

TEST(NewTest, ObjectsPackWhereTheContextPacks) {
  PoolOptions o;
  o.chunk_alignment = 8;
  Context* packed = CreatePoolContext(nullptr, "packed", o);
  Context* plain = CreatePoolContext(nullptr, "plain");
  Triple* first = New<Triple>(packed, Triple{1, 2, 3});
  Triple* second = New<Triple>(packed, Triple{4, 5, 6});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % alignof(Triple), 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(second) % alignof(Triple), 0u);
  if (!kDirectBuild && !internal::kChecking) {
    EXPECT_EQ(reinterpret_cast<char*>(second) - reinterpret_cast<char*>(first), 24);
  }
  EXPECT_EQ(first->c + second->c, 9u);
  int live = 0;
  for (Context* ctx : {packed, plain}) {
    for (int i = 0; i < 4; ++i) {
      Counted* t = New<Counted>(ctx, &live);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t) % alignof(Counted), 0u);
      Triple* array = NewArray<Triple>(ctx, 3, Triple{7, 8, 9});
      EXPECT_EQ(reinterpret_cast<uintptr_t>(array) % alignof(Triple), 0u);
      EXPECT_EQ(array[2].c, 9u);
      Triple* t3 = New<Triple>(ctx, Triple{});
      if (ctx == plain) EXPECT_EQ(reinterpret_cast<uintptr_t>(t3) % kDefaultAlignment, 0u);
    }
  }
  EXPECT_EQ(live, 8);
  packed->Destroy();
  plain->Destroy();
  EXPECT_EQ(live, 0);
}

// A throwing constructor leaves nothing registered.
TEST(NewTest, ThrowingConstructorLeavesNothingBehind) {
  Context* ctx = CreateFreelistContext(nullptr, "objects");
  EXPECT_THROW(New<Throws>(ctx, 1), std::runtime_error);
  ctx->Destroy();  // would call ~Throws if it had been registered
}

// --- NewArray ---------------------------------------------------------------------

// Logs its index when destroyed; throws from the constructor numbered
// `throw_at` (counting every construction) if set.
struct Element {
  static std::vector<int>* log;
  static int constructed;
  static int throw_at;
  Element() : index(constructed++) {
    if (index == throw_at) throw std::runtime_error("element constructor failed");
  }
  Element(const Element& other) : index(constructed++) {
    (void)other;
    if (index == throw_at) throw std::runtime_error("element copy failed");
  }
  ~Element() { log->push_back(index); }
  int index;
  std::string payload = "long enough to live on the heap, not in the string";
};
std::vector<int>* Element::log = nullptr;
int Element::constructed = 0;
int Element::throw_at = -1;

class NewArrayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Element::log = &log_;
    Element::constructed = 0;
    Element::throw_at = -1;
  }
  void TearDown() override { Element::log = nullptr; }

  // mcx's own chunks (cleanup records) in `ctx`, where they are counted.
  static size_t Records(const Context* ctx) {
    size_t n = 0;
    for (const SiteUsage& u : SummarizeLiveChunks(ctx).sites) {
      if (u.internal) n += u.chunks;
    }
    return n;
  }
  std::vector<int> log_;
};

// One record for the whole array: elements are destroyed last to first at
// teardown, as one cleanup among the context's other objects.
TEST_F(NewArrayTest, ElementsAreDestroyedLastFirstByOneCleanup) {
  Context* ctx = CreatePoolContext(nullptr, "arrays");
  New<Element>(ctx);                         // 0
  Element* a = NewArray<Element>(ctx, 4);    // 1..4
  for (int i = 0; i < 4; ++i) EXPECT_EQ(a[i].index, i + 1);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % alignof(Element), 0u);
  if (internal::kChecking) {
    EXPECT_EQ(Records(ctx), 2u);  // one for 0, one for the array
  }
  New<Element>(ctx);                         // 5
  ctx->Reset();
  EXPECT_EQ(log_, std::vector<int>({5, 4, 3, 2, 1, 0}));
  ctx->Destroy();
  EXPECT_EQ(log_.size(), 6u);  // not again
}

// The copy form copies the value into each element.
TEST_F(NewArrayTest, CopiesTheValue) {
  Context* ctx = CreateFreelistContext(nullptr, "arrays");
  std::string* s = NewArray<std::string>(ctx, 3, std::string(40, 's'));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(s[i], std::string(40, 's'));
  int* sevens = NewArray<int>(ctx, 5, 7);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(sevens[i], 7);
  ctx->Destroy();  // the strings' heap buffers go (ASan's leak check sees it)
}

// A constructor that throws: the elements built are destroyed last first,
// nothing is registered, the chunk is freed, the exception propagates.
TEST_F(NewArrayTest, ThrowingConstructorDestroysWhatWasBuilt) {
  Context* ctx = CreateFreelistContext(nullptr, "arrays");
  const size_t free_chunks = GetCounters(ctx).free_chunks;
  Element::throw_at = 3;
  EXPECT_THROW(NewArray<Element>(ctx, 6), std::runtime_error);
  EXPECT_EQ(log_, std::vector<int>({2, 1, 0}));
  EXPECT_GT(GetCounters(ctx).free_chunks, free_chunks);  // the array's chunk
  if (internal::kChecking) {
    EXPECT_EQ(SummarizeLiveChunks(ctx).chunks, Records(ctx));  // no element chunk
  }
  Element::throw_at = 8;  // the third copy (5, 6, 7, then 8)
  Element proto;          // index 4
  EXPECT_THROW(NewArray<Element>(ctx, 5, proto), std::runtime_error);
  EXPECT_EQ(log_, std::vector<int>({2, 1, 0, 7, 6, 5}));
  log_.clear();
  ctx->Reset();  // nothing registered: no element destroyed here
  EXPECT_TRUE(log_.empty());
  ctx->Destroy();
}

// Trivially destructible elements take no record and are value-initialised;
// zero elements give a unique pointer and no record.
TEST_F(NewArrayTest, TrivialAndEmptyArraysTakeNoRecord) {
  Context* ctx = CreatePoolContext(nullptr, "arrays");
  void* dirty = ctx->AllocAligned(300 * sizeof(double), kDefaultAlignment);
  std::memset(dirty, 0xAB, 300 * sizeof(double));
  ctx->Reset();
  double* d = NewArray<double>(ctx, 300);
  if (!internal::kDirect) {
    EXPECT_EQ(static_cast<void*>(d), dirty);  // the same bytes, reused
  }
  for (int i = 0; i < 300; ++i) EXPECT_EQ(d[i], 0.0);
  Wide* w = NewArray<Wide>(ctx, 3);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w) % 64, 0u);
  Element* none = NewArray<Element>(ctx, 0);
  Element* none2 = NewArray<Element>(ctx, 0);
  EXPECT_NE(none, nullptr);
  EXPECT_NE(none, none2);
  EXPECT_EQ(Element::constructed, 0);
  if (internal::kChecking) {
    EXPECT_EQ(Records(ctx), 0u);
  }
  DeleteArray(ctx, none);
  DeleteArray(ctx, d);
  ctx->Destroy();
  EXPECT_TRUE(log_.empty());
}

// DeleteArray destroys now, last first, and not again at teardown; the
// freelist kind gets the chunk back.
TEST_F(NewArrayTest, DeleteArrayDestroysNowAndOnce) {
  Context* ctx = CreateFreelistContext(nullptr, "arrays");
  Element* a = NewArray<Element>(ctx, 3);
  Element* b = NewArray<Element>(ctx, 2);
  const size_t free_chunks = GetCounters(ctx).free_chunks;
  DeleteArray(ctx, a);
  EXPECT_EQ(log_, std::vector<int>({2, 1, 0}));
  EXPECT_GT(GetCounters(ctx).free_chunks, free_chunks);
  DeleteArray(ctx, static_cast<Element*>(nullptr));
  ctx->Destroy();
  EXPECT_EQ(log_, std::vector<int>({2, 1, 0, 4, 3}));
  (void)b;
}

struct Huge {
  char bytes[1 << 20];
};

// An element count whose bytes overflow is kBadSize; the handler runs.
TEST_F(NewArrayTest, OverflowIsABadSize) {
  Context* ctx = CreatePoolContext(nullptr, "arrays");
  const size_t blocks = ctx->num_blocks();
  EXPECT_THROW(NewArray<Huge>(ctx, ~size_t{0} / 16), std::bad_array_new_length);
  EXPECT_EQ(ctx->last_failure(), Failure::kBadSize);
  EXPECT_THROW(NewArray<Element>(ctx, ~size_t{0} / sizeof(Element)), std::bad_array_new_length);
  EXPECT_EQ(ctx->num_blocks(), blocks);
  EXPECT_EQ(Element::constructed, 0);
  ctx->Destroy();
}

// The record cannot be had (its side record is a block of its own, and the
// source fails): no element is constructed and the chunk goes back.
TEST_F(NewArrayTest, RecordFailureConstructsNothing) {
  test::FailingBlockSource source;
  ContextOptions o;
  o.block_source = &source;
  Context* ctx = Context::Create(nullptr, "arrays", FreelistKind(), o);
  const size_t free_chunks = GetCounters(ctx).free_chunks;
  source.FailFrom(1);
  EXPECT_THROW(NewArray<Element>(ctx, 2), std::bad_alloc);
  EXPECT_EQ(Element::constructed, 0);
  EXPECT_GT(GetCounters(ctx).free_chunks, free_chunks);
  source.Heal();
  Element* e = NewArray<Element>(ctx, 2);
  EXPECT_EQ(e[1].index, 1);
  ctx->Destroy();
  EXPECT_EQ(log_, std::vector<int>({1, 0}));
  EXPECT_EQ(source.live_blocks(), 0);
}

// Checking builds record the NewArray call as the chunk's site.
TEST_F(NewArrayTest, TheCallIsTheSite) {
  if (!internal::kChecking) GTEST_SKIP() << "sites are kept in checking builds";
  Context* ctx = CreateFreelistContext(nullptr, "arrays");
  NewArray<Element>(ctx, 2);  const int kLine = __LINE__;
  bool found = false;
  for (const SiteUsage& u : SummarizeLiveChunks(ctx).sites) {
    found |= !u.internal && u.site.line() == kLine && u.chunks == 1 &&
             u.bytes == internal::ArrayHeaderBytes<Element>() + 2 * sizeof(Element);
  }
  EXPECT_TRUE(found) << LiveChunksReport(ctx);
  ctx->Destroy();
}

// The current context is per thread, switched and restored in scope.
TEST(CurrentTest, ScopedSwitchRestores) {
  Context* a = CreatePoolContext(nullptr, "a");
  Context* b = CreatePoolContext(nullptr, "b");
  EXPECT_EQ(CurrentContext(), nullptr);
  {
    ScopedContextSwitch in_a(a);
    EXPECT_EQ(CurrentContext(), a);
    {
      ScopedContextSwitch in_b(b);
      char* s = CurrentStrdup("in b");
      EXPECT_EQ(CurrentContext(), b);
      EXPECT_GE(s, reinterpret_cast<char*>(b));
      EXPECT_LT(s, reinterpret_cast<char*>(b) + b->first_block_size());
    }
    EXPECT_EQ(CurrentContext(), a);
    auto* z = static_cast<char*>(CurrentAllocZero(10));
    EXPECT_EQ(z[9], 0);
  }
  EXPECT_EQ(CurrentContext(), nullptr);
  EXPECT_EQ(SwitchTo(b), nullptr);
  EXPECT_EQ(SwitchTo(nullptr), b);
  a->Destroy();
  b->Destroy();
}

TEST(CurrentDeathTest, AllocWithoutCurrentContextIsReported) {
  EXPECT_DEATH(CurrentAlloc(10), "no current context");
}

// The report has PostgreSQL's line shape, indents by depth, and summarises
// what it cuts so that the totals still add up.
TEST(StatsReportTest, TextReportShapeAndCuts) {
  Context* top = CreatePoolContext(nullptr, "top");
  Context* q = top->CreateChild("query", FreelistKind());
  for (int i = 0; i < 5; ++i) q->CreateChild("row", PoolKind())->Alloc(100);
  q->Free(q->Alloc(100));
  std::string full = StatsReport(top);
  const std::regex line(
      R"((\s*)(\w+): (\d+) total in (\d+) blocks; (\d+) free \((\d+) chunks\); (\d+) used)"
      R"(; live (\d+) \(peak (\d+)\); blocks peak (\d+))");
  std::smatch m;
  std::string first_line = full.substr(0, full.find('\n'));
  ASSERT_TRUE(std::regex_match(first_line, m, line)) << full;
  EXPECT_EQ(m[2], "top");
  EXPECT_NE(full.find("\n  query: "), std::string::npos) << full;
  EXPECT_NE(full.find("\n    row: "), std::string::npos) << full;
  EXPECT_NE(full.find("1 chunks"), std::string::npos) << full;
  ContextCounters grand = GetSubtreeCounters(top);
  EXPECT_NE(full.find("Grand total: " + std::to_string(grand.total_bytes) + " bytes in " +
                      std::to_string(grand.blocks) + " blocks"),
            std::string::npos)
      << full;

  ReportOptions cut;
  cut.max_children = 2;
  std::string limited = StatsReport(top, cut);
  EXPECT_NE(limited.find("3 more child contexts containing"), std::string::npos) << limited;
  cut.max_depth = 1;
  std::string shallow = StatsReport(top, cut);
  EXPECT_EQ(shallow.find("row:"), std::string::npos) << shallow;
  EXPECT_NE(shallow.find("    5 more child contexts containing"), std::string::npos) << shallow;
  top->Destroy();
}

TEST(StatsReportTest, JsonReportIsBalancedAndComplete) {
  Context* top = CreatePoolContext(nullptr, "top \"quoted\"");
  top->CreateChild("a", FreelistKind());
  top->CreateChild("b", PoolKind());
  ReportOptions o;
  o.format = ReportFormat::kJson;
  o.max_children = 1;
  std::string json = StatsReport(top, o);
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < json.size(); ++i) {
    char c = json[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    if (c == '{' || c == '[') ++depth;
    if (c == '}' || c == ']') --depth;
    ASSERT_GE(depth, 0);
  }
  EXPECT_EQ(depth, 0) << json;
  EXPECT_NE(json.find("\"name\": \"top \\\"quoted\\\"\""), std::string::npos) << json;
  EXPECT_NE(json.find("{\"name\": \"b\", \"kind\": \"pool\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"more_children\": {\"contexts\": 1"), std::string::npos) << json;
  EXPECT_NE(json.find("\"grand_total\": {\"contexts\": 3"), std::string::npos) << json;
  top->Destroy();
}

// JSON is UTF-8: a name's bytes that start no well-formed sequence (Latin-1,
// overlong forms, surrogates, a cut sequence) become U+FFFD; valid UTF-8 and
// the escapes pass as they are.
TEST(StatsReportTest, JsonNamesAreUtf8) {
  const std::string kFffd = "\xEF\xBF\xBD";
  const std::pair<const char*, std::string> cases[] = {
      {"caf\xC3\xA9 \xF0\x9F\x98\x80", "caf\xC3\xA9 \xF0\x9F\x98\x80"},
      {"caf\xE9", "caf" + kFffd},
      {"\xC0\xAF", kFffd + kFffd},                 // overlong '/'
      {"\xED\xA0\x80", kFffd + kFffd + kFffd},     // a surrogate
      {"\xF4\x90\x80\x80", kFffd + kFffd + kFffd + kFffd},  // above U+10FFFF
      {"end\xE2\x82", "end" + kFffd + kFffd},       // cut short
      {"tab\there", "tab\\there"},
  };
  ReportOptions o;
  o.format = ReportFormat::kJson;
  for (const auto& [name, want] : cases) {
    Context* top = CreatePoolContext(nullptr, name);
    std::string json = StatsReport(top, o);
    EXPECT_NE(json.find("{\"name\": \"" + want + "\", "), std::string::npos) << json;
    top->Destroy();
  }
}

}  // namespace
}  // namespace mcx
