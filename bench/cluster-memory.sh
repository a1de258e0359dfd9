#!/usr/bin/env bash
# Memory per cluster in a Rampart proxy: `rampart serve` with BENCH_CLUSTERS clusters (one
# endpoint each, each reached by a route) against the same config with one, both idle after
# start; (RSS difference) / clusters. Envoy's figure for comparison is its own documented
# ≈ 72 kB per cluster (Envoy is not packaged in Debian 12, so it does not run here).
# Writes the result into docs/BENCHMARKS.md between `<!-- cluster-memory:begin -->` and
# `<!-- cluster-memory:end -->`.
#
# Usage:  bash bench/cluster-memory.sh
# Environment:
#   BENCH_CLUSTERS=10000          clusters in the large config
#   BENCH_WORKERS=2               data-plane workers (each keeps its own upstream pools)
#   RAMPART_BIN=path              use this rampart binary, skip the cargo build
#   BENCH_DOC=docs/BENCHMARKS.md  where to write the results
set -euo pipefail
umask 022

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
OUT_DIR="$REPO_ROOT/bench/out/cluster-memory"
BENCH_TAG="cluster-memory"
READY_TIMEOUT=60
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"
CLUSTERS="${BENCH_CLUSTERS:-10000}"
WORKERS="${BENCH_WORKERS:-2}"
DOC="${BENCH_DOC:-docs/BENCHMARKS.md}"

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_install_traps
ensure_tools curl:curl
check_idle
build_rampart
rm -rf "$OUT_DIR" && mkdir -p "$OUT_DIR"
LISTEN=25502 ADMIN=25503
for p in $LISTEN $ADMIN; do check_port_free "$p"; done

# config N: N clusters, a route to each (by path), one listener.
config() {
    local n="$1" i
    printf 'workers: %s\naccess_log: { format: off }\nadmin: { address: "127.0.0.1:%s" }\n' "$WORKERS" "$ADMIN"
    printf 'listeners: [{ name: main, address: "127.0.0.1:%s", route_table: main }]\n' "$LISTEN"
    printf 'route_tables:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: ["*"]\n        routes:\n'
    for ((i = 0; i < n; i++)); do
        printf '          - { match: { path: { prefix: /c%s/ } }, forward: { cluster: c%s } }\n' "$i" "$i"
    done
    printf 'clusters:\n'
    for ((i = 0; i < n; i++)); do
        printf '  - { name: c%s, endpoints: ["10.%s.%s.%s:80"] }\n' "$i" $((i / 65536 % 256)) $((i / 256 % 256)) $((i % 256))
    done
}

# rss_after_start N: the idle RSS (KiB) of `rampart serve` with config N.
rss_after_start() {
    local n="$1" pid rss
    config "$n" >"$OUT_DIR/c$n.yaml"
    RUST_LOG=warn "$RAMPART_BIN" serve --config "$OUT_DIR/c$n.yaml" --watch-interval 0s \
        >"$OUT_DIR/serve$n.log" 2>&1 &
    pid=$!
    STARTED_PIDS+=("$pid")
    wait_ready "rampart serve ($n clusters)" "$pid" "http://127.0.0.1:$ADMIN/ready" "$OUT_DIR/serve$n.log"
    sleep 1
    rss="$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")"
    stop_pid "$pid"
    echo "$rss"
}

small="$(rss_after_start 1)"
large="$(rss_after_start "$CLUSTERS")"
per_kb="$(awk -v a="$large" -v b="$small" -v n="$CLUSTERS" 'BEGIN { printf "%.2f", (a - b) / (n - 1) * 1.024 }')"
verdict="$(awk -v v="$per_kb" 'BEGIN { print (v <= 5) ? "met" : "not met" }')"
TABLE="| config | idle RSS MiB |
|---|---:|
| 1 cluster | $(echo "$small" | kib_to_mib) |
| $CLUSTERS clusters (a route each) | $(echo "$large" | kib_to_mib) |

Per cluster: **$per_kb kB** (goal ≤ 5 kB: $verdict; Envoy documents ≈ 72 kB)."
echo "$TABLE"

section="<!-- cluster-memory:begin -->
## Proxy memory per cluster

- Command: \`bash bench/cluster-memory.sh\` (BENCH_CLUSTERS=$CLUSTERS, BENCH_WORKERS=$WORKERS)
- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)
- Rampart: ${RAMPART_VERSION}; \`rampart serve\` idle after start (no traffic, so no upstream connections), access log off

$TABLE
<!-- cluster-memory:end -->"
write_doc_section cluster-memory "$section"
