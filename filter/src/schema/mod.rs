//! What an operator writes (contract 2 and 4): the plugin configuration, its flows,
//! their responses and the directory, as serde types that refuse unknown fields and check
//! every value as it is read ([`values`]).
//!
//! Every error names where it is (`flows[2] (id "f-1003").token_sha256[0]`) and what is
//! wrong, so an operator can fix the configuration from one log line. Flows stay raw JSON
//! in the top level and are read one entry at a time (`crate::flows`), so a large flow set
//! is never held whole as a JSON tree, and one bad directory entry is skipped on its own.
//!
//! With the `schema` feature, [`json_schema`] is the JSON Schema of the plugin
//! configuration (docs/config.schema.json).

#[macro_use]
pub mod values;
pub mod delivery;

use std::fmt;

use serde::Deserialize;
use serde_json::error::Category;
use serde_json::value::RawValue;
use serde_path_to_error::Segment;

pub use delivery::{DedupeEntry, DedupeKey, RateLimitEntry};
pub use values::*;

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

/// The plugin configuration, the Envoy wasm filter's `configuration` (a JSON string).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(title = "flowgate plugin configuration"))]
pub struct PluginEntry<'a> {
    /// Where webhooks live (default `/v1/flow-webhook/`).
    #[cfg_attr(feature = "schema", schemars(extend("default" = DEFAULT_PREFIX)))]
    pub webhook_path_prefix: Option<WebhookPrefix>,
    /// The default body limit of flows, in bytes (default 1048576).
    #[cfg_attr(feature = "schema", schemars(extend("default" = DEFAULT_MAX_BODY_BYTES)))]
    pub max_body_bytes: Option<BodyLimit>,
    /// Static flows; with a `directory`, they apply until its first load. Kept raw here and
    /// read a chunk at a time.
    #[serde(borrow)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<Vec<FlowEntry>>"))]
    pub flows: Option<Vec<&'a RawValue>>,
    /// A live flow directory (contract 4).
    pub directory: Option<DirectoryEntry>,
}

/// One flow's webhook: who may call it, how, and how it answers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "schema",
    schemars(extend("anyOf" = [{"required": ["token_sha256"]}, {"required": ["verify"]}]))
)]
pub struct FlowEntry {
    /// The `{flow_id}` path segment; unique.
    pub id: FlowId,
    /// The webhook step's ref-id: the request body's name in templates; `run` is reserved in
    /// async flows.
    pub ref_id: RefId,
    /// Paused flows are answered at the edge.
    pub status: FlowStatus,
    /// SHA-256 digests (64 lowercase hex) of the accepted bearer tokens; required unless the
    /// flow has `verify` (with both, both must pass).
    pub token_sha256: Option<TokenDigests>,
    /// Answer once the executor has queued the run (default false).
    #[serde(rename = "async")]
    #[cfg_attr(feature = "schema", schemars(extend("default" = false)))]
    pub is_async: Option<bool>,
    /// Allowed methods (default `["POST"]`); others get 405 with `Allow`.
    #[cfg_attr(feature = "schema", schemars(extend("default" = ["POST"])))]
    pub methods: Option<Methods>,
    /// This flow's body limit, in bytes (default: the plugin's `max_body_bytes`).
    pub max_body_bytes: Option<BodyLimit>,
    /// The flow's webhook response.
    pub response: Option<ResponseEntry>,
    /// Sender verification: the provider's signature scheme and keys (contract 7).
    // Kept raw here and read by `read_verify`: one reading of it in the wasm, not two.
    #[cfg_attr(feature = "schema", schemars(with = "Option<crate::verify::VerifyEntry>"))]
    pub verify: Option<Box<RawValue>>,
    /// Answer a repeated delivery from the edge (contract 8).
    pub dedupe: Option<DedupeEntry>,
    /// Admitted deliveries per second, per Envoy process (contract 8).
    pub rate_limit: Option<RateLimitEntry>,
}

/// A flow's webhook response: its status, content type and Jinja2 body template.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ResponseEntry {
    pub status: ResponseStatus,
    /// Default `application/json`.
    #[cfg_attr(feature = "schema", schemars(extend("default" = DEFAULT_CONTENT_TYPE)))]
    pub content_type: Option<ContentType>,
    /// A Jinja2 template (minijinja), checked when the configuration loads.
    pub body: String,
}

/// Where a live flow directory is fetched from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DirectoryEntry {
    /// The Envoy cluster that serves the directory.
    pub cluster: ClusterName,
    /// The `:authority` of the fetch (default: the cluster name).
    pub authority: Option<String>,
    /// Default `/v1/flows`.
    #[cfg_attr(feature = "schema", schemars(extend("default" = DEFAULT_DIRECTORY_PATH)))]
    pub path: Option<DirectoryPath>,
    /// How often the directory is fetched (default 2000).
    #[cfg_attr(feature = "schema", schemars(extend("default" = DEFAULT_REFRESH_MS)))]
    pub refresh_ms: Option<RefreshMs>,
}

/// Reads the top level of a plugin configuration; its flows stay raw.
pub fn read_plugin(json: &[u8]) -> Result<PluginEntry<'_>, ConfigError> {
    let at_top = |problem: String| error("configuration", problem);
    if !is_object(json) {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(json) {
            Ok(_) => at_top("must be a JSON object".into()),
            Err(e) => at_top(format!("not valid JSON: {e}")),
        });
    }
    read(json).map_err(|failure| match failure {
        // `directory.refresh_ms`, `configuration.flows`: as operators have always read them.
        Failure::Data(at, problem) => match at.as_str() {
            "" => at_top(problem),
            _ if at.starts_with("directory") => error(at, problem),
            _ => error(format!("configuration.{at}"), problem),
        },
        Failure::Json(e) => at_top(format!("not valid JSON: {e}")),
    })
}

/// Reads flow entry `index` of a flow list from its JSON text.
pub fn read_flow(index: usize, text: &[u8]) -> Result<FlowEntry, ConfigError> {
    let at = || flow_at(index, entry_id(text).as_deref().unwrap_or("?"));
    if !is_object(text) {
        return Err(error(at(), "must be a JSON object".into()));
    }
    // Most entries are valid, and tracking the path costs an allocation per key: an entry is
    // read again with the path tracked only to say where its problem is.
    if let Ok(entry) = serde_json::from_slice(text) {
        return Ok(entry);
    }
    read(text).map_err(|failure| match failure {
        Failure::Data(path, problem) if path.is_empty() => error(at(), problem),
        Failure::Data(path, problem) => error(format!("{}.{path}", at()), problem),
        Failure::Json(e) => error(at(), format!("not valid JSON: {e}")),
    })
}

/// Reads a flow's `verify`; an error is `(path under verify, problem)`.
pub fn read_verify(text: &RawValue) -> Result<crate::verify::VerifyEntry, (String, String)> {
    if !is_object(text.get().as_bytes()) {
        return Err((String::new(), "must be a JSON object".into()));
    }
    read(text.get().as_bytes()).map_err(|failure| match failure {
        Failure::Data(path, problem) => (path, problem),
        Failure::Json(e) => (String::new(), format!("not valid JSON: {e}")),
    })
}

/// The `id` of a flow entry, valid or not, if it is a string.
pub fn entry_id(text: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        id: Option<String>,
    }
    serde_json::from_slice::<Id>(text).ok()?.id
}

/// Where flow entry `index` is: `flows[2] (id "f-1003")`.
pub fn flow_at(index: usize, id: &str) -> String {
    format!("flows[{index}] (id {id:?})")
}

pub fn error(at: impl Into<String>, problem: String) -> ConfigError {
    ConfigError { at: at.into(), problem }
}

/// Serde's derive also reads a struct from a JSON array (its fields in order): refused.
fn is_object(text: &[u8]) -> bool {
    text.trim_ascii_start().first() == Some(&b'{')
}

type Located = serde_path_to_error::Error<serde_json::Error>;

/// Why a text did not read: a value in the wrong place (where, what), or not JSON at all.
enum Failure {
    Data(String, String),
    Json(serde_json::Error),
}

fn read<'a, T: Deserialize<'a>>(text: &'a [u8]) -> Result<T, Failure> {
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let value =
        serde_path_to_error::deserialize(&mut deserializer).map_err(|e: Located| match e.inner().classify() {
            Category::Data => {
                let (at, problem) = locate(&e);
                Failure::Data(at, problem)
            }
            _ => Failure::Json(e.into_inner()),
        })?;
    deserializer.end().map_err(Failure::Json)?;
    Ok(value)
}

/// The path of a problem (`token_sha256[1]`, `response.body`) and the problem, in the words
/// the configuration has always used: "is required", "unknown field (known: ...)", "appears
/// twice", and no
/// "at line 1 column 80" (the path says where).
fn locate(e: &Located) -> (String, String) {
    let mut at = String::new();
    for segment in e.path().iter() {
        match segment {
            Segment::Seq { index } => at.push_str(&format!("[{index}]")),
            Segment::Map { key } => push_field(&mut at, key),
            Segment::Enum { variant } => push_field(&mut at, variant),
            _ => push_field(&mut at, "?"),
        }
    }
    let inner = e.inner();
    let mut problem = inner.to_string();
    if inner.line() != 0 {
        let position = format!(" at line {} column {}", inner.line(), inner.column());
        if let Some(message) = problem.strip_suffix(&position) {
            problem = message.to_string();
        }
    }
    if let Some(field) = backquoted(&problem, "missing field `") {
        push_field(&mut at, &field);
        problem = "is required".into();
    } else if let Some(field) = backquoted(&problem, "duplicate field `") {
        push_field(&mut at, &field);
        problem = "appears twice".into();
    } else if let Some(known) = problem
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once(", expected "))
    {
        let known = known
            .1
            .trim_start_matches("one of ")
            .replace(['`'], "")
            .replace(" or ", ", ");
        problem = format!("unknown field (known: {known})");
    }
    (at, problem)
}

fn push_field(at: &mut String, field: &str) {
    if !at.is_empty() {
        at.push('.');
    }
    at.push_str(field);
}

/// `x` of a message `<prefix>x`...
fn backquoted(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    Some(rest.split_once('`')?.0.to_string())
}

/// The JSON Schema of the plugin configuration (docs/config.schema.json).
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(PluginEntry<'static>)).unwrap_or_default()
}
