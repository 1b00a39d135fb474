// Direct mode (--config=direct): every chunk a block of its own.

#include <cstdint>
#include <cstring>

#include "mcx/context/chunk.h"
#include "mcx/context/chunk_header.h"
#include "mcx/context/context.h"
#include "mcx/context/internal/context_impl.h"
#include "mcx/context/internal/extras.h"
#include "mcx/context/internal/failure.h"

namespace mcx {

//
// Every chunk is a block of its own, acquired from the context's source with
// exactly the bytes it needs, so the chunk ends where the block ends and
// AddressSanitizer's redzone follows it. The chunks of a context are on a
// doubly linked list, released at reset and destroy; limits apply as to any
// block. Layout: [padding][DirectHeader][header word][payload], the payload
// at max(64, alignment) bytes from the block's start.

struct Context::DirectHeader {
  DirectHeader* prev;
  DirectHeader* next;
  Context* owner;
  size_t block_size;  // bytes acquired
  size_t requested;
  size_t offset;      // from the block's start to the payload
};

namespace {
constexpr size_t kDirectPrefix = 64;  // header (48) + header word (8), 16-aligned
static_assert(6 * sizeof(void*) + sizeof(uint64_t) <= kDirectPrefix, "direct header");
}  // namespace

Context::DirectHeader*& Context::direct_head() {
  return reinterpret_cast<DirectHeader*&>(extras_->direct_head);
}

size_t Context::direct_bytes() const { return extras_ != nullptr ? extras_->direct_bytes : 0; }
size_t Context::direct_chunks() const { return extras_ != nullptr ? extras_->direct_chunks : 0; }

void* Context::DirectAlloc(size_t size, size_t alignment) {
  if (Extras() == nullptr) return nullptr;  // the chunk list lives there
  const size_t prefix = alignment > kDirectPrefix ? alignment : kDirectPrefix;
  const size_t want = prefix + (size == 0 ? 1 : size);
  if (!ChargeLimits(want)) {
    last_failure_ = Failure::kLimit;
    return nullptr;
  }
  Block b = internal::AcquireFrom(source_, want,
                        alignment > kMinBlockAlignment ? alignment : kMinBlockAlignment);
  if (b.ptr == nullptr) {
    UnchargeLimits(want);
    last_failure_ = Failure::kOutOfMemory;
    return nullptr;
  }
  char* payload = static_cast<char*>(b.ptr) + prefix;
  auto* h = reinterpret_cast<DirectHeader*>(payload - sizeof(uint64_t) - sizeof(DirectHeader));
  *h = DirectHeader{nullptr, direct_head(), this, want, size, prefix};
  if (direct_head() != nullptr) direct_head()->prev = h;
  direct_head() = h;
  WriteChunkHeader(payload, MakeChunkHeader(kChunkKindDirect, true, 0, sizeof(DirectHeader)));
  extras_->direct_bytes += want;
  ++extras_->direct_chunks;
  return payload;
}

void Context::DirectFree(void* p) {
  const uint64_t word = ReadChunkHeader(p);
  if (!ChunkHeaderMagicOk(word) || ChunkHeaderKind(word) != kChunkKindDirect) {
    return internal::ReportBadChunk(p, "free");
  }
  auto* h = reinterpret_cast<DirectHeader*>(static_cast<char*>(p) - sizeof(uint64_t) -
                                            sizeof(DirectHeader));
  if (h->owner != this) {
    return internal::ReportMisuse("free of chunk %p through context '%s', but it belongs to '%s'",
                                  p, name(), h->owner->name());
  }
  if (h->prev != nullptr) h->prev->next = h->next; else direct_head() = h->next;
  if (h->next != nullptr) h->next->prev = h->prev;
  extras_->direct_bytes -= h->block_size;
  --extras_->direct_chunks;
  UnchargeLimits(h->block_size);
  source_->Release(Block{static_cast<char*>(p) - h->offset, h->block_size});
}

void* Context::DirectRealloc(void* p, size_t new_size) {
  const uint64_t word = ReadChunkHeader(p);
  if (!ChunkHeaderMagicOk(word) || ChunkHeaderKind(word) != kChunkKindDirect) {
    internal::ReportBadChunk(p, "realloc");
    last_failure_ = Failure::kBadArgument;
    return nullptr;
  }
  const size_t old = DirectChunkSize(p);
  void* q = DirectAlloc(new_size, kDefaultAlignment);
  if (q == nullptr) return nullptr;
  std::memcpy(q, p, old < new_size ? old : new_size);
  DirectFree(p);
  return q;
}

size_t Context::DirectChunkSize(const void* p) const {
  return reinterpret_cast<const DirectHeader*>(static_cast<const char*>(p) - sizeof(uint64_t) -
                                               sizeof(DirectHeader))
      ->requested;
}

void Context::ReleaseDirect() {
  if (extras_ == nullptr) return;
  while (direct_head() != nullptr) {
    DirectFree(reinterpret_cast<char*>(direct_head()) + sizeof(DirectHeader) + sizeof(uint64_t));
  }
}

// mcx::Free(p) and friends reach direct chunks through their header word.
struct DirectChunkAccess {
  static Context* Owner(const void* p) {
    return reinterpret_cast<const Context::DirectHeader*>(static_cast<const char*>(p) -
                                                          sizeof(uint64_t) -
                                                          sizeof(Context::DirectHeader))
        ->owner;
  }
  static size_t Size(const void* p) { return Owner(p)->DirectChunkSize(p); }
};

void RegisterDirectChunks() {
  static const ChunkKindMethods kDirectMethods = {"direct", &DirectChunkAccess::Owner,
                                                  &DirectChunkAccess::Size};
  RegisterChunkKind(kChunkKindDirect, &kDirectMethods);
}

}  // namespace mcx
