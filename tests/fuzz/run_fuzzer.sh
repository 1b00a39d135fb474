#!/usr/bin/env bash
# Builds the context-tree fuzzer with --config=fuzz (clang, libFuzzer, ASan,
# UBSan) and runs it on a copy of the seed corpus for SECONDS seconds.
#
#   bash tests/fuzz/run_fuzzer.sh SECONDS [LIBFUZZER_FLAGS...]
#   bash tests/fuzz/run_fuzzer.sh 60
#   bash tests/fuzz/run_fuzzer.sh 3600 -jobs=4 -workers=4
#
# Exits 0 if nothing was found, non-zero on a crash, a violation, a leak, a
# timeout or a build failure. Work files (the grown corpus, crash-* inputs)
# go to $MCX_FUZZ_OUT if set, else to a temporary directory that is removed
# when the run is clean and kept (and printed) when it is not.
#
# Installs what it needs with apt-get when it is missing (as root, or via
# sudo): clang and its runtimes (libclang-rt-14-dev); ./mcx installs the rest.
set -euo pipefail

usage() {
  echo "usage: bash tests/fuzz/run_fuzzer.sh SECONDS [LIBFUZZER_FLAGS...]" >&2
  exit 2
}
[[ $# -ge 1 && "$1" =~ ^[0-9]+$ && "$1" -gt 0 ]] || usage
SECONDS_TO_RUN="$1"
shift

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

# --- Prerequisites ------------------------------------------------------------

have_fuzzer_runtime() {
  command -v clang >/dev/null 2>&1 && command -v clang++ >/dev/null 2>&1 || return 1
  local dir
  dir="$(clang -print-resource-dir 2>/dev/null)/lib/linux"
  [[ -f "$dir/libclang_rt.fuzzer-x86_64.a" && -f "$dir/libclang_rt.asan-x86_64.a" &&
     -f "$dir/libclang_rt.ubsan_standalone-x86_64.a" ]]
}

apt_install() {
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      echo "run_fuzzer.sh: need root (or sudo) to install: $*" >&2
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y --no-install-recommends "$@" </dev/null; then
    "${sudo[@]}" apt-get update </dev/null
    "${sudo[@]}" apt-get install -y --no-install-recommends "$@" </dev/null
  fi
}

if ! have_fuzzer_runtime; then
  echo "run_fuzzer.sh: installing clang and its runtimes (libclang-rt-14-dev, lld)" >&2
  apt_install clang libclang-rt-14-dev lld
  have_fuzzer_runtime || { echo "run_fuzzer.sh: libFuzzer runtime still missing" >&2; exit 1; }
fi
if ! command -v ld.lld >/dev/null 2>&1; then
  apt_install lld
fi

# --- Build --------------------------------------------------------------------

./mcx bazel build --config=fuzz //tests/fuzz:tree_fuzzer
BIN="$(./mcx bazel info --config=fuzz bazel-bin 2>/dev/null | tail -n 1)/tests/fuzz/tree_fuzzer"
[[ -x "$BIN" ]] || { echo "run_fuzzer.sh: no fuzzer binary at $BIN" >&2; exit 1; }

# --- Run ----------------------------------------------------------------------

if [[ -n "${MCX_FUZZ_OUT:-}" ]]; then
  OUT="$MCX_FUZZ_OUT"
  KEEP=1
else
  OUT="$(mktemp -d "${TMPDIR:-/tmp}/mcx-fuzz.XXXXXX")"
  KEEP=0
fi
mkdir -p "$OUT/corpus" "$OUT/artifacts"
cp "$ROOT"/tests/fuzz/corpus/* "$OUT/corpus/"

echo "run_fuzzer.sh: fuzzing for ${SECONDS_TO_RUN}s: $BIN (work dir $OUT)" >&2
status=0
# libFuzzer stops itself after -max_total_time; `timeout` bounds a hang of the
# whole process (the per-input limit is -timeout).
timeout --kill-after=30 "$((SECONDS_TO_RUN + 300))" \
  "$BIN" -max_total_time="$SECONDS_TO_RUN" -timeout=60 -rss_limit_mb=4096 \
  -print_final_stats=1 -artifact_prefix="$OUT/artifacts/" "$@" \
  "$OUT/corpus" </dev/null || status=$?

found="$(find "$OUT/artifacts" -type f | head -n 20)"
if [[ $status -ne 0 || -n "$found" ]]; then
  echo "run_fuzzer.sh: FAILED (exit status $status)" >&2
  [[ -n "$found" ]] && echo "run_fuzzer.sh: reproducers:"$'\n'"$found" >&2
  echo "run_fuzzer.sh: work dir kept: $OUT" >&2
  [[ $status -ne 0 ]] && exit "$status"
  exit 1
fi
echo "run_fuzzer.sh: no crash in ${SECONDS_TO_RUN}s" >&2
[[ $KEEP -eq 1 ]] || rm -rf "$OUT"
