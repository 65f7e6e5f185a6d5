//! flowgate-bench: drives the same webhook traffic through three listeners of one Envoy —
//! plain routing (the limit), Envoy's Lua filter doing the equivalent work, and flowgate —
//! alternating them round by round, and writes a Markdown report and an SVG chart.
//!
//! Run it through `scripts/bench.sh`, which builds flowgate.wasm first. Run from the
//! repository root; it writes generated configs to bench/work/ and results to bench/results/.

mod envoy;
mod plan;
mod report;
mod wrk;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::{CommandFactory, Parser};
use envoy::{Envoy, Filters, Ports};
use flowgate_testkit::today;
use plan::{Demo, Listener, Scenario};
use report::{Measured, Memory, Report};

/// Drives the same webhook traffic through plain Envoy, Envoy's Lua filter and flowgate (one Envoy,
/// three listeners, alternated round by round) and writes a Markdown report and an SVG chart. Run
/// it from the repository root, through scripts/bench.sh.
#[derive(Debug, Parser)]
#[command(name = "flowgate-bench", args_override_self = true)]
struct Cli {
    /// Smoke test: --seconds 1 --rounds 1 --warmup 0 --no-memory (explicit values of those win)
    #[arg(long)]
    quick: bool,
    /// Length of each measured wrk run [default: 3]
    #[arg(long, value_name = "N")]
    seconds: Option<u32>,
    /// Rounds; each runs every listener once, in rotating order [default: 5]
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
    /// Admin port; listeners at N+1..N+3, upstream at N+80 (moved up when one of them is taken)
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
            rounds: cli.rounds.unwrap_or(quick(5, 1)).max(1),
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

/// Everything one group of scenarios (same flow count) needs on disk.
struct Group {
    flows: usize,
    plugin_config: String,
    lua_script: PathBuf,
}

struct Bench<'a> {
    o: &'a Options,
    root: PathBuf,
    work: PathBuf,
    demo: Demo,
    wasm: PathBuf,
    envoy: PathBuf,
    wrk_script: PathBuf,
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
        eprintln!("== {flows} flows: starting Envoy with the plain, lua and flowgate listeners");
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

impl Bench<'_> {
    /// Writes the Lua peer's script for `flows` flows and builds flowgate's configuration.
    fn prepare(&self, flows: usize, gate_lua: &str) -> Result<Group, String> {
        eprintln!("== {flows} flows: generating configurations");
        let lua_script = self.work.join(format!("lua-{flows}.lua"));
        let lua = format!("{}\n{gate_lua}", self.demo.lua_table(flows));
        std::fs::write(&lua_script, lua).map_err(|e| format!("{}: {e}", lua_script.display()))?;
        Ok(Group {
            flows,
            plugin_config: self.demo.plugin_config(flows),
            lua_script,
        })
    }

    fn bootstrap(&self, group: &Group, ports: Ports, listeners: &[Listener]) -> serde_json::Value {
        let filters = Filters {
            wasm: &self.wasm,
            plugin_config: &group.plugin_config,
            lua_script: &group.lua_script,
        };
        envoy::bootstrap(ports, listeners, &filters)
    }

    /// VmRSS of an Envoy with plain routing only, then with the Lua or the flowgate listener added.
    fn memory(&self, group: &Group) -> Result<Vec<Memory>, String> {
        let variants: [(&str, &[Listener]); 3] = [
            ("plain only", &[Listener::Plain]),
            ("plain + lua", &[Listener::Plain, Listener::Lua]),
            ("plain + flowgate", &[Listener::Plain, Listener::Flowgate]),
        ];
        let warm = plan::scenarios()
            .into_iter()
            .find(|s| s.name == "sync")
            .ok_or("no sync scenario")?;
        let mut rows = Vec::new();
        for (variant, (what, listeners)) in variants.into_iter().enumerate() {
            let config = self.work.join(format!("envoy-{}-memory-{variant}.json", group.flows));
            let ports = Ports::free_from(self.o.port_base)?;
            envoy::write_config(&config, &self.bootstrap(group, ports, listeners))?;
            let envoy = Envoy::start(&self.envoy, &config, ports, listeners, self.o.pin.then_some(0))?;
            for &listener in listeners {
                self.load(&envoy, &warm, listener, 1)?;
            }
            std::thread::sleep(Duration::from_millis(300));
            let rss = envoy.rss().ok_or("cannot read Envoy's VmRSS")?;
            eprintln!(
                "   memory: {what}, {} flows: {} MiB, ready in {} ms",
                group.flows,
                rss >> 20,
                envoy.startup.as_millis()
            );
            rows.push(Memory {
                what: what.to_string(),
                flows: group.flows,
                rss,
                startup_ms: envoy.startup.as_millis(),
            });
        }
        Ok(rows)
    }

    fn body_file(&self, scenario: &Scenario) -> Result<PathBuf, String> {
        let name = match scenario.body_bytes {
            Some(size) => format!("body-{size}.json"),
            None => "body-seed.json".to_string(),
        };
        let path = self.work.join(name);
        if !path.exists() {
            std::fs::write(&path, plan::request_body(scenario.body_bytes))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(path)
    }

    fn token(&self, scenario: &Scenario) -> String {
        let flow_id = scenario.path.rsplit('/').next().unwrap_or_default();
        let valid = self
            .demo
            .token(flow_id)
            .unwrap_or("demo-f1001-abd18be68e49faca35b3f8e5da4b78ee7ce5adf2b1a314cb");
        if scenario.valid_token {
            valid.to_string()
        } else {
            // Same shape and length as a real token, so only the check differs.
            format!("{}{}", &valid[..11], "x".repeat(valid.len() - 11))
        }
    }

    fn load(&self, envoy: &Envoy, scenario: &Scenario, listener: Listener, seconds: u32) -> Result<wrk::Run, String> {
        self.load_with(envoy, scenario, listener, seconds, self.o.connections, None)
    }

    fn load_with(
        &self,
        envoy: &Envoy,
        scenario: &Scenario,
        listener: Listener,
        seconds: u32,
        connections: u32,
        delay_ms: Option<u32>,
    ) -> Result<wrk::Run, String> {
        let body_file = self.body_file(scenario)?;
        let token = self.token(scenario);
        wrk::run(&wrk::Load {
            url: format!("http://127.0.0.1:{}{}", envoy.ports.listener(listener), scenario.path),
            seconds,
            connections,
            script: &self.wrk_script,
            token: &token,
            body_file: &body_file,
            cpu: self.o.pin.then_some(1),
            delay_ms,
        })
    }

    /// Checks each listener's answer once, then measures the rounds.
    fn scenario(&self, envoy: &Envoy, scenario: &Scenario) -> Result<Measured, String> {
        eprintln!("-- {}: {}", scenario.name, scenario.what);
        let body = std::fs::read(self.body_file(scenario)?).map_err(|e| e.to_string())?;
        let authorization = format!("Bearer {}", self.token(scenario));
        let mut probe = [(0, false); 3];
        let mut answers: Vec<Vec<u8>> = Vec::new();
        for listener in Listener::ALL {
            let response = envoy::request(
                envoy.ports.listener(listener),
                "POST",
                scenario.path,
                &[("authorization", &authorization), ("content-type", "application/json")],
                &body,
            )
            .map_err(|e| format!("{} probe on {}: {e}", scenario.name, listener.name()))?;
            let expected = match listener {
                Listener::Plain if scenario.path.ends_with("f-1003") => 202,
                Listener::Plain => 200,
                _ => scenario.status,
            };
            if response.status != expected {
                return Err(format!(
                    "{} probe on {}: expected {expected}, got {}: {}",
                    scenario.name,
                    listener.name(),
                    response.status,
                    String::from_utf8_lossy(&response.body)
                ));
            }
            probe[listener.index()] = (response.status, response.header("connection") == Some("close"));
            answers.push(response.body);
        }
        if answers[1] != answers[2] {
            eprintln!(
                "   note: lua and flowgate answer differently:\n     lua:      {}\n     flowgate: {}",
                String::from_utf8_lossy(&answers[1]),
                String::from_utf8_lossy(&answers[2])
            );
        }
        if self.o.warmup > 0 {
            for listener in Listener::ALL {
                self.load(envoy, scenario, listener, self.o.warmup)?;
            }
        }
        let mut runs: [Vec<wrk::Run>; 3] = Default::default();
        let mut new_connections: [Vec<f64>; 3] = Default::default();
        for round in 0..self.o.rounds as usize {
            for k in 0..3 {
                let listener = Listener::ALL[(round + k) % 3];
                let counter = format!("http.{}.downstream_cx_total", listener.name());
                let before = envoy.counter(&counter).unwrap_or(0);
                let run = self.load(envoy, scenario, listener, self.o.seconds)?;
                let after = envoy.counter(&counter).unwrap_or(0);
                eprintln!(
                    "   round {} {:<8} {:>8.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs{}",
                    round + 1,
                    listener.name(),
                    run.requests_per_sec,
                    run.p50_us,
                    run.p99_us,
                    if run.socket_errors > 0 {
                        format!("  socket errors {}", run.socket_errors)
                    } else {
                        String::new()
                    }
                );
                new_connections[listener.index()]
                    .push(after.saturating_sub(before) as f64 * 1000.0 / run.requests.max(1) as f64);
                runs[listener.index()].push(run);
            }
        }
        // One connection: no queueing in Envoy, so latency is the per-request service time.
        let mut single: [wrk::Run; 3] = Default::default();
        for listener in Listener::ALL {
            single[listener.index()] = self.load_with(envoy, scenario, listener, self.o.seconds, 1, None)?;
        }
        // The same connections, paced to half the slowest listener's rate: latency with
        // concurrency but without a saturated worker's queue.
        let slowest = runs
            .iter()
            .map(|r| report::median(r.iter().map(|run| run.requests_per_sec).collect()))
            .fold(f64::INFINITY, f64::min);
        let delay_ms = plan::pacing_delay_ms(self.o.connections, slowest);
        let mut paced: [wrk::Run; 3] = Default::default();
        for listener in Listener::ALL {
            paced[listener.index()] = self.load_with(
                envoy,
                scenario,
                listener,
                self.o.seconds,
                self.o.connections,
                Some(delay_ms),
            )?;
        }
        Ok(Measured {
            scenario: scenario.clone(),
            runs,
            new_connections,
            probe,
            single,
            paced,
            delay_ms,
        })
    }

    /// `perf record -e cpu-clock` of Envoy while one listener is loaded, as worker CPU time per
    /// request, split by where the code lives. Envoy's binary is stripped and V8's generated code
    /// has no symbols, so this is the finest split available: Envoy itself (HTTP, the V8 and
    /// LuaJIT runtimes, host calls), the kernel (sockets), and JIT code (the wasm filter under
    /// V8 / the Lua script under LuaJIT).
    fn profile(&self, envoy: &Envoy, scenario: &Scenario) -> Result<String, String> {
        const HZ: u32 = 4999;
        let mut out = format!(
            "**{}** — worker thread CPU µs per request (samples at {HZ} Hz over one {} s run):\n\n\
             | listener | req/s | total | envoy binary | kernel | JIT code | libc | other |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|\n",
            scenario.name, self.o.seconds
        );
        for listener in Listener::ALL {
            let data = self
                .work
                .join(format!("perf-{}-{}.data", scenario.name, listener.name()));
            let mut perf = Command::new("perf")
                .args(["record", "-e", "cpu-clock", "-F", &HZ.to_string(), "-o"])
                .arg(&data)
                .args([
                    "-p",
                    &envoy.pid().to_string(),
                    "--",
                    "sleep",
                    &(self.o.seconds + 1).to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run perf: {e} (apt-get install linux-perf)"))?;
            std::thread::sleep(Duration::from_millis(500));
            let run = self.load(envoy, scenario, listener, self.o.seconds)?;
            let _ = perf.wait();
            let report = Command::new("perf")
                .args(["report", "--stdio", "-q", "-n", "--sort", "comm,dso", "-i"])
                .arg(&data)
                .output()
                .map_err(|e| e.to_string())?;
            let mut split = [0u64; 5];
            for line in String::from_utf8_lossy(&report.stdout).lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                let [_, samples, comm, dso @ ..] = words.as_slice() else {
                    continue;
                };
                if !comm.starts_with("wrk:worker") {
                    continue;
                }
                let slot = match dso.first().copied().unwrap_or_default() {
                    "envoy" => 0,
                    "[kernel.kallsyms]" => 1,
                    "[JIT]" => 2,
                    "libc.so.6" => 3,
                    _ => 4,
                };
                split[slot] += samples.parse::<u64>().unwrap_or(0);
            }
            let per_request = |samples: u64| samples as f64 * 1e6 / f64::from(HZ) / run.requests.max(1) as f64;
            out.push_str(&format!(
                "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                listener.name(),
                run.requests_per_sec,
                per_request(split.iter().sum()),
                per_request(split[0]),
                per_request(split[1]),
                per_request(split[2]),
                per_request(split[3]),
                per_request(split[4]),
            ));
        }
        out.push('\n');
        Ok(out)
    }
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
        assert_eq!((o.seconds, o.rounds, o.warmup, o.connections), (3, 5, 1, 16));
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
