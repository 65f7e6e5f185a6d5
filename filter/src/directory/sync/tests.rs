//! The directory sync driven in-process: VMs of one "Envoy process" share one store that
//! behaves like Envoy's shared data, and the tests play the directory and the clock.

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use crate::directory::shared;
use crate::directory::table::{Read, Table};
use crate::flows::Lookup;
use crate::schema::FlowStatus;
use crate::store::MemoryStore;

const REFRESH: u64 = 1000;
const DIGEST: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
const CONFIG: &[u8] = b"{\"directory\": {}}";

type Shared = Rc<RefCell<MemoryStore>>;

struct Fake {
    store: Shared,
    serving: Option<Serving>,
    tick_ms: u64,
    fetches: Vec<(u32, Vec<(String, String)>)>,
    counts: Vec<Counter>,
    gauges: HashMap<Gauge, u64>,
    logs: Vec<String>,
    body: Vec<u8>,
    tokens: u32,
    clock_us: u64,
    requests: u64,
}

impl Store for Fake {
    fn get(&mut self, key: &str) -> (Option<Vec<u8>>, u32) {
        self.store.borrow_mut().get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> bool {
        self.store.borrow_mut().set(key, value, cas)
    }
    fn now_ms(&mut self) -> u64 {
        self.store.borrow().now_ms
    }
}

impl Host for Fake {
    fn fetch(&mut self, _: &str, headers: &[(&str, &str)], _: u64) -> Option<u32> {
        self.tokens += 1;
        let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        self.fetches.push((self.tokens, headers));
        Some(self.tokens)
    }
    fn answer_body(&mut self, start: usize, length: usize) -> Vec<u8> {
        let end = (start + length).min(self.body.len());
        self.body.get(start..end).unwrap_or_default().to_vec()
    }
    fn requests(&mut self) -> u64 {
        self.requests
    }
    fn clock_us(&mut self) -> u64 {
        self.clock_us += 700;
        self.clock_us
    }
    fn tick_every(&mut self, ms: u64) {
        self.tick_ms = ms;
    }
    fn count(&mut self, counter: Counter, _: u64) {
        self.counts.push(counter);
    }
    fn gauge(&mut self, gauge: Gauge, value: u64) {
        self.gauges.insert(gauge, value);
    }
    fn log(&mut self, _: Level, message: &str) {
        self.logs.push(message.to_string());
    }
    fn serve(&mut self, serving: Serving) {
        self.serving = Some(serving);
    }
}

struct Vm {
    sync: Sync,
    host: Fake,
}

fn source() -> Directory {
    Directory {
        cluster: "flow_directory".into(),
        authority: "flow-directory".into(),
        path: "/v1/flows".into(),
        refresh_ms: REFRESH,
    }
}

fn flow(id: &str, status: &str) -> Value {
    json!({"id": id, "ref_id": "w", "status": status, "token_sha256": [DIGEST]})
}

fn full(flows: &[Value], version: Option<&str>) -> Vec<u8> {
    let mut document = json!({ "flows": flows });
    if let Some(version) = version {
        document["version"] = json!(version);
    }
    serde_json::to_vec(&document).unwrap()
}

fn generated(count: usize) -> Vec<Value> {
    (0..count).map(|i| flow(&format!("g-{i}"), "live")).collect()
}

/// An "Envoy process": its shared data, clock and VMs.
struct Process {
    store: Shared,
    vms: Vec<Vm>,
}

impl Process {
    fn new(vms: usize, fallback: Option<&[Value]>) -> Process {
        let store = Shared::default();
        store.borrow_mut().now_ms = 1_000_000;
        let vms = (0..vms)
            .map(|_| {
                let fallback = fallback.map(|flows| FlowsBuilder::new(1024).lenient(&texts(flows)).0);
                Vm {
                    sync: Sync::new(source(), Keys::scoped(CONFIG), FlowsBuilder::new(1024), fallback),
                    host: Fake {
                        store: Rc::clone(&store),
                        serving: None,
                        tick_ms: 0,
                        fetches: Vec::new(),
                        counts: Vec::new(),
                        gauges: HashMap::new(),
                        logs: Vec::new(),
                        body: Vec::new(),
                        tokens: 0,
                        clock_us: 0,
                        requests: 0,
                    },
                }
            })
            .collect();
        let mut process = Process { store, vms };
        // The tick of `on_configure`.
        process.tick_all();
        process
    }

    fn advance(&self, ms: u64) {
        self.store.borrow_mut().now_ms += ms;
    }

    fn tick(&mut self, vm: usize) {
        let Vm { sync, host } = &mut self.vms[vm];
        sync.on_tick(host);
    }

    fn tick_all(&mut self) {
        for vm in 0..self.vms.len() {
            self.tick(vm);
        }
    }

    /// The fetch a VM has under way, taken: its token and headers.
    fn take_fetch(&mut self, vm: usize) -> Option<(u32, Vec<(String, String)>)> {
        self.vms[vm].host.fetches.pop()
    }

    fn answer(&mut self, vm: usize, token: u32, status: u16, body: &[u8], etag: &str) {
        let Vm { sync, host } = &mut self.vms[vm];
        host.body = body.to_vec();
        let answer = Answer {
            status: Some(status),
            etag: Some(etag.into()),
            size: body.len(),
        };
        sync.on_answer(host, token, answer);
        host.body.clear();
    }

    /// Ticks every VM (1 ms apart) until none is applying; how many ticks it took.
    fn settle(&mut self) -> usize {
        for ticks in 0..100_000 {
            if self
                .vms
                .iter()
                .all(|vm| vm.sync.pending.as_ref().is_none_or(|p| p.applying.is_none()))
            {
                return ticks;
            }
            self.advance(1);
            self.tick_all();
        }
        panic!("never settled");
    }

    /// Fetches with whichever VM takes the lease, answers, and applies.
    fn serve(&mut self, status: u16, body: &[u8], etag: &str) -> Vec<(String, String)> {
        self.advance(REFRESH);
        self.tick_all();
        let vm = (0..self.vms.len())
            .find(|&vm| !self.vms[vm].host.fetches.is_empty())
            .expect("a VM fetched");
        let (token, headers) = self.take_fetch(vm).unwrap();
        for other in 0..self.vms.len() {
            assert!(
                self.vms[other].host.fetches.is_empty(),
                "two VMs fetched in one interval"
            );
        }
        self.answer(vm, token, status, body, etag);
        self.settle();
        self.tick_all();
        headers
    }

    /// A VM's lookup of `id`, as its requests see it.
    fn lookup(&self, vm: usize, id: &str) -> Option<Rc<crate::flows::Flow>> {
        match self.vms[vm].host.serving.as_ref()? {
            Serving::Flows(flows) => flows.flow(id),
            Serving::Table { floor, .. } => {
                let store = Rc::clone(&self.store);
                let read: Read = Box::new(move |key| store.borrow_mut().get(key).0);
                Table::new(Keys::scoped(CONFIG), FlowsBuilder::new(1024), read, *floor).flow(id)
            }
        }
    }

    fn status(&self, id: &str) -> Vec<Option<FlowStatus>> {
        (0..self.vms.len())
            .map(|vm| self.lookup(vm, id).map(|f| f.status))
            .collect()
    }

    fn record_cas(&self, id: &str) -> u32 {
        self.store.borrow_mut().get(&Keys::scoped(CONFIG).flow(id)).1
    }
}

fn texts(flows: &[Value]) -> Vec<&'static [u8]> {
    flows
        .iter()
        .map(|f| &*Box::leak(serde_json::to_vec(f).unwrap().into_boxed_slice()))
        .collect()
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[test]
fn a_full_document_applies_in_steps_and_every_vm_serves_it() {
    let mut process = Process::new(3, None);
    assert!(
        process.vms.iter().all(|vm| vm.host.fetches.is_empty()),
        "fetched while configured"
    );
    // Busy VMs: steps of 3 ms.
    for vm in &mut process.vms {
        vm.host.requests += 1;
    }
    process.tick_all();
    assert!(process.status("f-1").iter().all(Option::is_none), "nothing served yet");
    let mut flows = generated(1200);
    flows.push(flow("f-1", "paused"));
    let body = full(&flows, Some("7"));
    process.advance(REFRESH);
    process.tick_all();
    let vm = (0..3).find(|&vm| !process.vms[vm].host.fetches.is_empty()).unwrap();
    let (token, headers) = process.take_fetch(vm).unwrap();
    assert_eq!(header(&headers, ":path"), Some("/v1/flows"));
    assert_eq!(header(&headers, "if-none-match"), None);
    process.answer(vm, token, 200, &body, "\"e7\"");
    let ticks = process.settle();
    assert!(ticks >= 2, "1,201 entries applied in {ticks} ticks");
    process.tick_all();
    assert_eq!(process.status("f-1"), vec![Some(FlowStatus::Paused); 3]);
    assert_eq!(process.status("g-1199"), vec![Some(FlowStatus::Live); 3]);
    assert_eq!(process.status("g-1200"), vec![None; 3]);
    for vm in &process.vms {
        assert_eq!(vm.host.gauges.get(&Gauge::FlowsLoaded), Some(&1201));
        assert_eq!(vm.host.gauges.get(&Gauge::EntriesRejected), Some(&0));
    }
    // The slices of the answer are freed.
    assert_eq!(
        process.store.borrow_mut().get(&Keys::scoped(CONFIG).slice(0)).0,
        Some(Vec::new())
    );
}

#[test]
fn the_next_fetch_asks_for_changes_and_a_change_moves_only_its_flows() {
    let mut process = Process::new(2, None);
    let flows = generated(600);
    process.serve(200, &full(&flows, Some("v 1")), "\"e1\"");
    let untouched = process.record_cas("g-5");
    let changes =
        json!({"version": "2", "changed": [flow("g-1", "paused"), flow("n-1", "live")], "removed": ["g-2", "nope"]});
    let headers = process.serve(200, &serde_json::to_vec(&changes).unwrap(), "\"e2\"");
    assert_eq!(
        header(&headers, ":path"),
        Some("/v1/flows?since=v1"),
        "the version without its space"
    );
    assert_eq!(header(&headers, "if-none-match"), Some("\"e1\""));
    assert_eq!(process.status("g-1"), vec![Some(FlowStatus::Paused); 2]);
    assert_eq!(process.status("n-1"), vec![Some(FlowStatus::Live); 2]);
    assert_eq!(process.status("g-2"), vec![None; 2]);
    assert_eq!(
        process.record_cas("g-5"),
        untouched,
        "an unchanged flow's record was rewritten"
    );
    assert_eq!(process.vms[0].host.gauges.get(&Gauge::FlowsLoaded), Some(&600));
    let headers = process.serve(304, b"", "\"e2\"");
    assert_eq!(header(&headers, ":path"), Some("/v1/flows?since=2"));
    assert!(process
        .vms
        .iter()
        .any(|vm| vm.host.counts.contains(&Counter::FetchNotModified)));
}

#[test]
fn a_full_document_removes_what_it_no_longer_holds_and_replaces_the_static_flows() {
    let statics = [flow("s-1", "live")];
    let mut process = Process::new(2, Some(&statics));
    process.tick_all();
    assert_eq!(process.status("s-1"), vec![Some(FlowStatus::Live); 2]);
    process.serve(200, &full(&generated(3), None), "\"a\"");
    assert_eq!(process.status("s-1"), vec![None; 2]);
    assert_eq!(process.status("g-2"), vec![Some(FlowStatus::Live); 2]);
    let headers = process.serve(200, &full(&generated(2), None), "\"b\"");
    assert_eq!(header(&headers, ":path"), Some("/v1/flows"), "no version, no since");
    assert_eq!(process.status("g-2"), vec![None; 2]);
    assert_eq!(process.status("g-1"), vec![Some(FlowStatus::Live); 2]);
    // A VM that starts now serves the table at once, never its static flows.
    let mut late = Process::new(1, Some(&statics));
    late.store = Rc::clone(&process.store);
    late.vms[0].host.store = Rc::clone(&process.store);
    late.tick(0);
    assert_eq!(late.status("g-1"), vec![Some(FlowStatus::Live)]);
    assert_eq!(late.status("s-1"), vec![None]);
}

/// The VM that serves no requests (Envoy's main thread) fetches: a busy one leaves an expired
/// lease to it for a tick, and takes it after that if nobody else does.
#[test]
fn an_idle_vm_fetches_before_busy_ones() {
    let mut process = Process::new(3, None);
    process.serve(304, b"", "\"a\"");
    for round in 1..=3 {
        for vm in [0, 2] {
            process.vms[vm].host.requests += 1;
        }
        process.advance(REFRESH);
        process.tick_all();
        let fetched: Vec<usize> = (0..3).filter(|&vm| !process.vms[vm].host.fetches.is_empty()).collect();
        assert_eq!(fetched, vec![1], "round {round}");
        let (token, _) = process.take_fetch(1).unwrap();
        process.answer(1, token, 304, b"", "\"a\"");
    }
    // With no idle VM, a busy one fetches a tick later.
    let mut busy = Process::new(2, None);
    busy.serve(304, b"", "\"a\"");
    for vm in 0..2 {
        busy.vms[vm].host.requests += 1;
    }
    busy.advance(REFRESH);
    busy.tick_all();
    assert!(busy.vms.iter().all(|vm| vm.host.fetches.is_empty()));
    busy.advance(crate::directory::tick_ms(REFRESH));
    busy.tick_all();
    assert_eq!(busy.vms.iter().filter(|vm| !vm.host.fetches.is_empty()).count(), 1);
}

#[test]
fn backoff_doubles_up_to_its_cap() {
    assert_eq!(backoff_ms(1000, 0), 1000);
    assert_eq!(backoff_ms(1000, 3), 8000);
    assert_eq!(backoff_ms(1000, 40), MAX_BACKOFF_MS);
    assert_eq!(backoff_ms(120_000, 2), 120_000);
}

#[test]
fn records_hold_what_the_directory_sent() {
    let mut process = Process::new(1, None);
    process.serve(200, &full(&[flow("f-1", "live")], None), "\"a\"");
    let record = process
        .store
        .borrow_mut()
        .get(&Keys::scoped(CONFIG).flow("f-1"))
        .0
        .unwrap();
    let (_, entry) = shared::entry(&record).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(entry).unwrap(), flow("f-1", "live"));
}

mod entries;
#[cfg(not(target_arch = "wasm32"))]
mod properties;
