//! The stream driven in-process by a recording host that behaves like Envoy: what a
//! `Continue` lets through, what a `Pause` holds, what a local reply sends.

use super::*;
use crate::auth;
use crate::config::PluginConfig;

const TOKEN: &str = "stream-token-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGH";
/// `f-small`'s `max_body_bytes`.
const SMALL: usize = 16;

fn config() -> PluginConfig {
    let digest: String = auth::digest(TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let flow = |id: &str, extra: serde_json::Value| {
        let mut flow = serde_json::json!({"id": id, "ref_id": "web1", "status": "live", "token_sha256": [digest]});
        if let (Some(flow), Some(extra)) = (flow.as_object_mut(), extra.as_object()) {
            flow.extend(extra.clone());
        }
        flow
    };
    let json = serde_json::json!({"flows": [
        flow("f-sync", serde_json::json!({"response": {"status": 201, "body": "{{ web1.a }}/{{ res1 }}"}})),
        flow("f-async", serde_json::json!({"async": true})),
        flow("f-paused", serde_json::json!({"status": "paused"})),
        flow("f-small", serde_json::json!({"max_body_bytes": SMALL})),
        flow("f-dedupe", serde_json::json!({"dedupe": {"key": "header:x-delivery", "window_s": 60}})),
        flow("f-limited", serde_json::json!({"rate_limit": {"requests_per_second": 1, "burst": 2}})),
        flow("f-dedupe-body", serde_json::json!({"async": true, "dedupe": {"key": "body:/id", "window_s": 60}})),
    ]});
    PluginConfig::parse(json.to_string().as_bytes()).unwrap()
}

/// Envoy as the stream sees it: the request's headers and held body, what went upstream,
/// the executor's answer, and what the sender got.
#[derive(Default)]
struct Envoy {
    headers: Vec<(String, String)>,
    trailers: Vec<(String, String)>,
    held: Vec<u8>,
    /// Request headers as they were when first continued, and the body bytes sent on.
    upstream: Option<Vec<(String, String)>>,
    upstream_body: Vec<u8>,
    upstream_trailers: Option<Vec<(String, String)>>,
    response: Vec<(String, String)>,
    code_details: &'static str,
    answer: Vec<u8>,
    replies: Vec<Reply>,
    /// Replies that replaced the executor's answer in place (also in `replies`).
    replaced: usize,
    /// The host cannot replace the answer (the stream must fall back to a local reply).
    replace_fails: bool,
    /// The event being delivered is the end of the answer's body.
    at_answer_end: bool,
    counts: Vec<Counter>,
    unreadable: bool,
    /// Envoy's shared data and clock (`tests/delivery.rs`).
    store: crate::delivery::MemoryStore,
}

impl Envoy {
    fn has(&self, name: &str) -> bool {
        self.upstream.iter().flatten().any(|(n, _)| n == name)
    }
}

impl Host for Envoy {
    fn request_headers(&mut self) -> Option<Vec<u8>> {
        (!self.unreadable).then(|| wire::encode_header_map(&self.headers))
    }
    fn request_trailers(&mut self) -> Option<Vec<u8>> {
        Some(wire::encode_header_map(&self.trailers))
    }
    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        self.headers.retain(|(n, _)| n != name);
        if let Some(value) = value {
            self.headers.push((name.to_string(), value.to_string()));
        }
    }
    fn remove_request_trailer(&mut self, name: &str) {
        self.trailers.retain(|(n, _)| n != name);
    }
    fn request_body(&mut self, size: usize) -> Vec<u8> {
        self.held.iter().copied().take(size).collect()
    }
    fn response_headers(&mut self) -> Option<Vec<u8>> {
        Some(wire::encode_header_map(&self.response))
    }
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        let (_, value) = self.response.iter().find(|(n, _)| n == name)?;
        Some(value.as_bytes().to_vec())
    }
    fn code_details(&mut self) -> Vec<u8> {
        self.code_details.as_bytes().to_vec()
    }
    fn response_body(&mut self, size: usize) -> Vec<u8> {
        self.answer.iter().copied().take(size).collect()
    }
    fn replace_answer(&mut self, reply: &Reply, size: usize) -> bool {
        assert!(self.at_answer_end, "an answer is replaced only at the end of its body");
        assert_eq!(size, self.answer.len(), "the whole answer is replaced");
        if self.replace_fails {
            return false;
        }
        self.replies.push(reply.clone());
        self.replaced += 1;
        true
    }
    fn send(&mut self, reply: &Reply) {
        self.replies.push(reply.clone());
    }
    fn count(&mut self, counter: Counter) {
        self.counts.push(counter);
    }
}

/// One callback, as Envoy may deliver it.
#[derive(Debug, Clone)]
enum Event {
    RequestHeaders { end: bool },
    RequestBody { chunk: Vec<u8>, end: bool },
    RequestTrailers,
    ResponseHeaders { end: bool },
    ResponseBody { chunk: Vec<u8>, end: bool },
    ResponseTrailers,
}

/// Feeds events to a stream the way Envoy applies its answers.
struct Run {
    stream: Stream,
    envoy: Envoy,
    config: PluginConfig,
    /// Some request callback answered `Continue` (the request went upstream).
    continued: bool,
    /// The answer flowgate held was let through by a response callback.
    answer_passed: bool,
}

impl Run {
    fn new(headers: &[(&str, &str)]) -> Run {
        let envoy = Envoy {
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            code_details: "via_upstream",
            ..Envoy::default()
        };
        Run {
            stream: Stream::default(),
            envoy,
            config: config(),
            continued: false,
            answer_passed: false,
        }
    }

    fn webhook(path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Run {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![(":method", "POST"), (":path", path)];
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer));
        }
        headers.extend_from_slice(extra);
        Run::new(&headers)
    }

    fn event(&mut self, event: Event) -> Action {
        let site = Site {
            prefix: &self.config.webhook_path_prefix,
            flows: Some(&self.config.flows),
            max_body_bytes: self.config.max_body_bytes,
        };
        let envoy = &mut self.envoy;
        envoy.at_answer_end = matches!(event, Event::ResponseBody { end: true, .. });
        let replaced = envoy.replaced;
        let trailers = matches!(event, Event::RequestTrailers);
        let (action, request) = match event {
            Event::RequestHeaders { end } => (self.stream.on_request_headers(envoy, site, end), true),
            Event::RequestBody { chunk, end } => {
                envoy.held.extend(chunk);
                let size = envoy.held.len();
                (self.stream.on_request_body(envoy, size, end), true)
            }
            Event::RequestTrailers => (self.stream.on_request_trailers(envoy), true),
            Event::ResponseHeaders { end } => (self.stream.on_response_headers(envoy, end), false),
            Event::ResponseBody { chunk, end } => {
                envoy.answer.extend(chunk);
                let size = envoy.answer.len();
                (self.stream.on_response_body(envoy, size, end), false)
            }
            Event::ResponseTrailers => (self.stream.on_response_trailers(envoy), false),
        };
        let envoy = &mut self.envoy;
        if envoy.replaced > replaced {
            // Replaced in place: the reply goes on only if the answer does.
            assert_eq!(action, Action::Continue, "a replaced answer must continue");
        }
        if action == Action::Continue {
            if request {
                self.continued = true;
                envoy.upstream.get_or_insert_with(|| envoy.headers.clone());
                envoy.upstream_body.append(&mut envoy.held);
                if trailers {
                    envoy.upstream_trailers = Some(envoy.trailers.clone());
                }
            } else if envoy.replies.is_empty() {
                self.answer_passed = true;
                envoy.answer.clear();
            }
        }
        action
    }

    fn events(&mut self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            self.event(event);
        }
    }

    /// The one reply the sender got: (status, envelope error code or body text).
    fn reply(&self) -> (u16, String) {
        assert_eq!(self.envoy.replies.len(), 1, "replies: {:?}", self.envoy.replies);
        let reply = &self.envoy.replies[0];
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        let what = match body.get("error").and_then(|e| e.as_str()) {
            Some(code) => code.to_string(),
            None => String::from_utf8_lossy(&reply.body).into_owned(),
        };
        (reply.status, what)
    }
}

fn body(chunk: &[u8], end: bool) -> Event {
    Event::RequestBody {
        chunk: chunk.to_vec(),
        end,
    }
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[test]
fn h2_trailers_end_a_refused_request_without_forwarding_it() {
    for token in [None, Some(TOKEN)] {
        let mut run = Run::webhook("/v1/flow-webhook/f-paused", token, &[JSON]);
        run.events([
            Event::RequestHeaders { end: false },
            body(b"{}", false),
            Event::RequestTrailers,
        ]);
        assert!(!run.continued, "{token:?}");
        let expected = if token.is_some() {
            (200, "biz_logic")
        } else {
            (401, "unauthorized")
        };
        assert_eq!(run.reply(), (expected.0, expected.1.to_string()));
    }
}

#[test]
fn trailers_end_an_admitted_body_which_is_checked_first() {
    let mut run = Run::webhook("/v1/flow-webhook/f-sync", Some(TOKEN), &[JSON]);
    run.events([
        Event::RequestHeaders { end: false },
        body(b"{\"a\":", false),
        Event::RequestTrailers,
    ]);
    assert!(!run.continued);
    assert_eq!(run.reply(), (400, "invalid_body".to_string()));

    let mut run = Run::webhook("/v1/flow-webhook/f-sync", Some(TOKEN), &[JSON]);
    run.envoy.trailers = vec![
        ("x-checksum".into(), "1".into()),
        ("x_flowgate_flow_id".into(), "evil".into()),
        ("authorization".into(), "Bearer leaked".into()),
    ];
    run.events([Event::RequestHeaders { end: false }, body(b"{\"a\":7}", false)]);
    assert!(!run.continued);
    assert_eq!(run.event(Event::RequestTrailers), Action::Continue);
    assert_eq!(run.envoy.upstream_body, b"{\"a\":7}");
    assert_eq!(
        run.envoy.upstream_trailers,
        Some(vec![("x-checksum".into(), "1".into())])
    );
}

#[test]
fn response_trailers_end_a_held_answer_which_is_rendered() {
    let mut run = Run::webhook("/v1/flow-webhook/f-sync", Some(TOKEN), &[JSON]);
    run.events([Event::RequestHeaders { end: false }, body(b"{\"a\":7}", true)]);
    run.envoy.response = vec![(":status".into(), "200".into())];
    run.events([
        Event::ResponseHeaders { end: false },
        Event::ResponseBody {
            chunk: b"{\"res1\": \"ok\"}".to_vec(),
            end: false,
        },
        Event::ResponseTrailers,
    ]);
    assert!(!run.answer_passed);
    assert_eq!(run.reply(), (201, "7/ok".to_string()));
}

/// An admitted sync webhook whose executor answered 200 with `answer`, in the stream's
/// response phase, held.
fn held_answer() -> Run {
    let mut run = Run::webhook("/v1/flow-webhook/f-sync", Some(TOKEN), &[JSON]);
    run.events([Event::RequestHeaders { end: false }, body(b"{\"a\":7}", true)]);
    run.envoy.response = vec![(":status".into(), "200".into())];
    assert_eq!(run.event(Event::ResponseHeaders { end: false }), Action::Pause);
    run
}

#[test]
fn the_rendered_reply_replaces_the_answer_in_place_at_its_end() {
    let mut run = held_answer();
    let chunk = |text: &str, end| Event::ResponseBody {
        chunk: text.as_bytes().to_vec(),
        end,
    };
    assert_eq!(run.event(chunk("{\"res1\": ", false)), Action::Pause);
    assert_eq!(run.event(chunk("\"ok\"}", true)), Action::Continue);
    assert_eq!(run.envoy.replaced, 1);
    assert!(!run.answer_passed);
    assert_eq!(run.reply(), (201, "7/ok".to_string()));
    // Whatever follows passes: it is the reply's own.
    assert_eq!(run.event(Event::ResponseTrailers), Action::Continue);
    assert_eq!(run.envoy.replies.len(), 1);
}

#[test]
fn an_answer_too_large_to_hold_is_refused_and_dropped_not_buffered() {
    let mut run = held_answer();
    let huge = Event::ResponseBody {
        chunk: vec![b' '; MAX_ANSWER_BYTES + 1],
        end: false,
    };
    // Kept, Envoy's buffer would overflow into its own 500 before the reply goes out.
    assert_eq!(run.event(huge), Action::Drop);
    assert_eq!(run.reply(), (502, "executor_error".to_string()));
}

#[test]
fn where_the_answer_cannot_be_replaced_the_reply_is_a_local_one() {
    // The host refuses the replacement.
    let mut run = held_answer();
    run.envoy.replace_fails = true;
    let end = Event::ResponseBody {
        chunk: b"{\"res1\": \"ok\"}".to_vec(),
        end: true,
    };
    assert_eq!(run.event(end), Action::Pause);
    assert_eq!((run.envoy.replaced, run.reply()), (0, (201, "7/ok".to_string())));

    // Trailers end the answer: its body is no longer the end of the stream.
    let mut run = held_answer();
    run.events([
        Event::ResponseBody {
            chunk: b"{\"res1\": \"ok\"}".to_vec(),
            end: false,
        },
        Event::ResponseTrailers,
    ]);
    assert_eq!((run.envoy.replaced, run.reply()), (0, (201, "7/ok".to_string())));

    // The answer ends with its head: there is no body to replace.
    let mut run = Run::webhook("/v1/flow-webhook/f-async", Some(TOKEN), &[JSON]);
    run.events([Event::RequestHeaders { end: false }, body(b"{}", true)]);
    run.envoy.response = vec![(":status".into(), "202".into())];
    assert_eq!(run.event(Event::ResponseHeaders { end: true }), Action::Pause);
    assert_eq!((run.envoy.replaced, run.reply().0), (0, 200));
}

#[test]
fn a_413_from_content_length_is_answered_without_waiting_for_the_body() {
    let length = (SMALL + 1).to_string();
    let mut run = Run::webhook("/v1/flow-webhook/f-small", Some(TOKEN), &[("content-length", &length)]);
    assert_eq!(run.event(Event::RequestHeaders { end: false }), Action::Pause);
    assert_eq!(run.reply(), (413, "payload_too_large".to_string()));
}

#[test]
fn refusals_of_an_expect_100_continue_request_do_not_wait_for_the_body() {
    let mut run = Run::webhook(
        "/v1/flow-webhook/f-sync",
        None,
        &[("content-length", "5"), ("expect", "100-Continue")],
    );
    run.event(Event::RequestHeaders { end: false });
    assert_eq!(run.reply(), (401, "unauthorized".to_string()));
    // Without it, a short body is read first so the connection stays open.
    let mut run = Run::webhook("/v1/flow-webhook/f-sync", None, &[("content-length", "5")]);
    run.event(Event::RequestHeaders { end: false });
    assert!(run.envoy.replies.is_empty());
    run.event(body(b"12345", true));
    assert_eq!(run.reply(), (401, "unauthorized".to_string()));
}

#[test]
fn a_refused_body_is_drained_only_up_to_the_flows_limit() {
    let length = (SMALL + 1).to_string();
    let mut run = Run::webhook(
        "/v1/flow-webhook/f-small",
        Some("wrong"),
        &[("content-length", &length)],
    );
    run.event(Event::RequestHeaders { end: false });
    assert_eq!(run.reply(), (401, "unauthorized".to_string()));
}

#[test]
fn unreadable_request_headers_are_refused() {
    let mut run = Run::new(&[(":method", "GET"), (":path", "/healthz")]);
    run.envoy.unreadable = true;
    assert_eq!(run.event(Event::RequestHeaders { end: true }), Action::Pause);
    assert_eq!(run.reply(), (400, "invalid_request".to_string()));
}

#[test]
fn underscore_spellings_of_own_headers_never_reach_the_executor() {
    let own = [
        ("x_flowgate_flow_id", "evil"),
        ("X_FLOWGATE_MODE", "evil"),
        ("x-flowgate_ref-id", "evil"),
    ];
    let mut run = Run::webhook("/v1/flow-webhook/f-async", Some(TOKEN), &own);
    assert_eq!(run.event(Event::RequestHeaders { end: true }), Action::Continue);
    let upstream = run.envoy.upstream.clone().unwrap();
    assert!(
        upstream
            .iter()
            .all(|(name, value)| !name.contains('_') && value != "evil"),
        "{upstream:?}"
    );
    assert!(!run.envoy.has("authorization"));
    let mut run = Run::new(&[(":method", "GET"), (":path", "/healthz"), own[0]]);
    assert_eq!(run.event(Event::RequestHeaders { end: true }), Action::Continue);
    assert!(!run.envoy.has("x_flowgate_flow_id"));
}

fn admitted_answer(flow: &str, status: &str, content_length: Option<usize>, answer: Vec<u8>) -> Run {
    let mut run = Run::webhook(&format!("/v1/flow-webhook/{flow}"), Some(TOKEN), &[JSON]);
    run.events([Event::RequestHeaders { end: false }, body(b"{\"a\":1}", true)]);
    assert!(run.continued);
    run.envoy.response = vec![(":status".into(), status.into())];
    if let Some(length) = content_length {
        run.envoy.response.push(("content-length".into(), length.to_string()));
    }
    run.event(Event::ResponseHeaders { end: false });
    if run.envoy.replies.is_empty() {
        run.event(Event::ResponseBody {
            chunk: answer,
            end: true,
        });
    }
    run
}

#[test]
fn an_answer_over_the_hold_limit_is_an_envelope_not_envoys_500() {
    let huge = |n: usize| format!("{{\"res1\": \"{}\"}}", "x".repeat(n)).into_bytes();
    for announced in [true, false] {
        let answer = huge(MAX_ANSWER_BYTES);
        let length = announced.then_some(answer.len());
        let run = admitted_answer("f-sync", "200", length, answer);
        assert_eq!(
            run.reply(),
            (502, "executor_error".to_string()),
            "announced {announced}"
        );
        // The async run was queued all the same: acknowledged, not failed.
        let answer = huge(MAX_ANSWER_BYTES);
        let run = admitted_answer("f-async", "202", length, answer);
        assert_eq!(run.reply().0, 200);
        assert!(run.reply().1.contains("Flow run scheduled"), "{:?}", run.reply());
    }
}

#[test]
fn flowgates_own_reply_passes_back_untouched_and_the_request_stays_held() {
    let mut run = Run::webhook("/v1/flow-webhook/f-sync", None, &[]);
    run.event(Event::RequestHeaders { end: true });
    run.envoy.response = vec![(":status".into(), "401".into())];
    assert_eq!(run.event(Event::ResponseHeaders { end: false }), Action::Continue);
    assert_eq!(run.event(body(b"late", false)), Action::Pause);
    assert_eq!(run.event(Event::RequestTrailers), Action::Pause);
    assert!(!run.continued);
}

mod delivery;
#[cfg(not(target_arch = "wasm32"))]
mod properties;
mod signed;
