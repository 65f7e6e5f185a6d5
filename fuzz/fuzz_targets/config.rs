//! Configuration parsing, from arbitrary bytes and from structured edits of a valid config.
//!
//! Every input is used twice: as raw bytes for `PluginConfig::parse`, and as a list of edits
//! (fields set, removed or retyped; flows duplicated; template bodies built from Jinja pieces;
//! rendering them is the `template` target's business)
//! applied to the valid fixture configuration before parsing.
//!
//! Invariants:
//! - `PluginConfig::parse` never panics;
//! - an error names where it is and what is wrong (both non-empty);
//! - an accepted configuration holds only what validation promises: a canonical prefix,
//!   flow ids that are one unreserved segment, identifiers as ref ids, upper-case methods,
//!   body limits from 1 to 64 MiB, at least one token, real response statuses;
//! - every accepted flow is reachable: `route(prefix, prefix + id)` is that flow;
//! - as a live directory document, the same bytes index into ranges that are each one JSON
//!   value, and `Loading` the index step by step gives the flows and problems that
//!   `FlowsBuilder::lenient` gives at once; as an index blob, `Loading::new` never panics.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use std::rc::Rc;

use flowgate::config::PluginConfig;
use flowgate::flows::{Flows, FlowsBuilder, Mode};
use flowgate::schema::{DEFAULT_MAX_BODY_BYTES, MAX_BODY_BYTES_CEILING};
use flowgate::directory::apply::{Apply, Progress, SLICE_BYTES};
use flowgate::directory::scan::{Form, Item, Scan};
use flowgate::directory::shared::{Keys, Published};
use flowgate::directory::table::{Read, Table};
use flowgate::flows::Lookup;
use flowgate::store::{MemoryStore, Store};
use std::cell::RefCell;
use flowgate::route::{route, Route};
use flowgate_fuzz::{fixture_json, jinja, Json};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

#[derive(Arbitrary, Debug)]
enum Edit<'a> {
    Top {
        field: TopField,
        value: FieldValue<'a>,
    },
    RemoveTop(TopField),
    Flow {
        index: u8,
        field: FlowField,
        value: FieldValue<'a>,
    },
    RemoveFlowField {
        index: u8,
        field: FlowField,
    },
    Response {
        index: u8,
        field: ResponseField,
        value: FieldValue<'a>,
    },
    Template {
        index: u8,
        pieces: Vec<jinja::Piece<'a>>,
    },
    Directory {
        field: DirectoryField,
        value: FieldValue<'a>,
    },
    DuplicateFlow(u8),
    RemoveFlow(u8),
    ReplaceFlow {
        index: u8,
        value: Json,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum TopField {
    Prefix,
    MaxBodyBytes,
    Flows,
    Directory,
    Unknown,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum FlowField {
    Id,
    RefId,
    Status,
    TokenSha256,
    Async,
    Methods,
    MaxBodyBytes,
    Response,
    Unknown,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum ResponseField {
    Status,
    ContentType,
    Body,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum DirectoryField {
    Cluster,
    Authority,
    Path,
    RefreshMs,
}

/// Values that are near the valid ones as well as anything at all.
#[derive(Arbitrary, Debug)]
enum FieldValue<'a> {
    Any(Json),
    Str(&'a str),
    Int(i64),
    Bool(bool),
    Strings(Vec<&'a str>),
    Digest(u8),
    Status(&'a str),
    Path(PathSpelling<'a>),
}

#[derive(Arbitrary, Debug)]
struct PathSpelling<'a> {
    segments: Vec<&'a str>,
    trailing_slash: bool,
}

fn value(field: FieldValue<'_>) -> Value {
    match field {
        FieldValue::Any(json) => json.to_value(),
        FieldValue::Str(s) => json!(s),
        FieldValue::Int(i) => json!(i),
        FieldValue::Bool(b) => json!(b),
        FieldValue::Strings(v) => json!(v),
        FieldValue::Digest(seed) => json!([format!("{seed:02x}").repeat(32)]),
        FieldValue::Status(s) => json!(s),
        FieldValue::Path(p) => {
            let mut path = format!("/{}", p.segments.join("/"));
            if p.trailing_slash {
                path.push('/');
            }
            json!(path)
        }
    }
}

fn flow_key(field: FlowField) -> &'static str {
    match field {
        FlowField::Id => "id",
        FlowField::RefId => "ref_id",
        FlowField::Status => "status",
        FlowField::TokenSha256 => "token_sha256",
        FlowField::Async => "async",
        FlowField::Methods => "methods",
        FlowField::MaxBodyBytes => "max_body_bytes",
        FlowField::Response => "response",
        FlowField::Unknown => "tokens",
    }
}

fn top_key(field: TopField) -> &'static str {
    match field {
        TopField::Prefix => "webhook_path_prefix",
        TopField::MaxBodyBytes => "max_body_bytes",
        TopField::Flows => "flows",
        TopField::Directory => "directory",
        TopField::Unknown => "prefix",
    }
}

/// The flow entry at `index` (modulo the flow count), if `flows` is still an array.
fn flow_at(config: &mut Value, index: u8) -> Option<&mut Value> {
    let flows = config.get_mut("flows")?.as_array_mut()?;
    let len = flows.len();
    if len == 0 {
        return None;
    }
    flows.get_mut(usize::from(index) % len)
}

fn apply(config: &mut Value, edit: Edit<'_>) {
    match edit {
        Edit::Top { field, value: v } => config[top_key(field)] = value(v),
        Edit::RemoveTop(field) => {
            if let Some(object) = config.as_object_mut() {
                object.remove(top_key(field));
            }
        }
        Edit::Flow { index, field, value: v } => {
            if let Some(flow) = flow_at(config, index).filter(|f| f.is_object()) {
                flow[flow_key(field)] = value(v);
            }
        }
        Edit::RemoveFlowField { index, field } => {
            if let Some(flow) = flow_at(config, index).and_then(Value::as_object_mut) {
                flow.remove(flow_key(field));
            }
        }
        Edit::Response { index, field, value: v } => {
            if let Some(flow) = flow_at(config, index).filter(|f| f.is_object()) {
                if !flow["response"].is_object() {
                    flow["response"] = json!({"status": 200, "body": "{}"});
                }
                let key = match field {
                    ResponseField::Status => "status",
                    ResponseField::ContentType => "content_type",
                    ResponseField::Body => "body",
                };
                flow["response"][key] = value(v);
            }
        }
        Edit::Template { index, pieces } => {
            if let Some(flow) = flow_at(config, index).filter(|f| f.is_object()) {
                let status = flow["response"]["status"].as_u64().unwrap_or(200);
                flow["response"] = json!({"status": status, "body": jinja::source(&pieces)});
            }
        }
        Edit::Directory { field, value: v } => {
            if !config["directory"].is_object() {
                config["directory"] = json!({"cluster": "flow_directory"});
            }
            let key = match field {
                DirectoryField::Cluster => "cluster",
                DirectoryField::Authority => "authority",
                DirectoryField::Path => "path",
                DirectoryField::RefreshMs => "refresh_ms",
            };
            config["directory"][key] = value(v);
        }
        Edit::DuplicateFlow(index) => {
            if let Some(copy) = flow_at(config, index).map(|f| f.clone()) {
                if let Some(flows) = config["flows"].as_array_mut() {
                    flows.push(copy);
                }
            }
        }
        Edit::RemoveFlow(index) => {
            if let Some(flows) = config.get_mut("flows").and_then(Value::as_array_mut) {
                if !flows.is_empty() {
                    let at = usize::from(index) % flows.len();
                    flows.remove(at);
                }
            }
        }
        Edit::ReplaceFlow { index, value: v } => {
            if let Some(flow) = flow_at(config, index) {
                *flow = v.to_value();
            }
        }
    }
}

fn is_canonical_prefix(prefix: &str) -> bool {
    prefix.len() > 1
        && prefix.starts_with('/')
        && prefix.ends_with('/')
        && !prefix.contains(['%', '\\', ';', '?', '#'])
        && !prefix.contains("//")
        && !prefix.split('/').any(|s| s == "." || s == "..")
}

fn check(json: &[u8]) {
    let config = match PluginConfig::parse(json) {
        Ok(config) => config,
        Err(e) => {
            assert!(!e.at.is_empty() && !e.problem.is_empty(), "vague error {e:?}");
            return;
        }
    };
    let prefix = config.webhook_path_prefix.as_str();
    assert!(is_canonical_prefix(prefix), "accepted prefix {prefix:?}");
    assert!((1..=MAX_BODY_BYTES_CEILING).contains(&config.max_body_bytes));
    if let Some(directory) = &config.directory {
        assert!(!directory.cluster.is_empty() && directory.path.starts_with('/'));
        assert!((100..=3_600_000).contains(&directory.refresh_ms));
    }
    let entries = serde_json::from_slice::<Value>(json)
        .ok()
        .and_then(|v| v.get("flows").and_then(Value::as_array).map(Vec::len))
        .unwrap_or(0);
    assert_eq!(config.flows.len(), entries, "flows accepted but not all kept");
    let ids: Vec<String> = serde_json::from_slice::<Value>(json)
        .ok()
        .and_then(|v| {
            v.get("flows")?
                .as_array()?
                .iter()
                .map(|f| f.get("id")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for id in &ids {
        let Some(flow) = config.flows.get(id) else {
            panic!("flow {id:?} accepted but missing");
        };
        assert!(
            (1..=128).contains(&flow.id.len())
                && flow.id != "."
                && flow.id != ".."
                && flow
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
            "accepted flow id {:?}",
            flow.id
        );
        assert!(
            flow.ref_id.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && flow.ref_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "accepted ref_id {:?}",
            flow.ref_id
        );
        assert!(!(flow.mode == Mode::Async && flow.ref_id == "run"));
        assert!(!flow.tokens.is_empty());
        assert!(!flow.methods.is_empty());
        for method in &flow.methods {
            assert!(
                !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()),
                "method {method:?}"
            );
        }
        assert_eq!(flow.allow, flow.methods.join(", "));
        assert!((1..=MAX_BODY_BYTES_CEILING).contains(&flow.max_body_bytes));
        let path = format!("{prefix}{}", flow.id);
        assert_eq!(
            route(prefix, &path),
            Route::Webhook { flow_id: &flow.id },
            "flow {:?} is unreachable at {path:?}",
            flow.id
        );
        if let Some(response) = &flow.response {
            // The reply carries the rendered body: no 1xx, 204 or 304 (contract 2).
            assert!((200..=599).contains(&response.status) && ![204, 304].contains(&response.status));
            assert!(!response.content_type.is_empty());
        }
    }
}

/// Every item of a directory answer read in slices of `size` bytes (entries as text).
fn scan(answer: &[u8], size: usize) -> Result<(Option<Form>, Vec<Vec<u8>>, Vec<String>), String> {
    let mut slices = answer.chunks(size.max(1)).map(<[u8]>::to_vec);
    let (mut scan, mut entries, mut removed) = (Scan::default(), Vec::new(), Vec::new());
    while let Some(item) = scan.next(&mut || slices.next())? {
        match item {
            Item::Entry(range) => entries.push(scan.text(range).to_vec()),
            Item::Removed(id) => removed.push(id),
            Item::Version(_) => {}
        }
    }
    Ok((scan.form(), entries, removed))
}

/// A directory answer: read in slices of any size it gives the same items; applied to an
/// empty flow table, it writes nothing unless it is a flow list, and then exactly the flows
/// the same entries give when built at once.
fn check_directory(answer: &[u8]) {
    let whole = scan(answer, answer.len());
    assert_eq!(whole, scan(answer, 7), "slices changed what was read");
    let (keys, builder) = (Keys::scoped(b"fuzz"), FlowsBuilder::new(DEFAULT_MAX_BODY_BYTES));
    let mut store = MemoryStore::default();
    for (n, slice) in answer.chunks(SLICE_BYTES).enumerate() {
        store.set(&keys.slice(n), slice, 0);
    }
    let mut apply = Apply::new(Published::default(), answer.len(), String::new(), 1);
    let progress = loop {
        match apply.step(&mut store, &keys, &builder) {
            Progress::Working => {}
            done => break done,
        }
    };
    let floor = match &progress {
        Progress::Done(published) => published.floor,
        _ => 0,
    };
    let reader = Rc::new(RefCell::new(store));
    let read: Read = Box::new(move |key| reader.borrow_mut().get(key).0);
    let table = Table::new(keys, FlowsBuilder::new(DEFAULT_MAX_BODY_BYTES), read, floor);
    let Ok((form, entries, _)) = whole else {
        assert!(matches!(progress, Progress::Refused(_)), "{progress:?}");
        return;
    };
    let texts: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
    let (expected, _) = builder.lenient(&texts);
    let values = texts.iter().filter_map(|text| serde_json::from_slice::<Value>(text).ok());
    for id in values.filter_map(|v| Some(v.get("id")?.as_str()?.to_string())) {
        let want = form == Some(Form::Full) && expected.get(&id).is_some();
        assert_eq!(table.flow(&id).is_some(), want, "flow {id:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check_directory(data);
    let mut edits = Unstructured::new(data);
    let mut config = fixture_json("/v1/flow-webhook/");
    config["directory"] = json!({"cluster": "flow_directory", "refresh_ms": 2000});
    for _ in 0..64 {
        let Ok(edit) = Edit::arbitrary(&mut edits) else { break };
        apply(&mut config, edit);
        if edits.is_empty() {
            break;
        }
    }
    let edited = serde_json::to_vec(&config).unwrap_or_default();
    check(&edited);
    check_directory(&edited);
});
