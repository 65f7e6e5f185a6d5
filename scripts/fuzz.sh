#!/usr/bin/env bash
# Runs flowgate's fuzz targets (fuzz/, cargo-fuzz on the nightly toolchain) and prints
# executions and crashes per target. Exits non-zero on a crash.
#
#   scripts/fuzz.sh                   every target, 60 s of open-ended fuzzing each
#   scripts/fuzz.sh 300 decide auth   the named targets, 300 s each
#   scripts/fuzz.sh --smoke           deterministic: the harness's unit tests, then every
#                                     committed input (fuzz/seeds/<target>/ and every past
#                                     crash in fuzz/regressions/<target>/) replayed once
#                                     (-runs=0); what scripts/test.sh runs
#   scripts/fuzz.sh --list            the targets
#
# Installs what it needs when missing: the nightly toolchain (rustup) and cargo-fuzz (pinned,
# into .tools/bin; about 90 s). A crash leaves its input in fuzz/artifacts/<target>/ and the
# reproduce command in the output; fuzzing grows fuzz/corpus/<target>/ (both ignored by git).
# Committed seeds and dictionaries (fuzz/dicts/) are used by every run.
# Memory: `template` and `render` run with -malloc_limit_mb=256 (no render may allocate that
# much at once), every target with -rss_limit_mb=2048.
# Set FUZZ_JOBS=N to run N targets at once (default 1; fuzzing uses one core per target).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$root/.tools/bin:$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

cargo_fuzz_version="0.13.2"
targets_all=(config decide auth render wire template verify)

seconds=60
smoke=0
targets=()
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    --list) printf '%s\n' "${targets_all[@]}"; exit 0 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    ''|*[!0-9]*)
      if [[ " ${targets_all[*]} " == *" $arg "* ]]; then
        targets+=("$arg")
      else
        echo "fuzz.sh: unknown target or argument: $arg (targets: ${targets_all[*]})" >&2
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

# run_target NAME: fuzzes NAME for $seconds, or replays its committed inputs (--smoke);
# leaves its log in $logs/NAME.log and its exit status in $logs/NAME.rc.
logs="$(mktemp -d "${TMPDIR:-/tmp}/flowgate-fuzz.XXXXXX")"
trap 'rm -rf "$logs"' EXIT
run_target() {
  local target="$1" dirs=() flags=()
  if [ "$smoke" = 1 ]; then
    # New inputs go to the first directory: an empty one, so the committed ones stay as they are.
    mkdir -p "$logs/new-$target"
    dirs+=("$logs/new-$target")
    # A replay asserts no timings (libFuzzer's -timeout only catches a hang).
    flags+=("-runs=0" "-timeout=300")
    export FLOWGATE_FUZZ_UNTIMED=1
  else
    flags+=("-timeout=10")
    mkdir -p "corpus/$target"
    dirs+=("corpus/$target")
    flags+=("-max_total_time=$seconds")
  fi
  [ -d "seeds/$target" ] && dirs+=("seeds/$target")
  [ -d "regressions/$target" ] && dirs+=("regressions/$target")
  [ -f "dicts/$target.dict" ] && flags+=("-dict=dicts/$target.dict")
  # A render that needs 256 MB at once is unbounded for a filter (it runs in a wasm VM).
  case "$target" in template|render) flags+=("-malloc_limit_mb=256") ;; esac
  # -timeout: when fuzzing, an input that takes 10 s is a hang worth a report, not a wait.
  local rc=0
  cargo +nightly fuzz run "$target" "${dirs[@]}" -- \
    -rss_limit_mb=2048 -print_final_stats=1 "${flags[@]}" >"$logs/$target.log" 2>&1 || rc=$?
  echo "$rc" >"$logs/$target.rc"
}

if [ "$smoke" = 1 ]; then
  echo "==> replaying committed inputs of ${targets[*]} (seeds and regressions, -runs=0)"
else
  echo "==> fuzzing ${targets[*]}: ${seconds} s each"
fi
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

printf '%-8s %14s %10s %8s  %s\n' target executions exec/s peak-rss result
for target in "${targets[@]}"; do
  log="$logs/$target.log"
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  rss="$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)"
  artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
  if [ "$(cat "$logs/$target.rc")" = 0 ] && [ -z "$artifact" ]; then
    result="ok, no crashes"
  else
    result="CRASH${artifact:+: $artifact}"
    failed+=("$target")
  fi
  printf '%-8s %14s %10s %8s  %s\n' "$target" "${runs:-?}" "${rate:-?}" "${rss:+${rss} MB}" "$result"
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
