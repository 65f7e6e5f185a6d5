//! Flow definitions and step evaluation.
//!
//! A flow is the JSON object an operator would put in the plugin configuration (contract 2)
//! plus two executor-only fields:
//!
//! - `steps`: `[{"ref_id": "res1", "values": {"value": "<minijinja expression>"}}, ...]`
//! - `run_ms`: simulated run time in milliseconds (default 0).
//!
//! The plugin-facing fields are kept verbatim (and served by the flow directory without any
//! validation, so tests can also serve entries the plugin must reject); only `id` (a string) is
//! required here, and every step expression must compile. Expressions are compiled once, when a
//! flow is loaded or changed, never per run.
//!
//! Running a flow evaluates its steps in order on a context made of `<flow ref_id>` (the webhook
//! body, see [`bind_body`]) plus the output of every earlier step under its ref_id. The flow output
//! is `{"<step ref_id>": {"<key>": <value>, ...}, ...}`.

use std::sync::LazyLock;

use minijinja::{Environment, Expression};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

/// Fields that only the executor understands; they are stripped from the flow directory.
pub const EXECUTOR_ONLY_FIELDS: &[&str] = &["steps", "run_ms"];

/// One environment for every expression; expressions borrow it, so it lives for the whole process.
static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // Bound the work one expression may do (e.g. `range(10**9) | list`).
    env.set_fuel(Some(1_000_000));
    env
});

/// A compiled step: its ref_id and its `key -> expression` list (in file order).
pub struct Step {
    pub ref_id: String,
    values: Vec<(String, Expression<'static, 'static>)>,
}

/// A loaded flow.
pub struct Flow {
    /// The flow's id (`f-1001`).
    pub id: String,
    /// The webhook ref_id the body is bound to (`web1`), if the flow has one.
    pub ref_id: Option<String>,
    /// Simulated run time.
    pub run_ms: u64,
    /// The flow object exactly as given (including executor-only fields).
    pub raw: Map<String, Value>,
    pub steps: Vec<Step>,
}

impl Flow {
    /// Builds a flow from its JSON object, compiling every step expression.
    ///
    /// Errors name the flow and the step, e.g. `flow f-1001: step res1 value "value": syntax error ...`.
    pub fn from_json(value: &Value) -> Result<Flow, String> {
        let raw = value
            .as_object()
            .ok_or_else(|| "a flow must be a JSON object".to_string())?
            .clone();
        let id = match raw.get("id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => return Err("a flow needs a non-empty string `id`".to_string()),
        };
        let ref_id = raw.get("ref_id").and_then(Value::as_str).map(str::to_string);
        let run_ms = match raw.get("run_ms") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("flow {id}: `run_ms` must be a non-negative integer"))?,
        };
        let steps = match raw.get("steps") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(steps)) => steps
                .iter()
                .enumerate()
                .map(|(i, step)| compile_step(&id, i, step))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(format!("flow {id}: `steps` must be an array")),
        };
        Ok(Flow {
            id,
            ref_id,
            run_ms,
            raw,
            steps,
        })
    }

    /// The flow as the directory serves it: every field except the executor-only ones.
    pub fn public(&self) -> Value {
        let mut public = self.raw.clone();
        for field in EXECUTOR_ONLY_FIELDS {
            public.remove(*field);
        }
        Value::Object(public)
    }

    /// Runs the steps on `body` (already bound, see [`bind_body`]) and returns the flow output.
    pub fn run(&self, body: Value) -> Result<Value, String> {
        let mut context = Map::new();
        if let Some(ref_id) = &self.ref_id {
            context.insert(ref_id.clone(), body);
        }
        let mut output = Map::new();
        for step in &self.steps {
            let mut values = Map::new();
            for (key, expr) in &step.values {
                let value = expr
                    .eval(&context)
                    .map_err(|e| format!("flow {}: step {} value {key:?}: {}", self.id, step.ref_id, describe(&e)))?;
                let value = serde_json::to_value(&value).map_err(|e| {
                    format!(
                        "flow {}: step {} value {key:?}: not representable as JSON: {e}",
                        self.id, step.ref_id
                    )
                })?;
                values.insert(key.clone(), value);
            }
            let values = Value::Object(values);
            context.insert(step.ref_id.clone(), values.clone());
            output.insert(step.ref_id.clone(), values);
        }
        Ok(Value::Object(output))
    }
}

fn compile_step(flow_id: &str, index: usize, step: &Value) -> Result<Step, String> {
    let step = step
        .as_object()
        .ok_or_else(|| format!("flow {flow_id}: step #{index} must be an object"))?;
    let ref_id = match step.get("ref_id") {
        Some(Value::String(r)) if !r.is_empty() => r.clone(),
        _ => {
            return Err(format!(
                "flow {flow_id}: step #{index} needs a non-empty string `ref_id`"
            ))
        }
    };
    let values = match step.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(values)) => values
            .iter()
            .map(|(key, source)| {
                let source = source.as_str().ok_or_else(|| {
                    format!("flow {flow_id}: step {ref_id} value {key:?} must be a string expression")
                })?;
                let expr = ENV
                    .compile_expression_owned(source.to_string())
                    .map_err(|e| format!("flow {flow_id}: step {ref_id} value {key:?}: {}", describe(&e)))?;
                Ok((key.clone(), expr))
            })
            .collect::<Result<Vec<_>, String>>()?,
        Some(_) => return Err(format!("flow {flow_id}: step {ref_id}: `values` must be an object")),
    };
    Ok(Step { ref_id, values })
}

/// A one-line description of a minijinja error, including its cause chain.
fn describe(err: &minijinja::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Binds a webhook body for the step context exactly as flowgate binds it as `<ref_id>` for
/// response templates (`flowgate::body::bind`), so both sides of the edge read a body alike:
/// JSON parsed (`null` if it does not parse), form fields as an object (a repeated field keeps
/// its last value), anything else as a (lossy UTF-8) string.
pub fn bind_body(content_type: Option<&str>, body: &[u8]) -> Value {
    let bound = flowgate::body::bind(content_type.map(str::as_bytes), body);
    serde_json::to_value(bound).unwrap_or(Value::Null)
}

/// Parses a flows file: `{"flows": [ ... ]}`; other top-level keys (e.g. `_demo_tokens`) are ignored.
pub fn load_file(text: &str) -> Result<Vec<Flow>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let flows = doc
        .get("flows")
        .and_then(Value::as_array)
        .ok_or_else(|| "expected an object with a `flows` array".to_string())?;
    let mut out: Vec<Flow> = Vec::with_capacity(flows.len());
    let mut ids = std::collections::HashSet::with_capacity(flows.len());
    for flow in flows {
        let flow = Flow::from_json(flow)?;
        if !ids.insert(flow.id.clone()) {
            return Err(format!("flow {}: duplicate id", flow.id));
        }
        out.push(flow);
    }
    Ok(out)
}

/// The token every generated flow (`--generated-flows`) accepts.
pub const GENERATED_TOKEN: &str = "generated-flows-token-3e1f0a9d8c7b6a5f4e3d2c1b0a99887766554433";

/// How many flows `--generated-flows` can make: their ids have seven digits.
pub const GENERATED_MAX: u32 = 10_000_000;

/// The hex SHA-256 of [`GENERATED_TOKEN`], the one `token_sha256` of every generated flow.
static GENERATED_DIGEST: LazyLock<String> = LazyLock::new(|| {
    Sha256::digest(GENERATED_TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
});

/// The id of generated flow `n`: `g-0000042`.
pub fn generated_id(n: u32) -> String {
    format!("g-{n:07}")
}

/// The number of a generated flow's id (`g-` and seven digits), whatever the flow count.
pub fn generated_number(id: &str) -> Option<u32> {
    let digits = id.strip_prefix("g-")?;
    if digits.len() == 7 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// Generated flow `n` as JSON: a live sync flow bound to `w`, accepting [`GENERATED_TOKEN`],
/// without steps (a run answers `{}`) or response template. It has no executor-only field, so
/// this is also its directory entry.
pub fn generated_json(n: u32) -> Value {
    json!({"id": generated_id(n), "ref_id": "w", "status": "live", "token_sha256": [&*GENERATED_DIGEST]})
}

/// Generated flow `n`, materialised (the executor keeps only its number).
pub fn generated_flow(n: u32) -> Flow {
    Flow::from_json(&generated_json(n)).expect("a generated flow is valid")
}

/// Appends `serde_json::to_vec(&generated_json(n))` to `out`, without building the value (a
/// million of them make the full directory document).
pub fn write_generated_json(n: u32, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let digest = &*GENERATED_DIGEST;
    let _ = write!(
        out,
        r#"{{"id":"g-{n:07}","ref_id":"w","status":"live","token_sha256":["{digest}"]}}"#
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flow(value: Value) -> Flow {
        Flow::from_json(&value).unwrap()
    }

    fn seed_flow() -> Flow {
        flow(json!({
            "id": "f-1001", "ref_id": "web1", "status": "live",
            "steps": [{"ref_id": "res1", "values": {
                "value": "'myResult' if web1.company_id == 123456 else 'other'"}}]
        }))
    }

    #[test]
    fn seed_step_yields_my_result() {
        let f = seed_flow();
        let out = f.run(json!({"company_id": 123456, "user_id": 789123})).unwrap();
        assert_eq!(out, json!({"res1": {"value": "myResult"}}));
        let out = f.run(json!({"company_id": 1})).unwrap();
        assert_eq!(out, json!({"res1": {"value": "other"}}));
    }

    #[test]
    fn later_steps_see_earlier_outputs() {
        let f = flow(json!({
            "id": "f", "ref_id": "web", "steps": [
                {"ref_id": "a", "values": {"n": "web.x * 2", "s": "web.name | upper"}},
                {"ref_id": "b", "values": {"sum": "a.n + 1", "greeting": "'hi ' ~ a.s"}}
            ]
        }));
        let out = f.run(json!({"x": 20, "name": "ada"})).unwrap();
        assert_eq!(
            out,
            json!({"a": {"n": 40, "s": "ADA"}, "b": {"sum": 41, "greeting": "hi ADA"}})
        );
    }

    #[test]
    fn missing_fields_are_null_not_errors() {
        let f = seed_flow();
        assert_eq!(
            f.run(json!("not an object")).unwrap(),
            json!({"res1": {"value": "other"}})
        );
        let f = flow(json!({"id": "f", "ref_id": "w", "steps": [
            {"ref_id": "r", "values": {"v": "w.nope"}}]}));
        assert_eq!(f.run(json!({})).unwrap(), json!({"r": {"v": null}}));
    }

    #[test]
    fn bad_expression_is_a_load_error_naming_flow_and_step() {
        let err = Flow::from_json(&json!({"id": "f-9", "steps": [
            {"ref_id": "res7", "values": {"value": "1 +"}}]}))
        .err()
        .unwrap();
        assert!(err.contains("f-9") && err.contains("res7"), "{err}");
        let err = Flow::from_json(&json!({"ref_id": "x"})).err().unwrap();
        assert!(err.contains("id"), "{err}");
    }

    #[test]
    fn runtime_error_names_flow_and_step() {
        let f = flow(json!({"id": "f-2", "ref_id": "w", "steps": [
            {"ref_id": "boom", "values": {"v": "w.a + 'x'"}}]}));
        let err = f.run(json!({"a": 1})).unwrap_err();
        assert!(err.contains("f-2") && err.contains("boom"), "{err}");
    }

    #[test]
    fn public_strips_executor_only_fields() {
        let f = seed_flow();
        let mut raw = f.raw.clone();
        raw.insert("run_ms".into(), json!(5));
        let f = Flow::from_json(&Value::Object(raw)).unwrap();
        assert_eq!(f.run_ms, 5);
        assert_eq!(f.public(), json!({"id": "f-1001", "ref_id": "web1", "status": "live"}));
    }

    #[test]
    fn bodies_bind_as_the_filter_binds_them() {
        // One rule, tested in flowgate's body module; here only that the executor uses it.
        let form = b"company_id=123456&name=J%C3%BCrgen+M&flag&name=second";
        assert_eq!(
            bind_body(Some("application/x-www-form-urlencoded"), form),
            json!({"company_id": "123456", "name": "second", "flag": ""})
        );
        assert_eq!(
            bind_body(Some("application/json"), br#"{"a":[1,2]}"#),
            json!({"a": [1, 2]})
        );
        assert_eq!(bind_body(None, b"hello"), json!("hello"));
    }

    #[test]
    fn load_file_ignores_extra_keys_and_rejects_duplicates() {
        let flows = load_file(r#"{"_demo_tokens": {"f": ["t"]}, "flows": [{"id": "f"}]}"#).unwrap();
        assert_eq!(flows.len(), 1);
        let err = load_file(r#"{"flows": [{"id": "f"}, {"id": "f"}]}"#).err().unwrap();
        assert!(err.contains("duplicate"), "{err}");
    }

    #[test]
    fn generated_flows_have_seven_digit_ids_and_the_shared_token_digest() {
        assert_eq!(generated_id(0), "g-0000000");
        assert_eq!(generated_id(999_999), "g-0999999");
        assert_eq!(generated_number("g-0999999"), Some(999_999));
        for id in ["g-999999", "g-00000001", "g-00000x1", "f-0000001", "g-+000001"] {
            assert_eq!(generated_number(id), None, "{id}");
        }
        // sha256("generated-flows-token-3e1f...4433"), as tests/ compute it.
        assert_eq!(
            *GENERATED_DIGEST,
            "306f200e756f108de31c808ed22d51a341c8a4ba96c8f8247353d583055d205e"
        );
        let f = generated_flow(7);
        assert_eq!(
            (f.id.as_str(), f.ref_id.as_deref(), f.run_ms),
            ("g-0000007", Some("w"), 0)
        );
        assert_eq!(f.raw["status"], "live");
        assert!(f.raw.get("async").is_none() && f.raw.get("response").is_none());
        assert_eq!(f.run(json!({"x": 1})).unwrap(), json!({}));
        assert_eq!(f.public(), generated_json(7));
        let mut out = Vec::new();
        write_generated_json(1_234_567, &mut out);
        assert_eq!(out, serde_json::to_vec(&generated_json(1_234_567)).unwrap());
    }

    #[test]
    fn shipped_demo_flows_load_and_run() {
        let text = include_str!("../../flows.json");
        let flows = load_file(text).unwrap();
        let ids: Vec<&str> = flows.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["f-1001", "f-1002", "f-1003", "f-1004", "f-1005"]);
        let doc: Value = serde_json::from_str(text).unwrap();
        for flow in &flows {
            let tokens = doc["_demo_tokens"][&flow.id].as_array().unwrap();
            let digests = flow.raw["token_sha256"].as_array().unwrap();
            assert_eq!(tokens.len(), digests.len(), "{}", flow.id);
            assert!(tokens.iter().all(|t| t.as_str().unwrap().len() >= 50));
        }
        let body = bind_body(Some("application/json"), br#"{"company_id": 123456}"#);
        assert_eq!(flows[0].run(body).unwrap(), json!({"res1": {"value": "myResult"}}));
        assert_eq!(flows[2].run_ms, 2000);
    }
}
