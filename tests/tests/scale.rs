//! Issue 15's bench: a live directory of 10 / 100,000 / 1,000,000 flows (the executor's
//! `--generated-flows`), with 1 and 2 workers: Envoy's memory over plain Envoy, the time
//! from Envoy's start to serving the last flow on every reply, the time a pause takes to
//! apply, the bytes it moved, and sync req/s on the seed flow. Minutes and gigabytes, so
//! not part of the test suite: `scripts/bench.sh --scale` runs it and writes
//! `bench/results/scale.md` (or `$FLOWGATE_SCALE_OUT`). `FLOWGATE_SCALE_FLOWS=10,100000`
//! picks the sizes.

use std::thread;
use std::time::{Duration, Instant};

use flowgate_e2e::load::{Kind, Mix, Wrk, WrkOptions};
use flowgate_e2e::*;
use serde_json::json;

const GENERATED_TOKEN: &str = "generated-flows-token-3e1f0a9d8c7b6a5f4e3d2c1b0a99887766554433";
const PAUSED: &str = r#"{"status":200,"error":"biz_logic","message":"Flow status is `paused`. Unpause to run this flow using a webhook","data":null}"#;
const STREAK: usize = 20;

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
        assert!(start.elapsed() < Duration::from_secs(300), "not settled in 300 s");
        thread::sleep(Duration::from_millis(2));
    }
}

fn webhook(envoy: &Envoy, flow_id: &str) -> Response {
    let authorization = format!("Bearer {GENERATED_TOKEN}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", authorization.as_str()),
    ];
    envoy.send("POST", &format!("/v1/flow-webhook/{flow_id}"), &headers, b"{}")
}

fn rss_mib(pid: u32) -> f64 {
    proc_status_kib(pid, "VmRSS").unwrap_or_default() as f64 / 1024.0
}

/// Plain Envoy's RSS with `workers` (its router alone, to the executor).
fn plain_rss(workers: u32, executor_port: u16) -> f64 {
    use flowgate_testkit::envoy::bootstrap::*;
    let routes = route_all_to("flow_executor", Duration::from_secs(15));
    let listener = http_listener("plain", free_port(), 1 << 20, routes, Vec::new());
    let bootstrap = static_bootstrap(0, vec![listener], vec![cluster("flow_executor", executor_port)]);
    let envoy = Envoy::start_bootstrap(bootstrap, workers);
    thread::sleep(Duration::from_secs(1));
    rss_mib(envoy.pid())
}

struct Row {
    workers: u32,
    flows: usize,
    start_ms: u128,
    rss_over_mib: f64,
    pause_ms: u128,
    pause_bytes: u64,
    rps: f64,
}

fn measure(workers: u32, generated: usize, plain: f64) -> Row {
    let executor = Executor::start_with(&demo_flows(), &["--generated-flows", &generated.to_string()]);
    let config = json!({
        "webhook_path_prefix": "/v1/flow-webhook/",
        "max_body_bytes": 1048576,
        "directory": {"cluster": "flow_directory", "authority": "flow-directory", "path": "/v1/flows", "refresh_ms": 1000},
    });
    let options = EnvoyOptions::new(config, executor.port())
        .concurrency(workers)
        .runtime("http.async_response_buffer_limit", json!(512u64 << 20));
    let started = Instant::now();
    let envoy = Envoy::start(options);
    let last = format!("g-{:07}", generated - 1);
    let admitted = |r: &Response| r.status == 200 && r.text() == "{}";
    let start = settled(started, || webhook(&envoy, &last), admitted);
    thread::sleep(Duration::from_secs(2));
    let rss = rss_mib(envoy.pid());

    let bytes = || envoy.stat("wasmcustom.flowgate.directory.fetched_bytes");
    let before = bytes();
    let paused_at = Instant::now();
    executor.put_flow(&last, json!({"status": "paused"}));
    let pause = settled(
        paused_at,
        || webhook(&envoy, &last),
        |r| r.status == 200 && r.text() == PAUSED,
    );
    let pause_bytes = bytes() - before;

    let options = WrkOptions {
        threads: 1,
        connections: 16,
        duration: Duration::from_secs(5),
        delay_ms: 0,
        mix: Mix::PerThread,
    };
    let summary = Wrk::start(envoy.port(), &[Kind::sync()], &options).wait(Duration::from_secs(30));
    let row = Row {
        workers,
        flows: generated + 5,
        start_ms: start.as_millis(),
        rss_over_mib: rss - plain,
        pause_ms: pause.as_millis(),
        pause_bytes,
        rps: summary.rate(),
    };
    println!(
        "{} workers, {} flows: serving after {} ms, RSS +{:.0} MiB, a pause applies after {} ms ({} bytes), sync {:.0} req/s",
        row.workers, row.flows, row.start_ms, row.rss_over_mib, row.pause_ms, row.pause_bytes, row.rps
    );
    row
}

#[test]
#[ignore = "minutes and gigabytes: scripts/bench.sh --scale"]
fn scale() {
    let sizes: Vec<usize> = std::env::var("FLOWGATE_SCALE_FLOWS")
        .unwrap_or_else(|_| "5,100000,1000000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let mut rows = Vec::new();
    for workers in [1, 2] {
        let executor = Executor::demo();
        let plain = plain_rss(workers, executor.port());
        println!("plain Envoy, {workers} workers: RSS {plain:.0} MiB");
        for &generated in &sizes {
            rows.push(measure(workers, generated, plain));
        }
    }
    let mut report = format!(
        "# flowgate at scale — {}\n\n\
         A live directory served by the reference executor (`--generated-flows N`: one token per flow, \
         no templates, plus the 5 demo flows), `refresh_ms` 1000, Envoy's answer limit raised to 512 MiB. \
         `serving`: from Envoy's start until the last flow is admitted on 20 replies in a row. \
         `RSS over plain`: Envoy's VmRSS 2 s later minus a plain Envoy's with as many workers. \
         `pause`: from pausing the last flow in the executor until 20 replies in a row are the paused reply, \
         and the directory bytes fetched meanwhile. `sync req/s`: wrk -t1 -c16, 5 s, on the seed flow f-1001.\n\n\
         | workers | flows | serving (ms) | RSS over plain (MiB) | pause applies (ms) | pause moved (bytes) | sync req/s |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
        today()
    );
    for row in &rows {
        report.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {} | {:.0} |\n",
            row.workers, row.flows, row.start_ms, row.rss_over_mib, row.pause_ms, row.pause_bytes, row.rps
        ));
    }
    let out = std::env::var("FLOWGATE_SCALE_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("bench/results/scale.md"));
    std::fs::write(&out, &report).expect("write the scale report");
    println!("{report}\nwritten to {}", out.display());
}
