/* Tutorial, part 12: the C API, compiled as C99. The same per-query pattern
 * as part 11; failures are return values, never exceptions. */

#include <string.h>

#include "docs/tutorial/check.h"
#include "mcx/mcx.h"

/* [START cleanup_fn] */
static int cursors_open = 0;

static void CloseCursor(void* arg) {
  (void)arg;
  --cursors_open;
}
/* [END cleanup_fn] */

int main(void) {
  /* [START c_api] */
  mcx_context* engine = mcx_create(NULL, "engine", MCX_KIND_POOL, NULL);
  mcx_options options;
  mcx_options_init(&options);
  options.limit = 256 * 1024;
  mcx_context* query = mcx_create(engine, "query", MCX_KIND_POOL, &options);
  ++cursors_open;
  mcx_add_cleanup(query, CloseCursor, NULL, /*before_children=*/1);

  char* name = mcx_strdup(query, "orders");
  CHECK(name != NULL && strcmp(name, "orders") == 0);
  void* too_big = mcx_alloc(query, 1024 * 1024); /* over the limit: NULL */
  CHECK(too_big == NULL && mcx_last_failure(query) == MCX_LIMIT);

  mcx_destroy(query); /* the cursor closes, the memory goes */
  CHECK(cursors_open == 0);
  mcx_destroy(engine);
  /* [END c_api] */
  return 0;
}
