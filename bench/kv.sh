#!/usr/bin/env bash
# Rampart's config store vs etcd (Debian's etcd-server), 3 members each on loopback, in one
# run, driven by the same client (`rampart kv bench`, which speaks only etcd's v3 API).
#
#   rampart kv bench ──► etcd members     127.0.0.1:23791..23793 (peers 23801..23803)
#   rampart kv bench ──► rampart members  127.0.0.1:24791..24793 (peers 24801..24803)
#
# For each concurrency (1, 16, 64, 256 clients): puts of 256-byte values, then linearizable
# gets; then watch fan-out latency to 100 watchers. Every client request goes to the three
# members in turn (followers forward to the leader in both systems). Both systems keep their
# data in a fresh directory under bench/out and fsync their logs.
# Each measurement is BENCH_ROUNDS rounds (3) with the systems alternating (round 1: etcd then
# rampart, round 2: rampart then etcd, ...); every run is a warm-up of the same workload, then
# a measured run of BENCH_DURATION seconds (at least 5: a fixed request count once made a
# 256-client figure out of a 0.3 s run). Reported figures are medians over the rounds; the
# per-round values and each run's measured duration are in the log.
# Prints a table with rampart/etcd ratios and writes it into docs/BENCHMARKS.md between the
# `<!-- kv:begin -->` / `<!-- kv:end -->` markers.
#
# Usage:  bash bench/kv.sh
# Environment:
#   BENCH_CLIENTS="1 16 64 256"   concurrencies
#   BENCH_DURATION=10             seconds per measured put/get run (at least 5)
#   BENCH_WARMUP=2                seconds of the same workload before each measured run, discarded
#   BENCH_ROUNDS=3                rounds per measurement, systems alternating; medians reported
#   BENCH_TOTAL=100000000         request cap per run: a safety bound only, the duration ends a run
#   BENCH_WATCHERS=100            watchers in the fan-out test
#   BENCH_WATCH_PUTS=1000         puts per measured watch run (paced >= 5 ms apart, so >= 5 s)
#   RAMPART_BIN=path              use this rampart binary, skip the cargo build
#   BENCH_DOC=docs/BENCHMARKS.md  where to write the results
set -euo pipefail
umask 022

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
OUT_DIR="$REPO_ROOT/bench/out/kv"
BENCH_TAG="kv-bench"
READY_TIMEOUT=30
BODY_BYTES=0
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"
CLIENTS="${BENCH_CLIENTS:-1 16 64 256}"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
ROUNDS="${BENCH_ROUNDS:-3}"
# `rampart kv bench` stops at --total requests or --max-time, whichever comes first. The count
# used to end runs (20000 requests: 0.3 s at 256 clients), so runs are now timed: --max-time is
# the measured duration and --total only a cap far beyond what a run can reach.
TOTAL="${BENCH_TOTAL:-100000000}"
MIN_SECS=5                        # shortest acceptable measured run
WATCHERS="${BENCH_WATCHERS:-100}"
# The watch writer sleeps 5 ms after each put, so 1000 puts take >= 5 s.
WATCH_PUTS="${BENCH_WATCH_PUTS:-1000}"
WATCH_WARMUP_PUTS=$(( WARMUP * 200 ))   # about WARMUP seconds of paced puts
DOC="${BENCH_DOC:-docs/BENCHMARKS.md}"

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_install_traps
check_rounds
if ! [[ "$DURATION" =~ ^[0-9]+$ ]] || (( DURATION < MIN_SECS )); then
    die "BENCH_DURATION must be a whole number of seconds >= $MIN_SECS, not '$DURATION'"
fi
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "BENCH_WARMUP must be a whole number of seconds, not '$WARMUP'"
(( WATCH_PUTS >= MIN_SECS * 200 )) || die "BENCH_WATCH_PUTS must be >= $(( MIN_SECS * 200 )) (a >= ${MIN_SECS} s run)"

ensure_tools etcd:etcd-server etcdctl:etcd-client curl:curl
raise_nofile
build_rampart
check_idle
rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR"

for p in 23791 23792 23793 23801 23802 23803 24791 24792 24793 24801 24802 24803; do
    check_port_free "$p"
done

ETCD_EPS="127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793"
RAMPART_EPS="127.0.0.1:24791,127.0.0.1:24792,127.0.0.1:24793"

start_etcd() {
    local cluster="" i
    for i in 1 2 3; do cluster+="e$i=http://127.0.0.1:2380$i,"; done
    cluster="${cluster%,}"
    for i in 1 2 3; do
        etcd --name "e$i" --data-dir "$OUT_DIR/etcd$i" \
            --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
            --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
            --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
            --log-level error >"$OUT_DIR/etcd$i.log" 2>&1 &
        STARTED_PIDS+=("$!")
    done
}

start_rampart() {
    local cluster="" i
    for i in 1 2 3; do cluster+="r$i=http://127.0.0.1:2480$i,"; done
    cluster="${cluster%,}"
    for i in 1 2 3; do
        RUST_LOG=warn "$RAMPART_BIN" kv serve --name "r$i" --data-dir "$OUT_DIR/rampart$i" \
            --listen-client-urls "http://127.0.0.1:2479$i" \
            --listen-peer-urls "http://127.0.0.1:2480$i" \
            --initial-cluster "$cluster" >"$OUT_DIR/rampart$i.log" 2>&1 &
        STARTED_PIDS+=("$!")
    done
}

# wait_healthy NAME ENDPOINTS: until a linearizable put and get succeed through etcdctl.
wait_healthy() {
    local name="$1" eps="$2" deadline=$(( $(date +%s) + READY_TIMEOUT ))
    until ETCDCTL_API=3 etcdctl --endpoints="$eps" --command-timeout=2s put bench/ready 1 >/dev/null 2>&1; do
        (( $(date +%s) < deadline )) || die "$name cluster not ready after ${READY_TIMEOUT}s (logs in $OUT_DIR)"
        sleep 0.2
    done
    log "$name cluster ready"
}

SHORTEST_SECS=""                  # the shortest measured run, for the doc
# store_line KEY LINE: R[KEY,k]=v for every k=v of a `rampart kv bench` result line; checks
# that the measured run lasted at least MIN_SECS.
store_line() {
    local key="$1" line="$2" kv
    for kv in $line; do R["$key,${kv%%=*}"]="${kv#*=}"; done
    [[ -n "${R[$key,secs]:-}" ]] || die "no secs= in the result line of $key: $line"
    log "$key: measured ${R[$key,secs]} s"
    if awk -v s="${R[$key,secs]}" -v m="$MIN_SECS" 'BEGIN { exit !(s < m) }'; then
        die "$key: the measured run lasted ${R[$key,secs]} s, under $MIN_SECS s (BENCH_TOTAL reached?)"
    fi
    if [[ -z "$SHORTEST_SECS" ]] || awk -v s="${R[$key,secs]}" -v m="$SHORTEST_SECS" 'BEGIN { exit !(s < m) }'; then
        SHORTEST_SECS="${R[$key,secs]}"
    fi
}

# run_bench SYSTEM ENDPOINTS WORKLOAD CLIENTS ROUND: a WARMUP-second run of the workload
# (discarded), then the measured DURATION-second run; R[SYSTEM,WORKLOAD,CLIENTS,r<ROUND>,*].
run_bench() {
    local sys="$1" eps="$2" wl="$3" c="$4" round="$5" line conns
    conns=$(( c < 4 ? c : 4 ))
    (( conns > 0 )) || conns=1
    if (( WARMUP > 0 )); then
        line="$("$RAMPART_BIN" kv --endpoints "$eps" bench "$wl" --clients "$c" --conns "$conns" \
            --total "$TOTAL" --max-time "${WARMUP}s" --value-size 256 2>>"$OUT_DIR/bench.err")"
        log "$sys round $round/$ROUNDS warm-up: $line"
    fi
    line="$("$RAMPART_BIN" kv --endpoints "$eps" bench "$wl" --clients "$c" --conns "$conns" \
        --total "$TOTAL" --max-time "${DURATION}s" --value-size 256 2>>"$OUT_DIR/bench.err")"
    log "$sys round $round/$ROUNDS: $line"
    store_line "$sys,$wl,$c,r$round" "$line"
}

# run_watch SYSTEM ENDPOINTS ROUND: a warm-up of WATCH_WARMUP_PUTS puts (discarded), then the
# measured fan-out of WATCH_PUTS puts to WATCHERS watchers; R[SYSTEM,watch,WATCHERS,r<ROUND>,*].
run_watch() {
    local sys="$1" eps="$2" round="$3" line
    if (( WATCH_WARMUP_PUTS > 0 )); then
        line="$("$RAMPART_BIN" kv --endpoints "$eps" bench watch --clients "$WATCHERS" --conns 4 \
            --total "$WATCH_WARMUP_PUTS" 2>>"$OUT_DIR/bench.err")"
        log "$sys round $round/$ROUNDS warm-up: $line"
    fi
    line="$("$RAMPART_BIN" kv --endpoints "$eps" bench watch --clients "$WATCHERS" --conns 4 \
        --total "$WATCH_PUTS" 2>>"$OUT_DIR/bench.err")"
    log "$sys round $round/$ROUNDS: $line"
    store_line "$sys,watch,$WATCHERS,r$round" "$line"
}

# eps SYSTEM: its client endpoints.
eps() { if [[ "$1" == rampart ]]; then echo "$RAMPART_EPS"; else echo "$ETCD_EPS"; fi; }
FIELDS=(rps p50_ms p99_ms errors secs)

start_etcd
start_rampart
wait_healthy etcd "$ETCD_EPS"
wait_healthy rampart "$RAMPART_EPS"

# ROUNDS rounds per measurement, the order alternating (etcd first in odd rounds, rampart
# first in even ones), so that neither always runs on the other's leftovers (compaction,
# page cache, a store that just grew); the medians are reported.
for c in $CLIENTS; do
    for wl in put get; do
        for ((round = 1; round <= ROUNDS; round++)); do
            for sys in $(round_order "$round" etcd rampart); do
                run_bench "$sys" "$(eps "$sys")" "$wl" "$c" "$round"
            done
        done
        for sys in etcd rampart; do rounds_median "$sys,$wl,$c" "${FIELDS[@]}"; done
    done
done
for ((round = 1; round <= ROUNDS; round++)); do
    for sys in $(round_order "$round" etcd rampart); do
        run_watch "$sys" "$(eps "$sys")" "$round"
    done
done
for sys in etcd rampart; do rounds_median "$sys,watch,$WATCHERS" "${FIELDS[@]}"; done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }

table() {
    echo "| workload | clients | etcd req/s | rampart req/s | ratio | etcd p50 ms | rampart p50 ms | etcd p99 ms | rampart p99 ms | p99 ratio | errors (etcd/rampart) |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    local c wl
    for wl in put get; do
        for c in $CLIENTS; do
            local e="etcd,$wl,$c" r="rampart,$wl,$c"
            echo "| $wl | $c | ${R[$e,rps]} | ${R[$r,rps]} | $(ratio "${R[$r,rps]}" "${R[$e,rps]}") | ${R[$e,p50_ms]} | ${R[$r,p50_ms]} | ${R[$e,p99_ms]} | ${R[$r,p99_ms]} | $(ratio "${R[$r,p99_ms]}" "${R[$e,p99_ms]}") | ${R[$e,errors]}/${R[$r,errors]} |"
        done
    done
    local e="etcd,watch,$WATCHERS" r="rampart,watch,$WATCHERS"
    echo "| watch fan-out ($WATCH_PUTS puts) | $WATCHERS watchers | - | - | - | ${R[$e,p50_ms]} | ${R[$r,p50_ms]} | ${R[$e,p99_ms]} | ${R[$r,p99_ms]} | $(ratio "${R[$r,p99_ms]}" "${R[$e,p99_ms]}") | ${R[$e,errors]}/${R[$r,errors]} missed |"
}

TABLE="$(table)"
echo "$TABLE"

section="<!-- kv:begin -->
## Config store: Rampart KV vs etcd $(etcd --version | sed -n 's/etcd Version: //p'), 3 members each

- Command: \`bash bench/kv.sh\` (BENCH_DURATION=$DURATION, BENCH_WARMUP=$WARMUP, BENCH_ROUNDS=$ROUNDS, BENCH_WATCH_PUTS=$WATCH_PUTS, clients: $CLIENTS)
- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); CPUs ${CPU_BUSY_START}% busy before start
- Rampart: ${RAMPART_VERSION}
- Same client for both (\`rampart kv bench\`, etcd v3 gRPC API), requests spread over the three members, 256-byte values, up to 4 gRPC connections per member; gets are linearizable. Both fsync their logs; all six members, the client and the load share $(nproc) cores.
- Every figure is the **median of $ROUNDS rounds**, etcd and rampart alternating (round 1 etcd then rampart, round 2 rampart then etcd, ...); ratios are of the medians. Each put/get run is a ${WARMUP} s warm-up of the same workload, then a measured ${DURATION} s run; each watch run is $WATCH_WARMUP_PUTS warm-up puts, then $WATCH_PUTS measured puts. Shortest measured run: ${SHORTEST_SECS} s.

$TABLE

Ratios are rampart/etcd: req/s above 1 and p99 below 1 favour Rampart. Watch latency is from the put being sent to each watcher receiving the event (puts paced 5 ms apart).
<!-- kv:end -->"
write_doc_section kv "$section"
