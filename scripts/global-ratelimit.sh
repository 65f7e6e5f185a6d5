#!/usr/bin/env bash
# The fleet-wide rate-limit example end to end (examples/global-ratelimit, contract 8): installs
# redis-server, builds flowgate.wasm, the reference executor and flowgate-rls (Envoy's rate-limit
# gRPC API over Kuadrant's limitador; its own workspace, a few minutes to build the first time),
# then starts Redis, the service and two Envoys from examples/global-ratelimit/envoy.yaml and
# checks that a flow's limit holds across both (tests/tests/global_ratelimit.rs).
#
# Not part of scripts/test.sh: limitador, tonic and redis are a long first build on 2 cores.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$root/.tools/bin:$HOME/.cargo/bin:$PATH"

step() { echo "==> $*"; }

step "setup (scripts/setup.sh --test --global-ratelimit)"
scripts/setup.sh --test --global-ratelimit

step "build: flowgate.wasm, the executor, flowgate-rls"
cargo build --quiet --release --target wasm32-wasip1 -p flowgate
cargo build --quiet --release -p flowgate-executor
cargo build --quiet --release --manifest-path examples/global-ratelimit/Cargo.toml

step "flowgate-rls unit tests"
cargo test --quiet --release --manifest-path examples/global-ratelimit/Cargo.toml

step "two Envoys, one limit: cargo test -p flowgate-e2e --test global_ratelimit -- --ignored"
cargo test -p flowgate-e2e --test global_ratelimit -- --ignored --nocapture
