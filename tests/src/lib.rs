//! End-to-end harness: the real `flowgate.wasm` in a real Envoy in front of the real reference
//! executor, spoken to over real sockets.
//!
//! The processes and the clients come from the test kit (`testkit/`, crate `flowgate-testkit`),
//! re-exported here under the names the tests use: [`Executor`], [`Envoy`] and its
//! [`EnvoyOptions`], the raw HTTP/1.1 client ([`send`] and friends, [`Connection`]), [`send_h2`]
//! and [`h2`], and [`Stats`]. This crate adds what is about flowgate's contract: [`Stack`] (the
//! executor with Envoy and the filter in front of it), the envelope checks and what the executor
//! recorded; [`load`] drives and judges wrk load (the soak binary, `src/bin/soak.rs`, uses it).
//!
//! Nothing here builds the filter: `scripts/test.sh` does, before it runs these tests.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::Value;

pub use flowgate_testkit::envoy::{
    admin_get, envoy_binary, envoy_bootstrap, filter_wasm, server_info, wasm_filter, Envoy, EnvoyOptions,
    ExecutorProtocol, PluginConfig, ServerInfo, BUFFER_LIMIT_BYTES,
};
pub use flowgate_testkit::executor::{
    demo_flows, demo_token, executor_binary, plugin_config_for, sha256_hex, Executor, EXECUTOR_ONLY_FIELDS,
};
pub use flowgate_testkit::http::{
    h2, parse_response, send, send_chunked, send_h2, send_raw, send_withholding_body, try_send, Connection, Response,
};
pub use flowgate_testkit::stats::Stats;
pub use flowgate_testkit::{
    free_port, proc_status_kib, process_alive, repo_root, today, TempDir, IO_TIMEOUT, READY_TIMEOUT,
};

pub mod load;

// ---------------------------------------------------------------------------------------------
// The stack
// ---------------------------------------------------------------------------------------------

/// The usual set-up: the executor with some flows and Envoy with the matching plugin config.
pub struct Stack {
    // Envoy first: drop order stops the proxy before its upstream.
    pub envoy: Envoy,
    pub executor: Executor,
}

impl Stack {
    /// The demo flows of `examples/flows.json`, Envoy with 2 workers.
    pub fn demo() -> Stack {
        Stack::start(&demo_flows())
    }

    pub fn start(flow_file: &Value) -> Stack {
        let executor = Executor::start(flow_file);
        let envoy = Envoy::start(EnvoyOptions::new(plugin_config_for(flow_file), executor.port()));
        Stack { envoy, executor }
    }

    /// Sends a raw HTTP/1.1 request through Envoy.
    pub fn send(&self, method: &str, raw_path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.envoy.send(method, raw_path, headers, body)
    }
}

// ---------------------------------------------------------------------------------------------
// The envelope
// ---------------------------------------------------------------------------------------------

/// The fields of a flowgate envelope reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub status: i64,
    pub error: Option<String>,
    pub message: String,
    pub data: Value,
}

/// Parses an edge reply, asserting `content-type: application/json` and exactly the keys
/// `status`, `error`, `message`, `data` with their types.
pub fn envelope(response: &Response) -> Envelope {
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "an edge reply must be application/json, got {content_type:?} (status {}, body {:?})",
        response.status,
        response.text()
    );
    let value = response.json();
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("envelope is not an object: {value}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["data", "error", "message", "status"], "envelope keys of {value}");
    Envelope {
        status: object["status"]
            .as_i64()
            .unwrap_or_else(|| panic!("envelope status is not an integer: {value}")),
        error: match &object["error"] {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => panic!("envelope error is neither null nor a string: {other}"),
        },
        message: object["message"]
            .as_str()
            .unwrap_or_else(|| panic!("envelope message is not a string: {value}"))
            .to_string(),
        data: object["data"].clone(),
    }
}

/// Asserts an edge rejection: this HTTP status, an envelope whose `status` equals it and whose
/// `error` is `error`. Returns the envelope for further checks.
pub fn assert_rejected(response: &Response, status: u16, error: &str) -> Envelope {
    assert_eq!(
        response.status,
        status,
        "expected {status} {error}, got {} with body {:?}",
        response.status,
        response.text()
    );
    let envelope = envelope(response);
    assert_eq!(envelope.status, i64::from(status), "envelope status field");
    assert_eq!(envelope.error.as_deref(), Some(error), "envelope error field");
    envelope
}

// ---------------------------------------------------------------------------------------------
// What the executor saw
// ---------------------------------------------------------------------------------------------

/// The headers of a recorded request, as (lowercase name, value) pairs.
pub fn recorded_headers(request: &Value) -> Vec<(String, String)> {
    request["headers"]
        .as_array()
        .map(|headers| {
            headers
                .iter()
                .filter_map(|pair| Some((pair[0].as_str()?.to_string(), pair[1].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Every value of one header in a recorded request.
pub fn recorded_header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The body bytes of a recorded request.
pub fn recorded_body(request: &Value) -> Vec<u8> {
    BASE64
        .decode(request["body_b64"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("body_b64 of a recorded request is not base64 ({e}): {request}"))
}

/// Every document of a YAML file (Istio manifests, Envoy bootstraps), as JSON values.
pub fn yaml_documents(path: &std::path::Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|doc| !doc.is_null())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn recorded_bodies_are_decoded_from_the_executor_base64() {
        let body = |b64: &str| recorded_body(&json!({"body_b64": b64}));
        assert_eq!(body("eyJhIjoxfQ=="), br#"{"a":1}"#);
        assert_eq!(body(""), b"");
        assert_eq!(body("AP8="), [0u8, 255]);
    }
}
