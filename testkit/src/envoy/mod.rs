//! Envoy for tests and benchmarks: the bootstraps ([`bootstrap`]), the launcher ([`Process`]:
//! one Envoy on a written config, its log, its admin address, killed on drop), the admin
//! interface ([`admin_get`], [`server_info`]), and [`Envoy`], the end-to-end tests' Envoy with
//! the filter in front of the executor.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::{send, try_send, Response};
use crate::stats::Stats;
use crate::{free_port, must_exist, proc_status_kib, read_log, repo_root, TempDir, READY_TIMEOUT};

pub mod bootstrap;

pub use bootstrap::{
    envoy_bootstrap, filter_wasm, wasm_filter, EnvoyOptions, ExecutorProtocol, PluginConfig, BUFFER_LIMIT_BYTES,
};

/// The Envoy binary: `$FLOWGATE_ENVOY`, else the project's `.venv/bin/envoy`.
pub fn envoy_binary() -> PathBuf {
    match std::env::var_os("FLOWGATE_ENVOY") {
        Some(path) => must_exist(PathBuf::from(path), "Envoy ($FLOWGATE_ENVOY)"),
        None => must_exist(repo_root().join(".venv/bin/envoy"), "Envoy"),
    }
}

// ---------------------------------------------------------------------------------------------
// The launcher
// ---------------------------------------------------------------------------------------------

/// One Envoy process started on a bootstrap file, not necessarily ready yet. Its log (stdout and
/// stderr, level warn) goes beside the config with the extension `log`, its admin address to
/// the extension `admin`. Killed (SIGKILL) on drop, so an Envoy that fails to start does not
/// outlive its test.
pub struct Process {
    child: Child,
    log: PathBuf,
    admin_address: PathBuf,
}

impl Process {
    /// Starts `binary -c config` with `concurrency` workers, pinned to `cpu` (with `taskset`) if
    /// given, from the repository root.
    pub fn spawn(binary: &Path, config: &Path, concurrency: u32, cpu: Option<u32>) -> Result<Process, String> {
        Process::spawn_with_env(binary, config, concurrency, cpu, &[])
    }

    /// [`Process::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        binary: &Path,
        config: &Path,
        concurrency: u32,
        cpu: Option<u32>,
        env: &[(String, String)],
    ) -> Result<Process, String> {
        let log = config.with_extension("log");
        let admin_address = config.with_extension("admin");
        let log_file = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let stdout = log_file.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("-c")
            .arg(config)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .args(["--log-level", "warn"])
            // No hot restart means no shared-memory region, so concurrent Envoys cannot clash
            // over a base id.
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_address)
            .envs(env.iter().map(|(name, value)| (name, value)))
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        Ok(Process {
            child,
            log,
            admin_address,
        })
    }

    /// The exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id (`.venv/bin/envoy` and `taskset` exec the real binary, so this is Envoy's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// The admin port, once Envoy has written its admin address.
    pub fn admin_port(&self) -> Option<u16> {
        let text = fs::read_to_string(&self.admin_address).ok()?;
        text.trim().rsplit(':').next()?.parse().ok()
    }

    /// Whether the admin interface says `LIVE`.
    pub fn live(&self) -> bool {
        self.admin_port()
            .and_then(|admin| admin_get(admin, "/ready"))
            .is_some_and(|t| t.trim() == "LIVE")
    }

    /// Resident memory (VmRSS) in bytes.
    pub fn rss(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmRSS").map(|kib| kib * 1024)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// The admin interface
// ---------------------------------------------------------------------------------------------

/// GET on the admin interface, as text (None if it did not answer 200).
pub fn admin_get(admin_port: u16, path: &str) -> Option<String> {
    let response = try_send(admin_port, "GET", path, &[], b"").ok()?;
    (response.status == 200).then(|| response.text())
}

/// The admin `/stats` (or a `/stats?filter=...`) answer, parsed.
pub fn admin_stats(admin_port: u16, path: &str) -> Option<Stats> {
    admin_get(admin_port, path).map(|text| Stats::parse(&text))
}

/// What Envoy's admin `/server_info` says about the process.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    pub state: String,
    pub uptime_current_epoch_s: u64,
    pub uptime_all_epochs_s: u64,
}

/// Envoy's admin `/server_info`, or None if it does not answer.
pub fn server_info(admin_port: u16) -> Option<ServerInfo> {
    let value: Value = serde_json::from_str(&admin_get(admin_port, "/server_info")?).ok()?;
    let seconds = |key: &str| value[key].as_str()?.trim_end_matches('s').parse::<u64>().ok();
    Some(ServerInfo {
        state: value["state"].as_str()?.to_string(),
        uptime_current_epoch_s: seconds("uptime_current_epoch")?,
        uptime_all_epochs_s: seconds("uptime_all_epochs")?,
    })
}

// ---------------------------------------------------------------------------------------------
// The end-to-end tests' Envoy
// ---------------------------------------------------------------------------------------------

/// A running Envoy with the filter ([`envoy_bootstrap`]) in a temp dir of its own. Killed on drop.
pub struct Envoy {
    process: Process,
    dir: TempDir,
    port: u16,
    admin_port: u16,
}

/// Writes the bootstrap for `opts` (and its LDS file) into a fresh temp dir and starts Envoy on it.
fn launch(opts: &EnvoyOptions) -> (Process, TempDir) {
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
    let process = Process::spawn_with_env(&envoy_binary(), &config, opts.concurrency, None, &opts.host_env)
        .unwrap_or_else(|e| panic!("{e}"));
    (process, dir)
}

impl Envoy {
    /// Starts Envoy and returns once the admin interface says LIVE and the listener accepts.
    pub fn start(opts: EnvoyOptions) -> Envoy {
        let (process, dir) = launch(&opts);
        Envoy::ready(process, dir)
    }

    /// Starts Envoy on a bootstrap made elsewhere (a shipped example with its ports replaced).
    pub fn start_bootstrap(bootstrap: Value, concurrency: u32) -> Envoy {
        let dir = TempDir::new("envoy");
        let config = dir.path().join("envoy.json");
        fs::write(&config, serde_json::to_vec_pretty(&bootstrap).expect("json")).expect("write envoy bootstrap");
        let process = Process::spawn(&envoy_binary(), &config, concurrency, None).unwrap_or_else(|e| panic!("{e}"));
        Envoy::ready(process, dir)
    }

    /// Waits until the admin interface says LIVE and the first listener accepts.
    fn ready(mut process: Process, dir: TempDir) -> Envoy {
        let deadline = Instant::now() + READY_TIMEOUT;
        let (admin_port, port) = loop {
            if let Some(status) = process.exited() {
                panic!("Envoy exited ({status}) while starting:\n{}", process.log());
            }
            assert!(
                Instant::now() < deadline,
                "Envoy not ready within {READY_TIMEOUT:?}:\n{}",
                process.log()
            );
            if let Some(admin) = process.admin_port() {
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
            process,
            dir,
            port,
            admin_port,
        }
    }

    /// Starts Envoy with a configuration the filter must refuse, asserts that it is refused, and
    /// returns Envoy's log for the test to check the message. Envoy 1.40 exits non-zero when
    /// `on_configure` returns false (checked by hand), so this waits for that exit, failing at once
    /// if Envoy becomes ready instead, and failing after READY_TIMEOUT if it does neither.
    pub fn start_expect_failure(opts: EnvoyOptions) -> String {
        let (mut process, _dir) = launch(&opts);
        let deadline = Instant::now() + READY_TIMEOUT;
        let outcome = loop {
            if let Some(status) = process.exited() {
                break Ok(status);
            }
            if process.live() {
                break Err("became ready with an invalid plugin configuration");
            }
            if Instant::now() >= deadline {
                break Err("neither exited nor became ready (Envoy 1.40 exits on a refused configuration)");
            }
            sleep(Duration::from_millis(25));
        };
        process.kill();
        let log = process.log();
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
        self.process.pid()
    }

    /// Envoy's log so far (warn and above, including the filter's own warnings and errors).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The admin `/stats` text.
    pub fn stats_text(&self) -> String {
        admin_get(self.admin_port, "/stats").expect("admin /stats")
    }

    /// Every counter and gauge of the admin `/stats`.
    pub fn stats(&self) -> Stats {
        Stats::parse(&self.stats_text())
    }

    /// One counter or gauge from `/stats` (0 when absent), e.g. `wasmcustom.flowgate.admitted`.
    pub fn stat(&self, name: &str) -> u64 {
        self.stats().value(name)
    }

    /// Sends a raw HTTP/1.1 request to the listener (see [`send`]).
    pub fn send(&self, method: &str, raw_path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        send(self.port, method, raw_path, headers, body)
    }

    /// Changes the listener of an Envoy started with [`EnvoyOptions::listener_from_file`] (a new
    /// version of its LDS file, moved into place) and returns once Envoy has taken it.
    pub fn update_listener(&self, change: impl FnOnce(&mut Value)) {
        let lds = self.dir.path().join("lds.json");
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
        let staged = self.dir.path().join("lds.json.new");
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
