//! A delivery as verification sees it: the request headers captured when the head
//! arrived, the time it arrived, and helpers to read signatures, timestamps and URLs.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;

use super::entry::{Encoding, TimestampUnit};
use super::Failure;
use crate::{body, route};

/// A signed request's facts that its check reads, kept from the head until the body is in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signed {
    /// Every request header (names lower-case, as Envoy gives them), pseudo-headers too.
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Unix seconds when the head arrived.
    pub received_at_s: u64,
}

impl Signed {
    pub fn new(headers: &[(&[u8], &[u8])], received_at_s: u64) -> Signed {
        Signed {
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_ascii_lowercase(), value.to_vec()))
                .collect(),
            received_at_s,
        }
    }

    /// The first value of a header (`name` lower-case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.as_slice() == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// A header the scheme needs: missing, or present more than once (which one was
    /// signed would be ambiguous), it fails.
    pub fn require(&self, name: &str) -> Result<&[u8], Failure> {
        let mut values = self.headers.iter().filter(|(n, _)| n.as_slice() == name.as_bytes());
        let first = values.next().ok_or_else(|| Failure::MissingHeader(name.to_string()))?;
        if values.next().is_some() {
            return Err(Failure::Malformed(name.to_string()));
        }
        Ok(&first.1)
    }

    pub fn method(&self) -> &[u8] {
        self.header(":method").unwrap_or_default()
    }

    /// The request's `:path`.
    pub fn path(&self) -> &[u8] {
        self.header(":path").unwrap_or_default()
    }

    /// The query string of `:path`, without `?`.
    pub fn query(&self) -> &[u8] {
        let path = self.path();
        match path.iter().position(|&b| b == b'?') {
            Some(at) => path.get(at + 1..).unwrap_or_default(),
            None => b"",
        }
    }

    /// The first value of a query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        body::form_pairs(self.query()).find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The URL the provider signed: `public_url` plus the request's query, or the URL as
    /// the request arrived (`<x-forwarded-proto or http>://<:authority><:path>`).
    pub fn url(&self, public_url: Option<&str>) -> String {
        match public_url {
            Some(base) => {
                let query = String::from_utf8_lossy(self.query());
                if query.is_empty() || base.contains('?') {
                    base.to_string()
                } else {
                    format!("{base}?{query}")
                }
            }
            None => {
                let proto = self
                    .header("x-forwarded-proto")
                    .and_then(|p| std::str::from_utf8(p).ok())
                    .and_then(|p| p.split(',').next())
                    .map_or("http", str::trim);
                let authority = String::from_utf8_lossy(self.header(":authority").unwrap_or_default());
                format!("{proto}://{authority}{}", String::from_utf8_lossy(self.path()))
            }
        }
    }

    /// Refuses a signed time further than `tolerance_s` from when the delivery arrived.
    pub fn check_fresh(&self, signed_at_s: u64, tolerance_s: u64) -> Result<(), Failure> {
        if self.received_at_s.abs_diff(signed_at_s) > tolerance_s {
            return Err(Failure::Stale { tolerance_s });
        }
        Ok(())
    }
}

/// Decodes a signature (hex of either case; base64 with or without padding).
pub fn decode(encoding: Encoding, text: &[u8]) -> Option<Vec<u8>> {
    let text = text.trim_ascii();
    match encoding {
        Encoding::Hex => hex(text),
        Encoding::Base64 => base64(text),
    }
}

pub fn base64(text: &[u8]) -> Option<Vec<u8>> {
    STANDARD
        .decode(text)
        .or_else(|_| STANDARD_NO_PAD.decode(text))
        .ok()
        .filter(|bytes| !bytes.is_empty())
}

pub fn hex(text: &[u8]) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some(route::hex_value(*hi)? << 4 | route::hex_value(*lo)?),
            _ => None,
        })
        .collect()
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A decimal timestamp in whole seconds.
pub fn seconds(text: &[u8], unit: TimestampUnit) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = text.parse().ok()?;
    Some(match unit {
        TimestampUnit::Seconds => value,
        TimestampUnit::Milliseconds => value / 1000,
    })
}

/// Linear's `webhookTimestamp` (milliseconds) from its JSON body.
pub fn linear_timestamp_ms(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Signed {
        #[serde(rename = "webhookTimestamp")]
        webhook_timestamp: Option<u64>,
    }
    serde_json::from_slice::<Signed>(body).ok()?.webhook_timestamp
}
