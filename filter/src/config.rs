//! Plugin configuration: JSON -> validated flows with checked response templates.
//!
//! Every error names where it is (`flows[2] (id "f-1003").token_sha256[0]`) and what
//! is wrong, so an operator can fix the configuration from one log line.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::rc::Rc;

use serde::de::DeserializeOwned;
use serde_json::error::Category;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::auth::{self, TokenDigest};
use crate::directory::ENTRIES_PER_STEP;
use crate::render::{self, ResponseTemplate};

pub const DEFAULT_PREFIX: &str = "/v1/flow-webhook/";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Bodies are buffered in Envoy; beyond this a limit is surely a mistake.
pub const MAX_BODY_BYTES_CEILING: u64 = 64 * 1024 * 1024;
const MAX_FLOW_ID_LEN: usize = 128;

/// Every field a flow may have (CONTRACT section 2); any other is refused.
pub const FLOW_FIELDS: [&str; 8] = [
    "id",
    "ref_id",
    "status",
    "token_sha256",
    "async",
    "methods",
    "max_body_bytes",
    "response",
];

/// A configuration problem: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub at: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.problem)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowStatus {
    Draft,
    Live,
    Paused,
}

impl FlowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowStatus::Draft => "draft",
            FlowStatus::Live => "live",
            FlowStatus::Paused => "paused",
        }
    }
}

/// Sync flows answer with the flow output; async flows answer once the run is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Sync,
    Async,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
        }
    }
}

/// One flow's webhook: who may call it, how, and how it answers.
#[derive(Debug)]
pub struct Flow {
    pub id: String,
    pub ref_id: String,
    pub status: FlowStatus,
    pub tokens: Vec<TokenDigest>,
    pub mode: Mode,
    pub methods: Vec<String>,
    /// `methods` joined for the `Allow` header.
    pub allow: String,
    pub max_body_bytes: u64,
    pub response: Option<ResponseTemplate>,
}

/// The set of flows in force, by id.
#[derive(Debug, Default)]
pub struct Flows {
    by_id: HashMap<String, Rc<Flow>>,
}

impl Flows {
    pub fn get(&self, id: &str) -> Option<&Rc<Flow>> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// A flow set under construction, filled a chunk of entries at a time.
#[derive(Debug, Default)]
pub struct PartialFlows {
    by_id: HashMap<String, Rc<Flow>>,
    problems: Vec<ConfigError>,
    /// Position of the next entry in the whole list (for error locations).
    next_index: usize,
}

impl PartialFlows {
    pub fn entries_added(&self) -> usize {
        self.next_index
    }

    pub fn finish(self) -> (Flows, Vec<ConfigError>) {
        (Flows { by_id: self.by_id }, self.problems)
    }
}

/// Where a live flow directory is fetched from (CONTRACT section 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub refresh_ms: u64,
}

/// The whole plugin configuration.
#[derive(Debug)]
pub struct PluginConfig {
    pub webhook_path_prefix: String,
    pub max_body_bytes: u64,
    pub flows: Flows,
    pub directory: Option<Directory>,
}

impl PluginConfig {
    /// Flows stay raw JSON text until they are built a chunk at a time, so a large flow set
    /// is never held whole as a JSON tree (at 100,000 flows that tree alone is ~250 MiB).
    pub fn parse(json: &[u8]) -> Result<PluginConfig, ConfigError> {
        let not_json = |e: serde_json::Error| error("configuration", format!("not valid JSON: {e}"));
        let mut top: BTreeMap<String, &RawValue> = serde_json::from_slice(json).map_err(|e| match e.classify() {
            Category::Data => error("configuration", "must be a JSON object".into()),
            _ => not_json(e),
        })?;
        let raw_flows = top.remove("flows");
        let root = top
            .into_iter()
            .map(|(key, raw)| Ok((key, serde_json::from_str(raw.get())?)))
            .collect::<Result<Map<String, Value>, serde_json::Error>>()
            .map(Value::Object)
            .map_err(not_json)?;
        let fields = Fields::of(&root, "configuration".into())?;
        fields.deny_unknown(&["webhook_path_prefix", "max_body_bytes", "flows", "directory"])?;
        let webhook_path_prefix = fields
            .optional("webhook_path_prefix")?
            .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        if !is_canonical_prefix(&webhook_path_prefix) {
            return Err(fields.error(
                "webhook_path_prefix",
                "must start and end with '/' and contain no '//', '.', '..', '%', '\\\\' or ';'",
            ));
        }
        let max_body_bytes = fields.optional("max_body_bytes")?.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        check_body_limit(&fields, "max_body_bytes", max_body_bytes)?;
        let directory = match fields.value("directory") {
            Some(value) => Some(parse_directory(Fields::of(value, "directory".into())?)?),
            None => None,
        };
        let entries: Vec<&RawValue> = match raw_flows {
            Some(raw) => serde_json::from_str::<Option<_>>(raw.get())
                .map_err(|e| fields.error("flows", &e.to_string()))?
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let flows = FlowsBuilder::new(max_body_bytes).strict(&entries)?;
        Ok(PluginConfig {
            webhook_path_prefix,
            max_body_bytes,
            flows,
            directory,
        })
    }
}

/// Builds a flow set from JSON flow entries, checking their templates (one environment per chunk).
pub struct FlowsBuilder {
    default_max_body_bytes: u64,
}

impl FlowsBuilder {
    pub fn new(default_max_body_bytes: u64) -> Self {
        FlowsBuilder { default_max_body_bytes }
    }

    /// All entries must be valid; the first problem is the error.
    pub fn strict(&self, entries: &[&RawValue]) -> Result<Flows, ConfigError> {
        let mut partial = PartialFlows::default();
        for chunk in entries.chunks(ENTRIES_PER_STEP) {
            let texts = chunk.iter().map(|raw| raw.get().as_bytes());
            self.add_texts(&mut partial, texts, &Flows::default());
            if let Some(problem) = partial.problems.first() {
                return Err(problem.clone());
            }
        }
        Ok(partial.finish().0)
    }

    /// Invalid entries are skipped and returned as problems; a skipped flow keeps its
    /// version from `previous`, if it had one.
    pub fn lenient(&self, entries: &[Value], previous: &Flows) -> (Flows, Vec<ConfigError>) {
        let mut partial = PartialFlows::default();
        self.add(&mut partial, entries, previous);
        partial.finish()
    }

    /// Parses and adds the next chunk of entries (JSON texts); an entry that does not parse
    /// is refused like any other non-object.
    pub fn add_texts<'t>(&self, partial: &mut PartialFlows, texts: impl Iterator<Item = &'t [u8]>, previous: &Flows) {
        let chunk: Vec<Value> = texts
            .map(|text| serde_json::from_slice(text).unwrap_or(Value::Null))
            .collect();
        self.add(partial, &chunk, previous);
    }

    /// Adds the next chunk of entries to a flow set under construction.
    pub fn add(&self, partial: &mut PartialFlows, entries: &[Value], previous: &Flows) {
        let first = partial.next_index;
        partial.next_index += entries.len();
        let templates = Rc::new(render::check_all(entries.iter().enumerate().filter_map(
            |(i, entry)| {
                let body = entry.get("response")?.get("body")?.as_str()?;
                Some((template_name(first + i), body))
            },
        )));
        for (index, entry) in (first..).zip(entries) {
            match self.flow(index, entry, &templates) {
                Ok(flow) if partial.by_id.contains_key(&flow.id) => {
                    partial
                        .problems
                        .push(error(flow_at(index, &flow.id), "duplicate flow id".into()));
                }
                Ok(flow) => {
                    partial.by_id.insert(flow.id.clone(), Rc::new(flow));
                }
                Err(problem) => {
                    if let Some(old) = entry.get("id").and_then(Value::as_str).and_then(|id| previous.get(id)) {
                        partial.by_id.entry(old.id.clone()).or_insert_with(|| Rc::clone(old));
                    }
                    partial.problems.push(problem);
                }
            }
        }
    }

    fn flow(&self, index: usize, entry: &Value, templates: &Rc<render::Templates>) -> Result<Flow, ConfigError> {
        let provisional = entry.get("id").and_then(Value::as_str).unwrap_or("?");
        let fields = Fields::of(entry, flow_at(index, provisional))?;
        fields.deny_unknown(&FLOW_FIELDS)?;
        let id: String = fields.required("id")?;
        if !is_flow_id(&id) {
            return Err(fields.error(
                "id",
                "must be 1-128 characters of A-Z a-z 0-9 - . _ ~ (and not '.' or '..')",
            ));
        }
        let ref_id: String = fields.required("ref_id")?;
        if !is_identifier(&ref_id) {
            return Err(fields.error(
                "ref_id",
                "must be an identifier usable in templates (letters, digits, '_'; not starting with a digit)",
            ));
        }
        let status = match fields.required::<String>("status")?.as_str() {
            "draft" => FlowStatus::Draft,
            "live" => FlowStatus::Live,
            "paused" => FlowStatus::Paused,
            other => {
                return Err(fields.error(
                    "status",
                    &format!("must be \"draft\", \"live\" or \"paused\", not {other:?}"),
                ))
            }
        };
        let digests: Vec<String> = fields.required("token_sha256")?;
        if digests.is_empty() {
            return Err(fields.error("token_sha256", "needs at least one digest"));
        }
        let mut tokens = Vec::with_capacity(digests.len());
        for (i, hex) in digests.iter().enumerate() {
            let digest = auth::parse_hex_digest(hex).ok_or_else(|| {
                fields.error(
                    &format!("token_sha256[{i}]"),
                    "must be 64 lowercase hex characters (the SHA-256 of the token)",
                )
            })?;
            tokens.push(digest);
        }
        let mode = if fields.optional("async")?.unwrap_or(false) {
            Mode::Async
        } else {
            Mode::Sync
        };
        if mode == Mode::Async && ref_id == "run" {
            return Err(fields.error(
                "ref_id",
                "\"run\" is reserved in async flows (it holds the executor's acceptance)",
            ));
        }
        let methods: Vec<String> = fields.optional("methods")?.unwrap_or_else(|| vec!["POST".to_string()]);
        if methods.is_empty() {
            return Err(fields.error("methods", "needs at least one method"));
        }
        if let Some(bad) = methods
            .iter()
            .find(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(fields.error("methods", &format!("{bad:?} is not an upper-case HTTP method")));
        }
        let max_body_bytes = fields
            .optional("max_body_bytes")?
            .unwrap_or(self.default_max_body_bytes);
        check_body_limit(&fields, "max_body_bytes", max_body_bytes)?;
        let response = match fields.value("response") {
            Some(value) => Some(parse_response(
                Fields::of(value, format!("{}.response", fields.at))?,
                index,
                (&id, &ref_id),
                templates,
            )?),
            None => None,
        };
        let allow = methods.join(", ");
        Ok(Flow {
            id,
            ref_id,
            status,
            tokens,
            mode,
            methods,
            allow,
            max_body_bytes,
            response,
        })
    }
}

fn parse_response(
    fields: Fields<'_>,
    index: usize,
    flow: (&str, &str),
    templates: &Rc<render::Templates>,
) -> Result<ResponseTemplate, ConfigError> {
    fields.deny_unknown(&["status", "content_type", "body"])?;
    let status: u16 = fields.required("status")?;
    // The reply carries the rendered body: 1xx, 204 and 304 cannot.
    if !(200..=599).contains(&status) || status == 204 || status == 304 {
        return Err(fields.error("status", "must be an HTTP status code from 200 to 599, not 204 or 304"));
    }
    let content_type = fields
        .optional("content_type")?
        .unwrap_or_else(|| "application/json".to_string());
    if content_type.is_empty() || content_type.bytes().any(|b| b.is_ascii_control()) {
        return Err(fields.error("content_type", "must be a non-empty header value"));
    }
    let _: String = fields.required("body")?;
    templates
        .check(&template_name(index))
        .map_err(|problem| fields.error("body", &problem))?;
    Ok(ResponseTemplate::new(
        status,
        content_type,
        Rc::clone(templates),
        template_name(index),
        flow,
    ))
}

fn parse_directory(fields: Fields<'_>) -> Result<Directory, ConfigError> {
    fields.deny_unknown(&["cluster", "authority", "path", "refresh_ms"])?;
    let cluster: String = fields.required("cluster")?;
    if cluster.is_empty() {
        return Err(fields.error("cluster", "must name an Envoy cluster"));
    }
    let authority = fields.optional("authority")?.unwrap_or_else(|| cluster.clone());
    let path = fields.optional("path")?.unwrap_or_else(|| "/v1/flows".to_string());
    if !path.starts_with('/') {
        return Err(fields.error("path", "must start with '/'"));
    }
    let refresh_ms = fields.optional("refresh_ms")?.unwrap_or(2000);
    if !(100..=3_600_000).contains(&refresh_ms) {
        return Err(fields.error("refresh_ms", "must be from 100 to 3600000"));
    }
    Ok(Directory {
        cluster,
        authority,
        path,
        refresh_ms,
    })
}

fn template_name(index: usize) -> String {
    format!("flows[{index}]")
}

fn flow_at(index: usize, id: &str) -> String {
    format!("flows[{index}] (id {id:?})")
}

fn error(at: impl Into<String>, problem: String) -> ConfigError {
    ConfigError { at: at.into(), problem }
}

fn check_body_limit(fields: &Fields<'_>, key: &str, limit: u64) -> Result<(), ConfigError> {
    if limit == 0 || limit > MAX_BODY_BYTES_CEILING {
        return Err(fields.error(key, &format!("must be from 1 to {MAX_BODY_BYTES_CEILING}")));
    }
    Ok(())
}

/// Flow ids are single path segments of unreserved characters, so their canonical
/// spelling in a URL is unique (no percent-encoding needed).
fn is_flow_id(id: &str) -> bool {
    (1..=MAX_FLOW_ID_LEN).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_canonical_prefix(prefix: &str) -> bool {
    prefix.len() > 1 && prefix.ends_with('/') && !prefix.contains('?') && crate::route::is_plain(prefix)
}

/// The fields of one JSON object, read one by one so errors name the field.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    at: String,
}

impl<'a> Fields<'a> {
    fn of(value: &'a Value, at: String) -> Result<Self, ConfigError> {
        match value {
            Value::Object(object) => Ok(Fields { object, at }),
            _ => Err(error(at, "must be a JSON object".into())),
        }
    }

    fn error(&self, key: &str, problem: &str) -> ConfigError {
        error(format!("{}.{key}", self.at), problem.to_string())
    }

    fn deny_unknown(&self, known: &[&str]) -> Result<(), ConfigError> {
        match self.object.keys().find(|key| !known.contains(&key.as_str())) {
            Some(key) => Err(self.error(key, &format!("unknown field (known: {})", known.join(", ")))),
            None => Ok(()),
        }
    }

    fn value(&self, key: &str) -> Option<&'a Value> {
        self.object.get(key).filter(|value| !value.is_null())
    }

    fn optional<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        match self.value(key) {
            Some(value) => T::deserialize(value)
                .map(Some)
                .map_err(|e| self.error(key, &e.to_string())),
            None => Ok(None),
        }
    }

    fn required<T: DeserializeOwned>(&self, key: &str) -> Result<T, ConfigError> {
        self.optional(key)?.ok_or_else(|| self.error(key, "is required"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const DIGEST: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn parse(json: serde_json::Value) -> Result<PluginConfig, ConfigError> {
        PluginConfig::parse(json.to_string().as_bytes())
    }

    fn flow(extra: serde_json::Value) -> serde_json::Value {
        let mut flow = serde_json::json!({"id": "f-1", "ref_id": "web1", "status": "live", "token_sha256": [DIGEST]});
        if let (Some(flow), Some(extra)) = (flow.as_object_mut(), extra.as_object()) {
            flow.extend(extra.clone());
        }
        flow
    }

    fn problem(json: serde_json::Value) -> String {
        parse(json).unwrap_err().to_string()
    }

    #[test]
    fn defaults_apply() {
        let config = parse(serde_json::json!({"flows": [flow(serde_json::json!({}))]})).unwrap();
        assert_eq!(config.webhook_path_prefix, DEFAULT_PREFIX);
        let flow = config.flows.get("f-1").unwrap();
        assert_eq!(flow.mode, Mode::Sync);
        assert_eq!(flow.allow, "POST");
        assert_eq!(flow.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(flow.response.is_none());
    }

    #[test]
    fn flows_load_a_chunk_at_a_time_and_errors_keep_their_place() {
        assert_eq!(problem(serde_json::json!([])), "configuration: must be a JSON object");
        let truncated = PluginConfig::parse(br#"{"flows": [{"id": "f-1"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            truncated.starts_with("configuration: not valid JSON: EOF"),
            "{truncated}"
        );
        assert!(problem(serde_json::json!({"flows": "f-1"})).starts_with("configuration.flows: invalid type"));
        assert!(parse(serde_json::json!({"flows": null})).unwrap().flows.is_empty());
        let mut flows: Vec<_> = (0..600)
            .map(|i| flow(serde_json::json!({"id": format!("f-{i}")})))
            .collect();
        assert_eq!(
            parse(serde_json::json!({"flows": flows.clone()})).unwrap().flows.len(),
            600
        );
        flows[555]["status"] = "on".into();
        assert!(problem(serde_json::json!({"flows": flows})).starts_with("flows[555] (id \"f-555\").status:"));
    }

    #[test]
    fn errors_name_the_flow_and_field() {
        assert_eq!(
            problem(serde_json::json!({"flows": [flow(serde_json::json!({"token_sha256": [DIGEST, "ABC"]}))]})),
            "flows[0] (id \"f-1\").token_sha256[1]: must be 64 lowercase hex characters (the SHA-256 of the token)"
        );
        assert!(
            problem(serde_json::json!({"flows": [flow(serde_json::json!({"status": "on"}))]}))
                .starts_with("flows[0] (id \"f-1\").status:")
        );
        assert!(
            problem(serde_json::json!({"flows": [flow(serde_json::json!({"async": "yes"}))]}))
                .starts_with("flows[0] (id \"f-1\").async: invalid type")
        );
        assert!(
            problem(serde_json::json!({"flows": [flow(serde_json::json!({"tokens": []}))]}))
                .starts_with("flows[0] (id \"f-1\").tokens: unknown field")
        );
        assert!(
            problem(serde_json::json!({"flows": [flow(serde_json::json!({"id": "a/b"}))]})).contains(".id: must be")
        );
        assert!(
            problem(serde_json::json!({"flows": [flow(serde_json::json!({"max_body_bytes": 0}))]}))
                .contains(".max_body_bytes: must be")
        );
        assert!(problem(serde_json::json!({"webhook_path_prefix": "/v1//x/"}))
            .starts_with("configuration.webhook_path_prefix"));
        assert!(
            problem(serde_json::json!({"flows": [flow(serde_json::json!({})), flow(serde_json::json!({}))]}))
                .contains("duplicate flow id")
        );
    }

    #[test]
    fn a_template_that_does_not_compile_is_refused_with_its_line() {
        let response = serde_json::json!({"response": {"status": 200, "body": "line one\n{% if %}"}});
        let message = problem(serde_json::json!({"flows": [flow(response)]}));
        assert!(
            message.starts_with("flows[0] (id \"f-1\").response.body: syntax error"),
            "{message}"
        );
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn response_status_must_be_a_real_code() {
        for status in [600, 100, 199, 204, 304] {
            let response = serde_json::json!({"response": {"status": status, "body": "{}"}});
            assert!(
                problem(serde_json::json!({"flows": [flow(response)]})).contains("response.status"),
                "{status}"
            );
        }
    }

    #[test]
    fn lenient_loading_keeps_the_last_valid_version_of_a_broken_flow() {
        let builder = FlowsBuilder::new(DEFAULT_MAX_BODY_BYTES);
        let (first, _) = builder.lenient(
            &[flow(serde_json::json!({})), flow(serde_json::json!({"id": "f-2"}))],
            &Flows::default(),
        );
        let entries = [
            flow(serde_json::json!({"status": "bogus"})),
            flow(serde_json::json!({"id": "f-2", "status": "paused"})),
        ];
        let (second, problems) = builder.lenient(&entries, &first);
        assert_eq!(problems.len(), 1);
        assert_eq!(second.get("f-1").unwrap().status, FlowStatus::Live);
        assert_eq!(second.get("f-2").unwrap().status, FlowStatus::Paused);
    }

    #[test]
    fn directory_is_validated() {
        let config = parse(serde_json::json!({"directory": {"cluster": "flow_directory"}})).unwrap();
        assert_eq!(config.directory.unwrap().path, "/v1/flows");
        assert!(
            problem(serde_json::json!({"directory": {"cluster": "c", "refresh_ms": 1}}))
                .starts_with("directory.refresh_ms")
        );
    }
}
