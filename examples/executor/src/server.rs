//! HTTP handling: webhooks (contract 3), the flow directory (section 4) and the
//! `/_executor/*` control endpoints that demos and end-to-end tests use to inspect and steer the
//! executor (received requests, runs, faults, flow changes).

use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::flows::{bind_body, load_file, Flow};
use crate::queue::{now_ms, Queue, SyncDelivery};

/// Default path prefix of webhooks (the filter's default `webhook_path_prefix`).
pub const DEFAULT_WEBHOOK_PREFIX: &str = "/v1/flow-webhook/";

/// A complete HTTP answer; `main.rs` writes it with the HTTP server.
#[derive(Debug, Clone, PartialEq)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    fn new(status: u16, body: Vec<u8>) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            body,
        }
    }

    fn with_header(mut self, name: &'static str, value: &str) -> Resp {
        self.headers.push((name, value.to_string()));
        self
    }
}

/// A misbehaviour injected on purpose (`PUT /_executor/fault`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    None,
    /// Answer this status with a small JSON body instead of running.
    Status(u16),
    /// Answer 200, `content-type: application/json`, with a body that is not JSON.
    Garbage,
    /// Sleep this long, then behave normally.
    Slow(u64),
}

impl Fault {
    fn parse(v: &Value) -> Result<Fault, String> {
        match v.get("mode").and_then(Value::as_str) {
            Some("none") => Ok(Fault::None),
            Some("garbage") => Ok(Fault::Garbage),
            Some("status") => match v.get("status").and_then(Value::as_u64) {
                Some(s @ 100..=599) => Ok(Fault::Status(s as u16)),
                _ => Err("mode \"status\" needs \"status\": 100..=599".into()),
            },
            Some("slow") => v
                .get("delay_ms")
                .and_then(Value::as_u64)
                .map(Fault::Slow)
                .ok_or_else(|| "mode \"slow\" needs \"delay_ms\": <ms>".into()),
            _ => Err("\"mode\" must be one of none, status, garbage, slow".into()),
        }
    }

    fn to_json(self) -> Value {
        match self {
            Fault::None => json!({"mode": "none"}),
            Fault::Status(s) => json!({"mode": "status", "status": s}),
            Fault::Garbage => json!({"mode": "garbage"}),
            Fault::Slow(ms) => json!({"mode": "slow", "delay_ms": ms}),
        }
    }

    /// Applies the fault: sleeps for `Slow`, returns the replacement answer for `Status`/`Garbage`.
    fn apply(self) -> Option<Resp> {
        match self {
            Fault::None => None,
            Fault::Slow(ms) => {
                thread::sleep(Duration::from_millis(ms));
                None
            }
            Fault::Status(s) => Some(json_response(s, &json!({"error": "injected fault", "status": s}))),
            Fault::Garbage => Some(with_json_type(Resp::new(200, b"<html>oops".to_vec()))),
        }
    }
}

/// The current flows plus the directory answer computed from them.
struct FlowSet {
    flows: Vec<Arc<Flow>>,
    directory: Vec<u8>,
    etag: String,
}

impl FlowSet {
    fn new(flows: Vec<Arc<Flow>>) -> FlowSet {
        let public: Vec<Value> = flows.iter().map(|f| f.public()).collect();
        let directory = serde_json::to_vec(&json!({ "flows": public })).expect("JSON serialises");
        let etag = format!("\"{:016x}-{:x}\"", fnv1a64(&directory), directory.len());
        FlowSet { flows, directory, etag }
    }

    fn get(&self, id: &str) -> Option<&Arc<Flow>> {
        self.flows.iter().find(|f| f.id == id)
    }

    /// A new set with `flow` replacing the flow with the same id (or appended).
    fn with(&self, flow: Flow) -> FlowSet {
        let mut flows = self.flows.clone();
        match flows.iter().position(|f| f.id == flow.id) {
            Some(i) => flows[i] = Arc::new(flow),
            None => flows.push(Arc::new(flow)),
        }
        FlowSet::new(flows)
    }
}

/// 64-bit FNV-1a: a stable content hash for the directory's ETag.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Shared executor state.
pub struct App {
    flows: RwLock<FlowSet>,
    received: Mutex<Vec<Value>>,
    fault: Mutex<Fault>,
    directory_fault: Mutex<Fault>,
    /// The flows loaded at startup (`POST /_executor/reset` restores them).
    initial_flows: Vec<Arc<Flow>>,
    webhook_prefix: String,
    pub queue: Arc<Queue>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl App {
    pub fn new(flows: Vec<Flow>, webhook_prefix: String, queue: Arc<Queue>) -> App {
        let initial_flows: Vec<Arc<Flow>> = flows.into_iter().map(Arc::new).collect();
        App {
            flows: RwLock::new(FlowSet::new(initial_flows.clone())),
            received: Mutex::new(Vec::new()),
            fault: Mutex::new(Fault::None),
            directory_fault: Mutex::new(Fault::None),
            initial_flows,
            webhook_prefix,
            queue,
        }
    }

    /// The flow with this id, as currently defined.
    pub fn flow(&self, id: &str) -> Option<Arc<Flow>> {
        self.flows.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    fn update_flows(&self, change: impl FnOnce(&FlowSet) -> Result<FlowSet, Resp>) -> Resp {
        let mut set = self.flows.write().unwrap_or_else(|e| e.into_inner());
        match change(&set) {
            Ok(new) => {
                *set = new;
                json_response(200, &json!({"ok": true, "etag": set.etag}))
            }
            Err(resp) => resp,
        }
    }

    /// Answers one request. `url` is the path with its query; header names are lower-case.
    pub fn handle(&self, method: &str, url: &str, headers: &[(String, String)], body: &[u8]) -> Resp {
        let method = method.to_ascii_uppercase();
        let path = url.split('?').next().unwrap_or("");

        // Everything but the directory and the control endpoints is traffic Envoy forwarded.
        if path != "/v1/flows" && !path.starts_with("/_executor/") {
            return self.forwarded(&method, url, headers, body);
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["v1", "flows"]) => self.directory(headers),
            ("GET", ["_executor", "health"]) => json_response(200, &json!({"ok": true})),
            ("GET", ["_executor", "requests"]) => json_response(200, &Value::Array(lock(&self.received).clone())),
            ("DELETE", ["_executor", "requests"]) => {
                lock(&self.received).clear();
                json_response(200, &json!({"ok": true}))
            }
            ("GET", ["_executor", "runs"]) => match self.queue.list() {
                Ok(runs) => json_response(200, &Value::Array(runs)),
                Err(e) => error(500, &format!("run store: {e}")),
            },
            ("GET", ["_executor", "runs", run_id]) => match self.queue.get(run_id) {
                Ok(Some(run)) => json_response(200, &run),
                Ok(None) => error(404, "unknown run"),
                Err(e) => error(500, &format!("run store: {e}")),
            },
            ("GET", ["_executor", "fault"]) => json_response(200, &lock(&self.fault).to_json()),
            ("PUT", ["_executor", "fault"]) => set_fault(&self.fault, body),
            ("GET", ["_executor", "directory-fault"]) => json_response(200, &lock(&self.directory_fault).to_json()),
            ("PUT", ["_executor", "directory-fault"]) => set_fault(&self.directory_fault, body),
            ("GET", ["_executor", "flows"]) => {
                let set = self.flows.read().unwrap_or_else(|e| e.into_inner());
                let all: Vec<Value> = set.flows.iter().map(|f| Value::Object(f.raw.clone())).collect();
                json_response(200, &json!({ "flows": all }))
            }
            ("PUT", ["_executor", "flows"]) => {
                let flows = match std::str::from_utf8(body)
                    .map_err(|e| format!("body is not UTF-8: {e}"))
                    .and_then(load_file)
                {
                    Ok(flows) => flows,
                    Err(e) => return error(400, &e),
                };
                self.update_flows(|_| Ok(FlowSet::new(flows.into_iter().map(Arc::new).collect())))
            }
            ("POST", ["_executor", "reset"]) => {
                *lock(&self.fault) = Fault::None;
                *lock(&self.directory_fault) = Fault::None;
                lock(&self.received).clear();
                self.update_flows(|_| Ok(FlowSet::new(self.initial_flows.clone())))
            }
            ("POST", ["_executor", "flows"]) => {
                let flow = match parse_json(body).and_then(|v| Flow::from_json(&v)) {
                    Ok(flow) => flow,
                    Err(e) => return error(400, &e),
                };
                self.update_flows(|set| Ok(set.with(flow)))
            }
            ("PUT", ["_executor", "flows", id]) => {
                let patch = match parse_json(body) {
                    Ok(Value::Object(patch)) => patch,
                    Ok(_) => return error(400, "expected a JSON object"),
                    Err(e) => return error(400, &e),
                };
                self.update_flows(|set| {
                    let Some(current) = set.get(id) else {
                        return Err(error(404, "unknown flow"));
                    };
                    if patch.get("id").is_some_and(|new| new.as_str() != Some(id)) {
                        return Err(error(400, "the `id` of a flow cannot be changed"));
                    }
                    let mut merged: Map<String, Value> = current.raw.clone();
                    merged.extend(patch);
                    let flow = Flow::from_json(&Value::Object(merged)).map_err(|e| error(400, &e))?;
                    Ok(set.with(flow))
                })
            }
            ("DELETE", ["_executor", "flows", id]) => self.update_flows(|set| {
                if set.get(id).is_none() {
                    return Err(error(404, "unknown flow"));
                }
                Ok(FlowSet::new(
                    set.flows.iter().filter(|f| f.id != *id).cloned().collect(),
                ))
            }),
            _ => error(404, "not found"),
        }
    }

    /// `GET /v1/flows`: the directory with a strong ETag; `If-None-Match` -> 304.
    fn directory(&self, headers: &[(String, String)]) -> Resp {
        if let Some(resp) = lock(&self.directory_fault).apply() {
            return resp;
        }
        let set = self.flows.read().unwrap_or_else(|e| e.into_inner());
        let not_modified = header(headers, "if-none-match")
            // Weak comparison, as RFC 9110 asks for If-None-Match: `W/"x"` matches `"x"`.
            .is_some_and(|inm| {
                inm.split(',')
                    .map(str::trim)
                    .any(|tag| tag == "*" || tag.trim_start_matches("W/") == set.etag)
            });
        if not_modified {
            return Resp::new(304, Vec::new()).with_header("etag", &set.etag);
        }
        with_json_type(Resp::new(200, set.directory.clone()).with_header("etag", &set.etag))
    }

    /// A request Envoy forwarded. It is recorded first, whatever it is (so tests can see exactly
    /// what got past the filter). A webhook (its path, normalised as in [`normalize_path`], starts
    /// with the webhook prefix, or it carries `x-flowgate-flow-id`) then runs or queues its flow
    /// after the current fault is applied; anything else is answered 404.
    fn forwarded(&self, method: &str, url: &str, headers: &[(String, String)], body: &[u8]) -> Resp {
        let received_at_ms = now_ms();
        let path = normalize_path(url.split('?').next().unwrap_or(""));
        let flow_header = header(headers, "x-flowgate-flow-id");
        let is_webhook = path.starts_with(&self.webhook_prefix) || flow_header.is_some();
        lock(&self.received).push(json!({
            "method": method,
            "path": url,
            "headers": headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
            "body_b64": base64::engine::general_purpose::STANDARD.encode(body),
            "body": String::from_utf8_lossy(body),
            "received_at_ms": received_at_ms,
            "webhook": is_webhook,
        }));
        if !is_webhook {
            return error(404, "not found");
        }

        let flow_id = match flow_header {
            Some(id) => id.to_string(),
            None => path[self.webhook_prefix.len()..]
                .split('/')
                .next()
                .unwrap_or("")
                .to_string(),
        };
        let Some(flow) = self.flow(&flow_id) else {
            return error(404, "unknown flow");
        };

        let fault = *lock(&self.fault);
        if let Some(resp) = fault.apply() {
            return resp;
        }

        let content_type = header(headers, "content-type");
        let is_async = header(headers, "x-flowgate-mode").is_some_and(|m| m.eq_ignore_ascii_case("async"));
        // Unique per (flow, delivery id): a repeat through any Envoy runs once (contract 8).
        let delivery_id = header(headers, "x-flowgate-delivery-id");
        if is_async {
            let queued = match delivery_id {
                Some(id) => self.queue.enqueue_delivery(&flow.id, id, content_type, body),
                None => self.queue.enqueue(&flow.id, content_type, body),
            };
            return match queued {
                Ok(run_id) => json_response(202, &json!({ "run_id": run_id })),
                Err(e) => error(503, &format!("could not queue the run: {e}")),
            };
        }

        let claimed = match delivery_id {
            Some(id) => match self.queue.claim_sync(&flow.id, id, content_type, body) {
                Ok(SyncDelivery::Run(run_id)) => Some(run_id),
                Ok(SyncDelivery::Done(result)) => return sync_answer(result),
                Ok(SyncDelivery::Running) => return error(409, "this delivery is still running"),
                Err(e) => return error(503, &format!("run store: {e}")),
            },
            None => None,
        };
        thread::sleep(Duration::from_millis(flow.run_ms));
        let result = flow.run(bind_body(content_type, body));
        let recorded = match &claimed {
            Some(run_id) => self.queue.finish_sync(run_id, &result).map(drop),
            None => self
                .queue
                .record_sync(&flow.id, received_at_ms, content_type, body, &result)
                .map(drop),
        };
        if let Err(e) = recorded {
            eprintln!("flowgate-executor: recording a sync run of {} failed: {e}", flow.id);
        }
        sync_answer(result)
    }
}

/// A sync run's answer: its output, or 500 with the failure.
fn sync_answer(result: Result<Value, String>) -> Resp {
    match result {
        Ok(output) => json_response(200, &output),
        Err(e) => error(500, &e),
    }
}

/// Normalises a path (without query) the way an executor behind Envoy might: percent-decoding
/// (once), backslash and decoded `%2F`/`%5C` as separators, repeated slashes merged, `.` and `..`
/// resolved (never above the root). A trailing separator is kept.
pub fn normalize_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                decoded.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = format!("/{}", segments.join("/"));
    let last = decoded.rsplit('/').next().unwrap_or("");
    if !segments.is_empty() && (decoded.ends_with('/') || last == "." || last == "..") {
        out.push('/');
    }
    out
}

fn set_fault(slot: &Mutex<Fault>, body: &[u8]) -> Resp {
    match parse_json(body).and_then(|v| Fault::parse(&v)) {
        Ok(fault) => {
            *lock(slot) = fault;
            json_response(200, &fault.to_json())
        }
        Err(e) => error(400, &e),
    }
}

/// The first value of a (lowercase) header.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn parse_json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))
}

fn with_json_type(resp: Resp) -> Resp {
    resp.with_header("content-type", "application/json")
}

fn json_response(status: u16, value: &Value) -> Resp {
    let body = serde_json::to_vec(value).expect("JSON serialises");
    with_json_type(Resp::new(status, body))
}

fn error(status: u16, message: &str) -> Resp {
    json_response(status, &json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_like_an_executor_would() {
        for (raw, normalised) in [
            ("/v1/flow-webhook/f-1001", "/v1/flow-webhook/f-1001"),
            ("//v1///flow-webhook/f-1001", "/v1/flow-webhook/f-1001"),
            ("/v1/./x/../flow-webhook/f-1001", "/v1/flow-webhook/f-1001"),
            ("/v1%2Fflow-webhook%2ff-1001", "/v1/flow-webhook/f-1001"),
            ("/v1%5Cflow-webhook\\f-1001", "/v1/flow-webhook/f-1001"),
            ("/%76%31/flow%2Dwebhook/f-1001", "/v1/flow-webhook/f-1001"),
            ("/../../v1/flow-webhook/", "/v1/flow-webhook/"),
            ("/v1/flow-webhook%252Ff-1001", "/v1/flow-webhook%2Ff-1001"),
            ("/a/%zz/%4", "/a/%zz/%4"),
            ("/", "/"),
            ("", "/"),
        ] {
            assert_eq!(normalize_path(raw), normalised, "{raw}");
        }
    }

    #[test]
    fn faults_parse_and_round_trip() {
        for v in [
            json!({"mode": "none"}),
            json!({"mode": "status", "status": 503}),
            json!({"mode": "garbage"}),
            json!({"mode": "slow", "delay_ms": 3000}),
        ] {
            assert_eq!(Fault::parse(&v).unwrap().to_json(), v);
        }
        assert!(Fault::parse(&json!({"mode": "status", "status": 42})).is_err());
        assert!(Fault::parse(&json!({"mode": "slow"})).is_err());
        assert!(Fault::parse(&json!({"mode": "chaos"})).is_err());
    }

    #[test]
    fn directory_strips_executor_fields_and_etag_follows_content() {
        let flow = |status: &str| {
            Flow::from_json(&json!({"id": "f", "ref_id": "w", "status": status, "run_ms": 3,
                "steps": [{"ref_id": "r", "values": {"v": "1"}}]}))
            .unwrap()
        };
        let a = FlowSet::new(vec![Arc::new(flow("live"))]);
        let dir: Value = serde_json::from_slice(&a.directory).unwrap();
        assert_eq!(dir, json!({"flows": [{"id": "f", "ref_id": "w", "status": "live"}]}));
        assert_eq!(FlowSet::new(vec![Arc::new(flow("live"))]).etag, a.etag);
        let b = a.with(flow("paused"));
        assert_ne!(b.etag, a.etag);
        assert_eq!(b.flows.len(), 1);
        assert!(a.etag.starts_with('"') && a.etag.ends_with('"'));
    }
}
