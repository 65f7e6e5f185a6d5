//! What an operator writes under a flow's `verify` (contract 7), as serde types. Checked
//! further, and compiled into a [`super::Verifier`], by `super::compile`.

use serde::Deserialize;

use crate::schema::DedupeKey;

/// A flow's sender verification: the provider's scheme and the keys that may sign.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VerifyEntry {
    /// The provider's scheme (docs/signatures.md), or `hmac` with an `hmac` layout.
    pub scheme: Scheme,
    /// Shared secrets or public keys, as the provider shows them; any one may verify (rotation).
    /// Visible in Envoy's `/config_dump` when the plugin configuration holds them.
    pub secrets: Option<Vec<String>>,
    /// Names of Envoy host environment variables holding keys (list them in
    /// `vm_config.environment_variables.host_env_keys`).
    pub secret_env: Option<Vec<String>>,
    /// Seconds a signed timestamp may differ from now, either way (default: the provider's, else 300).
    pub tolerance_s: Option<u64>,
    /// The URL the provider was given (Twilio, HubSpot, Square sign it); default
    /// `<x-forwarded-proto or http>://<:authority><:path>`. The request's query is appended.
    pub public_url: Option<String>,
    /// Meta's `hub.verify_token`, for its subscription handshake.
    pub verify_token: Option<String>,
    /// The layout of the generic `hmac` scheme.
    pub hmac: Option<HmacEntry>,
}

/// The generic HMAC scheme: which header holds the signature and what is signed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HmacEntry {
    pub algorithm: Algorithm,
    /// The header holding the signature(s).
    pub header: String,
    /// Text before each signature, e.g. `sha256=` (default none).
    pub prefix: Option<String>,
    /// Several signatures in the header are separated by this character (default: one signature).
    pub separator: Option<char>,
    pub encoding: Encoding,
    /// The signed content: `{body}`, `{timestamp}`, `{method}`, `{url}`, `{header:<name>}` and
    /// literal text; default `{body}`.
    pub content: Option<String>,
    /// The header holding the signed timestamp (checked against `tolerance_s`).
    pub timestamp_header: Option<String>,
    /// Whether the timestamp counts seconds (default) or milliseconds.
    pub timestamp_unit: Option<TimestampUnit>,
    /// How the secrets are written: `raw` bytes (default) or `base64`.
    pub key_encoding: Option<KeyEncoding>,
}

/// The catalogue of schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Scheme {
    Github,
    Stripe,
    Shopify,
    Slack,
    StandardWebhooks,
    Svix,
    Zoom,
    Meta,
    Twilio,
    Linear,
    Pagerduty,
    Hubspot,
    Square,
    Intercom,
    Gitlab,
    Discord,
    Sendgrid,
    Twitch,
    Typeform,
    Dropbox,
    Calendly,
    Msteams,
    Okta,
    Msgraph,
    Hmac,
}

impl Scheme {
    pub const ALL: [Scheme; 25] = [
        Scheme::Github,
        Scheme::Stripe,
        Scheme::Shopify,
        Scheme::Slack,
        Scheme::StandardWebhooks,
        Scheme::Svix,
        Scheme::Zoom,
        Scheme::Meta,
        Scheme::Twilio,
        Scheme::Linear,
        Scheme::Pagerduty,
        Scheme::Hubspot,
        Scheme::Square,
        Scheme::Intercom,
        Scheme::Gitlab,
        Scheme::Discord,
        Scheme::Sendgrid,
        Scheme::Twitch,
        Scheme::Typeform,
        Scheme::Dropbox,
        Scheme::Calendly,
        Scheme::Msteams,
        Scheme::Okta,
        Scheme::Msgraph,
        Scheme::Hmac,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Github => "github",
            Scheme::Stripe => "stripe",
            Scheme::Shopify => "shopify",
            Scheme::Slack => "slack",
            Scheme::StandardWebhooks => "standard-webhooks",
            Scheme::Svix => "svix",
            Scheme::Zoom => "zoom",
            Scheme::Meta => "meta",
            Scheme::Twilio => "twilio",
            Scheme::Linear => "linear",
            Scheme::Pagerduty => "pagerduty",
            Scheme::Hubspot => "hubspot",
            Scheme::Square => "square",
            Scheme::Intercom => "intercom",
            Scheme::Gitlab => "gitlab",
            Scheme::Discord => "discord",
            Scheme::Sendgrid => "sendgrid",
            Scheme::Twitch => "twitch",
            Scheme::Typeform => "typeform",
            Scheme::Dropbox => "dropbox",
            Scheme::Calendly => "calendly",
            Scheme::Msteams => "msteams",
            Scheme::Okta => "okta",
            Scheme::Msgraph => "msgraph",
            Scheme::Hmac => "hmac",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Encoding {
    Hex,
    Base64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum TimestampUnit {
    #[serde(rename = "s")]
    Seconds,
    #[serde(rename = "ms")]
    Milliseconds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum KeyEncoding {
    Raw,
    Base64,
}

/// The provider's own delivery id, the same on every redelivery (`dedupe.key: "scheme"`,
/// contract 8); `None` where the provider documents none (the operator names one instead).
pub fn delivery_id(scheme: Scheme) -> Option<DedupeKey> {
    let header = |name: &str| Some(DedupeKey::Header(name.into()));
    let body = |pointer: &str| Some(DedupeKey::Body(pointer.into()));
    match scheme {
        Scheme::Github => header("x-github-delivery"),
        Scheme::Shopify => header("x-shopify-webhook-id"),
        Scheme::StandardWebhooks => header("webhook-id"),
        Scheme::Svix => header("svix-id"),
        Scheme::Twilio => header("i-twilio-idempotency-token"),
        Scheme::Linear => header("linear-delivery"),
        Scheme::Gitlab => header("idempotency-key"),
        Scheme::Twitch => header("twitch-eventsub-message-id"),
        Scheme::Stripe | Scheme::Intercom | Scheme::Discord | Scheme::Msteams => body("/id"),
        Scheme::Slack => body("/event_id"),
        Scheme::Pagerduty => body("/event/id"),
        Scheme::Square | Scheme::Typeform => body("/event_id"),
        Scheme::Okta => body("/eventId"),
        Scheme::Zoom
        | Scheme::Meta
        | Scheme::Hubspot
        | Scheme::Sendgrid
        | Scheme::Dropbox
        | Scheme::Calendly
        | Scheme::Msgraph
        | Scheme::Hmac => None,
    }
}
