//! Schemes that sign the URL: Twilio (HMAC-SHA1 over the URL and the sorted form
//! parameters, or the URL with `bodySHA256` for other bodies) and the URL spelling HubSpot
//! signs. Square signs the URL too, through the generic HMAC layout (`{url}{body}`).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::entry::Algorithm;
use super::hmac::mac;
use super::signed::{self, Signed};
use super::{Failure, Key};

const TWILIO_SIGNATURE: &str = "x-twilio-signature";

/// Twilio's request validation, as its helper libraries do it: the URL with and without
/// its default port; form parameters sorted by name then value, each once.
pub fn twilio(delivery: &Signed, body: &[u8], keys: &[Key], url: &str) -> Result<(), Failure> {
    let signature = delivery.require(TWILIO_SIGNATURE)?;
    let signature = signed::base64(signature.trim_ascii()).ok_or(Failure::Malformed(TWILIO_SIGNATURE.into()))?;
    let form = delivery
        .header("content-type")
        .is_some_and(|t| t.to_ascii_lowercase().starts_with(b"application/x-www-form-urlencoded"));
    let mut signed_params = String::new();
    if form {
        let mut pairs: Vec<(String, String)> = crate::body::form_pairs(body).collect();
        pairs.sort();
        pairs.dedup();
        for (name, value) in pairs {
            signed_params.push_str(&name);
            signed_params.push_str(&value);
        }
    } else {
        // Other bodies are covered by the URL's bodySHA256, which the signature covers.
        let claimed = delivery
            .query_param("bodySHA256")
            .ok_or(Failure::MissingField("bodySHA256"))?;
        let actual = signed::to_hex(&Sha256::digest(body));
        if !bool::from(claimed.to_ascii_lowercase().as_bytes().ct_eq(actual.as_bytes())) {
            return Err(Failure::NoKeyMatches);
        }
    }
    for candidate in port_variants(url) {
        let signed = [candidate.as_bytes(), signed_params.as_bytes()];
        let matches = keys.iter().any(|key| match key {
            Key::Mac(token) => bool::from(signature.ct_eq(&mac(Algorithm::Sha1, token, &signed))),
            _ => false,
        });
        if matches {
            return Ok(());
        }
    }
    Err(Failure::NoKeyMatches)
}

/// The URL as given, without its port and with the scheme's default port.
fn port_variants(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_string()];
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, host_port) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    let host = match host_port.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => host_port,
    };
    let default_port = if scheme.eq_ignore_ascii_case("https") { 443 } else { 80 };
    let without = format!("{scheme}://{userinfo}{host}{tail}");
    let with = if host == host_port {
        format!("{scheme}://{userinfo}{host}:{default_port}{tail}")
    } else {
        url.to_string()
    };
    vec![without, with]
}

/// The request URI as HubSpot v3 signs it: a few percent-encoded characters decoded.
pub fn hubspot_url(url: &str) -> String {
    const DECODED: [(&str, &str); 12] = [
        ("%3A", ":"),
        ("%2F", "/"),
        ("%3F", "?"),
        ("%40", "@"),
        ("%21", "!"),
        ("%24", "$"),
        ("%27", "'"),
        ("%28", "("),
        ("%29", ")"),
        ("%2A", "*"),
        ("%2C", ","),
        ("%3B", ";"),
    ];
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(at) = rest.find('%') {
        let (before, tail) = rest.split_at(at);
        out.push_str(before);
        let code = tail.get(..3).unwrap_or(tail);
        match DECODED.iter().find(|(encoded, _)| encoded.eq_ignore_ascii_case(code)) {
            Some((_, plain)) => {
                out.push_str(plain);
                rest = tail.get(3..).unwrap_or_default();
            }
            None => {
                out.push('%');
                rest = tail.get(1..).unwrap_or_default();
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_tried_with_and_without_the_default_port() {
        assert_eq!(
            port_variants("https://example.com/hook?x=1"),
            ["https://example.com/hook?x=1", "https://example.com:443/hook?x=1"]
        );
        assert_eq!(
            port_variants("http://example.com:8080/hook"),
            ["http://example.com/hook", "http://example.com:8080/hook"]
        );
    }

    #[test]
    fn hubspot_decodes_only_its_characters() {
        assert_eq!(
            hubspot_url("https://h.example/a%3Ab%2fc?q=%20%40%2A"),
            "https://h.example/a:b/c?q=%20@*"
        );
    }
}
