//! Route matching: is this request path a webhook, and for which flow?
//!
//! An executor behind Envoy may normalise paths (percent-decoding, `%2F` and `%5C`
//! as separators, merged slashes, `.`/`..` resolved, case folding, `;params`
//! stripped from segments as servlet containers do). Any spelling
//! that normalises into the webhook prefix is gated: the canonical spelling
//! `<prefix><flow_id>` is checked as that flow, every other spelling is refused.

/// Where a request path leads.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'p> {
    /// Not under the webhook prefix, however it is spelled: not flowgate's business.
    Outside,
    /// The canonical webhook path; `flow_id` is everything after the prefix (may be
    /// empty or hold further segments, which no flow id matches).
    Webhook { flow_id: &'p str },
    /// Normalises into the prefix but is not spelled canonically: refused.
    NonCanonical,
}

/// Times a path is percent-decoded round by round, so double-encoded separators
/// (`%252F`) are seen too; deeper encodings are judged by their full decoding.
const DECODE_ROUNDS: usize = 3;

/// Matches a raw `:path` (query allowed) against a canonical prefix ending in `/`.
pub fn route<'p>(prefix: &str, raw_path: &'p str) -> Route<'p> {
    // Only the query is cut off: a fragment has no place in a request target, and an
    // executor may read `#` as part of the path, so it makes a spelling suspicious.
    let path = raw_path.split('?').next().unwrap_or_default();
    if let Some(rest) = path.strip_prefix(prefix) {
        if is_plain(path) {
            return Route::Webhook { flow_id: rest };
        }
    } else if is_plain(path) && !starts_with_ignore_case(path, prefix) {
        return Route::Outside;
    }
    // A suspicious spelling: normalise it the ways a lenient executor might, with
    // `;params` cut from the raw segments first (as servlet containers do) or not.
    let raw = path.as_bytes();
    if reaches(prefix, raw) || (raw.contains(&b';') && reaches(prefix, &without_params(raw))) {
        return Route::NonCanonical;
    }
    Route::Outside
}

/// The ways of reading a path that `normalise` can take: whether `\` separates
/// segments, whether `;params` are cut from them, whether dot segments are resolved.
/// Executors differ in all three, and any reading can be the one that keeps a path
/// under the prefix, so every combination is tried.
///
/// Only readings that can differ for `path` are given: without a `\` in it, both
/// ways of reading `\` are the same, and so are both ways of reading `;` without one.
fn readings(path: &[u8]) -> impl Iterator<Item = Reading> {
    let backslash = path.contains(&b'\\');
    let params = path.contains(&b';');
    (0..8u8)
        .map(|bits| Reading {
            backslash: bits & 1 != 0,
            cut_params: bits & 2 != 0,
            resolve_dots: bits & 4 != 0,
        })
        .filter(move |reading| (backslash || reading.backslash) && (params || !reading.cut_params))
}

#[derive(Clone, Copy)]
struct Reading {
    backslash: bool,
    cut_params: bool,
    /// Whether `.` and `..` segments are resolved; an executor that routes on the path
    /// as it is keeps them, so `<prefix>f-1/../../x` is under the prefix to it.
    resolve_dots: bool,
}

/// Whether `path`, decoded round by round and then fully (at each stage as it is,
/// and with its encoded separators decoded), normalises into `prefix` in any reading.
fn reaches(prefix: &str, path: &[u8]) -> bool {
    let reaches_prefix = |bytes: &[u8]| {
        let separators_decoded = replace_encoded_separators(bytes);
        // Only when there was an encoded separator is it a different spelling.
        let decoded_differs = separators_decoded.len() != bytes.len();
        let mut spellings = std::iter::once(bytes).chain(decoded_differs.then_some(separators_decoded.as_slice()));
        spellings.any(|spelling| {
            readings(spelling)
                .any(|reading| starts_with_ignore_case_bytes(&normalise(spelling, reading), prefix.as_bytes()))
        })
    };
    let mut bytes = path.to_vec();
    for _ in 0..DECODE_ROUNDS {
        if reaches_prefix(&bytes) {
            return true;
        }
        let decoded = percent_decode(&bytes);
        if decoded == bytes {
            return false;
        }
        bytes = decoded;
    }
    // Still encoded after every round: a decoder that loops until nothing is left
    // sees the full decoding (`%2525252F` is `/` to it).
    reaches_prefix(&bytes) || reaches_prefix(&percent_decode_fully(&bytes))
}

/// `path` with `;params` cut from each raw `/`-separated segment, before anything is
/// decoded: `/;%2Fx/a` is `/a` to Tomcat, while `normalise` alone reads `/x/a`.
fn without_params(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for (i, segment) in path.split(|&b| b == b'/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(segment.split(|&b| b == b';').next().unwrap_or_default());
    }
    out
}

/// True when nothing in `s` could be rewritten by path normalisation.
/// An absolute path with nothing to normalise: no `%`, `\\`, `;`, `#`, `//`, `.` or `..` segment.
pub fn is_plain(s: &str) -> bool {
    s.starts_with('/')
        && !s.contains(['%', '\\', ';', '#'])
        && !s.contains("//")
        && !s.split('/').any(|segment| segment == "." || segment == "..")
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    starts_with_ignore_case_bytes(s.as_bytes(), prefix.as_bytes())
}

fn starts_with_ignore_case_bytes(s: &[u8], prefix: &[u8]) -> bool {
    s.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// Resolves empty and dot segments between `/` (and `\` in a `backslash` reading),
/// and with `cut_params` `;params` (servlet containers cut them; most servers keep
/// them, so `..;` is no dot segment to them). The result starts with `/` and ends with
/// `/` when the last segment was empty or a dot segment (RFC 3986 section 5.2.4).
fn normalise(path: &[u8], reading: Reading) -> Vec<u8> {
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    for raw in path.split(|&b| b == b'/' || (reading.backslash && b == b'\\')) {
        let segment = match reading.cut_params {
            true => raw.split(|&b| b == b';').next().unwrap_or_default(),
            false => raw,
        };
        let dot = reading.resolve_dots && matches!(segment, b"." | b"..");
        trailing = segment.is_empty() || dot;
        match segment {
            b"" => {}
            b"." if dot => {}
            b".." if dot => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = Vec::with_capacity(path.len() + 1);
    for segment in &segments {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if segments.is_empty() || trailing {
        out.push(b'/');
    }
    out
}

fn replace_encoded_separators(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        match (b, path.get(i + 1..i + 3)) {
            (b'%', Some(hex)) if hex.eq_ignore_ascii_case(b"2f") || hex.eq_ignore_ascii_case(b"5c") => {
                out.push(b'/');
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Decodes every valid `%XX`; invalid escapes stay as they are.
pub fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        let escaped = match (b, input.get(i + 1), input.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) => hex_value(hi).zip(hex_value(lo)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Decodes `%XX` until none is left, in one pass: what decoding round after round
/// reaches, without a round per level of nesting. A decoded byte can only complete an
/// escape that ends at it, so each is decoded as soon as it is written.
fn percent_decode_fully(input: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(input.len());
    for &b in input {
        out.push(b);
        while let [.., b'%', hi, lo] = *out.as_slice() {
            let Some(byte) = hex_value(hi).zip(hex_value(lo)).map(|(h, l)| h << 4 | l) else {
                break;
            };
            out.truncate(out.len() - 3);
            out.push(byte);
        }
    }
    out
}

/// The value of one hex digit, either case.
pub fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
