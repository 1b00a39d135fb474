#include "mcx/context/current.h"

#include <new>

#include "mcx/context/context.h"
#include "mcx/context/internal/failure.h"

namespace mcx {
namespace {

// thread_local, not global: contexts are single-owner, and each thread
// switches among its own.
thread_local Context* current_context = nullptr;

Context* RequireCurrent(const char* what) {
  Context* ctx = current_context;
  if (ctx == nullptr) {
    internal::ReportMisuse("%s with no current context (use mcx::SwitchTo first)", what);
    throw std::bad_alloc();  // only reached if a test handler returns
  }
  return ctx;
}

}  // namespace

Context* CurrentContext() { return current_context; }

Context* SwitchTo(Context* ctx) {
  Context* previous = current_context;
  current_context = ctx;
  return previous;
}

void* CurrentAlloc(size_t size, AllocationSite site) {
  return RequireCurrent("CurrentAlloc")->Alloc(size, site);
}

void* CurrentAllocZero(size_t size, AllocationSite site) {
  return RequireCurrent("CurrentAllocZero")->AllocZero(size, site);
}

char* CurrentStrdup(std::string_view s, AllocationSite site) {
  return RequireCurrent("CurrentStrdup")->Strdup(s, site);
}

}  // namespace mcx
