//! The reference executor (`flowgate-executor`) as a process handle for tests: started on a free
//! port with a throw-away flow file and run store, read back and steered through its
//! `/_executor/*` control endpoints. Also the demo flow file (`examples/flows.json`) and the
//! plugin configuration that matches a flow file.

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::http::send;
use crate::{log_tail, must_exist, read_log, repo_root, TempDir, READY_TIMEOUT};

/// The flow fields only the executor understands (`examples/executor/src/flows.rs`,
/// `EXECUTOR_ONLY_FIELDS`, a binary crate): stripped from a flow file's flows to make the plugin
/// configuration. Keep the two lists the same.
pub const EXECUTOR_ONLY_FIELDS: &[&str] = &["steps", "run_ms"];

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

/// The plugin configuration for an executor flow file: its flows without the executor-only
/// fields, under the default prefix and the default global body limit.
pub fn plugin_config_for(flow_file: &Value) -> Value {
    let flows: Vec<Value> = flow_file["flows"]
        .as_array()
        .expect("flow file has a `flows` array")
        .iter()
        .map(|flow| {
            let mut flow = flow.as_object().expect("a flow is a JSON object").clone();
            for field in EXECUTOR_ONLY_FIELDS {
                flow.remove(*field);
            }
            Value::Object(flow)
        })
        .collect();
    json!({
        "webhook_path_prefix": "/v1/flow-webhook/",
        "max_body_bytes": 1048576,
        "flows": flows,
    })
}

// ---------------------------------------------------------------------------------------------
// The process
// ---------------------------------------------------------------------------------------------

/// A running `flowgate-executor` with its own flow file and run store. Killed on drop.
pub struct Executor {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    /// More command-line arguments (`--generated-flows N`).
    args: Vec<String>,
}

impl Executor {
    /// Writes `flow_file` (the `examples/flows.json` format) to a temp file and starts the executor
    /// on a free port with a fresh database; returns once it answers.
    pub fn start(flow_file: &Value) -> Executor {
        Executor::start_with(flow_file, &[])
    }

    /// [`Executor::start`] with more command-line arguments.
    pub fn start_with(flow_file: &Value, args: &[&str]) -> Executor {
        let dir = TempDir::new("executor");
        let flows = dir.path().join("flows.json");
        fs::write(&flows, serde_json::to_vec_pretty(flow_file).expect("serialise flows")).expect("write flows file");
        let mut executor = Executor {
            child: None,
            port: 0,
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
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
            .args(&self.args)
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
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
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
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_plugin_configuration_leaves_out_executor_only_fields() {
        let config = plugin_config_for(&json!({"flows": [{"id": "a", "status": "live", "steps": [], "run_ms": 5}]}));
        assert_eq!(config["flows"], json!([{"id": "a", "status": "live"}]));
    }
}
