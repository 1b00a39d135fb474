// File: mcx/context/kind.h
//
// How a leaf allocator ("kind") plugs into the context tree: a table of
// methods, as PostgreSQL's `MemoryContextMethods`. The tree (context.cc) calls
// only these; it never includes a kind's headers. Users meet kinds only as a
// `KindSpec` (`mcx::PoolKind(...)`, `mcx::FreelistKind(...)`).
//
// Contract for a kind implementer (docs/adding_a_kind.md has the checklist):
//   - The context header lives at the start of the context's first block; the
//     kind's state follows it (`KindState<T>(ctx)`), and the kind owns the
//     rest of the first block and every other block it acquires with
//     `Context::AcquireBlock`. It must give them back with
//     `Context::ReleaseBlock` (that keeps accounting and limits right).
//   - `alloc` returns nullptr after recording the reason with
//     `Context::SetFailure`; it never throws. Size 0 must return a unique
//     pointer. Sizes are already checked against kMaxAllocSize and alignments
//     are powers of two no larger than kMaxAlignment.
//   - `reset` empties the context and releases blocks per `ResetOptions`,
//     keeping the first block; `release_all` releases every block except the
//     first (the tree releases the first block itself).
//   - A kind may publish a bump window (`Context::SetBumpWindow`) that the
//     inline allocation fast path serves without calling the kind.
//   - Kinds whose chunks carry a chunk header (chunk_header.h) register their
//     id with `RegisterChunkKind` so `mcx::Free(p)` can dispatch.
//   - `inspect` is optional (nullptr: reports show no block detail). If set,
//     it describes every block and size class to an `InspectVisitor`
//     (inspect.h) without changing anything.
//
// Example (the shape of a kind's entry point):
//
//   const mcx::KindMethods kMyMethods = {...};
//   mcx::KindSpec MyKind(const MyOptions& o) {
//     return mcx::KindSpec(&kMyMethods, o);
//   }

#ifndef MCX_CONTEXT_KIND_H_
#define MCX_CONTEXT_KIND_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "mcx/context/config.h"  // IWYU pragma: keep (config.h: the link check)

namespace mcx {

class Context;
class InspectVisitor;

// What `Reset` keeps.
enum class ResetMode : unsigned char {
  kKeepFirstBlock,  // PostgreSQL's keeper block: release every other block
  kKeepBytes,       // keep whole blocks while their total stays <= keep_bytes
  kReleaseAll,      // release every block the context can give back
};

struct ResetOptions {
  ResetMode mode = ResetMode::kKeepFirstBlock;
  size_t keep_bytes = 0;  // for kKeepBytes; counts the first block

  static ResetOptions KeepFirstBlock() { return {}; }
  static ResetOptions KeepBytes(size_t bytes) {
    return {ResetMode::kKeepBytes, bytes};
  }
  static ResetOptions ReleaseAll() { return {ResetMode::kReleaseAll, 0}; }

  // Whether a reset keeps a further block of `block_size` bytes when `kept`
  // bytes (the first block included) are kept already. Kinds ask this for
  // each block, so every kind reads the modes the same way.
  bool KeepsBlock(size_t kept, size_t block_size) const {
    return mode == ResetMode::kKeepBytes && kept <= keep_bytes &&
           block_size <= keep_bytes - kept;
  }
};

// Numbers a kind reports about one context for the stats report.
struct KindStats {
  size_t free_bytes = 0;   // bytes in blocks not handed out
  size_t free_chunks = 0;  // chunks sitting on freelists
};

struct KindMethods {
  const char* name;       // "pool", "freelist": shown in reports
  size_t state_size;      // bytes of kind state after the context header
  size_t state_alignment;
  size_t options_size;    // bytes of the options struct in a KindSpec

  // Size and alignment of the first block, which must hold `header_bytes`
  // (context header, kind state and name) plus the kind's own needs.
  size_t (*first_block_size)(const void* options, size_t header_bytes);
  size_t (*first_block_alignment)(const void* options, size_t first_block_size);

  // Sets up the state in a fresh first block. [space, block_end) is the part
  // of the first block after the header. Returns false (with SetFailure) if
  // the options are invalid.
  bool (*init)(Context* ctx, const void* options, char* space,
               char* block_end);

  void* (*alloc)(Context* ctx, size_t size, size_t alignment);
  void (*free)(Context* ctx, void* p);
  // `old_size` is the caller's knowledge of the chunk size, or kUnknownSize.
  void* (*realloc)(Context* ctx, void* p, size_t old_size, size_t new_size);
  // Usable size of a chunk, or kUnknownSize if the kind cannot tell.
  size_t (*chunk_size)(const Context* ctx, const void* p);
  void (*reset)(Context* ctx, const ResetOptions& options);
  void (*release_all)(Context* ctx);
  void (*stats)(const Context* ctx, KindStats* out);
  // Validates internal invariants; on failure appends a description to
  // `error` and returns false.
  bool (*check)(const Context* ctx, std::string* error);
  // Optional; nullptr if the kind does not describe its blocks. Reports each
  // block (first block first), then each size class, to `visitor`
  // (inspect.h has the protocol). Must not change the context. Tables that
  // stop after `check` leave it nullptr.
  void (*inspect)(const Context* ctx, InspectVisitor* visitor);
};

inline constexpr size_t kUnknownSize = ~size_t{0};

// Methods reached from a chunk header when no context is named.
struct ChunkKindMethods {
  const char* name;
  // The context that owns a live chunk (misuse is reported for a freed one);
  // mcx::Free and mcx::Realloc then go through that context.
  Context* (*chunk_context)(const void* p);
  size_t (*chunk_size)(const void* p);
};

// Makes chunks with header id `id` dispatchable from `mcx::Free(p)`.
// Idempotent and thread-safe; reserved ids are refused (returns false).
bool RegisterChunkKind(unsigned id, const ChunkKindMethods* methods);
const ChunkKindMethods* LookupChunkKind(unsigned id);

// A kind plus its options, held by value so it can be stored and copied.
class KindSpec {
 public:
  static constexpr size_t kMaxOptionsSize = 64;

  template <typename Options>
  KindSpec(const KindMethods* methods, const Options& options)
      : methods_(methods) {
    static_assert(std::is_trivially_copyable<Options>::value,
                  "kind options are copied bytewise");
    static_assert(sizeof(Options) <= kMaxOptionsSize, "options too large");
    static_assert(alignof(Options) <= alignof(std::max_align_t), "");
    std::memcpy(options_, &options, sizeof(Options));
  }

  const KindMethods* methods() const { return methods_; }
  const void* options() const { return options_; }

 private:
  const KindMethods* methods_;
  alignas(std::max_align_t) unsigned char options_[kMaxOptionsSize];
};

// The kind state that follows the context header in the first block.
template <typename State>
State* KindState(Context* ctx);
template <typename State>
const State* KindState(const Context* ctx);

}  // namespace mcx

#endif  // MCX_CONTEXT_KIND_H_
