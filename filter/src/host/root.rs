//! The root context: loads the plugin configuration, makes a `Stream` per request, and
//! drives the live directory's sync (`directory::sync`): it turns host callbacks into
//! calls of the sync and the sync's requests into host calls, and decides nothing itself.
//! Every host call here returns failures as values (`abi`), so no answer can trap the VM.

use std::cell::RefCell;
use std::rc::Rc;

use super::abi::{self, Buffer, Map};
use super::metrics::Metrics;
use crate::config::PluginConfig;
use crate::directory::shared::Keys;
use crate::directory::sync::{Answer, Counter, Gauge, Host, Level, Serving, Sync};
use crate::directory::table::Table;
use crate::flows::{Flows, FlowsBuilder, Lookup};

/// Where this VM's requests find their flows.
#[derive(Default)]
pub enum Flowset {
    /// A live directory that never loaded, and no static flows.
    #[default]
    Nothing,
    Flows(Rc<Flows>),
    Table(Rc<Table>),
}

impl Flowset {
    pub fn lookup(&self) -> Option<&dyn Lookup> {
        match self {
            Flowset::Nothing => None,
            Flowset::Flows(flows) => Some(&**flows),
            Flowset::Table(table) => Some(&**table),
        }
    }
}

/// What every stream of this VM reads.
pub struct Vm {
    pub prefix: String,
    pub flows: RefCell<Flowset>,
    /// Streams this VM has had (the directory's lease goes to idle VMs first).
    pub requests: std::cell::Cell<u64>,
    /// The configuration's `max_body_bytes`.
    pub max_body_bytes: u64,
    pub metrics: Metrics,
}

/// How often the filter asks Envoy for its log level (a live change takes this long).
const LOG_LEVEL_CHECK_MS: u64 = 1000;

#[derive(Default)]
pub struct Root {
    vm: Option<Rc<Vm>>,
    directory: Option<Sync>,
    last_tick_ms: u64,
}

/// The sync's host: this VM, and the directory's answer while one is handled.
struct Calls<'a> {
    vm: &'a Vm,
}

// The flow table and the lease in Envoy's shared data.
envoy_store!(Calls<'_>);

impl Host for Calls<'_> {
    fn fetch(&mut self, cluster: &str, headers: &[(&str, &str)], timeout_ms: u64) -> Option<u32> {
        abi::http_call(cluster, headers, timeout_ms)
    }

    fn answer_body(&mut self, start: usize, length: usize) -> Vec<u8> {
        abi::buffer_at(Buffer::CallResponseBody, start, length)
    }

    fn requests(&mut self) -> u64 {
        self.vm.requests.get()
    }

    fn clock_us(&mut self) -> u64 {
        abi::clock_ns() / 1000
    }

    fn tick_every(&mut self, ms: u64) {
        abi::set_tick_period_ms(ms);
    }

    fn count(&mut self, counter: Counter, n: u64) {
        self.vm.metrics.add(counter, n);
    }

    fn gauge(&mut self, gauge: Gauge, value: u64) {
        self.vm.metrics.set(gauge, value);
    }

    fn log(&mut self, level: Level, message: &str) {
        match level {
            Level::Info => log::info!("flowgate: {message}"),
            Level::Warn => log::warn!("flowgate: {message}"),
        }
    }

    fn serve(&mut self, serving: Serving) {
        let mut flows = self.vm.flows.borrow_mut();
        *flows = match (serving, &*flows) {
            (Serving::Flows(static_flows), _) => Flowset::Flows(static_flows),
            (Serving::Table { floor, generation, .. }, Flowset::Table(table)) => {
                table.follow(floor, generation);
                return;
            }
            (
                Serving::Table {
                    keys,
                    floor,
                    generation,
                },
                _,
            ) => {
                let read = Box::new(|key: &str| abi::shared_data(key).0);
                let builder = FlowsBuilder::new(self.vm.max_body_bytes);
                let table = Table::new(keys, builder, read, floor);
                table.follow(floor, generation);
                Flowset::Table(Rc::new(table))
            }
        };
    }
}

impl Root {
    /// What this configuration's streams read; `None` until it is configured.
    pub fn vm(&self) -> Option<Rc<Vm>> {
        self.vm.clone()
    }

    pub fn on_http_call_response(&mut self, token: u32, body_size: usize) {
        let (Some(vm), Some(sync)) = (&self.vm, &mut self.directory) else {
            return;
        };
        let header = |name| abi::header(Map::CallResponseHeaders, name);
        let answer = Answer {
            status: header(":status").and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok()),
            etag: header("etag").map(|e| String::from_utf8_lossy(&e).into_owned()),
            size: body_size,
        };
        sync.on_answer(&mut Calls { vm }, token, answer);
    }

    pub fn on_configure(&mut self, size: usize) -> bool {
        super::logger::follow_host_level();
        let json = abi::buffer(Buffer::PluginConfiguration, size);
        let config = match PluginConfig::parse(&json) {
            Ok(config) => config,
            Err(problem) => {
                log::error!("flowgate: invalid configuration: {problem}");
                return false;
            }
        };
        log::info!("flowgate: configuration loaded: {} static flows", config.flows.len());
        let mut flows = Flowset::Nothing;
        match config.directory {
            // The sync decides what to serve: the static flows only if nothing is published.
            Some(source) => {
                let fallback = (!config.flows.is_empty()).then_some(config.flows);
                let builder = FlowsBuilder::new(config.max_body_bytes);
                self.directory = Some(Sync::new(source, Keys::scoped(&json), builder, fallback));
            }
            None => {
                flows = Flowset::Flows(Rc::new(config.flows));
                abi::set_tick_period_ms(LOG_LEVEL_CHECK_MS);
            }
        }
        self.vm = Some(Rc::new(Vm {
            prefix: config.webhook_path_prefix,
            flows: RefCell::new(flows),
            requests: std::cell::Cell::new(0),
            max_body_bytes: config.max_body_bytes,
            metrics: Metrics::define(),
        }));
        self.on_tick();
        true
    }

    pub fn on_tick(&mut self) {
        let now_ms = abi::now_ms();
        if now_ms / LOG_LEVEL_CHECK_MS != self.last_tick_ms / LOG_LEVEL_CHECK_MS {
            super::logger::follow_host_level();
        }
        self.last_tick_ms = now_ms;
        if let (Some(vm), Some(sync)) = (&self.vm, &mut self.directory) {
            sync.on_tick(&mut Calls { vm });
        }
    }
}
