//! What flowgate sends back itself. Words used throughout: a `Reply` is an HTTP answer to
//! the sender; a `Refusal` is every outcome the edge answers with the JSON envelope instead
//! of the flow's answer (a refused request, or an executor that failed); its `Code` is the
//! envelope's `error`. The executor's own response is the *answer* (`answer.rs`).

use serde::Serialize;
use serde_json::value::RawValue;

/// The paused reply, byte for byte as the platform documents it.
pub const PAUSED_BODY: &str = r#"{"status":200,"error":"biz_logic","message":"Flow status is `paused`. Unpause to run this flow using a webhook","data":null}"#;

/// Seconds a sender should wait before retrying a 503.
const RETRY_AFTER_SECONDS: &str = "5";
/// Seconds a sender should wait before repeating a delivery that is still running.
const DUPLICATE_RETRY_AFTER_SECONDS: &str = "1";

/// Everything the edge answers with an envelope, in the contract's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Request headers or trailers that cannot be read: refused, never passed unread.
    UnreadableRequest,
    /// A path that only normalises into the webhook prefix (`//`, `%2F`, `..`, case...).
    InvalidPath,
    NotFound,
    MethodNotAllowed {
        allow: String,
    },
    Unauthorized {
        token_presented: bool,
    },
    Paused,
    PayloadTooLarge {
        limit: u64,
    },
    InvalidBody {
        detail: String,
    },
    ExecutorError {
        upstream_status: u16,
        detail: &'static str,
    },
    ExecutorUnavailable,
    ExecutorTimeout,
    TemplateError {
        detail: String,
    },
    DirectoryUnavailable,
    /// A flow with `verify` whose delivery failed its signature check (contract 7).
    InvalidSignature {
        failure: crate::verify::Failure,
    },
    /// A provider's handshake, answered at the edge as the provider expects (not an envelope).
    Handshake(Reply),
    /// The flow's dedupe key is there but is not a usable delivery id.
    InvalidDeliveryId,
    /// A repeat of a delivery whose first run has not answered yet (contract 8).
    DuplicateInFlight,
    /// Over the flow's rate limit; a token is there in `retry_after_s` (contract 8).
    RateLimited {
        retry_after_s: u64,
    },
}

/// A complete HTTP answer: status, extra headers and the body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    status: u16,
    error: Option<&'a str>,
    message: &'a str,
    data: Option<&'a RawValue>,
}

/// The envelope's `error` codes: one per kind of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    InvalidRequest,
    InvalidPath,
    NotFound,
    MethodNotAllowed,
    Unauthorized,
    BizLogic,
    PayloadTooLarge,
    InvalidBody,
    ExecutorError,
    ExecutorUnavailable,
    ExecutorTimeout,
    TemplateError,
    DirectoryUnavailable,
    InvalidSignature,
    /// Not an error: a provider handshake answered at the edge (named for its metric).
    Handshake,
    DuplicateInFlight,
    RateLimited,
}

impl Code {
    pub const ALL: [Code; 17] = [
        Code::InvalidRequest,
        Code::InvalidPath,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::Unauthorized,
        Code::BizLogic,
        Code::PayloadTooLarge,
        Code::InvalidBody,
        Code::ExecutorError,
        Code::ExecutorUnavailable,
        Code::ExecutorTimeout,
        Code::TemplateError,
        Code::DirectoryUnavailable,
        Code::InvalidSignature,
        Code::Handshake,
        Code::DuplicateInFlight,
        Code::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest => "invalid_request",
            Code::InvalidPath => "invalid_path",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::Unauthorized => "unauthorized",
            Code::BizLogic => "biz_logic",
            Code::PayloadTooLarge => "payload_too_large",
            Code::InvalidBody => "invalid_body",
            Code::ExecutorError => "executor_error",
            Code::ExecutorUnavailable => "executor_unavailable",
            Code::ExecutorTimeout => "executor_timeout",
            Code::TemplateError => "template_error",
            Code::DirectoryUnavailable => "directory_unavailable",
            Code::InvalidSignature => "invalid_signature",
            Code::Handshake => "handshake",
            Code::DuplicateInFlight => "duplicate_in_flight",
            Code::RateLimited => "rate_limited",
        }
    }
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::UnreadableRequest
            | Refusal::InvalidPath
            | Refusal::InvalidBody { .. }
            | Refusal::InvalidDeliveryId => 400,
            Refusal::DuplicateInFlight => 409,
            Refusal::RateLimited { .. } => 429,
            Refusal::Unauthorized { .. } | Refusal::InvalidSignature { .. } => 401,
            Refusal::Handshake(reply) => reply.status,
            Refusal::NotFound => 404,
            Refusal::MethodNotAllowed { .. } => 405,
            Refusal::PayloadTooLarge { .. } => 413,
            Refusal::TemplateError { .. } => 500,
            Refusal::ExecutorError { .. } => 502,
            Refusal::ExecutorUnavailable | Refusal::DirectoryUnavailable => 503,
            Refusal::ExecutorTimeout => 504,
            Refusal::Paused => 200,
        }
    }

    /// The envelope's `error` code; also names the outcome's metric.
    pub fn code(&self) -> Code {
        match self {
            Refusal::UnreadableRequest | Refusal::InvalidDeliveryId => Code::InvalidRequest,
            Refusal::DuplicateInFlight => Code::DuplicateInFlight,
            Refusal::RateLimited { .. } => Code::RateLimited,
            Refusal::InvalidPath => Code::InvalidPath,
            Refusal::NotFound => Code::NotFound,
            Refusal::MethodNotAllowed { .. } => Code::MethodNotAllowed,
            Refusal::Unauthorized { .. } => Code::Unauthorized,
            Refusal::Paused => Code::BizLogic,
            Refusal::PayloadTooLarge { .. } => Code::PayloadTooLarge,
            Refusal::InvalidBody { .. } => Code::InvalidBody,
            Refusal::ExecutorError { .. } => Code::ExecutorError,
            Refusal::ExecutorUnavailable => Code::ExecutorUnavailable,
            Refusal::ExecutorTimeout => Code::ExecutorTimeout,
            Refusal::TemplateError { .. } => Code::TemplateError,
            Refusal::DirectoryUnavailable => Code::DirectoryUnavailable,
            Refusal::InvalidSignature { .. } => Code::InvalidSignature,
            Refusal::Handshake(_) => Code::Handshake,
        }
    }

    pub fn reply(&self) -> Reply {
        if let Refusal::Handshake(reply) = self {
            return reply.clone();
        }
        let mut headers = vec![("content-type", "application/json".to_string())];
        if let Refusal::Paused = self {
            return Reply {
                status: 200,
                headers,
                body: PAUSED_BODY.as_bytes().to_vec(),
            };
        }
        let mut data: Option<Box<RawValue>> = None;
        let message: std::borrow::Cow<'_, str> = match self {
            Refusal::UnreadableRequest => "request headers or trailers could not be read".into(),
            Refusal::InvalidPath => {
                "webhook path is not in canonical form; use the prefix followed by the flow id".into()
            }
            Refusal::NotFound => "no flow at this webhook path".into(),
            Refusal::MethodNotAllowed { allow } => {
                headers.push(("allow", allow.clone()));
                format!("method not allowed for this flow; allowed: {allow}").into()
            }
            Refusal::Unauthorized { token_presented } => {
                let challenge = if *token_presented {
                    r#"Bearer realm="flowgate", error="invalid_token""#
                } else {
                    r#"Bearer realm="flowgate""#
                };
                headers.push(("www-authenticate", challenge.to_string()));
                if *token_presented {
                    "invalid bearer token".into()
                } else {
                    "missing bearer token: send Authorization: Bearer <token>".into()
                }
            }
            Refusal::PayloadTooLarge { limit } => {
                format!("request body exceeds the flow's limit of {limit} bytes").into()
            }
            Refusal::InvalidBody { detail } => format!("request body is not valid JSON: {detail}").into(),
            Refusal::ExecutorError {
                upstream_status,
                detail,
            } => {
                data = RawValue::from_string(format!("{{\"upstream_status\":{upstream_status}}}")).ok();
                (*detail).into()
            }
            Refusal::ExecutorUnavailable => {
                headers.push(("retry-after", RETRY_AFTER_SECONDS.to_string()));
                "flow executor unavailable; retry later".into()
            }
            Refusal::ExecutorTimeout => "flow executor did not answer in time".into(),
            Refusal::TemplateError { detail } => detail.as_str().into(),
            Refusal::DirectoryUnavailable => {
                headers.push(("retry-after", RETRY_AFTER_SECONDS.to_string()));
                "flows are not loaded yet; retry later".into()
            }
            Refusal::InvalidSignature { failure } => failure.message().into(),
            Refusal::InvalidDeliveryId => format!(
                "the flow's delivery id must be 1 to {} visible ASCII characters (a string or number in the body)",
                crate::delivery::MAX_ID_BYTES
            )
            .into(),
            Refusal::DuplicateInFlight => {
                headers.push(("retry-after", DUPLICATE_RETRY_AFTER_SECONDS.to_string()));
                "this delivery is already being run; retry later for its answer".into()
            }
            Refusal::RateLimited { retry_after_s } => {
                headers.push(("retry-after", (*retry_after_s).max(1).to_string()));
                "too many deliveries for this flow; retry later".into()
            }
            Refusal::Paused | Refusal::Handshake(_) => "".into(),
        };
        let envelope = Envelope {
            status: self.status(),
            error: Some(self.code().as_str()),
            message: &message,
            data: data.as_deref(),
        };
        Reply {
            status: self.status(),
            headers,
            body: to_json(&envelope),
        }
    }
}

/// The default async acknowledgement: the run is queued, `data` is the executor's object.
pub fn run_scheduled(data: Option<&RawValue>) -> Reply {
    let envelope = Envelope {
        status: 200,
        error: None,
        message: "Flow run scheduled",
        data,
    };
    Reply {
        status: 200,
        headers: vec![("content-type", "application/json".to_string())],
        body: to_json(&envelope),
    }
}

fn to_json(envelope: &Envelope<'_>) -> Vec<u8> {
    // Serialising these plain structs cannot fail; an empty body would still be a clear failure.
    serde_json::to_vec(envelope).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(reply: &Reply) -> serde_json::Value {
        serde_json::from_slice(&reply.body).unwrap()
    }

    #[test]
    fn paused_reply_is_the_platforms_bytes() {
        let reply = Refusal::Paused.reply();
        assert_eq!(reply.status, 200);
        assert_eq!(
            String::from_utf8(reply.body).unwrap(),
            "{\"status\":200,\"error\":\"biz_logic\",\"message\":\"Flow status is `paused`. Unpause to run this flow using a webhook\",\"data\":null}"
        );
    }

    #[test]
    fn envelope_has_exactly_four_fields_in_order() {
        let reply = Refusal::NotFound.reply();
        let text = String::from_utf8(reply.body.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"status":404,"error":"not_found","message":"#),
            "{text}"
        );
        assert!(text.ends_with(r#","data":null}"#), "{text}");
    }

    #[test]
    fn unauthorized_challenge_depends_on_presented_token() {
        let without = Refusal::Unauthorized { token_presented: false }.reply();
        assert!(without
            .headers
            .contains(&("www-authenticate", r#"Bearer realm="flowgate""#.into())));
        let with = Refusal::Unauthorized { token_presented: true }.reply();
        assert!(with.headers.contains(&(
            "www-authenticate",
            r#"Bearer realm="flowgate", error="invalid_token""#.into()
        )));
    }

    #[test]
    fn executor_error_carries_upstream_status() {
        let reply = Refusal::ExecutorError {
            upstream_status: 500,
            detail: "flow executor failed",
        }
        .reply();
        assert_eq!(reply.status, 502);
        assert_eq!(body(&reply)["data"]["upstream_status"], 500);
    }

    #[test]
    fn unavailable_replies_ask_for_a_retry() {
        for reply in [Refusal::ExecutorUnavailable, Refusal::DirectoryUnavailable] {
            assert!(reply.reply().headers.iter().any(|(name, _)| *name == "retry-after"));
        }
    }

    #[test]
    fn run_scheduled_wraps_the_executor_object() {
        let run = RawValue::from_string(r#"{"run_id": "r1"}"#.to_string()).unwrap();
        let reply = run_scheduled(Some(&run));
        assert_eq!(
            String::from_utf8(reply.body).unwrap(),
            r#"{"status":200,"error":null,"message":"Flow run scheduled","data":{"run_id": "r1"}}"#
        );
    }
}
