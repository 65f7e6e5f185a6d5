//! flowgate-bench: drives the same webhook traffic through four listeners of one Envoy —
//! plain routing (the limit), Envoy's Lua filter doing the equivalent work, a Rust proxy-wasm
//! filter that does nothing (the floor of any wasm filter), and flowgate — alternating them round
//! by round, and writes a Markdown report and an SVG chart.
//!
//! Run it through `scripts/bench.sh`, which builds flowgate.wasm and the empty filter first. Run from the
//! repository root; it writes generated configs to bench/work/ and results to bench/results/.

mod envoy;
mod plan;
mod profile;
mod report;
mod run;
mod wrk;

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory, Parser};
use envoy::{Envoy, Ports};
use flowgate_testkit::today;
use plan::{Demo, Listener, Scenario};
use report::Report;
use run::Bench;

/// Drives the same webhook traffic through plain Envoy, Envoy's Lua filter, an empty Rust
/// proxy-wasm filter and flowgate (one Envoy, four listeners, alternated round by round) and writes
/// a Markdown report and an SVG chart. Run it from the repository root, through scripts/bench.sh.
#[derive(Debug, Parser)]
#[command(name = "flowgate-bench", args_override_self = true)]
struct Cli {
    /// Smoke test: --seconds 1 --rounds 1 --warmup 0 --no-memory (explicit values of those win)
    #[arg(long)]
    quick: bool,
    /// Length of each measured wrk run [default: 3]
    #[arg(long, value_name = "N")]
    seconds: Option<u32>,
    /// Rounds; each runs every listener once, in rotating order [default: 3]
    #[arg(long, value_name = "N")]
    rounds: Option<u32>,
    /// Unmeasured seconds per listener before a scenario [default: 1]
    #[arg(long, value_name = "N")]
    warmup: Option<u32>,
    /// wrk connections (one wrk thread)
    #[arg(long, value_name = "N", default_value_t = 16)]
    connections: u32,
    /// Scenarios to run: sync, async, reject-401, paused, 401-64k, 401-1m, pass, body-1k, body-64k,
    /// body-1m, sync-10k, 401-10k, sync-100k, 401-100k [default: all]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Skip the memory measurement (one Envoy per listener kind and flow count)
    #[arg(long)]
    no_memory: bool,
    /// Also record `perf` (cpu-clock) of the worker during sync and reject-401
    #[arg(long)]
    profile: bool,
    /// Do not pin Envoy to CPU 0 and wrk to CPU 1
    #[arg(long)]
    no_pin: bool,
    /// Admin port; listeners at N+1..N+4, upstream at N+80 (moved up when one of them is taken)
    #[arg(long, value_name = "N", default_value_t = 18900)]
    port_base: u16,
    /// Results directory
    #[arg(long, value_name = "DIR", default_value = "bench/results")]
    out: PathBuf,
}

struct Options {
    seconds: u32,
    rounds: u32,
    warmup: u32,
    connections: u32,
    only: Option<Vec<String>>,
    memory: bool,
    profile: bool,
    pin: bool,
    port_base: u16,
    out: PathBuf,
}

impl From<Cli> for Options {
    fn from(cli: Cli) -> Options {
        let quick = |normal: u32, quick: u32| if cli.quick { quick } else { normal };
        Options {
            seconds: cli.seconds.unwrap_or(quick(3, 1)).max(1),
            rounds: cli.rounds.unwrap_or(quick(3, 1)).max(1),
            warmup: cli.warmup.unwrap_or(quick(1, 0)),
            connections: cli.connections.max(1),
            only: cli.only,
            memory: !cli.no_memory && !cli.quick,
            profile: cli.profile,
            pin: !cli.no_pin,
            port_base: cli.port_base,
            out: cli.out,
        }
    }
}

fn main() {
    let options = Options::from(Cli::parse());
    if let Err(problem) = bench(&options) {
        eprintln!("flowgate-bench: {problem}");
        std::process::exit(1);
    }
}

fn bench(o: &Options) -> Result<(), String> {
    let root = std::env::current_dir().map_err(|e| e.to_string())?;
    let read = |path: &str| {
        std::fs::read_to_string(root.join(path)).map_err(|e| format!("{path}: {e} (run from the repository root)"))
    };
    let demo = Demo::parse(&read("examples/flows.json")?)?;
    let gate_lua = read("bench/lua/gate.lua")?;
    let b = Bench {
        o,
        work: root.join("bench/work"),
        demo,
        wasm: root.join("target/wasm32-wasip1/release/flowgate.wasm"),
        empty_wasm: root.join("target/wasm32-wasip1/release/empty_filter.wasm"),
        envoy: envoy::binary(&root),
        wrk_script: root.join("bench/lua/wrk-post.lua"),
        root,
    };
    let wasm_bytes = std::fs::metadata(&b.wasm)
        .map_err(|e| {
            format!(
                "{}: {e} (build it: cargo build --release --target wasm32-wasip1 -p flowgate)",
                b.wasm.display()
            )
        })?
        .len();
    if !b.empty_wasm.is_file() {
        return Err(format!(
            "{}: not found; the empty listener needs it (build it: cargo build --release --target \
             wasm32-wasip1 -p empty-filter, or run scripts/bench.sh)",
            b.empty_wasm.display()
        ));
    }
    std::fs::create_dir_all(&b.work).map_err(|e| e.to_string())?;

    let scenarios: Vec<Scenario> = plan::scenarios()
        .into_iter()
        .filter(|s| o.only.as_ref().is_none_or(|only| only.iter().any(|n| n == s.name)))
        .collect();
    if scenarios.is_empty() {
        return Err(format!(
            "no scenario selected (--only)\n{}",
            Cli::command().render_usage()
        ));
    }
    let mut counts: Vec<usize> = scenarios.iter().map(|s| s.flows).collect();
    counts.dedup();

    let load_before = load_average();
    let mut memory = Vec::new();
    let mut measured = Vec::new();
    let mut profile = String::new();
    for flows in counts {
        let group = b.prepare(flows, &gate_lua)?;
        if o.memory {
            memory.extend(b.memory(&group)?);
        }
        let config = b.work.join(format!("envoy-{flows}.json"));
        let ports = Ports::free_from(o.port_base)?;
        envoy::write_config(&config, &b.bootstrap(&group, ports, &Listener::ALL))?;
        let names: Vec<&str> = Listener::ALL.iter().map(|l| l.name()).collect();
        eprintln!(
            "== {flows} flows: starting Envoy with the {} listeners",
            names.join(", ")
        );
        let envoy = Envoy::start(&b.envoy, &config, ports, &Listener::ALL, o.pin.then_some(0))?;
        eprintln!(
            "   ready in {} ms, VmRSS {} MiB",
            envoy.startup.as_millis(),
            envoy.rss().unwrap_or(0) >> 20
        );
        for scenario in scenarios.iter().filter(|s| s.flows == flows) {
            measured.push(b.scenario(&envoy, scenario)?);
            if o.profile && matches!(scenario.name, "sync" | "reject-401") {
                profile.push_str(&b.profile(&envoy, scenario)?);
            }
        }
    }

    let report = Report {
        date: today(),
        seconds: o.seconds,
        rounds: o.rounds,
        connections: o.connections,
        pinned: o.pin,
        load_before,
        load_after: load_average(),
        envoy_version: envoy_version(&b.envoy),
        build: build_of_filter(),
        wasm_bytes,
        measured,
        memory,
        profile: (!profile.is_empty()).then_some(profile),
    };
    let markdown = report::markdown(&report);
    let out = b.root.join(&o.out);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    for name in [format!("{}.md", report.date), "latest.md".to_string()] {
        std::fs::write(out.join(&name), &markdown).map_err(|e| format!("{name}: {e}"))?;
    }
    report::svg(&report, &out.join("latest.svg"))?;
    println!("{markdown}");
    eprintln!(
        "written: {0}/{1}.md, {0}/latest.md, {0}/latest.svg",
        o.out.display(),
        report.date
    );
    Ok(())
}

/// Which flowgate was measured: the commit, and whether filter/ had uncommitted changes.
fn build_of_filter() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !git(&["status", "--porcelain", "--", "filter"]).is_empty();
    format!(
        "{commit}{}",
        if dirty { " + uncommitted changes in filter/" } else { "" }
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn envoy_version(binary: &Path) -> String {
    let output = Command::new(binary).arg("--version").output();
    let text = output
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // `<argv0>  version: <commit>/<version>/Clean/RELEASE/BoringSSL`
    text.split_whitespace()
        .skip_while(|word| *word != "version:")
        .nth(1)
        .and_then(|build| build.split('/').nth(1))
        .map(|v| format!("Envoy {v}"))
        .unwrap_or_else(|| "Envoy".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> Options {
        Options::from(Cli::try_parse_from(std::iter::once("flowgate-bench").chain(args.iter().copied())).unwrap())
    }

    #[test]
    fn flags_keep_their_defaults_and_quick_is_a_smoke_run() {
        let o = options(&[]);
        assert_eq!((o.seconds, o.rounds, o.warmup, o.connections), (3, 3, 1, 16));
        assert!(o.memory && o.pin && !o.profile && o.only.is_none());
        assert_eq!((o.port_base, o.out.as_path()), (18900, Path::new("bench/results")));
        let o = options(&["--quick"]);
        assert_eq!((o.seconds, o.rounds, o.warmup, o.memory), (1, 1, 0, false));
        let o = options(&[
            "--quick",
            "--seconds",
            "2",
            "--only",
            "sync,pass",
            "--no-pin",
            "--seconds",
            "0",
        ]);
        assert_eq!((o.seconds, o.pin), (1, false), "the last --seconds wins, at least 1");
        assert_eq!(o.only, Some(vec!["sync".to_string(), "pass".to_string()]));
        assert!(Cli::try_parse_from(["flowgate-bench", "--port-base", "70000"]).is_err());
    }
}
