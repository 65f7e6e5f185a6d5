//! What the directory sync and its host say to each other: the events the host feeds in
//! and the commands it carries out (see `sync`).

use std::rc::Rc;

use super::shared::Key;
use crate::flows::Flows;
pub use crate::metrics::{Counter, Gauge};

/// A shared-data entry as read: its value (`None`: absent) and its CAS number.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Shared {
    pub value: Option<Vec<u8>>,
    pub cas: u32,
}

/// Why a shared-data entry is read or written; the reply names it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    TakeLease,
    SettleLease,
    LoadDocument,
    PublishDocument,
    /// Writes an empty generation 0 where no document is stored yet, so that publishing
    /// is always a compare-and-swap (Envoy's CAS does not guard a key that is absent). Only
    /// a VM stalled between reading "absent" and this write, while another publishes the
    /// first generation, could still overwrite that; the VMs then reset the published record
    /// to it, and the next fetch (without an ETag) publishes again.
    CreateDocument,
    Mirror,
}

impl Access {
    pub fn key(self) -> Key {
        match self {
            Access::TakeLease | Access::SettleLease => Key::Lease,
            Access::LoadDocument | Access::PublishDocument | Access::CreateDocument => Key::Document,
            Access::Mirror => Key::Published,
        }
    }
}

/// What the directory answered; `status` is `None` when the call ended without response
/// headers (reset, or an answer over Envoy's `http.async_response_buffer_limit`).
#[derive(Debug, Default)]
pub struct Answer {
    pub status: Option<u16>,
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub enum Event {
    /// The timer fired, with the lease and the published record as read now.
    Tick {
        now_ms: u64,
        lease: Shared,
        published: Shared,
    },
    /// The host started the fetch (`None`: it refused to).
    Dispatched {
        token: Option<u32>,
    },
    /// A fetch ended, with the published record as read now.
    Answered {
        token: u32,
        now_ms: u64,
        answer: Answer,
        published: Shared,
    },
    Read {
        access: Access,
        value: Shared,
    },
    Wrote {
        access: Access,
        ok: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}

#[derive(Debug)]
pub enum Command {
    /// `GET` with these headers; reply [`Event::Dispatched`].
    Fetch {
        cluster: String,
        headers: Vec<(String, String)>,
        timeout_ms: u64,
    },
    /// Reply [`Event::Read`].
    Read(Access),
    /// Compare-and-swap (`cas` 0: unconditional); reply [`Event::Wrote`].
    Write {
        access: Access,
        value: Vec<u8>,
        cas: u32,
    },
    /// From now on, requests see this flow set.
    Serve(Rc<Flows>),
    TickEvery(u64),
    Count(Counter),
    Gauge(Gauge, u64),
    Log(Level, String),
}
