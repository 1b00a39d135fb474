/* A C engine's error path through the C API: cleanups and failure handlers
 * that leave by longjmp, as PostgreSQL's elog(ERROR) or Lua's lua_error do.
 * After each longjmp the program carries on: it scribbles over the stack
 * where the abandoned frames were, creates, resets and destroys unrelated
 * contexts, finishes the abandoned teardown (mcx_destroy or mcx_reset of the
 * context, in every reset mode, or of an ancestor) and checks that every
 * cleanup ran exactly once in the documented order, that handles of cleanups
 * that ran are refused, that mcx_get_counters is back to what it should be,
 * and, by handing the context to another thread, that no concurrency guard
 * stays held (checking builds abort on that). Failure handlers longjmp out
 * of mcx_alloc, mcx_alloc_zero, mcx_calloc, mcx_alloc_aligned,
 * mcx_alloc_bytes, mcx_strdup, mcx_realloc and mcx_realloc_sized failing
 * for each reason; mcx_create and mcx_add_cleanup do not call the handler
 * (mcx.h), which is checked too. Under --config=asan LeakSanitizer checks
 * that nothing leaked. Exits nonzero if any check fails. */

/* pthreads, and fileno-free POSIX. */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcx/mcx.h"

#if defined(__SANITIZE_ADDRESS__)
/* Out of memory is asked of the system with a request of 2^62 bytes, which
 * ASan and TSan refuse by aborting unless told to return NULL, as malloc
 * does. */
const char* __asan_default_options(void);
const char* __asan_default_options(void) { return "allocator_may_return_null=1"; }
#endif
#if defined(__SANITIZE_THREAD__)
const char* __tsan_default_options(void);
const char* __tsan_default_options(void) { return "allocator_may_return_null=1"; }
#endif

static int passed = 0;
static int failed = 0;

#define CHECK(cond)                                                   \
  do {                                                                \
    if (cond) {                                                       \
      ++passed;                                                       \
    } else {                                                          \
      ++failed;                                                       \
      fprintf(stderr, "%s:%d: check failed: %s (%s)\n", __FILE__,     \
              __LINE__, #cond, scenario);                             \
    }                                                                 \
  } while (0)

static char scenario[256] = "";

static jmp_buf jump;

/* What an engine's error path does after the longjmp: it writes over the
 * stack where the abandoned frames were. */
static void ScribbleStack(void) {
  volatile char line[16384];
  size_t i;
  for (i = 0; i < sizeof(line); ++i) line[i] = (char)0x5A;
}

static const mcx_kind kKinds[3] = {MCX_KIND_POOL, MCX_KIND_POOL, MCX_KIND_FREELIST};
static const char* const kKindNames[3] = {"pool", "rewind_pool", "freelist"};

static mcx_context* Create(mcx_context* parent, const char* name, int kind, size_t limit) {
  mcx_options o;
  mcx_options_init(&o);
  o.rewind_on_free = kind == 1;
  o.limit = limit;
  /* A fixed first block, large enough for every node's cleanup records: the
   * checks below compare a reset context with the context as first made. */
  o.initial_block_size = 8192;
  return mcx_create(parent, name, kKinds[kind], &o);
}

/* --- The failure handler ---------------------------------------------------- */

static int handler_calls = 0;
static mcx_failure handler_failure = MCX_OK;
static mcx_context* handler_context = NULL;

static void JumpingHandler(mcx_context* ctx, const char* name, mcx_failure failure, size_t size,
                           void* arg) {
  (void)name;
  (void)size;
  (void)arg;
  ++handler_calls;
  handler_failure = failure;
  handler_context = ctx;
  longjmp(jump, 1);
}

/* --- Other contexts, and the hand-off to another thread ---------------------- */

static int other_ran = 0;
static void CountOther(void* arg) {
  (void)arg;
  ++other_ran;
}

static void ExerciseOtherContexts(int kind) {
  mcx_context* x = Create(NULL, "other", kind, MCX_NO_LIMIT);
  mcx_context* y = mcx_create(x, "other-child", MCX_KIND_FREELIST, NULL);
  mcx_counters c;
  other_ran = 0;
  CHECK(x != NULL && y != NULL);
  mcx_add_cleanup(y, CountOther, NULL, 0);
  mcx_add_cleanup(x, CountOther, NULL, 1);
  CHECK(mcx_alloc(x, 100) != NULL);
  CHECK(mcx_alloc(y, 30000) != NULL);
  mcx_reset(x, MCX_RESET_KEEP_FIRST_BLOCK, 0);
  CHECK(other_ran == 2);
  mcx_get_counters(x, 1, &c);
  CHECK(c.contexts == 1 && c.blocks == 1);
  mcx_destroy(x);
}

static void* UseAndDestroy(void* arg) {
  mcx_context* ctx = (mcx_context*)arg;
  mcx_context* c;
  CHECK(mcx_alloc(ctx, 64) != NULL);
  c = mcx_create(ctx, "on-another-thread", MCX_KIND_FREELIST, NULL);
  CHECK(c != NULL && mcx_alloc(c, 5000) != NULL);
  mcx_destroy(c);
  mcx_reset(ctx, MCX_RESET_KEEP_FIRST_BLOCK, 0);
  mcx_destroy(ctx);
  return NULL;
}

/* Another thread takes the context over and destroys it. Checking builds
 * report (and abort on) a concurrency guard left held by a longjmp. */
static void HandOffAndDestroy(mcx_context* ctx) {
  pthread_t t;
  int created = pthread_create(&t, NULL, UseAndDestroy, ctx);
  int joined = created == 0 ? pthread_join(t, NULL) : -1;
  /* The checks count in globals: only once the other thread is gone. */
  CHECK(created == 0 && joined == 0);
}

/* --- Cleanups that leave ----------------------------------------------------- */

enum {
  kTop,
  kRoot,
  kMid,
  kLeafA,
  kLeafB,
  kLeafC,
  kMid2,
  kLeaf2,
  kNodes
};
static const char* const kNodeNames[kNodes] = {"top",   "root",  "mid",  "leafA",
                                               "leafB", "leafC", "mid2", "leaf2"};
static const int kParents[kNodes] = {-1, kTop, kRoot, kMid, kMid, kMid, kRoot, kMid2};
/* Cleanup labels: node i, phase p (1: before the children), k-th. */
static const char kLabels[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef";

enum SiteMode {
  kJump = 1,            /* the cleanup longjmps */
  kHandlerLimit,        /* mcx_alloc over the engine's limit; the handler longjmps */
  kHandlerBadSize,      /* mcx_calloc overflows */
  kHandlerBadAlignment, /* mcx_alloc_aligned(ctx, 16, 3) */
  kHandlerUnsupported,  /* mcx_realloc of a small chunk of a pool */
  kDestroyThenJump      /* destroys mid2 (a child of root), then longjmps */
};

typedef struct Site {
  int node;
  int before_children;
  int mode;
} Site;

static const Site kSites[] = {
    {kRoot, 1, kJump},  {kRoot, 0, kJump},  {kMid, 1, kJump},       {kMid, 0, kJump},
    {kLeafA, 1, kJump}, {kLeafA, 0, kJump}, {kLeafB, 1, kJump},     {kLeafB, 0, kJump},
    {kLeafC, 0, kJump}, {kLeaf2, 1, kJump}, {kLeaf2, 0, kJump},     {kMid2, 0, kHandlerLimit},
    {kLeafB, 0, kHandlerBadSize}, {kMid, 1, kHandlerBadAlignment},
    {kLeafC, 1, kHandlerUnsupported}, {kRoot, 1, kDestroyThenJump},
};

/* Direct mode (--config=direct) sends every pool request down the large
 * path: a small request then has a size the kind knows. Set by main. */
static int direct_mode = 0;

static int DirectMode(void) {
  mcx_context* probe = mcx_create(NULL, "probe", MCX_KIND_POOL, NULL);
  int direct = mcx_chunk_size(probe, mcx_alloc(probe, 16)) != (size_t)-1;
  mcx_destroy(probe);
  return direct;
}

static char order[128];
static int order_len = 0;
static int exits_enabled = 0;
static mcx_context* nodes[kNodes];
static mcx_context* engine = NULL;
static void* engine_chunk = NULL;

typedef struct Label {
  char c;
  int mode; /* 0: records only */
} Label;

static void Record(void* arg) {
  const Label* l = (const Label*)arg;
  order[order_len++] = l->c;
  if (l->mode == kDestroyThenJump) { /* also in the reference run */
    mcx_destroy(nodes[kMid2]);
    nodes[kMid2] = NULL;
    nodes[kLeaf2] = NULL;
  }
  if (!exits_enabled || l->mode == 0) return;
  switch (l->mode) {
    case kJump:
      longjmp(jump, 1);
    case kHandlerLimit:
      mcx_alloc(engine, (size_t)1 << 20);
      break;
    case kHandlerBadSize:
      mcx_calloc(engine, (size_t)-1, 4);
      break;
    case kHandlerBadAlignment:
      mcx_alloc_aligned(engine, 16, 3);
      break;
    case kHandlerUnsupported:
      mcx_realloc(engine, engine_chunk, 100);
      break;
    case kDestroyThenJump:
      longjmp(jump, 1);
  }
  fprintf(stderr, "the failing call in cleanup '%c' returned\n", l->c);
  ++failed;
}

static Label labels[kNodes][2][2];
static Label site_label;
static mcx_cleanup handles[kNodes][2][2];
static mcx_cleanup site_handle;
static mcx_counters top_own;    /* top, with its cleanups, before root existed */
static mcx_counters root_fresh; /* root, just created, with its side record */

/* The tree; the site's cleanup goes between the two of its node and phase
 * (`site` NULL: none). */
static void Build(int kind, const Site* site) {
  int n, p, k;
  for (n = 0; n < kNodes; ++n) {
    nodes[n] = Create(kParents[n] >= 0 ? nodes[kParents[n]] : NULL, kNodeNames[n], kind,
                      MCX_NO_LIMIT);
    for (p = 1; p >= 0; --p) {
      for (k = 0; k < 2; ++k) {
        labels[n][p][k].c = kLabels[n * 4 + p * 2 + k];
        labels[n][p][k].mode = 0;
        handles[n][p][k] = mcx_add_cleanup(nodes[n], Record, &labels[n][p][k], p);
        CHECK(handles[n][p][k].record != NULL);
        if (k == 0 && site != NULL && site->node == n && site->before_children == p) {
          site_label.c = '!';
          site_label.mode = site->mode;
          site_handle = mcx_add_cleanup(nodes[n], Record, &site_label, p);
        }
      }
    }
    /* Before any allocation: the first block and the side record that the
     * cleanups' lists made, which is what a reset keeps. */
    if (n == kRoot) mcx_get_counters(nodes[n], 0, &root_fresh);
    if (n == kTop) {
      mcx_get_counters(nodes[n], 0, &top_own);
      continue;
    }
    CHECK(mcx_alloc(nodes[n], 100) != NULL);
    CHECK(mcx_alloc(nodes[n], 20000) != NULL);
  }
  engine = mcx_create(NULL, "engine", MCX_KIND_POOL, NULL);
  CHECK(mcx_set_limit(engine, 64 * 1024) == MCX_OK);
  mcx_set_failure_handler(engine, JumpingHandler, NULL);
  engine_chunk = mcx_alloc(engine, 32);
}

static void DestroyEngine(void) {
  mcx_counters c;
  mcx_get_counters(engine, 0, &c);
  CHECK(c.contexts == 1);
  CHECK(mcx_alloc(engine, 10) != NULL); /* its guard is free */
  mcx_destroy(engine);
  engine = NULL;
}

/* The order of a teardown with nothing leaving: of root, and of top's own
 * cleanups around it. */
static char root_order[128];
static int root_order_len;
static char top_before[8], top_after[8];

static void Reference(int kind, const Site* site) {
  char top_order[128];
  int top_len;
  exits_enabled = 0;
  Build(kind, site);
  order_len = 0;
  mcx_destroy(nodes[kRoot]);
  memcpy(root_order, order, (size_t)order_len);
  root_order_len = order_len;
  order_len = 0;
  mcx_destroy(nodes[kTop]);
  DestroyEngine();
  /* top's own: two before the children, two after. */
  top_len = order_len;
  memcpy(top_order, order, (size_t)top_len);
  CHECK(top_len == 4);
  memcpy(top_before, top_order, 2);
  memcpy(top_after, top_order + 2, 2);
}

/* Checks handles: those of cleanups that ran (their label is in the log)
 * are refused, on `n`, a context that is not released. */
static void ExpectRunHandlesRefused(int n) {
  int p, k;
  for (p = 0; p < 2; ++p) {
    for (k = 0; k < 2; ++k) {
      if (memchr(order, labels[n][p][k].c, (size_t)order_len) == NULL) continue;
      CHECK(mcx_run_cleanup(nodes[n], handles[n][p][k]) == 0);
      CHECK(mcx_remove_cleanup(nodes[n], handles[n][p][k]) == 0);
    }
  }
}

enum Start { kStartDestroyRoot, kStartResetRoot, kStartDestroyChildrenOfTop, kStarts };
enum Finish {
  kFinishDestroyRoot,
  kFinishResetRoot,
  kFinishResetRootReleaseAll,
  kFinishResetRootKeepBytes,
  kFinishDestroyTop,
  kFinishResetTop,
  kFinishes
};

static void StartTeardown(int start) {
  volatile char scratch[2048];
  scratch[0] = 0;
  if (start == kStartDestroyRoot) mcx_destroy(nodes[kRoot]);
  if (start == kStartResetRoot) mcx_reset(nodes[kRoot], MCX_RESET_KEEP_FIRST_BLOCK, 0);
  if (start == kStartDestroyChildrenOfTop) mcx_destroy_children(nodes[kTop]);
  (void)scratch[0];
}

static void RunCleanupScenario(int kind, const Site* site, int start, int finish) {
  mcx_counters c;
  int jumped_at;
  int nested = site->mode == kDestroyThenJump;
  const char* bang;
  Reference(kind, site);
  exits_enabled = 1;
  Build(kind, site);
  order_len = 0;
  if (setjmp(jump) == 0) {
    StartTeardown(start);
    CHECK(!"the teardown did not jump");
    return;
  }
  ScribbleStack();
  /* The log so far is the reference's, up to the site (and, for a nested
   * teardown, mid2's 8 cleanups after it). */
  bang = (const char*)memchr(root_order, '!', (size_t)root_order_len);
  CHECK(bang != NULL);
  if (bang == NULL) return;
  jumped_at = (int)(bang - root_order) + 1 + (nested ? 8 : 0);
  CHECK(order_len == jumped_at && memcmp(order, root_order, (size_t)order_len) == 0);
  ExpectRunHandlesRefused(kRoot);
  ExpectRunHandlesRefused(site->node);
  CHECK(mcx_run_cleanup(nodes[site->node], site_handle) == 0);
  ExerciseOtherContexts(kind);

  switch (finish) {
    case kFinishDestroyRoot:
      mcx_destroy(nodes[kRoot]);
      break;
    case kFinishResetRoot:
      mcx_reset(nodes[kRoot], MCX_RESET_KEEP_FIRST_BLOCK, 0);
      break;
    case kFinishResetRootReleaseAll:
      mcx_reset(nodes[kRoot], MCX_RESET_RELEASE_ALL, 0);
      break;
    case kFinishResetRootKeepBytes:
      mcx_reset(nodes[kRoot], MCX_RESET_KEEP_BYTES, 100000);
      break;
    default:
      if (finish == kFinishDestroyTop) {
        mcx_destroy(nodes[kTop]);
      } else {
        mcx_reset(nodes[kTop], MCX_RESET_KEEP_FIRST_BLOCK, 0);
      }
      /* top's own cleanups run around the rest of root's. */
      CHECK(order_len == root_order_len + 4);
      CHECK(memcmp(order, root_order, (size_t)jumped_at) == 0);
      CHECK(memcmp(order + jumped_at, top_before, 2) == 0);
      CHECK(memcmp(order + jumped_at + 2, root_order + jumped_at,
                   (size_t)(root_order_len - jumped_at)) == 0);
      CHECK(memcmp(order + root_order_len + 2, top_after, 2) == 0);
      if (finish == kFinishResetTop) {
        mcx_get_counters(nodes[kTop], 1, &c);
        CHECK(c.contexts == 1);
        if (!direct_mode) CHECK(c.blocks == 1 && c.total_bytes == top_own.total_bytes);
        CHECK(mcx_run_cleanup(nodes[kTop], handles[kTop][0][0]) == 0);
        HandOffAndDestroy(nodes[kTop]);
      }
      DestroyEngine();
      return;
  }
  /* Every cleanup of root's subtree once, in order. */
  CHECK(order_len == root_order_len && memcmp(order, root_order, (size_t)order_len) == 0);
  mcx_get_counters(nodes[kTop], 0, &c);
  if (!direct_mode) CHECK(c.blocks == top_own.blocks && c.total_bytes == top_own.total_bytes);
  if (finish == kFinishDestroyRoot) {
    mcx_get_counters(nodes[kTop], 1, &c);
    CHECK(c.contexts == 1);
    if (!direct_mode) CHECK(c.total_bytes == top_own.total_bytes);
  } else {
    /* root survives, empty: its first block (KeepBytes may keep more). */
    mcx_get_counters(nodes[kRoot], 1, &c);
    CHECK(c.contexts == 1);
    /* (In direct mode every chunk, a cleanup record too, is a block: the
     * counts differ from the packed layout's; what was released is checked
     * by the counting at the end.) */
    if (direct_mode) {
    } else if (finish == kFinishResetRootKeepBytes) {
      CHECK(c.total_bytes >= root_fresh.total_bytes && c.total_bytes <= 100000);
    } else {
      CHECK(c.blocks == 1 && c.total_bytes == root_fresh.total_bytes);
    }
    mcx_get_counters(nodes[kTop], 1, &c);
    CHECK(c.contexts == 2);
    /* Every handle of root is stale after the reset. */
    CHECK(mcx_run_cleanup(nodes[kRoot], handles[kRoot][1][0]) == 0);
    CHECK(mcx_remove_cleanup(nodes[kRoot], handles[kRoot][0][1]) == 0);
    CHECK(mcx_alloc(nodes[kRoot], 20000) != NULL);
  }
  order_len = 0;
  HandOffAndDestroy(nodes[kTop]);
  CHECK(order_len == 4 && memcmp(order, top_before, 2) == 0 &&
        memcmp(order + 2, top_after, 2) == 0);
  DestroyEngine();
}

static void TestCleanupsThatLongjmp(void) {
  int kind, s, start, finish;
  for (kind = 0; kind < 3; ++kind) {
    for (s = 0; s < (int)(sizeof(kSites) / sizeof(kSites[0])); ++s) {
      for (start = 0; start < kStarts; ++start) {
        for (finish = 0; finish < kFinishes; ++finish) {
          /* The unsupported realloc does not fail in direct mode. */
          if (kSites[s].mode == kHandlerUnsupported && direct_mode) continue;
          sprintf(scenario, "%s, site %d (%s %s, mode %d), start %d, finish %d", kKindNames[kind],
                  s, kNodeNames[kSites[s].node], kSites[s].before_children ? "before" : "after",
                  kSites[s].mode, start, finish);
          RunCleanupScenario(kind, &kSites[s], start, finish);
        }
      }
    }
  }
  scenario[0] = '\0';
}

/* --- Failure handlers that longjmp out of a failing call ---------------------- */

enum Entry {
  kAlloc,
  kAllocZero,
  kCalloc,
  kAllocAligned,
  kAllocBytes,
  kStrdup,
  kRealloc,
  kReallocSized,
  kEntries
};
static const char* const kEntryNames[kEntries] = {
    "mcx_alloc",        "mcx_alloc_zero", "mcx_calloc",  "mcx_alloc_aligned",
    "mcx_alloc_bytes",  "mcx_strdup",     "mcx_realloc", "mcx_realloc_sized"};

typedef struct FailCase {
  int entry;
  mcx_failure failure;
} FailCase;

static const FailCase kFailCases[] = {
    {kAlloc, MCX_LIMIT},         {kAlloc, MCX_OUT_OF_MEMORY},     {kAlloc, MCX_BAD_SIZE},
    {kAllocZero, MCX_LIMIT},     {kAllocZero, MCX_BAD_SIZE},      {kCalloc, MCX_LIMIT},
    {kCalloc, MCX_OUT_OF_MEMORY}, {kCalloc, MCX_BAD_SIZE},        {kAllocAligned, MCX_LIMIT},
    {kAllocAligned, MCX_OUT_OF_MEMORY}, {kAllocAligned, MCX_BAD_ALIGNMENT},
    {kAllocAligned, MCX_BAD_SIZE}, {kAllocBytes, MCX_LIMIT},      {kAllocBytes, MCX_BAD_SIZE},
    {kStrdup, MCX_LIMIT},        {kRealloc, MCX_LIMIT},           {kRealloc, MCX_OUT_OF_MEMORY},
    {kRealloc, MCX_UNSUPPORTED}, {kRealloc, MCX_BAD_SIZE},        {kReallocSized, MCX_LIMIT},
    {kReallocSized, MCX_OUT_OF_MEMORY}, {kReallocSized, MCX_BAD_SIZE},
};

static char big_string[200001];

static void FailingCall(mcx_context* ctx, const FailCase* fc, char* small, char* large, int pool) {
  volatile char scratch[1024];
  const size_t huge = (size_t)1 << 62; /* below the size limit: the system refuses it */
  const size_t bad = (size_t)-1;
  size_t n = fc->failure == MCX_BAD_SIZE ? bad
             : fc->failure == MCX_OUT_OF_MEMORY ? huge
                                                : 300000;
  scratch[0] = 0;
  switch (fc->entry) {
    case kAlloc:
      mcx_alloc(ctx, n);
      break;
    case kAllocZero:
      mcx_alloc_zero(ctx, n);
      break;
    case kCalloc:
      if (fc->failure == MCX_BAD_SIZE) {
        mcx_calloc(ctx, bad / 2, 4);
      } else {
        mcx_calloc(ctx, n / 4, 4);
      }
      break;
    case kAllocAligned:
      if (fc->failure == MCX_BAD_ALIGNMENT) {
        mcx_alloc_aligned(ctx, 16, 3);
      } else {
        mcx_alloc_aligned(ctx, n, 64);
      }
      break;
    case kAllocBytes:
      mcx_alloc_bytes(ctx, n);
      break;
    case kStrdup:
      mcx_strdup(ctx, big_string);
      break;
    case kRealloc:
      if (fc->failure == MCX_UNSUPPORTED) {
        mcx_realloc(ctx, small, 100);
      } else {
        mcx_realloc(ctx, pool ? large : small, n);
      }
      break;
    case kReallocSized:
      mcx_realloc_sized(ctx, small, 64, n);
      break;
  }
  (void)scratch[0];
}

static void RunFailCase(int kind, const FailCase* fc, int handler_on_parent) {
  mcx_context* parent = Create(NULL, "parent", kind, MCX_NO_LIMIT);
  mcx_context* ctx = Create(parent, "failing", kind, MCX_NO_LIMIT);
  char* small;
  char* large;
  mcx_counters before, after;
  int i, intact = 1;
  mcx_set_failure_handler(handler_on_parent ? parent : ctx, JumpingHandler, NULL);
  small = (char*)mcx_alloc(ctx, 64);
  large = (char*)mcx_alloc(ctx, 10000);
  memset(small, 0x11, 64);
  memset(large, 0x22, 10000);
  if (fc->failure == MCX_LIMIT) {
    /* A limit lives in the context's side record: make it first (with a
     * limit far away), so that the bytes measured include it. */
    CHECK(mcx_set_limit(ctx, MCX_NO_LIMIT - 1) == MCX_OK);
    mcx_get_counters(ctx, 1, &before);
    CHECK(mcx_set_limit(ctx, before.total_bytes + 100) == MCX_OK);
  }
  mcx_get_counters(ctx, 1, &before);
  handler_calls = 0;
  handler_failure = MCX_OK;
  handler_context = NULL;
  if (setjmp(jump) == 0) {
    FailingCall(ctx, fc, small, large, kind != 2);
    CHECK(!"the call did not fail");
    mcx_destroy(parent);
    return;
  }
  ScribbleStack();
  CHECK(handler_calls == 1);
  CHECK(handler_failure == fc->failure);
  CHECK(handler_context == ctx);
  CHECK(mcx_last_failure(ctx) == fc->failure);
  mcx_get_counters(ctx, 1, &after);
  CHECK(after.total_bytes == before.total_bytes && after.blocks == before.blocks &&
        after.contexts == 1);
  for (i = 0; i < 64; ++i) intact &= small[i] == 0x11;
  for (i = 0; i < 10000; ++i) intact &= large[i] == 0x22;
  CHECK(intact);
  ExerciseOtherContexts(kind);
  /* Usable once the cause is gone. */
  CHECK(mcx_set_limit(ctx, MCX_NO_LIMIT) == MCX_OK);
  CHECK(mcx_alloc(ctx, 300000) != NULL);
  CHECK(mcx_strdup(ctx, big_string) != NULL);
  small = (char*)mcx_realloc_sized(ctx, small, 64, 5000);
  CHECK(small != NULL && small[63] == 0x11);
  CHECK(mcx_create(ctx, "child-after", MCX_KIND_FREELIST, NULL) != NULL);
  HandOffAndDestroy(parent);
}

/* mcx_create and mcx_add_cleanup report failure by their return value and
 * do not call the handler (mcx.h): nothing to leave, nothing kept. */
static void TestCreateDoesNotCallTheHandler(int kind) {
  mcx_context* parent = Create(NULL, "parent", kind, MCX_NO_LIMIT);
  mcx_options huge;
  mcx_counters before, after;
  mcx_set_failure_handler(parent, JumpingHandler, NULL);
  mcx_get_counters(parent, 1, &before);
  CHECK(mcx_set_limit(parent, before.total_bytes + 100) == MCX_OK);
  handler_calls = 0;
  if (setjmp(jump) != 0) {
    CHECK(!"mcx_create called the handler");
    mcx_destroy(parent);
    return;
  }
  CHECK(Create(parent, "over-the-limit", kind, MCX_NO_LIMIT) == NULL);
  CHECK(mcx_last_failure(parent) == MCX_LIMIT);
  mcx_options_init(&huge);
  huge.initial_block_size = (size_t)1 << 60;
  CHECK(mcx_create(parent, "huge", kKinds[kind], &huge) == NULL);
  CHECK(mcx_last_failure(parent) == MCX_BAD_SIZE);
  CHECK(mcx_create(parent, NULL, kKinds[kind], NULL) == NULL);
  CHECK(mcx_last_failure(parent) == MCX_BAD_ARGUMENT);
  CHECK(handler_calls == 0);
  mcx_get_counters(parent, 1, &after);
  CHECK(after.total_bytes == before.total_bytes && after.contexts == 1);
  CHECK(mcx_set_limit(parent, MCX_NO_LIMIT) == MCX_OK);
  HandOffAndDestroy(parent);
}

static void TestFailureHandlersThatLongjmp(void) {
  int kind, f, on_parent;
  memset(big_string, 'x', sizeof(big_string) - 1);
  for (kind = 0; kind < 3; ++kind) {
    for (f = 0; f < (int)(sizeof(kFailCases) / sizeof(kFailCases[0])); ++f) {
      /* Pools only, and not in direct mode, where a pool has only large
       * chunks (which take the unsized realloc). */
      if (kFailCases[f].failure == MCX_UNSUPPORTED && (kind == 2 || direct_mode)) continue;
      for (on_parent = 0; on_parent < 2; ++on_parent) {
        sprintf(scenario, "%s, %s failing with '%s', handler on the %s", kKindNames[kind],
                kEntryNames[kFailCases[f].entry], mcx_failure_name(kFailCases[f].failure),
                on_parent ? "parent" : "context");
        RunFailCase(kind, &kFailCases[f], on_parent);
      }
    }
  }
  scenario[0] = '\0';
}

/* A soft limit's callback that longjmps, as an engine's spill that raises
 * an error does: nothing was allocated, the context is consistent and
 * usable (and free of a held concurrency guard: HandOffAndDestroy), and the
 * soft limit calls back no more until it is set again. */
static int pressure_jumps = 0;

static void JumpingPressure(const mcx_pressure_info* info) {
  (void)info;
  ++pressure_jumps;
  longjmp(jump, 1);
}

static void TestSoftLimitCallbackThatLongjmps(int kind) {
  mcx_context* ctx = Create(NULL, "spilling", kind, MCX_NO_LIMIT);
  static mcx_counters before; /* written between setjmp and longjmp */
  mcx_counters after;
  volatile int allocs = 0;
  pressure_jumps = 0;
  CHECK(mcx_set_soft_limit(ctx, 64 * 1024, JumpingPressure, NULL) == MCX_OK);
  mcx_get_counters(ctx, 1, &before);
  if (setjmp(jump) == 0) {
    for (;;) {
      mcx_get_counters(ctx, 1, &before);
      CHECK(mcx_alloc(ctx, 1000) != NULL);
      ++allocs;
    }
  }
  ScribbleStack();
  CHECK(pressure_jumps == 1);
  CHECK(allocs > 0);
  mcx_get_counters(ctx, 1, &after);
  CHECK(after.total_bytes == before.total_bytes && after.blocks == before.blocks);
  CHECK(mcx_alloc(ctx, 100000) != NULL); /* quiet: marked as running */
  CHECK(pressure_jumps == 1);
  CHECK(mcx_set_soft_limit(ctx, 64 * 1024, JumpingPressure, NULL) == MCX_OK);
  if (setjmp(jump) == 0) CHECK(mcx_alloc(ctx, 100000) == NULL && 0);
  CHECK(pressure_jumps == 2);
  other_ran = 0;
  HandOffAndDestroy(ctx);
}

/* A cleanup record that cannot be had: mcx_add_cleanup returns an empty
 * handle, calls no handler and keeps nothing. */
static void TestAddCleanupFailure(int kind) {
  mcx_context* ctx = Create(NULL, "full", kind, MCX_NO_LIMIT);
  mcx_counters before, after;
  mcx_cleanup h;
  int i;
  mcx_set_failure_handler(ctx, JumpingHandler, NULL);
  mcx_get_counters(ctx, 1, &before);
  CHECK(mcx_set_limit(ctx, before.total_bytes) == MCX_OK);
  for (i = 0; i < 100000; ++i) {
    /* mcx_alloc_bytes would call the handler: probe with mcx_add_cleanup */
    h = mcx_add_cleanup(ctx, CountOther, NULL, 0);
    if (h.record == NULL) break;
  }
  CHECK(h.record == NULL && mcx_last_failure(ctx) == MCX_LIMIT);
  mcx_get_counters(ctx, 1, &after);
  CHECK(after.total_bytes == before.total_bytes);
  CHECK(mcx_set_limit(ctx, MCX_NO_LIMIT) == MCX_OK);
  other_ran = 0;
  HandOffAndDestroy(ctx);
  CHECK(other_ran == i);
}

int main(void) {
  int kind;
  direct_mode = DirectMode();
  TestCleanupsThatLongjmp();
  TestFailureHandlersThatLongjmp();
  for (kind = 0; kind < 3; ++kind) {
    sprintf(scenario, "%s", kKindNames[kind]);
    TestCreateDoesNotCallTheHandler(kind);
    TestAddCleanupFailure(kind);
    TestSoftLimitCallbackThatLongjmps(kind);
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
