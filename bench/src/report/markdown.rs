//! The Markdown report.

use std::fmt::Write as _;

use crate::plan::Listener;
use crate::wrk::Run;

use super::goals::goals;
use super::{mib, ms, Report};

/// `| name | plain | lua | flowgate |`, one cell per listener.
fn listener_row(md: &mut String, name: &str, cell: impl Fn(Listener) -> String) {
    let _ = writeln!(
        md,
        "| {name} | {} | {} | {} |",
        cell(Listener::Plain),
        cell(Listener::Lua),
        cell(Listener::Flowgate)
    );
}

/// `plain | lua | flowgate | flowgate − plain` as p50 / p99 µs table cells.
fn latency_cells(runs: &[Run; 3]) -> String {
    let cell = |l: Listener| {
        let run = &runs[l.index()];
        format!("{:.0} / {:.0}", run.p50_us, run.p99_us)
    };
    let (f, p) = (&runs[Listener::Flowgate.index()], &runs[Listener::Plain.index()]);
    format!(
        "{} | {} | {} | {:+.0} / {:+.0}",
        cell(Listener::Plain),
        cell(Listener::Lua),
        cell(Listener::Flowgate),
        f.p50_us - p.p50_us,
        f.p99_us - p.p99_us
    )
}

pub fn markdown(report: &Report) -> String {
    use Listener::*;
    let mut md = String::new();
    let _ = writeln!(md, "# flowgate benchmark — {}\n", report.date);
    let _ = writeln!(
        md,
        "flowgate {} in one Envoy ({}), `--concurrency 1`{}; wrk `-t1 -c{} --latency`; {} rounds x {} s per scenario and \
         listener, listeners alternated within each round. Upstream: an Envoy `direct_response` listener \
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
    md.push_str("## Goals\n\n");
    for goal in goals(report) {
        let _ = writeln!(
            md,
            "- {} {} — {}",
            if goal.met { "MET" } else { "**NOT MET**" },
            goal.text,
            goal.detail
        );
    }
    md.push_str(
        "\n## Throughput and latency\n\n\
         `+µs/req`: worker time added per request against plain Envoy (1/req·s⁻¹ difference). \
         `+p99`: p99 minus plain's p99. `conn/1k`: new downstream connections per 1,000 requests \
         (0 = keep-alive held; 1000 = Envoy closed the connection after every answer).\n\n\
         | scenario | listener | req/s | p50 ms | p99 ms | × plain | × Lua | +µs/req | +p99 µs | conn/1k |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
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
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.0} |",
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
         With one connection each request is served alone: the difference is the filter's own latency.\n\n\
         | scenario | plain p50 / p99 µs | lua p50 / p99 µs | flowgate p50 / p99 µs | flowgate − plain p50 / p99 µs |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for m in &report.measured {
        let _ = writeln!(md, "| {} | {} |", m.scenario.name, latency_cells(&m.single));
    }

    let _ = write!(
        md,
        "\n## Latency at {} connections, paced (one run per listener)\n\n\
         Each connection waits between requests so that the offered load is half the slowest \
         listener's req/s above: every listener serves the same load without a saturated queue.\n\n\
         | scenario | wait ms | req/s | plain p50 / p99 µs | lua p50 / p99 µs | flowgate p50 / p99 µs | flowgate − plain p50 / p99 µs |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        report.connections
    );
    for m in &report.measured {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} |",
            m.scenario.name,
            m.delay_ms,
            m.paced[Listener::Flowgate.index()].requests_per_sec,
            latency_cells(&m.paced)
        );
    }

    md.push_str("\n## Probe answers (one request per scenario and listener, before the load)\n\n");
    md.push_str("| scenario | plain | lua | flowgate |\n|---|---|---|---|\n");
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

    md.push_str("\n## Raw rounds (req/s)\n\n| scenario | plain | lua | flowgate |\n|---|---|---|---|\n");
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

    #[test]
    fn markdown_reports_goals_and_rows() {
        let report = Report {
            date: "2026-01-01".into(),
            seconds: 1,
            rounds: 3,
            connections: 16,
            pinned: true,
            load_before: "0.1".into(),
            load_after: "0.2".into(),
            envoy_version: "1.40.0".into(),
            build: "abc1234".into(),
            wasm_bytes: 800_000,
            measured: vec![
                measured("sync", [20_000.0; 3], [19_000.0; 3], [18_500.0; 3]),
                measured("reject-401", [20_000.0; 3], [30_000.0; 3], [25_000.0; 3]),
            ],
            memory: vec![],
            profile: None,
        };
        let md = markdown(&report);
        assert!(
            md.contains("- MET admitted paths >= 0.9x plain Envoy req/s — worst 0.93x (sync)"),
            "{md}"
        );
        assert!(
            md.contains("- **NOT MET** every scenario ahead of Lua — worst 0.83x Lua (reject-401)"),
            "{md}"
        );
        assert!(md.contains("| flowgate | 18500 | 0.50 | 1.00 | 0.93 | 0.97 |"), "{md}");
        // Paced: flowgate 350 µs p99 against plain's 300 in both scenarios.
        assert!(
            md.contains("- MET p99 added latency < 100 µs at 16 connections (paced at half the slowest listener's rate) — worst +50 µs"),
            "{md}"
        );
        assert!(
            md.contains("| sync | 8 | 2000 | 150 / 300 | 190 / 380 | 175 / 350 | +25 / +50 |"),
            "{md}"
        );
    }
}
