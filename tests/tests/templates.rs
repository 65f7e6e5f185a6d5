//! Response templates are tenant input (contract 2): whatever a template does, it fails fast
//! as 500 `template_error` naming its line, never repeats a value, and never takes the worker's
//! VM down for the other flows on it. And the request body wins over a step of the same name.

use flowgate_e2e::*;
use serde_json::{json, Value};

const TOKEN: &str = "templates-token-0123456789-abcdefghijklmnopqrstuvwxyz-ABC";

/// One sync flow per template, each with a step `res1` whose value is `'step'`.
fn flows(templates: &[(&str, &str)], steps: Value) -> Value {
    let flows: Vec<Value> = templates
        .iter()
        .map(|(id, body)| {
            json!({"id": id, "ref_id": "web1", "status": "live", "token_sha256": [sha256_hex(TOKEN)],
                   "response": {"status": 200, "body": body}, "steps": steps})
        })
        .collect();
    json!({ "flows": flows })
}

fn post(stack: &Stack, flow_id: &str, body: &str) -> Response {
    let bearer = format!("Bearer {TOKEN}");
    let headers = [("content-type", "application/json"), ("authorization", bearer.as_str())];
    stack.send(
        "POST",
        &format!("/v1/flow-webhook/{flow_id}"),
        &headers,
        body.as_bytes(),
    )
}

#[test]
fn hostile_templates_fail_fast_and_the_vm_lives_on() {
    let hostile = [
        ("t-repeat", "{{ [1] * 1000000000 }}"),
        ("t-indent", "{{ [1] | indent(3308274083) }}"),
        ("t-concat", "{% set a = 'x' * 100000000 %}{% set b = a ~ a ~ a ~ a %}{{ b | length }}"),
        (
            "t-double",
            "{% set ns = namespace(a='x') %}{% for i in range(60) %}{% set ns.a = ns.a ~ ns.a %}{% endfor %}{{ ns.a | length }}",
        ),
        ("t-join", "{{ ([0] * 50000000) | join(',') | length }}"),
    ];
    let mut templates = hostile.to_vec();
    templates.push(("t-fine", "{\"ok\": \"{{ res1.value }}\"}"));
    let stack = Stack::start(&flows(
        &templates,
        json!([{"ref_id": "res1", "values": {"value": "'step'"}}]),
    ));
    for round in 0..2 {
        for (id, _) in hostile {
            let envelope = assert_rejected(&post(&stack, id, "{}"), 500, "template_error");
            assert!(envelope.message.contains("line 1"), "{id}: {envelope:?}");
        }
        let fine = post(&stack, "t-fine", "{}");
        assert_eq!(
            (fine.status, fine.text()),
            (200, r#"{"ok": "step"}"#.to_string()),
            "round {round}"
        );
    }
    let stats = stack.envoy.stats();
    for name in [
        "wasm.flowgate.vm_reload",
        "wasm.flowgate.vm_reload_success",
        "wasm.flowgate.vm_reload_failure",
    ] {
        assert_eq!(stats.value(name), 0, "a VM was rebuilt: {name}");
    }
}

#[test]
fn template_errors_never_repeat_values() {
    let template = "{{ web1.company_id // web1.user_id }}";
    let stack = Stack::start(&flows(&[("t-div", template)], json!([])));
    let envelope = assert_rejected(
        &post(&stack, "t-div", r#"{"company_id":987654321,"user_id":0}"#),
        500,
        "template_error",
    );
    assert!(!envelope.message.contains("987654321"), "{envelope:?}");
    assert!(envelope.message.contains("line 1"), "{envelope:?}");
}

#[test]
fn the_request_body_wins_over_a_step_named_like_the_ref_id() {
    // The flow's step `web1` puts a key named like the flow's ref_id into the executor output.
    let steps = json!([{"ref_id": "web1", "values": {"who": "'the executor'"}}]);
    let stack = Stack::start(&flows(&[("t-shadow", "{{ web1.who }}")], steps));
    let response = post(&stack, "t-shadow", r#"{"who":"the sender"}"#);
    assert_eq!((response.status, response.text()), (200, "the sender".to_string()));
}
