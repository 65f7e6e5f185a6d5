//! What the fuzz targets share: a fixed flow set with known tokens, arbitrary JSON
//! values, Jinja template pieces, and an independent model of how a lenient executor
//! reads a request path.
//!
//! The path model here is deliberately not `flowgate::route`: the `decide` target checks
//! the filter's routing against it, so it must be written from the contract, not copied.

use arbitrary::Arbitrary;
use flowgate::config::PluginConfig;
use flowgate::schema::FlowStatus;
use serde_json::{json, Value};

/// Prefixes the `decide` target routes under: the default and two other canonical ones.
pub const PREFIXES: [&str; 3] = ["/v1/flow-webhook/", "/a/", "/Hooks/v2/"];

/// One flow of the fixture and the plain tokens its digests were made from.
pub struct FixtureFlow {
    pub id: &'static str,
    pub status: FlowStatus,
    pub methods: &'static [&'static str],
    pub tokens: &'static [&'static str],
    pub max_body_bytes: u64,
}

pub const TOKEN_A: &str = "demo-token-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGH";
pub const TOKEN_B: &str = "rotated.token_~+/0123456789==";
pub const TOKEN_C: &str = "c";

/// Sync with a template, paused, async with a template, async without, draft without.
pub const FLOWS: [FixtureFlow; 5] = [
    FixtureFlow {
        id: "f-1",
        status: FlowStatus::Live,
        methods: &["POST"],
        tokens: &[TOKEN_A, TOKEN_B],
        max_body_bytes: 64,
    },
    FixtureFlow {
        id: "f-2",
        status: FlowStatus::Paused,
        methods: &["POST", "PUT"],
        tokens: &[TOKEN_A],
        max_body_bytes: 1024,
    },
    FixtureFlow {
        id: "q.1",
        status: FlowStatus::Live,
        methods: &["POST"],
        tokens: &[TOKEN_C],
        max_body_bytes: 1024,
    },
    FixtureFlow {
        id: "q_2",
        status: FlowStatus::Live,
        methods: &["PUT", "PATCH"],
        tokens: &[TOKEN_B],
        max_body_bytes: 1,
    },
    FixtureFlow {
        id: "D~3",
        status: FlowStatus::Draft,
        methods: &["GET"],
        tokens: &[TOKEN_C, TOKEN_A],
        max_body_bytes: 1024,
    },
];

/// The seed template of the platform's example flow.
pub const SEED_TEMPLATE: &str =
    "{\"valid\": {% if res1.value == \"myResult\" %}\"{{ res1.value }}\"{% else %}false{% endif %}}";

/// Templates that walk whatever the executor returned, in several ways.
pub const TEMPLATES: [&str; 6] = [
    SEED_TEMPLATE,
    "{{ web1.company_id }}/{{ res1.value }}",
    "{\"out\": {{ res1 | tojson }}, \"in\": {{ web1 | tojson }}}",
    "{% for key, value in res1 | items %}{{ key }}={{ value }};{% endfor %}{{ res1 | length }}",
    "{{ res1.value.x.y }}",
    "{% if res1 is mapping %}{{ res1.a ~ res1.b }}{% elif res1 is sequence %}{{ res1 | join(',') }}{% else %}{{ res1 | string | upper }}{% endif %}",
];

pub fn hex_digest(token: &str) -> String {
    flowgate::auth::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fixture configuration as JSON: [`FLOWS`] under `prefix`, `f-1` and `q.1` templated.
pub fn fixture_json(prefix: &str) -> Value {
    let flows: Vec<Value> = FLOWS
        .iter()
        .map(|flow| {
            let mut entry = json!({
                "id": flow.id,
                "ref_id": "web1",
                "status": match flow.status {
                    FlowStatus::Draft => "draft",
                    FlowStatus::Live => "live",
                    FlowStatus::Paused => "paused",
                },
                "token_sha256": flow.tokens.iter().map(|t| hex_digest(t)).collect::<Vec<_>>(),
                "methods": flow.methods,
                "max_body_bytes": flow.max_body_bytes,
                "async": flow.id.starts_with('q'),
            });
            match flow.id {
                "f-1" => entry["response"] = json!({"status": 201, "body": SEED_TEMPLATE}),
                "q.1" => {
                    entry["response"] = json!({"status": 202, "content_type": "text/plain", "body": "{{ run.run_id }}"})
                }
                _ => {}
            }
            entry
        })
        .collect();
    json!({"webhook_path_prefix": prefix, "max_body_bytes": 4096, "flows": flows})
}

/// Parses [`fixture_json`]; the fixture is valid, so failing here is a harness bug.
pub fn fixture(prefix: &str) -> PluginConfig {
    match PluginConfig::parse(fixture_json(prefix).to_string().as_bytes()) {
        Ok(config) => config,
        Err(e) => panic!("fixture configuration is invalid: {e}"),
    }
}

/// An arbitrary JSON value, nested as deep as the input allows (capped on conversion).
#[derive(Arbitrary, Debug, Clone)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
    /// Keys a template is likely to ask for, so lookups hit as well as miss.
    Known(KnownKey),
    Array(Vec<Json>),
    Object(Vec<(Key, Json)>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum KnownKey {
    Value,
    Res1,
    Web1,
    Run,
    RunId,
    CompanyId,
    MyResult,
    A,
    B,
    X,
    Y,
}

impl KnownKey {
    pub fn as_str(self) -> &'static str {
        match self {
            KnownKey::Value => "value",
            KnownKey::Res1 => "res1",
            KnownKey::Web1 => "web1",
            KnownKey::Run => "run",
            KnownKey::RunId => "run_id",
            KnownKey::CompanyId => "company_id",
            KnownKey::MyResult => "myResult",
            KnownKey::A => "a",
            KnownKey::B => "b",
            KnownKey::X => "x",
            KnownKey::Y => "y",
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Key {
    Known(KnownKey),
    Other(String),
}

/// Deeper than serde_json's own parser goes (128), so values past its limit are covered too.
const MAX_DEPTH: usize = 160;

impl Json {
    pub fn to_value(&self) -> Value {
        self.to_value_at(0)
    }

    fn to_value_at(&self, depth: usize) -> Value {
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(i) => json!(i),
            Json::Uint(u) => json!(u),
            Json::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::Str(s) => Value::String(s.clone()),
            Json::Known(k) => Value::String(k.as_str().to_string()),
            Json::Array(items) => Value::Array(items.iter().map(|v| v.to_value_at(depth + 1)).collect()),
            Json::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(key, v)| {
                        let key = match key {
                            Key::Known(k) => k.as_str().to_string(),
                            Key::Other(s) => s.clone(),
                        };
                        (key, v.to_value_at(depth + 1))
                    })
                    .collect(),
            ),
        }
    }
}

/// Serialises without serde_json's recursion into a JSON document (values deeper than
/// 128 are fine to write, only reading them back is limited).
pub fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Jinja template sources built from pieces, so that they compile often enough to be
/// rendered, with `Raw` pieces for anything at all. Numbers and sizes are unbounded: the
/// `template` target asks whether rendering stays bounded whatever the template.
pub mod jinja {
    use arbitrary::Arbitrary;

    use super::KnownKey;

    #[derive(Arbitrary, Debug)]
    pub enum Piece<'a> {
        Expression(Vec<Expr<'a>>),
        If(Vec<Expr<'a>>),
        Else,
        EndIf,
        For(Vec<Expr<'a>>),
        EndFor,
        Set(Vec<Expr<'a>>),
        Macro,
        EndMacro,
        /// `{% set ns = namespace(a='x', l=[1]) %}`
        Namespace,
        /// `{% set ns.a = ... %}` or `ns.l`: a value kept across loop iterations.
        SetNs(bool, Vec<Expr<'a>>),
        Raw(&'a str),
    }

    #[derive(Arbitrary, Debug)]
    pub enum Expr<'a> {
        Name(KnownKey),
        Attribute(KnownKey),
        Index(i8),
        Filter(Filter),
        Operator(Operator),
        Int(i32),
        Str(&'a str),
        List(Vec<i8>),
        Range(u32),
        /// `ns.a` or `ns.l`
        Kept(bool),
        Open,
        Close,
        Raw(&'a str),
    }

    #[derive(Arbitrary, Debug, Clone, Copy)]
    pub enum Filter {
        Tojson,
        Length,
        Items,
        Join,
        List,
        Upper,
        Default,
        Replace,
        Int,
        Round,
        Sort,
        Unique,
        Dictsort,
        Batch(u16),
        Indent(u32),
        First,
        Last,
        Reverse,
        Sum,
        Max,
        String,
        Safe,
        Escape,
        Format(u32),
        TojsonIndent(u8),
        Slice(u16),
        Map,
        Pprint,
        ReplaceEmpty,
        Lines,
        Split,
    }

    #[derive(Arbitrary, Debug, Clone, Copy)]
    pub enum Operator {
        Plus,
        Minus,
        Times,
        Power,
        Divide,
        FloorDivide,
        Modulo,
        Concat,
        Equals,
        In,
        Is,
        Not,
        And,
        Comma,
        Colon,
    }

    fn expression(pieces: &[Expr<'_>]) -> String {
        let mut out = String::new();
        for piece in pieces {
            match piece {
                Expr::Name(key) => out.push_str(match key {
                    KnownKey::Value | KnownKey::Res1 => "res1",
                    KnownKey::Web1 | KnownKey::CompanyId => "web1",
                    KnownKey::Run | KnownKey::RunId => "run",
                    KnownKey::MyResult => "loop",
                    KnownKey::A => "a",
                    KnownKey::B => "m()",
                    KnownKey::X => "x",
                    KnownKey::Y => "range(3)",
                }),
                Expr::Attribute(key) => {
                    out.push('.');
                    out.push_str(key.as_str());
                }
                Expr::Index(i) => out.push_str(&format!("[{i}]")),
                Expr::Filter(filter) => out.push_str(&match filter {
                    Filter::Tojson => "|tojson".to_string(),
                    Filter::Length => "|length".to_string(),
                    Filter::Items => "|items".to_string(),
                    Filter::Join => "|join(',')".to_string(),
                    Filter::List => "|list".to_string(),
                    Filter::Upper => "|upper".to_string(),
                    Filter::Default => "|default('d')".to_string(),
                    Filter::Replace => "|replace('a', 'bb')".to_string(),
                    Filter::Int => "|int".to_string(),
                    Filter::Round => "|round(2)".to_string(),
                    Filter::Sort => "|sort".to_string(),
                    Filter::Unique => "|unique".to_string(),
                    Filter::Dictsort => "|dictsort".to_string(),
                    Filter::Batch(n) => format!("|batch({n})"),
                    Filter::Indent(n) => format!("|indent({n})"),
                    Filter::First => "|first".to_string(),
                    Filter::Last => "|last".to_string(),
                    Filter::Reverse => "|reverse".to_string(),
                    Filter::Sum => "|sum".to_string(),
                    Filter::Max => "|max".to_string(),
                    Filter::String => "|string".to_string(),
                    Filter::Safe => "|safe".to_string(),
                    Filter::Escape => "|escape".to_string(),
                    Filter::Format(n) => format!("|format('%{n}s', 1)"),
                    Filter::TojsonIndent(n) => format!("|tojson(indent={n})"),
                    Filter::Slice(n) => format!("|slice({n}, 0)"),
                    Filter::Map => "|map('tojson')".to_string(),
                    Filter::Pprint => "|pprint".to_string(),
                    Filter::ReplaceEmpty => "|replace('', 'xy')".to_string(),
                    Filter::Lines => "|lines".to_string(),
                    Filter::Split => "|split".to_string(),
                }),
                Expr::Operator(op) => out.push_str(match op {
                    Operator::Plus => " + ",
                    Operator::Minus => " - ",
                    Operator::Times => " * ",
                    Operator::Power => " ** ",
                    Operator::Divide => " / ",
                    Operator::FloorDivide => " // ",
                    Operator::Modulo => " % ",
                    Operator::Concat => " ~ ",
                    Operator::Equals => " == ",
                    Operator::In => " in ",
                    Operator::Is => " is ",
                    Operator::Not => " not ",
                    Operator::And => " and ",
                    Operator::Comma => ", ",
                    Operator::Colon => ": ",
                }),
                Expr::Int(i) => out.push_str(&i.to_string()),
                Expr::Str(s) => out.push_str(&format!("{s:?}")),
                Expr::List(items) => {
                    let items: Vec<String> = items.iter().map(i8::to_string).collect();
                    out.push_str(&format!("[{}]", items.join(", ")));
                }
                Expr::Range(n) => out.push_str(&format!("range({n})")),
                Expr::Kept(list) => out.push_str(if *list { "ns.l" } else { "ns.a" }),
                Expr::Open => out.push('('),
                Expr::Close => out.push(')'),
                Expr::Raw(s) => out.push_str(s),
            }
        }
        out
    }

    /// The template source the pieces spell.
    pub fn source(pieces: &[Piece<'_>]) -> String {
        let mut out = String::new();
        for piece in pieces {
            match piece {
                Piece::Raw(s) => out.push_str(s),
                Piece::Expression(e) => out.push_str(&format!("{{{{ {} }}}}", expression(e))),
                Piece::If(e) => out.push_str(&format!("{{% if {} %}}", expression(e))),
                Piece::Else => out.push_str("{% else %}"),
                Piece::EndIf => out.push_str("{% endif %}"),
                Piece::For(e) => out.push_str(&format!("{{% for x in {} %}}", expression(e))),
                Piece::EndFor => out.push_str("{% endfor %}"),
                Piece::Set(e) => out.push_str(&format!("{{% set a = {} %}}", expression(e))),
                Piece::Macro => out.push_str("{% macro m() %}"),
                Piece::EndMacro => out.push_str("{% endmacro %}"),
                Piece::Namespace => out.push_str("{% set ns = namespace(a='x', l=[1]) %}"),
                Piece::SetNs(list, e) => {
                    let name = if *list { "l" } else { "a" };
                    out.push_str(&format!("{{% set ns.{name} = {} %}}", expression(e)));
                }
            }
        }
        out
    }
}

/// How lenient executors read a path, each a separate model: optionally cut `;params`
/// from the raw segments (Tomcat), decode 0 to [`ROUNDS`] times or to the fixpoint, then
/// merge empty segments and resolve dot segments (or not) between `/` (and `\`, or
/// not), cutting `;params` there too or not. Each normalisation step an executor may or
/// may not take is a choice here, because leaving one out can keep a path under the prefix.
///
/// [`ROUNDS`]: executor_path::ROUNDS
pub mod executor_path {
    /// `%XX` decoded once, left to right; invalid escapes kept.
    pub fn decode_once(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        let mut rest = input;
        while let Some((&b, tail)) = rest.split_first() {
            if b == b'%' {
                if let [hi, lo, after @ ..] = tail {
                    if let (Some(h), Some(l)) = (hex(*hi), hex(*lo)) {
                        out.push(h * 16 + l);
                        rest = after;
                        continue;
                    }
                }
            }
            out.push(b);
            rest = tail;
        }
        out
    }

    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }

    /// Rounds of decoding modelled one by one. Servers decode once, a few twice; past
    /// that only a decoder looping to the fixpoint is plausible, and that one is modelled.
    pub const ROUNDS: usize = 3;

    /// Every decoding a lenient executor might apply: the raw path, each of the first
    /// [`ROUNDS`] rounds of decoding, and the fixpoint (no `%XX` left to decode).
    pub fn decodings(raw: &[u8]) -> Vec<Vec<u8>> {
        let mut all = vec![raw.to_vec()];
        let mut current = raw.to_vec();
        for round in 1.. {
            let next = decode_once(&current);
            if next == current {
                break;
            }
            if round <= ROUNDS {
                all.push(next.clone());
            }
            current = next;
        }
        all.push(current);
        all
    }

    /// Empty segments merged and, with `dots`, RFC 3986 dot segments removed, over `/`
    /// (and with `backslash`, `\`) separators; with `strip_params`, each segment loses
    /// everything from its first `;` (servlet containers do this).
    pub fn resolve(path: &[u8], backslash: bool, strip_params: bool, dots: bool) -> Vec<u8> {
        let mut segments: Vec<&[u8]> = Vec::new();
        let mut ends_in_slash = false;
        for raw in path.split(|&b| b == b'/' || (backslash && b == b'\\')) {
            let segment = if strip_params {
                raw.split(|&b| b == b';').next().unwrap_or_default()
            } else {
                raw
            };
            let dot = dots && matches!(segment, b"." | b"..");
            ends_in_slash = segment.is_empty() || dot;
            match segment {
                b"" => {}
                b"." if dot => {}
                b".." if dot => {
                    segments.pop();
                }
                other => segments.push(other),
            }
        }
        let mut out = Vec::new();
        for segment in &segments {
            out.push(b'/');
            out.extend_from_slice(segment);
        }
        if segments.is_empty() || ends_in_slash {
            out.push(b'/');
        }
        out
    }

    /// Tomcat's first step: `;params` cut from each raw `/`-separated segment, before
    /// anything is decoded (so a parameter may hide `%2F` or `\\`).
    pub fn cut_raw_params(path: &[u8]) -> Vec<u8> {
        let segments: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .map(|segment| segment.split(|&b| b == b';').next().unwrap_or_default())
            .collect();
        segments.join(&b'/')
    }

    fn starts_with_ignore_case(path: &[u8], prefix: &[u8]) -> bool {
        path.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    }

    /// The executor models under which `raw_path` (query included) reaches `prefix`;
    /// empty when none does. Each entry names its model, for the assertion message.
    pub fn reaching_models(raw_path: &[u8], prefix: &str) -> Vec<String> {
        let path = raw_path.split(|&b| b == b'?').next().unwrap_or_default();
        let prefix = prefix.as_bytes();
        let mut models = Vec::new();
        for (spelling, cut_first) in [(path.to_vec(), false), (cut_raw_params(path), true)] {
            let all = decodings(&spelling);
            for (rounds, decoded) in all.iter().enumerate() {
                let rounds = if rounds + 1 == all.len() {
                    "fully".to_string()
                } else {
                    format!("{rounds}x")
                };
                for backslash in [false, true] {
                    for strip_params in [false, true] {
                        for dots in [false, true] {
                            if starts_with_ignore_case(&resolve(decoded, backslash, strip_params, dots), prefix) {
                                models.push(format!(
                                    "raw ;params cut: {cut_first}, decoded {rounds}, \\ separates: {backslash}, \
                                     ;params cut after: {strip_params}, dot segments resolved: {dots}"
                                ));
                            }
                        }
                    }
                }
            }
        }
        models
    }
}

/// Headers of one request, as `RequestHead::from_headers` reads them: the last `:path` and
/// `:method`, every `authorization`, the last `content-length`.
pub struct Facts<'a> {
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub authorization: Vec<&'a [u8]>,
    pub content_length: Option<&'a [u8]>,
}

impl<'a> Facts<'a> {
    pub fn of(headers: &[(&'a [u8], &'a [u8])]) -> Self {
        let mut facts = Facts {
            method: b"",
            path: b"",
            authorization: Vec::new(),
            content_length: None,
        };
        for &(name, value) in headers {
            match name {
                b":method" => facts.method = value,
                b":path" => facts.path = value,
                b"authorization" => facts.authorization.push(value),
                b"content-length" => facts.content_length = Some(value),
                _ => {}
            }
        }
        facts
    }
}

/// The flow of the fixture by id.
pub fn fixture_flow(id: &str) -> Option<&'static FixtureFlow> {
    FLOWS.iter().find(|flow| flow.id == id)
}

/// `Bearer <token>` with the scheme in any case and exactly one space.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ")).then(|| value.get(7..).unwrap_or_default())
}

/// For assertion messages: bytes as text where they are text.
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::executor_path::*;
    use super::*;

    #[test]
    fn the_fixture_parses() {
        for prefix in PREFIXES {
            assert_eq!(fixture(prefix).flows.len(), FLOWS.len());
        }
    }

    #[test]
    fn executor_models_reach_the_prefix_like_the_executor() {
        let prefix = "/v1/flow-webhook/";
        for path in [
            "/v1/flow-webhook/f-1",
            "//v1///flow-webhook/f-1?x",
            "/V1/flow-webhook/f-1",
            "/v1/flow-webhoo%25256b/f-1",
            "/v1/flow-webhoo%252525256b/f-1",
            "/v1/flow-webhook;x/f-1",
            "/v1/flow-webhook;%2F../f-1",
            "/;%2Fx/v1/flow-webhook/f-1",
            "/v1/flow-webhook/x\\..\\..",
            "//v1/flow-webhook/..%2Fx",
            "/v1/flow-webhook/f-1/../../x",
            "/v1/flow-webhook/../x",
        ] {
            assert!(!reaching_models(path.as_bytes(), prefix).is_empty(), "{path}");
        }
        for path in ["/", "/v1/flow-webhook", "/v1/x/../flow-webhook", "/x?/v1/flow-webhook/"] {
            assert!(reaching_models(path.as_bytes(), prefix).is_empty(), "{path}");
        }
    }
}
