//! The HMAC family: one generic scheme (header, prefix, separator, encoding, signed-content
//! layout, timestamp) of which the named HMAC providers are presets.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::entry::{Algorithm, Encoding, HmacEntry, Scheme, TimestampUnit};
use super::signed::{self, Signed};
use super::{Failure, Key};

/// Where the signatures sit in their header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// The value holds one signature after `prefix`, or several joined by `separator`, each
    /// after `prefix` (items with another prefix are other versions, skipped).
    Plain { prefix: String, separator: Option<char> },
    /// Comma-separated `name=value` fields: the timestamp (`t`) and signatures (`v1`), as
    /// Stripe and Calendly write them.
    Fields {
        timestamp: &'static str,
        signature: &'static str,
    },
}

/// One piece of the signed content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Body,
    Timestamp,
    Method,
    Url,
    /// The value of a request header (lower-case name).
    Header(String),
    Literal(String),
}

/// Where a signed timestamp comes from and how it counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stamp {
    Header(String, TimestampUnit),
    /// An RFC 3339 date in a header (Twitch).
    Rfc3339Header(String),
    /// The timestamp field of the `Fields` layout.
    Field,
    /// A top-level number in the JSON body, in milliseconds (Linear's `webhookTimestamp`).
    BodyMillis(&'static str),
}

/// A compiled HMAC scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacScheme {
    pub algorithm: Algorithm,
    pub header: String,
    pub layout: Layout,
    pub encoding: Encoding,
    pub content: Vec<Part>,
    pub stamp: Option<Stamp>,
}

fn plain(algorithm: Algorithm, header: &str, prefix: &str, encoding: Encoding) -> HmacScheme {
    HmacScheme {
        algorithm,
        header: header.into(),
        layout: Layout::Plain {
            prefix: prefix.into(),
            separator: None,
        },
        encoding,
        content: vec![Part::Body],
        stamp: None,
    }
}

/// `v0:<timestamp>:<body>` signed into `v0=<hex>`, timestamp in its own header (Slack, Zoom).
fn v0(header: &str, timestamp_header: &str) -> HmacScheme {
    HmacScheme {
        content: vec![
            Part::Literal("v0:".into()),
            Part::Timestamp,
            Part::Literal(":".into()),
            Part::Body,
        ],
        stamp: Some(Stamp::Header(timestamp_header.into(), TimestampUnit::Seconds)),
        ..plain(Algorithm::Sha256, header, "v0=", Encoding::Hex)
    }
}

/// `t=<timestamp>,v1=<hex>[,v1=<hex>...]` over `<timestamp>.<body>` (Stripe, Calendly).
fn fields(header: &str) -> HmacScheme {
    HmacScheme {
        algorithm: Algorithm::Sha256,
        header: header.into(),
        layout: Layout::Fields {
            timestamp: "t",
            signature: "v1",
        },
        encoding: Encoding::Hex,
        content: vec![Part::Timestamp, Part::Literal(".".into()), Part::Body],
        stamp: Some(Stamp::Field),
    }
}

/// The preset of a named HMAC provider; `None` for schemes of other families.
pub fn preset(scheme: Scheme) -> Option<HmacScheme> {
    use Algorithm::{Sha1, Sha256};
    use Encoding::{Base64, Hex};
    Some(match scheme {
        Scheme::Github | Scheme::Meta => plain(Sha256, "x-hub-signature-256", "sha256=", Hex),
        Scheme::Stripe => fields("stripe-signature"),
        Scheme::Calendly => fields("calendly-webhook-signature"),
        Scheme::Shopify => plain(Sha256, "x-shopify-hmac-sha256", "", Base64),
        Scheme::Slack => v0("x-slack-signature", "x-slack-request-timestamp"),
        Scheme::Zoom => v0("x-zm-signature", "x-zm-request-timestamp"),
        Scheme::Linear => HmacScheme {
            stamp: Some(Stamp::BodyMillis("webhookTimestamp")),
            ..plain(Sha256, "linear-signature", "", Hex)
        },
        Scheme::Pagerduty => HmacScheme {
            layout: Layout::Plain {
                prefix: "v1=".into(),
                separator: Some(','),
            },
            ..plain(Sha256, "x-pagerduty-signature", "", Hex)
        },
        Scheme::Hubspot => HmacScheme {
            content: vec![Part::Method, Part::Url, Part::Body, Part::Timestamp],
            stamp: Some(Stamp::Header(
                "x-hubspot-request-timestamp".into(),
                TimestampUnit::Milliseconds,
            )),
            ..plain(Sha256, "x-hubspot-signature-v3", "", Base64)
        },
        Scheme::Square => HmacScheme {
            content: vec![Part::Url, Part::Body],
            ..plain(Sha256, "x-square-hmacsha256-signature", "", Base64)
        },
        Scheme::Intercom => plain(Sha1, "x-hub-signature", "sha1=", Hex),
        Scheme::Twitch => HmacScheme {
            content: vec![
                Part::Header("twitch-eventsub-message-id".into()),
                Part::Header("twitch-eventsub-message-timestamp".into()),
                Part::Body,
            ],
            stamp: Some(Stamp::Rfc3339Header("twitch-eventsub-message-timestamp".into())),
            ..plain(Sha256, "twitch-eventsub-message-signature", "sha256=", Hex)
        },
        Scheme::Typeform => plain(Sha256, "typeform-signature", "sha256=", Base64),
        Scheme::Dropbox => plain(Sha256, "x-dropbox-signature", "", Hex),
        Scheme::Msteams => plain(Sha256, "authorization", "HMAC ", Base64),
        _ => return None,
    })
}

/// The generic scheme from its configuration.
pub fn custom(entry: &HmacEntry) -> Result<HmacScheme, String> {
    let header = entry.header.to_ascii_lowercase();
    if header.is_empty() || header.starts_with(':') {
        return Err("hmac.header must name a request header".into());
    }
    let stamp = entry.timestamp_header.as_ref().map(|name| {
        Stamp::Header(
            name.to_ascii_lowercase(),
            entry.timestamp_unit.unwrap_or(TimestampUnit::Seconds),
        )
    });
    let content = match &entry.content {
        Some(text) => parse_content(text)?,
        None => vec![Part::Body],
    };
    if content.contains(&Part::Timestamp) && stamp.is_none() {
        return Err("hmac.content signs {timestamp}: set hmac.timestamp_header".into());
    }
    Ok(HmacScheme {
        algorithm: entry.algorithm,
        header,
        layout: Layout::Plain {
            prefix: entry.prefix.clone().unwrap_or_default(),
            separator: entry.separator,
        },
        encoding: entry.encoding,
        content,
        stamp,
    })
}

/// `{timestamp}.{body}` into its parts.
fn parse_content(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let (literal, tail) = rest.split_at(open);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal.into()));
        }
        let close = tail.find('}').ok_or("hmac.content has an unclosed {")?;
        let name = tail.get(1..close).unwrap_or_default();
        parts.push(match name {
            "body" => Part::Body,
            "timestamp" => Part::Timestamp,
            "method" => Part::Method,
            "url" => Part::Url,
            _ => match name.strip_prefix("header:") {
                Some(header) if !header.is_empty() => Part::Header(header.to_ascii_lowercase()),
                _ => return Err(format!("hmac.content: unknown placeholder {{{name}}}")),
            },
        });
        rest = tail.get(close + 1..).unwrap_or_default();
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.into()));
    }
    if !parts.contains(&Part::Body) {
        return Err("hmac.content must sign {body}".into());
    }
    Ok(parts)
}

impl HmacScheme {
    /// Verifies a delivery with any of `keys`; on success, the key that matched.
    pub fn verify<'k>(
        &self,
        delivery: &Signed,
        body: &[u8],
        keys: &'k [Key],
        tolerance_s: u64,
        url: &str,
    ) -> Result<&'k [u8], Failure> {
        let value = delivery.require(&self.header)?;
        let malformed = || Failure::Malformed(self.header.clone());
        let (signatures, field_stamp) = match &self.layout {
            Layout::Plain { prefix, separator } => {
                let items: Vec<&[u8]> = match separator {
                    Some(separator) => split(value, *separator as u8),
                    None => vec![value],
                };
                let signatures: Vec<&[u8]> = items
                    .into_iter()
                    .filter_map(|item| item.trim_ascii().strip_prefix(prefix.as_bytes()))
                    .collect();
                (signatures, None)
            }
            Layout::Fields { timestamp, signature } => {
                let mut stamp = None;
                let mut signatures = Vec::new();
                for item in split(value, b',') {
                    let Some((name, field)) = split_once(item.trim_ascii(), b'=') else {
                        continue;
                    };
                    if name == timestamp.as_bytes() {
                        stamp = Some(field);
                    } else if name == signature.as_bytes() {
                        signatures.push(field);
                    }
                }
                (signatures, Some(stamp.ok_or_else(malformed)?))
            }
        };
        let decoded: Vec<Vec<u8>> = signatures
            .iter()
            .filter_map(|s| signed::decode(self.encoding, s))
            .collect();
        if decoded.is_empty() {
            return Err(malformed());
        }
        let stamp_text = match &self.stamp {
            None => None,
            Some(stamp) => Some(self.check_stamp(stamp, delivery, body, field_stamp, tolerance_s)?),
        };
        let mut pieces: Vec<&[u8]> = Vec::with_capacity(self.content.len());
        for part in &self.content {
            pieces.push(match part {
                Part::Body => body,
                Part::Timestamp => stamp_text.unwrap_or_default(),
                Part::Method => delivery.header(":method").unwrap_or_default(),
                Part::Url => url.as_bytes(),
                Part::Header(name) => delivery.require(name)?,
                Part::Literal(text) => text.as_bytes(),
            });
        }
        for key in keys {
            let Key::Mac(secret) = key else { continue };
            let expected = mac(self.algorithm, secret, &pieces);
            if decoded
                .iter()
                .any(|given| bool::from(given.as_slice().ct_eq(&expected)))
            {
                return Ok(secret);
            }
        }
        Err(Failure::NoKeyMatches)
    }

    /// Checks the signed timestamp against now; returns its text as signed.
    fn check_stamp<'d>(
        &self,
        stamp: &Stamp,
        delivery: &'d Signed,
        body: &[u8],
        field: Option<&'d [u8]>,
        tolerance_s: u64,
    ) -> Result<&'d [u8], Failure> {
        let (text, seconds) = match stamp {
            Stamp::Header(name, unit) => {
                let text = delivery.require(name)?;
                (
                    text,
                    signed::seconds(text, *unit).ok_or(Failure::Malformed(name.clone()))?,
                )
            }
            Stamp::Rfc3339Header(name) => {
                let text = delivery.require(name)?;
                let seconds = std::str::from_utf8(text)
                    .ok()
                    .and_then(super::time::rfc3339_seconds)
                    .ok_or(Failure::Malformed(name.clone()))?;
                (text, seconds)
            }
            Stamp::Field => {
                let text = field.ok_or(Failure::Malformed(self.header.clone()))?;
                let seconds =
                    signed::seconds(text, TimestampUnit::Seconds).ok_or(Failure::Malformed(self.header.clone()))?;
                (text, seconds)
            }
            Stamp::BodyMillis(field) => {
                let millis = signed::linear_timestamp_ms(body).ok_or(Failure::MissingField(field))?;
                (&[][..], millis / 1000)
            }
        };
        delivery.check_fresh(seconds, tolerance_s)?;
        Ok(text)
    }
}

/// HMAC of the concatenated pieces.
pub fn mac(algorithm: Algorithm, key: &[u8], pieces: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], pieces: &[&[u8]]) -> Vec<u8> {
        let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
            return Vec::new();
        };
        for piece in pieces {
            mac.update(piece);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match algorithm {
        Algorithm::Sha1 => run::<Hmac<Sha1>>(key, pieces),
        Algorithm::Sha256 => run::<Hmac<Sha256>>(key, pieces),
        Algorithm::Sha512 => run::<Hmac<Sha512>>(key, pieces),
    }
}

pub fn split(value: &[u8], separator: u8) -> Vec<&[u8]> {
    value.split(|&b| b == separator).collect()
}

pub fn split_once(value: &[u8], separator: u8) -> Option<(&[u8], &[u8])> {
    let at = value.iter().position(|&b| b == separator)?;
    Some((value.get(..at)?, value.get(at + 1..)?))
}
