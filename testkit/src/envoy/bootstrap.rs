//! Envoy bootstraps as JSON: the building blocks (listeners, clusters, filters) and the bootstrap
//! of the end-to-end tests, which mirrors `envoy/envoy.yaml`. The benchmark assembles its own
//! listeners (plain, Lua, flowgate, and a `direct_response` upstream) from the same blocks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::{must_exist, repo_root};

/// The per-connection buffer limit of envoy/envoy.yaml: the largest `max_body_bytes` (2 MiB).
pub const BUFFER_LIMIT_BYTES: u64 = 2 * 1024 * 1024;

/// The filter under test: the release `wasm32-wasip1` build, or `$FLOWGATE_WASM` (another
/// build, for a before/after bench).
pub fn filter_wasm() -> PathBuf {
    if let Some(path) = std::env::var_os("FLOWGATE_WASM") {
        return must_exist(PathBuf::from(path), "the filter named by FLOWGATE_WASM");
    }
    must_exist(
        repo_root().join("target/wasm32-wasip1/release/flowgate.wasm"),
        "the filter (cargo build --release --target wasm32-wasip1 -p flowgate)",
    )
}

// ---------------------------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------------------------

/// `127.0.0.1:port` as an Envoy address (port 0: Envoy picks a free one).
pub fn socket(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
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

/// Every path to `cluster`, with this route timeout.
pub fn route_all_to(cluster: &str, timeout: Duration) -> Value {
    let timeout = format!("{:.3}s", timeout.as_secs_f64());
    json!([{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": timeout}}])
}

/// An HTTP listener named `name` (also its stat prefix, route config and virtual host) on
/// `127.0.0.1:port`: `routes` on every domain, through `filters` and then the router.
pub fn http_listener(name: &str, port: u16, buffer_limit: u64, routes: Value, mut filters: Vec<Value>) -> Value {
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    json!({
        "name": name,
        "address": socket(port),
        "per_connection_buffer_limit_bytes": buffer_limit,
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "codec_type": "AUTO",
                "route_config": {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]},
                "http_filters": filters
            }
        }]}]
    })
}

/// A static cluster of one endpoint, `127.0.0.1:port`.
pub fn cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(port)}}]}]
        }
    })
}

/// A bootstrap of static listeners and clusters, with the admin interface on `admin_port`.
pub fn static_bootstrap(admin_port: u16, listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({
        "admin": {"address": socket(admin_port)},
        "static_resources": {"listeners": listeners, "clusters": clusters}
    })
}

// ---------------------------------------------------------------------------------------------
// The end-to-end tests' bootstrap
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
    /// More top-level bootstrap fields, e.g. `memory_allocator_manager`.
    pub bootstrap: Vec<(String, Value)>,
    /// The listener comes from a file through LDS, on a fixed port, so that a test can change it
    /// while Envoy runs ([`super::Envoy::update_listener`]).
    pub listener_from_file: bool,
    /// The listener's routes; default: every path to the executor, through the filter.
    pub routes: Option<Value>,
    /// Environment variables Envoy runs with, each listed in the VM's
    /// `environment_variables.host_env_keys` (flows' `verify.secret_env`).
    pub host_env: Vec<(String, String)>,
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
            bootstrap: Vec::new(),
            listener_from_file: false,
            routes: None,
            host_env: Vec::new(),
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

    /// Routes of the listener (`route_config.virtual_hosts[].routes`), e.g. envoy/envoy.yaml's.
    pub fn bootstrap(mut self, field: &str, value: Value) -> EnvoyOptions {
        self.bootstrap.push((field.to_string(), value));
        self
    }

    pub fn routes(mut self, routes: Value) -> EnvoyOptions {
        self.routes = Some(routes);
        self
    }

    pub fn host_env(mut self, name: &str, value: &str) -> EnvoyOptions {
        self.host_env.push((name.to_string(), value.to_string()));
        self
    }

    pub fn listener_from_file(mut self) -> EnvoyOptions {
        self.listener_from_file = true;
        self
    }
}

/// The bootstrap for `opts`, mirroring envoy/envoy.yaml except for the ports (0: Envoy picks free
/// ones, read back through the admin address file and `/listeners`) and the absolute wasm path.
pub fn envoy_bootstrap(opts: &EnvoyOptions) -> Value {
    let mut executor = cluster("flow_executor", opts.executor_port);
    executor["per_connection_buffer_limit_bytes"] = json!(opts.buffer_limit);
    let explicit = match opts.executor_protocol {
        ExecutorProtocol::Http1 => None,
        ExecutorProtocol::Http1WithTrailers => Some(json!({"http_protocol_options": {"enable_trailers": true}})),
        ExecutorProtocol::Http2 => Some(json!({"http2_protocol_options": {}})),
    };
    if let Some(explicit) = explicit {
        executor["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": explicit
            }
        });
    }
    let mut filter = wasm_filter(&filter_wasm(), &opts.plugin_config.text());
    if !opts.host_env.is_empty() {
        let keys: Vec<&str> = opts.host_env.iter().map(|(name, _)| name.as_str()).collect();
        filter["typed_config"]["config"]["vm_config"]["environment_variables"] = json!({"host_env_keys": keys});
    }
    let listener = http_listener(
        "flowgate",
        0,
        opts.buffer_limit,
        opts.routes
            .clone()
            .unwrap_or_else(|| route_all_to("flow_executor", opts.route_timeout)),
        vec![filter],
    );
    let directory = cluster("flow_directory", opts.directory_port.unwrap_or(opts.executor_port));
    let mut bootstrap = static_bootstrap(0, vec![listener], vec![executor, directory]);
    if !opts.runtime.is_empty() {
        let layer: serde_json::Map<String, Value> = opts.runtime.iter().cloned().collect();
        bootstrap["layered_runtime"] = json!({"layers": [{"name": "static", "static_layer": layer}]});
    }
    for (field, value) in &opts.bootstrap {
        bootstrap[field] = value.clone();
    }
    bootstrap
}
