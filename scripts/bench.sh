#!/usr/bin/env bash
# Load benchmark: the same webhook traffic through four listeners of ONE Envoy (--concurrency 1)
# -- plain routing (the limit), Envoy's Lua filter doing the equivalent work (bench/lua/gate.lua),
# a Rust proxy-wasm filter that does nothing (bench/empty-filter: the floor of any wasm filter),
# and flowgate (on the webhook prefix only, off on other routes, as envoy/envoy.yaml) --
# alternated round by round so machine noise cancels in the ratios.
# Writes bench/results/<date>.md, bench/results/latest.md and bench/results/latest.svg.
#
#   scripts/bench.sh                  full run (3 rounds x 3 s, ~20 minutes on 2 cores)
#   scripts/bench.sh --quick          1 s per run, 1 round, no memory phase (a smoke test)
#   scripts/bench.sh --only sync,reject-401 --seconds 3
#   scripts/bench.sh --profile        add a perf (cpu-clock) split of where Envoy's time goes
#   scripts/bench.sh --help           every option
#   scripts/bench.sh --scale          issue 15: a live directory of 10 / 100,000 / 1,000,000 flows,
#                                     1 and 2 workers (memory, start, pause propagation, req/s);
#                                     writes bench/results/scale.md (tests/tests/scale.rs)
#
# Needs wrk (scripts/setup.sh --bench) and Envoy in .venv (scripts/setup.sh). Native
# microbenchmarks of the core are separate: cargo bench -p flowgate --bench core
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"

command -v wrk >/dev/null 2>&1 || { echo "bench.sh: wrk not found; run scripts/setup.sh --bench" >&2; exit 1; }
[ -x .venv/bin/envoy ] || { echo "bench.sh: .venv/bin/envoy not found; run scripts/setup.sh" >&2; exit 1; }

if [ "${1:-}" = "--scale" ]; then
  cargo build --quiet --release --target wasm32-wasip1 -p flowgate
  cargo build --quiet --release -p flowgate-executor
  exec cargo test --quiet -p flowgate-e2e --test scale -- --ignored --nocapture
fi

echo "bench.sh: building flowgate.wasm, empty_filter.wasm and flowgate-bench (release)" >&2
cargo build --quiet --release --target wasm32-wasip1 -p flowgate -p empty-filter
cargo build --quiet --release -p flowgate-bench
exec target/release/flowgate-bench "$@"
