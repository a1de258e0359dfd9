#!/usr/bin/env bash
# WASM instantiation latency: a fresh store and instance per iteration from a pre-linked
# module (InstancePre), under Rampart's sandbox (pooling allocator, memory/table caps, epoch
# deadline) and, as the peer, wasmtime's default engine (on-demand allocation), in the same
# process and run: a tiny module, and a Rust WASI guest (crates/rampart-wasm/guests, built
# for wasm32-wasip1) with a fresh WASI context each time.
# Writes the results into docs/BENCHMARKS.md between `<!-- wasm-instantiate:begin -->` and
# `<!-- wasm-instantiate:end -->`.
#
# Usage:  bash bench/wasm-instantiate.sh
# Environment:
#   BENCH_ITERATIONS=20000        instantiations per case and engine
#   BENCH_DOC=docs/BENCHMARKS.md  where to write the results
set -euo pipefail
umask 022

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
BENCH_TAG="wasm-instantiate"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"
ITERATIONS="${BENCH_ITERATIONS:-20000}"
DOC="${BENCH_DOC:-docs/BENCHMARKS.md}"

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_install_traps
check_idle

rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
log "cargo build --release --example instantiate -p rampart-wasm; the guests for wasm32-wasip1"
cargo build --release -p rampart-wasm --example instantiate
GUEST_DIR="$CARGO_TARGET_DIR/wasm-guests"
CARGO_TARGET_DIR="$GUEST_DIR" cargo build --release --locked --target wasm32-wasip1 \
    --manifest-path crates/rampart-wasm/guests/Cargo.toml
GUEST="$GUEST_DIR/wasm32-wasip1/release/hello.wasm"
[[ -f "$GUEST" ]] || die "no guest at $GUEST"

out="$("$CARGO_TARGET_DIR/release/examples/instantiate" --iterations "$ITERATIONS" --guest "$GUEST")"
echo "$out" >&2
field() { echo "$out" | awk -v c="$1" -v e="$2" -v f="$3" '
    $1 == "case=" c && $2 == "engine=" e { for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == f) print kv[2] } }'; }
row() {
    local case="$1" label="$2" rp50 rp99 dp50 dp99
    rp50="$(field "$case" rampart-sandbox p50_us)"; rp99="$(field "$case" rampart-sandbox p99_us)"
    dp50="$(field "$case" wasmtime-default p50_us)"; dp99="$(field "$case" wasmtime-default p99_us)"
    printf '| %s | %s | %s | %s | %s | %s |\n' "$label" "$rp50" "$rp99" "$dp50" "$dp99" "$(ratio "$dp50" "$rp50")"
}
tiny_p50="$(field tiny rampart-sandbox p50_us)"
TABLE="| guest | Rampart sandbox p50 µs | p99 µs | wasmtime default p50 µs | p99 µs | default ÷ sandbox (p50) |
|---|---:|---:|---:|---:|---:|
$(row tiny 'tiny module (one memory, no imports)')
$(row rust-wasi-guest "Rust WASI guest ($(stat -c %s "$GUEST") bytes, fresh WASI context)")

Goal ≤ 10 µs p50 from the pool (tiny module): **$tiny_p50 µs**, $(awk -v v="$tiny_p50" 'BEGIN { print (v <= 10) ? "met" : "not met" }')."
echo "$TABLE"

section="<!-- wasm-instantiate:begin -->
## WASM instantiation from the pool

- Command: \`bash bench/wasm-instantiate.sh\` (BENCH_ITERATIONS=$ITERATIONS)
- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)
- Each iteration: a new store (with the sandbox's limits and deadline), \`InstancePre::instantiate\`, drop; wasmtime 48.0.8, release build, one thread. The peer is wasmtime's own default engine (on-demand allocator) in the same process.

$TABLE
<!-- wasm-instantiate:end -->"
write_doc_section wasm-instantiate "$section"
