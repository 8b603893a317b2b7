#!/usr/bin/env bash
# Full-protocol check-ins per second: a release `portico serve` on SQLite, and
# `portico-agent simulate` with many agents in one process on the same machine.
#
#   bench/agents.sh [agents] [seconds] [url-kind]     defaults: 200 agents, 20 s, https
#
# url-kind: https (client listener, TLS) or plain (client_plain listener).
set -euo pipefail
agents=${1:-200}
seconds=${2:-20}
kind=${3:-https}
root=$(cd "$(dirname "$0")/.." && pwd)
(cd "$root" && swift build -c release --product portico >/dev/null && swift build -c release --product portico-agent >/dev/null)
bin="$root/.build/release"
work=$(mktemp -d /tmp/portico-agent-bench.XXXXXX)
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/portico.yaml" <<YAML
data_dir: data
identity: {generate: ${KEY_TYPE:-rsa-2048}}
listeners:
  client: {bind: 127.0.0.1, port: 19451, access_log: false}
  client_plain: {bind: 127.0.0.1, port: 19452, tls: false, access_log: false}
  replication: {enabled: false}
  console: {enabled: false}
  reporting: {enabled: false}
  webservices: {enabled: false}
routes:
  - {listeners: [client, client_plain], path: /agent/v1/*, service: agent}
YAML
"$bin/portico" serve --config "$work/portico.yaml" --log-level warning 2>"$work/serve.log" &
pid=$!
for _ in $(seq 100); do curl -sk https://127.0.0.1:19451/healthz >/dev/null 2>&1 && break; sleep 0.1; done
token=$("$bin/portico" token create --config "$work/portico.yaml" --unlimited --expires 1h)
url=https://127.0.0.1:19451; [ "$kind" = plain ] && url=http://127.0.0.1:19452
"$bin/portico" agent-config export --config "$work/portico.yaml" --url "$url" --token "$token" -o "$work/bootstrap.json"
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(ticks)
"$bin/portico-agent" simulate --bootstrap "$work/bootstrap.json" --agents "$agents" --duration "$seconds" | tail -2 | tee "$work/result.txt"
after=$(ticks)
checkins=$(tail -1 "$work/result.txt" | cut -f2)
# Enrollment is inside the window too; with short runs this overstates the per-check-in cost.
awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$checkins" 'BEGIN { printf "server CPU: %.0f us per check-in (%.1f s over the run)\n", t / hz * 1e6 / n, t / hz }'
