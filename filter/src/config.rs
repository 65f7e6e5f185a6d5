//! The plugin configuration (contract 2): its JSON read against the schema
//! (`crate::schema`), with defaults applied and its static flows built (`crate::flows`).

use crate::flows::{Flows, FlowsBuilder};
use crate::schema::{
    self, ConfigError, DEFAULT_DIRECTORY_PATH, DEFAULT_MAX_BODY_BYTES, DEFAULT_PREFIX, DEFAULT_REFRESH_MS,
};

/// Where a live flow directory is fetched from (contract 4).
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
        let entry = schema::read_plugin(json)?;
        let max_body_bytes = entry.max_body_bytes.map_or(DEFAULT_MAX_BODY_BYTES, |limit| limit.get());
        let directory = entry.directory.map(|directory| {
            let cluster = directory.cluster.into_string();
            Directory {
                authority: directory.authority.unwrap_or_else(|| cluster.clone()),
                cluster,
                path: directory
                    .path
                    .map_or_else(|| DEFAULT_DIRECTORY_PATH.to_string(), |path| path.into_string()),
                refresh_ms: directory.refresh_ms.map_or(DEFAULT_REFRESH_MS, |ms| ms.get()),
            }
        });
        let flows = FlowsBuilder::new(max_body_bytes).strict(entry.flows.as_deref().unwrap_or_default())?;
        Ok(PluginConfig {
            webhook_path_prefix: entry
                .webhook_path_prefix
                .map_or_else(|| DEFAULT_PREFIX.to_string(), |prefix| prefix.into_string()),
            max_body_bytes,
            flows,
            directory,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::Mode;

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
        let twice = PluginConfig::parse(br#"{"max_body_bytes": 1, "max_body_bytes": 2}"#).unwrap_err();
        assert_eq!(twice.to_string(), "configuration.max_body_bytes: appears twice");
        let missing = problem(serde_json::json!({"flows": [{"id": "f-1", "ref_id": "w", "status": "live"}]}));
        assert_eq!(
            missing,
            "flows[0] (id \"f-1\").token_sha256: is required unless the flow has verify"
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
    fn directory_is_validated() {
        let config = parse(serde_json::json!({"directory": {"cluster": "flow_directory"}})).unwrap();
        assert_eq!(config.directory.unwrap().path, "/v1/flows");
        assert!(
            problem(serde_json::json!({"directory": {"cluster": "c", "refresh_ms": 1}}))
                .starts_with("directory.refresh_ms")
        );
    }
}
