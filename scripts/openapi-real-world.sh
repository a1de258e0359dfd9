#!/usr/bin/env bash
# OpenAPI on real-world specs, as a new user would try them:
#  1. GitHub's REST API description (npm package @octokit/openapi: 1200+ operations, ~1000
#     schemas, OpenAPI 3.0.3, upgraded to 3.1 on load);
#  2. the OpenAPI 3.1 specs of npm's @readme/oas-examples (ReadMe's own API, 54 operations;
#     Bump.sh's train-travel; petstore; schema-types; security; ...). Three of them are not
#     valid 3.1 (a '#' inside a path key; 3.0's boolean exclusiveMinimum in a 3.1 spec):
#     lint names file, line and pointer, and they are skipped.
# Each is linted, then generated as a crate with server and client, which must build with
# warnings denied and pass its own tests (the spec's examples read and written back; the axum
# router built with every route). Not part of scripts/test.sh: it downloads ~35 MB and
# compiles ~170k lines (about 8 minutes on 2 cores).
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

echo "== @readme/oas-examples, OpenAPI 3.1"
(cd "$work" && npm pack --silent @readme/oas-examples >/dev/null && tar xzf readme-oas-examples-*.tgz)
for spec31 in "$work"/package/3.1/json/*.json; do
    name="$(basename "$spec31" .json)"
    if ! "$bin" openapi lint "$spec31"; then
        echo "   ($name is not valid 3.1: skipped)"
        continue
    fi
    "$bin" openapi codegen "$spec31" --out "$work/gen-$name" --server --client >/dev/null
    CARGO_TARGET_DIR="$CARGO_TARGET_DIR/openapi-codegen" RUSTFLAGS="-D warnings" \
        cargo test --manifest-path "$work/gen-$name/Cargo.toml" 2>&1 | grep -E '^(test result|error|warning)'
done

