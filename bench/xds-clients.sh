#!/usr/bin/env bash
# 1,000 simulated Delta ADS clients on one control plane: its RSS per client and its CPU per
# push; then the time to translate and diff 10,000 clusters.
#
#   ads_load clients (1,000 Delta streams, 100 per HTTP/2 connection, ACKing everything)
#        │ ADS on 127.0.0.1
#   rampart control-plane --config FILE --watch-interval 100ms   ◄── FILE rewritten per push
#
# The control plane serves BENCH_CLUSTERS clusters (one endpoint each, a route to each). Each
# stream follows its resources as a Rampart proxy does: listeners and clusters by wildcard,
# then the route configuration and the EDS endpoints they name. RSS (VmRSS) is read before
# the clients connect and once they all hold the whole config. Each of BENCH_PUSHES pushes
# rewrites the file with cluster c0's endpoint port changed (one ClusterLoadAssignment
# changes), waits until every stream got the new version (ads_load prints a `round=` line),
# lets the ACKs settle, and reads the control plane's utime+stime over that window. Fan-out:
# from the first stream's receipt to each other stream's. Then, in process,
# `ads_load diff --clusters BENCH_DIFF_CLUSTERS` with 1, 10 and 100 streams: parse,
# translate, and publish → every stream got the one changed endpoint.
# Prints the results and writes them into docs/BENCHMARKS.md between the
# `<!-- xds-clients:begin -->` / `<!-- xds-clients:end -->` markers.
#
# Usage:  bash bench/xds-clients.sh
# The control plane admits a burst of 1,000 new streams, then 200 a second; ads_load retries
# a refused stream after a backoff, as a Rampart proxy does, and counts the refusals.
#
# Environment:
#   BENCH_CLIENTS=1000            Delta streams
#   BENCH_PUSHES=20               pushes measured
#   BENCH_CLUSTERS=100            clusters served to the clients
#   BENCH_DIFF_CLUSTERS=10000     clusters in the in-process diff
#   BENCH_DIFF_STREAMS="1 10 100" streams in the in-process diff runs
#   RAMPART_BIN=path ADS_LOAD_BIN=path   use these binaries, skip the cargo build
#   BENCH_DOC=docs/BENCHMARKS.md  where to write the results
set -euo pipefail
umask 022

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
OUT_DIR="$REPO_ROOT/bench/out/xds-clients"
BENCH_TAG="xds-clients"
READY_TIMEOUT=30
ROUND_TIMEOUT=30   # seconds for one push to reach every stream
SETTLE=0.3         # seconds after a round for the ACKs to be read
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"
CLIENTS="${BENCH_CLIENTS:-1000}"
PUSHES="${BENCH_PUSHES:-20}"
CLUSTERS="${BENCH_CLUSTERS:-100}"
DIFF_CLUSTERS="${BENCH_DIFF_CLUSTERS:-10000}"
DIFF_STREAMS="${BENCH_DIFF_STREAMS:-1 10 100}"
SYNC="" BYTES="" WHAT=""
DOC="${BENCH_DOC:-docs/BENCHMARKS.md}"

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_install_traps
check_idle

if [[ -n "${RAMPART_BIN:-}" && -n "${ADS_LOAD_BIN:-}" ]]; then
    log "using RAMPART_BIN=$RAMPART_BIN ADS_LOAD_BIN=$ADS_LOAD_BIN (no build)"
    BINS_GIVEN=1
else
    command -v cargo >/dev/null 2>&1 || die "cargo not found (or set RAMPART_BIN and ADS_LOAD_BIN)"
    log "cargo build --release -p rampart -p rampart-xds --bin rampart --example ads_load (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    cargo build --release -p rampart -p rampart-xds --bin rampart --example ads_load
    RAMPART_BIN="$CARGO_TARGET_DIR/release/rampart"
    ADS_LOAD_BIN="$CARGO_TARGET_DIR/release/examples/ads_load"
fi
CMD_PREFIX=""
[[ -n "${BINS_GIVEN:-}" ]] && CMD_PREFIX="RAMPART_BIN=$RAMPART_BIN ADS_LOAD_BIN=$ADS_LOAD_BIN "
[[ -x "$RAMPART_BIN" && -x "$ADS_LOAD_BIN" ]] || die "binaries not executable: $RAMPART_BIN $ADS_LOAD_BIN"
RAMPART_VERSION="$(timeout 5 "$RAMPART_BIN" --version 2>/dev/null | sed -n 1p || true)"
rm -rf "$OUT_DIR" && mkdir -p "$OUT_DIR"
CFG="$OUT_DIR/control-plane.yaml"

# config ROUND: CLUSTERS clusters and a route to each; c0's endpoint port is 20000 + ROUND.
config() {
    local round="$1" i
    printf 'listeners: [{ name: main, address: "127.0.0.1:10000", route_table: main }]\n'
    printf 'route_tables:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: ["*"]\n        routes:\n'
    for ((i = 0; i < CLUSTERS; i++)); do
        printf '          - { match: { path: { prefix: /c%s/ } }, forward: { cluster: c%s } }\n' "$i" "$i"
    done
    printf 'clusters:\n'
    printf '  - { name: c0, endpoints: ["10.0.0.0:%s"] }\n' $((20000 + round))
    for ((i = 1; i < CLUSTERS; i++)); do
        printf '  - { name: c%s, endpoints: ["10.%s.%s.%s:80"] }\n' "$i" $((i / 65536 % 256)) $((i / 256 % 256)) $((i % 256))
    done
}
# write_config ROUND: replaces the file in one rename, so the poller never reads half of it.
write_config() { config "$1" >"$CFG.tmp" && mv "$CFG.tmp" "$CFG"; }

vmrss() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }
# Non-idle clock ticks of all CPUs so far (/proc/stat; guest time is inside user already).
busy_ticks() { awk 'NR == 1 { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
# OWN_TICKS: clock ticks of user+system time of this shell and its finished children (the
# `times` builtin, run here and not in $(...), where a subshell would start from zero).
own_ticks() {
    times >"$OUT_DIR/times"
    OWN_TICKS="$(awk -v hz="$CLK_TCK" '{ for (i = 1; i <= 2; i++) { split($i, p, /[ms]/); t += p[1] * 60 + p[2] } } END { printf "%.0f", t * hz }' "$OUT_DIR/times")"
}
# other_pct BUSY_TICKS OURS_TICKS WALL_MS: what other processes used, in % of one core.
other_pct() { awk -v b="$1" -v o="$2" -v ms="$3" -v hz="$CLK_TCK" 'BEGIN { v = (b - o) / (ms / 1000 * hz) * 100; printf "%.0f", (v > 0 ? v : 0) }'; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# wait_line PATTERN COUNT WHAT: until FILE has COUNT lines matching PATTERN (the load
# generator alive, at most ROUND_TIMEOUT s).
wait_line() {
    local pattern="$1" count="$2" what="$3" deadline=$(( $(date +%s) + ROUND_TIMEOUT ))
    while (( $(grep -c "$pattern" "$OUT_DIR/load.out" || true) < count )); do
        kill -0 "$LOAD_PID" 2>/dev/null || { cat "$OUT_DIR/load.err" >&2; die "ads_load exited before $what"; }
        (( $(date +%s) < deadline )) || { cat "$OUT_DIR/load.err" >&2; die "no $what within ${ROUND_TIMEOUT}s"; }
        sleep 0.05
    done
}

# ---------------------------------------------------------------------------------------------
# The control plane and its clients
# ---------------------------------------------------------------------------------------------
write_config 0
RUST_LOG=info "$RAMPART_BIN" control-plane --config "$CFG" --listen 127.0.0.1:0 \
    --admin 127.0.0.1:0 --watch-interval 100ms >"$OUT_DIR/control-plane.log" 2>&1 &
CP_PID=$!
STARTED_PIDS+=("$CP_PID")
deadline=$(( $(date +%s) + READY_TIMEOUT ))
until ADDR="$(sed -n 's/.*xds listening addr=\([0-9.:]*\).*/\1/p' "$OUT_DIR/control-plane.log" | head -n1)" && [[ -n "$ADDR" ]]; do
    kill -0 "$CP_PID" 2>/dev/null || { cat "$OUT_DIR/control-plane.log" >&2; die "the control plane exited"; }
    (( $(date +%s) < deadline )) || die "the control plane did not listen within ${READY_TIMEOUT}s"
    sleep 0.1
done
grep -q 'new snapshot published' "$OUT_DIR/control-plane.log" || sleep 0.5
sleep 1
RSS_IDLE="$(vmrss "$CP_PID")"
log "control plane on $ADDR (pid $CP_PID), $CLUSTERS clusters, VmRSS $RSS_IDLE kB"

"$ADS_LOAD_BIN" clients --server "http://$ADDR" --clients "$CLIENTS" --pushes "$PUSHES" \
    --timeout-secs $(( 60 + PUSHES * ROUND_TIMEOUT )) >"$OUT_DIR/load.out" 2>"$OUT_DIR/load.err" &
LOAD_PID=$!
STARTED_PIDS+=("$LOAD_PID")
wait_line '^warm ' 1 "all $CLIENTS streams warm"
WARM_LINE="$(grep '^warm ' "$OUT_DIR/load.out")"
log "$WARM_LINE"
sleep 1
RSS_WARM="$(vmrss "$CP_PID")"

# Idle CPU with every stream open (the file poll every 100 ms, timers), to set against pushes.
c0=$(cpu_ticks "$CP_PID"); w0=$(now_ms); sleep 3; c1=$(cpu_ticks "$CP_PID"); w1=$(now_ms)
IDLE_TICKS=$(( c1 - c0 )) IDLE_MS=$(( w1 - w0 ))

log "measuring $PUSHES pushes to $CLIENTS streams"
: >"$OUT_DIR/samples"
own_ticks; S0=$OWN_TICKS B0=$(busy_ticks) T0=$(now_ms)
for i in $(seq 1 "$PUSHES"); do
    c0=$(cpu_ticks "$CP_PID"); g0=$(cpu_ticks "$LOAD_PID"); w0=$(now_ms)
    write_config "$i"
    wait_line '^round=' "$i" "round $i at every stream"
    sleep "$SETTLE"
    c1=$(cpu_ticks "$CP_PID"); g1=$(cpu_ticks "$LOAD_PID"); w1=$(now_ms)
    echo "$i $(( c1 - c0 )) $(( g1 - g0 )) $(( w1 - w0 ))" >>"$OUT_DIR/samples"
done
own_ticks; S1=$OWN_TICKS B1=$(busy_ticks) T1=$(now_ms)
rc=0; wait "$LOAD_PID" || rc=$?
(( rc == 0 )) || { cat "$OUT_DIR/load.err" >&2; die "ads_load exited with $rc"; }
RSS_AFTER="$(vmrss "$CP_PID")"
HWM="$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$CP_PID/status")"
grep -qi 'error\|warn' "$OUT_DIR/control-plane.log" && log "WARNING: the control plane logged warnings or errors (see $OUT_DIR/control-plane.log)"

# Fan-out per round: from the first stream's receipt to the p50 / p99 / last stream's, as
# ads_load measured it; and from the control plane's `new snapshot published` log line to the
# first stream (the line is written after the publish returns, so it can come after the
# first receipt: a negative figure).
: >"$OUT_DIR/fanout"
while read -r line; do
    declare -A f=()
    for kv in $line; do f[${kv%%=*}]="${kv#*=}"; done
    ts="$(grep "new snapshot published version=${f[version]}\$" "$OUT_DIR/control-plane.log" | awk '{ print $1 }' | head -n1)"
    [[ -n "$ts" ]] || die "no publish of version ${f[version]} in the control plane's log"
    pub_us="$(date -d "$ts" +%s%6N)"
    awk -v a="${f[first_unix_us]}" -v p="$pub_us" -v p50="${f[p50_ms]}" -v p99="${f[p99_ms]}" -v mx="${f[max_ms]}" \
        'BEGIN { printf "%.3f %.3f %.3f %.3f\n", (a - p) / 1000, p50, p99, mx }' >>"$OUT_DIR/fanout"
    unset f
done < <(grep '^round=' "$OUT_DIR/load.out")

# col_stat FILE COLUMN STAT(median|max|sum)
col_stat() {
    cut -d' ' -f"$2" "$1" | sort -g | awk -v s="$3" '
        { v[NR] = $1; t += $1 } END {
            if (s == "median") printf "%.1f", v[int((NR + 1) / 2)];
            else if (s == "max") printf "%.1f", v[NR];
            else printf "%.0f", t }'
}
tick_ms() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", t * 1000 / hz }'; }
CP_TICKS="$(col_stat "$OUT_DIR/samples" 2 sum)"
LOAD_TICKS="$(col_stat "$OUT_DIR/samples" 3 sum)"
WINDOW_MS="$(col_stat "$OUT_DIR/samples" 4 sum)"
CPU_PUSH="$(awk -v t="$CP_TICKS" -v hz="$CLK_TCK" -v n="$PUSHES" 'BEGIN { printf "%.1f", t * 1000 / hz / n }')"
IDLE_IN_WINDOWS="$(awk -v t="$IDLE_TICKS" -v hz="$CLK_TCK" -v ms="$IDLE_MS" -v w="$WINDOW_MS" -v n="$PUSHES" \
    'BEGIN { printf "%.1f", (t * 1000 / hz) / ms * w / n }')"
CPU_PUSH_NET="$(awk -v a="$CPU_PUSH" -v b="$IDLE_IN_WINDOWS" 'BEGIN { printf "%.1f", a - b }')"
CPU_CLIENT_US="$(awk -v a="$CPU_PUSH_NET" -v n="$CLIENTS" 'BEGIN { printf "%.0f", a * 1000 / n }')"
LOAD_PUSH="$(awk -v t="$LOAD_TICKS" -v hz="$CLK_TCK" -v n="$PUSHES" 'BEGIN { printf "%.1f", t * 1000 / hz / n }')"
RSS_PER_CLIENT="$(awk -v a="$RSS_WARM" -v b="$RSS_IDLE" -v n="$CLIENTS" 'BEGIN { printf "%.1f", (a - b) / n * 1.024 }')"
# (this script's own polling counts as ours; ads_load is reaped after S1, so not twice)
OTHER_PUSHES="$(other_pct $(( B1 - B0 )) $(( CP_TICKS + LOAD_TICKS + S1 - S0 )) $(( T1 - T0 )))"
(( OTHER_PUSHES <= 10 )) || log "WARNING: other processes used ${OTHER_PUSHES}% of a core during the pushes"
SAMPLES_CPU="$(awk -v hz="$CLK_TCK" '{ printf "%s%.0f", (NR > 1 ? " " : ""), $2 * 1000 / hz }' "$OUT_DIR/samples")"

TABLE="| | |
|---|---:|
| control plane VmRSS, $CLUSTERS clusters, no client | $(echo "$RSS_IDLE" | kib_to_mib) MiB |
| VmRSS with $CLIENTS streams holding the whole config | $(echo "$RSS_WARM" | kib_to_mib) MiB |
| **RSS per client** | **$RSS_PER_CLIENT kB** |
| VmRSS after $PUSHES pushes (VmHWM) | $(echo "$RSS_AFTER" | kib_to_mib) MiB ($(echo "$HWM" | kib_to_mib) MiB) |
| all $CLIENTS streams warm (whole config held) after | $(awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } printf "%.2f s (%d refusals retried)", v["secs"], v["refused"] }' <<<"$WARM_LINE") |
| **CPU per push** (utime+stime over the push window, idle share taken out) | **$CPU_PUSH_NET ms** ($CPU_PUSH ms raw, $IDLE_IN_WINDOWS ms idle share) |
| CPU per push per client | $CPU_CLIENT_US µs |
| CPU per push, each push (ms, 10 ms ticks) | $SAMPLES_CPU |
| load generator's CPU per push (same cores) | $LOAD_PUSH ms |
| other processes during the pushes (/proc/stat) | ${OTHER_PUSHES} % of one core |

| fan-out of one push (ms) | median of $PUSHES pushes | worst push |
|---|---:|---:|
| \`new snapshot published\` logged → first stream | $(col_stat "$OUT_DIR/fanout" 1 median) | $(col_stat "$OUT_DIR/fanout" 1 max) |
| first stream → p50 stream | $(col_stat "$OUT_DIR/fanout" 2 median) | $(col_stat "$OUT_DIR/fanout" 2 max) |
| **first stream → p99 stream** | **$(col_stat "$OUT_DIR/fanout" 3 median)** | $(col_stat "$OUT_DIR/fanout" 3 max) |
| first stream → last stream | $(col_stat "$OUT_DIR/fanout" 4 median) | $(col_stat "$OUT_DIR/fanout" 4 max) |"
echo "$TABLE"

# ---------------------------------------------------------------------------------------------
# Translating and diffing BENCH_DIFF_CLUSTERS clusters, in process
# ---------------------------------------------------------------------------------------------
DIFF_TABLE="| streams | parse ms | translate ms | publish call ms | publish → every stream has the change, ms | ÷ streams, ms | other processes, % of a core |
|---:|---:|---:|---:|---:|---:|---:|"
for s in $DIFF_STREAMS; do
    log "ads_load diff --clusters $DIFF_CLUSTERS --streams $s"
    own_ticks; k0=$OWN_TICKS b0=$(busy_ticks) w0=$(now_ms)
    timeout 600 "$ADS_LOAD_BIN" diff --clusters "$DIFF_CLUSTERS" --rounds 5 --streams "$s" \
        >"$OUT_DIR/diff-$s.out" 2>&1 || { cat "$OUT_DIR/diff-$s.out" >&2; die "ads_load diff failed"; }
    own_ticks; k1=$OWN_TICKS b1=$(busy_ticks) w1=$(now_ms)
    other="$(other_pct $(( b1 - b0 )) $(( k1 - k0 )) $(( w1 - w0 )))"
    (( other <= 10 )) || log "WARNING: other processes used ${other}% of a core during the diff run"
    med="$(grep '^diff median' "$OUT_DIR/diff-$s.out")"
    WHAT="$(grep -m1 -o 'changed=[^ ]*' "$OUT_DIR/diff-$s.out" | sed 's/changed=//; s/,/, /g')"
    declare -A f=()
    for kv in $med; do f[${kv%%=*}]="${kv#*=}"; done
    DIFF_TABLE+="
| $s | ${f[parse_ms]} | ${f[translate_ms]} | ${f[publish_ms]} | ${f[publish_to_all_streams_ms]} | $(awk -v a="${f[publish_to_all_streams_ms]}" -v n="$s" 'BEGIN { printf "%.2f", a / n }') | $other |"
    unset f
    SYNC+="${SYNC:+, }$s stream(s) $(grep -o 'initial_sync_ms=[^ ]*' "$OUT_DIR/diff-$s.out" | sed 's/.*=//') ms"
    BYTES="$(grep -o 'largest_response_bytes=[^ ]*' "$OUT_DIR/diff-$s.out" | sed 's/.*=//')"
done
echo "$DIFF_TABLE"

section="<!-- xds-clients:begin -->
## Control plane: $CLIENTS Delta clients, CPU per push; diffing $DIFF_CLUSTERS clusters

- Command: \`${CMD_PREFIX}bash bench/xds-clients.sh\` (BENCH_CLIENTS=$CLIENTS, BENCH_PUSHES=$PUSHES, BENCH_CLUSTERS=$CLUSTERS, BENCH_DIFF_CLUSTERS=$DIFF_CLUSTERS)
- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); CPUs ${CPU_BUSY_START}% busy before start
- Rampart: ${RAMPART_VERSION}, repo revision $(repo_revision)
- \`rampart control-plane --config FILE --watch-interval 100ms\` (2 runtime workers) serving $CLUSTERS clusters (one endpoint each, a route to each); \`ads_load clients\` (crates/rampart-xds/examples, 1 runtime worker) opens $CLIENTS Delta ADS streams, 100 per HTTP/2 connection, each following its resources as a Rampart proxy does and ACKing every response. A push rewrites the file with one cluster's endpoint port changed (one ClusterLoadAssignment per stream). CPU is the control plane's utime+stime from /proc over each push window (file rewrite → every stream got it → ${SETTLE} s for the ACKs), minus its idle rate with the streams open. Fan-out is measured by ads_load from the first stream's receipt of a version to each other stream's. Both processes share the 2 cores.

$TABLE

In process (\`ads_load diff --clusters $DIFF_CLUSTERS --rounds 5 --streams S\`, medians of 5 rounds; tokio with 2 workers as in \`rampart control-plane\`; system allocator where the binary uses mimalloc): parse and validate the YAML (one route per cluster), translate it to a snapshot, publish it (the call: the watch channel's send, dropping the previous snapshot), and the time until each of S Delta streams holding all $DIFF_CLUSTERS clusters and endpoints received the one changed endpoint. Resources that changed per round: ${WHAT:-n/a}. Initial sync until every stream held everything: ${SYNC:-n/a}; the largest response (one type's whole set) is ${BYTES:-n/a} bytes.

$DIFF_TABLE
<!-- xds-clients:end -->"
write_doc_section xds-clients "$section"
