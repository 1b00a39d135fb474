#!/usr/bin/env bash
# Builds the handle pool fuzzer with --config=fuzz (clang, libFuzzer, ASan,
# UBSan) and runs it for SECONDS seconds from an empty corpus (the model
# decodes any bytes; libFuzzer grows the corpus itself).
#
#   bash tests/handle/run_fuzzer.sh SECONDS [LIBFUZZER_FLAGS...]
#
# Needs what tests/fuzz/run_fuzzer.sh installs (clang, its runtimes, lld);
# CI runs that one first. Exits non-zero on a violation, a crash, a leak or a
# build failure, keeping the work dir (reproducers in it) and printing it.
set -euo pipefail
[[ $# -ge 1 && "$1" =~ ^[0-9]+$ && "$1" -gt 0 ]] || {
  echo "usage: bash tests/handle/run_fuzzer.sh SECONDS [LIBFUZZER_FLAGS...]" >&2
  exit 2
}
SECONDS_TO_RUN="$1"
shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

./mcx bazel build --config=fuzz //tests/handle:handle_pool_fuzzer
BIN="$(./mcx bazel info --config=fuzz bazel-bin 2>/dev/null | tail -n 1)/tests/handle/handle_pool_fuzzer"
[[ -x "$BIN" ]] || { echo "run_fuzzer.sh: no fuzzer binary at $BIN" >&2; exit 1; }

OUT="$(mktemp -d "${TMPDIR:-/tmp}/mcx-handle-fuzz.XXXXXX")"
mkdir -p "$OUT/corpus" "$OUT/artifacts"
echo "run_fuzzer.sh: fuzzing for ${SECONDS_TO_RUN}s: $BIN (work dir $OUT)" >&2
status=0
timeout --kill-after=30 "$((SECONDS_TO_RUN + 300))" \
  "$BIN" -max_total_time="$SECONDS_TO_RUN" -timeout=60 -rss_limit_mb=4096 \
  -print_final_stats=1 -artifact_prefix="$OUT/artifacts/" "$@" "$OUT/corpus" </dev/null ||
  status=$?
found="$(find "$OUT/artifacts" -type f | head -n 20)"
if [[ $status -ne 0 || -n "$found" ]]; then
  echo "run_fuzzer.sh: FAILED (exit status $status); work dir kept: $OUT" >&2
  [[ -n "$found" ]] && echo "run_fuzzer.sh: reproducers:"$'\n'"$found" >&2
  [[ $status -ne 0 ]] && exit "$status"
  exit 1
fi
echo "run_fuzzer.sh: no violation in ${SECONDS_TO_RUN}s" >&2
rm -rf "$OUT"
