//! HTTP handling: webhooks (contract 3), the flow directory (section 4) and the
//! `/_executor/*` control endpoints that demos and end-to-end tests use to inspect and steer the
//! executor (received requests, runs, faults, flow changes).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::flows::{
    bind_body, generated_flow, generated_id, generated_json, generated_number, load_file, write_generated_json, Flow,
};
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

/// What a slot of the flow set holds: a generated flow by its number (materialised on demand,
/// so a million of them cost a few bytes each), any other flow as loaded, or the tombstone of a
/// removed id (kept so that a delta can report the removal).
#[derive(Clone)]
enum Entry {
    Generated(u32),
    Flow(Arc<Flow>),
    // A thin pointer (not `Box<str>`) keeps a slot at 24 bytes: a million generated flows.
    #[allow(clippy::box_collection)]
    Removed(Box<String>),
}

impl Entry {
    fn id(&self) -> String {
        match self {
            Entry::Generated(n) => generated_id(*n),
            Entry::Flow(flow) => flow.id.clone(),
            Entry::Removed(id) => id.to_string(),
        }
    }

    /// The flow's directory entry; `None` for a tombstone.
    fn public(&self) -> Option<Value> {
        match self {
            Entry::Generated(n) => Some(generated_json(*n)),
            Entry::Flow(flow) => Some(flow.public()),
            Entry::Removed(_) => None,
        }
    }

    /// Appends the directory entry (`public`) or, with `raw`, the whole flow object.
    fn write_json(&self, raw: bool, out: &mut Vec<u8>) {
        match self {
            // A generated flow has no executor-only field: its raw object is its public one.
            Entry::Generated(n) => write_generated_json(*n, out),
            Entry::Flow(flow) if raw => serde_json::to_writer(out, &flow.raw).expect("JSON serialises"),
            Entry::Flow(flow) => serde_json::to_writer(out, &flow.public()).expect("JSON serialises"),
            Entry::Removed(_) => {}
        }
    }
}

/// A flow (or its tombstone) and the directory version at which it last changed.
struct Slot {
    entry: Entry,
    version: u64,
}

/// The flows the executor starts with, and restores on `POST /_executor/reset`: the file's flows,
/// then `generated` generated flows (`g-0000000`, ...).
#[derive(Clone)]
pub struct InitialFlows {
    pub flows: Vec<Arc<Flow>>,
    pub generated: u32,
}

/// The current flows and the directory's versions (contract 4.1).
///
/// Every change to the set increases `version` by one; each slot remembers the version at which
/// it last changed, removed ids stay as tombstones, and `changes` indexes the slots changed after
/// `floor` (the version the set started at) by version, so `GET /v1/flows?since=<v>` costs what
/// changed, not the size of the set. A change that leaves every flow's directory entry as it was
/// does not count. The full document is serialised only when asked for, then kept until the
/// next change.
///
/// Ids keep the position they were first given, also when `PUT /_executor/flows` lists them in
/// another order (the directory is a set).
struct FlowSet {
    slots: Vec<Slot>,
    /// Slot of every id except the generated ones, which sit at `generated_base + n`.
    index: HashMap<Box<str>, u32>,
    generated_base: usize,
    generated: u32,
    /// `(version, slot)` of every slot changed after `floor`.
    changes: BTreeSet<(u64, u32)>,
    version: u64,
    floor: u64,
    /// The full document of `version`, once asked for.
    full: Mutex<Option<Bytes>>,
}

impl FlowSet {
    /// The initial set, at `version`.
    fn new(initial: &InitialFlows, version: u64) -> Result<FlowSet, String> {
        let mut set = FlowSet {
            slots: Vec::with_capacity(initial.flows.len() + initial.generated as usize),
            index: HashMap::with_capacity(initial.flows.len()),
            generated_base: initial.flows.len(),
            generated: initial.generated,
            changes: BTreeSet::new(),
            version,
            floor: version,
            full: Mutex::new(None),
        };
        for flow in &initial.flows {
            if set.locate(&flow.id).is_some() {
                return Err(format!("flow {}: duplicate id", flow.id));
            }
            set.index.insert(flow.id.as_str().into(), set.slots.len() as u32);
            set.slots.push(Slot {
                entry: Entry::Flow(Arc::clone(flow)),
                version,
            });
        }
        set.slots.extend((0..initial.generated).map(|n| Slot {
            entry: Entry::Generated(n),
            version,
        }));
        Ok(set)
    }

    /// The strong ETag of the current set: it changes with the version, that is whenever the set does.
    fn etag(&self) -> String {
        format!("\"v{}\"", self.version)
    }

    /// The slot of `id`, live or tombstone.
    fn locate(&self, id: &str) -> Option<usize> {
        match generated_number(id) {
            Some(n) if n < self.generated => Some(self.generated_base + n as usize),
            _ => self.index.get(id).map(|&i| i as usize),
        }
    }

    /// The live flow with this id (a generated one is materialised).
    fn get(&self, id: &str) -> Option<Arc<Flow>> {
        match &self.slots[self.locate(id)?].entry {
            Entry::Generated(n) => Some(Arc::new(generated_flow(*n))),
            Entry::Flow(flow) => Some(Arc::clone(flow)),
            Entry::Removed(_) => None,
        }
    }

    /// Every live flow, in directory order.
    fn live(&self) -> impl Iterator<Item = &Entry> {
        self.slots
            .iter()
            .map(|slot| &slot.entry)
            .filter(|entry| !matches!(entry, Entry::Removed(_)))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.live().count()
    }

    /// Puts `entry` (a live flow) at its id's slot, or a new one. Returns the slot and whether
    /// the directory entry changed; only then does the slot take version `next`.
    fn put(&mut self, next: u64, entry: Entry) -> (usize, bool) {
        let slot = match &entry {
            Entry::Generated(n) => Some(self.generated_base + *n as usize),
            Entry::Flow(flow) => self.locate(&flow.id),
            Entry::Removed(_) => unreachable!("put takes a live flow"),
        };
        let Some(i) = slot else {
            let i = self.slots.len();
            if let Entry::Flow(flow) = &entry {
                self.index.insert(flow.id.as_str().into(), i as u32);
            }
            self.slots.push(Slot { entry, version: next });
            self.changes.insert((next, i as u32));
            return (i, true);
        };
        // A generated slot given back its generated flow keeps only the number.
        let entry = match entry {
            Entry::Flow(flow) if i >= self.generated_base && i - self.generated_base < self.generated as usize => {
                let n = (i - self.generated_base) as u32;
                if Value::Object(flow.raw.clone()) == generated_json(n) {
                    Entry::Generated(n)
                } else {
                    Entry::Flow(flow)
                }
            }
            entry => entry,
        };
        let old = &self.slots[i];
        let changed = match (&old.entry, &entry) {
            (Entry::Generated(a), Entry::Generated(b)) => a != b,
            (Entry::Removed(_), _) => true,
            (old, new) => old.public() != new.public(),
        };
        if changed {
            self.touch(i, next);
        }
        // Executor-only fields (steps, run_ms) may change without the directory entry changing.
        self.slots[i].entry = entry;
        (i, changed)
    }

    /// Removes the flow in slot `i`, if live. Returns whether it was.
    fn remove(&mut self, next: u64, i: usize) -> bool {
        if matches!(self.slots[i].entry, Entry::Removed(_)) {
            return false;
        }
        let id = self.slots[i].entry.id();
        self.slots[i].entry = Entry::Removed(Box::new(id));
        self.touch(i, next);
        true
    }

    /// Slot `i` changed at version `next`.
    fn touch(&mut self, i: usize, next: u64) {
        let old = self.slots[i].version;
        self.changes.remove(&(old, i as u32));
        self.changes.insert((next, i as u32));
        self.slots[i].version = next;
    }

    /// Ends a change: the set is at version `next` if anything changed.
    fn commit(&mut self, next: u64, changed: bool) {
        if changed {
            self.version = next;
            *self.full.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Adds or replaces one flow.
    fn upsert(&mut self, flow: Flow) {
        let next = self.version + 1;
        let (_, changed) = self.put(next, Entry::Flow(Arc::new(flow)));
        self.commit(next, changed);
    }

    /// Removes one flow; false if there is no such live flow.
    fn delete(&mut self, id: &str) -> bool {
        let next = self.version + 1;
        let removed = self.locate(id).is_some_and(|i| self.remove(next, i));
        self.commit(next, removed);
        removed
    }

    /// Replaces the whole set, in one version: flows whose directory entry changed (or that are
    /// new) take the new version, ids no longer present are removed. O(flows).
    fn replace(&mut self, entries: impl IntoIterator<Item = Entry>) {
        let next = self.version + 1;
        let mut kept = vec![false; self.slots.len()];
        let mut changed = false;
        for entry in entries {
            let (i, c) = self.put(next, entry);
            changed |= c;
            if i >= kept.len() {
                kept.resize(i + 1, false);
            }
            kept[i] = true;
        }
        for (i, kept) in kept.into_iter().enumerate() {
            if !kept {
                changed |= self.remove(next, i);
            }
        }
        self.commit(next, changed);
    }

    /// The full document: `{"version": "<v>", "flows": [...]}`, serialised once per version.
    fn full_document(&self) -> Bytes {
        let mut full = lock(&self.full);
        if let Some(doc) = &*full {
            return doc.clone();
        }
        let mut out = Vec::with_capacity(64 + self.slots.len() * 128);
        out.extend_from_slice(format!(r#"{{"version":"{}","flows":["#, self.version).as_bytes());
        for (k, entry) in self.live().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            entry.write_json(false, &mut out);
        }
        out.extend_from_slice(b"]}");
        let doc = Bytes::from(out);
        *full = Some(doc.clone());
        doc
    }

    /// The changes after version `since`, if this set can tell them (`floor <= since <=
    /// version`): `{"version": "<v>", "changed": [...], "removed": [...]}`, each list ordered by
    /// version then id.
    fn delta(&self, since: u64) -> Option<Vec<u8>> {
        if since < self.floor || since > self.version {
            return None;
        }
        let mut changed: Vec<(u64, String, &Entry)> = Vec::new();
        let mut removed: Vec<(u64, String)> = Vec::new();
        for &(version, i) in self.changes.range((since + 1, 0)..) {
            let entry = &self.slots[i as usize].entry;
            match entry {
                Entry::Removed(id) => removed.push((version, id.to_string())),
                live => changed.push((version, live.id(), live)),
            }
        }
        changed.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        removed.sort();
        let mut out = format!(r#"{{"version":"{}","changed":["#, self.version).into_bytes();
        for (k, (_, _, entry)) in changed.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            entry.write_json(false, &mut out);
        }
        out.extend_from_slice(br#"],"removed":"#);
        let ids: Vec<&str> = removed.iter().map(|(_, id)| id.as_str()).collect();
        serde_json::to_writer(&mut out, &ids).expect("JSON serialises");
        out.push(b'}');
        Some(out)
    }

    /// `{"flows": [...]}` with every flow's whole object (executor-only fields included).
    fn raw_document(&self) -> Vec<u8> {
        let mut out = br#"{"flows":["#.to_vec();
        for (k, entry) in self.live().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            entry.write_json(true, &mut out);
        }
        out.extend_from_slice(b"]}");
        out
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

    fn flow(value: Value) -> Flow {
        Flow::from_json(&value).unwrap()
    }

    #[test]
    fn directory_strips_executor_fields_and_etag_follows_content() {
        let flow = |status: &str, run_ms: u64| {
            flow(json!({"id": "f", "ref_id": "w", "status": status, "run_ms": run_ms,
                "steps": [{"ref_id": "r", "values": {"v": "1"}}]}))
        };
        let initial = |status| InitialFlows {
            flows: vec![Arc::new(flow(status, 3))],
            generated: 0,
        };
        let mut a = FlowSet::new(&initial("live"), 7).unwrap();
        let dir: Value = serde_json::from_slice(&a.full_document()).unwrap();
        assert_eq!(
            dir,
            json!({"version": "7", "flows": [{"id": "f", "ref_id": "w", "status": "live"}]})
        );
        let etag = a.etag();
        assert!(etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"));
        // The same content, or a change to executor-only fields only: the same version and ETag.
        a.upsert(flow("live", 3));
        a.upsert(flow("live", 9));
        a.replace([Entry::Flow(Arc::new(flow("live", 5)))]);
        assert_eq!((a.version, a.etag()), (7, etag.clone()));
        assert_eq!(a.get("f").unwrap().run_ms, 5);
        // Any change to the directory entry: a new version, a new ETag, a new document.
        a.upsert(flow("paused", 5));
        assert_eq!(a.version, 8);
        assert_ne!(a.etag(), etag);
        let dir: Value = serde_json::from_slice(&a.full_document()).unwrap();
        assert_eq!(dir["version"], "8");
        assert_eq!(dir["flows"][0]["status"], "paused");
        // Back to the first content is a change too: the ETag names the version, not the bytes.
        a.upsert(flow("live", 5));
        assert_eq!(a.version, 9);
        assert_ne!(a.etag(), etag);
        assert_eq!(a.len(), 1);
        assert_eq!(std::mem::size_of::<Slot>(), 24);
    }

    /// An executor with `flows` and `generated` generated flows (its own SQLite file).
    fn app(name: &str, flows: &[Value], generated: u32) -> App {
        let path = std::env::temp_dir().join(format!(
            "flowgate-executor-test-server-{name}-{}.sqlite3",
            std::process::id()
        ));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let initial = InitialFlows {
            flows: flows.iter().map(|f| Arc::new(flow(f.clone()))).collect(),
            generated,
        };
        App::new(
            initial,
            DEFAULT_WEBHOOK_PREFIX.into(),
            Arc::new(Queue::open(&path).unwrap()),
        )
        .unwrap()
    }

    fn call(app: &App, method: &str, url: &str, body: &Value) -> Resp {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        app.handle(method, url, &[], &body)
    }

    /// `GET url` (with `If-None-Match` if given): the answer, its ETag and its JSON body.
    fn get(app: &App, url: &str, if_none_match: Option<&str>) -> (Resp, String, Value) {
        let headers: Vec<(String, String)> = if_none_match
            .map(|tag| ("if-none-match".to_string(), tag.to_string()))
            .into_iter()
            .collect();
        let resp = app.handle("GET", url, &headers, b"");
        let etag = resp
            .headers
            .iter()
            .find(|(n, _)| *n == "etag")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if resp.status == 200 {
            assert!(
                resp.headers.contains(&("content-type", "application/json".into())),
                "{resp:?}"
            );
        }
        let body = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        (resp, etag, body)
    }

    fn version(doc: &Value) -> u64 {
        doc["version"].as_str().unwrap().parse().unwrap()
    }

    fn ids(list: &Value) -> Vec<&str> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|f| f.get("id").unwrap_or(f).as_str().unwrap())
            .collect()
    }

    fn three() -> Vec<Value> {
        ["f-1", "f-2", "f-3"]
            .iter()
            .map(|id| json!({"id": id, "ref_id": "w", "status": "live", "run_ms": 1}))
            .collect()
    }

    #[test]
    fn deltas_name_what_changed_since_a_version() {
        let app = app("deltas", &three(), 0);
        let (resp, etag, full) = get(&app, "/v1/flows", None);
        assert_eq!(resp.status, 200);
        let v0 = version(&full);
        assert_eq!(ids(&full["flows"]), ["f-1", "f-2", "f-3"]);
        assert_eq!(full["flows"][0], json!({"id": "f-1", "ref_id": "w", "status": "live"}));
        assert_eq!(etag, format!("\"v{v0}\""));

        // Nothing since the current version: an empty delta, or 304 to the current ETag.
        let (_, tag, delta) = get(&app, &format!("/v1/flows?since={v0}"), None);
        assert_eq!(delta, json!({"version": v0.to_string(), "changed": [], "removed": []}));
        assert_eq!(tag, etag);
        let (resp, tag, _) = get(&app, &format!("/v1/flows?since={v0}"), Some(&etag));
        assert_eq!((resp.status, resp.body.len(), tag.as_str()), (304, 0, etag.as_str()));

        // Pausing one flow: a delta of exactly that flow, at the next version.
        let paused = call(&app, "PUT", "/_executor/flows/f-2", &json!({"status": "paused"}));
        assert_eq!(paused.status, 200);
        let (_, tag, delta) = get(&app, &format!("/v1/flows?since={v0}"), Some(&etag));
        assert_eq!(
            delta,
            json!({"version": (v0 + 1).to_string(),
                   "changed": [{"id": "f-2", "ref_id": "w", "status": "paused"}], "removed": []})
        );
        assert_eq!(tag, format!("\"v{}\"", v0 + 1));
        let answer: Value = serde_json::from_slice(&paused.body).unwrap();
        assert_eq!(
            (answer["etag"].as_str(), version(&answer)),
            (Some(tag.as_str()), v0 + 1)
        );

        // Deleting one: a removal; both changes since v0, one since v0 + 1.
        assert_eq!(call(&app, "DELETE", "/_executor/flows/f-3", &Value::Null).status, 200);
        assert_eq!(call(&app, "DELETE", "/_executor/flows/f-3", &Value::Null).status, 404);
        let (_, _, delta) = get(&app, &format!("/v1/flows?since={}", v0 + 1), None);
        assert_eq!((ids(&delta["changed"]), ids(&delta["removed"])), (vec![], vec!["f-3"]));
        let (_, _, delta) = get(&app, &format!("/v1/flows?since={v0}"), None);
        assert_eq!(
            (ids(&delta["changed"]), ids(&delta["removed"])),
            (vec!["f-2"], vec!["f-3"])
        );
        assert_eq!(version(&delta), v0 + 2);

        // Re-adding a removed id: changed, no longer removed.
        let added = call(
            &app,
            "POST",
            "/_executor/flows",
            &json!({"id": "f-3", "status": "live"}),
        );
        assert_eq!(added.status, 200);
        let (_, _, delta) = get(&app, &format!("/v1/flows?since={v0}"), None);
        assert_eq!(
            (ids(&delta["changed"]), ids(&delta["removed"])),
            (vec!["f-2", "f-3"], vec![])
        );
        assert_eq!(delta["changed"][1], json!({"id": "f-3", "status": "live"}));
        let (_, _, full) = get(&app, "/v1/flows", None);
        assert_eq!(
            (version(&full), ids(&full["flows"])),
            (v0 + 3, vec!["f-1", "f-2", "f-3"])
        );

        // The full document, the delta and 304 all follow the directory fault, as before.
        call(
            &app,
            "PUT",
            "/_executor/directory-fault",
            &json!({"mode": "status", "status": 503}),
        );
        assert_eq!(get(&app, &format!("/v1/flows?since={v0}"), None).0.status, 503);
        assert_eq!(get(&app, "/v1/flows", Some(&etag)).0.status, 503);
    }

    #[test]
    fn replacing_the_whole_set_diffs_flow_by_flow() {
        let app = app("replace", &three(), 0);
        let v0 = version(&get(&app, "/v1/flows", None).2);
        let set = json!({"flows": [
            {"id": "f-4", "status": "live"},
            {"id": "f-2", "ref_id": "w", "status": "paused", "run_ms": 1},
            {"id": "f-1", "ref_id": "w", "status": "live", "run_ms": 9},
        ]});
        assert_eq!(call(&app, "PUT", "/_executor/flows", &set).status, 200);
        let (_, etag, delta) = get(&app, &format!("/v1/flows?since={v0}"), None);
        // One version for the whole change, ordered by id within it; f-1 changed only run_ms.
        assert_eq!(version(&delta), v0 + 1);
        assert_eq!(
            (ids(&delta["changed"]), ids(&delta["removed"])),
            (vec!["f-2", "f-4"], vec!["f-3"])
        );
        assert_eq!(app.flow("f-1").unwrap().run_ms, 9);
        // The same set again changes nothing: same version, same ETag.
        let again: Value = serde_json::from_slice(&call(&app, "PUT", "/_executor/flows", &set).body).unwrap();
        assert_eq!(version(&again), v0 + 1);
        assert_eq!(get(&app, "/v1/flows", Some(&etag)).0.status, 304);
        // Reset is a diff back to the initial set.
        assert_eq!(call(&app, "POST", "/_executor/reset", &Value::Null).status, 200);
        let (_, _, delta) = get(&app, &format!("/v1/flows?since={}", v0 + 1), None);
        assert_eq!(
            (ids(&delta["changed"]), ids(&delta["removed"])),
            (vec!["f-2", "f-3"], vec!["f-4"])
        );
        let (_, _, full) = get(&app, "/v1/flows", None);
        assert_eq!(
            (version(&full), ids(&full["flows"])),
            (v0 + 2, vec!["f-1", "f-2", "f-3"])
        );
        // ...and a reset of the initial set changes nothing.
        call(&app, "POST", "/_executor/reset", &Value::Null);
        assert_eq!(version(&get(&app, "/v1/flows", None).2), v0 + 2);
    }

    #[test]
    fn a_since_it_cannot_answer_gets_the_full_document() {
        let app = app("since", &three(), 0);
        let (_, etag, full) = get(&app, "/v1/flows", None);
        let v0 = version(&full);
        call(&app, "PUT", "/_executor/flows/f-1", &json!({"status": "paused"}));
        let (_, _, current) = get(&app, "/v1/flows", None);
        assert_eq!(version(&current), v0 + 1);
        for since in [
            "x".to_string(),
            String::new(),
            "-1".into(),
            "0x10".into(),
            (v0 + 2).to_string(),
            u64::MAX.to_string(),
            "0".into(),
            (v0 - 1).to_string(),
        ] {
            let (resp, tag, doc) = get(&app, &format!("/v1/flows?since={since}"), None);
            assert_eq!((resp.status, &doc), (200, &current), "since={since}");
            assert_eq!(tag, format!("\"v{}\"", v0 + 1));
        }
        // An old ETag is not the current one, with or without `since`.
        assert_eq!(get(&app, &format!("/v1/flows?since={v0}"), Some(&etag)).0.status, 200);
        let (_, _, delta) = get(&app, &format!("/v1/flows?x=1&since={v0}"), None);
        assert_eq!(ids(&delta["changed"]), ["f-1"]);
    }

    #[test]
    fn generated_flows_follow_the_file_and_run() {
        let app = app("generated", &three()[..1], 3);
        let (_, _, full) = get(&app, "/v1/flows", None);
        assert_eq!(ids(&full["flows"]), ["f-1", "g-0000000", "g-0000001", "g-0000002"]);
        assert_eq!(full["flows"][3], generated_json(2));
        let raw: Value = serde_json::from_slice(&call(&app, "GET", "/_executor/flows", &Value::Null).body).unwrap();
        assert_eq!(raw["flows"][0]["run_ms"], 1);
        assert_eq!(raw["flows"][1], generated_json(0));
        assert!(app.flow("g-0000003").is_none());
        let resp = app.handle("POST", "/v1/flow-webhook/g-0000001", &[], b"{}");
        assert_eq!((resp.status, &resp.body[..]), (200, &b"{}"[..]));
        // A file flow cannot take a generated flow's id; past the count, `g-` ids are ordinary.
        let taken = InitialFlows {
            flows: vec![Arc::new(flow(json!({"id": "g-0000002"})))],
            generated: 3,
        };
        assert!(FlowSet::new(&taken, 1).err().unwrap().contains("g-0000002"));
        let free = InitialFlows {
            flows: vec![Arc::new(flow(json!({"id": "g-0000003"})))],
            generated: 3,
        };
        assert_eq!(FlowSet::new(&free, 1).unwrap().len(), 4);
    }

    #[test]
    fn a_million_generated_flows_answer_a_one_flow_delta() {
        const N: u32 = 1_000_000;
        let app = app("million", &three(), N);
        let v0 = app.flows.read().unwrap().version;
        let last = generated_id(N - 1);
        let paused = call(
            &app,
            "PUT",
            &format!("/_executor/flows/{last}"),
            &json!({"status": "paused"}),
        );
        assert_eq!(paused.status, 200, "{paused:?}");
        let (_, _, delta) = get(&app, &format!("/v1/flows?since={v0}"), None);
        let mut expected = generated_json(N - 1);
        expected["status"] = json!("paused");
        assert_eq!(
            delta,
            json!({"version": (v0 + 1).to_string(), "changed": [expected], "removed": []})
        );
        // Delete and re-add a generated flow; both come back to the number alone.
        call(
            &app,
            "PUT",
            &format!("/_executor/flows/{last}"),
            &json!({"status": "live"}),
        );
        call(&app, "DELETE", "/_executor/flows/g-0000000", &Value::Null);
        let (_, _, delta) = get(&app, &format!("/v1/flows?since={}", v0 + 1), None);
        assert_eq!(
            (ids(&delta["changed"]), ids(&delta["removed"])),
            (vec![last.as_str()], vec!["g-0000000"])
        );
        call(&app, "POST", "/_executor/flows", &generated_json(0));
        {
            let set = app.flows.read().unwrap();
            assert_eq!(set.version, v0 + 4);
            let generated = set
                .slots
                .iter()
                .filter(|s| matches!(s.entry, Entry::Generated(_)))
                .count();
            assert_eq!(generated, N as usize);
            assert_eq!(set.changes.len(), 2);
        }
        // Reset finds nothing to change: every flow has its initial content again.
        call(&app, "POST", "/_executor/reset", &Value::Null);
        assert_eq!(app.flows.read().unwrap().version, v0 + 4);
        assert_eq!(app.flow("g-0999999").unwrap().raw["status"], "live");
    }
}
