#!/usr/bin/env bash
# Rampart as a sidecar vs HAProxy vs nginx, plus TLS termination and the small build's size,
# on this machine, in one run.
#
#   wrk ──────────────────────────────────────────────► app   127.0.0.1:18091  (direct)
#   wrk ──► rampart sidecar inbound 127.0.0.1:18093 ─┐
#   wrk ──► haproxy                 127.0.0.1:18094 ─┼─► app   (nginx, 1 worker, fixed 1024-byte body)
#   wrk ──► nginx                   127.0.0.1:18092 ─┘
#   wrk ─TLS─► rampart serve  127.0.0.1:18443 ─┐
#   wrk ─TLS─► nginx          127.0.0.1:18444 ─┴─► app
#
# 1. Plain HTTP: for each concurrency (64, 1000), BENCH_ROUNDS rounds (3) of the targets (direct,
#    haproxy, nginx, rampart; every proxy with ONE worker/thread), the order reversed every other
#    round (round 1 the peers then rampart, round 2 rampart first, ...). Each run: 2 s warm-up,
#    then a measured `wrk -t2 -c<C> -d<D>s --latency -s bench/latency.lua`. CPU time of the
#    process under test from /proc; the added latency of each proxy is its p50/p99 minus direct's.
# 2. Memory: each proxy's VmRSS when idle (after ready, before load), the max of VmRSS samples
#    taken every 0.5 s during each measured run, and VmHWM after it.
#    The rampart sidecar is the build a sidecar user deploys: the small build of step 4 (the
#    stripped copy whose size is reported), not the release build; the doc says which it was.
# 3. TLS termination, rampart (`serve`, release build, 2 workers) vs nginx (2 workers), same
#    self-signed cert: keep-alive (`wrk -t2 -c64`, steady state) and handshake-heavy
#    (`Connection: close`, a new TCP connection + TLS handshake per request); rounds as in 1.
# 4. Size of the small build (`--profile small --no-default-features`), unstripped and stripped.
# 5. Prints tables (medians over the rounds; per-round values in the log) and targets met / not
#    met, and writes the same into docs/BENCHMARKS.md between the `<!-- sidecar:begin -->` /
#    `<!-- sidecar:end -->` markers.
#
# Like for like: every nginx proxy listens with `reuseport` (a socket per worker, as rampart binds
# an SO_REUSEPORT socket per worker), and nginx's upstream `keepalive` is the number of idle
# upstream connections rampart keeps per worker (UPSTREAM_KEEPALIVE).
#
# Usage:  bash bench/sidecar.sh
# Environment:
#   BENCH_DURATION=10          seconds per measured wrk run
#   BENCH_WARMUP=2             seconds of warm-up before each measured run
#   BENCH_CONNS="64 1000"      concurrencies for the plain-HTTP runs
#   BENCH_ROUNDS=3             rounds per measurement, order alternating; figures are medians
#   BENCH_TLS_CONNS=64         concurrency for the TLS runs
#   BENCH_HANDSHAKE_DURATION   seconds of the handshake-heavy TLS run (default: min(5, BENCH_DURATION))
#   BENCH_TLS_KEY=ec           server key: ec (ECDSA P-256) or rsa (RSA 2048)
#   CARGO_TARGET_DIR=/var/cache/rampart/target   where the release builds go (small: $CARGO_TARGET_DIR/small)
#   RAMPART_BIN=path           use this rampart binary (TLS `serve` runs), skip `cargo build --release -p rampart`
#   RAMPART_SMALL_BIN=path     use this binary as the small build (size, and the sidecar runs), skip its cargo build
#   BENCH_DOC=docs/BENCHMARKS.md   where to write the results section
#   BENCH_READY_TIMEOUT=30     seconds to wait for each server to become ready
#
# Everything runs on 127.0.0.1 only; every process this script starts is stopped on exit.
set -euo pipefail
umask 022

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

OUT_DIR="$REPO_ROOT/bench/out"
TLS_DIR="$OUT_DIR/tls"
LUA_SCRIPT="bench/latency.lua"
CLOSE_LUA="$OUT_DIR/latency-close.lua"   # latency.lua + `Connection: close`, written at start

DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
CONNS_LIST="${BENCH_CONNS:-64 1000}"
ROUNDS="${BENCH_ROUNDS:-3}"
TLS_CONNS="${BENCH_TLS_CONNS:-64}"
HANDSHAKE_DURATION="${BENCH_HANDSHAKE_DURATION:-$(( DURATION < 5 ? DURATION : 5 ))}"
TLS_KEY="${BENCH_TLS_KEY:-ec}"
READY_TIMEOUT="${BENCH_READY_TIMEOUT:-30}"
DOC="${BENCH_DOC:-docs/BENCHMARKS.md}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"
RAMPART_BIN_GIVEN="${RAMPART_BIN:-}"     # as given by the caller (the build sets RAMPART_BIN)

APP_PORT=18091
NGINX_PORT=18092
RAMPART_PORT=18093          # sidecar inbound
HAPROXY_PORT=18094
RAMPART_OUTBOUND_PORT=18095 # sidecar outbound (unused by the benchmark, but it listens)
SIDECAR_ADMIN_PORT=19903
RAMPART_TLS_PORT=18443
NGINX_TLS_PORT=18444
TLS_ADMIN_PORT=19904
BODY_BYTES=1024
TLS_NAME=bench.test
PLAIN_TARGETS=(direct rampart haproxy nginx)
PROXIES=(rampart haproxy nginx)
TLS_TARGETS=(rampart-tls nginx-tls)
# Run order of round 1 (reversed in round 2, ...): the peers first, rampart last.
PLAIN_ORDER=(direct haproxy nginx rampart)
TLS_ORDER=(nginx-tls rampart-tls)
# Idle upstream connections kept per worker, the same for nginx (`keepalive`, per worker
# process) and rampart (cluster `max_idle_per_endpoint`, per worker; one endpoint here). The
# sidecar's app cluster cannot be configured from its command line: it has the default
# max_idle_per_endpoint, 1024 (crates/rampart-config/src/validate.rs), hence this value.
UPSTREAM_KEEPALIVE=1024
# The small build, exactly as README.md tells a sidecar user to build it.
SMALL_BUILD_CMD=(cargo build --profile small -p rampart --no-default-features)

# Targets (the lower the better, except req/s ratio).
T_IDLE_RSS_MIB=5
T_LOADED_RSS_MIB=20
T_LOADED_CONNS=1000
T_SMALL_MIB=8
T_ADDED_P99_MS=1
T_ADDED_CONNS=64
T_TLS_RATIO=1.0

BENCH_TAG=sidecar-bench
# shellcheck source=bench/lib.sh
source "$REPO_ROOT/bench/lib.sh"     # log/die, cleanup trap, nginx, /proc and wrk helpers, doc writer
bench_install_traps
check_rounds

# Filled in as we go (lib.sh also defines STARTED_PIDS, NOFILE, R[...], ...).
declare -A PROXY_PID     # target -> pid of its main process
declare -A PROXY_KIND    # target -> "nginx" (master + workers) or "single" (one process)
declare -A PROXY_URL     # target -> URL wrk loads
declare -A IDLE_RSS_MIB  # proxy -> VmRSS after ready, before load
declare -A TLS_INFO      # TLS target -> "protocol, cipher; resumption: ..."
HAPROXY_VERSION=""
OPENSSL_VERSION=""
SMALL_NOTE=""
SMALL_UNSTRIPPED_MIB="n/a"
SMALL_STRIPPED_MIB="n/a"
SMALL_BIN=""                 # the stripped small binary: its size is reported and the sidecar runs it
SMALL_VERSION=""

# ---------------------------------------------------------------------------------------------
# Builds
# ---------------------------------------------------------------------------------------------

# Does crates/rampart/Cargo.toml declare a `full` feature that `default` turns on?
has_full_default_feature() {
    awk '
        /^\[/ { in_features = ($0 == "[features]"); next }
        in_features && /^default *=/ && /"full"/ { d = 1 }
        in_features && /^full *=/ { f = 1 }
        END { exit !(d && f) }' crates/rampart/Cargo.toml
}

# Builds (or takes RAMPART_SMALL_BIN) the small binary, strips a copy into bench/out/rampart-small.
# That copy is what a sidecar user deploys: its size is reported and the sidecar runs are made
# with it, so the sidecar's memory targets are judged on it, not on the (larger) release build.
small_build() {
    local bin
    if [[ -n "${RAMPART_SMALL_BIN:-}" ]]; then
        bin="$RAMPART_SMALL_BIN"
        SMALL_NOTE="binary given by RAMPART_SMALL_BIN=$RAMPART_SMALL_BIN (not built here; the sidecar user's build is \`${SMALL_BUILD_CMD[*]}\`)"
        log "small build: using $bin"
    else
        command -v cargo >/dev/null 2>&1 || die "cargo not found (or set RAMPART_SMALL_BIN)"
        log "small build: ${SMALL_BUILD_CMD[*]}"
        # Exactly README's command: no extra features, so no mimalloc (the `mimalloc` feature
        # is a default one); the allocator is glibc malloc, as in the deployed sidecar.
        "${SMALL_BUILD_CMD[@]}"
        SMALL_NOTE="\`${SMALL_BUILD_CMD[*]}\` (README's sidecar build: size-optimized profile, fat LTO, without the default features \`full\` and \`mimalloc\`, so glibc malloc)"
        bin="$CARGO_TARGET_DIR/small/rampart"
    fi
    [[ -x "$bin" ]] || die "small binary not executable: $bin"
    strip -o "$OUT_DIR/rampart-small" "$bin"
    SMALL_BIN="$OUT_DIR/rampart-small"
    SMALL_UNSTRIPPED_MIB="$(file_mib "$bin")"
    SMALL_STRIPPED_MIB="$(file_mib "$SMALL_BIN")"
    SMALL_VERSION="$(timeout 5 "$SMALL_BIN" --version 2>/dev/null | sed -n 1p || true)"
    log "small build: $SMALL_UNSTRIPPED_MIB MiB unstripped, $SMALL_STRIPPED_MIB MiB stripped (bench/out/rampart-small)"
}

file_mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.2f", b / 1048576 }'; }

# ---------------------------------------------------------------------------------------------
# TLS material: a self-signed CA and a server certificate for bench.test, signed by it
# ---------------------------------------------------------------------------------------------
gen_certs() {
    local keyspec=()
    case "$TLS_KEY" in
        ec) keyspec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
        rsa) keyspec=(-newkey rsa:2048) ;;
        *) die "BENCH_TLS_KEY must be ec or rsa, not '$TLS_KEY'" ;;
    esac
    rm -rf "$TLS_DIR"
    mkdir -p "$TLS_DIR"
    (
        cd "$TLS_DIR"
        openssl req -x509 -new "${keyspec[@]}" -nodes -days 7 -sha256 \
            -subj "/CN=Rampart bench CA" -keyout ca.key -out ca.pem \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -new "${keyspec[@]}" -nodes -subj "/CN=$TLS_NAME" -keyout server.key -out server.csr
        printf '%s\n' "subjectAltName=DNS:$TLS_NAME" "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 -sha256 \
            -extfile server.ext -out leaf.pem
        openssl verify -CAfile ca.pem leaf.pem
        cat leaf.pem ca.pem >server.pem      # chain, end-entity first
    ) >"$OUT_DIR/openssl.log" 2>&1 || { cat "$OUT_DIR/openssl.log" >&2; die "certificate generation failed"; }
    log "TLS: CA and $TLS_NAME certificate ($TLS_KEY) in ${TLS_DIR#"$REPO_ROOT/"}"
}

# curl arguments that reach a TLS port as https://bench.test:PORT/ and verify against our CA.
tls_curl_args() { printf '%s\n' --cacert "$TLS_DIR/ca.pem" --resolve "$TLS_NAME:$1:127.0.0.1"; }

# Protocol and cipher a plain OpenSSL client (like wrk's) negotiates, and whether the server
# resumes a session: two s_client connections, the second offering the first one's session.
# Each sends a GET with `Connection: close` and reads to EOF, so TLS 1.3 tickets are received.
probe_tls() {
    local name="$1" port="$2" first second proto cipher reused req
    req="$(printf 'GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$TLS_NAME")"
    first="$(printf '%s' "$req" | timeout 10 openssl s_client -connect "127.0.0.1:$port" \
        -servername "$TLS_NAME" -CAfile "$TLS_DIR/ca.pem" -verify_return_error -ign_eof \
        -sess_out "$OUT_DIR/$name.sess" 2>&1 || true)"
    second="$(printf '%s' "$req" | timeout 10 openssl s_client -connect "127.0.0.1:$port" \
        -servername "$TLS_NAME" -CAfile "$TLS_DIR/ca.pem" -ign_eof \
        -sess_in "$OUT_DIR/$name.sess" 2>&1 || true)"
    proto="$(awk '/^New, /{ sub(/^New, /, ""); sub(/, Cipher is /, " "); print; exit }' <<<"$first")"
    cipher="${proto#* }" proto="${proto%% *}"
    if grep -q '^Reused, ' <<<"$second"; then reused=yes; else reused=no; fi
    TLS_INFO[$name]="${proto:-?} ${cipher:-?}, resumes sessions: $reused"
    log "$name: ${TLS_INFO[$name]}"
}

# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------
register() {  # register NAME PID KIND URL
    PROXY_PID[$1]=$2 PROXY_KIND[$1]=$3 PROXY_URL[$1]=$4
}

start_app() {
    start_static_nginx app "$APP_PORT"
    register direct "$NGINX_LAST_PID" nginx "http://127.0.0.1:$APP_PORT/"
}

# The sidecar runs the small build (SMALL_BIN), the binary a sidecar user deploys.
start_sidecar() {
    local logfile="$OUT_DIR/rampart-sidecar.log" pid
    "$SMALL_BIN" sidecar --app-port "$APP_PORT" --inbound "127.0.0.1:$RAMPART_PORT" \
        --outbound "127.0.0.1:$RAMPART_OUTBOUND_PORT" --admin "127.0.0.1:$SIDECAR_ADMIN_PORT" \
        --workers 1 >"$logfile" 2>&1 &
    pid=$!
    STARTED_PIDS+=("$pid")
    register rampart "$pid" single "http://127.0.0.1:$RAMPART_PORT/"
    wait_ready "rampart sidecar" "$pid" "http://127.0.0.1:$SIDECAR_ADMIN_PORT/ready" "$logfile"
    check_proxy_response "rampart sidecar" "$RAMPART_PORT"
    log "rampart sidecar ready: inbound :$RAMPART_PORT, admin :$SIDECAR_ADMIN_PORT (pid $pid)"
}

start_haproxy() {
    local cfg="$OUT_DIR/haproxy.cfg" logfile="$OUT_DIR/haproxy.log" pid
    cat >"$cfg" <<EOF
# Written by bench/sidecar.sh; overwritten on every run.
global
    nbthread 1
    maxconn 4096                    # 1000 client + up to 1000 server connections fit easily
defaults
    mode http
    option http-keep-alive          # keep-alive on both sides (the default, stated)
    http-reuse always               # share idle server connections between client connections
    maxconn 4096                    # 1000 client + up to 1000 server connections fit easily
    timeout connect 5s
    timeout client 65s
    timeout server 65s
    timeout http-request 10s
    timeout http-keep-alive 65s
frontend sidecar
    bind 127.0.0.1:$HAPROXY_PORT backlog 4096
    default_backend app
backend app
    server app 127.0.0.1:$APP_PORT
EOF
    haproxy -c -q -f "$cfg" >"$logfile" 2>&1 || { cat "$logfile" >&2; die "haproxy config check failed"; }
    haproxy -db -f "$cfg" >>"$logfile" 2>&1 &     # -db: foreground, one process
    pid=$!
    STARTED_PIDS+=("$pid")
    register haproxy "$pid" single "http://127.0.0.1:$HAPROXY_PORT/"
    wait_ready haproxy "$pid" "http://127.0.0.1:$HAPROXY_PORT/" "$logfile"
    check_proxy_response haproxy "$HAPROXY_PORT"
    log "haproxy ready on :$HAPROXY_PORT (pid $pid)"
}

# nginx reverse proxy to the app. $1 = name, $2 = workers, $3 = listen directive arguments
# (callers pass `reuseport`: a listening socket per worker, as rampart binds an SO_REUSEPORT
# socket per worker; without it nginx's workers share one accept queue), $4 = extra
# server-level directives.
start_nginx_proxy() {
    local name="$1" workers="$2" listen="$3" extra="${4:-}" prefix conf
    prefix="$(new_prefix "$name")"
    conf="$prefix/conf/nginx.conf"
    {
        nginx_conf_head "$prefix" "$workers"
        echo "http {"
        nginx_http_common "$prefix"
        cat <<EOF
    upstream app {
        server 127.0.0.1:$APP_PORT;
        keepalive $UPSTREAM_KEEPALIVE;             # idle upstream connections kept per worker (= rampart's max_idle_per_endpoint)
        keepalive_requests 1000000;
    }
    server {
        listen $listen;
$extra
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$conf"
    start_nginx "$prefix" "$conf"
}

start_nginx_sidecar() {
    start_nginx_proxy nginx 1 "127.0.0.1:$NGINX_PORT reuseport backlog=4096"
    register nginx "$NGINX_LAST_PID" nginx "http://127.0.0.1:$NGINX_PORT/"
    wait_ready nginx "$NGINX_LAST_PID" "http://127.0.0.1:$NGINX_PORT/" "$OUT_DIR/nginx/logs/error.log"
    check_proxy_response nginx "$NGINX_PORT"
    log "nginx ready on :$NGINX_PORT (pid $NGINX_LAST_PID)"
}

start_rampart_tls() {
    local conf="$OUT_DIR/rampart-tls.yaml" logfile="$OUT_DIR/rampart-tls.log" pid
    local -a curl_args
    cat >"$conf" <<EOF
# Written by bench/sidecar.sh; overwritten on every run.
workers: 2
admin: { address: 127.0.0.1:$TLS_ADMIN_PORT }
access_log: { format: "off" }
listeners:
  - name: tls
    address: 127.0.0.1:$RAMPART_TLS_PORT
    route_table: main
    tls:
      certificates: [{ cert: $TLS_DIR/server.pem, key: $TLS_DIR/server.key }]
      alpn: ["http/1.1"]
route_tables:
  - name: main
    virtual_hosts: [{ name: all, domains: ["*"], routes: [{ forward: { cluster: app } }] }]
clusters:
  # max_idle_per_endpoint: idle upstream connections per worker, the same as nginx's keepalive.
  - { name: app, endpoints: ["127.0.0.1:$APP_PORT"], max_idle_per_endpoint: $UPSTREAM_KEEPALIVE }
EOF
    # wrk sends the URL's host as SNI, here the IP 127.0.0.1, which TLS forbids; rustls ignores it
    # but logs a WARN per handshake. Keep that log line (caused by the load generator) out of the
    # handshake-heavy run: rustls logs at error level only.
    RUST_LOG="info,rustls=error" "$RAMPART_BIN" serve --config "$conf" >"$logfile" 2>&1 &
    pid=$!
    STARTED_PIDS+=("$pid")
    register rampart-tls "$pid" single "https://127.0.0.1:$RAMPART_TLS_PORT/"
    wait_ready "rampart (TLS)" "$pid" "http://127.0.0.1:$TLS_ADMIN_PORT/ready" "$logfile"
    mapfile -t curl_args < <(tls_curl_args "$RAMPART_TLS_PORT")
    check_body "rampart (TLS)" "https://$TLS_NAME:$RAMPART_TLS_PORT/" "${curl_args[@]}"
    log "rampart (TLS) ready on :$RAMPART_TLS_PORT, admin :$TLS_ADMIN_PORT (pid $pid)"
}

start_nginx_tls() {
    local -a curl_args
    start_nginx_proxy nginx-tls 2 "127.0.0.1:$NGINX_TLS_PORT ssl reuseport backlog=4096" \
"        ssl_certificate $TLS_DIR/server.pem;
        ssl_certificate_key $TLS_DIR/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;   # nginx 1.22's default lacks TLSv1.3; rustls offers both"
    register nginx-tls "$NGINX_LAST_PID" nginx "https://127.0.0.1:$NGINX_TLS_PORT/"
    mapfile -t curl_args < <(tls_curl_args "$NGINX_TLS_PORT")
    wait_ready "nginx (TLS)" "$NGINX_LAST_PID" "https://$TLS_NAME:$NGINX_TLS_PORT/" \
        "$OUT_DIR/nginx-tls/logs/error.log" "${curl_args[@]}"
    check_body "nginx (TLS)" "https://$TLS_NAME:$NGINX_TLS_PORT/" "${curl_args[@]}"
    log "nginx (TLS) ready on :$NGINX_TLS_PORT (pid $NGINX_LAST_PID)"
}

# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------

# The pids that make up a target: nginx = master + workers; single = the one process
# (whose /proc/PID/stat already sums all its threads).
proxy_pids() {
    local name="$1" pid="${PROXY_PID[$1]}"
    echo "$pid"
    if [[ "${PROXY_KIND[$name]}" == nginx ]]; then child_pids "$pid"; fi
}

record_idle_rss() {
    # shellcheck disable=SC2046  # a whitespace-separated pid list
    IDLE_RSS_MIB[$1]="$(sum_status_kib VmRSS $(proxy_pids "$1") | kib_to_mib)"
    log "$1 idle RSS: ${IDLE_RSS_MIB[$1]} MiB"
}

# measure NAME MODE CONNS SECS ROUND: MODE is ka (keep-alive) or close (Connection: close).
# Results in R[NAME,MODE,CONNS,r<ROUND>,*]: wrk's BENCH_* fields, CPU_PER_100K, RSS_MAX_MIB, HWM_MIB.
measure() {
    local name="$1" mode="$2" conns="$3" secs="$4" round="$5" url="${PROXY_URL[$1]}" script="$LUA_SCRIPT"
    local k="$1,$2,$3,r$5" out="$OUT_DIR/wrk-$1-$2-c$3-r$5.txt" rss="$OUT_DIR/rss-$1-$2-c$3-r$5.txt"
    local pids before after max_and_n
    [[ "$mode" == close ]] && script="$CLOSE_LUA"

    log "$name $mode c=$conns round $round/$ROUNDS: warm-up ${WARMUP}s"
    run_wrk "$conns" "$WARMUP" "$url" "$OUT_DIR/wrk-$name-$mode-c$conns-r$round-warmup.txt" "$script"

    log "$name $mode c=$conns round $round/$ROUNDS: measuring ${secs}s"
    pids="$(proxy_pids "$name")"
    # shellcheck disable=SC2086  # pids is a whitespace-separated list
    before="$(cpu_ticks $pids)"
    # shellcheck disable=SC2086
    start_rss_sampler "$rss" $pids
    run_wrk "$conns" "$secs" "$url" "$out" "$script"
    max_and_n="$(stop_rss_sampler "$rss")"
    # shellcheck disable=SC2086
    after="$(cpu_ticks $pids)"
    kill -0 "${PROXY_PID[$name]}" 2>/dev/null || die "$name died during the run"

    read_wrk_results "$k" "$out"
    R[$k,CPU_PER_100K]="$(ticks_per_100k $((after - before)) "${R[$k,REQUESTS]}")"
    R[$k,RSS_MAX_MIB]="${max_and_n% *}"
    R[$k,RSS_SAMPLES]="${max_and_n#* }"
    # shellcheck disable=SC2086
    R[$k,HWM_MIB]="$(sum_status_kib VmHWM $pids | kib_to_mib)"
    if grep -qE 'Socket errors|Non-2xx' "$out"; then
        log "$name $mode c=$conns round $round/$ROUNDS: wrk reported: $(grep -E 'Socket errors|Non-2xx' "$out" | tr -s ' ' | paste -sd';')"
    fi
    log "$name $mode c=$conns round $round/$ROUNDS: ${R[$k,RPS]} req/s, p99 ${R[$k,P99_MS]} ms, errors ${R[$k,ERRORS]}," \
        "CPU ${R[$k,CPU_PER_100K]} s/100k, max VmRSS ${R[$k,RSS_MAX_MIB]} MiB"
}

# The figures reported for each target, mode and concurrency: medians over the rounds.
MEDIAN_FIELDS=(RPS P50_MS P99_MS P999_MS ERRORS CPU_PER_100K RSS_MAX_MIB HWM_MIB)

write_close_lua() {
    {
        echo "-- Written by bench/sidecar.sh: bench/latency.lua plus a Connection: close header, so"
        echo "-- every request opens a new connection (and, over https, does a new TLS handshake)."
        echo 'wrk.headers["Connection"] = "close"'
        cat "$LUA_SCRIPT"
    } >"$CLOSE_LUA"
}

# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------
# Largest / smallest of BENCH_CONNS (awk, not `sort | head`: no SIGPIPE under pipefail).
max_conns() { awk '{ m = $1; for (i = 2; i <= NF; i++) if ($i + 0 > m + 0) m = $i; print m }' <<<"$CONNS_LIST"; }
min_conns() { awk '{ m = $1; for (i = 2; i <= NF; i++) if ($i + 0 < m + 0) m = $i; print m }' <<<"$CONNS_LIST"; }

# The concurrency the "RSS at 1000 connections" target is judged at (1000, or the largest run).
loaded_conns() {
    if [[ " $CONNS_LIST " == *" $T_LOADED_CONNS "* ]]; then echo "$T_LOADED_CONNS"; else max_conns; fi
}
added_conns() {
    if [[ " $CONNS_LIST " == *" $T_ADDED_CONNS "* ]]; then echo "$T_ADDED_CONNS"; else min_conns; fi
}

rss_how() {
    if [[ "${PROXY_KIND[$1]}" == nginx ]]; then echo "sum over master + workers"; else echo "one process"; fi
}

# The targets, as "description|value|verdict" lines.
targets() {
    local lc ac lk ak
    lc="$(loaded_conns)" ac="$(added_conns)"
    lk="rampart,ka,$lc" ak="rampart,ka,$ac"
    echo "sidecar idle RSS ≤ $T_IDLE_RSS_MIB MiB|${IDLE_RSS_MIB[rampart]} MiB|$(met_if "${IDLE_RSS_MIB[rampart]}" '<=' "$T_IDLE_RSS_MIB")"
    echo "sidecar RSS ≤ $T_LOADED_RSS_MIB MiB at $lc connections (max VmRSS sample)|${R[$lk,RSS_MAX_MIB]} MiB (VmHWM ${R[$lk,HWM_MIB]} MiB: $(met_if "${R[$lk,HWM_MIB]}" '<=' "$T_LOADED_RSS_MIB"))|$(met_if "${R[$lk,RSS_MAX_MIB]}" '<=' "$T_LOADED_RSS_MIB")"
    echo "stripped small binary ≤ $T_SMALL_MIB MiB|$SMALL_STRIPPED_MIB MiB|$(met_if "$SMALL_STRIPPED_MIB" '<=' "$T_SMALL_MIB")"
    local added
    added="$(diff_ms "${R[$ak,P99_MS]}" "${R[direct,ka,$ac,P99_MS]}")"
    echo "sidecar added p99 over direct ≤ $T_ADDED_P99_MS ms at $ac connections|$added ms|$(met_if "$added" '<=' "$T_ADDED_P99_MS")"
    echo "TLS keep-alive req/s rampart/nginx ≥ $T_TLS_RATIO|$(ratio "${R[rampart-tls,ka,$TLS_CONNS,RPS]}" "${R[nginx-tls,ka,$TLS_CONNS,RPS]}")|$(ratio_verdict "${R[rampart-tls,ka,$TLS_CONNS,RPS]}" "${R[nginx-tls,ka,$TLS_CONNS,RPS]}" '>=' "$T_TLS_RATIO")"
    echo "TLS handshake-heavy req/s rampart/nginx ≥ $T_TLS_RATIO (informational)|$(ratio "${R[rampart-tls,close,$TLS_CONNS,RPS]}" "${R[nginx-tls,close,$TLS_CONNS,RPS]}")|$(ratio_verdict "${R[rampart-tls,close,$TLS_CONNS,RPS]}" "${R[nginx-tls,close,$TLS_CONNS,RPS]}" '>=' "$T_TLS_RATIO")"
}

# Rows of each table, "|"-separated, shared by the terminal and the markdown output.
rows_plain() {
    local conns name k
    for conns in $CONNS_LIST; do
        for name in "${PLAIN_TARGETS[@]}"; do
            k="$name,ka,$conns"
            [[ -n "${R[$k,RPS]:-}" ]] || continue
            echo "$name|$conns|${R[$k,RPS]}|${R[$k,P50_MS]}|${R[$k,P99_MS]}|${R[$k,P999_MS]}|${R[$k,ERRORS]}|${R[$k,CPU_PER_100K]}"
        done
    done
}
rows_added() {
    local conns name
    conns="$(added_conns)"
    for name in "${PROXIES[@]}"; do
        echo "$name|$conns|$(diff_ms "${R[$name,ka,$conns,P50_MS]}" "${R[direct,ka,$conns,P50_MS]}")|$(diff_ms "${R[$name,ka,$conns,P99_MS]}" "${R[direct,ka,$conns,P99_MS]}")"
    done
}
rows_ratios() {
    local conns other a b
    for conns in $CONNS_LIST; do
        for other in haproxy nginx; do
            a="rampart,ka,$conns" b="$other,ka,$conns"
            echo "rampart/$other|$conns|$(ratio "${R[$a,RPS]}" "${R[$b,RPS]}")|$(ratio "${R[$a,P99_MS]}" "${R[$b,P99_MS]}")|$(ratio "${R[$a,CPU_PER_100K]}" "${R[$b,CPU_PER_100K]}")"
        done
    done
}
rows_memory() {
    local name conns row
    for name in "${PROXIES[@]}"; do
        row="$name|$(rss_how "$name")|${IDLE_RSS_MIB[$name]}"
        for conns in $CONNS_LIST; do
            row+="|${R[$name,ka,$conns,RSS_MAX_MIB]}|${R[$name,ka,$conns,HWM_MIB]}"
        done
        echo "$row"
    done
}
memory_header() {
    local conns h="proxy|counted|idle VmRSS"
    for conns in $CONNS_LIST; do h+="|max VmRSS during c=$conns|VmHWM after c=$conns"; done
    echo "$h"
}
rows_tls() {
    local mode name k label
    for mode in ka close; do
        for name in "${TLS_TARGETS[@]}"; do
            k="$name,$mode,$TLS_CONNS"
            if [[ "$mode" == ka ]]; then label="keep-alive"; else label="new connection per request"; fi
            echo "${name%-tls}|$label|$TLS_CONNS|${R[$k,RPS]}|${R[$k,P50_MS]}|${R[$k,P99_MS]}|${R[$k,ERRORS]}|${R[$k,CPU_PER_100K]}"
        done
        echo "rampart/nginx|$label||$(ratio "${R[rampart-tls,$mode,$TLS_CONNS,RPS]}" "${R[nginx-tls,$mode,$TLS_CONNS,RPS]}")||||"
    done
}

# print_rows HEADER (stdin: rows): an aligned terminal table.
print_rows() { { echo "$1"; cat; } | column -t -s '|'; echo; }
# md_rows HEADER ALIGN (stdin: rows): a markdown table.
md_rows() {
    { echo "$1"; echo "$2"; cat; } | awk -F'|' '{ s = "|"; for (i = 1; i <= NF; i++) s = s " " $i " |"; print s }'
    echo
}

H_PLAIN="target|conns|req/s|p50 ms|p99 ms|p99.9 ms|errors|CPU s/100k req"
H_ADDED="proxy|conns|added p50 ms|added p99 ms"
H_RATIOS="ratio|conns|req/s|p99|CPU s/100k req"
H_TLS="server|connections|conns|req/s|p50 ms|p99 ms|errors|CPU s/100k req"
H_TARGETS="target|measured|verdict"

print_report() {
    echo
    echo "== Every figure below is the median of $ROUNDS rounds (per-round values in the log above)"
    echo "== 1. Plain HTTP keep-alive, 1024-byte GET (proxies with 1 worker; CPU = process under test, direct = the app)"
    rows_plain | print_rows "$H_PLAIN"
    echo "== Added latency vs direct (proxy minus direct, at $(added_conns) connections)"
    rows_added | print_rows "$H_ADDED"
    echo "== Ratios"
    rows_ratios | print_rows "$H_RATIOS"
    echo "== 2. Memory, MiB (nginx: sum over master + worker; VmRSS sampled every 0.5 s during the measured run)"
    rows_memory | print_rows "$(memory_header)"
    echo "== 3. TLS termination (rampart serve vs nginx, 2 workers each, $TLS_KEY key)"
    rows_tls | print_rows "$H_TLS"
    local n
    for n in "${TLS_TARGETS[@]}"; do echo "   ${n%-tls}: ${TLS_INFO[$n]}"; done
    echo
    echo "== 4. Small build: $SMALL_UNSTRIPPED_MIB MiB unstripped, $SMALL_STRIPPED_MIB MiB stripped (bench/out/rampart-small)"
    echo "   $SMALL_NOTE"
    echo "   The sidecar rows (throughput, latency, memory) were measured on this binary: $(sidecar_build_line)"
    echo
    echo "== 5. Targets"
    targets | print_rows "$H_TARGETS"
}

# The exact command, including any environment overrides that were in effect.
invocation() {
    local v cmd=""
    for v in BENCH_DURATION BENCH_WARMUP BENCH_CONNS BENCH_ROUNDS BENCH_TLS_CONNS BENCH_HANDSHAKE_DURATION \
             BENCH_TLS_KEY BENCH_DOC RAMPART_SMALL_BIN; do
        if [[ -n "${!v:-}" ]]; then cmd+="$v=$(printf '%q' "${!v}") "; fi
    done
    if [[ -n "$RAMPART_BIN_GIVEN" ]]; then cmd+="RAMPART_BIN=$(printf '%q' "$RAMPART_BIN_GIVEN") "; fi
    printf '%sbash bench/sidecar.sh' "$cmd"
}

# Which binary the TLS rows were measured on, for the doc.
release_build_line() {
    if [[ -n "$RAMPART_BIN_GIVEN" ]]; then printf 'RAMPART_BIN=%s' "$RAMPART_BIN_GIVEN"
    else printf '%s' "\`cargo build --release -p rampart\`, default features"; fi
}

# Which binary the sidecar rows were measured on, for the doc.
sidecar_build_line() {
    printf 'bench/out/rampart-small (%s, %s MiB stripped): %s' \
        "${SMALL_VERSION:-version unknown}" "$SMALL_STRIPPED_MIB" "$SMALL_NOTE"
}

markdown_section() {
    local n
    echo "<!-- sidecar:begin -->"
    echo "## Sidecar: Rampart vs HAProxy vs nginx, TLS termination, small build"
    echo
    echo "- Command: \`$(invocation)\`"
    echo "- Date: $(date -u)"
    echo "- Machine: $(machine_line); CPU busy before the run: ${CPU_BUSY_START}%"
    echo "- Tools: $HAPROXY_VERSION; $(nginx_version); $(wrk_version); $OPENSSL_VERSION"
    echo "- Rampart: repo revision $(repo_revision)." \
         "**Sidecar rows (plain HTTP and memory) are the sidecar user's build**: $(sidecar_build_line)." \
         "TLS rows: \`rampart serve\` from the release build, ${RAMPART_VERSION:-version unknown} ($(release_build_line))."
    echo "- Setup: the app is nginx (1 worker) on :$APP_PORT serving a fixed ${BODY_BYTES}-byte body with keep-alive." \
         "Proxies with ONE worker/thread each: rampart \`sidecar --workers 1\` (access log off; the default \`max_idle_per_endpoint\` $UPSTREAM_KEEPALIVE," \
         "and the sidecar's default \`--app-max-connections 64\`, which caps its connections to the app, where HAProxy and nginx have no cap);" \
         "HAProxy \`nbthread 1\`, \`mode http\`, \`http-reuse always\`; nginx \`worker_processes 1\`, \`listen ... reuseport\`, upstream \`keepalive $UPSTREAM_KEEPALIVE\` (the same idle pool per worker as rampart), HTTP/1.1 upstream." \
         "Load: wrk \`-t2 -c<conns> -d${DURATION}s --latency -s bench/latency.lua\` after a ${WARMUP} s warm-up." \
         "Every figure is the **median of $ROUNDS rounds**; within a concurrency the targets run in alternating order" \
         "(round 1: ${PLAIN_ORDER[*]}; round 2 the reverse; ...); ratios and differences are of the medians." \
         "wrk, the app and the proxy share this machine's $(nproc) CPUs."
    echo
    echo "### Plain HTTP keep-alive"
    echo
    rows_plain | md_rows "$H_PLAIN" "---|---:|---:|---:|---:|---:|---:|---:"
    echo "Added latency (proxy minus direct, both at $(added_conns) connections):"
    echo
    rows_added | md_rows "$H_ADDED" "---|---:|---:|---:"
    rows_ratios | md_rows "$H_RATIOS" "---|---:|---:|---:|---:"
    echo "### Memory (MiB)"
    echo
    rows_memory | md_rows "$(memory_header)" "---|---|---:$(for _ in $CONNS_LIST; do printf '|---:|---:'; done)"
    echo "### TLS termination"
    echo
    echo "rampart \`serve\` (\`workers: 2\`, access log off, \`alpn: [http/1.1]\`, \`RUST_LOG=info,rustls=error\`, cluster \`max_idle_per_endpoint: $UPSTREAM_KEEPALIVE\`)" \
         "vs nginx (\`worker_processes 2\`, \`listen ssl reuseport\`, \`ssl_protocols TLSv1.2 TLSv1.3\`, default session tickets, upstream \`keepalive $UPSTREAM_KEEPALIVE\`)," \
         "same certificate ($TLS_KEY key, signed by a self-signed CA, for \`$TLS_NAME\`), both proxying to the app with upstream keep-alive." \
         "Medians of $ROUNDS rounds, nginx first in odd rounds, rampart first in even ones." \
         "Keep-alive: \`wrk -t2 -c$TLS_CONNS -d${DURATION}s https://127.0.0.1:PORT/\` (steady-state TLS throughput)." \
         "New connection per request: the same with a \`Connection: close\` header, ${HANDSHAKE_DURATION} s (a TCP connect + TLS handshake per request)."
    echo
    rows_tls | md_rows "$H_TLS" "---|---|---:|---:|---:|---:|---:|---:"
    for n in "${TLS_TARGETS[@]}"; do echo "- ${n%-tls}, as seen by \`openssl s_client\`: ${TLS_INFO[$n]}"; done
    echo
    echo "### Small build"
    echo
    echo "$SMALL_NOTE: **$SMALL_STRIPPED_MIB MiB** stripped (\`strip -o bench/out/rampart-small\`), $SMALL_UNSTRIPPED_MIB MiB unstripped."
    echo
    echo "### Targets"
    echo
    targets | md_rows "$H_TARGETS" "---|---:|---"
    echo "Method notes:"
    echo
    echo "- Errors are wrk's connect + read + write + timeout + non-2xx/3xx counts."
    echo "- CPU is utime+stime from /proc of the process under test during the measured run only (nginx: master + worker;" \
         "rampart and haproxy: one process, all threads); for \`direct\` it is the app's CPU."
    echo "- Idle RSS is VmRSS after the server answered its readiness check and one proxied GET, before any load." \
         "\"max VmRSS during\" is the largest of the VmRSS samples taken every 0.5 s during the measured run;" \
         "VmHWM is the high-water mark since process start, read right after the run (it includes the warm-up and earlier rounds);" \
         "the kernel updates it lazily (e.g. on munmap), so memory returned with madvise can leave it below a sample." \
         "nginx figures are the sum over master + worker, which counts pages shared after fork twice."
    echo "- Added latency is a difference of percentiles of two separate closed-loop runs at the same concurrency," \
         "with wrk saturating the 2 CPUs; it includes queueing from the lower throughput through a proxy" \
         "(Little's law: latency ≈ connections / req/s), not only the proxy's own per-request time."
    echo "- Handshake-heavy TLS: wrk keeps its TLS session across reconnects (\`SSL_clear\`), so when a server" \
         "resumes sessions (see above) most handshakes are TLS 1.3 resumptions (PSK with a new ECDHE key exchange), not full" \
         "certificate handshakes; checked by hand against nginx with \`\$ssl_session_reused\`: all but the first handshake of each connection slot resumed." \
         "In that run wrk's own TLS client work (an ECDHE per connection, on the same 2 CPUs) limits throughput as much as the server does," \
         "and req/s varies a lot between runs; the server's CPU s/100k req is the steadier comparison."
    echo "- wrk sends the URL's host (127.0.0.1) as SNI. rustls ignores an IP address there and logs a WARN for each" \
         "handshake, so the TLS rampart runs with \`RUST_LOG=info,rustls=error\` to keep that per-handshake log line out of the numbers;" \
         "both servers then serve their only certificate."
    echo "<!-- sidecar:end -->"
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
main() {
    local conns name mode p round
    mkdir -p "$OUT_DIR"
    ensure_tools nginx:nginx wrk:wrk curl:curl pgrep:procps haproxy:haproxy openssl:openssl \
        strip:binutils column:bsdextrautils
    raise_nofile
    for p in "$APP_PORT" "$NGINX_PORT" "$RAMPART_PORT" "$HAPROXY_PORT" "$RAMPART_OUTBOUND_PORT" \
             "$SIDECAR_ADMIN_PORT" "$RAMPART_TLS_PORT" "$NGINX_TLS_PORT" "$TLS_ADMIN_PORT"; do
        check_port_free "$p"
    done
    HAPROXY_VERSION="$(haproxy -v 2>&1 | sed -n 1p)"   # sed reads all: no SIGPIPE under pipefail
    OPENSSL_VERSION="$(openssl version)"
    build_rampart
    small_build
    check_idle                             # after the builds, which themselves load the machine

    write_close_lua
    gen_certs

    # 1 + 2: plain HTTP through each proxy, memory.
    start_app
    start_sidecar;       record_idle_rss rampart
    start_haproxy;       record_idle_rss haproxy
    start_nginx_sidecar; record_idle_rss nginx
    # Concurrencies in turn (so that VmHWM after 64 connections is not 1000's), each in ROUNDS
    # rounds with the order reversed every other round, so drift and position affect all alike.
    for conns in $CONNS_LIST; do
        for ((round = 1; round <= ROUNDS; round++)); do
            for name in $(round_order "$round" "${PLAIN_ORDER[@]}"); do
                # direct is only the baseline for the added latency, measured at that concurrency.
                [[ "$name" == direct && "$conns" != "$(added_conns)" ]] && continue
                measure "$name" ka "$conns" "$DURATION" "$round"
            done
        done
        for name in "${PLAIN_TARGETS[@]}"; do
            [[ "$name" == direct && "$conns" != "$(added_conns)" ]] && continue
            rounds_median "$name,ka,$conns" "${MEDIAN_FIELDS[@]}"
        done
    done

    # 3: TLS termination.
    start_rampart_tls
    start_nginx_tls
    probe_tls rampart-tls "$RAMPART_TLS_PORT"
    probe_tls nginx-tls "$NGINX_TLS_PORT"
    for mode in ka close; do
        for ((round = 1; round <= ROUNDS; round++)); do
            for name in $(round_order "$round" "${TLS_ORDER[@]}"); do
                if [[ "$mode" == ka ]]; then measure "$name" ka "$TLS_CONNS" "$DURATION" "$round"
                else measure "$name" close "$TLS_CONNS" "$HANDSHAKE_DURATION" "$round"; fi
            done
        done
        for name in "${TLS_TARGETS[@]}"; do rounds_median "$name,$mode,$TLS_CONNS" "${MEDIAN_FIELDS[@]}"; done
    done

    print_report
    write_doc_section sidecar "$(markdown_section)"
}

main "$@"
