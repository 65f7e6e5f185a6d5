//! Counters and gauges in Envoy's `/stats` (as `wasmcustom.flowgate.*`). Envoy shares
//! a metric by name across VMs, so every worker adds to the same counter.

use std::collections::HashMap;

use proxy_wasm::types::MetricType;

use super::abi;

use crate::reply::CODES;

/// Request outcomes besides the `EdgeReply` codes.
pub const PASSED: &str = "passed";
pub const ADMITTED_SYNC: &str = "admitted_sync";
pub const ADMITTED_ASYNC: &str = "admitted_async";
pub const ANSWERED: &str = "answered";

/// Directory health.
pub const FETCH_OK: &str = "directory.fetch_ok";
pub const FETCH_NOT_MODIFIED: &str = "directory.fetch_not_modified";
pub const FETCH_FAILED: &str = "directory.fetch_failed";
pub const FLOWS_LOADED: &str = "directory.flows_loaded";
pub const ENTRIES_REJECTED: &str = "directory.entries_rejected";
pub const AGE_SECONDS: &str = "directory.age_seconds";

const COUNTERS: [&str; 7] = [
    PASSED,
    ADMITTED_SYNC,
    ADMITTED_ASYNC,
    ANSWERED,
    FETCH_OK,
    FETCH_NOT_MODIFIED,
    FETCH_FAILED,
];
const GAUGES: [&str; 3] = [FLOWS_LOADED, ENTRIES_REJECTED, AGE_SECONDS];

/// Metric ids by short name; names are `flowgate.requests.<outcome>` or `flowgate.<name>`.
#[derive(Default)]
pub struct Metrics {
    ids: HashMap<&'static str, u32>,
}

impl Metrics {
    pub fn define() -> Self {
        let mut ids = HashMap::new();
        let outcomes = CODES.iter().chain(&[PASSED, ADMITTED_SYNC, ADMITTED_ASYNC, ANSWERED]);
        for &name in outcomes {
            define(&mut ids, name, format!("flowgate.requests.{name}"), MetricType::Counter);
        }
        for name in COUNTERS.iter().filter(|name| name.starts_with("directory.")) {
            define(&mut ids, name, format!("flowgate.{name}"), MetricType::Counter);
        }
        for name in GAUGES {
            define(&mut ids, name, format!("flowgate.{name}"), MetricType::Gauge);
        }
        Metrics { ids }
    }

    pub fn count(&self, name: &str) {
        if let Some(&id) = self.ids.get(name) {
            abi::increment_metric(id, 1);
        }
    }

    pub fn set(&self, name: &str, value: u64) {
        if let Some(&id) = self.ids.get(name) {
            abi::record_metric(id, value);
        }
    }
}

fn define(ids: &mut HashMap<&'static str, u32>, short: &'static str, full: String, kind: MetricType) {
    match abi::define_metric(kind, &full) {
        Some(id) => {
            ids.insert(short, id);
        }
        None => log::warn!("flowgate: could not define metric {full}"),
    }
}
