/* A C99 consumer of mcx's C API ("mcx/mcx.h"). Exits 0 only if every check
 * passed. */
#include <stdio.h>
#include <string.h>

#include "mcx/mcx.h"

static int failures = 0;

static void check(int ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "consumer_c: check failed: %s\n", what);
    ++failures;
  }
}

static void count_cleanup(void* arg) { ++*(int*)arg; }

int main(void) {
  int cleanups = 0;
  mcx_counters counters;
  mcx_context* top = mcx_create(NULL, "top", MCX_KIND_POOL, NULL);
  mcx_context* cache;
  char* s;

  check(top != NULL, "mcx_create");
  cache = mcx_create(top, "cache", MCX_KIND_FREELIST, NULL);
  check(cache != NULL, "mcx_create (child)");
  check(strcmp(mcx_name(cache), "cache") == 0, "mcx_name");
  check(mcx_add_cleanup(cache, count_cleanup, &cleanups, 0).record != NULL, "mcx_add_cleanup");

  s = mcx_strdup(cache, "hello");
  check(s != NULL && strcmp(s, "hello") == 0, "mcx_strdup");
  s = (char*)mcx_realloc_chunk(s, 300);
  check(s != NULL && strcmp(s, "hello") == 0, "mcx_realloc_chunk");
  check(mcx_chunk_context(s) == cache, "mcx_chunk_context");
  mcx_free_chunk(s);

  check(mcx_alloc_aligned(top, 16, 3) == NULL, "a bad alignment fails");
  check(mcx_last_failure(top) == MCX_BAD_ALIGNMENT, "... and says why");

  mcx_get_counters(top, 1, &counters);
  check(counters.contexts == 2, "mcx_get_counters counts the subtree");

  mcx_destroy(top);
  check(cleanups == 1, "mcx_destroy runs the child's cleanup");

  if (failures != 0) {
    fprintf(stderr, "consumer_c: %d check(s) failed\n", failures);
    return 1;
  }
  printf("consumer_c: all checks passed\n");
  return 0;
}
