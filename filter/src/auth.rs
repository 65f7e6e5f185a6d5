//! Bearer credentials (RFC 6750 section 2.1) and token digests.
//!
//! Flows store SHA-256 digests of their tokens, never the tokens. A presented token is
//! hashed once and compared with every digest of the flow in constant time.

use sha2::{Digest, Sha256};

use crate::route;

/// A SHA-256 digest of a bearer token.
pub type TokenDigest = [u8; 32];

/// Longest token accepted; real tokens are 50+ characters, nothing needs kilobytes.
const MAX_TOKEN_LEN: usize = 4096;

/// What the `Authorization` header(s) of a request hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// No `Authorization` header, or a scheme other than Bearer.
    Missing,
    /// Bearer scheme, but not exactly one well-formed token (or several headers).
    Malformed,
    Bearer(&'a [u8]),
}

impl Credentials<'_> {
    /// Whether the sender presented something meant as a bearer token
    /// (decides `error="invalid_token"` in the challenge).
    pub fn token_presented(&self) -> bool {
        !matches!(self, Credentials::Missing)
    }
}

/// Parses every `Authorization` header value of one request.
pub fn parse<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Credentials<'a> {
    let Some(value) = values.next() else {
        return Credentials::Missing;
    };
    let single = parse_one(value);
    if values.next().is_some() {
        return Credentials::Malformed;
    }
    single
}

fn parse_one(value: &[u8]) -> Credentials<'_> {
    let Some(space) = value.iter().position(|&b| b == b' ') else {
        return if value.eq_ignore_ascii_case(b"bearer") {
            Credentials::Malformed
        } else {
            Credentials::Missing
        };
    };
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Credentials::Missing;
    }
    let token = rest.get(1..).unwrap_or_default();
    if is_b64token(token) {
        Credentials::Bearer(token)
    } else {
        Credentials::Malformed
    }
}

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_b64token(token: &[u8]) -> bool {
    let body_len = token.len() - token.iter().rev().take_while(|&&b| b == b'=').count();
    let (body, _padding) = token.split_at(body_len);
    !body.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && body
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'))
}

pub fn digest(token: &[u8]) -> TokenDigest {
    Sha256::digest(token).into()
}

/// True when `presented` equals any of `allowed`. Every digest is compared in full, so
/// the time taken does not depend on where, or whether, a match is found.
pub fn matches_any(presented: &TokenDigest, allowed: &[TokenDigest]) -> bool {
    let mut found = 0u8;
    for candidate in allowed {
        let difference = candidate.iter().zip(presented).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        found |= u8::from(std::hint::black_box(difference) == 0);
    }
    found != 0
}

/// Parses 64 lowercase hex characters.
pub fn parse_hex_digest(hex: &str) -> Option<TokenDigest> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        let lower = |digit: u8| (!digit.is_ascii_uppercase()).then(|| route::hex_value(digit)).flatten();
        *slot = lower(*hi)? << 4 | lower(*lo)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(value: &str) -> Credentials<'_> {
        parse(std::iter::once(value.as_bytes()))
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(one("Bearer abc.DEF-1_~+/=="), Credentials::Bearer(b"abc.DEF-1_~+/=="));
        assert_eq!(one("bearer abc"), Credentials::Bearer(b"abc"));
        assert_eq!(one("BEARER abc"), Credentials::Bearer(b"abc"));
    }

    #[test]
    fn malformed_bearer_values() {
        for value in [
            "Bearer",
            "Bearer ",
            "Bearer  abc",
            "Bearer abc def",
            "Bearer a\tb",
            "Bearer =abc",
            "Bearer ab=c",
            "Bearer abc\u{1}",
        ] {
            assert_eq!(one(value), Credentials::Malformed, "{value:?}");
        }
        assert_eq!(
            one(&format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1))),
            Credentials::Malformed
        );
    }

    #[test]
    fn other_schemes_present_no_token() {
        assert_eq!(one("Basic dXNlcjpwYXNz"), Credentials::Missing);
        assert_eq!(one("Token abc"), Credentials::Missing);
        assert!(!one("Basic x").token_presented());
        assert_eq!(parse(std::iter::empty()), Credentials::Missing);
    }

    #[test]
    fn repeated_headers_are_malformed() {
        let values = [b"Bearer abc".as_slice(), b"Bearer abc".as_slice()];
        assert_eq!(parse(values.into_iter()), Credentials::Malformed);
    }

    #[test]
    fn digest_matches_known_vector() {
        // FIPS 180-2 test vector for "abc".
        let expected = parse_hex_digest("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad").unwrap();
        assert_eq!(digest(b"abc"), expected);
    }

    #[test]
    fn any_rotated_digest_authorises() {
        let old = digest(b"old-token");
        let new = digest(b"new-token");
        assert!(matches_any(&digest(b"new-token"), &[old, new]));
        assert!(matches_any(&digest(b"old-token"), &[old, new]));
        assert!(!matches_any(&digest(b"New-token"), &[old, new]));
        assert!(!matches_any(&digest(b"x"), &[]));
    }

    #[test]
    fn hex_digests_must_be_64_lowercase_hex() {
        assert!(parse_hex_digest(&"a".repeat(64)).is_some());
        assert!(parse_hex_digest(&"A".repeat(64)).is_none());
        assert!(parse_hex_digest(&"a".repeat(63)).is_none());
        assert!(parse_hex_digest(&"g".repeat(64)).is_none());
    }
}
