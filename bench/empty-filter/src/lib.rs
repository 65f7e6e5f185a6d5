//! The floor any Rust proxy-wasm filter pays in Envoy: an HTTP filter that does nothing.
//! Every callback of the SDK's default dispatch runs and continues. `scripts/bench.sh`
//! puts it beside plain Envoy, the Lua peer and flowgate, so each run measures the floor.

#[cfg(target_os = "wasi")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::ContextType;

    struct Root;
    struct Http;

    impl Context for Root {}
    impl RootContext for Root {
        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Http))
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }
    impl Context for Http {}
    impl HttpContext for Http {}

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
    }}
}
