#!/bin/bash
# Runs the tour, which checks its own claims, and fails if any failed. Then
# runs it with --dot and checks the DOT files: one per snapshot, each a
# digraph; if graphviz is installed, `dot` must render each without a word.
set -euo pipefail
tour="$1"
out="$("$tour")"
echo "$out"
grep -q "^tour: all claims held$" <<<"$out"

dir="${TEST_TMPDIR:-$(mktemp -d)}/tour-dot"
mkdir -p "$dir"
"$tour" --dot "$dir" >/dev/null
count=0
for f in "$dir"/step*.dot; do
  head -1 "$f" | grep -q "^digraph mcx {$"
  if [[ -x /usr/bin/dot ]]; then
    messages="$(/usr/bin/dot -Tsvg "$f" -o /dev/null 2>&1)"
    if [[ -n "$messages" ]]; then
      echo "dot complained about $f: $messages" >&2
      exit 1
    fi
  fi
  count=$((count + 1))
done
echo "tour_test: $count DOT files checked"
[[ "$count" -ge 7 ]]
