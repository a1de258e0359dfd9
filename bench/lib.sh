# shellcheck shell=bash disable=SC2034  # globals here are used by the scripts that source this file
# Shared helpers for the benchmark scripts in bench/ (gateway.sh, sidecar.sh, kv.sh, flows.sh, ...).
# Source it; don't run it.
#
# The sourcing script sets, before sourcing:
#   BENCH_TAG       short name used in log lines, e.g. "gateway-bench"
#   REPO_ROOT       the repository root (the script has already cd'ed there)
#   OUT_DIR         scratch directory (bench/out)
#   READY_TIMEOUT   seconds to wait for a server to become ready
#   BODY_BYTES      size of the body the static nginx app serves
#   ROUNDS          (scripts that compare in rounds) BENCH_ROUNDS, see check_rounds
# and calls `bench_install_traps` once.
#
# This file defines these globals, which the helpers fill in:
#   STARTED_PIDS     long-running processes we started (nginx masters, haproxy, rampart)
#   BG_PIDS          background helpers (RSS samplers); stopped first on exit
#   WRK_PID          the wrk run in progress, if any
#   NGINX_LAST_PID   master pid of the nginx started last
#   NOFILE           the open-files limit after raise_nofile
#   CPU_BUSY_START   CPU busy % sampled by check_idle
#   RAMPART_VERSION  `rampart --version` after build_rampart
#   EXIT_HOOKS       functions bench_cleanup calls after stopping the processes (e.g. restoring
#                    a sysctl the script changed); a script appends to it
#   R                results: R[key,FIELD] as read from bench/latency.lua output
#
# Everything here talks to 127.0.0.1 only.

STARTED_PIDS=()
BG_PIDS=()
WRK_PID=""
NGINX_LAST_PID=""
NOFILE=""
CPU_BUSY_START=""
RAMPART_VERSION=""
EXIT_HOOKS=()
CLK_TCK="$(getconf CLK_TCK)"
declare -gA R

log() { printf '[%s] %s\n' "$BENCH_TAG" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Cleanup: stop everything we started, even on failure or Ctrl-C.
# ---------------------------------------------------------------------------------------------
child_pids() { pgrep -P "$1" 2>/dev/null || true; }

stop_pid() {
    local pid="$1" kids i k
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

bench_cleanup() {
    local rc=$? pid hook
    trap - EXIT INT TERM
    set +e
    for pid in "${BG_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    if [[ -n "$WRK_PID" ]]; then kill -TERM "$WRK_PID" 2>/dev/null; wait "$WRK_PID" 2>/dev/null; fi
    for pid in "${STARTED_PIDS[@]}"; do stop_pid "$pid"; done
    if [[ ${#STARTED_PIDS[@]} -gt 0 ]]; then log "stopped ${#STARTED_PIDS[@]} server process(es)"; fi
    # Here, not in a trap of the script's own: a second EXIT trap that runs a failing command
    # under `set -e` would end the shell before the processes above are stopped.
    for hook in "${EXIT_HOOKS[@]}"; do "$hook"; done
    exit "$rc"
}

bench_install_traps() {
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# ---------------------------------------------------------------------------------------------
# Setup helpers
# ---------------------------------------------------------------------------------------------

# ensure_tools CMD:PACKAGE...  installs (apt-get) the packages whose command is missing.
ensure_tools() {
    local missing=() pair cmd pkg
    export PATH="$PATH:/usr/sbin:/sbin"
    for pair in "$@"; do
        cmd="${pair%%:*}" pkg="${pair#*:}"
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "installing: ${missing[*]}"
        [[ $EUID -eq 0 ]] || die "need root to apt-get install ${missing[*]}"
        # apt's chatter goes to stderr so that stdout carries only the results.
        apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2
    fi
    for pair in "$@"; do
        cmd="${pair%%:*}"
        command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after install"
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

# Sets RAMPART_BIN (building it unless the caller set it) and RAMPART_VERSION.
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
    RAMPART_VERSION="$(timeout 5 "$RAMPART_BIN" --version 2>/dev/null | sed -n 1p || true)"
}

# wait_ready NAME PID URL LOGFILE [CURL_ARGS...]
# Polls URL until it answers 200, the process dies, or the deadline passes.
wait_ready() {
    local name="$1" pid="$2" url="$3" logfile="$4"
    shift 4
    local deadline=$(( $(date +%s) + READY_TIMEOUT )) code
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during startup; last lines of $logfile:"
            tail -n 20 "$logfile" >&2 || true
            die "$name failed to start"
        fi
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" || true)"
        [[ "$code" == 200 ]] && return 0
        if (( $(date +%s) >= deadline )); then
            tail -n 20 "$logfile" >&2 || true
            die "$name not ready at $url after ${READY_TIMEOUT}s (last status: ${code:-none})"
        fi
        sleep 0.1
    done
}

# check_body NAME URL [CURL_ARGS...]: one GET must return 200 with exactly BODY_BYTES bytes.
check_body() {
    local name="$1" url="$2" got
    shift 2
    got="$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 5 "$@" "$url" || true)"
    [[ "$got" == "200 $BODY_BYTES" ]] || die "$name at $url answered '$got', expected '200 $BODY_BYTES'"
}

check_proxy_response() { check_body "$1" "http://127.0.0.1:$2/"; }

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

# new_prefix NAME: a fresh nginx prefix directory under OUT_DIR; prints its path.
new_prefix() {
    local prefix="$OUT_DIR/$1"
    rm -rf "$prefix"
    mkdir -p "$prefix"/{conf,logs,tmp,html}
    printf '%s' "$prefix"
}

# start_static_nginx NAME PORT: nginx with 1 worker answering every GET with the same
# BODY_BYTES-byte file, keep-alive on. Waits until it serves; pid in NGINX_LAST_PID.
start_static_nginx() {
    local name="$1" port="$2" prefix conf
    prefix="$(new_prefix "$name")"
    conf="$prefix/conf/nginx.conf"
    head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x' >"$prefix/html/body.bin"
    {
        nginx_conf_head "$prefix" 1
        echo "http {"
        nginx_http_common "$prefix"
        cat <<EOF
    sendfile on;
    server {
        listen 127.0.0.1:$port backlog=4096;
        root $prefix/html;
        etag off;
        # Every GET, whatever the path, gets the same $BODY_BYTES-byte file.
        location / { try_files /body.bin =500; }
    }
}
EOF
    } >"$conf"
    start_nginx "$prefix" "$conf"
    wait_ready "$name" "$NGINX_LAST_PID" "http://127.0.0.1:$port/" "$prefix/logs/error.log"
    check_proxy_response "$name" "$port"
    log "$name ready on :$port (pid $NGINX_LAST_PID)"
}

# ---------------------------------------------------------------------------------------------
# /proc measurements
# ---------------------------------------------------------------------------------------------

# utime+stime in clock ticks, summed over the given pids (each pid's stat covers all its threads).
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

# ticks_per_100k TICKS REQUESTS -> CPU seconds per 100k requests
ticks_per_100k() {
    awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" \
        'BEGIN { if (n > 0) printf "%.2f", t / hz / n * 100000; else print "n/a" }'
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

# start_rss_sampler FILE PIDS...: every 0.5 s, appends the VmRSS sum (kB) over PIDS to FILE,
# in the background, until stop_rss_sampler. The sampler's pid is in BG_PIDS (and RSS_SAMPLER_PID).
start_rss_sampler() {
    local file="$1" pid files=()
    shift
    for pid in "$@"; do files+=("/proc/$pid/status"); done
    : >"$file"
    (
        set +e
        trap 'exit 0' TERM
        while :; do
            awk '$1 == "VmRSS:" { s += $2 } END { print s + 0 }' "${files[@]}" 2>/dev/null >>"$file"
            sleep 0.5
        done
    ) &
    RSS_SAMPLER_PID=$!
    BG_PIDS+=("$RSS_SAMPLER_PID")
}

# stop_rss_sampler FILE: stops the sampler; prints the max sample in MiB and the sample count.
stop_rss_sampler() {
    local file="$1" pid keep=()
    kill -TERM "$RSS_SAMPLER_PID" 2>/dev/null || true
    wait "$RSS_SAMPLER_PID" 2>/dev/null || true
    for pid in "${BG_PIDS[@]}"; do [[ "$pid" == "$RSS_SAMPLER_PID" ]] || keep+=("$pid"); done
    BG_PIDS=("${keep[@]}")
    awk '$1 > m { m = $1 } END { printf "%.1f %d\n", m / 1024, NR }' "$file"
}

# ---------------------------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------------------------

# run_wrk CONNS SECS URL OUTFILE [LUA_SCRIPT]: wrk -t2 with --latency, in the background
# (so Ctrl-C / SIGTERM reach the trap promptly); waits for it and dies if it fails.
run_wrk() {
    local conns="$1" secs="$2" url="$3" out="$4" script="${5:-$LUA_SCRIPT}"
    wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$script" "$url" >"$out" 2>&1 &
    WRK_PID=$!
    if ! wait "$WRK_PID"; then
        WRK_PID=""
        cat "$out" >&2
        die "wrk failed against $url"
    fi
    WRK_PID=""
}

# read_wrk_results KEY FILE: R[KEY,FIELD]=value for every BENCH_FIELD=value line of FILE.
read_wrk_results() {
    local rkey="$1" file="$2" key val
    while IFS='=' read -r key val; do
        case "$key" in
            BENCH_*) R[$rkey,${key#BENCH_}]="$val" ;;
        esac
    done < <(grep '^BENCH_' "$file" || true)
    [[ -n "${R[$rkey,REQUESTS]:-}" ]] || { cat "$file" >&2; die "no BENCH_ lines in $file"; }
}

# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && a != "n/a" && b > 0) printf "%.3f", a / b; else print "n/a" }'; }
# ratio_verdict A B OP LIMIT  ->  "met" / "not met" for A/B OP LIMIT, on the unrounded ratio.
ratio_verdict() {
    awk -v a="$1" -v b="$2" -v op="$3" -v l="$4" 'BEGIN {
        if (a == "" || a == "n/a" || b <= 0) { print "n/a"; exit }
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
# diff_ms A B -> A - B with 3 decimals
diff_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

# ---------------------------------------------------------------------------------------------
# Rounds: a comparison runs ROUNDS interleaved rounds, alternating which side goes first, and
# reports the median over the rounds. One run per side is at the mercy of drift (page cache,
# CPU frequency, other load) and of going first or second; a median of alternating rounds is not.
# ---------------------------------------------------------------------------------------------

# check_rounds: ROUNDS must be a positive integer; fewer than 3 is allowed (quick checks) but
# warned about, since a median of one or two runs evens nothing out.
check_rounds() {
    [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer, not '$ROUNDS'"
    if (( ROUNDS < 3 )); then
        log "WARNING: BENCH_ROUNDS=$ROUNDS; use at least 3 rounds for figures worth comparing"
    fi
}

# round_order ROUND NAME...: the NAMEs, one per line, as given on odd rounds and reversed on
# even rounds, so that no side always runs first (or last). Callers list the peer before
# rampart: round 1 is peer then rampart, round 2 rampart then peer, and so on.
round_order() {
    local round="$1" i
    shift
    local -a names=("$@")
    if (( round % 2 )); then
        printf '%s\n' "${names[@]}"
    else
        for ((i = ${#names[@]} - 1; i >= 0; i--)); do printf '%s\n' "${names[i]}"; done
    fi
}

# median V...: the median of the numeric Vs (the mean of the middle two for an even count);
# non-numeric ones ("n/a", empty) are skipped, and "n/a" is printed if none is left. An odd
# count prints the middle value as it was written. mawk has no sort: the few values are
# insertion-sorted. The one median helper of every script that reports "median of N rounds".
median() {
    printf '%s\n' "$@" | awk '
        $1 ~ /^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$/ {
            x = $1 + 0
            for (i = n; i > 0 && v[i] > x; i--) { v[i + 1] = v[i]; s[i + 1] = s[i] }
            v[i + 1] = x; s[i + 1] = $1; n++
        }
        END {
            if (n == 0) print "n/a"
            else if (n % 2) print s[(n + 1) / 2]
            else printf "%.10g\n", (v[n / 2] + v[n / 2 + 1]) / 2
        }'
}

# rounds_median KEY FIELD...: for each FIELD, R[KEY,FIELD] = median of R[KEY,r1,FIELD] ..
# R[KEY,r<ROUNDS>,FIELD], and a log line with the per-round values behind that median.
rounds_median() {
    local key="$1" field r joined
    local -a vals
    shift
    for field in "$@"; do
        vals=()
        for ((r = 1; r <= ROUNDS; r++)); do vals+=("${R[$key,r$r,$field]:-n/a}"); done
        R[$key,$field]="$(median "${vals[@]}")"
        joined="$(printf ' / %s' "${vals[@]}")"
        log "$key $field per round: ${joined:3} -> median ${R[$key,$field]}"
    done
}

# One-line descriptions for the doc.
machine_line() {
    local mem_gib cpu_model
    mem_gib="$(awk '/^MemTotal:/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)"
    cpu_model="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    printf '%s CPUs (%s), %s GiB RAM, kernel %s' "$(nproc)" "$cpu_model" "$mem_gib" "$(uname -r)"
}
repo_revision() {
    local rev
    rev="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")"
    if ! git -C "$REPO_ROOT" diff --quiet HEAD 2>/dev/null; then rev+=" (work tree has changes)"; fi
    printf '%s' "$rev"
}
nginx_version() { nginx -v 2>&1 | sed 's/^nginx version: //'; }
wrk_version() { wrk -v 2>&1 | sed -n '1{s/ *Copyright.*//;p;}' || true; }

# write_doc_section MARKER SECTION: replaces the lines from `<!-- MARKER:begin -->` to
# `<!-- MARKER:end -->` in DOC with SECTION (which includes both markers), or appends SECTION.
# Creates DOC if needed. Nothing outside the markers changes.
write_doc_section() {
    local marker="$1" section="$2" tmp
    mkdir -p "$(dirname "$DOC")"
    [[ -f "$DOC" ]] || printf '# Benchmarks\n' >"$DOC"
    tmp="$(mktemp "$DOC.XXXXXX")"
    if grep -q "^<!-- $marker:begin -->" "$DOC"; then
        grep -q "^<!-- $marker:end -->" "$DOC" || { rm -f "$tmp"; die "$DOC has $marker:begin but no $marker:end marker"; }
        SECTION="$section" awk -v b="<!-- $marker:begin -->" -v e="<!-- $marker:end -->" '
            index($0, b) == 1 { print ENVIRON["SECTION"]; skip = 1; next }
            index($0, e) == 1 { skip = 0; next }
            !skip { print }' "$DOC" >"$tmp"
    else
        { cat "$DOC"; printf '\n%s\n' "$section"; } >"$tmp"
    fi
    chmod 644 "$tmp"
    mv "$tmp" "$DOC"
    log "results written to $DOC"
}

# gateway_bench_config LISTEN_PORT ADMIN_PORT UPSTREAM_PORT KEEPALIVE: the rampart config of
# the gateway benchmarks (bench/gateway.sh, bench/profile.sh): 2 workers, one catch-all
# route to the upstream, KEEPALIVE idle upstream connections per worker, no access log.
gateway_bench_config() {
    cat <<EOF
workers: 2
admin: { address: 127.0.0.1:$2 }
access_log: { format: "off" }
listeners:
  - name: bench
    address: 127.0.0.1:$1
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
    endpoints: ["127.0.0.1:$3"]
    # Idle upstream connections kept per worker (nginx's keepalive in bench/gateway.sh).
    max_idle_per_endpoint: $4
EOF
}
