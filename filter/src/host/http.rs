//! A stream's host side: translates proxy-wasm callbacks into events of the core's
//! [`Stream`] and its host calls into proxy-wasm calls. No decisions are made here.

use std::rc::Rc;

use super::abi::{self, Buffer, Map};
use super::root::Vm;
use crate::metrics::Counter;
use crate::reply::Reply;
use crate::stream::{Action, Host, Site, Stream};

pub struct Http {
    vm: Rc<Vm>,
    stream: Stream,
}

/// The proxy-wasm side of a stream's host calls.
struct Calls<'a>(&'a Vm);

impl Host for Calls<'_> {
    fn request_headers(&mut self) -> Option<Vec<u8>> {
        abi::header_map(Map::RequestHeaders)
    }

    fn request_trailers(&mut self) -> Option<Vec<u8>> {
        abi::header_map(Map::RequestTrailers)
    }

    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        abi::set_header(Map::RequestHeaders, name, value);
    }

    fn remove_request_trailer(&mut self, name: &str) {
        abi::set_header(Map::RequestTrailers, name, None);
    }

    fn request_body(&mut self, size: usize) -> Vec<u8> {
        abi::buffer(Buffer::RequestBody, size)
    }

    fn response_headers(&mut self) -> Option<Vec<u8>> {
        abi::header_map(Map::ResponseHeaders)
    }

    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        abi::header(Map::ResponseHeaders, name)
    }

    fn code_details(&mut self) -> Vec<u8> {
        abi::property(&["response", "code_details"])
    }

    fn response_body(&mut self, size: usize) -> Vec<u8> {
        abi::buffer(Buffer::ResponseBody, size)
    }

    fn replace_answer(&mut self, reply: &Reply, size: usize) -> bool {
        let (status, length) = (reply.status.to_string(), reply.body.len().to_string());
        let mut headers = vec![(":status", status.as_str()), ("content-length", length.as_str())];
        headers.extend(reply.headers.iter().map(|(name, value)| (*name, value.as_str())));
        abi::set_header_map(Map::ResponseHeaders, &headers) && abi::set_buffer(Buffer::ResponseBody, size, &reply.body)
    }

    fn send(&mut self, reply: &Reply) {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        abi::send_reply(reply.status, &headers, &reply.body);
    }

    fn count(&mut self, counter: Counter) {
        if let Counter::Refused(code) = counter {
            log::debug!("flowgate: refused: {}", code.as_str());
        }
        self.0.metrics.count(counter);
    }
}

// Envoy's shared data (delivery controls).
envoy_store!(Calls<'_>);

impl Http {
    pub fn new(vm: Rc<Vm>) -> Self {
        vm.requests.set(vm.requests.get() + 1);
        Http {
            vm,
            stream: Stream::default(),
        }
    }

    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        let vm = &*self.vm;
        let flows = vm.flows.borrow();
        let site = Site {
            prefix: &vm.prefix,
            flows: flows.lookup(),
            max_body_bytes: vm.max_body_bytes,
        };
        self.stream.on_request_headers(&mut Calls(vm), site, end_of_stream)
    }

    pub fn on_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.stream.on_request_body(&mut Calls(&self.vm), size, end_of_stream)
    }

    pub fn on_request_trailers(&mut self) -> Action {
        self.stream.on_request_trailers(&mut Calls(&self.vm))
    }

    pub fn on_response_headers(&mut self, end_of_stream: bool) -> Action {
        self.stream.on_response_headers(&mut Calls(&self.vm), end_of_stream)
    }

    pub fn on_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.stream.on_response_body(&mut Calls(&self.vm), size, end_of_stream)
    }

    pub fn on_response_trailers(&mut self) -> Action {
        self.stream.on_response_trailers(&mut Calls(&self.vm))
    }
}
