#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run): lints, unit tests on the host and on wasm32,
# release builds, `envoy --mode validate` of every shipped config, a fuzz smoke run, then the end-to-end tests
# (real Envoy + flowgate.wasm + the reference executor). Stops at the first failing step.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$root/.tools/bin:$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { echo "==> $*"; }

step "setup (scripts/setup.sh --test)"
scripts/setup.sh --test

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --quiet --workspace --all-targets -- -D warnings

step "cargo clippy -p flowgate --target wasm32-wasip1 -- -D warnings"
cargo clippy --quiet -p flowgate --target wasm32-wasip1 -- -D warnings

step "unit tests (host): cargo test --workspace --exclude flowgate-e2e"
cargo test --workspace --exclude flowgate-e2e

step "docs/config.schema.json is fresh: cargo test -p flowgate --features schema --test schema"
cargo clippy --quiet -p flowgate --all-targets --features schema -- -D warnings
cargo test -p flowgate --features schema --test schema

step "unit tests (wasm32-wasip1, the shipped target, under Node's WASI): cargo test -p flowgate --target wasm32-wasip1"
CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings $root/scripts/wasi-run.mjs" \
  cargo test -p flowgate --target wasm32-wasip1

step "build the filter: cargo build --release --target wasm32-wasip1 -p flowgate"
cargo build --quiet --release --target wasm32-wasip1 -p flowgate
ls -l target/wasm32-wasip1/release/flowgate.wasm | awk '{print "    flowgate.wasm: " $5 " bytes"}'

step "build the executor: cargo build --release -p flowgate-executor"
cargo build --quiet --release -p flowgate-executor

# Validation loads the wasm and runs its on_configure, so it checks the plugin configuration too.
# Every Envoy bootstrap we ship: envoy/*.yaml and examples/**/envoy*.yaml that have
# static_resources (examples/istio holds Kubernetes manifests named envoyfilter-*, not bootstraps).
configs=()
while IFS= read -r -d '' f; do
  grep -q '^static_resources:' "$f" && configs+=("$f")
done < <(find envoy examples -name '*.yaml' \( -path 'envoy/*' -o -name 'envoy*.yaml' \) -print0 | sort -z)
for config in "${configs[@]}"; do
  step "envoy --mode validate -c $config"
  if ! out="$(.venv/bin/envoy --mode validate -c "$config" --log-level warn 2>&1)"; then
    echo "$out" >&2
    exit 1
  fi
done

step "fuzz smoke: scripts/fuzz.sh --smoke (replays the committed seeds and regressions once; open-ended runs: scripts/fuzz.sh)"
scripts/fuzz.sh --smoke

step "end-to-end tests: cargo test -p flowgate-e2e -- --test-threads 2"
cargo test -p flowgate-e2e -- --test-threads 2
