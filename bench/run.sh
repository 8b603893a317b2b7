#!/usr/bin/env bash
# Portico beside nginx on loopback, same certificate, same body, alternating rounds.
#
#   bench/run.sh [rounds]        (default 3)
#   TESTS="h1 h2" bench/run.sh   (a subset of: h1 h2 json json2 handshake reconnect resume
#                                 resume12 proxy idle)
#   FLOOR=1 bench/run.sh         (also bench/floor, SwiftNIO + NIOSSL with no HTTP layer, in
#                                 every test but h2: the least this stack can cost)
#   RAWFLOOR=1 bench/run.sh      (also bench/floor's portico-rawfloor, the same with epoll and
#                                 BoringSSL driven directly: the least a core of our own could cost)
#   ACCESS_LOG=1 bench/run.sh    (access logs on, on both, each to a file of its own)
#
# Needs wrk, h2load (nghttp2-client) and nginx; installs nothing and says how to get what
# is missing. Builds portico in release mode. Prints requests/s and server CPU
# microseconds per request for each run, and the median ratios (portico / nginx).
set -euo pipefail
rounds=${1:-3}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

missing=()
command -v wrk >/dev/null || missing+=("wrk (apt-get install wrk)")
command -v h2load >/dev/null || missing+=("h2load (apt-get install nghttp2-client)")
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=("nginx (apt-get install nginx)")
command -v openssl >/dev/null || missing+=("openssl (apt-get install openssl)")
command -v python3 >/dev/null || missing+=("python3 (apt-get install python3)")
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench: missing: ${missing[*]}" >&2
  exit 2
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

work=$(mktemp -d /tmp/portico-bench.XXXXXX)
cleanup() {
  [ -n "${portico_pid:-}" ] && kill "$portico_pid" 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  [ -f "$work/upstream.pid" ] && kill "$(cat "$work/upstream.pid")" 2>/dev/null || true
  [ -n "${floor_pid:-}" ] && kill "$floor_pid" 2>/dev/null || true
  [ -n "${rawfloor_pid:-}" ] && kill "$rawfloor_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  # The folder holds private keys and logs: kept only when asked (KEEP=1).
  if [ "${KEEP:-0}" = 1 ]; then echo "bench: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

echo "bench: building portico (release)" >&2
(cd "$root" && swift build -c release --product portico >/dev/null)
portico_bin="$root/.build/release/portico"
if [ "${FLOOR:-0}" = 1 ] || [ "${RAWFLOOR:-0}" = 1 ]; then
  echo "bench: building bench/floor (release)" >&2
  (cd "$here/floor" && swift build -c release >/dev/null)
fi

PORTICO_PORT=${PORTICO_PORT:-19441}
NGINX_PORT=${NGINX_PORT:-19442}
# The same two servers also listen with an ECDSA P-256 certificate (for resumed handshakes),
# and both proxy /proxied to one upstream nginx of their own (a separate process, whose CPU
# is counted for neither).
PORTICO_EC_PORT=${PORTICO_EC_PORT:-19443}
NGINX_EC_PORT=${NGINX_EC_PORT:-19444}
UPSTREAM_PORT=${UPSTREAM_PORT:-19445}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
FLOOR_PORT=${FLOOR_PORT:-19446}
FLOOR_EC_PORT=${FLOOR_EC_PORT:-19447}
RAWFLOOR_PORT=${RAWFLOOR_PORT:-19448}
RAWFLOOR_EC_PORT=${RAWFLOOR_EC_PORT:-19449}

mkdir -p "$work/ec" "$work/upstream-tmp"
# Access logs: off on both unless ACCESS_LOG is set (Portico writes its lines at level info).
access_log=false
if [ -n "${ACCESS_LOG:-}" ]; then access_log=true; fi

# What both nginx instances set in their http block: the access log (off unless a file is
# given), temp files in the work folder, keep-alive without a request limit.
http_common() {
  if [ -n "${2:-}" ]; then printf '  access_log %s;\n' "$2"; else printf '  access_log off;\n'; fi
  for kind in client_body proxy fastcgi uwsgi scgi; do printf '  %s_temp_path %s;\n' "$kind" "$1"; done
  printf '  keepalive_requests 1000000;\n'
}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj /CN=bench \
  -keyout "$work/ec/server.key" -out "$work/ec/server.crt" 2>/dev/null
chmod 600 "$work/ec/server.key"

cat > "$work/upstream.conf" <<CONF
worker_processes 1;
pid $work/upstream.pid;
error_log $work/upstream-error.log warn;
events { worker_connections 4096; }
http {
$(http_common "$work/upstream-tmp")
  server {
    listen 127.0.0.1:$UPSTREAM_PORT;
    location = /proxied { default_type text/plain; return 200 "ok\n"; }
  }
}
CONF

# Portico's configuration: only the client listener (RSA) and console (ECDSA), no access log,
# /proxied relayed to the upstream. Arguments: identity line, client port, console port.
portico_yaml() {
  cat <<YAML
$1
access_log: {file: access.log}
listeners:
  client: {bind: 127.0.0.1, port: $2, access_log: $access_log, limits: {max_connections: 20000}}
  console:
    bind: 127.0.0.1
    port: $3
    access_log: $access_log
    certificate: $work/ec/server.crt
    private_key: $work/ec/server.key
    limits: {max_connections: 20000}
  client_plain: {enabled: false}
  replication: {enabled: false}
  reporting: {enabled: false}
  webservices: {enabled: false}
upstreams:
  backend: {targets: ["http://127.0.0.1:$UPSTREAM_PORT"]}
routes:
  - {listener: client, path: /proxied, upstream: backend}
YAML
}
# Starts Portico with the configuration in folder $1 and waits until port $2 answers.
start_portico() {
  "$portico_bin" serve --config "$1/portico.yaml" --log-level warning 2>"$1/portico.log" &
  started_pid=$!
  for _ in $(seq 100); do
    curl -sk "https://127.0.0.1:$2/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
}

# Portico; it generates the RSA-2048 identity.
portico_yaml "identity: {certificate: ssl/server.crt, private_key: ssl/server.key, generate: ${KEY_TYPE:-rsa-2048}}" \
  "$PORTICO_PORT" "$PORTICO_EC_PORT" > "$work/portico.yaml"
"$NGINX" -c "$work/upstream.conf" -p "$work"
start_portico "$work" "$PORTICO_PORT"
portico_pid=$started_pid

# Starts a floor program of bench/floor on its two ports and waits until it answers.
start_floor() {  # program port ec_port
  "$here/floor/.build/release/$1" "$work/ssl/server.crt" "$work/ssl/server.key" "$2" "$UPSTREAM_PORT" \
    "$work/ec/server.crt" "$work/ec/server.key" "$3" >"$work/$1.log" 2>&1 &
  started_pid=$!
  for _ in $(seq 100); do
    curl -sk "https://127.0.0.1:$2/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
}
if [ "${FLOOR:-0}" = 1 ]; then
  start_floor portico-floor "$FLOOR_PORT" "$FLOOR_EC_PORT"
  floor_pid=$started_pid
fi
if [ "${RAWFLOOR:-0}" = 1 ]; then
  start_floor portico-rawfloor "$RAWFLOOR_PORT" "$RAWFLOOR_EC_PORT"
  rawfloor_pid=$started_pid
fi

# nginx: the same certificate and body, as Debian ships it (worker_processes auto).
mkdir -p "$work/nginx-tmp"
cat > "$work/nginx.conf" <<CONF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 20000; }
http {
$(http_common "$work/nginx-tmp" "${ACCESS_LOG:+$work/nginx-access.log}")
  server {
    listen 127.0.0.1:$NGINX_PORT ssl http2;
    ssl_certificate $work/ssl/server.crt;
    ssl_certificate_key $work/ssl/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location = /healthz { default_type text/plain; return 200 "ok\n"; }
    location = /statusz { default_type application/json; return 200 '{"status":"ready","listener":"client"}'; }
    location = /proxied {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {
    listen 127.0.0.1:$NGINX_EC_PORT ssl http2;
    ssl_certificate $work/ec/server.crt;
    ssl_certificate_key $work/ec/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location = /healthz { default_type text/plain; return 200 "ok\n"; }
  }
  upstream backend {
    server 127.0.0.1:$UPSTREAM_PORT;
    keepalive 64;
  }
}
CONF
"$NGINX" -c "$work/nginx.conf" -p "$work"
for _ in $(seq 100); do
  curl -sk "https://127.0.0.1:$NGINX_PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

# CPU ticks (user+system) of a server: portico's process, or nginx's master and workers.
# The processes of a server: portico's, or the front nginx's master and workers (not the
# upstream instance, which has its own pid file).
server_pids() {
  if [ "$1" = portico ]; then echo "$portico_pid"; elif [ "$1" = floor ]; then echo "$floor_pid"; elif [ "$1" = rawfloor ]; then echo "$rawfloor_pid"; else
    local master
    master=$(cat "$work/nginx.pid")
    echo "$master $(pgrep -P "$master" | tr '\n' ' ')"
  fi
}
cpu_ticks() {
  local total=0
  for p in $(server_pids "$1"); do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo $total
}
hz=$(getconf CLK_TCK)

results="$work/results.tsv"
: > "$results"
measure() {  # name test command...
  local server=$1 test=$2; shift 2
  selected "$test" || return 0
  # The floors do not speak HTTP/2, or answer anything but the health bytes.
  case "$server:$test" in floor:h2|rawfloor:h2|floor:json*|rawfloor:json*) return 0 ;; esac
  local before after out rps requests
  before=$(cpu_ticks "$server")
  out=$("$@" 2>&1)
  after=$(cpu_ticks "$server")
  case "$test" in
    h2|json2)
      rps=$(echo "$out" | awk '/^finished in/ {print $4}')
      requests=$(echo "$out" | awk '/^requests:/ {print $8}') ;;
    handshake|resume*)
      rps=$(echo "$out" | awk '/^rate/ {print $2}')
      requests=$(echo "$out" | awk '/^connections/ {print $2}') ;;
    *)
      rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
      requests=$(echo "$out" | awk '/requests in/ {print $1}') ;;
  esac
  local us
  us=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$requests" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "nan" }')
  printf "%s\t%s\t%s\t%s\n" "$test" "$server" "$rps" "$us" | tee -a "$results" >&2
}

# Handshakes: 8 `openssl s_time` clients at once, each a new connection per request (HTTP/1.0
# GET, closed by the server), each a full handshake (-new) or resuming the session its first
# connection got (-reuse).
handshakes() {  # -new|-reuse port seconds [openssl options]
  local start end total=0 mode=$1 port=$2 seconds=$3
  shift 3
  start=$(date +%s.%N)
  for i in $(seq 8); do
    openssl s_time -connect "127.0.0.1:$port" "$mode" -time "$seconds" -www /healthz "$@" > "$work/s_time.$i" 2>&1 &
  done
  wait
  end=$(date +%s.%N)
  for i in $(seq 8); do
    total=$((total + $(awk '/connections in .* real seconds/ {print $1}' "$work/s_time.$i")))
  done
  echo "connections $total"
  awk -v n="$total" -v a="$start" -v b="$end" 'BEGIN { printf "rate %.1f\n", n / (b - a) }'
}

TESTS=" ${TESTS:-h1 h2 json json2 handshake reconnect resume resume12 proxy idle} "
selected() { [[ "$TESTS" == *" $1 "* ]]; }

DURATION=${DURATION:-10s}
seconds=${DURATION%s}
for round in $(seq "$rounds"); do
  echo "bench: round $round of $rounds" >&2
  servers="nginx portico"; [ "${FLOOR:-0}" = 1 ] && servers+=" floor"; [ "${RAWFLOOR:-0}" = 1 ] && servers+=" rawfloor"
  for server in $servers; do
    case $server in nginx) port=$NGINX_PORT ;; portico) port=$PORTICO_PORT ;; floor) port=$FLOOR_PORT ;; rawfloor) port=$RAWFLOOR_PORT ;; esac
    measure $server h1 wrk -t2 -c64 -d"$DURATION" "https://127.0.0.1:$port/healthz"
    measure $server h2 h2load -n100000 -c32 -m10 "https://127.0.0.1:$port/healthz"
    # A JSON answer made per request (Portico's built-in status; nginx returns the same bytes).
    measure $server json wrk -t2 -c64 -d"$DURATION" "https://127.0.0.1:$port/statusz"
    measure $server json2 h2load -n100000 -c32 -m10 "https://127.0.0.1:$port/statusz"
    measure $server handshake handshakes -new "$port" "$seconds"
    # A new connection per request as wrk makes them: it resumes its last session.
    measure $server reconnect wrk -t2 -c16 -d"$DURATION" -H "Connection: close" "https://127.0.0.1:$port/healthz"
    case $server in nginx) ec_port=$NGINX_EC_PORT ;; portico) ec_port=$PORTICO_EC_PORT ;; floor) ec_port=$FLOOR_EC_PORT ;; rawfloor) ec_port=$RAWFLOOR_EC_PORT ;; esac
    measure $server resume handshakes -reuse "$ec_port" "$seconds"
    measure $server resume12 handshakes -reuse "$ec_port" "$seconds" -tls1_2
    measure $server proxy wrk -t2 -c64 -d"$DURATION" "https://127.0.0.1:$port/proxied"
  done
done

# Memory: RSS added by IDLE_CONNECTIONS kept-alive TLS connections (each did one request).
rss_kb() {
  local total=0
  for p in $(server_pids "$1"); do
    total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")))
  done
  echo $total
}
idle_servers="nginx portico"; [ "${FLOOR:-0}" = 1 ] && idle_servers+=" floor"; [ "${RAWFLOOR:-0}" = 1 ] && idle_servers+=" rawfloor"
for server in $idle_servers; do
  selected idle || break
  case $server in nginx) ec_port=$NGINX_EC_PORT ;; portico) ec_port=$PORTICO_EC_PORT ;; floor) ec_port=$FLOOR_EC_PORT ;; rawfloor) ec_port=$RAWFLOOR_EC_PORT ;; esac
  before=$(rss_kb $server)
  rm -f "$work/hold"; mkfifo "$work/hold"
  python3 "$here/idle_tls.py" "$ec_port" "$IDLE_CONNECTIONS" < "$work/hold" > "$work/idle.out" 2>"$work/idle.err" &
  idle_pid=$!
  exec 3>"$work/hold"
  while ! grep -q '^open' "$work/idle.out" 2>/dev/null; do
    kill -0 $idle_pid 2>/dev/null || { echo "bench: idle_tls.py failed: $(cat "$work/idle.err")" >&2; exit 1; }
    sleep 0.5
  done
  after=$(rss_kb $server)
  opened=$(awk '/^open/ {print $2}' "$work/idle.out")
  exec 3>&-
  wait $idle_pid || true
  printf "idle\t%s\t%s\t%s\t%s\n" "$server" "$opened" "$before" "$after" | tee -a "$work/idle.tsv" >&2
done

echo
echo "test        server    req/s (median)  CPU us/req (median)"
python3 - "$results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    test, server, rps, us = line.split("\t")
    try:
        rows[(test, server)].append((float(rps), float(us)))
    except ValueError:
        pass
med = {k: (statistics.median(r for r, _ in v), statistics.median(u for _, u in v)) for k, v in rows.items()}
for test in ["h1", "h2", "json", "json2", "handshake", "reconnect", "resume", "resume12", "proxy"]:
    for server in ["nginx", "portico", "floor", "rawfloor"]:
        if (test, server) in med:
            r, u = med[(test, server)]
            print(f"{test:<11} {server:<9} {r:>14.0f}  {u:>19.1f}")
    for server, label in [("portico", "ratio"), ("floor", "floor/ngx"), ("rawfloor", "raw/ngx")]:
        if (test, "nginx") in med and (test, server) in med:
            print(f"{test:<11} {label:<9} {med[(test,server)][0] / med[(test,'nginx')][0]:>14.2f}  {med[(test,server)][1] / med[(test,'nginx')][1]:>19.2f}")
for server in ["nginx", "portico", "floor", "rawfloor"]:
    for test, name in [("resume", "TLS 1.3"), ("resume12", "TLS 1.2")]:
        if (test, server) in med and ("handshake", server) in med:
            print(f"{server}: resumed ECDSA {name} handshakes are {med[(test, server)][0] / med[('handshake', server)][0]:.1f}x its full RSA-2048 handshakes")
PY
selected idle || exit 0
echo
echo "idle TLS connections: server, open, RSS before (KiB), after (KiB), KiB per connection"
awk -F'\t' '{ printf "%-8s %6d %9d %9d %8.1f\n", $2, $3, $4, $5, ($5 - $4) / ($3 > 0 ? $3 : 1) }' "$work/idle.tsv"
