//! The only code that calls the proxy-wasm host: the module's exports (`exports`), a
//! root context per plugin configuration that loads it and syncs the live directory
//! (`root`), and a context per request that applies the core's decisions (`http`).

/// `crate::store::Store` on Envoy's shared data and clock, for a host-side type.
macro_rules! envoy_store {
    ($host:ty) => {
        impl $crate::store::Store for $host {
            fn get(&mut self, key: &str) -> (Option<Vec<u8>>, u32) {
                super::abi::shared_data(key)
            }

            fn set(&mut self, key: &str, value: &[u8], cas: u32) -> bool {
                super::abi::set_shared_data(key, value, cas)
            }

            fn now_ms(&mut self) -> u64 {
                super::abi::now_ms()
            }
        }
    };
}

mod abi;
mod exports;
mod http;
mod logger;
mod metrics;
mod root;
