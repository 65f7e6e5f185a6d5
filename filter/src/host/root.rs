//! The root context: loads the plugin configuration, keeps the live directory's flows
//! current on a timer, and makes a `Stream` per request.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};

use super::abi;
use super::http::Http;
use super::metrics::{self, Metrics};
use crate::config::{Directory, Flows, FlowsBuilder, PluginConfig};
use crate::directory::{self, Loading, Published};

/// What every stream of this VM reads.
pub struct Edge {
    pub prefix: String,
    /// `None` while a live directory has never loaded and no static flows exist.
    pub flows: RefCell<Option<Rc<Flows>>>,
    /// The configuration's `max_body_bytes`.
    pub max_body_bytes: u64,
    pub metrics: Metrics,
}

/// A directory fetch is given this long before it counts as failed.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the filter asks Envoy for its log level (a live change takes this long).
const LOG_LEVEL_CHECK_MS: u64 = 1000;

#[derive(Default)]
pub struct Root {
    edge: Option<Rc<Edge>>,
    directory: Option<DirectoryClient>,
    last_tick_ms: u64,
}

struct DirectoryClient {
    source: Directory,
    builder: FlowsBuilder,
    /// The generation this VM has loaded.
    seen: Published,
    /// The fetch this VM has under way, if any.
    pending: Option<u32>,
    /// A published generation this VM is loading, a step per tick.
    loading: Option<(Published, Loading)>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let (Some(edge), Some(client)) = (&self.edge, &mut self.directory) else {
            return;
        };
        if client.pending != Some(token) {
            return;
        }
        client.pending = None;
        let status = abi::header(MapType::HttpCallResponseHeaders, ":status");
        match status.as_deref() {
            Some(b"304") => edge.metrics.count(metrics::FETCH_NOT_MODIFIED),
            Some(b"200") => {
                let document = abi::buffer(BufferType::HttpCallResponseBody, body_size);
                let etag = abi::header(MapType::HttpCallResponseHeaders, "etag").unwrap_or_default();
                client.publish(edge, &document, &String::from_utf8_lossy(&etag));
            }
            other => {
                edge.metrics.count(metrics::FETCH_FAILED);
                let status = other.map(String::from_utf8_lossy).unwrap_or_default();
                log::warn!("flowgate: directory fetch failed: status {status:?}; keeping the last good flows");
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        follow_host_log_level();
        let json = abi::buffer(BufferType::PluginConfiguration, size);
        let config = match PluginConfig::parse(&json) {
            Ok(config) => config,
            Err(problem) => {
                log::error!("flowgate: invalid configuration: {problem}");
                return false;
            }
        };
        log::info!("flowgate: configuration loaded: {} static flows", config.flows.len());
        let waiting_for_directory = config.directory.is_some() && config.flows.is_empty();
        let flows = if waiting_for_directory {
            None
        } else {
            Some(Rc::new(config.flows))
        };
        let metrics = Metrics::define();
        let tick_ms = config
            .directory
            .as_ref()
            .map_or(LOG_LEVEL_CHECK_MS, |source| directory::tick_ms(source.refresh_ms));
        let _ = hostcalls::set_tick_period(Duration::from_millis(tick_ms));
        self.directory = config.directory.map(|source| DirectoryClient {
            source,
            builder: FlowsBuilder::new(config.max_body_bytes),
            seen: Published::default(),
            pending: None,
            loading: None,
        });
        self.edge = Some(Rc::new(Edge {
            prefix: config.webhook_path_prefix,
            flows: RefCell::new(flows),
            max_body_bytes: config.max_body_bytes,
            metrics,
        }));
        self.on_tick();
        true
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        if now / LOG_LEVEL_CHECK_MS != self.last_tick_ms / LOG_LEVEL_CHECK_MS {
            follow_host_log_level();
        }
        self.last_tick_ms = now;
        let (Some(edge), Some(client)) = (&self.edge, &mut self.directory) else {
            return;
        };
        if client.pending.is_none() && client.take_lease(now) {
            client.fetch();
        }
        client.load_new_generation(edge);
        if client.seen.generation > 0 {
            edge.metrics.set(
                metrics::AGE_SECONDS,
                now.saturating_sub(client.seen.fetched_at_ms) / 1000,
            );
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let edge = Rc::clone(self.edge.as_ref()?);
        Some(Box::new(Http::new(edge)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl DirectoryClient {
    /// One VM per interval wins the compare-and-swap on the lease and fetches.
    fn take_lease(&self, now: u64) -> bool {
        let Ok((lease, cas)) = hostcalls::get_shared_data(directory::LEASE_KEY) else {
            return false;
        };
        if !directory::fetch_due(lease.as_deref(), now) {
            return false;
        }
        let next = (now + self.source.refresh_ms).to_string();
        hostcalls::set_shared_data(directory::LEASE_KEY, Some(next.as_bytes()), cas.or(Some(0))).is_ok()
    }

    fn fetch(&mut self) {
        let published = read_published();
        let mut headers = vec![
            (":method", "GET"),
            (":path", self.source.path.as_str()),
            (":authority", self.source.authority.as_str()),
        ];
        if !published.etag.is_empty() {
            headers.push(("if-none-match", published.etag.as_str()));
        }
        match hostcalls::dispatch_http_call(&self.source.cluster, headers, None, vec![], FETCH_TIMEOUT) {
            Ok(token) => self.pending = Some(token),
            Err(status) => log::warn!(
                "flowgate: cannot fetch the directory from cluster {:?}: {status:?}",
                self.source.cluster
            ),
        }
    }

    /// Checks and indexes the document once and publishes it for every VM; a bad one
    /// keeps the last good set.
    fn publish(&mut self, edge: &Edge, document: &[u8], etag: &str) {
        let indexed = match directory::index(document) {
            Ok(indexed) => indexed,
            Err(problem) => {
                edge.metrics.count(metrics::FETCH_FAILED);
                log::warn!("flowgate: directory answer is not a flow list ({problem}); keeping the last good flows");
                return;
            }
        };
        edge.metrics.count(metrics::FETCH_OK);
        let previous = read_published();
        let next = Published {
            generation: previous.generation + 1,
            etag: etag.to_string(),
            fetched_at_ms: now_ms(),
        };
        if hostcalls::set_shared_data(directory::DOCUMENT_KEY, Some(&indexed), None).is_ok() {
            let _ = hostcalls::set_shared_data(directory::PUBLISHED_KEY, Some(&next.encode()), None);
        }
    }

    /// Starts loading a newly published generation, or takes the next step of one.
    fn load_new_generation(&mut self, edge: &Edge) {
        if self.loading.is_none() {
            let published = read_published();
            if published.generation == self.seen.generation {
                return;
            }
            let Ok((Some(indexed), _)) = hostcalls::get_shared_data(directory::DOCUMENT_KEY) else {
                return;
            };
            let previous = edge.flows.borrow().clone().unwrap_or_default();
            let Some(loading) = Loading::new(indexed, previous) else {
                return;
            };
            self.loading = Some((published, loading));
            // Step on every turn of the event loop until the generation is in.
            let _ = hostcalls::set_tick_period(Duration::from_millis(1));
        }
        let Some((published, loading)) = &mut self.loading else {
            return;
        };
        let Some((flows, problems)) = loading.step(&self.builder) else {
            return;
        };
        for problem in &problems {
            log::warn!("flowgate: directory entry skipped: {problem}");
        }
        log::info!(
            "flowgate: directory generation {} loaded: {} flows, {} entries skipped",
            published.generation,
            flows.len(),
            problems.len()
        );
        edge.metrics.set(metrics::FLOWS_LOADED, flows.len() as u64);
        edge.metrics.set(metrics::ENTRIES_REJECTED, problems.len() as u64);
        *edge.flows.borrow_mut() = Some(Rc::new(flows));
        self.seen = published.clone();
        self.loading = None;
        let _ = hostcalls::set_tick_period(Duration::from_millis(directory::tick_ms(self.source.refresh_ms)));
    }
}

fn follow_host_log_level() {
    super::logger::follow_host_level();
}

fn read_published() -> Published {
    match hostcalls::get_shared_data(directory::PUBLISHED_KEY) {
        Ok((Some(bytes), _)) => Published::decode(&bytes).unwrap_or_default(),
        _ => Published::default(),
    }
}

fn now_ms() -> u64 {
    let now = hostcalls::get_current_time().unwrap_or(UNIX_EPOCH);
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
