// Lua 5.4 with its memory in an mcx freelist context (examples/lua) against
// Lua's own allocator (luaL_newstate: realloc and free).
//
//   BM_LuaChurn_*      a table-and-string churn script in one long-lived
//                      state; the garbage collector frees as it goes.
//   BM_LuaLifecycle_*  a state per iteration: create, open the standard
//                      libraries, run a small script, close. The mcx case
//                      gets its blocks from the default block cache; the
//                      Abandon case skips lua_close and drops the context.
//
// Run: ./mcx bazel run -c opt //bench:lua_benchmark

#include <memory>

#include "benchmark/benchmark.h"
#include "examples/lua/lua_host.h"
#include "lua.hpp"
#include "mcx/context/context.h"

namespace {

using mcx::examples::LuaState;

// Builds `n` small tables holding strings of varying length, drops every
// seventh, and returns a figure so the work cannot be skipped.
constexpr const char kChurnScript[] = R"lua(
  function churn(n)
    local t = {}
    for i = 1, n do
      t[i] = { key = "k" .. i, value = ("v"):rep(i % 32), n = i }
    end
    local s = 0
    for i = 1, n, 7 do
      s = s + #t[i].key + #t[i].value
      t[i] = nil
    end
    return s
  end
)lua";

// Enough objects per call for the collector to run several times a second.
constexpr int kChurnObjects = 1000;

constexpr const char kSmallScript[] =
    "local t = {} for i = 1, 100 do t[i] = tostring(i) end return #table.concat(t)";

void RunChurn(benchmark::State& state, lua_State* L) {
  if (luaL_dostring(L, kChurnScript) != LUA_OK) {
    state.SkipWithError(lua_tostring(L, -1));
    return;
  }
  for (auto _ : state) {
    lua_getglobal(L, "churn");
    lua_pushinteger(L, kChurnObjects);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
      state.SkipWithError(lua_tostring(L, -1));
      break;
    }
    benchmark::DoNotOptimize(lua_tointeger(L, -1));
    lua_pop(L, 1);
  }
  state.SetItemsProcessed(state.iterations() * kChurnObjects);
}

void BM_LuaChurn_McxFreelist(benchmark::State& state) {
  std::unique_ptr<LuaState> lua = LuaState::Create(nullptr, "bench");
  if (lua == nullptr) {
    state.SkipWithError("LuaState::Create failed");
    return;
  }
  RunChurn(state, lua->L());
}
BENCHMARK(BM_LuaChurn_McxFreelist);

void BM_LuaChurn_LuaDefault(benchmark::State& state) {
  lua_State* L = luaL_newstate();
  luaL_openlibs(L);
  RunChurn(state, L);
  lua_close(L);
}
BENCHMARK(BM_LuaChurn_LuaDefault);

void BM_LuaLifecycle_McxFreelist(benchmark::State& state) {
  for (auto _ : state) {
    std::unique_ptr<LuaState> lua = LuaState::Create(nullptr, "bench");
    if (lua == nullptr || luaL_dostring(lua->L(), kSmallScript) != LUA_OK) {
      state.SkipWithError("state or script failed");
      break;
    }
  }
}
BENCHMARK(BM_LuaLifecycle_McxFreelist);

void BM_LuaLifecycle_McxAbandon(benchmark::State& state) {
  for (auto _ : state) {
    std::unique_ptr<LuaState> lua = LuaState::Create(nullptr, "bench");
    if (lua == nullptr || luaL_dostring(lua->L(), kSmallScript) != LUA_OK) {
      state.SkipWithError("state or script failed");
      break;
    }
    lua->Abandon();
  }
}
BENCHMARK(BM_LuaLifecycle_McxAbandon);

void BM_LuaLifecycle_LuaDefault(benchmark::State& state) {
  for (auto _ : state) {
    lua_State* L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_dostring(L, kSmallScript) != LUA_OK) {
      state.SkipWithError("script failed");
      lua_close(L);
      break;
    }
    lua_close(L);
  }
}
BENCHMARK(BM_LuaLifecycle_LuaDefault);

}  // namespace
