//! Delivery controls through the stream (contract 8): duplicates answered from memory,
//! 409 while in flight, refusals forgotten, the rate limit after authentication.

#[cfg(not(target_arch = "wasm32"))]
use proptest::prelude::*;

use std::collections::HashMap;

use super::*;
use crate::delivery::{MemoryStore, Store};

impl Store for Envoy {
    fn get(&mut self, key: &str) -> (Option<Vec<u8>>, u32) {
        self.store.get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> bool {
        self.store.set(key, value, cas)
    }
    fn now_ms(&mut self) -> u64 {
        self.store.now_ms
    }
}

const ANSWER: &[u8] = b"{\"res1\":{\"value\":\"myResult\"}}";

/// A delivery of `path` with id `id` (header `x-delivery` and body `{"id": ...}`), sent on
/// `store`, answered by the executor with `status` (none: the stream ends first).
fn deliver(store: &mut MemoryStore, path: &str, id: &str, status: Option<u16>) -> Run {
    let mut run = Run::webhook(path, Some(TOKEN), &[JSON, ("x-delivery", id)]);
    run.envoy.store = std::mem::take(store);
    let body_bytes = format!("{{\"id\":\"{id}\"}}");
    run.events([Event::RequestHeaders { end: false }, body(body_bytes.as_bytes(), true)]);
    if let (true, Some(status)) = (run.continued, status) {
        run.envoy.response = vec![
            (":status".into(), status.to_string()),
            ("content-type".into(), "application/json; charset=utf-8".into()),
        ];
        run.events([
            Event::ResponseHeaders { end: false },
            Event::ResponseBody {
                chunk: ANSWER.to_vec(),
                end: true,
            },
        ]);
    }
    *store = std::mem::take(&mut run.envoy.store);
    run
}

fn forwarded_id(run: &Run) -> Option<String> {
    let headers = run.envoy.upstream.as_ref()?;
    let (_, id) = headers.iter().find(|(n, _)| n == "x-flowgate-delivery-id")?;
    Some(id.clone())
}

#[test]
fn a_duplicate_of_a_passed_answer_gets_it_again_from_the_edge() {
    let mut store = MemoryStore::default();
    let first = deliver(&mut store, "/v1/flow-webhook/f-dedupe", "d-1", Some(200));
    assert!(first.continued && first.answer_passed && first.envoy.replies.is_empty());
    assert_eq!(forwarded_id(&first).as_deref(), Some("d-1"));
    let again = deliver(&mut store, "/v1/flow-webhook/f-dedupe", "d-1", Some(200));
    assert!(!again.continued);
    let reply = &again.envoy.replies[0];
    assert_eq!((reply.status, reply.body.as_slice()), (200, ANSWER));
    assert_eq!(
        reply.headers,
        [("content-type", "application/json; charset=utf-8".to_string())]
    );
    assert!(again.envoy.counts.contains(&Counter::Duplicate));
    let other = deliver(&mut store, "/v1/flow-webhook/f-dedupe", "d-2", Some(200));
    assert!(other.continued);
}

#[test]
fn an_async_acknowledgement_is_repeated_byte_for_byte() {
    let mut store = MemoryStore::default();
    let path = "/v1/flow-webhook/f-dedupe-body";
    let first = deliver(&mut store, path, "evt_1", Some(202));
    assert_eq!(forwarded_id(&first).as_deref(), Some("evt_1"));
    let again = deliver(&mut store, path, "evt_1", Some(202));
    assert!(!again.continued);
    assert_eq!(again.envoy.replies, first.envoy.replies);
}

#[test]
fn in_flight_is_409_and_a_failed_delivery_runs_again() {
    let mut store = MemoryStore::default();
    let path = "/v1/flow-webhook/f-dedupe";
    assert!(deliver(&mut store, path, "d", None).continued);
    assert_eq!(deliver(&mut store, path, "d", Some(200)).reply().0, 409);
    let failed = deliver(&mut store, "/v1/flow-webhook/f-dedupe-body", "e", Some(500));
    assert_eq!(failed.reply(), (502, "executor_error".to_string()));
    assert!(deliver(&mut store, "/v1/flow-webhook/f-dedupe-body", "e", Some(202)).continued);
    let bad = deliver(&mut store, path, "a b", Some(200));
    assert_eq!((bad.continued, bad.reply().0), (false, 400));
}

#[test]
fn the_rate_limit_counts_after_authentication_and_refills() {
    let mut store = MemoryStore::default();
    let path = "/v1/flow-webhook/f-limited";
    for _ in 0..5 {
        let mut stranger = Run::webhook(path, Some("wrong"), &[]);
        stranger.envoy.store = std::mem::take(&mut store);
        stranger.event(Event::RequestHeaders { end: true });
        assert_eq!(stranger.reply().0, 401);
        store = std::mem::take(&mut stranger.envoy.store);
    }
    let admitted: Vec<bool> = (0..3)
        .map(|_| deliver(&mut store, path, "x", Some(200)).continued)
        .collect();
    assert_eq!(admitted, [true, true, false]);
    let limited = deliver(&mut store, path, "x", Some(200));
    assert_eq!(limited.reply(), (429, "rate_limited".to_string()));
    assert!(limited.envoy.replies[0]
        .headers
        .contains(&("retry-after", "1".to_string())));
    store.now_ms += 1000;
    assert!(deliver(&mut store, path, "x", Some(200)).continued);
}

#[cfg(not(target_arch = "wasm32"))]
proptest! {
    #![proptest_config(properties::cases())]

    /// Whatever the order of deliveries, ids and executor answers: a delivery reaches the
    /// executor only when no earlier one with its id is running or was answered; a duplicate
    /// gets the first answer byte for byte; an over-limit delivery never goes upstream.
    #[test]
    fn duplicates_and_over_limit_deliveries_never_reach_the_executor(
        steps in prop::collection::vec((0usize..3, 0usize..4, prop::sample::select(vec![Some(200u16), Some(500), None])), 1..24)
    ) {
        let paths = ["/v1/flow-webhook/f-dedupe", "/v1/flow-webhook/f-dedupe-body", "/v1/flow-webhook/f-limited"];
        let mut store = MemoryStore::default();
        // Per (flow, id): the first answer, or None while in flight.
        let mut known: HashMap<(usize, usize), Option<Vec<Reply>>> = HashMap::new();
        let mut limited_runs = 0;
        for (flow, id, status) in steps {
            let run = deliver(&mut store, paths[flow], &format!("id-{id}"), status);
            if flow == 2 {
                limited_runs += usize::from(run.continued);
                prop_assert!(limited_runs <= 2, "over the burst");
                continue;
            }
            match known.get(&(flow, id)) {
                None => {
                    prop_assert!(run.continued);
                    match status {
                        None => { known.insert((flow, id), None); }
                        Some(500) => {}
                        Some(_) => { known.insert((flow, id), Some(run.envoy.replies.clone())); }
                    }
                }
                Some(None) => prop_assert_eq!(run.reply().0, 409),
                Some(Some(first)) => {
                    prop_assert!(!run.continued);
                    if first.is_empty() {
                        prop_assert_eq!(&run.envoy.replies[0].body, &ANSWER.to_vec());
                    } else {
                        prop_assert_eq!(&run.envoy.replies, first);
                    }
                }
            }
        }
    }
}
