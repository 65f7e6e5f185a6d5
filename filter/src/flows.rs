//! Flow sets: built from JSON flow entries a chunk at a time, for the plugin configuration
//! (all entries must be valid) and for the live directory (a bad entry is skipped, and its
//! last valid version stays).

use std::collections::HashMap;
use std::rc::Rc;

use serde_json::value::RawValue;

use crate::auth::TokenDigest;
use crate::delivery::Controls;
use crate::render::{self, ResponseTemplate};
use crate::schema::{self, ConfigError, DedupeKey, FlowEntry, FlowStatus, DEFAULT_CONTENT_TYPE};
use crate::verify::{self, Verifier};

/// Entries built per step of a configuration's flows: one template environment each, and
/// a configuration's flows are never held whole as JSON.
pub const ENTRIES_PER_STEP: usize = 250;

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
    /// Sender verification; with it, `tokens` may be empty.
    pub verify: Option<Verifier>,
    /// Dedupe and rate limit (contract 8).
    pub controls: Controls,
}

/// Where a request's flow is found: a flow set, or the live directory's table.
pub trait Lookup {
    fn flow(&self, id: &str) -> Option<Rc<Flow>>;
}

impl Lookup for Flows {
    fn flow(&self, id: &str) -> Option<Rc<Flow>> {
        self.by_id.get(id).cloned()
    }
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

/// Builds a flow set from JSON flow entries, checking their templates (one environment per chunk).
pub struct FlowsBuilder {
    default_max_body_bytes: u64,
    /// Reads `verify.secret_env`: the process environment (under WASI, Envoy's `host_env_keys`).
    environment: fn(&str) -> Option<String>,
}

impl FlowsBuilder {
    pub fn new(default_max_body_bytes: u64) -> Self {
        FlowsBuilder {
            default_max_body_bytes,
            environment: |name| std::env::var(name).ok(),
        }
    }

    /// Reads `secret_env` from `environment` instead of the process environment.
    pub fn with_environment(mut self, environment: fn(&str) -> Option<String>) -> Self {
        self.environment = environment;
        self
    }

    /// All entries must be valid; the first problem is the error.
    pub fn strict(&self, entries: &[&RawValue]) -> Result<Flows, ConfigError> {
        let texts: Vec<&[u8]> = entries.iter().map(|raw| raw.get().as_bytes()).collect();
        let (flows, problems) = self.lenient(&texts);
        match problems.into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(flows),
        }
    }

    /// Invalid entries, and repeats of an id, are skipped and returned as problems.
    pub fn lenient(&self, entries: &[&[u8]]) -> (Flows, Vec<ConfigError>) {
        let (mut by_id, mut problems) = (HashMap::new(), Vec::new());
        for (n, chunk) in entries.chunks(ENTRIES_PER_STEP).enumerate() {
            let first = n * ENTRIES_PER_STEP;
            for (index, (_, flow)) in (first..).zip(self.build(first, chunk.iter().copied())) {
                match flow {
                    Ok(flow) if by_id.contains_key(&flow.id) => {
                        let at = schema::flow_at(index, &flow.id);
                        problems.push(schema::error(at, "duplicate flow id".into()));
                    }
                    Ok(flow) => {
                        by_id.insert(flow.id.clone(), Rc::new(flow));
                    }
                    Err(problem) => problems.push(problem),
                }
            }
        }
        (Flows { by_id }, problems)
    }

    /// Reads and checks a chunk of entries (JSON texts) numbered from `first` (one template
    /// environment for the chunk): each text with its flow or its problem.
    pub fn build<'t>(
        &self,
        first: usize,
        texts: impl Iterator<Item = &'t [u8]>,
    ) -> Vec<(&'t [u8], Result<Flow, ConfigError>)> {
        let entries: Vec<(&[u8], Result<FlowEntry, ConfigError>)> = (first..)
            .zip(texts)
            .map(|(index, text)| (text, schema::read_flow(index, text)))
            .collect();
        let templates = Rc::new(render::check_all((first..).zip(&entries).filter_map(
            |(index, (_, entry))| {
                let body = &entry.as_ref().ok()?.response.as_ref()?.body;
                Some((template_name(index), body.as_str()))
            },
        )));
        (first..)
            .zip(entries)
            .map(|(index, (text, entry))| (text, entry.and_then(|entry| self.flow(index, entry, &templates))))
            .collect()
    }

    /// A flow from its checked entry: what no single field can check, and its template.
    fn flow(&self, index: usize, entry: FlowEntry, templates: &Rc<render::Templates>) -> Result<Flow, ConfigError> {
        let id = entry.id.into_string();
        let ref_id = entry.ref_id.into_string();
        let at = |field: &str| format!("{}.{field}", schema::flow_at(index, &id));
        let mode = match entry.is_async {
            Some(true) => Mode::Async,
            _ => Mode::Sync,
        };
        if mode == Mode::Async && ref_id == "run" {
            return Err(schema::error(
                at("ref_id"),
                "\"run\" is reserved in async flows (it holds the executor's acceptance)".into(),
            ));
        }
        let response = match entry.response {
            Some(response) => {
                templates
                    .check(&template_name(index))
                    .map_err(|problem| schema::error(at("response.body"), problem))?;
                let content_type = response
                    .content_type
                    .map_or_else(|| DEFAULT_CONTENT_TYPE.to_string(), |c| c.into_string());
                Some(ResponseTemplate::new(
                    response.status.get(),
                    content_type,
                    Rc::clone(templates),
                    template_name(index),
                    (&id, &ref_id),
                ))
            }
            None => None,
        };
        let verify = match entry.verify {
            Some(raw) => {
                let located = |(field, problem): (String, String)| {
                    let field = if field.is_empty() {
                        "verify".into()
                    } else {
                        format!("verify.{field}")
                    };
                    schema::error(at(&field), problem)
                };
                let entry = schema::read_verify(&raw).map_err(located)?;
                Some(verify::compile(entry, &self.environment).map_err(located)?)
            }
            None => None,
        };
        let tokens = entry.token_sha256.map(|t| t.into_vec()).unwrap_or_default();
        match &verify {
            None if tokens.is_empty() => {
                return Err(schema::error(
                    at("token_sha256"),
                    "is required unless the flow has verify".into(),
                ));
            }
            Some(v) if v.reads_authorization() && !tokens.is_empty() => {
                return Err(schema::error(
                    at("token_sha256"),
                    format!(
                        "cannot be used with verify.scheme {}, which reads Authorization itself",
                        v.scheme.as_str()
                    ),
                ));
            }
            _ => {}
        }
        let mut dedupe = entry.dedupe;
        if let Some(dedupe) = dedupe.as_mut().filter(|d| d.key == DedupeKey::Scheme) {
            let scheme = verify.as_ref().map(|v| v.scheme);
            dedupe.key = scheme.and_then(verify::delivery_id).ok_or_else(|| {
                let problem = match scheme {
                    None => "\"scheme\" needs the flow's verify: the verified scheme names the delivery id".into(),
                    Some(scheme) => format!(
                        "verify.scheme {} has no delivery id of its own: use \"header:<name>\" or \"body:<JSON pointer>\"",
                        scheme.as_str()
                    ),
                };
                schema::error(at("dedupe.key"), problem)
            })?;
        }
        let methods = entry
            .methods
            .map_or_else(|| vec!["POST".to_string()], |methods| methods.into_vec());
        Ok(Flow {
            allow: methods.join(", "),
            status: entry.status,
            tokens,
            verify,
            mode,
            methods,
            max_body_bytes: entry.max_body_bytes.map_or(self.default_max_body_bytes, |l| l.get()),
            response,
            controls: Controls::new(dedupe, entry.rate_limit),
            id,
            ref_id,
        })
    }
}

fn template_name(index: usize) -> String {
    format!("flows[{index}]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::DEFAULT_MAX_BODY_BYTES;

    const DIGEST: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn flow(extra: serde_json::Value) -> Vec<u8> {
        let mut flow = serde_json::json!({"id": "f-1", "ref_id": "web1", "status": "live", "token_sha256": [DIGEST]});
        if let (Some(flow), Some(extra)) = (flow.as_object_mut(), extra.as_object()) {
            flow.extend(extra.clone());
        }
        flow.to_string().into_bytes()
    }

    #[test]
    fn lenient_loading_skips_broken_entries() {
        let builder = FlowsBuilder::new(DEFAULT_MAX_BODY_BYTES);
        let entries = [
            flow(serde_json::json!({"status": "bogus"})),
            flow(serde_json::json!({"id": "f-2", "status": "paused"})),
            flow(serde_json::json!({"id": "f-3", "tokens": []})),
            b"7".to_vec(),
        ];
        let texts: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
        let (second, problems) = builder.lenient(&texts);
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "flows[0] (id \"f-1\").status: must be \"draft\", \"live\" or \"paused\", not \"bogus\"",
                "flows[2] (id \"f-3\").tokens: unknown field (known: id, ref_id, status, token_sha256, async, methods, max_body_bytes, response, verify, dedupe, rate_limit)",
                "flows[3] (id \"?\"): must be a JSON object",
            ]
        );
        assert!(second.get("f-1").is_none());
        assert_eq!(second.get("f-2").unwrap().status, FlowStatus::Paused);
        assert!(second.get("f-3").is_none());
    }

    #[test]
    fn entries_are_checked_beyond_their_fields() {
        let builder = FlowsBuilder::new(1024);
        let entries = [
            flow(serde_json::json!({"async": true, "ref_id": "run"})),
            flow(serde_json::json!({"id": "f-2", "methods": ["GET", "PUT"], "max_body_bytes": 10})),
            flow(serde_json::json!({"id": "f-3", "ref_id": null})),
            flow(serde_json::json!({"id": "f-4", "methods": ["GET", "put"]})),
        ];
        let texts: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
        let (flows, problems) = builder.lenient(&texts);
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "flows[0] (id \"f-1\").ref_id: \"run\" is reserved in async flows (it holds the executor's acceptance)",
                "flows[2] (id \"f-3\").ref_id: invalid type: null, expected a string",
                "flows[3] (id \"f-4\").methods[1]: \"put\" is not an upper-case HTTP method",
            ]
        );
        let f2 = flows.get("f-2").unwrap();
        assert_eq!(
            (f2.allow.as_str(), f2.max_body_bytes, f2.mode),
            ("GET, PUT", 10, Mode::Sync)
        );
    }

    #[test]
    fn a_scheme_dedupe_key_is_the_verified_schemes_own_delivery_id() {
        let builder = FlowsBuilder::new(1024);
        let dedupe = serde_json::json!({"key": "scheme", "window_s": 60});
        let verify = |scheme: &str| serde_json::json!({"scheme": scheme, "secrets": ["s3cret"]});
        let entries = [
            flow(serde_json::json!({"token_sha256": null, "verify": verify("github"), "dedupe": dedupe})),
            flow(serde_json::json!({"id": "f-2", "token_sha256": null, "verify": verify("stripe"), "dedupe": dedupe})),
            flow(serde_json::json!({"id": "f-3", "dedupe": dedupe})),
            flow(serde_json::json!({"id": "f-4", "token_sha256": null, "verify": verify("hubspot"), "dedupe": dedupe})),
        ];
        let texts: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
        let (flows, problems) = builder.lenient(&texts);
        let key = |id: &str| flows.get(id).unwrap().controls.dedupe.clone().unwrap().key;
        assert_eq!(key("f-1"), DedupeKey::Header("x-github-delivery".into()));
        assert_eq!(key("f-2"), DedupeKey::Body("/id".into()));
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("flows[2] (id \"f-3\").dedupe.key: \"scheme\" needs the flow's verify"));
        assert!(problems[1].contains("verify.scheme hubspot has no delivery id of its own"));
    }
}
