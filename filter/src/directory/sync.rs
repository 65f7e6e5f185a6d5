//! One VM's side of the directory sync, as a state machine without I/O: the host calls
//! [`Sync::on_tick`] and [`Sync::on_answer`] and carries out what the [`Host`] trait asks;
//! `host/root.rs` does nothing else.
//!
//! Across the VMs of one Envoy process:
//! - One VM per interval takes the lease (CAS) and fetches, with the last ETag and
//!   `?since=<version>` when the directory gave one. A failed fetch backs off,
//!   `refresh_ms · 2^n` up to [`MAX_BACKOFF_MS`], for every VM (the count is in the lease);
//!   an answered one resets it.
//! - The fetching VM stores the answer in slices and applies it to the flow table a step
//!   per tick ([`Apply`]), holding the lease until it is done, then publishes what is in
//!   force. An answer is applied only if nothing was published since its fetch started.
//! - Every VM serves the table as soon as anything is published, and the static flows
//!   (if any) until then; with neither it answers 503 `directory_unavailable`.

use std::rc::Rc;

use super::apply::{self, Apply, Progress, SLICE_BYTES};
use super::shared::{Keys, Lease, Published};
use super::tick_ms;
use crate::config::Directory;
use crate::flows::{Flows, FlowsBuilder};
pub use crate::metrics::{Counter, Gauge};
use crate::store::Store;

/// A fetch is given this long before Envoy ends it as failed.
pub const FETCH_TIMEOUT_MS: u64 = 5_000;
/// The longest wait after failed fetches (or `refresh_ms`, if longer).
pub const MAX_BACKOFF_MS: u64 = 60_000;
/// The lease of a VM applying an answer, renewed while it works.
pub const APPLY_LEASE_MS: u64 = 20_000;
/// Time spent applying per tick (the longest a request of that VM waits for it), and on a VM
/// that serves no requests (Envoy's main thread).
pub const TICK_BUDGET_US: u64 = 3_000;
pub const IDLE_TICK_BUDGET_US: u64 = 25_000;
/// A VM that has served a request this recently is busy: it leaves an expired lease to an idle
/// VM for one more tick, so that the main thread's VM, which serves none, fetches and applies.
pub const BUSY_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}

/// What requests are checked against.
#[derive(Debug)]
pub enum Serving {
    Flows(Rc<Flows>),
    /// The flow table in shared data under `keys`, as published: records below `floor` are
    /// gone, and a new `generation` means something changed.
    Table {
        keys: Keys,
        floor: u64,
        generation: u64,
    },
}

/// The host of the sync: shared data, the clock, and these.
pub trait Host: Store {
    /// Starts a `GET`; the call's token, or `None` if Envoy refused it.
    fn fetch(&mut self, cluster: &str, headers: &[(&str, &str)], timeout_ms: u64) -> Option<u32>;
    /// Bytes of the answer being handled (during [`Sync::on_answer`] only).
    fn answer_body(&mut self, start: usize, length: usize) -> Vec<u8>;
    /// Requests this VM has seen (it only grows).
    fn requests(&mut self) -> u64;
    /// Microseconds on a clock that only goes forward, to time work.
    fn clock_us(&mut self) -> u64;
    fn tick_every(&mut self, ms: u64);
    fn count(&mut self, counter: Counter, n: u64);
    fn gauge(&mut self, gauge: Gauge, value: u64);
    fn log(&mut self, level: Level, message: &str);
    fn serve(&mut self, serving: Serving);
}

/// A directory answer's head; `status` is `None` when the call ended without response
/// headers (reset, or an answer over Envoy's `http.async_response_buffer_limit`).
#[derive(Debug, Default)]
pub struct Answer {
    pub status: Option<u16>,
    pub etag: Option<String>,
    pub size: usize,
}

/// The fetch (then the apply) this VM has under way, and the lease it holds for it.
struct Pending {
    token: Option<u32>,
    /// What was published when it was dispatched.
    after: Published,
    dispatched_at_ms: u64,
    lease: Lease,
    applying: Option<Apply>,
}

pub struct Sync {
    source: Directory,
    keys: Keys,
    builder: FlowsBuilder,
    /// The static flows, served until something is published.
    fallback: Option<Rc<Flows>>,
    started: bool,
    /// What this VM serves: `None` before anything was published.
    seen: Option<Published>,
    pending: Option<Pending>,
    /// [`Host::requests`] at the last tick, and until when this VM counts as busy.
    requests: u64,
    busy_until_ms: u64,
}

/// The wait after `failures` failed fetches in a row.
pub fn backoff_ms(refresh_ms: u64, failures: u32) -> u64 {
    let factor = 1u64.checked_shl(failures.min(63)).unwrap_or(u64::MAX);
    refresh_ms.saturating_mul(factor).min(MAX_BACKOFF_MS.max(refresh_ms))
}

fn published(host: &mut impl Host, keys: &Keys) -> Option<Published> {
    Published::decode(&host.get(&keys.published()).0?)
}

impl Sync {
    pub fn new(source: Directory, keys: Keys, builder: FlowsBuilder, fallback: Option<Flows>) -> Sync {
        Sync {
            source,
            keys,
            builder,
            fallback: fallback.map(Rc::new),
            started: false,
            seen: None,
            pending: None,
            requests: 0,
            busy_until_ms: 0,
        }
    }

    pub fn on_tick(&mut self, host: &mut impl Host) {
        let now_ms = host.now_ms();
        let requests = host.requests();
        if requests != self.requests {
            self.requests = requests;
            self.busy_until_ms = now_ms + BUSY_MS;
        }
        let busy = now_ms < self.busy_until_ms;
        let now = published(host, &self.keys);
        let first = !self.started;
        if first {
            self.started = true;
            host.tick_every(tick_ms(self.source.refresh_ms));
            if let (None, Some(fallback)) = (&now, &self.fallback) {
                host.serve(Serving::Flows(Rc::clone(fallback)));
            }
        }
        if let Some(now) = now {
            self.follow(host, now);
        }
        // The first tick comes while the plugin is configured: a call made then may never be
        // answered (measured: lost until its lease ran out, 6 s). Fetch from the next one.
        if first {
            return;
        }
        if let Some(seen) = &self.seen {
            host.gauge(Gauge::AgeSeconds, now_ms.saturating_sub(seen.fetched_at_ms) / 1000);
        }
        if self.pending.as_ref().is_some_and(|p| p.applying.is_some()) {
            self.apply(host, now_ms, busy);
            return;
        }
        // A fetch whose answer never came is given up once its lease has run out.
        if self.pending.as_ref().is_some_and(|p| now_ms > p.lease.next_ms) {
            self.pending = None;
        }
        let (value, cas) = host.get(&self.keys.lease());
        let lease = Lease::decode(value.as_deref()).unwrap_or_default();
        let grace = if busy { tick_ms(self.source.refresh_ms) } else { 0 };
        if self.pending.is_none() && now_ms >= lease.next_ms + grace {
            let taken = Lease {
                next_ms: now_ms + self.source.refresh_ms + FETCH_TIMEOUT_MS,
                failures: lease.failures,
            };
            if host.set(&self.keys.lease(), &taken.encode(), cas) {
                self.fetch(host, taken, now_ms);
            }
        }
    }

    /// Serves what is published now, if this VM does not already.
    fn follow(&mut self, host: &mut impl Host, now: Published) {
        if self.seen.as_ref() == Some(&now) {
            return;
        }
        host.serve(Serving::Table {
            keys: self.keys.clone(),
            floor: now.floor,
            generation: now.generation,
        });
        host.gauge(Gauge::FlowsLoaded, now.flows);
        host.gauge(Gauge::EntriesRejected, now.rejected);
        self.fallback = None;
        self.seen = Some(now);
    }

    fn fetch(&mut self, host: &mut impl Host, lease: Lease, now_ms: u64) {
        let seen = self.seen.clone().unwrap_or_default();
        let mut path = self.source.path.clone();
        if !seen.version.is_empty() {
            let separator = if path.contains('?') { '&' } else { '?' };
            path = format!("{path}{separator}since={}", encode_query(&seen.version));
        }
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", self.source.authority.as_str()),
        ];
        if !seen.etag.is_empty() {
            headers.push(("if-none-match", seen.etag.as_str()));
        }
        let token = host.fetch(&self.source.cluster, &headers, FETCH_TIMEOUT_MS);
        self.pending = Some(Pending {
            token,
            after: seen,
            dispatched_at_ms: now_ms,
            lease,
            applying: None,
        });
        if token.is_none() {
            let cluster = self.source.cluster.clone();
            self.fail(host, &format!("Envoy refused a call to cluster {cluster:?}"));
        }
    }

    pub fn on_answer(&mut self, host: &mut impl Host, token: u32, answer: Answer) {
        match &self.pending {
            Some(pending) if pending.token == Some(token) && pending.applying.is_none() => {}
            _ => return,
        }
        match answer.status {
            Some(304) => {
                host.count(Counter::FetchNotModified, 1);
                self.settle(host, true);
            }
            Some(200) => self.stage(host, answer),
            Some(status) => self.fail(host, &format!("status {status}")),
            None => self.fail(
                host,
                "no answer (connection failure, or an answer over Envoy's http.async_response_buffer_limit)",
            ),
        }
    }

    /// Stores the answer in slices and starts applying it, unless something was published
    /// since its fetch started.
    fn stage(&mut self, host: &mut impl Host, answer: Answer) {
        let Some(pending) = &mut self.pending else {
            return;
        };
        let now = published(host, &self.keys).unwrap_or_default();
        if now != pending.after {
            host.log(
                Level::Info,
                "directory answer not applied: a newer one was published while it was fetched",
            );
            self.settle(host, true);
            return;
        }
        let slices = answer.size.div_ceil(SLICE_BYTES);
        for n in 0..slices {
            let slice = host.answer_body(n * SLICE_BYTES, SLICE_BYTES);
            host.set(&self.keys.slice(n), &slice, 0);
        }
        let fetched_at_ms = host.now_ms();
        let etag = answer.etag.unwrap_or_default();
        pending.applying = Some(Apply::new(now, answer.size, etag, fetched_at_ms));
        host.tick_every(1);
    }

    /// One step of the answer being applied; publishes it once done.
    fn apply(&mut self, host: &mut impl Host, now_ms: u64, busy: bool) {
        let Some(pending) = &mut self.pending else {
            return;
        };
        // The lease is renewed while the answer applies; if it was taken meanwhile, it is theirs.
        if pending.lease.next_ms < now_ms + APPLY_LEASE_MS / 2 {
            let (value, cas) = host.get(&self.keys.lease());
            let renewed = Lease {
                next_ms: now_ms + APPLY_LEASE_MS,
                failures: pending.lease.failures,
            };
            if Lease::decode(value.as_deref()) != Some(pending.lease)
                || !host.set(&self.keys.lease(), &renewed.encode(), cas)
            {
                self.pending = None;
                host.log(
                    Level::Warn,
                    "directory answer left unapplied: another VM took the lease",
                );
                host.tick_every(tick_ms(self.source.refresh_ms));
                return;
            }
            pending.lease = renewed;
        }
        let Some(applying) = &mut pending.applying else {
            return;
        };
        // Steps until the tick's time is spent: the VM's requests wait at most that long.
        let started_us = host.clock_us();
        let mut progress = Progress::Working;
        let budget = if busy { TICK_BUDGET_US } else { IDLE_TICK_BUDGET_US };
        while progress == Progress::Working && host.clock_us().saturating_sub(started_us) < budget {
            progress = applying.step(host, &self.keys, &self.builder);
        }
        let problems = applying.take_problems();
        for line in apply::log_lines(&problems) {
            host.log(Level::Warn, &line);
        }
        match progress {
            Progress::Working => {}
            Progress::Done(published) => {
                host.count(Counter::FetchOk, 1);
                host.count(Counter::FetchedBytes, applying.size() as u64);
                host.log(
                    Level::Info,
                    &format!(
                        "directory generation {} applied: {} flows, {} entries rejected ({} ms after the answer came)",
                        published.generation,
                        published.flows,
                        published.rejected,
                        now_ms.saturating_sub(published.fetched_at_ms)
                    ),
                );
                self.follow(host, published);
                host.tick_every(tick_ms(self.source.refresh_ms));
                self.settle(host, true);
            }
            Progress::Refused(problem) => {
                host.tick_every(tick_ms(self.source.refresh_ms));
                self.fail(host, &format!("the answer is not a flow list ({problem})"));
            }
        }
    }

    fn fail(&mut self, host: &mut impl Host, reason: &str) {
        host.count(Counter::FetchFailed, 1);
        let wait = self.settle(host, false);
        host.log(
            Level::Warn,
            &format!("directory fetch failed: {reason}; keeping the last good flows, next fetch in {wait} ms"),
        );
    }

    /// Hands the lease on: due `refresh_ms` after the fetch started, or backed off. The wait.
    fn settle(&mut self, host: &mut impl Host, answered: bool) -> u64 {
        let Some(pending) = self.pending.take() else {
            return 0;
        };
        let now_ms = host.now_ms();
        let next = if answered {
            Lease {
                next_ms: pending.dispatched_at_ms + self.source.refresh_ms,
                failures: 0,
            }
        } else {
            let failures = pending.lease.failures.saturating_add(1);
            Lease {
                next_ms: now_ms + backoff_ms(self.source.refresh_ms, failures),
                failures,
            }
        };
        // Another VM took the lease meanwhile (this fetch outlived it): it is theirs.
        let (value, cas) = host.get(&self.keys.lease());
        if Lease::decode(value.as_deref()) == Some(pending.lease) {
            host.set(&self.keys.lease(), &next.encode(), cas);
        }
        next.next_ms.saturating_sub(now_ms)
    }
}

/// A version as a query value: unreserved bytes as they are, the rest percent-encoded.
fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests;
