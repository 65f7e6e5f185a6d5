//! One Envoy for the benchmark: its bootstrap (an upstream that answers like a flow executor,
//! and the plain, Lua, empty-filter and flowgate listeners in front of it), built from testkit's
//! bootstrap blocks, and the running process (testkit's launcher).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use flowgate_testkit::envoy::bootstrap::{cluster, http_listener, route_all_to, static_bootstrap, wasm_filter};
use flowgate_testkit::envoy::{admin_stats, Process};
use flowgate_testkit::http::{Connection, Response};

use crate::plan::{Listener, MAX_BODY_BYTES, WEBHOOK_PREFIX};

/// Ports, from a base: admin = base, upstream = base + 80, listener i = base + 1 + i.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    base: u16,
}

impl Ports {
    pub fn new(base: u16) -> Self {
        Ports { base }
    }
    /// The first base from `start` on (in steps) whose ports are all free right now:
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
    /// Admin, upstream, then one per listener.
    fn all(self) -> [u16; 2 + Listener::COUNT] {
        let mut ports = [self.admin(); 2 + Listener::COUNT];
        ports[1] = self.upstream();
        for listener in Listener::ALL {
            ports[2 + listener.index()] = self.listener(listener);
        }
        ports
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

/// The route timeout of envoy/envoy.yaml.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// The files a listener is configured from.
pub struct Filters<'a> {
    pub wasm: &'a Path,
    pub plugin_config: &'a str,
    pub lua_script: &'a Path,
    pub empty_wasm: &'a Path,
}

pub fn bootstrap(ports: Ports, listeners: &[Listener], filters: &Filters<'_>) -> Value {
    let mut all = vec![upstream_listener(ports)];
    for &listener in listeners {
        let (filter, routes) = match listener {
            Listener::Plain => (None, route_all_to("upstream", ROUTE_TIMEOUT)),
            Listener::Lua => (
                Some(json!({
                    "name": "envoy.filters.http.lua",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                        "default_source_code": {"filename": filters.lua_script},
                    },
                })),
                route_all_to("upstream", ROUTE_TIMEOUT),
            ),
            Listener::Empty => (
                Some(empty_filter(filters.empty_wasm)),
                route_all_to("upstream", ROUTE_TIMEOUT),
            ),
            Listener::Flowgate => {
                let filter = wasm_filter(filters.wasm, filters.plugin_config);
                let routes = webhook_routes(filter["name"].as_str().unwrap_or_default());
                (Some(filter), routes)
            }
        };
        all.push(http_listener(
            listener.name(),
            ports.listener(listener),
            BUFFER_LIMIT,
            routes,
            filter.into_iter().collect(),
        ));
    }
    let mut upstream = cluster("upstream", ports.upstream());
    upstream["per_connection_buffer_limit_bytes"] = json!(BUFFER_LIMIT);
    // The platform's other backends, behind the same edge: the same fast upstream.
    let mut site = cluster("site", ports.upstream());
    site["per_connection_buffer_limit_bytes"] = json!(BUFFER_LIMIT);
    static_bootstrap(ports.admin(), all, vec![upstream, site])
}

/// The routes of the shipped envoy/envoy.yaml: the webhook prefix to the executor with the
/// filter `filter_name` on; every other path to `site` with that filter disabled on the route
/// (so Envoy creates no wasm context for its streams).
fn webhook_routes(filter_name: &str) -> Value {
    let timeout = format!("{:.3}s", ROUTE_TIMEOUT.as_secs_f64());
    json!([
        {"match": {"prefix": WEBHOOK_PREFIX}, "route": {"cluster": "upstream", "timeout": timeout}},
        {
            "match": {"prefix": "/"},
            "route": {"cluster": "site", "timeout": timeout},
            "typed_per_filter_config": {
                filter_name: {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "disabled": true,
                },
            },
        },
    ])
}

/// bench/empty-filter as an Envoy HTTP filter: testkit's wasm block (the same runtime, failure
/// policy and flags as flowgate's) with its own VM and an empty configuration.
fn empty_filter(wasm: &Path) -> Value {
    let mut filter = wasm_filter(wasm, "{}");
    let config = &mut filter["typed_config"]["config"];
    config["name"] = json!("empty");
    config["root_id"] = json!("empty");
    config["vm_config"]["vm_id"] = json!("empty");
    filter
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
    http_listener("upstream", ports.upstream(), BUFFER_LIMIT, routes, vec![buffer])
}

/// A running Envoy (testkit's launcher, `--concurrency 1`); killed when dropped.
pub struct Envoy {
    process: Process,
    pub ports: Ports,
    /// From spawn until every listener answered.
    pub startup: Duration,
}

impl Envoy {
    /// Starts Envoy on `config` (pinned to `cpu` when given) and waits until `listeners` answer.
    /// Its log goes beside `config`, with the extension `log`.
    pub fn start(
        binary: &Path,
        config: &Path,
        ports: Ports,
        listeners: &[Listener],
        cpu: Option<u32>,
    ) -> Result<Envoy, String> {
        let started = Instant::now();
        let process = Process::spawn(binary, config, 1, cpu)?;
        let mut envoy = Envoy {
            process,
            ports,
            startup: Duration::ZERO,
        };
        envoy.wait_ready(listeners, Duration::from_secs(180))?;
        envoy.startup = started.elapsed();
        Ok(envoy)
    }

    fn wait_ready(&mut self, listeners: &[Listener], limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut pending: Vec<Listener> = listeners.to_vec();
        while !pending.is_empty() {
            if let Some(status) = self.process.exited() {
                return Err(format!(
                    "Envoy exited ({status}); see {}",
                    self.process.log_path().display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Envoy not ready after {limit:?}; see {}",
                    self.process.log_path().display()
                ));
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
        self.process.pid()
    }

    /// Resident memory (VmRSS) in bytes.
    pub fn rss(&self) -> Option<u64> {
        self.process.rss()
    }

    /// CPU time (user + system) the worker thread has used so far, in µs: with other processes
    /// on the machine, what a request costs the worker, whether or not it was scheduled out.
    pub fn worker_cpu_us(&self) -> Option<f64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).ok()?;
        let worker = tasks
            .flatten()
            .map(|task| task.path())
            .find(|task| std::fs::read_to_string(task.join("comm")).is_ok_and(|name| name.trim() == "wrk:worker_0"))?;
        let stat = std::fs::read_to_string(worker.join("stat")).ok()?;
        // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // USER_HZ is 100 on Linux.
        Some(ticks as f64 * 10_000.0)
    }

    /// A counter from the admin `/stats` endpoint.
    pub fn counter(&self, name: &str) -> Option<u64> {
        admin_stats(self.ports.admin(), &format!("/stats?filter=^{name}$"))?
            .get(name)
            .copied()
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

    fn config() -> Value {
        let filters = Filters {
            wasm: Path::new("/x/flowgate.wasm"),
            plugin_config: "{}",
            lua_script: Path::new("/x/gate.lua"),
            empty_wasm: Path::new("/x/empty_filter.wasm"),
        };
        bootstrap(Ports::new(18000), &Listener::ALL, &filters)
    }

    fn hcm(listener: &Value) -> &Value {
        &listener["filter_chains"][0]["filters"][0]["typed_config"]
    }

    #[test]
    fn every_listener_but_plain_has_one_filter_before_the_router() {
        let config = config();
        let listeners = config["static_resources"]["listeners"].as_array().unwrap();
        assert_eq!(listeners.len(), 1 + Listener::COUNT);
        let filters = |i: usize| hcm(&listeners[i])["http_filters"].as_array().unwrap().len();
        assert_eq!((filters(1), filters(2), filters(3), filters(4)), (1, 2, 2, 2));
        for listener in Listener::ALL {
            let l = &listeners[1 + listener.index()];
            assert_eq!(l["name"], listener.name());
            assert_eq!(
                l["address"]["socket_address"]["port_value"],
                18001 + listener.index() as u64
            );
        }
        let empty = &hcm(&listeners[3])["http_filters"][0]["typed_config"]["config"];
        assert_eq!(empty["vm_config"]["vm_id"], "empty");
        assert_eq!(empty["vm_config"]["code"]["local"]["filename"], "/x/empty_filter.wasm");
        assert_eq!(empty["configuration"]["value"], "{}");
        assert_eq!(Ports::new(18000).all(), [18000, 18080, 18001, 18002, 18003, 18004]);
    }

    #[test]
    fn flowgate_runs_on_the_webhook_prefix_only_and_other_paths_go_to_site() {
        let config = config();
        let listeners = config["static_resources"]["listeners"].as_array().unwrap();
        let routes = |i: usize| hcm(&listeners[i])["route_config"]["virtual_hosts"][0]["routes"].clone();
        for plain_lua_empty in 1..=3 {
            let routes = routes(plain_lua_empty);
            assert_eq!(routes.as_array().unwrap().len(), 1);
            assert_eq!(routes[0]["route"]["cluster"], "upstream");
        }
        let flowgate = routes(4);
        let name = hcm(&listeners[4])["http_filters"][0]["name"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(flowgate[0]["match"]["prefix"], WEBHOOK_PREFIX);
        assert_eq!(flowgate[0]["route"]["cluster"], "upstream");
        assert!(flowgate[0].get("typed_per_filter_config").is_none());
        assert_eq!(flowgate[1]["match"]["prefix"], "/");
        assert_eq!(flowgate[1]["route"]["cluster"], "site");
        assert_eq!(flowgate[1]["typed_per_filter_config"][&name]["disabled"], true);
        let clusters = config["static_resources"]["clusters"].as_array().unwrap();
        assert_eq!(clusters[1]["name"], "site");
        assert_eq!(clusters[0]["load_assignment"], {
            let mut site = clusters[1]["load_assignment"].clone();
            site["cluster_name"] = json!("upstream");
            site
        });
    }
}
