#!/usr/bin/env bash
# Replication between two managers on loopback (release builds, SQLite, mutual TLS):
#   1. lag: a stream of policy edits through A's API, each timed until B's API shows it;
#   2. catch-up: B stopped, A given SEED_GROUPS groups and SEED_EVENTS events, B started again and
#      timed until it has applied all of them.
#
#   bench/replication.sh            EDITS=300 SEED_GROUPS=20000 SEED_EVENTS=80000 by default
#
# Needs python3 (the lag and catch-up drivers); installs nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
command -v python3 >/dev/null || { echo "python3 is needed: apt-get install python3" >&2; exit 2; }
EDITS=${EDITS:-300}
SEED_GROUPS=${SEED_GROUPS:-20000}
SEED_EVENTS=${SEED_EVENTS:-80000}
BASE=${BASE_PORT:-19400}
(cd "$root" && swift build -c release --product portico >/dev/null && swift build -c release --product portico-bench >/dev/null)
bin="$root/.build/release/portico"
bench="$root/.build/release/portico-bench"
work=$(mktemp -d /tmp/portico-replication-bench.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]:-}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { # site index, listener offset
  echo $((BASE + $1 * 10 + $2))
}
write_config() { # site letter, index, peer letter, peer index, with peers?
  local dir="$work/$1"
  mkdir -p "$dir/ssl/peers"
  cat > "$dir/portico.yaml" <<YAML
site: {name: site-$1}
data_dir: data
identity: {generate: ecdsa-p256}
listeners:
  client: {bind: 127.0.0.1, port: $(port "$2" 1), access_log: false}
  replication: {bind: 127.0.0.1, port: $(port "$2" 4), access_log: false, trust: ssl/peers/}
  webservices: {bind: 127.0.0.1, port: $(port "$2" 6), access_log: false}
  client_plain: {enabled: false}
  console: {enabled: false}
  reporting: {enabled: false}
routes:
  - {listener: webservices, path: /api/v1/*, service: api}
  - {listener: replication, path: /replication/v1/*, service: replication}
YAML
  if [ "$5" = yes ]; then
    printf 'peers:\n  - {name: site-%s, url: "https://127.0.0.1:%s", certificate: ssl/peers/site-%s.pem}\n' "$3" "$(port "$4" 4)" "$3" >> "$dir/portico.yaml"
  fi
}
write_config a 0 b 1 no
write_config b 1 a 0 no
for s in a b; do "$bin" cert generate --config "$work/$s/portico.yaml" --key ecdsa-p256 --live >/dev/null; done
cp "$work/a/ssl/server.crt" "$work/b/ssl/peers/site-a.pem"
cp "$work/b/ssl/server.crt" "$work/a/ssl/peers/site-b.pem"
write_config a 0 b 1 yes
write_config b 1 a 0 yes
password="replication-bench-password"
for s in a b; do printf '%s\n' "$password" | "$bin" admin create --config "$work/$s/portico.yaml" --name bench --role admin >/dev/null; done

start() { # site
  "$bin" serve --config "$work/$1/portico.yaml" >>"$work/$1.log" 2>&1 &
  pids+=($!)
  eval "pid_$1=$!"
  local port; port=$( [ "$1" = a ] && port 0 6 || port 1 6 )
  for _ in $(seq 1 300); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then return; fi
    sleep 0.1
  done
  echo "site $1 did not start; its log:" >&2; cat "$work/$1.log" >&2; exit 1
}
start a
start b

echo "== lag: $EDITS policy edits at A, each timed until B's API shows it"
python3 "$root/bench/replication_lag.py" "$(port 0 6)" "$(port 1 6)" bench "$password" "$EDITS"

echo "== catch-up: B stopped, A writes $SEED_GROUPS groups and $SEED_EVENTS events, B restarted"
kill "$pid_b"; wait "$pid_b" 2>/dev/null || true
head=$("$bench" seed --config "$work/a/portico.yaml" --groups "$SEED_GROUPS" --events "$SEED_EVENTS")
started=$(date +%s.%N)
start b
python3 "$root/bench/replication_lag.py" catchup "$(port 1 6)" bench "$password" "$head" "$started"
