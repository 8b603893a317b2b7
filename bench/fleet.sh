#!/usr/bin/env bash
# A fleet at scale against one manager on this machine: `portico serve` (release build, the
# agent routes, SQLite) and `portico-agent fleet`, whose agents enroll once, then check in on
# their schedule, each on a fresh TCP and TLS connection that resumes its session.
#
#   bench/fleet.sh [agents] [interval seconds] [duration seconds] [more fleet options]
#                  (default 20000 agents every 6 s for 120 s: 3,333 check-ins/s)
#   KEY=rsa-2048 bench/fleet.sh         the manager's identity (default ecdsa-p256)
#   ACCESS_LOG=false bench/fleet.sh     its access log (default on, as shipped)
#   bench/fleet.sh 20000 6 120 --tls 1.2
#   EVENTS=1 bench/fleet.sh             also, through the API: a policy published at a third of
#                                       the run, 1,000 locks queued at half, and 10% of check-ins
#                                       reporting a batch of events
#
# Prints the fleet's progress each second and its table: achieved rate, latencies, connections
# and the share resumed, errors by kind, the manager's and the simulator's CPU per check-in,
# the manager's memory and the database's size.
set -euo pipefail
agents=${1:-20000}
interval=${2:-6}
duration=${3:-120}
shift $(( $# < 3 ? $# : 3 ))
root=$(cd "$(dirname "$0")/.." && pwd)
# A run started while an earlier one's connections sit in TIME_WAIT (a minute) is slower from
# its first second: wait them out.
for _ in $(seq 90); do
  waiting=$(ss -tan state time-wait 2>/dev/null | tail -n +2 | wc -l)
  [ "$waiting" -lt 1000 ] && break
  [ "$_" = 1 ] && echo "fleet: waiting for $waiting connections in TIME_WAIT to clear" >&2
  sleep 1
done
(cd "$root" && swift build -c release --product portico >/dev/null && swift build -c release --product portico-agent >/dev/null)
bin="$root/.build/release"
work=$(mktemp -d /tmp/portico-fleet.XXXXXX)
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port=${PORT:-18441}
cat > "$work/portico.yaml" <<YAML
data_dir: data
identity: {generate: ${KEY:-ecdsa-p256}}
listeners:
  client: {bind: 127.0.0.1, port: $port, access_log: ${ACCESS_LOG:-true}}
  client_plain: {enabled: false}
  replication: {enabled: false}
  console: {enabled: false}
  reporting: {enabled: false}
  webservices: {bind: 127.0.0.1, port: $((port + 5)), access_log: ${ACCESS_LOG:-true}}
routes:
  - {listener: client, path: /agent/v1/*, service: agent, max_body_bytes: 2MiB}
  - {listener: webservices, path: /api/v1/*, service: api}
YAML
cd "$work"
events=()
if [ -n "${EVENTS:-}" ]; then
  echo "fleet bench password" | "$bin/portico" admin create --config portico.yaml --name fleet --role admin >/dev/null
  events=(--api "https://127.0.0.1:$((port + 5))" --operator-name fleet --publish-at $((duration / 3)) --lock-at $((duration / 2)) --event-share 0.1)
  export PORTICO_FLEET_PASSWORD="fleet bench password"
fi
"$bin/portico" serve --config portico.yaml > serve.log 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q listening serve.log && break; sleep 0.1; done
token=$("$bin/portico" token create --config portico.yaml --expires 24h --unlimited)
"$bin/portico" agent-config export --config portico.yaml --url "https://127.0.0.1:$port" --token "$token" -o bootstrap.json
echo "fleet: $agents agents every ${interval}s for ${duration}s; identity ${KEY:-ecdsa-p256}, access log ${ACCESS_LOG:-true}; $*"
"$bin/portico-agent" fleet --bootstrap bootstrap.json --agents "$agents" --interval "$interval" --duration "$duration" \
  --server-pid "$pid" --database data/portico.sqlite ${events[@]+"${events[@]}"} "$@"
