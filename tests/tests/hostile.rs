//! A hostile-input corpus run end to end through the real filter in a real Envoy, in front of the
//! real reference executor (issue "Hardening", items 2 and 5).
//!
//! The corpus is a table: each case is a request (HTTP/1.1 bytes sent as they are, possibly
//! trickled or cut off, or HTTP/2 through curl) and the outcome the contract and the docs call for:
//!
//! - `Edge(status, code)`: flowgate answers with its envelope (`error` = code);
//! - `Envoy(status)`: Envoy answers itself, before (or instead of) the filter: a malformed request
//!   line, header limits, framing errors. Envoy's reply is not an envelope;
//! - `Forwarded`: the webhook is admitted and the executor receives it unchanged (method, path,
//!   body bytes) minus `Authorization`, with flowgate's own `x-flowgate-*` headers only;
//! - `Passed`: not a webhook however spelled, so it passes to the executor untouched;
//! - `NoAnswer`: a sender that stops partway gets nothing, and nothing reaches the executor.
//!
//! Every case runs in one Envoy + executor stack, with the executor's record cleared before it.
//! After every case: the executor received nothing that should have been refused, flowgate counted
//! the outcome it answered, and Envoy's wasm stats show no VM failure or reload. After the corpus,
//! HTTP/2 with many streams (126 requests, good and bad, multiplexed on one connection), then a
//! good request must still work, Envoy must still be live, and its log must show no trap.
//!
//! The summary table (name, expected, got) is printed at the end; run with `-- --nocapture` to see
//! it when everything passes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use flowgate_e2e::*;
use serde_json::{json, Value};

/// How long a stalled sender holds its connection open before checking that nothing moved.
const STALL: Duration = Duration::from_secs(2);
/// The seed's paused reply, byte for byte.
const PAUSED: &str = r#"{"status":200,"error":"biz_logic","message":"Flow status is `paused`. Unpause to run this flow using a webhook","data":null}"#;
const SEED_BODY: &[u8] = br#"{"company_id": 123456, "user_id": 789123}"#;
/// A flow like f-1004 (no template, sync) whose limit is above Envoy's 2 MiB buffer limit.
const LARGE_FLOW: &str = "h-large";
const LARGE_LIMIT: u64 = 8 * 1024 * 1024;

/// Envoy's wasm counters that must stay 0: a VM that failed is rebuilt (FAIL_RELOAD) and counted.
const VM_RELOADS: [&str; 4] = [
    "wasm.flowgate.vm_reload",
    "wasm.flowgate.vm_reload_backoff",
    "wasm.flowgate.vm_reload_failure",
    "wasm.flowgate.vm_reload_success",
];
/// Envoy's wasm runtime stats that must not move: a new VM would raise `created`.
const VM_STABLE: [&str; 3] = [
    "wasm.envoy.wasm.runtime.v8.created",
    "wasm.envoy.wasm.runtime.v8.active",
    "wasm.wasm_vm_count",
];
const UPSTREAM_REQUESTS: &str = "cluster.flow_executor.upstream_rq_total";

// ---------------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 request, serialised exactly as built.
#[derive(Clone)]
struct Req {
    method: String,
    target: Vec<u8>,
    version: &'static str,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Body,
}

#[derive(Clone)]
enum Body {
    /// Sent after a `content-length` (added unless the headers carry a length or an encoding).
    Sized(Vec<u8>),
    /// Sent as `transfer-encoding: chunked`, one chunk per item.
    Chunked(Vec<Vec<u8>>),
}

fn request(method: &str, target: impl AsRef<[u8]>) -> Req {
    Req {
        method: method.to_string(),
        target: target.as_ref().to_vec(),
        version: "HTTP/1.1",
        headers: vec![
            (b"host".to_vec(), b"flowgate.test".to_vec()),
            (b"connection".to_vec(), b"close".to_vec()),
        ],
        body: Body::Sized(Vec::new()),
    }
}

fn post(target: impl AsRef<[u8]>) -> Req {
    request("POST", target)
}

fn webhook(flow: &str) -> String {
    format!("/v1/flow-webhook/{flow}")
}

/// The demo token of a flow (`h-large` shares f-1004's).
fn bearer(flow: &str) -> String {
    let flow = if flow == LARGE_FLOW { "f-1004" } else { flow };
    format!("Bearer {}", demo_token(flow, 0))
}

impl Req {
    fn header(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Req {
        self.headers.push((name.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    fn without(mut self, name: &str) -> Req {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_bytes()));
        self
    }

    fn json(self) -> Req {
        self.header("content-type", "application/json")
    }

    fn token(self, flow: &str) -> Req {
        self.header("authorization", bearer(flow))
    }

    fn body(mut self, body: impl AsRef<[u8]>) -> Req {
        self.body = Body::Sized(body.as_ref().to_vec());
        self
    }

    fn chunks(mut self, chunks: Vec<Vec<u8>>) -> Req {
        self.body = Body::Chunked(chunks);
        self
    }

    fn version(mut self, version: &'static str) -> Req {
        self.version = version;
        self
    }

    fn has(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// The body as the executor should receive it.
    fn payload(&self) -> Vec<u8> {
        match &self.body {
            Body::Sized(bytes) => bytes.clone(),
            Body::Chunked(chunks) => chunks.concat(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.push(b' ');
        out.extend_from_slice(self.version.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        match &self.body {
            Body::Sized(body) => {
                if !self.has("content-length") && !self.has("transfer-encoding") {
                    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(body);
            }
            Body::Chunked(chunks) => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                for chunk in chunks {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
        }
        out
    }
}

/// How a case goes on the wire.
enum Wire {
    /// HTTP/1.1 bytes in pieces with a pause between them (one piece: all at once).
    H1 { pieces: Vec<Vec<u8>>, pause: Duration },
    /// HTTP/1.1 bytes after which the sender stops: the connection is held open, then closed.
    Stalled { bytes: Vec<u8> },
    /// HTTP/2 prior knowledge through curl (`send_h2`).
    H2 {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
}

/// What the sender gets back when the executor answered (or flowgate rendered its answer).
#[derive(Clone)]
enum Reply {
    Any,
    Exact(Vec<u8>),
    /// flowgate's async acknowledgement.
    Scheduled,
}

enum Expect {
    Edge(u16, &'static str),
    Envoy(u16),
    Forwarded {
        flow: &'static str,
        status: u16,
        reply: Reply,
    },
    Passed(u16),
    /// `upstream`: whether Envoy opens a request to the executor (a body the filter streams).
    NoAnswer {
        upstream: bool,
    },
}

impl Expect {
    fn describe(&self) -> String {
        match self {
            Expect::Edge(status, code) => format!("{status} {code}"),
            Expect::Envoy(status) => format!("{status} envoy"),
            Expect::Forwarded { status, .. } => format!("{status} forwarded"),
            Expect::Passed(status) => format!("{status} passed"),
            Expect::NoAnswer { upstream: false } => "no answer".into(),
            Expect::NoAnswer { upstream: true } => "no answer (upstream reset)".into(),
        }
    }
}

struct Case {
    name: String,
    wire: Wire,
    expect: Expect,
    /// Method, path and body the executor must see when the request is forwarded.
    method: String,
    path: String,
    body: Vec<u8>,
    head_request: bool,
}

impl Case {
    fn h1(name: &str, req: Req, expect: Expect) -> Case {
        Case::trickled(name, req, usize::MAX, Duration::ZERO, expect)
    }

    /// The request bytes in `piece`-byte pieces with `pause` after each.
    fn trickled(name: &str, req: Req, piece: usize, pause: Duration, expect: Expect) -> Case {
        let bytes = req.bytes();
        let pieces = bytes
            .chunks(piece.min(bytes.len()).max(1))
            .map(<[u8]>::to_vec)
            .collect();
        Case {
            wire: Wire::H1 { pieces, pause },
            ..Case::from_req(name, &req, expect)
        }
    }

    /// Only the first `keep` bytes of the request, then silence.
    fn stalled(name: &str, req: Req, keep: usize, expect: Expect) -> Case {
        let mut bytes = req.bytes();
        bytes.truncate(keep);
        Case {
            wire: Wire::Stalled { bytes },
            ..Case::from_req(name, &req, expect)
        }
    }

    /// An HTTP/2 request with a JSON content type, f-1001's token and `extra` headers.
    fn h2(name: &str, method: &str, path: &str, extra: &[(&str, &str)], body: &[u8], expect: Expect) -> Case {
        // f-1001's token, unless the request is for f-1005.
        let flow = if path.ends_with("/f-1005") { "f-1005" } else { "f-1001" };
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("authorization".to_string(), bearer(flow)),
        ];
        headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        Case {
            name: name.to_string(),
            wire: Wire::H2 {
                method: method.to_string(),
                path: path.to_string(),
                headers,
                body: body.to_vec(),
            },
            expect,
            method: method.to_string(),
            path: path.to_string(),
            body: body.to_vec(),
            head_request: false,
        }
    }

    fn from_req(name: &str, req: &Req, expect: Expect) -> Case {
        Case {
            name: name.to_string(),
            wire: Wire::H1 {
                pieces: Vec::new(),
                pause: Duration::ZERO,
            },
            expect,
            method: req.method.clone(),
            path: String::from_utf8_lossy(&req.target).into_owned(),
            body: req.payload(),
            head_request: req.method == "HEAD",
        }
    }

    /// The path the executor sees, when Envoy rewrites the request target (absolute form).
    fn executor_path(mut self, path: &str) -> Case {
        self.path = path.to_string();
        self
    }
}

fn edge(status: u16, code: &'static str) -> Expect {
    Expect::Edge(status, code)
}

fn envoy(status: u16) -> Expect {
    Expect::Envoy(status)
}

fn forwarded(flow: &'static str, status: u16, reply: Reply) -> Expect {
    Expect::Forwarded { flow, status, reply }
}

fn exact(body: &str) -> Reply {
    Reply::Exact(body.as_bytes().to_vec())
}

/// `{"company_id":123456,"d":[[...]]}` nested `depth` levels deep in all.
fn nested_seed(depth: usize) -> Vec<u8> {
    let inner = depth - 1;
    [
        b"{\"company_id\":123456,\"d\":".to_vec(),
        vec![b'['; inner],
        vec![b']'; inner],
        b"}".to_vec(),
    ]
    .concat()
}

fn nested_arrays(depth: usize) -> Vec<u8> {
    [vec![b'['; depth], vec![b']'; depth]].concat()
}

fn zeros_array(n: usize) -> Vec<u8> {
    let mut body = b"[0".to_vec();
    body.extend(b",0".repeat(n - 1));
    body.push(b']');
    body
}

/// A JSON object of exactly `len` bytes.
fn json_of_len(len: usize) -> Vec<u8> {
    let head = r#"{"company_id": 1, "user_id": 2, "pad": ""#;
    let tail = r#""}"#;
    format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len())).into_bytes()
}

/// The corpus: one case per line, `(name, request, expected)`, grouped by what they attack.
#[rustfmt::skip]
fn corpus() -> Vec<Case> {
    let f1001 = webhook("f-1001");
    let f1004 = webhook("f-1004");
    let f1005 = webhook("f-1005");
    let token = demo_token("f-1001", 0);
    let valid = || post(&f1001).json().token("f-1001").body(SEED_BODY);
    let my_result = || exact(r#"{"valid": "myResult"}"#);
    let auth = |value: &[u8]| post(&f1001).json().header("authorization", value).body(SEED_BODY);
    let long = |n: usize| format!("Bearer {}", "a".repeat(n)).into_bytes();
    let path = |target: &[u8]| post(target).json().token("f-1001").body(SEED_BODY);
    let method = |m: &str| request(m, &f1001).json().token("f-1001").body(SEED_BODY);
    let to = |flow: &str, content_type: &str, body: &[u8]| {
        let req = post(webhook(flow)).token(flow).body(body);
        if content_type.is_empty() { req } else { req.header("content-type", content_type) }
    };
    let json_to = |flow: &str, body: &[u8]| to(flow, "application/json", body);
    let length = |value: &str| post(&f1004).json().token("f-1004").header("content-length", value).body(b"{}");
    let mut repeated = valid();
    for _ in 0..199 {
        repeated = repeated.token("f-1001");
    }
    let mut many_headers = valid();
    for i in 0..150 {
        many_headers = many_headers.header(format!("x-h{i}"), "v");
    }
    let mut bad_chunk = post(&f1004).json().token("f-1004").header("transfer-encoding", "chunked");
    bad_chunk.body = Body::Sized(b"zz\r\n{}\r\n0\r\n\r\n".to_vec());
    let seed_chunks: Vec<Vec<u8>> = SEED_BODY.chunks(5).map(<[u8]>::to_vec).collect();
    let big_json = json_of_len(3 * 1024 * 1024);
    let gzip_json = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xab\xae\x05\x00\x43\xbf\xa6\xa3\x02\x00\x00\x00";
    let spoofed = valid().header("X-Flowgate-Flow-Id", "f-1002").header("x-flowgate-mode", "async")
        .header("x-flowgate-flow-status", "live").header("X-FLOWGATE-REF-ID", "evil").header("x-flowgate-admin", "1");
    let unauthorized = || edge(401, "unauthorized");
    let invalid_path = || edge(400, "invalid_path");
    let not_found = || edge(404, "not_found");
    let not_allowed = || edge(405, "method_not_allowed");
    let invalid_body = || edge(400, "invalid_body");
    let too_large = || edge(413, "payload_too_large");

    let mut cases = vec![
        // --- Authorization: oversized, repeated, control characters --------------------------------
        Case::h1("auth: 5,000-char token (past the filter's 4 KiB cap)", auth(&long(5_000)), unauthorized()),
        Case::h1("auth: 59,000-char token (under Envoy's 60 KiB)", auth(&long(59_000)), unauthorized()),
        // Envoy's max_request_headers_kb (60 KiB) answers 431 before any filter runs.
        Case::h1("auth: 61,500-char token (past Envoy's header limit)", auth(&long(61_500)), envoy(431)),
        Case::h1("auth: the valid header twice", valid().token("f-1001"), unauthorized()),
        // Envoy joins a repeated Authorization into one comma-separated value, so 200 of them are one
        // header (no 431 for the 100-header limit) and the filter sees a malformed credential.
        Case::h1("auth: the valid header 200 times", repeated, unauthorized()),
        Case::h1("auth: valid header, then a second one", valid().header("authorization", "Basic eDp5"), unauthorized()),
        // Control characters in a header value are refused by Envoy's HTTP/1 codec.
        Case::h1("auth: token with 0x01", auth(format!("Bearer {token}\x01").as_bytes()), envoy(400)),
        Case::h1("auth: token with NUL", auth(format!("Bearer ab\x00{token}").as_bytes()), envoy(400)),
        Case::h1("auth: token with DEL", auth(format!("Bearer {token}\x7f").as_bytes()), envoy(400)),
        Case::h1("auth: token with a bare CR", auth(format!("Bearer ab\rcd{token}").as_bytes()), unauthorized()),
        Case::h1("auth: token with a TAB inside", auth(format!("Bearer ab\t{token}").as_bytes()), unauthorized()),
        Case::h1("auth: token with 0xFF (obs-text)", auth(&[b"Bearer ab\xff".as_slice(), token.as_bytes()].concat()), unauthorized()),
        Case::h1("auth: token in UTF-8", auth("Bearer t\u{f6}k\u{e9}n-\u{1f511}".as_bytes()), unauthorized()),
        Case::h1("auth: empty value", auth(b""), unauthorized()),
        Case::h1("auth: the token as Basic credentials", auth(format!("Basic {token}").as_bytes()), unauthorized()),
        Case::h1("auth: the token plus '=' padding", auth(format!("Bearer {token}=").as_bytes()), unauthorized()),
        Case::h1("auth: another flow's valid token", auth(bearer("f-1003").as_bytes()), unauthorized()),
        // Envoy unfolds an obs-fold line continuation to a space: the credential is then well-formed.
        Case::h1("auth: obs-fold between scheme and token", auth(format!("Bearer\r\n {token}").as_bytes()), forwarded("f-1001", 200, my_result())),
        // Envoy trims the optional whitespace around a header value.
        Case::h1("auth: trailing whitespace after the token", auth(format!("Bearer {token}  \t").as_bytes()), forwarded("f-1001", 200, my_result())),
        Case::h1("auth: upper-case header names and scheme", post(&f1001).header("CONTENT-TYPE", "application/json").header("AUTHORIZATION", format!("BEARER {token}")).body(SEED_BODY), forwarded("f-1001", 200, my_result())),

        // --- Paths: '..', %2F and other spellings (docs/configuration.md, "Path matching") -----------
        // A raw path under the prefix is a webhook path to an executor that routes on it as it is.
        Case::h1("path: '..' out of the prefix after a flow id", path(b"/v1/flow-webhook/f-1001/../../healthz"), invalid_path()),
        Case::h1("path: '..%2F' out of the prefix", path(b"/v1/flow-webhook/..%2Ff-1001"), invalid_path()),
        Case::h1("path: flow id '..'", path(b"/v1/flow-webhook/.."), invalid_path()),
        Case::h1("path: '.' segment before the prefix", path(b"/v1/./flow-webhook/f-1001"), invalid_path()),
        Case::h1("path: '..' resolving into the prefix", path(b"/v1/x/../flow-webhook/f-1001"), invalid_path()),
        Case::h1("path: %2F as the last separator", path(b"/v1/flow-webhook%2Ff-1001"), invalid_path()),
        Case::h1("path: %252F (double-encoded)", path(b"/v1/flow-webhook%252Ff-1001"), invalid_path()),
        Case::h1("path: backslashes", path(b"/v1\\flow-webhook\\f-1001"), invalid_path()),
        Case::h1("path: %2e%2e segments after the flow id", path(b"/v1/flow-webhook/f-1001/%2e%2e/%2e%2e/healthz"), invalid_path()),
        Case::h1("path: %00 after the flow id", path(b"/v1/flow-webhook/f-1001%00"), invalid_path()),
        Case::h1("path: ;params on the prefix", path(b"/v1/flow-webhook;a=b/f-1001"), invalid_path()),
        Case::h1("path: upper-case prefix", path(b"/V1/FLOW-WEBHOOK/f-1001"), invalid_path()),
        Case::h1("path: '//' before the flow id", path(b"/v1/flow-webhook//f-1001"), invalid_path()),
        Case::h1("path: absolute form with a foreign authority", path(b"http://evil.example/v1/flow-webhook/f-1001"), forwarded("f-1001", 200, my_result())).executor_path("/v1/flow-webhook/f-1001"),
        Case::h1("path: hostile query string", path(b"/v1/flow-webhook/f-1001?next=%2F..%2F..%2Fadmin&x=%00&y=../../"), forwarded("f-1001", 200, my_result())),
        Case::h1("path: '..%2F' out of the webhook namespace entirely", post("/v1/x/..%2F..%2Fhealthz").token("f-1001"), Expect::Passed(404)),
        // Bytes Envoy's HTTP/1 codec or connection manager refuses in a request target.
        Case::h1("path: raw 0xFF byte", path(b"/v1/flow-webhook/f-1001\xff"), envoy(400)),
        Case::h1("path: raw UTF-8 (e-acute)", path(b"/v1/flow-webhook/f-1001\xc3\xa9"), envoy(400)),
        Case::h1("path: raw 0x01 byte", path(b"/v1/flow-webhook/f-1001\x01"), envoy(400)),
        Case::h1("path: #fragment", path(b"/v1/flow-webhook/f-1001#x"), envoy(400)),
        Case::h1("path: 0xFF in the query", path(b"/v1/flow-webhook/f-1001?q=\xff"), envoy(400)),
        Case::h1("path: relative (no leading slash)", path(b"v1/flow-webhook/f-1001"), envoy(400)),
        Case::h1("path: '*' with POST", path(b"*"), envoy(400)),
        Case::h1("path: 70,000 characters (past Envoy's header limit)", path(format!("/v1/flow-webhook/{}", "a".repeat(70_000)).as_bytes()), envoy(431)),

        // --- Flow ids: percent-encoded, overlong ----------------------------------------------------
        Case::h1("flow id: one char percent-encoded", path(b"/v1/flow-webhook/f%2D1001"), invalid_path()),
        Case::h1("flow id: fully percent-encoded", path(b"/v1/flow-webhook/%66%2D%31%30%30%31"), invalid_path()),
        Case::h1("flow id: invalid escape %ZZ", path(b"/v1/flow-webhook/%ZZ"), invalid_path()),
        Case::h1("flow id: trailing lone '%'", path(b"/v1/flow-webhook/f-1001%"), invalid_path()),
        Case::h1("flow id: 200 characters", path(format!("/v1/flow-webhook/f-{}", "1".repeat(198)).as_bytes()), not_found()),
        Case::h1("flow id: 20,000 characters", path(format!("/v1/flow-webhook/{}", "a".repeat(20_000)).as_bytes()), not_found()),
        Case::h1("flow id: wrong case", path(b"/v1/flow-webhook/F-1001"), not_found()),
        Case::h1("flow id: empty", path(b"/v1/flow-webhook/"), not_found()),
        Case::h1("flow id: trailing slash", path(b"/v1/flow-webhook/f-1001/"), not_found()),

        // --- Methods ------------------------------------------------------------------------------------
        // Envoy 1.40's HTTP/1 parser knows a fixed set of methods, upper-case; HTTP/2 passes any.
        Case::h1("method: FOO", method("FOO"), envoy(400)),
        Case::h1("method: lower-case post", method("post"), envoy(400)),
        Case::h1("method: CONNECT", method("CONNECT"), envoy(400)),
        Case::h1("method: TRACE", method("TRACE"), not_allowed()),
        Case::h1("method: PROPFIND", method("PROPFIND"), not_allowed()),
        Case::h1("method: OPTIONS", method("OPTIONS"), not_allowed()),
        Case::h1("method: PATCH", method("PATCH"), not_allowed()),
        Case::h1("method: DELETE", method("DELETE"), not_allowed()),
        Case::h1("method: GET with a body", method("GET"), not_allowed()),
        Case::h1("method: HEAD", request("HEAD", &f1001).token("f-1001"), not_allowed()),

        // --- Bodies: encodings, emptiness, nesting, size ---------------------------------------------
        Case::h1("body: non-UTF-8 JSON, templated flow", json_to("f-1001", b"{\"company_id\": \"\xff\xfe\"}"), invalid_body()),
        // RFC 8259 section 8.1: JSON text is UTF-8; a string holding 0xFF is not valid JSON.
        Case::h1("body: non-UTF-8 JSON string, untemplated flow", json_to("f-1004", b"{\"a\": \"\xff\xfe\"}"), invalid_body()),
        Case::h1("body: non-UTF-8 outside any string", json_to("f-1004", b"{\"a\": 1}\xff"), invalid_body()),
        Case::h1("body: non-UTF-8, text/plain", to("f-1004", "text/plain", b"\xff\xfe\x00\x01 raw"), forwarded("f-1004", 200, Reply::Any)),
        Case::h1("body: non-UTF-8, no content type", to("f-1004", "", b"\x80\x81\xc3("), forwarded("f-1004", 200, Reply::Any)),
        Case::h1("body: UTF-8 BOM before JSON", json_to("f-1001", &[b"\xef\xbb\xbf".as_slice(), SEED_BODY].concat()), invalid_body()),
        Case::h1("body: gzip-encoded JSON", json_to("f-1001", gzip_json).header("content-encoding", "gzip"), invalid_body()),
        Case::h1("body: trailing garbage after JSON", json_to("f-1004", b"{} {}"), invalid_body()),
        Case::h1("body: empty, JSON content type (templated)", json_to("f-1001", b""), invalid_body()),
        Case::h1("body: empty, JSON content type (untemplated)", json_to("f-1004", b""), invalid_body()),
        Case::h1("body: empty chunked body, JSON content type", post(&f1004).json().token("f-1004").chunks(vec![]), invalid_body()),
        Case::h1("body: whitespace only, JSON content type", json_to("f-1004", b" \r\n\t "), invalid_body()),
        Case::h1("body: empty, no content type", to("f-1004", "", b""), forwarded("f-1004", 200, Reply::Any)),
        // Nesting: an untemplated flow only checks the body (without recursion, any depth); a
        // templated flow parses it for its template, within serde_json's limit of 127 levels.
        Case::h1("body: 10,000-deep JSON, untemplated flow", json_to("f-1004", &nested_arrays(10_000)), forwarded("f-1004", 200, Reply::Any)),
        Case::h1("body: 32,768-deep JSON (64 KiB, at the limit)", json_to("f-1004", &nested_arrays(32_768)), forwarded("f-1004", 200, Reply::Any)),
        // A template that reads the body (f-1005 reads web5) needs it as a value: 128 levels is the limit.
        Case::h1("body: 127-deep JSON, template reads the body", json_to("f-1005", &nested_seed(127)), forwarded("f-1005", 201, Reply::Any)),
        Case::h1("body: 128-deep JSON, template reads the body", json_to("f-1005", &nested_seed(128)), invalid_body()),
        Case::h1("body: 500-deep JSON, template reads the body", json_to("f-1005", &nested_arrays(500)), invalid_body()),
        // The seed's template (f-1001) never reads the body, so any valid JSON goes through.
        Case::h1("body: 128-deep JSON, template ignores the body", json_to("f-1001", &nested_seed(128)), forwarded("f-1001", 200, Reply::Any)),
        Case::h1("body: 10,000-deep JSON, async flow", json_to("f-1003", &nested_arrays(10_000)), forwarded("f-1003", 200, Reply::Scheduled)),
        Case::h1("body: 32,000-element array, templated flow", json_to("f-1001", &zeros_array(32_000)), forwarded("f-1001", 200, exact(r#"{"valid": false}"#))),
        Case::h1("body: 35,000-element array (past the limit)", json_to("f-1001", &zeros_array(35_000)), too_large()),
        // Duplicate keys are valid JSON; the last one wins, in the filter and in the executor.
        Case::h1("body: duplicate keys", json_to("f-1001", br#"{"company_id": 1, "company_id": 123456}"#), forwarded("f-1001", 200, my_result())),
        // A number past f64: valid JSON grammar a template cannot hold (RFC 8259 section 9 lets a
        // parser limit ranges); an untemplated flow only checks the grammar.
        Case::h1("body: number 1e999999, template reads the body", json_to("f-1005", br#"{"company_id": 1e999999}"#), invalid_body()),
        Case::h1("body: number 1e999999, untemplated flow", json_to("f-1004", br#"{"n": 1e999999}"#), forwarded("f-1004", 200, Reply::Any)),
        Case::h1("body: at the flow's limit (1024)", json_to("f-1005", &json_of_len(1024)), forwarded("f-1005", 201, Reply::Any)),
        Case::h1("body: one byte past the limit (1025)", json_to("f-1005", &json_of_len(1025)), too_large()),
        Case::h1("content-length: 10^12 (body never sent)", length("1000000000000"), too_large()),
        Case::h1("content-length: 2^64-1", length("18446744073709551615"), too_large()),
        Case::h1("content-length: past 2^64", length("99999999999999999999"), envoy(400)),
        Case::h1("content-length: negative", length("-1"), envoy(400)),
        Case::h1("content-length: twice", length("2").header("content-length", "2"), envoy(400)),
        Case::h1("content-length with transfer-encoding", post(&f1004).json().token("f-1004").header("content-length", "5").chunks(vec![b"{}".to_vec()]), envoy(400)),
        Case::h1("transfer-encoding: identity", post(&f1004).json().token("f-1004").header("transfer-encoding", "identity").body(b"{}"), envoy(501)),
        Case::h1("chunked: invalid chunk size", bad_chunk, envoy(400)),
        Case::h1("chunked: past the limit in 3 chunks (JSON)", post(&f1004).json().token("f-1004").chunks(vec![vec![b' '; 30_000]; 3]), too_large()),
        Case::h1("chunked: past the limit in 3 chunks (text, streamable)", post(&f1004).header("content-type", "text/plain").token("f-1004").chunks(vec![vec![b'x'; 30_000]; 3]), too_large()),
        Case::h1("chunked: past the limit in 2,000 chunks of 40 bytes", post(&f1004).json().token("f-1004").chunks(vec![vec![b' '; 40]; 2_000]), too_large()),
        Case::h1("chunked: valid JSON in 5-byte chunks", post(&f1001).json().token("f-1001").chunks(seed_chunks.clone()), forwarded("f-1001", 200, my_result())),
        // Past Envoy's 2 MiB buffer limit on a flow whose own limit is higher (the misconfiguration
        // docs/configuration.md warns about): Envoy itself answers 413 while the filter buffers.
        Case::h1("body: 3 MiB JSON past Envoy's buffer (content-length)", json_to(LARGE_FLOW, &big_json), envoy(413)),
        Case::h1("body: 3 MiB JSON past Envoy's buffer (chunked)", post(webhook(LARGE_FLOW)).json().token(LARGE_FLOW).chunks(big_json.chunks(64 * 1024).map(<[u8]>::to_vec).collect()), envoy(413)),
        // A body of known, acceptable length that nothing needs streams through without buffering.
        Case::h1("body: 3 MiB octets streamed past Envoy's buffer", to(LARGE_FLOW, "application/octet-stream", &vec![b'x'; 3 * 1024 * 1024]), forwarded(LARGE_FLOW, 200, Reply::Any)),

        // --- Headers and framing ------------------------------------------------------------------
        Case::h1("headers: x-flowgate-* spoofed on a webhook", spoofed, forwarded("f-1001", 200, my_result())),
        Case::h1("headers: x-flowgate-* spoofed outside the prefix", request("GET", "/healthz").header("x-flowgate-flow-id", "f-1001").header("X-Flowgate-Mode", "sync"), Expect::Passed(404)),
        Case::h1("headers: 150 distinct headers (past Envoy's 100)", many_headers, envoy(431)),
        Case::h1("headers: space before the colon", post(&f1001).json().header("authorization ", bearer("f-1001")).body(SEED_BODY), envoy(400)),
        Case::h1("framing: no Host header", valid().without("host"), envoy(400)),
        Case::h1("framing: HTTP/1.0", valid().version("HTTP/1.0"), envoy(426)),
        // Envoy answers 100 Continue itself, then the filter's refusal follows.
        Case::h1("framing: Expect: 100-continue without a token", post(&f1001).json().header("expect", "100-continue").body(SEED_BODY), unauthorized()),

        // --- HTTP/2 (more in h2_many_streams) -----------------------------------------------------
        Case::h2("h2: method FOO", "FOO", &f1001, &[], SEED_BODY, not_allowed()),
        Case::h2("h2: lower-case method", "post", &f1001, &[], SEED_BODY, not_allowed()),
        Case::h2("h2: '..' out of the prefix", "POST", "/v1/flow-webhook/f-1001/../../healthz", &[], SEED_BODY, invalid_path()),
        Case::h2("h2: %2F in the path", "POST", "/v1/flow-webhook%2Ff-1001", &[], SEED_BODY, invalid_path()),
        Case::h2("h2: non-UTF-8 JSON", "POST", &f1001, &[], b"{\"company_id\": \"\xff\"}", invalid_body()),
        Case::h2("h2: 500-deep JSON, template reads the body", "POST", &f1005, &[], &nested_arrays(500), invalid_body()),
        Case::h2("h2: x-flowgate-* spoofed", "POST", &f1001, &[("x-flowgate-flow-id", "f-1004"), ("x-flowgate-mode", "async")], SEED_BODY, forwarded("f-1001", 200, my_result())),
    ];

    // --- Slow and stalled senders -------------------------------------------------------------------
    let pause = Duration::from_millis(60);
    let head_len = valid().bytes().len() - SEED_BODY.len();
    let mut body_3_by_3 = vec![valid().bytes()[..head_len].to_vec()];
    body_3_by_3.extend(SEED_BODY.chunks(3).map(<[u8]>::to_vec));
    let chunked = post(&f1001).json().token("f-1001").chunks(seed_chunks);
    let without_last_chunk = chunked.bytes().len() - b"0\r\n\r\n".len();
    let text = to("f-1004", "text/plain", &[b'x'; 100]);
    let text_half = text.bytes().len() - 50;
    cases.extend([
        Case::trickled("slow: whole request in 16-byte pieces", valid(), 16, Duration::from_millis(15), forwarded("f-1001", 200, my_result())),
        Case { wire: Wire::H1 { pieces: body_3_by_3, pause }, ..Case::from_req("slow: body 3 bytes at a time", &valid(), forwarded("f-1001", 200, my_result())) },
        Case::trickled("slow: invalid JSON trickled", json_to("f-1001", b"{\"company_id\": 123456, \"user_id\": }"), 12, pause, invalid_body()),
        Case::trickled("slow: chunked body trickled past the limit", post(&f1005).json().token("f-1005").chunks(vec![vec![b' '; 100]; 15]), 110, pause, too_large()),
        // A refused request with a short body is read to its end (keep-alive) before the reply.
        Case::trickled("slow: unknown flow, body trickled", post(webhook("f-9999")).json().token("f-1001").body(SEED_BODY), 8, Duration::from_millis(20), not_found()),
        Case::stalled("stalled: JSON body cut in half", valid(), valid().bytes().len() - SEED_BODY.len() / 2, Expect::NoAnswer { upstream: false }),
        Case::stalled("stalled: chunked body without its last chunk", chunked, without_last_chunk, Expect::NoAnswer { upstream: false }),
        Case::stalled("stalled: headers never finished", valid(), 60, Expect::NoAnswer { upstream: false }),
        // The filter lets a body of known, acceptable length that nothing needs stream through, so
        // the executor sees the request start and then a reset; it must not (and does not) run it.
        Case::stalled("stalled: streamed text body cut in half", text, text_half, Expect::NoAnswer { upstream: true }),
    ]);
    cases
}

// ---------------------------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------------------------

enum Got {
    Response(Response),
    /// Nothing came back while the sender held its connection (detail for the summary).
    NoAnswer(String),
}

/// The first complete final response in `buf` (interim 1xx responses skipped), if there is one
/// (the kit's parser; a malformed answer counts as none).
fn first_response(buf: &[u8], head_request: bool, eof: bool) -> Option<Response> {
    parse_response(buf, head_request, eof)
        .ok()
        .flatten()
        .map(|(response, _)| response)
}

/// Writes `pieces` (pausing between them) from one thread while reading the response on this one.
fn exchange(port: u16, pieces: Vec<Vec<u8>>, pause: Duration, head_request: bool) -> Result<Response, String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    // A server may answer (413, 401...) before it has read everything: a failed write is not the
    // case's business as long as a response comes back.
    let sender = thread::spawn(move || {
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                sleep(pause);
            }
            if writer.write_all(piece).is_err() {
                break;
            }
        }
    });
    let mut reader = stream;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let result = loop {
        match reader.read(&mut chunk) {
            Ok(0) => {
                break first_response(&buf, head_request, true).ok_or_else(|| {
                    format!(
                        "closed after {} bytes without a complete response: {:?}",
                        buf.len(),
                        String::from_utf8_lossy(&buf[..buf.len().min(300)])
                    )
                })
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(response) = first_response(&buf, head_request, false) {
                    break Ok(response);
                }
            }
            Err(e) => {
                break first_response(&buf, head_request, true).ok_or_else(|| format!("{e} after {} bytes", buf.len()))
            }
        }
    };
    let _ = reader.shutdown(Shutdown::Both);
    let _ = sender.join();
    result
}

// ---------------------------------------------------------------------------------------------
// Judging
// ---------------------------------------------------------------------------------------------

fn delta(before: &Stats, after: &Stats, name: &str) -> i128 {
    i128::from(after.get(name).copied().unwrap_or(0)) - i128::from(before.get(name).copied().unwrap_or(0))
}

/// Every `wasmcustom.flowgate.requests.*` counter that moved, with its change.
fn outcome_deltas(before: &Stats, after: &Stats) -> Vec<(String, i128)> {
    let mut moved: Vec<(String, i128)> = after
        .keys()
        .filter(|name| name.starts_with("wasmcustom.flowgate.requests."))
        .map(|name| {
            (
                name["wasmcustom.flowgate.requests.".len()..].to_string(),
                delta(before, after, name),
            )
        })
        .filter(|(_, d)| *d != 0)
        .collect();
    moved.sort();
    moved
}

/// A short label of what happened, for the summary: `<status> <envelope error>` for envelopes,
/// `forwarded`/`passed` when the executor got the request, `envoy` for Envoy's own replies.
fn describe(got: &Got, received: &[Value]) -> String {
    let executor = match received {
        [] => String::new(),
        [one] if one["webhook"] == true => " forwarded".into(),
        [_] => " passed".into(),
        many => format!(" +{} at the executor", many.len()),
    };
    match got {
        Got::NoAnswer(detail) => format!("no answer ({detail}){executor}"),
        Got::Response(response) => {
            let is_json = response
                .header("content-type")
                .unwrap_or_default()
                .starts_with("application/json");
            let code = serde_json::from_slice::<Value>(&response.body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string));
            match (code, is_json, executor.is_empty()) {
                (Some(code), true, true) => format!("{} {code}", response.status),
                (_, _, false) => format!("{}{executor}", response.status),
                (_, false, true) => format!("{} envoy", response.status),
                (_, true, true) => format!("{} json", response.status),
            }
        }
    }
}

/// Asserts what the executor received for an admitted case.
fn assert_forwarded(case: &Case, flow: &str, received: &[Value]) {
    assert_eq!(
        received.len(),
        1,
        "the executor should have received the request once, got:\n{}",
        serde_json::to_string_pretty(received).unwrap_or_default()
    );
    let request = &received[0];
    assert_eq!(request["webhook"], true, "{request}");
    assert_eq!(request["method"], case.method.as_str(), "method");
    assert_eq!(request["path"], case.path.as_str(), "path");
    assert!(
        recorded_body(request) == case.body,
        "the body bytes changed on the way ({} bytes sent, {} received)",
        case.body.len(),
        recorded_body(request).len()
    );
    let headers = recorded_headers(request);
    assert_eq!(
        recorded_header(&headers, "authorization"),
        Vec::<&str>::new(),
        "Authorization must not reach the executor"
    );
    let mut own: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n.starts_with("x-flowgate-"))
        .map(|(n, _)| n.as_str())
        .collect();
    own.sort_unstable();
    assert_eq!(
        own,
        [
            "x-flowgate-flow-id",
            "x-flowgate-flow-status",
            "x-flowgate-mode",
            "x-flowgate-ref-id"
        ],
        "flowgate's own headers, once each"
    );
    assert_eq!(recorded_header(&headers, "x-flowgate-flow-id"), [flow]);
}

/// Runs one case against the stack and checks it; returns the summary label and, on failure, why.
fn run(stack: &Stack, case: &Case, vm_baseline: &Stats) -> (String, Option<String>) {
    stack.executor.clear_requests();
    let before = stack.envoy.stats();
    let started = Instant::now();
    let got = match &case.wire {
        Wire::H1 { pieces, pause } => match exchange(stack.envoy.port(), pieces.clone(), *pause, case.head_request) {
            Ok(response) => Got::Response(response),
            Err(e) => return (format!("error: {e}"), Some(format!("no response: {e}"))),
        },
        Wire::H2 {
            method,
            path,
            headers,
            body,
        } => {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            match catch_unwind(AssertUnwindSafe(|| {
                send_h2(stack.envoy.port(), method, path, &headers, body)
            })) {
                Ok(response) => Got::Response(response),
                Err(_) => return ("error: curl failed".into(), Some("curl failed (see stderr)".into())),
            }
        }
        Wire::Stalled { bytes } => {
            let mut stream = TcpStream::connect(("127.0.0.1", stack.envoy.port())).expect("connect");
            let _ = stream.write_all(bytes);
            stream.set_read_timeout(Some(STALL)).expect("timeout");
            let mut buf = [0u8; 4096];
            let got = match stream.read(&mut buf) {
                Ok(0) => Got::NoAnswer("closed".into()),
                Ok(n) => match first_response(&buf[..n], false, true) {
                    Some(response) => Got::Response(response),
                    None => Got::NoAnswer(format!("{n} stray bytes")),
                },
                Err(_) => Got::NoAnswer(format!("silent for {STALL:?}")),
            };
            // While the sender still holds the connection: nothing may have reached the executor.
            let held = stack.executor.requests();
            drop(stream);
            sleep(Duration::from_millis(300));
            if !held.is_empty() {
                let label = describe(&got, &held);
                return (
                    label,
                    Some("the executor received a request its sender never finished".into()),
                );
            }
            got
        }
    };
    let elapsed = started.elapsed();
    let received = stack.executor.requests();
    let after = stack.envoy.stats();
    let mut label = describe(&got, &received);
    if case.head_request {
        label = label.replace(" json", " (HEAD: no body)");
    }
    if elapsed > Duration::from_millis(500) {
        let _ = write!(label, " [{:.1}s]", elapsed.as_secs_f64());
    }

    let checked = catch_unwind(AssertUnwindSafe(|| {
        let outcomes = outcome_deltas(&before, &after);
        let upstream = delta(&before, &after, UPSTREAM_REQUESTS);
        match (&case.expect, &got) {
            (Expect::Edge(status, code), Got::Response(response)) => {
                if case.head_request {
                    assert_eq!(response.status, *status, "HEAD status");
                    assert!(response
                        .header("content-type")
                        .unwrap_or_default()
                        .starts_with("application/json"));
                } else {
                    assert_rejected(response, *status, code);
                }
                match status {
                    401 => assert!(
                        response
                            .header("www-authenticate")
                            .is_some_and(|v| v.starts_with(r#"Bearer realm="flowgate""#)),
                        "401 without the Bearer challenge"
                    ),
                    405 => assert!(response.header("allow").is_some(), "405 without Allow"),
                    _ => {}
                }
                for flow in ["f-1001", "f-1003", "f-1004", "f-1005"] {
                    assert!(
                        !response.text().contains(&demo_token(flow, 0)),
                        "the reply echoes a token"
                    );
                }
                assert!(
                    received.is_empty(),
                    "a refused request reached the executor: {received:?}"
                );
                assert_eq!(outcomes, [(code.to_string(), 1)], "outcome counters");
            }
            (Expect::Envoy(status), Got::Response(response)) => {
                assert_eq!(response.status, *status, "Envoy's status; body {:?}", response.text());
                assert!(
                    !response
                        .header("content-type")
                        .unwrap_or_default()
                        .starts_with("application/json"),
                    "Envoy's own reply is not an envelope: {:?}",
                    response.text()
                );
                assert!(
                    received.is_empty(),
                    "a refused request reached the executor: {received:?}"
                );
                assert!(
                    outcomes.is_empty(),
                    "the filter decided nothing, yet counted {outcomes:?}"
                );
            }
            (Expect::Forwarded { flow, status, reply }, Got::Response(response)) => {
                assert_eq!(response.status, *status, "status; body {:?}", response.text());
                match reply {
                    Reply::Any => {}
                    Reply::Exact(body) => assert_eq!(response.text(), String::from_utf8_lossy(body), "reply body"),
                    Reply::Scheduled => {
                        let envelope = envelope(response);
                        assert_eq!(
                            (envelope.error, envelope.message.as_str()),
                            (None, "Flow run scheduled")
                        );
                    }
                }
                assert_forwarded(case, flow, &received);
                let mode = if *flow == "f-1003" {
                    "admitted_async"
                } else {
                    "admitted_sync"
                };
                assert!(
                    outcomes.contains(&(mode.to_string(), 1)),
                    "outcome counters: {outcomes:?}"
                );
            }
            (Expect::Passed(status), Got::Response(response)) => {
                assert_eq!(response.status, *status, "status; body {:?}", response.text());
                assert_eq!(
                    received.len(),
                    1,
                    "the executor should have received it once: {received:?}"
                );
                assert_eq!(received[0]["webhook"], false);
                assert_eq!(received[0]["path"], case.path.as_str());
                let headers = recorded_headers(&received[0]);
                assert!(
                    !headers.iter().any(|(n, _)| n.starts_with("x-flowgate-")),
                    "x-flowgate-* passed: {headers:?}"
                );
                assert_eq!(outcomes, [("passed".to_string(), 1)], "outcome counters");
            }
            (Expect::NoAnswer { upstream: expected }, Got::NoAnswer(_)) => {
                assert!(
                    received.is_empty(),
                    "an unfinished request reached the executor: {received:?}"
                );
                assert_eq!(upstream, i128::from(*expected), "requests Envoy opened to the executor");
                let admitted = i128::from(*expected);
                assert_eq!(
                    outcomes.iter().map(|(_, d)| d).sum::<i128>(),
                    admitted,
                    "outcome counters: {outcomes:?}"
                );
            }
            (expected, Got::Response(response)) => panic!(
                "expected {}, got {} {:?}",
                expected.describe(),
                response.status,
                response.text()
            ),
            (expected, Got::NoAnswer(detail)) => panic!("expected {}, got no answer ({detail})", expected.describe()),
        }
        assert_vm_healthy(vm_baseline, &after);
    }));
    let failure = checked.err().map(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "check failed".into())
    });
    (label, failure)
}

/// No wasm VM failed, reloaded or was added since `baseline`.
fn assert_vm_healthy(baseline: &Stats, now: &Stats) {
    for name in VM_RELOADS {
        assert_eq!(now.get(name), Some(&0), "{name} (a wasm VM failed and was reloaded)");
    }
    for name in VM_STABLE {
        assert_eq!(
            now.get(name),
            baseline.get(name),
            "{name} changed (a wasm VM was rebuilt)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 with many streams
// ---------------------------------------------------------------------------------------------

struct Kind {
    name: &'static str,
    path: String,
    authorization: Option<String>,
    expect: Expect,
}

/// 126 requests over one h2c connection with up to 100 streams at a time, good and bad mixed.
fn h2_many_streams(stack: &Stack, vm_baseline: &Stats, rows: &mut Vec<Row>) {
    const PER_KIND: usize = 14;
    let kinds = [
        Kind {
            name: "good, templated",
            path: webhook("f-1001"),
            authorization: Some(bearer("f-1001")),
            expect: forwarded("f-1001", 200, exact(r#"{"valid": "myResult"}"#)),
        },
        Kind {
            name: "good, passthrough",
            path: webhook("f-1004"),
            authorization: Some(bearer("f-1004")),
            expect: forwarded("f-1004", 200, Reply::Any),
        },
        Kind {
            name: "no token",
            path: webhook("f-1001"),
            authorization: None,
            expect: edge(401, "unauthorized"),
        },
        Kind {
            name: "wrong token",
            path: webhook("f-1001"),
            authorization: Some(bearer("f-1003")),
            expect: edge(401, "unauthorized"),
        },
        Kind {
            name: "unknown flow",
            path: webhook("f-9999"),
            authorization: Some(bearer("f-1001")),
            expect: edge(404, "not_found"),
        },
        Kind {
            name: "non-canonical path",
            path: "/v1//flow-webhook/f-1001".into(),
            authorization: Some(bearer("f-1001")),
            expect: edge(400, "invalid_path"),
        },
        Kind {
            name: "paused flow",
            path: webhook("f-1002"),
            authorization: Some(bearer("f-1002")),
            expect: Expect::Edge(200, "biz_logic"),
        },
        Kind {
            name: "too large",
            path: webhook("f-1005"),
            authorization: Some(bearer("f-1005")),
            expect: edge(413, "payload_too_large"),
        },
        Kind {
            name: "invalid JSON",
            path: webhook("f-1001"),
            authorization: Some(bearer("f-1001")),
            expect: edge(400, "invalid_body"),
        },
    ];
    let dir = TempDir::new("hostile-h2");
    let mut config = String::new();
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for i in 0..kinds.len() * PER_KIND {
        let kind = &kinds[i % kinds.len()];
        let body = match kind.name {
            "too large" => json_of_len(2000),
            "invalid JSON" => format!("{{\"company_id\": {i},").into_bytes(),
            "good, passthrough" => format!("{{\"n\": {i}, \"x\": \"\\u00e9\"}}").into_bytes(),
            _ => format!("{{\"company_id\": 123456, \"n\": {i}}}").into_bytes(),
        };
        let body_file = dir.path().join(format!("body-{i}"));
        std::fs::write(&body_file, &body).expect("write body");
        bodies.push(body);
        if i > 0 {
            config.push_str("next\n");
        }
        let _ = writeln!(
            config,
            "url = \"http://127.0.0.1:{}{}?i={i}\"",
            stack.envoy.port(),
            kind.path
        );
        config.push_str("path-as-is\nrequest = \"POST\"\n");
        config.push_str("header = \"content-type: application/json\"\n");
        if let Some(value) = &kind.authorization {
            let _ = writeln!(config, "header = \"authorization: {value}\"");
        }
        let _ = writeln!(config, "data-binary = \"@{}\"", body_file.display());
        let _ = writeln!(config, "output = \"{}\"", dir.path().join(format!("out-{i}")).display());
        config.push_str("write-out = \"%{http_code}|%{content_type}|%{url_effective}\\n\"\n");
    }
    let config_file = dir.path().join("curl.cfg");
    std::fs::write(&config_file, config).expect("write curl config");

    stack.executor.clear_requests();
    let before = stack.envoy.stats();
    let output = Command::new("curl")
        // Prior knowledge on the command line: given per transfer in the config (curl 7.88), every
        // transfer after the first fails with "Error in the HTTP2 framing layer".
        .args([
            "--http2-prior-knowledge",
            "--parallel",
            "--parallel-max",
            "100",
            "-sS",
            "-K",
        ])
        .arg(&config_file)
        .output()
        .expect("run curl (is it installed?)");
    let received = stack.executor.requests();
    let after = stack.envoy.stats();

    // status, content type and body of every request, by index.
    let mut answers: HashMap<usize, (u16, String, Vec<u8>)> = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut fields = line.splitn(3, '|');
        let (Some(code), Some(content_type), Some(url)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let Some(i) = url.rsplit("i=").next().and_then(|i| i.parse::<usize>().ok()) else {
            continue;
        };
        let body = std::fs::read(dir.path().join(format!("out-{i}"))).unwrap_or_default();
        answers.insert(i, (code.parse().unwrap_or(0), content_type.to_string(), body));
    }

    for (k, kind) in kinds.iter().enumerate() {
        let mut tally: HashMap<String, usize> = HashMap::new();
        let mut failure = None;
        for i in (k..kinds.len() * PER_KIND).step_by(kinds.len()) {
            let Some((status, content_type, body)) = answers.get(&i) else {
                *tally.entry("no answer".into()).or_default() += 1;
                failure.get_or_insert(format!("request {i}: no answer from curl"));
                continue;
            };
            let response = Response {
                status: *status,
                headers: vec![("content-type".into(), content_type.clone())],
                body: body.clone(),
            };
            let label = describe(&Got::Response(response.clone()), &[]);
            let checked = catch_unwind(AssertUnwindSafe(|| match &kind.expect {
                Expect::Edge(200, "biz_logic") => {
                    assert_eq!((response.status, response.text()), (200, PAUSED.to_string()));
                }
                Expect::Edge(status, code) => {
                    assert_rejected(&response, *status, code);
                }
                Expect::Forwarded { status, reply, .. } => {
                    assert_eq!(response.status, *status, "{:?}", response.text());
                    if let Reply::Exact(expected) = reply {
                        assert_eq!(response.body, *expected, "{:?}", response.text());
                    }
                    let sent = &bodies[i];
                    let arrived = received.iter().filter(|r| recorded_body(r) == *sent).count();
                    assert_eq!(arrived, 1, "request {i} should reach the executor once");
                }
                _ => unreachable!(),
            }));
            let label = match &kind.expect {
                Expect::Forwarded { .. } if checked.is_ok() => format!("{status} forwarded"),
                _ => label,
            };
            *tally.entry(label).or_default() += 1;
            if let Err(panic) = checked {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "check failed".into());
                failure.get_or_insert(format!("request {i}: {why}"));
            }
        }
        let mut got: Vec<String> = tally.into_iter().map(|(label, n)| format!("{label} x{n}")).collect();
        got.sort();
        rows.push(Row {
            name: format!("h2 x{PER_KIND} parallel: {}", kind.name),
            expected: format!("{} x{PER_KIND}", kind.expect.describe()),
            got: got.join(", "),
            failure,
        });
    }

    // Only the good requests reached the executor, each once, with the secret removed.
    let good = 2 * PER_KIND;
    let mut failure = None;
    if received.len() != good {
        failure = Some(format!(
            "the executor received {} requests, expected the {good} good ones",
            received.len()
        ));
    }
    for request in &received {
        let headers = recorded_headers(request);
        if !recorded_header(&headers, "authorization").is_empty() {
            failure.get_or_insert("Authorization reached the executor".into());
        }
        let path = request["path"].as_str().unwrap_or_default();
        let flow = recorded_header(&headers, "x-flowgate-flow-id").join(",");
        if !path.starts_with(&webhook(&flow)) {
            failure.get_or_insert(format!("{path} arrived marked as flow {flow:?}"));
        }
    }
    rows.push(Row {
        name: "h2 parallel: what the executor received".into(),
        expected: format!("{good} requests"),
        got: format!("{} requests", received.len()),
        failure,
    });

    let connections = delta(&before, &after, "http.flowgate.downstream_cx_http2_total");
    let streams = delta(&before, &after, "http.flowgate.downstream_rq_http2_total");
    let total = kinds.len() * PER_KIND;
    let healthy = catch_unwind(AssertUnwindSafe(|| assert_vm_healthy(vm_baseline, &after)));
    rows.push(Row {
        name: "h2 parallel: streams on one connection, VM healthy".into(),
        expected: format!("1 connection, {total} streams"),
        got: format!("{connections} connection(s), {streams} streams"),
        failure: if !output.status.success() {
            Some(format!("curl failed: {}", String::from_utf8_lossy(&output.stderr)))
        } else if connections != 1 || streams != total as i128 {
            Some("the requests were not multiplexed on one connection".into())
        } else if healthy.is_err() {
            Some("a wasm VM failed or reloaded".into())
        } else {
            None
        },
    });
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

struct Row {
    name: String,
    expected: String,
    got: String,
    failure: Option<String>,
}

fn summary(rows: &[Row]) -> String {
    let width = |f: fn(&Row) -> &str| rows.iter().map(|r| f(r).chars().count()).max().unwrap_or(0);
    let (name_w, expected_w) = (width(|r| r.name.as_str()).min(60), width(|r| r.expected.as_str()));
    let mut out = format!("\n{:<4} {:<name_w$}  {:<expected_w$}  got\n", "", "case", "expected");
    for row in rows {
        let mark = if row.failure.is_some() { "FAIL" } else { "ok" };
        let name: String = row.name.chars().take(60).collect();
        let got: String = row.got.chars().take(90).collect();
        let _ = writeln!(out, "{mark:<4} {name:<name_w$}  {:<expected_w$}  {got}", row.expected);
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| r.failure.is_some()).collect();
    let _ = writeln!(out, "\n{} cases, {} failed", rows.len(), failed.len());
    for row in failed {
        let why: String = row.failure.as_deref().unwrap_or_default().chars().take(600).collect();
        let _ = writeln!(out, "  FAIL {}: {why}", row.name);
    }
    out
}

/// examples/flows.json plus a flow whose body limit is above Envoy's buffer limit.
fn flow_file() -> Value {
    let mut file = demo_flows();
    let flows = file["flows"].as_array_mut().expect("flows");
    let mut large = flows.iter().find(|f| f["id"] == "f-1004").expect("f-1004").clone();
    large["id"] = json!(LARGE_FLOW);
    large["max_body_bytes"] = json!(LARGE_LIMIT);
    flows.push(large);
    file["_demo_tokens"][LARGE_FLOW] = file["_demo_tokens"]["f-1004"].clone();
    file
}

#[test]
fn hostile_inputs_are_judged_end_to_end_without_hurting_the_vm() {
    let cases = corpus();
    assert!(cases.len() >= 50, "the corpus has {} cases", cases.len());
    let stack = Stack::start(&flow_file());

    let baseline = stack.envoy.stats();
    for name in VM_RELOADS.iter().chain(&VM_STABLE) {
        assert!(baseline.contains_key(*name), "{name} is not in Envoy's /stats");
    }
    let mut rows = Vec::new();
    for case in &cases {
        let (got, failure) = run(&stack, case, &baseline);
        rows.push(Row {
            name: case.name.clone(),
            expected: case.expect.describe(),
            got,
            failure,
        });
    }
    h2_many_streams(&stack, &baseline, &mut rows);

    // Envoy is still there, with the same VMs, and a good request still runs.
    stack.executor.clear_requests();
    let response = stack.send(
        "POST",
        "/v1/flow-webhook/f-1001",
        &[
            ("content-type", "application/json"),
            ("authorization", &bearer("f-1001")),
        ],
        SEED_BODY,
    );
    let ready = send(stack.envoy.admin_port(), "GET", "/ready", &[], b"").text();
    let log = stack.envoy.log();
    let traps: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Uncaught") || l.contains("panicked") || l.contains("VM failed"))
        .take(5)
        .collect();
    let after = stack.envoy.stats();
    let healthy = catch_unwind(AssertUnwindSafe(|| assert_vm_healthy(&baseline, &after)));
    let received = stack.executor.requests().len();
    rows.push(Row {
        name: "after the corpus: a good request, Envoy live, no trap".into(),
        expected: "200 forwarded, LIVE".into(),
        got: format!(
            "{} {:?}, {}, {} trap lines",
            response.status,
            response.text(),
            ready.trim(),
            traps.len()
        ),
        failure: if response.status != 200 || response.text() != r#"{"valid": "myResult"}"# || received != 1 {
            Some("a good request no longer works".into())
        } else if ready.trim() != "LIVE" {
            Some(format!("Envoy is not live: {ready:?}"))
        } else if !traps.is_empty() {
            Some(format!("Envoy's log shows wasm traps: {traps:?}"))
        } else if healthy.is_err() {
            Some("a wasm VM failed or reloaded".into())
        } else {
            None
        },
    });
    let reloads: Vec<String> = VM_RELOADS
        .iter()
        .map(|n| format!("{n}={}", after.get(*n).copied().unwrap_or(0)))
        .collect();
    let table = summary(&rows);
    println!("{table}\nwasm: {}", reloads.join(" "));
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.failure.is_some())
        .map(|r| r.name.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} hostile cases failed: {failed:#?}\n{table}",
        failed.len(),
        rows.len()
    );
}
