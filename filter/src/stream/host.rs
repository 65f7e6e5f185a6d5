//! What a stream exchanges with its host: the calls it makes, what it answers each
//! callback, the outcomes it counts and the per-VM facts it reads.

use crate::flows::Flows;
use crate::metrics::Counter;
use crate::reply::Reply;

/// What the host does with the event's data: pass it on, or hold it (buffering bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
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
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>>;
    /// Envoy's `response.code_details`: who made the response.
    fn code_details(&mut self) -> Vec<u8>;
    /// The first `size` bytes of the buffered response body.
    fn response_body(&mut self, size: usize) -> Vec<u8>;
    /// Answers the sender with a local reply.
    fn send(&mut self, reply: &Reply);
    fn count(&mut self, counter: Counter);
}

/// What every stream of a VM reads when a request head arrives.
#[derive(Clone, Copy)]
pub struct Site<'a> {
    pub prefix: &'a str,
    /// `None` while a live directory has never loaded and no static flows exist.
    pub flows: Option<&'a Flows>,
    /// The configuration's `max_body_bytes`: the drain limit where no flow is known.
    pub max_body_bytes: u64,
}
