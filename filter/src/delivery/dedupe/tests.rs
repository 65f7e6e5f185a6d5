use super::*;
use crate::delivery::MemoryStore;

const WINDOW: u64 = 10_000;

fn answer(body: &str) -> Answer {
    Answer {
        status: 200,
        content_type: Some("application/json".into()),
        body: body.as_bytes().to_vec(),
    }
}

fn new_claim(seen: (Seen, u64)) -> Claim {
    match seen.0 {
        Seen::New(claim) => claim,
        other => panic!("expected a new delivery, got {other:?}"),
    }
}

#[test]
fn a_delivery_is_in_flight_then_answered_until_its_window_ends() {
    let mut store = MemoryStore::default();
    let first = new_claim(claim(&mut store, "f-1", "d-1", WINDOW));
    assert_eq!(claim(&mut store, "f-1", "d-1", WINDOW).0, Seen::InFlight);
    assert!(
        matches!(claim(&mut store, "f-2", "d-1", WINDOW).0, Seen::New(_)),
        "ids are per flow"
    );
    let settled = settle(&mut store, &first, Some(&answer("{\"a\":1}")));
    assert_eq!(
        settled,
        Settled {
            remembered: true,
            evicted: 0
        }
    );
    store.now_ms += WINDOW - 1;
    assert_eq!(
        claim(&mut store, "f-1", "d-1", WINDOW).0,
        Seen::Answered(answer("{\"a\":1}"))
    );
    store.now_ms += 1;
    assert!(matches!(claim(&mut store, "f-1", "d-1", WINDOW).0, Seen::New(_)));
}

#[test]
fn a_refused_delivery_is_forgotten_and_an_unanswered_one_expires() {
    let mut store = MemoryStore::default();
    let first = new_claim(claim(&mut store, "f", "d", WINDOW));
    settle(&mut store, &first, None);
    new_claim(claim(&mut store, "f", "d", WINDOW));
    let long = 10 * IN_FLIGHT_MS;
    new_claim(claim(&mut store, "f", "e", long));
    store.now_ms += IN_FLIGHT_MS;
    assert!(matches!(claim(&mut store, "f", "e", long).0, Seen::New(_)));
}

/// Ids that share a bucket: found by trying, as the bucket is the id's hash.
fn same_bucket(n: usize) -> Vec<String> {
    let bucket = |id: &str| {
        let mut store = MemoryStore::default();
        let claim = new_claim(claim(&mut store, "f", id, WINDOW));
        claim.key
    };
    let target = bucket("id-0");
    (0..)
        .map(|i| format!("id-{i}"))
        .filter(|id| bucket(id) == target)
        .take(n)
        .collect()
}

#[test]
fn a_full_bucket_forgets_its_oldest_first() {
    let ids = same_bucket(ENTRIES_PER_BUCKET + 1);
    let mut store = MemoryStore::default();
    for id in &ids[..ENTRIES_PER_BUCKET] {
        let claim = new_claim(claim(&mut store, "f", id, WINDOW));
        settle(&mut store, &claim, Some(&answer(id)));
        store.now_ms += 1;
    }
    let (seen, evicted) = claim(&mut store, "f", &ids[ENTRIES_PER_BUCKET], WINDOW);
    assert!(matches!(seen, Seen::New(_)));
    assert_eq!(evicted, 1);
    assert!(
        matches!(claim(&mut store, "f", &ids[0], WINDOW).0, Seen::New(_)),
        "the oldest went"
    );
    assert_eq!(
        claim(&mut store, "f", &ids[2], WINDOW).0,
        Seen::Answered(answer(&ids[2]))
    );
}

#[test]
fn bytes_are_bounded_per_bucket() {
    let ids = same_bucket(3);
    let mut store = MemoryStore::default();
    let big = "x".repeat(BUCKET_BYTES / 2);
    for id in &ids[..2] {
        let claim = new_claim(claim(&mut store, "f", id, WINDOW));
        let settled = settle(&mut store, &claim, Some(&answer(&big)));
        assert!(settled.remembered);
        store.now_ms += 1;
    }
    let third = new_claim(claim(&mut store, "f", &ids[2], WINDOW));
    assert!(store.get(&third.key).0.unwrap().len() <= BUCKET_BYTES);
    let huge = new_claim(claim(&mut store, "g", "huge", WINDOW));
    let settled = settle(&mut store, &huge, Some(&answer(&"y".repeat(BUCKET_BYTES))));
    assert!(!settled.remembered);
    assert!(
        matches!(claim(&mut store, "g", "huge", WINDOW).0, Seen::New(_)),
        "too large: runs again"
    );
}

#[test]
fn entries_round_trip_and_garbage_reads_as_empty() {
    let entries = vec![
        Entry {
            digest: [1; 16],
            admitted_ms: 7,
            answer: None,
        },
        Entry {
            digest: [2; 16],
            admitted_ms: 9,
            answer: Some(answer("{}")),
        },
        Entry {
            digest: [3; 16],
            admitted_ms: 9,
            answer: Some(Answer {
                status: 201,
                content_type: None,
                body: vec![],
            }),
        },
    ];
    let bytes = encode(&entries);
    assert_eq!(decode(&bytes), entries);
    for cut in 0..bytes.len() {
        assert!(decode(&bytes[..cut]).len() < entries.len());
    }
    assert!(decode(b"garbage").is_empty());
}

/// The number in docs/operations.md: remembered deliveries per MiB of shared data, for a
/// typical answer (`{"status":200,...,"data":{"run_id":"..."}}`, about 100 bytes).
#[test]
fn entries_per_mib_of_a_typical_answer() {
    let typical =
        answer(r#"{"status":200,"error":null,"message":"Flow run scheduled","data":{"run_id":"r-0123456789abcdef"}}"#);
    let entry = Entry {
        digest: [0; 16],
        admitted_ms: 0,
        answer: Some(typical),
    };
    let per_mib = (1024 * 1024) / entry.size();
    assert_eq!((entry.size(), per_mib), (146, 7182));
}
