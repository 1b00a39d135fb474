// New<T>/Delete, the current context, and the stats report.

#include "mcx/context/new.h"

#include <regex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "mcx/context/current.h"
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

// A throwing constructor leaves nothing registered.
TEST(NewTest, ThrowingConstructorLeavesNothingBehind) {
  Context* ctx = CreateFreelistContext(nullptr, "objects");
  EXPECT_THROW(New<Throws>(ctx, 1), std::runtime_error);
  ctx->Destroy();  // would call ~Throws if it had been registered
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
