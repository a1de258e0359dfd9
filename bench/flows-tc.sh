#!/usr/bin/env bash
# Byte counting per flow, two ways, on loopback (root): what each costs.
#
#   wrk -t2 -c64 (keep-alive) ──► nginx :18102 (static 1 KiB)
#
# Three modes, each run alone:
#   none    no BPF program loaded
#   socket  `rampart flows serve`: the tracepoint programs of rampart-flows; bytes come from
#           sock:sock_send_length / sock_recv_length (rf_send_len, rf_recv_len)
#   tc      examples/tc_only: TcCounter on lo, TC clsact ingress + egress (rf_tc_ingress,
#           rf_tc_egress); every packet on lo passes both hooks
# 1. Throughput: BENCH_ROUNDS rounds of none / socket / tc (kernel.bpf_stats_enabled=0, so the
#    statistics' own clock reads do not weigh on the ratio); the median req/s per mode and its
#    ratio to `none`.
# 2. BPF cost: one more run per traced mode with kernel.bpf_stats_enabled=1; the programs'
#    run_time_ns / run_cnt deltas over the measured run (bpftool prog show -j), per run and per
#    request. This is the programs' own time; the hook dispatch around them (tracepoint, or
#    clsact qdisc + cls_bpf) is not in it, only in the throughput ratio.
# Exactness is not measured here: tests/tc.rs in crates/rampart-flows compares both with the
# application's byte counts (see the crate docs, "Byte counting").
# Results go between `<!-- flows-tc:begin -->` / `<!-- flows-tc:end -->` in docs/BENCHMARKS.md.
#
# Usage:  bash bench/flows-tc.sh          (as root)
# Environment: BENCH_DURATION=10  BENCH_WARMUP=2  BENCH_CONNS=64  BENCH_ROUNDS=5
#              RAMPART_BIN=path (the default build has flows)  TC_ONLY_BIN=path (the example)
#              BENCH_DOC=docs/BENCHMARKS.md
set -euo pipefail
umask 022

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
OUT_DIR="$REPO_ROOT/bench/out/flows-tc"
BENCH_TAG="flows-tc-bench"
LUA_SCRIPT="bench/latency.lua"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
CONNS="${BENCH_CONNS:-64}"
ROUNDS="${BENCH_ROUNDS:-5}"
READY_TIMEOUT=30
BODY_BYTES=1024
DOC="${BENCH_DOC:-docs/BENCHMARKS.md}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"
UPSTREAM_PORT=18102
METRICS_PORT=19436
declare -A R

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_install_traps
BPF_STATS_ORIG="$(sysctl -n kernel.bpf_stats_enabled 2>/dev/null || echo 0)"
# Restore the statistics switch on every exit; bench_cleanup then sees the original status.
restore_and_cleanup() {
    local rc=$?
    sysctl -qw kernel.bpf_stats_enabled="$BPF_STATS_ORIG" 2>/dev/null
    (exit "$rc")
    bench_cleanup
}
trap restore_and_cleanup EXIT

[[ $EUID -eq 0 ]] || die "run as root: BPF programs and TC filters need CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"
ensure_tools nginx:nginx wrk:wrk curl:curl bpftool:bpftool tc:iproute2 python3:python3
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
raise_nofile
if [[ -z "${RAMPART_BIN:-}" ]]; then
    log "cargo build --release -p rampart"
    cargo build --release -p rampart
    RAMPART_BIN="$CARGO_TARGET_DIR/release/rampart"
fi
if [[ -z "${TC_ONLY_BIN:-}" ]]; then
    log "cargo build --release -p rampart-flows --example tc_only"
    cargo build --release -p rampart-flows --example tc_only
    TC_ONLY_BIN="$CARGO_TARGET_DIR/release/examples/tc_only"
fi
[[ -x "$RAMPART_BIN" ]] || die "not executable: $RAMPART_BIN"
[[ -x "$TC_ONLY_BIN" ]] || die "not executable: $TC_ONLY_BIN"
if tc qdisc show dev lo | grep -q clsact; then
    die "lo already has a clsact qdisc (someone else's TC programs would be measured too)"
fi
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

MODE_PID=""
# start_mode MODE TAG: starts the tracer of MODE (socket|tc) and waits until it is attached.
start_mode() {
    local mode="$1" logf="$OUT_DIR/$1-$2.log" deadline
    case "$mode" in
        socket)
            "$RAMPART_BIN" flows serve --listen "127.0.0.1:$METRICS_PORT" >"$logf" 2>&1 &
            MODE_PID=$!
            STARTED_PIDS+=("$MODE_PID")
            wait_ready "rampart flows" "$MODE_PID" "http://127.0.0.1:$METRICS_PORT/metrics" "$logf"
            ;;
        tc)
            "$TC_ONLY_BIN" lo >"$logf" 2>&1 &
            MODE_PID=$!
            STARTED_PIDS+=("$MODE_PID")
            deadline=$(( $(date +%s) + READY_TIMEOUT ))
            until grep -q '^attached' "$logf"; do
                kill -0 "$MODE_PID" 2>/dev/null || { cat "$logf" >&2; die "tc_only exited during startup"; }
                (( $(date +%s) < deadline )) || die "tc_only not attached after ${READY_TIMEOUT}s"
                sleep 0.1
            done
            ;;
        *) die "unknown mode $mode" ;;
    esac
}

stop_mode() {
    [[ -n "$MODE_PID" ]] && stop_pid "$MODE_PID"
    MODE_PID=""
}

# bpf_totals REGEX: "run_time_ns run_cnt" summed over loaded programs whose name matches.
bpf_totals() {
    bpftool prog show -j | python3 -c '
import json, re, sys
pat = re.compile(sys.argv[1])
t = c = 0
for p in json.load(sys.stdin):
    if pat.match(p.get("name", "")):
        t += p.get("run_time_ns", 0); c += p.get("run_cnt", 0)
print(t, c)' "$1"
}

# run KEY: warm-up, then the measured wrk run; results in R[KEY,*].
run() {
    local key="$1"
    run_wrk "$CONNS" "$WARMUP" "$URL" "$OUT_DIR/wrk-$key-warmup.txt"
    run_wrk "$CONNS" "$DURATION" "$URL" "$OUT_DIR/wrk-$key.txt"
    read_wrk_results "$key" "$OUT_DIR/wrk-$key.txt"
    log "$key: ${R[$key,RPS]} req/s, p99 ${R[$key,P99_MS]} ms, errors ${R[$key,ERRORS]}"
}

# Program sets (Python regexes on the program name).
PAT_SOCKET_BYTES='rf_(send|recv)_len$'
PAT_SOCKET_ALL='rf_(?!tc_)'
PAT_TC='rf_tc_'

# run_bpf KEY MODE: like run, with BPF statistics on; B[KEY,SET]="ns runs" deltas over the
# measured run for each program set of MODE.
declare -A B
run_bpf() {
    local key="$1" mode="$2" set pat
    local -A before
    local -a sets
    if [[ "$mode" == socket ]]; then sets=(bytes all); else sets=(tc); fi
    sysctl -qw kernel.bpf_stats_enabled=1
    run_wrk "$CONNS" "$WARMUP" "$URL" "$OUT_DIR/wrk-$key-warmup.txt"
    for set in "${sets[@]}"; do
        case "$set" in bytes) pat="$PAT_SOCKET_BYTES" ;; all) pat="$PAT_SOCKET_ALL" ;; tc) pat="$PAT_TC" ;; esac
        before[$set]="$(bpf_totals "$pat")"
    done
    run_wrk "$CONNS" "$DURATION" "$URL" "$OUT_DIR/wrk-$key.txt"
    for set in "${sets[@]}"; do
        case "$set" in bytes) pat="$PAT_SOCKET_BYTES" ;; all) pat="$PAT_SOCKET_ALL" ;; tc) pat="$PAT_TC" ;; esac
        B[$key,$set]="$(printf '%s %s\n' "${before[$set]}" "$(bpf_totals "$pat")" | awk '{ print $3 - $1, $4 - $2 }')"
    done
    sysctl -qw kernel.bpf_stats_enabled=0
    read_wrk_results "$key" "$OUT_DIR/wrk-$key.txt"
    log "$key: ${R[$key,RPS]} req/s; BPF $(for set in "${sets[@]}"; do printf '%s=[%s] ' "$set" "${B[$key,$set]}"; done)"
}

sysctl -qw kernel.bpf_stats_enabled=0
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round/$ROUNDS"
    run "none-$round"
    start_mode socket "$round"; run "socket-$round"; stop_mode
    start_mode tc "$round"; run "tc-$round"; stop_mode
done
start_mode socket stats; run_bpf socket-stats socket; stop_mode
start_mode tc stats; run_bpf tc-stats tc; stop_mode
tc_totals="$(grep -E '^(ingress|egress):' "$OUT_DIR/tc-stats.log" | tr '\n' ' ' || true)"
tc_counters="$(grep -E '^TcCounters' "$OUT_DIR/tc-stats.log" || true)"

sleep 1 # programs and maps are freed asynchronously
leftover_progs="$(bpftool prog show | grep -c ' name rf_' || true)"
leftover_qdisc="$(tc qdisc show dev lo | grep -c clsact || true)"

# median KEY-PREFIX: median req/s over the rounds.
median() {
    local prefix="$1" r
    for ((r = 1; r <= ROUNDS; r++)); do echo "${R[$prefix-$r,RPS]}"; done | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
rounds_list() {
    local prefix="$1" r out=""
    for ((r = 1; r <= ROUNDS; r++)); do out+="${out:+ / }${R[$prefix-$r,RPS]}"; done
    printf '%s' "$out"
}
med_none="$(median none)"; med_socket="$(median socket)"; med_tc="$(median tc)"

# bpf_row LABEL KEY SET PROGRAMS
bpf_row() {
    local label="$1" key="$2" set="$3" progs="$4" ns runs
    read -r ns runs <<<"${B[$key,$set]}"
    awk -v l="$label" -v p="$progs" -v ns="$ns" -v runs="$runs" -v req="${R[$key,REQUESTS]}" \
        -v d="${R[$key,DURATION_S]}" -v cpus="$(nproc)" -v rps="${R[$key,RPS]}" 'BEGIN {
        printf "| %s | %s | %d | %.2f | %.0f | %.0f | %.2f %% | %s |\n", l, p, runs,
            (req > 0 ? runs / req : 0), (runs > 0 ? ns / runs : 0), (req > 0 ? ns / req : 0),
            (d > 0 ? 100 * ns / 1e9 / (d * cpus) : 0), rps }'
}
ns_per_req() { # KEY SET
    local ns
    read -r ns _ <<<"${B[$1,$2]}"
    awk -v ns="$ns" -v req="${R[$1,REQUESTS]}" 'BEGIN { printf "%.0f", (req > 0 ? ns / req : 0) }'
}
socket_bytes_ns="$(ns_per_req socket-stats bytes)"
socket_all_ns="$(ns_per_req socket-stats all)"
tc_ns="$(ns_per_req tc-stats tc)"
cheaper="$(awk -v s="$socket_bytes_ns" -v t="$tc_ns" 'BEGIN {
    if (s < t) printf "socket tracepoints (%.1fx less BPF time per request than TC)", t / s
    else printf "TC (%.1fx less BPF time per request than the socket tracepoints)", s / t }')"

TABLE="| mode | req/s per round | median req/s | ratio to no tracing |
|---|---|---|---|
| no tracing | $(rounds_list none) | $med_none | 1.000 |
| socket tracepoints (\`rampart flows serve\`, all 7 programs) | $(rounds_list socket) | $med_socket | $(ratio "$med_socket" "$med_none") |
| TC clsact on lo (\`tc_only\`, 2 programs) | $(rounds_list tc) | $med_tc | $(ratio "$med_tc" "$med_none") |"

BPF_TABLE="| mode | programs | runs | runs / request | ns / run | BPF ns / request | BPF CPU (of $(nproc) CPUs) | req/s in this run |
|---|---|---|---|---|---|---|---|
$(bpf_row "socket: byte counting" socket-stats bytes "rf_send_len, rf_recv_len")
$(bpf_row "socket: everything" socket-stats all "all 7 rf_ programs")
$(bpf_row "TC" tc-stats tc "rf_tc_ingress, rf_tc_egress")"

SUMMARY="- BPF time per request for counting bytes: socket tracepoints **$socket_bytes_ns ns** ($socket_all_ns ns with the whole flow tracer), TC **$tc_ns ns**: cheaper: **$cheaper**
- TC totals in the statistics run (\`tc_only\`, every packet on lo passes egress and ingress): ${tc_totals:-n/a}; ${tc_counters:-n/a}
- after stopping: $leftover_progs rf_ programs loaded, $leftover_qdisc clsact qdisc on lo
- exactness (tests/tc.rs, not this script): both count payload bytes exactly when no segment is retransmitted; TC counts retransmitted payload again, the socket tracepoints never do"

printf '\n%s\n\n%s\n\n%s\n' "$TABLE" "$BPF_TABLE" "$SUMMARY"
write_doc_section flows-tc "<!-- flows-tc:begin -->
## Byte counting: socket tracepoints vs TC clsact

\`bash bench/flows-tc.sh\` ($(date -u +%Y-%m-%d), $(machine_line); rampart $(repo_revision); CPUs ${CPU_BUSY_START}% busy before the start; wrk -t2 -c$CONNS -d${DURATION}s keep-alive against nginx serving 1 KiB on loopback; $ROUNDS rounds, modes alternating, BPF statistics off):

$TABLE

BPF statistics (kernel.bpf_stats_enabled=1, one more ${DURATION}s run per mode; the programs' own run time, not the tracepoint or qdisc dispatch around them):

$BPF_TABLE

$SUMMARY
<!-- flows-tc:end -->"
