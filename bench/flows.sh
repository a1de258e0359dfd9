#!/usr/bin/env bash
# eBPF flow tracing overhead and loss, on loopback, in one run (root).
#
#   wrk ──► nginx :18101 (static 1 KiB)        without tracing, then with `rampart flows serve`
#
# 1. Keep-alive throughput: wrk -t2 -c64, with and without tracing (bytes are counted on every
#    read/write, so this is the per-byte cost).
# 2. New connections: wrk with `Connection: close` (one TCP connection per request), with and
#    without tracing: the per-flow cost. During the traced run the tracer's lost-event gauge
#    must stay 0 and its opened-flow counter for port 18101 must cover every request wrk made.
# 3. CPU per event: the BPF programs' run time from the kernel's BPF statistics
#    (kernel.bpf_stats_enabled=1) divided by their run count, plus the tracer process's own
#    CPU per event.
# 4. Memory per tracked flow: the flow table's memlock bytes / max entries (bpftool).
# Results go between `<!-- flows:begin -->` / `<!-- flows:end -->` in docs/BENCHMARKS.md.
#
# Usage:  bash bench/flows.sh          (as root)
# Environment: BENCH_DURATION=10  BENCH_WARMUP=2  BENCH_CONNS=64  RAMPART_BIN=path (built with
#              --features flows)  BENCH_DOC=docs/BENCHMARKS.md
set -euo pipefail
umask 022

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
OUT_DIR="$REPO_ROOT/bench/out/flows"
BENCH_TAG="flows-bench"
LUA_SCRIPT="bench/latency.lua"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
CONNS="${BENCH_CONNS:-64}"
READY_TIMEOUT=30
BODY_BYTES=1024
DOC="${BENCH_DOC:-docs/BENCHMARKS.md}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"
UPSTREAM_PORT=18101
METRICS_PORT=19435
declare -A R

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_install_traps

[[ $EUID -eq 0 ]] || die "run as root: loading BPF programs needs CAP_BPF and CAP_PERFMON"
ensure_tools nginx:nginx wrk:wrk curl:curl bpftool:bpftool
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
raise_nofile
if [[ -z "${RAMPART_BIN:-}" ]]; then
    log "cargo build --release -p rampart --features flows"
    cargo build --release -p rampart --features flows
    RAMPART_BIN="$CARGO_TARGET_DIR/release/rampart"
fi
check_idle
rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR"
check_port_free "$UPSTREAM_PORT"
check_port_free "$METRICS_PORT"

start_static_nginx nginx-upstream "$UPSTREAM_PORT"
URL="http://127.0.0.1:$UPSTREAM_PORT/"
CLOSE_LUA="$OUT_DIR/close.lua"
printf 'wrk.headers["Connection"] = "close"\ndofile("bench/latency.lua")\n' >"$CLOSE_LUA"

run() { # run NAME SCRIPT
    local name="$1" script="$2" out="$OUT_DIR/wrk-$1.txt"
    run_wrk "$CONNS" "$WARMUP" "$URL" "$OUT_DIR/wrk-$name-warmup.txt" "$script"
    run_wrk "$CONNS" "$DURATION" "$URL" "$out" "$script"
    read_wrk_results "$name" "$out"
    log "$name: ${R[$name,RPS]} req/s, p99 ${R[$name,P99_MS]} ms, errors ${R[$name,ERRORS]}"
}

metric() { # metric SERIES-PREFIX: sum of the values of lines starting with it
    curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk -v p="$1" 'index($0, p) == 1 { s += $NF } END { printf "%d", s }'
}

run plain-keepalive "$LUA_SCRIPT"
run plain-newconn "$CLOSE_LUA"

sysctl -qw kernel.bpf_stats_enabled=1
"$RAMPART_BIN" flows serve --listen "127.0.0.1:$METRICS_PORT" >"$OUT_DIR/flows.log" 2>&1 &
TRACER_PID=$!
STARTED_PIDS+=("$TRACER_PID")
wait_ready "rampart flows" "$TRACER_PID" "http://127.0.0.1:$METRICS_PORT/metrics" "$OUT_DIR/flows.log"

run traced-keepalive "$LUA_SCRIPT"
opened_before="$(metric "rampart_flows_opened_total{local_port=\"$UPSTREAM_PORT\"}")"
cpu_before="$(cpu_ticks "$TRACER_PID")"
run traced-newconn "$CLOSE_LUA"
cpu_after="$(cpu_ticks "$TRACER_PID")"
sleep 1
opened_after="$(metric "rampart_flows_opened_total{local_port=\"$UPSTREAM_PORT\"}")"
lost="$(metric "rampart_flows_events_lost")"
newconn_requests=$(( R[traced-newconn,REQUESTS] ))
newconn_flows=$(( opened_after - opened_before ))
newconn_rate="$(awk -v n="$newconn_flows" -v d="${R[traced-newconn,DURATION_S]}" 'BEGIN { printf "%.0f", n / d }')"

# BPF program cost: run_time_ns / run_cnt over our rf_ programs.
bpf_ns_per_run="$(bpftool prog show -j | python3 -c '
import json, sys
progs = [p for p in json.load(sys.stdin) if p.get("name", "").startswith("rf_")]
t = sum(p.get("run_time_ns", 0) for p in progs); c = sum(p.get("run_cnt", 0) for p in progs)
print(f"{t / c:.0f}" if c else "n/a")')"
bpf_runs="$(bpftool prog show -j | python3 -c '
import json, sys
print(sum(p.get("run_cnt", 0) for p in json.load(sys.stdin) if p.get("name", "").startswith("rf_")))')"
map_bytes_per_flow="$(bpftool map show -j | python3 -c '
import json, sys
m = [m for m in json.load(sys.stdin) if m.get("name", "") == "rf_flows"]
if m:
    m = m[0]
    print("%.0f (%s entries, %.1f MiB)" % (m["bytes_memlock"] / m["max_entries"], m["max_entries"], m["bytes_memlock"] / 1048576))
else:
    print("n/a")')"
# Events of the new-connection run: per connection, 2 sockets × (open, established, close).
events=$(( newconn_flows * 3 ))
user_us_per_event="$(awk -v t=$((cpu_after - cpu_before)) -v hz="$(getconf CLK_TCK)" -v e="$events" 'BEGIN { if (e > 0) printf "%.2f", t / hz * 1e6 / e; else print "n/a" }')"
stop_pid "$TRACER_PID"
sysctl -qw kernel.bpf_stats_enabled=0
leftover="$(bpftool prog show | grep -c ' name rf_' || true)"

ka_ratio="$(ratio "${R[traced-keepalive,RPS]}" "${R[plain-keepalive,RPS]}")"
nc_ratio="$(ratio "${R[traced-newconn,RPS]}" "${R[plain-newconn,RPS]}")"
ka_verdict="$(ratio_verdict "${R[traced-keepalive,RPS]}" "${R[plain-keepalive,RPS]}" ">=" 0.97)"
nc_verdict="$(ratio_verdict "${R[traced-newconn,RPS]}" "${R[plain-newconn,RPS]}" ">=" 0.97)"
loss_verdict="$(awk -v l="$lost" -v r="$newconn_rate" 'BEGIN { print (l == 0 && r >= 10000) ? "met" : (l == 0 ? "zero loss, but the rate reached here is below 10,000/s" : "not met") }')"

TABLE="| run | req/s | p50 ms | p99 ms | errors |
|---|---|---|---|---|
| keep-alive, no tracing | ${R[plain-keepalive,RPS]} | ${R[plain-keepalive,P50_MS]} | ${R[plain-keepalive,P99_MS]} | ${R[plain-keepalive,ERRORS]} |
| keep-alive, tracing | ${R[traced-keepalive,RPS]} | ${R[traced-keepalive,P50_MS]} | ${R[traced-keepalive,P99_MS]} | ${R[traced-keepalive,ERRORS]} |
| new connection per request, no tracing | ${R[plain-newconn,RPS]} | ${R[plain-newconn,P50_MS]} | ${R[plain-newconn,P99_MS]} | ${R[plain-newconn,ERRORS]} |
| new connection per request, tracing | ${R[traced-newconn,RPS]} | ${R[traced-newconn,P50_MS]} | ${R[traced-newconn,P99_MS]} | ${R[traced-newconn,ERRORS]} |"

SUMMARY="- throughput with tracing / without: keep-alive **$ka_ratio**, new connections **$nc_ratio** (target ≥ 0.97, i.e. ≤ 3 % overhead: keep-alive $ka_verdict, new connections $nc_verdict)
- traced new-connection run: $newconn_requests requests, $newconn_flows flows opened on port $UPSTREAM_PORT ($newconn_rate new connections/s), **$lost events lost** (target: zero at 10,000/s: $loss_verdict)
- BPF programs: $bpf_runs runs, **$bpf_ns_per_run ns per run** on average (kernel.bpf_stats_enabled); tracer process: $user_us_per_event µs of CPU per event in user space
- flow table memory: **$map_bytes_per_flow** bytes per tracked flow
- after SIGTERM: $leftover rf_ programs left loaded"

printf '\n%s\n\n%s\n' "$TABLE" "$SUMMARY"
write_doc_section flows "<!-- flows:begin -->
## eBPF flow tracing: overhead and loss

\`bash bench/flows.sh\` ($(date -u +%Y-%m-%d), $(machine_line); rampart $(repo_revision); wrk -t2 -c$CONNS -d${DURATION}s against nginx serving 1 KiB on loopback; tracing = \`rampart flows serve\` running, all tracepoints attached):

$TABLE

$SUMMARY
<!-- flows:end -->"
log "results written to $DOC"
