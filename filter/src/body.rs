//! Request bodies: JSON checks and how a body binds into a template context.

use minijinja::Value;

use crate::route::percent_decode;

/// `application/json` or any `+json` media type, parameters ignored.
pub fn is_json(content_type: &[u8]) -> bool {
    let essence = media_type(content_type);
    essence.eq_ignore_ascii_case(b"application/json")
        || essence.len() > 5
            && essence
                .get(essence.len() - 5..)
                .is_some_and(|tail| tail.eq_ignore_ascii_case(b"+json"))
}

fn is_form(content_type: &[u8]) -> bool {
    media_type(content_type).eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
}

fn media_type(content_type: &[u8]) -> &[u8] {
    let end = content_type
        .iter()
        .position(|&b| b == b';')
        .unwrap_or(content_type.len());
    content_type.get(..end).unwrap_or_default().trim_ascii()
}

/// Checks that a body is one JSON value without building it; the error says where
/// parsing failed.
pub fn check_json(body: &[u8]) -> Result<(), String> {
    // JSON text is UTF-8 (RFC 8259 section 8.1); skipping over a string does not check it.
    let text = std::str::from_utf8(body).map_err(|e| {
        let valid = body.get(..e.valid_up_to()).unwrap_or_default();
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = valid.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        format!("invalid UTF-8 at line {line} column {column}")
    })?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Parses a JSON body straight into a template value (one pass, depth-limited).
pub fn parse_json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e: serde_json::Error| e.to_string())
}

/// The body as a template sees it: parsed JSON (none if it does not parse), an object
/// of form fields, or a string.
pub fn bind(content_type: Option<&[u8]>, body: &[u8]) -> Value {
    match content_type {
        Some(ct) if is_json(ct) => parse_json(body).unwrap_or_default(),
        Some(ct) if is_form(ct) => form_fields(body),
        _ => Value::from(String::from_utf8_lossy(body).into_owned()),
    }
}

/// `a=1&b=x+y` -> `{"a": "1", "b": "x y"}`; a repeated field keeps its last value.
fn form_fields(body: &[u8]) -> Value {
    let fields: std::collections::BTreeMap<String, String> = form_pairs(body).collect();
    Value::from_serialize(fields)
}

/// `a=1&b=x+y` -> `("a", "1")`, `("b", "x y")`: decoded form fields in order.
pub fn form_pairs(body: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    body.split(|&b| b == b'&').filter(|pair| !pair.is_empty()).map(|pair| {
        let mut parts = pair.splitn(2, |&b| b == b'=');
        let name = form_decode(parts.next().unwrap_or_default());
        let value = form_decode(parts.next().unwrap_or_default());
        (name, value)
    })
}

fn form_decode(raw: &[u8]) -> String {
    let spaced: Vec<u8> = raw.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
    String::from_utf8_lossy(&percent_decode(&spaced)).into_owned()
}

/// What an admitted body goes through: a JSON body (by its content type) must parse;
/// a body the response template reads (as `<ref_id>`) is kept; a JSON one is parsed once, for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyUse {
    /// Nothing: the body streams to the executor.
    Stream,
    CheckJson,
    /// Kept as the template sees a non-JSON body (form fields or text).
    Bind,
    ParseJson,
}

impl BodyUse {
    pub fn of(json: bool, kept: bool) -> BodyUse {
        match (json, kept) {
            (false, false) => BodyUse::Stream,
            (true, false) => BodyUse::CheckJson,
            (false, true) => BodyUse::Bind,
            (true, true) => BodyUse::ParseJson,
        }
    }

    pub fn is_json(self) -> bool {
        matches!(self, BodyUse::CheckJson | BodyUse::ParseJson)
    }

    pub fn is_kept(self) -> bool {
        matches!(self, BodyUse::Bind | BodyUse::ParseJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(value: Value) -> serde_json::Value {
        serde_json::to_value(value).unwrap()
    }

    #[test]
    fn json_media_types() {
        assert!(is_json(b"application/json"));
        assert!(is_json(b"Application/JSON; charset=utf-8"));
        assert!(is_json(b"application/vnd.api+json"));
        assert!(!is_json(b"text/plain"));
        assert!(!is_json(b"+json"));
    }

    #[test]
    fn json_errors_say_where() {
        assert!(check_json(b"{\"a\": 1,}").unwrap_err().ends_with("at line 1 column 9"));
        assert!(parse_json(b"{\"a\": 1,}").unwrap_err().ends_with("at line 1 column 9"));
        assert!(check_json(b"").unwrap_err().contains("line 1 column 0"));
        assert!(check_json(b" {\"company_id\": 123456} ").is_ok());
        assert_eq!(
            check_json(b"{\n\"a\": \"\xff\"}").unwrap_err(),
            "invalid UTF-8 at line 2 column 7"
        );
    }

    #[test]
    fn deep_json_is_checked_without_recursion_and_not_bound() {
        let deep = [vec![b'['; 10_000], vec![b']'; 10_000]].concat();
        assert!(check_json(&deep).is_ok());
        assert!(parse_json(&deep).unwrap_err().contains("recursion limit"));
        assert!(bind(Some(b"application/json"), &deep).is_undefined());
    }

    #[test]
    fn bodies_bind_by_content_type() {
        let company = bind(Some(b"application/json"), b"{\"company_id\":123456}");
        assert_eq!(json(company), serde_json::json!({"company_id": 123456}));
        let form = bind(
            Some(b"application/x-www-form-urlencoded"),
            b"company_id=123456&name=first&name=A+B%26C&flag&bad=%zz%4",
        );
        assert_eq!(
            json(form),
            serde_json::json!({"company_id": "123456", "name": "A B&C", "flag": "", "bad": "%zz%4"})
        );
        assert_eq!(json(bind(Some(b"application/json"), b"{oops")), serde_json::Value::Null);
        assert_eq!(json(bind(Some(b"text/plain"), b"hello")), serde_json::json!("hello"));
        assert_eq!(json(bind(None, &[0xff, b'a'])), serde_json::json!("\u{fffd}a"));
    }
}
