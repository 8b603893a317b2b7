#!/bin/bash
# Counts per request, for one server process under a wrk load: heap allocations (malloc),
# Swift reference count operations (swift_retain, swift_release; calls, including the cheap
# ones on small strings, nil and immortal objects), run-time exclusivity checks
# (swift_beginAccess), and the server's context switches.
#
#   bench/perf/counts.sh PID URL [wrk options...]
#   bench/perf/counts.sh 1234 https://127.0.0.1:19441/healthz
#   bench/perf/counts.sh 1234 https://127.0.0.1:19441/healthz -c16 -H "Connection: close"
#
# Needs root (uprobes), perf and wrk. Adds the probes on first use (`perf probe -d 'probe_*'`
# removes them). Counting slows the server several times over: compare counts, not speed.
set -euo pipefail
pid=$1 url=$2
shift 2
libc=$(ldd "$(readlink -f /proc/$pid/exe)" | awk '/libc.so/{print $3}')
swiftcore=$(ldd "$(readlink -f /proc/$pid/exe)" | awk '/libswiftCore.so/{print $3}')
events=context-switches
if perf probe -l 2>/dev/null | grep -q probe_libc:malloc || perf probe -q -x "$libc" malloc 2>/dev/null; then
  events+=,probe_libc:malloc
fi
if [ -n "$swiftcore" ]; then
  perf probe -l 2>/dev/null | grep -q probe_libswiftCore:swift_retain || perf probe -q -x "$swiftcore" -a swift_retain -a swift_release 2>/dev/null || true
  perf probe -l 2>/dev/null | grep -q probe_libswiftCore:swift_retain && events+=,probe_libswiftCore:swift_retain,probe_libswiftCore:swift_release
  # Run-time exclusivity checks (one per access the compiler could not prove safe).
  perf probe -l 2>/dev/null | grep -q probe_libswiftCore:swift_beginAccess || perf probe -q -x "$swiftcore" -a swift_beginAccess 2>/dev/null || true
  perf probe -l 2>/dev/null | grep -q probe_libswiftCore:swift_beginAccess && events+=,probe_libswiftCore:swift_beginAccess
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
perf stat -e "$events" -p "$pid" -x, -o "$out" -- sleep 6 &
stat_pid=$!
sleep 0.3
requests=$(wrk -t2 -c64 -d5s "$@" "$url" | awk '/requests in/{print $1}')
wait "$stat_pid"
awk -F, -v n="$requests" '/^[0-9]/{split($3, name, ":"); printf "%-18s %8.2f per request\n", name[length(name)], $1 / n}' "$out"
echo "($requests requests)"
