//! Response templates of any shape, rendered over arbitrary flow outputs: is rendering
//! bounded whatever the template (a flow's template may come from the live directory)?
//!
//! Invariants:
//! - compiling (`PluginConfig::parse`) and rendering (`answer`) never panic;
//! - a template that does not compile is refused with an error at its `response.body`;
//! - an answer is a `Reply` with the template's status, or a 500 (template error);
//! - a render takes at most `MAX_RENDER` of wall time and stays under libFuzzer's memory
//!   limit (`scripts/fuzz.sh` runs this target with `-malloc_limit_mb=256`): fuel caps the
//!   template's instructions, the writer caps the output.
//!
//! Known to fail (see fuzz/README.md): minijinja's fuel does not meter work done inside
//! operators, filters and value formatting, so `{{ [1] * 1000000000 }}` runs for minutes and
//! `{% set a = 'x' * 100000000 %}{% set b = a ~ a ~ a ~ a %}` allocates 400 MB. Not in the
//! smoke run until that is bounded.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use flowgate::answer::answer;
use flowgate::config::PluginConfig;
use flowgate::reply::EdgeReply;
use flowgate_fuzz::{hex_digest, jinja, to_bytes, Json, TOKEN_A};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

/// Generous for an instrumented build on a busy machine; a bounded render takes milliseconds.
const MAX_RENDER: Duration = Duration::from_secs(5);

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    template: Vec<jinja::Piece<'a>>,
    output: Json,
    request: Json,
}

fuzz_target!(|input: Input<'_>| {
    let source = jinja::source(&input.template);
    let digest = hex_digest(TOKEN_A);
    let flow = |id: &str, asynchronous: bool| {
        json!({"id": id, "ref_id": "web1", "status": "live", "token_sha256": [digest], "async": asynchronous,
               "response": {"status": 203, "body": source}})
    };
    let config = json!({"flows": [flow("sync", false), flow("async", true)]});
    let config = match PluginConfig::parse(config.to_string().as_bytes()) {
        Ok(config) => config,
        Err(e) => {
            assert!(e.at.ends_with(".response.body"), "{e}");
            return;
        }
    };
    let output = input.output.to_value();
    let executor_body = to_bytes(&json!({"res1": output, "run_id": output, "value": output}));
    for id in ["sync", "async"] {
        let Some(flow) = config.flows.get(id) else {
            panic!("flow {id} missing");
        };
        let request = minijinja::Value::from_serialize(input.request.to_value());
        let started = Instant::now();
        let result = answer(flow, 200, request, &executor_body);
        let took = started.elapsed();
        assert!(took <= MAX_RENDER, "rendering took {took:?}: {source:?}");
        match result {
            Ok(reply) => assert_eq!(reply.status, 203),
            Err(reply) => assert!(matches!(reply, EdgeReply::TemplateError { .. }), "{reply:?}"),
        }
    }
});
