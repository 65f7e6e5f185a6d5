//! One Envoy for the benchmark: its bootstrap (an upstream that answers like a flow executor,
//! and the plain, Lua and flowgate listeners in front of it) and the running process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use flowgate_e2e::{wasm_filter, Connection, Response};

use crate::plan::{Listener, MAX_BODY_BYTES};

/// Ports, from a base: admin = base, upstream = base + 80, listener i = base + 1 + i.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    base: u16,
}

impl Ports {
    pub fn new(base: u16) -> Self {
        Ports { base }
    }
    /// The first base from `start` on (in steps) whose five ports are all free right now:
    /// other Envoys (tests, demos) may run on this machine at the same time.
    pub fn free_from(start: u16) -> Result<Self, String> {
        (0..60u16)
            .map(|step| Ports::new(start.saturating_add(step * 211)))
            .find(|ports| {
                ports
                    .all()
                    .iter()
                    .all(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
            })
            .ok_or(format!("no free ports from {start} on"))
    }
    fn all(self) -> [u16; 5] {
        [
            self.admin(),
            self.upstream(),
            self.base + 1,
            self.base + 2,
            self.base + 3,
        ]
    }
    pub fn admin(self) -> u16 {
        self.base
    }
    pub fn upstream(self) -> u16 {
        self.base + 80
    }
    pub fn listener(self, listener: Listener) -> u16 {
        self.base + 1 + listener.index() as u16
    }
}

/// Room for the 1 MiB body plus headers; Envoy answers 413 itself past the connection limit.
const BUFFER_LIMIT: u64 = 2 * MAX_BODY_BYTES;

/// The files a listener is configured from.
pub struct Filters<'a> {
    pub wasm: &'a Path,
    pub plugin_config: &'a str,
    pub lua_script: &'a Path,
}

pub fn bootstrap(ports: Ports, listeners: &[Listener], filters: &Filters<'_>) -> Value {
    let mut all = vec![upstream_listener(ports)];
    for &listener in listeners {
        let filter = match listener {
            Listener::Plain => None,
            Listener::Lua => Some(json!({
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": {"filename": filters.lua_script},
                },
            })),
            Listener::Flowgate => Some(wasm_filter(filters.wasm, filters.plugin_config)),
        };
        let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "15s"}}]);
        all.push(listener_json(
            listener.name(),
            ports.listener(listener),
            routes,
            filter.into_iter().collect(),
        ));
    }
    json!({
        "admin": {"address": socket(ports.admin())},
        "static_resources": {
            "listeners": all,
            "clusters": [{
                "name": "upstream",
                "type": "STATIC",
                "connect_timeout": "1s",
                "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
                "load_assignment": {
                    "cluster_name": "upstream",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(ports.upstream())}}]}],
                },
            }],
        },
    })
}

/// The fast upstream: reads the whole request (like an executor would), then answers the
/// async flow's acceptance (202) or a sync flow's output (200) from `direct_response`.
fn upstream_listener(ports: Ports) -> Value {
    let answer = |prefix: &str, status: u16, body: &str| {
        json!({
            "match": {"prefix": prefix},
            "direct_response": {"status": status, "body": {"inline_string": body}},
            "response_headers_to_add": [{
                "header": {"key": "content-type", "value": "application/json"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }],
        })
    };
    let routes = json!([
        answer("/v1/flow-webhook/f-1003", 202, r#"{"run_id":"r-1"}"#),
        answer("/", 200, r#"{"res1":{"value":"myResult"}}"#),
    ]);
    let buffer = json!({
        "name": "envoy.filters.http.buffer",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": BUFFER_LIMIT,
        },
    });
    listener_json("upstream", ports.upstream(), routes, vec![buffer])
}

fn listener_json(name: &str, port: u16, routes: Value, mut filters: Vec<Value>) -> Value {
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }));
    json!({
        "name": name,
        "address": socket(port),
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "codec_type": "AUTO",
                "route_config": {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]},
                "http_filters": filters,
            },
        }]}],
    })
}

fn socket(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

/// A running Envoy; killed when dropped.
pub struct Envoy {
    child: Child,
    pub ports: Ports,
    /// From spawn until every listener answered.
    pub startup: Duration,
    pub log: PathBuf,
}

impl Envoy {
    /// Starts Envoy on `config` (pinned to `cpu` when given) and waits until `listeners` answer.
    pub fn start(
        binary: &Path,
        config: &Path,
        ports: Ports,
        listeners: &[Listener],
        cpu: Option<u32>,
    ) -> Result<Envoy, String> {
        let log = config.with_extension("log");
        let log_file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command
            .arg("-c")
            .arg(config)
            .args(["--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let started = Instant::now();
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut envoy = Envoy {
            child,
            ports,
            startup: Duration::ZERO,
            log,
        };
        envoy.wait_ready(listeners, Duration::from_secs(180))?;
        envoy.startup = started.elapsed();
        Ok(envoy)
    }

    fn wait_ready(&mut self, listeners: &[Listener], limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut pending: Vec<Listener> = listeners.to_vec();
        while !pending.is_empty() {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("Envoy exited ({status}); see {}", self.log.display()));
            }
            if Instant::now() > deadline {
                return Err(format!("Envoy not ready after {limit:?}; see {}", self.log.display()));
            }
            let port = self.ports.listener(pending[0]);
            match request(port, "GET", "/healthz/ready", &[], b"") {
                Ok(response) if response.status != 503 => {
                    pending.remove(0);
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (VmRSS) in bytes.
    pub fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// A counter from the admin `/stats` endpoint.
    pub fn counter(&self, name: &str) -> Option<u64> {
        let path = format!("/stats?filter=^{name}$");
        let response = request(self.ports.admin(), "GET", &path, &[], b"").ok()?;
        let text = String::from_utf8_lossy(&response.body).into_owned();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a bootstrap to `path` (JSON, which Envoy reads faster than YAML for the big configs).
pub fn write_config(path: &Path, bootstrap: &Value) -> Result<(), String> {
    std::fs::write(path, bootstrap.to_string()).map_err(|e| format!("{}: {e}", path.display()))
}

/// `.venv/bin/envoy` runs the real binary with `execv`, so its pid is Envoy's.
pub fn binary(root: &Path) -> PathBuf {
    root.join(".venv/bin/envoy")
}

/// One request on a fresh keep-alive connection (as wrk sends them), so that the answer shows
/// whether Envoy keeps the connection or closes it (`connection: close`).
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response, String> {
    Connection::open(port)
        .and_then(|mut connection| connection.send(method, path, headers, body))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_route_to_the_upstream_and_only_gated_ones_have_a_filter() {
        let filters = Filters {
            wasm: Path::new("/x/flowgate.wasm"),
            plugin_config: "{}",
            lua_script: Path::new("/x/gate.lua"),
        };
        let config = bootstrap(Ports::new(18000), &Listener::ALL, &filters);
        let listeners = config["static_resources"]["listeners"].as_array().unwrap();
        assert_eq!(listeners.len(), 4);
        let filter_count = |i: usize| {
            listeners[i]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
                .as_array()
                .unwrap()
                .len()
        };
        assert_eq!((filter_count(1), filter_count(2), filter_count(3)), (1, 2, 2));
        assert_eq!(listeners[3]["address"]["socket_address"]["port_value"], 18003);
    }
}
