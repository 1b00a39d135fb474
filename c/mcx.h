/* File: mcx/mcx.h
 *
 * The C API of mcx, usable from C99. Every function reports failure by its
 * return value (NULL, or a nonzero mcx_failure code); none throws or aborts,
 * except that misuse (a foreign pointer, a double free, an
 * mcx_no_alloc_end without its begin) is reported and aborts, as in C++
 * (checking builds detect more of it).
 *
 * A context is an opaque `mcx_context*`. Allocation failures call the
 * context's failure handler, if one is set on it or an ancestor, and then
 * return NULL; `mcx_last_failure` says why.
 *
 * A NULL context (say, from an mcx_create that failed) or a NULL pointer
 * where an object is expected is a failure, not a crash: functions return
 * NULL, MCX_BAD_ARGUMENT, -1, 0 or (size_t)-1 (mcx_chunk_size of a NULL
 * context; of a NULL chunk it is 0, as malloc_usable_size(NULL)), and those
 * that return nothing do nothing. mcx_get_counters on a NULL context gives
 * zeros; mcx_limit gives MCX_NO_LIMIT.
 *
 * Example:
 *
 *   mcx_context* top = mcx_create(NULL, "top", MCX_KIND_POOL, NULL);
 *   mcx_context* cache = mcx_create(top, "cache", MCX_KIND_FREELIST, NULL);
 *   char* s = mcx_printf(cache, "%s, %d", "hello", 42);
 *   s = mcx_realloc_chunk(s, 100);   -- no context needed on the freelist kind
 *   mcx_free_chunk(s);
 *   mcx_report(top, stderr, 100, 100, 0);
 *   mcx_destroy(top);
 */

#ifndef MCX_C_MCX_H_
#define MCX_C_MCX_H_

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mcx_context mcx_context;

/* Names a registered cleanup (mcx_add_cleanup); copy it freely. All zero
 * (MCX_NO_CLEANUP) means "none". Its fields are mcx's, not the caller's. */
typedef struct mcx_cleanup {
  void* record;
  unsigned long long serial;
} mcx_cleanup;
#define MCX_NO_CLEANUP_INIT {NULL, 0}

/* A savepoint (mcx_mark); copy it freely. A NULL `record` means "none".
 * Its fields are mcx's, not the caller's. */
typedef struct mcx_savepoint {
  void* context;
  void* record;
  unsigned long long serial;
} mcx_savepoint;

typedef enum mcx_kind { MCX_KIND_POOL = 0, MCX_KIND_FREELIST = 1 } mcx_kind;

/* Mirrors mcx::Failure. */
typedef enum mcx_failure {
  MCX_OK = 0,
  MCX_OUT_OF_MEMORY = 1,
  MCX_LIMIT = 2,
  MCX_BAD_SIZE = 3,
  MCX_BAD_ALIGNMENT = 4,
  MCX_UNSUPPORTED = 5,
  MCX_CYCLE = 6,
  MCX_BAD_ARGUMENT = 7,
  MCX_STALE_MARK = 8, /* a mark already rewound past, dropped or reset */
  MCX_FORBIDDEN = 9   /* an allocation inside mcx_no_alloc_begin/end */
} mcx_failure;

typedef enum mcx_reset_mode {
  MCX_RESET_KEEP_FIRST_BLOCK = 0,
  MCX_RESET_KEEP_BYTES = 1,
  MCX_RESET_RELEASE_ALL = 2
} mcx_reset_mode;

/* Options for mcx_create. Start from mcx_options_init; fields that do not
 * apply to the kind are ignored. */
typedef struct mcx_options {
  size_t initial_block_size; /* both kinds; 0: the tree chooses (8 KiB for a
                              * root, small and learned for a child) */
  size_t max_block_size;     /* both kinds */
  size_t max_small;          /* pool: larger requests go to the large list */
  int rewind_on_free;        /* pool: rewind emptied blocks */
  size_t chunk_limit;        /* freelist: larger requests get their own block */
  size_t limit;              /* bytes for the subtree; MCX_NO_LIMIT: none */
} mcx_options;

#define MCX_NO_LIMIT ((size_t)-1)

typedef struct mcx_counters {
  size_t total_bytes;
  size_t blocks;
  size_t free_bytes;
  size_t free_chunks;
  size_t used_bytes;
  size_t contexts;
  /* Bytes in live chunks, and the high-water marks of those and of bytes
   * in blocks since creation or mcx_reset_peak (docs/design.md,
   * "Counters"; summed over a subtree, a peak is the sum of the peaks). */
  size_t live_bytes;
  size_t peak_live_bytes;
  size_t peak_block_bytes;
} mcx_counters;

/* What a soft limit's callback is told (mcx/context/pressure.h). */
typedef struct mcx_pressure_info {
  mcx_context* context; /* the context the allocation is for */
  mcx_context* limited; /* the context whose soft limit it would cross */
  size_t held;          /* bytes the soft limit counts now */
  size_t request;       /* bytes the block acquisition would add */
  size_t soft_limit;
  void* arg;            /* as given to mcx_set_soft_limit */
} mcx_pressure_info;

typedef void (*mcx_pressure_fn)(const mcx_pressure_info* info);
typedef void (*mcx_cleanup_fn)(void* arg);
typedef void (*mcx_failure_handler)(mcx_context* ctx, const char* context_name,
                                    mcx_failure failure, size_t size, void* arg);

void mcx_options_init(mcx_options* options);

/* Lifecycle. `options` may be NULL for the kind's defaults. */
mcx_context* mcx_create(mcx_context* parent, const char* name, mcx_kind kind,
                        const mcx_options* options);
void mcx_destroy(mcx_context* ctx);
void mcx_reset(mcx_context* ctx, mcx_reset_mode mode, size_t keep_bytes);
void mcx_destroy_children(mcx_context* ctx);
mcx_failure mcx_set_parent(mcx_context* ctx, mcx_context* new_parent);
mcx_context* mcx_parent(const mcx_context* ctx);
const char* mcx_name(const mcx_context* ctx);

/* Allocation. */
void* mcx_alloc(mcx_context* ctx, size_t size);
void* mcx_alloc_zero(mcx_context* ctx, size_t size);
void* mcx_calloc(mcx_context* ctx, size_t count, size_t size);
void* mcx_alloc_aligned(mcx_context* ctx, size_t size, size_t alignment);
void* mcx_alloc_bytes(mcx_context* ctx, size_t size);
char* mcx_strdup(mcx_context* ctx, const char* s);

/* Text and bytes (mcx/context/strings.h): each result is one chunk of `ctx`.
 * mcx_printf formats as vsnprintf does (a buffer on the stack first, then,
 * for a longer result, straight into the chunk), NUL-terminated.
 * mcx_strndup copies at most `n` bytes of `s` (fewer at a NUL) and a NUL;
 * mcx_memdup copies `n` bytes into a chunk aligned as mcx_alloc's. NULL on
 * failure (out of memory or a limit, after the failure handler), and with
 * MCX_BAD_ARGUMENT, without the handler, for a NULL format, a NULL `s` or
 * `p` with a nonzero `n`, or a format vsnprintf refuses. */
#if defined(__GNUC__) || defined(__clang__)
#define MCX_PRINTF_FORMAT(format_index, first_arg) \
  __attribute__((format(printf, format_index, first_arg)))
#else
#define MCX_PRINTF_FORMAT(format_index, first_arg)
#endif
char* mcx_printf(mcx_context* ctx, const char* format, ...) MCX_PRINTF_FORMAT(2, 3);
char* mcx_vprintf(mcx_context* ctx, const char* format, va_list args) MCX_PRINTF_FORMAT(2, 0);
char* mcx_strndup(mcx_context* ctx, const char* s, size_t n);
void* mcx_memdup(mcx_context* ctx, const void* p, size_t n);
/* The strings up to a NULL, concatenated into one chunk (APR's
 * apr_pstrcat): mcx_strcat(ctx, schema, ".", table, (char*)NULL). NULL on
 * failure, as mcx_printf. */
#if defined(__GNUC__) || defined(__clang__)
#define MCX_SENTINEL __attribute__((sentinel))
#else
#define MCX_SENTINEL
#endif
char* mcx_strcat(mcx_context* ctx, ...) MCX_SENTINEL;

/* Regions where allocation is a bug (mcx/context/no_alloc.h, PostgreSQL's
 * START_CRIT_SECTION/END_CRIT_SECTION), per thread, nesting: between
 * mcx_no_alloc_begin and mcx_no_alloc_end an allocation is refused with
 * MCX_FORBIDDEN after the failure handler (checking builds: every one;
 * release builds: those that need a new block), except in a context given
 * mcx_allow_in_no_alloc(ctx, 1) (0 on success, or why not). begin returns
 * the depth before it: a handler that longjmps out of a region gives it to
 * mcx_no_alloc_restore at its landing point. mcx_no_alloc_end with no
 * region open on the thread, and mcx_no_alloc_restore of a negative depth,
 * are misuse: reported (which aborts), the depth left as it is. */
int mcx_no_alloc_begin(void);
void mcx_no_alloc_end(void);
void mcx_no_alloc_restore(int depth);
mcx_failure mcx_allow_in_no_alloc(mcx_context* ctx, int allow);
/* `old_size` form works for every chunk; the other needs a kind that knows
 * chunk sizes. On failure the old chunk is untouched. */
void* mcx_realloc(mcx_context* ctx, void* p, size_t new_size);
void* mcx_realloc_sized(mcx_context* ctx, void* p, size_t old_size, size_t new_size);
void mcx_free(mcx_context* ctx, void* p);
/* Sized free: `size` is what the chunk was allocated or last resized with
 * (checked in checking builds). */
void mcx_free_sized(mcx_context* ctx, void* p, size_t size);
/* Usable size, or (size_t)-1 if the kind cannot tell (or `ctx` is NULL);
 * 0 for a NULL `p`, as mcx_chunk_size_of(NULL). */
size_t mcx_chunk_size(const mcx_context* ctx, const void* p);

/* Without a context: freelist chunks only. mcx_realloc_chunk(NULL, n)
 * returns NULL (with no context there is nowhere to allocate; use
 * mcx_realloc(ctx, NULL, n)). */
void mcx_free_chunk(void* p);
void* mcx_realloc_chunk(void* p, size_t new_size);
mcx_context* mcx_chunk_context(const void* p);
size_t mcx_chunk_size_of(const void* p);

/* Limits and failure. */
mcx_failure mcx_set_limit(mcx_context* ctx, size_t bytes);
size_t mcx_limit(const mcx_context* ctx);
/* Sets the handler that failing calls in this context's subtree call before
 * they return NULL (a context without one uses its nearest ancestor's); a
 * NULL `handler` removes it. It is kept in the context's side record, a
 * small block taken on first use, which a limit (MCX_LIMIT), the block
 * source (MCX_OUT_OF_MEMORY) or a region of mcx_no_alloc_begin
 * (MCX_FORBIDDEN) can refuse. Returns MCX_OK, or why the handler could not
 * be set, as mcx_last_failure(ctx) then says: nothing is set, and a failure
 * returns NULL without calling it (an engine whose handler longjmps must
 * check). Removing a handler never fails. The handler and `arg` are kept
 * with the context, as its soft limit's callback is: a reset keeps them,
 * setting another replaces them, and destroying the context takes them
 * (nothing is kept for the contexts that are gone). */
mcx_failure mcx_set_failure_handler(mcx_context* ctx, mcx_failure_handler handler, void* arg);
/* A soft limit: `fn` runs once before an allocation would take the
 * subtree's bytes past `bytes`, and may free memory anywhere (reset a
 * context, spill a table); then the allocation proceeds, and the hard limit
 * still holds. Not re-entered while it runs, also when it sets the soft
 * limit again. It may longjmp: nothing is allocated, and the soft limit
 * calls back no more until set again from outside the callback (where the
 * longjmp landed, or any frame not deeper than the allocation).
 * MCX_NO_LIMIT removes it; a NULL `fn` is MCX_BAD_ARGUMENT. `fn` and `arg`
 * are kept with the context as its failure handler is. */
mcx_failure mcx_set_soft_limit(mcx_context* ctx, size_t bytes, mcx_pressure_fn fn, void* arg);
size_t mcx_soft_limit(const mcx_context* ctx);
mcx_failure mcx_last_failure(const mcx_context* ctx);
const char* mcx_failure_name(mcx_failure failure);

/* Cleanups: `before_children` nonzero runs before the children are torn
 * down. mcx_add_cleanup returns a handle with a NULL `record` on failure.
 * mcx_remove_cleanup and mcx_run_cleanup return 1 if they removed (and ran)
 * the cleanup, and 0 for an empty handle, a stale one (the cleanup already
 * ran or was removed, or the context was reset since) and a handle of
 * another context: a stale handle never acts on a later cleanup that reuses
 * its record. A cleanup may leave by longjmp, as a C engine's error path
 * does: the teardown it interrupted is finished by resetting or destroying
 * the context (or an ancestor) again; see mcx/context/context.h. */
mcx_cleanup mcx_add_cleanup(mcx_context* ctx, mcx_cleanup_fn fn, void* arg,
                            int before_children);
int mcx_remove_cleanup(mcx_context* ctx, mcx_cleanup cleanup);
int mcx_run_cleanup(mcx_context* ctx, mcx_cleanup cleanup);

/* Savepoints (mcx/context/context.h has the whole contract). mcx_mark
 * saves the context's state: a NULL `record` on failure (MCX_UNSUPPORTED
 * for a freelist context or a pool with rewind_on_free, as
 * mcx_last_failure says). mcx_rewind returns the context to it: the
 * cleanups registered since run, newest first (`drop_cleanups` nonzero:
 * they are unregistered unrun), the children created since are destroyed,
 * and every chunk and block allocated since is released. Marks nest as a
 * stack; mcx_drop_mark forgets a mark and every newer one, keeping the
 * memory. Both return MCX_OK, or MCX_STALE_MARK for a mark a rewind to an
 * older one, a drop or a reset has passed (MCX_BAD_ARGUMENT for another
 * context's), changing nothing. A cleanup that leaves a rewind by longjmp
 * leaves the mark valid: rewinding to it again finishes the job. */
mcx_savepoint mcx_mark(mcx_context* ctx);
mcx_failure mcx_rewind(mcx_context* ctx, mcx_savepoint mark, int drop_cleanups);
mcx_failure mcx_drop_mark(mcx_context* ctx, mcx_savepoint mark);

/* Accounting and reports. `subtree` nonzero sums the whole subtree. */
void mcx_get_counters(const mcx_context* ctx, int subtree, mcx_counters* out);
/* Starts the high-water marks again from what is held now; `subtree`
 * nonzero for every context of the subtree. */
void mcx_reset_peak(mcx_context* ctx, int subtree);
/* Writes the stats report; `json` nonzero for JSON. Flushes `out`, so a
 * write error is seen here: returns 0, or -1 if writing failed. */
int mcx_report(const mcx_context* ctx, FILE* out, int max_depth, int max_children, int json);
/* Writes the text report, the same bytes as mcx_report, to file descriptor
 * `fd` with write(2) only, allocating nothing: safe in a failure handler and,
 * if the interrupted code was not changing this tree, in a signal handler
 * (mcx/context/dump.h has the guarantees). Returns 0, or -1 if a write failed
 * (errno says why). */
int mcx_dump_stats(const mcx_context* ctx, int fd, int max_depth, int max_children);

/* Dump on failure: when an allocation in this subtree that calls the failure
 * handler fails for lack of memory or a limit, first write the line
 * "mcx: <failure> on a request of <size> bytes in context '<name>'" and the
 * report of the whole tree (from its root, at most `max_depth` levels and
 * `max_children` children each, both clamped to 0..255) to `fd`.
 * MCX_FAILURE_DUMP_INHERIT: as the nearest ancestor says (the default);
 * MCX_FAILURE_DUMP_OFF: no dump for this subtree. mcx_create and
 * mcx_add_cleanup, which do not call the handler, do not dump. The setting
 * is kept in the side record, as the failure handler is: returns MCX_OK, or
 * why it could not be kept (as mcx_set_failure_handler), with nothing
 * changed. */
#define MCX_FAILURE_DUMP_INHERIT (-1)
#define MCX_FAILURE_DUMP_OFF (-2)
mcx_failure mcx_set_failure_dump(mcx_context* ctx, int fd, int max_depth, int max_children);
/* Answers the report requests other threads have posted to this thread's
 * endpoints (mcx/context/report_request.h): a safe point, for an event
 * loop. Returns how many were answered. */
int mcx_service_requests(void);

#ifdef __cplusplus
}
#endif

#endif /* MCX_C_MCX_H_ */
