#!/usr/bin/env bash
# Builds flowgate and runs the demo: the reference executor on 127.0.0.1:8081 and Envoy with the
# flowgate filter on 127.0.0.1:10000 (admin 127.0.0.1:9901), configured by envoy/envoy.yaml.
# Prints working curl examples with the demo tokens, then serves until Ctrl-C, which stops both.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$root/.tools/bin:$HOME/.cargo/bin:$PATH"

step() { echo "==> $*"; }

step "setup (scripts/setup.sh)"
scripts/setup.sh

step "build the filter: cargo build --release --target wasm32-wasip1 -p flowgate"
cargo build --quiet --release --target wasm32-wasip1 -p flowgate
step "build the executor: cargo build --release -p flowgate-executor"
cargo build --quiet --release -p flowgate-executor

for port in 8081 9901 10000; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "run.sh: 127.0.0.1:$port is already in use; stop whatever listens there (an earlier run.sh?)" >&2
    exit 1
  fi
done

work="$(mktemp -d "${TMPDIR:-/tmp}/flowgate-run.XXXXXX")"
pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; step "stopping"; exit 0' INT TERM

# The executor serves the demo flows and the signed one (examples/signed-flows.json) as one file.
.venv/bin/python -c 'import json, sys
demo, signed = (json.load(open(f)) for f in sys.argv[1:3])
demo["flows"] += signed["flows"]
json.dump(demo, open(sys.argv[3], "w"), indent=2)' examples/flows.json examples/signed-flows.json "$work/flows.json"

step "start the executor on 127.0.0.1:8081 (log: $work/executor.log)"
target/release/flowgate-executor --listen 127.0.0.1:8081 --flows "$work/flows.json" \
  --db "$work/runs.sqlite3" >"$work/executor.log" 2>&1 &
pids+=($!)

step "start Envoy on 127.0.0.1:10000, admin 127.0.0.1:9901 (log: $work/envoy.log)"
.venv/bin/envoy -c envoy/envoy.yaml --concurrency 2 --log-level warn \
  >"$work/envoy.log" 2>&1 &
pids+=($!)

# wait_for NAME URL EXPECTED LOG PID: polls URL until its body contains EXPECTED (30 s at most).
wait_for() {
  local name="$1" url="$2" expected="$3" log="$4" pid="$5"
  for _ in $(seq 1 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "run.sh: $name exited; its log ($log):" >&2
      tail -n 40 "$log" >&2
      exit 1
    fi
    if curl -fsS --max-time 1 "$url" 2>/dev/null | grep -q "$expected"; then return 0; fi
    sleep 0.1
  done
  echo "run.sh: $name did not become ready within 30 s; its log ($log):" >&2
  tail -n 40 "$log" >&2
  exit 1
}
wait_for executor http://127.0.0.1:8081/_executor/health '"ok"' "$work/executor.log" "${pids[0]}"
wait_for Envoy http://127.0.0.1:9901/ready LIVE "$work/envoy.log" "${pids[1]}"
wait_for "the flow directory" "http://127.0.0.1:9901/stats?filter=directory.flows_loaded" \
  "flows_loaded: 6" "$work/envoy.log" "${pids[1]}"

token() {
  .venv/bin/python -c 'import json,sys; print(json.load(open("examples/flows.json"))["_demo_tokens"][sys.argv[1]][0])' "$1"
}
t1001="$(token f-1001)"
t1002="$(token f-1002)"
t1003="$(token f-1003)"

# demo DESCRIPTION CURL-ARGS...: prints the curl line, runs it, prints what came back.
demo() {
  local what="$1"; shift
  printf '\n# %s\n' "$what"
  local arg line="curl -sS"
  for arg in "$@"; do
    case "$arg" in
      *[!A-Za-z0-9_./:=-]*) line+=" '$arg'" ;;
      *) line+=" $arg" ;;
    esac
  done
  echo "$line"
  curl -sS "$@"; echo
}

step "flowgate is up. Try these (each shown with the reply it just got):"
demo "no token: 401 from the edge" \
  -i http://127.0.0.1:10000/v1/flow-webhook/f-1001 -H 'content-type: application/json' -d '{"company_id":123456}'
demo "paused flow (f-1002) with its token: answered at the edge, never reaches the executor" \
  http://127.0.0.1:10000/v1/flow-webhook/f-1002 -H "Authorization: Bearer $t1002" -H 'content-type: application/json' -d '{"company_id":123456}'
demo "admitted sync request (f-1001): the executor runs the flow, flowgate renders its response template" \
  http://127.0.0.1:10000/v1/flow-webhook/f-1001 -H "Authorization: Bearer $t1001" -H 'content-type: application/json' -d '{"company_id":123456,"user_id":789123}'
demo "admitted async request (f-1003): answered as soon as the run is queued" \
  http://127.0.0.1:10000/v1/flow-webhook/f-1003 -H "Authorization: Bearer $t1003" -H 'content-type: application/json' -d '{"company_id":123456,"user_id":789123}'
# f-1006 is signed like a GitHub webhook: HMAC-SHA256 of the body with the flow's (public demo) secret.
secret1006="$(.venv/bin/python -c 'import json; print(json.load(open("examples/signed-flows.json"))["flows"][0]["verify"]["secrets"][0])')"
body1006='{"action":"opened","number":1}'
sig1006="sha256=$(.venv/bin/python -c 'import hashlib,hmac,sys; print(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest())' "$secret1006" "$body1006")"
demo "a signed delivery (f-1006, scheme github): verified at the edge, no bearer token" \
  http://127.0.0.1:10000/v1/flow-webhook/f-1006 -H "X-Hub-Signature-256: $sig1006" -H 'content-type: application/json' -d "$body1006"
demo "the same delivery with one byte changed: 401 invalid_signature, never forwarded" \
  http://127.0.0.1:10000/v1/flow-webhook/f-1006 -H "X-Hub-Signature-256: $sig1006" -H 'content-type: application/json' -d '{"action":"opened","number":2}'
delivery="demo-$(date +%s)"
demo "a sender's retry of that delivery (same X-Delivery-Id, f-1003 dedupes on it): the first answer again, from the edge" \
  http://127.0.0.1:10000/v1/flow-webhook/f-1003 -H "Authorization: Bearer $t1003" -H "X-Delivery-Id: $delivery" -H 'content-type: application/json' -d '{"company_id":123456,"user_id":789123}'
demo "and again: the same bytes, the same run id; the executor saw it once" \
  http://127.0.0.1:10000/v1/flow-webhook/f-1003 -H "Authorization: Bearer $t1003" -H "X-Delivery-Id: $delivery" -H 'content-type: application/json' -d '{"company_id":123456,"user_id":789123}'
demo "what the executor received (no Authorization; x-flowgate-* headers added by the filter)" \
  http://127.0.0.1:8081/_executor/requests
demo "pause f-1001 in the flow directory (the executor serves it; Envoy is not touched)" \
  -X PUT http://127.0.0.1:8081/_executor/flows/f-1001 -d '{"status":"paused"}'
sleep 1.5
demo "within refresh_ms (1 s) every Envoy worker answers f-1001 as paused" \
  http://127.0.0.1:10000/v1/flow-webhook/f-1001 -H "Authorization: Bearer $t1001" -H 'content-type: application/json' -d '{"company_id":123456}'
demo "unpause it" \
  -X PUT http://127.0.0.1:8081/_executor/flows/f-1001 -d '{"status":"live"}'
sleep 1.5
demo "and it runs again" \
  http://127.0.0.1:10000/v1/flow-webhook/f-1001 -H "Authorization: Bearer $t1001" -H 'content-type: application/json' -d '{"company_id":123456}'
demo "flowgate's counters in Envoy's stats" \
  "http://127.0.0.1:9901/stats?filter=wasmcustom.flowgate"

echo
step "serving; Ctrl-C stops Envoy and the executor"
wait "${pids[@]}"
