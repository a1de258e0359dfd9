#!/usr/bin/env bash
# Rampart vs nginx as an HTTP/1.1 reverse proxy, on this machine, in one run.
#
#   wrk ──► nginx proxy   127.0.0.1:18082 ─┐
#   wrk ──► rampart       127.0.0.1:18083 ─┴─► nginx upstream 127.0.0.1:18081 (fixed 1024-byte body)
#
# For each concurrency (64, 1000), BENCH_ROUNDS rounds (3) of both proxies, alternating which
# goes first (round 1: nginx then rampart, round 2: rampart then nginx, ...); each run is a 2 s
# warm-up, then a measured `wrk -t2 -c<C> -d<D>s --latency -s bench/latency.lua`. Around the
# measured run the proxy's CPU time is read from /proc, and its peak RSS (VmHWM) afterwards.
# Every reported figure is the median over the rounds (the per-round values are in the log).
# Prints a table and the rampart/nginx ratios, and writes the same into docs/BENCHMARKS.md
# between the `<!-- gateway:begin -->` / `<!-- gateway:end -->` markers.
#
# Like for like: nginx listens with `reuseport` (one socket per worker, as rampart binds one
# SO_REUSEPORT socket per worker; without it nginx's workers share one accept queue and get
# unevenly loaded at 1000 connections), and both keep the same number of idle upstream
# connections per worker (UPSTREAM_KEEPALIVE: nginx `keepalive`, rampart `max_idle_per_endpoint`).
#
# Usage:  bash bench/gateway.sh
# Environment:
#   BENCH_DURATION=10        seconds per measured wrk run
#   BENCH_WARMUP=2           seconds of warm-up before each measured run
#   BENCH_CONNS="64 1000"    concurrencies to test
#   BENCH_ROUNDS=3           rounds per concurrency, proxies alternating; figures are medians
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
ROUNDS="${BENCH_ROUNDS:-3}"
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
PROXIES=(nginx rampart)      # the peer first: round 1 runs it first, round 2 last, ...
# Idle keep-alive connections to the upstream each proxy keeps per worker, the same for both:
# nginx `keepalive` (per worker process) and rampart's cluster `max_idle_per_endpoint` (per
# worker; one endpoint here). Rampart's default would be 1024, nginx's config said 256: unequal.
UPSTREAM_KEEPALIVE=256

BENCH_TAG=gateway-bench
# shellcheck source=bench/lib.sh
source "$REPO_ROOT/bench/lib.sh"     # log/die, cleanup trap, nginx, /proc and wrk helpers, doc writer
bench_install_traps
check_rounds

# Filled in as we go (lib.sh also defines STARTED_PIDS, WRK_PID, NOFILE, R[proxy,conns,field], ...).
declare -A PROXY_PID     # proxy name -> pid of its main process
declare -A PROXY_KIND    # proxy name -> "nginx" (master + workers) or "single" (one process)
RAMPART_IDLE_RSS_MIB=""

# ---------------------------------------------------------------------------------------------
# nginx instances (run in the foreground with `daemon off;`, so $! is the master pid)
# ---------------------------------------------------------------------------------------------

start_upstream() { start_static_nginx nginx-upstream "$UPSTREAM_PORT"; }

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
        keepalive $UPSTREAM_KEEPALIVE;       # = rampart's max_idle_per_endpoint
        keepalive_requests 1000000;
    }
    server {
        # reuseport: a listening socket per worker, like rampart's SO_REUSEPORT per worker.
        listen 127.0.0.1:$port reuseport backlog=4096;
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
    {
        echo "# Written by bench/gateway.sh; overwritten on every run."
        gateway_bench_config "$RAMPART_PORT" "$ADMIN_PORT" "$UPSTREAM_PORT" "$UPSTREAM_KEEPALIVE"
    } >"$OUT_DIR/rampart-bench.yaml"
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

# ---------------------------------------------------------------------------------------------
# Load runs
# ---------------------------------------------------------------------------------------------
proxy_port() { case "$1" in nginx) echo "$NGINX_PORT" ;; rampart) echo "$RAMPART_PORT" ;; esac; }

# measure NAME CONNS ROUND: one warm-up + measured run; results in R[NAME,CONNS,r<ROUND>,*].
measure() {
    local name="$1" conns="$2" round="$3" port url out before after pids k
    port="$(proxy_port "$name")"
    url="http://127.0.0.1:$port/"
    out="$OUT_DIR/wrk-$name-c$conns-r$round.txt"
    k="$name,$conns,r$round"

    log "$name c=$conns round $round/$ROUNDS: warm-up ${WARMUP}s"
    run_wrk "$conns" "$WARMUP" "$url" "$OUT_DIR/wrk-$name-c$conns-r$round-warmup.txt"

    log "$name c=$conns round $round/$ROUNDS: measuring ${DURATION}s"
    pids="$(proxy_pids "$name")"
    # shellcheck disable=SC2086  # pids is a whitespace-separated list
    before="$(cpu_ticks $pids)"
    run_wrk "$conns" "$DURATION" "$url" "$out"
    # shellcheck disable=SC2086
    after="$(cpu_ticks $pids)"
    kill -0 "${PROXY_PID[$name]}" 2>/dev/null || die "$name died during the run"

    read_wrk_results "$k" "$out"

    R[$k,CPU_S]="$(awk -v t=$((after - before)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')"
    R[$k,CPU_PER_100K]="$(ticks_per_100k $((after - before)) "${R[$k,REQUESTS]}")"
    # shellcheck disable=SC2086
    R[$k,PEAK_RSS_MIB]="$(sum_status_kib VmHWM $pids | kib_to_mib)"

    log "$name c=$conns round $round/$ROUNDS: ${R[$k,RPS]} req/s, p99 ${R[$k,P99_MS]} ms," \
        "errors ${R[$k,ERRORS]}, CPU ${R[$k,CPU_S]} s"
}

# The figures reported for each proxy and concurrency: medians over the rounds.
MEDIAN_FIELDS=(RPS P50_MS P99_MS P999_MS ERRORS CPU_S CPU_PER_100K PEAK_RSS_MIB)

# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------
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
    printf '\nMedians of %s rounds per proxy and concurrency (per-round values in the log above).\n' "$ROUNDS"
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
    for v in BENCH_DURATION BENCH_WARMUP BENCH_CONNS BENCH_ROUNDS BENCH_FAKE_RAMPART BENCH_DOC; do
        if [[ -n "${!v:-}" ]]; then cmd+="$v=$(printf '%q' "${!v}") "; fi
    done
    if [[ -n "$RAMPART_BIN_GIVEN" ]]; then cmd+="RAMPART_BIN=$(printf '%q' "$RAMPART_BIN_GIVEN") "; fi
    printf '%sbash bench/gateway.sh' "$cmd"
}

markdown_section() {
    local name conns rr pr

    echo "<!-- gateway:begin -->"
    echo "## Gateway: Rampart vs nginx as a reverse proxy"
    echo
    if [[ "$FAKE_RAMPART" == 1 ]]; then
        echo "> **SELF-TEST RUN (BENCH_FAKE_RAMPART=1): the \"rampart\" rows are a second nginx proxy.**"
        echo
    fi
    echo "- Command: \`$(invocation)\`"
    echo "- Date: $(date -u)"
    echo "- Machine: $(machine_line); CPU busy before the run: ${CPU_BUSY_START}%"
    echo "- Tools: $(nginx_version), $(wrk_version)"
    echo "- Rampart: ${RAMPART_VERSION:-version unknown}, repo revision $(repo_revision)"
    echo "- Setup: wrk \`-t2 -c<conns> -d${DURATION}s --latency -s bench/latency.lua\` after a ${WARMUP} s warm-up;" \
         "every figure is the **median of $ROUNDS rounds**, the proxies alternating within each concurrency" \
         "(round 1 nginx then rampart, round 2 rampart then nginx, ...); ratios are of the medians." \
         "One shared upstream (nginx, 1 worker, fixed ${BODY_BYTES}-byte body, keep-alive);" \
         "nginx proxy: 2 workers, \`listen ... reuseport\` (a listening socket per worker, as rampart has), upstream \`keepalive $UPSTREAM_KEEPALIVE\`, HTTP/1.1 to the upstream;" \
         "rampart: \`workers: 2\` (an SO_REUSEPORT socket per worker), cluster \`max_idle_per_endpoint: $UPSTREAM_KEEPALIVE\`, access log off;" \
         "so both keep at most $UPSTREAM_KEEPALIVE idle upstream connections per worker. Proxies, upstream and wrk all share this machine's $(nproc) CPUs."
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
         "Peak RSS is the VmHWM high-water mark since process start, read after each run (so at a concurrency it includes the earlier rounds);" \
         "$(rss_note nginx); $(rss_note rampart)."
    echo "<!-- gateway:end -->"
}

# Replaces the gateway section of $DOC, or appends it; creates the file if needed.
write_doc() { write_doc_section gateway "$(markdown_section)"; }

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
main() {
    mkdir -p "$OUT_DIR"
    ensure_tools nginx:nginx wrk:wrk curl:curl pgrep:procps
    raise_nofile
    for p in "$UPSTREAM_PORT" "$NGINX_PORT" "$RAMPART_PORT" "$ADMIN_PORT"; do check_port_free "$p"; done
    [[ "$FAKE_RAMPART" == 1 ]] || build_rampart
    check_idle                             # after the build, which itself loads the machine

    start_upstream
    start_nginx_proxy nginx "$NGINX_PORT"
    start_rampart

    local conns name round
    # Concurrencies in turn (so that the VmHWM read at 64 connections is not 1000's), and for
    # each, ROUNDS rounds with the proxies' order alternating, so that drift and going first
    # or second affect both alike.
    for conns in $CONNS_LIST; do
        for ((round = 1; round <= ROUNDS; round++)); do
            for name in $(round_order "$round" "${PROXIES[@]}"); do
                measure "$name" "$conns" "$round"
            done
        done
        for name in "${PROXIES[@]}"; do
            rounds_median "$name,$conns" "${MEDIAN_FIELDS[@]}"
        done
    done

    print_table
    write_doc
}

main "$@"
