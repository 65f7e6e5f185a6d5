//! Every way a request can arrive (contract 6): trailers in both directions, bodies that
//! never come, `Expect: 100-continue`, answers larger than Envoy's buffer, and header names
//! spelled with underscores. Nothing refused may reach the executor, whichever way it ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use flowgate_e2e::*;
use serde_json::json;

fn bearer(flow_id: &str) -> String {
    format!("Bearer {}", demo_token(flow_id, 0))
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[test]
fn h2_request_trailers_never_carry_a_refused_request_upstream() {
    let stack = Stack::demo();
    let port = stack.envoy.port();
    let trailers = [("x-checksum", "1")];
    // A paused flow, no token: 401. With its token: the paused reply.
    let response = h2::send_with_trailers(port, "/v1/flow-webhook/f-1002", &[JSON], b"{}", &trailers);
    assert_rejected(&response, 401, "unauthorized");
    let paused = bearer("f-1002");
    let headers = [JSON, ("authorization", paused.as_str())];
    let response = h2::send_with_trailers(port, "/v1/flow-webhook/f-1002", &headers, b"{}", &trailers);
    assert_eq!(response.text(), flowgate::reply::PAUSED_BODY);
    // A valid token with a body that is not JSON: 400, the body never checked by anyone else.
    let live = bearer("f-1001");
    let headers = [JSON, ("authorization", live.as_str())];
    let response = h2::send_with_trailers(port, "/v1/flow-webhook/f-1001", &headers, b"{\"a\":", &trailers);
    assert_rejected(&response, 400, "invalid_body");
    stack
        .executor
        .assert_received_nothing("refused requests that ended in trailers");
}

#[test]
fn h2_request_trailers_end_an_admitted_request_which_runs_once() {
    let stack = Stack::demo();
    let live = bearer("f-1001");
    let headers = [JSON, ("authorization", live.as_str())];
    let trailers = [("x-checksum", "1"), ("x_flowgate_mode", "evil")];
    let body = br#"{"company_id":123456}"#;
    let response = h2::send_with_trailers(stack.envoy.port(), "/v1/flow-webhook/f-1001", &headers, body, &trailers);
    assert_eq!(
        (response.status, response.text()),
        (200, r#"{"valid": "myResult"}"#.to_string())
    );
    let request = stack.executor.only_request();
    assert_eq!(request["body"], String::from_utf8_lossy(body).as_ref());
    let received = recorded_headers(&request);
    assert!(!received.iter().any(|(n, _)| n == "authorization"), "{received:?}");
    assert!(
        received.contains(&("x-flowgate-mode".into(), "sync".into())),
        "{received:?}"
    );
}

#[test]
fn a_413_from_content_length_does_not_wait_for_the_body() {
    let stack = Stack::demo();
    let live = bearer("f-1005");
    // Over f-1005's 1 KiB limit, under the 64 KiB drain size; the body is never sent.
    for expect in ["", "expect: 100-continue\r\n"] {
        let head = format!(
            "POST /v1/flow-webhook/f-1005 HTTP/1.1\r\nhost: x\r\nauthorization: {live}\r\ncontent-type: application/json\r\ncontent-length: 2048\r\n{expect}\r\n"
        );
        let response = send_withholding_body(stack.envoy.port(), head.as_bytes());
        assert_rejected(&response, 413, "payload_too_large");
    }
    stack.executor.assert_received_nothing("413 from content-length");
}

#[test]
fn a_refused_body_is_not_drained_past_the_flows_limit() {
    // Envoy's buffer (16 KiB) is sized for the largest flow limit (f-1005: 1 KiB here);
    // a refused 32 KiB body must not be read into it (Envoy would answer its own 413).
    let mut flows = demo_flows();
    flows["flows"].as_array_mut().unwrap().retain(|f| f["id"] == "f-1005");
    let executor = Executor::start(&flows);
    let envoy = Envoy::start(EnvoyOptions::new(plugin_config_for(&flows), executor.port()).buffer_limit(16 * 1024));
    let body = vec![b' '; 32 * 1024];
    let response = send(envoy.port(), "POST", "/v1/flow-webhook/f-1005", &[JSON], &body);
    assert_rejected(&response, 401, "unauthorized");
    executor.assert_received_nothing("an unauthorized request");
}

#[test]
fn underscore_spellings_of_flowgate_headers_are_removed() {
    let stack = Stack::demo();
    let live = bearer("f-1001");
    let forged = [
        ("x_flowgate_flow_id", "f-evil"),
        ("X_FLOWGATE_MODE", "async"),
        ("x-flowgate_ref-id", "evil"),
    ];
    let mut headers = vec![JSON, ("authorization", live.as_str())];
    headers.extend(forged);
    let response = send(
        stack.envoy.port(),
        "POST",
        "/v1/flow-webhook/f-1001",
        &headers,
        br#"{"company_id":1}"#,
    );
    assert_eq!(response.status, 200);
    let response = send(stack.envoy.port(), "GET", "/elsewhere", &forged, b"");
    assert_eq!(
        response.status, 404,
        "the executor's own answer to a path outside the prefix"
    );
    for request in stack.executor.requests() {
        let received = recorded_headers(&request);
        assert!(
            received
                .iter()
                .all(|(n, v)| !n.contains('_') && v != "evil" && v != "f-evil"),
            "{received:?}"
        );
    }
}

/// An HTTP/1.1 upstream that answers every request with the same bytes, and counts them.
struct Upstream {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl Upstream {
    fn answering(answer: Vec<u8>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = reader.get_mut().write_all(&answer);
            }
        });
        Upstream { port, requests }
    }
}

fn chunked_with_trailers(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\nx-run-digest: abc\r\n\r\n",
        body.len()
    )
    .into_bytes()
}

fn post(envoy: &Envoy, flow_id: &str) -> Response {
    let token = bearer(flow_id);
    let headers = [JSON, ("authorization", token.as_str())];
    send(
        envoy.port(),
        "POST",
        &format!("/v1/flow-webhook/{flow_id}"),
        &headers,
        br#"{"company_id":123456}"#,
    )
}

#[test]
fn executor_answers_with_trailers_are_rendered_not_passed() {
    const OUTPUT: &str = r#"{"res1":{"value":"myResult"}}"#;
    let http1 = Upstream::answering(chunked_with_trailers(OUTPUT));
    let http2 = h2::serve_with_trailers(OUTPUT.as_bytes());
    for (port, protocol) in [
        (http1.port, ExecutorProtocol::Http1WithTrailers),
        (http2, ExecutorProtocol::Http2),
    ] {
        let config = plugin_config_for(&demo_flows());
        let envoy = Envoy::start(EnvoyOptions::new(config, port).executor_protocol(protocol));
        let response = post(&envoy, "f-1001");
        let rendered = (200, r#"{"valid": "myResult"}"#.to_string());
        assert_eq!((response.status, response.text()), rendered, "{protocol:?}");
        let response = post(&envoy, "f-1003");
        assert_eq!(response.status, 200, "{protocol:?}");
        assert_eq!(response.json()["message"], "Flow run scheduled");
        assert_eq!(response.json()["data"], json!({"res1": {"value": "myResult"}}));
    }
    assert_eq!(http1.requests.load(Ordering::SeqCst), 2);
}

#[test]
fn executor_answers_larger_than_envoys_buffer_become_envelopes() {
    // 5 MiB of output behind a 4 MiB buffer: Envoy would answer its own plain-text 500.
    let output = format!(r#"{{"res1":{{"value":"{}"}}}}"#, "x".repeat(5 * 1024 * 1024));
    let announced = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{output}",
        output.len()
    );
    let chunked = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{output}\r\n0\r\n\r\n",
        output.len()
    );
    for answer in [announced, chunked] {
        let upstream = Upstream::answering(answer.into_bytes());
        let config = plugin_config_for(&demo_flows());
        let envoy = Envoy::start(EnvoyOptions::new(config, upstream.port).buffer_limit(4 * 1024 * 1024));
        let response = post(&envoy, "f-1001");
        let envelope = assert_rejected(&response, 502, "executor_error");
        assert!(envelope.message.contains("too large"), "{envelope:?}");
        // An async run was accepted all the same: acknowledged, so the sender does not retry.
        let response = post(&envoy, "f-1003");
        assert_eq!(response.status, 200);
        assert_eq!(response.json()["message"], "Flow run scheduled");
    }
}
