// Tests for examples/lua: Lua states whose memory lives in mcx contexts.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "examples/lua/lua_host.h"
#include "gtest/gtest.h"
#include "mcx/context/context.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"
#include "mcx/testing/test_block_sources.h"

namespace mcx {
namespace examples {
namespace {

// Small enough that a script can exhaust it quickly, large enough for a
// state with the standard libraries open.
constexpr size_t kSmallLimit = 256 * 1024;

class LuaHostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ContextOptions options;
    options.block_source = &source_;
    host_ = Context::Create(nullptr, "host", PoolKind(), options);
  }

  void TearDown() override {
    host_->Destroy();
    EXPECT_EQ(source_.live_blocks(), 0);
    EXPECT_EQ(source_.bad_releases(), 0);
  }

  std::string Run(LuaState* lua, const char* code) {
    std::string out;
    absl::Status s = lua->RunString(code, &out);
    EXPECT_TRUE(s.ok()) << s;
    return out;
  }

  test::CountingBlockSource source_;
  Context* host_ = nullptr;
};

// The state's context is a freelist child of the parent, named as asked.
TEST_F(LuaHostTest, StateLivesInItsOwnFreelistContext) {
  std::unique_ptr<LuaState> lua = LuaState::Create(host_, "script");
  ASSERT_NE(lua, nullptr);
  ASSERT_NE(lua->L(), nullptr);
  EXPECT_EQ(lua->context()->parent(), host_);
  EXPECT_STREQ(lua->context()->name(), "script");
  EXPECT_STREQ(lua->context()->kind_name(), "freelist");
  EXPECT_GT(lua->context()->bytes_in_blocks(), 0u);
}

// Tables, strings and their library functions, through the mcx allocator.
TEST_F(LuaHostTest, TablesAndStringsGiveCorrectResults) {
  std::unique_ptr<LuaState> lua = LuaState::Create(host_, "script");
  ASSERT_NE(lua, nullptr);
  EXPECT_EQ(Run(lua.get(), R"lua(
    local t = {}
    for i = 1, 20000 do t[i] = ("k%d"):format(i) end
    local set = {}
    for _, k in ipairs(t) do set[k] = #k end
    local total = 0
    for _, n in pairs(set) do total = total + n end
    table.sort(t)
    return total .. " " .. t[1] .. " " .. t[#t]
  )lua"),
            // 9 one-digit, 90 two-digit, ... keys, each with a "k".
            std::to_string(9 * 2 + 90 * 3 + 900 * 4 + 9000 * 5 + 10001 * 6) + " k1 k9999");
  EXPECT_EQ(Run(lua.get(), "return (('ab'):rep(1000)):gsub('b', 'cd'):len()"), "3000");
  EXPECT_EQ(Run(lua.get(), "return table.concat({1, 2, 3}, '-')"), "1-2-3");
}

// Closures keep their upvalues in the context; resized stacks and upvalue
// arrays exercise the sized realloc path.
TEST_F(LuaHostTest, ClosuresGiveCorrectResults) {
  std::unique_ptr<LuaState> lua = LuaState::Create(host_, "script");
  ASSERT_NE(lua, nullptr);
  EXPECT_EQ(Run(lua.get(), R"lua(
    local function counter(step)
      local n = 0
      return function() n = n + step; return n end
    end
    local cs = {}
    for i = 1, 500 do cs[i] = counter(i) end
    local total = 0
    for _ = 1, 4 do for i = 1, #cs do total = total + cs[i]() end end
    local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
    return total .. " " .. fib(20)
  )lua"),
            // Counter i returns i, 2i, 3i, 4i: 10i; 10 * (500 * 501 / 2).
            "1252500 6765");
}

// Globals persist between chunks of the same state, not across states.
TEST_F(LuaHostTest, StatesAreIndependent) {
  std::unique_ptr<LuaState> a = LuaState::Create(host_, "a");
  std::unique_ptr<LuaState> b = LuaState::Create(host_, "b");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  Run(a.get(), "shared = 'from a'");
  EXPECT_EQ(Run(a.get(), "return shared"), "from a");
  EXPECT_EQ(Run(b.get(), "return shared"), "nil");
}

// Compile and run-time errors come back as statuses with Lua's message.
TEST_F(LuaHostTest, ErrorsComeBackAsStatuses) {
  std::unique_ptr<LuaState> lua = LuaState::Create(host_, "script");
  ASSERT_NE(lua, nullptr);
  absl::Status syntax = lua->RunString("return +", nullptr, "=bad");
  EXPECT_EQ(syntax.code(), absl::StatusCode::kInternal);
  EXPECT_NE(syntax.message().find("bad:1:"), std::string::npos) << syntax;
  absl::Status runtime = lua->RunString("error('boom', 0)");
  EXPECT_EQ(runtime.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(runtime.message(), "boom");
  absl::Status table_error = lua->RunString("error({})");
  EXPECT_EQ(table_error.message(), "(error object is a table value)");
  EXPECT_EQ(Run(lua.get(), "return 1 + 1"), "2");
}

// A script over its limit gets Lua's own memory error; the state, the host
// and the other states carry on.
TEST_F(LuaHostTest, ScriptOverItsLimitGetsNotEnoughMemory) {
  std::unique_ptr<LuaState> limited = LuaState::Create(host_, "limited", kSmallLimit);
  std::unique_ptr<LuaState> other = LuaState::Create(host_, "other");
  ASSERT_NE(limited, nullptr);
  ASSERT_NE(other, nullptr);
  Run(other.get(), "kept = {} for i = 1, 1000 do kept[i] = i * i end");

  absl::Status s = limited->RunString(
      "local t = {} local i = 0 while true do i = i + 1 t[i] = ('x'):rep(64) .. i end");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "not enough memory");
  EXPECT_LE(limited->context()->SubtreeBytes(), kSmallLimit);

  EXPECT_EQ(Run(limited.get(), "collectgarbage() return ('y'):rep(10)"), "yyyyyyyyyy");
  EXPECT_EQ(Run(other.get(), "return kept[1000]"), "1000000");
  std::unique_ptr<LuaState> later = LuaState::Create(host_, "later");
  ASSERT_NE(later, nullptr);
  EXPECT_EQ(Run(later.get(), "return 'fine'"), "fine");
}

// Inside a script the memory error is an ordinary error that pcall catches.
TEST_F(LuaHostTest, MemoryErrorIsCatchableWithPcall) {
  std::unique_ptr<LuaState> limited = LuaState::Create(host_, "limited", kSmallLimit);
  ASSERT_NE(limited, nullptr);
  EXPECT_EQ(Run(limited.get(), R"lua(
    local ok, err = pcall(function() local t = {} for i = 1, 1e9 do t[i] = i end end)
    return tostring(ok) .. " " .. err
  )lua"),
            "false not enough memory");
  EXPECT_LE(limited->context()->SubtreeBytes(), kSmallLimit);
}

// A limit below what a state needs to start makes Create fail cleanly.
TEST_F(LuaHostTest, CreateFailsCleanlyUnderATinyLimit) {
  const int64_t before = source_.live_blocks();
  // Enough for the context's first block but not for the standard libraries.
  std::unique_ptr<LuaState> lua = LuaState::Create(host_, "tiny", 16 * 1024);
  EXPECT_EQ(lua, nullptr);
  EXPECT_EQ(host_->first_child(), nullptr);
  EXPECT_EQ(source_.live_blocks(), before);
}

// Closing the state and destroying its context gives back every block.
TEST_F(LuaHostTest, ClosingReleasesEverything) {
  const int64_t before = source_.live_blocks();
  std::unique_ptr<LuaState> lua = LuaState::Create(host_, "script");
  ASSERT_NE(lua, nullptr);
  Run(lua.get(), "t = {} for i = 1, 100000 do t[i] = tostring(i) end");
  EXPECT_GT(source_.live_blocks(), before);
  lua.reset();
  EXPECT_EQ(source_.live_blocks(), before);
  EXPECT_EQ(host_->first_child(), nullptr);
}

// An abandoned state, never closed, leaks nothing: its memory is all in the
// context. Under --config=asan LeakSanitizer checks this at exit as well.
TEST_F(LuaHostTest, AbandonedStateLeaksNothing) {
  const int64_t before = source_.live_blocks();
  std::unique_ptr<LuaState> lua = LuaState::Create(host_, "abandoned");
  ASSERT_NE(lua, nullptr);
  Run(lua.get(), R"lua(
    big = {}
    for i = 1, 50000 do big[i] = { name = 'n' .. i, f = function() return i end } end
    co = coroutine.create(function() coroutine.yield(#big) end)
    coroutine.resume(co)
  )lua");
  std::unique_ptr<LuaState> survivor = LuaState::Create(host_, "survivor");
  ASSERT_NE(survivor, nullptr);
  const int64_t with_survivor_only =
      before + static_cast<int64_t>(survivor->context()->num_blocks());

  lua->Abandon();
  EXPECT_EQ(lua->L(), nullptr);
  EXPECT_EQ(lua->context(), nullptr);
  EXPECT_EQ(source_.live_blocks(), with_survivor_only);
  EXPECT_EQ(Run(survivor.get(), "return #('still here')"), "10");
  lua.reset();  // no double destroy after Abandon
  survivor.reset();
  EXPECT_EQ(source_.live_blocks(), before);
}

// A state under a freelist parent works and goes away with it.
TEST(LuaHostParentTest, StateUnderAFreelistParent) {
  test::CountingBlockSource source;
  ContextOptions options;
  options.block_source = &source;
  Context* root = Context::Create(nullptr, "root", FreelistKind(), options);
  {
    std::unique_ptr<LuaState> lua = LuaState::Create(root, "lua");
    ASSERT_NE(lua, nullptr);
    std::string out;
    ASSERT_TRUE(lua->RunString("return 2 ^ 10", &out).ok());
    EXPECT_EQ(out, "1024.0");
  }
  root->Destroy();
  EXPECT_EQ(source.live_blocks(), 0);
}

// With no parent the state's context is a root on the default block source.
TEST(LuaHostParentTest, StateWithoutAParent) {
  std::unique_ptr<LuaState> lua = LuaState::Create(nullptr, "root lua");
  ASSERT_NE(lua, nullptr);
  EXPECT_EQ(lua->context()->parent(), nullptr);
  std::string out;
  ASSERT_TRUE(lua->RunString("return ('%d'):format(7 * 6)", &out).ok());
  EXPECT_EQ(out, "42");
}

}  // namespace
}  // namespace examples
}  // namespace mcx
