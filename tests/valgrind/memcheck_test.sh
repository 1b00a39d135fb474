#!/bin/bash
# Runs memcheck_program under valgrind --tool=memcheck and checks its report:
# reads after reset and after free are invalid reads, a dropped context's
# chunks are definitely lost, and ordinary use is clean. Meaningful under
# --config=valgrind (the program is built with mempool annotations); in other
# configurations it only checks that the program runs.
set -euo pipefail
program="$1"
if [[ "$("$program" annotated)" != "yes" ]]; then
  echo "built without --config=valgrind: running the program natively only"
  "$program" clean
  exit 0
fi
command -v valgrind >/dev/null || { echo "valgrind is not installed"; exit 1; }

run() {  # mode -> valgrind's report on stdout
  valgrind --tool=memcheck --leak-check=full --error-exitcode=0 "$program" "$1" 2>&1 || true
}
expect() {  # mode pattern
  local out
  out="$(run "$1")"
  if ! grep -qE "$2" <<<"$out"; then
    echo "FAIL: mode $1: expected /$2/ in memcheck's report:"
    echo "$out"
    exit 1
  fi
  echo "ok: $1"
}
expect read-after-reset-pool "Invalid read of size 1"
expect read-after-reset-freelist "Invalid read of size 1"
expect read-after-free "Invalid read of size 1"
# The dropped context's chunks are reported, with the stack that allocated them.
expect leak "10,000 bytes in 10 blocks are definitely lost"  # its ten 1000-byte chunks
out="$(run clean)"
if ! grep -q "ERROR SUMMARY: 0 errors" <<<"$out" || grep -q "definitely lost: [1-9]" <<<"$out"; then
  echo "FAIL: ordinary use is not clean under memcheck:"
  echo "$out"
  exit 1
fi
echo "ok: clean"
