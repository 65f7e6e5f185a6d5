//! What the VMs of one Envoy process share about the directory (Envoy shared data, one
//! store per `vm_id`), as bytes, under keys scoped to the plugin configuration: the lease,
//! the published record, one record per flow, the ids whose entries were rejected, and the
//! slices of an answer being applied.

use sha2::{Digest, Sha256};

/// The key names of one plugin configuration.
#[derive(Clone, Debug)]
pub struct Keys {
    /// `flowgate.<scope>.`
    prefix: String,
}

impl Keys {
    /// Keys under a short SHA-256 of the plugin configuration bytes. Envoy keeps shared data
    /// for the life of the process, across reconfigurations; a new configuration (another
    /// directory, other static flows) must start from nothing, not from the previous one's
    /// flows and ETag.
    pub fn scoped(configuration: &[u8]) -> Keys {
        let scope: String = Sha256::digest(configuration)
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        Keys {
            prefix: format!("flowgate.{scope}."),
        }
    }

    /// Who fetches next, and when ([`Lease`]).
    pub fn lease(&self) -> String {
        format!("{}directory.lease", self.prefix)
    }

    /// What was last applied ([`Published`]): small, so every VM polls it.
    pub fn published(&self) -> String {
        format!("{}directory.published", self.prefix)
    }

    /// The ids whose latest entry was rejected, one per line.
    pub fn rejected(&self) -> String {
        format!("{}directory.rejected", self.prefix)
    }

    /// One flow's [`record`].
    pub fn flow(&self, id: &str) -> String {
        format!("{}flow.{id}", self.prefix)
    }

    /// The `n`th slice of an answer being applied.
    pub fn slice(&self, n: usize) -> String {
        format!("{}directory.answer.{n}", self.prefix)
    }
}

/// When the next fetch is due, and how many fetches in a row have failed (the backoff).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    pub next_ms: u64,
    pub failures: u32,
}

impl Lease {
    pub fn encode(&self) -> Vec<u8> {
        format!("{} {}", self.next_ms, self.failures).into_bytes()
    }

    /// `None` when absent or unreadable: a fetch is then due.
    pub fn decode(bytes: Option<&[u8]>) -> Option<Lease> {
        let text = std::str::from_utf8(bytes?).ok()?;
        let (next, failures) = text.split_once(' ')?;
        Some(Lease {
            next_ms: next.parse().ok()?,
            failures: failures.parse().ok()?,
        })
    }
}

/// What the directory's last applied answer left in force.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Published {
    /// Counts applied answers that changed something.
    pub generation: u64,
    /// When the answer was fetched (milliseconds since the epoch).
    pub fetched_at_ms: u64,
    /// Records written before the last full document are gone: they carry a lower epoch.
    pub floor: u64,
    pub flows: u64,
    pub rejected: u64,
    /// The directory's `version`, for the next `?since=` (empty: none).
    pub version: String,
    pub etag: String,
}

impl Published {
    pub fn encode(&self) -> Vec<u8> {
        let clean = |text: &str| -> String { text.chars().filter(|c| !c.is_control()).collect() };
        let version = clean(&self.version).replace(' ', "");
        format!(
            "{} {} {} {} {} v{version} {}",
            self.generation,
            self.fetched_at_ms,
            self.floor,
            self.flows,
            self.rejected,
            clean(&self.etag)
        )
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Published> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(7, ' ');
        let mut number = || parts.next()?.parse().ok();
        Some(Published {
            generation: number()?,
            fetched_at_ms: number()?,
            floor: number()?,
            flows: number()?,
            rejected: number()?,
            version: parts.next()?.strip_prefix('v')?.to_string(),
            etag: parts.next().unwrap_or_default().to_string(),
        })
    }
}

/// A flow's record: the epoch of the answer that wrote it (u64, little-endian), then its
/// checked entry as the directory sent it. An empty entry: removed.
pub fn record(epoch: u64, entry: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(8 + entry.len());
    record.extend_from_slice(&epoch.to_le_bytes());
    record.extend_from_slice(entry);
    record
}

/// A record's epoch and entry; `None` if it is not a record.
pub fn entry(record: &[u8]) -> Option<(u64, &[u8])> {
    let epoch = u64::from_le_bytes(record.get(..8)?.try_into().ok()?);
    Some((epoch, record.get(8..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_scoped_to_the_configuration() {
        let (a, b) = (Keys::scoped(b"{\"a\":1}"), Keys::scoped(b"{\"a\":2}"));
        assert_ne!(a.flow("f-1"), b.flow("f-1"));
        assert_eq!(a.lease(), Keys::scoped(b"{\"a\":1}").lease());
        let name = a.published();
        assert!(
            name.starts_with("flowgate.") && name.ends_with(".directory.published"),
            "{name}"
        );
        assert_eq!(name.len(), "flowgate..directory.published".len() + 12);
        assert!(a.flow("f-1").ends_with(".flow.f-1"));
    }

    #[test]
    fn leases_round_trip_and_garbage_is_none() {
        let lease = Lease {
            next_ms: 1_700_000_000_123,
            failures: 3,
        };
        assert_eq!(Lease::decode(Some(&lease.encode())), Some(lease));
        assert_eq!(Lease::decode(None), None);
        assert_eq!(Lease::decode(Some(b"12")), None);
        assert_eq!(Lease::decode(Some(b"x 1")), None);
    }

    #[test]
    fn published_records_round_trip() {
        let record = Published {
            generation: 3,
            fetched_at_ms: 99,
            floor: 2,
            flows: 1_000_000,
            rejected: 1,
            version: "17".into(),
            etag: "\"abc def\"".into(),
        };
        assert_eq!(Published::decode(&record.encode()), Some(record));
        assert_eq!(Published::decode(b"x"), None);
        let odd = Published {
            etag: "W/\"a\r\nb\"".into(),
            version: "a b\n".into(),
            ..Published::default()
        };
        let decoded = Published::decode(&odd.encode()).unwrap();
        assert_eq!((decoded.etag.as_str(), decoded.version.as_str()), ("W/\"ab\"", "ab"));
    }

    #[test]
    fn flow_records_carry_their_epoch() {
        let stored = record(7, b"{\"id\":\"f-1\"}");
        assert_eq!(entry(&stored), Some((7, &b"{\"id\":\"f-1\"}"[..])));
        assert_eq!(entry(&record(1, b"")), Some((1, &b""[..])));
        assert_eq!(entry(b"short"), None);
    }
}
