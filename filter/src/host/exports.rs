//! The module's exports: the proxy-wasm (ABI 0.2.1) callbacks flowgate uses, and no
//! others. Envoy skips a callback the module does not export, so a stream enters the VM
//! only for the events the gate needs: not for `proxy_on_log` or `proxy_on_done` (which
//! the SDK's dispatcher exports for every context), nor for connection, queue or gRPC
//! events. Each callback finds its context and hands over; `root` and `http` translate.

use std::cell::RefCell;
use std::collections::HashMap;

use super::http::Http;
use super::logger;
use super::root::Root;
use crate::stream::Action;

/// Every live context of this VM: root contexts (one per plugin configuration sharing
/// the VM) and streams, by Envoy's context id.
#[derive(Default)]
struct Contexts {
    roots: HashMap<u32, Root>,
    streams: HashMap<u32, Http>,
}

thread_local! {
    static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
}

/// Runs `f` on the contexts; `None` if they are in use. Envoy defers whatever a host
/// call triggers (local replies, continues) until the callback returns, so callbacks
/// never nest; this only keeps a buggy host from trapping the VM.
fn with<T>(f: impl FnOnce(&mut Contexts) -> T) -> Option<T> {
    CONTEXTS.with(|contexts| contexts.try_borrow_mut().ok().map(|mut contexts| f(&mut contexts)))
}

/// A stream callback's answer; a stream flowgate does not know is held (fail closed).
fn stream(context_id: u32, event: impl FnOnce(&mut Http) -> Action) -> u32 {
    let action = with(|c| c.streams.get_mut(&context_id).map(event)).flatten();
    match action.unwrap_or(Action::Pause) {
        Action::Continue => 0,
        Action::Pause => 1,
        // proxy-wasm's StopIterationNoBuffer.
        Action::Drop => 3,
    }
}

fn root<T>(context_id: u32, event: impl FnOnce(&mut Root) -> T) -> Option<T> {
    with(|c| c.roots.get_mut(&context_id).map(event)).flatten()
}

extern "C" {
    fn __wasm_call_ctors();
}

/// The WASI reactor's start: static constructors, then the logger (Envoy allows no
/// host calls here).
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: called once, by the host, before any other export.
    unsafe { __wasm_call_ctors() };
    logger::init();
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Where the host puts the buffers it hands over (`abi` takes them back as `Vec`s).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer = std::mem::ManuallyDrop::new(Vec::<u8>::with_capacity(size));
    buffer.as_mut_ptr()
}

/// A root context has no parent; a stream's parent is its plugin's root context.
#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_id: u32) {
    with(|c| {
        if parent_id == 0 {
            c.roots.insert(context_id, Root::default());
        } else if let Some(vm) = c.roots.get(&parent_id).and_then(Root::vm) {
            c.streams.insert(context_id, Http::new(vm));
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    with(|c| {
        if c.streams.remove(&context_id).is_none() {
            c.roots.remove(&context_id);
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(context_id: u32, size: usize) -> bool {
    root(context_id, |root| root.on_configure(size)).unwrap_or(false)
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(context_id: u32) {
    root(context_id, Root::on_tick);
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    context_id: u32,
    token: u32,
    _headers: usize,
    body: usize,
    _trailers: usize,
) {
    root(context_id, |root| root.on_http_call_response(token, body));
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context_id: u32, _headers: usize, end_of_stream: bool) -> u32 {
    stream(context_id, |http| http.on_request_headers(end_of_stream))
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(context_id: u32, size: usize, end_of_stream: bool) -> u32 {
    stream(context_id, |http| http.on_request_body(size, end_of_stream))
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(context_id: u32, _trailers: usize) -> u32 {
    stream(context_id, Http::on_request_trailers)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(context_id: u32, _headers: usize, end_of_stream: bool) -> u32 {
    stream(context_id, |http| http.on_response_headers(end_of_stream))
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(context_id: u32, size: usize, end_of_stream: bool) -> u32 {
    stream(context_id, |http| http.on_response_body(size, end_of_stream))
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(context_id: u32, _trailers: usize) -> u32 {
    stream(context_id, Http::on_response_trailers)
}
