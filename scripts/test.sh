#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine or a warm one.
# Installs what the tests need, then: rustfmt check, clippy -D warnings, every test.
# CI runs this same script (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# A build cache outside the clone, so repeated runs (and CI on this machine) reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"
mkdir -p "$CARGO_TARGET_DIR"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Incremental state only pays off while editing; for a whole-suite run it is tens of GB of
# disk (it filled this machine's disk once) for no speed-up.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

section() { printf '\n==> %s\n' "$*"; }

# Debian packages the tests and build scripts use: a C compiler (mimalloc, ring); iproute2,
# iptables, curl and util-linux (runuser) for the sidecar's interception test in a network
# namespace; etcd-client (etcdctl) for the store's compatibility test; clang (with
# llvm-strip), libbpf-dev (BPF headers) and bpftool to compile the eBPF flow tracer's C and
# check it against the committed objects (building does not need them: aya loads the
# committed objects); python3 for the module-cycle check, and python3-venv for the
# independent xDS client's virtualenv; Chromium (and a font for its screenshots) for the
# dashboard's browser test.
packages=(python3 python3-venv gcc make pkg-config iproute2 iptables curl util-linux etcd-client clang bpftool libbpf-dev chromium fonts-dejavu-core)
# Node.js and npm drive Chromium through Playwright; a machine with another Node.js (e.g.
# NodeSource's, which bundles npm) keeps it.
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    section "apt-get install ${missing[*]}"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "missing packages ${missing[*]} and not root: install them first" >&2
        exit 1
    fi
fi

# The eBPF tests attach to tracepoints, which need tracefs.
if [[ $(id -u) -eq 0 ]] && ! mountpoint -q /sys/kernel/tracing; then
    section "mount -t tracefs tracefs /sys/kernel/tracing"
    mount -t tracefs tracefs /sys/kernel/tracing
fi

# Flow labels shared between processes are BPF maps pinned in bpffs (systemd mounts it;
# a bare container may not).
if [[ $(id -u) -eq 0 ]] && ! mountpoint -q /sys/fs/bpf; then
    section "mount -t bpf bpf /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
fi

# Clients Rampart did not write, in a virtualenv beside the build cache (PyPI wheels; reused
# across runs): an xDS client (scripts/xds_client.py) on Python's gRPC and protoc,
# schemathesis, which fuzzes an imported OpenAPI spec through the gateway, and
# kubernetes-validate.
venv=/var/cache/rampart/venv
if ! "$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
    section "python venv with grpcio and grpcio-tools ($venv)"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q grpcio==1.85.4 grpcio-tools==1.85.4
fi
if [[ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != *4.32.5* ]]; then
    section "schemathesis 4.32.5 in $venv"
    "$venv/bin/pip" install -q schemathesis==4.32.5
fi
# kubernetes-validate checks the operator's generated CRDs against Kubernetes' own schemas
# (bundled in the wheel; no cluster needed).
if [[ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" != *1.33.1* ]]; then
    section "kubernetes-validate 1.33.1 in $venv"
    "$venv/bin/pip" install -q kubernetes-validate==1.33.1
fi
# playwright-core (no bundled browsers: it drives Debian's Chromium) and axe-core for the
# dashboard's browser test, from npm, beside the build cache.
node_dir=/var/cache/rampart/node
playwright_version=1.65.2
axe_version=4.14.1
installed() { node -p "require('$node_dir/node_modules/$1/package.json').version" 2>/dev/null; }
if [[ "$(installed playwright-core)" != "$playwright_version" || "$(installed axe-core)" != "$axe_version" ]]; then
    section "npm install playwright-core@$playwright_version axe-core@$axe_version ($node_dir)"
    mkdir -p "$node_dir"
    npm install --prefix "$node_dir" --no-audit --no-fund --silent \
        "playwright-core@$playwright_version" "axe-core@$axe_version"
fi
export RAMPART_NODE_MODULES="$node_dir/node_modules"
export RAMPART_CHROMIUM=/usr/bin/chromium

export RAMPART_PYTHON="$venv/bin/python"
export RAMPART_SCHEMATHESIS="$venv/bin/schemathesis"
export RAMPART_KUBE_VALIDATE="$venv/bin/kubernetes-validate"

for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done
# The WASM tests build their guests from Rust sources (crates/rampart-wasm/guests) for WASI
# preview 1 (core modules) and preview 2 (components).
for t in wasm32-wasip1 wasm32-wasip2; do
    rustup target list --installed 2>/dev/null | grep -qx "$t" || rustup target add "$t"
done

# `wasmtime serve` for the functions' parity test (a Rampart-served component must answer as
# wasmtime's own host answers).
RAMPART_WASMTIME="$(bash scripts/install-wasmtime-cli.sh)"
export RAMPART_WASMTIME

section "cargo fmt --check"
cargo fmt --all -- --check

section "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
# The small sidecar build (no default features) must stay warning-free too.
cargo clippy -p rampart --no-default-features --locked -- -D warnings

section "no module import cycles"
python3 scripts/modcycles.py crates/*/src examples/filters/*/src

section "shell scripts parse"
for s in scripts/*.sh bench/*.sh .ci/run; do bash -n "$s"; done

section "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-features --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one per test binary). A test that could
# not run its real check says `*** SKIPPED` (outside CI; in CI, `CI=true`, it fails instead).
awk '/^test result:/ { p += $4; f += $6 } /\*\*\* SKIPPED/ { s += 1 }
     END { printf "\ntotal: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
