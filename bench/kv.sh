#!/usr/bin/env bash
# Rampart's config store vs etcd (Debian's etcd-server), 3 members each on loopback, in one
# run, driven by the same client (`rampart kv bench`, which speaks only etcd's v3 API).
#
#   rampart kv bench ──► etcd members     127.0.0.1:23791..23793 (peers 23801..23803)
#   rampart kv bench ──► rampart members  127.0.0.1:24791..24793 (peers 24801..24803)
#
# For each system and each concurrency (1, 16, 64, 256 clients): puts of 256-byte values,
# then linearizable gets; then watch fan-out latency to 100 watchers. Every client request
# goes to the three members in turn (followers forward to the leader in both systems).
# Both systems keep their data in a fresh directory under bench/out and fsync their logs.
# Prints a table with rampart/etcd ratios and writes it into docs/BENCHMARKS.md between the
# `<!-- kv:begin -->` / `<!-- kv:end -->` markers.
#
# Usage:  bash bench/kv.sh
# Environment:
#   BENCH_CLIENTS="1 16 64 256"   concurrencies
#   BENCH_TOTAL=20000             requests per measured run (bounded by BENCH_MAX_TIME too)
#   BENCH_MAX_TIME=30s            longest measured run
#   BENCH_WATCHERS=100            watchers in the fan-out test
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
TOTAL="${BENCH_TOTAL:-20000}"
MAX_TIME="${BENCH_MAX_TIME:-30s}"
WATCHERS="${BENCH_WATCHERS:-100}"
DOC="${BENCH_DOC:-docs/BENCHMARKS.md}"

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_install_traps

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

declare -A RES
# run_bench SYSTEM ENDPOINTS WORKLOAD CLIENTS: stores rps/p50/p99 in RES[SYSTEM,WORKLOAD,CLIENTS,*]
run_bench() {
    local sys="$1" eps="$2" wl="$3" c="$4" line conns
    conns=$(( c < 4 ? c : 4 ))
    (( conns > 0 )) || conns=1
    line="$("$RAMPART_BIN" kv --endpoints "$eps" bench "$wl" --clients "$c" --conns "$conns" \
        --total "$TOTAL" --max-time "$MAX_TIME" --value-size 256 2>>"$OUT_DIR/bench.err")"
    log "$sys: $line"
    local kv k v
    for kv in $line; do
        k="${kv%%=*}" v="${kv#*=}"
        RES["$sys,$wl,$c,$k"]="$v"
    done
}

start_etcd
start_rampart
wait_healthy etcd "$ETCD_EPS"
wait_healthy rampart "$RAMPART_EPS"

for c in $CLIENTS; do
    for wl in put get; do
        run_bench etcd "$ETCD_EPS" "$wl" "$c"
        run_bench rampart "$RAMPART_EPS" "$wl" "$c"
    done
done
WATCH_PUTS=200
for sys in etcd rampart; do
    eps="$ETCD_EPS"; [[ $sys == rampart ]] && eps="$RAMPART_EPS"
    line="$("$RAMPART_BIN" kv --endpoints "$eps" bench watch --clients "$WATCHERS" --conns 4 --total "$WATCH_PUTS" 2>>"$OUT_DIR/bench.err")"
    log "$sys: $line"
    for kv in $line; do RES["$sys,watch,$WATCHERS,${kv%%=*}"]="${kv#*=}"; done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }

table() {
    echo "| workload | clients | etcd req/s | rampart req/s | ratio | etcd p50 ms | rampart p50 ms | etcd p99 ms | rampart p99 ms | p99 ratio | errors (etcd/rampart) |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    local c wl
    for wl in put get; do
        for c in $CLIENTS; do
            local e="etcd,$wl,$c" r="rampart,$wl,$c"
            echo "| $wl | $c | ${RES[$e,rps]} | ${RES[$r,rps]} | $(ratio "${RES[$r,rps]}" "${RES[$e,rps]}") | ${RES[$e,p50_ms]} | ${RES[$r,p50_ms]} | ${RES[$e,p99_ms]} | ${RES[$r,p99_ms]} | $(ratio "${RES[$r,p99_ms]}" "${RES[$e,p99_ms]}") | ${RES[$e,errors]}/${RES[$r,errors]} |"
        done
    done
    local e="etcd,watch,$WATCHERS" r="rampart,watch,$WATCHERS"
    echo "| watch fan-out ($WATCH_PUTS puts) | $WATCHERS watchers | - | - | - | ${RES[$e,p50_ms]} | ${RES[$r,p50_ms]} | ${RES[$e,p99_ms]} | ${RES[$r,p99_ms]} | $(ratio "${RES[$r,p99_ms]}" "${RES[$e,p99_ms]}") | ${RES[$e,errors]}/${RES[$r,errors]} missed |"
}

TABLE="$(table)"
echo "$TABLE"

section="<!-- kv:begin -->
## Config store: Rampart KV vs etcd $(etcd --version | sed -n 's/etcd Version: //p'), 3 members each

- Command: \`bash bench/kv.sh\` (BENCH_TOTAL=$TOTAL, BENCH_MAX_TIME=$MAX_TIME, clients: $CLIENTS)
- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); CPUs ${CPU_BUSY_START}% busy before start
- Rampart: ${RAMPART_VERSION}
- Same client for both (\`rampart kv bench\`, etcd v3 gRPC API), requests spread over the three members, 256-byte values, up to 4 gRPC connections per member; gets are linearizable. Both fsync their logs; all six members, the client and the load share 2 cores.

$TABLE

Ratios are rampart/etcd: req/s above 1 and p99 below 1 favour Rampart. Watch latency is from the put being sent to each watcher receiving the event (puts paced 5 ms apart).
<!-- kv:end -->"
write_doc_section kv "$section"
