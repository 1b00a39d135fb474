// The thread numbers behind RemoteFreeList's owner, and AdoptContext. The
// owner is named by a number the thread keeps in a thread-local: comparing
// it costs the freeing thread one load and no call, where a thread id would
// cost a call to pthread_self or a lookup, and unlike the thread pointer it
// is never reused (remote_free.h).

#include "mcx/context/remote_free.h"

#include <atomic>
#include <cstdint>

#include "mcx/context/context.h"
#include "mcx/context/kind.h"

namespace mcx {
namespace internal {

__thread uint64_t remote_thread_number __attribute__((tls_model("initial-exec"))) = 0;

namespace {
// The last number given; the first thread numbered gets 1.
std::atomic<uint64_t> last_thread_number{0};
}  // namespace

uint64_t NumberThisThread() {
  remote_thread_number = last_thread_number.fetch_add(1, std::memory_order_relaxed) + 1;
  return remote_thread_number;
}

}  // namespace internal

void AdoptContext(Context* ctx) {
  if (ctx->kind()->remote_frees != nullptr) ctx->kind()->remote_frees(ctx)->Adopt();
}

}  // namespace mcx
