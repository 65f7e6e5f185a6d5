//! The delivery controls of a flow (contract 8) as an operator writes them: `dedupe` and
//! `rate_limit`, each value checked as it is read.

use serde::Deserialize;

/// Longest dedupe window: a day. Remembered answers live in a bounded store anyway.
pub const MAX_WINDOW_S: u64 = 86_400;
/// Highest rate and burst of a flow's token bucket.
pub const MAX_RATE: u64 = 1_000_000;

/// `dedupe`: a repeated delivery is answered from the edge instead of running again.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DedupeEntry {
    /// Where the delivery id is: `header:<name>`, `body:<JSON pointer>`, or `scheme` (the
    /// verified scheme's own delivery id, such as GitHub's `X-GitHub-Delivery`).
    pub key: DedupeKey,
    /// How long a delivery id is remembered after it was first admitted, in seconds.
    pub window_s: WindowS,
}

/// `rate_limit`: admitted deliveries per second for this flow and Envoy process.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RateLimitEntry {
    /// Tokens added to the flow's bucket per second.
    pub requests_per_second: Rate,
    /// The bucket's size: deliveries admitted at once after a quiet spell (default: `requests_per_second`).
    pub burst: Option<Rate>,
}

checked_range!(
    /// Seconds a delivery id is remembered.
    WindowS,
    1,
    MAX_WINDOW_S
);

checked_range!(
    /// Deliveries per second, or a bucket's size.
    Rate,
    1,
    MAX_RATE
);

/// Where a flow's delivery id is read from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum DedupeKey {
    /// A request header (name lower-case).
    Header(String),
    /// A JSON pointer (RFC 6901) into the JSON request body.
    Body(String),
    /// The verified scheme's own delivery id (`verify::delivery_id`), resolved when the
    /// flow is built.
    Scheme,
}

impl TryFrom<String> for DedupeKey {
    type Error = String;
    fn try_from(key: String) -> Result<Self, String> {
        if let Some(name) = key.strip_prefix("header:") {
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || !name.bytes().all(token) {
                return Err(format!("{key:?}: the header name must be a non-empty HTTP token"));
            }
            return Ok(DedupeKey::Header(name.to_ascii_lowercase()));
        }
        if let Some(pointer) = key.strip_prefix("body:") {
            if !pointer.starts_with('/') {
                return Err(format!("{key:?}: the JSON pointer must start with '/' (RFC 6901)"));
            }
            return Ok(DedupeKey::Body(pointer.to_string()));
        }
        if key == "scheme" {
            return Ok(DedupeKey::Scheme);
        }
        Err(format!(
            "{key:?}: must be \"header:<name>\", \"body:<JSON pointer>\" or \"scheme\""
        ))
    }
}
schema!(DedupeKey, {"type": "string", "pattern": "^(header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|body:/.*|scheme)$"});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_check_themselves() {
        let key = |text: &str| DedupeKey::try_from(text.to_string());
        assert_eq!(
            key("header:X-GitHub-Delivery"),
            Ok(DedupeKey::Header("x-github-delivery".into()))
        );
        assert_eq!(key("body:/event/id"), Ok(DedupeKey::Body("/event/id".into())));
        for bad in ["header:", "header:a b", "body:id", "body:", "id", "Header:x"] {
            assert!(key(bad).is_err(), "{bad:?}");
        }
        assert_eq!(key("scheme"), Ok(DedupeKey::Scheme));
        assert!(WindowS::try_from(0).is_err() && Rate::try_from(MAX_RATE + 1).is_err());
    }
}
