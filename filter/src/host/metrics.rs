//! Defines every metric of `crate::metrics` in Envoy's `/stats` (as `wasmcustom.<name>`)
//! and records them. Envoy shares a metric by name across VMs, so every worker adds to
//! the same counter.

use std::collections::HashMap;

use super::abi::{self, MetricKind};
use crate::metrics::{Counter, Gauge};

/// Envoy's metric ids, by metric.
#[derive(Default)]
pub struct Metrics {
    counters: HashMap<Counter, u32>,
    gauges: HashMap<Gauge, u32>,
}

impl Metrics {
    pub fn define() -> Self {
        let counters = Counter::all()
            .filter_map(|counter| Some((counter, define(&counter.name(), MetricKind::Counter)?)))
            .collect();
        let gauges = Gauge::ALL
            .into_iter()
            .filter_map(|gauge| Some((gauge, define(gauge.name(), MetricKind::Gauge)?)))
            .collect();
        Metrics { counters, gauges }
    }

    pub fn count(&self, counter: Counter) {
        self.add(counter, 1);
    }

    pub fn add(&self, counter: Counter, n: u64) {
        if let Some(&id) = self.counters.get(&counter) {
            abi::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn set(&self, gauge: Gauge, value: u64) {
        if let Some(&id) = self.gauges.get(&gauge) {
            abi::record_metric(id, value);
        }
    }
}

fn define(name: &str, kind: MetricKind) -> Option<u32> {
    let id = abi::define_metric(kind, name);
    if id.is_none() {
        log::warn!("flowgate: could not define metric {name}");
    }
    id
}
