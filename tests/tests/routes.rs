//! envoy/envoy.yaml's routes, end to end: the webhook prefix is the only way to the executor
//! and flowgate gates it; every other path is answered at the edge without the filter running
//! at all (it is disabled on that route, so it costs nothing there) — and no spelling of a
//! webhook path reaches the executor without passing flowgate.

use flowgate_e2e::*;
use serde_json::Value;

/// The routes of envoy/envoy.yaml's listener, as they are shipped.
fn shipped_routes() -> Value {
    let config = yaml_documents(&repo_root().join("envoy/envoy.yaml")).remove(0);
    let manager = &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let routes = manager["route_config"]["virtual_hosts"][0]["routes"].clone();
    assert!(routes.is_array(), "envoy/envoy.yaml has no routes where expected");
    routes
}

fn shipped_stack() -> Stack {
    let flows = demo_flows();
    let executor = Executor::start(&flows);
    let options = EnvoyOptions::new(plugin_config_for(&flows), executor.port()).routes(shipped_routes());
    Stack {
        envoy: Envoy::start(options),
        executor,
    }
}

/// Streams flowgate decided, whatever it decided: every `wasmcustom.flowgate.requests.*`
/// counter but `answered` (a rendered reply, counted besides its admission).
fn streams_seen(envoy: &Envoy) -> u64 {
    envoy
        .stats()
        .iter()
        .filter(|(name, _)| name.starts_with("wasmcustom.flowgate.requests.") && !name.ends_with(".answered"))
        .map(|(_, value)| value)
        .sum()
}

#[test]
fn paths_that_are_not_webhooks_never_reach_the_executor_or_the_filter() {
    let stack = shipped_stack();
    let token = format!("Bearer {}", demo_token("f-1001", 0));
    for path in ["/", "/healthz", "/_executor/requests", "/v1/flows", "/v1/flow-webhook"] {
        for method in ["GET", "POST"] {
            let response = stack.send(method, path, &[("authorization", &token)], b"{}");
            assert_eq!(response.status, 404, "{method} {path}: {:?}", response.text());
        }
    }
    stack
        .executor
        .assert_received_nothing("paths outside the webhook prefix");
    assert_eq!(
        streams_seen(&stack.envoy),
        0,
        "flowgate ran on a route it is disabled on"
    );

    // The webhook route itself is gated as ever.
    let response = stack.send("POST", "/v1/flow-webhook/f-1001", &[], b"{}");
    assert_rejected(&response, 401, "unauthorized");
    let body = br#"{"company_id": 123456, "user_id": 789123}"#;
    let headers = [("authorization", token.as_str()), ("content-type", "application/json")];
    let response = stack.send("POST", "/v1/flow-webhook/f-1001", &headers, body);
    assert_eq!(
        (response.status, response.text()),
        (200, r#"{"valid": "myResult"}"#.to_string())
    );
    assert_eq!(streams_seen(&stack.envoy), 2);
}

#[test]
fn no_spelling_of_a_webhook_path_reaches_the_executor_ungated() {
    let stack = shipped_stack();
    let spellings = [
        "/V1/FLOW-WEBHOOK/f-1001",
        "/v1/Flow-Webhook/f-1001",
        "/v1/flow-webhook%2Ff-1001",
        "/v1/flow-webhook%2ff-1001",
        "/v1/flow%2Dwebhook/f-1001",
        "/v1%2Fflow-webhook/f-1001",
        "//v1/flow-webhook/f-1001",
        "/./v1/flow-webhook/f-1001",
        "/v1/./flow-webhook/f-1001",
        "/v1/x/../flow-webhook/f-1001",
        "/v1/x/..%2Fflow-webhook/f-1001",
        "/v1/flow_webhook/f-1001",
        "/v1/flow-webhook/./f-1001",
        "/v1/flow-webhook//f-1001",
        "/v1/flow-webhook/x/../f-1001",
        "/v1/flow-webhook/f-1001/",
        "/v1/flow-webhook/f-1001?x=1",
        "/v1/flow-webhook/F-1001",
        "/v1/flow-webhook/%66-1001",
    ];
    for path in spellings {
        let response = stack.send("POST", path, &[("content-type", "application/json")], b"{}");
        assert!(
            !(200..300).contains(&response.status),
            "{path}: {} {:?}",
            response.status,
            response.text()
        );
        let ran: Vec<Value> = stack
            .executor
            .requests()
            .into_iter()
            .filter(|request| request["webhook"] == true)
            .collect();
        assert!(ran.is_empty(), "{path} reached the executor as a webhook: {ran:?}");
    }
}
