// File: mcx/context/kind.h
//
// A kind, as users meet it: a `KindSpec`, the kind's method table plus its
// options, held by value (`mcx::PoolKind(...)`, `mcx::FreelistKind(...)`),
// and the `ResetOptions` every kind honours. How a kind is written is the
// business of mcx/context/kind_api.h, which users never include.
//
// Example:
//
//   mcx::PoolOptions o;
//   o.initial_block_size = 1024;
//   mcx::KindSpec small_pools = mcx::PoolKind(o);   // store, copy, reuse
//   mcx::Context* a = mcx::Context::Create(top, "a", small_pools);
//   a->Reset(mcx::ResetOptions::KeepBytes(64 * 1024));

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
class KindSpec;
class InspectVisitor;
class LiveChunkVisitor;
class RemoteFreeList;

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

// What ChunkSize and Context::ChunkSize return when a kind cannot tell.
inline constexpr size_t kUnknownSize = ~size_t{0};

// What a kind option of 0 for the first block's size means (the pool's and
// the freelist's `initial_block_size`): the tree chooses. A root gets
// kDefaultFirstBlockSize (PostgreSQL's ALLOCSET_DEFAULT_INITSIZE). A child
// starts small, room for its header and a few small chunks, because most
// children hold little (a talloc context is a chunk of about 100 bytes), and
// then follows what its parent's children have needed: when one outgrows
// its first block, later siblings, and the children those create, start
// with twice its size, up to kDefaultFirstBlockSize.
inline constexpr size_t kDefaultFirstBlockSize = 8 * 1024;

// --- For kind authors: kind_api.h has the contract and the builder. -----------
//
// (Declared here because a context holds a pointer to its kind's table, and
// its inline fast path calls through it.)

// Bytes in a context's live chunks, as its kind keeps them (O(1)): what is
// held now, and the high-water mark since creation or the last ResetPeak.
struct LiveCounts {
  size_t live_bytes = 0;
  size_t peak_live_bytes = 0;
};

// Numbers a kind reports about one context for the stats report.
struct KindStats {
  size_t free_bytes = 0;   // bytes in blocks not handed out
  size_t free_chunks = 0;  // chunks sitting on freelists
};

// PostgreSQL's MemoryContextMethods. Build it with MakeKindMethods<Kind>()
// rather than by hand: the builder fills every field from the kind's
// members and checks their signatures at compile time.
// A first block's size and alignment (KindMethods::first_block): both in
// one call, returned in two registers.
struct FirstBlockSpec {
  size_t size;
  size_t alignment;
};

struct KindMethods {
  const char* name;         // "pool", "freelist": shown in reports
  size_t state_size;        // bytes of kind state after the context header
  size_t state_alignment;   // its alignment (KindState places it so)

  // Size and alignment of the first block, which must hold `header_bytes`
  // (context header, kind state and name) plus the kind's own needs. A size
  // of 0 refuses the options (kBadSize) before any block is acquired.
  // `learned` is the size the tree suggests where the options leave it to
  // the tree (kDefaultFirstBlockSize for a root; for a child, what its
  // parent's children needed, 0 before anything is learned).
  FirstBlockSpec (*first_block)(const void* options, size_t header_bytes, size_t learned);

  // Sets up the state in a fresh first block. [space, block_end) is the part
  // of the first block after the header. Returns false (with SetFailure) if
  // the options are invalid.
  bool (*init)(Context* ctx, const void* options, char* space, char* block_end);

  void* (*alloc)(Context* ctx, size_t size, size_t alignment);
  // `alloc`, then, if it returned nullptr, the tree's failure path for the
  // call, which throws (index 0) or returns nullptr (index 1; Context's
  // AllocFlags). MakeKindMethods builds both, so that a release build's
  // allocation slow path is one indirect tail call, in which a kind's
  // AllocFast (kind_api.h) serves what it can without saving a register.
  void* (*alloc_or_refuse[2])(Context* ctx, size_t size, size_t alignment);
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
  // (inspect.h has the protocol). Must not change the context.
  void (*inspect)(const Context* ctx, InspectVisitor* visitor);
  // Optional; nullptr if the kind does not keep allocation sites. Called in
  // checking builds only: reports every chunk handed out and not freed,
  // with its requested bytes and site, to `visitor` (kind_api.h). Must not
  // change the context.
  void (*visit_live_chunks)(const Context* ctx, LiveChunkVisitor* visitor);
  // Optional; nullptr if the kind keeps no count of live bytes (the counters
  // then report live bytes as kUnknownSize). O(1): the bytes of live chunks
  // and their high-water mark. `reset_peak` starts the mark again from the
  // bytes live now.
  void (*live)(const Context* ctx, LiveCounts* out);
  void (*reset_peak)(Context* ctx);

  // Savepoints (Context::Mark, RewindTo). Optional: a kind without them
  // (`rewind` nullptr) refuses Mark with kUnsupported. `mark` writes the
  // kind's position, `mark_size` bytes (aligned to kDefaultAlignment);
  // called first with nullptr, it only answers whether this context can be
  // marked (false, with SetFailure, for options it cannot rewind),
  // changing nothing;
  // `rewind` releases every chunk and block the kind handed out since that
  // position, and cannot fail. A mark's position stays valid across
  // rewinds to it, and the position of an older mark stays valid across a
  // rewind to a newer one.
  size_t mark_size;
  bool (*mark)(Context* ctx, void* position);
  void (*rewind)(Context* ctx, const void* position);

  // Optional; nullptr for a kind whose contexts one thread uses at a time.
  // A kind whose contexts many threads use at once (mcx/shared/shared.h)
  // gives a recursive lock, which the tree takes around what it keeps for
  // the context itself: cleanup records, the side record, the child list.
  // The tree then leaves the checking build's one-thread check to the kind.
  void (*lock)(Context* ctx) = nullptr;
  void (*unlock)(Context* ctx) = nullptr;

  // Optional; nullptr for a kind without frees from other threads. The
  // context's remote-free list (remote_free.h): the tree asks it whether a
  // free comes from a thread other than the owner, which checking builds
  // then do not report as a second thread using the context.
  RemoteFreeList* (*remote_frees)(Context* ctx) = nullptr;

  // Optional; MakeKindMethods fills it. Creates a child with default
  // options (`name` not nullptr, `name_len` its length; `flags`: Context's
  // kThrow or kNoThrow), with the kind's FirstBlock and Init composed into
  // the tree's creation instead of called through this table; nullptr: the
  // tree's creation calls them. It composes the FirstBlock and Init that
  // MakeKindMethods was given: a copy of a table that replaces
  // `first_block`, `init` or the state's size must set it to nullptr.
  Context* (*create_child)(Context* parent, const char* name, size_t name_len,
                           const KindSpec& kind, unsigned flags) = nullptr;

  // Optional; nullptr for a kind whose every chunk is aligned to
  // kDefaultAlignment at least. The alignment that a plain `Alloc(size)`
  // gets on this context, for a kind that packs chunks tighter (a pool's
  // chunk_alignment 8, a slab's alignment 8). The kind is passed
  // kDefaultAlignment for `Alloc` and for `AllocAligned` up to it alike,
  // so the tree passes 2 * kDefaultAlignment instead for an `AllocAligned`
  // whose alignment this does not reach.
  size_t (*plain_alignment)(const Context* ctx, size_t size) = nullptr;

  // Optional; nullptr for a kind that keeps no chunk's requested size.
  // Called in checking builds only: the size a chunk was asked for (or
  // last resized to), where the kind keeps it, else kUnknownSize. A sized
  // `Free` with another size is then reported (a C++ sized delete through
  // a base class without a virtual destructor passes too small a one).
  size_t (*requested_size)(const Context* ctx, const void* p) = nullptr;
};

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
    // The bytes past the options are zero: a kind's own Options may extend
    // the type its users pass with fields its factory fills (the pool's
    // judgement of its options), which then read 0 in a KindSpec built
    // from the users' type alone.
    std::memset(options_ + sizeof(Options), 0, kMaxOptionsSize - sizeof(Options));
  }

  const KindMethods* methods() const { return methods_; }
  const void* options() const { return options_; }

 private:
  const KindMethods* methods_;
  alignas(std::max_align_t) unsigned char options_[kMaxOptionsSize];
};

}  // namespace mcx

#endif  // MCX_CONTEXT_KIND_H_
