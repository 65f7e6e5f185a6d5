//! Sender verification (contract 7): the signature parsers of every scheme.
//!
//! Input: a scheme of the catalogue and a delivery: either a signed delivery of the unit
//! tests' vectors (filter/src/verify/vectors.json) with arbitrary edits (headers replaced,
//! removed or added, bytes of the body changed, the clock moved), or arbitrary headers built
//! from the providers' header names, with an arbitrary body.
//!
//! Invariants:
//! - `verify::check` never panics;
//! - a delivery is admitted only with the scheme's own proof present: edits that remove every
//!   provider header are refused `invalid_signature` (or answered as a handshake);
//! - an unedited vector is admitted at its signing time, and refused once its body bytes
//!   changed (schemes that sign the body bytes);
//! - a refusal's message never holds a configured secret.
#![no_main]

use std::rc::Rc;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use flowgate::config::PluginConfig;
use flowgate::flows::Flow;
use flowgate::reply::Refusal;
use flowgate::verify::{self, Signed};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const VECTORS: &str = include_str!("../../filter/src/verify/vectors.json");
/// Schemes whose proof does not cover the body bytes: the shared-value schemes, and Twilio,
/// which signs the decoded form parameters (so `+` and `%20` spell the same delivery).
const UNSIGNED_BODY: [&str; 4] = ["gitlab", "okta", "msgraph", "twilio"];
/// Header names the schemes read, for building deliveries.
const NAMES: [&str; 30] = [
    "x-hub-signature-256",
    "stripe-signature",
    "x-shopify-hmac-sha256",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "x-zm-signature",
    "x-zm-request-timestamp",
    "x-twilio-signature",
    "linear-signature",
    "x-pagerduty-signature",
    "x-hubspot-signature-v3",
    "x-hubspot-request-timestamp",
    "x-square-hmacsha256-signature",
    "x-hub-signature",
    "x-gitlab-token",
    "x-signature-ed25519",
    "x-signature-timestamp",
    "x-twilio-email-event-webhook-signature",
    "x-twilio-email-event-webhook-timestamp",
    "twitch-eventsub-message-signature",
    "twitch-eventsub-message-timestamp",
    "twitch-eventsub-message-id",
    "calendly-webhook-signature",
    "authorization",
];

struct Fixture {
    vectors: Value,
    flows: Vec<(String, Rc<Flow>, Vec<String>)>,
}

// The fuzzer runs on one thread; the flows hold `Rc`s.
struct Shared(Fixture);
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Shared> = OnceLock::new();
    &FIXTURE
        .get_or_init(|| {
            let vectors: Value = serde_json::from_str(VECTORS).unwrap();
            let flows = vectors["schemes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let config = serde_json::json!({"flows": [{"id": "f", "ref_id": "web1", "status": "live", "verify": s["verify"]}]});
                    let config = PluginConfig::parse(config.to_string().as_bytes()).unwrap();
                    let secrets = s["verify"]["secrets"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
                    (s["scheme"].as_str().unwrap().to_string(), Rc::clone(config.flows.get("f").unwrap()), secrets)
                })
                .collect();
            Shared(Fixture { vectors, flows })
        })
        .0
}

#[derive(Arbitrary, Debug)]
enum Edit<'a> {
    Replace { header: u8, value: &'a [u8] },
    Remove { header: u8 },
    Add { name: u8, value: &'a [u8] },
    Body { at: u16, byte: u8 },
    Clock { seconds: i32 },
}

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    Vector {
        scheme: u8,
        key: bool,
        edits: Vec<Edit<'a>>,
    },
    Built {
        scheme: u8,
        method: bool,
        headers: Vec<(u8, &'a [u8])>,
        body: &'a [u8],
        now: u64,
    },
}

fn run(flow: &Flow, headers: &[(Vec<u8>, Vec<u8>)], body: &[u8], now: u64) -> Result<(), Refusal> {
    let pairs: Vec<(&[u8], &[u8])> = headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())).collect();
    verify::check(flow, &Signed::new(&pairs, now), body)
}

fn no_secret_in(result: &Result<(), Refusal>, secrets: &[String]) {
    if let Err(refusal) = result {
        let reply = refusal.reply();
        if !matches!(refusal, Refusal::Handshake(_)) {
            let body = String::from_utf8_lossy(&reply.body);
            for secret in secrets {
                assert!(!body.contains(secret.as_str()), "a reply shows a secret: {body}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let Ok(input) = Input::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    match input {
        Input::Vector { scheme, key, edits } => {
            let index = usize::from(scheme) % fixture.flows.len();
            let (name, flow, secrets) = &fixture.flows[index];
            let vector = &fixture.vectors["schemes"][index][if key { "new" } else { "old" }];
            let mut headers: Vec<(Vec<u8>, Vec<u8>)> = vector["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    (
                        h[0].as_str().unwrap().as_bytes().to_vec(),
                        h[1].as_str().unwrap().as_bytes().to_vec(),
                    )
                })
                .collect();
            let mut body = vector["body"].as_str().unwrap().as_bytes().to_vec();
            let signed_at = fixture.vectors["signed_at"].as_u64().unwrap();
            assert_eq!(
                run(flow, &headers, &body, signed_at),
                Ok(()),
                "{name}: the vector itself"
            );
            let mut now = signed_at;
            let mut body_changed = false;
            for edit in edits {
                match edit {
                    Edit::Replace { header, value } if !headers.is_empty() => {
                        let at = usize::from(header) % headers.len();
                        headers[at].1 = value.to_vec();
                    }
                    Edit::Remove { header } if !headers.is_empty() => {
                        headers.remove(usize::from(header) % headers.len());
                    }
                    Edit::Add { name, value } => headers.push((
                        NAMES[usize::from(name) % NAMES.len()].as_bytes().to_vec(),
                        value.to_vec(),
                    )),
                    Edit::Body { at, byte } if !body.is_empty() => {
                        let at = usize::from(at) % body.len();
                        body_changed |= body[at] != byte;
                        body[at] = byte;
                    }
                    Edit::Clock { seconds } => now = now.saturating_add_signed(i64::from(seconds)),
                    _ => {}
                }
            }
            let result = run(flow, &headers, &body, now);
            no_secret_in(&result, secrets);
            if body_changed
                && !UNSIGNED_BODY.contains(&name.as_str())
                && body != vector["body"].as_str().unwrap().as_bytes()
            {
                assert!(result.is_err(), "{name}: a changed body was admitted");
            }
            // Without any provider header (only the five plain ones), nothing is admitted.
            let plain: Vec<_> = headers
                .iter()
                .filter(|(n, _)| n.starts_with(b":") || n == b"x-forwarded-proto" || n == b"content-type")
                .cloned()
                .collect();
            if name != "msgraph" {
                assert!(
                    run(flow, &plain, &body, now).is_err(),
                    "{name}: admitted without its proof"
                );
            }
        }
        Input::Built {
            scheme,
            method,
            headers,
            body,
            now,
        } => {
            let (_, flow, secrets) = &fixture.flows[usize::from(scheme) % fixture.flows.len()];
            let mut built: Vec<(Vec<u8>, Vec<u8>)> = vec![
                (
                    b":method".to_vec(),
                    if method { b"POST".to_vec() } else { b"GET".to_vec() },
                ),
                (b":path".to_vec(), b"/v1/flow-webhook/f".to_vec()),
            ];
            built.extend(headers.iter().map(|(name, value)| {
                (
                    NAMES[usize::from(*name) % NAMES.len()].as_bytes().to_vec(),
                    value.to_vec(),
                )
            }));
            let result = run(flow, &built, body, now);
            no_secret_in(&result, secrets);
        }
    }
});
