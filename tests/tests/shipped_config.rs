//! The shipped Envoy config stays in step with the demo flows and with the harness's bootstrap.

use flowgate_e2e::*;
use serde_json::Value;

fn shipped_config() -> String {
    let path = repo_root().join("envoy/envoy.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The plugin JSON of envoy/envoy.yaml: the block scalar after `value: |`.
fn shipped_plugin_config() -> Value {
    let yaml = shipped_config();
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "value: |");
    lines
        .next()
        .expect("envoy/envoy.yaml has a `value: |` plugin configuration");
    let block: Vec<&str> = lines.take_while(|l| l.starts_with("                    ")).collect();
    serde_json::from_str(&block.join("\n")).expect("the plugin configuration in envoy/envoy.yaml is JSON")
}

#[test]
fn the_shipped_plugin_config_carries_the_demo_flows_and_the_live_directory() {
    let mut shipped = shipped_plugin_config();
    let directory = shipped.as_object_mut().and_then(|config| config.remove("directory"));
    assert_eq!(
        shipped,
        plugin_config_for(&demo_flows()),
        "envoy/envoy.yaml's plugin flows must be the plugin-facing fields of examples/flows.json"
    );
    let directory = directory.expect("the demo follows the executor's live flow directory");
    assert_eq!(directory["cluster"], "flow_directory");
    assert_eq!(directory["path"], "/v1/flows");
}

#[test]
fn the_shipped_filter_settings_are_the_ones_the_tests_run_with() {
    let yaml = shipped_config();
    for setting in [
        "failure_policy: FAIL_RELOAD",
        "allow_on_headers_stop_iteration: true",
        "vm_id: flowgate",
        "root_id: flowgate",
        "runtime: envoy.wasm.runtime.v8",
        "codec_type: AUTO",
        &format!("per_connection_buffer_limit_bytes: {BUFFER_LIMIT_BYTES}"),
        "filename: target/wasm32-wasip1/release/flowgate.wasm",
    ] {
        assert!(yaml.contains(setting), "envoy/envoy.yaml lacks `{setting}`");
    }
    let bootstrap = envoy_bootstrap(&EnvoyOptions::new(Value::Null, 1)).to_string();
    for setting in [
        r#""failure_policy":"FAIL_RELOAD""#,
        r#""allow_on_headers_stop_iteration":true"#,
        r#""vm_id":"flowgate""#,
        r#""codec_type":"AUTO""#,
    ] {
        assert!(bootstrap.contains(setting), "the harness bootstrap lacks {setting}");
    }
}
