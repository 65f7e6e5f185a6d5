//! Remembered deliveries: which delivery ids of a flow were admitted, and the answer each
//! got, in Envoy's shared data so every worker of one Envoy process agrees.
//!
//! Shared data has no delete, so the store is a fixed set of [`BUCKETS`] entries (keys
//! `flowgate.dedupe.<n>`); a delivery id hashes (SHA-256, with its flow id) to one, which
//! holds at most [`ENTRIES_PER_BUCKET`] remembered ids in at most [`BUCKET_BYTES`]. Expired
//! ids go first, then the oldest (an eviction). Every change is a compare-and-swap of the
//! whole bucket, retried on a race. Ids are kept as digests, never as sent.

use sha2::{Digest, Sha256};

use super::Store;
use crate::reply::Reply;
use crate::wire;

pub const BUCKETS: u64 = 4096;
pub const ENTRIES_PER_BUCKET: usize = 8;
pub const BUCKET_BYTES: usize = 8 * 1024;
/// The longest a delivery stays "in flight" (409) when its answer never came (a stream
/// reset): then it may run again.
pub const IN_FLIGHT_MS: u64 = 120_000;
const ATTEMPTS: usize = 16;
/// digest, admitted_ms, answered, status, content type length, body length.
const HEADER: usize = 16 + 8 + 1 + 2 + 2 + 4;

/// The first answer to a delivery, as the sender got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn of(reply: &Reply) -> Answer {
        let content_type = reply.headers.iter().find(|(name, _)| *name == "content-type");
        Answer {
            status: reply.status,
            content_type: content_type.map(|(_, value)| value.clone()),
            body: reply.body.clone(),
        }
    }

    pub fn reply(&self) -> Reply {
        let headers = self
            .content_type
            .iter()
            .map(|ct| ("content-type", ct.clone()))
            .collect();
        Reply {
            status: self.status,
            headers,
            body: self.body.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    digest: [u8; 16],
    admitted_ms: u64,
    /// `None` while the first delivery is in flight.
    answer: Option<Answer>,
}

impl Entry {
    fn size(&self) -> usize {
        HEADER
            + self
                .answer
                .as_ref()
                .map_or(0, |a| a.body.len() + a.content_type.as_ref().map_or(0, String::len))
    }

    fn expired(&self, now_ms: u64, window_ms: u64) -> bool {
        let lasts = match self.answer {
            Some(_) => window_ms,
            None => window_ms.min(IN_FLIGHT_MS),
        };
        now_ms >= self.admitted_ms.saturating_add(lasts)
    }
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(Entry::size).sum());
    for entry in entries {
        out.extend_from_slice(&entry.digest);
        out.extend_from_slice(&entry.admitted_ms.to_le_bytes());
        let (status, content_type, body) = match &entry.answer {
            Some(a) => (
                a.status,
                a.content_type.as_deref().unwrap_or_default(),
                a.body.as_slice(),
            ),
            None => (0, "", &[][..]),
        };
        out.push(u8::from(entry.answer.is_some()));
        out.extend_from_slice(&status.to_le_bytes());
        out.extend_from_slice(&u16::try_from(content_type.len()).unwrap_or_default().to_le_bytes());
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or_default().to_le_bytes());
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// The entries of a bucket; anything unreadable reads as no (more) entries.
fn decode(bytes: &[u8]) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut at = 0;
    while let Some((entry, next)) = decode_one(bytes, at) {
        entries.push(entry);
        at = next;
    }
    entries
}

fn decode_one(bytes: &[u8], at: usize) -> Option<(Entry, usize)> {
    let digest: [u8; 16] = bytes.get(at..at + 16)?.try_into().ok()?;
    let admitted_ms = u64::from_le_bytes(bytes.get(at + 16..at + 24)?.try_into().ok()?);
    let answered = *bytes.get(at + 24)? == 1;
    let status = u16::from_le_bytes(bytes.get(at + 25..at + 27)?.try_into().ok()?);
    let ct_len = usize::from(u16::from_le_bytes(bytes.get(at + 27..at + 29)?.try_into().ok()?));
    let body_len = wire::read_u32(bytes, at + 29)?;
    let ct_at = at + HEADER;
    let body_at = ct_at.checked_add(ct_len)?;
    let end = body_at.checked_add(body_len)?;
    let content_type = std::str::from_utf8(bytes.get(ct_at..body_at)?).ok()?;
    let body = bytes.get(body_at..end)?.to_vec();
    let answer = answered.then(|| Answer {
        status,
        content_type: (!content_type.is_empty()).then(|| content_type.to_string()),
        body,
    });
    Some((
        Entry {
            digest,
            admitted_ms,
            answer,
        },
        end,
    ))
}

/// A delivery this stream admitted first: its entry is "in flight" until it is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    key: String,
    digest: [u8; 16],
    admitted_ms: u64,
    window_ms: u64,
}

/// What the store says about a delivery id.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// First seen: this stream runs it.
    New(Claim),
    /// Answered before, within its window.
    Answered(Answer),
    /// Its first delivery is still running.
    InFlight,
    /// The store could not be updated (races every time): run it without dedupe.
    Unclaimed,
}

/// Claims delivery `id` of flow `flow_id`; also returns how many remembered ids were
/// evicted to make room.
pub fn claim(store: &mut impl Store, flow_id: &str, id: &str, window_ms: u64) -> (Seen, u64) {
    let hash = Sha256::new()
        .chain_update(flow_id)
        .chain_update([0])
        .chain_update(id)
        .finalize();
    let mut digest = [0u8; 16];
    digest.copy_from_slice(hash.get(..16).unwrap_or(&[0; 16]));
    let bucket = u64::from_le_bytes(digest.first_chunk::<8>().copied().unwrap_or_default()) % BUCKETS;
    let key = format!("flowgate.dedupe.{bucket}");
    for _ in 0..ATTEMPTS {
        let (value, cas) = store.get(&key);
        let now_ms = store.now_ms();
        let mut entries = decode(value.as_deref().unwrap_or_default());
        entries.retain(|e| !e.expired(now_ms, window_ms));
        if let Some(entry) = entries.iter().find(|e| e.digest == digest) {
            let seen = match &entry.answer {
                Some(answer) => Seen::Answered(answer.clone()),
                None => Seen::InFlight,
            };
            return (seen, 0);
        }
        let entry = Entry {
            digest,
            admitted_ms: now_ms,
            answer: None,
        };
        let evicted = make_room(&mut entries, entry.size());
        entries.push(entry);
        if store.set(&key, &encode(&entries), cas) {
            let claim = Claim {
                key,
                digest,
                admitted_ms: now_ms,
                window_ms,
            };
            return (Seen::New(claim), evicted);
        }
    }
    (Seen::Unclaimed, 0)
}

/// Drops the oldest entries until one of `size` bytes fits; how many were dropped.
fn make_room(entries: &mut Vec<Entry>, size: usize) -> u64 {
    let mut evicted = 0;
    while entries.len() >= ENTRIES_PER_BUCKET || entries.iter().map(Entry::size).sum::<usize>() + size > BUCKET_BYTES {
        let Some(oldest) = (0..entries.len()).min_by_key(|&i| entries.get(i).map(|e| e.admitted_ms)) else {
            break;
        };
        entries.remove(oldest);
        evicted += 1;
    }
    evicted
}

/// How a claim was settled.
#[derive(Debug, PartialEq, Eq)]
pub struct Settled {
    /// The answer is remembered (false: too large for a bucket, or the store kept racing).
    pub remembered: bool,
    pub evicted: u64,
}

/// Replaces the claim's in-flight entry with its answer (`Some`), or removes it (`None`:
/// the delivery was refused or failed, so a retry runs again).
pub fn settle(store: &mut impl Store, claim: &Claim, answer: Option<&Answer>) -> Settled {
    let entry = answer.map(|answer| Entry {
        digest: claim.digest,
        admitted_ms: claim.admitted_ms,
        answer: Some(answer.clone()),
    });
    let fits = entry.as_ref().is_none_or(|e| e.size() <= BUCKET_BYTES);
    for _ in 0..ATTEMPTS {
        let (value, cas) = store.get(&claim.key);
        let now_ms = store.now_ms();
        let mut entries = decode(value.as_deref().unwrap_or_default());
        entries.retain(|e| e.digest != claim.digest && !e.expired(now_ms, claim.window_ms));
        let mut evicted = 0;
        if let Some(entry) = entry.as_ref().filter(|_| fits) {
            evicted = make_room(&mut entries, entry.size());
            entries.push(entry.clone());
        }
        if store.set(&claim.key, &encode(&entries), cas) {
            return Settled {
                remembered: fits && entry.is_some(),
                evicted,
            };
        }
    }
    Settled {
        remembered: false,
        evicted: 0,
    }
}

#[cfg(test)]
mod tests;
