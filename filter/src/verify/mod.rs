//! Sender verification (contract 7): a flow's `verify` names the provider's scheme and the
//! keys that may sign; a delivery is admitted only when one of them verifies its raw body
//! bytes (and its timestamp is fresh), and provider handshakes are answered at the edge.
//!
//! Families, one module each: [`hmac`] (the generic HMAC scheme and its presets), [`keys`]
//! (Standard Webhooks, Svix, Discord, SendGrid), [`urls`] (Twilio, HubSpot's URL),
//! [`tokens`] (Okta, GitLab, Microsoft Graph), [`handshake`]. Everything here is sans-I/O:
//! the request facts come in a [`Signed`], the outcome goes out as a [`Refusal`].

pub mod entry;
mod handshake;
mod hmac;
mod keys;
mod signed;
mod time;
mod tokens;
mod urls;

#[cfg(test)]
mod tests;

use std::fmt;

pub use entry::{delivery_id, Scheme, VerifyEntry};
pub use signed::Signed;

use crate::flows::Flow;
use crate::reply::Refusal;
use crate::schema::FlowStatus;
use entry::KeyEncoding;

/// A key a flow accepts. Never printed: `Debug` shows only its kind.
#[derive(Clone)]
pub enum Key {
    /// An HMAC secret (or a shared token).
    Mac(Vec<u8>),
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Key::Mac(_) => "Key::Mac(<secret>)",
            Key::Ed25519(_) => "Key::Ed25519(..)",
            Key::P256(_) => "Key::P256(..)",
        })
    }
}

/// A shared value that is not printed either (Meta's `verify_token`).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// Which check of a delivery failed. Messages name the header or field, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    MissingHeader(String),
    /// A body field or query parameter the scheme reads.
    MissingField(&'static str),
    /// Present but not in the provider's format (or present twice).
    Malformed(String),
    NoKeyMatches,
    Stale {
        tolerance_s: u64,
    },
}

/// The kinds of failure, one metric each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Missing,
    Malformed,
    Mismatch,
    Stale,
}

impl Reason {
    pub const ALL: [Reason; 4] = [Reason::Missing, Reason::Malformed, Reason::Mismatch, Reason::Stale];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::Mismatch => "mismatch",
            Reason::Stale => "stale",
        }
    }
}

impl Failure {
    pub fn reason(&self) -> Reason {
        match self {
            Failure::MissingHeader(_) | Failure::MissingField(_) => Reason::Missing,
            Failure::Malformed(_) => Reason::Malformed,
            Failure::NoKeyMatches => Reason::Mismatch,
            Failure::Stale { .. } => Reason::Stale,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Failure::MissingHeader(name) => format!("signature check failed: missing header {name}"),
            Failure::MissingField(name) => format!("signature check failed: missing {name}"),
            Failure::Malformed(name) => format!("signature check failed: malformed {name}"),
            Failure::NoKeyMatches => "signature check failed: no key of this flow matches".into(),
            Failure::Stale { tolerance_s } => {
                format!("signature check failed: timestamp outside the tolerance of {tolerance_s} s")
            }
        }
    }
}

/// How a scheme proves a delivery.
#[derive(Debug, Clone)]
enum Family {
    Hmac(hmac::HmacScheme),
    /// Standard Webhooks headers with this prefix (`webhook-`, `svix-`).
    StandardWebhooks(&'static str),
    Twilio,
    Discord,
    Sendgrid,
    /// A header equals a key.
    Token(&'static str),
    ClientState,
}

/// A flow's compiled `verify`.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub scheme: Scheme,
    family: Family,
    keys: Vec<Key>,
    tolerance_s: u64,
    public_url: Option<String>,
    verify_token: Option<Secret>,
}

/// A tolerance the provider documents; 300 s for the others that sign a time.
fn default_tolerance_s(scheme: Scheme) -> u64 {
    match scheme {
        Scheme::Twitch => 600,
        Scheme::Calendly => 180,
        Scheme::Linear => 60,
        _ => 300,
    }
}

/// Where an environment variable's value comes from: `std::env::var` in the filter (WASI's
/// environment is Envoy's `host_env_keys`), a map in tests.
pub type Environment<'e> = &'e dyn Fn(&str) -> Option<String>;

/// Compiles a flow's `verify`; an error is `(field under verify, problem)`.
pub fn compile(entry: VerifyEntry, env: Environment<'_>) -> Result<Verifier, (String, String)> {
    let scheme = entry.scheme;
    let problem = |field: &str, problem: &str| (field.to_string(), problem.to_string());
    let family = match scheme {
        Scheme::Hmac => {
            let layout = entry
                .hmac
                .as_ref()
                .ok_or_else(|| problem("hmac", "is required by scheme hmac"))?;
            Family::Hmac(hmac::custom(layout).map_err(|p| ("hmac".to_string(), p))?)
        }
        Scheme::StandardWebhooks => Family::StandardWebhooks("webhook-"),
        Scheme::Svix => Family::StandardWebhooks("svix-"),
        Scheme::Twilio => Family::Twilio,
        Scheme::Discord => Family::Discord,
        Scheme::Sendgrid => Family::Sendgrid,
        Scheme::Okta => Family::Token("authorization"),
        Scheme::Gitlab => Family::Token("x-gitlab-token"),
        Scheme::Msgraph => Family::ClientState,
        named => Family::Hmac(hmac::preset(named).ok_or_else(|| problem("scheme", "has no preset"))?),
    };
    if entry.hmac.is_some() && scheme != Scheme::Hmac {
        return Err(problem("hmac", "is only for scheme hmac"));
    }
    let key_encoding = entry
        .hmac
        .as_ref()
        .and_then(|h| h.key_encoding)
        .unwrap_or(KeyEncoding::Raw);
    let mut keys = Vec::new();
    for (index, text) in entry.secrets.iter().flatten().enumerate() {
        let key = keys::parse(scheme, key_encoding, text).map_err(|p| problem(&format!("secrets[{index}]"), p))?;
        keys.push(key);
    }
    for (index, name) in entry.secret_env.iter().flatten().enumerate() {
        let at = format!("secret_env[{index}]");
        let text = env(name).ok_or_else(|| {
            (
                at.clone(),
                format!(
                    "environment variable {name} is not set (list it in vm_config.environment_variables.host_env_keys)"
                ),
            )
        })?;
        keys.push(keys::parse(scheme, key_encoding, &text).map_err(|p| (at, format!("{name} {p}")))?);
    }
    if keys.is_empty() {
        return Err(problem("secrets", "needs at least one key in secrets or secret_env"));
    }
    Ok(Verifier {
        scheme,
        family,
        keys,
        tolerance_s: entry.tolerance_s.unwrap_or_else(|| default_tolerance_s(scheme)),
        public_url: entry.public_url,
        verify_token: entry.verify_token.map(Secret),
    })
}

impl Verifier {
    /// Whether this scheme's provider sends a GET handshake (allowed whatever the flow's methods).
    pub fn answers_get(&self) -> bool {
        matches!(
            self.scheme,
            Scheme::Meta | Scheme::Dropbox | Scheme::Okta | Scheme::Msgraph
        )
    }

    /// Whether the scheme reads `Authorization` itself (so it cannot share it with a bearer token).
    pub fn reads_authorization(&self) -> bool {
        matches!(self.scheme, Scheme::Okta | Scheme::Msteams)
            || matches!(&self.family, Family::Hmac(h) if h.header == "authorization")
    }

    /// Verifies the delivery; on success, the HMAC secret that matched, if the family has one.
    fn verify(&self, delivery: &Signed, body: &[u8]) -> Result<Option<&[u8]>, Failure> {
        let url = || delivery.url(self.public_url.as_deref());
        match &self.family {
            Family::Hmac(scheme) => {
                let url = match self.scheme {
                    Scheme::Hubspot => urls::hubspot_url(&url()),
                    _ if scheme.content.contains(&hmac::Part::Url) => url(),
                    _ => String::new(),
                };
                scheme
                    .verify(delivery, body, &self.keys, self.tolerance_s, &url)
                    .map(Some)
            }
            Family::StandardWebhooks(prefix) => {
                keys::standard_webhooks(prefix, delivery, body, &self.keys, self.tolerance_s).map(|()| None)
            }
            Family::Twilio => urls::twilio(delivery, body, &self.keys, &url()).map(|()| None),
            Family::Discord => keys::discord(delivery, body, &self.keys, self.tolerance_s).map(|()| None),
            Family::Sendgrid => keys::sendgrid(delivery, body, &self.keys, self.tolerance_s).map(|()| None),
            Family::Token(header) => tokens::header_equals(delivery, header, &self.keys).map(|()| None),
            Family::ClientState => tokens::client_states(body, &self.keys).map(|()| None),
        }
    }
}

/// The sender checks of a flow with `verify`, once its body is in, in the contract's order:
/// unsigned handshakes, method, signature, signed handshakes, then status (a paused flow is
/// revealed only to a verified delivery). `Err` is what the edge answers instead.
pub fn check(flow: &Flow, delivery: &Signed, body: &[u8]) -> Result<(), Refusal> {
    let Some(verifier) = &flow.verify else {
        return Ok(());
    };
    let invalid = |failure: Failure| Refusal::InvalidSignature { failure };
    if let Some(answer) = handshake::unsigned(verifier, delivery) {
        return Err(answer.map_or_else(invalid, Refusal::Handshake));
    }
    if !flow.methods.iter().any(|m| m.as_bytes() == delivery.method()) {
        return Err(Refusal::MethodNotAllowed {
            allow: flow.allow.clone(),
        });
    }
    let secret = verifier.verify(delivery, body).map_err(invalid)?;
    if let Some(reply) = handshake::signed(verifier, delivery, body, secret) {
        return Err(Refusal::Handshake(reply));
    }
    if flow.status == FlowStatus::Paused {
        return Err(Refusal::Paused);
    }
    Ok(())
}
