// File: examples/lua/lua_host.h
//
// A Lua 5.4 state whose every byte lives in an mcx freelist context. The
// state's `lua_Alloc` allocates, resizes and frees in the context, so the
// context's stats are the state's memory, a context limit bounds the state
// (Lua raises its ordinary "not enough memory" error, catchable with pcall),
// and destroying the context frees the state at once, even one that was never
// closed.
//
// Contract:
//   - `Create` makes a freelist context under `parent` (inheriting its block
//     source) and a state in it with the standard libraries open. It returns
//     nullptr if either cannot be had (e.g. a limit too small for the state).
//   - `RunString` runs a chunk of Lua source in protected mode. It never
//     throws and never lets a Lua error (a longjmp) cross C++ frames.
//   - The destructor closes the state (finalizers and to-be-closed variables
//     run, open files are closed) and then destroys the context.
//   - `Abandon` destroys the context without closing the state: all of its
//     memory goes back in one step, but nothing runs in Lua, so resources
//     held outside Lua's memory (an io.open file) are not closed.
//   - Threads: one thread at a time per state, as Lua and contexts require.
//
// Example:
//
//   std::unique_ptr<LuaState> lua =
//       LuaState::Create(host, "script", /*limit=*/1 << 20);
//   std::string out;
//   absl::Status s = lua->RunString("return ('x'):rep(3)", &out);  // "xxx"
//   std::fputs(mcx::StatsReport(host).c_str(), stdout);

#ifndef MCX_EXAMPLES_LUA_LUA_HOST_H_
#define MCX_EXAMPLES_LUA_LUA_HOST_H_

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "lua.hpp"
#include "mcx/context/context.h"

namespace mcx {
namespace examples {

class LuaState {
 public:
  // A state in a new freelist context named `name` under `parent` (nullptr:
  // a root context on the default block source). `limit` bounds the
  // context's block bytes; kNoLimit for none. nullptr on failure.
  static std::unique_ptr<LuaState> Create(Context* parent, const char* name,
                                          size_t limit = kNoLimit);

  LuaState(const LuaState&) = delete;
  LuaState& operator=(const LuaState&) = delete;

  // lua_close, then destroys the context (unless abandoned).
  ~LuaState();

  // LuaState::RunString()
  //
  // Compiles and runs `code` as a chunk named `chunk_name` (Lua's convention:
  // "=name" prints as is). On success, if `result` is not null, it receives
  // the first value the chunk returns, converted as `tostring` would ("nil"
  // if the chunk returns nothing). On failure the status is kInternal for a
  // compile or run-time error and kResourceExhausted for a memory error
  // (Lua's "not enough memory"), and carries Lua's message. The state stays
  // consistent after any failure; after a memory error, later chunks can
  // fail again until the garbage is collected, and even then until the
  // context's next sweep has given the freed space back to its blocks (the
  // freelist kind keeps freed chunks on per-class lists between sweeps).
  //
  // REQUIRES: the state was not abandoned.
  absl::Status RunString(std::string_view code, std::string* result = nullptr,
                         const char* chunk_name = "=chunk");

  // LuaState::Abandon()
  //
  // Destroys the context without lua_close: the state's memory goes back to
  // the block source in one step. Afterwards `L()` and `context()` are
  // nullptr and only the destructor may be called.
  void Abandon();

  lua_State* L() const { return state_; }
  Context* context() const { return context_; }

  // The lua_Alloc function: `ud` is the Context*. Public so that other hosts
  // (and the benchmark) can hand it to lua_newstate themselves.
  static void* Allocate(void* ud, void* ptr, size_t old_size,
                        size_t new_size) noexcept;

 private:
  LuaState(Context* context, lua_State* state)
      : context_(context), state_(state) {}

  Context* context_;  // owns every byte of `state_`
  lua_State* state_;
};

}  // namespace examples
}  // namespace mcx

#endif  // MCX_EXAMPLES_LUA_LUA_HOST_H_
