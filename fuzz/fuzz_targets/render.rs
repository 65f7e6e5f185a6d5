//! Answering an admitted webhook: response templates over arbitrary flow outputs.
//!
//! The executor's body is either arbitrary bytes or an arbitrary JSON value; the request
//! body is bound from arbitrary bytes under a chosen content type, or an arbitrary value.
//!
//! Invariants:
//! - `plan`, `reply` and `Refusal::reply` never panic;
//! - `plan` maps router replies to 503/504, an async executor's 429/503 to 503 (it could
//!   not queue the run), other non-2xx executor answers to 502, and passes through only
//!   sync flows without a template;
//! - `reply` is a `Reply` with the template's status and content type (or the default
//!   async envelope, 200, with the executor's object spliced in byte for byte), or an
//!   `Refusal` with status 500 (template error) or 502 (sync output that is not a JSON
//!   object);
//! - a rendered body is at most `render::MAX_OUTPUT_BYTES`; a template error never
//!   repeats a value from the flow output or request.
#![no_main]

use arbitrary::Arbitrary;
use flowgate::answer::{plan, reply, AnswerHead, AnswerPlan};
use flowgate::config::PluginConfig;
use flowgate::flows::{Flow, Mode};
use flowgate::reply::Refusal;
use flowgate_fuzz::{hex_digest, to_bytes, Json, TEMPLATES, TOKEN_A};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

/// Found in values, never in error messages.
const SECRET: &str = "s3cr3t-VALUE";

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    flow: u8,
    status: u16,
    code_details: CodeDetails<'a>,
    output: Output<'a>,
    request: Request<'a>,
}

#[derive(Arbitrary, Debug)]
enum CodeDetails<'a> {
    ViaUpstream,
    Timeout,
    Reset,
    Raw(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
enum Output<'a> {
    Bytes(&'a [u8]),
    Json(Json),
    /// A `res1`/`run_id` object around an arbitrary value, the shape templates expect.
    Shaped(Json),
    /// A secret-bearing value, to check errors do not echo values.
    Secret(Json),
}

#[derive(Arbitrary, Debug)]
enum Request<'a> {
    Json(Json),
    Body { content_type: ContentType, bytes: &'a [u8] },
}

#[derive(Arbitrary, Debug)]
enum ContentType {
    Json,
    Form,
    Text,
    None,
}

/// Sync flows `t0..` over [`TEMPLATES`], a sync flow without one, async flows with and without.
fn flows_json() -> Value {
    let digest = hex_digest(TOKEN_A);
    let mut flows: Vec<Value> = TEMPLATES
        .iter()
        .enumerate()
        .map(|(i, body)| {
            json!({"id": format!("t{i}"), "ref_id": "web1", "status": "live", "token_sha256": [digest],
                   "response": {"status": 210 + i, "body": body}})
        })
        .collect();
    flows.push(json!({"id": "plain", "ref_id": "web1", "status": "live", "token_sha256": [digest]}));
    flows.push(json!({"id": "queued", "ref_id": "web1", "status": "live", "token_sha256": [digest], "async": true}));
    flows.push(
        json!({"id": "queued-tpl", "ref_id": "web1", "status": "live", "token_sha256": [digest], "async": true,
        "response": {"status": 202, "content_type": "text/plain; charset=utf-8",
                     "body": "{{ run.run_id }} for {{ web1.company_id }} {{ run | tojson }}"}}),
    );
    json!({ "flows": flows })
}

thread_local! {
    static CONFIG: PluginConfig = match PluginConfig::parse(flows_json().to_string().as_bytes()) {
        Ok(config) => config,
        Err(e) => panic!("render fixture is invalid: {e}"),
    };
    static IDS: Vec<String> = {
        let mut ids: Vec<String> = (0..TEMPLATES.len()).map(|i| format!("t{i}")).collect();
        ids.extend(["plain", "queued", "queued-tpl"].map(String::from));
        ids
    };
}

fn output_bytes(output: &Output<'_>) -> (Vec<u8>, bool) {
    match output {
        Output::Bytes(bytes) => (bytes.to_vec(), false),
        Output::Json(value) => (to_bytes(&value.to_value()), false),
        Output::Shaped(value) => {
            let value = value.to_value();
            (
                to_bytes(&json!({"res1": value, "run_id": value, "value": value})),
                false,
            )
        }
        Output::Secret(value) => {
            let value = value.to_value();
            let body = json!({"res1": {"value": SECRET, "x": value, "a": SECRET, "b": [SECRET]}, "run_id": SECRET});
            (to_bytes(&body), true)
        }
    }
}

fn request_value(request: &Request<'_>) -> minijinja::Value {
    match request {
        Request::Json(value) => minijinja::Value::from_serialize(value.to_value()),
        Request::Body { content_type, bytes } => {
            let ct: Option<&[u8]> = match content_type {
                ContentType::Json => Some(b"application/json"),
                ContentType::Form => Some(b"application/x-www-form-urlencoded"),
                ContentType::Text => Some(b"text/plain"),
                ContentType::None => None,
            };
            flowgate::body::bind(ct, bytes)
        }
    }
}

fn check_plan(flow: &Flow, input: &Input<'_>) {
    let details: &[u8] = match &input.code_details {
        CodeDetails::ViaUpstream => b"via_upstream",
        CodeDetails::Timeout => b"response_timeout",
        CodeDetails::Reset => b"upstream_reset_before_response_started{connection_termination}",
        CodeDetails::Raw(raw) => raw,
    };
    let head = AnswerHead::new(input.status, || details.to_vec());
    let planned = plan(flow, head);
    match &planned {
        AnswerPlan::Refuse(reply) if !head.via_upstream => {
            assert!(matches!(reply.status(), 503 | 504), "{reply:?}");
        }
        AnswerPlan::Refuse(reply) => {
            assert!(!(200..300).contains(&input.status), "2xx replaced by {reply:?}");
            // An async executor that cannot queue the run (429/503) asks the sender to retry
            // (contract 3.2); any other non-2xx is an executor error.
            let cannot_queue = flow.mode == Mode::Async && matches!(input.status, 429 | 503);
            assert_eq!(reply.status(), if cannot_queue { 503 } else { 502 }, "{reply:?}");
        }
        AnswerPlan::PassThrough => {
            assert!(head.via_upstream && (200..300).contains(&input.status));
            assert!(flow.mode == Mode::Sync && flow.response.is_none());
        }
        AnswerPlan::Hold => {
            assert!(head.via_upstream && (200..300).contains(&input.status));
            assert!(flow.mode == Mode::Async || flow.response.is_some());
        }
    }
    if let AnswerPlan::Refuse(reply) = planned {
        check_edge_reply(&reply);
    }
}

fn check_edge_reply(reply: &Refusal) {
    let full = reply.reply();
    assert_eq!(full.status, reply.status());
    let envelope: Value = serde_json::from_slice(&full.body).unwrap_or_else(|e| {
        panic!(
            "reply body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&full.body)
        )
    });
    assert_eq!(envelope["error"], reply.code().as_str());
}

fn check_answer(flow: &Flow, input: &Input<'_>) {
    let (executor_body, secret) = output_bytes(&input.output);
    let request = request_value(&input.request);
    let status = 200 + input.status % 100;
    let output: Option<Value> = serde_json::from_slice(&executor_body).ok();
    let is_object = output.as_ref().is_some_and(Value::is_object);
    // The async envelope splices the executor's object as it came, however deep: an object
    // nested past serde_json::Value's 128 levels is still one (found by this target).
    let spliced = serde_json::from_slice::<&serde_json::value::RawValue>(&executor_body)
        .is_ok_and(|raw| raw.get().starts_with('{'));
    match reply(flow, status, request, &executor_body) {
        Ok(reply) => {
            assert!(reply.body.len() <= flowgate::render::MAX_OUTPUT_BYTES);
            match &flow.response {
                Some(template) => {
                    assert!(flow.mode == Mode::Async || is_object, "sync answer from a non-object");
                    assert_eq!(reply.status, template.status);
                    assert_eq!(reply.headers, vec![("content-type", template.content_type.clone())]);
                }
                None => {
                    assert_eq!(flow.mode, Mode::Async, "a sync flow without a template answered");
                    assert_eq!(reply.status, 200);
                    // The executor's object is spliced in as it came, byte for byte.
                    let text = String::from_utf8_lossy(&executor_body);
                    let data = if spliced {
                        text.trim_matches([' ', '\t', '\n', '\r'])
                    } else {
                        "null"
                    };
                    let expected =
                        format!(r#"{{"status":200,"error":null,"message":"Flow run scheduled","data":{data}}}"#);
                    assert_eq!(String::from_utf8_lossy(&reply.body), expected);
                }
            }
        }
        Err(reply) => {
            match &reply {
                Refusal::TemplateError { detail } => {
                    assert!(flow.response.is_some());
                    assert!(
                        !(secret && detail.contains(SECRET)),
                        "template error repeats a value: {detail}"
                    );
                }
                Refusal::ExecutorError { upstream_status, .. } => {
                    assert_eq!(*upstream_status, status);
                    assert!(
                        flow.mode == Mode::Sync && (!is_object || flow.response.is_none()),
                        "{reply:?} for an object output"
                    );
                }
                other => panic!("answer failed with {other:?}"),
            }
            assert!(matches!(reply.status(), 500 | 502), "{reply:?}");
            check_edge_reply(&reply);
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    CONFIG.with(|config| {
        IDS.with(|ids| {
            let id = &ids[usize::from(input.flow) % ids.len()];
            let Some(flow) = config.flows.get(id) else {
                panic!("fixture flow {id} missing");
            };
            check_plan(flow, &input);
            check_answer(flow, &input);
        })
    })
});
