//! Istio packaging (docs/istio.md): every manifest in examples/istio satisfies Istio's published
//! WasmPlugin schema and flowgate's own configuration parser; the EnvoyFilter that sets
//! `allow_on_headers_stop_iteration` agrees with the WasmPlugin and loads in the real Envoy; and
//! scripts/istio-image.sh builds the one-layer image that istio-agent reads.
//!
//! No Kubernetes or Istio runs here: the schema is the CRD's, checked with a JSON Schema validator.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flowgate_e2e::yaml_documents;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
/// Istio names the HTTP filter it generates for a WasmPlugin `<prefix><namespace>.<name>`.
const WASMPLUGIN_FILTER_PREFIX: &str = "extensions.istio.io/wasmplugin/";
/// The CRD's only CEL rule, on `spec` (CEL is not JSON Schema, so `cel_rules_hold` evaluates it).
const ONE_TARGET_RULE: &str =
    "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn istio_dir() -> PathBuf {
    repo_root().join("examples/istio")
}

/// Every document of every manifest directly in examples/istio, with its file name.
fn manifests() -> Vec<(String, Value)> {
    let mut paths: Vec<PathBuf> = fs::read_dir(istio_dir())
        .expect("examples/istio exists")
        .map(|entry| entry.expect("readable directory").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .flat_map(|path| {
            let file = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            yaml_documents(path).into_iter().map(move |doc| (file.clone(), doc))
        })
        .collect()
}

fn the_wasmplugin() -> Value {
    let mut plugins = manifests().into_iter().filter(|(_, doc)| doc["kind"] == "WasmPlugin");
    let (_, plugin) = plugins.next().expect("examples/istio has a WasmPlugin");
    assert!(
        plugins.next().is_none(),
        "these tests expect one WasmPlugin in examples/istio"
    );
    plugin
}

// ---------------------------------------------------------------------------------------------
// The WasmPlugin CRD schema
// ---------------------------------------------------------------------------------------------

/// The CRD's openAPIV3Schema as a JSON Schema, made as strict as the API server: unknown fields
/// are errors (kubectl's strict field validation), `nullable` admits null, and the object root
/// has apiVersion, kind and metadata. Returns the CRD's CEL rules beside it.
fn wasmplugin_schema() -> (Value, Vec<String>) {
    let crd = yaml_documents(&istio_dir().join("schema/wasmplugin-crd.yaml")).remove(0);
    let version = crd["spec"]["versions"]
        .as_array()
        .and_then(|versions| versions.iter().find(|v| v["name"] == "v1alpha1"))
        .expect("the CRD serves v1alpha1");
    let mut schema = version["schema"]["openAPIV3Schema"].clone();
    let mut rules = Vec::new();
    kubernetes_strictness(&mut schema, &mut rules);
    let root = schema.as_object_mut().expect("schema is an object");
    let properties = root["properties"].as_object_mut().expect("root properties");
    properties.insert("apiVersion".into(), json!({"enum": ["extensions.istio.io/v1alpha1"]}));
    properties.insert("kind".into(), json!({"enum": ["WasmPlugin"]}));
    properties.insert(
        "metadata".into(),
        json!({"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}}),
    );
    root.insert("required".into(), json!(["apiVersion", "kind", "metadata", "spec"]));
    (schema, rules)
}

fn kubernetes_strictness(schema: &mut Value, rules: &mut Vec<String>) {
    let Some(map) = schema.as_object_mut() else { return };
    if let Some(Value::Array(validations)) = map.remove("x-kubernetes-validations") {
        rules.extend(
            validations
                .iter()
                .map(|v| v["rule"].as_str().unwrap_or_default().to_string()),
        );
    }
    if map.get("nullable") == Some(&Value::Bool(true)) {
        if let Some(Value::String(kind)) = map.get("type").cloned() {
            map.insert("type".into(), json!([kind, "null"]));
        }
    }
    let keeps_unknown = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if map.contains_key("properties") && !map.contains_key("additionalProperties") && !keeps_unknown {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        properties
            .values_mut()
            .for_each(|child| kubernetes_strictness(child, rules));
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = map.get_mut(key) {
            kubernetes_strictness(child, rules);
        }
    }
}

/// The CEL rules, evaluated by hand; a rule this test does not know fails it.
fn cel_rules_hold(rules: &[String], spec: &Value) -> Result<(), String> {
    for rule in rules {
        assert_eq!(
            rule, ONE_TARGET_RULE,
            "the CRD has a CEL rule this test does not evaluate"
        );
        let targets = ["selector", "targetRef", "targetRefs"]
            .iter()
            .filter(|key| spec.get(**key).is_some())
            .count();
        if targets > 1 {
            return Err("spec: only one of targetRefs or selector can be set".into());
        }
    }
    Ok(())
}

/// Accepted by the CRD schema (as the API server would), else every reason why not.
fn check_wasmplugin(doc: &Value) -> Result<(), String> {
    let (schema, rules) = wasmplugin_schema();
    let validator = jsonschema::draft4::new(&schema).expect("the CRD schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    cel_rules_hold(&rules, &doc["spec"])
}

/// Accepted by flowgate's own parser, as Istio hands it over: pluginConfig serialised to JSON.
fn check_plugin_config(config: &Value) -> Result<(), String> {
    let json = serde_json::to_vec(config).expect("JSON");
    flowgate::config::PluginConfig::parse(&json)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// The EnvoyFilter that sets allow_on_headers_stop_iteration
// ---------------------------------------------------------------------------------------------

/// The EnvoyFilter replaces the WasmPlugin's own filter with the same plugin plus the flag: check
/// that it targets that filter and carries the same module, failure policy and configuration.
/// Returns the Wasm filter config it adds, for Envoy to load.
fn check_stop_iteration_patch(filter: &Value, plugin: &Value) -> Value {
    assert_eq!(filter["apiVersion"], "networking.istio.io/v1alpha3");
    let (namespace, name) = (&plugin["metadata"]["namespace"], &plugin["metadata"]["name"]);
    assert_eq!(
        filter["metadata"]["namespace"], *namespace,
        "same namespace as the WasmPlugin"
    );
    assert_eq!(
        filter["spec"]["workloadSelector"]["labels"], plugin["spec"]["selector"]["matchLabels"],
        "the EnvoyFilter selects the WasmPlugin's workloads"
    );
    let patches = filter["spec"]["configPatches"].as_array().expect("configPatches");
    let [extension, http_filter] = patches.as_slice() else {
        panic!(
            "expected two patches (EXTENSION_CONFIG, HTTP_FILTER), got {}",
            patches.len()
        )
    };
    assert_eq!(extension["applyTo"], "EXTENSION_CONFIG");
    assert_eq!(
        extension["patch"]["operation"], "ADD",
        "Istio applies only ADD to EXTENSION_CONFIG"
    );
    assert_eq!(http_filter["applyTo"], "HTTP_FILTER");
    assert_eq!(http_filter["patch"]["operation"], "REPLACE");
    assert_eq!(extension["match"]["context"], http_filter["match"]["context"]);

    let generated = format!(
        "{WASMPLUGIN_FILTER_PREFIX}{}.{}",
        namespace.as_str().unwrap_or_default(),
        name.as_str().unwrap_or_default()
    );
    let listener = &http_filter["match"]["listener"]["filterChain"]["filter"];
    assert_eq!(listener["name"], "envoy.filters.network.http_connection_manager");
    assert_eq!(
        listener["subFilter"]["name"],
        generated.as_str(),
        "replaces the WasmPlugin's filter"
    );

    let resource = &extension["patch"]["value"];
    let reference = &http_filter["patch"]["value"];
    assert_eq!(
        reference["name"], resource["name"],
        "the filter refers to the added ECDS resource"
    );
    assert_eq!(reference["config_discovery"]["type_urls"], json!([WASM_FILTER_TYPE]));
    assert!(
        reference.get("typed_config").is_none(),
        "the module must come over ECDS (istio-agent pulls it)"
    );

    let wasm = &resource["typed_config"];
    assert_eq!(wasm["@type"], WASM_FILTER_TYPE);
    let config = &wasm["config"];
    assert_eq!(config["allow_on_headers_stop_iteration"], true);
    assert_eq!(plugin["spec"]["failStrategy"], "FAIL_RELOAD");
    assert_eq!(config["failure_policy"], "FAIL_RELOAD");
    assert_eq!(config["root_id"], plugin["spec"]["pluginName"]);
    assert_eq!(
        config["vm_config"]["code"]["remote"]["http_uri"]["uri"],
        plugin["spec"]["url"]
    );
    assert_eq!(config["configuration"]["@type"], STRING_VALUE_TYPE);
    let text = config["configuration"]["value"]
        .as_str()
        .expect("configuration is a JSON string");
    let configuration: Value = serde_json::from_str(text).expect("configuration is JSON");
    assert_eq!(
        configuration, plugin["spec"]["pluginConfig"],
        "the EnvoyFilter's configuration must equal the WasmPlugin's pluginConfig"
    );
    wasm.clone()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn every_istio_manifest_is_valid() {
    let docs = manifests();
    let plugin = the_wasmplugin();
    let mut kinds = Vec::new();
    for (file, doc) in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        match kind {
            "WasmPlugin" => {
                check_wasmplugin(doc).unwrap_or_else(|e| panic!("{file}: rejected by the CRD schema: {e}"));
                check_plugin_config(&doc["spec"]["pluginConfig"])
                    .unwrap_or_else(|e| panic!("{file}: pluginConfig rejected by flowgate: {e}"));
            }
            "EnvoyFilter" => {
                let wasm = check_stop_iteration_patch(doc, &plugin);
                let text = wasm["config"]["configuration"]["value"].as_str().unwrap_or_default();
                flowgate::config::PluginConfig::parse(text.as_bytes())
                    .unwrap_or_else(|e| panic!("{file}: configuration rejected by flowgate: {e}"));
            }
            other => panic!("{file}: no check for kind {other:?}; add one"),
        }
        kinds.push(kind.to_string());
    }
    kinds.sort();
    assert_eq!(kinds, ["EnvoyFilter", "WasmPlugin"]);
}

/// A change to a copy of the example WasmPlugin.
type Mutation = fn(&mut Value);

#[test]
fn crd_schema_rejects_bad_wasmplugins() {
    let plugin = the_wasmplugin();
    check_wasmplugin(&plugin).expect("the example is valid");

    let mutate = |change: Mutation| {
        let mut copy = plugin.clone();
        change(&mut copy);
        check_wasmplugin(&copy)
    };
    let bad: [(&str, Mutation); 7] = [
        ("phase not in the enum", |p| {
            p["spec"]["phase"] = json!("AUTHENTICATION")
        }),
        ("failStrategy not in the enum", |p| {
            p["spec"]["failStrategy"] = json!("FAIL_RESTART")
        }),
        ("misspelt field", |p| p["spec"]["failStratgy"] = json!("FAIL_RELOAD")),
        ("url missing", |p| {
            p["spec"].as_object_mut().map(|s| s.remove("url"));
        }),
        ("sha256 not hex", |p| p["spec"]["sha256"] = json!("sha256:abc")),
        ("port out of range", |p| {
            p["spec"]["match"] = json!([{"mode": "SERVER", "ports": [{"number": 70000}]}])
        }),
        (
            "selector and targetRefs",
            |p| {
                p["spec"]["targetRefs"] =
                    json!([{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "edge"}])
            },
        ),
    ];
    for (what, change) in bad {
        let verdict = mutate(change);
        assert!(verdict.is_err(), "{what}: accepted, but the CRD forbids it");
        eprintln!("{what}: rejected: {}", verdict.unwrap_err());
    }

    // The sidecar variant that wasmplugin.yaml describes in a comment is valid too.
    mutate(|p| {
        p["spec"]["selector"] = json!({"matchLabels": {"app": "flow-executor"}});
        p["spec"]["match"] = json!([{"mode": "SERVER", "ports": [{"number": 8081}]}]);
    })
    .expect("the sidecar variant is valid");
}

#[test]
fn flowgate_rejects_a_bad_plugin_config_in_the_wasmplugin() {
    let mut config = the_wasmplugin()["spec"]["pluginConfig"].clone();
    check_plugin_config(&config).expect("the example is valid");
    config["flows"][0]["token_sha256"][0] = json!("not-a-digest");
    let problem = check_plugin_config(&config).expect_err("a bad digest is refused");
    assert!(problem.contains("token_sha256[0]"), "names the field: {problem}");
}

/// `envoy --mode validate` builds the filter from the EnvoyFilter's Wasm config (the module read
/// from a local file, as istio-agent hands it to Envoy) and runs flowgate's on_configure.
#[test]
fn envoyfilter_wasm_config_loads_in_envoy() {
    let (Some(envoy), Some(module)) = (envoy_binary(), built_wasm()) else {
        return;
    };
    let plugin = the_wasmplugin();
    let (_, filter) = manifests()
        .into_iter()
        .find(|(_, doc)| doc["kind"] == "EnvoyFilter")
        .expect("examples/istio has the EnvoyFilter");
    let wasm = check_stop_iteration_patch(&filter, &plugin);
    let scratch = Scratch::new("envoy");

    let ok = validate_in_envoy(&envoy, &scratch, &module, &wasm);
    assert!(
        ok.status.success(),
        "Envoy refused the config:\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // The check has teeth: a configuration flowgate refuses fails validation.
    let mut broken = wasm.clone();
    broken["config"]["configuration"]["value"] = json!(r#"{"flows": [{"id": "f-1"}]}"#);
    let refused = validate_in_envoy(&envoy, &scratch, &module, &broken);
    assert!(
        !refused.status.success(),
        "Envoy accepted a configuration flowgate refuses"
    );
}

fn validate_in_envoy(envoy: &Path, scratch: &Scratch, module: &Path, wasm: &Value) -> Output {
    let mut wasm = wasm.clone();
    wasm["config"]["vm_config"]["code"] = json!({"local": {"filename": module}});
    let configuration: Value =
        serde_json::from_str(wasm["config"]["configuration"]["value"].as_str().unwrap_or("{}")).unwrap_or_default();
    let mut clusters = Vec::new();
    if let Some(cluster) = configuration["directory"]["cluster"].as_str() {
        clusters.push(json!({
            "name": cluster, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [{"endpoint":
                {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8081}}}}]}]}
        }));
    }
    let bootstrap = json!({"static_resources": {
        "listeners": [{
            "name": "gateway",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "gateway",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                    "http_filters": [
                        {"name": "flowgate", "typed_config": wasm},
                        {"name": "envoy.filters.http.router", "typed_config":
                            {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                    ]
                }
            }]}]
        }],
        "clusters": clusters
    }});
    let path = scratch.path().join("envoy.json");
    fs::write(&path, serde_json::to_vec_pretty(&bootstrap).expect("JSON")).expect("write bootstrap");
    Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy")
}

// ---------------------------------------------------------------------------------------------
// The OCI image
// ---------------------------------------------------------------------------------------------

#[test]
fn istio_image_is_one_layer_holding_plugin_wasm() {
    let Some(built) = built_wasm() else { return };
    let scratch = Scratch::new("image");
    // A private copy: another build may replace the wasm while this test runs.
    let module = scratch.path().join("flowgate.wasm");
    fs::copy(&built, &module).expect("copy the wasm");
    let wasm = fs::read(&module).expect("read the wasm");

    let layout = scratch.path().join("image");
    build_image(&module, &layout);
    let index = read_json(&layout.join("index.json"));
    assert_eq!(
        read_json(&layout.join("oci-layout")),
        json!({"imageLayoutVersion": "1.0.0"})
    );
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    let [descriptor] = index["manifests"].as_array().expect("manifests").as_slice() else {
        panic!("the layout must hold exactly one image: {index}")
    };
    assert_eq!(descriptor["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        descriptor["annotations"]["org.opencontainers.image.ref.name"],
        flowgate_version()
    );

    let manifest: Value = serde_json::from_slice(&blob(&layout, descriptor)).expect("manifest JSON");
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let config: Value = serde_json::from_slice(&blob(&layout, &manifest["config"])).expect("config JSON");

    let [layer] = manifest["layers"].as_array().expect("layers").as_slice() else {
        panic!("Istio's compat variant has exactly one layer: {manifest}")
    };
    assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let layer_path = scratch.path().join("layer.tar.gz");
    fs::write(&layer_path, blob(&layout, layer)).expect("write layer");

    let tar = run(Command::new("gzip").arg("-dc").arg(&layer_path));
    assert_eq!(
        config["rootfs"]["diff_ids"],
        json!([format!("sha256:{}", sha256_hex(&tar))])
    );
    let entries = String::from_utf8(run(Command::new("tar").arg("-tzf").arg(&layer_path))).expect("UTF-8");
    assert_eq!(entries.lines().collect::<Vec<_>>(), ["plugin.wasm"]);
    let plugin = run(Command::new("tar").arg("-xzOf").arg(&layer_path).arg("plugin.wasm"));
    assert!(plugin == wasm, "plugin.wasm differs from the built flowgate.wasm");

    // The layout as one file, and reproducible: the digest to pin is known before any push.
    let listing =
        String::from_utf8(run(Command::new("tar").arg("-tf").arg(layout.with_extension("tar")))).expect("UTF-8");
    assert!(listing.lines().any(|line| line == "./index.json"), "{listing}");
    let again = scratch.path().join("again");
    build_image(&module, &again);
    assert_eq!(
        fs::read(again.join("index.json")).ok(),
        fs::read(layout.join("index.json")).ok()
    );
}

fn build_image(module: &Path, out: &Path) {
    run(Command::new(repo_root().join("scripts/istio-image.sh"))
        .arg(module)
        .arg(out)
        .env_remove("FLOWGATE_IMAGE_TAG"));
}

/// A blob of the layout, checked against its descriptor's digest and size.
fn blob(layout: &Path, descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().expect("digest");
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    let bytes = fs::read(layout.join("blobs/sha256").join(hex)).unwrap_or_else(|e| panic!("blob {digest}: {e}"));
    assert_eq!(sha256_hex(&bytes), hex, "blob {digest} has another digest");
    assert_eq!(descriptor["size"], bytes.len(), "blob {digest} has another size");
    bytes
}

fn flowgate_version() -> String {
    let manifest = fs::read_to_string(repo_root().join("filter/Cargo.toml")).expect("filter/Cargo.toml");
    manifest
        .lines()
        .find_map(|line| line.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("flowgate has a version")
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn built_wasm() -> Option<PathBuf> {
    let path = repo_root().join("target/wasm32-wasip1/release/flowgate.wasm");
    if path.exists() {
        return Some(path);
    }
    eprintln!(
        "SKIPPED: {} is not built (cargo build --release --target wasm32-wasip1 -p flowgate)",
        path.display()
    );
    None
}

/// `$FLOWGATE_ENVOY`, else the project's `.venv/bin/envoy` (scripts/setup.sh installs it).
fn envoy_binary() -> Option<PathBuf> {
    let path = std::env::var_os("FLOWGATE_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"));
    if path.exists() {
        return Some(path);
    }
    eprintln!("SKIPPED: no Envoy at {} (scripts/setup.sh installs it)", path.display());
    None
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a command that must succeed; returns its stdout.
fn run(command: &mut Command) -> Vec<u8> {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A directory of its own under the system temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("flowgate-istio-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create scratch dir");
        Scratch(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
