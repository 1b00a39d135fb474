#!/usr/bin/env bash
# What each optimisation bought, in instructions (callgrind), repeatably.
#
#   bench/history.sh            prints one Markdown table
#   bench/history.sh C1 C2 ...  only the rows of the commits named (as
#                               listed below), for adding to the table
#
# For each commit below, builds the library as of the commit's parent and as
# of the commit itself, each with today's benchmark sources (bench/ and the
# repository wiring for its peers copied in, so that the workloads are the
# same; built as bench/run.py builds them), and counts instructions per
# operation of the mcx contenders with
# `workloads --callgrind=W:C` under valgrind. Needs what `./mcx bench
# --callgrind` needs; takes a few minutes per commit (two optimised builds in
# git worktrees under a temporary directory, removed at the end).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# commit | what it changed | workloads to count (W:contender,...)
CHANGES=(
  "a0f3b85|pool: the bump window follows the latest block, not current|W1.rand:mcx_pool,W1.32B:mcx_pool"
  "163e891|block cache: thread caches, 64 MiB cap, limit skip, prefetch|W2:mcx_pool,W4:mcx_pool,W2:mcx_freelist"
  "15fb7ca|thread cache via a __thread pointer; no-op releases skipped|W2:mcx_pool,W4:mcx_pool"
  "424bd92|Context::Free inline in release builds|W3:mcx_freelist"
  "f6b2801|children start with small first blocks, learned from siblings|W4:mcx_pool,W11:mcx_pool,W2:mcx_pool"
  "c5beee1|cheaper creation and destroy: default-options path, plain leaves|W4:mcx_pool,W11:mcx_pool"
  "a6e1e0e|pool state derives the window size and the growth base|W4:mcx_pool,W11:mcx_pool"
  "8521a76|block cache fast paths keep few values live|W4:mcx_pool,W2:mcx_pool"
  "8e8b8e7|context header back to 96 bytes (48-bit counts, 16-bit first block)|W4:mcx_pool,W11:mcx_pool"
  "63edbf6|first block sizes: tier 0 rounding and coding inline|W4:mcx_pool"
  "6b946d9|freelist counts live bytes; owner test loads the thread pointer|W3:mcx_freelist"
  "31589e6|release and pool init read the first block's size without calls|W4:mcx_pool,W2:mcx_pool"
  "3968c18|pool init: the default path calls nothing, saves no registers|W4:mcx_pool,W11:mcx_pool"
  "d914739|NoAllocScope's depth a __thread int: no init guard per read|W4:mcx_pool,W2:mcx_pool"
  "e2c5b6a|teardown releases plain leaves inline, two-store unlink|W4:mcx_pool,W11:mcx_pool"
  "23c00e9|creation tests the tree lock once; default first block first|W4:mcx_pool"
  "fc21110|pool release with the first block alone saves no registers|W4:mcx_pool,W11:mcx_pool"
  "d289413|first block's size before the kind state; pool release by count|W4:mcx_pool,W4:mcx_freelist"
  "1cd6721|one kind call for the first block's size and alignment|W4:mcx_pool,W11:mcx_pool"
  "0658b59|a child's creation composed with its kind's FirstBlock and Init|W4:mcx_pool,W4:mcx_freelist,W11:mcx_pool"
  "435a2a4|Create with default options inline, passing the name's length|W4:mcx_pool,W4:mcx_freelist,W11:mcx_pool"
  "60cf8ee|composed creation: one compare judges the first block's size|W4:mcx_pool"
  "22a69c8|pool: its KindSpec judges the options once|W4:mcx_pool,W11:mcx_pool"
  "48af198|the tree reaches the default cache's thread cache inline|W4:mcx_pool,W2:mcx_pool,W11:mcx_pool"
  "d3e4983|inline allocation branches on the window's compares alone|W4:mcx_pool,W1.rand:mcx_pool,W2:mcx_pool"
  "f16c3ce|teardown asks once about other walks; a child links in place|W4:mcx_pool"
  "8bb94bc|freelist units lie on pages: a unit pins one page, not two|W3:mcx_freelist,W2:mcx_freelist"
  "037e65b|freelist sweeps pass unmarked units with one test|W3:mcx_freelist"
  "ac28448|sixteen freelist size classes per doubling from 1 KiB|W3:mcx_freelist,W2:mcx_freelist"
  "88cb471|freelist chunks at a unit's end stay off the next unit's page|W3:mcx_freelist,W2:mcx_freelist"
  "f9084a3|inline Alloc tests the window's limit first, alone|W3:mcx_freelist,W1.rand:mcx_pool,W4:mcx_pool"
  "cb832cc|freelist free's slow paths find the state themselves|W3:mcx_freelist"
  "4edeab4|inline Alloc calls a windowless kind through its table|W3:mcx_freelist,W2:mcx_pool,W4:mcx_pool"
  "6b69b42|learned first blocks grow by half again, not twice|W4:mcx_pool,W2:mcx_pool,W2:mcx_freelist"
  "e60bff3|learned first blocks: the child's need, taught to every ancestor|W4:mcx_pool,W2:mcx_pool,W2:mcx_freelist"
  "037e814|thread cache decay reads the old tail's top instead of walking|W4:mcx_pool,W11:mcx_pool,W2:mcx_pool"
)

TMP="$(mktemp -d "${TMPDIR:-/tmp}/mcx-history.XXXXXX")"
cleanup() {
  for wt in "$TMP"/wt-*; do
    [[ -d "$wt" ]] && git worktree remove --force "$wt" >/dev/null 2>&1 || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

# count BINARY W C -> instructions per operation
count() {
  local out="$TMP/cg.out" ops total
  ops="$(valgrind --tool=callgrind --collect-atstart=no --callgrind-out-file="$out" \
           "$1" "--callgrind=$2:$3" 2>/dev/null | sed -n 's/.*"ops": \([0-9]*\).*/\1/p')"
  total="$(sed -n 's/^totals: \([0-9]*\).*/\1/p' "$out")"
  echo $(( total / ops ))
}

# build REV -> path of a workloads binary built from REV's library and
# today's benchmark
build() {
  local rev="$1" wt="$TMP/wt-$1"
  git worktree add --detach "$wt" "$rev" >/dev/null 2>&1
  rm -rf "$wt/bench"
  cp -r "$ROOT/bench" "$wt/bench"
  cp "$ROOT/third_party/bazel/system_libs.bzl" "$wt/third_party/bazel/system_libs.bzl"
  (cd "$wt" && bazel --output_base="$TMP/ob-$rev" build -c opt --copt=-fomit-frame-pointer //bench:workloads \
     >"$TMP/build-$rev.log" 2>&1) || { echo "build of $rev failed: $TMP/build-$rev.log" >&2; exit 1; }
  cp "$wt/bazel-bin/bench/workloads" "$TMP/workloads-$rev"
  (cd "$wt" && bazel --output_base="$TMP/ob-$rev" shutdown >/dev/null 2>&1) || true
  echo "$TMP/workloads-$rev"
}

if [[ $# -eq 0 ]]; then
  echo "| commit | change | workload | contender | instructions/op before | after | after / before |"
  echo "|---|---|---|---|---|---|---|"
fi
for entry in "${CHANGES[@]}"; do
  IFS='|' read -r commit what cases <<<"$entry"
  if [[ $# -gt 0 && " $* " != *" $commit "* ]]; then continue; fi
  before="$(build "$(git rev-parse --short "$commit^")")"
  after="$(build "$(git rev-parse --short "$commit")")"
  IFS=',' read -r -a list <<<"$cases"
  for c in "${list[@]}"; do
    w="${c%%:*}"
    k="${c##*:}"
    b="$(count "$before" "$w" "$k")"
    a="$(count "$after" "$w" "$k")"
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$commit" "$what" "$w" "$k" "$b" "$a" \
      "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }')"
  done
done
