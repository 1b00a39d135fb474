/* The C API from C: every entry point, error returns instead of exceptions,
 * cleanups in order, limits, the failure handler, reports and dumps, NULL
 * arguments. Exits
 * nonzero if any check fails. */

/* fileno: the dumps write to file descriptors. */
#define _POSIX_C_SOURCE 200809L

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mcx/mcx.h"

/* The heap in use, to see what a loop leaves behind: the sanitizer's
 * count when one owns malloc, else glibc's. 0 where neither is there. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MCX_TEST_SANITIZER_HEAP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define MCX_TEST_SANITIZER_HEAP 1
#endif
#endif
#if defined(MCX_TEST_SANITIZER_HEAP)
size_t __sanitizer_get_current_allocated_bytes(void);
#elif defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
#include <malloc.h>
#define MCX_TEST_MALLINFO2 1
#endif

static size_t HeapBytesInUse(void) {
#if defined(MCX_TEST_SANITIZER_HEAP)
  return __sanitizer_get_current_allocated_bytes();
#elif defined(MCX_TEST_MALLINFO2)
  struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
#else
  return 0;
#endif
}

static int passed = 0;
/* Direct mode (--config=direct): every pool chunk is a large one, whose size
 * the kind knows. Probed by main. */
static int direct_mode = 0;
static int failed = 0;

#define CHECK(cond)                                                   \
  do {                                                                \
    if (cond) {                                                       \
      ++passed;                                                       \
    } else {                                                          \
      ++failed;                                                       \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
              #cond);                                                 \
    }                                                                 \
  } while (0)

static char order[16];
static int order_len = 0;

static void Record(void* arg) { order[order_len++] = *(const char*)arg; }

static int handler_calls = 0;
static mcx_failure handler_failure = MCX_OK;

static void Handler(mcx_context* ctx, const char* name, mcx_failure failure, size_t size,
                    void* arg) {
  (void)ctx;
  (void)name;
  (void)size;
  ++*(int*)arg;
  handler_failure = failure;
}

static void TestLifecycleAndAllocation(void) {
  mcx_context* top = mcx_create(NULL, "top", MCX_KIND_POOL, NULL);
  mcx_context* cache;
  char* s;
  int* zeros;
  void* aligned;
  size_t i;
  CHECK(top != NULL);
  CHECK(strcmp(mcx_name(top), "top") == 0);
  cache = mcx_create(top, "cache", MCX_KIND_FREELIST, NULL);
  CHECK(mcx_parent(cache) == top);

  s = mcx_strdup(cache, "hello");
  CHECK(s != NULL && strcmp(s, "hello") == 0);
  CHECK(mcx_chunk_context(s) == cache);
  CHECK(mcx_chunk_size_of(s) >= 6);
  s = (char*)mcx_realloc_chunk(s, 1000);
  CHECK(s != NULL && strcmp(s, "hello") == 0);
  s = (char*)mcx_realloc(cache, s, 2000);
  CHECK(s != NULL && strcmp(s, "hello") == 0);
  mcx_free_chunk(s);

  zeros = (int*)mcx_calloc(top, 100, sizeof(int));
  CHECK(zeros != NULL);
  for (i = 0; i < 100; ++i) CHECK(zeros[i] == 0);
  CHECK(mcx_alloc_zero(top, 10) != NULL);
  CHECK(mcx_alloc_bytes(top, 3) != NULL);
  aligned = mcx_alloc_aligned(cache, 100, 256);
  CHECK(aligned != NULL && ((uintptr_t)aligned % 256) == 0);
  mcx_free(cache, aligned);
  CHECK(mcx_realloc_sized(top, mcx_alloc(top, 10), 10, 100) != NULL);
  /* Pool: unknown (in direct mode every chunk is large: known). */
  CHECK((mcx_chunk_size(top, mcx_alloc(top, 16)) == (size_t)-1) == !direct_mode);

  /* Errors are return values. */
  CHECK(mcx_alloc_aligned(top, 10, 3) == NULL);
  CHECK(mcx_last_failure(top) == MCX_BAD_ALIGNMENT);
  CHECK(mcx_calloc(top, (size_t)-1, 16) == NULL);
  CHECK(mcx_last_failure(top) == MCX_BAD_SIZE);
  if (!direct_mode) {
    CHECK(mcx_realloc(top, mcx_alloc(top, 8), 100) == NULL); /* unsized on pool */
    CHECK(mcx_last_failure(top) == MCX_UNSUPPORTED);
  }
  CHECK(strcmp(mcx_failure_name(MCX_LIMIT), "memory limit exceeded") == 0);
  CHECK(mcx_create(top, NULL, MCX_KIND_POOL, NULL) == NULL);
  CHECK(mcx_set_parent(top, cache) == MCX_CYCLE);
  CHECK(mcx_parent(top) == NULL);

  mcx_destroy(top);
}

static void TestCleanupOrderAndHandles(void) {
  mcx_context* root = mcx_create(NULL, "root", MCX_KIND_FREELIST, NULL);
  mcx_context* child = mcx_create(root, "child", MCX_KIND_POOL, NULL);
  static const char a = 'a', b = 'b', c = 'c', d = 'd', x = 'x';
  mcx_cleanup removed;
  mcx_cleanup early;
  order_len = 0;
  mcx_add_cleanup(root, Record, (void*)&a, 0);
  mcx_add_cleanup(root, Record, (void*)&b, 1);
  mcx_add_cleanup(child, Record, (void*)&c, 0);
  removed = mcx_add_cleanup(root, Record, (void*)&x, 0);
  early = mcx_add_cleanup(root, Record, (void*)&d, 0);
  CHECK(mcx_remove_cleanup(root, removed) == 1);
  CHECK(mcx_run_cleanup(root, early) == 1);
  CHECK(mcx_run_cleanup(root, early) == 0);
  mcx_reset(root, MCX_RESET_KEEP_FIRST_BLOCK, 0);
  /* d ran early; then before-children b, the child's c, after-children a. */
  CHECK(order_len == 4 && memcmp(order, "dbca", 4) == 0);
  mcx_destroy(root);
}

static void TestLimitsHandlerAndReports(void) {
  mcx_options o;
  mcx_context* root;
  mcx_context* child;
  mcx_counters counters;
  FILE* out;
  char buffer[4096];
  size_t n;
  mcx_options_init(&o);
  o.limit = 64 * 1024;
  root = mcx_create(NULL, "limited", MCX_KIND_POOL, &o);
  CHECK(mcx_limit(root) == 64 * 1024);
  mcx_set_failure_handler(root, Handler, &handler_calls);
  child = mcx_create(root, "child", MCX_KIND_FREELIST, NULL);
  CHECK(mcx_alloc(child, 100000) == NULL);
  CHECK(handler_calls == 1 && handler_failure == MCX_LIMIT);
  CHECK(mcx_last_failure(child) == MCX_LIMIT);
  CHECK(mcx_alloc(child, 100) != NULL); /* still usable */
  CHECK(mcx_set_limit(root, 10) == MCX_LIMIT); /* below what it holds */
  mcx_reset(root, MCX_RESET_RELEASE_ALL, 0);
  mcx_reset(root, MCX_RESET_KEEP_BYTES, 1 << 20);

  mcx_options_init(&o);
  o.initial_block_size = 8192; /* room for the chunk: one block */
  child = mcx_create(root, "child", MCX_KIND_FREELIST, &o);
  mcx_alloc(child, 500);
  mcx_get_counters(root, 1, &counters);
  CHECK(counters.contexts == 2);
  CHECK(counters.blocks == (direct_mode ? 3u : 2u)); /* direct: the chunk's own block */
  CHECK(counters.used_bytes + counters.free_bytes == counters.total_bytes);

  out = tmpfile();
  CHECK(out != NULL);
  CHECK(mcx_report(root, out, 10, 10, 0) == 0);
  rewind(out);
  n = fread(buffer, 1, sizeof(buffer) - 1, out);
  buffer[n] = '\0';
  CHECK(strstr(buffer, "limited: ") == buffer);
  CHECK(strstr(buffer, "\n  child: ") != NULL);
  CHECK(strstr(buffer, "Grand total: ") != NULL);
  fclose(out);
  mcx_destroy_children(root);
  mcx_destroy(root);
}

/* Reads what was written to `file` (through its descriptor) into `buffer`. */
static size_t ReadBack(FILE* file, char* buffer, size_t size) {
  size_t n;
  rewind(file);
  n = fread(buffer, 1, size - 1, file);
  buffer[n] = '\0';
  return n;
}

static void TestDumps(void) {
  static const char kLine[] =
      "mcx: memory limit exceeded on a request of 100000 bytes in context 'limited'\n"
      "dumped: ";
  mcx_options o;
  mcx_context* root = mcx_create(NULL, "dumped", MCX_KIND_POOL, NULL);
  mcx_context* child = mcx_create(root, "child", MCX_KIND_FREELIST, NULL);
  mcx_context* limited;
  FILE* report = tmpfile();
  FILE* dump = tmpfile();
  FILE* on_failure = tmpfile();
  char expected[4096];
  char got[4096];
  size_t n;
  CHECK(report != NULL && dump != NULL && on_failure != NULL);
  CHECK(mcx_alloc(child, 300) != NULL);

  /* The dump is the report, written without allocating. */
  CHECK(mcx_report(root, report, 10, 10, 0) == 0);
  fflush(report);
  CHECK(mcx_dump_stats(root, fileno(dump), 10, 10) == 0);
  n = ReadBack(report, expected, sizeof(expected));
  CHECK(n > 0 && ReadBack(dump, got, sizeof(got)) == n);
  CHECK(strcmp(expected, got) == 0);
  CHECK(mcx_dump_stats(root, -1, 10, 10) == -1);

  /* Dump on failure: the line, then the tree from its root. */
  mcx_options_init(&o);
  o.limit = 32 * 1024;
  limited = mcx_create(child, "limited", MCX_KIND_POOL, &o);
  mcx_set_failure_dump(root, fileno(on_failure), 2, 2);
  CHECK(mcx_alloc(limited, 100000) == NULL);
  CHECK(mcx_last_failure(limited) == MCX_LIMIT);
  n = ReadBack(on_failure, got, sizeof(got));
  CHECK(strncmp(got, kLine, sizeof(kLine) - 1) == 0);
  CHECK(strstr(got, "\n  child: ") != NULL);
  CHECK(strstr(got, "\nGrand total: ") != NULL);

  /* Off for the subtree: nothing more is written. */
  mcx_set_failure_dump(limited, MCX_FAILURE_DUMP_OFF, 0, 0);
  CHECK(mcx_alloc(limited, 100000) == NULL);
  CHECK(ReadBack(on_failure, got, sizeof(got)) == n);

  fclose(report);
  fclose(dump);
  fclose(on_failure);
  mcx_destroy(root);
}

/* The failure handler and the dump setting are kept in the side record,
 * which a limit with no room and a no-alloc region refuse: the call says
 * why and sets nothing, and the next failure returns NULL without the
 * handler. With room, the same call sets it. */
static void TestHandlerThatCannotBeKept(void) {
  mcx_context* root = mcx_create(NULL, "root", MCX_KIND_POOL, NULL);
  mcx_context* child = mcx_create(root, "child", MCX_KIND_FREELIST, NULL);
  mcx_context* wal = mcx_create(NULL, "wal", MCX_KIND_POOL, NULL);
  mcx_counters full, now;
  int calls = 0;
  CHECK(mcx_set_limit(root, 1 << 30) == MCX_OK); /* root's own record first */
  mcx_get_counters(root, 1, &full);
  CHECK(mcx_set_limit(root, full.total_bytes) == MCX_OK); /* no room for another */
  CHECK(mcx_set_failure_handler(child, Handler, &calls) == MCX_LIMIT);
  CHECK(mcx_last_failure(child) == MCX_LIMIT);
  CHECK(mcx_set_failure_dump(child, 2, 1, 1) == MCX_LIMIT);
  CHECK(mcx_set_failure_handler(child, NULL, NULL) == MCX_OK); /* nothing to remove */
  CHECK(mcx_alloc(child, 1000000) == NULL);
  CHECK(mcx_last_failure(child) == MCX_LIMIT && calls == 0);
  mcx_get_counters(root, 1, &now);
  CHECK(now.total_bytes == full.total_bytes);

  CHECK(mcx_set_limit(root, 1 << 30) == MCX_OK);
  CHECK(mcx_set_failure_handler(child, Handler, &calls) == MCX_OK);
  mcx_get_counters(root, 1, &full);
  CHECK(mcx_set_limit(root, full.total_bytes) == MCX_OK);
  CHECK(mcx_alloc(child, 1000000) == NULL);
  CHECK(calls == 1 && handler_failure == MCX_LIMIT);
  CHECK(mcx_set_failure_dump(child, MCX_FAILURE_DUMP_OFF, 0, 0) == MCX_OK); /* has a record */

  CHECK(mcx_no_alloc_begin() == 0);
  CHECK(mcx_set_failure_handler(wal, Handler, &calls) == MCX_FORBIDDEN);
  CHECK(mcx_last_failure(wal) == MCX_FORBIDDEN);
  CHECK(mcx_set_failure_dump(wal, 2, 1, 1) == MCX_FORBIDDEN);
  mcx_no_alloc_end();
  CHECK(mcx_set_failure_handler(wal, Handler, &calls) == MCX_OK);
  CHECK(mcx_set_failure_dump(wal, MCX_FAILURE_DUMP_OFF, 0, 0) == MCX_OK);
  mcx_destroy(wal);
  mcx_destroy(root);
}

/* A NULL context (a failed mcx_create) and NULL out-pointers: failure
 * values, no crash. */
static void TestNullArguments(void) {
  static const char tag = 'n';
  mcx_counters c;
  mcx_options_init(NULL);
  CHECK(mcx_alloc(NULL, 16) == NULL);
  CHECK(mcx_alloc_zero(NULL, 16) == NULL);
  CHECK(mcx_calloc(NULL, 2, 8) == NULL);
  CHECK(mcx_alloc_aligned(NULL, 16, 64) == NULL);
  CHECK(mcx_alloc_bytes(NULL, 3) == NULL);
  CHECK(mcx_strdup(NULL, "x") == NULL);
  CHECK(mcx_realloc(NULL, NULL, 8) == NULL);
  CHECK(mcx_realloc_sized(NULL, NULL, 0, 8) == NULL);
  mcx_free(NULL, NULL);
  CHECK(mcx_chunk_size(NULL, NULL) == (size_t)-1);
  mcx_reset(NULL, MCX_RESET_RELEASE_ALL, 0);
  mcx_destroy_children(NULL);
  mcx_destroy(NULL);
  CHECK(mcx_set_parent(NULL, NULL) == MCX_BAD_ARGUMENT);
  CHECK(mcx_parent(NULL) == NULL);
  CHECK(mcx_name(NULL) == NULL);
  CHECK(mcx_set_limit(NULL, 100) == MCX_BAD_ARGUMENT);
  CHECK(mcx_limit(NULL) == MCX_NO_LIMIT);
  CHECK(mcx_set_failure_handler(NULL, Handler, NULL) == MCX_BAD_ARGUMENT);
  CHECK(mcx_last_failure(NULL) == MCX_BAD_ARGUMENT);
  {
    mcx_cleanup none = MCX_NO_CLEANUP_INIT;
    CHECK(mcx_add_cleanup(NULL, Record, (void*)&tag, 0).record == NULL);
    CHECK(mcx_remove_cleanup(NULL, none) == 0);
    CHECK(mcx_run_cleanup(NULL, none) == 0);
  }
  memset(&c, 0xFF, sizeof(c));
  mcx_get_counters(NULL, 1, &c);
  CHECK(c.total_bytes == 0 && c.blocks == 0 && c.contexts == 0);
  CHECK(mcx_report(NULL, stderr, 1, 1, 0) == -1);
  CHECK(mcx_dump_stats(NULL, 2, 1, 1) == -1);
  CHECK(mcx_set_failure_dump(NULL, 2, 1, 1) == MCX_BAD_ARGUMENT);
  {
    /* A live context with NULL out-pointers. */
    mcx_context* ctx = mcx_create(NULL, "nulls", MCX_KIND_FREELIST, NULL);
    mcx_get_counters(ctx, 0, NULL);
    CHECK(mcx_report(ctx, NULL, 1, 1, 0) == -1);
    CHECK(mcx_strdup(ctx, NULL) == NULL);
    CHECK(mcx_last_failure(ctx) == MCX_BAD_ARGUMENT);
    CHECK(mcx_alloc(ctx, 16) != NULL);
    CHECK(mcx_chunk_size(ctx, NULL) == 0); /* as malloc_usable_size(NULL) */
    CHECK(mcx_chunk_size_of(NULL) == 0);
    mcx_destroy(ctx);
  }
  {
    /* A report that cannot be written is -1 at once, not at fclose. */
    mcx_context* ctx = mcx_create(NULL, "full", MCX_KIND_POOL, NULL);
    FILE* full = fopen("/dev/full", "w");
    if (full != NULL) {
      CHECK(mcx_report(ctx, full, 5, 5, 0) == -1);
      fclose(full);
    }
    mcx_destroy(ctx);
  }
}

/* Finding B8: mcx_realloc_chunk(NULL, n) and a cleanup handle of another
 * context are failure values, not aborts (mcx.h). */
static void TestFindingB8NullReallocAndForeignHandle(void) {
  mcx_context* a = mcx_create(NULL, "a", MCX_KIND_POOL, NULL);
  mcx_context* b = mcx_create(NULL, "b", MCX_KIND_POOL, NULL);
  static const char tag_a = 'A';
  mcx_cleanup h;
  CHECK(mcx_realloc_chunk(NULL, 16) == NULL);
  order_len = 0;
  h = mcx_add_cleanup(a, Record, (void*)&tag_a, 0);
  CHECK(h.record != NULL);
  CHECK(mcx_run_cleanup(b, h) == 0);
  CHECK(mcx_remove_cleanup(b, h) == 0);
  CHECK(order_len == 0);
  mcx_destroy(b);
  mcx_destroy(a); /* the cleanup is still a's: it runs here */
  CHECK(order_len == 1 && order[0] == 'A');
}

/* Finding B10: a stale handle (its cleanup already ran, was removed, or the
 * context was reset) is refused and never acts on the cleanup that reuses
 * its record. */
static void TestFindingB10StaleHandles(void) {
  mcx_context* c = mcx_create(NULL, "c", MCX_KIND_FREELIST, NULL);
  static const char f = 'f', l = 'l', r = 'r';
  mcx_cleanup close_file;
  mcx_cleanup lock;
  order_len = 0;
  close_file = mcx_add_cleanup(c, Record, (void*)&f, 0);
  CHECK(mcx_run_cleanup(c, close_file) == 1);
  lock = mcx_add_cleanup(c, Record, (void*)&l, 0); /* reuses the record */
  CHECK(lock.record == close_file.record);
  CHECK(mcx_remove_cleanup(c, close_file) == 0);
  CHECK(mcx_run_cleanup(c, close_file) == 0);
  mcx_reset(c, MCX_RESET_KEEP_FIRST_BLOCK, 0); /* runs the lock's cleanup */
  CHECK(order_len == 2 && memcmp(order, "fl", 2) == 0);
  CHECK(mcx_run_cleanup(c, lock) == 0); /* from before the reset */
  mcx_add_cleanup(c, Record, (void*)&r, 0);
  CHECK(mcx_remove_cleanup(c, lock) == 0);
  mcx_destroy(c);
  CHECK(order_len == 3 && memcmp(order, "flr", 3) == 0);
}

static char* FormatV(mcx_context* ctx, const char* format, ...) {
  va_list args;
  char* out;
  va_start(args, format);
  out = mcx_vprintf(ctx, format, args);
  va_end(args);
  return out;
}

/* mcx_printf, mcx_vprintf, mcx_strndup, mcx_memdup: exact results on both
 * kinds (short, at the stack buffer's edge, long), failure values. */
static void TestStringsAndBytes(void) {
  static const size_t kLengths[] = {0, 200, 255, 256, 257, 3000};
  mcx_kind kinds[2] = {MCX_KIND_POOL, MCX_KIND_FREELIST};
  int k;
  for (k = 0; k < 2; ++k) {
    mcx_context* ctx = mcx_create(NULL, "strings", kinds[k], NULL);
    size_t i;
    char* s = mcx_printf(ctx, "%s-%d-%.1f", "row", 42, 2.5);
    CHECK(s != NULL && strcmp(s, "row-42-2.5") == 0);
    s = FormatV(ctx, "[%5d|%-3s]", 7, "x");
    CHECK(s != NULL && strcmp(s, "[    7|x  ]") == 0);
    for (i = 0; i < sizeof(kLengths) / sizeof(kLengths[0]); ++i) {
      size_t n = kLengths[i];
      char* fill = (char*)malloc(n + 1);
      char* expected = (char*)malloc(n + 32);
      memset(fill, 'y', n);
      fill[n] = '\0';
      snprintf(expected, n + 32, "<%s:%u>", fill, (unsigned)n);
      s = mcx_printf(ctx, "<%s:%u>", fill, (unsigned)n);
      CHECK(s != NULL && strcmp(s, expected) == 0);
      s = FormatV(ctx, "%s", fill);
      CHECK(s != NULL && strlen(s) == n && strcmp(s, fill) == 0);
      free(fill);
      free(expected);
    }
    s = mcx_strndup(ctx, "identifier_tail", 10);
    CHECK(s != NULL && strcmp(s, "identifier") == 0);
    s = mcx_strndup(ctx, "abc", 100);
    CHECK(s != NULL && strcmp(s, "abc") == 0);
    s = mcx_strndup(ctx, NULL, 0);
    CHECK(s != NULL && s[0] == '\0');
    {
      double values[3] = {1.0, -2.5, 1e300};
      double* copy = (double*)mcx_memdup(ctx, values, sizeof(values));
      CHECK(copy != NULL && copy != values && memcmp(copy, values, sizeof(values)) == 0);
      CHECK(((uintptr_t)copy) % 16 == 0);
    }
    /* Failure values without the handler. */
    {
      int calls = 0;
      mcx_set_failure_handler(ctx, Handler, &calls);
      CHECK(mcx_strndup(ctx, NULL, 3) == NULL);
      CHECK(mcx_last_failure(ctx) == MCX_BAD_ARGUMENT);
      CHECK(mcx_memdup(ctx, NULL, 3) == NULL);
      CHECK(mcx_printf(ctx, NULL) == NULL);
      CHECK(mcx_last_failure(ctx) == MCX_BAD_ARGUMENT);
      CHECK(calls == 0);
    }
    mcx_destroy(ctx);
  }
  CHECK(mcx_printf(NULL, "%d", 1) == NULL);
  CHECK(mcx_strndup(NULL, "a", 1) == NULL);
  CHECK(mcx_memdup(NULL, "a", 1) == NULL);
  /* A limit: NULL after the handler, the context unchanged and usable. */
  {
    mcx_options o;
    mcx_context* ctx;
    char* big = (char*)malloc(64 * 1024 + 1);
    int calls = 0;
    size_t before;
    mcx_counters c;
    mcx_options_init(&o);
    o.limit = 16 * 1024;
    ctx = mcx_create(NULL, "limited", MCX_KIND_POOL, &o);
    mcx_set_failure_handler(ctx, Handler, &calls);
    memset(big, 'b', 64 * 1024);
    big[64 * 1024] = '\0';
    mcx_get_counters(ctx, 0, &c);
    before = c.total_bytes;
    CHECK(mcx_printf(ctx, "%s", big) == NULL);
    CHECK(mcx_last_failure(ctx) == MCX_LIMIT);
    CHECK(calls == 1 && handler_failure == MCX_LIMIT);
    CHECK(mcx_strndup(ctx, big, 64 * 1024) == NULL);
    CHECK(mcx_memdup(ctx, big, 64 * 1024) == NULL);
    CHECK(calls == 3);
    mcx_get_counters(ctx, 0, &c);
    CHECK(c.total_bytes == before);
    CHECK(strcmp(mcx_printf(ctx, "%d", 12), "12") == 0);
    mcx_destroy(ctx);
    free(big);
  }
}

/* mcx_strcat: the pieces up to NULL, in one chunk; none is the empty string. */
static void TestStrcat(void) {
  mcx_context* ctx = mcx_create(NULL, "strcat", MCX_KIND_FREELIST, NULL);
  char* s = mcx_strcat(ctx, "public", ".", "orders", (char*)NULL);
  CHECK(s != NULL && strcmp(s, "public.orders") == 0);
  CHECK(mcx_chunk_size(ctx, s) >= 14);
  s = mcx_strcat(ctx, (char*)NULL);
  CHECK(s != NULL && s[0] == '\0');
  s = mcx_strcat(ctx, "", "a", "", (char*)NULL);
  CHECK(s != NULL && strcmp(s, "a") == 0);
  CHECK(mcx_strcat(NULL, "a", (char*)NULL) == NULL);
  mcx_destroy(ctx);
}

static jmp_buf no_alloc_landing;

static void JumpingHandler(mcx_context* ctx, const char* name, mcx_failure failure, size_t size,
                           void* arg) {
  (void)ctx;
  (void)name;
  (void)size;
  ++*(int*)arg;
  handler_failure = failure;
  longjmp(no_alloc_landing, 1);
}

/* A region where allocation is refused: MCX_FORBIDDEN after the handler,
 * the context unchanged; an allowed context allocates; a handler that
 * longjmps out of the region, with the landing point restoring the depth. */
static void TestNoAllocRegions(void) {
  const size_t big = 1 << 20; /* needs a block: refused in every build */
  mcx_context* ctx = mcx_create(NULL, "wal", MCX_KIND_POOL, NULL);
  mcx_context* err = mcx_create(NULL, "error", MCX_KIND_POOL, NULL);
  volatile int depth;
  int calls = 0;
  mcx_counters before, after;
  mcx_set_failure_handler(ctx, Handler, &calls);
  CHECK(mcx_allow_in_no_alloc(err, 1) == MCX_OK);
  CHECK(mcx_allow_in_no_alloc(NULL, 1) == MCX_BAD_ARGUMENT);
  mcx_get_counters(ctx, 0, &before);
  CHECK(mcx_no_alloc_begin() == 0);
  CHECK(mcx_alloc(ctx, big) == NULL);
  CHECK(mcx_last_failure(ctx) == MCX_FORBIDDEN && calls == 1 && handler_failure == MCX_FORBIDDEN);
  CHECK(mcx_create(ctx, "child", MCX_KIND_POOL, NULL) == NULL);
  CHECK(strcmp(mcx_failure_name(MCX_FORBIDDEN), "allocation inside a NoAllocScope") == 0);
  CHECK(mcx_alloc(err, big) != NULL);
  CHECK(mcx_printf(err, "could not write block %d", 7) != NULL);
  mcx_no_alloc_end();
  mcx_get_counters(ctx, 0, &after);
  CHECK(after.total_bytes == before.total_bytes);
  CHECK(mcx_alloc(ctx, big) != NULL);

  /* The handler longjmps out of the region: mcx_no_alloc_end never runs. */
  mcx_set_failure_handler(ctx, JumpingHandler, &calls);
  calls = 0;
  depth = -1;
  if (setjmp(no_alloc_landing) == 0) {
    depth = mcx_no_alloc_begin();
    mcx_alloc(ctx, 2 * big);
    CHECK(0); /* not reached */
  } else {
    CHECK(calls == 1 && handler_failure == MCX_FORBIDDEN);
    CHECK(depth == 0);
    mcx_no_alloc_restore(depth);
  }
  mcx_set_failure_handler(ctx, Handler, &calls);
  CHECK(mcx_alloc(ctx, 2 * big) != NULL); /* depth 0 again: allowed */
  CHECK(calls == 1);
  mcx_destroy(ctx);
  mcx_destroy(err);
}

/* Misuse is reported to the default handler, which prints a line and
 * aborts; these run it in a child process. Its SIGABRT exits with 20 plus
 * the no-alloc depth it finds then, so the parent sees that the report came
 * and what the depth was when it came. */
static void ExitWithDepth(int sig) {
  (void)sig;
  _exit(20 + mcx_no_alloc_begin());
}

/* The child's exit status (-1 if it did not exit), its stderr in `err`. */
static int RunChild(void (*body)(void), char* err, size_t size) {
  int fds[2];
  int status = 0;
  size_t n = 0;
  pid_t pid;
  fflush(NULL);
  if (pipe(fds) != 0) return -1;
  pid = fork();
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], 2);
    signal(SIGABRT, ExitWithDepth);
    body();
    _exit(1); /* no report */
  }
  close(fds[1]);
  for (;;) {
    ssize_t r = read(fds[0], err + n, size - 1 - n);
    if (r <= 0) break;
    n += (size_t)r;
  }
  err[n] = '\0';
  close(fds[0]);
  if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

static void EndWithNoRegion(void) { mcx_no_alloc_end(); }

static void RestoreANegativeDepth(void) {
  mcx_no_alloc_begin();
  mcx_no_alloc_restore(-1);
}

/* mcx_no_alloc_end with no region open, and mcx_no_alloc_restore of a
 * negative depth, are misuse: reported, the depth left as it is (not below
 * 0, where every block acquisition on the thread would be refused). */
static void TestUnbalancedNoAllocIsMisuse(void) {
  char err[512];
  mcx_context* ctx;
  CHECK(RunChild(EndWithNoRegion, err, sizeof(err)) == 20);
  CHECK(strstr(err, "mcx: mcx_no_alloc_end with no region open") != NULL);
  CHECK(RunChild(RestoreANegativeDepth, err, sizeof(err)) == 21);
  CHECK(strstr(err, "mcx: cannot restore the no-allocation depth to -1") != NULL);
  /* Balanced, nested and restored regions are not misuse. */
  CHECK(mcx_no_alloc_begin() == 0);
  CHECK(mcx_no_alloc_begin() == 1);
  mcx_no_alloc_end();
  mcx_no_alloc_restore(0);
  CHECK(mcx_no_alloc_begin() == 0);
  mcx_no_alloc_end();
  ctx = mcx_create(NULL, "after", MCX_KIND_POOL, NULL);
  CHECK(ctx != NULL && mcx_alloc(ctx, 1 << 20) != NULL);
  mcx_destroy(ctx);
}

/* Live bytes and the peaks, ResetPeak, and the sized free, on a pool
 * whose large chunks are freed one by one. */
static void TestCountersAndSizedFree(void) {
  mcx_context* top = mcx_create(NULL, "top", MCX_KIND_POOL, NULL);
  mcx_context* kid = mcx_create(top, "kid", MCX_KIND_POOL, NULL);
  mcx_counters c, sub;
  void* p = mcx_alloc(top, 20000);
  void* q = mcx_alloc(top, 5000);
  mcx_alloc(kid, 64);
  mcx_get_counters(top, 0, &c);
  CHECK(c.live_bytes >= 25000 && c.peak_live_bytes == c.live_bytes);
  CHECK(c.peak_block_bytes > 0 && c.peak_block_bytes <= c.total_bytes);
  mcx_free_sized(top, p, 20000);
  mcx_get_counters(top, 0, &sub);
  CHECK(sub.live_bytes == c.live_bytes - 20000);
  CHECK(sub.peak_live_bytes == c.live_bytes); /* the mark stays */
  CHECK(sub.peak_block_bytes == c.peak_block_bytes);
  mcx_get_counters(top, 1, &sub);
  CHECK(sub.contexts == 2 && sub.live_bytes >= 5000 + 64);
  mcx_reset_peak(top, 1);
  mcx_get_counters(top, 1, &sub);
  CHECK(sub.peak_live_bytes == sub.live_bytes);
  mcx_free_sized(top, q, 5000);
  mcx_get_counters(top, 0, &c);
  CHECK(c.live_bytes == 0);
  mcx_free_sized(NULL, q, 50); /* nothing */
  mcx_reset_peak(NULL, 1);
  mcx_destroy(top);
}

/* Savepoints: a rewind releases what came since and runs the cleanups
 * registered since; a passed mark is refused; the freelist refuses marks. */
static void TestSavepoints(void) {
  static const char a = 'a', b = 'b';
  mcx_counters at_mark, now;
  mcx_savepoint outer, inner, none;
  mcx_context* c = mcx_create(NULL, "parse", MCX_KIND_POOL, NULL);
  mcx_context* f = mcx_create(NULL, "cache", MCX_KIND_FREELIST, NULL);
  char* kept = mcx_strdup(c, "kept");
  int i;
  order_len = 0;
  mcx_add_cleanup(c, Record, (void*)&a, 0);
  outer = mcx_mark(c);
  CHECK(outer.record != NULL);
  mcx_get_counters(c, 1, &at_mark);
  mcx_add_cleanup(c, Record, (void*)&b, 0);
  mcx_create(c, "child", MCX_KIND_POOL, NULL);
  for (i = 0; i < 1000; ++i) mcx_alloc(c, 100);
  inner = mcx_mark(c);
  CHECK(mcx_rewind(c, outer, 0) == MCX_OK);
  CHECK(order_len == 1 && order[0] == 'b');
  mcx_get_counters(c, 1, &now);
  CHECK(now.total_bytes == at_mark.total_bytes && now.blocks == at_mark.blocks &&
        now.contexts == 1);
  CHECK(strcmp(kept, "kept") == 0);
  CHECK(mcx_rewind(c, inner, 0) == MCX_STALE_MARK);
  CHECK(mcx_last_failure(c) == MCX_STALE_MARK);
  CHECK(mcx_drop_mark(c, inner) == MCX_STALE_MARK);
  mcx_add_cleanup(c, Record, (void*)&b, 0);
  CHECK(mcx_rewind(c, outer, 1) == MCX_OK); /* dropped, not run */
  CHECK(order_len == 1);
  CHECK(mcx_rewind(f, outer, 0) == MCX_BAD_ARGUMENT);
  CHECK(mcx_drop_mark(c, outer) == MCX_OK);
  none = mcx_mark(f);
  CHECK(none.record == NULL && mcx_last_failure(f) == MCX_UNSUPPORTED);
  CHECK(strcmp(mcx_failure_name(MCX_STALE_MARK), "mark already rewound past, dropped or reset") ==
        0);
  mcx_destroy(f);
  mcx_destroy(c);
  CHECK(order_len == 2 && memcmp(order, "ba", 2) == 0);
}

/* A cleanup a rewind runs may create children of the context and register
 * cleanups on it: they are since the mark too, and go in the same rewind,
 * each cleanup once. */
static const char late_key = 'L', added_key = 'B';

static void CreatesChild(void* arg) {
  Record((void*)&late_key);
  CHECK(mcx_create((mcx_context*)arg, "late", MCX_KIND_POOL, NULL) != NULL);
}

static void AddsBeforeChildren(void* arg) {
  CHECK(mcx_add_cleanup((mcx_context*)arg, Record, (void*)&added_key, 1).record != NULL);
}

static void TestRewindGoesThroughWhatItsCleanupsAdd(void) {
  mcx_counters at_mark, now;
  mcx_context* c = mcx_create(NULL, "parse", MCX_KIND_POOL, NULL);
  mcx_savepoint m = mcx_mark(c);
  order_len = 0;
  mcx_get_counters(c, 1, &at_mark);
  mcx_add_cleanup(c, CreatesChild, c, 0);
  CHECK(mcx_rewind(c, m, 0) == MCX_OK);
  mcx_get_counters(c, 1, &now);
  CHECK(now.contexts == 1 && now.total_bytes == at_mark.total_bytes &&
        now.blocks == at_mark.blocks);
  mcx_add_cleanup(c, AddsBeforeChildren, c, 0);
  CHECK(mcx_rewind(c, m, 0) == MCX_OK);
  CHECK(order_len == 2 && memcmp(order, "LB", 2) == 0);
  mcx_get_counters(c, 1, &now);
  CHECK(now.contexts == 1 && now.total_bytes == at_mark.total_bytes);
  mcx_destroy(c); /* nothing since the mark is left to run */
  CHECK(order_len == 2);
}

/* A soft limit whose callback resets the child holding the bulk: the
 * subtree stays under it, the callback sees what it should, and a soft
 * limit longjmped out of stays quiet until set again. */
static int pressure_calls = 0;
static mcx_context* pressure_bulk = NULL;
static size_t pressure_over = 0; /* calls that saw held + request <= soft */

static void Spill(const mcx_pressure_info* info) {
  ++pressure_calls;
  if (info->held + info->request <= info->soft_limit) ++pressure_over;
  CHECK(info->arg == (void*)&pressure_calls);
  CHECK(info->context == pressure_bulk);
  mcx_reset(pressure_bulk, MCX_RESET_KEEP_FIRST_BLOCK, 0);
}

static void TestSoftLimit(void) {
  const size_t soft = 64 * 1024;
  mcx_context* top = mcx_create(NULL, "top", MCX_KIND_POOL, NULL);
  mcx_counters c;
  size_t peak = 0;
  int i;
  pressure_bulk = mcx_create(top, "bulk", MCX_KIND_FREELIST, NULL);
  CHECK(mcx_set_soft_limit(top, soft, NULL, NULL) == MCX_BAD_ARGUMENT);
  CHECK(mcx_set_soft_limit(top, soft, Spill, &pressure_calls) == MCX_OK);
  CHECK(mcx_soft_limit(top) == soft);
  for (i = 0; i < 2000; ++i) {
    char* p = (char*)mcx_alloc(pressure_bulk, 500);
    CHECK(p != NULL);
    memset(p, 1, 500);
    mcx_get_counters(top, 1, &c);
    if (c.total_bytes > peak) peak = c.total_bytes;
  }
  CHECK(pressure_calls >= 5);
  CHECK(pressure_over == 0);
  CHECK(peak <= soft);
  CHECK(mcx_set_soft_limit(top, MCX_NO_LIMIT, NULL, NULL) == MCX_OK);
  CHECK(mcx_soft_limit(top) == MCX_NO_LIMIT);
  CHECK(mcx_set_soft_limit(NULL, soft, Spill, NULL) == MCX_BAD_ARGUMENT);
  CHECK(mcx_soft_limit(NULL) == MCX_NO_LIMIT);
  CHECK(mcx_service_requests() == 0);
  mcx_destroy(top);
}

/* A C handler's and soft-limit callback's function and argument are kept
 * with the context they are set on: a reset keeps them, a second setting
 * replaces them, and mcx_destroy takes them, so an engine that passes
 * per-query state as `arg` keeps nothing for the queries that are over. */
static void* handler_seen_arg = NULL;
static void* spill_seen_arg = NULL;

static void NoteHandlerArg(mcx_context* ctx, const char* name, mcx_failure failure, size_t size,
                           void* arg) {
  (void)ctx;
  (void)name;
  (void)failure;
  (void)size;
  handler_seen_arg = arg;
}

static void NoteSpillArg(const mcx_pressure_info* info) { spill_seen_arg = info->arg; }

static void Query(uintptr_t q, int fail) {
  mcx_context* query = mcx_create(NULL, "query", MCX_KIND_POOL, NULL);
  CHECK(mcx_set_failure_handler(query, NoteHandlerArg, (void*)(q * 64)) == MCX_OK);
  CHECK(mcx_set_soft_limit(query, 1 << 20, NoteSpillArg, (void*)(q * 64 + 8)) == MCX_OK);
  if (fail) {
    mcx_counters c;
    mcx_alloc(query, 2 << 20); /* past the soft limit: the callback */
    mcx_get_counters(query, 0, &c);
    CHECK(mcx_set_limit(query, c.total_bytes) == MCX_OK);
    mcx_alloc(query, 1 << 20); /* past the limit: the handler */
    CHECK(handler_seen_arg == (void*)(q * 64) && spill_seen_arg == (void*)(q * 64 + 8));
  }
  mcx_destroy(query);
}

static void TestHandlersGoWithTheirContext(void) {
  const uintptr_t kQueries = 100000;
  mcx_options o;
  mcx_context* top;
  mcx_context* kid;
  int calls = 0, other_calls = 0;
  size_t before, after;
  uintptr_t q;
  mcx_options_init(&o);
  o.limit = 64 * 1024;
  top = mcx_create(NULL, "top", MCX_KIND_POOL, &o);
  kid = mcx_create(top, "kid", MCX_KIND_FREELIST, NULL);
  CHECK(mcx_set_failure_handler(top, Handler, &calls) == MCX_OK);
  mcx_reset(top, MCX_RESET_RELEASE_ALL, 0); /* kid goes; the handler stays */
  kid = mcx_create(top, "kid", MCX_KIND_FREELIST, NULL);
  CHECK(mcx_alloc(kid, 100000) == NULL); /* inherited from top */
  CHECK(calls == 1 && handler_failure == MCX_LIMIT);
  CHECK(mcx_set_failure_handler(top, Handler, &other_calls) == MCX_OK);
  CHECK(mcx_alloc(top, 100000) == NULL);
  CHECK(calls == 1 && other_calls == 1);
  CHECK(mcx_set_failure_handler(top, NULL, NULL) == MCX_OK);
  CHECK(mcx_alloc(top, 100000) == NULL);
  CHECK(other_calls == 1);
  spill_seen_arg = NULL;
  CHECK(mcx_set_soft_limit(top, 16 * 1024, NoteSpillArg, &other_calls) == MCX_OK);
  mcx_reset(top, MCX_RESET_RELEASE_ALL, 0); /* the callback stays */
  kid = mcx_create(top, "kid", MCX_KIND_FREELIST, NULL);
  CHECK(mcx_alloc(kid, 32 * 1024) != NULL); /* past the soft limit only */
  CHECK(spill_seen_arg == (void*)&other_calls);
  mcx_destroy(top);

  for (q = 1; q <= 1000; ++q) Query(q, q % 100 == 0); /* the block cache fills */
  before = HeapBytesInUse();
  for (q = 1; q <= kQueries; ++q) Query(q, q % 10000 == 0);
  after = HeapBytesInUse();
  /* Two interned pairs a query would be megabytes. */
  CHECK(after <= before + 64 * 1024);
  if (after > before + 64 * 1024) {
    fprintf(stderr, "heap in use grew by %lu bytes over %lu queries\n",
            (unsigned long)(after - before), (unsigned long)kQueries);
  }
}

int main(void) {
  {
    mcx_context* probe = mcx_create(NULL, "probe", MCX_KIND_POOL, NULL);
    direct_mode = mcx_chunk_size(probe, mcx_alloc(probe, 16)) != (size_t)-1;
    mcx_destroy(probe);
  }
  TestFindingB8NullReallocAndForeignHandle();
  TestFindingB10StaleHandles();
  TestLifecycleAndAllocation();
  TestCleanupOrderAndHandles();
  TestLimitsHandlerAndReports();
  TestDumps();
  TestHandlerThatCannotBeKept();
  TestNullArguments();
  TestStringsAndBytes();
  TestStrcat();
  TestNoAllocRegions();
  TestUnbalancedNoAllocIsMisuse();
  TestCountersAndSizedFree();
  TestSavepoints();
  TestRewindGoesThroughWhatItsCleanupsAdd();
  TestSoftLimit();
  TestHandlersGoWithTheirContext();
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
