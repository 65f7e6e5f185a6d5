//! Delivery controls (contract 8): dedupe of repeated deliveries and a rate limit per flow,
//! both kept in Envoy's shared data so every worker of one Envoy process agrees.
//!
//! A stream keeps a [`Delivery`]: the delivery id read from the request (a header, or a JSON
//! pointer into the body), then, once every check has passed, [`Delivery::admit`] claims the
//! id (a duplicate is answered from memory or 409) and spends a token (429 without one).
//! The answer the sender gets settles the claim: remembered when it is the flow's answer,
//! forgotten when it is an envelope, so a retry of a refused or failed delivery runs again.

pub mod dedupe;
pub mod limit;

use std::collections::HashMap;

use serde_json::value::RawValue;

pub use crate::store::{MemoryStore, Store};
use dedupe::{Answer, Claim, Seen};
pub use limit::RateLimit;

use crate::flows::Flow;
use crate::metrics::Counter;
use crate::reply::{Refusal, Reply};
use crate::schema::{DedupeEntry, DedupeKey, RateLimitEntry};
use crate::stream::Host;

/// Longest delivery id: ids are forwarded as `x-flowgate-delivery-id`.
pub const MAX_ID_BYTES: usize = 256;

/// A flow's delivery controls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Controls {
    pub dedupe: Option<Dedupe>,
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dedupe {
    pub key: DedupeKey,
    pub window_ms: u64,
}

impl Controls {
    pub fn new(dedupe: Option<DedupeEntry>, rate_limit: Option<RateLimitEntry>) -> Controls {
        Controls {
            dedupe: dedupe.map(|d| Dedupe {
                key: d.key,
                window_ms: d.window_s.get().saturating_mul(1000),
            }),
            rate_limit: rate_limit.map(|r| RateLimit {
                per_second: r.requests_per_second.get(),
                burst: r.burst.unwrap_or(r.requests_per_second).get(),
            }),
        }
    }

    /// The delivery id is in the body, so the body is read before forwarding.
    pub fn reads_body(&self) -> bool {
        matches!(
            self.dedupe,
            Some(Dedupe {
                key: DedupeKey::Body(_),
                ..
            })
        )
    }
}

/// What a stream keeps of its delivery.
#[derive(Debug, Default)]
pub struct Delivery {
    id: Option<String>,
    claim: Option<Claim>,
}

impl Delivery {
    /// Reads the delivery id from the request headers (names lower-case), for `header:` keys.
    pub fn read_headers(&mut self, controls: &Controls, headers: &[(&[u8], &[u8])]) -> Result<(), Refusal> {
        let Some(Dedupe {
            key: DedupeKey::Header(name),
            ..
        }) = &controls.dedupe
        else {
            return Ok(());
        };
        let value = headers.iter().find(|(n, _)| n == &name.as_bytes()).map(|(_, v)| *v);
        self.id = value
            .map(|v| id_of(std::str::from_utf8(v).unwrap_or("\u{0}")))
            .transpose()?;
        Ok(())
    }

    /// Reads the delivery id from the whole body, for `body:` keys: a string or a number at
    /// the pointer. A body that is not JSON, or has nothing there, has no id.
    pub fn read_body(&mut self, controls: &Controls, body: &[u8]) -> Result<(), Refusal> {
        let Some(Dedupe {
            key: DedupeKey::Body(pointer),
            ..
        }) = &controls.dedupe
        else {
            return Ok(());
        };
        self.id = None;
        let Some(raw) = pointed(body, pointer) else {
            return Ok(());
        };
        let text = raw.get();
        self.id = match text.as_bytes().first() {
            Some(b'n') => None,
            Some(b'"') => Some(id_of(&serde_json::from_str::<String>(text).map_err(|_| invalid_id())?)?),
            // A number as the sender wrote it.
            Some(b'-' | b'0'..=b'9') => Some(id_of(text)?),
            _ => return Err(invalid_id()),
        };
        Ok(())
    }

    /// The last step before forwarding: claims the delivery id (a duplicate stops here),
    /// then spends a token of the flow's rate limit. Sets `x-flowgate-delivery-id`. `Err`
    /// is the sender's reply instead: a duplicate's first answer, or a (counted) refusal.
    pub fn admit(&mut self, host: &mut impl Host, flow: &Flow) -> Result<(), Reply> {
        let controls = &flow.controls;
        if let (Some(dedupe), Some(id)) = (&controls.dedupe, &self.id) {
            let (seen, evicted) = dedupe::claim(host, &flow.id, id, dedupe.window_ms);
            count_evictions(host, evicted);
            match seen {
                Seen::New(claim) => self.claim = Some(claim),
                Seen::Answered(answer) => {
                    host.count(Counter::Duplicate);
                    return Err(answer.reply());
                }
                Seen::InFlight => return Err(refuse(host, Refusal::DuplicateInFlight)),
                Seen::Unclaimed => host.count(Counter::DedupeNotRemembered),
            }
        }
        if let Some(limit) = controls.rate_limit {
            if let Err(retry_after_s) = limit::spend(host, &flow.id, limit) {
                self.settle(host, None);
                return Err(refuse(host, Refusal::RateLimited { retry_after_s }));
            }
        }
        if let Some(id) = &self.id {
            host.set_request_header("x-flowgate-delivery-id", Some(id));
        }
        Ok(())
    }

    /// Whether the answer must be held to be remembered (even one that passes unchanged).
    pub fn holds_answer(&self) -> bool {
        self.claim.is_some()
    }

    /// The sender's answer settles the claim: `Some` is the flow's answer (remembered),
    /// `None` an envelope or no answer at all (forgotten).
    pub fn settle(&mut self, host: &mut impl Host, reply: Option<&Reply>) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        let answer = reply.map(Answer::of);
        let settled = dedupe::settle(host, &claim, answer.as_ref());
        count_evictions(host, settled.evicted);
        if answer.is_some() && !settled.remembered {
            host.count(Counter::DedupeNotRemembered);
        }
    }
}

/// The JSON value at an RFC 6901 `pointer` in `body`, read one level at a time as raw JSON
/// (no tree of the whole body is built); `None` when the body is not JSON or nothing is there.
fn pointed<'b>(body: &'b [u8], pointer: &str) -> Option<&'b RawValue> {
    let mut at: &RawValue = serde_json::from_slice(body).ok()?;
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        at = match at.get().as_bytes().first()? {
            b'{' => serde_json::from_str::<HashMap<String, &RawValue>>(at.get())
                .ok()?
                .remove(&segment)?,
            b'[' => {
                let index: usize = segment
                    .parse()
                    .ok()
                    .filter(|_| segment == "0" || !segment.starts_with('0'))?;
                serde_json::from_str::<Vec<&RawValue>>(at.get())
                    .ok()?
                    .get(index)
                    .copied()?
            }
            _ => return None,
        };
    }
    Some(at)
}

/// An answer that passes to the sender unchanged, as it is remembered.
pub fn passed(status: u16, content_type: Option<Vec<u8>>, body: Vec<u8>) -> Reply {
    let content_type = content_type.map(|ct| String::from_utf8_lossy(&ct).into_owned());
    Reply {
        status,
        headers: content_type.map(|ct| ("content-type", ct)).into_iter().collect(),
        body,
    }
}

fn refuse(host: &mut impl Host, refusal: Refusal) -> Reply {
    host.count(Counter::Refused(refusal.code()));
    refusal.reply()
}

fn count_evictions(host: &mut impl Host, evicted: u64) {
    for _ in 0..evicted {
        host.count(Counter::DedupeEvicted);
    }
}

/// A delivery id as forwarded: 1 to [`MAX_ID_BYTES`] visible ASCII characters.
fn id_of(value: &str) -> Result<String, Refusal> {
    let value = value.trim_matches([' ', '\t']);
    let visible = value.bytes().all(|b| b.is_ascii_graphic());
    if value.is_empty() || value.len() > MAX_ID_BYTES || !visible {
        return Err(invalid_id());
    }
    Ok(value.to_string())
}

fn invalid_id() -> Refusal {
    Refusal::InvalidDeliveryId
}

#[cfg(test)]
mod tests;
