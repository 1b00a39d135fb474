// Tutorial, part 9: the current context, PostgreSQL's CurrentMemoryContext,
// thread-local and switched by scope.

#include <cstring>

#include "docs/tutorial/check.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/current.h"
#include "mcx/freelist/freelist.h"

namespace {

// [START palloc]
// Code written PostgreSQL's way: it allocates in whatever context is current.
char* Describe(int id) {
  char* s = static_cast<char*>(mcx::CurrentAlloc(32));
  std::strcpy(s, id % 2 == 0 ? "even" : "odd");
  return s;
}
// [END palloc]

}  // namespace

int main() {
  // [START switch]
  mcx::Context* top = mcx::Context::Create(nullptr, "top", mcx::FreelistKind());
  mcx::Context* row = top->CreateChild("row", mcx::FreelistKind());
  CHECK(mcx::CurrentContext() == nullptr);    // none until one is switched to
  {
    mcx::ScopedContextSwitch in_top(top);
    char* a = Describe(1);                    // in `top`
    {
      mcx::ScopedContextSwitch in_row(row);
      char* b = Describe(2);                  // in `row`
      CHECK(mcx::GetChunkContext(b) == row);
    }                                         // back to `top`, also on an exception
    CHECK(mcx::GetChunkContext(a) == top && mcx::CurrentContext() == top);
  }
  CHECK(mcx::CurrentContext() == nullptr);
  top->Destroy();
  // [END switch]
  return 0;
}
