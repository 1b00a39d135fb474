#!/usr/bin/env bash
# check_c_deps.sh DEPS: DEPS lists the targets //c:mcx_c is built from (a
# genquery of deps(//c:mcx_c)). Fails if the C API depends on a target
# outside the core: //context (the absl::Status members) or //context:dot.
set -euo pipefail
deps="$1"
grep -qx '//context:core' "$deps" || { echo "//c:mcx_c does not depend on //context:core"; exit 1; }
status=0
for label in //context:context //context:dot //context:status.cc //context:dot.cc; do
  if grep -qx "$label" "$deps"; then
    echo "//c:mcx_c depends on $label, which is outside the core"
    status=1
  fi
done
[[ "$status" -eq 0 ]] && echo "ok: //c:mcx_c is built from the core and the kinds only"
exit "$status"
