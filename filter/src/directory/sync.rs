//! One VM's side of the directory sync, as a state machine without I/O. The host feeds it
//! events (a tick, the fetch dispatched or answered, the result of a shared-data read or
//! write) and carries out the commands it returns; `host/root.rs` does nothing else.
//!
//! Across the VMs of one Envoy process:
//! - One VM per interval takes the lease (CAS) and fetches. A failed fetch backs off,
//!   `refresh_ms · 2^n` up to [`MAX_BACKOFF_MS`], for every VM (the count is in the lease);
//!   an answered one resets it.
//! - An answer is published only if nothing was published since its fetch was dispatched:
//!   the document key holds the document with its own record and is replaced by CAS, so a
//!   slow answer never overwrites a newer one, and a document never pairs with another's
//!   generation.
//! - Every VM loads the stored document when the published record differs from the one
//!   it loaded. A VM that starts while a generation is published serves nothing (503
//!   `directory_unavailable`) until it has loaded it, never the static flows: it takes
//!   [`FIRST_LOAD_STEPS`] steps at once, so a small directory is in before any request.

use std::rc::Rc;

pub use super::protocol::{Access, Answer, Command, Counter, Event, Gauge, Level, Shared};
use super::shared::{Lease, Published};
use super::{document, tick_ms, Loading};
use crate::config::Directory;
use crate::flows::{Flows, FlowsBuilder};

/// A fetch is given this long before Envoy ends it as failed.
pub const FETCH_TIMEOUT_MS: u64 = 5_000;
/// The longest wait after failed fetches (or `refresh_ms`, if longer).
pub const MAX_BACKOFF_MS: u64 = 60_000;
/// Loading steps taken at once by a VM that has nothing to serve yet (1,000 entries).
pub const FIRST_LOAD_STEPS: usize = 4;

/// The fetch this VM has under way.
struct Pending {
    token: Option<u32>,
    /// The generation published when it was dispatched.
    after: u64,
    dispatched_at_ms: u64,
    /// The lease as this VM took it: settled only if still so.
    lease: Lease,
}

/// An answer to publish: its indexed document, ETag and the generation it follows.
struct Publication {
    indexed: Vec<u8>,
    etag: String,
    after: u64,
    /// Whether this VM wrote the empty generation 0 for it.
    created: bool,
}

/// One VM's directory sync: what it serves, what it has seen published, and the fetch,
/// publication or load it has under way.
pub struct Sync {
    source: Directory,
    builder: FlowsBuilder,
    /// The static flows, served until a generation is published.
    fallback: Option<Rc<Flows>>,
    current: Option<Rc<Flows>>,
    started: bool,
    now_ms: u64,
    /// The published record and its CAS, as last read.
    mirror: Option<Published>,
    mirror_cas: u32,
    /// The generation this VM serves.
    seen: Option<Published>,
    /// A record whose document did not load: not tried again until another is published.
    unloadable: Option<Published>,
    loading: Option<(Published, Loading)>,
    taking: Option<Lease>,
    pending: Option<Pending>,
    /// The lease this VM holds (as taken) and what to replace it with.
    settling: Option<(Lease, Lease)>,
    publishing: Option<Publication>,
    published: Option<Published>,
}

/// The wait after `failures` failed fetches in a row.
pub fn backoff_ms(refresh_ms: u64, failures: u32) -> u64 {
    let factor = 1u64.checked_shl(failures.min(63)).unwrap_or(u64::MAX);
    refresh_ms.saturating_mul(factor).min(MAX_BACKOFF_MS.max(refresh_ms))
}

impl Sync {
    pub fn new(source: Directory, builder: FlowsBuilder, fallback: Option<Flows>) -> Sync {
        Sync {
            source,
            builder,
            fallback: fallback.map(Rc::new),
            current: None,
            started: false,
            now_ms: 0,
            mirror: None,
            mirror_cas: 0,
            seen: None,
            unloadable: None,
            loading: None,
            taking: None,
            pending: None,
            settling: None,
            publishing: None,
            published: None,
        }
    }

    /// Handles `event` and every reply to the commands it leads to, in order.
    pub fn run(&mut self, event: Event, mut execute: impl FnMut(Command) -> Option<Event>) {
        let mut events = std::collections::VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            for command in self.handle(event) {
                events.extend(execute(command));
            }
        }
    }

    pub fn handle(&mut self, event: Event) -> Vec<Command> {
        match event {
            Event::Tick {
                now_ms,
                lease,
                published,
            } => self.tick(now_ms, &lease, published),
            Event::Dispatched { token } => match (&mut self.pending, token) {
                (Some(pending), Some(token)) => {
                    pending.token = Some(token);
                    Vec::new()
                }
                (Some(_), None) => self.fail(format!("Envoy refused a call to cluster {:?}", self.source.cluster)),
                (None, _) => Vec::new(),
            },
            Event::Answered {
                token,
                now_ms,
                answer,
                published,
            } => match &self.pending {
                Some(pending) if pending.token == Some(token) => {
                    self.now_ms = now_ms;
                    self.observe(published);
                    self.answered(answer)
                }
                _ => Vec::new(),
            },
            Event::Read { access, value } => match access {
                Access::LoadDocument => self.load(value),
                Access::PublishDocument => self.publish(value),
                Access::SettleLease => self.settled(value),
                Access::TakeLease | Access::CreateDocument | Access::Mirror => Vec::new(),
            },
            Event::Wrote { access, ok } => self.wrote(access, ok),
        }
    }

    fn observe(&mut self, published: Shared) {
        self.mirror = published.value.as_deref().and_then(Published::decode);
        self.mirror_cas = published.cas;
    }

    fn tick(&mut self, now_ms: u64, lease: &Shared, published: Shared) -> Vec<Command> {
        self.now_ms = now_ms;
        self.observe(published);
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.push(Command::TickEvery(tick_ms(self.source.refresh_ms)));
            if let (None, Some(fallback)) = (&self.mirror, &self.fallback) {
                out.push(Command::Serve(Rc::clone(fallback)));
            }
        }
        if self.loading.is_some() {
            self.step(&mut out, 1);
        } else if self.mirror.is_some() && self.mirror != self.seen && self.mirror != self.unloadable {
            out.push(Command::Read(Access::LoadDocument));
        }
        // A fetch whose answer never came is given up once its lease has run out.
        if self.pending.as_ref().is_some_and(|p| now_ms > p.lease.next_ms) {
            self.pending = None;
        }
        let lease_now = Lease::decode(lease.value.as_deref()).unwrap_or_default();
        if self.pending.is_none() && now_ms >= lease_now.next_ms {
            let taken = Lease {
                next_ms: now_ms + self.source.refresh_ms + FETCH_TIMEOUT_MS,
                failures: lease_now.failures,
            };
            self.taking = Some(taken);
            out.push(Command::Write {
                access: Access::TakeLease,
                value: taken.encode(),
                cas: lease.cas,
            });
        }
        if let Some(seen) = &self.seen {
            let age = now_ms.saturating_sub(seen.fetched_at_ms) / 1000;
            out.push(Command::Gauge(Gauge::AgeSeconds, age));
        }
        out
    }

    fn fetch(&mut self, lease: Lease) -> Vec<Command> {
        let mut headers = vec![
            (":method".to_string(), "GET".to_string()),
            (":path".to_string(), self.source.path.clone()),
            (":authority".to_string(), self.source.authority.clone()),
        ];
        if let Some(etag) = self.mirror.as_ref().map(|m| &m.etag).filter(|e| !e.is_empty()) {
            headers.push(("if-none-match".to_string(), etag.clone()));
        }
        self.pending = Some(Pending {
            token: None,
            after: self.mirror.as_ref().map_or(0, |m| m.generation),
            dispatched_at_ms: self.now_ms,
            lease,
        });
        vec![Command::Fetch {
            cluster: self.source.cluster.clone(),
            headers,
            timeout_ms: FETCH_TIMEOUT_MS,
        }]
    }

    fn answered(&mut self, answer: Answer) -> Vec<Command> {
        let after = self.pending.as_ref().map_or(0, |p| p.after);
        match answer.status {
            Some(304) => {
                let mut out = vec![Command::Count(Counter::FetchNotModified)];
                out.extend(self.settle(true));
                out
            }
            Some(200) => match document::index(&answer.body) {
                Err(problem) => self.fail(format!("the answer is not a flow list ({problem})")),
                Ok(indexed) => {
                    let mut out = vec![Command::Count(Counter::FetchOk)];
                    out.extend(self.settle(true));
                    let now_published = self.mirror.as_ref().map_or(0, |m| m.generation);
                    if now_published == after {
                        self.publishing = Some(Publication {
                            indexed,
                            etag: answer.etag.unwrap_or_default(),
                            after,
                            created: false,
                        });
                        out.push(Command::Read(Access::PublishDocument));
                    } else {
                        out.push(superseded());
                    }
                    out
                }
            },
            Some(status) => self.fail(format!("status {status}")),
            None => self.fail(
                "no answer (connection failure, or an answer over Envoy's http.async_response_buffer_limit)".into(),
            ),
        }
    }

    fn fail(&mut self, reason: String) -> Vec<Command> {
        let mut out = vec![Command::Count(Counter::FetchFailed)];
        let settle = self.settle(false);
        let wait = self
            .settling
            .map_or(0, |(_, next)| next.next_ms.saturating_sub(self.now_ms));
        out.push(Command::Log(
            Level::Warn,
            format!("directory fetch failed: {reason}; keeping the last good flows, next fetch in {wait} ms"),
        ));
        out.extend(settle);
        out
    }

    /// Hands the lease on: due `refresh_ms` after the fetch started, or backed off.
    fn settle(&mut self, answered: bool) -> Vec<Command> {
        let Some(pending) = self.pending.take() else {
            return Vec::new();
        };
        let next = if answered {
            Lease {
                next_ms: pending.dispatched_at_ms + self.source.refresh_ms,
                failures: 0,
            }
        } else {
            let failures = pending.lease.failures.saturating_add(1);
            Lease {
                next_ms: self.now_ms + backoff_ms(self.source.refresh_ms, failures),
                failures,
            }
        };
        self.settling = Some((pending.lease, next));
        vec![Command::Read(Access::SettleLease)]
    }

    fn settled(&mut self, lease: Shared) -> Vec<Command> {
        match self.settling.take() {
            // Another VM took the lease meanwhile (this fetch outlived it): it is theirs.
            Some((held, next)) if Lease::decode(lease.value.as_deref()) == Some(held) => vec![Command::Write {
                access: Access::SettleLease,
                value: next.encode(),
                cas: lease.cas,
            }],
            _ => Vec::new(),
        }
    }

    fn wrote(&mut self, access: Access, ok: bool) -> Vec<Command> {
        match access {
            Access::TakeLease => match self.taking.take() {
                Some(lease) if ok => self.fetch(lease),
                _ => Vec::new(),
            },
            Access::PublishDocument => match self.published.take() {
                // The record follows its document; a VM that finds them apart repairs it.
                Some(record) if ok => vec![
                    Command::Log(
                        Level::Info,
                        format!("directory generation {} published", record.generation),
                    ),
                    Command::Write {
                        access: Access::Mirror,
                        value: record.encode(),
                        cas: 0,
                    },
                ],
                _ => vec![superseded()],
            },
            Access::CreateDocument => vec![Command::Read(Access::PublishDocument)],
            Access::SettleLease | Access::LoadDocument | Access::Mirror => Vec::new(),
        }
    }
}

mod generations;
#[cfg(test)]
mod tests;

use generations::superseded;
