#!/usr/bin/env bash
# Store write → route served, on the real path (issue 14's convergence goal: p99 ≤ 50 ms;
# istiod's convergence is reported in seconds):
#
#   rampart apply ──► rampart kv serve (1 member)  ──watch──► rampart control-plane --store
#                                                              │ Delta ADS
#   curl ──► rampart proxy --xds (the route's new body) ◄──────┘
#
# For each of BENCH_CHANGES changes: write the route's new direct-response body with
# `rampart apply`, then poll the proxy until it answers with it. Two durations per change:
# from starting `rampart apply` (the CLI's own process start and transaction included) and
# from the apply command returning (the store's watch, the control plane's translation and
# push, the proxy's apply). Polling runs curl back to back, so figures carry its few ms.
# Prints p50/p99/max and writes them into docs/BENCHMARKS.md between the
# `<!-- xds:begin -->` / `<!-- xds:end -->` markers.
#
# Usage:  bash bench/xds.sh
# Environment:
#   BENCH_CHANGES=1000            changes measured
#   RAMPART_BIN=path              use this rampart binary, skip the cargo build
#   BENCH_DOC=docs/BENCHMARKS.md  where to write the results
set -euo pipefail
umask 022

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
OUT_DIR="$REPO_ROOT/bench/out/xds"
BENCH_TAG="xds-bench"
READY_TIMEOUT=30
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"
CHANGES="${BENCH_CHANGES:-1000}"
DOC="${BENCH_DOC:-docs/BENCHMARKS.md}"

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_install_traps
ensure_tools curl:curl
check_idle
build_rampart

KV=25379 PEER=25380 ADS=25400 CP_ADMIN=25401 LISTEN=25402 PROXY_ADMIN=25403
for p in $KV $PEER $ADS $CP_ADMIN $LISTEN $PROXY_ADMIN; do check_port_free "$p"; done
rm -rf "$OUT_DIR" && mkdir -p "$OUT_DIR"
EP="127.0.0.1:$KV"

docs() {
    cat <<YAML
kind: Listener
name: main
address: "127.0.0.1:$LISTEN"
route_table: main
---
kind: RouteTable
name: main
virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
      - { match: { path: { prefix: /hello } }, direct_response: { status: 200, body: "$1" } }
YAML
}

now_us() { echo $(( $(date +%s%N) / 1000 )); }

RUST_LOG=warn "$RAMPART_BIN" kv serve --name bench --data-dir "$OUT_DIR/data" \
    --listen-client-urls "http://$EP" --listen-peer-urls "http://127.0.0.1:$PEER" \
    >"$OUT_DIR/kv.log" 2>&1 &
STARTED_PIDS+=("$!")
deadline=$(( $(date +%s) + READY_TIMEOUT ))
until "$RAMPART_BIN" get cluster --endpoints "$EP" >/dev/null 2>&1; do
    (( $(date +%s) < deadline )) || die "the store did not start (see $OUT_DIR/kv.log)"
    sleep 0.1
done
docs v0 >"$OUT_DIR/app.yaml"
"$RAMPART_BIN" apply -f "$OUT_DIR/app.yaml" --endpoints "$EP" >/dev/null

RUST_LOG=warn "$RAMPART_BIN" control-plane --store "$EP" --listen "127.0.0.1:$ADS" \
    --admin "127.0.0.1:$CP_ADMIN" >"$OUT_DIR/control-plane.log" 2>&1 &
STARTED_PIDS+=("$!")
RUST_LOG=warn "$RAMPART_BIN" proxy --xds "127.0.0.1:$ADS" --node-id bench \
    --admin "127.0.0.1:$PROXY_ADMIN" --workers 1 >"$OUT_DIR/proxy.log" 2>&1 &
STARTED_PIDS+=("$!")

# wait_for BODY: polls the proxy until it answers BODY (at most 5 s).
wait_for() {
    local want="$1" deadline=$(( $(date +%s) + 5 ))
    until [[ "$(curl -s --max-time 1 "http://127.0.0.1:$LISTEN/hello" || true)" == "$want" ]]; do
        (( $(date +%s) < deadline )) || die "the proxy never served $want (see $OUT_DIR/*.log)"
    done
}
wait_for v0

log "measuring $CHANGES changes"
: >"$OUT_DIR/samples"
for i in $(seq 1 "$CHANGES"); do
    docs "v$i" >"$OUT_DIR/app.yaml"
    t0=$(now_us)
    "$RAMPART_BIN" apply -f "$OUT_DIR/app.yaml" --endpoints "$EP" >/dev/null
    t1=$(now_us)
    wait_for "v$i"
    t2=$(now_us)
    echo "$(( t2 - t0 )) $(( t2 - t1 ))" >>"$OUT_DIR/samples"
done

# pct COLUMN P: the P-th percentile (nearest rank) of a sample column, in ms.
pct() {
    cut -d' ' -f"$1" "$OUT_DIR/samples" | sort -n | awk -v p="$2" '
        { v[NR] = $1 } END { r = int((p / 100) * NR + 0.999999); if (r < 1) r = 1; printf "%.1f", v[r] / 1000 }'
}
TABLE="| from | p50 ms | p99 ms | max ms | goal p99 ≤ 50 ms |
|---|---:|---:|---:|---|
| starting \`rampart apply\` | $(pct 1 50) | $(pct 1 99) | $(pct 1 100) | $(awk -v v="$(pct 1 99)" 'BEGIN { print (v <= 50) ? "met" : "not met" }') |
| the apply returning (store watch → control plane → proxy) | $(pct 2 50) | $(pct 2 99) | $(pct 2 100) | $(awk -v v="$(pct 2 99)" 'BEGIN { print (v <= 50) ? "met" : "not met" }') |"
echo "$TABLE"

section="<!-- xds:begin -->
## Control plane: store write → route served by a Rampart proxy over ADS

- Command: \`bash bench/xds.sh\` (BENCH_CHANGES=$CHANGES)
- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); CPUs ${CPU_BUSY_START}% busy before start
- Rampart: ${RAMPART_VERSION}
- One store member, one control plane following it (\`--store\`), one proxy (\`--xds\`, 1 worker); each change is a route's direct-response body written by \`rampart apply\`, then curl polls the proxy back to back until it answers with it. All processes share the machine's cores.

$TABLE
<!-- xds:end -->"
write_doc_section xds "$section"
