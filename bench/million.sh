#!/usr/bin/env bash
# A manager holding a large fleet: how long device pages, searches and the reports take, and
# how many bytes a device costs in the database.
#
#   bench/million.sh [sqlite|postgres] [devices]      (default: sqlite, 1,000,000)
#   PORTICO_BENCH_POSTGRES_URL=postgres://user:password@127.0.0.1:5432/portico   (postgres:
#       a server where the user may create databases; the run creates one and drops it)
#
#   GENERATE=1 bench/million.sh postgres     the devices made by SQL, with random keys (fast)
#   KEEP=1 bench/million.sh                  keeps the SQLite database's folder, and says where
#
# The devices are written straight into the database (`portico-bench enroll-fleet`), then
# given check-in times spread over the last 10 days, a tenth of them an older policy serial,
# and ten groups with a published policy each, so that every report has work to do.
set -euo pipefail
engine=${1:-sqlite}
devices=${2:-1000000}
root=$(cd "$(dirname "$0")/.." && pwd)
(cd "$root" && swift build -c release --product portico >/dev/null && swift build -c release --product portico-bench >/dev/null)
bin="$root/.build/release"
work=$(mktemp -d /tmp/portico-million.XXXXXX)
admin=${PORTICO_BENCH_POSTGRES_URL:-postgres://portico:portico@127.0.0.1:5432/portico}
database="portico_million_$$"
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  [ "$engine" = postgres ] && psql "$admin" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
  if [ -n "${KEEP:-}" ]; then echo "kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
storage=""
if [ "$engine" = postgres ]; then
  psql "$admin" -qc "CREATE DATABASE $database" >/dev/null
  url="${admin%/*}/$database"
  storage="storage: {postgres: {url: \"$url\", pool_size: 8}}"
fi
cat > "$work/portico.yaml" <<YAML
data_dir: data
$storage
identity: {generate: ecdsa-p256}
listeners:
  client: {enabled: false}
  client_plain: {enabled: false}
  replication: {enabled: false}
  console: {enabled: false}
  reporting: {bind: 127.0.0.1, port: 19545, access_log: false}
  webservices: {bind: 127.0.0.1, port: 19546, access_log: false}
routes:
  - {listener: webservices, path: /api/v1/*, service: api}
  - {listener: reporting, path: /*, service: reporting}
YAML
cd "$work"
start=$(date +%s.%N)
if [ -n "${GENERATE:-}" ]; then
  # Rows made by SQL, with random bytes for keys: as large as enrolled devices, but no agent
  # can check in as them. Minutes faster than deriving a million key pairs.
  "$bin/portico" db migrate --config portico.yaml >/dev/null
  rows="INSERT INTO devices (id, signing_key, agreement_key, hostname, os, state, enrolled_ms, origin_site, hlc)"
  if [ "$engine" = postgres ]; then
    psql "$url" -qc "$rows SELECT 'd-' || md5(i::text), decode(md5(i::text) || md5((i + 1)::text), 'hex'), decode(md5((i + 2)::text) || md5((i + 3)::text), 'hex'), 'fleet-' || i, 'simulated', 'active', 0, 'default-site', 0 FROM generate_series(0, $devices - 1) AS i"
  else
    sqlite3 data/portico.sqlite "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $devices - 1) $rows SELECT 'd-' || lower(hex(randomblob(16))), randomblob(32), randomblob(32), 'fleet-' || i, 'simulated', 'active', 0, 'default-site', 0 FROM n"
  fi
  echo "generated $devices devices in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s"
else
  "$bin/portico-bench" enroll-fleet --config portico.yaml --agents "$devices" --out fleet.json >/dev/null
  echo "enrolled $devices devices in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s"
fi

if [ "$engine" = postgres ]; then
  psql "$url" -qc "VACUUM ANALYZE devices" >/dev/null
  size=$(psql "$url" -tAc "SELECT pg_database_size(current_database())")
else
  size=$(stat -c %s data/portico.sqlite)
fi
echo "database as enrolled: $size bytes, $((size / devices)) bytes per device ($engine)"
echo "million bench password" | "$bin/portico" admin create --config portico.yaml --name bench --role admin >/dev/null
"$bin/portico" serve --config portico.yaml --log-level warning 2>serve.log &
pid=$!
for _ in $(seq 100); do curl -sk https://127.0.0.1:19546/healthz >/dev/null 2>&1 && break; sleep 0.1; done
api=https://127.0.0.1:19546/api/v1
token=$(curl -sk "$api/auth/login" -H 'content-type: application/json' -d '{"name":"bench","password":"million bench password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
call() { curl -sk -H "authorization: Bearer $token" -H 'content-type: application/json' "$@"; }
for n in $(seq 0 9); do
  group=$(call "$api/groups" -d "{\"name\":\"group-$n\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  policy=$(call "$api/policies" -d "{\"name\":\"policy-$n\",\"document\":{\"n\":$n}}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  call "$api/policies/$policy/publish" -d '{"version":1}' >/dev/null
  call -X PUT "$api/policies/$policy/groups/$group" >/dev/null
  echo "$group" >> groups.txt
done
now=$(date +%s%3N)
sql="UPDATE devices SET last_checkin_ms = $now - (ABS(RANDOM()) % 864000000), policy_serial = CASE WHEN ABS(RANDOM()) % 10 = 0 THEN 0 ELSE (SELECT value FROM counters WHERE name = 'policy_serial') END;"
members="INSERT INTO device_group_members (device_id, group_id, origin_site, hlc) SELECT d.id, g.id, 'default-site', 0 FROM devices d JOIN (SELECT id, ROW_NUMBER() OVER (ORDER BY id) - 1 AS n FROM device_groups) g ON g.n = (ABS(RANDOM()) % 10) ON CONFLICT DO NOTHING;"
if [ "$engine" = postgres ]; then
  psql "$url" -qc "${sql//RANDOM()/(random() * 2147483647)::bigint}" -c "${members//RANDOM()/(random() * 2147483647)::bigint}" \
    -c "VACUUM ANALYZE devices, device_group_members" >/dev/null
  size=$(psql "$url" -tAc "SELECT pg_database_size(current_database())")
else
  sqlite3 data/portico.sqlite "$sql" "$members" "PRAGMA wal_checkpoint(TRUNCATE);" "ANALYZE;" >/dev/null
  size=$(stat -c %s data/portico.sqlite)
fi
echo "database with check-ins and groups: $size bytes, $((size / devices)) bytes per device ($engine)"
# A manager started on this database, as one that has run for a while: it gathers the query
# statistics SQLite plans with at start (PostgreSQL's autovacuum has them already).
kill "$pid"; wait "$pid" 2>/dev/null || true
"$bin/portico" serve --config portico.yaml --log-level warning 2>>serve.log &
pid=$!
for _ in $(seq 300); do curl -sk https://127.0.0.1:19546/healthz >/dev/null 2>&1 && break; sleep 0.1; done
python3 "$root/bench/million.py" "$api" https://127.0.0.1:19545 "$token"
