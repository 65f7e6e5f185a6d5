//! The edge decision for a request, in the contract's order:
//! route -> flow lookup -> method -> auth -> flow status -> size/body -> run.

use std::rc::Rc;

use minijinja::Value;

use crate::auth::{self, Credentials};
use crate::body;
pub use crate::body::BodyUse;
use crate::flows::{Flow, Lookup};
use crate::reply::Refusal;
use crate::route::{self, Route};
use crate::schema::FlowStatus;
use crate::verify::{self, Signed, Verifier};

/// Header-name prefix flowgate owns: removed from every request, set only by flowgate.
pub const OWN_HEADER_PREFIX: &[u8] = b"x-flowgate-";

/// The request facts the decision needs, borrowed from the header map.
#[derive(Debug, Default)]
pub struct RequestHead<'a> {
    pub method: &'a [u8],
    pub path: &'a [u8],
    authorization: Vec<&'a [u8]>,
    pub content_length: Option<u64>,
    pub content_type: Option<&'a [u8]>,
    /// `Expect: 100-continue`: the sender waits for a go-ahead before sending the body.
    pub expects_continue: bool,
}

impl<'a> RequestHead<'a> {
    /// Picks the facts out of `(name, value)` pairs (names lower-case, as Envoy gives them).
    pub fn from_headers(headers: &[(&'a [u8], &'a [u8])]) -> Self {
        let mut head = RequestHead::default();
        for &(name, value) in headers {
            match name {
                b":method" => head.method = value,
                b":path" => head.path = value,
                b"authorization" => head.authorization.push(value),
                b"content-length" => {
                    head.content_length = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse().ok())
                }
                b"content-type" => head.content_type = Some(value),
                b"expect" => head.expects_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue"),
                _ => {}
            }
        }
        head
    }
}

/// What to do with a request once its head is known.
#[derive(Debug)]
pub enum Verdict<'p> {
    /// Not a webhook: let it through (flowgate's own headers still removed).
    Pass,
    /// Answer at the edge; the executor never sees the request. `flow_id` is the
    /// path's flow segment (empty when the path was refused before it).
    Refuse { refusal: Refusal, flow_id: &'p str },
    /// Forward to the executor once the body (if it must be read) passes.
    Admit(Admission),
}

/// An admitted webhook and what must still be done with its body.
#[derive(Debug)]
pub struct Admission {
    pub flow: Rc<Flow>,
    pub body: BodyUse,
    /// What the flow's sender check reads (flows with `verify`), kept from the head.
    pub sender: Option<Box<Signed>>,
}

impl Admission {
    /// Whether the body must be held and read before forwarding. A body of known,
    /// acceptable length that nobody needs streams straight through.
    pub fn must_read_body(&self, content_length: Option<u64>) -> bool {
        self.body != BodyUse::Stream || content_length.is_none() || self.flow.verify.is_some()
    }

    /// Keeps the request facts a flow with `verify` checks once the body is in, and when
    /// the head arrived (`now_s`: Unix seconds, asked only for such a flow).
    pub fn capture(&mut self, headers: &[(&[u8], &[u8])], now_s: impl FnOnce() -> u64) {
        if self.flow.verify.is_some() {
            self.sender = Some(Box::new(Signed::new(headers, now_s())));
        }
    }

    /// Checks a growing body's size; called as it arrives.
    pub fn check_size(&self, received: u64) -> Result<(), Refusal> {
        if received > self.flow.max_body_bytes {
            return Err(Refusal::PayloadTooLarge {
                limit: self.flow.max_body_bytes,
            });
        }
        Ok(())
    }

    /// Checks the whole body, the last step before the run, and returns it as the
    /// response template will see it (none when the flow keeps no body). A JSON body
    /// is parsed once, for both.
    pub fn check_body(&self, content_type: Option<&[u8]>, bytes: &[u8]) -> Result<Value, Refusal> {
        self.check_size(bytes.len() as u64)?;
        if self.flow.verify.is_some() {
            // Fails closed: without captured facts every signature header is missing.
            verify::check(&self.flow, self.sender.as_deref().unwrap_or(&Signed::default()), bytes)?;
        }
        let invalid = |detail| Refusal::InvalidBody { detail };
        match self.body {
            BodyUse::ParseJson => body::parse_json(bytes).map_err(invalid),
            BodyUse::CheckJson => body::check_json(bytes).map(|()| Value::UNDEFINED).map_err(invalid),
            BodyUse::Bind => Ok(body::bind(content_type, bytes)),
            BodyUse::Stream => Ok(Value::UNDEFINED),
        }
    }

    /// The headers that tell the executor what flowgate decided.
    pub fn forward_headers(&self) -> [(&'static str, &str); 4] {
        [
            ("x-flowgate-flow-id", &self.flow.id),
            ("x-flowgate-ref-id", &self.flow.ref_id),
            ("x-flowgate-mode", self.flow.mode.as_str()),
            ("x-flowgate-flow-status", self.flow.status.as_str()),
        ]
    }
}

/// Decides a request from its head. `flows` is `None` while a live directory has
/// never loaded and no static flows exist.
pub fn decide<'p>(prefix: &str, flows: Option<&dyn Lookup>, head: &RequestHead<'p>) -> Verdict<'p> {
    // The query may hold any bytes; only the path itself is routed.
    let path = head.path.split(|&b| b == b'?').next().unwrap_or_default();
    let Ok(path) = std::str::from_utf8(path) else {
        // Not the canonical path of any flow (ids are ASCII), but Envoy may still forward
        // it and an executor read it as a webhook: judge its spelling like any other.
        return match route::route(prefix, &String::from_utf8_lossy(path)) {
            Route::Outside => Verdict::Pass,
            Route::Webhook { .. } | Route::NonCanonical => Verdict::Refuse {
                refusal: Refusal::InvalidPath,
                flow_id: "",
            },
        };
    };
    let flow_id = match route::route(prefix, path) {
        Route::Outside => return Verdict::Pass,
        Route::NonCanonical => {
            return Verdict::Refuse {
                refusal: Refusal::InvalidPath,
                flow_id: "",
            }
        }
        Route::Webhook { flow_id } => flow_id,
    };
    let refuse = |refusal| Verdict::Refuse { refusal, flow_id };
    let Some(flows) = flows else {
        return refuse(Refusal::DirectoryUnavailable);
    };
    let Some(flow) = flows.flow(flow_id) else {
        return refuse(Refusal::NotFound);
    };
    // A signed flow's provider may prove the endpoint with a GET, whatever the flow's methods.
    let handshake_get = head.method == b"GET" && flow.verify.as_ref().is_some_and(Verifier::answers_get);
    if !handshake_get && !flow.methods.iter().any(|m| m.as_bytes() == head.method) {
        return refuse(Refusal::MethodNotAllowed {
            allow: flow.allow.clone(),
        });
    }
    // With `verify`, the signature is checked once the body is in (verify::check), and the
    // flow's status only revealed after it.
    let signed = flow.verify.is_some();
    let credentials = auth::parse(head.authorization.iter().copied());
    let authorised = match credentials {
        _ if signed && flow.tokens.is_empty() => true,
        Credentials::Bearer(token) => auth::matches_any(&auth::digest(token), &flow.tokens),
        Credentials::Missing | Credentials::Malformed => false,
    };
    if !authorised {
        return refuse(Refusal::Unauthorized {
            token_presented: credentials.token_presented(),
        });
    }
    if flow.status == FlowStatus::Paused && !signed {
        return refuse(Refusal::Paused);
    }
    let admission = Admission {
        flow: Rc::clone(&flow),
        body: BodyUse::of(
            head.content_type.is_some_and(body::is_json),
            flow.response.as_ref().is_some_and(|r| r.reads_request_body),
        ),
        sender: None,
    };
    if let Some(length) = head.content_length {
        if let Err(too_large) = admission.check_size(length) {
            return refuse(too_large);
        }
    }
    Verdict::Admit(admission)
}

/// True for headers a sender may not supply: any spelling an executor may read as an
/// `x-flowgate-*` header (letter case ignored, `_` the same as `-`).
pub fn is_own_header(name: &[u8]) -> bool {
    name.get(..OWN_HEADER_PREFIX.len()).is_some_and(|start| {
        start
            .iter()
            .zip(OWN_HEADER_PREFIX)
            .all(|(&b, &own)| b.to_ascii_lowercase() == own || (b == b'_' && own == b'-'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginConfig;

    const TOKEN: &str = "demo-token-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGH";
    const ROTATED: &str = "rotated-token-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEF";

    fn config() -> PluginConfig {
        let hex = |token: &str| {
            auth::digest(token.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let json = serde_json::json!({"flows": [
            {"id": "f-1", "ref_id": "web1", "status": "live", "token_sha256": [hex(TOKEN), hex(ROTATED)], "max_body_bytes": 10},
            {"id": "f-2", "ref_id": "web2", "status": "paused", "token_sha256": [hex(TOKEN)], "methods": ["POST", "PUT"]},
        ]});
        PluginConfig::parse(json.to_string().as_bytes()).unwrap()
    }

    /// The admission, or the code of the reply (`"pass"` for non-webhooks).
    fn decide_on(headers: &[(&str, &str)]) -> Result<Admission, &'static str> {
        let pairs: Vec<(&[u8], &[u8])> = headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
        let config = config();
        match decide(
            &config.webhook_path_prefix,
            Some(&config.flows),
            &RequestHead::from_headers(&pairs),
        ) {
            Verdict::Pass => Err("pass"),
            Verdict::Refuse { refusal, .. } => Err(refusal.code().as_str()),
            Verdict::Admit(admission) => Ok(admission),
        }
    }

    fn webhook(path: &str, method: &str, authorization: Option<&str>) -> Result<Admission, &'static str> {
        let bearer = authorization.map(|token| format!("Bearer {token}"));
        let mut headers = vec![(":method", method), (":path", path)];
        if let Some(value) = &bearer {
            headers.push(("authorization", value));
        }
        decide_on(&headers)
    }

    #[test]
    fn checks_run_in_the_contracts_order() {
        assert_eq!(
            webhook("/v1//flow-webhook/f-1", "GET", None).unwrap_err(),
            "invalid_path"
        );
        assert_eq!(webhook("/v1/flow-webhook/nope", "GET", None).unwrap_err(), "not_found");
        assert_eq!(
            webhook("/v1/flow-webhook/f-1", "GET", None).unwrap_err(),
            "method_not_allowed"
        );
        assert_eq!(
            webhook("/v1/flow-webhook/f-1", "POST", None).unwrap_err(),
            "unauthorized"
        );
        assert_eq!(
            webhook("/v1/flow-webhook/f-2", "PUT", Some(TOKEN)).unwrap_err(),
            "biz_logic"
        );
    }

    #[test]
    fn a_paused_flow_is_only_revealed_to_its_token_holders() {
        assert_eq!(
            webhook("/v1/flow-webhook/f-2", "POST", Some("wrong")).unwrap_err(),
            "unauthorized"
        );
    }

    #[test]
    fn rotated_tokens_both_admit() {
        for token in [TOKEN, ROTATED] {
            assert!(webhook("/v1/flow-webhook/f-1?x=1", "POST", Some(token)).is_ok());
        }
    }

    #[test]
    fn content_length_over_the_limit_is_refused_before_the_body() {
        let bearer = format!("bearer {TOKEN}");
        let verdict = decide_on(&[
            (":method", "POST"),
            (":path", "/v1/flow-webhook/f-1"),
            ("authorization", &bearer),
            ("content-length", "11"),
        ]);
        assert_eq!(verdict.unwrap_err(), "payload_too_large");
    }

    #[test]
    fn admitted_bodies_are_checked_as_they_arrive() {
        let bearer = format!("Bearer {TOKEN}");
        let verdict = decide_on(&[
            (":method", "POST"),
            (":path", "/v1/flow-webhook/f-1"),
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ]);
        let admission = verdict.unwrap();
        assert!(admission.must_read_body(Some(5)));
        assert_eq!(
            admission.check_body(None, b"{\"a\":").unwrap_err().code().as_str(),
            "invalid_body"
        );
        assert_eq!(
            admission
                .check_body(None, b"[1,2,3,4,5,6]")
                .unwrap_err()
                .code()
                .as_str(),
            "payload_too_large"
        );
        assert!(admission.check_body(None, b"{\"a\":1}").is_ok());
        assert_eq!(admission.forward_headers()[2], ("x-flowgate-mode", "sync"));
    }

    #[test]
    fn other_paths_pass_and_own_headers_are_recognised() {
        assert_eq!(webhook("/healthz", "GET", None).unwrap_err(), "pass");
        assert!(is_own_header(b"x-flowgate-mode"));
        assert!(is_own_header(b"X-Flowgate-Flow-Id"));
        assert!(!is_own_header(b"x-flowgat"));
        for spelling in [
            "x_flowgate_flow_id",
            "X_FLOWGATE_MODE",
            "x-flowgate_ref-id",
            "X-Flowgate-",
        ] {
            assert!(is_own_header(spelling.as_bytes()), "{spelling}");
        }
        assert!(!is_own_header(b"x-flowgatey"));
    }

    /// Found by `fuzz/` (target `decide`): a path that was not UTF-8 passed unchecked,
    /// even under the webhook prefix.
    #[test]
    fn paths_that_are_not_utf8_are_judged_too() {
        let decide_path = |path: &[u8]| {
            let bearer = format!("Bearer {TOKEN}");
            let pairs: Vec<(&[u8], &[u8])> = vec![
                (b":method", b"POST"),
                (b":path", path),
                (b"authorization", bearer.as_bytes()),
            ];
            let config = config();
            match decide(
                &config.webhook_path_prefix,
                Some(&config.flows),
                &RequestHead::from_headers(&pairs),
            ) {
                Verdict::Pass => "pass",
                Verdict::Refuse { refusal, .. } => refusal.code().as_str(),
                Verdict::Admit(_) => "admit",
            }
        };
        assert_eq!(decide_path(b"/v1/flow-webhook/f-1\xff"), "invalid_path");
        assert_eq!(decide_path(b"/v1/flow-webhook/\xff/../f-1"), "invalid_path");
        assert_eq!(decide_path(b"/V1/flow-webhook/\xfe"), "invalid_path");
        assert_eq!(decide_path(b"/static/\xff"), "pass");
        assert_eq!(decide_path(b"/v1/flow-webhook/f-1?q=\xff"), "admit");
        assert_eq!(decide_path(b"/v1/flow-webhook/f-1#\xff"), "invalid_path");
    }

    #[test]
    fn an_unloaded_directory_is_unavailable() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":method", b"POST"), (b":path", b"/v1/flow-webhook/f-1")];
        let verdict = decide("/v1/flow-webhook/", None, &RequestHead::from_headers(&pairs));
        assert!(matches!(
            verdict,
            Verdict::Refuse {
                refusal: Refusal::DirectoryUnavailable,
                flow_id: "f-1"
            }
        ));
    }
}
