//! The goals a run is judged against, each met or not with its worst case.

use crate::plan::{Class, Listener};

use super::{Measured, Report};

/// A goal and whether the run met it.
pub struct Goal {
    pub text: String,
    pub met: bool,
    pub detail: String,
}

pub fn goals(report: &Report) -> Vec<Goal> {
    use Listener::*;
    let mut goals = Vec::new();
    let worst = |class: Class| {
        report
            .measured
            .iter()
            .filter(|m| m.scenario.class == class)
            .map(|m| (m.ratio(Flowgate, Plain), m.scenario.name))
            .min_by(|a, b| a.0.total_cmp(&b.0))
    };
    if let Some((ratio, name)) = worst(Class::Admitted) {
        goals.push(Goal {
            text: "admitted paths >= 0.9x plain Envoy req/s".into(),
            met: ratio >= 0.9,
            detail: format!("worst {ratio:.2}x ({name})"),
        });
    }
    if let Some((ratio, name)) = worst(Class::Rejected) {
        goals.push(Goal {
            text: "reject paths >= plain Envoy req/s".into(),
            met: ratio >= 1.0,
            detail: format!("worst {ratio:.2}x ({name})"),
        });
    }
    if let Some((ratio, name)) = report
        .measured
        .iter()
        .map(|m| (m.ratio(Flowgate, Lua), m.scenario.name))
        .min_by(|a, b| a.0.total_cmp(&b.0))
    {
        goals.push(Goal {
            text: "every scenario ahead of Lua".into(),
            met: ratio > 1.0,
            detail: format!("worst {ratio:.2}x Lua ({name})"),
        });
    }
    let worst_p99 = |added: fn(&Measured) -> f64| {
        report
            .measured
            .iter()
            .map(|m| (added(m), m.scenario.name))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    };
    if let Some((added, name)) = worst_p99(Measured::paced_added_p99_us) {
        goals.push(Goal {
            text: format!(
                "p99 added latency < 100 µs at {} connections (paced at half the slowest listener's rate)",
                report.connections
            ),
            met: added < 100.0,
            detail: format!("worst {added:+.0} µs ({name})"),
        });
    }
    if let Some((added, name)) = worst_p99(|m| m.added_p99_us(Flowgate)) {
        goals.push(Goal {
            text: format!(
                "(for reference) p99 added at {} connections, saturated (queueing: mirrors req/s)",
                report.connections
            ),
            met: added < 100.0,
            detail: format!("worst {added:+.0} µs ({name})"),
        });
    }
    if let Some(pass) = report.measured.iter().find(|m| m.scenario.name == "pass") {
        // Not a goal: what any request costs once a wasm filter is on its path at all.
        let floor = pass.ratio(Flowgate, Plain);
        goals.push(Goal {
            text: "(for reference) the wasm floor: a request flowgate only looks at (pass)".into(),
            met: floor >= 0.9,
            detail: format!(
                "{floor:.2}x plain, {:+.1} µs/req: host calls and V8 entries every wasm filter pays",
                pass.added_us(Flowgate)
            ),
        });
    }
    let cost = |name: &str| {
        report
            .measured
            .iter()
            .find(|m| m.scenario.name == name)
            .map(|m| m.ratio(Flowgate, Plain))
    };
    if let (Some(small), Some(large)) = (cost("sync"), cost("sync-100k")) {
        // Flat = at 100,000 flows the ratio to plain is at most 5% below the one at 10 flows.
        goals.push(Goal {
            text: "per-request cost flat from 10 to 100,000 flows".into(),
            met: large >= small * 0.95,
            detail: format!("sync {small:.2}x plain at 10 flows, {large:.2}x at 100,000"),
        });
    }
    if let Some((added, name)) = worst_p99(Measured::single_added_p99_us) {
        goals.push(Goal {
            text: "(for reference) p99 added latency < 100 µs at 1 connection, no queueing".into(),
            met: added < 100.0,
            detail: format!("worst {added:+.0} µs ({name})"),
        });
    }
    goals.push(Goal {
        text: "flowgate.wasm < 1 MiB".into(),
        met: report.wasm_bytes < 1024 * 1024,
        detail: format!("{} bytes", report.wasm_bytes),
    });
    goals
}
