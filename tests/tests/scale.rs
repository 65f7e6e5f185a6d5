//! Issue 15's bench: 10 / 100,000 / 1,000,000 flows (the executor's `--generated-flows`), with
//! 1 and 2 workers, for flowgate with a live directory, the same measured with an earlier
//! flowgate build (`FLOWGATE_BEFORE_WASM`, e.g. the commit before the shared flow table) and
//! the Lua peer (`bench/lua/gate.lua` with the flows as a Lua table in its source). Minutes and
//! gigabytes, so not part of the test suite: `scripts/bench.sh --scale` runs it and writes
//! `bench/results/scale.md` (or `$FLOWGATE_SCALE_OUT`); `FLOWGATE_SCALE_FLOWS=5,100000` picks
//! the generated counts (the 5 demo flows come on top).
//!
//! Per row: from Envoy's start until the last flow is admitted on 20 replies in a row; the
//! worst reply of a prober (a wrong token for the demo flow f-1001, every 5 ms) while that
//! happened, against its worst over 200 replies after; Envoy's RSS over a plain Envoy's 2 s
//! after and 20 s after (tcmalloc gives freed memory back on `memory_allocator_manager`'s
//! interval); a pause of the last flow until 20 replies in a row are paused, and the directory
//! bytes that pause and the unpause after it moved; and wrk (`-t1 -c16`, 3 runs of 4 s, medians) on a wrong token for the last flow (the lookup and
//! the refusal, no executor) and on the seed flow f-1001: req/s and Envoy's worker CPU per request.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use flowgate_e2e::load::{Kind, Mix, Wrk, WrkOptions};
use flowgate_e2e::*;
use flowgate_testkit::envoy::bootstrap::{cluster, http_listener, route_all_to, static_bootstrap};
use serde_json::{json, Value};

const GENERATED_TOKEN: &str = "generated-flows-token-3e1f0a9d8c7b6a5f4e3d2c1b0a99887766554433";
const WRONG_TOKEN: &str = "wrong-token-5d0c1e9a7b3f2d8c4a6e0b9f1d3c7a5e8b2f4d6c0a9e1b3d";
const PAUSED: &str = r#"{"status":200,"error":"biz_logic","message":"Flow status is `paused`. Unpause to run this flow using a webhook","data":null}"#;
const STREAK: usize = 20;

#[derive(Clone, Copy, PartialEq)]
enum Peer {
    Flowgate,
    Before,
    Lua,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Flowgate => "flowgate",
            Peer::Before => "flowgate before",
            Peer::Lua => "Lua",
        }
    }
}

/// From `start`, until `check` holds for STREAK replies in a row: when that run began.
fn settled(start: Instant, mut send: impl FnMut() -> Response, check: impl Fn(&Response) -> bool) -> Duration {
    let (mut run, mut began) = (0, Duration::ZERO);
    loop {
        let at = start.elapsed();
        if check(&send()) {
            if run == 0 {
                began = at;
            }
            run += 1;
            if run == STREAK {
                return began;
            }
        } else {
            run = 0;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "not settled in 600 s");
        thread::sleep(Duration::from_millis(2));
    }
}

fn webhook(port: u16, flow_id: &str, token: &str) -> Response {
    let authorization = format!("Bearer {token}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", authorization.as_str()),
    ];
    send(port, "POST", &format!("/v1/flow-webhook/{flow_id}"), &headers, b"{}")
}

fn rss_mib(pid: u32) -> f64 {
    proc_status_kib(pid, "VmRSS").unwrap_or_default() as f64 / 1024.0
}

/// CPU time of Envoy's worker threads (`wrk:worker_*`), in microseconds.
fn worker_cpu_us(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ticks: u64 = tasks
        .flatten()
        .map(|task| task.path())
        .filter(|task| std::fs::read_to_string(task.join("comm")).is_ok_and(|n| n.starts_with("wrk:worker")))
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 * 10_000.0
}

/// Tells tcmalloc to give freed memory back (Envoy's `memory_allocator_manager`), as
/// envoy/envoy.yaml does.
fn release_memory() -> Value {
    json!({"bytes_to_release": 134217728u64, "memory_release_interval": "1s"})
}

fn plain_rss(workers: u32, executor_port: u16) -> f64 {
    let routes = route_all_to("flow_executor", Duration::from_secs(15));
    let listener = http_listener("plain", free_port(), 1 << 20, routes, Vec::new());
    let mut bootstrap = static_bootstrap(0, vec![listener], vec![cluster("flow_executor", executor_port)]);
    bootstrap["memory_allocator_manager"] = release_memory();
    let envoy = Envoy::start_bootstrap(bootstrap, workers);
    thread::sleep(Duration::from_secs(2));
    rss_mib(envoy.pid())
}

/// The Lua peer's script: the generated flows as a Lua table (as bench/src/plan.rs writes the
/// bench's), then bench/lua/gate.lua.
fn lua_script(dir: &Path, generated: usize) -> PathBuf {
    let mut lua = String::from("FLOWS = {}\n");
    let flow = |id: &str, token: &str| {
        format!(
            "F[{id:?}]={{ref=\"w\",paused=false,async=false,template=false,max=1048576,tokens={{[{token:?}]=true}}}}\n"
        )
    };
    for n in 0..generated {
        if n % 2000 == 0 {
            lua.push_str(if n == 0 {
                ";(function(F)\n"
            } else {
                "end)(FLOWS)\n;(function(F)\n"
            });
        }
        lua.push_str(&flow(&format!("g-{n:07}"), GENERATED_TOKEN));
    }
    lua.push_str("end)(FLOWS)\n");
    let seed = "F[\"f-1001\"]={ref=\"web1\",paused=false,async=false,template=true,max=1048576,tokens={[";
    lua.push_str(&format!(
        ";(function(F)\n{seed}{:?}]=true}}}}\nend)(FLOWS)\n",
        demo_token("f-1001", 0)
    ));
    let gate = std::fs::read_to_string(repo_root().join("bench/lua/gate.lua")).expect("bench/lua/gate.lua");
    let path = dir.join(format!("gate-{generated}.lua"));
    std::fs::write(&path, format!("{lua}\n{gate}")).expect("write the Lua script");
    path
}

fn start(peer: Peer, workers: u32, executor: &Executor, generated: usize, dir: &Path) -> Envoy {
    let routes = route_all_to("flow_executor", Duration::from_secs(15));
    if peer == Peer::Lua {
        let lua = json!({
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"filename": lua_script(dir, generated)},
            }
        });
        let listener = http_listener("lua", 0, 1 << 20, routes, vec![lua]);
        let mut bootstrap = static_bootstrap(0, vec![listener], vec![cluster("flow_executor", executor.port())]);
        bootstrap["memory_allocator_manager"] = release_memory();
        return Envoy::start_bootstrap(bootstrap, workers);
    }
    let config = json!({
        "webhook_path_prefix": "/v1/flow-webhook/",
        "max_body_bytes": 1048576,
        "directory": {"cluster": "flow_directory", "authority": "flow-directory", "path": "/v1/flows", "refresh_ms": 1000},
    });
    let options = EnvoyOptions::new(config, executor.port())
        .concurrency(workers)
        .runtime("http.async_response_buffer_limit", json!(512u64 << 20))
        .bootstrap("memory_allocator_manager", release_memory());
    if peer == Peer::Before {
        std::env::set_var(
            "FLOWGATE_WASM",
            std::env::var_os("FLOWGATE_BEFORE_WASM").expect("FLOWGATE_BEFORE_WASM"),
        );
    }
    let envoy = Envoy::start(options);
    std::env::remove_var("FLOWGATE_WASM");
    envoy
}

/// wrk on one kind, 3 runs of 4 s: the median req/s and worker CPU µs per request.
fn load(envoy: &Envoy, kind: Kind) -> (f64, f64) {
    let options = WrkOptions {
        threads: 1,
        connections: 16,
        duration: Duration::from_secs(4),
        delay_ms: 0,
        mix: Mix::PerThread,
    };
    let runs: Vec<(f64, f64)> = (0..3)
        .map(|_| {
            let cpu = worker_cpu_us(envoy.pid());
            let summary = Wrk::start(envoy.port(), std::slice::from_ref(&kind), &options).wait(Duration::from_secs(30));
            let cpu = worker_cpu_us(envoy.pid()) - cpu;
            (summary.rate(), cpu / summary.requests.max(1) as f64)
        })
        .collect();
    let median = |pick: fn(&(f64, f64)) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or_default()
    };
    (median(|r| r.0), median(|r| r.1))
}

struct Row {
    peer: Peer,
    workers: u32,
    flows: usize,
    serving_ms: u128,
    worst_ms: u128,
    worst_after_ms: u128,
    rss: (f64, f64),
    pause: Option<(u128, Option<u64>)>,
    refused: (f64, f64),
    sync: (f64, f64),
}

fn measure(peer: Peer, workers: u32, generated: usize, plain: f64) -> Row {
    let executor = Executor::start_with(&demo_flows(), &["--generated-flows", &generated.to_string()]);
    let dir = TempDir::new("scale");
    let started = Instant::now();
    let envoy = start(peer, workers, &executor, generated, dir.path());
    let port = envoy.port();
    // A prober refuses a wrong token for f-1001 while the flows load (its reply needs the table).
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut worst = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let _ = webhook(port, "f-1001", WRONG_TOKEN);
                worst = worst.max(sent.elapsed());
                thread::sleep(Duration::from_millis(5));
            }
            worst
        })
    };
    let last = format!("g-{:07}", generated - 1);
    let serving = settled(
        started,
        || webhook(port, &last, GENERATED_TOKEN),
        |r| r.status == 200 && r.text() == "{}",
    );
    stop.store(true, Ordering::SeqCst);
    let worst = prober.join().unwrap_or_default();
    let worst_after = (0..200)
        .map(|_| {
            let sent = Instant::now();
            let _ = webhook(port, "f-1001", WRONG_TOKEN);
            thread::sleep(Duration::from_millis(2));
            sent.elapsed().saturating_sub(Duration::from_millis(2))
        })
        .max()
        .unwrap_or_default();
    thread::sleep(Duration::from_secs(2));
    let loaded = rss_mib(envoy.pid()) - plain;
    thread::sleep(Duration::from_secs(18));
    let settled_rss = rss_mib(envoy.pid()) - plain;

    let pause = (peer != Peer::Lua).then(|| {
        let bytes = || {
            envoy
                .stats()
                .get("wasmcustom.flowgate.directory.fetched_bytes")
                .copied()
        };
        let before = bytes();
        let paused_at = Instant::now();
        executor.put_flow(&last, json!({"status": "paused"}));
        let took = settled(
            paused_at,
            || webhook(port, &last, GENERATED_TOKEN),
            |r| r.status == 200 && r.text() == PAUSED,
        );
        executor.put_flow(&last, json!({"status": "live"}));
        settled(
            Instant::now(),
            || webhook(port, &last, GENERATED_TOKEN),
            |r| r.status == 200 && r.text() == "{}",
        );
        (
            took.as_millis(),
            bytes().zip(before).map(|(after, before)| after - before),
        )
    });
    let mut refused = Kind::sync();
    refused.name = "401-last".into();
    refused.path = format!("/v1/flow-webhook/{last}");
    refused.headers = vec![
        ("content-type".into(), "application/json".into()),
        ("authorization".into(), format!("Bearer {WRONG_TOKEN}")),
    ];
    let row = Row {
        peer,
        workers,
        flows: generated + 5,
        serving_ms: serving.as_millis(),
        worst_ms: worst.as_millis(),
        worst_after_ms: worst_after.as_millis(),
        rss: (loaded, settled_rss),
        pause,
        refused: load(&envoy, refused),
        sync: load(&envoy, Kind::sync()),
    };
    println!("{}", line(&row));
    row
}

fn line(row: &Row) -> String {
    let pause = match row.pause {
        Some((ms, Some(bytes))) => format!("{ms} | {bytes}"),
        Some((ms, None)) => format!("{ms} | (whole directory)"),
        None => "— | —".into(),
    };
    format!(
        "| {} | {} | {} | {} | {} ({}) | {:.0} / {:.0} | {pause} | {:.0} / {:.1} | {:.0} / {:.1} |",
        row.peer.name(),
        row.workers,
        row.flows,
        row.serving_ms,
        row.worst_ms,
        row.worst_after_ms,
        row.rss.0,
        row.rss.1,
        row.refused.0,
        row.refused.1,
        row.sync.0,
        row.sync.1,
    )
}

#[test]
#[ignore = "minutes and gigabytes: scripts/bench.sh --scale"]
fn scale() {
    let sizes: Vec<usize> = std::env::var("FLOWGATE_SCALE_FLOWS")
        .unwrap_or_else(|_| "5,100000,1000000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let mut peers = vec![Peer::Flowgate, Peer::Lua];
    if std::env::var_os("FLOWGATE_BEFORE_WASM").is_some() {
        peers.insert(1, Peer::Before);
    }
    let mut rows = Vec::new();
    let mut plains = Vec::new();
    for workers in [1, 2] {
        let executor = Executor::demo();
        let plain = plain_rss(workers, executor.port());
        plains.push(format!(
            "{plain:.0} MiB with {workers} worker{}",
            if workers > 1 { "s" } else { "" }
        ));
        for &generated in &sizes {
            for &peer in &peers {
                rows.push(measure(peer, workers, generated, plain));
            }
        }
    }
    let mut report = format!(
        "# flowgate at scale — {}\n\n\
         `scripts/bench.sh --scale` (tests/tests/scale.rs). Flows: the reference executor's \
         `--generated-flows N` (one token per flow, no templates) plus its 5 demo flows. flowgate: a live \
         directory (the executor, `refresh_ms` 1000, Envoy's answer limit raised to 512 MiB); \
         `flowgate before`: the same with the build named by `FLOWGATE_BEFORE_WASM`; Lua: bench/lua/gate.lua \
         with the flows as a Lua table in its source (a change needs a new configuration). Every Envoy \
         runs `memory_allocator_manager` (128 MiB per second back to the system). Plain Envoy's RSS: {}.\n\n\
         - serving: from Envoy's start until the last flow is admitted on 20 replies in a row.\n\
         - worst reply while loading: a prober's wrong token for f-1001 every 5 ms until then (its worst over \
         200 replies after).\n\
         - RSS over plain: 2 s after serving / 20 s after.\n\
         - pause: from pausing the last flow in the executor until 20 replies in a row are paused; then it \
         is unpaused, and the directory bytes fetched for both changes.\n\
         - 401 on the last flow (the lookup and the refusal, no executor) and sync on the seed flow f-1001 \
         (executor-bound): wrk -t1 -c16, the median of 3 runs of 4 s: req/s / Envoy worker CPU µs per request.\n\n\
         | peer | workers | flows | serving (ms) | worst reply while loading, ms (after) | RSS over plain, MiB (2 s / 20 s) | pause applies (ms) | pause + unpause moved (bytes) | 401 last flow: req/s / µs | sync: req/s / µs |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        today(),
        plains.join(", "),
    );
    for row in &rows {
        report.push_str(&line(row));
        report.push('\n');
    }
    let out = std::env::var("FLOWGATE_SCALE_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("bench/results/scale.md"));
    std::fs::write(&out, &report).expect("write the scale report");
    println!("{report}\nwritten to {}", out.display());
}
