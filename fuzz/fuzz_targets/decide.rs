//! The edge decision over arbitrary headers and bodies, against a fixed flow set.
//!
//! Invariants:
//! - `decide`, `Admission::check_size/check_body` and `body::bind` never panic;
//! - `Verdict::Admit` only for the path `<prefix><flow id>` (optionally `?query`), a method
//!   the flow allows, exactly one `Authorization: Bearer <one of the flow's tokens>`
//!   (scheme in any case), a flow that is not paused and a `content-length` within its limit;
//! - a path that any lenient executor model (see `executor_path`) resolves into the prefix,
//!   case-insensitively, is never `Verdict::Pass`;
//! - an admitted body passes `check_body` only when it is within the limit and, for JSON
//!   content types, parses; it is bound for the template only when the flow keeps it.
#![no_main]

use arbitrary::Arbitrary;
use flowgate::config::PluginConfig;
use flowgate::schema::FlowStatus;
use flowgate::gate::{decide, RequestHead, Verdict};
use flowgate_fuzz::{bearer_token, executor_path, fixture, fixture_flow, show, Facts, FLOWS, PREFIXES};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Request<'a> {
    prefix: u8,
    /// Decide as if the live directory had never loaded.
    unloaded: bool,
    headers: Vec<Header<'a>>,
    body: &'a [u8],
}

#[derive(Arbitrary, Debug)]
enum Header<'a> {
    Raw(&'a [u8], &'a [u8]),
    Method(Method<'a>),
    Path(Vec<Piece<'a>>),
    RawPath(&'a [u8]),
    Authorization(Auth<'a>),
    ContentType(ContentType<'a>),
    ContentLength(u16),
    RawContentLength(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
enum Method<'a> {
    Post,
    Put,
    Patch,
    Get,
    Raw(&'a [u8]),
}

/// Path building blocks, so the fuzzer reaches webhook paths and their odd spellings.
#[derive(Arbitrary, Debug)]
enum Piece<'a> {
    Prefix,
    /// The prefix with some characters upper-cased or percent-encoded (`depth` times).
    PrefixSpelled(Vec<Spelling>),
    FlowId(u8),
    Slash,
    Backslash,
    Dot,
    DotDot,
    Semicolon,
    Question,
    Hash,
    Encoded {
        byte: u8,
        depth: u8,
        upper: bool,
    },
    Literal(&'a [u8]),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Spelling {
    Keep,
    Upper,
    Lower,
    Encoded { depth: u8, upper: bool },
}

#[derive(Arbitrary, Debug)]
enum Auth<'a> {
    /// One of the fixture's tokens, under a scheme spelled as `case` says.
    Token {
        token: u8,
        case: u8,
        spaces: u8,
        suffix: &'a [u8],
    },
    Bearer(&'a [u8]),
    Raw(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
enum ContentType<'a> {
    Json,
    JsonWithCharset,
    VendorJson,
    Form,
    Text,
    Raw(&'a [u8]),
}

fn encode(byte: u8, depth: u8, upper: bool, out: &mut Vec<u8>) {
    let mut text = if upper {
        format!("%{byte:02X}")
    } else {
        format!("%{byte:02x}")
    };
    for _ in 0..depth % 5 {
        text = text.replacen('%', "%25", 1);
    }
    out.extend_from_slice(text.as_bytes());
}

fn build_path(prefix: &str, pieces: &[Piece<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Prefix => out.extend_from_slice(prefix.as_bytes()),
            Piece::PrefixSpelled(spellings) => {
                for (i, &b) in prefix.as_bytes().iter().enumerate() {
                    match spellings.get(i).copied().unwrap_or(Spelling::Keep) {
                        Spelling::Keep => out.push(b),
                        Spelling::Upper => out.push(b.to_ascii_uppercase()),
                        Spelling::Lower => out.push(b.to_ascii_lowercase()),
                        Spelling::Encoded { depth, upper } => encode(b, depth, upper, &mut out),
                    }
                }
            }
            Piece::FlowId(i) => {
                let flow = &FLOWS[usize::from(*i) % FLOWS.len()];
                out.extend_from_slice(flow.id.as_bytes());
            }
            Piece::Slash => out.push(b'/'),
            Piece::Backslash => out.push(b'\\'),
            Piece::Dot => out.push(b'.'),
            Piece::DotDot => out.extend_from_slice(b".."),
            Piece::Semicolon => out.push(b';'),
            Piece::Question => out.push(b'?'),
            Piece::Hash => out.push(b'#'),
            Piece::Encoded { byte, depth, upper } => encode(*byte, *depth, *upper, &mut out),
            Piece::Literal(bytes) => out.extend_from_slice(bytes),
        }
    }
    out
}

fn build_auth(auth: &Auth<'_>) -> Vec<u8> {
    match auth {
        Auth::Token {
            token,
            case,
            spaces,
            suffix,
        } => {
            let tokens: Vec<&str> = FLOWS.iter().flat_map(|f| f.tokens.iter().copied()).collect();
            let token = tokens[usize::from(*token) % tokens.len()];
            let scheme: Vec<u8> = b"bearer"
                .iter()
                .enumerate()
                .map(|(i, b)| if case >> i & 1 == 1 { b.to_ascii_uppercase() } else { *b })
                .collect();
            let mut value = scheme;
            value.extend(std::iter::repeat_n(b' ', usize::from(spaces % 3 + 1)));
            value.extend_from_slice(token.as_bytes());
            value.extend_from_slice(suffix);
            value
        }
        Auth::Bearer(token) => [b"Bearer ".as_slice(), token].concat(),
        Auth::Raw(value) => value.to_vec(),
    }
}

fn build_headers(prefix: &str, headers: &[Header<'_>]) -> Vec<(Vec<u8>, Vec<u8>)> {
    headers
        .iter()
        .map(|header| match header {
            Header::Raw(name, value) => (name.to_vec(), value.to_vec()),
            Header::Method(method) => {
                let value: &[u8] = match method {
                    Method::Post => b"POST",
                    Method::Put => b"PUT",
                    Method::Patch => b"PATCH",
                    Method::Get => b"GET",
                    Method::Raw(raw) => raw,
                };
                (b":method".to_vec(), value.to_vec())
            }
            Header::Path(pieces) => (b":path".to_vec(), build_path(prefix, pieces)),
            Header::RawPath(path) => (b":path".to_vec(), path.to_vec()),
            Header::Authorization(auth) => (b"authorization".to_vec(), build_auth(auth)),
            Header::ContentType(ct) => {
                let value: &[u8] = match ct {
                    ContentType::Json => b"application/json",
                    ContentType::JsonWithCharset => b"Application/JSON ; charset=utf-8",
                    ContentType::VendorJson => b"application/vnd.flow+json",
                    ContentType::Form => b"application/x-www-form-urlencoded",
                    ContentType::Text => b"text/plain",
                    ContentType::Raw(raw) => raw,
                };
                (b"content-type".to_vec(), value.to_vec())
            }
            Header::ContentLength(n) => (b"content-length".to_vec(), n.to_string().into_bytes()),
            Header::RawContentLength(raw) => (b"content-length".to_vec(), raw.to_vec()),
        })
        .collect()
}

thread_local! {
    static CONFIGS: Vec<PluginConfig> = PREFIXES.iter().map(|p| fixture(p)).collect();
}

fn check(request: &Request<'_>, config: &PluginConfig) {
    let prefix = config.webhook_path_prefix.as_str();
    let owned = build_headers(prefix, &request.headers);
    let pairs: Vec<(&[u8], &[u8])> = owned.iter().map(|(n, v)| (n.as_slice(), v.as_slice())).collect();
    let facts = Facts::of(&pairs);
    let head = RequestHead::from_headers(&pairs);
    let flows = (!request.unloaded).then_some(&config.flows);
    let verdict = decide(prefix, flows.map(|f| f as &dyn flowgate::flows::Lookup), &head);

    let reaching = executor_path::reaching_models(facts.path, prefix);
    if !reaching.is_empty() {
        assert!(
            !matches!(verdict, Verdict::Pass),
            "path {:?} passed unchecked, but an executor resolves it into {prefix:?} ({})",
            show(facts.path),
            reaching.join("; "),
        );
    }

    let Verdict::Admit(admission) = verdict else {
        return;
    };
    let flow = &admission.flow;
    let fixture = fixture_flow(&flow.id).unwrap_or_else(|| panic!("admitted unknown flow {:?}", flow.id));
    let canonical = [prefix.as_bytes(), flow.id.as_bytes()].concat();
    let path_ok = facts.path == canonical.as_slice()
        || facts
            .path
            .strip_prefix(canonical.as_slice())
            .is_some_and(|rest| rest.first() == Some(&b'?'));
    assert!(
        path_ok,
        "admitted {:?} as flow {:?}: not its canonical path",
        show(facts.path),
        flow.id
    );
    assert!(
        fixture.methods.iter().any(|m| m.as_bytes() == facts.method),
        "admitted method {:?} for flow {:?}",
        show(facts.method),
        flow.id
    );
    let [authorization] = facts.authorization.as_slice() else {
        panic!("admitted with {} authorization headers", facts.authorization.len());
    };
    let token =
        bearer_token(authorization).unwrap_or_else(|| panic!("admitted with authorization {:?}", show(authorization)));
    assert!(
        fixture.tokens.iter().any(|t| t.as_bytes() == token),
        "admitted flow {:?} with token {:?}",
        flow.id,
        show(token)
    );
    assert_ne!(flow.status, FlowStatus::Paused, "admitted a paused flow");
    assert_eq!(flow.status, fixture.status);
    assert_eq!(flow.max_body_bytes, fixture.max_body_bytes);
    if let Some(length) = head.content_length {
        assert!(length <= flow.max_body_bytes, "admitted content-length {length}");
    }

    let body = request.body;
    let within = body.len() as u64 <= flow.max_body_bytes;
    assert_eq!(admission.check_size(body.len() as u64).is_ok(), within);
    match admission.check_body(head.content_type, body) {
        Ok(bound) => {
            assert!(within, "body of {} bytes accepted", body.len());
            if admission.body.is_json() {
                assert!(
                    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok(),
                    "invalid JSON body accepted: {:?}",
                    show(body)
                );
            }
            if !admission.body.is_kept() {
                assert!(bound.is_undefined(), "a body the flow does not keep was bound");
            }
        }
        Err(reply) => assert!(matches!(reply.status(), 400 | 413), "{reply:?}"),
    }
    let _ = flowgate::body::bind(head.content_type, body);
    let _ = admission.forward_headers();
}

fuzz_target!(|request: Request<'_>| {
    CONFIGS.with(|configs| {
        let config = &configs[usize::from(request.prefix) % configs.len()];
        check(&request, config);
    });
});
