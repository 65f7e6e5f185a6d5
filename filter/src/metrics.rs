//! Every metric flowgate keeps, as types: the host defines each one listed here when a
//! plugin is configured, and Envoy shows it as `wasmcustom.<name>` (docs/operations.md).

use crate::flows::Mode;
use crate::reply::Code;
use crate::verify::Reason;

/// Counters, shared by every worker of an Envoy process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// A request outside the webhook prefix.
    Passed,
    /// A webhook forwarded to the executor.
    Admitted(Mode),
    /// An admitted webhook answered with its template or the async acknowledgement.
    Rendered,
    /// A reply made at the edge, by its envelope `error` code.
    Refused(Code),
    /// A delivery refused `invalid_signature`, by which check failed.
    InvalidSignature(Reason),
    /// A repeated delivery answered with its first answer (contract 8).
    Duplicate,
    /// A remembered delivery id forgotten before its window ended, to make room.
    DedupeEvicted,
    /// A delivery's answer that could not be remembered (too large for the store, or the
    /// store kept changing under it): a repeat of it runs again.
    DedupeNotRemembered,
    /// Directory answers with a flow list.
    FetchOk,
    FetchNotModified,
    FetchFailed,
    /// Bytes of directory answers with a flow list (full documents or changes).
    FetchedBytes,
}

/// Gauges of the live directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gauge {
    FlowsLoaded,
    EntriesRejected,
    AgeSeconds,
}

impl Counter {
    /// Every counter.
    pub fn all() -> impl Iterator<Item = Counter> {
        let fixed = [
            Counter::Passed,
            Counter::Admitted(Mode::Sync),
            Counter::Admitted(Mode::Async),
            Counter::Rendered,
            Counter::Duplicate,
            Counter::DedupeEvicted,
            Counter::DedupeNotRemembered,
            Counter::FetchOk,
            Counter::FetchNotModified,
            Counter::FetchFailed,
            Counter::FetchedBytes,
        ];
        fixed
            .into_iter()
            .chain(Code::ALL.into_iter().map(Counter::Refused))
            .chain(Reason::ALL.into_iter().map(Counter::InvalidSignature))
    }

    pub fn name(self) -> String {
        let request = |outcome: &str| format!("flowgate.requests.{outcome}");
        match self {
            Counter::Passed => request("passed"),
            Counter::Admitted(mode) => request(&format!("admitted_{}", mode.as_str())),
            Counter::Rendered => request("answered"),
            Counter::Refused(code) => request(code.as_str()),
            Counter::InvalidSignature(reason) => format!("flowgate.verify.invalid_signature_{}", reason.as_str()),
            Counter::Duplicate => request("duplicate"),
            Counter::DedupeEvicted => "flowgate.dedupe.evicted".into(),
            Counter::DedupeNotRemembered => "flowgate.dedupe.not_remembered".into(),
            Counter::FetchOk => "flowgate.directory.fetch_ok".into(),
            Counter::FetchNotModified => "flowgate.directory.fetch_not_modified".into(),
            Counter::FetchFailed => "flowgate.directory.fetch_failed".into(),
            Counter::FetchedBytes => "flowgate.directory.fetched_bytes".into(),
        }
    }
}

impl Gauge {
    pub const ALL: [Gauge; 3] = [Gauge::FlowsLoaded, Gauge::EntriesRejected, Gauge::AgeSeconds];

    pub fn name(self) -> &'static str {
        match self {
            Gauge::FlowsLoaded => "flowgate.directory.flows_loaded",
            Gauge::EntriesRejected => "flowgate.directory.entries_rejected",
            Gauge::AgeSeconds => "flowgate.directory.age_seconds",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_ones_and_distinct() {
        let names: Vec<String> = Counter::all().map(Counter::name).collect();
        assert!(names.contains(&"flowgate.requests.admitted_async".to_string()));
        assert!(names.contains(&"flowgate.requests.biz_logic".to_string()));
        assert!(names.contains(&"flowgate.directory.fetch_failed".to_string()));
        assert!(names.contains(&"flowgate.requests.invalid_signature".to_string()));
        assert!(names.contains(&"flowgate.requests.handshake".to_string()));
        assert!(names.contains(&"flowgate.verify.invalid_signature_stale".to_string()));
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
    }
}
