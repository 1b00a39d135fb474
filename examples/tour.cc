// A guided tour of mcx, in seven steps: what happens inside a context as it
// is used, drawn from what the kinds report about their blocks (inspect.h).
//
//   1. A pool context bumps small chunks out of its blocks.
//   2. A block that keeps failing is skipped: `current` moves on.
//   3. A large chunk gets a block of its own, given back when freed.
//   4. A freelist context: size classes, freed chunks reused LIFO.
//   5. A tree is reset, then destroyed: cleanups fire in order.
//   6. A limit is hit: the Try call returns nullptr, the context lives on.
//   7. A subtree moves to another parent; a cycle is refused.
//
// Every fact the tour states is checked as it runs: if one does not hold,
// it prints "tour: step N: claim failed: ..." and exits with status 1, so
// the test that runs it (//examples:tour_test) fails when behaviour changes.
// Blocks have fixed sizes and come from a source that gives exactly what is
// asked, so the drawings are small and the same from run to run.
//
// Run: bazel run //examples:tour [-- --dot DIR]
// With --dot DIR it also writes the tree at each key moment as a Graphviz
// file (DotReport's output with blocks, mcx/context/dot.h),
// DIR/step<N>-<moment>.dot (DIR is created if missing);
// docs/pictures/render.sh turns them into SVG.

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/status/status.h"
#include "mcx/context/chunk.h"
#include "mcx/context/context.h"
#include "mcx/context/dot.h"
#include "mcx/context/inspect.h"
#include "mcx/context/internal/checking.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/freelist/size_class.h"
#include "mcx/pool/pool.h"

namespace {

// --- Claims -----------------------------------------------------------------

int step = 0;

[[noreturn]] void ClaimFailed(const char* condition, const std::string& what, int line) {
  std::fflush(stdout);
  std::fprintf(stderr, "tour: step %d: claim failed: %s\n  (%s, tour.cc:%d)\n", step, what.c_str(),
               condition, line);
  std::exit(1);
}

// Checks a fact the tour states; `what` says it in words.
#define CLAIM(condition, what)                                   \
  do {                                                           \
    if (!(condition)) ClaimFailed(#condition, (what), __LINE__); \
  } while (0)

std::string Format(const char* format, ...) ABSL_PRINTF_ATTRIBUTE(1, 2);
std::string Format(const char* format, ...) {
  char buffer[512];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buffer, sizeof(buffer), format, args);
  va_end(args);
  return buffer;
}

void Say(const char* text) { std::printf("%s\n", text); }

const char* Plural(size_t n) { return n == 1 ? "" : "s"; }

void Title(int n, const char* title) {
  step = n;
  std::printf("\n=== Step %d: %s ===\n\n", n, title);
}

// --- Setting ----------------------------------------------------------------

// Every block is this big (nginx's layout: one block size), so that one
// character of a drawing is always kBytesPerChar bytes.
constexpr size_t kBlockSize = 1024;
constexpr size_t kFreelistBlockSize = 2048;
constexpr size_t kBytesPerChar = 32;
// Small enough that a few requests fill a block, large enough that the
// checking build's per-chunk extra (a header and a sentinel) stays small.
constexpr size_t kMaxSmall = 700;
// nginx's kMaxFailures (pool.cc): a block that has failed more often than
// this is skipped at its next failure.
constexpr uint32_t kMaxFailures = 4;

// Blocks of exactly the size asked for, counted. (The default source keeps
// malloc's slack, which differs from one build to the next.)
class ExactSource final : public mcx::BlockSource {
 public:
  mcx::Block Acquire(size_t min_size, size_t alignment) override {
    size_t rounded = (min_size + alignment - 1) & ~(alignment - 1);
    void* p = std::aligned_alloc(alignment, rounded);
    if (p == nullptr) return {};
    ++live_;
    return {p, min_size};
  }
  void Release(mcx::Block block) override {
    --live_;
    std::free(block.ptr);
  }
  int live() const { return live_; }

 private:
  int live_ = 0;
};

ExactSource source;
const char* dot_dir = nullptr;  // --dot DIR

mcx::ContextOptions WithSource(size_t limit = mcx::kNoLimit) {
  mcx::ContextOptions o;
  o.block_source = &source;
  o.limit = limit;
  return o;
}

mcx::KindSpec SmallPool() {
  mcx::PoolOptions o;
  o.initial_block_size = o.max_block_size = kBlockSize;
  o.max_small = kMaxSmall;
  return mcx::PoolKind(o);
}

mcx::KindSpec SmallFreelist() {
  mcx::FreelistOptions o;
  o.initial_block_size = o.max_block_size = kFreelistBlockSize;
  return mcx::FreelistKind(o);
}

// Writes the tree under `root` as DOT, with blocks, if --dot was given.
void Snapshot(const mcx::Context* root, const char* moment) {
  if (dot_dir == nullptr) return;
  mcx::DotOptions o;
  o.blocks = true;
  std::string path = Format("%s/step%d-%s.dot", dot_dir, step, moment);
  std::ofstream out(path);
  out << mcx::DotReport(root, o);
  out.close();
  CLAIM(!out.fail(), "the drawing was written to " + path);
}

// --- Drawings ----------------------------------------------------------------

size_t Offset(const void* base, const void* p) {
  return static_cast<size_t>(static_cast<const char*>(p) - static_cast<const char*>(base));
}

// A block as a bar, one character per kBytesPerChar bytes:
//   H  headers (the context's in the first block, the block's own in others)
//   #  chunks handed out        o  chunks on a freelist        .  free
std::string Bar(const mcx::BlockInfo& b,
                const std::vector<std::pair<size_t, size_t>>& free_chunks) {
  std::string bar;
  for (size_t at = 0; at < b.size; at += kBytesPerChar) {
    size_t mid = at + kBytesPerChar / 2;  // a character shows its middle byte
    char c = '#';
    if (mid < b.header_bytes) {
      c = 'H';
    } else if (mid >= b.last_offset && mid < b.end_offset) {
      c = '.';
    } else {
      for (const auto& [from, to] : free_chunks) {
        if (mid >= from && mid < to) c = 'o';
      }
    }
    bar += c;
  }
  return "|" + bar + "|";
}

// Free chunks as [from, to) offsets into the block that holds them.
std::vector<std::pair<size_t, size_t>> FreeRanges(const mcx::ContextLayout& layout,
                                                  const mcx::BlockInfo& b) {
  std::vector<std::pair<size_t, size_t>> out;
  for (const mcx::SizeClassLayout& sc : layout.size_classes) {
    for (const void* p : sc.free_list) {
      if (layout.BlockContaining(p) != &b) continue;
      size_t from = Offset(b.start, p) - mcx::kFreelistChunkHeaderBytes;
      out.push_back({from, from + sc.info.chunk_bytes});
    }
  }
  return out;
}

void DrawBlocks(const mcx::ContextLayout& layout) {
  int n = 0;
  for (const mcx::BlockInfo& b : layout.blocks) {
    std::string extra;
    if (b.role == mcx::BlockRole::kFirst || b.role == mcx::BlockRole::kNormal) {
      extra = Format("last +%-4zu end +%-4zu", b.last_offset, b.end_offset);
    }
    if (layout.kind == std::string("pool") && b.role != mcx::BlockRole::kLarge) {
      extra += Format("  failed %u", static_cast<unsigned>(b.Counter("failed")));
    }
    if (b.freelist_chunks != 0) extra += Format("  %zu free chunks", b.freelist_chunks);
    if (b.current) extra += "  <- current";
    std::printf("  [%d] %-6s %4zu B %s  %s\n", ++n, b.Name(), b.size,
                Bar(b, FreeRanges(layout, b)).c_str(), extra.c_str());
  }
}

void DrawContext(const mcx::Context* ctx) {
  mcx::ContextLayout layout = mcx::InspectContext(ctx);
  CLAIM(layout.has_detail, "the pool and freelist kinds describe their blocks");
  std::printf("  %s (%s): %zu bytes in %zu block%s, %zu used, %zu free\n", ctx->name(),
              ctx->kind_name(), layout.total_bytes(), layout.blocks.size(),
              Plural(layout.blocks.size()), layout.total_bytes() - layout.free_bytes(),
              layout.free_bytes());
  DrawBlocks(layout);
  std::printf("\n");
}

// The tree under `root`, one line per context, from what inspection reports.
void DrawTree(const mcx::Context* root) {
  struct Item {
    const mcx::Context* ctx;
    std::string prefix;  // drawn before the context's own connector
    bool last;           // the oldest child: no sibling line below it
    int depth;
  };
  std::vector<Item> stack = {{root, "", true, 0}};
  while (!stack.empty()) {
    Item it = stack.back();
    stack.pop_back();
    mcx::ContextLayout layout = mcx::InspectContext(it.ctx);
    std::string line = it.depth == 0 ? "  " : "  " + it.prefix + (it.last ? "`-- " : "+-- ");
    std::printf(
        "%s%s (%s): %zu block%s, %zu bytes, %zu used%s\n", line.c_str(), it.ctx->name(),
        it.ctx->kind_name(), layout.blocks.size(), Plural(layout.blocks.size()),
        layout.total_bytes(), layout.total_bytes() - layout.free_bytes(),
        it.ctx->limit() != mcx::kNoLimit
            ? Format("; limit %zu, subtree %zu", it.ctx->limit(), it.ctx->SubtreeBytes()).c_str()
            : "");
    std::string child_prefix = it.depth == 0 ? "" : it.prefix + (it.last ? "    " : "|   ");
    // Children newest first, as the tree keeps them; pushed in reverse.
    std::vector<const mcx::Context*> kids;
    for (const mcx::Context* c = it.ctx->first_child(); c != nullptr; c = c->next_sibling()) {
      kids.push_back(c);
    }
    for (size_t i = kids.size(); i-- > 0;) {
      stack.push_back({kids[i], child_prefix, i + 1 == kids.size(), it.depth + 1});
    }
  }
  std::printf("\n");
}

int BlockIndex(const mcx::ContextLayout& layout, const void* p) {
  const mcx::BlockInfo* b = layout.BlockContaining(p);
  return b == nullptr ? -1 : static_cast<int>(b - layout.blocks.data());
}

int CurrentIndex(const mcx::ContextLayout& layout) {
  for (size_t i = 0; i < layout.blocks.size(); ++i) {
    if (layout.blocks[i].current) return static_cast<int>(i);
  }
  return -1;
}

std::string FailedList(const mcx::ContextLayout& layout) {
  std::string s = "[";
  for (const mcx::BlockInfo& b : layout.blocks) {
    if (b.role == mcx::BlockRole::kLarge) continue;
    s += Format("%s%u", s.size() > 1 ? " " : "", static_cast<unsigned>(b.Counter("failed")));
  }
  return s + "]";
}

// --- The steps -----------------------------------------------------------------

// Step 1: small chunks are bumped out of a block.
mcx::Context* StepBump() {
  Title(1, "a pool context bumps small chunks");
  Say("A pool context (nginx's ngx_pool_t) lives at the start of its first block:");
  Say("the context header, the pool's state and the name come first (H), and");
  Say("small chunks are carved after them by moving `last` toward `end`.");
  Say("Every block here is 1024 bytes; one character is 32 bytes.\n");
  mcx::Context* req = mcx::Context::Create(nullptr, "request", SmallPool(), WithSource());
  mcx::ContextLayout before = mcx::InspectContext(req);
  DrawContext(req);
  CLAIM(before.blocks.size() == 1 && before.blocks[0].start == req,
        "a new pool context is one block, which starts with the context itself");
  CLAIM(before.blocks[0].last_offset == req->header_bytes(),
        "`last` starts right after the header");

  // Three chunks at least, and as many as it takes to leave less than 400
  // bytes (how many depends on the header's size in this build).
  for (int i = 0; i < 3 || mcx::InspectContext(req).blocks[0].free_bytes >= 400; ++i) {
    size_t old_last = mcx::InspectContext(req).blocks[0].last_offset;
    void* p = req->Alloc(100);
    mcx::ContextLayout now = mcx::InspectContext(req);
    const mcx::BlockInfo& b = now.blocks[0];
    std::printf("  Alloc(100) -> block +%zu; last moves +%zu -> +%zu\n", Offset(b.start, p),
                old_last, b.last_offset);
    CLAIM(BlockIndex(now, p) == 0, "the chunk is in the first block");
    CLAIM(b.last_offset >= old_last + 100, "`last` moves by at least the 100 bytes asked for");
    if (!mcx::internal::kChecking) {
      size_t aligned = (old_last + 15) & ~size_t{15};
      CLAIM(Offset(b.start, p) == aligned && b.last_offset == aligned + 100,
            "a small pool chunk has no header: it starts at `last`, aligned to 16, "
            "and `last` moves by exactly 100");
    }
  }
  if (mcx::internal::kChecking) {
    Say("\n  (This is a checking build: each pool chunk also carries a header and");
    Say("  a sentinel byte, so `last` moves by more than the bytes asked for.)");
  } else {
    Say("\n  No header per chunk: each chunk starts at `last`, rounded up to 16 for");
    Say("  alignment, and `last` moves by exactly the bytes asked for.");
  }
  std::printf("\n");
  DrawContext(req);

  Say("A request that does not fit what is left appends a new block. Note who");
  Say("counts a failure: every block from `current` up to, but not including,");
  Say("the newest block before the append (nginx walks `current` .. `p->next`).\n");
  const size_t room = mcx::InspectContext(req).blocks[0].free_bytes;
  CLAIM(room < 400, "400 bytes do not fit in the first block any more");
  void* p1 = req->Alloc(400);
  mcx::ContextLayout l1 = mcx::InspectContext(req);
  std::printf("  Alloc(400) -> new block 2; failed %s\n", FailedList(l1).c_str());
  CLAIM(l1.blocks.size() == 2 && BlockIndex(l1, p1) == 1, "the chunk went into a new block 2");
  CLAIM(l1.blocks[0].Counter("failed") == 0, "block 1 was the newest block: no failure counted");
  void* p2 = req->Alloc(400);
  mcx::ContextLayout l2 = mcx::InspectContext(req);
  std::printf("  Alloc(400) -> block 2 again (it had room); failed %s\n", FailedList(l2).c_str());
  CLAIM(l2.blocks.size() == 2 && BlockIndex(l2, p2) == 1, "the second 400 fit in block 2");
  void* p3 = req->Alloc(400);
  mcx::ContextLayout l3 = mcx::InspectContext(req);
  std::printf("  Alloc(400) -> new block 3; failed %s\n\n", FailedList(l3).c_str());
  CLAIM(l3.blocks.size() == 3 && BlockIndex(l3, p3) == 2, "the third 400 needed block 3");
  CLAIM(l3.blocks[0].Counter("failed") == 1 && l3.blocks[1].Counter("failed") == 0,
        "block 1 (from `current`) failed once; block 2, the newest before, did not");
  CLAIM(CurrentIndex(l3) == 0, "`current` is still block 1");
  DrawContext(req);
  Snapshot(req, "bump");
  return req;
}

// Step 2: a block that keeps failing is skipped.
void StepSkip(mcx::Context* req) {
  Title(2, "a block that keeps failing is skipped");
  Say("Requests of 580 bytes fit only in an empty block, so each one appends a");
  Say("block, and every block from `current` on (but the newest) fails once");
  Say("more. A block that has already failed more than 4 times (nginx's");
  Say("constant) is nearly full: at its next failure `current` moves past it,");
  Say("and no request looks at it again.\n");
  int appended = 0;
  while (CurrentIndex(mcx::InspectContext(req)) == 0) {
    mcx::ContextLayout before = mcx::InspectContext(req);
    req->Alloc(580);
    mcx::ContextLayout after = mcx::InspectContext(req);
    ++appended;
    std::printf("  Alloc(580) -> new block %zu; failed %-22s current = block %d\n",
                after.blocks.size(), FailedList(after).c_str(), CurrentIndex(after) + 1);
    CLAIM(after.blocks.size() == before.blocks.size() + 1, "each 580-byte request appends a block");
    for (size_t i = 0; i + 1 < before.blocks.size(); ++i) {
      CLAIM(after.blocks[i].Counter("failed") == before.blocks[i].Counter("failed") + 1,
            Format("block %zu, between `current` and the newest, failed once more", i + 1));
    }
    CLAIM(after.blocks[before.blocks.size() - 1].Counter("failed") ==
              before.blocks.back().Counter("failed"),
          "the newest block before the append counts no failure");
    CLAIM(appended < 20, "`current` moves within a few blocks");
  }
  mcx::ContextLayout layout = mcx::InspectContext(req);
  CLAIM(layout.blocks[0].Counter("failed") == kMaxFailures + 2,
        "block 1 was skipped at its failure after the 5th");
  std::printf("\n  Block 1 failed %u times: `current` is now block %d.\n\n",
              static_cast<unsigned>(layout.blocks[0].Counter("failed")), CurrentIndex(layout) + 1);
  DrawContext(req);

  Say("A 64-byte request would fit in block 1, but it is never tried again:\n");
  const size_t block1_used = layout.blocks[0].used_bytes;
  void* p = req->Alloc(64);
  layout = mcx::InspectContext(req);
  std::printf("  Alloc(64) -> block %d (current is block %d)\n\n", BlockIndex(layout, p) + 1,
              CurrentIndex(layout) + 1);
  CLAIM(BlockIndex(layout, p) >= CurrentIndex(layout),
        "small requests never go to a block before `current`");
  CLAIM(layout.blocks[0].used_bytes == block1_used, "block 1 got nothing");
  Snapshot(req, "current-moved");
}

// Step 3: a large chunk has a block of its own.
void StepLarge(mcx::Context* req) {
  Title(3, "a large chunk gets a block of its own");
  Say("Requests above max_small (700 here) would waste most of a block. They");
  Say("get a block of their own from the block source, on the pool's large");
  Say("list (nginx's ngx_pool_large_t, kept in that block right before the chunk).\n");
  mcx::ContextLayout before = mcx::InspectContext(req);
  const int blocks_at_source = source.live();
  void* big = req->Alloc(2000);
  mcx::ContextLayout with = mcx::InspectContext(req);
  const mcx::BlockInfo* large = with.FindBlock(mcx::BlockRole::kLarge);
  std::printf("  Alloc(2000) -> a large block of %zu bytes\n\n", large ? large->size : 0);
  CLAIM(large != nullptr && static_cast<const char*>(large->start) + large->header_bytes == big,
        "the chunk is a block of its own, after its header");
  CLAIM(with.blocks.size() == before.blocks.size() + 1, "one block more");
  CLAIM(source.live() == blocks_at_source + 1, "it came straight from the block source");
  CLAIM(with.total_bytes() - with.free_bytes() > before.total_bytes() - before.free_bytes() + 2000,
        "the chunk and its header are in use");
  DrawContext(req);
  Snapshot(req, "large");

  Say("Free gives a large chunk back to the source at once (ngx_pfree). Free");
  Say("of a small pool chunk does nothing: small chunks go at the next reset.\n");
  req->Free(big);
  mcx::ContextLayout freed = mcx::InspectContext(req);
  std::printf("  Free(large) -> %zu blocks; the source holds %d of ours\n", freed.blocks.size(),
              source.live());
  CLAIM(freed.FindBlock(mcx::BlockRole::kLarge) == nullptr, "the large block is gone");
  CLAIM(source.live() == blocks_at_source, "its memory went back to the source");
  void* small = req->Alloc(32);
  size_t used = mcx::InspectContext(req).total_bytes() - mcx::InspectContext(req).free_bytes();
  req->Free(small);
  mcx::ContextLayout after_small = mcx::InspectContext(req);
  std::printf("  Free(small chunk) -> nothing changes (%zu bytes used before and after)\n\n", used);
  CLAIM(after_small.total_bytes() - after_small.free_bytes() == used,
        "freeing a small pool chunk changes nothing");

  req->Reset();
  mcx::ContextLayout reset = mcx::InspectContext(req);
  Say("Reset keeps only the first block, empty, and forgets the failures:\n");
  DrawContext(req);
  CLAIM(reset.blocks.size() == 1 && reset.blocks[0].Counter("failed") == 0 && reset.blocks[0].current &&
            reset.blocks[0].last_offset == req->header_bytes(),
        "after Reset: one empty first block, current, no failures");
  CLAIM(source.live() == 1, "every other block went back to the source");
  req->Destroy();
  CLAIM(source.live() == 0, "Destroy gave the first block back too");
}

std::string ClassList(const mcx::ContextLayout& layout, size_t size) {
  const mcx::SizeClassLayout& sc = layout.size_classes[mcx::SizeClassOf(size)];
  std::string s = Format("class %zu B:", sc.info.class_bytes);
  if (sc.free_list.empty()) return s + " (empty)";
  for (size_t i = 0; i < sc.free_list.size(); ++i) {
    const mcx::BlockInfo* b = layout.BlockContaining(sc.free_list[i]);
    s += Format("%s +%zu", i == 0 ? "" : " ->", b ? Offset(b->start, sc.free_list[i]) : 0);
  }
  return s;
}

// Step 4: size classes and freelists.
void StepFreelist() {
  Title(4, "a freelist context reuses freed chunks");
  Say("A freelist context (PostgreSQL's AllocSet) rounds each request up to a");
  Say("size class and puts a header before every chunk, so any chunk can be");
  Say("freed. A freed chunk goes on its class's freelist (o), newest first, and");
  Say("the next request of that class takes the newest: LIFO, warm in cache.");
  std::printf("Blocks are %zu bytes here; one character is still 32 bytes.\n\n",
              kFreelistBlockSize);
  mcx::Context* cache = mcx::Context::Create(nullptr, "cache", SmallFreelist(), WithSource());
  void* a = cache->Alloc(24);
  void* b = cache->Alloc(24);
  void* c = cache->Alloc(24);
  void* d = cache->Alloc(24);
  void* e = cache->Alloc(100);
  mcx::ContextLayout layout = mcx::InspectContext(cache);
  const void* base = layout.blocks[0].start;  // offsets below are from here
  const size_t stride24 = layout.size_classes[mcx::SizeClassOf(24)].info.chunk_bytes;
  std::printf("  Alloc(24) x4 -> +%zu +%zu +%zu +%zu; Alloc(100) -> +%zu\n", Offset(base, a),
              Offset(base, b), Offset(base, c), Offset(base, d), Offset(base, e));
  std::printf(
      "  (24 bytes is class %zu B; with its header a chunk takes %zu bytes;\n"
      "   100 bytes is class %zu B)\n\n",
      mcx::SizeClassBytes(mcx::SizeClassOf(24)), stride24,
      mcx::SizeClassBytes(mcx::SizeClassOf(100)));
  CLAIM(Offset(base, b) == Offset(base, a) + stride24 &&
            Offset(base, d) == Offset(base, a) + 3 * stride24,
        "chunks of a class are carved back to back, header and chunk");
  CLAIM(mcx::SizeClassBytes(mcx::SizeClassOf(24)) == 24 &&
            mcx::SizeClassBytes(mcx::SizeClassOf(100)) == 104,
        "24 is a class of its own; 100 rounds up to 104");
  DrawContext(cache);

  cache->Free(b);
  mcx::Free(d);  // no context named: the chunk header leads to it
  layout = mcx::InspectContext(cache);
  std::printf("  Free(b), then mcx::Free(d) (the header finds the context)\n");
  std::printf("  %s\n\n", ClassList(layout, 24).c_str());
  CLAIM((layout.size_classes[mcx::SizeClassOf(24)].free_list == std::vector<const void*>{d, b}),
        "the class-24 freelist is d, then b: newest first");
  CLAIM(layout.blocks[0].freelist_chunks == 2, "both are in the first block, marked free");
  DrawContext(cache);

  void* x = cache->Alloc(20);
  layout = mcx::InspectContext(cache);
  std::printf("  Alloc(20) -> +%zu (d's place: 20 bytes is class 24 too)\n  %s\n", Offset(base, x),
              ClassList(layout, 24).c_str());
  CLAIM(x == d, "the newest free chunk of the class is reused first");
  void* y = cache->Alloc(24);
  void* z = cache->Alloc(24);
  layout = mcx::InspectContext(cache);
  std::printf("  Alloc(24) -> +%zu (b's place), Alloc(24) -> +%zu (freelist empty: carved)\n\n",
              Offset(base, y), Offset(base, z));
  CLAIM(y == b, "then the older one");
  CLAIM(Offset(base, z) > Offset(base, e), "an empty freelist means a fresh chunk");

  cache->Free(e);
  void* f = cache->Alloc(90);
  void* g = cache->Alloc(80);
  layout = mcx::InspectContext(cache);
  std::printf(
      "  Free(e); Alloc(90) -> +%zu (e's place: 90 is class 104 too);\n"
      "  Alloc(80) -> +%zu (class 88: a fresh chunk)\n\n",
      Offset(base, f), Offset(base, g));
  CLAIM(f == e, "a freed chunk serves any request of its class");
  CLAIM(g != e && mcx::SizeClassOf(80) != mcx::SizeClassOf(100), "other classes do not");
  cache->Free(a);
  cache->Free(c);
  layout = mcx::InspectContext(cache);
  std::printf("  Free(a), Free(c): %s\n\n", ClassList(layout, 24).c_str());
  DrawContext(cache);
  Snapshot(cache, "freelists");
  CLAIM(mcx::GetCounters(cache).free_chunks == 2, "the stats count the two free chunks");
  cache->Destroy();
  CLAIM(source.live() == 0, "Destroy gave every block back");
}

// Step 5: reset and destroy, with cleanups.
void StepTeardown() {
  Title(5, "a tree is reset, then destroyed: cleanups in order");
  Say("Contexts form a tree. Reset and Destroy tear down a whole subtree in a");
  Say("fixed order: the context's kBeforeChildren cleanups (newest first), then");
  Say("its children (newest first, each completely), then its kAfterChildren");
  Say("cleanups (newest first), then its memory.\n");
  std::vector<std::string> fired;
  auto cleanup = [&fired](mcx::Context* ctx, const char* what,
                          mcx::CleanupPhase phase = mcx::CleanupPhase::kAfterChildren) {
    std::string text = std::string(ctx->name()) + ": " + what;
    ctx->AddCleanup(
        [&fired, text] {
          std::printf("    cleanup fires: %s\n", text.c_str());
          fired.push_back(text);
        },
        phase);
  };
  mcx::Context* app = mcx::Context::Create(nullptr, "app", SmallPool(), WithSource());
  mcx::Context* session = app->CreateChild("session", SmallPool());
  mcx::Context* query = session->CreateChild("query", SmallFreelist());
  mcx::Context* cache = app->CreateChild("cache", SmallFreelist());
  cleanup(app, "close the log");
  cleanup(app, "flush stats");
  cleanup(app, "stop accepting", mcx::CleanupPhase::kBeforeChildren);
  cleanup(session, "close the socket");
  cleanup(session, "stop workers", mcx::CleanupPhase::kBeforeChildren);
  cleanup(query, "close the cursor");
  cleanup(query, "release the lock");
  cleanup(cache, "drop the index");
  query->Alloc(300);
  cache->Alloc(500);
  session->Alloc(200);
  DrawTree(app);
  Snapshot(app, "tree");

  Say("session->Reset():");
  const size_t session_first = session->first_block_size();
  session->Reset();
  const std::vector<std::string> reset_order = {"session: stop workers", "query: release the lock",
                                                "query: close the cursor",
                                                "session: close the socket"};
  CLAIM(fired == reset_order,
        "reset order: before-children cleanup, the child (newest cleanup first), then "
        "after-children cleanups");
  CLAIM(session->first_child() == nullptr, "the reset destroyed the child");
  CLAIM(session->bytes_in_blocks() == session_first &&
            mcx::InspectContext(session).blocks[0].used_bytes == 0,
        "the session kept its first block, empty");
  void* again = session->TryAlloc(64);
  CLAIM(again != nullptr, "a reset context is still usable");
  std::printf("\n  The session survives, empty, and is usable again:\n\n");
  DrawTree(app);

  fired.clear();
  mcx::Context* query2 = session->CreateChild("query2", SmallFreelist());
  cleanup(query2, "close the cursor");
  Say("app->Destroy() (after giving the session a new child, query2):");
  app->Destroy();
  const std::vector<std::string> destroy_order = {"app: stop accepting", "cache: drop the index",
                                                  "query2: close the cursor", "app: flush stats",
                                                  "app: close the log"};
  CLAIM(fired == destroy_order,
        "destroy order: app's before-children cleanup, the newest child (cache), the session "
        "with its child, then app's after-children cleanups, newest first");
  CLAIM(source.live() == 0, "every block of the tree went back to the source");
  std::printf("\n  Every block of the tree is back at the source.\n");
}

// Step 6: a limit.
void StepLimit() {
  Title(6, "a limit is hit; the context lives on");
  Say("A limit bounds the block bytes of a whole subtree. A block that would go");
  Say("over it gives way to a smaller one that fits under it, as long as the");
  Say("request fits in that; when not even that fits, the block is refused");
  Say("before the source is asked: a Try call returns nullptr (and the");
  Say("throwing call throws std::bad_alloc); the context is unchanged and");
  Say("usable.\n");
  mcx::Context* job = mcx::Context::Create(nullptr, "job", SmallPool(), WithSource(4 * kBlockSize));
  mcx::Context* step_ctx = job->CreateChild("step", SmallPool());
  step_ctx->Alloc(600);  // the child holds blocks too
  while (job->SubtreeBytes() + kBlockSize <= job->limit()) {
    CLAIM(job->TryAlloc(600) != nullptr, "600 bytes while the subtree is under its limit");
  }
  const size_t blocks_before = job->num_blocks();
  int smaller = 0;
  while (job->TryAlloc(600) != nullptr) ++smaller;
  std::printf("  A full block would cross the limit; %d more requests of 600 bytes fit in\n"
              "  %zu smaller blocks, and the subtree holds %zu of its %zu bytes.\n\n",
              smaller, job->num_blocks() - blocks_before, job->SubtreeBytes(), job->limit());
  CLAIM(smaller > 0 && job->num_blocks() > blocks_before && job->SubtreeBytes() <= job->limit(),
        "what is left under the limit is used, in smaller blocks");
  DrawTree(job);
  Snapshot(job, "full");
  const size_t held = job->bytes_in_blocks();
  void* p = job->TryAlloc(600);
  std::printf("  job->TryAlloc(600) -> %s; last_failure() = %s\n", p ? "a chunk" : "nullptr",
              mcx::FailureName(job->last_failure()));
  CLAIM(p == nullptr, "one more block would exceed the limit");
  CLAIM(job->last_failure() == mcx::Failure::kLimit, "the reason is the limit");
  CLAIM(job->bytes_in_blocks() == held && job->SubtreeBytes() + kBlockSize > job->limit(),
        "the failed call changed nothing");
  bool threw = false;
  try {
    job->Alloc(600);
  } catch (const std::bad_alloc&) {
    threw = true;
  }
  std::printf("  job->Alloc(600) -> throws std::bad_alloc: %s\n", threw ? "yes" : "no");
  CLAIM(threw, "the throwing form throws std::bad_alloc");
  void* q = step_ctx->TryAlloc(600);
  std::printf("  step->TryAlloc(600) -> %s (the child is under the same limit)\n",
              q ? "a chunk" : "nullptr");
  CLAIM(q == nullptr && step_ctx->last_failure() == mcx::Failure::kLimit,
        "a child's blocks count against its ancestor's limit");
  void* small = job->TryAlloc(64);
  std::printf("  job->TryAlloc(64) -> %s (fits in a block the job already has)\n\n",
              small ? "a chunk" : "nullptr");
  CLAIM(small != nullptr, "the context is still usable");
  Say("  No block of the job has room for 600 bytes, and a new one would");
  Say("  take the subtree over its limit:\n");
  DrawContext(job);
  Snapshot(job, "refused");

  job->Reset();
  void* r = job->TryAlloc(600);
  std::printf("  job->Reset(); job->TryAlloc(600) -> %s\n\n", r ? "a chunk" : "nullptr");
  CLAIM(r != nullptr, "after a reset there is room again");
  DrawTree(job);
  job->Destroy();
  CLAIM(source.live() == 0, "every block went back");
}

// Step 7: reparenting.
void StepReparent() {
  Title(7, "a subtree moves; a cycle is refused");
  Say("SetParent moves a context with its whole subtree, in O(1). A move that");
  Say("would make a context its own ancestor is refused, and nothing changes.\n");
  mcx::Context* server = mcx::Context::Create(nullptr, "server", SmallPool(), WithSource());
  mcx::Context* conn1 = server->CreateChild("conn1", SmallPool());
  mcx::Context* conn2 = server->CreateChild("conn2", SmallPool());
  mcx::Context* req = conn1->CreateChild("request", SmallPool());
  mcx::Context* body = req->CreateChild("body", SmallFreelist());
  body->Alloc(200);
  DrawTree(server);
  Snapshot(server, "before");

  absl::Status moved = req->SetParent(conn2);
  std::printf("  request->SetParent(conn2) -> %s\n\n",
              moved.ok() ? "OK" : moved.ToString().c_str());
  CLAIM(moved.ok(), "the move is allowed");
  CLAIM(req->parent() == conn2 && conn1->first_child() == nullptr && body->parent() == req,
        "the request moved under conn2, with its child");
  DrawTree(server);
  Snapshot(server, "after");

  absl::Status cycle = conn2->SetParent(body);
  std::printf("  conn2->SetParent(body) -> %s\n", cycle.ToString().c_str());
  CLAIM(cycle.code() == absl::StatusCode::kInvalidArgument, "a cycle is refused");
  CLAIM(conn2->parent() == server && body->first_child() == nullptr,
        "the refused move changed nothing");
  absl::Status self = conn2->SetParent(conn2);
  std::printf("  conn2->SetParent(conn2) -> %s\n\n", self.ok() ? "OK" : "refused too");
  CLAIM(!self.ok(), "a context cannot be its own parent");
  server->Destroy();
  CLAIM(source.live() == 0, "every block went back");
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--dot") == 0 && i + 1 < argc) {
      dot_dir = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--dot DIR]\n", argv[0]);
      return 2;
    }
  }
  if (dot_dir != nullptr) {  // made if missing, as `mkdir -p` would
    std::error_code error;
    std::filesystem::create_directories(dot_dir, error);
    if (error) {
      std::fprintf(stderr, "tour: cannot create directory %s: %s\n", dot_dir,
                   error.message().c_str());
      return 2;
    }
  }
  std::printf("mcx tour: the life of memory contexts, in seven steps.\n");
  std::printf("Drawings: H headers, # chunks in use, o chunks on a freelist, . free.\n");
  mcx::Context* req = StepBump();
  StepSkip(req);
  StepLarge(req);
  StepFreelist();
  StepTeardown();
  StepLimit();
  StepReparent();
  std::printf("\ntour: all claims held\n");
  return 0;
}
