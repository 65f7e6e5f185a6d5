//! The executor's answer to an admitted webhook (or Envoy's router's, on its behalf):
//! what to do with it (`plan`) and the sender's reply built from it (`reply`).

use minijinja::value::{merge_maps, ValueKind};
use minijinja::Value;
use serde_json::value::RawValue;

use crate::flows::{Flow, Mode};
use crate::reply::{self, Refusal, Reply};
use crate::wire;

/// The head of the answer coming back from the router.
#[derive(Debug, Clone, Copy)]
pub struct AnswerHead {
    pub status: u16,
    /// The executor itself answered (`response.code_details` is `via_upstream`);
    /// otherwise Envoy's router made the reply (no host, reset, timeout).
    pub via_upstream: bool,
    /// The router gave up waiting (`response_timeout`).
    pub timed_out: bool,
    /// Envoy's global rate-limit filter, after flowgate, refused the request
    /// (`request_rate_limited`): a fleet-wide limit (contract 8).
    pub rate_limited: bool,
}

impl AnswerHead {
    /// Judges the router's answer; `code_details` reads Envoy's `response.code_details`
    /// property and is only called for non-2xx statuses: the router makes error replies
    /// itself, never a 2xx, so a 2xx is always the executor's.
    pub fn new(status: u16, code_details: impl FnOnce() -> Vec<u8>) -> Self {
        if (200..300).contains(&status) {
            return AnswerHead {
                status,
                via_upstream: true,
                timed_out: false,
                rate_limited: false,
            };
        }
        let details = code_details();
        AnswerHead {
            status,
            via_upstream: details == b"via_upstream",
            timed_out: details.windows(16).any(|w| w == b"response_timeout"),
            rate_limited: details == b"request_rate_limited",
        }
    }
}

/// The response's `:status` (0 if unreadable) and announced `content-length`, from its
/// serialized header map: one read of the head instead of one per header.
pub fn status_and_length(map: &[u8]) -> (u16, Option<usize>) {
    let headers = wire::decode_header_map(map).unwrap_or_default();
    let value = |name: &[u8]| {
        let (_, value) = headers.iter().find(|(n, _)| *n == name)?;
        std::str::from_utf8(value).ok()
    };
    let status = value(b":status").and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, value(b"content-length").and_then(|s| s.trim().parse().ok()))
}

/// What to do with the executor's response.
#[derive(Debug, PartialEq, Eq)]
pub enum AnswerPlan {
    /// Hand it to the sender unchanged (sync flow without a response template).
    PassThrough,
    /// Replace it with this refusal's envelope now.
    Refuse(Refusal),
    /// Hold the whole answer, then call [`reply`].
    Hold,
}

pub fn plan(flow: &Flow, head: AnswerHead) -> AnswerPlan {
    if head.rate_limited {
        return AnswerPlan::Refuse(Refusal::RateLimited { retry_after_s: 1 });
    }
    if !head.via_upstream {
        return AnswerPlan::Refuse(if head.timed_out || head.status == 504 {
            Refusal::ExecutorTimeout
        } else {
            Refusal::ExecutorUnavailable
        });
    }
    if flow.mode == Mode::Async && matches!(head.status, 429 | 503) {
        // The executor says it cannot queue the run now: nothing was accepted, so the
        // sender is told to retry (contract 3.2).
        return AnswerPlan::Refuse(Refusal::ExecutorUnavailable);
    }
    if !(200..300).contains(&head.status) {
        return AnswerPlan::Refuse(Refusal::ExecutorError {
            upstream_status: head.status,
            detail: "flow executor answered with an error",
        });
    }
    match passes_through(flow) {
        true => AnswerPlan::PassThrough,
        false => AnswerPlan::Hold,
    }
}

/// A sync flow without a response template hands the executor's 2xx answer on unchanged.
pub fn passes_through(flow: &Flow) -> bool {
    flow.mode == Mode::Sync && flow.response.is_none()
}

/// Builds the sender's answer from the executor's 2xx body and the request body
/// (bound as `<ref_id>`; none when the flow keeps no body).
pub fn reply(flow: &Flow, status: u16, request_body: Value, executor_body: &[u8]) -> Result<Reply, Refusal> {
    let context = match flow.mode {
        Mode::Async => {
            // The run is accepted (2xx) whatever the body says; only an object is passed on.
            let run = serde_json::from_slice::<&RawValue>(executor_body)
                .ok()
                .filter(|raw| raw.get().starts_with('{'));
            if flow.response.is_none() {
                return Ok(reply::run_scheduled(run));
            }
            let run = run
                .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
                .unwrap_or_default();
            Value::from_iter([(flow.ref_id.as_str(), request_body), ("run", run)])
        }
        Mode::Sync => {
            let output = serde_json::from_slice::<Value>(executor_body)
                .ok()
                .filter(|v| v.kind() == ValueKind::Map);
            let Some(output) = output else {
                return Err(Refusal::ExecutorError {
                    upstream_status: status,
                    detail: "flow executor output is not a JSON object",
                });
            };
            // The request body wins over a step output of the same name (contract 3.1):
            // `merge_maps` lets a later map's key shadow an earlier one's.
            merge_maps([output, Value::from_iter([(flow.ref_id.as_str(), request_body)])])
        }
    };
    let Some(template) = &flow.response else {
        // `plan` passes sync flows without a template straight through.
        return Err(Refusal::ExecutorError {
            upstream_status: status,
            detail: "flow has no response template",
        });
    };
    let body = template
        .render(&context)
        .map_err(|detail| Refusal::TemplateError { detail })?;
    Ok(Reply {
        status: template.status,
        headers: vec![("content-type", template.content_type.clone())],
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginConfig;

    const DIGEST: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const SEED: &str = "{\"valid\": {% if res1.value == \"myResult\" %}\"{{ res1.value }}\"{% else %}false{% endif %}}";

    fn flows() -> PluginConfig {
        let flow = |id: &str, asynchronous: bool, response: Option<&str>| {
            let mut flow = serde_json::json!({"id": id, "ref_id": "web1", "status": "live", "token_sha256": [DIGEST], "async": asynchronous});
            if let Some(body) = response {
                flow["response"] = serde_json::json!({"status": 201, "body": body});
            }
            flow
        };
        let config = serde_json::json!({"flows": [
            flow("seed", false, Some(SEED)),
            flow("echo", false, Some("{{ web1.company_id }}/{{ res1.value }}")),
            flow("plain", false, None),
            flow("queued", true, None),
            flow("queued-tpl", true, Some("{{ run.run_id }} for {{ web1.company_id }}")),
            flow("broken", false, Some("{{ res1.value.x.y }}")),
        ]});
        PluginConfig::parse(config.to_string().as_bytes()).unwrap()
    }

    fn answer_for(id: &str, body: serde_json::Value, executor: &str) -> Result<Reply, Refusal> {
        let config = flows();
        reply(
            config.flows.get(id).unwrap(),
            200,
            Value::from_serialize(body),
            executor.as_bytes(),
        )
    }

    fn via_upstream(status: u16) -> AnswerHead {
        AnswerHead::new(status, || b"via_upstream".to_vec())
    }

    #[test]
    fn the_head_is_read_from_one_header_map() {
        let map = wire::encode_header_map(&[(":status", "202"), ("content-length", " 17 "), ("x-run", "1")]);
        assert_eq!(status_and_length(&map), (202, Some(17)));
        let map = wire::encode_header_map(&[(":status", "abc"), ("content-length", "-1")]);
        assert_eq!(status_and_length(&map), (0, None));
        // An unreadable map is no status at all: the router's or a broken answer.
        assert_eq!(status_and_length(b"\x05"), (0, None));
    }

    #[test]
    fn envoy_router_replies_become_executor_faults() {
        let config = flows();
        let flow = config.flows.get("plain").unwrap();
        let refused = AnswerHead::new(503, || {
            b"upstream_reset_before_response_started{remote_connection_failure}".to_vec()
        });
        assert_eq!(plan(flow, refused), AnswerPlan::Refuse(Refusal::ExecutorUnavailable));
        assert_eq!(
            plan(flow, AnswerHead::new(504, || b"response_timeout".to_vec())),
            AnswerPlan::Refuse(Refusal::ExecutorTimeout)
        );
        assert_eq!(
            plan(flow, AnswerHead::new(503, || b"no_healthy_upstream".to_vec())),
            AnswerPlan::Refuse(Refusal::ExecutorUnavailable)
        );
        // Envoy's global rate-limit filter after flowgate: its 429 becomes the envelope.
        assert_eq!(
            plan(flow, AnswerHead::new(429, || b"request_rate_limited".to_vec())),
            AnswerPlan::Refuse(Refusal::RateLimited { retry_after_s: 1 })
        );
        assert_eq!(
            plan(flow, via_upstream(429)),
            AnswerPlan::Refuse(Refusal::ExecutorError {
                upstream_status: 429,
                detail: "flow executor answered with an error"
            })
        );
    }

    #[test]
    fn a_2xx_is_the_executors_without_a_property_lookup() {
        let head = AnswerHead::new(200, || unreachable!("no lookup for a 2xx"));
        assert!(head.via_upstream);
    }

    #[test]
    fn executor_errors_are_502_whatever_the_flow() {
        let config = flows();
        for id in ["plain", "seed", "queued"] {
            let plan = plan(config.flows.get(id).unwrap(), via_upstream(500));
            assert!(
                matches!(
                    plan,
                    AnswerPlan::Refuse(Refusal::ExecutorError {
                        upstream_status: 500,
                        ..
                    })
                ),
                "{id}"
            );
        }
    }

    #[test]
    fn an_async_executor_that_cannot_queue_asks_the_sender_to_retry() {
        let config = flows();
        for status in [429, 503] {
            let plan = plan(config.flows.get("queued").unwrap(), via_upstream(status));
            assert_eq!(plan, AnswerPlan::Refuse(Refusal::ExecutorUnavailable), "{status}");
        }
        let sync = plan(config.flows.get("plain").unwrap(), via_upstream(503));
        assert!(matches!(
            sync,
            AnswerPlan::Refuse(Refusal::ExecutorError {
                upstream_status: 503,
                ..
            })
        ));
    }

    #[test]
    fn only_untemplated_sync_flows_pass_through() {
        let config = flows();
        assert_eq!(
            plan(config.flows.get("plain").unwrap(), via_upstream(200)),
            AnswerPlan::PassThrough
        );
        assert_eq!(
            plan(config.flows.get("seed").unwrap(), via_upstream(200)),
            AnswerPlan::Hold
        );
        assert_eq!(
            plan(config.flows.get("queued").unwrap(), via_upstream(202)),
            AnswerPlan::Hold
        );
    }

    #[test]
    fn sync_answers_render_the_flow_output_with_the_configured_status() {
        let reply = answer_for("seed", serde_json::Value::Null, r#"{"res1": {"value": "myResult"}}"#).unwrap();
        assert_eq!((reply.status, reply.body), (201, br#"{"valid": "myResult"}"#.to_vec()));
        let reply = answer_for("seed", serde_json::Value::Null, r#"{"res1": {"value": "nope"}}"#).unwrap();
        assert_eq!(reply.body, br#"{"valid": false}"#.to_vec());
    }

    #[test]
    fn the_request_body_binds_as_the_ref_id() {
        let reply = answer_for(
            "echo",
            serde_json::json!({"company_id": 123456}),
            r#"{"res1": {"value": 7}}"#,
        )
        .unwrap();
        assert_eq!(reply.body, b"123456/7".to_vec());
    }

    #[test]
    fn the_request_body_wins_over_a_step_output_named_like_the_ref_id() {
        let reply = answer_for(
            "echo",
            serde_json::json!({"company_id": 123456}),
            r#"{"web1": {"company_id": 999}, "res1": {"value": 7}}"#,
        )
        .unwrap();
        assert_eq!(reply.body, b"123456/7".to_vec());
    }

    #[test]
    fn non_object_output_is_an_executor_error() {
        for output in ["<html>oops", "[1,2]", ""] {
            let error = answer_for("seed", serde_json::Value::Null, output).unwrap_err();
            assert!(
                matches!(
                    error,
                    Refusal::ExecutorError {
                        upstream_status: 200,
                        ..
                    }
                ),
                "{output}"
            );
        }
    }

    #[test]
    fn async_acceptance_is_the_default_envelope_or_the_template() {
        let reply = answer_for("queued", serde_json::Value::Null, r#"{"run_id": "r-1"}"#).unwrap();
        assert_eq!(
            reply.body,
            br#"{"status":200,"error":null,"message":"Flow run scheduled","data":{"run_id": "r-1"}}"#.to_vec()
        );
        let reply = answer_for("queued", serde_json::Value::Null, "").unwrap();
        assert_eq!(
            reply.body,
            br#"{"status":200,"error":null,"message":"Flow run scheduled","data":null}"#.to_vec()
        );
        let reply = answer_for(
            "queued-tpl",
            serde_json::json!({"company_id": 5}),
            r#"{"run_id": "r-2"}"#,
        )
        .unwrap();
        assert_eq!((reply.status, reply.body), (201, b"r-2 for 5".to_vec()));
    }

    #[test]
    fn template_failures_are_template_errors() {
        let error = answer_for("broken", serde_json::Value::Null, r#"{"res1": {"value": 1}}"#).unwrap_err();
        assert!(
            matches!(&error, Refusal::TemplateError { detail } if detail.contains("line 1")),
            "{error:?}"
        );
    }
}
