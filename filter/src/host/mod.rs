//! The only code that calls the proxy-wasm host: a root context that loads the
//! configuration and an HTTP context per request that applies the core's decisions.

mod abi;
mod http;
mod logger;
mod metrics;
mod root;

use proxy_wasm::traits::RootContext;

proxy_wasm::main! {{
    logger::init();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::Root::default()) });
}}
