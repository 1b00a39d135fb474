#!/usr/bin/env bash
# Instructions per operation of every case of //bench:helpers_benchmark,
# each in its own callgrind run with collection on around the measured
# operations only (docs/performance.md, "Everyday helpers"):
#   bench/helpers_callgrind.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./mcx bazel build -c opt //bench:helpers_benchmark >&2
bin=bazel-bin/bench/helpers_benchmark
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
echo "| case | instructions per operation |"
echo "|---|---|"
for c in BM_Printf_McxPrintf/0 BM_Printf_McxCPrintf/0 BM_Printf_TallocAsprintf/0 \
         BM_Printf_AprPsprintf/0 BM_Printf_AbslStrFormat/0 \
         BM_Printf_McxPrintf/1 BM_Printf_McxCPrintf/1 BM_Printf_TallocAsprintf/1 \
         BM_Printf_AprPsprintf/1 BM_Printf_AbslStrFormat/1 \
         BM_StrCat_McxStrCat BM_StrCat_McxCStrcat BM_StrCat_AprPstrcat BM_StrCat_AbslStrCat \
         BM_Objects_NewArray/1000 BM_Objects_NewEach/1000; do
  ops=$(valgrind --tool=callgrind --collect-atstart=no --callgrind-out-file="$out" \
          "$bin" --callgrind="$c" 2>/dev/null | tail -1 | sed 's/[^0-9]//g')
  total=$(grep -E '^(totals|summary):' "$out" | head -1 | awk '{print $2}')
  echo "| $c | $((total / ops)) |"
done
