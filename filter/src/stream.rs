//! One HTTP stream through the gate, as a state machine.
//!
//! The host (proxy-wasm in `host/`, a recorder in the tests) feeds it each event Envoy
//! delivers — request headers, body, trailers, response headers, body, trailers — and
//! does what it answers: continue or pause, plus the calls of [`Host`]. Every decision
//! is made here, so every sequence of events is tested in-process (`stream/tests.rs`).
//!
//! Invariants, whatever the order and chunking of the events:
//! - a refused request is never continued upstream; nothing is continued before the
//!   request is decided (fail closed);
//! - an admitted request is continued once its checks pass, without `Authorization`
//!   and without any sender-supplied `x-flowgate-*` header, in headers or trailers;
//! - an executor answer the stream holds ends as the rendered template or an envelope.

use minijinja::Value;

mod host;
mod trailers;

pub use host::{Action, Host, Site};
use trailers::strip_trailers;

use crate::answer::{self, AnswerHead, AnswerPlan};
use crate::delivery::{self, Delivery};
use crate::flows::Mode;
use crate::gate::{self, Admission, RequestHead, Verdict};
use crate::metrics::Counter;
use crate::reply::{Refusal, Reply};
use crate::wire;

/// Largest executor answer flowgate holds to render a reply: Envoy's default
/// `per_connection_buffer_limit_bytes`. A larger answer is refused by flowgate before
/// Envoy's buffer overflows (which would answer Envoy's own plain-text 500).
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// A refused request whose announced body is at most this long (and within the flow's
/// own limit, which Envoy's buffer is sized for) is read and dropped before the reply, so
/// Envoy keeps the sender's HTTP/1.1 connection open. Longer bodies close the connection.
pub const DRAIN_BYTES: u64 = 64 * 1024;

/// Where a held answer ended: its body's end is the one place it can be replaced in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Head,
    Body,
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

#[derive(Debug, Default)]
enum Phase {
    /// No request head yet.
    #[default]
    Start,
    /// Not a webhook: everything passes.
    Passing,
    /// Admitted; holding the request until its body has been checked.
    ReadingRequest {
        admission: Admission,
        content_type: Option<Vec<u8>>,
        received: usize,
    },
    /// Refused; reading the rest of a short announced body before answering.
    Draining { refusal: Refusal, limit: u64 },
    /// Handed to the executor; `request_body` is what templates see as `<ref_id>`.
    Forwarded { admission: Admission, request_body: Value },
    /// Holding the executor's 2xx answer to render the sender's reply.
    HoldingAnswer {
        admission: Admission,
        request_body: Value,
        status: u16,
        received: usize,
    },
    /// The executor's answer passes to the sender unchanged.
    PassingAnswer,
    /// flowgate answered (or Envoy did, while flowgate held the request): the request
    /// never continues, the reply passes back untouched.
    Replied,
}

/// The state of one stream.
#[derive(Debug, Default)]
pub struct Stream {
    phase: Phase,
    /// Its delivery id and dedupe claim (contract 8).
    delivery: Delivery,
}

impl Stream {
    pub fn on_request_headers(&mut self, host: &mut impl Host, site: Site<'_>, end_of_stream: bool) -> Action {
        if !matches!(self.phase, Phase::Start) {
            // A head is decided once.
            let phase = std::mem::take(&mut self.phase);
            return self.keep(phase, Direction::Request);
        }
        let Some(map) = host.request_headers() else {
            return self.refuse(host, Refusal::UnreadableRequest);
        };
        let Some(headers) = wire::decode_header_map(&map) else {
            return self.refuse(host, Refusal::UnreadableRequest);
        };
        for (name, _) in headers.iter().filter(|(name, _)| gate::is_own_header(name)) {
            match std::str::from_utf8(name) {
                Ok(name) => host.set_request_header(name, None),
                Err(_) => return self.refuse(host, Refusal::UnreadableRequest),
            }
        }
        let head = RequestHead::from_headers(&headers);
        let mut admission = match gate::decide(site.prefix, site.flows, &head) {
            Verdict::Pass => {
                host.count(Counter::Passed);
                self.phase = Phase::Passing;
                return Action::Continue;
            }
            Verdict::Refuse { refusal, flow_id } => {
                let flow_limit = site
                    .flows
                    .and_then(|flows| flows.flow(flow_id))
                    .map(|f| f.max_body_bytes);
                let limit = DRAIN_BYTES.min(flow_limit.unwrap_or(site.max_body_bytes));
                let drains = !end_of_stream
                    && !head.expects_continue
                    && !matches!(refusal, Refusal::PayloadTooLarge { .. })
                    && head.content_length.is_some_and(|length| length <= limit);
                if drains {
                    self.phase = Phase::Draining { refusal, limit };
                    return Action::Pause;
                }
                return self.refuse(host, refusal);
            }
            Verdict::Admit(admission) => admission,
        };
        admission.capture(&headers, || host.unix_time_s());
        if let Err(refusal) = self.delivery.read_headers(&admission.flow.controls, &headers) {
            return self.refuse(host, refusal);
        }
        host.set_request_header("authorization", None);
        for (name, value) in admission.forward_headers() {
            host.set_request_header(name, Some(value));
        }
        if end_of_stream {
            return self.finish_request(host, admission, head.content_type, &[]);
        }
        if admission.must_read_body(head.content_length) || admission.flow.controls.reads_body() {
            self.phase = Phase::ReadingRequest {
                admission,
                content_type: head.content_type.map(<[u8]>::to_vec),
                received: 0,
            };
            return Action::Pause;
        }
        self.forward(host, admission, Value::UNDEFINED)
    }

    /// `size` is what Envoy holds of the body so far (all of it while paused).
    pub fn on_request_body(&mut self, host: &mut impl Host, size: usize, end_of_stream: bool) -> Action {
        match std::mem::take(&mut self.phase) {
            Phase::Draining { refusal, limit } if end_of_stream || size as u64 > limit => self.refuse(host, refusal),
            Phase::ReadingRequest {
                admission,
                content_type,
                ..
            } => {
                if let Err(refusal) = admission.check_size(size as u64) {
                    return self.refuse(host, refusal);
                }
                if end_of_stream {
                    let body = host.request_body(size);
                    return self.finish_request(host, admission, content_type.as_deref(), &body);
                }
                self.phase = Phase::ReadingRequest {
                    admission,
                    content_type,
                    received: size,
                };
                Action::Pause
            }
            phase => self.keep(phase, Direction::Request),
        }
    }

    /// Trailers end the request: the body callback never sees its end then.
    pub fn on_request_trailers(&mut self, host: &mut impl Host) -> Action {
        match std::mem::take(&mut self.phase) {
            Phase::Draining { refusal, .. } => self.refuse(host, refusal),
            Phase::ReadingRequest {
                admission,
                content_type,
                received,
            } => {
                if !strip_trailers(host, true) {
                    return self.refuse(host, Refusal::UnreadableRequest);
                }
                let body = host.request_body(received);
                self.finish_request(host, admission, content_type.as_deref(), &body)
            }
            phase @ (Phase::Passing | Phase::Forwarded { .. } | Phase::HoldingAnswer { .. } | Phase::PassingAnswer) => {
                let admitted = !matches!(phase, Phase::Passing);
                if !strip_trailers(host, admitted) {
                    return self.refuse(host, Refusal::UnreadableRequest);
                }
                self.phase = phase;
                Action::Continue
            }
            phase => self.keep(phase, Direction::Request),
        }
    }

    pub fn on_response_headers(&mut self, host: &mut impl Host, end_of_stream: bool) -> Action {
        let (admission, request_body) = match std::mem::take(&mut self.phase) {
            Phase::Forwarded {
                admission,
                request_body,
            } => (admission, request_body),
            Phase::ReadingRequest { .. } | Phase::Draining { .. } | Phase::Start => {
                // Envoy answers itself while flowgate holds the request (its own 413 for a
                // body over its buffer, a timeout): the request never continues.
                self.phase = Phase::Replied;
                return Action::Continue;
            }
            phase => return self.keep(phase, Direction::Response),
        };
        let (status, announced) = answer::status_and_length(&host.response_headers().unwrap_or_default());
        let head = AnswerHead::new(status, || host.code_details());
        match answer::plan(&admission.flow, head) {
            // A delivery to remember holds even an answer that passes unchanged.
            AnswerPlan::PassThrough if !self.delivery.holds_answer() => {
                self.phase = Phase::PassingAnswer;
                Action::Continue
            }
            AnswerPlan::Refuse(fault) => self.refuse(host, fault),
            AnswerPlan::Hold | AnswerPlan::PassThrough => {
                if announced.is_some_and(|length| length > MAX_ANSWER_BYTES) {
                    return self.too_large(host, &admission, request_body, status);
                }
                if end_of_stream {
                    // No body to replace: the reply goes as a local reply.
                    return self.finish_answer(host, &admission, request_body, status, 0, Ending::Head);
                }
                self.phase = Phase::HoldingAnswer {
                    admission,
                    request_body,
                    status,
                    received: 0,
                };
                Action::Pause
            }
        }
    }

    pub fn on_response_body(&mut self, host: &mut impl Host, size: usize, end_of_stream: bool) -> Action {
        match std::mem::take(&mut self.phase) {
            Phase::HoldingAnswer {
                admission,
                request_body,
                status,
                ..
            } if size > MAX_ANSWER_BYTES => match self.too_large(host, &admission, request_body, status) {
                // Replied: the rest of the answer is dropped as it comes, not buffered.
                Action::Pause => Action::Drop,
                action => action,
            },
            Phase::HoldingAnswer {
                admission,
                request_body,
                status,
                ..
            } if end_of_stream => self.finish_answer(host, &admission, request_body, status, size, Ending::Body),
            Phase::HoldingAnswer {
                admission,
                request_body,
                status,
                ..
            } => {
                self.phase = Phase::HoldingAnswer {
                    admission,
                    request_body,
                    status,
                    received: size,
                };
                Action::Pause
            }
            phase => self.keep(phase, Direction::Response),
        }
    }

    /// Trailers end the answer: a held one is replaced, its trailers dropped with it.
    pub fn on_response_trailers(&mut self, host: &mut impl Host) -> Action {
        match std::mem::take(&mut self.phase) {
            Phase::HoldingAnswer {
                admission,
                request_body,
                status,
                received,
            } => self.finish_answer(host, &admission, request_body, status, received, Ending::Trailers),
            phase => self.keep(phase, Direction::Response),
        }
    }

    /// Leaves `phase` unchanged: request data continues only once the request was let
    /// through, response data unless flowgate holds it.
    fn keep(&mut self, phase: Phase, direction: Direction) -> Action {
        let holds = match phase {
            Phase::Start | Phase::ReadingRequest { .. } | Phase::Draining { .. } => direction == Direction::Request,
            // Only the reply flowgate made (or Envoy's) is still to pass back.
            Phase::Replied => direction == Direction::Request,
            Phase::HoldingAnswer { .. } => direction == Direction::Response,
            Phase::Passing | Phase::Forwarded { .. } | Phase::PassingAnswer => false,
        };
        self.phase = phase;
        if holds {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn finish_request(
        &mut self,
        host: &mut impl Host,
        admission: Admission,
        content_type: Option<&[u8]>,
        body: &[u8],
    ) -> Action {
        let checked = admission.check_body(content_type, body).and_then(|request_body| {
            self.delivery.read_body(&admission.flow.controls, body)?;
            Ok(request_body)
        });
        match checked {
            Ok(request_body) => self.forward(host, admission, request_body),
            Err(refusal) => self.refuse(host, refusal),
        }
    }

    fn forward(&mut self, host: &mut impl Host, admission: Admission, request_body: Value) -> Action {
        if let Err(reply) = self.delivery.admit(host, &admission.flow) {
            return self.send(host, &reply);
        }
        host.count(Counter::Admitted(admission.flow.mode));
        self.phase = Phase::Forwarded {
            admission,
            request_body,
        };
        Action::Continue
    }

    fn finish_answer(
        &mut self,
        host: &mut impl Host,
        admission: &Admission,
        request_body: Value,
        status: u16,
        size: usize,
        ending: Ending,
    ) -> Action {
        let output = host.response_body(size);
        if answer::passes_through(&admission.flow) {
            // Held only to be remembered (`holds_answer`): it goes on unchanged.
            let reply = delivery::passed(status, host.response_header("content-type"), output);
            self.delivery.settle(host, Some(&reply));
            self.phase = Phase::PassingAnswer;
            return Action::Continue;
        }
        let reply = match answer::reply(&admission.flow, status, request_body, &output) {
            Ok(reply) => reply,
            Err(fault) => return self.refuse(host, fault),
        };
        host.count(Counter::Rendered);
        self.delivery.settle(host, Some(&reply));
        // In place, the reply skips a local reply's second pass through the filter chain.
        if ending == Ending::Body && host.replace_answer(&reply, size) {
            self.phase = Phase::Replied;
            return Action::Continue;
        }
        self.send(host, &reply)
    }

    /// An answer too large to hold: a sync flow's output is lost (502); an async run
    /// was accepted all the same (2xx), so it is acknowledged without the executor's object.
    fn too_large(&mut self, host: &mut impl Host, admission: &Admission, request_body: Value, status: u16) -> Action {
        if answer::passes_through(&admission.flow) {
            self.delivery.settle(host, None);
            self.phase = Phase::PassingAnswer;
            return Action::Continue;
        }
        if admission.flow.mode == Mode::Async {
            if let Ok(reply) = answer::reply(&admission.flow, status, request_body, &[]) {
                host.count(Counter::Rendered);
                self.delivery.settle(host, Some(&reply));
                return self.send(host, &reply);
            }
        }
        self.refuse(
            host,
            Refusal::ExecutorError {
                upstream_status: status,
                detail: "flow executor output is too large",
            },
        )
    }

    fn refuse(&mut self, host: &mut impl Host, refusal: Refusal) -> Action {
        self.delivery.settle(host, None);
        host.count(Counter::Refused(refusal.code()));
        if let Refusal::InvalidSignature { failure } = &refusal {
            host.count(Counter::InvalidSignature(failure.reason()));
        }
        self.send(host, &refusal.reply())
    }

    fn send(&mut self, host: &mut impl Host, reply: &Reply) -> Action {
        self.phase = Phase::Replied;
        host.send(reply);
        Action::Pause
    }
}

#[cfg(test)]
mod tests;
