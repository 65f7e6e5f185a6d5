//! Delivery controls end to end (contract 8): the real filter in a real Envoy (2 workers) in
//! front of the reference executor. Duplicates by header and by JSON pointer, sync and async,
//! are answered from the edge with the first answer while the executor sees one run; a
//! duplicate still running is 409; a window ends; refused deliveries are not remembered; a
//! second Envoy's duplicate still runs once (the executor's unique delivery id); the rate
//! limit holds under a burst from many connections over both workers, is not spent by
//! strangers, and refills.

use std::sync::Barrier;
use std::thread::sleep;
use std::time::{Duration, Instant};

use flowgate_e2e::*;
use serde_json::{json, Value};

const TOKEN: &str = "delivery-e2e-4b1f8c2a9d3e7f5a0c6b2d8e4f1a7c3b9d5e0f2a6c8b4d1e7f3a";
const SEED: &str = "{\"valid\": {% if res1.value == \"myResult\" %}\"{{ res1.value }}\"{% else %}false{% endif %}}";
const BODY: &str = r#"{"company_id": 123456, "event": {"id": "evt_1"}}"#;
/// `d-signed`'s GitHub webhook secret (a public test value).
const SIGNING_SECRET: &str = "delivery-e2e-github-secret";

fn flow(id: &str, extra: Value) -> Value {
    let mut flow = json!({
        "id": id, "ref_id": "web1", "status": "live", "token_sha256": [sha256_hex(TOKEN)],
        "steps": [{"ref_id": "res1", "values": {"value": "'myResult' if web1.company_id == 123456 else 'other'"}}],
    });
    if let (Some(flow), Some(extra)) = (flow.as_object_mut(), extra.as_object()) {
        flow.extend(extra.clone());
    }
    flow
}

fn by_header(window_s: u64) -> Value {
    json!({"key": "header:X-GitHub-Delivery", "window_s": window_s})
}

fn flow_file() -> Value {
    json!({"flows": [
        flow("d-sync", json!({"dedupe": by_header(600), "response": {"status": 201, "body": SEED}})),
        flow("d-pass", json!({"dedupe": by_header(600)})),
        flow("d-async", json!({"async": true, "dedupe": {"key": "body:/event/id", "window_s": 600}})),
        flow("d-slow", json!({"dedupe": by_header(600), "run_ms": 3000})),
        flow("d-short", json!({"dedupe": by_header(1)})),
        flow("d-none", json!({})),
        // Signed like GitHub, deduped on the scheme's own id (`X-GitHub-Delivery`).
        flow("d-signed", json!({
            "token_sha256": null,
            "verify": {"scheme": "github", "secrets": [SIGNING_SECRET]},
            "dedupe": {"key": "scheme", "window_s": 600},
        })),
        flow("r-burst", json!({"rate_limit": {"requests_per_second": 1, "burst": 5}})),
        flow("r-strangers", json!({"rate_limit": {"requests_per_second": 1, "burst": 3}})),
    ]})
}

fn deliver(envoy: &Envoy, flow: &str, token: &str, delivery: &str) -> Response {
    let bearer = format!("Bearer {token}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
        ("x-github-delivery", delivery),
    ];
    envoy.send("POST", &format!("/v1/flow-webhook/{flow}"), &headers, BODY.as_bytes())
}

/// Webhooks the executor received for `flow`.
fn received(executor: &Executor, flow: &str) -> Vec<Value> {
    executor
        .requests()
        .into_iter()
        .filter(|r| recorded_header(&recorded_headers(r), "x-flowgate-flow-id") == [flow])
        .collect()
}

/// A GitHub-signed delivery to `d-signed`: `X-Hub-Signature-256` over the body, no token.
fn deliver_signed(envoy: &Envoy, delivery: &str) -> Response {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SIGNING_SECRET.as_bytes()).unwrap();
    mac.update(BODY.as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let signature = format!("sha256={hex}");
    let headers = [
        ("content-type", "application/json"),
        ("x-hub-signature-256", signature.as_str()),
        ("x-github-delivery", delivery),
    ];
    envoy.send("POST", "/v1/flow-webhook/d-signed", &headers, BODY.as_bytes())
}

fn runs(executor: &Executor, flow: &str) -> usize {
    executor.runs().iter().filter(|r| r["flow_id"] == flow).count()
}

fn same_answer(a: &Response, b: &Response) {
    assert_eq!(
        (a.status, a.header("content-type"), a.body.as_slice()),
        (b.status, b.header("content-type"), b.body.as_slice()),
        "{:?} vs {:?}",
        a.text(),
        b.text()
    );
}

#[test]
fn duplicates_are_answered_from_the_edge_and_run_once() {
    let stack = Stack::start(&flow_file());
    let envoy = &stack.envoy;

    // Sync with a template, by header: the same rendered bytes, one run.
    let first = deliver(envoy, "d-sync", TOKEN, "gh-1");
    assert_eq!(
        (first.status, first.text()),
        (201, r#"{"valid": "myResult"}"#.to_string())
    );
    for _ in 0..3 {
        same_answer(&deliver(envoy, "d-sync", TOKEN, "gh-1"), &first);
    }
    let seen = received(&stack.executor, "d-sync");
    assert_eq!(seen.len(), 1, "the executor saw one delivery");
    assert_eq!(
        recorded_header(&recorded_headers(&seen[0]), "x-flowgate-delivery-id"),
        ["gh-1"]
    );
    assert_eq!(deliver(envoy, "d-sync", TOKEN, "gh-2").status, 201);
    assert_eq!(received(&stack.executor, "d-sync").len(), 2, "another id runs");

    // Sync passthrough: the executor's own answer, remembered.
    let first = deliver(envoy, "d-pass", TOKEN, "gh-1");
    assert_eq!(first.status, 200);
    same_answer(&deliver(envoy, "d-pass", TOKEN, "gh-1"), &first);
    assert_eq!(received(&stack.executor, "d-pass").len(), 1);

    // Async by JSON pointer (`/event/id`, whatever the header says): the same run id.
    let first = deliver(envoy, "d-async", TOKEN, "ignored-1");
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(first.json()["data"]["run_id"].is_string(), "{}", first.text());
    same_answer(&deliver(envoy, "d-async", TOKEN, "ignored-2"), &first);
    assert_eq!(received(&stack.executor, "d-async").len(), 1);
    assert_eq!(
        recorded_header(
            &recorded_headers(&received(&stack.executor, "d-async")[0]),
            "x-flowgate-delivery-id"
        ),
        ["evt_1"]
    );

    // Without dedupe, every delivery runs (the control for this test).
    deliver(envoy, "d-none", TOKEN, "gh-1");
    deliver(envoy, "d-none", TOKEN, "gh-1");
    assert_eq!(received(&stack.executor, "d-none").len(), 2);
    assert!(envoy.stat("wasmcustom.flowgate.requests.duplicate") >= 5);
}

#[test]
fn a_running_delivery_is_409_and_a_window_ends() {
    let stack = Stack::start(&flow_file());
    let envoy = &stack.envoy;
    std::thread::scope(|scope| {
        let first = scope.spawn(|| deliver(envoy, "d-slow", TOKEN, "slow-1"));
        // The first delivery reaches the executor, which takes 3 s to answer it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while received(&stack.executor, "d-slow").is_empty() {
            assert!(Instant::now() < deadline, "the first delivery never arrived");
            sleep(Duration::from_millis(20));
        }
        let repeat = deliver(envoy, "d-slow", TOKEN, "slow-1");
        assert_rejected(&repeat, 409, "duplicate_in_flight");
        assert_eq!(repeat.header("retry-after"), Some("1"));
        let first = first.join().expect("first delivery");
        assert_eq!(first.status, 200);
        same_answer(&deliver(envoy, "d-slow", TOKEN, "slow-1"), &first);
    });
    assert_eq!(received(&stack.executor, "d-slow").len(), 1);

    // A 1 s window: remembered at once, forgotten after it (3 s later, generously).
    deliver(envoy, "d-short", TOKEN, "short-1");
    deliver(envoy, "d-short", TOKEN, "short-1");
    assert_eq!(received(&stack.executor, "d-short").len(), 1);
    sleep(Duration::from_secs(3));
    assert_eq!(deliver(envoy, "d-short", TOKEN, "short-1").status, 200);
    assert_eq!(
        received(&stack.executor, "d-short").len(),
        2,
        "the window ended: it runs again"
    );
}

#[test]
fn refused_and_failed_deliveries_are_not_remembered() {
    let stack = Stack::start(&flow_file());
    let envoy = &stack.envoy;
    assert_rejected(&deliver(envoy, "d-sync", "wrong-token", "r-1"), 401, "unauthorized");
    let bearer = format!("Bearer {TOKEN}");
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(2 << 20));
    let too_large = envoy.send(
        "POST",
        "/v1/flow-webhook/d-sync",
        &[("authorization", &bearer), ("x-github-delivery", "r-1")],
        big.as_bytes(),
    );
    assert_eq!(too_large.status, 413);
    stack.executor.set_fault(json!({"mode": "status", "status": 500}));
    assert_rejected(&deliver(envoy, "d-sync", TOKEN, "r-1"), 502, "executor_error");
    stack.executor.set_fault(json!({"mode": "none"}));
    let answered = deliver(envoy, "d-sync", TOKEN, "r-1");
    assert_eq!(answered.status, 201, "{}", answered.text());
    assert_eq!(
        received(&stack.executor, "d-sync").len(),
        2,
        "the failed run and the retry"
    );
    assert_rejected(&deliver(envoy, "d-sync", TOKEN, "has space"), 400, "invalid_request");
}

#[test]
fn a_duplicate_through_a_second_envoy_runs_once() {
    let stack = Stack::start(&flow_file());
    let second = Envoy::start(EnvoyOptions::new(
        plugin_config_for(&flow_file()),
        stack.executor.port(),
    ));
    let first = deliver(&stack.envoy, "d-sync", TOKEN, "fleet-1");
    let again = deliver(&second, "d-sync", TOKEN, "fleet-1");
    same_answer(&again, &first);
    let first = deliver(&stack.envoy, "d-async", TOKEN, "-");
    same_answer(&deliver(&second, "d-async", TOKEN, "-"), &first);
    assert_eq!(
        received(&stack.executor, "d-sync").len(),
        2,
        "each Envoy forwarded it once"
    );
    assert_eq!(runs(&stack.executor, "d-sync"), 1, "the executor ran it once");
    assert_eq!(runs(&stack.executor, "d-async"), 1);
}

#[test]
fn the_rate_limit_holds_under_a_burst_is_not_spent_by_strangers_and_refills() {
    let stack = Stack::start(&flow_file());
    let envoy = &stack.envoy;
    // 24 deliveries at once, each on its own connection (Envoy spreads them over both workers).
    const BURST: usize = 24;
    let barrier = Barrier::new(BURST);
    let started = Instant::now();
    let statuses: Vec<Response> = std::thread::scope(|scope| {
        let sends: Vec<_> = (0..BURST)
            .map(|i| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    deliver(envoy, "r-burst", TOKEN, &format!("b-{i}"))
                })
            })
            .collect();
        sends.into_iter().map(|s| s.join().expect("send")).collect()
    });
    let elapsed_s = started.elapsed().as_secs();
    let admitted = statuses.iter().filter(|r| r.status == 200).count();
    for limited in statuses.iter().filter(|r| r.status != 200) {
        assert_rejected(limited, 429, "rate_limited");
        let retry: u64 = limited.header("retry-after").and_then(|r| r.parse().ok()).unwrap_or(0);
        assert!(retry >= 1, "Retry-After: {:?}", limited.header("retry-after"));
    }
    // The burst of 5, plus at most one token per second the burst took to send.
    assert!(
        (5..=5 + elapsed_s as usize + 1).contains(&admitted),
        "{admitted} admitted in {elapsed_s} s"
    );
    assert_eq!(
        received(&stack.executor, "r-burst").len(),
        admitted,
        "nothing over the limit forwarded"
    );
    assert_eq!(
        envoy.stat("wasmcustom.flowgate.requests.rate_limited"),
        (BURST - admitted) as u64
    );

    // Strangers do not spend the budget: 30 bad tokens, then the 3 of the burst still pass.
    for i in 0..30 {
        assert_eq!(deliver(envoy, "r-strangers", "wrong", &format!("s-{i}")).status, 401);
    }
    let passed = (0..3).filter(|i| deliver(envoy, "r-strangers", TOKEN, &format!("ok-{i}")).status == 200);
    assert_eq!(passed.count(), 3);

    // Refill: spend what is left, wait, and a token is there again.
    while deliver(envoy, "r-burst", TOKEN, "drain").status == 200 {}
    sleep(Duration::from_millis(2500));
    assert_eq!(deliver(envoy, "r-burst", TOKEN, "refilled").status, 200);
}

#[test]
fn a_signed_flow_dedupes_on_its_schemes_own_delivery_id() {
    let stack = Stack::start(&flow_file());
    let envoy = &stack.envoy;
    let first = deliver_signed(envoy, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    assert_eq!(first.status, 200, "{}", first.text());
    same_answer(&deliver_signed(envoy, "72d3162e-cc78-11e3-81ab-4c9367dc0958"), &first);
    let seen = received(&stack.executor, "d-signed");
    assert_eq!(seen.len(), 1, "GitHub's redelivery ran again");
    assert_eq!(
        recorded_header(&recorded_headers(&seen[0]), "x-flowgate-delivery-id"),
        ["72d3162e-cc78-11e3-81ab-4c9367dc0958"]
    );
    assert_eq!(deliver_signed(envoy, "another-delivery").status, 200);
    assert_eq!(received(&stack.executor, "d-signed").len(), 2, "another id runs");
    assert_eq!(envoy.stat("wasmcustom.flowgate.requests.duplicate"), 1);
}
