#!/usr/bin/env bash
# Runs flowgate's fuzz targets (fuzz/, cargo-fuzz on the nightly toolchain), each for a
# chosen time, and prints executions and crashes per target. Exits non-zero on a crash.
#
#   scripts/fuzz.sh                   every target (but template, below), 60 s each
#   scripts/fuzz.sh 300 decide auth   the named targets, 300 s each
#   scripts/fuzz.sh --smoke           every target ~10 s, after the harness's own unit tests
#                                     (what scripts/test.sh runs)
#   scripts/fuzz.sh --list            the targets
#   scripts/fuzz.sh 60 template       the target for hostile templates, known to fail until
#                                     rendering is bounded (fuzz/README.md); only run by name
#
# Installs what it needs when missing: the nightly toolchain (rustup) and cargo-fuzz (pinned,
# into .tools/bin; about 90 s). A crash leaves its input in fuzz/artifacts/<target>/ and the
# reproduce command in the output; the corpus grows in fuzz/corpus/<target>/ (both ignored by
# git). Committed seeds in fuzz/seeds/<target>/ and dictionaries in fuzz/dicts/ are used too.
# Set FUZZ_JOBS=N to run N targets at once (default 1; fuzzing uses one core per target).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$root/.tools/bin:$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

cargo_fuzz_version="0.13.2"
targets_all=(config decide auth render wire)
# Known to fail (fuzz/README.md, "Known gaps"): not in the default or smoke runs.
targets_known_failing=(template)

seconds=60
smoke=0
targets=()
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1; seconds=10 ;;
    --list)
      printf '%s\n' "${targets_all[@]}"
      printf '%s (known to fail; run by name)\n' "${targets_known_failing[@]}"
      exit 0 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    ''|*[!0-9]*)
      if [[ " ${targets_all[*]} ${targets_known_failing[*]} " == *" $arg "* ]]; then
        targets+=("$arg")
      else
        echo "fuzz.sh: unknown target or argument: $arg (targets: ${targets_all[*]} ${targets_known_failing[*]})" >&2
        exit 2
      fi ;;
    *) seconds="$arg" ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${targets_all[@]}")

# --- Toolchain ----------------------------------------------------------------------------------
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing the nightly toolchain (rustup toolchain install nightly)" >&2
  rustup toolchain install nightly --profile minimal >/dev/null
fi
if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $cargo_fuzz_version"; then
  echo "fuzz.sh: installing cargo-fuzz $cargo_fuzz_version into .tools/bin (about 90 s)" >&2
  log="$(mktemp "${TMPDIR:-/tmp}/flowgate-fuzz-install.XXXXXX")"
  if ! cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --root "$root/.tools" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    rm -f "$log"
    echo "fuzz.sh: FAILED: cargo install cargo-fuzz" >&2
    exit 1
  fi
  rm -f "$log"
fi

cd fuzz
if [ "$smoke" = 1 ]; then
  echo "==> fuzz harness unit tests (the executor path models, the fixture)"
  cargo +nightly test --quiet --lib
fi

# One target builds alone; several build together (they share every dependency).
if [ ${#targets[@]} -eq 1 ]; then
  echo "==> cargo +nightly fuzz build ${targets[0]}"
  cargo +nightly fuzz build "${targets[0]}"
else
  echo "==> cargo +nightly fuzz build (every target)"
  cargo +nightly fuzz build
fi

# run_target NAME: fuzzes NAME for $seconds; leaves its log in $logs/NAME.log.
logs="$(mktemp -d "${TMPDIR:-/tmp}/flowgate-fuzz.XXXXXX")"
trap 'rm -rf "$logs"' EXIT
run_target() {
  local target="$1" dirs=("corpus/$1") flags=()
  mkdir -p "corpus/$target"
  [ -d "seeds/$target" ] && dirs+=("seeds/$target")
  [ -f "dicts/$target.dict" ] && flags+=("-dict=dicts/$target.dict")
  # A render that needs 256 MB is unbounded for a filter; elsewhere the default 2 GB stands.
  [ "$target" = template ] && flags+=("-malloc_limit_mb=256")
  # -timeout: an input that takes 10 s is a hang worth a report, not a wait.
  cargo +nightly fuzz run "$target" "${dirs[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "${flags[@]}" >"$logs/$target.log" 2>&1
}

echo "==> fuzzing ${targets[*]}: ${seconds} s each"
failed=()
jobs="${FUZZ_JOBS:-1}"
running=0
pids=()
for target in "${targets[@]}"; do
  run_target "$target" &
  pids+=("$!")
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done

printf '%-8s %14s %10s  %s\n' target executions exec/s result
for target in "${targets[@]}"; do
  log="$logs/$target.log"
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
  if grep -q '^Done [0-9]* runs' "$log" && [ -z "$artifact" ]; then
    result="ok, no crashes"
  else
    result="CRASH${artifact:+: $artifact}"
    failed+=("$target")
  fi
  printf '%-8s %14s %10s  %s\n' "$target" "${runs:-?}" "${rate:-?}" "$result"
done

if [ ${#failed[@]} -gt 0 ]; then
  for target in "${failed[@]}"; do
    echo "----- $target -----" >&2
    grep -E -A12 "panicked at|ERROR: (libFuzzer|AddressSanitizer)" "$logs/$target.log" | head -n 40 >&2 \
      || tail -n 40 "$logs/$target.log" >&2
    echo "reproduce: (cd fuzz && cargo +nightly fuzz run $target <the artifact above>)" >&2
  done
  exit 1
fi
