#!/usr/bin/env bash
# Soak: mixed webhook traffic (sync templated, async, 401, paused, non-webhook; wrk closed loop,
# every thread rotating the kinds) at the highest rate the machine sustains, through Envoy
# (2 workers) + flowgate.wasm + the reference executor, for the given time. Not part of the test
# suite. Reports requests served, unexpected answers (goal 0), wasm VM failures (goal 0:
# wasm.flowgate.vm_reload*), and Envoy's VmRSS sampled every 30 s (goal: flat), and writes
# bench/results/soak-<UTC date>.md (a second run on the same day replaces it).
#
#   scripts/soak.sh            10 minutes
#   scripts/soak.sh 1          1 minute (fractions work too: 0.5)
#   scripts/soak.sh 10 --connections 32 --out /tmp/soak.md    (extra options: see --help)
#
# Exit status 1 when an answer was unexpected, a request got no answer, a VM failed or Envoy
# restarted. Needs wrk (scripts/setup.sh --bench) and Envoy in .venv (scripts/setup.sh).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"

minutes=10
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
  minutes="$1"
  shift
fi
case "$minutes" in
  ''|*[!0-9.]*) echo "soak.sh: minutes must be a number, got '$minutes'" >&2; exit 2 ;;
esac

command -v wrk >/dev/null 2>&1 || { echo "soak.sh: wrk not found; run scripts/setup.sh --bench (or apt-get install wrk)" >&2; exit 1; }
[ -x .venv/bin/envoy ] || { echo "soak.sh: .venv/bin/envoy not found; run scripts/setup.sh" >&2; exit 1; }

# The executor's run store commits with fsync; on a busy shared disk a stall shows up as executor
# timeouts that have nothing to do with Envoy or the filter. Temporary files (the run store among
# them) go to tmpfs unless TMPDIR is set.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ]; then
  export TMPDIR=/dev/shm
fi

echo "soak.sh: building flowgate.wasm, flowgate-executor and the soak driver (release)" >&2
cargo build --quiet --release --target wasm32-wasip1 -p flowgate
cargo build --quiet --release -p flowgate-executor
cargo build --quiet --release -p flowgate-e2e --bin soak
exec target/release/soak --minutes "$minutes" "$@"
