#!/bin/sh
# Instructions per document of the backtracking parser (backtrack_benchmark.cc)
# for each strategy, under callgrind, counted only around the measured
# documents. Needs valgrind. Run from the repository root:
#   bench/backtrack_callgrind.sh
set -eu
./mcx bazel build -c opt //bench:backtrack_benchmark >/dev/null 2>&1
bin=bazel-bin/bench/backtrack_benchmark
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for s in mcx_savepoint mcx_child talloc_child apr_subpool; do
  ops=$(valgrind --tool=callgrind --collect-atstart=no --callgrind-out-file="$out/$s" \
        "$bin" --callgrind="$s" 2>/dev/null | sed -n 's/.*"ops": \([0-9]*\).*/\1/p')
  total=$(sed -n 's/^summary: \([0-9]*\).*/\1/p' "$out/$s")
  echo "$s: $((total / ops)) instructions per document"
done
