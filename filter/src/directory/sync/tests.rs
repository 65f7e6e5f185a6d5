//! The directory sync driven in-process: VMs of one "Envoy process" share a store that
//! behaves like Envoy's shared data (one CAS counter; CAS 0, or an absent key, writes
//! unconditionally), and the tests play the directory and the clock.

use std::collections::HashMap;

use super::*;
use crate::directory::shared::{self, Key, Published};
use crate::directory::{index, ENTRIES_PER_STEP};
use crate::schema::FlowStatus;

const REFRESH: u64 = 1000;
const DIGEST: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

#[derive(Default)]
struct Process {
    shared: HashMap<Key, (Vec<u8>, u32)>,
    last_cas: u32,
    now_ms: u64,
    last_token: u32,
}

#[derive(Default)]
struct Host {
    serving: Option<Rc<Flows>>,
    tick_ms: u64,
    /// Fetches dispatched and not answered yet: token and headers.
    fetches: Vec<(u32, Vec<(String, String)>)>,
    counts: Vec<Counter>,
    gauges: HashMap<Gauge, u64>,
    refuse_calls: bool,
}

struct Vm {
    sync: Sync,
    host: Host,
}

fn source() -> Directory {
    Directory {
        cluster: "flow_directory".into(),
        authority: "flow-directory".into(),
        path: "/v1/flows".into(),
        refresh_ms: REFRESH,
    }
}

fn vm(fallback: Option<Flows>) -> Vm {
    Vm {
        sync: Sync::new(source(), FlowsBuilder::new(1024), fallback),
        host: Host::default(),
    }
}

/// A directory document: flows `(id, status)`, plus `extra` generated live flows.
fn document(flows: &[(&str, &str)], extra: usize) -> Vec<u8> {
    let flow = |id: &str, status: &str| serde_json::json!({"id": id, "ref_id": "w", "status": status, "token_sha256": [DIGEST]});
    let mut all: Vec<_> = flows.iter().map(|(id, status)| flow(id, status)).collect();
    all.extend((0..extra).map(|i| flow(&format!("g-{i}"), "live")));
    serde_json::to_vec(&serde_json::json!({ "flows": all })).unwrap()
}

fn static_flows(flows: &[(&str, &str)]) -> Flows {
    let Some((flows, problems)) = Loading::new(index(&document(flows, 0)).unwrap(), Rc::default())
        .unwrap()
        .step(&FlowsBuilder::new(1024))
    else {
        panic!("one step")
    };
    assert!(problems.is_empty());
    flows
}

impl Process {
    fn read(&self, key: Key) -> Shared {
        match self.shared.get(&key) {
            Some((value, cas)) => Shared {
                value: Some(value.clone()),
                cas: *cas,
            },
            None => Shared::default(),
        }
    }

    fn write(&mut self, key: Key, value: Vec<u8>, cas: u32) -> bool {
        if let Some((_, current)) = self.shared.get(&key) {
            if cas != 0 && cas != *current {
                return false;
            }
        }
        self.last_cas += 1;
        self.shared.insert(key, (value, self.last_cas));
        true
    }

    fn execute(&mut self, host: &mut Host, command: Command) -> Option<Event> {
        match command {
            Command::Fetch { headers, .. } => {
                if host.refuse_calls {
                    return Some(Event::Dispatched { token: None });
                }
                self.last_token += 1;
                host.fetches.push((self.last_token, headers));
                Some(Event::Dispatched {
                    token: Some(self.last_token),
                })
            }
            Command::Read(access) => Some(Event::Read {
                access,
                value: self.read(access.key()),
            }),
            Command::Write { access, value, cas } => Some(Event::Wrote {
                access,
                ok: self.write(access.key(), value, cas),
            }),
            Command::Serve(flows) => {
                host.serving = Some(flows);
                None
            }
            Command::TickEvery(ms) => {
                host.tick_ms = ms;
                None
            }
            Command::Count(counter) => {
                host.counts.push(counter);
                None
            }
            Command::Gauge(gauge, value) => {
                host.gauges.insert(gauge, value);
                None
            }
            Command::Log(..) => None,
        }
    }

    fn run(&mut self, vm: &mut Vm, event: Event) {
        let Vm { sync, host } = vm;
        sync.run(event, |command| self.execute(host, command));
    }

    fn tick(&mut self, vm: &mut Vm) {
        let event = Event::Tick {
            now_ms: self.now_ms,
            lease: self.read(Key::Lease),
            published: self.read(Key::Published),
        };
        self.run(vm, event);
    }

    /// Answers the VM's oldest outstanding fetch.
    fn answer(&mut self, vm: &mut Vm, status: Option<u16>, etag: &str, body: Vec<u8>) {
        assert!(!vm.host.fetches.is_empty(), "no fetch to answer");
        let (token, _) = vm.host.fetches.remove(0);
        let event = self.answered(token, status, etag, body);
        self.run(vm, event);
    }

    fn answered(&self, token: u32, status: Option<u16>, etag: &str, body: Vec<u8>) -> Event {
        Event::Answered {
            token,
            now_ms: self.now_ms,
            answer: Answer {
                status,
                etag: Some(etag.to_string()),
                body,
            },
            published: self.read(Key::Published),
        }
    }

    /// Advances the clock in 50 ms ticks, ticking every VM each time.
    fn advance(&mut self, vms: &mut [&mut Vm], ms: u64) {
        for _ in 0..ms / 50 {
            self.now_ms += 50;
            for vm in vms.iter_mut() {
                self.tick(vm);
            }
        }
    }

    /// Ticks until a VM has a fetch out: how many 50 ms ticks that took, and which VM.
    fn until_fetch<'v>(&mut self, a: &'v mut Vm, b: &'v mut Vm) -> (usize, &'v mut Vm) {
        for ticks in 1..=2_000 {
            self.advance(&mut [&mut *a, &mut *b], 50);
            if !a.host.fetches.is_empty() {
                return (ticks, a);
            }
            if !b.host.fetches.is_empty() {
                return (ticks, b);
            }
        }
        panic!("no fetch within 100 s")
    }

    fn stored_record(&self) -> Option<Published> {
        shared::record(&self.shared.get(&Key::Document)?.0)
    }
}

fn status(vm: &Vm, id: &str) -> Option<FlowStatus> {
    Some(vm.host.serving.as_ref()?.get(id)?.status)
}

fn outstanding(vms: &[&Vm]) -> usize {
    vms.iter().map(|vm| vm.host.fetches.len()).sum()
}

fn if_none_match(vm: &Vm) -> Option<String> {
    let (_, headers) = vm.host.fetches.first()?;
    headers
        .iter()
        .find(|(n, _)| n == "if-none-match")
        .map(|(_, v)| v.clone())
}

fn started() -> (Process, Vm, Vm) {
    let mut process = Process {
        now_ms: 1_000_000,
        ..Process::default()
    };
    let (mut a, mut b) = (vm(None), vm(None));
    process.tick(&mut a);
    process.tick(&mut b);
    (process, a, b)
}

#[test]
fn one_vm_fetches_per_interval_and_every_vm_serves_what_it_published() {
    let (mut process, mut a, mut b) = started();
    assert_eq!(
        (a.host.fetches.len(), b.host.fetches.len()),
        (1, 0),
        "one fetch per process"
    );
    assert!(a.host.serving.is_none(), "nothing to serve before the first load");
    assert_eq!(a.host.tick_ms, tick_ms(REFRESH));
    process.answer(&mut a, Some(200), "\"v1\"", document(&[("f-1", "live")], 0));
    process.advance(&mut [&mut a, &mut b], 50);
    assert_eq!(status(&a, "f-1"), Some(FlowStatus::Live));
    assert_eq!(status(&b, "f-1"), Some(FlowStatus::Live));
    assert_eq!(a.host.counts, [Counter::FetchOk]);
    assert_eq!(b.host.gauges.get(&Gauge::FlowsLoaded), Some(&1));

    // The next fetch is due one interval after the first started, conditional on its ETag.
    process.advance(&mut [&mut a, &mut b], REFRESH - 100);
    assert_eq!(outstanding(&[&a, &b]), 0);
    process.advance(&mut [&mut a, &mut b], 100);
    assert_eq!(outstanding(&[&a, &b]), 1);
    let fetching = if a.host.fetches.is_empty() { &mut b } else { &mut a };
    assert_eq!(if_none_match(fetching).as_deref(), Some("\"v1\""));
    process.answer(fetching, Some(304), "\"v1\"", Vec::new());
    assert_eq!(fetching.host.counts.last(), Some(&Counter::FetchNotModified));
    assert_eq!(
        process.stored_record().unwrap().generation,
        1,
        "a 304 publishes nothing"
    );
}

#[test]
fn failed_fetches_back_off_for_every_vm_and_an_answer_resets_it() {
    let (mut process, mut a, mut b) = started();
    // As when Envoy drops an answer over its buffer limit: no headers, no body.
    process.answer(&mut a, None, "", Vec::new());
    let mut waits = Vec::new();
    for _ in 0..8 {
        let (ticks, fetching) = process.until_fetch(&mut a, &mut b);
        waits.push(ticks);
        process.answer(fetching, None, "", Vec::new());
    }
    // In ticks of 50 ms: 2 s, 4 s, 8 s, 16 s, 32 s, then 60 s at most.
    assert_eq!(waits, [40, 80, 160, 320, 640, 1200, 1200, 1200]);
    let failed = [&a, &b]
        .iter()
        .flat_map(|vm| &vm.host.counts)
        .filter(|c| **c == Counter::FetchFailed)
        .count();
    assert_eq!(failed, 9);

    // One good answer and the interval is back to refresh_ms.
    let (_, fetching) = process.until_fetch(&mut a, &mut b);
    process.answer(fetching, Some(200), "\"v1\"", document(&[("f-1", "live")], 0));
    assert_eq!(process.until_fetch(&mut a, &mut b).0, (REFRESH / 50) as usize);
    assert_eq!(backoff_ms(1000, 0), 1000);
    assert_eq!(backoff_ms(90_000, 5), 90_000, "never shorter than refresh_ms");
    assert_eq!(backoff_ms(1000, u32::MAX), MAX_BACKOFF_MS);
}

#[test]
fn a_refused_call_counts_as_a_failed_fetch() {
    let mut process = Process::default();
    let mut a = vm(None);
    a.host.refuse_calls = true;
    process.tick(&mut a);
    assert_eq!(a.host.counts, [Counter::FetchFailed]);
    process.advance(&mut [&mut a], 2 * REFRESH - 50);
    assert_eq!(a.host.counts.len(), 1, "backed off");
    process.advance(&mut [&mut a], 50);
    assert_eq!(a.host.counts.len(), 2);
}

#[test]
fn a_slow_answer_never_overwrites_a_newer_one() {
    let (mut process, mut a, mut b) = started();
    process.answer(&mut a, Some(200), "\"v1\"", document(&[("f-1", "live")], 0));
    process.advance(&mut [&mut a, &mut b], REFRESH);
    // The fetch for generation 2 hangs in A; once A's lease has run out, B fetches.
    let slow = a.host.fetches.remove(0).0;
    process.now_ms += REFRESH + FETCH_TIMEOUT_MS;
    process.tick(&mut b);
    process.answer(&mut b, Some(200), "\"v3\"", document(&[("f-1", "paused")], 0));
    // A's answer arrives last, carrying an older state of the directory.
    let late = process.answered(slow, Some(200), "\"v2\"", document(&[("f-1", "live")], 0));
    process.run(&mut a, late);
    process.advance(&mut [&mut a, &mut b], 50);
    assert_eq!(process.stored_record().unwrap().etag, "\"v3\"");
    assert_eq!(status(&a, "f-1"), Some(FlowStatus::Paused));
    assert_eq!(status(&b, "f-1"), Some(FlowStatus::Paused));
}

#[test]
fn two_vms_publishing_at_once_leave_one_consistent_generation() {
    let (mut process, mut a, mut b) = started();
    process.answer(&mut a, Some(200), "\"v1\"", document(&[("f-1", "live")], 0));
    process.advance(&mut [&mut a, &mut b], REFRESH);
    let (token_a, _) = a.host.fetches.remove(0);
    process.now_ms += REFRESH + FETCH_TIMEOUT_MS;
    process.tick(&mut b);
    let (token_b, _) = b.host.fetches.remove(0);
    // Both answers pass the check on the published record, then read the document...
    let mut pending = Vec::new();
    for (vm, token, etag, state) in [
        (&mut a, token_a, "\"a\"", "paused"),
        (&mut b, token_b, "\"b\"", "draft"),
    ] {
        let answered = process.answered(token, Some(200), etag, document(&[("f-1", state)], 0));
        let commands = vm.sync.handle(answered);
        assert!(matches!(commands.last(), Some(Command::Read(Access::PublishDocument))));
        let replies: Vec<Event> = commands
            .into_iter()
            .filter_map(|c| process.execute(&mut vm.host, c))
            .collect();
        pending.push(replies);
    }
    // ...and only the first compare-and-swap on the document wins.
    for (vm, replies) in [&mut a, &mut b].into_iter().zip(pending) {
        for reply in replies {
            process.run(vm, reply);
        }
    }
    let record = process.stored_record().unwrap();
    assert_eq!((record.generation, record.etag.as_str()), (2, "\"a\""));
    let published = Published::decode(&process.read(Key::Published).value.unwrap()).unwrap();
    assert_eq!(published, record, "the published record is the document's");
    process.advance(&mut [&mut a, &mut b], 50);
    assert_eq!(status(&a, "f-1"), Some(FlowStatus::Paused));
    assert_eq!(status(&b, "f-1"), Some(FlowStatus::Paused));
}

#[test]
fn a_new_vm_loads_the_published_generation_instead_of_its_static_flows() {
    let mut process = Process::default();
    let mut a = vm(Some(static_flows(&[("f-1", "live")])));
    process.tick(&mut a);
    assert_eq!(
        status(&a, "f-1"),
        Some(FlowStatus::Live),
        "static flows until a first load"
    );
    process.answer(&mut a, Some(200), "\"v1\"", document(&[("f-1", "paused")], 0));
    process.advance(&mut [&mut a], 50);
    assert_eq!(status(&a, "f-1"), Some(FlowStatus::Paused));

    // A VM rebuilt after a failure (or a new root context) with the same configuration.
    let mut reborn = vm(Some(static_flows(&[("f-1", "live")])));
    process.tick(&mut reborn);
    assert_eq!(
        status(&reborn, "f-1"),
        Some(FlowStatus::Paused),
        "loaded at its first tick"
    );

    // A large directory takes several ticks: nothing is served until it is in.
    process.advance(&mut [&mut a], REFRESH);
    let big = document(&[("f-1", "paused")], ENTRIES_PER_STEP * FIRST_LOAD_STEPS * 2);
    process.answer(&mut a, Some(200), "\"big\"", big);
    let mut large = vm(Some(static_flows(&[("f-1", "live")])));
    process.tick(&mut large);
    assert!(
        large.host.serving.is_none(),
        "neither the static flows nor a partial set"
    );
    assert_eq!(large.host.tick_ms, 1, "loading on every turn of the event loop");
    process.advance(&mut [&mut large], 50 * (FIRST_LOAD_STEPS as u64 + 1));
    assert_eq!(status(&large, "f-1"), Some(FlowStatus::Paused));
    assert_eq!(large.host.tick_ms, tick_ms(REFRESH));
}

#[test]
fn a_record_that_disagrees_with_the_stored_document_is_repaired() {
    let (mut process, mut a, mut b) = started();
    process.answer(&mut a, Some(200), "\"v1\"", document(&[("f-1", "live")], 0));
    let stale = Published {
        generation: 1,
        digest: 7,
        ..Published::default()
    };
    assert!(process.write(Key::Published, stale.encode(), 0));
    process.advance(&mut [&mut a, &mut b], 100);
    let published = Published::decode(&process.read(Key::Published).value.unwrap()).unwrap();
    assert_eq!(Some(published), process.stored_record());
    assert_eq!(status(&b, "f-1"), Some(FlowStatus::Live));
}

#[test]
fn a_document_overwritten_by_an_empty_one_is_fetched_and_published_again() {
    let (mut process, mut a, mut b) = started();
    process.answer(&mut a, Some(200), "\"v1\"", document(&[("f-1", "live")], 0));
    let empty = shared::store(Vec::new(), &Published::default());
    assert!(process.write(Key::Document, empty, 0));
    let (_, fetching) = process.until_fetch(&mut a, &mut b);
    assert_eq!(if_none_match(fetching), None, "no ETag of a document that is gone");
    process.answer(fetching, Some(200), "\"v1\"", document(&[("f-1", "paused")], 0));
    process.advance(&mut [&mut a, &mut b], 50);
    assert_eq!(process.stored_record().unwrap().generation, 1);
    assert_eq!(status(&a, "f-1"), Some(FlowStatus::Paused));
    assert_eq!(status(&b, "f-1"), Some(FlowStatus::Paused));
}

#[test]
fn answers_that_are_not_flow_lists_keep_the_last_good_set() {
    let (mut process, mut a, mut b) = started();
    process.answer(&mut a, Some(200), "\"v1\"", document(&[("f-1", "live")], 0));
    for (status, body) in [
        (Some(200), b"[]".to_vec()),
        (Some(500), Vec::new()),
        (Some(404), b"{}".to_vec()),
    ] {
        let (_, fetching) = process.until_fetch(&mut a, &mut b);
        process.answer(fetching, status, "\"x\"", body);
        assert_eq!(fetching.host.counts.last(), Some(&Counter::FetchFailed));
    }
    process.advance(&mut [&mut a, &mut b], 50);
    assert_eq!(process.stored_record().unwrap().generation, 1);
    assert_eq!(status(&b, "f-1"), Some(FlowStatus::Live));
}
