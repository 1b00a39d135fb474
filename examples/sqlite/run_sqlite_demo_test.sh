#!/bin/bash
# Runs the sqlite demo and fails if it fails or any of its own checks failed.
set -uo pipefail
out="$("$1" 2>&1)"
status=$?
echo "$out"
[[ $status -eq 0 ]] && grep -q "sqlite_demo: all checks passed" <<<"$out"
