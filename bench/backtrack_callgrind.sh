#!/bin/sh
# Instructions per document of the backtracking parser (backtrack_benchmark.cc)
# for each strategy, under callgrind, counted only around the measured
# documents; then the instructions of one rewind after 1,000, 10,000 and
# 100,000 chunks. Needs valgrind. Run from the repository root:
#   bench/backtrack_callgrind.sh
set -eu
./mcx bazel build -c opt //bench:backtrack_benchmark >/dev/null 2>&1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# A copy: bazel-bin follows whichever configuration was built last.
cp "$(./mcx bazel info -c opt bazel-bin 2>/dev/null)/bench/backtrack_benchmark" "$out/bin"
bin="$out/bin"
for s in mcx_savepoint mcx_child talloc_child apr_subpool; do
  ops=$(valgrind --tool=callgrind --collect-atstart=no --callgrind-out-file="$out/$s" \
        "$bin" --callgrind="$s" 2>/dev/null | sed -n 's/.*"ops": \([0-9]*\).*/\1/p')
  total=$(sed -n 's/^summary: \([0-9]*\).*/\1/p' "$out/$s")
  echo "$s: $((total / ops)) instructions per document"
done
# One rewind after N chunks since the mark: the cost follows the blocks.
for n in 1000 10000 100000; do
  blocks=$(valgrind --tool=callgrind --collect-atstart=no --callgrind-out-file="$out/r$n" \
           "$bin" --callgrind="rewind:$n" 2>/dev/null | sed -n 's/.*"blocks": \([0-9]*\).*/\1/p')
  total=$(sed -n 's/^summary: \([0-9]*\).*/\1/p' "$out/r$n")
  echo "rewind after $n chunks ($blocks blocks): $total instructions"
done
