//! The root context: loads the plugin configuration, makes a `Stream` per request, and
//! drives the live directory's sync (`directory::sync`): it turns host callbacks into
//! events and the sync's commands into host calls, and decides nothing itself. Every host
//! call here returns failures as values (`abi`), so no answer can trap the VM.

use std::cell::RefCell;
use std::rc::Rc;

use super::abi::{self, Buffer, Map};
use super::metrics::Metrics;
use crate::config::PluginConfig;
use crate::directory::shared::{Key, Keys};
use crate::directory::sync::{Answer, Command, Event, Level, Shared, Sync};
use crate::flows::{Flows, FlowsBuilder};

/// What every stream of this VM reads.
pub struct Vm {
    pub prefix: String,
    /// `None` while a live directory has never loaded and no static flows exist.
    pub flows: RefCell<Option<Rc<Flows>>>,
    /// The configuration's `max_body_bytes`.
    pub max_body_bytes: u64,
    pub metrics: Metrics,
}

/// How often the filter asks Envoy for its log level (a live change takes this long).
const LOG_LEVEL_CHECK_MS: u64 = 1000;

#[derive(Default)]
pub struct Root {
    vm: Option<Rc<Vm>>,
    directory: Option<(Sync, Keys)>,
    last_tick_ms: u64,
}

impl Root {
    /// What this configuration's streams read; `None` until it is configured.
    pub fn vm(&self) -> Option<Rc<Vm>> {
        self.vm.clone()
    }

    fn drive(&mut self, event: Event) {
        if let (Some(vm), Some((sync, keys))) = (&self.vm, &mut self.directory) {
            sync.run(event, |command| execute(vm, keys, command));
        }
    }

    pub fn on_http_call_response(&mut self, token: u32, body_size: usize) {
        let Some((_, keys)) = &self.directory else {
            return;
        };
        let header = |name| abi::header(Map::CallResponseHeaders, name);
        let answer = Answer {
            status: header(":status").and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok()),
            etag: header("etag").map(|e| String::from_utf8_lossy(&e).into_owned()),
            body: abi::buffer(Buffer::CallResponseBody, body_size),
        };
        let published = read(keys, Key::Published);
        self.drive(Event::Answered {
            token,
            now_ms: abi::now_ms(),
            answer,
            published,
        });
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
        let mut flows = None;
        match config.directory {
            // The sync decides what to serve: the static flows only if nothing is published.
            Some(source) => {
                let fallback = (!config.flows.is_empty()).then_some(config.flows);
                let sync = Sync::new(source, FlowsBuilder::new(config.max_body_bytes), fallback);
                self.directory = Some((sync, Keys::scoped(&json)));
            }
            None => {
                flows = Some(Rc::new(config.flows));
                abi::set_tick_period_ms(LOG_LEVEL_CHECK_MS);
            }
        }
        self.vm = Some(Rc::new(Vm {
            prefix: config.webhook_path_prefix,
            flows: RefCell::new(flows),
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
        let Some((_, keys)) = &self.directory else {
            return;
        };
        let (lease, published) = (read(keys, Key::Lease), read(keys, Key::Published));
        self.drive(Event::Tick {
            now_ms,
            lease,
            published,
        });
    }
}

fn read(keys: &Keys, key: Key) -> Shared {
    let (value, cas) = abi::shared_data(keys.name(key));
    Shared { value, cas }
}

/// Carries out one command of the sync; the reply, if it has one.
fn execute(vm: &Vm, keys: &Keys, command: Command) -> Option<Event> {
    match command {
        Command::Fetch {
            cluster,
            headers,
            timeout_ms,
        } => {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let token = abi::http_call(&cluster, &headers, timeout_ms);
            return Some(Event::Dispatched { token });
        }
        Command::Read(access) => {
            let value = read(keys, access.key());
            return Some(Event::Read { access, value });
        }
        Command::Write { access, value, cas } => {
            let ok = abi::set_shared_data(keys.name(access.key()), &value, cas);
            return Some(Event::Wrote { access, ok });
        }
        Command::Serve(flows) => *vm.flows.borrow_mut() = Some(flows),
        Command::TickEvery(ms) => abi::set_tick_period_ms(ms),
        Command::Count(counter) => vm.metrics.count(counter),
        Command::Gauge(gauge, value) => vm.metrics.set(gauge, value),
        Command::Log(Level::Info, message) => log::info!("flowgate: {message}"),
        Command::Log(Level::Warn, message) => log::warn!("flowgate: {message}"),
    }
    None
}
