//! Sender verification end to end (contract 7): one flow per scheme of the catalogue, in a
//! real Envoy with the real filter, fed deliveries signed by the providers' own libraries
//! (tests/signers/: `vectors.py` signs them now, through `sign.py`).

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use flowgate_e2e::*;
use serde_json::{json, Value};

/// The seed's paused reply, byte for byte.
const PAUSED: &str = r#"{"status":200,"error":"biz_logic","message":"Flow status is `paused`. Unpause to run this flow using a webhook","data":null}"#;
/// Schemes that sign a timestamp.
const TIMED: [&str; 12] = [
    "stripe",
    "slack",
    "standard-webhooks",
    "svix",
    "zoom",
    "linear",
    "hubspot",
    "discord",
    "sendgrid",
    "twitch",
    "calendly",
    "hmac",
];
/// Schemes that prove the sender with a shared value and do not sign the body.
const UNSIGNED_BODY: [&str; 3] = ["gitlab", "okta", "msgraph"];

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Deliveries signed at `at` (Unix seconds) for every scheme, and the handshakes.
fn vectors(at: u64) -> Value {
    let python = repo_root().join(".venv-signers/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh --test",
        python.display()
    );
    let output = Command::new(python)
        .arg(repo_root().join("tests/signers/vectors.py"))
        .args(["--now", &at.to_string()])
        .output()
        .expect("run tests/signers/vectors.py");
    assert!(
        output.status.success(),
        "vectors.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("vectors.py prints JSON")
}

fn schemes(vectors: &Value) -> &Vec<Value> {
    vectors["schemes"].as_array().unwrap()
}

fn name(scheme: &Value) -> &str {
    scheme["scheme"].as_str().unwrap()
}

/// One flow per scheme (`s-<scheme>`), with this status, checked by `verify` only.
fn signed_flows(vectors: &Value, status: &str) -> Value {
    let flows: Vec<Value> = schemes(vectors)
        .iter()
        .map(|s| json!({"id": format!("s-{}", name(s)), "ref_id": "web1", "status": status, "verify": s["verify"]}))
        .collect();
    json!({ "flows": flows })
}

/// A vector's request headers but its pseudo-headers (`:method`, `:path`, `:authority`).
fn regular_headers(request: &Value) -> Vec<(&str, &str)> {
    request["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| !h[0].as_str().unwrap().starts_with(':'))
        .map(|h| (h[0].as_str().unwrap(), h[1].as_str().unwrap()))
        .collect()
}

/// Sends a vector's request (`{"headers": [[name, value]...], "body": ...}`) as it was signed:
/// `:authority` as `host`, the path as is.
fn deliver(stack: &Stack, request: &Value) -> Response {
    let header = |name: &str| {
        request["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == name)
            .and_then(|h| h[1].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let mut headers = regular_headers(request);
    let authority = header(":authority");
    headers.push(("host", &authority));
    stack.send(
        &header(":method"),
        &header(":path"),
        &headers,
        request["body"].as_str().unwrap().as_bytes(),
    )
}

/// A request with its provider's headers (all after the five plain ones) removed.
fn without_signature(scheme: &Value) -> Value {
    let mut bare = scheme["new"].clone();
    bare["headers"].as_array_mut().unwrap().truncate(5);
    match name(scheme) {
        "msgraph" => bare["body"] = json!(r#"{"value":[{"subscriptionId":"1"}]}"#),
        // Twilio's JSON proof is in the URL.
        "twilio" => bare["headers"][1][1] = json!("/v1/flow-webhook/s-twilio"),
        _ => {}
    }
    bare
}

fn with_changed_byte(request: &Value) -> Value {
    let mut changed = request.clone();
    let mut body = changed["body"].as_str().unwrap().as_bytes().to_vec();
    let at = body.iter().position(u8::is_ascii_alphanumeric).unwrap();
    body[at] = if body[at] == b'Z' { b'Y' } else { b'Z' };
    changed["body"] = json!(String::from_utf8(body).unwrap());
    changed
}

fn assert_invalid_signature(response: &Response, what: &str) -> Envelope {
    assert_eq!(
        response.status,
        401,
        "{what}: {} {:?}",
        response.status,
        response.text()
    );
    assert_rejected(response, 401, "invalid_signature")
}

#[test]
fn every_scheme_runs_a_signed_delivery_once_with_its_body_unchanged_under_either_key() {
    let vectors = vectors(now());
    let stack = Stack::start(&signed_flows(&vectors, "live"));
    for scheme in schemes(&vectors) {
        for key in ["old", "new"] {
            stack.executor.clear_requests();
            let request = &scheme[key];
            let response = deliver(&stack, request);
            assert_eq!(
                response.status,
                200,
                "{} ({key} key): {:?}",
                name(scheme),
                response.text()
            );
            let received = stack.executor.only_request();
            assert_eq!(
                recorded_body(&received),
                request["body"].as_str().unwrap().as_bytes(),
                "{}: body bytes",
                name(scheme)
            );
            let headers = recorded_headers(&received);
            assert_eq!(
                recorded_header(&headers, "x-flowgate-flow-id"),
                [format!("s-{}", name(scheme))]
            );
        }
    }
}

#[test]
fn a_wrong_key_a_changed_byte_a_stale_timestamp_or_a_missing_header_is_refused_and_never_forwarded() {
    let at = now();
    let vectors = vectors(at);
    let stale = self::vectors(at - 3600);
    let stack = Stack::start(&signed_flows(&vectors, "live"));
    let mut refused = 0;
    for (scheme, old) in schemes(&vectors).iter().zip(schemes(&stale)) {
        let name = name(scheme);
        let envelope = assert_invalid_signature(&deliver(&stack, &scheme["wrong"]), name);
        assert_eq!(
            envelope.message, "signature check failed: no key of this flow matches",
            "{name}"
        );
        refused += 1;
        if !UNSIGNED_BODY.contains(&name) {
            assert_invalid_signature(&deliver(&stack, &with_changed_byte(&scheme["new"])), name);
            refused += 1;
        }
        if TIMED.contains(&name) {
            let envelope = assert_invalid_signature(&deliver(&stack, &old["new"]), name);
            assert!(
                envelope.message.contains("timestamp outside the tolerance"),
                "{name}: {}",
                envelope.message
            );
            refused += 1;
        }
        let envelope = assert_invalid_signature(&deliver(&stack, &without_signature(scheme)), name);
        assert!(
            envelope.message.starts_with("signature check failed: missing"),
            "{name}: {}",
            envelope.message
        );
        refused += 1;
        let secrets = scheme["verify"]["secrets"].as_array().unwrap();
        for secret in secrets.iter().filter_map(Value::as_str).filter(|s| s.len() >= 8) {
            assert!(!envelope.message.contains(secret), "{name}: the message shows a secret");
        }
    }
    stack
        .executor
        .assert_received_nothing("deliveries that failed their signature check");
    assert_eq!(
        stack.envoy.stat("wasmcustom.flowgate.requests.invalid_signature"),
        refused
    );
    assert!(
        stack
            .envoy
            .stat("wasmcustom.flowgate.verify.invalid_signature_mismatch")
            >= 25
    );
    assert!(stack.envoy.stat("wasmcustom.flowgate.verify.invalid_signature_stale") >= 12);
    assert!(stack.envoy.stat("wasmcustom.flowgate.verify.invalid_signature_missing") >= 25);
}

#[test]
fn a_paused_flow_is_revealed_only_to_a_verified_delivery() {
    let vectors = vectors(now());
    let stack = Stack::start(&signed_flows(&vectors, "paused"));
    for scheme in schemes(&vectors) {
        assert_invalid_signature(&deliver(&stack, &scheme["wrong"]), name(scheme));
        let response = deliver(&stack, &scheme["new"]);
        assert_eq!(response.text(), PAUSED, "{}", name(scheme));
    }
    stack.executor.assert_received_nothing("deliveries to paused flows");
}

#[test]
fn every_handshake_gets_exactly_the_providers_expected_answer_at_the_edge() {
    let vectors = vectors(now());
    let stack = Stack::start(&signed_flows(&vectors, "live"));
    let handshakes = vectors["handshakes"].as_array().unwrap();
    for handshake in handshakes {
        let scheme = handshake["scheme"].as_str().unwrap();
        let response = deliver(&stack, &handshake["request"]);
        let answer = &handshake["answer"];
        assert_eq!(response.status, 200, "{scheme}: {:?}", response.text());
        assert_eq!(
            response.header("content-type"),
            answer["content_type"].as_str(),
            "{scheme}"
        );
        match answer.get("json") {
            Some(expected) => assert_eq!(&response.json(), expected, "{scheme}"),
            None => assert_eq!(response.text(), answer["body"].as_str().unwrap(), "{scheme}"),
        }
    }
    stack.executor.assert_received_nothing("handshakes");
    assert_eq!(
        stack.envoy.stat("wasmcustom.flowgate.requests.handshake"),
        handshakes.len() as u64
    );
    // A signed handshake with a bad signature is refused like any delivery.
    let slack = handshakes.iter().find(|h| h["scheme"] == "slack").unwrap();
    assert_invalid_signature(
        &deliver(&stack, &with_changed_byte(&slack["request"])),
        "slack handshake",
    );
}

#[test]
fn keys_from_envoys_environment_verify_and_stay_out_of_the_config_dump() {
    let vectors = vectors(now());
    let github = schemes(&vectors).iter().find(|s| name(s) == "github").unwrap();
    let secret = github["verify"]["secrets"][1].as_str().unwrap();
    let mut flow_file = json!({"flows": [{
        "id": "s-github", "ref_id": "web1", "status": "live",
        "verify": {"scheme": "github", "secret_env": ["FLOWGATE_SECRET_S_GITHUB"]}
    }]});
    let executor = Executor::start(&flow_file);
    let envoy = Envoy::start(
        EnvoyOptions::new(plugin_config_for(&flow_file), executor.port()).host_env("FLOWGATE_SECRET_S_GITHUB", secret),
    );
    let stack = Stack { envoy, executor };
    assert_eq!(deliver(&stack, &github["new"]).status, 200);
    assert_invalid_signature(&deliver(&stack, &github["old"]), "a key not in the environment");
    let dump = admin_get(stack.envoy.admin_port(), "/config_dump").unwrap();
    assert!(dump.contains("FLOWGATE_SECRET_S_GITHUB") && !dump.contains(secret));
    // An inline secret, by contrast, is part of Envoy's configuration.
    flow_file["flows"][0]["verify"] = json!({"scheme": "github", "secrets": [secret]});
    let inline = Envoy::start(EnvoyOptions::new(plugin_config_for(&flow_file), stack.executor.port()));
    assert!(admin_get(inline.admin_port(), "/config_dump").unwrap().contains(secret));
}

/// The README's signed curl against the demo's flows, as scripts/run.sh serves them:
/// examples/flows.json and examples/signed-flows.json (`f-1006`, signed like GitHub).
#[test]
fn the_demos_signed_flow_answers_the_readmes_curl() {
    let mut flows = demo_flows();
    let text = std::fs::read_to_string(repo_root().join("examples/signed-flows.json")).unwrap();
    let signed: Value = serde_json::from_str(&text).unwrap();
    flows["flows"]
        .as_array_mut()
        .unwrap()
        .extend(signed["flows"].as_array().unwrap().iter().cloned());
    let stack = Stack::start(&flows);
    let signature = (
        "x-hub-signature-256",
        "sha256=435e4b7407bdb36c1147a3db30d2173a04ed8c6074363d34bb6fac0e024d8f35",
    );
    let json = ("content-type", "application/json");
    let path = "/v1/flow-webhook/f-1006";
    let response = stack.send("POST", path, &[signature, json], br#"{"action":"opened","number":1}"#);
    assert_eq!(response.status, 200, "{:?}", response.text());
    assert_eq!(response.json(), json!({"res1": {"action": "opened"}}));
    let response = stack.send("POST", path, &[signature, json], br#"{"action":"opened","number":2}"#);
    let envelope = assert_invalid_signature(&response, "one byte changed");
    assert_eq!(envelope.message, "signature check failed: no key of this flow matches");
    assert_eq!(stack.executor.requests().len(), 1);
}

/// Contract 6 for signed flows: a delivery chunked without Content-Length, or over HTTP/2,
/// is verified over the whole body, and runs once with it unchanged.
#[test]
fn signed_deliveries_are_verified_however_they_arrive() {
    let vectors = vectors(now());
    let stack = Stack::start(&signed_flows(&vectors, "live"));
    for name in ["github", "stripe", "standard-webhooks", "sendgrid"] {
        let scheme = schemes(&vectors).iter().find(|s| self::name(s) == name).unwrap();
        let request = &scheme["new"];
        let body = request["body"].as_str().unwrap().as_bytes();
        let headers = regular_headers(request);
        let path = format!("/v1/flow-webhook/s-{name}");
        let (head, tail) = body.split_at(body.len() / 2);
        for how in ["chunked", "h2"] {
            stack.executor.clear_requests();
            let response = match how {
                "chunked" => send_chunked(stack.envoy.port(), "POST", &path, &headers, &[head, tail]),
                _ => send_h2(stack.envoy.port(), "POST", &path, &headers, body),
            };
            assert_eq!(response.status, 200, "{name} {how}: {:?}", response.text());
            assert_eq!(recorded_body(&stack.executor.only_request()), body, "{name} {how}");
        }
        stack.executor.clear_requests();
        let changed = with_changed_byte(request);
        let changed = changed["body"].as_str().unwrap().as_bytes();
        let response = send_h2(stack.envoy.port(), "POST", &path, &headers, changed);
        assert_invalid_signature(&response, &format!("{name} over h2, one byte changed"));
        stack.executor.assert_received_nothing("a changed delivery over h2");
    }
}
