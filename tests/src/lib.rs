//! End-to-end harness: the real `flowgate.wasm` in a real Envoy in front of the real reference
//! executor, spoken to over real sockets.
//!
//! - [`Executor`] runs `flowgate-executor` on a free port with a throw-away flow file and run store,
//!   and reads back what it received through its `/_executor/*` control endpoints.
//! - [`Envoy`] generates a bootstrap that mirrors `envoy/envoy.yaml` (same filter block), with the
//!   listener and admin on free ports, and runs it.
//! - [`send`] and friends are a raw HTTP/1.1 client over `TcpStream`: ordinary clients normalise
//!   paths, and the tests need to send exactly the bytes an attacker would. [`send_h2`] shells out
//!   to curl for HTTP/2 prior knowledge.
//!
//! Nothing here builds the filter: `scripts/test.sh` does, before it runs these tests.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub mod h2;
pub mod load;

/// How long a process may take to become ready before a test gives up on it.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a socket read may block: generous, so a slow CI machine does not flake.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Where things are
// ---------------------------------------------------------------------------------------------

/// The repository root (the workspace that holds this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn must_exist(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} not found at {}: run scripts/test.sh (it installs and builds everything the \
         end-to-end tests need), or scripts/setup.sh and the release builds",
        path.display()
    );
    path
}

/// The Envoy binary: `$FLOWGATE_ENVOY`, else the project's `.venv/bin/envoy`.
pub fn envoy_binary() -> PathBuf {
    match std::env::var_os("FLOWGATE_ENVOY") {
        Some(path) => must_exist(PathBuf::from(path), "Envoy ($FLOWGATE_ENVOY)"),
        None => must_exist(repo_root().join(".venv/bin/envoy"), "Envoy"),
    }
}

/// Today's UTC date, `YYYY-MM-DD` (civil from days), for report names.
pub fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// flowgate as an Envoy HTTP filter: the wasm module and its plugin configuration (JSON text).
pub fn wasm_filter(wasm: &Path, configuration: &str) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "flowgate",
                "root_id": "flowgate",
                "vm_config": {
                    "vm_id": "flowgate",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm}}
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration
                },
                "failure_policy": "FAIL_RELOAD",
                "allow_on_headers_stop_iteration": true
            }
        }
    })
}

/// The filter under test: the release `wasm32-wasip1` build.
pub fn filter_wasm() -> PathBuf {
    must_exist(
        repo_root().join("target/wasm32-wasip1/release/flowgate.wasm"),
        "the filter (cargo build --release --target wasm32-wasip1 -p flowgate)",
    )
}

/// The reference executor's release binary, built here if it is missing.
pub fn executor_binary() -> PathBuf {
    let path = repo_root().join("target/release/flowgate-executor");
    if !path.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "-p", "flowgate-executor"])
            .current_dir(repo_root())
            .status()
            .expect("run cargo build for the executor");
        assert!(status.success(), "cargo build --release -p flowgate-executor failed");
    }
    must_exist(path, "the executor (cargo build --release -p flowgate-executor)")
}

/// A port that was free a moment ago (bound to 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "flowgate-e2e-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Keep the logs of a failing test for a look afterwards.
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Demo flows, tokens, plugin configuration
// ---------------------------------------------------------------------------------------------

/// `examples/flows.json`: the executor's flow file, with `_demo_tokens`.
pub fn demo_flows() -> Value {
    let path = repo_root().join("examples/flows.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// The `n`th public demo token of a demo flow.
pub fn demo_token(flow_id: &str, n: usize) -> String {
    demo_flows()["_demo_tokens"][flow_id][n]
        .as_str()
        .unwrap_or_else(|| panic!("examples/flows.json has no _demo_tokens.{flow_id}[{n}]"))
        .to_string()
}

/// Lowercase hex SHA-256 of a token, as `token_sha256` holds it.
pub fn sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The plugin configuration for an executor flow file: its flows' plugin-facing fields, under the
/// default prefix and the default global body limit.
pub fn plugin_config_for(flow_file: &Value) -> Value {
    let flows: Vec<Value> = flow_file["flows"]
        .as_array()
        .expect("flow file has a `flows` array")
        .iter()
        .map(|flow| {
            let mut fields = flow.as_object().expect("a flow is an object").clone();
            // The executor's EXECUTOR_ONLY_FIELDS (examples/executor/src/flows.rs).
            for field in ["steps", "run_ms"] {
                fields.remove(field);
            }
            Value::Object(fields)
        })
        .collect();
    json!({
        "webhook_path_prefix": "/v1/flow-webhook/",
        "max_body_bytes": 1048576,
        "flows": flows,
    })
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill(); // SIGKILL
        let _ = c.wait();
    }
}

fn read_log(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last lines of a log, for failure messages.
fn log_tail(path: &Path) -> String {
    let text = read_log(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The executor
// ---------------------------------------------------------------------------------------------

/// A running `flowgate-executor` with its own flow file and run store. Killed on drop.
pub struct Executor {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Executor {
    /// Writes `flow_file` (the `examples/flows.json` format) to a temp file and starts the executor
    /// on a free port with a fresh database; returns once it answers.
    pub fn start(flow_file: &Value) -> Executor {
        let dir = TempDir::new("executor");
        let flows = dir.path().join("flows.json");
        fs::write(&flows, serde_json::to_vec_pretty(flow_file).expect("serialise flows")).expect("write flows file");
        let mut executor = Executor {
            child: None,
            port: 0,
            dir,
        };
        executor.spawn();
        executor
    }

    /// The demo flows of `examples/flows.json`.
    pub fn demo() -> Executor {
        Executor::start(&demo_flows())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("executor.log")
    }

    /// Starts the process on `self.port` (0 = let it pick; the ready line tells which).
    fn spawn(&mut self) {
        let log_path = self.log_path();
        // Append: a restart keeps the earlier run's log, and its ready lines are skipped below.
        let before = read_log(&log_path).lines().count();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open executor log");
        let child = Command::new(executor_binary())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--flows")
            .arg(self.dir.path().join("flows.json"))
            .arg("--db")
            .arg(self.dir.path().join("runs.sqlite3"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn flowgate-executor");
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = read_log(&log_path)
                .lines()
                .skip(before)
                .find_map(|l| l.strip_prefix("flowgate-executor listening on http://"))
                .and_then(|addr| addr.trim().rsplit(':').next()?.parse::<u16>().ok());
            if let Some(port) = ready {
                self.port = port;
                break;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("flowgate-executor exited ({status}):\n{}", log_tail(&log_path));
            }
            assert!(
                Instant::now() < deadline,
                "flowgate-executor not ready within {READY_TIMEOUT:?}:\n{}",
                log_tail(&log_path)
            );
            sleep(Duration::from_millis(20));
        }
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "executor port {} never accepted", self.port);
            sleep(Duration::from_millis(20));
        }
    }

    /// Calls a control endpoint and returns its JSON answer; panics unless it is 2xx.
    fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut headers = vec![];
        if !body.is_empty() {
            headers.push(("content-type", "application/json"));
        }
        let response = send(self.port, method, path, &headers, body.as_bytes());
        assert!(
            (200..300).contains(&response.status),
            "executor {method} {path} answered {}: {}",
            response.status,
            response.text()
        );
        serde_json::from_slice(&response.body).unwrap_or(Value::Null)
    }

    /// Every request Envoy forwarded, oldest first (see examples/README.md for the fields).
    pub fn requests(&self) -> Vec<Value> {
        match self.control("GET", "/_executor/requests", None) {
            Value::Array(requests) => requests,
            other => panic!("/_executor/requests is not an array: {other}"),
        }
    }

    /// Asserts that nothing reached the executor; `why` says which request should have been stopped.
    pub fn assert_received_nothing(&self, why: &str) {
        let requests = self.requests();
        assert!(
            requests.is_empty(),
            "{why}: the executor should have received nothing, but got:\n{}",
            serde_json::to_string_pretty(&requests).unwrap_or_default()
        );
    }

    /// The one request the executor received; panics if there were none or several.
    pub fn only_request(&self) -> Value {
        let mut requests = self.requests();
        assert_eq!(
            requests.len(),
            1,
            "expected exactly one forwarded request, got:\n{}",
            serde_json::to_string_pretty(&requests).unwrap_or_default()
        );
        requests.remove(0)
    }

    pub fn clear_requests(&self) {
        self.control("DELETE", "/_executor/requests", None);
    }

    /// The run store: every sync and async run.
    pub fn runs(&self) -> Vec<Value> {
        match self.control("GET", "/_executor/runs", None) {
            Value::Array(runs) => runs,
            other => panic!("/_executor/runs is not an array: {other}"),
        }
    }

    /// The webhook fault, e.g. `{"mode":"status","status":500}` or `{"mode":"none"}`.
    pub fn set_fault(&self, fault: Value) {
        self.control("PUT", "/_executor/fault", Some(&fault));
    }

    /// The flow-directory fault (same shapes as [`Executor::set_fault`]).
    pub fn set_directory_fault(&self, fault: Value) {
        self.control("PUT", "/_executor/directory-fault", Some(&fault));
    }

    /// Merges `patch` shallowly into flow `id`, e.g. `{"status":"paused"}`.
    pub fn put_flow(&self, id: &str, patch: Value) {
        self.control("PUT", &format!("/_executor/flows/{id}"), Some(&patch));
    }

    /// SIGKILL: the process dies without any chance to clean up.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts it again on the same port with the same database.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

// ---------------------------------------------------------------------------------------------
// Envoy
// ---------------------------------------------------------------------------------------------

/// The plugin configuration handed to the filter.
#[derive(Clone, Debug)]
pub enum PluginConfig {
    Json(Value),
    /// Passed verbatim: for invalid-configuration tests.
    Raw(String),
}

impl PluginConfig {
    fn text(&self) -> String {
        match self {
            PluginConfig::Json(value) => value.to_string(),
            PluginConfig::Raw(text) => text.clone(),
        }
    }
}

/// How to run Envoy: the plugin configuration, where the executor is, and a few knobs.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    pub plugin_config: PluginConfig,
    pub executor_port: u16,
    /// Worker threads (each has its own wasm VM). Default 2.
    pub concurrency: u32,
    /// The route timeout to the executor (envoy/envoy.yaml: 15 s).
    pub route_timeout: Duration,
    /// Where the `flow_directory` cluster points; default: the executor.
    pub directory_port: Option<u16>,
    /// The listener's and executor cluster's `per_connection_buffer_limit_bytes`.
    pub buffer_limit: u64,
    /// How Envoy speaks to the executor: HTTP/1.1 (default), HTTP/1.1 keeping trailers
    /// (Envoy drops them by default), or HTTP/2.
    pub executor_protocol: ExecutorProtocol,
    /// Runtime keys of a static layer (`layered_runtime`), e.g. `http.async_response_buffer_limit`.
    pub runtime: Vec<(String, Value)>,
    /// The listener comes from a file through LDS, on a fixed port, so that a test can change it
    /// while Envoy runs ([`Envoy::update_listener`]).
    pub listener_from_file: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ExecutorProtocol {
    Http1,
    Http1WithTrailers,
    Http2,
}

impl EnvoyOptions {
    pub fn new(plugin_config: Value, executor_port: u16) -> EnvoyOptions {
        EnvoyOptions {
            plugin_config: PluginConfig::Json(plugin_config),
            executor_port,
            concurrency: 2,
            route_timeout: Duration::from_secs(15),
            directory_port: None,
            buffer_limit: BUFFER_LIMIT_BYTES,
            executor_protocol: ExecutorProtocol::Http1,
            runtime: Vec::new(),
            listener_from_file: false,
        }
    }

    /// A plugin configuration passed as it is, valid JSON or not.
    pub fn raw(plugin_config: &str, executor_port: u16) -> EnvoyOptions {
        EnvoyOptions {
            plugin_config: PluginConfig::Raw(plugin_config.to_string()),
            ..EnvoyOptions::new(Value::Null, executor_port)
        }
    }

    pub fn concurrency(mut self, workers: u32) -> EnvoyOptions {
        self.concurrency = workers;
        self
    }

    pub fn route_timeout(mut self, timeout: Duration) -> EnvoyOptions {
        self.route_timeout = timeout;
        self
    }

    pub fn directory_port(mut self, port: u16) -> EnvoyOptions {
        self.directory_port = Some(port);
        self
    }

    pub fn buffer_limit(mut self, bytes: u64) -> EnvoyOptions {
        self.buffer_limit = bytes;
        self
    }

    pub fn executor_protocol(mut self, protocol: ExecutorProtocol) -> EnvoyOptions {
        self.executor_protocol = protocol;
        self
    }

    pub fn runtime(mut self, key: &str, value: Value) -> EnvoyOptions {
        self.runtime.push((key.to_string(), value));
        self
    }

    pub fn listener_from_file(mut self) -> EnvoyOptions {
        self.listener_from_file = true;
        self
    }
}

/// The per-connection buffer limit of envoy/envoy.yaml: the largest `max_body_bytes` (2 MiB).
pub const BUFFER_LIMIT_BYTES: u64 = 2 * 1024 * 1024;

/// The bootstrap for `opts`, mirroring envoy/envoy.yaml except for the ports (0: Envoy picks free
/// ones, read back through the admin address file and `/listeners`) and the absolute wasm path.
pub fn envoy_bootstrap(opts: &EnvoyOptions) -> Value {
    let cluster = |name: &str, port: u16, buffer_limit: bool| {
        let mut c = json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                }}}]}]
            }
        });
        if buffer_limit {
            c["per_connection_buffer_limit_bytes"] = json!(opts.buffer_limit);
            let explicit = match opts.executor_protocol {
                ExecutorProtocol::Http1 => None,
                ExecutorProtocol::Http1WithTrailers => {
                    Some(json!({"http_protocol_options": {"enable_trailers": true}}))
                }
                ExecutorProtocol::Http2 => Some(json!({"http2_protocol_options": {}})),
            };
            if let Some(explicit) = explicit {
                c["typed_extension_protocol_options"] = json!({
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": explicit
                    }
                });
            }
        }
        c
    };
    let timeout = format!("{:.3}s", opts.route_timeout.as_secs_f64());
    let mut bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "flowgate",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "per_connection_buffer_limit_bytes": opts.buffer_limit,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "flowgate",
                        "codec_type": "AUTO",
                        "route_config": {
                            "name": "flowgate",
                            "virtual_hosts": [{
                                "name": "flowgate",
                                "domains": ["*"],
                                "routes": [{
                                    "match": {"prefix": "/"},
                                    "route": {"cluster": "flow_executor", "timeout": timeout}
                                }]
                            }]
                        },
                        "http_filters": [
                            wasm_filter(&filter_wasm(), &opts.plugin_config.text()),
                            {
                                "name": "envoy.filters.http.router",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                }
                            }
                        ]
                    }
                }]}]
            }],
            "clusters": [
                cluster("flow_executor", opts.executor_port, true),
                cluster("flow_directory", opts.directory_port.unwrap_or(opts.executor_port), false),
            ]
        }
    });
    if !opts.runtime.is_empty() {
        let layer: serde_json::Map<String, Value> = opts.runtime.iter().cloned().collect();
        bootstrap["layered_runtime"] = json!({"layers": [{"name": "static", "static_layer": layer}]});
    }
    bootstrap
}

/// A running Envoy with the filter. Killed on drop.
pub struct Envoy {
    launch: Launch,
    port: u16,
    admin_port: u16,
}

/// An Envoy that was given its configuration but has not (yet) become ready.
/// Killed on drop, so an Envoy that fails to start does not outlive its test.
struct Launch {
    child: Child,
    dir: TempDir,
}

impl Drop for Launch {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Launch {
    fn new(opts: &EnvoyOptions) -> Launch {
        let dir = TempDir::new("envoy");
        let config = dir.path().join("envoy.json");
        let mut bootstrap = envoy_bootstrap(opts);
        if opts.listener_from_file {
            let lds = dir.path().join("lds.json");
            let mut listener = bootstrap["static_resources"]["listeners"][0].take();
            listener["address"]["socket_address"]["port_value"] = json!(free_port());
            listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
            let resources = json!({"version_info": "1", "resources": [listener]});
            fs::write(&lds, serde_json::to_vec_pretty(&resources).expect("json")).expect("write lds.json");
            bootstrap["static_resources"]["listeners"] = json!([]);
            bootstrap["node"] = json!({"id": "flowgate-e2e", "cluster": "flowgate-e2e"});
            bootstrap["dynamic_resources"] =
                json!({"lds_config": {"path_config_source": {"path": lds}, "resource_api_version": "V3"}});
        }
        fs::write(&config, serde_json::to_vec_pretty(&bootstrap).expect("json")).expect("write envoy bootstrap");
        let log = fs::File::create(dir.path().join("envoy.log")).expect("create envoy log");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .arg("--concurrency")
            .arg(opts.concurrency.to_string())
            .args(["--log-level", "warn"])
            // No hot restart means no shared-memory region, so concurrent Envoys cannot clash
            // over a base id.
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(dir.path().join("admin.addr"))
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn envoy");
        Launch { child, dir }
    }

    fn log(&self) -> String {
        read_log(&self.dir.path().join("envoy.log"))
    }

    fn admin_port(&self) -> Option<u16> {
        let text = fs::read_to_string(self.dir.path().join("admin.addr")).ok()?;
        text.trim().rsplit(':').next()?.parse().ok()
    }
}

/// GET on the admin interface, as text (None if it did not answer 200).
fn admin_get(admin_port: u16, path: &str) -> Option<String> {
    let response = try_send(admin_port, "GET", path, &[], b"").ok()?;
    (response.status == 200).then(|| response.text())
}

impl Envoy {
    /// Starts Envoy and returns once the admin interface says LIVE and the listener accepts.
    pub fn start(opts: EnvoyOptions) -> Envoy {
        let mut launch = Launch::new(&opts);
        let deadline = Instant::now() + READY_TIMEOUT;
        let (admin_port, port) = loop {
            if let Ok(Some(status)) = launch.child.try_wait() {
                panic!("Envoy exited ({status}) while starting:\n{}", launch.log());
            }
            assert!(
                Instant::now() < deadline,
                "Envoy not ready within {READY_TIMEOUT:?}:\n{}",
                launch.log()
            );
            if let Some(admin) = launch.admin_port() {
                let live = admin_get(admin, "/ready").is_some_and(|t| t.trim() == "LIVE");
                let listener = live
                    .then(|| admin_get(admin, "/listeners?format=json"))
                    .flatten()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .and_then(|v| v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64());
                if let Some(port) = listener {
                    if TcpStream::connect(("127.0.0.1", port as u16)).is_ok() {
                        break (admin, port as u16);
                    }
                }
            }
            sleep(Duration::from_millis(25));
        };
        Envoy {
            launch,
            port,
            admin_port,
        }
    }

    /// Starts Envoy with a configuration the filter must refuse, asserts that it is refused, and
    /// returns Envoy's log for the test to check the message. Envoy 1.40 exits non-zero when
    /// `on_configure` returns false (checked by hand), so this waits for that exit, failing at once
    /// if Envoy becomes ready instead, and failing after READY_TIMEOUT if it does neither.
    pub fn start_expect_failure(opts: EnvoyOptions) -> String {
        let mut launch = Launch::new(&opts);
        let deadline = Instant::now() + READY_TIMEOUT;
        let outcome = loop {
            if let Ok(Some(status)) = launch.child.try_wait() {
                break Ok(status);
            }
            let ready = launch
                .admin_port()
                .and_then(|admin| admin_get(admin, "/ready"))
                .is_some_and(|t| t.trim() == "LIVE");
            if ready {
                break Err("became ready with an invalid plugin configuration");
            }
            if Instant::now() >= deadline {
                break Err("neither exited nor became ready (Envoy 1.40 exits on a refused configuration)");
            }
            sleep(Duration::from_millis(25));
        };
        let _ = launch.child.kill();
        let _ = launch.child.wait();
        let log = launch.log();
        match outcome {
            Ok(status) => assert!(
                !status.success(),
                "Envoy exited successfully with an invalid plugin configuration:\n{log}"
            ),
            Err(what) => panic!("Envoy {what}:\n{log}"),
        }
        log
    }

    /// The listener (HTTP/1.1 and h2c).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The process id (to check that Envoy was never restarted, or to read its `/proc` entry).
    pub fn pid(&self) -> u32 {
        self.launch.child.id()
    }

    /// Envoy's log so far (warn and above, including the filter's own warnings and errors).
    pub fn log(&self) -> String {
        self.launch.log()
    }

    /// The admin `/stats` text.
    pub fn stats(&self) -> String {
        admin_get(self.admin_port, "/stats").expect("admin /stats")
    }

    /// One counter or gauge from `/stats` (0 when absent), e.g. `wasmcustom.flowgate.admitted`.
    pub fn stat(&self, name: &str) -> u64 {
        self.stats()
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(": ")?;
                (key == name).then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0)
    }

    /// Sends a raw HTTP/1.1 request to the listener (see [`send`]).
    pub fn send(&self, method: &str, raw_path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        send(self.port, method, raw_path, headers, body)
    }

    /// Changes the listener of an Envoy started with [`EnvoyOptions::listener_from_file`] (a new
    /// version of its LDS file, moved into place) and returns once Envoy has taken it.
    pub fn update_listener(&self, change: impl FnOnce(&mut Value)) {
        let lds = self.launch.dir.path().join("lds.json");
        let mut resources: Value = serde_json::from_slice(&fs::read(&lds).expect("read lds.json")).expect("lds.json");
        change(&mut resources["resources"][0]);
        let version = resources["version_info"]
            .as_str()
            .unwrap_or("1")
            .parse::<u64>()
            .unwrap_or(1)
            + 1;
        resources["version_info"] = json!(version.to_string());
        let updates = self.stat("listener_manager.lds.update_success");
        let staged = self.launch.dir.path().join("lds.json.new");
        fs::write(&staged, serde_json::to_vec_pretty(&resources).expect("json")).expect("write lds.json.new");
        fs::rename(&staged, &lds).expect("move lds.json into place");
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.stat("listener_manager.lds.update_success") <= updates {
            assert!(
                Instant::now() < deadline,
                "Envoy did not take the new listener:\n{}",
                self.log()
            );
            sleep(Duration::from_millis(20));
        }
    }
}

/// The usual set-up: the executor with some flows and Envoy with the matching plugin config.
pub struct Stack {
    // Envoy first: drop order stops the proxy before its upstream.
    pub envoy: Envoy,
    pub executor: Executor,
}

impl Stack {
    /// The demo flows of `examples/flows.json`, Envoy with 2 workers.
    pub fn demo() -> Stack {
        Stack::start(&demo_flows())
    }

    pub fn start(flow_file: &Value) -> Stack {
        let executor = Executor::start(flow_file);
        let envoy = Envoy::start(EnvoyOptions::new(plugin_config_for(flow_file), executor.port()));
        Stack { envoy, executor }
    }

    /// Sends a raw HTTP/1.1 request through Envoy.
    pub fn send(&self, method: &str, raw_path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.envoy.send(method, raw_path, headers, body)
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

/// An HTTP response: status, headers in order with lowercase names, and the (de-chunked) body.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.text()))
    }
}

/// Sends one request with exactly this method and request-target (not normalised in any way) and
/// a `content-length` body, on a fresh connection, and reads the whole response. Adds `host` and
/// `content-length` unless given, and `connection: close`.
pub fn send(port: u16, method: &str, raw_path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    try_send(port, method, raw_path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {raw_path} on 127.0.0.1:{port}: {e}"))
}

fn try_send(
    port: u16,
    method: &str,
    raw_path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    exchange(port, &request_bytes(method, raw_path, headers, body, true))
}

/// The bytes of a request with a `content-length` body (added unless the headers carry a length
/// or a transfer-encoding), a `host` unless given, and `connection: close` when `close`.
fn request_bytes(method: &str, raw_path: &str, headers: &[(&str, &str)], body: &[u8], close: bool) -> Vec<u8> {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = request_head(method, raw_path, headers, close);
    if !has("content-length") && !has("transfer-encoding") && (!body.is_empty() || method != "GET") {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// Sends a request whose body goes as `transfer-encoding: chunked`, one chunk per item.
pub fn send_chunked(port: u16, method: &str, raw_path: &str, headers: &[(&str, &str)], chunks: &[&[u8]]) -> Response {
    let mut request = request_head(method, raw_path, headers, true);
    request.push_str("transfer-encoding: chunked\r\n\r\n");
    let mut request = request.into_bytes();
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    exchange(port, &request).unwrap_or_else(|e| panic!("{method} {raw_path} (chunked) on 127.0.0.1:{port}: {e}"))
}

/// Sends bytes exactly as given and reads one response.
pub fn send_raw(port: u16, request: &[u8]) -> Response {
    exchange(port, request).unwrap_or_else(|e| panic!("raw request on 127.0.0.1:{port}: {e}"))
}

/// Writes `request` (perhaps a head without the body it announces) and reads the first final
/// answer, skipping interim `1xx` ones, while the connection stays open.
pub fn send_withholding_body(port: u16, request: &[u8]) -> Response {
    let mut connection = Connection::open(port).expect("connect");
    connection.reader.get_mut().write_all(request).expect("write request");
    loop {
        let response = read_response(&mut connection.reader).expect("an answer without the body");
        if !(100..200).contains(&response.status) {
            return response;
        }
    }
}

fn request_head(method: &str, raw_path: &str, headers: &[(&str, &str)], close: bool) -> String {
    let mut head = format!("{method} {raw_path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str("host: 127.0.0.1\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        head.push_str("connection: close\r\n");
    }
    head
}

fn exchange(port: u16, request: &[u8]) -> std::io::Result<Response> {
    Connection::open(port)?.exchange(request)
}

/// One kept-alive HTTP/1.1 connection, for several requests in a row.
pub struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    pub fn open(port: u16) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Connection {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request on this connection (without `connection: close`) and reads its response.
    pub fn send(
        &mut self,
        method: &str,
        raw_path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        self.exchange(&request_bytes(method, raw_path, headers, body, false))
    }

    fn exchange(&mut self, request: &[u8]) -> std::io::Result<Response> {
        // A server may answer (413, 401...) and close before it has read the whole body: a failed
        // write is not the test's business as long as a response comes back. And no half-close
        // after the request: Envoy drops a connection whose client shuts down writing.
        let written = self.reader.get_mut().write_all(request);
        match read_response(&mut self.reader) {
            Ok(response) => Ok(response),
            Err(e) => Err(written.err().unwrap_or(e)),
        }
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

fn read_line(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a complete response",
        ));
    }
    Ok(String::from_utf8_lossy(&line)
        .trim_end_matches(['\r', '\n'])
        .to_string())
}

fn read_response(reader: &mut impl BufRead) -> std::io::Result<Response> {
    let status_line = read_line(reader)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let body = if response
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        read_chunked(reader)?
    } else if let Some(length) = response.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| invalid(format!("bad content-length {length:?}")))?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        body
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        let mut body = Vec::new();
        reader.read_to_end(&mut body)?;
        body
    };
    Ok(Response { body, ..response })
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(reader)?.is_empty() {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        read_line(reader)?;
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 prior knowledge (through curl)
// ---------------------------------------------------------------------------------------------

/// Sends one request over h2c with prior knowledge using `curl --http2-prior-knowledge`, with the
/// path as given (`--path-as-is`). The response's `:status` is `status`; header names are lowercase.
pub fn send_h2(port: u16, method: &str, raw_path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let dir = TempDir::new("h2");
    let body_in = dir.path().join("request-body");
    let body_out = dir.path().join("response-body");
    fs::write(&body_in, body).expect("write request body");
    let mut curl = Command::new("curl");
    curl.args(["--http2-prior-knowledge", "-sS", "--path-as-is", "-D", "-", "-o"])
        .arg(&body_out)
        .args(["-X", method, "--max-time", "30"]);
    for (name, value) in headers {
        curl.arg("-H").arg(format!("{name}: {value}"));
    }
    if !body.is_empty() || method != "GET" {
        curl.arg("--data-binary").arg(format!("@{}", body_in.display()));
    }
    curl.arg(format!("http://127.0.0.1:{port}{raw_path}"));
    let output = curl.output().expect("run curl (is it installed?)");
    assert!(
        output.status.success(),
        "curl --http2-prior-knowledge failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let head = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut lines = head.lines().map(|l| l.trim_end_matches('\r'));
    let status_line = lines.next().unwrap_or_default();
    assert!(
        status_line.starts_with("HTTP/2 "),
        "not an HTTP/2 response: {status_line:?}"
    );
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: fs::read(&body_out).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------------
// The envelope
// ---------------------------------------------------------------------------------------------

/// The fields of a flowgate envelope reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub status: i64,
    pub error: Option<String>,
    pub message: String,
    pub data: Value,
}

/// Parses an edge reply, asserting `content-type: application/json` and exactly the keys
/// `status`, `error`, `message`, `data` with their types.
pub fn envelope(response: &Response) -> Envelope {
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "an edge reply must be application/json, got {content_type:?} (status {}, body {:?})",
        response.status,
        response.text()
    );
    let value = response.json();
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("envelope is not an object: {value}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["data", "error", "message", "status"], "envelope keys of {value}");
    Envelope {
        status: object["status"]
            .as_i64()
            .unwrap_or_else(|| panic!("envelope status is not an integer: {value}")),
        error: match &object["error"] {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => panic!("envelope error is neither null nor a string: {other}"),
        },
        message: object["message"]
            .as_str()
            .unwrap_or_else(|| panic!("envelope message is not a string: {value}"))
            .to_string(),
        data: object["data"].clone(),
    }
}

/// Asserts an edge rejection: this HTTP status, an envelope whose `status` equals it and whose
/// `error` is `error`. Returns the envelope for further checks.
pub fn assert_rejected(response: &Response, status: u16, error: &str) -> Envelope {
    assert_eq!(
        response.status,
        status,
        "expected {status} {error}, got {} with body {:?}",
        response.status,
        response.text()
    );
    let envelope = envelope(response);
    assert_eq!(envelope.status, i64::from(status), "envelope status field");
    assert_eq!(envelope.error.as_deref(), Some(error), "envelope error field");
    envelope
}

// ---------------------------------------------------------------------------------------------
// What the executor saw
// ---------------------------------------------------------------------------------------------

/// The headers of a recorded request, as (lowercase name, value) pairs.
pub fn recorded_headers(request: &Value) -> Vec<(String, String)> {
    request["headers"]
        .as_array()
        .map(|headers| {
            headers
                .iter()
                .filter_map(|pair| Some((pair[0].as_str()?.to_string(), pair[1].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Every value of one header in a recorded request.
pub fn recorded_header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The body bytes of a recorded request.
pub fn recorded_body(request: &Value) -> Vec<u8> {
    decode_base64(request["body_b64"].as_str().unwrap_or_default())
}

/// Standard base64 (with or without padding): the executor records bodies that way.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for sextet in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_the_executor_encoding() {
        assert_eq!(decode_base64("eyJhIjoxfQ=="), br#"{"a":1}"#);
        assert_eq!(decode_base64(""), b"");
        assert_eq!(decode_base64("AP8="), [0u8, 255]);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        let raw =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let response = read_response(&mut BufReader::new(&raw[..])).expect("parse");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"abcde");
        assert_eq!(response.header("x-a"), Some("1"));
    }

    #[test]
    fn demo_tokens_match_their_digests() {
        let flows = demo_flows();
        for flow in flows["flows"].as_array().expect("flows") {
            let id = flow["id"].as_str().expect("id");
            let digests = &flow["token_sha256"];
            let tokens = flows["_demo_tokens"][id].as_array().expect("tokens");
            for token in tokens {
                let digest = sha256_hex(token.as_str().expect("token"));
                assert!(
                    digests.as_array().expect("digests").contains(&json!(digest)),
                    "{id}: demo token {token} is not among token_sha256"
                );
            }
        }
    }
}
