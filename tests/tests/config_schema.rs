//! docs/config.schema.json (the JSON Schema of the plugin configuration, generated from the
//! filter's own types: `cargo test -p flowgate --features schema --test schema` keeps it fresh)
//! accepts every plugin configuration we ship, and refuses what flowgate refuses.

use std::fs;

use flowgate_e2e::*;
use serde_json::{json, Value};

fn validator() -> jsonschema::Validator {
    let path = repo_root().join("docs/config.schema.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).expect("docs/config.schema.json is JSON");
    jsonschema::validator_for(&schema).expect("docs/config.schema.json is a JSON Schema")
}

/// Every reason why the schema refuses `config`.
fn schema_errors(validator: &jsonschema::Validator, config: &Value) -> Vec<String> {
    validator
        .iter_errors(config)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// The plugin configurations inside a manifest or bootstrap: a WasmPlugin's `pluginConfig`, and
/// the JSON text of every Envoy Wasm filter's `configuration` (a `StringValue`).
fn plugin_configs(doc: &Value, found: &mut Vec<Value>) {
    match doc {
        Value::Object(fields) => {
            for (key, value) in fields {
                match (key.as_str(), value["@type"].as_str(), value["value"].as_str()) {
                    ("pluginConfig", _, _) => found.push(value.clone()),
                    ("configuration", Some("type.googleapis.com/google.protobuf.StringValue"), Some(text)) => {
                        found.push(serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
                    }
                    _ => plugin_configs(value, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| plugin_configs(item, found)),
        _ => {}
    }
}

/// Every plugin configuration we ship, named by where it is.
fn shipped() -> Vec<(String, Value)> {
    let mut files = vec![repo_root().join("envoy/envoy.yaml")];
    let mut istio: Vec<_> = fs::read_dir(repo_root().join("examples/istio"))
        .expect("examples/istio exists")
        .map(|entry| entry.expect("readable directory").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    istio.sort();
    files.extend(istio);
    let mut configs = Vec::new();
    for file in files {
        let mut found = Vec::new();
        for doc in yaml_documents(&file) {
            plugin_configs(&doc, &mut found);
        }
        let name = file.strip_prefix(repo_root()).unwrap_or(&file).display().to_string();
        assert!(!found.is_empty(), "{name}: no plugin configuration found");
        configs.extend(found.into_iter().map(|config| (name.clone(), config)));
    }
    configs.push((
        "examples/flows.json (as plugin configuration)".to_string(),
        plugin_config_for(&demo_flows()),
    ));
    configs
}

#[test]
fn every_shipped_plugin_config_satisfies_the_published_schema() {
    let validator = validator();
    let configs = shipped();
    // envoy/envoy.yaml, the WasmPlugin and the EnvoyFilter, and the demo flows.
    assert!(configs.len() >= 4, "found only {configs:?}");
    for (name, config) in &configs {
        let errors = schema_errors(&validator, config);
        assert!(
            errors.is_empty(),
            "{name}: refused by docs/config.schema.json: {errors:?}"
        );
        let json = serde_json::to_vec(config).expect("JSON");
        if let Err(e) = flowgate::config::PluginConfig::parse(&json) {
            panic!("{name}: refused by flowgate: {e}");
        }
    }
}

/// A change to a copy of the demo plugin configuration.
type Mutation = fn(&mut Value);

#[test]
fn the_schema_refuses_what_flowgate_refuses() {
    let validator = validator();
    let bad: [(&str, Mutation); 17] = [
        ("unknown top-level field", |c| c["flow"] = json!([])),
        ("misspelt flow field", |c| c["flows"][0]["tokens"] = json!([])),
        ("digest not hex", |c| {
            c["flows"][0]["token_sha256"][0] = json!("not-a-digest")
        }),
        ("no digest", |c| c["flows"][0]["token_sha256"] = json!([])),
        ("neither a digest nor verify", |c| {
            c["flows"][0].as_object_mut().unwrap().remove("token_sha256");
        }),
        ("unknown verify scheme", |c| {
            c["flows"][0]["verify"] = json!({"scheme": "github-v2", "secrets": ["s"]})
        }),
        ("verify without a scheme", |c| {
            c["flows"][0]["verify"] = json!({"secrets": ["s"]})
        }),
        ("flow id with a slash", |c| c["flows"][0]["id"] = json!("a/b")),
        ("flow id '..'", |c| c["flows"][0]["id"] = json!("..")),
        ("ref_id not an identifier", |c| c["flows"][0]["ref_id"] = json!("1web")),
        ("unknown status", |c| c["flows"][0]["status"] = json!("running")),
        ("lower-case method", |c| c["flows"][0]["methods"] = json!(["post"])),
        ("body limit 0", |c| c["max_body_bytes"] = json!(0)),
        ("response status 204", |c| {
            c["flows"][0]["response"] = json!({"status": 204, "body": "{}"})
        }),
        ("prefix with a dot segment", |c| {
            c["webhook_path_prefix"] = json!("/v1/../x/")
        }),
        ("directory without a cluster", |c| {
            c["directory"] = json!({"path": "/v1/flows"})
        }),
        ("refresh too often", |c| {
            c["directory"] = json!({"cluster": "flow_directory", "refresh_ms": 10})
        }),
    ];
    for (what, change) in bad {
        let mut config = plugin_config_for(&demo_flows());
        change(&mut config);
        assert!(
            !schema_errors(&validator, &config).is_empty(),
            "{what}: the schema accepts it"
        );
        let json = serde_json::to_vec(&config).expect("JSON");
        assert!(
            flowgate::config::PluginConfig::parse(&json).is_err(),
            "{what}: flowgate accepts it"
        );
    }
}
