#!/bin/bash
# Runs a test under Valgrind's memcheck: the --run_under of the memcheck
# config (.bazelrc; CI's checking-memcheck). Any memcheck error (an invalid
# read or write, a use of uninitialised memory, a bad free) or a definitely
# lost block fails the test, with memcheck's report in its log.
#
# Programs a shell test runs (its subject) are traced as well; system tools
# (/bin, /usr, /sbin: the shell's grep and sed) run natively. Blocks that
# are only "still reachable" or "possibly lost" at exit (leaked on purpose:
# the default block cache, a source that outlives its threads) are not
# errors, as under LeakSanitizer.
set -euo pipefail
if ! command -v valgrind >/dev/null 2>&1; then
  echo "run_under_memcheck: valgrind is not installed (apt-get install valgrind)" >&2
  exit 1
fi
# A shell test's interpreter runs under memcheck too (valgrind starts the
# script's #! interpreter itself), and bash frees little of what it parsed
# before it exits: its leaks are not the test's.
suppressions="$(mktemp "${TEST_TMPDIR:-${TMPDIR:-/tmp}}/memcheck.XXXXXX.supp")"
cat >"$suppressions" <<'SUPP'
{
   shell-test-interpreter-leaks
   Memcheck:Leak
   match-leak-kinds: definite
   ...
   obj:*/bash
}
SUPP
# A test that replaces malloc or operator new itself (dump_test counts
# allocations through them) keeps its replacements: memcheck then sees the
# glibc calls they forward to.
exec valgrind --tool=memcheck --quiet --error-exitcode=1 \
  --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite \
  --suppressions="$suppressions" --soname-synonyms=somalloc=nouserintercepts \
  --trace-children=yes --trace-children-skip='/bin/*,/usr/*,/sbin/*' \
  --num-callers=40 "$@"
