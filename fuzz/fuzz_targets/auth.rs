//! `Authorization` parsing and token digests.
//!
//! Invariants:
//! - `auth::parse` never panics, over the raw input as one header value and over arbitrary
//!   lists of values;
//! - its answer is exactly what RFC 6750's grammar says, written out independently here:
//!   `Bearer(token)` only for one value `<bearer in any case> SP b64token` (at most 4096
//!   bytes), `Missing` for no value or another scheme, `Malformed` for everything else;
//! - digests are deterministic, a token matches its own digest among others and not a
//!   different token's; `parse_hex_digest` accepts exactly 64 lower-case hex characters.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use flowgate::auth::{self, Credentials};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Value<'a> {
    Raw(&'a [u8]),
    Bearer {
        case: u8,
        spaces: u8,
        token: &'a [u8],
        padding: u8,
    },
}

fn build(value: &Value<'_>) -> Vec<u8> {
    match value {
        Value::Raw(raw) => raw.to_vec(),
        Value::Bearer {
            case,
            spaces,
            token,
            padding,
        } => {
            let mut out: Vec<u8> = b"bearer"
                .iter()
                .enumerate()
                .map(|(i, b)| if case >> i & 1 == 1 { b.to_ascii_uppercase() } else { *b })
                .collect();
            out.extend(std::iter::repeat_n(b' ', usize::from(spaces % 3)));
            out.extend_from_slice(token);
            out.extend(std::iter::repeat_n(b'=', usize::from(padding % 4)));
            out
        }
    }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn b64token(token: &[u8]) -> bool {
    let chars = token.iter().take_while(|&&b| is_token_char(b)).count();
    chars >= 1 && token.iter().skip(chars).all(|&b| b == b'=') && token.len() <= 4096
}

fn expected(values: &[&[u8]]) -> Credentials<'static> {
    match values {
        [] => Credentials::Missing,
        [value] => {
            let scheme_len = value.iter().position(|&b| b == b' ').unwrap_or(value.len());
            let (scheme, rest) = value.split_at(scheme_len);
            if !scheme.eq_ignore_ascii_case(b"bearer") {
                Credentials::Missing
            } else if rest.first() == Some(&b' ') && b64token(&rest[1..]) {
                Credentials::Bearer(b"<token>")
            } else {
                Credentials::Malformed
            }
        }
        _ => Credentials::Malformed,
    }
}

fn check(values: &[&[u8]]) {
    let got = auth::parse(values.iter().copied());
    let want = expected(values);
    match (&got, &want) {
        (Credentials::Bearer(token), Credentials::Bearer(_)) => {
            let [value] = values else {
                panic!("a token from {} values", values.len())
            };
            assert!(
                value.ends_with(token) && value.len() == token.len() + 7,
                "token {token:?} of {value:?}"
            );
            assert!(b64token(token), "token {token:?} is not b64token syntax");
            let presented = auth::digest(token);
            assert_eq!(presented, auth::digest(token));
            let other = auth::digest(&[*token, b"x"].concat());
            assert!(auth::matches_any(&presented, &[other, presented]));
            assert!(!auth::matches_any(&presented, &[other]));
            let hex: String = presented.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(auth::parse_hex_digest(&hex), Some(presented));
            assert_eq!(
                auth::parse_hex_digest(&hex.to_uppercase()).is_some(),
                hex == hex.to_uppercase()
            );
        }
        (Credentials::Missing, Credentials::Missing) | (Credentials::Malformed, Credentials::Malformed) => {}
        _ => panic!("{values:?}: parsed as {got:?}, the grammar says {want:?}"),
    }
    assert_eq!(got.token_presented(), !matches!(want, Credentials::Missing));
}

fuzz_target!(|data: &[u8]| {
    check(&[data]);
    if let Ok(text) = std::str::from_utf8(data) {
        let is_hex = text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        assert_eq!(auth::parse_hex_digest(text).is_some(), is_hex, "hex digest {text:?}");
    }
    let mut u = Unstructured::new(data);
    if let Ok(values) = Vec::<Value<'_>>::arbitrary(&mut u) {
        let built: Vec<Vec<u8>> = values.iter().map(build).collect();
        let slices: Vec<&[u8]> = built.iter().map(Vec::as_slice).collect();
        check(&slices);
    }
});
