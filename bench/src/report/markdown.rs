//! The Markdown report.

use std::fmt::Write as _;

use crate::plan::Listener;
use crate::wrk::Run;

use super::goals::goals;
use super::{mib, ms, Report};

/// `| name | plain | lua | empty | flowgate |`, one cell per listener.
fn listener_row(md: &mut String, name: &str, cell: impl Fn(Listener) -> String) {
    let cells: Vec<String> = Listener::ALL.into_iter().map(cell).collect();
    let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
}

/// A table's head: `first` columns, one per listener named by `column`, then `last` columns;
/// the first column left-aligned and the others `align`.
fn head(md: &mut String, first: &[&str], column: impl Fn(Listener) -> String, last: &[&str], align: &str) {
    let names: Vec<String> = first
        .iter()
        .map(|s| s.to_string())
        .chain(Listener::ALL.into_iter().map(column))
        .chain(last.iter().map(|s| s.to_string()))
        .collect();
    let rule: Vec<&str> = (0..names.len()).map(|i| if i == 0 { "---" } else { align }).collect();
    let _ = writeln!(md, "| {} |\n|{}|", names.join(" | "), rule.join("|"));
}

/// `plain | lua | empty | flowgate | flowgate − plain` as p50 / p99 µs table cells.
fn latency_cells(runs: &[Run; Listener::COUNT]) -> String {
    let mut cells: Vec<String> = Listener::ALL
        .iter()
        .map(|l| {
            let run = &runs[l.index()];
            format!("{:.0} / {:.0}", run.p50_us, run.p99_us)
        })
        .collect();
    let (f, p) = (&runs[Listener::Flowgate.index()], &runs[Listener::Plain.index()]);
    cells.push(format!("{:+.0} / {:+.0}", f.p50_us - p.p50_us, f.p99_us - p.p99_us));
    cells.join(" | ")
}

/// The issue's side-by-side table: req/s ratios taken within each round.
fn summary(md: &mut String, report: &Report) {
    use Listener::*;
    md.push_str(
        "## Summary\n\n\
         req/s ratios, each the median over rounds of the ratio within a round.\n\n\
         | scenario | flowgate / plain | flowgate / Lua | empty Rust proxy-wasm filter / plain | flowgate / empty filter |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for m in &report.measured {
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            m.scenario.name,
            m.ratio(Flowgate, Plain),
            m.ratio(Flowgate, Lua),
            m.ratio(Empty, Plain),
            m.ratio(Flowgate, Empty),
        );
    }
    md.push_str(
        "\nThe same ratios from Envoy's worker thread's own CPU time per request (`/proc`, user + \
         system, per run): what each request costs the worker, whatever else ran on the machine \
         meanwhile (on a busy machine req/s also measures the scheduler).\n\n\
         | scenario | worker CPU µs/req plain / lua / empty / flowgate | flowgate / plain | flowgate / Lua | empty / plain | flowgate / empty |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for m in &report.measured {
        let _ = writeln!(
            md,
            "| {} | {:.1} / {:.1} / {:.1} / {:.1} | {:.2} | {:.2} | {:.2} | {:.2} |",
            m.scenario.name,
            m.cpu_us(Plain),
            m.cpu_us(Lua),
            m.cpu_us(Empty),
            m.cpu_us(Flowgate),
            m.cpu_ratio(Flowgate, Plain),
            m.cpu_ratio(Flowgate, Lua),
            m.cpu_ratio(Empty, Plain),
            m.cpu_ratio(Flowgate, Empty),
        );
    }
    md.push('\n');
    super::controls::table(md, report);
}

pub fn markdown(report: &Report) -> String {
    use Listener::*;
    let mut md = String::new();
    let _ = writeln!(md, "# flowgate benchmark — {}\n", report.date);
    let _ = writeln!(
        md,
        "flowgate {} in one Envoy ({}), `--concurrency 1`{}; wrk `-t1 -c{} --latency`; {} rounds x {} s per scenario and \
         listener, listeners alternated within each round. Four listeners: `plain` (Envoy's router alone), \
         `lua` (the Lua peer, bench/lua/gate.lua), `empty` (a Rust proxy-wasm filter that does nothing, \
         bench/empty-filter: the floor of any wasm filter) and `flowgate` (on the webhook prefix only; \
         every other path goes to a second cluster with flowgate disabled on its route, as envoy/envoy.yaml). \
         Upstream: an Envoy `direct_response` listener \
         in the same Envoy. Numbers are medians over rounds; ratios are taken within a round. \
         Load average before: {}; after: {}.\n",
        report.build,
        report.envoy_version,
        if report.pinned { ", Envoy pinned to CPU 0, wrk to CPU 1" } else { "" },
        report.connections,
        report.rounds,
        report.seconds,
        report.load_before,
        report.load_after
    );
    summary(&mut md, report);
    md.push_str("## Goals (issue 12)\n\n");
    for goal in goals(report) {
        let _ = writeln!(md, "- {} {} — {}", goal.verdict.label(), goal.text, goal.detail);
    }
    md.push_str(
        "\n## Throughput and latency\n\n\
         `+µs/req`: worker time added per request against plain Envoy (1/req·s⁻¹ difference). \
         `+p99`: p99 minus plain's p99. `conn/1k`: new downstream connections per 1,000 requests \
         (0 = keep-alive held; 1000 = Envoy closed the connection after every answer).\n\n\
         | scenario | listener | req/s | p50 ms | p99 ms | × plain | × Lua | × empty | +µs/req | +p99 µs | conn/1k |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for m in &report.measured {
        for l in Listener::ALL {
            let vs = |other: Listener| {
                if other == l {
                    "—".to_string()
                } else {
                    format!("{:.2}", m.ratio(l, other))
                }
            };
            let added = |value: f64| {
                if l == Plain {
                    "—".to_string()
                } else {
                    format!("{value:+.1}")
                }
            };
            let added_p99 = |value: f64| {
                if l == Plain {
                    "—".to_string()
                } else {
                    format!("{value:+.0}")
                }
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
                if l == Plain {
                    format!("**{}** ({})", m.scenario.name, m.scenario.what)
                } else {
                    String::new()
                },
                l.name(),
                m.rps(l),
                ms(m.p50(l)),
                ms(m.p99(l)),
                vs(Plain),
                vs(Lua),
                vs(Empty),
                added(m.added_us(l)),
                added_p99(m.added_p99_us(l)),
                m.connections(l),
            );
        }
    }
    let errors: Vec<String> = report
        .measured
        .iter()
        .flat_map(|m| Listener::ALL.map(|l| (m, l)))
        .filter(|(m, l)| m.errors(*l) > 0)
        .map(|(m, l)| format!("{}/{}: {}", m.scenario.name, l.name(), m.errors(l)))
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(md, "\nwrk socket errors (all rounds): {}", errors.join(", "));
    }

    md.push_str(
        "\n## Latency without queueing (wrk -c1, one run per listener)\n\n\
         At 16 connections a saturated worker queues requests, so p50/p99 above mostly mirror req/s. \
         With one connection each request is served alone: the difference is the filter's own latency.\n\n",
    );
    head(
        &mut md,
        &["scenario"],
        |l| format!("{} p50 / p99 µs", l.name()),
        &["flowgate − plain p50 / p99 µs"],
        "---:",
    );
    for m in &report.measured {
        let _ = writeln!(md, "| {} | {} |", m.scenario.name, latency_cells(&m.single));
    }

    let _ = write!(
        md,
        "\n## Latency at {} connections, paced (one run per listener)\n\n\
         Each connection waits between requests so that the offered load is half the slowest \
         listener's req/s above: every listener serves the same load without a saturated queue.\n\n",
        report.connections
    );
    head(
        &mut md,
        &["scenario", "wait ms", "req/s"],
        |l| format!("{} p50 / p99 µs", l.name()),
        &["flowgate − plain p50 / p99 µs", "flowgate − lua p99 µs"],
        "---:",
    );
    for m in &report.measured {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {:+.0} |",
            m.scenario.name,
            m.delay_ms,
            m.paced[Listener::Flowgate.index()].requests_per_sec,
            latency_cells(&m.paced),
            m.paced_p99_over(Lua),
        );
    }

    md.push_str("\n## Probe answers (one request per scenario and listener, before the load)\n\n");
    head(&mut md, &["scenario"], |l| l.name().to_string(), &[], "---");
    for m in &report.measured {
        let cell = |l: Listener| {
            let (status, close) = m.probe[l.index()];
            format!("{status}{}", if close { ", connection: close" } else { "" })
        };
        listener_row(&mut md, m.scenario.name, cell);
    }

    md.push_str("\n## Memory and start-up\n\n");
    let _ = writeln!(
        md,
        "flowgate.wasm: {} bytes ({}).\n",
        report.wasm_bytes,
        mib(report.wasm_bytes)
    );
    if !report.memory.is_empty() {
        md.push_str(
            "Envoy VmRSS after a short warm-up load on each listener (one Envoy per row; `--concurrency 1`, \
             so one worker plus the main thread, each with its own Lua state / wasm VM). Start-up: spawn \
             until every listener answers.\n\n\
             | Envoy with | flows | VmRSS | over plain-only | start-up ms |\n|---|---:|---:|---:|---:|\n",
        );
        for row in &report.memory {
            let base = report
                .memory
                .iter()
                .find(|b| b.flows == row.flows && b.what == "plain only")
                .map(|b| b.rss);
            let over = match base {
                Some(base) if row.what != "plain only" => {
                    format!("{:+.1} MiB", (row.rss as f64 - base as f64) / 1048576.0)
                }
                _ => "—".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                row.what,
                row.flows,
                mib(row.rss),
                over,
                row.startup_ms
            );
        }
    }

    md.push_str("\n## Raw rounds (req/s)\n\n");
    head(&mut md, &["scenario"], |l| l.name().to_string(), &[], "---");
    for m in &report.measured {
        let cell = |l: Listener| {
            m.runs[l.index()]
                .iter()
                .map(|r| format!("{:.0}", r.requests_per_sec))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        listener_row(&mut md, m.scenario.name, cell);
    }
    if let Some(profile) = &report.profile {
        let _ = write!(md, "\n## Where the worker's time goes (perf, cpu-clock)\n\n{profile}\n");
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::measured;

    fn report(measured: Vec<super::super::Measured>, wasm_bytes: u64) -> Report {
        Report {
            date: "2026-01-01".into(),
            seconds: 3,
            rounds: 3,
            connections: 16,
            pinned: true,
            load_before: "0.1".into(),
            load_after: "0.2".into(),
            envoy_version: "1.40.0".into(),
            build: "abc1234".into(),
            wasm_bytes,
            measured,
            memory: vec![],
            profile: None,
        }
    }

    #[test]
    fn markdown_has_the_issue_summary_goals_and_four_listeners() {
        // req/s per round: plain, lua, empty, flowgate.
        let md = markdown(&report(
            vec![
                measured("sync", [[20_000.0; 3], [16_000.0; 3], [17_600.0; 3], [16_800.0; 3]]),
                measured(
                    "reject-401",
                    [[20_000.0; 3], [10_000.0; 3], [17_600.0; 3], [25_000.0; 3]],
                ),
                measured("pass", [[20_000.0; 3], [16_000.0; 3], [17_600.0; 3], [19_800.0; 3]]),
            ],
            1_200_000,
        ));
        assert!(
            md.contains(
                "| scenario | flowgate / plain | flowgate / Lua | empty Rust proxy-wasm filter / plain | flowgate / empty filter |"
            ),
            "{md}"
        );
        assert!(md.contains("| sync | 0.84 | 1.05 | 0.88 | 0.95 |"), "{md}");
        assert!(
            md.contains(
                "- MET admitted sync (seed template) and async >= 1.0x the Lua peer's req/s — worst 1.05x lua (sync)"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "- MET refusals (reject-401, paused, 401-*) >= 2x the Lua peer's req/s — worst 2.50x lua (reject-401)"
            ),
            "{md}"
        );
        assert!(md.contains("- MET requests that are not webhooks"), "{md}");
        assert!(
            md.contains("- MET flowgate.wasm <= 1.5 MiB (1572864 bytes) — 1200000 bytes"),
            "{md}"
        );
        // Detail rows: × plain, × Lua, × empty.
        assert!(
            md.contains("| flowgate | 16800 | 0.50 | 1.00 | 0.84 | 1.05 | 0.95 | +9.5 |"),
            "{md}"
        );
        assert!(
            md.contains("| scenario | plain | lua | empty | flowgate |\n|---|---|---|---|---|"),
            "{md}"
        );
        // Paced: flowgate 350 µs p99, plain 300, Lua 380.
        assert!(
            md.contains("| sync | 8 | 2000 | 150 / 300 | 190 / 380 | 160 / 320 | 175 / 350 | +25 / +50 | -30 |"),
            "{md}"
        );
        assert!(md.contains("- MET p99 at 16 paced connections <= the Lua peer's p99 on admitted scenarios — worst -30 µs over Lua (sync: flowgate 350 µs, Lua 380 µs)"), "{md}");
    }

    #[test]
    fn a_missed_goal_is_marked_not_met_with_its_worst_scenario() {
        let md = markdown(&report(
            vec![
                measured("sync", [[20_000.0; 3], [16_000.0; 3], [17_600.0; 3], [15_000.0; 3]]),
                measured("async", [[20_000.0; 3], [16_000.0; 3], [17_600.0; 3], [17_000.0; 3]]),
                measured("paused", [[20_000.0; 3], [10_000.0; 3], [17_600.0; 3], [18_000.0; 3]]),
                measured("pass", [[20_000.0; 3], [16_000.0; 3], [17_600.0; 3], [19_000.0; 3]]),
            ],
            1_600_000,
        ));
        for line in [
            "- **NOT MET** admitted sync (seed template) and async >= 1.0x the Lua peer's req/s — worst 0.94x lua (sync)",
            "- **NOT MET** admitted sync and async >= 0.9x the empty Rust proxy-wasm filter's req/s — worst 0.85x empty (sync)",
            "- **NOT MET** refusals (reject-401, paused, 401-*) >= 2x the Lua peer's req/s — worst 1.80x lua (paused)",
            "- **NOT MET** requests that are not webhooks (pass: flowgate disabled on the route) >= 0.98x plain Envoy — worst 0.95x plain (pass)",
            "- **NOT MET** flowgate.wasm <= 1.5 MiB (1572864 bytes) — 1600000 bytes",
        ] {
            assert!(md.contains(line), "missing {line:?} in\n{md}");
        }
        let only_refusals = markdown(&report(
            vec![measured(
                "reject-401",
                [[20_000.0; 3], [10_000.0; 3], [17_600.0; 3], [25_000.0; 3]],
            )],
            1_000_000,
        ));
        assert!(
            only_refusals.contains("- NOT MEASURED admitted sync (seed template) and async >= 1.0x the Lua peer's req/s — sync and async not in this run"),
            "{only_refusals}"
        );
    }
}
