#!/usr/bin/env bash
# `wasmtime serve`, the reference wasi:http host that the functions' parity test
# (crates/rampart/tests/functions.rs) and bench/functions.sh compare Rampart with: wasmtime-cli
# from crates.io at the wasmtime version Rampart embeds, with only the features `serve` needs
# (a cold install takes ~10 minutes on 2 cores instead of ~20). Does nothing when that version
# is installed already. Prints the binary's path.
set -euo pipefail
VERSION=48.0.8
FEATURES=serve,run,cranelift,pooling-allocator,parallel-compilation,component-model,component-model-async,clap/default
bin="${CARGO_HOME:-$HOME/.cargo}/bin/wasmtime"
if [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -qx "wasmtime $VERSION.*" \
    && "$bin" serve --help >/dev/null 2>&1; then
    echo "$bin"
    exit 0
fi
echo "installing wasmtime-cli $VERSION (features $FEATURES)" >&2
cargo install --locked --force "wasmtime-cli@$VERSION" --no-default-features --features "$FEATURES" >&2
echo "$bin"
