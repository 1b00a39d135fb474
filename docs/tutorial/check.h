/* File: docs/tutorial/check.h
 *
 * The one assertion the tutorial's programs use. Unlike assert(), it is never
 * compiled out: `CHECK(cond)` prints the file, the line and the condition and
 * exits with status 1 when `cond` is false, so the test that runs the program
 * fails. C and C++.
 *
 * Example:
 *
 *   CHECK(ctx->num_blocks() == 1);
 */

#ifndef MCX_DOCS_TUTORIAL_CHECK_H_
#define MCX_DOCS_TUTORIAL_CHECK_H_

#include <stdio.h>
#include <stdlib.h>

#include "mcx/context/config.h"

#ifdef CHECK
#error "docs/tutorial/check.h: CHECK is already defined"
#endif

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      exit(1);                                                               \
    }                                                                        \
  } while (0)

/* Checking builds (--config=checking, MCX_CHECKING in mcx/context/config.h)
 * give pool chunks a header and sentinel, which moves them apart: the few
 * checks on exact layout are skipped there. */
#if MCX_CHECKING
#define TUTORIAL_CHECKING_BUILD 1
#else
#define TUTORIAL_CHECKING_BUILD 0
#endif

#endif /* MCX_DOCS_TUTORIAL_CHECK_H_ */
