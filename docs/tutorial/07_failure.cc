// Tutorial, part 7: failure. Try* calls return nullptr, the others call the
// failure handler and throw; the context is unchanged and usable after.

#include <cstdio>
#include <new>
#include <stdexcept>

#include "docs/tutorial/check.h"
#include "mcx/context/context.h"
#include "mcx/context/failure.h"
#include "mcx/context/config.h"
#include "mcx/context/no_alloc.h"
#include "mcx/pool/pool.h"

namespace {

// [START handler]
int handler_calls = 0;

// May log, dump a report, or throw its own exception; if it returns, the
// failing call throws.
void OnFailure(const mcx::FailureInfo& info) {
  ++handler_calls;
  std::fprintf(stderr, "context '%s': %s (%zu bytes)\n", info.context_name,
               mcx::FailureName(info.failure), info.size);
}
// [END handler]

}  // namespace

int main() {
  // [START try]
  mcx::ContextOptions options;
  options.limit = 64 * 1024;
  mcx::Context* top = mcx::Context::Create(nullptr, "top", mcx::PoolKind(), options);
  mcx::Context* query = top->CreateChild("query", mcx::PoolKind());
  void* p = query->TryAlloc(100000);           // over the limit of `top`
  CHECK(p == nullptr && query->last_failure() == mcx::Failure::kLimit);
  // [END try]

  // [START throw]
  top->SetFailureHandler(&OnFailure);          // children inherit it
  bool thrown = false;
  try {
    query->Alloc(100000);
  } catch (const std::bad_alloc&) {
    thrown = true;
  }
  CHECK(thrown && handler_calls == 1);
  CHECK(query->Alloc(100) != nullptr);         // nothing changed; still usable
  // [END throw]

  // [START kinds_of_failure]
  try {
    query->Alloc(mcx::kMaxAllocSize + 1);      // a size no allocator can serve
    CHECK(false);
  } catch (const std::bad_array_new_length&) {
    CHECK(query->last_failure() == mcx::Failure::kBadSize);
  }
  try {
    query->AllocAligned(64, 48);               // not a power of two
    CHECK(false);
  } catch (const std::invalid_argument&) {
    CHECK(query->last_failure() == mcx::Failure::kBadAlignment);
  }
  top->Destroy();
  // [END kinds_of_failure]

  // [START no_alloc]
  mcx::Context* page = mcx::Context::Create(nullptr, "page", mcx::PoolKind());
  mcx::Context* error = mcx::Context::Create(nullptr, "error", mcx::PoolKind());
  error->AllowInNoAllocScope();                // before: it may take a record
  {
    mcx::NoAllocScope critical;                // a change that must not fail halfway
    CHECK(page->TryAlloc(1 << 20) == nullptr); // would need a new block
    CHECK(page->last_failure() == mcx::Failure::kForbidden);
    CHECK((page->TryAlloc(16) == nullptr) == (MCX_CHECKING != 0));
    CHECK(error->Strdup("could not write the page") != nullptr);
  }
  CHECK(page->TryAlloc(1 << 20) != nullptr);   // allowed again
  page->Destroy();
  error->Destroy();
  // [END no_alloc]
  return 0;
}
