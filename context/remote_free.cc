// The thread token behind RemoteFreeList's owner, and AdoptContext. The
// owner is named by the address of a thread-local byte: comparing it costs
// the freeing thread one load and no call, where a thread id would cost a
// call to pthread_self or a lookup.

#include "mcx/context/remote_free.h"

#include "mcx/context/context.h"
#include "mcx/context/kind.h"

namespace mcx {
namespace internal {
__thread char remote_thread_token;
}  // namespace internal

void AdoptContext(Context* ctx) {
  if (ctx->kind()->remote_frees != nullptr) ctx->kind()->remote_frees(ctx)->Adopt();
}

}  // namespace mcx
