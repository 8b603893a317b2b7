#!/usr/bin/env bash
# The directory's sync at scale: OpenLDAP's slapd (Debian's slapd) on loopback, seeded with
# USERS users (100,000 by default) in 20 groups, and a release `portico serve` (SQLite) whose
# `directory` section syncs them at start, a page of 500 at a time over LDAPS.
#
#   bench/directory.sh [users]
#
# Prints the sync's time and users per second (from the sync's own record in the database),
# the manager's RSS before the sync, at its peak during it (sampled every 100 ms) and after,
# and the database's size. Needs slapd, slapadd, openssl and python3.
set -euo pipefail
users=${1:-100000}
root=$(cd "$(dirname "$0")/.." && pwd)
(cd "$root" && swift build -c release --product portico >/dev/null)
bin="$root/.build/release/portico"
work=$(mktemp -d /tmp/portico-directory-bench.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
base="dc=example,dc=test"

# The directory: a generated certificate, the seed written by python3, loaded by slapadd.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/server.key" -out "$work/server.crt" -days 1 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 2>/dev/null
mkdir -p "$work/db"
cat > "$work/slapd.conf" <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile $work/slapd.pid
TLSCertificateFile $work/server.crt
TLSCertificateKeyFile $work/server.key
database mdb
maxsize 4294967296
suffix "$base"
rootdn "cn=admin,$base"
rootpw "bench admin"
directory $work/db
# The search account may read every entry and page through all of them.
limits dn.exact="uid=portico,ou=people,$base" size=unlimited size.prtotal=unlimited
access to * by users read by anonymous auth by * none
EOF
python3 - "$users" "$base" > "$work/seed.ldif" <<'EOF'
import sys
users, base = int(sys.argv[1]), sys.argv[2]
out = sys.stdout
out.write(f"dn: {base}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n")
for ou in ("people", "groups"):
    out.write(f"dn: ou={ou},{base}\nobjectClass: organizationalUnit\nou: {ou}\n\n")
out.write(f"dn: uid=portico,ou=people,{base}\nobjectClass: inetOrgPerson\nuid: portico\ncn: Portico\nsn: Portico\nuserPassword: portico search 1\n\n")
for n in range(users):
    out.write(f"dn: uid=u{n:06d},ou=people,{base}\nobjectClass: inetOrgPerson\nuid: u{n:06d}\ncn: User {n}\nsn: {n}\ndisplayName: User Number {n}\n\n")
for g in range(20):
    out.write(f"dn: cn=group-{g:02d},ou=groups,{base}\nobjectClass: groupOfNames\ncn: group-{g:02d}\n")
    for n in range(g, users, 20):
        out.write(f"member: uid=u{n:06d},ou=people,{base}\n")
    out.write("\n")
EOF
seeded=$(date +%s.%N)
/usr/sbin/slapadd -q -f "$work/slapd.conf" -l "$work/seed.ldif"
echo "directory: $users users in 20 groups loaded by slapadd in $(python3 -c "import time; print(f'{time.time() - $seeded:.1f}')") s"
ldaps=$(free_port)
/usr/sbin/slapd -f "$work/slapd.conf" -h "ldaps://127.0.0.1:$ldaps/" -d 0 >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $ldaps), 0.2)" 2>/dev/null && break; sleep 0.1; done

# The manager: the API listener only, its directory synced at start.
printf 'portico search 1' > "$work/directory.pass"
chmod 600 "$work/directory.pass"
cat > "$work/portico.yaml" <<EOF
data_dir: $work/data
identity: {generate: ecdsa-p256, certificate: $work/ssl/server.crt, private_key: $work/ssl/server.key}
listeners:
  client: {enabled: false}
  client_plain: {enabled: false}
  console: {enabled: false}
  reporting: {enabled: false}
  replication: {enabled: false}
  webservices: {bind: 127.0.0.1, port: $(free_port), access_log: false}
routes:
  - {listener: webservices, path: /api/v1/*, service: api}
directory:
  url: ldaps://127.0.0.1:$ldaps
  trust: $work/server.crt
  bind_dn: uid=portico,ou=people,$base
  bind_password_file: $work/directory.pass
  base_dn: $base
  sync_interval: 1h
EOF
"$bin" serve --config "$work/portico.yaml" > "$work/serve.log" 2>&1 &
serve=$!
pids+=($serve)
rss() { awk '/VmRSS/ {print $2}' "/proc/$serve/status" 2>/dev/null || echo 0; }
peak=0
first=""
until grep -q "users synced\|users were not synced" "$work/serve.log"; do
  kill -0 "$serve" 2>/dev/null || { cat "$work/serve.log"; exit 1; }
  now=$(rss)
  # The baseline: the manager once its listener is up (the sync starts then).
  [ -z "$first" ] && grep -q "listening" "$work/serve.log" && first=$now
  [ "$now" -gt "$peak" ] && peak=$now
  sleep 0.1
done
grep -q "users were not synced" "$work/serve.log" && { grep "not synced" "$work/serve.log"; exit 1; }
sleep 1
after=$(rss)
python3 - "$work/data/portico.sqlite" "${first:-0}" "$peak" "$after" <<'EOF'
import os, sqlite3, sys
path, first, peak, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
db = sqlite3.connect(path)
started, finished, seen, added, state = db.execute("SELECT started_ms, finished_ms, seen, added, state FROM directory_syncs").fetchone()
stored = db.execute("SELECT COUNT(*) FROM endpoint_users WHERE source = 'directory'").fetchone()[0]
seconds = (finished - started) / 1000
print(f"sync: {state}, {seen} seen, {added} added, {stored} stored, in {seconds:.1f} s ({seen / seconds:,.0f} users/s)")
print(f"manager RSS: {first / 1024:.0f} MiB when listening, {peak / 1024:.0f} MiB at the peak of the sync, {after / 1024:.0f} MiB after")
size = sum(os.path.getsize(path + suffix) for suffix in ("", "-wal") if os.path.exists(path + suffix))
print(f"database: {size / 1048576:.0f} MiB")
EOF
