//! The goals a run is judged against (issue 12), each met or not with its worst case.

use crate::plan::{Class, Listener};

use super::{Measured, Report};

/// The admitted scenarios the headline goals are about: the seed template (sync) and async.
pub const HEADLINE: [&str; 2] = ["sync", "async"];

/// The largest flowgate.wasm the goals allow: 1.5 MiB.
pub const MAX_WASM_BYTES: u64 = 1024 * 1024 * 3 / 2;

/// How a run stands against one goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    NotMet,
    /// None of the goal's scenarios ran (`--only`).
    NotMeasured,
}

impl Verdict {
    fn of(met: bool) -> Verdict {
        if met {
            Verdict::Met
        } else {
            Verdict::NotMet
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Met => "MET",
            Verdict::NotMet => "**NOT MET**",
            Verdict::NotMeasured => "NOT MEASURED",
        }
    }
}

/// A goal and whether the run met it, with the worst case and its number.
pub struct Goal {
    pub text: String,
    pub verdict: Verdict,
    pub detail: String,
}

/// The lowest `value` over `scenarios`, with its scenario's name.
fn lowest<'a>(
    scenarios: impl Iterator<Item = &'a Measured>,
    value: impl Fn(&Measured) -> f64,
) -> Option<(f64, &'static str)> {
    scenarios
        .map(|m| (value(m), m.scenario.name))
        .min_by(|a, b| a.0.total_cmp(&b.0))
}

/// The highest `value` over `scenarios`, with its scenario's name.
fn highest<'a>(
    scenarios: impl Iterator<Item = &'a Measured>,
    value: impl Fn(&Measured) -> f64,
) -> Option<(f64, &'static str)> {
    scenarios
        .map(|m| (value(m), m.scenario.name))
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

/// A goal on the lowest ratio of flowgate's req/s to `other`'s over some scenarios.
fn ratio_goal<'a>(
    text: String,
    scenarios: impl Iterator<Item = &'a Measured>,
    other: Listener,
    at_least: f64,
    absent: &str,
) -> Goal {
    let scenarios: Vec<&Measured> = scenarios.collect();
    let by_cpu = lowest(scenarios.iter().copied(), |m| m.cpu_ratio(Listener::Flowgate, other))
        .filter(|(ratio, _)| ratio.is_finite())
        .map(|(ratio, name)| format!("; by worker CPU per request: worst {ratio:.2}x ({name})"))
        .unwrap_or_default();
    match lowest(scenarios.into_iter(), |m| m.ratio(Listener::Flowgate, other)) {
        Some((ratio, name)) => Goal {
            text,
            verdict: Verdict::of(ratio >= at_least),
            detail: format!("worst {ratio:.2}x {} ({name}){by_cpu}", other.name()),
        },
        None => Goal {
            text,
            verdict: Verdict::NotMeasured,
            detail: format!("{absent} not in this run"),
        },
    }
}

pub fn goals(report: &Report) -> Vec<Goal> {
    use Listener::*;
    let all = || report.measured.iter();
    let headline = || all().filter(|m| HEADLINE.contains(&m.scenario.name));
    let other_admitted =
        || all().filter(|m| m.scenario.class == Class::Admitted && !HEADLINE.contains(&m.scenario.name));
    let admitted = || all().filter(|m| m.scenario.class == Class::Admitted);
    let refusals = || all().filter(|m| m.scenario.class == Class::Rejected);
    let passed = || all().filter(|m| m.scenario.class == Class::Passed);

    let mut goals = vec![
        ratio_goal(
            "admitted sync (seed template) and async >= 1.0x the Lua peer's req/s".into(),
            headline(),
            Lua,
            1.0,
            "sync and async",
        ),
        ratio_goal(
            "admitted sync and async >= 0.9x the empty Rust proxy-wasm filter's req/s".into(),
            headline(),
            Empty,
            0.9,
            "sync and async",
        ),
    ];
    if other_admitted().next().is_some() {
        goals.push(ratio_goal(
            "(for reference) the other admitted scenarios >= 1.0x Lua".into(),
            other_admitted(),
            Lua,
            1.0,
            "",
        ));
        goals.push(ratio_goal(
            "(for reference) the other admitted scenarios >= 0.9x the empty filter".into(),
            other_admitted(),
            Empty,
            0.9,
            "",
        ));
    }
    goals.push(ratio_goal(
        "refusals (reject-401, paused, 401-*) >= 2x the Lua peer's req/s".into(),
        refusals(),
        Lua,
        2.0,
        "refusal scenarios",
    ));
    goals.push(ratio_goal(
        "requests that are not webhooks (pass: flowgate disabled on the route) >= 0.98x plain Envoy".into(),
        passed(),
        Plain,
        0.98,
        "pass",
    ));

    let paced = format!(
        "p99 at {} paced connections <= the Lua peer's p99 on admitted scenarios",
        report.connections
    );
    goals.push(match highest(admitted(), |m| m.paced_p99_over(Lua)) {
        Some((over, name)) => {
            let m = all().find(|m| m.scenario.name == name);
            let (flowgate, lua) = m.map_or((f64::NAN, f64::NAN), |m| {
                (m.paced[Flowgate.index()].p99_us, m.paced[Lua.index()].p99_us)
            });
            Goal {
                text: paced,
                verdict: Verdict::of(over <= 0.0),
                detail: format!("worst {over:+.0} µs over Lua ({name}: flowgate {flowgate:.0} µs, Lua {lua:.0} µs)"),
            }
        }
        None => Goal {
            text: paced,
            verdict: Verdict::NotMeasured,
            detail: "no admitted scenario in this run".into(),
        },
    });

    let cost = |name: &str| {
        all()
            .find(|m| m.scenario.name == name)
            .map(|m| m.ratio(Flowgate, Plain))
    };
    if let (Some(small), Some(large)) = (cost("sync"), cost("sync-100k")) {
        // Flat = at 100,000 flows the ratio to plain is at most 5% below the one at 10 flows.
        goals.push(Goal {
            text: "per-request cost flat from 10 to 100,000 flows".into(),
            verdict: Verdict::of(large >= small * 0.95),
            detail: format!("sync {small:.2}x plain at 10 flows, {large:.2}x at 100,000"),
        });
    }
    goals.push(Goal {
        text: format!("flowgate.wasm <= 1.5 MiB ({MAX_WASM_BYTES} bytes)"),
        verdict: Verdict::of(report.wasm_bytes <= MAX_WASM_BYTES),
        detail: format!("{} bytes", report.wasm_bytes),
    });

    // For reference: latency flowgate adds over plain Envoy.
    let under_100 = |text: String, added: Option<(f64, &str)>| {
        added.map(|(added, name)| Goal {
            text,
            verdict: Verdict::of(added < 100.0),
            detail: format!("worst {added:+.0} µs ({name})"),
        })
    };
    goals.extend(under_100(
        format!(
            "(for reference) p99 added over plain < 100 µs at {} connections, paced at half the slowest listener's rate",
            report.connections
        ),
        highest(all(), Measured::paced_added_p99_us),
    ));
    goals.extend(under_100(
        format!(
            "(for reference) p99 added over plain at {} connections, saturated (queueing: mirrors req/s)",
            report.connections
        ),
        highest(all(), |m| m.added_p99_us(Flowgate)),
    ));
    goals.extend(under_100(
        "(for reference) p99 added over plain < 100 µs at 1 connection, no queueing".into(),
        highest(all(), Measured::single_added_p99_us),
    ));
    goals
}
