//! What is measured: the four listeners, the scenarios, and the flow sets each listener is
//! configured with (flowgate's plugin configuration and the Lua peer's token table).

use std::fmt::Write as _;

use flowgate_testkit::executor::sha256_hex;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Every bench flow accepts bodies up to this size, so the 1 MiB scenario is admitted.
pub const MAX_BODY_BYTES: u64 = 2 * 1024 * 1024;

/// The four ways through the same Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Envoy's router alone: the limit.
    Plain,
    /// `envoy.filters.http.lua` running bench/lua/gate.lua.
    Lua,
    /// `envoy.filters.http.wasm` running bench/empty-filter (every callback continues): the
    /// floor any Rust proxy-wasm filter pays.
    Empty,
    /// `envoy.filters.http.wasm` running flowgate.wasm on the webhook prefix only, as the
    /// shipped envoy/envoy.yaml routes.
    Flowgate,
}

impl Listener {
    /// In this order in every table, and as the rounds' rotation starts.
    pub const ALL: [Listener; 4] = [Listener::Plain, Listener::Lua, Listener::Empty, Listener::Flowgate];
    pub const COUNT: usize = Listener::ALL.len();

    pub fn name(self) -> &'static str {
        match self {
            Listener::Plain => "plain",
            Listener::Lua => "lua",
            Listener::Empty => "empty",
            Listener::Flowgate => "flowgate",
        }
    }

    /// Its place in `ALL` (and in every per-listener array).
    pub fn index(self) -> usize {
        match self {
            Listener::Plain => 0,
            Listener::Lua => 1,
            Listener::Empty => 2,
            Listener::Flowgate => 3,
        }
    }

    /// Whether the listener answers every request from the upstream (no gate on its path).
    pub fn ungated(self) -> bool {
        matches!(self, Listener::Plain | Listener::Empty)
    }
}

/// Which goals a scenario's flowgate numbers are held to (issue 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Forwarded to the executor: flowgate >= 1.0x Lua and >= 0.9x the empty filter, paced
    /// p99 <= Lua's.
    Admitted,
    /// Answered at the edge: flowgate >= 2x Lua.
    Rejected,
    /// Not a webhook: flowgate is disabled on its route, >= 0.98x plain.
    Passed,
}

/// One kind of request, sent identically to every listener.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    /// Flows configured (the demo flows plus generated ones).
    pub flows: usize,
    pub path: &'static str,
    /// Whether the request carries the flow's valid token (else a wrong one of the same shape).
    pub valid_token: bool,
    /// Request body size; `None` is the seed's body.
    pub body_bytes: Option<usize>,
    /// What the gated listeners (Lua, flowgate) answer; plain Envoy and the empty filter always
    /// get the upstream's answer.
    pub status: u16,
    pub class: Class,
    /// What else the request carries (a signature, a delivery id).
    pub extra: Extra,
}

/// Headers beyond the bearer token: what the scenarios of signed and controlled flows send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    None,
    /// `X-Hub-Signature-256` over the body with [`GITHUB_SECRET`] (flowgate verifies it; the
    /// Lua peer checks the same flow's bearer token instead).
    GithubSignature,
    /// A new `X-Delivery-Id` on every request (every delivery is a first one).
    UniqueDeliveryId,
}

/// The secret of the bench's GitHub-signed flow (a public test value).
pub const GITHUB_SECRET: &str = "bench-github-secret";

/// The webhook prefix: the only route of the flowgate listener with flowgate on.
pub const WEBHOOK_PREFIX: &str = "/v1/flow-webhook/";
const SYNC: &str = "/v1/flow-webhook/f-1001";
const PAUSED: &str = "/v1/flow-webhook/f-1002";
const ASYNC: &str = "/v1/flow-webhook/f-1003";
const SIGNED: &str = "/v1/flow-webhook/f-signed";
const DEDUPE: &str = "/v1/flow-webhook/f-dedupe";
const LIMITED: &str = "/v1/flow-webhook/f-limited";

/// The full scenario list, grouped by flow count (one Envoy per group).
#[rustfmt::skip]
pub fn scenarios() -> Vec<Scenario> {
    let s = |name, what, flows, path, valid_token, body_bytes, status, class| Scenario {
        name, what, flows, path, valid_token, body_bytes, status, class, extra: Extra::None,
    };
    let with = |scenario: Scenario, extra| Scenario { extra, ..scenario };
    use Class::*;
    vec![
        s("sync", "admitted sync, seed template rendered", 10, SYNC, true, None, 200, Admitted),
        s("async", "admitted async, run-scheduled envelope", 10, ASYNC, true, None, 200, Admitted),
        s("reject-401", "wrong bearer token", 10, SYNC, false, None, 401, Rejected),
        s("paused", "paused flow, valid token", 10, PAUSED, true, None, 200, Rejected),
        s("401-64k", "wrong token, 64 KiB body", 10, SYNC, false, Some(64 * 1024), 401, Rejected),
        s("401-1m", "wrong token, 1 MiB body", 10, SYNC, false, Some(1024 * 1024), 401, Rejected),
        s("pass", "not a webhook, flowgate off on its route", 10, "/healthz/other", true, None, 200, Passed),
        s("body-1k", "sync, 1 KiB JSON body", 10, SYNC, true, Some(1024), 200, Admitted),
        s("body-64k", "sync, 64 KiB JSON body", 10, SYNC, true, Some(64 * 1024), 200, Admitted),
        s("body-1m", "sync, 1 MiB JSON body", 10, SYNC, true, Some(1024 * 1024), 200, Admitted),
        with(s("signed", "body-1k, signed like GitHub (verify; Lua checks a bearer token)", 10, SIGNED, true, Some(1024), 200, Admitted), Extra::GithubSignature),
        with(s("dedupe", "body-1k, dedupe on a new X-Delivery-Id each time", 10, DEDUPE, true, Some(1024), 200, Admitted), Extra::UniqueDeliveryId),
        s("rate-limit", "body-1k, under a rate limit (10^6/s)", 10, LIMITED, true, Some(1024), 200, Admitted),
        s("sync-10k", "sync, 10,000 flows configured", 10_000, SYNC, true, None, 200, Admitted),
        s("401-10k", "wrong token, 10,000 flows", 10_000, SYNC, false, None, 401, Rejected),
        s("sync-100k", "sync, 100,000 flows configured", 100_000, SYNC, true, None, 200, Admitted),
        s("401-100k", "wrong token, 100,000 flows", 100_000, SYNC, false, None, 401, Rejected),
    ]
}

/// The seed's request body, or a JSON object of exactly `size` bytes with the same fields.
pub fn request_body(size: Option<usize>) -> Vec<u8> {
    const SEED: &str = r#"{"company_id": 123456, "user_id": 789123}"#;
    let Some(size) = size else {
        return SEED.as_bytes().to_vec();
    };
    let head = r#"{"company_id": 123456, "user_id": 789123, "pad": ""#;
    let tail = r#""}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut body = String::with_capacity(size);
    body.push_str(head);
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str(tail);
    body.into_bytes()
}

/// The demo flows of examples/flows.json with their public demo tokens.
pub struct Demo {
    flows: Vec<Value>,
    tokens: Vec<Vec<String>>,
}

impl Demo {
    pub fn parse(text: &str) -> Result<Demo, String> {
        let root: Value = serde_json::from_str(text).map_err(|e| format!("examples/flows.json: {e}"))?;
        let flows = root["flows"]
            .as_array()
            .ok_or("examples/flows.json: no `flows` array")?;
        let mut out = Demo {
            flows: Vec::new(),
            tokens: Vec::new(),
        };
        for flow in flows {
            let mut flow = flow.clone();
            let object = flow
                .as_object_mut()
                .ok_or("examples/flows.json: a flow is not an object")?;
            // Executor-only fields; the plugin configuration refuses unknown keys.
            object.remove("steps");
            object.remove("run_ms");
            object.insert("max_body_bytes".into(), json!(MAX_BODY_BYTES));
            let id = object["id"].as_str().unwrap_or_default().to_string();
            let tokens: Vec<String> = root["_demo_tokens"][&id]
                .as_array()
                .ok_or(format!("examples/flows.json: no demo token for {id}"))?
                .iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect();
            out.flows.push(flow);
            out.tokens.push(tokens);
        }
        Ok(out)
    }

    /// The first demo token of a flow.
    pub fn token(&self, flow_id: &str) -> Option<&str> {
        // The signed and controlled flows are copies of the first demo flow, with its token.
        let index = self.flows.iter().position(|f| f["id"] == flow_id).unwrap_or(0);
        self.tokens.get(index)?.first().map(String::as_str)
    }

    /// `count` flows: the demo flows, copies of f-1001 signed or with delivery controls (its
    /// token for the Lua peer), then copies of the demo flows (cycling) with their own ids and tokens.
    fn flows(&self, count: usize) -> Vec<(Value, Vec<String>)> {
        let mut flows = self.generated(count);
        if let (Some(seed), Some(tokens)) = (self.flows.first(), self.tokens.first()) {
            let controlled = |id: &str, field: &str, value: Value| {
                let mut flow = seed.clone();
                flow["id"] = json!(id);
                flow[field] = value;
                if field == "verify" {
                    if let Some(flow) = flow.as_object_mut() {
                        flow.remove("token_sha256");
                    }
                }
                (flow, tokens.clone())
            };
            let extra = [
                controlled(
                    "f-signed",
                    "verify",
                    json!({"scheme": "github", "secrets": [GITHUB_SECRET]}),
                ),
                controlled(
                    "f-dedupe",
                    "dedupe",
                    json!({"key": "header:X-Delivery-Id", "window_s": 60}),
                ),
                controlled("f-limited", "rate_limit", json!({"requests_per_second": 1_000_000})),
            ];
            let at = self.flows.len().min(flows.len());
            flows.splice(at..at, extra);
        }
        flows
    }

    fn generated(&self, count: usize) -> Vec<(Value, Vec<String>)> {
        (0..count.max(self.flows.len()))
            .map(|i| {
                let shape = i % self.flows.len();
                let (flow, tokens) = (&self.flows[shape], &self.tokens[shape]);
                if i < self.flows.len() {
                    return (flow.clone(), tokens.clone());
                }
                let mut flow = flow.clone();
                flow["id"] = json!(format!("bench-{i:06}"));
                let tokens: Vec<String> = (0..tokens.len())
                    .map(|k| format!("bench-{i:06}-{k}-{}", &hex(&Sha256::digest(format!("{i}/{k}")))[..40]))
                    .collect();
                flow["token_sha256"] = json!(tokens.iter().map(|t| sha256_hex(t)).collect::<Vec<_>>());
                (flow, tokens)
            })
            .collect()
    }

    /// flowgate's plugin configuration (contract 2) with `count` flows.
    pub fn plugin_config(&self, count: usize) -> String {
        let flows: Vec<Value> = self.flows(count).into_iter().map(|(flow, _)| flow).collect();
        json!({
            "webhook_path_prefix": WEBHOOK_PREFIX,
            "max_body_bytes": MAX_BODY_BYTES,
            "flows": flows,
        })
        .to_string()
    }

    /// The Lua peer's flow table with `count` flows: plain tokens, chunked so that no Lua
    /// function holds more constants than LuaJIT allows.
    pub fn lua_table(&self, count: usize) -> String {
        let mut lua = String::from("FLOWS = {}\n");
        for (n, (flow, tokens)) in self.flows(count).iter().enumerate() {
            if n % 2000 == 0 {
                if n > 0 {
                    lua.push_str("end)(FLOWS)\n");
                }
                // The `;` keeps Lua from reading `(FLOWS)(function ...)` as one call chain.
                lua.push_str(";(function(F)\n");
            }
            let token_set: String = tokens.iter().map(|t| format!("[{t:?}]=true,")).collect();
            let _ = writeln!(
                lua,
                "F[{:?}]={{ref={:?},paused={},async={},template={},max={},tokens={{{token_set}}}}}",
                flow["id"].as_str().unwrap_or_default(),
                flow["ref_id"].as_str().unwrap_or_default(),
                flow["status"] == "paused",
                flow["async"] == true,
                flow.get("response").is_some(),
                MAX_BODY_BYTES,
            );
        }
        lua.push_str("end)(FLOWS)\n");
        lua
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The wait between requests on each of `connections` that offers half of `slowest_rps`
/// (whole milliseconds, as wrk takes them; at least 1).
pub fn pacing_delay_ms(connections: u32, slowest_rps: f64) -> u32 {
    if slowest_rps.is_nan() || slowest_rps <= 0.0 {
        return 1000;
    }
    let ms = (f64::from(connections) * 1000.0 / (slowest_rps / 2.0)).ceil();
    ms.clamp(1.0, 1000.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = include_str!("../../examples/flows.json");

    #[test]
    fn bodies_have_the_asked_size_and_parse() {
        for size in [1024, 64 * 1024, 1024 * 1024] {
            let body = request_body(Some(size));
            assert_eq!(body.len(), size);
            let value: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(value["company_id"], 123456);
        }
    }

    #[test]
    fn generated_flows_are_distinct_and_their_digests_match_their_tokens() {
        let demo = Demo::parse(DEMO).unwrap();
        let config: Value = serde_json::from_str(&demo.plugin_config(12)).unwrap();
        let flows = config["flows"].as_array().unwrap();
        // The 12 asked for, plus the signed and controlled copies of f-1001.
        assert_eq!(flows.len(), 15);
        let ids: std::collections::HashSet<_> = flows.iter().map(|f| f["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 15);
        let signed = flows.iter().find(|f| f["id"] == "f-signed").unwrap();
        assert!(signed.get("token_sha256").is_none() && signed["verify"]["scheme"] == "github");
        let generated = demo.flows(12);
        assert_eq!(generated[14].0["token_sha256"][0], sha256_hex(&generated[14].1[0]));
        assert_eq!(flows[0]["token_sha256"][0], sha256_hex(demo.token("f-1001").unwrap()));
    }

    #[test]
    fn lua_table_closes_every_chunk() {
        let demo = Demo::parse(DEMO).unwrap();
        let lua = demo.lua_table(4001);
        assert_eq!(lua.matches("(function(F)").count(), 3);
        assert_eq!(lua.matches("end)(FLOWS)").count(), 3);
        assert!(lua.contains(r#"F["f-1002"]={ref="web2",paused=true,"#));
    }

    #[test]
    fn pacing_offers_half_the_slowest_rate() {
        // 16 connections, 4,000 req/s at the slowest: 2,000 req/s offered, 8 ms apart each.
        assert_eq!(pacing_delay_ms(16, 4000.0), 8);
        assert_eq!(pacing_delay_ms(16, 3700.0), 9);
        assert_eq!(pacing_delay_ms(16, 0.0), 1000);
        assert_eq!(pacing_delay_ms(1, 1e9), 1);
    }
}
