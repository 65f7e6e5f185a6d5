//! HTTP handling: webhooks (contract 3), the flow directory (section 4) and the
//! `/_executor/*` control endpoints that demos and end-to-end tests use to inspect and steer the
//! executor (received requests, runs, faults, flow changes).

use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use base64::Engine as _;
use serde_json::{json, Map, Value};

pub use crate::directory::InitialFlows;
use crate::directory::{Entry, FlowSet};
use crate::flows::{bind_body, load_file, Flow};
use crate::queue::{now_ms, Queue, SyncDelivery};

/// Default path prefix of webhooks (the filter's default `webhook_path_prefix`).
pub const DEFAULT_WEBHOOK_PREFIX: &str = "/v1/flow-webhook/";

/// A complete HTTP answer; `main.rs` writes it with the HTTP server.
#[derive(Debug, Clone, PartialEq)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Resp {
    fn new(status: u16, body: impl Into<Bytes>) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            body: body.into(),
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
            Fault::Garbage => Some(with_json_type(Resp::new(200, &b"<html>oops"[..]))),
        }
    }
}

/// Shared executor state.
pub struct App {
    flows: RwLock<FlowSet>,
    received: Mutex<Vec<Value>>,
    fault: Mutex<Fault>,
    directory_fault: Mutex<Fault>,
    /// The flows loaded at startup (`POST /_executor/reset` restores them).
    initial_flows: InitialFlows,
    webhook_prefix: String,
    pub queue: Arc<Queue>,
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl App {
    /// The executor serving `initial_flows`. Errors if a file flow takes a generated flow's id.
    ///
    /// Directory versions start at the start time in microseconds, so that a version or ETag
    /// a filter kept from an earlier run of the executor is older than this run's history (and
    /// gets the full document) rather than mistaken for one of its versions.
    pub fn new(initial_flows: InitialFlows, webhook_prefix: String, queue: Arc<Queue>) -> Result<App, String> {
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Ok(App {
            flows: RwLock::new(FlowSet::new(&initial_flows, start)?),
            received: Mutex::new(Vec::new()),
            fault: Mutex::new(Fault::None),
            directory_fault: Mutex::new(Fault::None),
            initial_flows,
            webhook_prefix,
            queue,
        })
    }

    /// The flow with this id, as currently defined.
    pub fn flow(&self, id: &str) -> Option<Arc<Flow>> {
        self.flows.read().unwrap_or_else(|e| e.into_inner()).get(id)
    }

    /// Applies `change` to the flow set; answers the set's new ETag and version.
    fn update_flows(&self, change: impl FnOnce(&mut FlowSet) -> Result<(), Resp>) -> Resp {
        let mut set = self.flows.write().unwrap_or_else(|e| e.into_inner());
        match change(&mut set) {
            Ok(()) => json_response(
                200,
                &json!({"ok": true, "etag": set.etag(), "version": set.version.to_string()}),
            ),
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
            ("GET", ["v1", "flows"]) => self.directory(url, headers),
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
                with_json_type(Resp::new(200, set.raw_document()))
            }
            ("PUT", ["_executor", "flows"]) => {
                let flows = match std::str::from_utf8(body)
                    .map_err(|e| format!("body is not UTF-8: {e}"))
                    .and_then(load_file)
                {
                    Ok(flows) => flows,
                    Err(e) => return error(400, &e),
                };
                self.update_flows(|set| {
                    set.replace(flows.into_iter().map(|flow| Entry::Flow(Arc::new(flow))));
                    Ok(())
                })
            }
            ("POST", ["_executor", "reset"]) => {
                *lock(&self.fault) = Fault::None;
                *lock(&self.directory_fault) = Fault::None;
                lock(&self.received).clear();
                let initial = &self.initial_flows;
                self.update_flows(|set| {
                    let file = initial.flows.iter().map(|flow| Entry::Flow(Arc::clone(flow)));
                    set.replace(file.chain((0..initial.generated).map(Entry::Generated)));
                    Ok(())
                })
            }
            ("POST", ["_executor", "flows"]) => {
                let flow = match parse_json(body).and_then(|v| Flow::from_json(&v)) {
                    Ok(flow) => flow,
                    Err(e) => return error(400, &e),
                };
                self.update_flows(|set| {
                    set.upsert(flow);
                    Ok(())
                })
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
                    set.upsert(flow);
                    Ok(())
                })
            }
            ("DELETE", ["_executor", "flows", id]) => self.update_flows(|set| {
                if set.delete(id) {
                    Ok(())
                } else {
                    Err(error(404, "unknown flow"))
                }
            }),
            _ => error(404, "not found"),
        }
    }

    /// `GET /v1/flows[?since=<version>]`: the directory with a strong ETag; `If-None-Match` ->
    /// 304. With a `since` this set can answer from (contract 4.1), only the changes after it
    /// (`{"version", "changed", "removed"}`); else the full document (`{"version", "flows"}`).
    fn directory(&self, url: &str, headers: &[(String, String)]) -> Resp {
        if let Some(resp) = lock(&self.directory_fault).apply() {
            return resp;
        }
        let set = self.flows.read().unwrap_or_else(|e| e.into_inner());
        let etag = set.etag();
        let not_modified = header(headers, "if-none-match")
            // Weak comparison, as RFC 9110 asks for If-None-Match: `W/"x"` matches `"x"`.
            .is_some_and(|inm| {
                inm.split(',')
                    .map(str::trim)
                    .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
            });
        if not_modified {
            return Resp::new(304, Vec::new()).with_header("etag", &etag);
        }
        let since = url
            .split_once('?')
            .and_then(|(_, query)| query.split('&').find_map(|pair| pair.strip_prefix("since=")))
            .and_then(|since| since.parse::<u64>().ok());
        let body = match since.and_then(|since| set.delta(since)) {
            Some(delta) => Bytes::from(delta),
            None => set.full_document(),
        };
        with_json_type(Resp::new(200, body).with_header("etag", &etag))
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
mod tests;
