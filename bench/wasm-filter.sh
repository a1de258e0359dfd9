#!/usr/bin/env bash
# Gateway cost of a proxy-wasm plugin: the same rampart serve, the same upstream (the
# built-in demo upstream), two routes side by side in one run: /plain, and /plugin through
# the header-setting SDK plugin (crates/rampart-wasm/guests/plugins, signed). wrk with
# bench/latency.lua at 1 connection (per-request latency: p50 difference = the plugin's
# overhead) and at BENCH_CONNS (throughput: req/s ratio), each after a warm-up.
# Writes docs/BENCHMARKS.md between `<!-- wasm-filter:begin -->` / `<!-- wasm-filter:end -->`.
#
# Usage:  bash bench/wasm-filter.sh
# Environment:
#   BENCH_DURATION=10 BENCH_WARMUP=2 BENCH_CONNS=64 BENCH_WORKERS=2
#   RAMPART_BIN=path              use this rampart binary, skip the cargo build
#   BENCH_DOC=docs/BENCHMARKS.md  where to write the results
set -euo pipefail
umask 022

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
OUT_DIR="$REPO_ROOT/bench/out/wasm-filter"
BENCH_TAG="wasm-filter"
READY_TIMEOUT=30
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
CONNS="${BENCH_CONNS:-64}"
WORKERS="${BENCH_WORKERS:-2}"
DOC="${BENCH_DOC:-docs/BENCHMARKS.md}"
LUA_SCRIPT="bench/latency.lua"

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_install_traps
ensure_tools wrk:wrk curl:curl
check_idle
build_rampart
rm -rf "$OUT_DIR" && mkdir -p "$OUT_DIR"

rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
GUEST_DIR="$CARGO_TARGET_DIR/wasm-guests"
CARGO_TARGET_DIR="$GUEST_DIR" cargo build --release --locked --target wasm32-wasip1 \
    -p rampart-test-plugins --manifest-path crates/rampart-wasm/guests/Cargo.toml >&2
cp "$GUEST_DIR/wasm32-wasip1/release/rampart_test_plugins.wasm" "$OUT_DIR/plugin.wasm"
PUBLIC="$("$RAMPART_BIN" wasm keygen --out "$OUT_DIR/key")"
"$RAMPART_BIN" wasm sign "$OUT_DIR/plugin.wasm" --key "$OUT_DIR/key" >/dev/null

LISTEN=25510 ADMIN=25511 UPSTREAM=25512
for p in $LISTEN $ADMIN $UPSTREAM; do check_port_free "$p"; done
"$RAMPART_BIN" demo-upstream --listen "127.0.0.1:$UPSTREAM" >"$OUT_DIR/upstream.log" 2>&1 &
STARTED_PIDS+=("$!")
cat >"$OUT_DIR/rampart.yaml" <<YAML
workers: $WORKERS
access_log: { format: off }
admin: { address: "127.0.0.1:$ADMIN" }
wasm: { trusted_keys: ["$PUBLIC"] }
listeners: [{ name: main, address: "127.0.0.1:$LISTEN", route_table: main }]
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: { path: { prefix: /plugin } }
            forward: { cluster: up }
            filters:
              - wasm: { module: "$OUT_DIR/plugin.wasm", config: "x-tenant=acme" }
          - match: { path: { prefix: /plain } }
            forward: { cluster: up }
clusters: [{ name: up, endpoints: ["127.0.0.1:$UPSTREAM"] }]
YAML
RUST_LOG=warn "$RAMPART_BIN" serve --config "$OUT_DIR/rampart.yaml" --watch-interval 0s >"$OUT_DIR/serve.log" 2>&1 &
STARTED_PIDS+=("$!")
wait_ready "rampart serve" "$!" "http://127.0.0.1:$ADMIN/ready" "$OUT_DIR/serve.log"
curl -fsS "http://127.0.0.1:$LISTEN/plugin/x" | grep -q '"x-tenant":"acme"' || die "the plugin did not run"

declare -A R
# run_wrk uses two threads, which need two connections: one connection runs on one thread.
wrk_at() {
    local conns="$1" secs="$2" url="$3" out="$4"
    if [[ "$conns" -ge 2 ]]; then
        run_wrk "$conns" "$secs" "$url" "$out"
    else
        wrk -t1 -c1 -d"${secs}s" --latency -s "$LUA_SCRIPT" "$url" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed against $url"; }
    fi
}
measure() {
    local name="$1" conns="$2" url="http://127.0.0.1:$LISTEN/$1/bench"
    wrk_at "$conns" "$WARMUP" "$url" "$OUT_DIR/wrk-$name-c$conns-warmup.txt"
    wrk_at "$conns" "$DURATION" "$url" "$OUT_DIR/wrk-$name-c$conns.txt"
    read_wrk_results "$name,$conns" "$OUT_DIR/wrk-$name-c$conns.txt"
    log "$name c=$conns: ${R[$name,$conns,RPS]} req/s, p50 ${R[$name,$conns,P50_MS]} ms, errors ${R[$name,$conns,ERRORS]}"
}
for c in 1 "$CONNS"; do
    measure plain "$c"
    measure plugin "$c"
done
overhead_us="$(awk -v a="${R[plugin,1,P50_MS]}" -v b="${R[plain,1,P50_MS]}" 'BEGIN { printf "%.1f", (a - b) * 1000 }')"
rr="$(ratio "${R[plugin,$CONNS,RPS]}" "${R[plain,$CONNS,RPS]}")"
TABLE="| route | conns | req/s | p50 ms | p99 ms | errors |
|---|---:|---:|---:|---:|---:|
$(for c in 1 "$CONNS"; do for n in plain plugin; do
    echo "| /$n | $c | ${R[$n,$c,RPS]} | ${R[$n,$c,P50_MS]} | ${R[$n,$c,P99_MS]} | ${R[$n,$c,ERRORS]} |"
done; done)

Per-request plugin overhead (p50 at 1 connection, plugin − plain): **${overhead_us} µs** (goal ≤ 5 µs: $(met_if "$overhead_us" '<=' 5)); req/s ratio at $CONNS connections: **$rr** (goal ≥ 0.9: $(ratio_verdict "${R[plugin,$CONNS,RPS]}" "${R[plain,$CONNS,RPS]}" '>=' 0.9))."
echo "$TABLE"

section="<!-- wasm-filter:begin -->
## Gateway with a proxy-wasm plugin

- Command: \`bash bench/wasm-filter.sh\` (BENCH_DURATION=$DURATION, BENCH_CONNS=$CONNS, BENCH_WORKERS=$WORKERS)
- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)
- Rampart: ${RAMPART_VERSION}; one \`rampart serve\` (access log off), the built-in demo upstream; /plugin runs the signed SDK plugin (adds a header, edits two, reads :path, marks the response: seven calls into the VM per request — context create, request headers, response headers, response body, done, log, delete — with header maps lent, not copied), /plain does not; wrk \`--latency -s bench/latency.lua\` (-t1 at one connection, -t2 above) after a ${WARMUP} s warm-up, wrk, Rampart and the upstream on the same 2 cores.

$TABLE
<!-- wasm-filter:end -->"
write_doc_section wasm-filter "$section"
