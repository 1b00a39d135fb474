#!/bin/bash
# End to end: starts the report server with three workers, asks it over its
# Unix socket for every worker's tree as JSON (checked: well-formed, one
# complete tree per worker) and as text, several times while the workers
# run; then clients that misbehave (silent, no end of file, gone before
# the answer), after each of which it must still answer; then stops it
# and checks that it exits cleanly.
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

# Clients that misbehave (perl-base, which every Debian system has, for a
# raw Unix socket). Their timing (2 s timeouts) is the native build's: under
# memcheck, which runs one thread at a time, they are left out.
if [ -z "${MCX_UNDER_MEMCHECK:-}" ]; then
# Clients that misbehave (perl-base, which every Debian system has, for a
# raw Unix socket): none may stop the server, and none may hold up the
# others for long (the server drops a client after 2 s).
# A client that connects and sends nothing, holding the connection open.
perl -MIO::Socket::UNIX -e '
  my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!";
  open(my $f, ">", $ARGV[1]) or die; close $f;
  sleep 30;' "$sock" "$dir/connected" &
holder=$!
for _ in $(seq 200); do
  [ -e "$dir/connected" ] && break
  sleep 0.05
done
timeout 10 "$server" check "$sock" "$workers" ||
  { echo "a silent client held up the others"; kill "$holder"; exit 1; }
kill "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true
# A client that sends its line and waits for the answer without closing
# its side: a line is a whole command.
perl -MIO::Socket::UNIX -e '
  my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!";
  print $s "report\n"; $s->flush;
  local $SIG{ALRM} = sub { die "no answer to a line without end of file\n" };
  alarm 10;
  my $n = sysread($s, my $d, 65536);
  alarm 0;
  die "empty answer\n" unless $n && $n > 0;' "$sock"
# Clients that send a command and go away before the answer: the server's
# write fails (EPIPE), and it serves the next.
for _ in $(seq 10); do
  perl -MIO::Socket::UNIX -e '
    my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!";
    print $s "text\n"; close $s;' "$sock"
done
kill -0 "$pid" || { echo "the server died after clients closed early"; exit 1; }
"$server" check "$sock" "$workers"
fi
[ "$("$server" ask "$sock" quit)" = "bye" ]
wait "$pid"
echo "report_server_test: all checks passed"
