#!/usr/bin/env bash
# Usage: kind_api_only_test.sh FILE...
#
# Fails if a file of the slab kind includes a header under an internal/
# directory (mcx/context/internal/..., another kind's internal/) or names
# something in an internal namespace: a kind outside mcx has the kind API
# (mcx/context/kind_api.h, block_list.h) and the public headers, nothing
# else. Prints each offending line.
set -euo pipefail
[[ $# -gt 0 ]] || { echo "usage: $0 FILE..." >&2; exit 2; }
status=0
for f in "$@"; do
  [[ -f "$f" ]] || { echo "$f: no such file" >&2; exit 2; }
  if found="$(grep -nE '#include *"[^"]*/internal/|\binternal::|_internal::' "$f")"; then
    sed "s#^#$f:#" <<<"$found"
    status=1
  fi
done
if [[ "$status" -ne 0 ]]; then
  echo "FAIL: the slab kind reaches past the kind API (the lines above)" >&2
else
  echo "OK: $# files use the kind API and the public headers only"
fi
exit "$status"
