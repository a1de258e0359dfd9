#!/usr/bin/env bash
# Functions: cold starts, and the hello component on Rampart vs `wasmtime serve`.
#
# One `rampart up` (its config: access log off, BENCH_WORKERS workers) runs the store, the
# control plane and the gateway; `rampart fn deploy` puts examples/functions/hello (built for
# wasm32-wasip2, unsigned) in the store with a route.
#  1. First request after deploy: BENCH_DEPLOYS redeploys (each a new version: a new env
#     value), each followed by one timed request once the gateway reports that version.
#  2. First request after idle eviction: `up` again with --fn-idle-timeout 0s (the function
#     leaves memory after every request), BENCH_COLD timed requests, each a cold start
#     (the compiled component is read back from the on-disk cache).
#  Timings are client-side (python http.client on a kept-alive connection: the whole request
#  through the gateway), so they bound the start from above; the gateway's own
#  rampart_fn_start_seconds (instance ready) is reported beside them.
#  3. Throughput: wrk (bench/latency.lua) at BENCH_CONNS connections against the hello
#     component on Rampart's gateway and on `wasmtime serve` (scripts/install-wasmtime-cli.sh,
#     the same wasmtime version; defaults: a fresh instance per request, as Rampart), in
#     BENCH_ROUNDS alternating rounds; medians reported.
# Writes docs/BENCHMARKS.md between `<!-- functions:begin -->` / `<!-- functions:end -->`.
#
# Usage:  bash bench/functions.sh
# Environment:
#   BENCH_DURATION=10 BENCH_WARMUP=2 BENCH_CONNS=64 BENCH_WORKERS=2 BENCH_ROUNDS=3
#   BENCH_COLD=1000 BENCH_DEPLOYS=200
#   RAMPART_BIN=path              use this rampart binary, skip the cargo build
#   BENCH_DOC=docs/BENCHMARKS.md  where to write the results
set -euo pipefail
umask 022

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
OUT_DIR="$REPO_ROOT/bench/out/functions"
BENCH_TAG="functions"
READY_TIMEOUT=60
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
CONNS="${BENCH_CONNS:-64}"
WORKERS="${BENCH_WORKERS:-2}"
ROUNDS="${BENCH_ROUNDS:-3}"
COLD="${BENCH_COLD:-1000}"
DEPLOYS="${BENCH_DEPLOYS:-200}"
DOC="${BENCH_DOC:-docs/BENCHMARKS.md}"
LUA_SCRIPT="bench/latency.lua"

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_install_traps
ensure_tools wrk:wrk curl:curl python3:python3
check_idle
build_rampart
WASMTIME="$(bash scripts/install-wasmtime-cli.sh)"
rm -rf "$OUT_DIR" && mkdir -p "$OUT_DIR"

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
FN_DIR="$CARGO_TARGET_DIR/wasm-functions"
CARGO_TARGET_DIR="$FN_DIR" cargo build --release --locked --target wasm32-wasip2 \
    --manifest-path examples/functions/Cargo.toml >&2
HELLO="$OUT_DIR/hello.wasm"
cp "$FN_DIR/wasm32-wasip2/release/fn_hello.wasm" "$HELLO"

LISTEN=25520 ADMIN=25521 WT=25522
for p in $LISTEN $ADMIN $WT 2379 2380 8081 18000 18001; do check_port_free "$p"; done
cat >"$OUT_DIR/rampart.yaml" <<YAML
workers: $WORKERS
access_log: { format: off }
admin: { address: "127.0.0.1:$ADMIN" }
listeners: [{ name: main, address: "127.0.0.1:$LISTEN", route_table: main }]
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes: [{ match: { path: { prefix: / } }, forward: { cluster: demo } }]
clusters: [{ name: demo, endpoints: ["127.0.0.1:8081"] }]
YAML

UP_PID=""
start_up() {
    RUST_LOG=warn "$RAMPART_BIN" up --config "$OUT_DIR/rampart.yaml" --data-dir "$OUT_DIR/data/kv" \
        --policy-dir "$OUT_DIR/data/policy" --flows-listen off "$@" >>"$OUT_DIR/up.log" 2>&1 &
    UP_PID=$!
    STARTED_PIDS+=("$UP_PID")
    wait_ready "rampart up" "$UP_PID" "http://127.0.0.1:$ADMIN/ready" "$OUT_DIR/up.log"
}
# Waits (up to 20 s) until /hello is answered by the function.
await_hello() {
    local got=""
    for _ in $(seq 1 200); do
        got="$(curl -sS --max-time 2 "http://127.0.0.1:$LISTEN/hello" 2>&1 || true)"
        [[ "$got" == hello* ]] && return 0
        sleep 0.1
    done
    die "hello does not answer through the gateway; last answer: $got"
}
deploy() {
    "$RAMPART_BIN" fn deploy hello "$HELLO" --route /hello --allow-unsigned "$@" | sed -n 's/.* version \([0-9a-f]*\) .*/\1/p'
}

cat >"$OUT_DIR/timed.py" <<'PY'
# Timed requests on one kept-alive connection. Modes:
#   cold N                      N GETs of /hello, each timed (the gateway evicts after each)
#   deploys N RAMPART ADMIN     N times: redeploy (new env value), wait for the version, time one GET
import http.client, json, subprocess, sys, time

def get(conn, path):
    t = time.perf_counter_ns()
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    took = time.perf_counter_ns() - t
    if r.status != 200 or not body.startswith(b"hello"):
        sys.exit(f"unexpected answer {r.status} {body[:80]!r}")
    return took

def version(admin):
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
    c.request("GET", "/functions/hello")
    r = c.getresponse()
    body = r.read()
    c.close()
    return json.loads(body).get("version") if r.status == 200 else None

mode, n = sys.argv[1], int(sys.argv[2])
listen = int(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
times = []
if mode == "cold":
    for _ in range(n):
        times.append(get(conn, "/hello"))
else:
    rampart, admin, wasm = sys.argv[4], int(sys.argv[5]), sys.argv[6]
    for i in range(n):
        out = subprocess.run([rampart, "fn", "deploy", "hello", wasm, "--route", "/hello",
                              "--allow-unsigned", "--env", f"GENERATION={i}"],
                             check=True, capture_output=True, text=True).stdout
        want = out.split(" version ")[1].split()[0]
        deadline = time.time() + 20
        while version(admin) != want:
            if time.time() > deadline:
                sys.exit(f"version {want} never ran")
            time.sleep(0.005)
        times.append(get(conn, "/hello"))
times.sort()
q = lambda p: times[min(len(times) - 1, int(p * len(times)))] / 1000
print(f"n={len(times)} p50_us={q(0.50):.0f} p99_us={q(0.99):.0f} max_us={times[-1] / 1000:.0f}")
PY

# A histogram's mean from the gateway's /metrics: SERIES_sum / SERIES_count.
metric_mean_us() {
    curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk -v s="$1" '
        index($0, s "_sum{") == 1 || index($0, s "_sum ") == 1 { if ($0 ~ /kind="'"$2"'"/) sum = $NF }
        index($0, s "_count{") == 1 { if ($0 ~ /kind="'"$2"'"/) cnt = $NF }
        END { if (cnt > 0) printf "%.0f", sum / cnt * 1e6; else print "n/a" }'
}

# --- 1 and 3: one `up` with the default idle timeout --------------------------------------------
start_up
deploy >/dev/null
await_hello
log "first request after deploy, $DEPLOYS deploys"
AFTER_DEPLOY="$(python3 "$OUT_DIR/timed.py" deploys "$DEPLOYS" "$LISTEN" "$RAMPART_BIN" "$ADMIN" "$HELLO")"
log "after deploy: $AFTER_DEPLOY"
WARM_START_US="$(metric_mean_us rampart_fn_start_seconds warm)"

"$WASMTIME" serve --addr "127.0.0.1:$WT" -Scli "$HELLO" >"$OUT_DIR/wasmtime.log" 2>&1 &
WT_PID=$!
STARTED_PIDS+=("$WT_PID")
wait_ready "wasmtime serve" "$WT_PID" "http://127.0.0.1:$WT/hello" "$OUT_DIR/wasmtime.log"
declare -A RPS P99
for r in $(seq 1 "$ROUNDS"); do
    for who in rampart wasmtime; do
        port=$LISTEN; [[ $who == wasmtime ]] && port=$WT
        url="http://127.0.0.1:$port/hello"
        run_wrk "$CONNS" "$WARMUP" "$url" "$OUT_DIR/wrk-$who-$r-warmup.txt"
        run_wrk "$CONNS" "$DURATION" "$url" "$OUT_DIR/wrk-$who-$r.txt"
        read_wrk_results "$who,$r" "$OUT_DIR/wrk-$who-$r.txt"
        RPS[$who]+="${R[$who,$r,RPS]} "
        P99[$who]+="${R[$who,$r,P99_MS]} "
        log "round $r $who: ${R[$who,$r,RPS]} req/s, p99 ${R[$who,$r,P99_MS]} ms, errors ${R[$who,$r,ERRORS]}"
        [[ "${R[$who,$r,ERRORS]}" == 0 ]] || die "$who answered errors"
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
RPS_R="$(echo "${RPS[rampart]}" | median)"; RPS_W="$(echo "${RPS[wasmtime]}" | median)"
P99_R="$(echo "${P99[rampart]}" | median)"; P99_W="$(echo "${P99[wasmtime]}" | median)"
stop_pid "$WT_PID"
stop_pid "$UP_PID"

# --- 2: `up` with --fn-idle-timeout 0s: every request a cold start -------------------------------
start_up --fn-idle-timeout 0s
await_hello
log "first request after idle eviction, $COLD requests"
AFTER_IDLE="$(python3 "$OUT_DIR/timed.py" cold "$COLD" "$LISTEN")"
log "after idle eviction: $AFTER_IDLE"
COLD_START_US="$(metric_mean_us rampart_fn_start_seconds cold)"
COLD_STARTS="$(curl -fsS "http://127.0.0.1:$ADMIN/functions/hello" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cold_starts"])')"
stop_pid "$UP_PID"

field() { sed -n "s/.*$1=\([0-9]*\).*/\1/p" <<<"$2"; }
DEPLOY_P99="$(field p99_us "$AFTER_DEPLOY")"; IDLE_P99="$(field p99_us "$AFTER_IDLE")"
TABLE="| start | n | p50 µs | p99 µs | max µs | gateway's mean instance-ready time |
|---|---:|---:|---:|---:|---:|
| first request after deploy | $(field n "$AFTER_DEPLOY") | $(field p50_us "$AFTER_DEPLOY") | $DEPLOY_P99 | $(field max_us "$AFTER_DEPLOY") | ${WARM_START_US} µs (warm) |
| first request after idle eviction | $(field n "$AFTER_IDLE") | $(field p50_us "$AFTER_IDLE") | $IDLE_P99 | $(field max_us "$AFTER_IDLE") | ${COLD_START_US} µs (cold; $COLD_STARTS cold starts counted) |

Cold start p99 (whole request through the gateway, after idle eviction): **${IDLE_P99} µs** (goal ≤ 1000 µs: $(met_if "$IDLE_P99" '<=' 1000)); after deploy: **${DEPLOY_P99} µs** ($(met_if "$DEPLOY_P99" '<=' 1000)).

| server | req/s (median of $ROUNDS) | p99 ms (median) |
|---|---:|---:|
| Rampart gateway → hello | $RPS_R | $P99_R |
| wasmtime serve → hello | $RPS_W | $P99_W |

Throughput ratio Rampart / wasmtime serve: **$(ratio "$RPS_R" "$RPS_W")** (goal ≥ 1.0: $(ratio_verdict "$RPS_R" "$RPS_W" '>=' 1.0)); p99: Rampart ${P99_R} ms vs ${P99_W} ms."
echo "$TABLE"

section="<!-- functions:begin -->
## Functions (wasi:http components)

- Command: \`bash bench/functions.sh\` (BENCH_DURATION=$DURATION, BENCH_CONNS=$CONNS, BENCH_WORKERS=$WORKERS, BENCH_ROUNDS=$ROUNDS, BENCH_COLD=$COLD, BENCH_DEPLOYS=$DEPLOYS)
- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(machine_line); revision $(repo_revision)
- Rampart: ${RAMPART_VERSION}, \`rampart up\` (store, control plane, gateway in one process; access log off); wasmtime serve: $("$WASMTIME" --version) (\`scripts/install-wasmtime-cli.sh\`), its defaults (a fresh instance per request); the component: \`examples/functions/hello\` (wasm32-wasip2, $(stat -c %s "$HELLO") bytes); wrk \`-t2 --latency -s bench/latency.lua\` after a ${WARMUP} s warm-up, rounds alternating; wrk, the servers and the timing client on the same 2 cores.

$TABLE
<!-- functions:end -->"
write_doc_section functions "$section"
