//! The soak: mixed traffic at the highest rate the machine sustains (wrk, closed loop, every thread
//! rotating sync templated, async, 401, paused and non-webhook requests) through Envoy (2 workers),
//! flowgate and the reference executor for a given time. Reports requests served, unexpected
//! answers (goal 0), wasm VM failures (goal 0: `wasm.flowgate.vm_reload*`) and Envoy's memory
//! (VmRSS, sampled every 30 s: goal flat), and writes a Markdown report.
//!
//! Run it through `scripts/soak.sh [minutes]` (it builds what is needed first):
//!
//! ```text
//! soak [--minutes M] [--out FILE] [--threads T] [--connections C] [--sample-seconds S]
//! ```
//!
//! Exit status 1 when an answer was unexpected, a request got no answer, a VM failed or Envoy
//! restarted; memory growth is reported with a verdict but does not change the exit status.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread::sleep;
use std::time::{Duration, Instant};

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use flowgate_e2e::load::*;
use flowgate_e2e::*;

/// Mixed traffic through Envoy, flowgate and the reference executor for a long time (run it through
/// scripts/soak.sh, which builds what it needs first).
#[derive(Debug, Parser)]
#[command(name = "soak", args_override_self = true)]
struct Cli {
    /// How long to drive the load (fractions allowed)
    #[arg(long, value_name = "M", default_value_t = 10.0)]
    minutes: f64,
    /// The Markdown report [default: bench/results/soak-<UTC date>.md]
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// wrk threads
    #[arg(long, value_name = "T", default_value_t = 2)]
    threads: u32,
    /// wrk connections
    #[arg(long, value_name = "C", default_value_t = 16)]
    connections: u32,
    /// Memory sampling interval, in seconds
    #[arg(long = "sample-seconds", value_name = "S", default_value_t = 30.0)]
    sample_seconds: f64,
}

struct Args {
    minutes: f64,
    out: PathBuf,
    threads: u32,
    connections: u32,
    sample: Duration,
}

/// The arguments (without the program name), checked; `--help` comes back as an error that
/// prints the help when it exits.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, clap::Error> {
    let cli = Cli::try_parse_from(std::iter::once("soak".to_string()).chain(args))?;
    let invalid = |message: &str| Cli::command().error(ErrorKind::ValueValidation, message);
    if cli.minutes.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        || cli.threads == 0
        || cli.connections < cli.threads
    {
        return Err(invalid(
            "--minutes must be > 0, --threads >= 1, --connections >= --threads",
        ));
    }
    if cli.sample_seconds.is_nan() || cli.sample_seconds < 1.0 {
        return Err(invalid("--sample-seconds must be >= 1"));
    }
    Ok(Args {
        minutes: cli.minutes,
        out: cli
            .out
            .unwrap_or_else(|| repo_root().join(format!("bench/results/soak-{}.md", today()))),
        threads: cli.threads,
        connections: cli.connections,
        sample: Duration::from_secs_f64(cli.sample_seconds),
    })
}

/// One memory sample of Envoy.
struct Sample {
    at: Duration,
    rss_kib: u64,
    hwm_kib: u64,
    uptime_s: Option<u64>,
    downstream_rq: u64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Least-squares slope of RSS over time, MiB per minute.
fn slope_mib_per_min(samples: &[&Sample]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let xs: Vec<f64> = samples.iter().map(|s| s.at.as_secs_f64() / 60.0).collect();
    let ys: Vec<f64> = samples.iter().map(|s| mib(s.rss_kib)).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var
    }
}

fn main() -> ExitCode {
    let args = parse_args(std::env::args().skip(1)).unwrap_or_else(|e| e.exit());
    wrk_binary();
    let duration = Duration::from_secs_f64(args.minutes * 60.0);

    // The demo flows, with the async demo flow's 2 s run cut to 10 ms so the executor's worker
    // (64 runs at a time) keeps up with the load instead of queueing without end.
    let mut flows = demo_flows();
    for flow in flows["flows"].as_array_mut().expect("flows") {
        if flow["id"] == "f-1003" {
            flow["run_ms"] = 10.into();
        }
    }
    let executor = Executor::start(&flows);
    let envoy = Envoy::start(EnvoyOptions::new(plugin_config_for(&flows), executor.port()).concurrency(2));
    let pid = envoy.pid();
    let kinds = [
        Kind::sync(),
        Kind::async_demo(),
        Kind::unauthorized(),
        Kind::paused(),
        Kind::other(),
    ];
    for kind in &kinds {
        let headers: Vec<(&str, &str)> = kind.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let response = envoy.send(&kind.method, &kind.path, &headers, kind.body.as_bytes());
        let text = response.text();
        if let Err(why) = normal_answer(&kind.name, &Answer::of_response(&response, &text)) {
            eprintln!("soak: before the load, {}: {why}", kind.name);
            return ExitCode::FAILURE;
        }
    }
    let load_at_start = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let vm_before = vm_failure_stats(&envoy.stats());
    let uptime_before = server_info(envoy.admin_port()).map(|i| i.uptime_current_epoch_s);

    println!(
        "soak: {:.1} min of mixed traffic (wrk -t{} -c{}, kinds rotating: {}) through Envoy PID {pid} \
         (2 workers), sampling every {} s",
        args.minutes,
        args.threads,
        args.connections,
        kinds.iter().map(|k| k.name.as_str()).collect::<Vec<_>>().join(", "),
        args.sample.as_secs()
    );
    let started = Instant::now();
    let sample = |at: Duration| {
        let stats = envoy.stats();
        Sample {
            at,
            rss_kib: proc_status_kib(pid, "VmRSS").unwrap_or(0),
            hwm_kib: proc_status_kib(pid, "VmHWM").unwrap_or(0),
            uptime_s: server_info(envoy.admin_port()).map(|i| i.uptime_current_epoch_s),
            downstream_rq: stats.value("http.flowgate.downstream_rq_total"),
        }
    };
    let print_sample = |s: &Sample| {
        println!(
            "  {:>6.0} s  VmRSS {:>7.1} MiB  (VmHWM {:>7.1} MiB)  downstream requests {:>10}  uptime {}",
            s.at.as_secs_f64(),
            mib(s.rss_kib),
            mib(s.hwm_kib),
            s.downstream_rq,
            s.uptime_s.map(|u| format!("{u} s")).unwrap_or_else(|| "?".into())
        );
    };
    let mut samples = vec![sample(Duration::ZERO)];
    print_sample(&samples[0]);

    let mut wrk = Wrk::start(
        envoy.port(),
        &kinds,
        &WrkOptions {
            threads: args.threads,
            connections: args.connections,
            duration,
            delay_ms: 0,
            mix: Mix::Rotate,
        },
    );
    let mut next = args.sample;
    while wrk.running() {
        // The sample due when wrk finishes is the final one below.
        if wrk.elapsed() >= next && next + Duration::from_secs(2) < duration {
            // The executor records every forwarded request in memory; keep it bounded.
            executor.clear_requests();
            let s = sample(started.elapsed());
            print_sample(&s);
            samples.push(s);
            next += args.sample;
        }
        sleep(Duration::from_millis(100));
    }
    let summary = wrk.wait(Duration::from_secs(60));
    let last = sample(started.elapsed());
    print_sample(&last);
    samples.push(last);

    println!("wrk:\n{}", summary.report.trim_end());

    // --- judge ---------------------------------------------------------------------------------
    let mut lines: Vec<(String, u64, bool)> = vec![];
    let mut unexpected = 0;
    for signature in &summary.responses {
        let answer = Answer::of_signature(signature);
        let judged = kinds.iter().find_map(|k| normal_answer(&k.name, &answer).ok());
        let bad = judged.is_none();
        let label = judged.unwrap_or_else(|| {
            unexpected += signature.count;
            // Whose failure it is: the executor's (answered as the contract says), or flowgate's.
            match executor_fault(&answer) {
                Ok(label) => format!("UNEXPECTED executor failure, answered per contract: {label}"),
                Err(_) if is_raw_envoy_reply(&signature.body) => format!(
                    "UNEXPECTED raw Envoy reply {} {:?}: the executor failed; passing it through is right for \
                     the non-webhook kind, a contract violation for a webhook (rotating kinds cannot tell)",
                    signature.status, signature.body
                ),
                Err(why) => format!("UNEXPECTED, violates the contract: {why}"),
            }
        });
        match lines.iter_mut().find(|(l, _, _)| *l == label) {
            Some(line) => line.1 += signature.count,
            None => lines.push((label, signature.count, bad)),
        }
    }
    lines.sort_by_key(|line| std::cmp::Reverse(line.1));
    unexpected += summary.distinct_overflow;
    let no_answer = summary.errors.socket();

    let vm_after = vm_failure_stats(&envoy.stats());
    let vm_failures: u64 = vm_after
        .iter()
        .filter(|(k, _)| k.starts_with("wasm.flowgate.vm_reload"))
        .map(|(_, v)| v)
        .sum::<u64>()
        + vm_after
            .get("wasm.envoy.wasm.runtime.v8.created")
            .zip(vm_before.get("wasm.envoy.wasm.runtime.v8.created"))
            .map_or(0, |(a, b)| a.saturating_sub(*b));
    let uptime_after = server_info(envoy.admin_port()).map(|i| i.uptime_current_epoch_s);
    let mut uptime_monotonic = true;
    let mut previous = uptime_before.unwrap_or(0);
    for s in &samples {
        match s.uptime_s {
            Some(u) if u >= previous => previous = u,
            _ => uptime_monotonic = false,
        }
    }
    let restarted = !process_alive(pid) || envoy.pid() != pid || !uptime_monotonic;
    let panics = envoy.log().matches("panicked").count();

    // Memory: the first sample under load (after one interval: buffers and pools have grown) is the baseline.
    let (start_rss, end_rss) = (samples[0].rss_kib, samples.last().map_or(0, |s| s.rss_kib));
    let steady: Vec<&Sample> = samples.iter().skip(1).collect();
    let baseline = steady.first().map_or(start_rss, |s| s.rss_kib);
    let growth_kib = end_rss as i64 - baseline as i64;
    let slope = slope_mib_per_min(&steady);
    let flat = growth_kib <= (baseline as i64 / 20).max(4 * 1024);
    let verdict = if flat { "flat" } else { "GROWING" };

    let rate = summary.rate();
    println!(
        "soak: {} requests served in {:.1} s ({rate:.0}/s; wrk latency, corrected for coordinated omission: \
         p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms)",
        summary.requests,
        summary.duration_us as f64 / 1e6,
        summary.latency_us.p50 as f64 / 1000.0,
        summary.latency_us.p99 as f64 / 1000.0,
        summary.latency_us.max as f64 / 1000.0
    );
    for (label, count, bad) in &lines {
        println!("  {}{label}: {count}", if *bad { "!! " } else { "" });
    }
    println!(
        "soak: unexpected answers {unexpected} (goal 0), requests without an answer {no_answer} (goal 0), \
         VM failures {vm_failures} (goal 0: {vm_after:?}), Envoy restarted: {}, filter panics in the log {panics}",
        if restarted { "YES" } else { "no" }
    );
    println!(
        "soak: Envoy VmRSS {:.1} MiB at start, {:.1} MiB at the first sample under load, {:.1} MiB at the \
         end: {:+.1} MiB since that sample, slope {slope:+.2} MiB/min -> {verdict}",
        mib(start_rss),
        mib(baseline),
        mib(end_rss),
        growth_kib as f64 / 1024.0
    );

    // --- report --------------------------------------------------------------------------------
    let ok = unexpected == 0 && no_answer == 0 && vm_failures == 0 && !restarted && panics == 0;
    let mut md = String::new();
    let _ = writeln!(md, "# flowgate soak — {}\n", today());
    let _ = writeln!(
        md,
        "`scripts/soak.sh {}`: {:.1} minutes of mixed traffic through Envoy 1.40 (`--concurrency 2`) with \
         flowgate.wasm in front of the reference executor, wrk `-t{} -c{}` closed loop (the highest rate \
         the machine sustains), every thread rotating the request kinds: {}. Flow `f-1003`'s run time is \
         cut to 10 ms so the executor keeps up. \
         Temporary files, the executor's run store among them, in `{}`. \
         Machine: {} CPUs, load average at start {}.\n",
        args.minutes,
        args.minutes,
        args.threads,
        args.connections,
        kinds
            .iter()
            .map(|k| format!("`{}` ({} {})", k.name, k.method, k.path))
            .collect::<Vec<_>>()
            .join(", "),
        std::env::temp_dir().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_at_start.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let _ = writeln!(md, "| | result | goal |\n|---|---:|---|");
    let _ = writeln!(md, "| requests served | {} ({rate:.0}/s) | |", summary.requests);
    let _ = writeln!(
        md,
        "| latency p50 / p99 / max (wrk, corrected for coordinated omission) | {:.2} / {:.2} / {:.1} ms | |",
        summary.latency_us.p50 as f64 / 1000.0,
        summary.latency_us.p99 as f64 / 1000.0,
        summary.latency_us.max as f64 / 1000.0
    );
    let _ = writeln!(md, "| unexpected answers | {unexpected} | 0 |");
    let _ = writeln!(md, "| requests without an answer (socket errors) | {no_answer} | 0 |");
    let _ = writeln!(
        md,
        "| wasm VM failures (`wasm.flowgate.vm_reload*`, VMs created after start) | {vm_failures} | 0 |"
    );
    let _ = writeln!(
        md,
        "| Envoy restarted (PID {pid}, uptime {} s → {} s) | {} | no |",
        uptime_before.map_or("?".into(), |u| u.to_string()),
        uptime_after.map_or("?".into(), |u| u.to_string()),
        if restarted { "yes" } else { "no" }
    );
    let _ = writeln!(
        md,
        "| Envoy VmRSS start → first sample under load → end | {:.1} → {:.1} → {:.1} MiB ({:+.1} MiB, slope {slope:+.2} MiB/min) | flat: **{verdict}** |",
        mib(start_rss),
        mib(baseline),
        mib(end_rss),
        growth_kib as f64 / 1024.0
    );
    let _ = writeln!(md, "| overall | **{}** | |\n", if ok { "pass" } else { "FAIL" });
    let _ = writeln!(
        md,
        "## Envoy memory\n\nSampled every {} s (\"flat\": the end at most max(5 %, 4 MiB) above the first sample under load; \
         the slope is a least-squares fit over the samples under load).\n",
        args.sample.as_secs()
    );
    let _ = writeln!(
        md,
        "| time | VmRSS MiB | VmHWM MiB | downstream requests |\n|---:|---:|---:|---:|"
    );
    for s in &samples {
        let _ = writeln!(
            md,
            "| {:.0} s | {:.1} | {:.1} | {} |",
            s.at.as_secs_f64(),
            mib(s.rss_kib),
            mib(s.hwm_kib),
            s.downstream_rq
        );
    }
    let _ = writeln!(md, "\n## Answers\n\n| answer | count |\n|---|---:|");
    for (label, count, bad) in &lines {
        let label = label.replace('|', "\\|");
        let _ = writeln!(md, "| {}{label} | {count} |", if *bad { "**unexpected** " } else { "" });
    }
    let _ = writeln!(md, "\nSent per kind: {:?}.", summary.sent);
    if let Some(dir) = args.out.parent() {
        if let Err(e) = fs::create_dir_all(dir) {
            eprintln!("soak: create {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = fs::write(&args.out, md) {
        eprintln!("soak: write {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    println!("soak: report written to {}", args.out.display());
    println!("soak: {}", if ok { "PASS" } else { "FAIL" });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn today_is_a_date_and_args_parse() {
        let date = today();
        assert_eq!(date.len(), 10);
        assert!(date.starts_with("20"), "{date}");
        let parse = |list: &[&str]| parse_args(list.iter().map(|s| s.to_string()));
        let args = parse(&["--minutes", "0.5", "--out", "/tmp/x.md"]).unwrap();
        assert_eq!(
            (args.minutes, args.out, args.threads),
            (0.5, PathBuf::from("/tmp/x.md"), 2)
        );
        assert!(parse(&["--minutes", "0"]).is_err());
        assert!(parse(&["--bogus", "1"]).is_err());
        assert!(parse(&["--sample-seconds", "0.5"]).is_err());
        assert_eq!(parse(&["--help"]).err().map(|e| e.kind()), Some(ErrorKind::DisplayHelp));
        let args = parse(&["--threads", "4", "--connections", "8", "--sample-seconds", "2"]).unwrap();
        assert_eq!(
            (args.threads, args.connections, args.sample),
            (4, 8, Duration::from_secs(2))
        );
    }

    #[test]
    fn memory_slope_is_mib_per_minute() {
        let s = |secs: u64, mib: u64| Sample {
            at: Duration::from_secs(secs),
            rss_kib: mib * 1024,
            hwm_kib: 0,
            uptime_s: None,
            downstream_rq: 0,
        };
        let samples = [s(0, 10), s(60, 11), s(120, 12)];
        let refs: Vec<&Sample> = samples.iter().collect();
        assert!((slope_mib_per_min(&refs) - 1.0).abs() < 1e-9);
    }
}
