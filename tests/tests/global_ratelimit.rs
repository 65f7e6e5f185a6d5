//! Fleet-wide rate limits (contract 8): two Envoys from `examples/global-ratelimit/envoy.yaml`
//! (flowgate, then Envoy's global rate-limit filter) share one limit per flow, counted by
//! `flowgate-rls` (Envoy's rate-limit gRPC API over Kuadrant's limitador) in Redis.
//!
//! Needs `redis-server` and the `flowgate-rls` build, so it is not part of every run:
//! `scripts/global-ratelimit.sh` installs and builds them, then runs this test with `--ignored`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowgate_e2e::*;
use serde_json::{json, Value};

const TOKEN: &str = "global-e2e-9c2f7a1d5e8b3f6a0c4d9e2b7f1a5c8d3e6b0f4a9c2d7e1b5f";
/// The fleet-wide limit of `g-limited`: this many deliveries in 60 s, across both Envoys.
const LIMIT: usize = 10;
const SENT: usize = 30;

/// Kills the process on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis(port: u16, dir: &TempDir) -> Running {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server (scripts/global-ratelimit.sh installs it)");
    let deadline = Instant::now() + READY_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server never listened on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Running(child)
}

/// Starts flowgate-rls; returns it and its port (from its ready line).
fn rls(redis_port: u16) -> (Running, u16) {
    let binary = repo_root().join("examples/global-ratelimit/target/release/flowgate-rls");
    let mut child = Command::new(&binary)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--redis",
            &format!("redis://127.0.0.1:{redis_port}"),
        ])
        .args(["--limit", &format!("g-limited={LIMIT}/60")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/global-ratelimit.sh builds it)", binary.display()));
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("flowgate-rls ready line");
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("flowgate-rls said {line:?}"));
    (Running(child), port)
}

/// `examples/global-ratelimit/envoy.yaml` with free ports, this executor and service, and the
/// test's flows as its plugin configuration.
fn shipped_envoy(plugin: &Value, executor_port: u16, rls_port: u16) -> Envoy {
    let mut bootstrap = yaml_documents(&repo_root().join("examples/global-ratelimit/envoy.yaml")).remove(0);
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = json!(free_port());
    let listener = &mut bootstrap["static_resources"]["listeners"][0];
    listener["address"]["socket_address"]["port_value"] = json!(free_port());
    let manager = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
    let wasm = &mut manager["http_filters"][0]["typed_config"]["config"];
    wasm["vm_config"]["code"]["local"]["filename"] = json!(filter_wasm());
    wasm["configuration"]["value"] = json!(plugin.to_string());
    for cluster in bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters")
    {
        let port = match cluster["name"].as_str() {
            Some("flow_executor") => executor_port,
            Some("rate_limit_service") => rls_port,
            other => panic!("unexpected cluster {other:?}"),
        };
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
            ["port_value"] = json!(port);
    }
    Envoy::start_bootstrap(bootstrap, 2)
}

fn flow(id: &str) -> Value {
    json!({"id": id, "ref_id": "web1", "status": "live", "token_sha256": [sha256_hex(TOKEN)],
           "steps": [{"ref_id": "res1", "values": {"value": "'ok'"}}]})
}

#[test]
#[ignore = "needs redis-server and flowgate-rls: run scripts/global-ratelimit.sh"]
fn a_flow_limit_holds_across_two_envoys() {
    let dir = TempDir::new("global-ratelimit");
    let redis_port = free_port();
    let _redis = redis(redis_port, &dir);
    let (_rls, rls_port) = rls(redis_port);
    let flows = json!({"flows": [flow("g-limited"), flow("g-free")]});
    let executor = Executor::start(&flows);
    let plugin = plugin_config_for(&flows);
    let envoys = [
        shipped_envoy(&plugin, executor.port(), rls_port),
        shipped_envoy(&plugin, executor.port(), rls_port),
    ];
    let bearer = format!("Bearer {TOKEN}");
    let send = |envoy: &Envoy, flow: &str| {
        let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
        envoy.send("POST", &format!("/v1/flow-webhook/{flow}"), &headers, b"{}")
    };

    // Strangers are refused by flowgate before the rate-limit filter: they spend nothing.
    for envoy in &envoys {
        let stranger = envoy.send(
            "POST",
            "/v1/flow-webhook/g-limited",
            &[("authorization", "Bearer nope")],
            b"{}",
        );
        assert_rejected(&stranger, 401, "unauthorized");
    }
    let mut admitted = [0usize; 2];
    let mut limited = [0usize; 2];
    for i in 0..SENT {
        let response = send(&envoys[i % 2], "g-limited");
        match response.status {
            200 => admitted[i % 2] += 1,
            _ => {
                let envelope = assert_rejected(&response, 429, "rate_limited");
                assert!(envelope.message.contains("retry later"));
                assert_eq!(response.header("retry-after"), Some("1"));
                limited[i % 2] += 1;
            }
        }
    }
    let received = executor
        .requests()
        .iter()
        .filter(|r| recorded_header(&recorded_headers(r), "x-flowgate-flow-id") == ["g-limited"])
        .count();
    println!(
        "global rate limit {LIMIT}/60 s on g-limited, {SENT} deliveries alternating over two Envoys: \
         admitted {admitted:?} (A, B), 429 {limited:?}, executor received {received}"
    );
    assert_eq!(
        admitted.iter().sum::<usize>(),
        LIMIT,
        "the limit holds across both Envoys"
    );
    assert!(
        admitted.iter().all(|&n| n > 0),
        "both Envoys admitted some: {admitted:?}"
    );
    assert_eq!(received, LIMIT, "nothing over the limit reached the executor");
    for envoy in &envoys {
        assert_eq!(
            envoy.stat("wasmcustom.flowgate.requests.rate_limited") as usize,
            limited[envoys.iter().position(|e| e.port() == envoy.port()).unwrap_or(0)]
        );
    }

    // Another flow has no limit in the service: untouched.
    for i in 0..SENT {
        assert_eq!(send(&envoys[i % 2], "g-free").status, 200);
    }
    let _ = fs::remove_dir_all(dir.path());
}
