#!/usr/bin/env bash
# OpenAPI on a large real-world spec, as a new user would try it: GitHub's REST API
# description (npm package @octokit/openapi: 1200+ operations, ~1000 schemas, OpenAPI 3.0.3,
# upgraded to 3.1 on load) linted, then generated as a crate with server and client, which
# must build with warnings denied and pass its own tests (the spec's examples read and written
# back; the axum router built with every route). Not part of scripts/test.sh: it downloads
# ~30 MB and compiles ~150k lines (about 6 minutes on 2 cores).
#
# Usage: bash scripts/openapi-real-world.sh [RAMPART_BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rampart/target}"
bin="${1:-}"
if [[ -z "$bin" ]]; then
    cargo build -p rampart
    bin="$CARGO_TARGET_DIR/debug/rampart"
fi
work="$(mktemp -d /tmp/openapi-real-world.XXXXXX)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent @octokit/openapi >/dev/null && tar xzf octokit-openapi-*.tgz)
spec="$work/package/generated/api.github.com.json"
echo "== lint"
"$bin" openapi lint "$spec"
echo "== codegen"
"$bin" openapi codegen "$spec" --out "$work/github-api" --server --client --name github-api
wc -l "$work"/github-api/src/*.rs | tail -1
echo "== cargo test (warnings denied)"
CARGO_TARGET_DIR="$CARGO_TARGET_DIR/openapi-codegen" RUSTFLAGS="-D warnings" \
    cargo test --manifest-path "$work/github-api/Cargo.toml" 2>&1 | grep -E '^(test result|error|warning)'
