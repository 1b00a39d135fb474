// Lua states whose memory all lives in mcx contexts:
//
//   lua host (pool)                      the host's own bookkeeping
//   +-- worker (freelist)                runs table, string and closure scripts
//   +-- sandbox (freelist, 1 MiB limit)  a runaway script hits its limit
//   +-- scratch (freelist)               abandoned: destroyed without lua_close
//
// It prints the stats report with every state alive and again at the end,
// and checks its own results: the exit status is 0 only if every check holds.
//
// Run: ./mcx bazel run //examples/lua:lua_demo

#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "examples/lua/lua_host.h"
#include "mcx/context/context.h"
#include "mcx/context/stats.h"
#include "mcx/pool/pool.h"

namespace {

int failures = 0;

void Expect(bool ok, const char* what) {
  std::printf("  [%s] %s\n", ok ? "ok" : "FAILED", what);
  if (!ok) ++failures;
}

// The sandbox's bound: room for the state and its libraries, not for a
// script that allocates without end.
constexpr size_t kSandboxLimit = size_t{1} << 20;

// Tables and strings: 10,000 formatted strings, joined, split, upper-cased
// and indexed. The joined string is 10,000 * 9 bytes plus 9,999 commas.
constexpr const char kTablesAndStrings[] = R"lua(
  local t = {}
  for i = 1, 10000 do t[i] = ("item%05d"):format(i) end
  local joined = table.concat(t, ",")
  local words = {}
  for w in joined:gmatch("[^,]+") do words[#words + 1] = w:upper() end
  local index = {}
  for i, w in ipairs(words) do index[w] = i end
  return #joined .. ":" .. #words .. ":" .. index["ITEM04242"]
)lua";
constexpr const char kTablesAndStringsResult[] = "99999:10000:4242";

// Closures: 1,000 counters with their own upvalue, each called 10 times.
// Counter i returns i, 2i, ..., 10i: 55i in all; 55 * 500500 together.
constexpr const char kClosures[] = R"lua(
  local function counter(step)
    local n = 0
    return function() n = n + step; return n end
  end
  local counters = {}
  for i = 1, 1000 do counters[i] = counter(i) end
  local total = 0
  for round = 1, 10 do
    for i = 1, #counters do total = total + counters[i]() end
  end
  return total
)lua";
constexpr const char kClosuresResult[] = "27527500";

// A runaway script: it never stops allocating.
constexpr const char kRunaway[] = R"lua(
  local t = {}
  local i = 0
  while true do i = i + 1; t[i] = ("x"):rep(100) .. i end
)lua";

// The same runaway inside pcall: the memory error is an ordinary Lua error.
constexpr const char kCaughtRunaway[] = R"lua(
  local ok, err = pcall(function()
    local t = {}
    for i = 1, 1e9 do t[i] = {i} end
  end)
  return tostring(ok) .. ": " .. err
)lua";

bool Runs(mcx::examples::LuaState* lua, const char* code, const char* expected) {
  std::string out;
  absl::Status s = lua->RunString(code, &out);
  if (!s.ok()) std::printf("  lua error: %s\n", s.ToString().c_str());
  return s.ok() && out == expected;
}

}  // namespace

int main() {
  using mcx::examples::LuaState;
  mcx::Context* host = mcx::Context::Create(nullptr, "lua host", mcx::PoolKind());

  std::printf("== a worker state runs table, string and closure scripts ==\n");
  std::unique_ptr<LuaState> worker = LuaState::Create(host, "worker");
  Expect(worker != nullptr, "the worker state was created in its own context");
  if (worker == nullptr) return 1;
  Expect(Runs(worker.get(), kTablesAndStrings, kTablesAndStringsResult),
         "tables and strings: 99999 bytes joined, 10000 words, ITEM04242 at 4242");
  Expect(Runs(worker.get(), kClosures, kClosuresResult),
         "closures: 1000 counters sum to 27527500");

  std::printf("\n== a sandboxed state with a 1 MiB limit ==\n");
  std::unique_ptr<LuaState> sandbox = LuaState::Create(host, "sandbox", kSandboxLimit);
  Expect(sandbox != nullptr, "the sandbox state was created under its limit");
  if (sandbox == nullptr) return 1;
  Expect(Runs(sandbox.get(), kCaughtRunaway, "false: not enough memory"),
         "inside pcall the memory error is caught like any other");
  absl::Status runaway = sandbox->RunString(kRunaway);
  std::printf("  runaway: %s\n", runaway.ToString().c_str());
  Expect(absl::IsResourceExhausted(runaway) && runaway.message() == "not enough memory",
         "the uncaught runaway script got Lua's \"not enough memory\"");
  Expect(sandbox->context()->SubtreeBytes() <= kSandboxLimit,
         "the sandbox's context stayed within its limit");
  Expect(Runs(sandbox.get(), "collectgarbage() return 6 * 7", "42"),
         "the sandbox carries on after the memory errors");
  Expect(Runs(worker.get(), kClosures, kClosuresResult),
         "the worker carries on, untouched by the sandbox's failure");

  std::printf("\n== an abandoned state ==\n");
  const size_t before_scratch = host->SubtreeBytes();
  std::unique_ptr<LuaState> scratch = LuaState::Create(host, "scratch");
  Expect(scratch != nullptr, "the scratch state was created");
  if (scratch == nullptr) return 1;
  Expect(Runs(scratch.get(), "big = {} for i = 1, 50000 do big[i] = 'v' .. i end return #big",
              "50000"),
         "the scratch state built a 50000-entry table");

  std::printf("\n-- stats with every state alive --\n%s", mcx::StatsReport(host).c_str());

  scratch->Abandon();
  Expect(host->SubtreeBytes() == before_scratch,
         "abandoning the scratch state gave back every block it held, without lua_close");
  scratch.reset();

  sandbox.reset();
  worker.reset();
  std::printf("\n-- stats after the states are closed --\n%s", mcx::StatsReport(host).c_str());
  Expect(host->first_child() == nullptr, "closing the states destroyed their contexts");
  host->Destroy();

  if (failures == 0) {
    std::printf("\nlua_demo: all checks passed\n");
    return 0;
  }
  std::printf("\nlua_demo: %d check(s) FAILED\n", failures);
  return 1;
}
