#!/bin/bash
# End to end: starts the report server with three workers, asks it over its
# Unix socket for every worker's tree as JSON (checked: well-formed, one
# complete tree per worker) and as text, several times while the workers
# run, then stops it and checks that it exits cleanly.
set -euo pipefail
server="$1"
workers=3
# A short path: a Unix socket's path is limited to about 100 bytes, which
# TEST_TMPDIR may exceed.
dir="$(mktemp -d /tmp/mcx_report.XXXXXX)"
sock="$dir/s"
trap 'rm -rf "$dir"' EXIT
"$server" serve "$sock" "$workers" &
pid=$!
for _ in $(seq 200); do
  [ -S "$sock" ] && break
  sleep 0.05
done
[ -S "$sock" ] || { echo "the server did not start"; exit 1; }
for round in 1 2 3; do
  "$server" check "$sock" "$workers"
done
text="$("$server" ask "$sock" text)"
# Not `echo | head`: head may close the pipe before echo is done, and
# pipefail would take the SIGPIPE for a failure.
head -5 <<<"$text"
for i in 0 1 2; do
  grep -q "^== worker-$i (done)$" <<<"$text"
  grep -q "^worker-$i: " <<<"$text"
done
[ "$(grep -c '^Grand total: ' <<<"$text")" = "$workers" ]
grep -q "^unknown command 'hello'" <<<"$("$server" ask "$sock" hello)"
[ "$("$server" ask "$sock" quit)" = "bye" ]
wait "$pid"
echo "report_server_test: all checks passed"
