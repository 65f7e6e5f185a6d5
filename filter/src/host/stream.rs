//! One HTTP stream: applies the gate to the request and the answer rules to the
//! executor's response. The state of a stream is its `Phase`.

use std::rc::Rc;

use minijinja::Value;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::abi;
use super::metrics;
use super::root::Edge;
use crate::answer::{self, ExecutorHead, ResponsePlan};
use crate::config::Mode;
use crate::gate::{self, Admission, RequestHead, Verdict};
use crate::reply::{EdgeReply, Reply};

/// Largest executor answer flowgate reads to render a response.
const MAX_EXECUTOR_BODY_BYTES: usize = 8 * 1024 * 1024;
/// A refused request whose announced body is at most this long is read (and dropped)
/// before the reply: Envoy then keeps the sender's HTTP/1.1 connection open instead of
/// closing it. Longer bodies are not worth reading; their connection closes.
const DRAIN_BYTES: u64 = 64 * 1024;

enum Phase {
    /// Not a webhook, or an answer already passing through.
    Untouched,
    /// Admitted; holding the request until its body has been checked.
    ReadingRequest {
        admission: Admission,
        content_type: Option<Vec<u8>>,
    },
    /// Handed to the executor; `request_body` is what templates see as `<ref_id>`.
    Forwarded { admission: Admission, request_body: Value },
    /// Reading the executor's 2xx answer to render the sender's reply.
    ReadingAnswer {
        admission: Admission,
        request_body: Value,
        status: u16,
    },
    /// Refused; reading the rest of a short body so the connection can stay open.
    Draining { refusal: EdgeReply, flow_id: String },
    /// flowgate answered itself; its own reply must not be rewritten.
    Answered,
}

pub struct Stream {
    edge: Rc<Edge>,
    phase: Phase,
}

impl Stream {
    pub fn new(edge: Rc<Edge>) -> Self {
        Stream {
            edge,
            phase: Phase::Untouched,
        }
    }

    fn answer(&mut self, reply: Reply) -> Action {
        self.edge.metrics.count(metrics::ANSWERED);
        self.send(reply)
    }

    fn send(&mut self, reply: Reply) -> Action {
        self.phase = Phase::Answered;
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        if let Err(status) = hostcalls::send_http_response(u32::from(reply.status), headers, Some(&reply.body)) {
            log::warn!("flowgate: could not send reply: {status:?}");
        }
        Action::Pause
    }

    fn refuse(&mut self, refusal: EdgeReply, flow_id: &str) -> Action {
        log::debug!(
            "flowgate: {} flow={flow_id:?} status={}",
            refusal.code(),
            refusal.status()
        );
        self.edge.metrics.count(refusal.code());
        self.send(refusal.reply())
    }

    fn forward(&mut self, admission: Admission, request_body: Value) -> Action {
        self.edge.metrics.count(match admission.flow.mode {
            Mode::Sync => metrics::ADMITTED_SYNC,
            Mode::Async => metrics::ADMITTED_ASYNC,
        });
        self.phase = Phase::Forwarded {
            admission,
            request_body,
        };
        Action::Continue
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let map = abi::header_map(MapType::HttpRequestHeaders);
        let Some(headers) = crate::wire::decode_header_map(&map) else {
            log::warn!("flowgate: unreadable request headers");
            return Action::Continue;
        };
        for (name, _) in headers.iter().filter(|(name, _)| gate::is_own_header(name)) {
            if let Ok(name) = std::str::from_utf8(name) {
                abi::set_header(MapType::HttpRequestHeaders, name, None);
            }
        }
        let head = RequestHead::from_headers(&headers);
        let verdict = gate::decide(&self.edge.prefix, self.edge.flows.borrow().as_deref(), &head);
        let admission = match verdict {
            Verdict::Pass => {
                self.edge.metrics.count(metrics::PASSED);
                return Action::Continue;
            }
            Verdict::Reply { reply, flow_id } => {
                let flow_id = flow_id.get(..128).unwrap_or(flow_id);
                if !end_of_stream && head.content_length.is_some_and(|length| length <= DRAIN_BYTES) {
                    self.phase = Phase::Draining {
                        refusal: reply,
                        flow_id: flow_id.to_string(),
                    };
                    return Action::Pause;
                }
                return self.refuse(reply, flow_id);
            }
            Verdict::Admit(admission) => admission,
        };
        abi::set_header(MapType::HttpRequestHeaders, "authorization", None);
        for (name, value) in admission.forward_headers() {
            abi::set_header(MapType::HttpRequestHeaders, name, Some(value));
        }
        if end_of_stream {
            return match admission.check_body(head.content_type, &[]) {
                Ok(request_body) => self.forward(admission, request_body),
                Err(refusal) => self.refuse(refusal, &admission.flow.id),
            };
        }
        if admission.must_read_body(head.content_length) {
            let content_type = head.content_type.map(<[u8]>::to_vec);
            self.phase = Phase::ReadingRequest {
                admission,
                content_type,
            };
            return Action::Pause;
        }
        self.forward(admission, Value::UNDEFINED)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match std::mem::replace(&mut self.phase, Phase::Untouched) {
            Phase::Draining { refusal, flow_id } if end_of_stream => self.refuse(refusal, &flow_id),
            Phase::ReadingRequest {
                admission,
                content_type,
            } => {
                if let Err(refusal) = admission.check_size(body_size as u64) {
                    return self.refuse(refusal, &admission.flow.id);
                }
                if !end_of_stream {
                    self.phase = Phase::ReadingRequest {
                        admission,
                        content_type,
                    };
                    return Action::Pause;
                }
                let bytes = abi::buffer(BufferType::HttpRequestBody, body_size);
                match admission.check_body(content_type.as_deref(), &bytes) {
                    Ok(request_body) => self.forward(admission, request_body),
                    Err(refusal) => self.refuse(refusal, &admission.flow.id),
                }
            }
            other => {
                let action = if matches!(other, Phase::Draining { .. }) {
                    Action::Pause
                } else {
                    Action::Continue
                };
                self.phase = other;
                action
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Phase::Forwarded {
            admission,
            request_body,
        } = std::mem::replace(&mut self.phase, Phase::Untouched)
        else {
            // Not admitted, or flowgate's own reply: never rewritten.
            return Action::Continue;
        };
        let status = abi::header(MapType::HttpResponseHeaders, ":status")
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok())
            .unwrap_or(0);
        let head = ExecutorHead::new(status, || abi::property(vec!["response", "code_details"]));
        match answer::plan(&admission.flow, head) {
            ResponsePlan::PassThrough => Action::Continue,
            ResponsePlan::Reply(fault) => self.refuse(fault, &admission.flow.id),
            ResponsePlan::ReadBody => {
                self.phase = Phase::ReadingAnswer {
                    admission,
                    request_body,
                    status,
                };
                if end_of_stream {
                    return self.on_http_response_body(0, true);
                }
                Action::Pause
            }
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Phase::ReadingAnswer {
            admission,
            request_body,
            status,
        } = std::mem::replace(&mut self.phase, Phase::Untouched)
        else {
            return Action::Continue;
        };
        if body_size > MAX_EXECUTOR_BODY_BYTES {
            let fault = EdgeReply::ExecutorError {
                upstream_status: status,
                detail: "flow executor output is too large",
            };
            return self.refuse(fault, &admission.flow.id);
        }
        if !end_of_stream {
            self.phase = Phase::ReadingAnswer {
                admission,
                request_body,
                status,
            };
            return Action::Pause;
        }
        let output = abi::buffer(BufferType::HttpResponseBody, body_size);
        match answer::answer(&admission.flow, status, request_body, &output) {
            Ok(reply) => self.answer(reply),
            Err(fault) => self.refuse(fault, &admission.flow.id),
        }
    }
}
