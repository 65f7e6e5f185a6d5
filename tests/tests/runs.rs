//! Sync and async flow runs, end to end (contract 1, 3.1 and 3.2): each test runs its own
//! reference executor and Envoy (2 workers) with the flowgate filter, on the demo flows of
//! `examples/flows.json` plus a few test flows (below), and checks what the sender gets: rendered
//! responses, passed-through answers, the async acknowledgement, executor faults as envelopes, and
//! that every acknowledged async run really runs, even across an executor crash.
//!
//! Measured numbers (async answer latency, render overhead) are printed; run with `--nocapture`
//! to see them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowgate_e2e::*;
use serde_json::{json, Value};

/// The bearer token of every test flow (a public test value; its digest goes in `token_sha256`).
const TOKEN: &str = "runs-e2e-7f3a9c1e5b2d8f4a6c0e9b3d7f1a5c8e2b6d0f4a9c3e7b1d5f";
const JSON: &str = "application/json";
const BODY: &[u8] = br#"{"company_id": 123456, "user_id": 789123}"#;
/// The seed's response template.
const SEED: &str = "{\"valid\": {% if res1.value == \"myResult\" %}\"{{ res1.value }}\"{% else %}false{% endif %}}";
/// The seed's step: `res1.value` is "myResult" for company 123456.
const SEED_STEP: &str = "'myResult' if web1.company_id == 123456 else 'other'";
/// The seed's paused reply, byte for byte.
const PAUSED: &str = r#"{"status":200,"error":"biz_logic","message":"Flow status is `paused`. Unpause to run this flow using a webhook","data":null}"#;
/// How long a test waits for async runs to finish: they take 2 s, the machine may be busy.
const RUNS_TIMEOUT: Duration = Duration::from_secs(120);

// --- Flows --------------------------------------------------------------------------------------

/// One executor flow (plugin fields plus `steps` and `run_ms`) for `web1`, with the test token.
fn test_flow(id: &str, status: &str, asynchronous: bool, response: Option<Value>, steps: Value, run_ms: u64) -> Value {
    let mut flow = json!({
        "id": id,
        "ref_id": "web1",
        "status": status,
        "token_sha256": [sha256_hex(TOKEN)],
        "async": asynchronous,
        "methods": ["POST"],
        "max_body_bytes": 65536,
        "steps": steps,
        "run_ms": run_ms,
    });
    if let Some(response) = response {
        flow["response"] = response;
    }
    flow
}

fn step(values: Value) -> Value {
    json!([{"ref_id": "res1", "values": values}])
}

/// `examples/flows.json` plus:
///
/// | flow | mode | response |
/// |---|---|---|
/// | `t-seed` | sync | the seed template, **201**, `application/json; charset=utf-8` |
/// | `t-plain` | sync | none (same step as `t-seed`: the passthrough twin for the overhead measurement) |
/// | `t-body` | sync | 202, renders the request body: JSON / form fields / plain text |
/// | `t-broken` | sync | fails at render time on line 2 (`res1.value` is a string) |
/// | `t-async-tpl` | async | 202, renders `run.run_id` and `web1.company_id` |
/// | `t-paused-tpl` | sync, paused | 201 (never used: paused is answered at the edge) |
fn flow_file() -> Value {
    let mut file = demo_flows();
    let body_template = concat!(
        "{% if web1 is string %}{\"text\": {{ web1|tojson }}}",
        "{% else %}{\"company_id\": {{ web1.company_id }}, \"name\": {{ web1.name|tojson }}, ",
        "\"valid\": \"{{ res1.value }}\"}{% endif %}"
    );
    let flows = [
        test_flow(
            "t-seed",
            "live",
            false,
            Some(json!({"status": 201, "content_type": "application/json; charset=utf-8", "body": SEED})),
            step(json!({"value": SEED_STEP})),
            0,
        ),
        test_flow("t-plain", "live", false, None, step(json!({"value": SEED_STEP})), 0),
        test_flow(
            "t-body",
            "live",
            false,
            Some(json!({"status": 202, "content_type": "application/json", "body": body_template})),
            step(json!({"value": "'myResult'"})),
            0,
        ),
        test_flow(
            "t-broken",
            "live",
            false,
            Some(json!({"status": 200, "body": "{\n  \"x\": \"{{ res1.value.x.y }}\"\n}"})),
            // The output carries a value of the request body, which the error must not echo.
            step(json!({"value": "web1.secret"})),
            0,
        ),
        test_flow(
            "t-async-tpl",
            "live",
            true,
            Some(json!({
                "status": 202,
                "content_type": "application/json",
                "body": "{\"accepted\": true, \"run_id\": \"{{ run.run_id }}\", \"company_id\": {{ web1.company_id }}}"
            })),
            step(json!({"company_id": "web1.company_id"})),
            0,
        ),
        test_flow(
            "t-paused-tpl",
            "paused",
            false,
            Some(json!({"status": 201, "body": "{\"rendered\": true}"})),
            step(json!({"value": "'paused flow ran'"})),
            0,
        ),
    ];
    file["flows"].as_array_mut().expect("flows").extend(flows);
    file
}

fn token_for(flow_id: &str) -> String {
    if flow_id.starts_with("f-") {
        demo_token(flow_id, 0)
    } else {
        TOKEN.to_string()
    }
}

/// POSTs `body` with this content type and the flow's token to the flow's webhook on `port`.
fn post_to(port: u16, flow_id: &str, content_type: &str, body: &[u8]) -> Response {
    let authorization = format!("Bearer {}", token_for(flow_id));
    send(
        port,
        "POST",
        &format!("/v1/flow-webhook/{flow_id}"),
        &[("content-type", content_type), ("authorization", &authorization)],
        body,
    )
}

fn post(stack: &Stack, flow_id: &str, content_type: &str, body: &[u8]) -> Response {
    post_to(stack.envoy.port(), flow_id, content_type, body)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// --- Checks -------------------------------------------------------------------------------------

/// A rendered answer: this status, exactly this content type and body.
fn assert_rendered(response: &Response, status: u16, content_type: &str, body: &str) {
    assert_eq!(
        response.status,
        status,
        "expected {status} {body:?}, got {} with body {:?}",
        response.status,
        response.text()
    );
    assert_eq!(response.header("content-type"), Some(content_type), "content-type");
    assert_eq!(response.text(), body);
    assert_own_head(response);
}

/// A reply flowgate made from the executor's answer carries its own head only: none of the
/// executor's headers or the router's (`x-envoy-upstream-service-time`), and a length that is
/// the reply's. Envoy adds `date` and `server` to every response.
fn assert_own_head(response: &Response) {
    for (name, _) in &response.headers {
        assert!(
            ["content-type", "content-length", "date", "server", "connection"].contains(&name.as_str()),
            "the reply carries {name}: {:?}",
            response.headers
        );
    }
    assert_eq!(
        response.header("content-length"),
        Some(response.body.len().to_string().as_str()),
        "content-length"
    );
}

/// The default async acknowledgement, byte for byte; returns the run id.
fn assert_scheduled(response: &Response) -> String {
    assert_eq!(response.status, 200, "body {:?}", response.text());
    let envelope = envelope(response);
    assert_eq!(envelope.status, 200);
    assert_eq!(envelope.error, None);
    assert_eq!(envelope.message, "Flow run scheduled");
    let run_id = envelope.data["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("data.run_id is not a string: {}", response.text()))
        .to_string();
    assert_eq!(
        response.text(),
        format!(r#"{{"status":200,"error":null,"message":"Flow run scheduled","data":{{"run_id":"{run_id}"}}}}"#)
    );
    assert_own_head(response);
    run_id
}

/// 502 `executor_error` with `data.upstream_status`.
fn assert_executor_error(response: &Response, upstream_status: u16, what: &str) {
    let envelope = assert_rejected(response, 502, "executor_error");
    assert_eq!(envelope.data, json!({"upstream_status": upstream_status}), "{what}");
    assert!(!envelope.message.is_empty(), "{what}");
}

/// 503 `executor_unavailable` with a `Retry-After` of a positive number of seconds.
fn assert_unavailable(response: &Response, what: &str) -> u64 {
    let envelope = assert_rejected(response, 503, "executor_unavailable");
    assert_eq!(envelope.data, Value::Null, "{what}");
    let retry_after = response.header_all("retry-after");
    assert_eq!(
        retry_after.len(),
        1,
        "{what}: one retry-after header: {:?}",
        response.headers
    );
    let seconds: u64 = retry_after[0]
        .parse()
        .unwrap_or_else(|_| panic!("{what}: retry-after is not delta-seconds: {:?}", retry_after[0]));
    assert!(seconds > 0, "{what}: retry-after {seconds}");
    seconds
}

/// Polls the run store until every run in `run_ids` has finished (completed or failed); returns
/// them by id.
fn wait_for_runs(executor: &Executor, run_ids: &[String]) -> std::collections::HashMap<String, Value> {
    let deadline = Instant::now() + RUNS_TIMEOUT;
    loop {
        let runs: std::collections::HashMap<String, Value> = executor
            .runs()
            .into_iter()
            .filter_map(|run| Some((run["run_id"].as_str()?.to_string(), run)))
            .collect();
        let pending: Vec<&String> = run_ids
            .iter()
            .filter(|id| {
                !runs
                    .get(*id)
                    .is_some_and(|run| run["state"] == "completed" || run["state"] == "failed")
            })
            .collect();
        if pending.is_empty() {
            return runs;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged runs did not finish within {RUNS_TIMEOUT:?}, e.g. {:?}: {}",
            pending.len(),
            pending[0],
            runs.get(pending[0])
                .map(Value::to_string)
                .unwrap_or_else(|| "not in the run store".into())
        );
        sleep(Duration::from_millis(100));
    }
}

// --- Sync: rendered responses -------------------------------------------------------------------

#[test]
fn the_seed_template_renders_both_ways_with_the_configured_status() {
    let stack = Stack::start(&flow_file());
    let content_type = "application/json; charset=utf-8";

    let response = post(&stack, "t-seed", JSON, BODY);
    assert_rendered(&response, 201, content_type, r#"{"valid": "myResult"}"#);

    let response = post(&stack, "t-seed", JSON, br#"{"company_id": 42, "user_id": 789123}"#);
    assert_rendered(&response, 201, content_type, r#"{"valid": false}"#);

    // The executor ran the flow twice, told it was a sync run, without the token.
    let requests = stack.executor.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        let headers = recorded_headers(request);
        assert_eq!(recorded_header(&headers, "x-flowgate-mode"), ["sync"]);
        assert_eq!(recorded_header(&headers, "authorization"), Vec::<&str>::new());
    }
    let outputs: Vec<Value> = stack
        .executor
        .runs()
        .into_iter()
        .filter(|run| run["flow_id"] == "t-seed")
        .map(|run| run["output"]["res1"]["value"].clone())
        .collect();
    let mut outputs: Vec<String> = outputs.iter().map(Value::to_string).collect();
    outputs.sort();
    assert_eq!(outputs, [r#""myResult""#, r#""other""#]);
}

#[test]
fn the_request_body_is_in_the_template_context_as_json_form_fields_or_text() {
    let stack = Stack::start(&flow_file());

    // JSON: `{{ web1.company_id }}` from the request body.
    let response = post(
        &stack,
        "t-body",
        JSON,
        br#"{"company_id": 123456, "user_id": 789123, "name": "Ada"}"#,
    );
    assert_rendered(
        &response,
        202,
        JSON,
        r#"{"company_id": 123456, "name": "Ada", "valid": "myResult"}"#,
    );
    assert_eq!(
        response.json(),
        json!({"company_id": 123456, "name": "Ada", "valid": "myResult"})
    );

    // A form: an object of its decoded fields (`+` is a space, percent-escapes decoded).
    let response = post(
        &stack,
        "t-body",
        "application/x-www-form-urlencoded",
        b"company_id=654321&name=Ada+Lovelace+%22AL%22&extra=K%C3%B6ln",
    );
    assert_rendered(
        &response,
        202,
        JSON,
        r#"{"company_id": 654321, "name": "Ada Lovelace \"AL\"", "valid": "myResult"}"#,
    );

    // Plain text: bound as one string.
    let text = "hello, \"world\"\nsecond line {{ not a template }}";
    let response = post(&stack, "t-body", "text/plain", text.as_bytes());
    assert_eq!(response.status, 202, "body {:?}", response.text());
    assert_eq!(response.header("content-type"), Some(JSON));
    assert_eq!(response.json(), json!({ "text": text }));

    // The executor got each body byte for byte.
    let bodies: Vec<Vec<u8>> = stack.executor.requests().iter().map(recorded_body).collect();
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[2], text.as_bytes());
}

// --- Sync: passthrough --------------------------------------------------------------------------

#[test]
fn a_sync_flow_without_a_response_passes_the_executor_answer_through() {
    let stack = Stack::start(&flow_file());

    // What the executor answers for this request when asked directly (as flowgate would ask).
    let direct = send(
        stack.executor.port(),
        "POST",
        "/v1/flow-webhook/f-1004",
        &[
            ("content-type", JSON),
            ("x-flowgate-flow-id", "f-1004"),
            ("x-flowgate-ref-id", "web4"),
            ("x-flowgate-mode", "sync"),
            ("x-flowgate-flow-status", "draft"),
        ],
        BODY,
    );
    assert_eq!(direct.status, 200, "direct: {:?}", direct.text());
    let response = post(&stack, "f-1004", JSON, BODY);
    assert_eq!(response.status, 200, "body {:?}", response.text());
    assert_eq!(response.text(), direct.text(), "the executor's body, byte for byte");
    assert_eq!(response.header("content-type"), Some(JSON));
    assert_eq!(
        response.json(),
        json!({"echo": {"body": {"company_id": 123456, "user_id": 789123}}})
    );

    // Another 2xx status and its body come through unchanged too (an injected 201 answer).
    stack.executor.set_fault(json!({"mode": "status", "status": 201}));
    let response = post(&stack, "t-plain", JSON, BODY);
    assert_eq!(response.status, 201, "body {:?}", response.text());
    assert_eq!(response.text(), r#"{"error":"injected fault","status":201}"#);

    // Without a template, a 2xx body that is not JSON is not flowgate's business either.
    stack.executor.set_fault(json!({"mode": "garbage"}));
    let response = post(&stack, "t-plain", JSON, BODY);
    assert_eq!(response.status, 200, "body {:?}", response.text());
    assert_eq!(response.text(), "<html>oops");
}

// --- Executor faults ----------------------------------------------------------------------------

/// One flow of each kind: sync templated, sync passthrough, async default, async templated.
const EVERY_KIND: [&str; 4] = ["t-seed", "t-plain", "f-1003", "t-async-tpl"];

#[test]
fn an_executor_error_status_is_502_with_the_upstream_status_for_every_kind_of_flow() {
    let stack = Stack::start(&flow_file());
    stack.executor.set_fault(json!({"mode": "status", "status": 500}));
    for flow_id in EVERY_KIND {
        let response = post(&stack, flow_id, JSON, BODY);
        assert_executor_error(&response, 500, flow_id);
        assert!(
            !response.text().contains("injected fault"),
            "{flow_id}: the executor's error body leaks: {}",
            response.text()
        );
    }
    assert_eq!(stack.executor.requests().len(), EVERY_KIND.len());
}

#[test]
fn an_async_executor_that_cannot_queue_makes_the_sender_retry() {
    let stack = Stack::start(&flow_file());
    stack.executor.set_fault(json!({"mode": "status", "status": 503}));
    for flow_id in ["f-1003", "t-async-tpl"] {
        assert_unavailable(&post(&stack, flow_id, JSON, BODY), flow_id);
    }
    // A sync flow's 503 is an executor answer like any other error.
    assert_executor_error(&post(&stack, "t-seed", JSON, BODY), 503, "t-seed");
    assert!(
        stack.executor.runs().is_empty(),
        "nothing was queued: {:?}",
        stack.executor.runs()
    );
}

#[test]
fn garbage_from_the_executor_is_502_for_a_templated_sync_flow() {
    let stack = Stack::start(&flow_file());
    stack.executor.set_fault(json!({"mode": "garbage"}));
    for flow_id in ["t-seed", "t-body"] {
        let response = post(&stack, flow_id, JSON, BODY);
        assert_executor_error(&response, 200, flow_id);
    }
    // An async executor's 2xx is an acceptance whatever its body: without a JSON object there
    // is no run data to pass on.
    let response = post(&stack, "f-1003", JSON, BODY);
    assert_eq!(response.status, 200, "body {:?}", response.text());
    assert_eq!(
        response.text(),
        r#"{"status":200,"error":null,"message":"Flow run scheduled","data":null}"#
    );
}

#[test]
fn a_dead_executor_is_503_with_retry_after_for_every_kind_of_flow() {
    let Stack { envoy, mut executor } = Stack::start(&flow_file());
    let port = envoy.port();
    assert_eq!(post_to(port, "t-seed", JSON, BODY).status, 201);

    executor.kill();
    for flow_id in EVERY_KIND {
        for _ in 0..2 {
            let response = post_to(port, flow_id, JSON, BODY);
            let retry_after = assert_unavailable(&response, flow_id);
            println!("{flow_id}: 503 executor_unavailable, retry-after {retry_after}");
        }
    }

    // Back again: the same flows answer normally.
    executor.restart();
    let response = post_to(port, "t-seed", JSON, BODY);
    assert_rendered(
        &response,
        201,
        "application/json; charset=utf-8",
        r#"{"valid": "myResult"}"#,
    );
    assert_scheduled(&post_to(port, "f-1003", JSON, BODY));
}

#[test]
fn a_slow_executor_is_504_for_every_kind_of_flow() {
    let executor = Executor::start(&flow_file());
    let envoy = Envoy::start(
        EnvoyOptions::new(plugin_config_for(&flow_file()), executor.port()).route_timeout(Duration::from_secs(1)),
    );
    executor.set_fault(json!({"mode": "slow", "delay_ms": 6000}));
    for flow_id in EVERY_KIND {
        let started = Instant::now();
        let response = post_to(envoy.port(), flow_id, JSON, BODY);
        let elapsed = started.elapsed();
        println!(
            "{flow_id}: {} after {:.0} ms (route timeout 1000 ms, executor delay 6000 ms)",
            response.status,
            ms(elapsed)
        );
        let envelope = assert_rejected(&response, 504, "executor_timeout");
        assert_eq!(envelope.data, Value::Null, "{flow_id}");
    }
}

#[test]
fn a_template_that_fails_at_render_time_is_500_naming_the_line_without_secrets() {
    let stack = Stack::start(&flow_file());
    let secret = "body-secret-4c1d9e7a0b3f";
    let body = format!(r#"{{"company_id": 123456, "secret": "{secret}"}}"#);
    let response = post(&stack, "t-broken", JSON, body.as_bytes());
    let envelope = assert_rejected(&response, 500, "template_error");
    println!("template_error message: {:?}", envelope.message);
    assert_eq!(envelope.data, Value::Null);
    assert!(
        envelope.message.contains("line 2"),
        "the message should name the template line: {:?}",
        envelope.message
    );
    assert!(
        envelope.message.contains("t-broken"),
        "the message should name the flow: {:?}",
        envelope.message
    );
    for leak in [secret, TOKEN, body.as_str(), "company_id"] {
        assert!(
            !response.text().contains(leak),
            "the reply contains {leak:?}: {}",
            response.text()
        );
    }
    // The flow did run: the failure is the template's, after the executor's answer.
    assert_eq!(stack.executor.requests().len(), 1);
}

#[test]
fn the_filters_own_replies_are_not_rewritten_by_its_response_path() {
    let stack = Stack::start(&flow_file());

    // A paused flow with a response template: the seed's paused reply, byte for byte.
    let response = post(&stack, "t-paused-tpl", JSON, BODY);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some(JSON));
    assert_eq!(response.text(), PAUSED);

    // Refusals of templated flows, sync and async, stay envelopes with their own headers.
    for flow_id in ["t-seed", "t-async-tpl"] {
        let response = stack.send(
            "POST",
            &format!("/v1/flow-webhook/{flow_id}"),
            &[("content-type", JSON)],
            BODY,
        );
        assert_rejected(&response, 401, "unauthorized");
        assert_eq!(response.header("www-authenticate"), Some(r#"Bearer realm="flowgate""#));
        let response = post(&stack, flow_id, JSON, b"{\"company_id\": ");
        assert_rejected(&response, 400, "invalid_body");
    }
    stack.executor.assert_received_nothing("paused and refused requests");

    // A fault envelope made in the response path is not answered again as another fault.
    stack.executor.set_fault(json!({"mode": "status", "status": 500}));
    let response = post(&stack, "t-seed", JSON, BODY);
    assert_executor_error(&response, 500, "t-seed");
}

// --- Async --------------------------------------------------------------------------------------

#[test]
fn an_async_flow_is_answered_at_once_and_runs_later() {
    let stack = Stack::demo();
    let started = Instant::now();
    let response = post(&stack, "f-1003", JSON, BODY);
    let latency = started.elapsed();
    let answered_at_ms = now_ms();
    println!(
        "async f-1003 (run_ms 2000): answered {} in {:.1} ms",
        response.status,
        ms(latency)
    );
    let run_id = assert_scheduled(&response);
    assert!(
        latency < Duration::from_millis(1500),
        "the sender waited {:.0} ms for an async flow that runs 2 s",
        ms(latency)
    );

    let runs = wait_for_runs(&stack.executor, std::slice::from_ref(&run_id));
    let run = &runs[&run_id];
    println!("run: {run}");
    assert_eq!(run["flow_id"], "f-1003");
    assert_eq!(run["mode"], "async");
    assert_eq!(run["state"], "completed", "{run}");
    assert_eq!(run["attempts"], 1, "{run}");
    assert_eq!(
        run["output"],
        json!({"res1": {"company_id": 123456, "user_id": 789123}})
    );
    let received = run["received_at_ms"].as_i64().expect("received_at_ms");
    let completed = run["completed_at_ms"].as_i64().expect("completed_at_ms");
    println!(
        "run took {} ms from acceptance to completion; completed {} ms after the sender had its answer",
        completed - received,
        completed - answered_at_ms
    );
    assert!(completed - received >= 2000, "{run}");
    assert!(
        completed >= answered_at_ms,
        "the run completed before the sender was answered: flowgate waited for it ({run})"
    );

    // One forwarded request, marked async.
    let request = stack.executor.only_request();
    assert_eq!(
        recorded_header(&recorded_headers(&request), "x-flowgate-mode"),
        ["async"]
    );
}

#[test]
fn an_async_flow_with_a_response_template_renders_the_run() {
    let stack = Stack::start(&flow_file());
    let response = post(&stack, "t-async-tpl", JSON, br#"{"company_id": 777, "user_id": 1}"#);
    assert_eq!(response.status, 202, "body {:?}", response.text());
    assert_eq!(response.header("content-type"), Some(JSON));
    let body = response.json();
    let run_id = body["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run_id rendered: {}", response.text()))
        .to_string();
    assert_eq!(
        response.text(),
        format!(r#"{{"accepted": true, "run_id": "{run_id}", "company_id": 777}}"#)
    );
    assert!(run_id.starts_with("run-"), "{run_id}");

    let runs = wait_for_runs(&stack.executor, std::slice::from_ref(&run_id));
    let run = &runs[&run_id];
    assert_eq!(run["flow_id"], "t-async-tpl");
    assert_eq!(run["state"], "completed", "{run}");
    assert_eq!(run["output"], json!({"res1": {"company_id": 777}}));
}

/// What one sender saw for one request.
#[derive(Debug)]
struct Outcome {
    company_id: u64,
    /// The run id of the 200, if one came within the attempts.
    run_id: Option<String>,
    attempts: u32,
    /// Statuses other than 200 and 503 (each is a failure).
    unexpected: Vec<(u16, String)>,
}

/// Retries per request: 0.25 s apart, so about 30 s of executor downtime is tolerated.
const MAX_ATTEMPTS: u32 = 120;
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Sends one async webhook like a real sender: retry every 503 (it carries Retry-After; a short
/// pause stands in for its 5 s here), up to MAX_ATTEMPTS.
fn send_until_acknowledged(port: u16, company_id: u64, retries: &AtomicUsize) -> Outcome {
    let body = format!(r#"{{"company_id": {company_id}, "user_id": 1}}"#);
    let mut outcome = Outcome {
        company_id,
        run_id: None,
        attempts: 0,
        unexpected: vec![],
    };
    while outcome.attempts < MAX_ATTEMPTS {
        outcome.attempts += 1;
        let response = post_to(port, "f-1003", JSON, body.as_bytes());
        match response.status {
            200 => {
                outcome.run_id = Some(assert_scheduled(&response));
                return outcome;
            }
            503 => {
                assert_unavailable(&response, "async sender during a crash");
                retries.fetch_add(1, Ordering::Relaxed);
                sleep(RETRY_PAUSE);
            }
            other => {
                outcome.unexpected.push((other, response.text()));
                return outcome;
            }
        }
    }
    outcome
}

#[test]
fn every_acknowledged_async_run_completes_exactly_once_across_an_executor_crash() {
    let Stack { envoy, mut executor } = Stack::demo();
    let port = envoy.port();

    // Dead executor: async senders are told to come back.
    executor.kill();
    for _ in 0..3 {
        assert_unavailable(&post_to(port, "f-1003", JSON, BODY), "async sender, executor down");
    }
    executor.restart();

    // Two senders send until told to stop; meanwhile the executor is killed and restarted.
    let acked = AtomicUsize::new(0);
    let retries = AtomicUsize::new(0);
    let next_id = AtomicUsize::new(1);
    let stop = AtomicBool::new(false);
    let finished = AtomicUsize::new(0);
    let outcomes = Mutex::new(Vec::<Outcome>::new());
    let wait_acks = |target: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        // A sender that gave up stops early; its outcome is reported below.
        while acked.load(Ordering::SeqCst) < target && finished.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "senders stalled {what}");
            sleep(Duration::from_millis(5));
        }
    };
    let (killed_after, restarted_after) = std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                // Bounded even if the main thread never says stop.
                for _ in 0..400 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let company_id = next_id.fetch_add(1, Ordering::SeqCst) as u64;
                    let outcome = send_until_acknowledged(port, company_id, &retries);
                    if outcome.run_id.is_some() {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    let failed = outcome.run_id.is_none();
                    outcomes.lock().expect("outcomes").push(outcome);
                    if failed {
                        break;
                    }
                    sleep(Duration::from_millis(10));
                }
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }
        wait_acks(15, "before the crash");
        let killed_after = acked.load(Ordering::SeqCst);
        executor.kill();
        sleep(Duration::from_millis(1500));
        executor.restart();
        let restarted_after = acked.load(Ordering::SeqCst);
        wait_acks(restarted_after + 15, "after the restart");
        stop.store(true, Ordering::SeqCst);
        (killed_after, restarted_after)
    });
    let outcomes = outcomes.into_inner().expect("outcomes");

    let failures: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.run_id.is_none() || !o.unexpected.is_empty())
        .collect();
    assert!(
        failures.is_empty(),
        "requests that never got a 200 (lost) or got something else than 200/503: {failures:#?}"
    );
    let retries = retries.load(Ordering::Relaxed);
    assert!(
        retries > 0,
        "no sender saw the executor down: the crash was not in the middle of the batch"
    );

    let run_ids: Vec<String> = outcomes.iter().filter_map(|o| o.run_id.clone()).collect();
    let unique: std::collections::HashSet<&String> = run_ids.iter().collect();
    assert_eq!(unique.len(), run_ids.len(), "two 200s carried the same run_id");

    let runs = wait_for_runs(&executor, &run_ids);
    let mut resumed = 0;
    for outcome in &outcomes {
        let run_id = outcome.run_id.as_ref().expect("checked above");
        let run = &runs[run_id];
        assert_eq!(run["flow_id"], "f-1003", "{run}");
        assert_eq!(run["state"], "completed", "acknowledged run did not complete: {run}");
        assert_eq!(
            run["output"]["res1"]["company_id"],
            json!(outcome.company_id),
            "the run of request {} ran someone else's body: {run}",
            outcome.company_id
        );
        let received = run["received_at_ms"].as_i64().unwrap_or(0);
        let completed = run["completed_at_ms"].as_i64().unwrap_or(0);
        assert!(completed - received >= 2000, "{run}");
        if run["attempts"].as_i64().unwrap_or(0) > 1 {
            resumed += 1;
        }
    }
    // Each run is one row: exactly one completed run per acknowledged request.
    let f1003_runs: Vec<&Value> = runs.values().filter(|r| r["flow_id"] == "f-1003").collect();
    let acked_set: std::collections::HashSet<&str> = run_ids.iter().map(String::as_str).collect();
    let unacknowledged = f1003_runs
        .iter()
        .filter(|r| !r["run_id"].as_str().is_some_and(|id| acked_set.contains(id)))
        .count();
    println!(
        "crash batch: {} requests, {} acknowledged (killed after {killed_after}, restarted after \
         {restarted_after}), {retries} 503 answers retried, max attempts for one request {}; \
         {} f-1003 runs in the store, {unacknowledged} of them not matched by a 200 (queued, but \
         the acceptance was lost in the crash and the sender retried); {resumed} acknowledged runs \
         were resumed after the crash (attempts > 1)",
        outcomes.len(),
        run_ids.len(),
        outcomes.iter().map(|o| o.attempts).max().unwrap_or(0),
        f1003_runs.len(),
    );
}

// --- Measurement --------------------------------------------------------------------------------

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

/// Not an assertion: the sync cost of rendering, for the lead to quote. `t-seed` (seed template)
/// and `t-plain` (no template) run the same step on the same executor; requests alternate.
#[test]
fn measure_the_sync_render_overhead() {
    const N: usize = 200;
    let stack = Stack::start(&flow_file());
    for _ in 0..20 {
        assert_eq!(post(&stack, "t-seed", JSON, BODY).status, 201);
        assert_eq!(post(&stack, "t-plain", JSON, BODY).status, 200);
    }
    let (mut templated, mut passthrough) = (Vec::with_capacity(N), Vec::with_capacity(N));
    for _ in 0..N {
        let started = Instant::now();
        let response = post(&stack, "t-seed", JSON, BODY);
        templated.push(started.elapsed());
        assert_eq!(response.status, 201);
        let started = Instant::now();
        let response = post(&stack, "t-plain", JSON, BODY);
        passthrough.push(started.elapsed());
        assert_eq!(response.status, 200);
    }
    templated.sort();
    passthrough.sort();
    let (t50, p50) = (percentile(&templated, 0.5), percentile(&passthrough, 0.5));
    println!(
        "sync render overhead, N={N} sequential requests each (new connection per request), 2 workers:\n  \
         templated t-seed:   median {:.3} ms, p90 {:.3} ms\n  \
         passthrough t-plain: median {:.3} ms, p90 {:.3} ms\n  \
         median difference {:+.3} ms",
        ms(t50),
        ms(percentile(&templated, 0.9)),
        ms(p50),
        ms(percentile(&passthrough, 0.9)),
        ms(t50) - ms(p50)
    );
}
