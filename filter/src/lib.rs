//! flowgate: a proxy-wasm filter that gates inbound workflow webhooks inside Envoy.
//!
//! The modules below the host layer are sans-I/O: they take request and response
//! facts and return decisions, so they run natively, under wasm32 and in fuzzers.
//! Only `host` talks to the proxy-wasm ABI.

pub mod answer;
pub mod auth;
pub mod body;
pub mod config;
pub mod delivery;
pub mod directory;
pub mod flows;
pub mod gate;
pub mod metrics;
pub mod render;
pub mod reply;
pub mod route;
pub mod schema;
pub mod store;
pub mod stream;
pub mod verify;
pub mod wire;

// Unit tests run under wasm32-wasip1 too (scripts/wasi-run.mjs), as plain WASI programs
// without the proxy-wasm host: the host layer is left out of them.
#[cfg(all(target_os = "wasi", not(test)))]
mod host;
