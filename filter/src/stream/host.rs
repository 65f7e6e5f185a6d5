//! What a stream exchanges with its host: the calls it makes, what it answers each
//! callback, the outcomes it counts and the per-VM facts it reads.

use crate::flows::Lookup;
use crate::metrics::Counter;
use crate::reply::Reply;

/// What the host does with the event's data: pass it on, or hold it (buffering bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
    /// Body data only: neither passed on nor kept. For an answer flowgate has already
    /// replied to, so Envoy does not buffer it past its limit (its own plain-text 500).
    Drop,
}

/// The host calls a stream makes; shared data and the clock for its delivery controls.
pub trait Host: crate::delivery::Store {
    /// The serialized request header map (`wire` layout); `None` when unreadable.
    fn request_headers(&mut self) -> Option<Vec<u8>>;
    /// The serialized request trailer map; `None` when unreadable.
    fn request_trailers(&mut self) -> Option<Vec<u8>>;
    /// Sets (`Some`) or removes (`None`) a request header.
    fn set_request_header(&mut self, name: &str, value: Option<&str>);
    fn remove_request_trailer(&mut self, name: &str);
    /// The first `size` bytes of the buffered request body.
    fn request_body(&mut self, size: usize) -> Vec<u8>;
    /// The serialized response header map (`wire` layout); `None` when unreadable.
    fn response_headers(&mut self) -> Option<Vec<u8>>;
    /// One response header (an answer remembered for dedupe keeps its content type).
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>>;
    /// Envoy's `response.code_details`: who made the response.
    fn code_details(&mut self) -> Vec<u8>;
    /// The first `size` bytes of the buffered response body.
    fn response_body(&mut self, size: usize) -> Vec<u8>;
    /// Replaces the executor's held answer (its head and all `size` bytes of its body)
    /// with `reply`, which then goes on to the sender; false when the host could not.
    /// Only at the end of the answer's body, the one place Envoy allows it.
    fn replace_answer(&mut self, reply: &Reply, size: usize) -> bool;
    /// Answers the sender with a local reply.
    fn send(&mut self, reply: &Reply);
    fn count(&mut self, counter: Counter);
    /// Unix seconds now, for signed timestamps. Under WASI the clock is Envoy's
    /// (`clock_time_get`), so the proxy-wasm host needs no call of its own.
    fn unix_time_s(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs())
    }
}

/// What every stream of a VM reads when a request head arrives.
#[derive(Clone, Copy)]
pub struct Site<'a> {
    pub prefix: &'a str,
    /// `None` while a live directory has never loaded and no static flows exist.
    pub flows: Option<&'a dyn Lookup>,
    /// The configuration's `max_body_bytes`: the drain limit where no flow is known.
    pub max_body_bytes: u64,
}
