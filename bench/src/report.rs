//! The results: medians over rounds, ratios taken within each round (so machine noise that
//! hits all four listeners alike cancels), the goals, a Markdown report and an SVG chart.

mod controls;
mod goals;
mod markdown;
mod svg;

use crate::plan::{Listener, Scenario};
use crate::wrk::Run;

pub use markdown::markdown;
pub use svg::svg;

/// One scenario's rounds, per listener (indexed by `Listener::index`).
pub struct Measured {
    pub scenario: Scenario,
    pub runs: [Vec<Run>; Listener::COUNT],
    /// New downstream connections per 1,000 requests (Envoy's `downstream_cx_total`), per round.
    pub new_connections: [Vec<f64>; Listener::COUNT],
    /// The probe's answer: status and whether Envoy said `connection: close`.
    pub probe: [(u16, bool); Listener::COUNT],
    /// One run per listener with a single connection (latency without queueing).
    pub single: [Run; Listener::COUNT],
    /// One run per listener at the same connections, each waiting `delay_ms` between
    /// requests: half the slowest listener's rate, so no listener's worker is saturated.
    pub paced: [Run; Listener::COUNT],
    pub delay_ms: u32,
}

pub struct Memory {
    pub what: String,
    pub flows: usize,
    pub rss: u64,
    pub startup_ms: u128,
}

pub struct Report {
    pub date: String,
    pub seconds: u32,
    pub rounds: u32,
    pub connections: u32,
    pub pinned: bool,
    pub load_before: String,
    pub load_after: String,
    pub envoy_version: String,
    /// The flowgate commit measured.
    pub build: String,
    pub wasm_bytes: u64,
    pub measured: Vec<Measured>,
    pub memory: Vec<Memory>,
    pub profile: Option<String>,
}

pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

impl Measured {
    pub(crate) fn rps(&self, l: Listener) -> f64 {
        median(self.runs[l.index()].iter().map(|r| r.requests_per_sec).collect())
    }
    pub(crate) fn p50(&self, l: Listener) -> f64 {
        median(self.runs[l.index()].iter().map(|r| r.p50_us).collect())
    }
    pub(crate) fn p99(&self, l: Listener) -> f64 {
        median(self.runs[l.index()].iter().map(|r| r.p99_us).collect())
    }
    /// Median over rounds of `a`'s req/s divided by `b`'s in the same round.
    pub fn ratio(&self, a: Listener, b: Listener) -> f64 {
        let (a, b) = (&self.runs[a.index()], &self.runs[b.index()]);
        median(
            a.iter()
                .zip(b)
                .map(|(x, y)| x.requests_per_sec / y.requests_per_sec)
                .collect(),
        )
    }
    /// Median over rounds of `b`'s worker CPU per request divided by `a`'s in the same round:
    /// the req/s ratio the worker's own CPU time gives, whatever else the machine ran.
    pub fn cpu_ratio(&self, a: Listener, b: Listener) -> f64 {
        let (a, b) = (&self.runs[a.index()], &self.runs[b.index()]);
        median(
            a.iter()
                .zip(b)
                .map(|(x, y)| y.cpu_per_request() / x.cpu_per_request())
                .filter(|ratio| ratio.is_finite())
                .collect(),
        )
    }
    /// Median worker CPU µs per request.
    pub fn cpu_us(&self, l: Listener) -> f64 {
        median(
            self.runs[l.index()]
                .iter()
                .map(Run::cpu_per_request)
                .filter(|us| us.is_finite())
                .collect(),
        )
    }
    /// Worker time added per request against plain Envoy, in µs (1/rps difference, per round).
    pub fn added_us(&self, l: Listener) -> f64 {
        let (a, b) = (&self.runs[l.index()], &self.runs[Listener::Plain.index()]);
        median(
            a.iter()
                .zip(b)
                .map(|(x, y)| 1e6 / x.requests_per_sec - 1e6 / y.requests_per_sec)
                .collect(),
        )
    }
    /// p99 added against plain Envoy, in µs (per round).
    pub fn added_p99_us(&self, l: Listener) -> f64 {
        let (a, b) = (&self.runs[l.index()], &self.runs[Listener::Plain.index()]);
        median(a.iter().zip(b).map(|(x, y)| x.p99_us - y.p99_us).collect())
    }
    /// flowgate's p99 minus plain's, one connection.
    pub(crate) fn single_added_p99_us(&self) -> f64 {
        self.single[Listener::Flowgate.index()].p99_us - self.single[Listener::Plain.index()].p99_us
    }
    /// flowgate's p99 minus plain's, paced load.
    pub(crate) fn paced_added_p99_us(&self) -> f64 {
        self.paced_p99_over(Listener::Plain)
    }
    /// flowgate's p99 minus `other`'s, paced load.
    pub(crate) fn paced_p99_over(&self, other: Listener) -> f64 {
        self.paced[Listener::Flowgate.index()].p99_us - self.paced[other.index()].p99_us
    }
    pub(crate) fn connections(&self, l: Listener) -> f64 {
        median(self.new_connections[l.index()].clone())
    }
    pub(crate) fn errors(&self, l: Listener) -> u64 {
        self.runs[l.index()].iter().map(|r| r.socket_errors).sum()
    }
}

pub(crate) fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::scenarios;

    pub(super) fn run(rps: f64, p99: f64) -> Run {
        Run {
            requests_per_sec: rps,
            p50_us: p99 / 2.0,
            p99_us: p99,
            ..Run::default()
        }
    }

    /// Three rounds of req/s per listener (plain, lua, empty, flowgate); paced p99: plain 300 µs,
    /// Lua 380, empty 320, flowgate 350.
    pub(super) fn measured(name: &str, rounds: [[f64; 3]; Listener::COUNT]) -> Measured {
        let scenario = scenarios().into_iter().find(|s| s.name == name).unwrap();
        let runs = rounds.map(|rounds| rounds.iter().map(|&r| run(r, 1000.0)).collect());
        Measured {
            scenario,
            runs,
            new_connections: [vec![0.0], vec![0.0], vec![0.0], vec![1000.0]],
            probe: [(200, false); Listener::COUNT],
            single: [
                run(5000.0, 100.0),
                run(4000.0, 150.0),
                run(4800.0, 110.0),
                run(4500.0, 130.0),
            ],
            paced: [
                run(2000.0, 300.0),
                run(2000.0, 380.0),
                run(2000.0, 320.0),
                run(2000.0, 350.0),
            ],
            delay_ms: 8,
        }
    }

    #[test]
    fn cpu_ratios_come_from_the_workers_time_per_request() {
        let mut m = measured("sync", [[10_000.0; 3]; Listener::COUNT]);
        let costs = [50.0, 60.0, 55.0, 62.5];
        for (l, us) in Listener::ALL.into_iter().zip(costs) {
            for run in &mut m.runs[l.index()] {
                run.requests = 1000;
                run.worker_cpu_us = us * 1000.0;
            }
        }
        assert!((m.cpu_us(Listener::Lua) - 60.0).abs() < 1e-9);
        assert!((m.cpu_ratio(Listener::Flowgate, Listener::Plain) - 0.8).abs() < 1e-9);
        // Unknown CPU time (no worker found) gives no ratio rather than a wrong one.
        m.runs[Listener::Plain.index()][0].worker_cpu_us = 0.0;
        assert!((m.cpu_ratio(Listener::Flowgate, Listener::Plain) - 0.8).abs() < 1e-9);
    }

    #[test]
    fn ratios_are_taken_within_a_round() {
        // Round 2 ran slow for everyone: the ratio is still 0.9 in every round.
        let m = measured(
            "sync",
            [
                [20_000.0, 10_000.0, 20_000.0],
                [19_000.0; 3],
                [18_000.0, 9_000.0, 18_000.0],
                [18_000.0, 9_000.0, 18_000.0],
            ],
        );
        assert!((m.ratio(Listener::Flowgate, Listener::Plain) - 0.9).abs() < 1e-9);
        assert!((m.ratio(Listener::Flowgate, Listener::Empty) - 1.0).abs() < 1e-9);
        assert!((m.added_us(Listener::Flowgate) - (1e6 / 18_000.0 - 1e6 / 20_000.0)).abs() < 1e-9);
    }
}
