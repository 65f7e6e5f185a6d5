//! Every scheme against deliveries signed by the providers' own libraries (vectors.json,
//! written by tests/signers/vectors.py), plus the published vectors of GitHub and Standard
//! Webhooks.

use std::rc::Rc;

use serde_json::{json, Value};

use super::*;
use crate::config::PluginConfig;
use crate::reply::Code;

const VECTORS: &str = include_str!("vectors.json");
/// Schemes that sign a timestamp (and so refuse a stale one).
const TIMED: [&str; 12] = [
    "stripe",
    "slack",
    "standard-webhooks",
    "svix",
    "zoom",
    "linear",
    "hubspot",
    "discord",
    "sendgrid",
    "twitch",
    "calendly",
    "hmac",
];
/// Schemes that prove the sender with a shared value, not a signature of the body.
const UNSIGNED_BODY: [&str; 3] = ["gitlab", "okta", "msgraph"];

fn vectors() -> Value {
    serde_json::from_str(VECTORS).unwrap()
}

/// A flow with this `verify` (and status), built as the configuration builds it.
fn flow(verify: &Value, status: &str) -> Rc<Flow> {
    let config = json!({"flows": [{"id": "f-1", "ref_id": "web1", "status": status, "verify": verify}]});
    let config = PluginConfig::parse(config.to_string().as_bytes()).unwrap();
    Rc::clone(config.flows.get("f-1").unwrap())
}

/// Checks a request (`{"headers": [[n, v]...], "body": ...}`) at `now`.
fn check_at(flow: &Flow, request: &Value, now: u64) -> Result<(), Refusal> {
    let headers: Vec<(&[u8], &[u8])> = request["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().as_bytes(),
                pair[1].as_str().unwrap().as_bytes(),
            )
        })
        .collect();
    let delivery = Signed::new(&headers, now);
    check(flow, &delivery, request["body"].as_str().unwrap().as_bytes())
}

fn failure(result: Result<(), Refusal>) -> Failure {
    match result {
        Err(Refusal::InvalidSignature { failure }) => failure,
        other => panic!("expected invalid_signature, got {other:?}"),
    }
}

#[test]
fn every_scheme_admits_deliveries_signed_with_any_of_its_keys() {
    let vectors = vectors();
    let now = vectors["signed_at"].as_u64().unwrap() + 5;
    for scheme in vectors["schemes"].as_array().unwrap() {
        let flow = flow(&scheme["verify"], "live");
        for key in ["old", "new"] {
            let result = check_at(&flow, &scheme[key], now);
            assert_eq!(result, Ok(()), "{} signed with the {key} key", scheme["scheme"]);
        }
    }
}

#[test]
fn a_wrong_key_a_changed_byte_or_a_missing_header_is_refused() {
    let vectors = vectors();
    let now = vectors["signed_at"].as_u64().unwrap();
    for scheme in vectors["schemes"].as_array().unwrap() {
        let name = scheme["scheme"].as_str().unwrap();
        let flow = flow(&scheme["verify"], "live");
        let wrong = failure(check_at(&flow, &scheme["wrong"], now));
        assert!(matches!(wrong.reason(), Reason::Mismatch), "{name}: {wrong:?}");

        let mut changed = scheme["new"].clone();
        let mut body = changed["body"].as_str().unwrap().to_string().into_bytes();
        let at = body.iter().position(u8::is_ascii_alphanumeric).unwrap();
        body[at] = if body[at] == b'Z' { b'Y' } else { b'Z' };
        changed["body"] = json!(String::from_utf8(body).unwrap());
        let result = check_at(&flow, &changed, now);
        if !UNSIGNED_BODY.contains(&name) {
            assert!(
                matches!(result, Err(Refusal::InvalidSignature { .. })),
                "{name}: {result:?}"
            );
        }

        // Everything after the five plain headers is the provider's.
        let mut bare = scheme["new"].clone();
        bare["headers"].as_array_mut().unwrap().truncate(5);
        if name == "msgraph" {
            bare["body"] = json!(r#"{"value":[{"subscriptionId":"1"}]}"#);
        } else if name == "twilio" {
            bare["headers"][1][1] = json!("/v1/flow-webhook/s-twilio");
        }
        let missing = failure(check_at(&flow, &bare, now));
        assert_eq!(missing.reason(), Reason::Missing, "{name}: {missing:?}");
        assert!(!missing.message().contains("secret"), "{}", missing.message());
    }
}

#[test]
fn timestamps_outside_the_tolerance_are_refused_either_way() {
    let vectors = vectors();
    let signed_at = vectors["signed_at"].as_u64().unwrap();
    for scheme in vectors["schemes"].as_array().unwrap() {
        let name = scheme["scheme"].as_str().unwrap();
        let live = flow(&scheme["verify"], "live");
        for now in [signed_at + 601, signed_at - 601] {
            let result = check_at(&live, &scheme["new"], now);
            if TIMED.contains(&name) {
                assert_eq!(failure(result).reason(), Reason::Stale, "{name} at {now}");
            } else {
                assert_eq!(result, Ok(()), "{name} signs no time");
            }
        }
        let mut strict = scheme["verify"].clone();
        strict["tolerance_s"] = json!(4);
        let result = check_at(&flow(&strict, "live"), &scheme["new"], signed_at + 5);
        assert_eq!(result.is_ok(), !TIMED.contains(&name), "{name} with tolerance_s 4");
    }
}

#[test]
fn a_paused_flow_is_revealed_only_to_a_verified_delivery() {
    let vectors = vectors();
    let now = vectors["signed_at"].as_u64().unwrap();
    for scheme in vectors["schemes"].as_array().unwrap() {
        let flow = flow(&scheme["verify"], "paused");
        assert_eq!(check_at(&flow, &scheme["new"], now), Err(Refusal::Paused));
        let refused = check_at(&flow, &scheme["wrong"], now).unwrap_err();
        assert_eq!(refused.code(), Code::InvalidSignature);
    }
}

#[test]
fn handshakes_get_the_providers_expected_answer() {
    let vectors = vectors();
    let now = vectors["signed_at"].as_u64().unwrap();
    let schemes = vectors["schemes"].as_array().unwrap();
    for handshake in vectors["handshakes"].as_array().unwrap() {
        let name = handshake["scheme"].as_str().unwrap();
        let scheme = schemes.iter().find(|s| s["scheme"] == name).unwrap();
        let live = flow(&scheme["verify"], "live");
        let Err(Refusal::Handshake(reply)) = check_at(&live, &handshake["request"], now) else {
            panic!("{name}: not answered as a handshake");
        };
        let answer = &handshake["answer"];
        assert_eq!(reply.status, 200, "{name}");
        assert_eq!(reply.headers[0].1, answer["content_type"].as_str().unwrap(), "{name}");
        match answer.get("json") {
            Some(expected) => assert_eq!(
                &serde_json::from_slice::<Value>(&reply.body).unwrap(),
                expected,
                "{name}"
            ),
            None => assert_eq!(reply.body, answer["body"].as_str().unwrap().as_bytes(), "{name}"),
        }
        // A paused flow's provider still proves its endpoint.
        let paused = flow(&scheme["verify"], "paused");
        assert!(matches!(
            check_at(&paused, &handshake["request"], now),
            Err(Refusal::Handshake(_))
        ));
    }
}

#[test]
fn signed_handshakes_need_their_signature() {
    let vectors = vectors();
    let now = vectors["signed_at"].as_u64().unwrap();
    let schemes = vectors["schemes"].as_array().unwrap();
    for handshake in vectors["handshakes"].as_array().unwrap() {
        let name = handshake["scheme"].as_str().unwrap();
        let scheme = schemes.iter().find(|s| s["scheme"] == name).unwrap();
        let mut other = scheme["verify"].clone();
        other["secrets"] = json!([scheme["wrong_secret"]]);
        if name == "meta" {
            other["verify_token"] = json!("another-token");
        }
        let result = check_at(&flow(&other, "live"), &handshake["request"], now);
        match name {
            // Nothing to check: Graph and Dropbox do not authenticate their handshakes.
            "msgraph" | "dropbox" => assert!(matches!(result, Err(Refusal::Handshake(_))), "{name}"),
            _ => assert_eq!(failure(result).reason(), Reason::Mismatch, "{name}"),
        }
    }
}

#[test]
fn published_vectors_verify() {
    // GitHub's documentation: secret "It's a Secret to Everybody", payload "Hello, World!".
    let github = flow(
        &json!({"scheme": "github", "secrets": ["It's a Secret to Everybody"]}),
        "live",
    );
    let request = json!({"headers": [[":method", "POST"], ["x-hub-signature-256",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"]], "body": "Hello, World!"});
    assert_eq!(check_at(&github, &request, 0), Ok(()));
    // The Standard Webhooks specification's example.
    let standard = flow(
        &json!({"scheme": "standard-webhooks", "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}),
        "live",
    );
    let request = json!({"headers": [[":method", "POST"], ["webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"],
        ["webhook-timestamp", "1614265330"], ["webhook-signature", "v1,bm9ldHUK v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="]],
        "body": "{\"test\": 2432232314}"});
    assert_eq!(check_at(&standard, &request, 1_614_265_330), Ok(()));
}

#[test]
fn keys_are_checked_when_the_configuration_loads() {
    let problem = |verify: Value| {
        let config = json!({"flows": [{"id": "f-1", "ref_id": "web1", "status": "live", "verify": verify}]});
        PluginConfig::parse(config.to_string().as_bytes())
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        problem(json!({"scheme": "svix", "secrets": ["not-whsec"]})),
        "flows[0] (id \"f-1\").verify.secrets[0]: must start with whsec_ (HMAC secret) or whpk_ (ed25519 public key)"
    );
    assert_eq!(
        problem(json!({"scheme": "github"})),
        "flows[0] (id \"f-1\").verify.secrets: needs at least one key in secrets or secret_env"
    );
    assert!(
        problem(json!({"scheme": "github", "secret_env": ["FLOWGATE_TEST_UNSET_VARIABLE"]}))
            .contains("verify.secret_env[0]: environment variable FLOWGATE_TEST_UNSET_VARIABLE is not set")
    );
    assert!(problem(json!({"scheme": "discord", "secrets": ["abcd"]})).contains("64 hex characters"));
    assert!(problem(json!({"scheme": "hmac", "secrets": ["k"]})).contains("verify.hmac: is required by scheme hmac"));
    assert!(problem(
        json!({"scheme": "shopify", "secrets": ["k"], "hmac": {"algorithm": "sha1", "header": "x", "encoding": "hex"}})
    )
    .contains("is only for scheme hmac"));
    assert!(problem(json!({"scheme": "nope", "secrets": ["k"]})).contains("verify.scheme: unknown variant"));
    // A secret never shows in a configuration error.
    assert!(!problem(json!({"scheme": "sendgrid", "secrets": ["c2VjcmV0"]})).contains("c2VjcmV0"));
}

#[test]
fn secrets_never_show_in_debug_output() {
    let flow = flow(
        &json!({"scheme": "github", "secrets": ["top-secret-value"], "verify_token": "vt-secret"}),
        "live",
    );
    let printed = format!("{flow:?}");
    assert!(
        !printed.contains("top-secret-value") && !printed.contains("vt-secret"),
        "{printed}"
    );
}
