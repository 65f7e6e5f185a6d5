//! Property tests over event sequences: every flow, credential, body, chunking and
//! ending (body end, trailers, reset) of a request, every kind of executor answer, and
//! arbitrary callback orders. Fixed seed: the same cases on every run.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use super::*;

/// Cases per property (shrunk on failure); `PROPTEST_CASES` raises it for a long run.
pub(super) fn cases() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x666c_6f77),
        failure_persistence: None,
        ..Config::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    /// Headers carry end of stream (no body).
    Headers,
    Body,
    Trailers,
    /// The stream is reset after some chunks: no end ever arrives.
    Reset,
}

#[derive(Debug, Clone)]
struct Request {
    path: &'static str,
    token: Option<&'static str>,
    content_type: Option<&'static str>,
    body: &'static [u8],
    announce: bool,
    expect: bool,
    ending: Ending,
    cuts: Vec<usize>,
}

fn request() -> impl Strategy<Value = Request> {
    let path = prop::sample::select(vec![
        "/v1/flow-webhook/f-sync",
        "/v1/flow-webhook/f-async",
        "/v1/flow-webhook/f-paused",
        "/v1/flow-webhook/f-small",
        "/v1/flow-webhook/f-none",
        "/v1/flow-webhook//f-sync",
        "/healthz",
    ]);
    let token = prop::sample::select(vec![Some(TOKEN), Some("wrong-token"), None]);
    let content_type = prop::sample::select(vec![Some("application/json"), Some("text/plain"), None]);
    let body: &[&[u8]] = &[
        b"",
        b"{\"a\":1}",
        b"{\"a\":",
        b"{\"a\":\"0123456789abcdef\"}",
        b"a=1&b=2",
    ];
    let body = prop::sample::select(body.to_vec());
    let ending = prop::sample::select(vec![Ending::Headers, Ending::Body, Ending::Trailers, Ending::Reset]);
    let cuts = prop::collection::vec(0usize..32, 0..4);
    (
        path,
        token,
        content_type,
        body,
        any::<bool>(),
        any::<bool>(),
        ending,
        cuts,
    )
        .prop_map(|(path, token, content_type, body, announce, expect, ending, cuts)| {
            let body = if ending == Ending::Headers { &b""[..] } else { body };
            Request {
                path,
                token,
                content_type,
                body,
                announce,
                expect,
                ending,
                cuts,
            }
        })
}

impl Request {
    fn run(&self) -> Run {
        let length = self.body.len().to_string();
        let mut extra = vec![("x_flowgate_mode", "evil"), ("X-Flowgate-Flow-Id", "evil")];
        if let Some(content_type) = self.content_type {
            extra.push(("content-type", content_type));
        }
        if self.announce {
            extra.push(("content-length", &length));
        }
        if self.expect {
            extra.push(("expect", "100-continue"));
        }
        let mut run = Run::webhook(self.path, self.token, &extra);
        run.envoy.trailers = vec![
            ("x_flowgate_flow_id".into(), "evil".into()),
            ("x-sum".into(), "1".into()),
        ];
        run.event(Event::RequestHeaders {
            end: self.ending == Ending::Headers,
        });
        if self.ending == Ending::Headers {
            return run;
        }
        let mut cuts: Vec<usize> = self.cuts.iter().map(|&c| c.min(self.body.len())).collect();
        cuts.sort_unstable();
        let mut start = 0;
        let chunks: Vec<&[u8]> = cuts
            .iter()
            .chain(std::iter::once(&self.body.len()))
            .map(|&end| {
                let chunk = &self.body[start..end.max(start)];
                start = end.max(start);
                chunk
            })
            .collect();
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let end = i == last && self.ending == Ending::Body;
            if i == last && self.ending == Ending::Reset {
                break;
            }
            run.event(body(chunk, end));
        }
        if self.ending == Ending::Trailers {
            run.event(Event::RequestTrailers);
        }
        run
    }

    /// The refusal the contract's order gives, `None` when admitted, `Some(None)`... no:
    /// `Ok(flow)` when admitted, `Err(code)` when refused, `Err("pass")` for other paths.
    fn expected(&self) -> Result<&'static str, &'static str> {
        let flow = match self.path.strip_prefix("/v1/flow-webhook/") {
            None => return Err("pass"),
            Some(flow) if flow.starts_with('/') => return Err("invalid_path"),
            Some(flow) => flow,
        };
        let flow = ["f-sync", "f-async", "f-paused", "f-small"]
            .into_iter()
            .find(|&f| f == flow)
            .ok_or("not_found")?;
        if self.token != Some(TOKEN) {
            return Err("unauthorized");
        }
        if flow == "f-paused" {
            return Err("biz_logic");
        }
        if flow == "f-small" && self.body.len() > SMALL {
            return Err("payload_too_large");
        }
        let json = self.content_type == Some("application/json");
        if json && serde_json::from_slice::<serde_json::Value>(self.body).is_err() {
            return Err("invalid_body");
        }
        Ok(flow)
    }
}

proptest! {
    #![proptest_config(cases())]

    /// A refused request never goes upstream; an admitted one goes once its body is
    /// checked, without the secret or forged `x-flowgate-*` headers; a finished refused
    /// request gets exactly its envelope.
    #[test]
    fn requests_go_upstream_only_when_admitted(request in request()) {
        let run = request.run();
        let finished = request.ending != Ending::Reset;
        match request.expected() {
            Err("pass") => {
                prop_assert!(run.continued);
                prop_assert!(run.envoy.replies.is_empty());
                prop_assert!(!run.envoy.has("x_flowgate_mode") && !run.envoy.has("X-Flowgate-Flow-Id"));
            }
            Err(code) => {
                prop_assert!(!run.continued, "refused ({code}) but continued");
                prop_assert!(run.envoy.replies.len() <= 1);
                // A reset may cut a drain short; a refusal from the head is sent at once.
                if finished || !run.envoy.replies.is_empty() {
                    prop_assert_eq!(run.reply().1, code);
                }
            }
            Ok(flow) if finished || !run.continued => {
                prop_assert_eq!(run.continued, finished || !request.body.is_empty() && run.continued);
                if run.continued {
                    prop_assert!(run.envoy.replies.is_empty());
                    prop_assert!(!run.envoy.has("authorization"));
                    prop_assert!(!run.envoy.has("x_flowgate_mode") && !run.envoy.has("X-Flowgate-Flow-Id"));
                    let upstream = run.envoy.upstream.clone().unwrap_or_default();
                    prop_assert!(upstream.contains(&("x-flowgate-flow-id".into(), flow.into())));
                    prop_assert!(upstream.iter().filter(|(n, _)| n.starts_with("x-flowgate-")).count() == 4);
                    if finished {
                        prop_assert_eq!(&run.envoy.upstream_body[..], request.body);
                    }
                    if let Some(trailers) = &run.envoy.upstream_trailers {
                        prop_assert_eq!(trailers, &vec![("x-sum".to_string(), "1".to_string())]);
                    }
                }
            }
            Ok(_) => {
                // Reset after a streamed (unchecked, unneeded) body was let through.
                prop_assert!(run.envoy.replies.is_empty());
                prop_assert!(!run.envoy.has("authorization"));
            }
        }
    }

    /// Every answer flowgate holds ends as its template or an envelope, never the
    /// executor's bytes, whatever its status, size, chunking or trailers.
    #[test]
    fn held_answers_end_as_template_or_envelope(
        flow in prop::sample::select(vec!["f-sync", "f-async", "f-small"]),
        status in prop::sample::select(vec![200u16, 202, 404, 429, 500, 503]),
        via_upstream in any::<bool>(),
        answer in prop::sample::select(vec![&b"{\"res1\":1,\"run_id\":\"r\"}"[..], b"[1]", b"", b"<html>"]),
        huge in prop::bool::weighted(0.05),
        announce in any::<bool>(),
        cuts in prop::collection::vec(0usize..24, 0..3),
        trailers in any::<bool>(),
    ) {
        let mut answer = answer.to_vec();
        if huge {
            answer.resize(MAX_ANSWER_BYTES + 1, b' ');
        }
        let mut run = Run::webhook(&format!("/v1/flow-webhook/{flow}"), Some(TOKEN), &[JSON]);
        run.events([Event::RequestHeaders { end: false }, body(b"{\"a\":1}", true)]);
        prop_assert!(run.continued);
        run.envoy.code_details = if via_upstream { "via_upstream" } else { "upstream_reset_before_response_started{remote_connection_failure}" };
        run.envoy.response = vec![(":status".into(), status.to_string())];
        if announce {
            run.envoy.response.push(("content-length".into(), answer.len().to_string()));
        }
        run.event(Event::ResponseHeaders { end: answer.is_empty() && !trailers });
        let mut start = 0;
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(answer.len())).collect();
        cuts.push(answer.len());
        cuts.sort_unstable();
        for (i, &end) in cuts.iter().enumerate() {
            let last = i == cuts.len() - 1;
            run.event(Event::ResponseBody { chunk: answer[start..end].to_vec(), end: last && !trailers });
            start = end;
        }
        if trailers {
            run.event(Event::ResponseTrailers);
        }
        // Envoy's router never makes a 2xx itself: a 2xx is the executor's.
        let ok = (200..300).contains(&status);
        if flow == "f-small" && ok {
            prop_assert!(run.answer_passed && run.envoy.replies.is_empty());
            return Ok(());
        }
        prop_assert!(!run.answer_passed, "the executor's answer passed");
        let (got, _) = run.reply();
        let expected = match (flow, ok) {
            (_, false) if !via_upstream || (flow == "f-async" && matches!(status, 429 | 503)) => 503,
            (_, false) => 502,
            ("f-async", true) => 200,
            (_, true) if huge || answer.first() != Some(&b'{') => 502,
            _ => 201,
        };
        prop_assert_eq!(got, expected);
    }

    /// Callbacks in any order and number (Envoy's, a buggy one's, a reset's): a request
    /// refused at its head is never continued, and nothing is sent twice.
    #[test]
    fn no_callback_order_lets_a_refused_request_through(
        path in prop::sample::select(vec!["/v1/flow-webhook/f-paused", "/v1/flow-webhook/f-sync", "/v1/flow-webhook/f-none"]),
        token in prop::sample::select(vec![Some(TOKEN), None]),
        events in prop::collection::vec(
            prop_oneof![
                any::<bool>().prop_map(|end| Event::RequestHeaders { end }),
                (prop::collection::vec(any::<u8>(), 0..8), any::<bool>()).prop_map(|(chunk, end)| Event::RequestBody { chunk, end }),
                Just(Event::RequestTrailers),
                any::<bool>().prop_map(|end| Event::ResponseHeaders { end }),
                (prop::collection::vec(any::<u8>(), 0..8), any::<bool>()).prop_map(|(chunk, end)| Event::ResponseBody { chunk, end }),
                Just(Event::ResponseTrailers),
            ],
            0..12,
        ),
    ) {
        let refused = path != "/v1/flow-webhook/f-sync" || token.is_none();
        let mut run = Run::webhook(path, token, &[JSON]);
        run.envoy.response = vec![(":status".into(), "200".into())];
        run.events(events);
        prop_assert!(run.envoy.replies.len() <= 1);
        if refused {
            prop_assert!(!run.continued);
        }
        if run.continued {
            prop_assert!(!run.envoy.has("authorization"));
        }
    }
}
