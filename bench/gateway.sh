#!/usr/bin/env bash
# Rampart vs nginx as an HTTP/1.1 reverse proxy, on this machine, in one run.
#
#   wrk ──► nginx proxy   127.0.0.1:18082 ─┐
#   wrk ──► rampart       127.0.0.1:18083 ─┴─► nginx upstream 127.0.0.1:18081 (fixed 1024-byte body)
#
# For each proxy and each concurrency (64, 1000): 2 s warm-up, then a measured
# `wrk -t2 -c<C> -d<D>s --latency -s bench/latency.lua`. Around the measured run the proxy's
# CPU time is read from /proc, and its peak RSS (VmHWM) afterwards. Prints a table and the
# rampart/nginx ratios, and writes the same into docs/BENCHMARKS.md between the
# `<!-- gateway:begin -->` / `<!-- gateway:end -->` markers.
#
# Usage:  bash bench/gateway.sh
# Environment:
#   BENCH_DURATION=10        seconds per measured wrk run
#   BENCH_WARMUP=2           seconds of warm-up before each measured run
#   BENCH_CONNS="64 1000"    concurrencies to test
#   CARGO_TARGET_DIR=/var/cache/rampart/target   where `cargo build --release -p rampart` puts it
#   RAMPART_BIN=path         use this rampart binary, skip the cargo build
#   BENCH_DOC=docs/BENCHMARKS.md   where to write the results section
#   BENCH_READY_TIMEOUT=30   seconds to wait for each server to become ready
#   BENCH_FAKE_RAMPART=1     SELF-TEST ONLY: the "rampart" slot is a second nginx proxy on 18083
#                            (plus a /ready responder on 19901). No cargo build; results go to
#                            bench/out/BENCHMARKS.fake.md unless BENCH_DOC is set. Used to test
#                            this script before a rampart binary exists; the numbers mean nothing
#                            about rampart.
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
LUA_SCRIPT="bench/latency.lua"

DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
CONNS_LIST="${BENCH_CONNS:-64 1000}"
READY_TIMEOUT="${BENCH_READY_TIMEOUT:-30}"
FAKE_RAMPART="${BENCH_FAKE_RAMPART:-0}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"
RAMPART_BIN_GIVEN="${RAMPART_BIN:-}"     # as given by the caller (the build sets RAMPART_BIN)
if [[ "$FAKE_RAMPART" == 1 ]]; then
    DOC="${BENCH_DOC:-bench/out/BENCHMARKS.fake.md}"
else
    DOC="${BENCH_DOC:-docs/BENCHMARKS.md}"
fi

UPSTREAM_PORT=18081
NGINX_PORT=18082
RAMPART_PORT=18083
ADMIN_PORT=19901
BODY_BYTES=1024
PROXIES=(nginx rampart)

# Filled in as we go.
STARTED_PIDS=()          # every long-running process we started (nginx masters, rampart)
WRK_PID=""               # the wrk run in progress, if any
declare -A PROXY_PID     # proxy name -> pid of its main process
declare -A PROXY_KIND    # proxy name -> "nginx" (master + workers) or "single" (one process)
declare -A R             # results: R[proxy,conns,field]
CLK_TCK="$(getconf CLK_TCK)"
NOFILE=""
RAMPART_IDLE_RSS_MIB=""
RAMPART_VERSION=""
CPU_BUSY_START=""

log() { printf '[gateway-bench] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Cleanup: stop everything we started, even on failure or Ctrl-C.
# ---------------------------------------------------------------------------------------------
child_pids() { pgrep -P "$1" 2>/dev/null || true; }

stop_pid() {
    local pid="$1" kids i
    kill -0 "$pid" 2>/dev/null || return 0
    kids="$(child_pids "$pid")"           # nginx workers: killed too if the master must be KILLed
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do        # up to 10 s for a graceful exit
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not exit after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    for k in $kids; do kill -KILL "$k" 2>/dev/null || true; done
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [[ -n "$WRK_PID" ]]; then kill -TERM "$WRK_PID" 2>/dev/null; wait "$WRK_PID" 2>/dev/null; fi
    local pid
    for pid in "${STARTED_PIDS[@]}"; do stop_pid "$pid"; done
    if [[ ${#STARTED_PIDS[@]} -gt 0 ]]; then log "stopped ${#STARTED_PIDS[@]} server process(es)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Setup helpers
# ---------------------------------------------------------------------------------------------
ensure_tools() {
    local missing=() pkg
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v pgrep >/dev/null 2>&1 || missing+=(procps)
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "installing: ${missing[*]}"
        [[ $EUID -eq 0 ]] || die "need root to apt-get install ${missing[*]}"
        # apt's chatter goes to stderr so that stdout carries only the results.
        apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2
    fi
    export PATH="$PATH:/usr/sbin:/sbin"
    for pkg in nginx wrk curl pgrep; do
        command -v "$pkg" >/dev/null 2>&1 || die "$pkg still missing after install"
    done
}

raise_nofile() {
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    NOFILE="$(ulimit -n)"
    log "open-files limit: $NOFILE"
    if [[ "$NOFILE" != unlimited && "$NOFILE" -lt 4096 ]]; then
        die "open-files limit $NOFILE is too low for 1000 connections"
    fi
}

# Other CPU load (e.g. a cargo build) skews every number: sample how busy the CPUs are over
# 1 s before starting (/proc/stat, all CPUs), warn if busy, and record it in the doc.
check_idle() {
    local a b
    a="$(head -n1 /proc/stat)"; sleep 1; b="$(head -n1 /proc/stat)"
    CPU_BUSY_START="$(printf '%s\n%s\n' "$a" "$b" | awk '
        { idle[NR] = $5 + $6; total[NR] = 0; for (i = 2; i <= NF; i++) total[NR] += $i }
        END { dt = total[2] - total[1]; printf "%.0f", (dt > 0 ? 100 * (1 - (idle[2] - idle[1]) / dt) : 0) }')"
    if (( CPU_BUSY_START > 10 )); then
        log "WARNING: CPUs were ${CPU_BUSY_START}% busy before starting; other work on this machine will skew the results"
    fi
}

# Fail early if a port we need is already taken (e.g. a leftover run).
check_port_free() {
    if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; then
        die "127.0.0.1:$1 is already in use; stop whatever listens there first"
    fi
}

build_rampart() {
    if [[ -n "${RAMPART_BIN:-}" ]]; then
        log "using RAMPART_BIN=$RAMPART_BIN (no build)"
    else
        command -v cargo >/dev/null 2>&1 || die "cargo not found (or set RAMPART_BIN)"
        log "cargo build --release -p rampart (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
        cargo build --release -p rampart
        RAMPART_BIN="$CARGO_TARGET_DIR/release/rampart"
    fi
    [[ -x "$RAMPART_BIN" ]] || die "rampart binary not executable: $RAMPART_BIN"
    RAMPART_VERSION="$(timeout 5 "$RAMPART_BIN" --version 2>/dev/null | head -n1 || true)"
}

# Polls URL until it answers 200, the process dies, or the deadline passes.
wait_ready() {
    local name="$1" pid="$2" url="$3" logfile="$4"
    local deadline=$(( $(date +%s) + READY_TIMEOUT )) code
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during startup; last lines of $logfile:"
            tail -n 20 "$logfile" >&2 || true
            die "$name failed to start"
        fi
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)"
        [[ "$code" == 200 ]] && return 0
        if (( $(date +%s) >= deadline )); then
            tail -n 20 "$logfile" >&2 || true
            die "$name not ready at $url after ${READY_TIMEOUT}s (last status: ${code:-none})"
        fi
        sleep 0.1
    done
}

# One GET through the proxy must return 200 with exactly the upstream body size.
check_proxy_response() {
    local name="$1" port="$2" got
    got="$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 5 "http://127.0.0.1:$port/" || true)"
    [[ "$got" == "200 $BODY_BYTES" ]] || die "$name on :$port answered '$got', expected '200 $BODY_BYTES'"
}

# ---------------------------------------------------------------------------------------------
# nginx instances (run in the foreground with `daemon off;`, so $! is the master pid)
# ---------------------------------------------------------------------------------------------

# Common top of every nginx config; $1 = prefix dir, $2 = worker processes.
nginx_conf_head() {
    cat <<EOF
daemon off;
worker_processes $2;
worker_rlimit_nofile $NOFILE;
pid $1/logs/nginx.pid;
error_log $1/logs/error.log warn;
events {
    worker_connections 4096;
}
EOF
}

# Temp paths inside the prefix so nothing is written under /var/lib/nginx.
nginx_http_common() {
    cat <<EOF
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path $1/tmp/client_body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
    keepalive_timeout 65s;
    keepalive_requests 1000000;   # don't make wrk reconnect every 1000 requests (nginx default)
EOF
}

# Starts nginx with conf file $2 under prefix $1; prints nothing, records the pid in NGINX_LAST_PID.
start_nginx() {
    local prefix="$1" conf="$2"
    nginx -t -q -p "$prefix" -e "$prefix/logs/error.log" -c "$conf" \
        || die "nginx config test failed for $conf (see $prefix/logs/error.log)"
    nginx -p "$prefix" -e "$prefix/logs/error.log" -c "$conf" >>"$prefix/logs/stderr.log" 2>&1 &
    NGINX_LAST_PID=$!
    STARTED_PIDS+=("$NGINX_LAST_PID")
}

new_prefix() {
    local prefix="$OUT_DIR/$1"
    rm -rf "$prefix"
    mkdir -p "$prefix"/{conf,logs,tmp,html}
    printf '%s' "$prefix"
}

start_upstream() {
    local prefix conf
    prefix="$(new_prefix nginx-upstream)"
    conf="$prefix/conf/nginx.conf"
    head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x' >"$prefix/html/body.bin"
    {
        nginx_conf_head "$prefix" 1
        echo "http {"
        nginx_http_common "$prefix"
        cat <<EOF
    sendfile on;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        root $prefix/html;
        etag off;
        # Every GET, whatever the path, gets the same $BODY_BYTES-byte file.
        location / { try_files /body.bin =500; }
    }
}
EOF
    } >"$conf"
    start_nginx "$prefix" "$conf"
    UPSTREAM_PID=$NGINX_LAST_PID
    wait_ready "upstream nginx" "$UPSTREAM_PID" "http://127.0.0.1:$UPSTREAM_PORT/" "$prefix/logs/error.log"
    check_proxy_response "upstream nginx" "$UPSTREAM_PORT"
    log "upstream nginx ready on :$UPSTREAM_PORT (pid $UPSTREAM_PID)"
}

# nginx reverse proxy; $1 = name (dir), $2 = listen port, $3 = optional extra server block.
start_nginx_proxy() {
    local name="$1" port="$2" extra="${3:-}" prefix conf
    prefix="$(new_prefix "$name")"
    conf="$prefix/conf/nginx.conf"
    {
        nginx_conf_head "$prefix" 2
        echo "http {"
        nginx_http_common "$prefix"
        cat <<EOF
    upstream backend {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
$extra
}
EOF
    } >"$conf"
    start_nginx "$prefix" "$conf"
    PROXY_PID[$name]=$NGINX_LAST_PID
    PROXY_KIND[$name]=nginx
    wait_ready "$name" "$NGINX_LAST_PID" "http://127.0.0.1:$port/" "$prefix/logs/error.log"
    check_proxy_response "$name" "$port"
    log "$name ready on :$port (pid $NGINX_LAST_PID)"
}

# ---------------------------------------------------------------------------------------------
# Rampart
# ---------------------------------------------------------------------------------------------
write_rampart_config() {
    cat >"$OUT_DIR/rampart-bench.yaml" <<EOF
# Written by bench/gateway.sh; overwritten on every run.
workers: 2
admin: { address: 127.0.0.1:$ADMIN_PORT }
access_log: { format: "off" }
listeners:
  - name: bench
    address: 127.0.0.1:$RAMPART_PORT
    route_table: main
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: { path: { prefix: / } }
            forward: { cluster: upstream }
clusters:
  - name: upstream
    endpoints: ["127.0.0.1:$UPSTREAM_PORT"]
EOF
}

start_rampart() {
    if [[ "$FAKE_RAMPART" == 1 ]]; then
        # Self-test stand-in: a second nginx proxy, plus a server that answers /ready.
        log "BENCH_FAKE_RAMPART=1: the 'rampart' slot is a second nginx proxy (self-test only)"
        start_nginx_proxy rampart "$RAMPART_PORT" \
            "    server { listen 127.0.0.1:$ADMIN_PORT; location = /ready { return 200 \"ready\\n\"; } }"
        wait_ready "rampart (fake) admin" "${PROXY_PID[rampart]}" "http://127.0.0.1:$ADMIN_PORT/ready" \
            "$OUT_DIR/rampart/logs/error.log"
        RAMPART_VERSION="FAKE (nginx stand-in)"
    else
        write_rampart_config
        local logfile="$OUT_DIR/rampart.log"
        "$RAMPART_BIN" serve --config "$OUT_DIR/rampart-bench.yaml" >"$logfile" 2>&1 &
        local pid=$!
        STARTED_PIDS+=("$pid")
        PROXY_PID[rampart]=$pid
        PROXY_KIND[rampart]=single
        wait_ready rampart "$pid" "http://127.0.0.1:$ADMIN_PORT/ready" "$logfile"
        check_proxy_response rampart "$RAMPART_PORT"
        log "rampart ready on :$RAMPART_PORT, admin :$ADMIN_PORT (pid $pid)"
    fi
    # Idle RSS: after ready (and the one check request), before any load.
    # shellcheck disable=SC2046  # a whitespace-separated pid list
    RAMPART_IDLE_RSS_MIB="$(sum_status_kib VmRSS $(proxy_pids rampart) | kib_to_mib)"
    log "rampart idle RSS: $RAMPART_IDLE_RSS_MIB MiB"
}

# ---------------------------------------------------------------------------------------------
# /proc measurements
# ---------------------------------------------------------------------------------------------

# The pids that make up a proxy: nginx = master + workers; single = the one process
# (whose /proc/PID/stat already sums all its threads).
proxy_pids() {
    local name="$1" pid="${PROXY_PID[$1]}"
    echo "$pid"
    if [[ "${PROXY_KIND[$name]}" == nginx ]]; then child_pids "$pid"; fi
}

# utime+stime in clock ticks, summed over the given pids.
cpu_ticks() {
    local total=0 pid stat rest
    local -a f
    for pid in "$@"; do
        stat="$(cat "/proc/$pid/stat")" || die "process $pid vanished"
        rest="${stat##*) }"                # drop "pid (comm) " — comm may contain spaces
        read -r -a f <<<"$rest"            # f[0] is field 3 (state); utime=14, stime=15
        total=$(( total + f[11] + f[12] ))
    done
    echo "$total"
}

# Sum of a /proc/PID/status field (kB) over the given pids.
sum_status_kib() {
    local field="$1" pid total=0 v
    shift
    for pid in "$@"; do
        v="$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status")"
        total=$(( total + ${v:-0} ))
    done
    echo "$total"
}

kib_to_mib() { awk '{ printf "%.1f\n", $1 / 1024 }'; }

# ---------------------------------------------------------------------------------------------
# Load runs
# ---------------------------------------------------------------------------------------------
proxy_port() { case "$1" in nginx) echo "$NGINX_PORT" ;; rampart) echo "$RAMPART_PORT" ;; esac; }

# Runs wrk in the background (so Ctrl-C / SIGTERM reach the trap promptly) and waits for it.
run_wrk() {
    local conns="$1" secs="$2" url="$3" out="$4"
    wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$LUA_SCRIPT" "$url" >"$out" 2>&1 &
    WRK_PID=$!
    if ! wait "$WRK_PID"; then
        WRK_PID=""
        cat "$out" >&2
        die "wrk failed against $url"
    fi
    WRK_PID=""
}

measure() {
    local name="$1" conns="$2" port url out before after pids key val
    port="$(proxy_port "$name")"
    url="http://127.0.0.1:$port/"
    out="$OUT_DIR/wrk-$name-c$conns.txt"

    log "$name c=$conns: warm-up ${WARMUP}s"
    run_wrk "$conns" "$WARMUP" "$url" "$OUT_DIR/wrk-$name-c$conns-warmup.txt"

    log "$name c=$conns: measuring ${DURATION}s"
    pids="$(proxy_pids "$name")"
    # shellcheck disable=SC2086  # pids is a whitespace-separated list
    before="$(cpu_ticks $pids)"
    run_wrk "$conns" "$DURATION" "$url" "$out"
    # shellcheck disable=SC2086
    after="$(cpu_ticks $pids)"
    kill -0 "${PROXY_PID[$name]}" 2>/dev/null || die "$name died during the run"

    while IFS='=' read -r key val; do
        case "$key" in
            BENCH_*) R[$name,$conns,${key#BENCH_}]="$val" ;;
        esac
    done < <(grep '^BENCH_' "$out" || true)
    [[ -n "${R[$name,$conns,REQUESTS]:-}" ]] || { cat "$out" >&2; die "no BENCH_ lines in $out"; }

    R[$name,$conns,CPU_S]="$(awk -v t=$((after - before)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')"
    R[$name,$conns,CPU_PER_100K]="$(awk -v t=$((after - before)) -v hz="$CLK_TCK" \
        -v n="${R[$name,$conns,REQUESTS]}" 'BEGIN { if (n > 0) printf "%.2f", t / hz / n * 100000; else print "n/a" }')"
    # shellcheck disable=SC2086
    R[$name,$conns,PEAK_RSS_MIB]="$(sum_status_kib VmHWM $pids | kib_to_mib)"

    log "$name c=$conns: ${R[$name,$conns,RPS]} req/s, p99 ${R[$name,$conns,P99_MS]} ms," \
        "errors ${R[$name,$conns,ERRORS]}, CPU ${R[$name,$conns,CPU_S]} s"
}

# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
# ratio_verdict A B OP LIMIT  ->  "met" / "not met" for A/B OP LIMIT, on the unrounded ratio.
ratio_verdict() {
    awk -v a="$1" -v b="$2" -v op="$3" -v l="$4" 'BEGIN {
        if (b <= 0) { print "n/a"; exit }
        r = a / b; ok = (op == ">=") ? (r >= l + 0) : (r <= l + 0)
        print (ok ? "met" : "not met") }'
}
# met_if VALUE OP LIMIT  ->  "met" / "not met"
met_if() {
    awk -v r="$1" -v op="$2" -v l="$3" 'BEGIN {
        if (r == "n/a" || r == "") { print "n/a"; exit }
        ok = (op == ">=") ? (r + 0 >= l + 0) : (r + 0 <= l + 0)
        print (ok ? "met" : "not met") }'
}

# How peak RSS was summed for a proxy (printed next to the table).
rss_note() {
    if [[ "${PROXY_KIND[$1]}" == nginx ]]; then
        echo "$1 peak RSS = sum of VmHWM over the nginx master + worker processes (pages shared after fork count once per process)"
    else
        echo "$1 peak RSS = VmHWM of the single $1 process"
    fi
}

print_table() {
    local name conns
    printf '\n%-8s %6s %11s %9s %9s %9s %8s %14s %13s\n' \
        proxy conns "req/s" "p50 ms" "p99 ms" "p99.9 ms" errors "CPU s/100k req" "peak RSS MiB"
    for conns in $CONNS_LIST; do
        for name in "${PROXIES[@]}"; do
            printf '%-8s %6s %11s %9s %9s %9s %8s %14s %13s\n' "$name" "$conns" \
                "${R[$name,$conns,RPS]}" "${R[$name,$conns,P50_MS]}" "${R[$name,$conns,P99_MS]}" \
                "${R[$name,$conns,P999_MS]}" "${R[$name,$conns,ERRORS]}" \
                "${R[$name,$conns,CPU_PER_100K]}" "${R[$name,$conns,PEAK_RSS_MIB]}"
        done
    done
    printf '\n%-6s %22s %8s %22s %8s\n' conns "req/s rampart/nginx" "(>=1.0)" "p99 rampart/nginx" "(<=1.0)"
    for conns in $CONNS_LIST; do
        local rr pr
        rr="$(ratio "${R[rampart,$conns,RPS]}" "${R[nginx,$conns,RPS]}")"
        pr="$(ratio "${R[rampart,$conns,P99_MS]}" "${R[nginx,$conns,P99_MS]}")"
        printf '%-6s %22s %8s %22s %8s\n' "$conns" \
            "$rr" "$(ratio_verdict "${R[rampart,$conns,RPS]}" "${R[nginx,$conns,RPS]}" '>=' 1.0)" \
            "$pr" "$(ratio_verdict "${R[rampart,$conns,P99_MS]}" "${R[nginx,$conns,P99_MS]}" '<=' 1.0)"
    done
    printf '\nrampart idle RSS: %s MiB (target <= 10 MiB: %s)\n' \
        "$RAMPART_IDLE_RSS_MIB" "$(met_if "$RAMPART_IDLE_RSS_MIB" '<=' 10)"
    printf 'Notes: %s;\n       %s.\n' "$(rss_note nginx)" "$(rss_note rampart)"
    printf '       Peak RSS is the high-water mark since process start, read after each run.\n'
    if [[ "$FAKE_RAMPART" == 1 ]]; then
        printf '       BENCH_FAKE_RAMPART=1: the "rampart" rows are a second nginx proxy (self-test).\n'
    fi
}

# The exact command, including any environment overrides that were in effect.
invocation() {
    local v cmd=""
    for v in BENCH_DURATION BENCH_WARMUP BENCH_CONNS BENCH_FAKE_RAMPART BENCH_DOC; do
        if [[ -n "${!v:-}" ]]; then cmd+="$v=$(printf '%q' "${!v}") "; fi
    done
    if [[ -n "$RAMPART_BIN_GIVEN" ]]; then cmd+="RAMPART_BIN=$(printf '%q' "$RAMPART_BIN_GIVEN") "; fi
    printf '%sbash bench/gateway.sh' "$cmd"
}

markdown_section() {
    local name conns rr pr mem_gib cpu_model rev
    mem_gib="$(awk '/^MemTotal:/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)"
    cpu_model="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    rev="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")"
    if ! git -C "$REPO_ROOT" diff --quiet HEAD 2>/dev/null; then rev+=" (work tree has changes)"; fi

    echo "<!-- gateway:begin -->"
    echo "## Gateway: Rampart vs nginx as a reverse proxy"
    echo
    if [[ "$FAKE_RAMPART" == 1 ]]; then
        echo "> **SELF-TEST RUN (BENCH_FAKE_RAMPART=1): the \"rampart\" rows are a second nginx proxy.**"
        echo
    fi
    echo "- Command: \`$(invocation)\`"
    echo "- Date: $(date -u)"
    echo "- Machine: $(nproc) CPUs ($cpu_model), ${mem_gib} GiB RAM, kernel $(uname -r);" \
         "CPU busy before the run: ${CPU_BUSY_START}%"
    echo "- Tools: $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -n1 | sed 's/ *Copyright.*//' || true)"
    echo "- Rampart: ${RAMPART_VERSION:-version unknown}, repo revision $rev"
    echo "- Setup: wrk \`-t2 -c<conns> -d${DURATION}s --latency -s bench/latency.lua\` after a ${WARMUP} s warm-up;" \
         "one shared upstream (nginx, 1 worker, fixed ${BODY_BYTES}-byte body, keep-alive);" \
         "nginx proxy: 2 workers, upstream \`keepalive 256\`, HTTP/1.1 to the upstream;" \
         "rampart: \`workers: 2\`, access log off. Proxies, upstream and wrk all share this machine's $(nproc) CPUs."
    echo
    echo "| proxy | conns | req/s | p50 ms | p99 ms | p99.9 ms | errors | CPU s / 100k req | peak RSS MiB |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for conns in $CONNS_LIST; do
        for name in "${PROXIES[@]}"; do
            echo "| $name | $conns | ${R[$name,$conns,RPS]} | ${R[$name,$conns,P50_MS]} | ${R[$name,$conns,P99_MS]} | ${R[$name,$conns,P999_MS]} | ${R[$name,$conns,ERRORS]} | ${R[$name,$conns,CPU_PER_100K]} | ${R[$name,$conns,PEAK_RSS_MIB]} |"
        done
    done
    echo
    echo "| conns | req/s rampart/nginx | target ≥ 1.0 | p99 rampart/nginx | target ≤ 1.0 |"
    echo "|---:|---:|---|---:|---|"
    for conns in $CONNS_LIST; do
        rr="$(ratio "${R[rampart,$conns,RPS]}" "${R[nginx,$conns,RPS]}")"
        pr="$(ratio "${R[rampart,$conns,P99_MS]}" "${R[nginx,$conns,P99_MS]}")"
        echo "| $conns | $rr | $(ratio_verdict "${R[rampart,$conns,RPS]}" "${R[nginx,$conns,RPS]}" '>=' 1.0) |" \
             "$pr | $(ratio_verdict "${R[rampart,$conns,P99_MS]}" "${R[nginx,$conns,P99_MS]}" '<=' 1.0) |"
    done
    echo
    echo "Rampart idle RSS (VmRSS after ready, before load): **$RAMPART_IDLE_RSS_MIB MiB** (target ≤ 10 MiB: $(met_if "$RAMPART_IDLE_RSS_MIB" '<=' 10))."
    echo
    echo "Errors are wrk's connect + read + write + timeout + non-2xx/3xx counts." \
         "CPU is utime+stime from /proc (nginx: master + workers) during the measured run only." \
         "Peak RSS is the VmHWM high-water mark since process start, read after each run;" \
         "$(rss_note nginx); $(rss_note rampart)."
    echo "<!-- gateway:end -->"
}

# Replaces the gateway section of $DOC, or appends it; creates the file if needed.
write_doc() {
    local section tmp
    section="$(markdown_section)"
    mkdir -p "$(dirname "$DOC")"
    [[ -f "$DOC" ]] || printf '# Benchmarks\n' >"$DOC"
    tmp="$(mktemp "$DOC.XXXXXX")"
    if grep -q '^<!-- gateway:begin -->' "$DOC"; then
        grep -q '^<!-- gateway:end -->' "$DOC" || die "$DOC has gateway:begin but no gateway:end marker"
        SECTION="$section" awk '
            /^<!-- gateway:begin -->/ { print ENVIRON["SECTION"]; skip = 1; next }
            /^<!-- gateway:end -->/   { skip = 0; next }
            !skip { print }' "$DOC" >"$tmp"
    else
        { cat "$DOC"; printf '\n%s\n' "$section"; } >"$tmp"
    fi
    chmod 644 "$tmp"
    mv "$tmp" "$DOC"
    log "results written to $DOC"
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
main() {
    mkdir -p "$OUT_DIR"
    ensure_tools
    raise_nofile
    for p in "$UPSTREAM_PORT" "$NGINX_PORT" "$RAMPART_PORT" "$ADMIN_PORT"; do check_port_free "$p"; done
    [[ "$FAKE_RAMPART" == 1 ]] || build_rampart
    check_idle                             # after the build, which itself loads the machine

    start_upstream
    start_nginx_proxy nginx "$NGINX_PORT"
    start_rampart

    local conns name
    for conns in $CONNS_LIST; do           # interleave proxies so drift affects both alike
        for name in "${PROXIES[@]}"; do
            measure "$name" "$conns"
        done
    done

    print_table
    write_doc
}

main "$@"
