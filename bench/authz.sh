#!/usr/bin/env bash
# The gateway with and without the authz filter (Rego RBAC policy of tenant acme, on
# regorus' interpreter, and on its VM), in one rampart process, in one run.
#
#   wrk ──► rampart :18093  no filter           ─┐
#   wrk ──► rampart :18094  authz (interpreter)  ─┼─► nginx upstream :18091 (1024-byte body)
#   wrk ──► rampart :18095  authz (VM, 2nd proc) ─┘
#
# Every request carries x-tenant: acme and x-user: vera (a viewer) and asks GET
# /api/orders/42?page=2, which the policy allows; the upstream must see the policy's
# x-roles header. For each listener: warm-up, then a measured `wrk -t2 -c$CONNS`.
# Prints req/s, p50/p99 and the with/without ratios; writes them into docs/BENCHMARKS.md
# between `<!-- authz:begin -->` / `<!-- authz:end -->`.
#
# Usage:  bash bench/authz.sh
# Environment: BENCH_DURATION=10  BENCH_WARMUP=2  BENCH_CONNS=64  RAMPART_BIN=path
#              BENCH_DOC=docs/BENCHMARKS.md
set -euo pipefail
umask 022

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
OUT_DIR="$REPO_ROOT/bench/out/authz"
BENCH_TAG="authz-bench"
LUA_SCRIPT="bench/authz.lua"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
CONNS="${BENCH_CONNS:-64}"
READY_TIMEOUT=30
BODY_BYTES=1024
DOC="${BENCH_DOC:-docs/BENCHMARKS.md}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"
UPSTREAM_PORT=18091
declare -A PORT=([plain]=18093 [authz]=18094 [authz-vm]=18095)
declare -A ADMIN=([interp]=19911 [vm]=19912)
declare -A R

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_install_traps

ensure_tools nginx:nginx wrk:wrk curl:curl
raise_nofile
build_rampart
check_idle
rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR"
for p in "$UPSTREAM_PORT" "${PORT[@]}" "${ADMIN[@]}"; do check_port_free "$p"; done

# Config for one rampart process: $1 = engine (interp|vm). The interpreter process serves
# both the plain listener and the authz one, so they share workers and the same binary.
write_config() {
    local engine="$1" vm=false listeners
    [[ "$engine" == vm ]] && vm=true
    if [[ "$engine" == interp ]]; then
        listeners="  - { name: plain, address: 127.0.0.1:${PORT[plain]}, route_table: main }
  - name: authz
    address: 127.0.0.1:${PORT[authz]}
    route_table: main
    filters: [ { authz: { tenant_from: \"header:x-tenant\" } } ]"
    else
        listeners="  - name: authz
    address: 127.0.0.1:${PORT[authz-vm]}
    route_table: main
    filters: [ { authz: { tenant_from: \"header:x-tenant\" } } ]"
    fi
    cat >"$OUT_DIR/rampart-$engine.yaml" <<EOF
# Written by bench/authz.sh; overwritten on every run.
workers: 2
admin: { address: 127.0.0.1:${ADMIN[$engine]} }
access_log: { format: "off" }
policy: { bundles_dir: "$REPO_ROOT/examples/policy/tenants", vm: $vm }
listeners:
$listeners
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: { path: { prefix: / } }
            forward: { cluster: upstream }
clusters:
  - name: upstream
    endpoints: ["127.0.0.1:$UPSTREAM_PORT"]
EOF
}

start_rampart() {
    local engine="$1" logfile="$OUT_DIR/rampart-$1.log" pid
    write_config "$engine"
    "$RAMPART_BIN" serve --config "$OUT_DIR/rampart-$engine.yaml" >"$logfile" 2>&1 &
    pid=$!
    STARTED_PIDS+=("$pid")
    wait_ready "rampart ($engine)" "$pid" "http://127.0.0.1:${ADMIN[$engine]}/ready" "$logfile"
    log "rampart ($engine) ready (pid $pid)"
}

# The policy must allow and its header must reach the upstream... which serves a static
# file, so check the decision through a denied request instead: a POST by a viewer is 403.
check_listener() {
    local name="$1" port="${PORT[$1]}" code
    code="$(curl -s -o /dev/null -w '%{http_code}' -H 'x-tenant: acme' -H 'x-user: vera' "http://127.0.0.1:$port/api/orders/42")"
    [[ "$code" == 200 ]] || die "$name: GET as vera gave $code, expected 200"
    if [[ "$name" != plain ]]; then
        code="$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'x-tenant: acme' -H 'x-user: vera' "http://127.0.0.1:$port/api/orders")"
        [[ "$code" == 403 ]] || die "$name: POST as vera gave $code, expected 403 (is the policy deciding?)"
    fi
}

measure() {
    local name="$1" url="http://127.0.0.1:${PORT[$1]}/" out="$OUT_DIR/wrk-$1.txt"
    check_listener "$name"
    log "$name: warm-up ${WARMUP}s"
    run_wrk "$CONNS" "$WARMUP" "$url" "$OUT_DIR/wrk-$name-warmup.txt"
    log "$name: measuring ${DURATION}s at $CONNS connections"
    run_wrk "$CONNS" "$DURATION" "$url" "$out"
    read_wrk_results "$name" "$out"
    [[ "${R[$name,ERRORS]}" == 0 ]] || die "$name: ${R[$name,ERRORS]} errors (non-2xx or socket errors)"
    log "$name: ${R[$name,RPS]} req/s, p50 ${R[$name,P50_MS]} ms, p99 ${R[$name,P99_MS]} ms"
}

table() {
    printf '| listener | req/s | p50 ms | p99 ms | req/s ratio to no filter |\n|---|---|---|---|---|\n'
    for name in plain authz authz-vm; do
        printf '| %s | %s | %s | %s | %s |\n' "$name" "${R[$name,RPS]}" "${R[$name,P50_MS]}" \
            "${R[$name,P99_MS]}" "$(ratio "${R[$name,RPS]}" "${R[plain,RPS]}")"
    done
}

start_static_nginx nginx-upstream "$UPSTREAM_PORT"
start_rampart interp
start_rampart vm
for name in plain authz authz-vm; do measure "$name"; done

TABLE="$(table)"
VERDICT="$(ratio_verdict "${R[authz,RPS]}" "${R[plain,RPS]}" ">=" 0.9)"
VM_VERDICT="$(ratio_verdict "${R[authz-vm,RPS]}" "${R[plain,RPS]}" ">=" 0.9)"
printf '\n%s\n\nauthz (default: VM) req/s ratio %s: target >= 0.9 %s\n' "$TABLE" \
    "$(ratio "${R[authz-vm,RPS]}" "${R[plain,RPS]}")" "$VM_VERDICT"

write_doc_section authz "<!-- authz:begin -->
## Gateway with and without the authz filter

\`bash bench/authz.sh\` ($(date -u +%Y-%m-%d), $(machine_line); rampart $(repo_revision); wrk -t2 -c$CONNS -d${DURATION}s, upstream nginx static 1 KiB):
one rampart process serves \`plain\` (no filter) and \`authz\` (tenant acme's RBAC policy on
regorus' interpreter: \`policy.vm: false\`); a second process serves \`authz-vm\` (\`policy.vm: true\`,
the default: acme's bundle passes the VM equivalence checks, so it decides on the VM).
Every request is allowed by the policy (GET /api/orders/42 as a viewer).

$TABLE

Target: req/s with authz ≥ 0.9 × without: **$VM_VERDICT** with the default (VM),
**$VERDICT** on the interpreter.
<!-- authz:end -->"
log "results written to $DOC"
