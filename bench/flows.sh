#!/usr/bin/env bash
# eBPF flow tracing overhead and loss, on loopback, in one run (root).
#
#   wrk ──► nginx :18101 (static 1 KiB)        without tracing, and with `rampart flows serve`
#
# Two arms, "plain" (no tracing) and "traced" (`rampart flows serve` started for the arm and
# stopped after it), in BENCH_ROUNDS rounds (3) with their order alternating (round 1: plain
# then traced, round 2: traced then plain, ...). Both arms run with kernel.bpf_stats_enabled=0:
# the statistics add clock reads to every program run, a cost only the traced arm would pay.
# The original value is restored on exit. Each arm:
# 1. Keep-alive throughput: wrk -t2 -c64 (bytes are counted on every read/write, so this is
#    the per-byte cost).
# 2. New connections: wrk with `Connection: close` (one TCP connection per request): the
#    per-flow cost. In the traced arm the tracer's lost-event gauge must stay 0 and its
#    opened-flow counter for port 18101 must cover every request wrk made.
# Every run is a warm-up, a 1 s pause (the tracer drains the warm-up's events), then the
# measured run; the tracer's counters and CPU time are read around the measured run only, and
# rates divide by the measured run's duration (wrk's), never by warm-up or setup time.
# Figures are medians over the rounds (per-round values in the log); lost events are totals.
# 3. CPU per event: one more traced arm with kernel.bpf_stats_enabled=1 (not in the ratios): the
#    BPF programs' run time / run count over its measured runs; plus the tracer process's own
#    CPU per event in the rounds.
# 4. Memory per tracked flow: the flow table's memlock bytes / max entries (bpftool).
# Results go between `<!-- flows:begin -->` / `<!-- flows:end -->` in docs/BENCHMARKS.md.
#
# Usage:  bash bench/flows.sh          (as root)
# Environment: BENCH_DURATION=10  BENCH_WARMUP=2  BENCH_CONNS=64  BENCH_ROUNDS=3
#              RAMPART_BIN=path (the default build has flows)  BENCH_DOC=docs/BENCHMARKS.md
#              TRACE_EVENTS=all (the tracer's --events: e.g. close,retransmit,reset, a tracer
#              that emits closes only; flows are then counted from closes, and the results go
#              to their own section, `flows-events`)
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
ROUNDS="${BENCH_ROUNDS:-3}"
SETTLE_S=1          # pause after each warm-up and measured run: the tracer drains its events
READY_TIMEOUT=30
BODY_BYTES=1024
DOC="${BENCH_DOC:-docs/BENCHMARKS.md}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"
UPSTREAM_PORT=18101
METRICS_PORT=19435
TRACE_EVENTS="${TRACE_EVENTS:-all}"
declare -A R

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_install_traps
check_rounds

[[ $EUID -eq 0 ]] || die "run as root: loading BPF programs needs CAP_BPF and CAP_PERFMON"
# kernel.bpf_stats_enabled: 0 in both arms, 1 only in the statistics arm; on every exit
# (bench_cleanup, after the tracer is stopped) back to what it was.
BPF_STATS_ORIG="$(sysctl -n kernel.bpf_stats_enabled)"
restore_bpf_stats() { sysctl -qw kernel.bpf_stats_enabled="$BPF_STATS_ORIG" || true; }
EXIT_HOOKS+=(restore_bpf_stats)
ensure_tools nginx:nginx wrk:wrk curl:curl bpftool:bpftool python3:python3
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
raise_nofile
if [[ -z "${RAMPART_BIN:-}" ]]; then
    log "cargo build --release -p rampart"
    cargo build --release -p rampart
    RAMPART_BIN="$CARGO_TARGET_DIR/release/rampart"
fi
# Someone else's rf_ programs would be counted in the BPF statistics and load both arms.
if bpftool prog show | grep -q ' name rf_'; then
    die "rf_ programs are already loaded (another tracer running?); stop it first"
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

TRACER_PID=""
LEFTOVER=0          # most rf_ programs found loaded after stopping the tracer
# start_tracer TAG: `rampart flows serve`, ready when its metrics answer.
start_tracer() {
    local logf="$OUT_DIR/flows-$1.log"
    "$RAMPART_BIN" flows --events "$TRACE_EVENTS" serve --listen "127.0.0.1:$METRICS_PORT" >"$logf" 2>&1 &
    TRACER_PID=$!
    STARTED_PIDS+=("$TRACER_PID")
    wait_ready "rampart flows" "$TRACER_PID" "http://127.0.0.1:$METRICS_PORT/metrics" "$logf"
}
# stop_tracer: SIGTERM (no longer in STARTED_PIDS, so a reused pid is never signalled on
# exit), then counts the rf_ programs still loaded.
stop_tracer() {
    local pid n keep=()
    stop_pid "$TRACER_PID"
    for pid in "${STARTED_PIDS[@]}"; do [[ "$pid" == "$TRACER_PID" ]] || keep+=("$pid"); done
    STARTED_PIDS=("${keep[@]}")
    TRACER_PID=""
    sleep 1 # programs and maps are freed asynchronously
    n="$(bpftool prog show | grep -c ' name rf_' || true)"
    (( n <= LEFTOVER )) || LEFTOVER=$n
}

metric() { # metric SERIES-PREFIX: sum of the values of lines starting with it
    curl -s --max-time 5 "http://127.0.0.1:$METRICS_PORT/metrics" | awk -v p="$1" 'index($0, p) == 1 { s += $NF } END { printf "%d", s }'
}
OPENED="rampart_flows_opened_total{local_port=\"$UPSTREAM_PORT\"}"
# A tracer without open events counts the port's flows by their closes (each run's flows
# have closed by the end of the pause after it).
EVENTS_PER_FLOW=3   # open, established and close of the server socket
if [[ "$TRACE_EVENTS" != all && ",$TRACE_EVENTS," != *,open,* ]]; then
    OPENED="rampart_flows_closed_total{local_port=\"$UPSTREAM_PORT\"}"
    EVENTS_PER_FLOW=1
    [[ ",$TRACE_EVENTS," == *,established,* ]] && EVENTS_PER_FLOW=2
fi

# bpf_totals: "run_time_ns run_cnt" summed over the loaded rf_ programs.
bpf_totals() {
    bpftool prog show -j | python3 -c '
import json, sys
progs = [p for p in json.load(sys.stdin) if p.get("name", "").startswith("rf_")]
print(sum(p.get("run_time_ns", 0) for p in progs), sum(p.get("run_cnt", 0) for p in progs))'
}

# run KEY SCRIPT: warm-up, pause, measured run; wrk's results in R[KEY,*]. With the tracer
# running, also R[KEY,FLOWS] (opened flows on the port) and R[KEY,TRACER_TICKS] (its CPU), and
# with BPF statistics on R[KEY,BPF_NS] / R[KEY,BPF_RUNS]: all deltas over the measured run only
# (read after the pause that follows the warm-up, and after the one that follows the run).
run() {
    local key="$1" script="$2" out="$OUT_DIR/wrk-${1/,/-}.txt" o1="" c1="" b1="" b2
    run_wrk "$CONNS" "$WARMUP" "$URL" "$OUT_DIR/wrk-${key/,/-}-warmup.txt" "$script"
    sleep "$SETTLE_S"
    if [[ -n "$TRACER_PID" ]]; then
        o1="$(metric "$OPENED")"
        c1="$(cpu_ticks "$TRACER_PID")"
        if [[ "$BPF_STATS" == 1 ]]; then b1="$(bpf_totals)"; fi
    fi
    run_wrk "$CONNS" "$DURATION" "$URL" "$out" "$script"
    read_wrk_results "$key" "$out"
    sleep "$SETTLE_S"
    if [[ -n "$TRACER_PID" ]]; then
        kill -0 "$TRACER_PID" 2>/dev/null || die "the tracer died during $key (see $OUT_DIR/flows-*.log)"
        R[$key,FLOWS]=$(( $(metric "$OPENED") - o1 ))
        R[$key,TRACER_TICKS]=$(( $(cpu_ticks "$TRACER_PID") - c1 ))
        if [[ "$BPF_STATS" == 1 ]]; then
            b2="$(bpf_totals)"
            R[$key,BPF_NS]=$(( ${b2% *} - ${b1% *} ))
            R[$key,BPF_RUNS]=$(( ${b2#* } - ${b1#* } ))
        fi
    fi
    log "$key: ${R[$key,RPS]} req/s over ${R[$key,DURATION_S]} s, p99 ${R[$key,P99_MS]} ms," \
        "errors ${R[$key,ERRORS]}${R[$key,FLOWS]:+, ${R[$key,FLOWS]} flows opened}"
}

# newconn_derived KEY: per-run figures of a traced new-connection run, each over the measured
# run only: RATE (new connections/s = flows / measured duration) and US_PER_EVENT (tracer CPU
# per event; events counted as before: EVENTS_PER_FLOW per flow on the port, i.e. open,
# established and close of the server socket (fewer with TRACE_EVENTS); the client sockets'
# events, counted under "ephemeral", are not in it).
newconn_derived() {
    local key="$1"
    R[$key,RATE]="$(awk -v n="${R[$key,FLOWS]}" -v d="${R[$key,DURATION_S]}" 'BEGIN { if (d > 0) printf "%.0f", n / d; else print "n/a" }')"
    R[$key,US_PER_EVENT]="$(awk -v t="${R[$key,TRACER_TICKS]}" -v hz="$CLK_TCK" -v e="$(( ${R[$key,FLOWS]} * EVENTS_PER_FLOW ))" \
        'BEGIN { if (e > 0) printf "%.2f", t / hz * 1e6 / e; else print "n/a" }')"
}

BPF_STATS=0
sysctl -qw kernel.bpf_stats_enabled=0
LOST_TOTAL=0
COVERED=yes         # every traced new-connection run opened at least one flow per request
for ((round = 1; round <= ROUNDS; round++)); do
    for arm in $(round_order "$round" plain traced); do
        log "round $round/$ROUNDS: $arm"
        if [[ "$arm" == plain ]]; then
            run "plain-keepalive,r$round" "$LUA_SCRIPT"
            run "plain-newconn,r$round" "$CLOSE_LUA"
        else
            start_tracer "r$round"
            run "traced-keepalive,r$round" "$LUA_SCRIPT"
            run "traced-newconn,r$round" "$CLOSE_LUA"
            newconn_derived "traced-newconn,r$round"
            # The gauge counts since the tracer started (warm-ups included): any loss counts.
            lost="$(metric "rampart_flows_events_lost")"
            LOST_TOTAL=$(( LOST_TOTAL + lost ))
            if (( ${R[traced-newconn,r$round,FLOWS]} < ${R[traced-newconn,r$round,REQUESTS]} )); then COVERED=no; fi
            log "round $round traced: $lost events lost; new connections: ${R[traced-newconn,r$round,FLOWS]} flows" \
                "for ${R[traced-newconn,r$round,REQUESTS]} requests, ${R[traced-newconn,r$round,RATE]}/s"
            stop_tracer
        fi
    done
done
for key in plain-keepalive plain-newconn traced-keepalive traced-newconn; do
    rounds_median "$key" RPS P50_MS P99_MS ERRORS
done
rounds_median traced-newconn REQUESTS FLOWS RATE US_PER_EVENT
newconn_requests="${R[traced-newconn,REQUESTS]}"
newconn_flows="${R[traced-newconn,FLOWS]}"
newconn_rate="${R[traced-newconn,RATE]}"
user_us_per_event="${R[traced-newconn,US_PER_EVENT]}"
lost="$LOST_TOTAL"

# BPF program cost: a separate traced arm with the statistics on, so that their clock reads
# weigh on no throughput figure above; run_time_ns / run_cnt over its two measured runs.
log "statistics arm: kernel.bpf_stats_enabled=1"
start_tracer stats
sysctl -qw kernel.bpf_stats_enabled=1
BPF_STATS=1
run stats-keepalive "$LUA_SCRIPT"
run stats-newconn "$CLOSE_LUA"
BPF_STATS=0
sysctl -qw kernel.bpf_stats_enabled=0
bpf_runs=$(( ${R[stats-keepalive,BPF_RUNS]} + ${R[stats-newconn,BPF_RUNS]} ))
bpf_ns_per_run="$(awk -v t="$(( ${R[stats-keepalive,BPF_NS]} + ${R[stats-newconn,BPF_NS]} ))" -v c="$bpf_runs" \
    'BEGIN { if (c > 0) printf "%.0f", t / c; else print "n/a" }')"
map_bytes_per_flow="$(bpftool map show -j | python3 -c '
import json, sys
m = [m for m in json.load(sys.stdin) if m.get("name", "") == "rf_flows"]
if m:
    m = m[0]
    print("%.0f (%s entries, %.1f MiB)" % (m["bytes_memlock"] / m["max_entries"], m["max_entries"], m["bytes_memlock"] / 1048576))
else:
    print("n/a")')"
stop_tracer
leftover="$LEFTOVER"

ka_ratio="$(ratio "${R[traced-keepalive,RPS]}" "${R[plain-keepalive,RPS]}")"
nc_ratio="$(ratio "${R[traced-newconn,RPS]}" "${R[plain-newconn,RPS]}")"
# The same ratio within each round (its two arms ran back to back), and the median of those:
# on this machine the load a whole round sees drifts by more than tracing costs, and pairing
# cancels the drift.
paired_ratios() { # paired_ratios SCENARIO -> "r1 / r2 / ... -> median"
    local r vals=()
    for ((r = 1; r <= ROUNDS; r++)); do
        vals+=("$(ratio "${R[traced-$1,r$r,RPS]}" "${R[plain-$1,r$r,RPS]}")")
    done
    printf '%s -> median %s' "$(printf ' / %s' "${vals[@]}" | cut -c4-)" "$(median "${vals[@]}")"
}
ka_paired="$(paired_ratios keepalive)"
nc_paired="$(paired_ratios newconn)"
log "paired ratios per round: keep-alive $ka_paired; new connections $nc_paired"
ka_verdict="$(ratio_verdict "${R[traced-keepalive,RPS]}" "${R[plain-keepalive,RPS]}" ">=" 0.97)"
nc_verdict="$(ratio_verdict "${R[traced-newconn,RPS]}" "${R[plain-newconn,RPS]}" ">=" 0.97)"
loss_verdict="$(awk -v l="$lost" -v r="$newconn_rate" 'BEGIN { print (l == 0 && r >= 10000) ? "met" : (l == 0 ? "zero loss, but the rate reached here is below 10,000/s" : "not met") }')"

TABLE="| run (median of $ROUNDS rounds) | req/s | p50 ms | p99 ms | errors |
|---|---|---|---|---|
| keep-alive, no tracing | ${R[plain-keepalive,RPS]} | ${R[plain-keepalive,P50_MS]} | ${R[plain-keepalive,P99_MS]} | ${R[plain-keepalive,ERRORS]} |
| keep-alive, tracing | ${R[traced-keepalive,RPS]} | ${R[traced-keepalive,P50_MS]} | ${R[traced-keepalive,P99_MS]} | ${R[traced-keepalive,ERRORS]} |
| new connection per request, no tracing | ${R[plain-newconn,RPS]} | ${R[plain-newconn,P50_MS]} | ${R[plain-newconn,P99_MS]} | ${R[plain-newconn,ERRORS]} |
| new connection per request, tracing | ${R[traced-newconn,RPS]} | ${R[traced-newconn,P50_MS]} | ${R[traced-newconn,P99_MS]} | ${R[traced-newconn,ERRORS]} |"

SUMMARY="- throughput with tracing / without (medians of $ROUNDS rounds): keep-alive **$ka_ratio**, new connections **$nc_ratio** (target ≥ 0.97, i.e. ≤ 3 % overhead: keep-alive $ka_verdict, new connections $nc_verdict); the same ratio within each round (arms back to back): keep-alive $ka_paired, new connections $nc_paired
- traced new-connection run (medians; the measured run only): $newconn_requests requests, $newconn_flows flows on port $UPSTREAM_PORT ($newconn_rate new connections/s over the measured duration), a flow for every request in every round: $COVERED; **$lost events lost** in all $ROUNDS traced arms together (target: zero at 10,000/s: $loss_verdict)
- BPF programs (statistics arm, kernel.bpf_stats_enabled=1, its two measured runs): $bpf_runs runs, **$bpf_ns_per_run ns per run** on average; tracer process: $user_us_per_event µs of CPU per event in user space (median, measured runs)
- flow table memory: **$map_bytes_per_flow** bytes per tracked flow
- after SIGTERM: $leftover rf_ programs left loaded (most seen after any stop)"

printf '\n%s\n\n%s\n' "$TABLE" "$SUMMARY"
SECTION=flows
COMMAND="bash bench/flows.sh"
HEADING="## eBPF flow tracing: overhead and loss"
if [[ "$TRACE_EVENTS" != all ]]; then
    SECTION=flows-events
    COMMAND="TRACE_EVENTS=$TRACE_EVENTS bash bench/flows.sh"
    HEADING="## eBPF flow tracing with fewer events (\`--events $TRACE_EVENTS\`): overhead and loss"
fi
write_doc_section "$SECTION" "<!-- $SECTION:begin -->
$HEADING

\`$COMMAND\` ($(date -u +%Y-%m-%d), $(machine_line); rampart $(repo_revision); CPUs ${CPU_BUSY_START}% busy before the start; wrk -t2 -c$CONNS -d${DURATION}s after a ${WARMUP}s warm-up, against nginx serving 1 KiB on loopback; tracing = \`rampart flows --events $TRACE_EVENTS serve\` running, all tracepoints attached; **median of $ROUNDS rounds**, the arms alternating (round 1 no tracing first, round 2 tracing first, ...); kernel.bpf_stats_enabled=0 in both arms):

$TABLE

$SUMMARY
<!-- $SECTION:end -->"
log "results written to $DOC"
