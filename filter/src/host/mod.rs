//! The only code that calls the proxy-wasm host: the module's exports (`exports`), a
//! root context per plugin configuration that loads it and syncs the live directory
//! (`root`), and a context per request that applies the core's decisions (`http`).

mod abi;
mod exports;
mod http;
mod logger;
mod metrics;
mod root;
