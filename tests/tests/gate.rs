//! The edge gate, end to end (contract 1): each test runs its own reference executor and
//! Envoy (2 workers) with the flowgate filter and the demo flows of `examples/flows.json`, sends
//! real requests, and checks what the sender got and what the executor received.

use flowgate_e2e::*;
use serde_json::{json, Value};

const JSON: (&str, &str) = ("content-type", "application/json");
const BODY: &[u8] = br#"{"company_id": 123456, "user_id": 789123}"#;
/// The seed's paused reply, byte for byte.
const PAUSED: &str = r#"{"status":200,"error":"biz_logic","message":"Flow status is `paused`. Unpause to run this flow using a webhook","data":null}"#;

fn bearer(flow_id: &str) -> String {
    format!("Bearer {}", demo_token(flow_id, 0))
}

/// POSTs a JSON body to a webhook path with an optional Authorization value.
fn post(stack: &Stack, path: &str, authorization: Option<&str>, body: &[u8]) -> Response {
    let mut headers = vec![JSON];
    if let Some(value) = authorization {
        headers.push(("authorization", value));
    }
    stack.send("POST", path, &headers, body)
}

/// The x-flowgate-* headers a recorded request carried.
fn flowgate_headers(request: &Value) -> Vec<(String, String)> {
    recorded_headers(request)
        .into_iter()
        .filter(|(name, _)| name.starts_with("x-flowgate-"))
        .collect()
}

// --- Route --------------------------------------------------------------------------------------

#[test]
fn paths_outside_the_prefix_pass_untouched_except_x_flowgate_headers() {
    let stack = Stack::demo();
    let response = stack.send(
        "GET",
        "/healthz?probe=1",
        &[
            ("x-flowgate-flow-id", "evil"),
            ("X-Flowgate-Mode", "evil"),
            ("authorization", "Bearer not-a-webhook-token"),
            ("x-custom", "kept"),
        ],
        b"",
    );
    // The executor answers 404 to anything that is not a webhook: its answer passes through.
    assert_eq!(response.status, 404, "body {:?}", response.text());

    let request = stack.executor.only_request();
    assert_eq!(request["method"], "GET");
    assert_eq!(request["path"], "/healthz?probe=1");
    assert_eq!(
        request["webhook"], false,
        "the executor took it for a webhook: {request}"
    );
    let headers = recorded_headers(&request);
    assert_eq!(flowgate_headers(&request), vec![], "x-flowgate-* must be removed");
    assert_eq!(
        recorded_header(&headers, "authorization"),
        ["Bearer not-a-webhook-token"]
    );
    assert_eq!(recorded_header(&headers, "x-custom"), ["kept"]);
}

#[test]
fn unknown_empty_or_overlong_flow_ids_are_404() {
    let stack = Stack::demo();
    for path in [
        "/v1/flow-webhook/f-9999",
        "/v1/flow-webhook/",
        "/v1/flow-webhook/f-1001/x",
    ] {
        for auth in [None, Some(bearer("f-1001"))] {
            let response = post(&stack, path, auth.as_deref(), BODY);
            let envelope = assert_rejected(&response, 404, "not_found");
            assert_eq!(envelope.data, Value::Null, "{path}");
        }
    }
    stack.executor.assert_received_nothing("unknown flows");
}

#[test]
fn non_canonical_spellings_of_a_webhook_path_are_refused() {
    let stack = Stack::demo();
    let token = bearer("f-1001");
    for path in [
        "//v1/flow-webhook/f-1001",
        "/v1//flow-webhook/f-1001",
        "/v1/flow-webhook%2Ff-1001",
        "/v1/flow-webhook%2ff-1001",
        "/v1/x/../flow-webhook/f-1001",
        "/v1/./flow-webhook/f-1001",
        "/v1/flow-webhook/%66-1001",
        // Envoy 1.40 hands a raw backslash to the filter unchanged (checked by hand).
        "/v1\\flow-webhook/f-1001",
        "/V1/Flow-Webhook/f-1001",
    ] {
        let response = post(&stack, path, Some(&token), BODY);
        assert_eq!(
            response.status,
            400,
            "{path}: got {} {:?}",
            response.status,
            response.text()
        );
        assert_rejected(&response, 400, "invalid_path");
    }
    stack.executor.assert_received_nothing("non-canonical webhook paths");
}

/// The contract (docs/contract.md): a path that only normalises into the prefix is gated like the canonical one or
/// refused, never passed through. Sent without a token, so "gated" means 401 here.
#[test]
fn other_spellings_never_reach_the_executor_ungated() {
    let stack = Stack::demo();
    for path in [
        "/v1/flow-webhook%5Cf-1001",
        "/v1/flow-webhook%5cf-1001",
        "/v1/flow-webhook//f-1001",
        "/v1/flow-webhook/./f-1001",
        "/v1/flow-webhook/x/../f-1001",
        "/%761/flow-webhook/f-1001",
        "/v1/flow%2Dwebhook/f-1001",
        "/v1/flow-webhook/f%2D1001",
        "/v1/flow-webhook\\f-1001",
        "/v1/flow-webhook/%2e/f-1001",
        "/v1/%2e%2e/v1/flow-webhook/f-1001",
        "/v1/flow-webhook/%252Ff-1001",
    ] {
        let response = post(&stack, path, None, BODY);
        let envelope = envelope(&response);
        assert!(
            matches!(
                (response.status, envelope.error.as_deref()),
                (400, Some("invalid_path")) | (401, Some("unauthorized")) | (404, Some("not_found"))
            ),
            "{path}: got {} {:?}",
            response.status,
            response.text()
        );
    }
    stack
        .executor
        .assert_received_nothing("spellings of webhook paths without a token");
}

#[test]
fn a_query_string_is_ignored_for_matching_and_forwarded_unchanged() {
    let stack = Stack::demo();
    let path = "/v1/flow-webhook/f-1001?a=1&b=%2F";
    let response = post(&stack, path, Some(&bearer("f-1001")), BODY);
    assert_eq!(response.status, 200, "body {:?}", response.text());
    assert_eq!(response.text(), r#"{"valid": "myResult"}"#);
    assert_eq!(stack.executor.only_request()["path"], path);

    stack.executor.clear_requests();
    let response = post(&stack, "/v1/flow-webhook/f-1001?a=1", None, BODY);
    assert_rejected(&response, 401, "unauthorized");
    stack
        .executor
        .assert_received_nothing("a query string does not bypass auth");
}

// --- Method -------------------------------------------------------------------------------------

#[test]
fn methods_other_than_the_flows_are_405_with_allow() {
    let stack = Stack::demo();
    let response = stack.send(
        "GET",
        "/v1/flow-webhook/f-1001",
        &[("authorization", &bearer("f-1001"))],
        b"",
    );
    assert_rejected(&response, 405, "method_not_allowed");
    assert_eq!(response.header("allow"), Some("POST"));

    // The method is checked before the token.
    let response = stack.send("DELETE", "/v1/flow-webhook/f-1001", &[], b"");
    assert_rejected(&response, 405, "method_not_allowed");
    assert_eq!(response.header("allow"), Some("POST"));

    let response = stack.send(
        "PUT",
        "/v1/flow-webhook/f-1001",
        &[JSON, ("authorization", &bearer("f-1001"))],
        BODY,
    );
    assert_rejected(&response, 405, "method_not_allowed");

    let response = stack.send(
        "GET",
        "/v1/flow-webhook/f-1005",
        &[("authorization", &bearer("f-1005"))],
        b"",
    );
    assert_rejected(&response, 405, "method_not_allowed");
    let mut allow: Vec<&str> = response
        .header("allow")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .collect();
    allow.sort_unstable();
    assert_eq!(allow, ["POST", "PUT"]);
    stack.executor.assert_received_nothing("methods the flows do not allow");
}

#[test]
fn a_flow_that_allows_put_runs_on_put() {
    let stack = Stack::demo();
    let response = stack.send(
        "PUT",
        "/v1/flow-webhook/f-1005",
        &[JSON, ("authorization", &bearer("f-1005"))],
        br#"{"company_id": 7, "user_id": 8}"#,
    );
    assert_eq!(response.status, 201, "body {:?}", response.text());
    assert!(response
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/json"));
    assert_eq!(
        response.json(),
        json!({"created": true, "company_id": 7, "user_id": 8, "label": "company-7"})
    );
    assert_eq!(stack.executor.only_request()["method"], "PUT");
}

// --- Auth ---------------------------------------------------------------------------------------

/// Asserts a 401 whose challenge is `challenge` (or only starts with `Bearer realm="flowgate"`
/// when None), and whose message does not contain `secret`.
fn assert_unauthorized(response: &Response, challenge: Option<&str>, secret: &str) {
    let envelope = assert_rejected(response, 401, "unauthorized");
    let www = response.header_all("www-authenticate");
    assert_eq!(www.len(), 1, "one www-authenticate header: {www:?}");
    match challenge {
        Some(expected) => assert_eq!(www[0], expected),
        None => assert!(www[0].starts_with(r#"Bearer realm="flowgate""#), "{www:?}"),
    }
    if !secret.is_empty() {
        assert!(
            !response.text().contains(secret),
            "the reply echoes the token: {}",
            response.text()
        );
    }
    assert!(!envelope.message.is_empty());
}

const CHALLENGE: &str = r#"Bearer realm="flowgate""#;
const CHALLENGE_INVALID: &str = r#"Bearer realm="flowgate", error="invalid_token""#;

#[test]
fn a_missing_token_is_401_with_a_bearer_challenge() {
    let stack = Stack::demo();
    let response = post(&stack, "/v1/flow-webhook/f-1001", None, BODY);
    assert_unauthorized(&response, Some(CHALLENGE), "");
    stack.executor.assert_received_nothing("no token");
}

#[test]
fn a_wrong_token_is_401_invalid_token_and_never_echoed() {
    let stack = Stack::demo();
    let wrong = "wrong-token-3b9f0c2a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e";
    let response = post(
        &stack,
        "/v1/flow-webhook/f-1001",
        Some(&format!("Bearer {wrong}")),
        BODY,
    );
    assert_unauthorized(&response, Some(CHALLENGE_INVALID), wrong);

    // Another flow's valid token is a wrong token here.
    let other = demo_token("f-1003", 0);
    let response = post(
        &stack,
        "/v1/flow-webhook/f-1001",
        Some(&format!("Bearer {other}")),
        BODY,
    );
    assert_unauthorized(&response, Some(CHALLENGE_INVALID), &other);

    // Tokens are case-sensitive.
    let upper = demo_token("f-1001", 0).to_ascii_uppercase();
    let response = post(
        &stack,
        "/v1/flow-webhook/f-1001",
        Some(&format!("Bearer {upper}")),
        BODY,
    );
    assert_unauthorized(&response, Some(CHALLENGE_INVALID), &upper);
    stack.executor.assert_received_nothing("wrong tokens");
}

#[test]
fn the_scheme_word_is_case_insensitive() {
    let stack = Stack::demo();
    let token = demo_token("f-1001", 0);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let response = post(
            &stack,
            "/v1/flow-webhook/f-1001",
            Some(&format!("{scheme} {token}")),
            BODY,
        );
        assert_eq!(response.status, 200, "{scheme}: body {:?}", response.text());
        assert_eq!(response.text(), r#"{"valid": "myResult"}"#, "{scheme}");
    }
    assert_eq!(stack.executor.requests().len(), 4);
}

#[test]
fn malformed_authorization_is_401() {
    let stack = Stack::demo();
    let token = demo_token("f-1001", 0);
    let response = post(&stack, "/v1/flow-webhook/f-1001", Some("Basic dXNlcjpwYXNz"), BODY);
    assert_unauthorized(&response, Some(CHALLENGE), "dXNlcjpwYXNz");

    for value in [
        format!("Bearer  {token}"),
        format!("Bearer {token} {token}"),
        format!("Bearer {token} other"),
        format!("Bearer\t{token}"),
        format!("Bearer{token}"),
        token.clone(),
        "Bearer".to_string(),
        "Bearer ".to_string(),
    ] {
        let response = post(&stack, "/v1/flow-webhook/f-1001", Some(&value), BODY);
        assert_unauthorized(&response, None, &token);
    }

    // Two Authorization headers, both with the valid token.
    let response = stack.send(
        "POST",
        "/v1/flow-webhook/f-1001",
        &[
            JSON,
            ("authorization", &bearer("f-1001")),
            ("authorization", &bearer("f-1001")),
        ],
        BODY,
    );
    assert_unauthorized(&response, None, &token);
    stack.executor.assert_received_nothing("malformed Authorization");
}

#[test]
fn both_rotated_tokens_work() {
    let stack = Stack::demo();
    for n in 0..2 {
        let auth = format!("Bearer {}", demo_token("f-1004", n));
        let response = post(&stack, "/v1/flow-webhook/f-1004", Some(&auth), BODY);
        assert_eq!(response.status, 200, "token {n}: body {:?}", response.text());
    }
    assert_eq!(stack.executor.requests().len(), 2);
}

// --- Flow status --------------------------------------------------------------------------------

#[test]
fn a_paused_flow_answers_the_seed_reply_at_the_edge() {
    let stack = Stack::demo();
    let response = post(&stack, "/v1/flow-webhook/f-1002", Some(&bearer("f-1002")), BODY);
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), PAUSED);
    assert!(response
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/json"));
    let envelope = envelope(&response);
    assert_eq!(envelope.status, 200);
    assert_eq!(envelope.error.as_deref(), Some("biz_logic"));
    stack.executor.assert_received_nothing("a paused flow");
}

#[test]
fn a_paused_flow_is_not_revealed_without_a_valid_token() {
    let stack = Stack::demo();
    let response = post(&stack, "/v1/flow-webhook/f-1002", None, BODY);
    assert_unauthorized(&response, Some(CHALLENGE), "");
    let response = post(&stack, "/v1/flow-webhook/f-1002", Some("Bearer wrong-token"), BODY);
    assert_unauthorized(&response, Some(CHALLENGE_INVALID), "wrong-token");
    let response = post(&stack, "/v1/flow-webhook/f-1002", Some(&bearer("f-1001")), BODY);
    assert_unauthorized(&response, Some(CHALLENGE_INVALID), &demo_token("f-1001", 0));
    stack
        .executor
        .assert_received_nothing("a paused flow without its token");
}

// --- Size and body ------------------------------------------------------------------------------

/// A JSON object for f-1005 of exactly `len` bytes.
fn json_of_len(len: usize) -> Vec<u8> {
    let head = r#"{"company_id": 1, "user_id": 2, "pad": ""#;
    let tail = r#""}"#;
    let pad = len - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(pad)).into_bytes()
}

#[test]
fn a_body_over_the_flows_limit_is_413() {
    let stack = Stack::demo();
    let auth = bearer("f-1005");
    let path = "/v1/flow-webhook/f-1005";

    let response = post(&stack, path, Some(&auth), &json_of_len(1025));
    assert_rejected(&response, 413, "payload_too_large");

    // Decided from Content-Length alone: a large declared body.
    let response = post(&stack, path, Some(&auth), &json_of_len(200_000));
    assert_rejected(&response, 413, "payload_too_large");

    // No Content-Length: a chunked body, counted as it arrives.
    let body = json_of_len(2000);
    let (a, b) = body.split_at(700);
    let response = send_chunked(
        stack.envoy.port(),
        "POST",
        path,
        &[JSON, ("authorization", &auth)],
        &[a, b],
    );
    assert_rejected(&response, 413, "payload_too_large");
    stack.executor.assert_received_nothing("bodies over the limit");
}

#[test]
fn a_body_at_the_limit_runs_with_or_without_content_length() {
    let stack = Stack::demo();
    let auth = bearer("f-1005");
    let path = "/v1/flow-webhook/f-1005";
    let body = json_of_len(1024);
    let response = post(&stack, path, Some(&auth), &body);
    assert_eq!(response.status, 201, "body {:?}", response.text());

    let (a, b) = body.split_at(500);
    let response = send_chunked(
        stack.envoy.port(),
        "POST",
        path,
        &[JSON, ("authorization", &auth)],
        &[a, b],
    );
    assert_eq!(response.status, 201, "chunked: body {:?}", response.text());

    let requests = stack.executor.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(recorded_body(request), body);
    }
}

#[test]
fn invalid_json_is_400_saying_where() {
    let stack = Stack::demo();
    let auth = bearer("f-1001");
    for content_type in ["application/json", "application/json; charset=utf-8"] {
        let response = stack.send(
            "POST",
            "/v1/flow-webhook/f-1001",
            &[("content-type", content_type), ("authorization", &auth)],
            b"{\"company_id\": 1,\n \"user_id\": }",
        );
        let envelope = assert_rejected(&response, 400, "invalid_body");
        assert!(
            envelope.message.contains("line 2") && envelope.message.contains("column"),
            "{content_type}: the message should say where parsing failed: {:?}",
            envelope.message
        );
    }
    stack.executor.assert_received_nothing("invalid JSON");
}

#[test]
fn a_body_that_is_not_declared_json_is_not_parsed() {
    let stack = Stack::demo();
    let body = b"not json {";
    let response = stack.send(
        "POST",
        "/v1/flow-webhook/f-1004",
        &[("content-type", "text/plain"), ("authorization", &bearer("f-1004"))],
        body,
    );
    assert_eq!(response.status, 200, "body {:?}", response.text());
    assert_eq!(recorded_body(&stack.executor.only_request()), body);
}

// --- Admitted requests --------------------------------------------------------------------------

#[test]
fn an_admitted_request_reaches_the_executor_as_sent_minus_the_secret() {
    let stack = Stack::demo();
    let body = "{\"a\": 1,  \"b\" : \"\u{e9}\\u00e9\",\n\"n\": [1.50, 2e3]}".as_bytes();
    let path = "/v1/flow-webhook/f-1004?x=1&y=%2F";
    let response = stack.send(
        "POST",
        path,
        &[
            JSON,
            ("authorization", &bearer("f-1004")),
            ("x-flowgate-mode", "evil"),
            ("x-flowgate-flow-id", "evil"),
            ("x-flowgate-other", "evil"),
            ("x-custom", "kept"),
        ],
        body,
    );
    // f-1004 has no response template: the executor's answer passes through.
    assert_eq!(response.status, 200, "body {:?}", response.text());
    assert_eq!(
        response.json()["echo"]["body"],
        serde_json::from_slice::<Value>(body).expect("json")
    );

    let request = stack.executor.only_request();
    assert_eq!(request["method"], "POST");
    assert_eq!(request["path"], path);
    assert_eq!(recorded_body(&request), body, "body bytes must be unchanged");
    let headers = recorded_headers(&request);
    assert_eq!(recorded_header(&headers, "authorization"), Vec::<&str>::new());
    assert_eq!(recorded_header(&headers, "x-custom"), ["kept"]);
    assert_eq!(recorded_header(&headers, "content-type"), ["application/json"]);
    let mut flowgate = flowgate_headers(&request);
    flowgate.sort();
    let expected: Vec<(String, String)> = [
        ("x-flowgate-flow-id", "f-1004"),
        ("x-flowgate-flow-status", "draft"),
        ("x-flowgate-mode", "sync"),
        ("x-flowgate-ref-id", "web4"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    assert_eq!(flowgate, expected);
}

#[test]
fn sync_and_async_flows_are_marked_for_the_executor() {
    let stack = Stack::demo();
    let response = post(&stack, "/v1/flow-webhook/f-1001", Some(&bearer("f-1001")), BODY);
    assert_eq!(response.status, 200, "body {:?}", response.text());
    assert_eq!(response.text(), r#"{"valid": "myResult"}"#);

    let response = post(&stack, "/v1/flow-webhook/f-1003", Some(&bearer("f-1003")), BODY);
    assert_eq!(response.status, 200, "body {:?}", response.text());
    let envelope = envelope(&response);
    assert_eq!(envelope.error, None);
    assert_eq!(envelope.message, "Flow run scheduled");
    assert!(envelope.data["run_id"].is_string(), "{:?}", envelope.data);

    let requests = stack.executor.requests();
    assert_eq!(requests.len(), 2);
    let marks = |r: &Value| {
        let headers = recorded_headers(r);
        [
            "x-flowgate-flow-id",
            "x-flowgate-ref-id",
            "x-flowgate-mode",
            "x-flowgate-flow-status",
        ]
        .map(|n| recorded_header(&headers, n).join(","))
    };
    assert_eq!(marks(&requests[0]), ["f-1001", "web1", "sync", "live"]);
    assert_eq!(marks(&requests[1]), ["f-1003", "web3", "async", "live"]);
}

// --- HTTP/2 -------------------------------------------------------------------------------------

#[test]
fn h2c_prior_knowledge_is_gated_too() {
    let stack = Stack::demo();
    let port = stack.envoy.port();
    let response = send_h2(port, "POST", "/v1/flow-webhook/f-1001", &[JSON], BODY);
    assert_unauthorized(&response, Some(CHALLENGE), "");
    stack.executor.assert_received_nothing("h2c without a token");

    let response = send_h2(
        port,
        "POST",
        "/v1/flow-webhook/f-1002",
        &[JSON, ("authorization", &bearer("f-1002"))],
        BODY,
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), PAUSED);

    let response = send_h2(
        port,
        "POST",
        "/v1//flow-webhook/f-1001",
        &[JSON, ("authorization", &bearer("f-1001"))],
        BODY,
    );
    assert_rejected(&response, 400, "invalid_path");
    stack.executor.assert_received_nothing("h2c refusals");

    let response = send_h2(
        port,
        "POST",
        "/v1/flow-webhook/f-1001?h2=1",
        &[JSON, ("authorization", &bearer("f-1001")), ("x-flowgate-mode", "evil")],
        BODY,
    );
    assert_eq!(response.status, 200, "body {:?}", response.text());
    assert_eq!(response.text(), r#"{"valid": "myResult"}"#);
    let request = stack.executor.only_request();
    assert_eq!(request["path"], "/v1/flow-webhook/f-1001?h2=1");
    assert_eq!(recorded_body(&request), BODY);
    let headers = recorded_headers(&request);
    assert_eq!(recorded_header(&headers, "authorization"), Vec::<&str>::new());
    assert_eq!(recorded_header(&headers, "x-flowgate-mode"), ["sync"]);
    assert_eq!(recorded_header(&headers, "x-flowgate-flow-id"), ["f-1001"]);
}

// --- Invalid plugin configuration ---------------------------------------------------------------

/// The demo plugin configuration with one flow's field replaced.
fn demo_config_with(flow_id: &str, field: &str, value: Value) -> Value {
    let mut config = plugin_config_for(&demo_flows());
    let flows = config["flows"].as_array_mut().expect("flows");
    let flow = flows.iter_mut().find(|f| f["id"] == flow_id).expect("demo flow");
    flow[field] = value;
    config
}

fn assert_refused(config: EnvoyOptions, must_name: &[&str]) {
    let log = Envoy::start_expect_failure(config);
    let named = log
        .lines()
        .any(|line| line.contains("flowgate") && must_name.iter().all(|word| line.contains(word)));
    assert!(named, "Envoy's log should name {must_name:?} in one line:\n{log}");
}

#[test]
fn a_token_digest_that_is_not_64_hex_chars_is_refused_at_load() {
    let executor = Executor::demo();
    let config = demo_config_with("f-1003", "token_sha256", json!([sha256_hex("t"), "abc123"]));
    assert_refused(EnvoyOptions::new(config, executor.port()), &["f-1003", "token_sha256"]);
    let config = demo_config_with("f-1004", "token_sha256", json!([sha256_hex("t").to_ascii_uppercase()]));
    assert_refused(EnvoyOptions::new(config, executor.port()), &["f-1004", "token_sha256"]);
}

#[test]
fn a_response_template_that_does_not_compile_is_refused_at_load() {
    let executor = Executor::demo();
    let response = json!({"status": 200, "content_type": "application/json", "body": "{\"a\": {% if %}1{% endif %}}"});
    let config = demo_config_with("f-1001", "response", response);
    assert_refused(EnvoyOptions::new(config, executor.port()), &["f-1001", "response"]);
}

#[test]
fn other_invalid_configurations_are_refused_at_load() {
    let executor = Executor::demo();
    let config = demo_config_with("f-1002", "status", json!("running"));
    assert_refused(EnvoyOptions::new(config, executor.port()), &["f-1002", "status"]);
    assert_refused(EnvoyOptions::raw("{\"flows\": [", executor.port()), &[]);
}

// --- Metrics ------------------------------------------------------------------------------------

/// docs/operations.md: one `wasmcustom.flowgate.requests.<outcome>` counter per outcome, counted
/// once per request whichever worker's VM handled it.
#[test]
fn outcomes_are_counted_in_envoy_stats() {
    let stack = Stack::demo();
    for _ in 0..2 {
        post(&stack, "/v1/flow-webhook/f-1001", None, BODY);
    }
    post(&stack, "/v1/flow-webhook/f-9999", None, BODY);
    post(&stack, "/v1/flow-webhook/f-1001", Some(&bearer("f-1001")), BODY);
    post(&stack, "/v1/flow-webhook/f-1002", Some(&bearer("f-1002")), BODY);
    stack.send("GET", "/healthz", &[], b"");
    let stats = stack.envoy.stats();
    let counted = |outcome: &str| {
        let name = format!("wasmcustom.flowgate.requests.{outcome}");
        stats
            .get(&name)
            .unwrap_or_else(|| panic!("{name} is not in /stats"))
            .to_string()
    };
    let outcomes = ["unauthorized", "not_found", "admitted_sync", "biz_logic", "passed"];
    let got: Vec<String> = outcomes.iter().map(|o| counted(o)).collect();
    assert_eq!(got, ["2", "1", "1", "1", "1"], "counters for {outcomes:?}");
}

// --- Keep-alive ---------------------------------------------------------------------------------

/// Refusals do not cost the sender its connection: on one kept-alive HTTP/1.1 connection, a run
/// of edge replies (each with a body the filter never forwards) is followed by an admitted request.
/// 400s are left out: Envoy 1.40 itself closes an HTTP/1.1 connection after any 400 local reply
/// (checked with a bare proxy-wasm filter), whoever sends it.
#[test]
fn refusals_keep_the_connection_alive() {
    let stack = Stack::demo();
    let mut connection = Connection::open(stack.envoy.port()).expect("connect");
    let token = bearer("f-1001");
    let f1002 = bearer("f-1002");
    // (method, path, authorization, body, expected status). A 413 decided from Content-Length
    // is answered without waiting for the body (contract 6), so its connection closes.
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a [u8], u16);
    let refusals: [Case; 4] = [
        ("POST", "/v1/flow-webhook/f-1001", None, BODY, 401),
        ("POST", "/v1/flow-webhook/f-9999", Some(&token), BODY, 404),
        ("PUT", "/v1/flow-webhook/f-1001", Some(&token), BODY, 405),
        ("POST", "/v1/flow-webhook/f-1002", Some(&f1002), BODY, 200),
    ];
    for (method, path, auth, body, status) in refusals {
        let mut headers = vec![JSON];
        headers.extend(auth.map(|a| ("authorization", a)));
        let response = connection
            .send(method, path, &headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} on a kept-alive connection: {e}"));
        assert_eq!(response.status, status, "{method} {path}: {:?}", response.text());
        envelope(&response);
        assert_ne!(
            response.header("connection"),
            Some("close"),
            "{method} {path} ({status}) closed the connection"
        );
    }
    stack
        .executor
        .assert_received_nothing("refusals on a kept-alive connection");

    let response = connection
        .send(
            "POST",
            "/v1/flow-webhook/f-1001",
            &[JSON, ("authorization", &token)],
            BODY,
        )
        .expect("admitted request after the refusals");
    assert_eq!(response.status, 200, "{:?}", response.text());
    assert_eq!(response.text(), r#"{"valid": "myResult"}"#);
    assert_eq!(stack.executor.requests().len(), 1);
}
