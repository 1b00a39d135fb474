// File: mcx/context/owned.h
//
// RAII for contexts: `ContextPtr` owns a context and destroys it when it goes
// out of scope (as std::unique_ptr with a deleter that calls Destroy);
// `ScopedChild` creates a temporary child of a context for one scope, the
// shape of a per-call scratch context.
//
// Contract:
//   - A ContextPtr destroys its context exactly once: at destruction, at
//     `reset()`, or never after `release()`.
//   - Destroying a parent destroys its children, so a ContextPtr must not
//     own a context whose ancestor is destroyed first (the ancestor's
//     teardown frees it, and the ContextPtr would destroy it again).
//
// Example:
//
//   mcx::ContextPtr server(mcx::Context::Create(nullptr, "server", mcx::PoolKind()));
//   void Handle(Request& r) {
//     mcx::ScopedChild scratch(server.get(), "scratch", mcx::PoolKind());
//     char* buf = static_cast<char*>(scratch->Alloc(r.size));
//   }  // scratch destroyed here, even if an exception unwinds

#ifndef MCX_CONTEXT_OWNED_H_
#define MCX_CONTEXT_OWNED_H_

#include <memory>

#include "mcx/context/context.h"

namespace mcx {

struct ContextDestroyer {
  void operator()(Context* ctx) const { ctx->Destroy(); }
};

using ContextPtr = std::unique_ptr<Context, ContextDestroyer>;

class ScopedChild {
 public:
  ScopedChild(Context* parent, const char* name, const KindSpec& kind,
              const ContextOptions& options = ContextOptions())
      : ctx_(Context::Create(parent, name, kind, options)) {}
  ScopedChild(const ScopedChild&) = delete;
  ScopedChild& operator=(const ScopedChild&) = delete;
  ~ScopedChild() { ctx_->Destroy(); }

  Context* get() const { return ctx_; }
  Context* operator->() const { return ctx_; }

 private:
  Context* ctx_;
};

}  // namespace mcx

#endif  // MCX_CONTEXT_OWNED_H_
