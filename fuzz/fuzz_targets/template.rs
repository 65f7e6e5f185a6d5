//! Response templates of any shape, rendered over arbitrary flow outputs: is rendering
//! bounded whatever the template? Templates are tenant input (a flow's template may come
//! from the live directory), so this must hold for every source.
//!
//! Input: either `jinja:<source>` (a template verbatim, as the committed regressions in
//! `fuzz/regressions/template/` are written) or arbitrary bytes read as Jinja pieces plus
//! an executor output and a request body.
//!
//! Invariants:
//! - compiling (`PluginConfig::parse`) and rendering (`reply`) never panic;
//! - a template that does not compile is refused with an error at its `response.body`;
//! - an answer is a `Reply` with the template's status, or a 500 (template error);
//! - a render takes at most `MAX_RENDER` of the thread's CPU time (not wall time, so a busy
//!   machine does not fail it) and stays under libFuzzer's memory
//!   limit (`scripts/fuzz.sh` runs this target with `-malloc_limit_mb=256`): fuel caps the
//!   template's instructions, flowgate's render budget the work inside them, the writer
//!   the output.
#![no_main]

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use flowgate::answer::reply;
use flowgate::config::PluginConfig;
use flowgate::reply::Refusal;
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

fuzz_target!(|data: &[u8]| {
    if let Some(source) = data.strip_prefix(b"jinja:") {
        let output = json!({"value": "myResult", "n": 7, "list": [1, 2, 3]});
        let request = json!({"company_id": 987654321, "user_id": 0, "tags": ["a", "b"]});
        check(&String::from_utf8_lossy(source), &output, &request);
    } else if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        check(
            &jinja::source(&input.template),
            &input.output.to_value(),
            &input.request.to_value(),
        );
    }
});

fn check(source: &str, output: &serde_json::Value, request: &serde_json::Value) {
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
    let executor_body = to_bytes(&json!({"res1": output, "run_id": output, "value": output}));
    for id in ["sync", "async"] {
        let Some(flow) = config.flows.get(id) else {
            panic!("flow {id} missing");
        };
        let request = minijinja::Value::from_serialize(request);
        let started = cpu_time();
        let result = reply(flow, 200, request, &executor_body);
        let took = cpu_time().saturating_sub(started);
        // Open-ended runs time every render; the smoke replay in CI does not (no timing asserts).
        if std::env::var_os("FLOWGATE_FUZZ_UNTIMED").is_none() {
            assert!(took <= MAX_RENDER, "rendering took {took:?}: {source:?}");
        }
        match result {
            Ok(reply) => assert_eq!(reply.status, 203),
            Err(Refusal::TemplateError { detail }) => {
                // Render errors name the line and the kind of failure, never a value.
                let secret = "987654321";
                assert!(source.contains(secret) || !detail.contains(secret), "{detail}");
            }
            Err(reply) => panic!("answer failed with {reply:?}"),
        }
    }
}

/// The CPU time this thread has used: what a render costs, whatever else the machine runs.
fn cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}
