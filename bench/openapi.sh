#!/usr/bin/env bash
# OpenAPI validation cost at the gateway, and import time for a large spec.
#
#  1. One `rampart serve` (access log off), the built-in demo upstream (which echoes POST
#     bodies under /echo), two routes side by side: POST /echo/orders through the `openapi`
#     filter (createOrder of crates/rampart-openapi/tests/specs/shop.yaml: the body held,
#     parsed and checked against JSON Schema 2020-12 with formats, then sent on) and POST
#     /echo/plain without it; the same valid 1 KiB JSON body to both (bench/openapi-post.lua),
#     wrk at BENCH_CONNS connections, BENCH_ROUNDS alternating rounds, medians reported.
#  2. A generated 500-operation spec (parameters, a body schema per operation, shared
#     components): `rampart openapi lint` (load, check, compile every validator),
#     `rampart openapi import` into a fresh `rampart kv serve` and `rampart openapi codegen`,
#     each timed BENCH_REPEAT times.
# Writes docs/BENCHMARKS.md between `<!-- openapi:begin -->` / `<!-- openapi:end -->`.
#
# Usage:  bash bench/openapi.sh
# Environment:
#   BENCH_DURATION=10 BENCH_WARMUP=2 BENCH_CONNS=64 BENCH_WORKERS=2 BENCH_ROUNDS=3 BENCH_REPEAT=5
#   RAMPART_BIN=path              use this rampart binary, skip the cargo build
#   BENCH_DOC=docs/BENCHMARKS.md  where to write the results
set -euo pipefail
umask 022

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
OUT_DIR="$REPO_ROOT/bench/out/openapi"
BENCH_TAG="openapi"
READY_TIMEOUT=30
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
CONNS="${BENCH_CONNS:-64}"
WORKERS="${BENCH_WORKERS:-2}"
ROUNDS="${BENCH_ROUNDS:-3}"
REPEAT="${BENCH_REPEAT:-5}"
DOC="${BENCH_DOC:-docs/BENCHMARKS.md}"
LUA_SCRIPT="bench/openapi-post.lua"

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_install_traps
ensure_tools wrk:wrk curl:curl python3:python3
check_idle
build_rampart
rm -rf "$OUT_DIR" && mkdir -p "$OUT_DIR"
SPEC="$REPO_ROOT/crates/rampart-openapi/tests/specs/shop.yaml"

export BENCH_BODY_FILE="$OUT_DIR/order.json"
python3 - "$BENCH_BODY_FILE" <<'PY'
import json, sys
lines = [{"sku": "ABC-%03d" % i, "qty": i + 1} for i in range(34)]
body = {"customer": "buyer@shop.example", "placed": "2026-12-07T10:00:00Z", "note": "bench",
        "lines": lines, "source": "web"}
open(sys.argv[1], "w").write(json.dumps(body, separators=(",", ":")))
PY
BODY_BYTES="$(stat -c %s "$BENCH_BODY_FILE")"

LISTEN=25530 ADMIN=25531 UPSTREAM=25532 KV=25533 KV_PEER=25534
for p in $LISTEN $ADMIN $UPSTREAM $KV $KV_PEER; do check_port_free "$p"; done
"$RAMPART_BIN" demo-upstream --listen "127.0.0.1:$UPSTREAM" >"$OUT_DIR/upstream.log" 2>&1 &
STARTED_PIDS+=("$!")
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
        routes:
          - match: { path: { template: /echo/orders }, methods: [POST] }
            forward: { cluster: up }
            filters:
              - openapi: { spec: "$SPEC", operation: createOrder, base_path: /echo }
          - match: { path: { exact: /echo/plain }, methods: [POST] }
            forward: { cluster: up }
clusters: [{ name: up, endpoints: ["127.0.0.1:$UPSTREAM"] }]
YAML
RUST_LOG=warn "$RAMPART_BIN" serve --config "$OUT_DIR/rampart.yaml" --watch-interval 0s >"$OUT_DIR/serve.log" 2>&1 &
SERVE_PID=$!
STARTED_PIDS+=("$SERVE_PID")
wait_ready "rampart serve" "$SERVE_PID" "http://127.0.0.1:$ADMIN/ready" "$OUT_DIR/serve.log"
for route in orders plain; do
    got="$(curl -sS -X POST -H 'content-type: application/json' -H 'x-api-key: bench' --data-binary "@$BENCH_BODY_FILE" "http://127.0.0.1:$LISTEN/echo/$route")"
    [[ "$got" == "$(cat "$BENCH_BODY_FILE")" ]] || die "POST /echo/$route did not come back whole: $got"
done
code="$(curl -sS -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' -H 'x-api-key: bench' -d '{"lines":[]}' "http://127.0.0.1:$LISTEN/echo/orders")"
[[ "$code" == 400 ]] || die "an invalid order got $code, not 400"

declare -A RPS P99
for r in $(seq 1 "$ROUNDS"); do
    for route in plain orders; do
        url="http://127.0.0.1:$LISTEN/echo/$route"
        run_wrk "$CONNS" "$WARMUP" "$url" "$OUT_DIR/wrk-$route-$r-warmup.txt"
        run_wrk "$CONNS" "$DURATION" "$url" "$OUT_DIR/wrk-$route-$r.txt"
        read_wrk_results "$route,$r" "$OUT_DIR/wrk-$route-$r.txt"
        [[ "${R[$route,$r,ERRORS]}" == 0 ]] || die "/echo/$route answered errors"
        RPS[$route]+="${R[$route,$r,RPS]} "
        P99[$route]+="${R[$route,$r,P99_MS]} "
        log "round $r /echo/$route: ${R[$route,$r,RPS]} req/s, p99 ${R[$route,$r,P99_MS]} ms"
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
RPS_V="$(echo "${RPS[orders]}" | median)"; RPS_P="$(echo "${RPS[plain]}" | median)"
P99_V="$(echo "${P99[orders]}" | median)"; P99_P="$(echo "${P99[plain]}" | median)"
stop_pid "$SERVE_PID"

# --- a 500-operation spec: lint and import times ---------------------------------------------
BIG="$OUT_DIR/big.yaml"
python3 - "$BIG" <<'PY'
import sys
out = ["openapi: 3.1.0", "info: { title: Big, version: '1' }", "paths:"]
for i in range(250):
    out += [f"  /things{i}/{{id}}:",
            "    parameters: [{ name: id, in: path, required: true, schema: { type: integer, minimum: 1 } }]",
            f"    get: {{ operationId: get{i}, parameters: [{{ name: fields, in: query, explode: false, schema: {{ type: array, items: {{ type: string }} }} }}], responses: {{ '200': {{ description: ok }} }} }}",
            f"    put: {{ operationId: put{i}, requestBody: {{ required: true, content: {{ application/json: {{ schema: {{ $ref: '#/components/schemas/Thing{i}' }} }} }} }}, responses: {{ '200': {{ description: ok }} }} }}"]
out += ["components:", "  schemas:",
        "    Base: { type: object, properties: { id: { type: integer }, created: { type: string, format: date-time } } }"]
for i in range(250):
    out.append(f"    Thing{i}: {{ allOf: [{{ $ref: '#/components/schemas/Base' }}], properties: {{ name: {{ type: string, maxLength: 64 }}, tags: {{ type: array, items: {{ type: string }} }}, size: {{ type: [integer, 'null'], minimum: 0 }} }}, required: [name], unevaluatedProperties: false }}")
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
"$RAMPART_BIN" kv serve --data-dir "$OUT_DIR/kv" --listen-client-urls "http://127.0.0.1:$KV" \
    --listen-peer-urls "http://127.0.0.1:$KV_PEER" >"$OUT_DIR/kv.log" 2>&1 &
STARTED_PIDS+=("$!")
cat >"$OUT_DIR/desired.yaml" <<YAML
kind: Listener
name: main
address: "127.0.0.1:0"
route_table: main
---
kind: RouteTable
name: main
virtual_hosts: [{ name: all, domains: ["*"], routes: [{ match: { path: { prefix: / } }, direct_response: { status: 404 } }] }]
---
kind: Cluster
name: things
endpoints: ["127.0.0.1:9"]
YAML
for _ in $(seq 1 100); do
    "$RAMPART_BIN" apply -f "$OUT_DIR/desired.yaml" --endpoints "127.0.0.1:$KV" >/dev/null 2>&1 && break
    sleep 0.2
done
"$RAMPART_BIN" openapi lint "$BIG" >/dev/null
timed_ms() { local t0 t1; t0="$(date +%s%N)"; "$@" >/dev/null; t1="$(date +%s%N)"; echo $(( (t1 - t0) / 1000000 )); }
LINT_MS=() IMPORT_MS=() CODEGEN_MS=()
for i in $(seq 1 "$REPEAT"); do
    LINT_MS+=("$(timed_ms "$RAMPART_BIN" openapi lint "$BIG")")
    CODEGEN_MS+=("$(timed_ms "$RAMPART_BIN" openapi codegen "$BIG" --out "$OUT_DIR/big-crate" --server --client)")
    # Each import changes the routes (another base path), so each one writes.
    IMPORT_MS+=("$(timed_ms "$RAMPART_BIN" openapi import "$BIG" --cluster things --base-path "/v$i" --endpoints "127.0.0.1:$KV")")
done
LINT_MED="$(echo "${LINT_MS[*]}" | median)"; IMPORT_MED="$(echo "${IMPORT_MS[*]}" | median)"
CODEGEN_MED="$(echo "${CODEGEN_MS[*]}" | median)"
GEN_LINES="$(cat "$OUT_DIR"/big-crate/src/*.rs | wc -l)"
log "500 operations: lint ${LINT_MS[*]} ms, import ${IMPORT_MS[*]} ms, codegen ${CODEGEN_MS[*]} ms"

TABLE="| route (POST, ${BODY_BYTES}-byte JSON body) | req/s (median of $ROUNDS) | p99 ms (median) |
|---|---:|---:|
| /echo/plain (no validation) | $RPS_P | $P99_P |
| /echo/orders (\`openapi\` filter: createOrder) | $RPS_V | $P99_V |

Req/s with validation / without: **$(ratio "$RPS_V" "$RPS_P")** (goal ≥ 0.9: $(ratio_verdict "$RPS_V" "$RPS_P" '>=' 0.9)); p99 ${P99_V} ms vs ${P99_P} ms.

| 500-operation spec (250 paths, 250 body schemas) | median of $REPEAT |
|---|---:|
| \`rampart openapi lint\` (load, check, compile every validator) | ${LINT_MED} ms |
| \`rampart openapi import\` (the above, then one guarded store transaction) | ${IMPORT_MED} ms |
| \`rampart openapi codegen --server --client\` (${GEN_LINES} lines of Rust; compiling them is not timed) | ${CODEGEN_MED} ms |"
echo "$TABLE"

section="<!-- openapi:begin -->
## OpenAPI validation at the gateway

- Command: \`bash bench/openapi.sh\` (BENCH_DURATION=$DURATION, BENCH_CONNS=$CONNS, BENCH_WORKERS=$WORKERS, BENCH_ROUNDS=$ROUNDS, BENCH_REPEAT=$REPEAT)
- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(machine_line); revision $(repo_revision)
- Rampart: ${RAMPART_VERSION}; one \`rampart serve\` (access log off), the built-in demo upstream echoing the body; wrk \`-t2 --latency -s bench/openapi-post.lua\` after a ${WARMUP} s warm-up, rounds alternating; wrk, Rampart and the upstream on the same 2 cores.

$TABLE
<!-- openapi:end -->"
write_doc_section openapi "$section"
