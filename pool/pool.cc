// The pool kind: nginx's ngx_pool_t (src/core/ngx_palloc.c) as a context
// kind. What is kept from nginx, and why:
//   - The pool header lives in the first block: creating a pool costs one
//     block acquisition.
//   - Small requests bump a pointer; there is no per-chunk header, so a small
//     chunk costs exactly its bytes plus alignment.
//   - `current`: a block that fails often is nearly full; once it has failed
//     more than kMaxFailures times, its next failure moves `current` past
//     it and new requests stop trying it.
//   - Requests above `max_small` would waste most of a block; they get a
//     block of their own on the large list and can be freed one by one.
//     nginx records each in a node in the pool's small memory, found by a
//     walk of the list and never freed before a reset; here the record is a
//     header in the chunk's own block, found at a fixed distance before the
//     chunk, so Free is O(1) and a long-lived pool keeps no trace of its
//     freed large chunks.
// What is added: blocks that grow from an initial to a maximum size (nginx's
// blocks all have the pool's size), a bump window in the context header (on the
// block of the latest small allocation, which need not be `current`) that
// the inline fast path serves, sized realloc, and the rewind option.

#include "mcx/pool/pool.h"

#include <cstring>
#include <new>
#include <string>
#include <type_traits>

#include "absl/base/attributes.h"
#include "mcx/context/block_list.h"
#include "mcx/context/inspect.h"
#include "mcx/context/internal/format.h"
#include "mcx/context/kind_api.h"
#include "mcx/pool/internal/pool_block.h"

#if MCX_VALGRIND && !defined(ABSL_HAVE_ADDRESS_SANITIZER)
#include <valgrind/memcheck.h>
#endif

namespace mcx {

using pool_internal::AsLargeHeader;
using pool_internal::AsPoolBlock;
using pool_internal::CheckedHeader;
using pool_internal::kLargeFreedCheck;
using pool_internal::kLargeLiveCheck;
using pool_internal::LargeHeader;
using pool_internal::Newer;
using pool_internal::PoolBlock;
using pool_internal::PoolPosition;
using pool_internal::PoolState;

namespace {

constexpr bool kChecking = kCheckingBuild;

// nginx's constant (ngx_palloc_block: `if (p->d.failed++ > 4)`). After this
// many misses a block has little room left, and every further request would
// pay a compare for it before reaching a block that fits.
constexpr uint32_t kMaxFailures = 4;

// The first block keeps at least this much room after the header, so that a
// context created with a tiny initial_block_size can still serve requests
// without an immediate second block.
constexpr size_t kMinFirstBlockSpace = 256;

// PoolOptions::chunk_alignment's packed setting: a pointer's alignment, which
// APR, nginx and PostgreSQL give every chunk on 64-bit machines.
constexpr size_t kPackedAlignment = 8;

// Alignment of a block's first usable byte; the block header is padded to it.
constexpr size_t kBlockHeaderBytes =
    (sizeof(PoolBlock) + kDefaultAlignment - 1) & ~(kDefaultAlignment - 1);

// Free, Realloc and ChunkSize read a LargeHeader's worth of bytes before any
// chunk they are given. Before a small chunk those bytes must lie in the
// pool's own live block: a later block's chunks start after its header, the
// first block's after the context header and the pool state.
static_assert(sizeof(LargeHeader) <= kBlockHeaderBytes,
              "the bytes before a small chunk of a later block are its block's");
static_assert(sizeof(LargeHeader) <= kKindStateStart + sizeof(PoolState),
              "the bytes before a small chunk of the first block are the context's");

size_t PayloadAlignment(size_t alignment) {
  return alignment > kDefaultAlignment ? alignment : kDefaultAlignment;
}

// Offset of a large chunk in its block: its header, padded so that the chunk
// gets its alignment (the block is aligned to it too).
constexpr size_t LargeChunkOffset(size_t alignment) {
  const size_t a = alignment > kDefaultAlignment ? alignment : kDefaultAlignment;
  return (sizeof(LargeHeader) + a - 1) & ~(a - 1);
}

// Bytes at the start of a released block that its source may write: the
// caching source's 16-byte node, glibc's free-list words (32 bytes in its
// large bins). A freed large chunk's check word lies beyond them, so a second
// free still reads "freed" there while the memory is not reused.
constexpr size_t kReleasedBlockScratch = 32;
static_assert(LargeChunkOffset(1) - sizeof(uintptr_t) >= kReleasedBlockScratch,
              "a freed large chunk's check word must survive its block's release");
static_assert(IsReservedChunkKind(kLargeLiveCheck & kChunkKindMask) &&
                  IsReservedChunkKind(kLargeFreedCheck & kChunkKindMask),
              "mcx::Free must refuse a large pool chunk: its check word is no chunk header");

char* AlignUp(char* p, size_t alignment) {
  uintptr_t u = reinterpret_cast<uintptr_t>(p);
  return reinterpret_cast<char*>((u + alignment - 1) & ~(uintptr_t{alignment} - 1));
}

size_t RoundUpPow2(size_t n) {
  size_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// The oldest block (the first block, unless a rewind made another current).
PoolBlock* Oldest(const PoolState* st) { return AsPoolBlock(st->blocks.head()); }

// The largest request the bump window serves (0: no window). Zero is a
// legal max_small (everything large) but not for the window. Checking builds
// send every request through the kind, which adds headers and sentinels;
// rewind mode must count every chunk; packed chunks (chunk_alignment 8) need
// an alignment the inline path does not compute. Derived, not kept: the
// state is written at every context creation.
size_t WindowMax(const PoolState* st) {
  return (st->rewind_block_size == 0 && !kChecking && st->chunk_alignment == kDefaultAlignment)
             ? st->max_small
             : 0;
}

// Where block growth starts, and restarts after a reset: the first block's
// size (whoever chose it: the options or the tree), or the one size of
// rewind mode.
// Init passes the first block's size it was given (`block_end` minus the
// context); the others read it from the context.
size_t BaseBlockSize(size_t first_block_size, const PoolState* st) {
  if (st->rewind_block_size != 0) return st->rewind_block_size;
  const size_t least = kBlockHeaderBytes + kMinFirstBlockSpace;
  return first_block_size < least ? least : first_block_size;
}
size_t BaseBlockSize(const Context* ctx, const PoolState* st) {
  return BaseBlockSize(st->rewind_block_size != 0 ? 0 : ctx->first_block_size(), st);
}

// The context's bump window is the window block's `last`: copy it back
// before any code reads the block list.
void Sync(Context* ctx, PoolState* st) {
  if (WindowMax(st) != 0) {
    st->live.Add(static_cast<size_t>(BumpPointer(ctx) - st->window->last));
    st->window->last = BumpPointer(ctx);
  }
}

void Publish(Context* ctx, PoolState* st) {
  if (size_t max = WindowMax(st); max != 0) {
    SetBumpWindow(ctx, st->window->last, st->window->end, max);
  }
}

// Const readers see the window block through the window without writing.
char* LastOf(const Context* ctx, const PoolState* st, const PoolBlock* b) {
  return (WindowMax(st) != 0 && b == st->window) ? BumpPointer(ctx) : b->last;
}

// O(1) block lookup in rewind mode: blocks are aligned to their size.
PoolBlock* BlockOf(Context* ctx, PoolState* st, const void* p) {
  uintptr_t base = reinterpret_cast<uintptr_t>(p) & ~(uintptr_t{st->rewind_block_size} - 1);
  if (base == reinterpret_cast<uintptr_t>(ctx)) return &st->first;
  return reinterpret_cast<PoolBlock*>(base);
}

bool IsSmall(const PoolState* st, size_t size, size_t alignment) {
  size_t pad = alignment > kDefaultAlignment ? alignment : 0;
  return size <= st->max_small && pad <= st->max_small - size;
}

// Moves `b` just before `current` and makes it current: a rewound block is
// empty and should be tried first.
void MakeCurrent(PoolState* st, PoolBlock* b) {
  if (b == st->current) return;
  st->blocks.Remove(&b->link);
  st->blocks.InsertBefore(&st->current->link, &b->link);
  st->current = st->window = b;
}

// What a first block would have needed to hold this context's small chunks
// and a request of `size` bytes (kind_api.h, FirstBlockOutgrown): the
// header, the bytes bumped in every block, and the request at its
// alignment. O(blocks), once per block.
size_t FirstBlockNeeded(const Context* ctx, const PoolState* st, size_t size, size_t alignment) {
  size_t needed = ctx->header_bytes() +
                  ((size + kDefaultAlignment - 1) & ~(kDefaultAlignment - 1)) +
                  (alignment > kDefaultAlignment ? alignment : 0);
  for (const PoolBlock* b = Oldest(st); b != nullptr; b = Newer(b)) {
    needed += static_cast<size_t>(LastOf(ctx, st, b) - b->start);
  }
  return needed;
}

// ngx_palloc_block: a new block at the end of the list; every block from
// `current` to the old end has failed once more.
void* AllocBlock(Context* ctx, PoolState* st, size_t size, size_t alignment) {
  size_t want = st->next_block_size;
  size_t need = kBlockHeaderBytes + size + (alignment > kDefaultAlignment ? alignment : 0);
  size_t block_alignment = kMinBlockAlignment;
  if (st->rewind_block_size != 0) {
    want = need = st->rewind_block_size;
    block_alignment = st->rewind_block_size;
  } else if (want < need) {
    want = need;
  }
  KindBlock* kb = AcquireKindBlock(ctx, want, block_alignment, need);
  if (kb == nullptr) return nullptr;
  if (FirstBlockLearns(ctx)) FirstBlockOutgrown(ctx, FirstBlockNeeded(ctx, st, size, alignment));
  char* mem = reinterpret_cast<char*>(kb);
  PoolBlock* b = AsPoolBlock(kb);
  b->start = mem + kBlockHeaderBytes;
  // In rewind mode the source's slack past the power-of-two size is not
  // used: the address mask would map it to the wrong block.
  b->end = mem + (st->rewind_block_size != 0 ? st->rewind_block_size : kb->size);
  b->failed = 0;

  for (PoolBlock* p = st->current; Newer(p) != nullptr; p = Newer(p)) {
    if (p->failed++ > kMaxFailures) st->current = Newer(p);
  }
  st->blocks.PushBack(&b->link);
  if (st->next_block_size < st->max_block_size) {
    st->next_block_size = st->next_block_size * 2 < st->max_block_size ? st->next_block_size * 2
                                                                          : st->max_block_size;
  }
  PoisonMemoryRegion(b->start, static_cast<size_t>(b->end - b->start));
  char* m = AlignUp(b->start, alignment);
  b->last = m + size;
  b->live = 1;
  st->live.Add(static_cast<size_t>(b->last - b->start));
  st->window = b;
  UnpoisonMemoryRegion(m, size);
  return m;
}

void* AllocSmall(Context* ctx, PoolState* st, size_t size, size_t alignment) {
  for (PoolBlock* p = st->current; p != nullptr; p = Newer(p)) {
    char* m = AlignUp(p->last, alignment);
    if (m <= p->end && size <= static_cast<size_t>(p->end - m)) {
      st->live.Add(static_cast<size_t>(m + size - p->last));
      p->last = m + size;
      ++p->live;
      st->window = p;
      UnpoisonMemoryRegion(m, size);
      return m;
    }
  }
  return AllocBlock(ctx, st, size, alignment);
}

// --- Large chunks ----------------------------------------------------------------

// The sentinel byte after a chunk is poisoned under ASan (and Valgrind), so
// that the chunk's usable bytes are exactly the request: a write one past it
// is reported there and then, and by the sentinel check where sanitizers
// are off.
void WriteSentinel(char* at) {
  UnpoisonMemoryRegion(at, 1);
  *at = static_cast<char>(kSentinelByte);
  PoisonMemoryRegion(at, 1);
}

bool SentinelOk(const char* at) {
  unsigned char b;
  CopyFromPoisoned(&b, at, 1);
  return b == kSentinelByte;
}

// Checking builds: a large chunk's site (kind_api.h, PendingSite), in the
// 4 bytes right after its sentinel, unaligned (the header has no spare word:
// the savepoints' serial took it). Large blocks ask for both.
constexpr size_t kLargeCheckingTail = 1 + sizeof(SiteId);  // sentinel, site

void WriteLargeSite(LargeHeader* h, SiteId site) {
  char* at = reinterpret_cast<char*>(h + 1) + h->requested + 1;
  CopyToPoisoned(at, &site, sizeof(site));
}

SiteId LargeSite(const LargeHeader* h) {
  SiteId site;
  const char* at = reinterpret_cast<const char*>(h + 1) + h->requested + 1;
  CopyFromPoisoned(&site, at, sizeof(site));
  return site;
}

// ngx_palloc_large: a block of its own, with the chunk's LargeHeader right
// before it, at the head of the large list.
void* AllocLarge(Context* ctx, PoolState* st, size_t size, size_t alignment) {
  const size_t offset = LargeChunkOffset(alignment);
  const size_t block_alignment = alignment > kMinBlockAlignment ? alignment : kMinBlockAlignment;
  size_t actual;
  // Checking builds keep the sentinel and the site after the chunk.
  char* mem = static_cast<char*>(AcquireBlock(
      ctx, offset + size + (kChecking ? kLargeCheckingTail : 0), block_alignment, &actual));
  if (mem == nullptr) return nullptr;
  char* p = mem + offset;
  auto* h = reinterpret_cast<LargeHeader*>(p - sizeof(LargeHeader));
  h->link.owner = ctx;
  h->link.size = actual;
  h->block = mem;
  h->requested = size;
  h->serial = ++st->large_serial;
  h->check = kLargeLiveCheck ^ reinterpret_cast<uintptr_t>(p);
  st->large.PushFront(&h->link);
  st->live.Add(size);
  if (kChecking) {
    WriteSentinel(p + size);
    WriteLargeSite(h, PendingSite(ctx));
  }
  return p;
}

char* PayloadOf(LargeHeader* h) { return reinterpret_cast<char*>(h + 1); }
const char* PayloadOf(const LargeHeader* h) { return reinterpret_cast<const char*>(h + 1); }

// Reads the `n` bytes before `p` (a chunk the caller gave), leaving their
// poison exactly as it was. Before a small chunk they are the tail of the
// chunk bumped before it and alignment padding, which ASan builds keep
// poisoned, often within one 8-byte granule. CopyFromPoisoned
// poisons its whole range afterwards: a live neighbour's last bytes would be
// taken from its user.
void ReadBeforeChunk(void* to, const void* p, size_t n) {
  const char* from = static_cast<const char*>(p) - n;
  if (!IsPoisoned(from, n)) {
    std::memcpy(to, from, n);
    return;
  }
#if MCX_VALGRIND && !defined(ABSL_HAVE_ADDRESS_SANITIZER)
  // Memcheck cannot be asked which bytes are addressable without reporting
  // them: read with its address errors off for the range; the copy is ours.
  VALGRIND_DISABLE_ADDR_ERROR_REPORTING_IN_RANGE(from, n);
  std::memcpy(to, from, n);
  VALGRIND_ENABLE_ADDR_ERROR_REPORTING_IN_RANGE(from, n);
  VALGRIND_MAKE_MEM_DEFINED(to, n);
#else
  // ASan keeps one shadow byte per 8-byte granule, saying how many of its
  // first bytes are addressable: within a granule the poisoned bytes run
  // from the first of them to its end. Looked at over whole granules, every
  // run of poisoned bytes ends at a granule's end, so poisoning each run
  // again restores the shadow as it was.
  constexpr uintptr_t kGranule = 8;
  const uintptr_t lo = reinterpret_cast<uintptr_t>(from) & ~(kGranule - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(from) + n + kGranule - 1) & ~(kGranule - 1);
  bool poisoned[sizeof(LargeHeader) + 2 * kGranule];
  const size_t span = static_cast<size_t>(hi - lo);
  const char* base = reinterpret_cast<const char*>(lo);
  for (size_t i = 0; i < span; ++i) poisoned[i] = IsPoisoned(base + i, 1);
  UnpoisonMemoryRegion(base, span);
  std::memcpy(to, from, n);
  for (size_t i = 0; i < span;) {
    size_t j = i;
    while (j < span && poisoned[j]) ++j;
    if (j > i) PoisonMemoryRegion(base + i, j - i);
    i = j + 1;
  }
#endif
}

// What a pointer given to Free, Realloc or ChunkSize is, by its LargeHeader.
enum class ChunkLookup {
  kSmall,     // no large chunk's check word before it: a small chunk
  kLarge,     // a live large chunk of this pool
  kReported,  // a freed large chunk, or one of another pool: misuse reported
};

// Whether `p` lies in one of the pool's blocks of small chunks. A walk of
// the blocks, taken only when the bytes before `p` look like a large
// chunk's header that does not validate.
bool InSmallBlock(const PoolState* st, const void* p) {
  for (const PoolBlock* b = Oldest(st); b != nullptr; b = Newer(b)) {
    if (p >= b->start && p < b->end) return true;
  }
  return false;
}

// Classifies `p` from the LargeHeader position right before it, trusting
// nothing it has not checked: first the check word, which must be this
// address's; then the owner; then the links, which for a live chunk point
// back at it. Only then is the header followed. For a small chunk the bytes
// read are the pool's own (the static_asserts above).
//
// A freed chunk's check word says so, and sits where a released block's
// source does not write: a second free is reported while the memory is not
// reused. But memory is reused, and the bytes before a small chunk are
// often never written (padding, or the end of the chunk before it), so a
// small chunk can sit right after a stale check word for its own address.
// Before reporting, a header that does not validate is looked for among
// the pool's blocks of small chunks, where no large chunk ever lies: found
// there, `p` is a small chunk, and a correct program is never reported.
ChunkLookup FindLarge(const Context* ctx, const PoolState* st, const void* p,
                      const char* operation, LargeHeader** out) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  uintptr_t check;
  ReadBeforeChunk(&check, p, sizeof(check));
  const bool freed = check == (kLargeFreedCheck ^ address);
  if (!freed && check != (kLargeLiveCheck ^ address)) return ChunkLookup::kSmall;
  auto* at = reinterpret_cast<LargeHeader*>(const_cast<char*>(static_cast<const char*>(p)) -
                                             sizeof(LargeHeader));
  if (!freed) {
    LargeHeader h;
    ReadBeforeChunk(&h, p, sizeof(h));
    if (h.link.owner == ctx && h.link.prev != &at->link && h.link.next != &at->link &&
        st->large.Holds(&at->link, h.link)) {
      *out = at;
      return ChunkLookup::kLarge;
    }
  }
  if (InSmallBlock(st, p)) return ChunkLookup::kSmall;
  if (!freed) {
    ReportMisuse("%s of large chunk %p through pool '%s': not a live large chunk of "
                           "this pool",
                           operation, p, ctx->name());
  } else if (std::strcmp(operation, "free") == 0) {
    ReportMisuse("double free of large chunk %p in pool '%s'", p, ctx->name());
  } else {
    ReportMisuse("%s of large chunk %p in pool '%s' after it was freed", operation, p,
                           ctx->name());
  }
  return ChunkLookup::kReported;
}

// ngx_pfree: the block goes back at once, its check word saying "freed".
void FreeLarge(Context* ctx, PoolState* st, LargeHeader* h) {
  char* p = PayloadOf(h);
  if (kChecking && !SentinelOk(p + h->requested)) {
    ReportMisuse("sentinel of large chunk %p (%zu bytes) in pool '%s' was overwritten",
                           p, h->requested, ctx->name());
  }
  st->large.Remove(&h->link);
  st->live.Remove(h->requested);
  h->check = kLargeFreedCheck ^ reinterpret_cast<uintptr_t>(p);
  ReleaseBlock(ctx, h->block, h->link.size);
}

// Resizes a large chunk's block through the source, keeping the chunk's
// offset in it (so the header moves along with the copy). The chunk it
// returns is a new allocation, moved or not: it takes the next serial and
// the head of the large list, so a rewind to a mark from before frees it
// (a chunk reallocated after a mark stays freed, as one freed after it),
// and the list stays newest first for PoolRewind.
void* ReallocLarge(Context* ctx, PoolState* st, LargeHeader* h, size_t new_size) {
  char* p = PayloadOf(h);
  const size_t offset = static_cast<size_t>(p - static_cast<char*>(h->block));
  const size_t want = offset + new_size + (kChecking ? kLargeCheckingTail : 0);
  const uintptr_t live = h->check;
  // If the source moves the block, the old one goes back saying "freed": the
  // old address is then a freed chunk. The copy carries the word along; it
  // is rewritten below.
  h->check = kLargeFreedCheck ^ reinterpret_cast<uintptr_t>(p);
  // The source may copy the kept bytes itself: none of them may be poisoned
  // (the checking build's sentinel is).
  const size_t keep = h->link.size < want ? h->link.size : want;
  UnpoisonMemoryRegion(h->block, keep);
  Block b = ReallocateBlock(ctx, Block{h->block, h->link.size}, keep, want, kMinBlockAlignment);
  if (b.ptr == nullptr) {
    h->check = live;
    if (kChecking) WriteSentinel(p + h->requested);
    return nullptr;
  }
  char* q = static_cast<char*>(b.ptr) + offset;
  auto* moved = reinterpret_cast<LargeHeader*>(q - sizeof(LargeHeader));
  st->live.Remove(moved->requested);
  st->live.Add(new_size);
  moved->block = b.ptr;
  moved->link.size = b.size;
  moved->requested = new_size;
  moved->check = kLargeLiveCheck ^ reinterpret_cast<uintptr_t>(q);
  moved->serial = ++st->large_serial;
  st->large.Replace(&moved->link);
  if (st->large.head() != &moved->link) {
    st->large.Remove(&moved->link);
    st->large.PushFront(&moved->link);
  }
  UnpoisonMemoryRegion(q, new_size);
  if (kChecking) {
    WriteSentinel(q + new_size);
    WriteLargeSite(moved, PendingSite(ctx));  // the realloc's caller
  }
  return q;
}

// --- Checking builds: a header and a sentinel for every small chunk ------------
//
// Release builds have no per-chunk header, so nothing can be checked. The
// checking build pays for one: it names the owner and the requested size,
// carries a free bit, and lets Reset, Destroy and Check() walk every chunk and
// verify its sentinel.

constexpr size_t kCheckedPrefix = sizeof(CheckedHeader) + sizeof(uint64_t);

// Region bytes for a checked chunk: prefix, worst-case alignment padding,
// payload, sentinel.
size_t CheckedRegionBytes(size_t size, size_t alignment) {
  return kCheckedPrefix + PayloadAlignment(alignment) - 1 + size + 1;
}

void* CheckedAllocSmall(Context* ctx, PoolState* st, size_t size, size_t alignment) {
  const size_t region = CheckedRegionBytes(size, alignment);
  char* r = static_cast<char*>(AllocSmall(ctx, st, region, kDefaultAlignment));
  if (r == nullptr) return nullptr;
  char* p = AlignUp(r + kCheckedPrefix, PayloadAlignment(alignment));
  CheckedHeader h{region, size, ctx, static_cast<uint32_t>(p - r), PendingSite(ctx)};
  std::memcpy(r, &h, sizeof(h));
  WriteChunkHeader(p, MakeChunkHeader(kChunkKindPoolChecking, false, 0,
                                      static_cast<uint64_t>(p - r)));
  WriteSentinel(p + size);
  // The region's padding after the sentinel is not the caller's either (and
  // ASan can poison the sentinel only if what follows it is poisoned).
  PoisonMemoryRegion(p + size, static_cast<size_t>(r + region - (p + size)));
  return p;
}

CheckedHeader ReadCheckedHeader(const void* region) {
  CheckedHeader h;
  std::memcpy(&h, region, sizeof(h));
  return h;
}

// Validates a small chunk handed to Free or Realloc; reports misuse and
// returns nullptr if it is not a live chunk of `ctx` with its sentinel intact.
const char* CheckedLiveChunk(Context* ctx, void* p, const char* operation, CheckedHeader* out) {
  uint64_t word = ReadChunkHeader(p);
  if (!ChunkHeaderMagicOk(word) || ChunkHeaderKind(word) != kChunkKindPoolChecking) {
    ReportBadChunk(p, operation);
    return nullptr;
  }
  if (ChunkHeaderIsFree(word)) {
    ReportMisuse("double free of chunk %p in pool '%s'", p, ctx->name());
    return nullptr;
  }
  const char* region = static_cast<char*>(p) - ChunkHeaderOffset(word);
  *out = ReadCheckedHeader(region);
  if (out->owner != ctx) {
    ReportMisuse("%s of chunk %p through pool '%s', but it belongs to context '%s'",
                           operation, p, ctx->name(), out->owner->name());
    return nullptr;
  }
  if (!SentinelOk(static_cast<char*>(p) + out->requested)) {
    ReportMisuse("sentinel of chunk %p (%zu bytes) in pool '%s' was overwritten: "
                           "a write past the end of the chunk",
                           p, out->requested, ctx->name());
    return nullptr;
  }
  return region;
}

// Walks the regions in [from, last) of one block (from: the start of a
// region); on the first problem appends a description to `error` and
// returns false.
bool VerifyCheckedRegions(const Context* ctx, const char* from, const char* last,
                          std::string* error) {
  for (const char* r = AlignUp(const_cast<char*>(from), kDefaultAlignment); r < last;) {
    CheckedHeader h = ReadCheckedHeader(r);
    if (h.owner != ctx || h.region < kCheckedPrefix || h.payload_offset >= h.region) {
      internal::AppendFormat(error, "pool '%s': corrupt chunk header at %p\n", ctx->name(),
                            static_cast<const void*>(r));
      return false;
    }
    const char* p = r + h.payload_offset;
    uint64_t word = ReadChunkHeader(p);
    if (!ChunkHeaderMagicOk(word) || ChunkHeaderKind(word) != kChunkKindPoolChecking) {
      internal::AppendFormat(error, "pool '%s': corrupt chunk header at %p\n", ctx->name(),
                            static_cast<const void*>(p));
      return false;
    }
    if (!ChunkHeaderIsFree(word) && !SentinelOk(p + h.requested)) {
      internal::AppendFormat(error, "pool '%s': sentinel of chunk %p (%d bytes) overwritten\n",
                            ctx->name(), static_cast<const void*>(p), h.requested);
      return false;
    }
    r = AlignUp(const_cast<char*>(r) + h.region, kDefaultAlignment);
  }
  return true;
}

// Walks every region of every block and every large chunk; on the first
// problem appends a description to `error` and returns false.
bool VerifyCheckedChunks(const Context* ctx, const PoolState* st, std::string* error) {
  for (const PoolBlock* b = Oldest(st); b != nullptr; b = Newer(b)) {
    if (!VerifyCheckedRegions(ctx, b->start, LastOf(ctx, st, b), error)) return false;
  }
  for (const KindBlock* l = st->large.head(); l != nullptr; l = l->next) {
    const LargeHeader* h = AsLargeHeader(l);
    const char* p = PayloadOf(h);
    if (!SentinelOk(p + h->requested)) {
      internal::AppendFormat(error, "pool '%s': sentinel of large chunk %p (%d bytes) overwritten\n",
                            ctx->name(), static_cast<const void*>(p), h->requested);
      return false;
    }
  }
  return true;
}

// Checking builds: every live chunk, small (its region's header) and large
// (the site before its LargeHeader), for LiveChunksReport (kind_api.h).
// Walks as VerifyCheckedChunks does; regions it cannot read end the walk of
// their block (Check() reports them).
void VisitCheckedChunks(const Context* ctx, const PoolState* st, LiveChunkVisitor* visitor) {
  if (!kChecking) return;
  for (const PoolBlock* b = Oldest(st); b != nullptr; b = Newer(b)) {
    const char* last = LastOf(ctx, st, b);
    for (const char* r = AlignUp(b->start, kDefaultAlignment); r < last;) {
      CheckedHeader h = ReadCheckedHeader(r);
      if (h.owner != ctx || h.region < kCheckedPrefix || h.payload_offset >= h.region) break;
      const char* p = r + h.payload_offset;
      if (!ChunkHeaderIsFree(ReadChunkHeader(p))) visitor->VisitChunk(p, h.requested, h.site);
      r = AlignUp(const_cast<char*>(r) + h.region, kDefaultAlignment);
    }
  }
  for (const KindBlock* l = st->large.head(); l != nullptr; l = l->next) {
    const LargeHeader* h = AsLargeHeader(l);
    visitor->VisitChunk(PayloadOf(h), h->requested, LargeSite(h));
  }
}

void VerifyOrReport(const Context* ctx, const PoolState* st) {
  if (!kChecking) return;
  std::string error;
  if (!VerifyCheckedChunks(ctx, st, &error)) {
    if (!error.empty() && error.back() == '\n') error.pop_back();
    ReportMisuse("%s", error.c_str());
  }
}

// --- Methods -------------------------------------------------------------------

// Block sizes beyond this are refused as kBadSize rather than rounded (a
// power-of-two rounding of a larger size could overflow).
constexpr size_t kMaxPoolBlockSize = size_t{1} << 40;

void* PoolAlloc(Context* ctx, PoolState* st, size_t size, size_t alignment) {
  Sync(ctx, st);
  if (size == 0) size = 1;  // unique pointers for zero-size requests
  void* p;
  if (kChecking) {
    p = IsSmall(st, CheckedRegionBytes(size, alignment), kDefaultAlignment)
            ? CheckedAllocSmall(ctx, st, size, alignment)
            : AllocLarge(ctx, st, size, alignment);
  } else {
    // Packed pools: an odd-sized chunk needs no more than chunk_alignment.
    if (alignment == kDefaultAlignment && (size & (kDefaultAlignment - 1)) != 0) {
      alignment = st->chunk_alignment;
    }
    p = IsSmall(st, size, alignment) ? AllocSmall(ctx, st, size, alignment)
                                     : AllocLarge(ctx, st, size, alignment);
  }
  Publish(ctx, st);
  return p;
}

void PoolFree(Context* ctx, PoolState* st, void* p) {
  Sync(ctx, st);
  LargeHeader* large;
  switch (FindLarge(ctx, st, p, "free", &large)) {
    case ChunkLookup::kLarge: return FreeLarge(ctx, st, large);
    case ChunkLookup::kReported: return;
    case ChunkLookup::kSmall: break;
  }
  if (kChecking) {
    CheckedHeader h;
    if (CheckedLiveChunk(ctx, p, "free", &h) == nullptr) return;
    WriteChunkHeader(p, ReadChunkHeader(p) | kChunkFreeBit);
    std::memset(p, kClobberByte, h.requested);  // stays reserved until reset
  }
  if (st->rewind_block_size == 0) return;  // small chunk: freed by reset
  PoolBlock* b = BlockOf(ctx, st, p);
  bool known = b->link.owner == ctx;
  if (kChecking && known && b != &st->first) {
    // The owner word could match by chance in foreign memory: checking
    // builds make sure the block is really on this pool's list.
    known = st->blocks.Holds(&b->link);
  }
  if (!known || p < b->start || p >= b->last || b->live == 0) {
    ReportMisuse("pool '%s': free of %p, which is not a live chunk of this pool", ctx->name(), p);
    return;
  }
  if (--b->live == 0) {
    st->live.Remove(static_cast<size_t>(b->last - b->start));
    PoisonMemoryRegion(b->start, static_cast<size_t>(b->last - b->start));
    b->last = b->start;
    b->failed = 0;
    MakeCurrent(st, b);
  }
  Publish(ctx, st);
}

void* PoolRealloc(Context* ctx, PoolState* st, void* p, size_t old_size, size_t new_size) {
  Sync(ctx, st);
  if (new_size == 0) new_size = 1;
  LargeHeader* large;
  switch (FindLarge(ctx, st, p, "realloc", &large)) {
    case ChunkLookup::kLarge: return ReallocLarge(ctx, st, large, new_size);
    case ChunkLookup::kReported:
      SetFailure(ctx, Failure::kBadArgument);
      return nullptr;
    case ChunkLookup::kSmall: break;
  }
  // Checking builds make sure of a small chunk before anything else: a
  // freed chunk (a large one's block is clobbered on release) is misuse to
  // report, not an unsupported call.
  CheckedHeader h;
  if (kChecking && CheckedLiveChunk(ctx, p, "realloc", &h) == nullptr) {
    SetFailure(ctx, Failure::kBadArgument);
    return nullptr;
  }
  if (old_size == kUnknownSize) {
    SetFailure(ctx, Failure::kUnsupported);
    return nullptr;
  }
  char* c = static_cast<char*>(p);
  PoolBlock* cur = st->window;  // the block of the last chunk bumped
  if (kChecking) {
    // No in-place tricks: a fresh checked chunk, a copy, a checked free.
    if (old_size > h.requested) {
      ReportMisuse("realloc of chunk %p in pool '%s' with old size %zu, but it holds %zu bytes",
                   p, ctx->name(), old_size, h.requested);
      old_size = h.requested;  // if the handler returns: copy only what is there
    }
  } else if (IsSmall(st, new_size, kDefaultAlignment)) {
    // In place, the chunk stays in its block: a rewinding pool's count of
    // the block's chunks is unchanged. Compared as distances, not as
    // c + old_size: a wrong old_size must not wrap the pointer.
    if (c >= cur->start && c <= cur->last && static_cast<size_t>(cur->last - c) == old_size &&
        new_size <= static_cast<size_t>(cur->end - c)) {
      cur->last = c + new_size;  // the last chunk bumped: grow or shrink in place
      if (new_size > old_size) st->live.Add(new_size - old_size);
      else st->live.Remove(old_size - new_size);
      if (new_size > old_size) UnpoisonMemoryRegion(c, new_size);
      else PoisonMemoryRegion(c + new_size, old_size - new_size);
      Publish(ctx, st);
      return p;
    }
    if (new_size <= old_size) {  // shrinking a small chunk: keep it
      PoisonMemoryRegion(c + new_size, old_size - new_size);
      return p;
    }
  }
  void* q = PoolAlloc(ctx, st, new_size, kDefaultAlignment);
  if (q == nullptr) return nullptr;
  std::memcpy(q, p, old_size < new_size ? old_size : new_size);
  PoolFree(ctx, st, p);
  // The old small chunk is dead space until the next reset.
  if (st->rewind_block_size == 0) PoisonMemoryRegion(p, old_size);
  return q;
}

// Every large chunk's block goes back, its check word saying "freed": a stale
// pointer to one is then reported as freed, not followed.
ABSL_ATTRIBUTE_NOINLINE void ReleaseLarge(Context* ctx, PoolState* st) {
  st->large.ForEach([&](KindBlock* l) {
    LargeHeader* h = AsLargeHeader(l);
    h->check = kLargeFreedCheck ^ reinterpret_cast<uintptr_t>(PayloadOf(h));
    ReleaseBlock(ctx, h->block, l->size);
  });
  st->large.Clear();
}

void PoolReset(Context* ctx, PoolState* st, const ResetOptions& options) {
  Sync(ctx, st);
  VerifyOrReport(ctx, st);
  ReleaseLarge(ctx, st);
  st->live.Clear();
  // Kept blocks follow the first block, in their order; in rewind mode the
  // first block need not have been the oldest.
  BlockList kept;
  ResetBlocks(ctx, &st->blocks, options, ctx->first_block_size(), &kept, &st->first.link);
  st->blocks.PushBack(&st->first.link);
  size_t largest = 0;
  kept.ForEach([&](KindBlock* b) {
    if (b->size > largest) largest = b->size;
    st->blocks.PushBack(b);
  });
  for (PoolBlock* b = &st->first; b != nullptr; b = Newer(b)) {
    // Clobbering writes bytes that ASan may hold poisoned: lift it first.
    UnpoisonMemoryRegion(b->start, static_cast<size_t>(b->last - b->start));
    if (kChecking) {
      // A stale pointer into a reset pool now reads 0x7F, not old data.
      std::memset(b->start, kClobberByte, static_cast<size_t>(b->last - b->start));
    }
    PoisonMemoryRegion(b->start, static_cast<size_t>(b->end - b->start));
    b->last = b->start;
    b->failed = 0;
    b->live = 0;
  }
  st->current = st->window = &st->first;
  st->next_block_size = BaseBlockSize(ctx, st);
  if (largest != 0 && st->rewind_block_size == 0) {
    st->next_block_size = largest * 2 < st->max_block_size ? largest * 2 : st->max_block_size;
  }
  Publish(ctx, st);
}

// Out of line: its calls would make every release save registers.
ABSL_ATTRIBUTE_NOINLINE void ReleaseGrownBlocks(Context* ctx, PoolState* st) {
  ReleaseBlocks(ctx, &st->blocks, &st->first.link);
  st->current = st->window = &st->first;
}

// Out of line, for the same reason.
ABSL_ATTRIBUTE_NOINLINE void ReleaseBeyondFirst(Context* ctx, PoolState* st) {
  if (!st->large.empty()) ReleaseLarge(ctx, st);
  if (!st->blocks.IsOnly(&st->first.link)) ReleaseGrownBlocks(ctx, st);
}

void PoolReleaseAll(Context* ctx, PoolState* st) {
  VerifyOrReport(ctx, st);
  // Most contexts die with their first block alone. The header's count of
  // blocks says so (every later block and large chunk is one of them)
  // without reading the state's cache lines, which a tree's release would
  // otherwise miss for every context.
  if (ABSL_PREDICT_FALSE(ctx->num_blocks() > 1)) {
    ReleaseBeyondFirst(ctx, st);
  }
}

// --- Savepoints -----------------------------------------------------------------

// Checking builds verify the regions a rewind releases, as Reset does.
void VerifyRegionsOrReport(const Context* ctx, const char* from, const char* last) {
  if (!kChecking) return;
  std::string error;
  if (!VerifyCheckedRegions(ctx, from, last, &error)) {
    if (!error.empty() && error.back() == '\n') error.pop_back();
    ReportMisuse("%s", error.c_str());
  }
}

// PoolMark
//
// Seals the pool at the newest block holding chunks: it becomes `current`
// and the window, so small requests from now on go past its `last` or to
// the blocks after it (empty until now, or acquired since). The room left
// in the blocks before it is given up until the next reset. O(the blocks
// after the window), which are usually none.
bool PoolMark(Context* ctx, PoolState* st, PoolPosition* at) {
  if (st->rewind_block_size != 0) {
    // Chunks freed one by one move blocks around the list and rewind them:
    // no position stays true.
    SetFailure(ctx, Failure::kUnsupported);
    return false;
  }
  if (at == nullptr) return true;  // only asked
  Sync(ctx, st);
  PoolBlock* sealed = st->window;
  for (PoolBlock* b = Newer(sealed); b != nullptr; b = Newer(b)) {
    if (b->last != b->start) sealed = b;
  }
  st->current = st->window = sealed;
  *at = PoolPosition{sealed,           sealed->last,         st->blocks.tail(),
                     st->large_serial, st->next_block_size,  sealed->failed};
  Publish(ctx, st);
  return true;
}

// PoolRewind
//
// Large chunks since the mark (allocated or reallocated since) are the
// newest on the large list, blocks acquired since are after the mark's
// tail, and small chunks since lie past the sealed block's `last` or in the
// blocks after it: a walk of those blocks and chunks, never of small
// chunks. The seal holds again afterwards (the mark stays valid).
void PoolRewind(Context* ctx, PoolState* st, const PoolPosition& at) {
  Sync(ctx, st);
  while (!st->large.empty()) {
    LargeHeader* h = AsLargeHeader(st->large.head());
    if (h->serial <= at.large_serial) break;
    FreeLarge(ctx, st, h);
  }
  while (st->blocks.tail() != at.tail) {
    PoolBlock* b = AsPoolBlock(st->blocks.tail());
    VerifyRegionsOrReport(ctx, b->start, b->last);
    st->live.Remove(static_cast<size_t>(b->last - b->start));
    st->blocks.Remove(&b->link);
    ReleaseKindBlock(ctx, &b->link);
  }
  for (PoolBlock* b = at.block; b != nullptr; b = Newer(b)) {
    char* from = b == at.block ? at.last : b->start;
    if (b->last > from) {
      VerifyRegionsOrReport(ctx, from, b->last);
      UnpoisonMemoryRegion(from, static_cast<size_t>(b->last - from));
      if (kChecking) std::memset(from, kClobberByte, static_cast<size_t>(b->last - from));
      PoisonMemoryRegion(from, static_cast<size_t>(b->end - from));
    }
    // A chunk from before the mark shrunk in place since leaves `last`
    // below the mark's: the bytes between stay given up, and count as held
    // again (the live tally is the bytes below every block's `last`).
    if (b->last > from) {
      st->live.Remove(static_cast<size_t>(b->last - from));
    } else {
      st->live.Add(static_cast<size_t>(from - b->last));
    }
    b->last = from;
    b->failed = 0;
  }
  at.block->failed = at.failed;
  st->current = st->window = at.block;
  st->next_block_size = at.next_block_size;
  Publish(ctx, st);
}

bool PoolCheck(const Context* ctx, const PoolState* st, std::string* error) {
  size_t blocks = 1;
  bool current_seen = false;
  for (const PoolBlock* b = Oldest(st); b != nullptr; b = Newer(b)) {
    char* last = LastOf(ctx, st, b);
    if (!st->blocks.Holds(&b->link)) {
      internal::AppendFormat(error, "pool '%s': block %p has a broken link\n", ctx->name(),
                            static_cast<const void*>(b));
      return false;
    }
    if (!(b->start <= last && last <= b->end)) {
      internal::AppendFormat(error, "pool '%s': block %p has last outside [start, end]\n",
                            ctx->name(), static_cast<const void*>(b));
      return false;
    }
    if (b == st->current) current_seen = true;
    if (b != &st->first) ++blocks;
  }
  uint64_t newer_serial = st->large_serial;
  for (const KindBlock* l = st->large.head(); l != nullptr; l = l->next) {
    const LargeHeader* h = AsLargeHeader(l);
    const char* p = PayloadOf(h);
    const char* block = static_cast<const char*>(h->block);
    if (l->owner != ctx || !st->large.Holds(l) ||
        h->check != (kLargeLiveCheck ^ reinterpret_cast<uintptr_t>(p)) ||
        p < block + sizeof(LargeHeader) || h->requested > l->size ||
        h->requested > static_cast<size_t>(block + l->size - p)) {
      internal::AppendFormat(error, "pool '%s': large chunk %p has a corrupt header\n", ctx->name(),
                            static_cast<const void*>(p));
      return false;
    }
    // Newest first: a rewind stops at the first chunk from before its mark.
    if (h->serial > newer_serial) {
      internal::AppendFormat(error, "pool '%s': large chunk %p is out of order on the large list\n",
                            ctx->name(), static_cast<const void*>(p));
      return false;
    }
    newer_serial = h->serial - 1;
    // A list that loops would never end: it cannot hold more blocks than
    // the context has.
    if (++blocks > ctx->num_blocks()) break;
  }
  if (!current_seen) {
    internal::AppendFormat(error, "pool '%s': current block is not on the block list\n",
                          ctx->name());
    return false;
  }
  if (blocks != ctx->num_blocks()) {
    internal::AppendFormat(error, "pool '%s': %d blocks on the lists but %d accounted\n",
                          ctx->name(), blocks, ctx->num_blocks());
    return false;
  }
  return !kChecking || VerifyCheckedChunks(ctx, st, error);
}

BlockInfo DescribeBlock(const Context* ctx, const PoolState* st, const PoolBlock* b) {
  const bool first = b == &st->first;
  // The first block's header is the context's, at the block's start.
  const char* base = first ? reinterpret_cast<const char*>(ctx) : reinterpret_cast<const char*>(b);
  BlockInfo info;
  info.start = base;
  info.size = first ? ctx->first_block_size() : b->link.size;
  info.header_bytes = static_cast<size_t>(b->start - base);
  info.last_offset = static_cast<size_t>(LastOf(ctx, st, b) - base);
  info.end_offset = static_cast<size_t>(b->end - base);
  info.free_bytes = info.end_offset - info.last_offset;
  // Chunks, padding, and (rewind mode) the source's slack past `end`.
  info.used_bytes = info.size - info.header_bytes - info.free_bytes;
  info.role = first ? BlockRole::kFirst : BlockRole::kNormal;
  info.current = b == st->current;
  info.SetCounter("failed", b->failed);
  return info;
}

bool ChunkAlignmentOk(size_t a) {
  return a == 0 || a == kPackedAlignment || a == kDefaultAlignment;
}

// What a pool's KindSpec carries: the user's options and, judged once by
// PoolKind rather than at every creation, whether they take the common
// path (no initial size, no rewind mode, valid sizes and alignment). A
// KindSpec built from the pool's table and plain PoolOptions (a test's
// copy of the table) reads `plain` as 0 (KindSpec zeroes what follows the
// options): the full path, which judges every option.
struct PoolKindOptions : PoolOptions {
  explicit PoolKindOptions(const PoolOptions& o)
      : PoolOptions(o),
        plain(o.initial_block_size == 0 && !o.rewind_on_free && o.max_small <= kMaxAllocSize &&
              ChunkAlignmentOk(o.chunk_alignment)) {}
  bool plain;
};

// The kind, for MakeKindMethods (kind_api.h).
struct PoolImpl {
  using Options = PoolKindOptions;
  using State = PoolState;
  static constexpr const char* kName = "pool";

  // A packed pool's odd-sized chunks (PoolAlloc, which serves 0 bytes as
  // 1); checking builds align every chunk to the default.
  static size_t PlainAlignment(const Context*, const State* st, size_t size) {
    const bool odd = size == 0 || (size & (kDefaultAlignment - 1)) != 0;
    return !kChecking && odd ? st->chunk_alignment : kDefaultAlignment;
  }

  static size_t FirstBlockSize(const Options& o, size_t header_bytes, size_t learned) {
    // The defaults first: one test, and the size is the tree's.
    if (ABSL_PREDICT_TRUE(o.plain)) return LearnedFirstBlockSize(header_bytes, 0, learned);
    // Refused before any block is acquired (0: kBadSize), not after.
    if (o.max_small > kMaxAllocSize) return 0;
    if (o.initial_block_size > kMaxPoolBlockSize) return 0;
    if (o.rewind_on_free) {
      // Blocks all have one size in rewind mode: nothing to learn.
      size_t size = o.initial_block_size != 0 ? o.initial_block_size : kDefaultFirstBlockSize;
      if (size < header_bytes + kMinFirstBlockSpace) size = header_bytes + kMinFirstBlockSpace;
      return RoundUpPow2(size);
    }
    if (o.initial_block_size == 0) return LearnedFirstBlockSize(header_bytes, 0, learned);
    size_t size = o.initial_block_size;
    return size < header_bytes + kMinFirstBlockSpace ? header_bytes + kMinFirstBlockSpace : size;
  }

  // Rewind mode finds a chunk's block by masking its address, so every
  // block, the first included, is aligned to its (power-of-two) size.
  static size_t FirstBlockAlignment(const Options& o, size_t first_block_size) {
    return !o.plain && o.rewind_on_free ? first_block_size : kMinBlockAlignment;
  }

  // Every field written once, without zeroing the state first: this runs at
  // every context creation. The default options' path calls nothing, so it
  // saves no registers; rewind mode and bad options go out of line.
  static bool Init(Context* ctx, State* st, const Options& o, char* space, char* block_end) {
    static_assert(std::is_trivially_destructible_v<State>, "the state is dropped, not destroyed");
    if (ABSL_PREDICT_FALSE(!o.plain && (o.rewind_on_free || !ChunkAlignmentOk(o.chunk_alignment)))) {
      return InitUncommon(ctx, st, o, space, block_end);
    }
    InitFields(ctx, st, o, space, block_end);
    // Direct mode: every request a large chunk, a block of its own (nginx's
    // NGX_DEBUG_PALLOC).
    st->max_small = kDirectBuild ? 0 : o.max_small;
    st->rewind_block_size = 0;
    FinishInit(ctx, st, o, static_cast<size_t>(block_end - reinterpret_cast<char*>(ctx)));
    return true;
  }

  // What every pool's state starts with: the first block alone, no large
  // chunk, nothing live.
  static void InitFields(Context* ctx, State* st, const Options& o, char* space, char* block_end) {
    PoolBlock& first = st->first;
    first.link.owner = ctx;
    first.link.size = 0;  // the tree releases the first block
    first.start = first.last = space;
    first.end = block_end;
    first.failed = 0;
    first.live = 0;
    new (&st->blocks) BlockList();
    st->blocks.PushBack(&first.link);
    new (&st->large) BlockList();
    st->current = st->window = &first;
    new (&st->live) LiveTally();
    st->large_serial = 0;
    st->chunk_alignment = o.chunk_alignment == 0 ? kDefaultAlignment : o.chunk_alignment;
  }

  // Block growth and the window, once max_small, rewind_block_size and the
  // first block's end are set.
  static void FinishInit(Context* ctx, State* st, const Options& o, size_t first_block_size) {
    const size_t base = BaseBlockSize(first_block_size, st);
    st->next_block_size = base;
    st->max_block_size = o.max_block_size < base ? base : o.max_block_size;
    PoolBlock& first = st->first;
    PoisonMemoryRegion(first.start, static_cast<size_t>(first.end - first.start));
    if (size_t window_max = WindowMax(st); window_max != 0) {
      SetBumpWindow(ctx, first.last, first.end, window_max);
    }
  }

  ABSL_ATTRIBUTE_NOINLINE static bool InitUncommon(Context* ctx, State* st, const Options& o,
                                                   char* space, char* block_end) {
    // The state is whole before a refusal: the tree releases the context.
    InitFields(ctx, st, o, space, block_end);
    st->rewind_block_size = 0;
    st->max_small = 0;
    if (!ChunkAlignmentOk(o.chunk_alignment)) {
      SetFailure(ctx, Failure::kBadArgument);
      return false;
    }
    size_t max_small = kDirectBuild ? 0 : o.max_small;
    // Rewind mode: the size requested, not the size the source gave: only
    // the requested size is guaranteed to be the first block's alignment,
    // and the source's slack past it would break the address mask.
    st->rewind_block_size = FirstBlockSize(o, ctx->header_bytes(), 0);
    st->first.end = reinterpret_cast<char*>(ctx) + st->rewind_block_size;
    size_t room = st->rewind_block_size - kBlockHeaderBytes;
    if (max_small > room / 2) max_small = room / 2;
    st->max_small = max_small;
    FinishInit(ctx, st, o, static_cast<size_t>(block_end - reinterpret_cast<char*>(ctx)));
    return true;
  }

  static void* Alloc(Context* ctx, State* st, size_t size, size_t alignment) {
    return PoolAlloc(ctx, st, size, alignment);
  }
  static void Free(Context* ctx, State* st, void* p) { PoolFree(ctx, st, p); }
  static void* Realloc(Context* ctx, State* st, void* p, size_t old_size, size_t new_size) {
    return PoolRealloc(ctx, st, p, old_size, new_size);
  }

  // Checking builds keep the size asked for of each large chunk.
  static size_t RequestedSize(const Context* ctx, const State* st, const void* p) {
    LargeHeader* h;
    if (!kChecking || FindLarge(ctx, st, p, "size", &h) != ChunkLookup::kLarge) {
      return kUnknownSize;
    }
    return h->requested;
  }
  // A large chunk's usable bytes run to its block's end; checking builds say
  // exactly what was asked for, since the sentinel follows it.
  static size_t ChunkSize(const Context* ctx, const State* st, const void* p) {
    LargeHeader* h;
    if (FindLarge(ctx, st, p, "size", &h) != ChunkLookup::kLarge) return kUnknownSize;
    if (kChecking) return h->requested;
    return static_cast<size_t>(static_cast<char*>(h->block) + h->link.size - PayloadOf(h));
  }

  static void Reset(Context* ctx, State* st, const ResetOptions& options) {
    PoolReset(ctx, st, options);
  }
  static void ReleaseAll(Context* ctx, State* st) { PoolReleaseAll(ctx, st); }

  static void Stats(const Context* ctx, const State* st, KindStats* out) {
    for (const PoolBlock* b = Oldest(st); b != nullptr; b = Newer(b)) {
      out->free_bytes += static_cast<size_t>(b->end - LastOf(ctx, st, b));
    }
    // The first block's bytes beyond the usable end (source slack in rewind
    // mode) are not free for use; they count as used.
  }

  static bool Check(const Context* ctx, const State* st, std::string* error) {
    return PoolCheck(ctx, st, error);
  }

  static void VisitLiveChunks(const Context* ctx, const State* st, LiveChunkVisitor* visitor) {
    VisitCheckedChunks(ctx, st, visitor);
  }
  // O(1): the tally, plus what the inline path bumped in the window block
  // since the last Sync.
  static void Live(const Context* ctx, const State* st, LiveCounts* out) {
    size_t live = st->live.live();
    if (WindowMax(st) != 0) live += static_cast<size_t>(BumpPointer(ctx) - st->window->last);
    out->live_bytes = live;
    out->peak_live_bytes = live > st->live.peak() ? live : st->live.peak();
  }
  static void ResetPeak(Context* ctx, State* st) {
    Sync(ctx, st);
    st->live.ResetPeak();
  }
  using Position = pool_internal::PoolPosition;
  static bool Mark(Context* ctx, State* st, Position* at) { return PoolMark(ctx, st, at); }
  static void Rewind(Context* ctx, State* st, const Position& at) { PoolRewind(ctx, st, at); }

  // The first block, then the other blocks in list order (the order small
  // requests try them, from `current` on), then the live large chunks,
  // newest first. Read-only: `last` is read through the bump window
  // (LastOf), as Stats does, never synced.
  static void Inspect(const Context* ctx, const State* st, InspectVisitor* visitor) {
    visitor->VisitBlock(DescribeBlock(ctx, st, &st->first));
    for (const PoolBlock* b = Oldest(st); b != nullptr; b = Newer(b)) {
      if (b != &st->first) visitor->VisitBlock(DescribeBlock(ctx, st, b));
    }
    for (const KindBlock* l = st->large.head(); l != nullptr; l = l->next) {
      const LargeHeader* h = AsLargeHeader(l);
      BlockInfo info;
      info.start = h->block;
      info.size = l->size;
      // Padding (aligned chunks) and the LargeHeader; the chunk fills the rest.
      info.header_bytes = static_cast<size_t>(PayloadOf(h) - static_cast<const char*>(h->block));
      info.used_bytes = l->size - info.header_bytes;
      info.last_offset = info.end_offset = l->size;
      info.role = BlockRole::kOversize;
      info.label = "large";
      visitor->VisitBlock(info);
    }
  }
};

constexpr KindMethods kPoolMethods = MakeKindMethods<PoolImpl>();

}  // namespace

KindSpec PoolKind(const PoolOptions& options) {
  return KindSpec(&kPoolMethods, PoolKindOptions(options));
}

const KindSpec& PoolKind() {
  static const KindSpec spec(&kPoolMethods, PoolKindOptions(PoolOptions()));
  return spec;
}

Context* CreatePoolContext(Context* parent, const char* name, const PoolOptions& options,
                           const ContextOptions& context_options) {
  return Context::Create(parent, name, PoolKind(options), context_options);
}

Pool::Pool(const PoolOptions& options, const ContextOptions& context_options, const char* name)
    : ctx_(Context::Create(nullptr, name, PoolKind(options), context_options)) {}

Pool::~Pool() { ctx_->Destroy(); }

}  // namespace mcx
