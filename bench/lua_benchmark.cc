// Lua 5.4 with its memory in an mcx freelist context (examples/lua) against
// Lua's own allocator (luaL_newstate: realloc and free).
//
//   BM_LuaChurn_*      a table-and-string churn script in one long-lived
//                      state; the garbage collector frees as it goes.
//   BM_LuaHeap_*       a long-lived, collection-heavy heap: a cache of
//                      50,000 entries whose kind of value changes every
//                      round (short strings, small tables, long strings,
//                      arrays) and which shrinks to a tenth every other
//                      round. The mcx case reports the peak of the context's
//                      bytes in blocks against the peak of the interpreter's
//                      own count of bytes in use (collectgarbage "count"),
//                      both sampled every kSampleInstructions VM
//                      instructions.
//   BM_LuaLifecycle_*  a state per iteration: create, open the standard
//                      libraries, run a small script, close. The mcx case
//                      gets its blocks from the default block cache; the
//                      Abandon case skips lua_close and drops the context.
//
// Run: ./mcx bazel run -c opt //bench:lua_benchmark

#include <algorithm>
#include <cstddef>
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

// Each call is one round of `ops` cache writes: a random key of 50,000
// gets a new value of the round's kind if it is below the round's bound
// (all keys, or a tenth of them every other round), else is cleared.
constexpr const char kHeapScript[] = R"lua(
  local cache = {}
  local rnd = math.random
  math.randomseed(20261206)
  local makers = {
    function(i) return "s" .. i end,
    function(i) return { i, i + 1, i + 2, name = "t" .. i } end,
    function(i) return ("x"):rep(64 + i % 2000) .. i end,
    function(i) local t = {} for j = 1, 1 + i % 40 do t[j] = j end return t end,
  }
  function heap(round, ops)
    local make = makers[round % #makers + 1]
    local bound = (round % 2 == 0) and 50000 or 5000
    for i = 1, ops do
      local k = rnd(50000)
      if k <= bound then cache[k] = make(i) else cache[k] = nil end
    end
    return collectgarbage("count")
  end
)lua";
constexpr int kHeapOpsPerRound = 200000;
constexpr int kHeapRounds = 24;
constexpr int kSampleInstructions = 1000;

// What the count hook samples (one state at a time).
struct HeapPeaks {
  const mcx::Context* context = nullptr;
  size_t blocks = 0;  // bytes in the context's blocks
  size_t live = 0;    // the interpreter's bytes in use
};
HeapPeaks heap_peaks;

void SampleHeap(lua_State* L, lua_Debug*) {
  const size_t live = static_cast<size_t>(lua_gc(L, LUA_GCCOUNT)) * 1024 +
                      static_cast<size_t>(lua_gc(L, LUA_GCCOUNTB));
  heap_peaks.live = std::max(heap_peaks.live, live);
  if (heap_peaks.context != nullptr) {
    heap_peaks.blocks = std::max(heap_peaks.blocks, heap_peaks.context->bytes_in_blocks());
  }
}

void RunHeap(benchmark::State& state, lua_State* L, const mcx::Context* ctx) {
  heap_peaks = HeapPeaks{ctx, 0, 0};
  if (luaL_dostring(L, kHeapScript) != LUA_OK) {
    state.SkipWithError(lua_tostring(L, -1));
    return;
  }
  lua_sethook(L, &SampleHeap, LUA_MASKCOUNT, kSampleInstructions);
  int round = 0;
  for (auto _ : state) {
    lua_getglobal(L, "heap");
    lua_pushinteger(L, round++);
    lua_pushinteger(L, kHeapOpsPerRound);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
      state.SkipWithError(lua_tostring(L, -1));
      break;
    }
    lua_pop(L, 1);
  }
  lua_sethook(L, nullptr, 0, 0);
  state.SetItemsProcessed(state.iterations() * kHeapOpsPerRound);
  state.counters["live_peak_MiB"] = static_cast<double>(heap_peaks.live) / (1 << 20);
  if (ctx != nullptr) {
    state.counters["blocks_peak_MiB"] = static_cast<double>(heap_peaks.blocks) / (1 << 20);
    state.counters["blocks_per_live"] =
        static_cast<double>(heap_peaks.blocks) / static_cast<double>(heap_peaks.live);
  }
}

void BM_LuaHeap_McxFreelist(benchmark::State& state) {
  std::unique_ptr<LuaState> lua = LuaState::Create(nullptr, "bench");
  if (lua == nullptr) {
    state.SkipWithError("LuaState::Create failed");
    return;
  }
  RunHeap(state, lua->L(), lua->context());
}
BENCHMARK(BM_LuaHeap_McxFreelist)->Iterations(kHeapRounds)->Unit(benchmark::kMillisecond);

void BM_LuaHeap_LuaDefault(benchmark::State& state) {
  lua_State* L = luaL_newstate();
  luaL_openlibs(L);
  RunHeap(state, L, nullptr);
  lua_close(L);
}
BENCHMARK(BM_LuaHeap_LuaDefault)->Iterations(kHeapRounds)->Unit(benchmark::kMillisecond);

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
