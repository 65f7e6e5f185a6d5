//! Edge handshakes: the requests a provider sends to prove the endpoint, answered exactly as
//! it expects and never forwarded. Those the provider signs or authenticates are answered
//! only once that check has passed ([`signed`]); the others carry nothing to check
//! ([`unsigned`]: Microsoft Graph, Dropbox) or their own token (Meta, Okta).

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::entry::{Algorithm, Scheme};
use super::hmac::mac;
use super::signed::{self, Signed};
use super::{tokens, Failure, Verifier};
use crate::reply::Reply;

/// A handshake answered before any signature: `None` when the request is not one.
pub fn unsigned(verifier: &Verifier, delivery: &Signed) -> Option<Result<Reply, Failure>> {
    let get = delivery.method() == b"GET";
    match verifier.scheme {
        Scheme::Msgraph => delivery.query_param("validationToken").map(|token| Ok(text(token))),
        Scheme::Dropbox if get => delivery.query_param("challenge").map(|challenge| Ok(text(challenge))),
        Scheme::Meta if get => {
            let challenge = delivery.query_param("hub.challenge")?;
            let mode = delivery.query_param("hub.mode");
            let token = delivery
                .query_param("hub.verify_token")
                .ok_or(Failure::MissingField("hub.verify_token"));
            Some(token.and_then(|token| {
                let expected = verifier.verify_token.as_ref().map(|t| t.as_bytes()).unwrap_or_default();
                let matches = !expected.is_empty() && bool::from(token.as_bytes().ct_eq(expected));
                match (mode.as_deref(), matches) {
                    (Some("subscribe"), true) => Ok(text(challenge)),
                    (Some("subscribe"), false) => Err(Failure::NoKeyMatches),
                    _ => Err(Failure::Malformed("hub.mode".into())),
                }
            }))
        }
        Scheme::Okta if get => {
            let challenge = delivery.header("x-okta-verification-challenge")?;
            let challenge = String::from_utf8_lossy(challenge).into_owned();
            Some(
                tokens::header_equals(delivery, "authorization", &verifier.keys).map(|()| {
                    json_reply(&OktaAnswer {
                        verification: &challenge,
                    })
                }),
            )
        }
        _ => None,
    }
}

/// A signed handshake, answered once its signature verified with `secret` (the HMAC key
/// that matched, for Zoom's answer).
pub fn signed(verifier: &Verifier, delivery: &Signed, body: &[u8], secret: Option<&[u8]>) -> Option<Reply> {
    // Typed reads of only the fields a handshake has (no JSON tree: it would cost wasm size).
    let event = || serde_json::from_slice::<Event>(body).ok();
    match verifier.scheme {
        Scheme::Slack => {
            let event = event()?;
            (event.kind.as_deref()? == "url_verification").then(|| {
                json_reply(&Challenge {
                    challenge: event.challenge.as_deref().unwrap_or_default(),
                })
            })
        }
        Scheme::Zoom => {
            let event = event()?;
            if event.event.as_deref()? != "endpoint.url_validation" {
                return None;
            }
            let plain = event.payload?.plain_token?;
            let encrypted = signed::to_hex(&mac(Algorithm::Sha256, secret?, &[plain.as_bytes()]));
            Some(json_reply(&ZoomAnswer {
                plain_token: &plain,
                encrypted_token: &encrypted,
            }))
        }
        Scheme::Twitch => {
            let kind = delivery.header("twitch-eventsub-message-type")?;
            if kind != b"webhook_callback_verification" {
                return None;
            }
            Some(text(event()?.challenge?))
        }
        Scheme::Discord => {
            let interaction = serde_json::from_slice::<Interaction>(body).ok()?;
            (interaction.kind == 1).then(|| json_reply(&DiscordPong { kind: 1 }))
        }
        _ => None,
    }
}

/// The fields of the signed handshakes' bodies (Slack's `type` is a string).
#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: Option<String>,
    challenge: Option<String>,
    event: Option<String>,
    payload: Option<ZoomPayload>,
}

/// A Discord interaction's `type` (a number; 1 is PING).
#[derive(Deserialize)]
struct Interaction {
    #[serde(rename = "type")]
    kind: u64,
}

#[derive(Deserialize)]
struct ZoomPayload {
    #[serde(rename = "plainToken")]
    plain_token: Option<String>,
}

#[derive(Serialize)]
struct Challenge<'a> {
    challenge: &'a str,
}

#[derive(Serialize)]
struct ZoomAnswer<'a> {
    #[serde(rename = "plainToken")]
    plain_token: &'a str,
    #[serde(rename = "encryptedToken")]
    encrypted_token: &'a str,
}

#[derive(Serialize)]
struct DiscordPong {
    #[serde(rename = "type")]
    kind: u8,
}

#[derive(Serialize)]
struct OktaAnswer<'a> {
    verification: &'a str,
}

/// A challenge echoed as plain text; `nosniff` so no browser reads it as a page.
fn text(body: String) -> Reply {
    Reply {
        status: 200,
        headers: vec![
            ("content-type", "text/plain; charset=utf-8".to_string()),
            ("x-content-type-options", "nosniff".to_string()),
        ],
        body: body.into_bytes(),
    }
}

fn json_reply(value: &impl Serialize) -> Reply {
    Reply {
        status: 200,
        headers: vec![("content-type", "application/json".to_string())],
        // Serialising these plain structs cannot fail.
        body: serde_json::to_vec(value).unwrap_or_default(),
    }
}
