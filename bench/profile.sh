#!/usr/bin/env bash
# Where the gateway spends its CPU: a flame graph per scenario of bench/gateway.sh.
#
#   wrk ──► rampart 127.0.0.1:18093 ──► nginx upstream 127.0.0.1:18091 (fixed 1024-byte body)
#
# The same config, upstream and load as bench/gateway.sh's rampart arm (2 workers, 256 idle
# upstream connections per worker, wrk -t2 --latency). For each concurrency: a warm-up, then
# `perf record` (cpu-clock at BENCH_PERF_HZ, DWARF call graphs: the release build has no
# frame pointers but keeps its unwind tables) on the rampart process while wrk runs. The
# samples are folded with inferno (`cargo install inferno`, installed here when missing) into
# docs/flamegraphs/gateway-c<CONNS>.svg, and the top functions by self time are printed and
# written to docs/flamegraphs/gateway-c<CONNS>.txt.
#
# Usage:  bash bench/profile.sh        (as root, for perf)
# Environment:
#   BENCH_CONNS="64 1000"   concurrencies
#   BENCH_DURATION=10       seconds recorded per scenario
#   BENCH_WARMUP=2          seconds of load before recording
#   BENCH_PERF_HZ=499       samples per second per CPU
#   RAMPART_BIN=path        the rampart binary (default: cargo build --release -p rampart)
#
# Everything runs on 127.0.0.1 only; every process this script starts is stopped on exit.
set -euo pipefail
umask 022

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
OUT_DIR="$REPO_ROOT/bench/out/profile"
BENCH_TAG="profile"
LUA_SCRIPT="bench/latency.lua"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
CONNS_LIST="${BENCH_CONNS:-64 1000}"
PERF_HZ="${BENCH_PERF_HZ:-499}"
READY_TIMEOUT=30
BODY_BYTES=1024
UPSTREAM_PORT=18091
RAMPART_PORT=18093
ADMIN_PORT=19993
UPSTREAM_KEEPALIVE=256
FLAME_DIR="$REPO_ROOT/docs/flamegraphs"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_install_traps

[[ $EUID -eq 0 ]] || die "run as root: perf records another process"
ensure_tools wrk:wrk nginx:nginx curl:curl perf:linux-perf
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v inferno-flamegraph >/dev/null; then
    log "cargo install inferno --locked (flame graphs from perf samples)"
    cargo install -q inferno --version 0.12.8 --locked
fi
raise_nofile
rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR" "$FLAME_DIR"
for p in "$UPSTREAM_PORT" "$RAMPART_PORT" "$ADMIN_PORT"; do check_port_free "$p"; done
build_rampart
check_idle

start_static_nginx nginx-upstream "$UPSTREAM_PORT"

gateway_bench_config "$RAMPART_PORT" "$ADMIN_PORT" "$UPSTREAM_PORT" "$UPSTREAM_KEEPALIVE" >"$OUT_DIR/rampart.yaml"
"$RAMPART_BIN" serve --config "$OUT_DIR/rampart.yaml" >"$OUT_DIR/rampart.log" 2>&1 &
RAMPART_PID=$!
STARTED_PIDS+=("$RAMPART_PID")
wait_ready rampart "$RAMPART_PID" "http://127.0.0.1:$ADMIN_PORT/ready" "$OUT_DIR/rampart.log"
check_proxy_response rampart "$RAMPART_PORT"
URL="http://127.0.0.1:$RAMPART_PORT/"

SUMMARY=""
for conns in $CONNS_LIST; do
    name="gateway-c$conns"
    run_wrk "$conns" "$WARMUP" "$URL" "$OUT_DIR/$name-warmup.txt" "$LUA_SCRIPT"
    log "$name: recording $DURATION s of rampart (pid $RAMPART_PID) under wrk -c$conns"
    wrk -t2 -c"$conns" -d"$((DURATION + 2))s" --latency -s "$LUA_SCRIPT" "$URL" >"$OUT_DIR/$name-wrk.txt" 2>&1 &
    WRK_PID=$!
    STARTED_PIDS+=("$WRK_PID")
    sleep 1
    perf record -q -e cpu-clock -F "$PERF_HZ" --call-graph dwarf,16384 -p "$RAMPART_PID" \
        -o "$OUT_DIR/$name.perf.data" -- sleep "$DURATION" 2>"$OUT_DIR/$name-perf.log" || true
    wait "$WRK_PID" || true
    rps="$(awk '/^Requests\/sec:/ { print $2 }' "$OUT_DIR/$name-wrk.txt")"
    perf script -i "$OUT_DIR/$name.perf.data" 2>/dev/null >"$OUT_DIR/$name.perf.txt"
    inferno-collapse-perf "$OUT_DIR/$name.perf.txt" >"$OUT_DIR/$name.folded"
    inferno-flamegraph --title "rampart gateway, wrk -c$conns ($rps req/s while recorded), $(date -u +%Y-%m-%d), rampart $(repo_revision)" \
        --width 1600 "$OUT_DIR/$name.folded" >"$FLAME_DIR/$name.svg"
    # Self time per function (the leaf of each stack), as shares of all samples.
    awk '{ n = $NF; $NF = ""; k = split($0, f, ";"); leaf = f[k]; sub(/ +$/, "", leaf); self[leaf] += n; total += n }
         END { for (l in self) printf "%6.2f%%  %s\n", 100 * self[l] / total, l }' "$OUT_DIR/$name.folded" |
        sort -rn | head -40 >"$FLAME_DIR/$name.txt"
    log "$name: $rps req/s while recorded; flame graph docs/flamegraphs/$name.svg; top self time:"
    head -15 "$FLAME_DIR/$name.txt" >&2
    SUMMARY+="$name: $rps req/s while recorded"$'\n'
done
printf '%s' "$SUMMARY"
log "flame graphs in docs/flamegraphs/ (open the .svg in a browser: it is interactive)"
