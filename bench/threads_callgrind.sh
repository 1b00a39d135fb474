#!/usr/bin/env bash
# Instructions per allocation of W9 and W10 (bench/threads.cc), all threads
# counted, each case in its own callgrind run with collection on around the
# measured round only (docs/performance.md, "Threads: W9 and W10"):
#   bench/threads_callgrind.sh            every case
#   bench/threads_callgrind.sh W9/mcx_shared/1 W9/mcx_pool_per_thread/1
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./mcx bazel build -c opt //bench:threads >&2
bin=bazel-bin/bench/threads
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
cases=("$@")
if [[ ${#cases[@]} -eq 0 ]]; then
  for t in 1 2 4; do
    cases+=("W9/mcx_shared/$t" "W9/mcx_pool_per_thread/$t" "W9/protobuf_arena/$t" "W9/malloc/$t")
  done
  cases+=(W10/mcx_freelist W10/malloc)
fi
echo "| case | instructions per allocation |"
echo "|---|---|"
for c in "${cases[@]}"; do
  ops=$(valgrind --tool=callgrind --collect-atstart=no --callgrind-out-file="$out" \
          "$bin" --callgrind="$c" 2>/dev/null | tail -1 | sed 's/[^0-9]//g')
  total=$(grep -E '^(totals|summary):' "$out" | head -1 | awk '{print $2}')
  echo "| $c | $(awk -v t="$total" -v o="$ops" 'BEGIN { printf "%.1f", t / o }') |"
done
