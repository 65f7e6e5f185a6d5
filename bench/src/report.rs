//! The results: medians over rounds, ratios taken within each round (so machine noise that
//! hits all three listeners alike cancels), the goals, a Markdown report and an SVG chart.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::plan::{Class, Listener, Scenario};
use crate::wrk::Run;

/// One scenario's rounds, per listener (indexed by `Listener::index`).
pub struct Measured {
    pub scenario: Scenario,
    pub runs: [Vec<Run>; 3],
    /// New downstream connections per 1,000 requests (Envoy's `downstream_cx_total`), per round.
    pub new_connections: [Vec<f64>; 3],
    /// The probe's answer: status and whether Envoy said `connection: close`.
    pub probe: [(u16, bool); 3],
    /// One run per listener with a single connection (latency without queueing).
    pub single: [Run; 3],
    /// One run per listener at the same connections, each waiting `delay_ms` between
    /// requests: half the slowest listener's rate, so no listener's worker is saturated.
    pub paced: [Run; 3],
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
    fn rps(&self, l: Listener) -> f64 {
        median(self.runs[l.index()].iter().map(|r| r.requests_per_sec).collect())
    }
    fn p50(&self, l: Listener) -> f64 {
        median(self.runs[l.index()].iter().map(|r| r.p50_us).collect())
    }
    fn p99(&self, l: Listener) -> f64 {
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
    fn single_added_p99_us(&self) -> f64 {
        self.single[Listener::Flowgate.index()].p99_us - self.single[Listener::Plain.index()].p99_us
    }
    /// flowgate's p99 minus plain's, paced load.
    fn paced_added_p99_us(&self) -> f64 {
        self.paced[Listener::Flowgate.index()].p99_us - self.paced[Listener::Plain.index()].p99_us
    }
    fn connections(&self, l: Listener) -> f64 {
        median(self.new_connections[l.index()].clone())
    }
    fn errors(&self, l: Listener) -> u64 {
        self.runs[l.index()].iter().map(|r| r.socket_errors).sum()
    }
}

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

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A goal and whether the run met it.
struct Goal {
    text: String,
    met: bool,
    detail: String,
}

fn goals(report: &Report) -> Vec<Goal> {
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

const COLOURS: [RGBColor; 3] = [RGBColor(120, 120, 120), RGBColor(0, 0, 128), RGBColor(214, 96, 28)];

/// Grouped bars: req/s per scenario and listener, flowgate's ratio to plain above its bar.
pub fn svg(report: &Report, path: &Path) -> Result<(), String> {
    let n = report.measured.len();
    let width = (160 + 110 * n as u32).max(800);
    let root = SVGBackend::new(path, (width, 560)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let top = report
        .measured
        .iter()
        .flat_map(|m| Listener::ALL.map(|l| m.rps(l)))
        .fold(0.0, f64::max)
        * 1.3;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "flowgate vs Lua vs plain Envoy — req/s, 1 worker, wrk -c{} ({})",
                report.connections, report.date
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(70)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..top.max(1.0))
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .max_light_lines(1)
        .y_desc("requests per second")
        .y_label_formatter(&|v| format!("{:.1}k", v / 1000.0))
        .draw()
        .map_err(|e| fail(&e))?;
    for l in Listener::ALL {
        let colour = COLOURS[l.index()];
        chart
            .draw_series(report.measured.iter().enumerate().map(|(i, m)| {
                let x0 = i as f64 + 0.1 + 0.27 * l.index() as f64;
                Rectangle::new([(x0, 0.0), (x0 + 0.25, m.rps(l))], colour.filled())
            }))
            .map_err(|e| fail(&e))?
            .label(l.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
    }
    chart
        .draw_series(report.measured.iter().enumerate().map(|(i, m)| {
            let x = i as f64 + 0.1 + 0.27 * 2.0;
            Text::new(
                format!("{:.2}x", m.ratio(Listener::Flowgate, Listener::Plain)),
                (x - 0.02, m.rps(Listener::Flowgate) + top * 0.03),
                ("sans-serif", 13),
            )
        }))
        .map_err(|e| fail(&e))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, m) in report.measured.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            m.scenario.name.to_string(),
            (x - 4 * m.scenario.name.len() as i32, y + 10),
            ("sans-serif", 14),
        ))
        .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::scenarios;

    fn run(rps: f64, p99: f64) -> Run {
        Run {
            requests_per_sec: rps,
            p50_us: p99 / 2.0,
            p99_us: p99,
            ..Run::default()
        }
    }

    fn measured(name: &str, plain: [f64; 3], lua: [f64; 3], flowgate: [f64; 3]) -> Measured {
        let scenario = scenarios().into_iter().find(|s| s.name == name).unwrap();
        let runs = [plain, lua, flowgate].map(|rounds| rounds.iter().map(|&r| run(r, 1000.0)).collect());
        Measured {
            scenario,
            runs,
            new_connections: [vec![0.0], vec![0.0], vec![1000.0]],
            probe: [(200, false); 3],
            single: [run(5000.0, 100.0), run(4000.0, 150.0), run(4500.0, 130.0)],
            paced: [run(2000.0, 300.0), run(2000.0, 380.0), run(2000.0, 350.0)],
            delay_ms: 8,
        }
    }

    #[test]
    fn ratios_are_taken_within_a_round() {
        // Round 2 ran slow for everyone: the ratio is still 0.9 in every round.
        let m = measured(
            "sync",
            [20_000.0, 10_000.0, 20_000.0],
            [19_000.0; 3],
            [18_000.0, 9_000.0, 18_000.0],
        );
        assert!((m.ratio(Listener::Flowgate, Listener::Plain) - 0.9).abs() < 1e-9);
        assert!((m.added_us(Listener::Flowgate) - (1e6 / 18_000.0 - 1e6 / 20_000.0)).abs() < 1e-9);
    }

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
