// A Lua host whose states live in mcx contexts. Why it is built this way:
//   - Lua asks for all of its memory through one function, `lua_Alloc`, and
//     tells it the old size on every resize and free. That maps one to one
//     onto a freelist context (Alloc, sized Realloc, Free), so the context is
//     the state's heap and nothing of the state lives anywhere else.
//   - The allocator must never throw: a C++ exception unwinding through Lua's
//     C frames is undefined. It uses the Try calls only, and a nullptr makes
//     Lua run an emergency collection and then raise "not enough memory",
//     which scripts can catch with pcall like any other error.
//   - Lua errors are longjmps. Every call into Lua that can raise one runs
//     under lua_pcall, and C++ objects (the result string) are touched only
//     after lua_pcall has returned, so no longjmp crosses a C++ frame.

#include "examples/lua/lua_host.h"

#include <cstdio>
#include <cstdlib>
#include <new>

#include "absl/strings/str_cat.h"
#include "mcx/freelist/freelist.h"

namespace mcx {
namespace examples {
namespace {

// Runs only for an error outside any lua_pcall, which this host never makes;
// if it happens there is no Lua frame to return to, so stop loudly.
int Panic(lua_State* L) {
  const char* message = lua_tostring(L, -1);
  std::fprintf(stderr, "lua_host: unprotected Lua error: %s\n",
               message != nullptr ? message : "(not a string)");
  std::abort();
}

// luaL_openlibs allocates and can therefore raise a memory error, so it runs
// as a protected C function.
int OpenLibraries(lua_State* L) {
  luaL_openlibs(L);
  return 0;
}

struct Chunk {
  std::string_view code;
  const char* name;
};

// RunChunk
//
// The protected part of RunString: compile, run, convert the first result.
// luaL_tolstring allocates (and may call a __tostring metamethod), so it
// belongs inside the protection too; copying into a std::string does not
// (it may throw), so RunString does that after lua_pcall returns.
int RunChunk(lua_State* L) {
  const auto* chunk = static_cast<const Chunk*>(lua_touserdata(L, 1));
  // Mode "t": source text only. Precompiled chunks can crash the VM.
  if (luaL_loadbufferx(L, chunk->code.data(), chunk->code.size(), chunk->name,
                       "t") != LUA_OK) {
    return lua_error(L);
  }
  lua_call(L, 0, 1);
  luaL_tolstring(L, -1, nullptr);
  return 1;
}

}  // namespace

// LuaState::Allocate
//
// Lua's contract: `new_size == 0` frees (`ptr` may be null); a null `ptr`
// allocates (`old_size` then encodes the object's type, which we ignore);
// anything else resizes, and `old_size` is the size Lua asked for before, so
// the sized Realloc applies. A null return with `new_size > 0` means
// failure and leaves `ptr` untouched, which is exactly what the Try calls
// guarantee.
void* LuaState::Allocate(void* ud, void* ptr, size_t old_size,
                         size_t new_size) noexcept {
  auto* ctx = static_cast<Context*>(ud);
  if (new_size == 0) {
    ctx->Free(ptr);
    return nullptr;
  }
  if (ptr == nullptr) return ctx->TryAlloc(new_size);
  return ctx->TryRealloc(ptr, old_size, new_size);
}

// LuaState::Create
//
// Each state gets its own context rather than a shared one: the context's
// limit is then the state's limit, its stats line is the state's memory, and
// destroying it cannot touch another state.
std::unique_ptr<LuaState> LuaState::Create(Context* parent, const char* name,
                                           size_t limit) {
  ContextOptions options;
  options.limit = limit;
  Context* ctx = Context::TryCreate(parent, name, FreelistKind(), options);
  if (ctx == nullptr) return nullptr;
  lua_State* L = lua_newstate(&LuaState::Allocate, ctx);
  if (L == nullptr) {
    ctx->Destroy();
    return nullptr;
  }
  lua_atpanic(L, &Panic);
  lua_pushcfunction(L, &OpenLibraries);
  auto* host = lua_pcall(L, 0, 0, 0) == LUA_OK
                   ? new (std::nothrow) LuaState(ctx, L)
                   : nullptr;
  if (host == nullptr) {
    lua_close(L);
    ctx->Destroy();
    return nullptr;
  }
  return std::unique_ptr<LuaState>(host);
}

// LuaState::~LuaState
//
// Closing first lets finalizers and to-be-closed variables run while their
// memory is still there; the context is empty of chunks afterwards, and
// destroying it returns the blocks.
LuaState::~LuaState() {
  if (state_ != nullptr) lua_close(state_);
  if (context_ != nullptr) context_->Destroy();
}

absl::Status LuaState::RunString(std::string_view code, std::string* result,
                                 const char* chunk_name) {
  Chunk chunk{code, chunk_name};
  const int top = lua_gettop(state_);
  // Neither push allocates: Lua guarantees LUA_MINSTACK free slots.
  lua_pushcfunction(state_, &RunChunk);
  lua_pushlightuserdata(state_, &chunk);
  const int rc = lua_pcall(state_, 1, 1, 0);
  if (rc == LUA_OK) {
    if (result != nullptr) {
      size_t len = 0;
      const char* s = lua_tolstring(state_, -1, &len);  // a string already
      result->assign(s, len);
    }
    lua_settop(state_, top);
    return absl::OkStatus();
  }
  // Only a string error object is read as is: converting a number would
  // allocate, outside any protection.
  std::string message =
      lua_type(state_, -1) == LUA_TSTRING
          ? std::string(lua_tostring(state_, -1))
          : absl::StrCat("(error object is a ", luaL_typename(state_, -1),
                         " value)");
  lua_settop(state_, top);
  if (rc == LUA_ERRMEM) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

// LuaState::Abandon
//
// The point of a context: no walk over Lua's objects, no finalizers, just
// the blocks going back. The cost is that finalizers do not run, so anything
// they would have released outside Lua's heap stays held.
void LuaState::Abandon() {
  state_ = nullptr;
  if (context_ != nullptr) context_->Destroy();
  context_ = nullptr;
}

}  // namespace examples
}  // namespace mcx
