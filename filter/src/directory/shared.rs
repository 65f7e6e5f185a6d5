//! What the VMs of one Envoy process share about the directory (Envoy shared data, one
//! store per `vm_id`), as bytes: the lease, the published record, and the document with
//! its own record, under keys scoped to the plugin configuration.

use std::hash::Hasher;

use sha2::{Digest, Sha256};

/// The three shared-data entries of a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// Who fetches next, and when ([`Lease`]).
    Lease,
    /// The record of the stored document ([`Published`]): small, so every VM polls it.
    Published,
    /// The indexed document followed by its own record ([`store`]).
    Document,
}

/// The key names of one plugin configuration.
#[derive(Clone, Debug)]
pub struct Keys {
    lease: String,
    published: String,
    document: String,
}

impl Keys {
    /// Keys under a short SHA-256 of the plugin configuration bytes. Envoy keeps shared data
    /// for the life of the process, across reconfigurations; a new configuration (another
    /// directory, other static flows) must start from nothing, not from the previous one's
    /// document and ETag.
    pub fn scoped(configuration: &[u8]) -> Keys {
        let scope: String = Sha256::digest(configuration)
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = |name: &str| format!("flowgate.{scope}.directory.{name}");
        Keys {
            lease: key("lease"),
            published: key("published"),
            document: key("document"),
        }
    }

    pub fn name(&self, key: Key) -> &str {
        match key {
            Key::Lease => &self.lease,
            Key::Published => &self.published,
            Key::Document => &self.document,
        }
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

/// A published generation of the directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Published {
    pub generation: u64,
    /// When the document was fetched (milliseconds since the epoch).
    pub fetched_at_ms: u64,
    /// A hash of the indexed document: two publications of one generation number (a race
    /// on a key that did not exist yet) are still told apart.
    pub digest: u64,
    pub etag: String,
}

impl Published {
    pub fn encode(&self) -> Vec<u8> {
        let etag: String = self.etag.chars().filter(|c| !c.is_control()).collect();
        format!("{} {} {:016x} {etag}", self.generation, self.fetched_at_ms, self.digest).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Published> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(4, ' ');
        Some(Published {
            generation: parts.next()?.parse().ok()?,
            fetched_at_ms: parts.next()?.parse().ok()?,
            digest: u64::from_str_radix(parts.next()?, 16).ok()?,
            etag: parts.next().unwrap_or_default().to_string(),
        })
    }
}

/// The digest of an indexed document (SipHash with fixed keys: the same in every VM).
pub fn digest(indexed: &[u8]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(indexed);
    hasher.finish()
}

/// The stored form of a document: the indexed document, its record, and the record's
/// length (u32, little-endian), so that one compare-and-swap replaces both together and a
/// reader cuts the record off without copying the document.
pub fn store(mut indexed: Vec<u8>, record: &Published) -> Vec<u8> {
    let record = record.encode();
    let length = u32::try_from(record.len()).unwrap_or_default();
    indexed.extend_from_slice(&record);
    indexed.extend_from_slice(&length.to_le_bytes());
    indexed
}

/// The record of a stored document, and where it starts.
fn split(stored: &[u8]) -> Option<(Published, usize)> {
    let length_at = stored.len().checked_sub(4)?;
    let record_at = length_at.checked_sub(crate::wire::read_u32(stored, length_at)?)?;
    Some((Published::decode(stored.get(record_at..length_at)?)?, record_at))
}

/// The record of a stored document, without taking it apart.
pub fn record(stored: &[u8]) -> Option<Published> {
    split(stored).map(|(record, _)| record)
}

/// A stored document's record and its indexed document.
pub fn open(mut stored: Vec<u8>) -> Option<(Published, Vec<u8>)> {
    let (record, record_at) = split(&stored)?;
    stored.truncate(record_at);
    Some((record, stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_scoped_to_the_configuration() {
        let (a, b) = (Keys::scoped(b"{\"a\":1}"), Keys::scoped(b"{\"a\":2}"));
        assert_ne!(a.name(Key::Document), b.name(Key::Document));
        assert_eq!(a.name(Key::Lease), Keys::scoped(b"{\"a\":1}").name(Key::Lease));
        let name = a.name(Key::Published);
        assert!(
            name.starts_with("flowgate.") && name.ends_with(".directory.published"),
            "{name}"
        );
        assert_eq!(name.len(), "flowgate..directory.published".len() + 12);
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
    fn records_round_trip() {
        let record = Published {
            generation: 3,
            fetched_at_ms: 99,
            digest: 0xfeed,
            etag: "\"abc def\"".into(),
        };
        assert_eq!(Published::decode(&record.encode()), Some(record));
        assert_eq!(Published::decode(b"x"), None);
        let odd = Published {
            etag: "W/\"a\r\nb\"".into(),
            ..Published::default()
        };
        assert_eq!(Published::decode(&odd.encode()).unwrap().etag, "W/\"ab\"");
    }

    #[test]
    fn stored_documents_carry_their_record() {
        let record = Published {
            generation: 7,
            fetched_at_ms: 5,
            digest: digest(b"indexed"),
            etag: "e".into(),
        };
        let stored = store(b"indexed".to_vec(), &record);
        assert_eq!(self::record(&stored), Some(record.clone()));
        assert_eq!(open(stored.clone()), Some((record, b"indexed".to_vec())));
        for cut in [0, 3, stored.len() - 1] {
            assert_eq!(open(stored[..cut].to_vec()), None, "cut at {cut}");
        }
        assert_ne!(digest(b"a"), digest(b"b"));
    }
}
