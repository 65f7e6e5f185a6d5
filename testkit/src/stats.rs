//! The one parser of Envoy's admin `/stats` text (`name: value` lines). Counters and gauges are
//! kept; histograms and text-valued stats (whose value is not an unsigned integer) are left out.

use std::collections::BTreeMap;
use std::ops::Deref;

/// Envoy's counters and gauges by name, as one `/stats` answer listed them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats(BTreeMap<String, u64>);

impl Stats {
    /// Parses `/stats` text (the whole of it, or a `?filter=` answer).
    pub fn parse(text: &str) -> Stats {
        Stats(
            text.lines()
                .filter_map(|line| {
                    let (name, value) = line.split_once(": ")?;
                    Some((name.to_string(), value.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// One counter or gauge, 0 when absent (Envoy leaves out what was never touched).
    pub fn value(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }
}

/// Read-only map access: `get`, `contains_key`, `iter`...
impl Deref for Stats {
    type Target = BTreeMap<String, u64>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_are_kept_histograms_and_text_are_not() {
        let stats = Stats::parse(
            "cluster.a.upstream_rq_total: 12\n\
             wasmcustom.flowgate.requests.passed: 3\n\
             cluster.a.upstream_rq_time: P0(nan,1) P25(nan,2)\n\
             server.version: abc\n\
             no separator\n",
        );
        assert_eq!(stats.get("cluster.a.upstream_rq_total"), Some(&12));
        assert_eq!(stats.value("wasmcustom.flowgate.requests.passed"), 3);
        assert_eq!(stats.value("absent"), 0);
        assert_eq!(stats.len(), 2);
    }
}
