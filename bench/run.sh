#!/usr/bin/env bash
# Portico beside nginx and HAProxy on loopback: the same certificates, the same answers, the
# same upstream, with access logs off on every server and then on on every server, in one run.
#
#   bench/run.sh [rounds]        (default 3)
#   TESTS="h1 h2" bench/run.sh   (a subset of: h1 h2 json json2 handshake reconnect resume
#                                 resume12 proxy idle flood h2spec)
#   LOGS=off bench/run.sh        (only one of the two access-log modes: off or on)
#
# With access logs on, each server writes its own file as it ships it: nginx its combined
# format to a file, HAProxy its HTTP log format to standard output (redirected to a file),
# Portico its Common Log Format lines to a file.
#
# Needs wrk, h2load (nghttp2-client), nginx, haproxy, openssl and python3; installs nothing
# and says how to get what is missing. Builds portico in release mode. Prints requests/s and
# server CPU microseconds per request for each run, and the medians with Portico's ratios to
# the best peer (requests/s to the highest, CPU to the lowest).
set -euo pipefail
rounds=${1:-3}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

missing=()
command -v wrk >/dev/null || missing+=("wrk (apt-get install wrk)")
command -v h2load >/dev/null || missing+=("h2load (apt-get install nghttp2-client)")
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=("nginx (apt-get install nginx)")
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=("haproxy (apt-get install haproxy)")
command -v openssl >/dev/null || missing+=("openssl (apt-get install openssl)")
command -v python3 >/dev/null || missing+=("python3 (apt-get install python3)")
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench: missing: ${missing[*]}" >&2
  exit 2
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

work=$(mktemp -d /tmp/portico-bench.XXXXXX)
stop_servers() {
  [ -n "${portico_pid:-}" ] && kill "$portico_pid" 2>/dev/null && wait "$portico_pid" 2>/dev/null || true
  [ -n "${haproxy_pid:-}" ] && kill "$haproxy_pid" 2>/dev/null && wait "$haproxy_pid" 2>/dev/null || true
  if [ -f "$work/nginx.pid" ]; then
    kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    for _ in $(seq 50); do [ -f "$work/nginx.pid" ] || break; sleep 0.1; done
  fi
  portico_pid=; haproxy_pid=
}
cleanup() {
  stop_servers
  [ -f "$work/upstream.pid" ] && kill "$(cat "$work/upstream.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  # The folder holds private keys and logs: kept only when asked (KEEP=1).
  if [ "${KEEP:-0}" = 1 ]; then echo "bench: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

echo "bench: building portico (release)" >&2
(cd "$root" && swift build -c release --product portico >/dev/null)
portico_bin="$root/.build/release/portico"

# Each server listens with the RSA-2048 identity (PORT) and with an ECDSA P-256 one (EC_PORT,
# for resumed handshakes), and proxies /proxied to one upstream nginx (a separate process,
# whose CPU is counted for none of them).
PORTICO_PORT=${PORTICO_PORT:-19441}
NGINX_PORT=${NGINX_PORT:-19442}
PORTICO_EC_PORT=${PORTICO_EC_PORT:-19443}
NGINX_EC_PORT=${NGINX_EC_PORT:-19444}
UPSTREAM_PORT=${UPSTREAM_PORT:-19445}
HAPROXY_PORT=${HAPROXY_PORT:-19446}
HAPROXY_EC_PORT=${HAPROXY_EC_PORT:-19447}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-9000}

mkdir -p "$work/ssl" "$work/ec" "$work/upstream-tmp" "$work/nginx-tmp"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=bench \
  -keyout "$work/ssl/server.key" -out "$work/ssl/server.crt" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj /CN=bench \
  -keyout "$work/ec/server.key" -out "$work/ec/server.crt" 2>/dev/null
chmod 600 "$work/ssl/server.key" "$work/ec/server.key"
# HAProxy takes the certificate and its key in one file.
for pair in ssl ec; do cat "$work/$pair/server.crt" "$work/$pair/server.key" > "$work/$pair/haproxy.pem"; done
chmod 600 "$work/ssl/haproxy.pem" "$work/ec/haproxy.pem"

# What both nginx instances set in their http block: the access log (off unless a file is
# given), temp files in the work folder, keep-alive without a request limit.
http_common() {
  if [ -n "${2:-}" ]; then printf '  access_log %s;\n' "$2"; else printf '  access_log off;\n'; fi
  for kind in client_body proxy fastcgi uwsgi scgi; do printf '  %s_temp_path %s;\n' "$kind" "$1"; done
  printf '  keepalive_requests 1000000;\n'
}

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
"$NGINX" -c "$work/upstream.conf" -p "$work"

# Waits until a server answers on port $1.
wait_for() {
  for _ in $(seq 100); do
    curl -sk "https://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench: nothing answers on port $1" >&2
  exit 1
}

# Starts the three servers with access logs $1 (on or off).
start_servers() {
  local mode=$1 on=false
  [ "$mode" = on ] && on=true

  # nginx: as Debian ships it (worker_processes auto).
  cat > "$work/nginx.conf" <<CONF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 20000; }
http {
$(http_common "$work/nginx-tmp" "$([ "$on" = true ] && echo "$work/nginx-access.log")")
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

  # HAProxy: threads as many as cores (its default), answers from the configuration, the
  # upstream reused across clients; its HTTP log to standard output when logging.
  cat > "$work/haproxy.cfg" <<CONF
global
  # As many as the descriptor limit here (20,000) allows: two per proxied connection.
  maxconn 9900
  ssl-default-bind-options ssl-min-ver TLSv1.2
$([ "$on" = true ] && echo "  log stdout format raw local0 info")
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
$([ "$on" = true ] && printf '  log global\n  option httplog\n')
frontend rsa
  bind 127.0.0.1:$HAPROXY_PORT ssl crt $work/ssl/haproxy.pem alpn h2,http/1.1
  http-request return status 200 content-type text/plain lf-string "ok\n" if { path /healthz }
  http-request return status 200 content-type application/json string '{"status":"ready","listener":"client"}' if { path /statusz }
  default_backend upstream
frontend ec
  bind 127.0.0.1:$HAPROXY_EC_PORT ssl crt $work/ec/haproxy.pem alpn h2,http/1.1
  http-request return status 200 content-type text/plain lf-string "ok\n" if { path /healthz }
backend upstream
  http-reuse always
  server upstream 127.0.0.1:$UPSTREAM_PORT
CONF
  "$HAPROXY" -db -f "$work/haproxy.cfg" >"$work/haproxy-access.log" 2>"$work/haproxy.log" &
  haproxy_pid=$!

  # Portico: only the client listener (RSA) and console (ECDSA).
  cat > "$work/portico.yaml" <<YAML
identity: {certificate: $work/ssl/server.crt, private_key: $work/ssl/server.key}
access_log: {file: $work/portico-access.log}
listeners:
  client: {bind: 127.0.0.1, port: $PORTICO_PORT, access_log: $on, limits: {max_connections: 20000}}
  console:
    bind: 127.0.0.1
    port: $PORTICO_EC_PORT
    access_log: $on
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
  "$portico_bin" serve --config "$work/portico.yaml" --log-level warning 2>>"$work/portico.log" &
  portico_pid=$!

  for port in $NGINX_PORT $HAPROXY_PORT $PORTICO_PORT; do wait_for "$port"; done
}

# The processes of a server: portico's or haproxy's one process, or the front nginx's master
# and workers (not the upstream instance, which has its own pid file).
server_pids() {
  case $1 in
    portico) echo "$portico_pid" ;;
    haproxy) echo "$haproxy_pid" ;;
    nginx)
      local master
      master=$(cat "$work/nginx.pid")
      echo "$master $(pgrep -P "$master" | tr '\n' ' ')" ;;
  esac
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
ports() {  # server -> "port ec_port"
  case $1 in
    nginx) echo "$NGINX_PORT $NGINX_EC_PORT" ;;
    haproxy) echo "$HAPROXY_PORT $HAPROXY_EC_PORT" ;;
    portico) echo "$PORTICO_PORT $PORTICO_EC_PORT" ;;
  esac
}

results="$work/results.tsv"
: > "$results"
measure() {  # mode server test command...
  local mode=$1 server=$2 test=$3; shift 3
  selected "$test" || return 0
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
  printf "%s\t%s\t%s\t%s\t%s\n" "$mode" "$test" "$server" "$rps" "$us" | tee -a "$results" >&2
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
  # (measure runs this in a subshell: wait is for these clients only.)
  wait
  end=$(date +%s.%N)
  for i in $(seq 8); do
    total=$((total + $(awk '/connections in .* real seconds/ {print $1}' "$work/s_time.$i")))
  done
  echo "connections $total"
  awk -v n="$total" -v a="$start" -v b="$end" 'BEGIN { printf "rate %.1f\n", n / (b - a) }'
}

TESTS=" ${TESTS:-h1 h2 json json2 handshake reconnect resume resume12 proxy idle flood h2spec} "
H2SPEC=${H2SPEC:-$(command -v h2spec || true)}
selected() { [[ "$TESTS" == *" $1 "* ]]; }
rss_kb() {  # server -> its processes' RSS in KiB
  local total=0
  for p in $(server_pids "$1"); do
    total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")))
  done
  echo $total
}

# A healthy HTTP/2 client's latency while hostile clients attack the same port: h2load at a
# fixed, modest rate (4 connections, 250 requests/s each) for FLOOD_SECONDS, alone and then
# beside each attack of flood_h2.py (4 attacking connections, 50 for zero_window), with the
# server's peak RSS over the attack. Latencies are h2load's per-request log.
FLOOD_SECONDS=${FLOOD_SECONDS:-8}
FLOOD_ATTACKS=${FLOOD_ATTACKS:-none rapid_reset continuation hpack_bomb settings ping zero_window reused_ids}
flood() {  # server port
  local server=$1 port=$2 attack attacker sampler peak before
  for attack in $FLOOD_ATTACKS; do
    attacker=
    before=$(rss_kb "$server")
    if [ "$attack" != none ]; then
      nice -n 19 python3 "$here/flood_h2.py" "$port" "$attack" $((FLOOD_SECONDS + 2)) > "$work/flood-attacker.out" 2>&1 &
      attacker=$!
      sleep 1  # the attack under way before the healthy client starts
    fi
    echo "$before" > "$work/flood-peak"
    ( while :; do r=$(rss_kb "$server"); [ "$r" -gt "$(cat "$work/flood-peak")" ] && echo "$r" > "$work/flood-peak"; sleep 0.2; done ) &
    sampler=$!
    rm -f "$work/flood-latency.log"
    h2load -c4 -m1 --rps 250 -D "$FLOOD_SECONDS" --log-file="$work/flood-latency.log" "https://127.0.0.1:$port/healthz" > "$work/flood-h2load.out" 2>&1 || true
    [ -n "$attacker" ] && wait "$attacker" 2>/dev/null || true
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
    peak=$(cat "$work/flood-peak")
    python3 - "$work/flood-latency.log" "$server" "$attack" "$before" "$peak" "$work/flood-attacker.out" <<'PY' | tee -a "$work/flood.tsv" >&2
import sys
log, server, attack, before, peak, attacker = sys.argv[1:]
lat, bad = [], 0
try:
    for line in open(log):
        _, status, us = line.split("\t")
        if status.strip() == "200":
            lat.append(int(us))
        else:
            bad += 1
except FileNotFoundError:
    pass
lat.sort()
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000 if lat else float("nan")
opened = "-"
if attack != "none":
    for line in open(attacker):
        if line.startswith("connections"):
            opened = line.split()[1]
print(f"flood\t{server}\t{attack}\t{len(lat)}\t{bad}\t{pick(0.5):.2f}\t{pick(0.99):.2f}\t{(int(peak) - int(before)) / 1024:.1f}\t{opened}")
PY
    rm -f "$work/flood-attacker.out"
  done
}
DURATION=${DURATION:-10s}
seconds=${DURATION%s}
servers="nginx haproxy portico"

for mode in ${LOGS:-off on}; do
  echo "bench: access logs $mode" >&2
  start_servers "$mode"
  for round in $(seq "$rounds"); do
    echo "bench: round $round of $rounds (access logs $mode)" >&2
    for server in $servers; do
      read -r port ec_port <<< "$(ports $server)"
      measure "$mode" $server h1 wrk -t2 -c64 -d"$DURATION" "https://127.0.0.1:$port/healthz"
      measure "$mode" $server h2 h2load -n100000 -c32 -m10 "https://127.0.0.1:$port/healthz"
      # A JSON answer (Portico's built-in status, made per request; the peers return the same bytes).
      measure "$mode" $server json wrk -t2 -c64 -d"$DURATION" "https://127.0.0.1:$port/statusz"
      measure "$mode" $server json2 h2load -n100000 -c32 -m10 "https://127.0.0.1:$port/statusz"
      measure "$mode" $server handshake handshakes -new "$port" "$seconds"
      # A new connection per request as wrk makes them: it resumes its last session.
      measure "$mode" $server reconnect wrk -t2 -c16 -d"$DURATION" -H "Connection: close" "https://127.0.0.1:$port/healthz"
      measure "$mode" $server resume handshakes -reuse "$ec_port" "$seconds"
      measure "$mode" $server resume12 handshakes -reuse "$ec_port" "$seconds" -tls1_2
      measure "$mode" $server proxy wrk -t2 -c64 -d"$DURATION" "https://127.0.0.1:$port/proxied"
    done
  done
  # Memory: RSS added by IDLE_CONNECTIONS kept-alive TLS connections (each did one request),
  # measured once, in the first mode.
  if selected idle && [ ! -f "$work/idle.tsv" ]; then
    for server in $servers; do
      read -r port ec_port <<< "$(ports $server)"
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
  fi
  # HTTP/2 conformance: h2spec (not a Debian package; bench/README.md says how to build it)
  # against each server's /healthz, once, in the first mode.
  if selected h2spec && [ ! -f "$work/h2spec.tsv" ]; then
    if [ -z "$H2SPEC" ]; then
      echo "bench: h2spec skipped: no h2spec on PATH and H2SPEC not set" >&2
      touch "$work/h2spec.tsv"
    else
      for server in $servers; do
        read -r port ec_port <<< "$(ports $server)"
        "$H2SPEC" -h 127.0.0.1 -p "$port" -t -k -P /healthz -o 3 > "$work/h2spec-$server.txt" 2>&1 || true
        summary=$(grep -E "^[0-9]+ tests, [0-9]+ passed" "$work/h2spec-$server.txt" | tail -1)
        printf "h2spec\t%s\t%s\n" "$server" "$summary" | tee -a "$work/h2spec.tsv" >&2
        # The failed tests by section and name (the lines of the report's "Failures:" part).
        awk '/^Failures:/ { f = 1; next } /^Finished/ { f = 0 } f && (/^ +[0-9.]+ / || /×/) { sub(/^ +/, ""); print }' "$work/h2spec-$server.txt" > "$work/h2spec-$server.failed"
      done
    fi
  fi
  # Hostile HTTP/2 clients beside a healthy one, measured once, in the first mode.
  if selected flood && [ ! -f "$work/flood.tsv" ]; then
    for server in $servers; do
      read -r port ec_port <<< "$(ports $server)"
      flood $server "$port"
    done
  fi
  # Every server logged every request when logging (a server that wrote nothing would have
  # been measured without its log).
  if [ "$mode" = on ]; then
    stop_servers
    for log in nginx-access.log haproxy-access.log portico-access.log; do
      printf "bench: %s: %s lines\n" "$log" "$(wc -l < "$work/$log")" >&2
    done
  fi
  stop_servers
done

echo
python3 - "$results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    mode, test, server, rps, us = line.rstrip("\n").split("\t")
    try:
        rows[(mode, test, server)].append((float(rps), float(us)))
    except ValueError:
        pass
med = {k: (statistics.median(r for r, _ in v), statistics.median(u for _, u in v)) for k, v in rows.items()}
peers = ["nginx", "haproxy"]
for mode in ["off", "on"]:
    if not any(k[0] == mode for k in med):
        continue
    print(f"access logs {mode}")
    print("test        server    req/s (median)  CPU us/req (median)")
    for test in ["h1", "h2", "json", "json2", "handshake", "reconnect", "resume", "resume12", "proxy"]:
        for server in peers + ["portico"]:
            if (mode, test, server) in med:
                r, u = med[(mode, test, server)]
                print(f"{test:<11} {server:<9} {r:>14.0f}  {u:>19.1f}")
        found = [med[(mode, test, p)] for p in peers if (mode, test, p) in med]
        if found and (mode, test, "portico") in med:
            r, u = med[(mode, test, "portico")]
            print(f"{test:<11} {'ratio':<9} {r / max(f[0] for f in found):>14.2f}  {u / min(f[1] for f in found):>19.2f}")
    print()
if all((m, t, "portico") in med for m in ["off", "on"] for t in ["h1", "h2"]):
    print("what the access log adds per request (CPU us, on minus off, medians):")
    for server in peers + ["portico"]:
        parts = [f"{t} {med[('on', t, server)][1] - med[('off', t, server)][1]:+.1f}" for t in ["h1", "h2", "json", "proxy"] if ("on", t, server) in med and ("off", t, server) in med]
        print(f"  {server:<8} " + ", ".join(parts))
PY
if selected idle; then
  echo
  echo "idle TLS connections: server, open, RSS before (KiB), after (KiB), KiB per connection"
  awk -F'\t' '{ printf "%-8s %6d %9d %9d %8.1f\n", $2, $3, $4, $5, ($5 - $4) / ($3 > 0 ? $3 : 1) }' "$work/idle.tsv"
fi
if selected flood; then
  echo
  echo "a healthy HTTP/2 client beside hostile ones: server, attack, answered, failed, p50 ms, p99 ms, p99 / p99 alone, peak RSS added (MiB), attacking connections opened"
  awk -F'\t' '$3 == "none" { base[$2] = $7 } { printf "%-8s %-13s %7d %6d %8.2f %8.2f %6.2f %8.1f %8s\n", $2, $3, $4, $5, $6, $7, (base[$2] > 0 ? $7 / base[$2] : 0), $8, $9 }' "$work/flood.tsv"
fi
if selected h2spec && [ -s "$work/h2spec.tsv" ]; then
  echo
  echo "HTTP/2 conformance (h2spec -t -k, /healthz):"
  awk -F'\t' '{ printf "%-8s %s\n", $2, $3 }' "$work/h2spec.tsv"
  for server in $servers; do
    if [ -s "$work/h2spec-$server.failed" ]; then
      echo "failed by $server:"
      sed 's/^/  /' "$work/h2spec-$server.failed"
    fi
  done
fi
