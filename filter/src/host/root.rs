//! The root context: loads and validates the plugin configuration, makes streams.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};

use super::abi;
use super::stream::Stream;
use crate::config::{Flows, PluginConfig};

/// What every stream of this VM reads: the prefix and the flows in force.
pub struct Edge {
    pub prefix: String,
    /// `None` while a live directory has never loaded and no static flows exist.
    pub flows: Option<Rc<Flows>>,
}

#[derive(Default)]
pub struct Root {
    edge: Option<Rc<Edge>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let json = abi::buffer(BufferType::PluginConfiguration, size);
        match PluginConfig::parse(&json) {
            Ok(config) => {
                log::info!("flowgate: configuration loaded: {} flows", config.flows.len());
                let flows = if config.directory.is_some() && config.flows.is_empty() {
                    None
                } else {
                    Some(Rc::new(config.flows))
                };
                self.edge = Some(Rc::new(Edge {
                    prefix: config.webhook_path_prefix,
                    flows,
                }));
                true
            }
            Err(problem) => {
                log::error!("flowgate: invalid configuration: {problem}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let edge = Rc::clone(self.edge.as_ref()?);
        Some(Box::new(Stream::new(edge)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
