#!/usr/bin/env bash
# Push at scale against one manager on this machine: `portico serve` (release build, SQLite)
# with a fleet enrolled straight into its database (`portico-bench enroll-fleet`), and
# `portico-agent hold`, whose agents each hold a wait open on a kept-alive connection of their
# own. Once every agent is held: the manager's memory per held agent, its CPU while nothing
# happens, then 1,000 locks queued through the API for random agents, timed from the API call
# until the agent has the lock.
#
#   bench/push.sh [agents] [more hold options]     (default 19000 agents: see the descriptor limit below)
#   SCHEME=https bench/push.sh                     the TLS client listener (default: the plain one, 8014)
#   KEY=rsa-2048 bench/push.sh                     the manager's identity (default ecdsa-p256)
#   KEEP=1 bench/push.sh                           keep the run's folder (config, logs) under /tmp
#
# Each held agent is a connection: the manager needs a descriptor per agent, and so does the
# simulator. Both run under this machine's descriptor limit (`ulimit -n`).
set -euo pipefail
agents=${1:-19000}
shift $(( $# < 1 ? $# : 1 ))
root=$(cd "$(dirname "$0")/.." && pwd)
limit=$(ulimit -n)
if [ "$agents" -gt $((limit - 500)) ]; then
  echo "push: $agents agents need more descriptors than this shell's limit of $limit allows (ulimit -n); at most $((limit - 500))" >&2
  exit 2
fi
(cd "$root" && swift build -c release --product portico >/dev/null && swift build -c release --product portico-agent >/dev/null \
  && swift build -c release --product portico-bench >/dev/null)
bin="$root/.build/release"
work=$(mktemp -d /tmp/portico-push.XXXXXX)
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
  # The folder holds keys and logs: kept only when asked (KEEP=1).
  if [ "${KEEP:-0}" = 1 ]; then echo "push: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
port=${PORT:-18441}
scheme=${SCHEME:-http}
cat > "$work/portico.yaml" <<YAML
data_dir: data
identity: {generate: ${KEY:-ecdsa-p256}}
agents: {push: {hold: ${HOLD:-300s}}}
listeners:
  client: {bind: 127.0.0.1, port: $port, access_log: false, limits: {max_connections: 30000}}
  client_plain: {bind: 127.0.0.1, port: $((port + 1)), access_log: false, limits: {max_connections: 30000}}
  replication: {enabled: false}
  console: {enabled: false}
  reporting: {enabled: false}
  webservices: {bind: 127.0.0.1, port: $((port + 5)), access_log: false}
routes:
  - {listeners: [client, client_plain], path: /agent/v1/*, service: agent}
  - {listener: webservices, path: /api/v1/*, service: api}
YAML
cd "$work"
echo "push bench password" | "$bin/portico" admin create --config portico.yaml --name pusher --role admin >/dev/null
"$bin/portico-bench" enroll-fleet --config portico.yaml --agents "$agents" --out fleet.json >/dev/null
"$bin/portico" serve --config portico.yaml > serve.log 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q listening serve.log && break; sleep 0.1; done
url="https://127.0.0.1:$port"
[ "$scheme" = http ] && url="http://127.0.0.1:$((port + 1))"
token=$("$bin/portico" token create --config portico.yaml --expires 24h --unlimited)
"$bin/portico" agent-config export --config portico.yaml --url "$url" --token "$token" -o bootstrap.json
echo "push: $agents agents holding waits at $url; identity ${KEY:-ecdsa-p256}; $*"
PORTICO_FLEET_PASSWORD="push bench password" "$bin/portico-agent" hold --bootstrap bootstrap.json --enrolled fleet.json --agents "$agents" \
  --server-pid "$pid" --api "https://127.0.0.1:$((port + 5))" --operator-name pusher "$@"
