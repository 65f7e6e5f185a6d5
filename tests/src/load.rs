//! Load through Envoy + flowgate with `wrk` (`tests/load/mixed.lua`), and judging every answer it
//! got against the contract (contract 1). Used by `tests/tests/faults_under_load.rs` and
//! the soak (`src/bin/soak.rs`, `scripts/soak.sh`).
//!
//! The Lua script counts responses per *signature* (kind, status, content-type, retry-after,
//! www-authenticate, body with run ids blanked), so a run of any length summarises into a few
//! lines, and every distinct answer is judged here.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::{demo_token, repo_root, Response, Stats, TempDir};
pub use crate::{proc_status_kib, process_alive, server_info, ServerInfo};

/// The paused reply of the seed, byte for byte (contract 1).
pub const PAUSED_BODY: &str = r#"{"status":200,"error":"biz_logic","message":"Flow status is `paused`. Unpause to run this flow using a webhook","data":null}"#;
/// The request body every webhook kind sends (company 123456: the seed template renders "myResult").
pub const WEBHOOK_BODY: &str = r#"{"company_id": 123456, "user_id": 789123}"#;
/// What the seed template renders for [`WEBHOOK_BODY`].
pub const SEED_RENDERED: &str = r#"{"valid": "myResult"}"#;
/// A token no flow has (long, like a real one).
pub const WRONG_TOKEN: &str = "wrong-token-5d0c1e9a7b3f2d8c4a6e0b9f1d3c7a5e8b2f4d6c0a9e1b3d";

// ---------------------------------------------------------------------------------------------
// Request kinds
// ---------------------------------------------------------------------------------------------

/// One kind of request wrk sends (a line of the Lua script's spec file).
#[derive(Clone, Debug)]
pub struct Kind {
    pub name: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Kind {
    fn webhook(name: &str, flow_id: &str, token: &str) -> Kind {
        Kind {
            name: name.into(),
            method: "POST".into(),
            path: format!("/v1/flow-webhook/{flow_id}"),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("authorization".into(), format!("Bearer {token}")),
            ],
            body: WEBHOOK_BODY.into(),
        }
    }

    /// `sync`: the seed's templated sync flow `f-1001` (renders [`SEED_RENDERED`]).
    pub fn sync() -> Kind {
        Kind::webhook("sync", "f-1001", &demo_token("f-1001", 0))
    }

    /// `async`: the demo async flow `f-1003` (default acknowledgement envelope).
    pub fn async_demo() -> Kind {
        Kind::webhook("async", "f-1003", &demo_token("f-1003", 0))
    }

    /// `unauthorized`: `f-1001` with a wrong token.
    pub fn unauthorized() -> Kind {
        Kind::webhook("unauthorized", "f-1001", WRONG_TOKEN)
    }

    /// `paused`: the paused demo flow `f-1002` with its valid token.
    pub fn paused() -> Kind {
        Kind::webhook("paused", "f-1002", &demo_token("f-1002", 0))
    }

    /// `other`: a request outside the webhook prefix (the executor answers 404 to it).
    pub fn other() -> Kind {
        Kind {
            name: "other".into(),
            method: "GET".into(),
            path: "/api/status?probe=1".into(),
            headers: vec![],
            body: String::new(),
        }
    }

    fn spec_line(&self) -> String {
        let mut fields = vec![
            self.name.clone(),
            self.method.clone(),
            self.path.clone(),
            self.body.clone(),
        ];
        fields.extend(self.headers.iter().map(|(n, v)| format!("{n}: {v}")));
        for field in &fields {
            assert!(
                !field.contains(['\t', '\n']),
                "a load spec field may not hold tabs or newlines: {field:?}"
            );
        }
        fields.join("\t")
    }
}

// ---------------------------------------------------------------------------------------------
// wrk
// ---------------------------------------------------------------------------------------------

/// `wrk` on PATH; panics with how to install it when it is missing.
pub fn wrk_binary() -> PathBuf {
    let found = Command::new("wrk")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match found {
        Ok(_) => PathBuf::from("wrk"),
        Err(e) => panic!(
            "wrk is needed to drive the load ({e}). Install it with `scripts/setup.sh --bench` \
             (Debian/Ubuntu: `apt-get install wrk`)"
        ),
    }
}

/// How wrk's threads share the kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// Thread i sends only kind i: each answer is judged against its own kind.
    PerThread,
    /// Every thread cycles through all kinds; answers are recorded as kind `mixed`.
    Rotate,
}

/// What wrk was told to do.
#[derive(Clone, Debug)]
pub struct WrkOptions {
    pub threads: u32,
    pub connections: u32,
    /// Upper bound: wrk stops by itself after this long unless [`Wrk::stop`] comes first.
    pub duration: Duration,
    /// Pause before each request on a connection (0: closed loop, as fast as answers come).
    pub delay_ms: u32,
    pub mix: Mix,
}

/// A running wrk.
pub struct Wrk {
    child: Option<Child>,
    dir: TempDir,
    started: Instant,
}

/// wrk's summary of a run (see tests/load/mixed.lua).
#[derive(Clone, Debug, Deserialize)]
pub struct WrkSummary {
    pub requests: u64,
    pub duration_us: u64,
    pub bytes: u64,
    pub errors: WrkErrors,
    pub latency_us: Latency,
    pub sent: BTreeMap<String, u64>,
    pub responses: Vec<Signature>,
    /// Answers not counted because there were too many distinct signatures (judged as failures).
    pub distinct_overflow: u64,
    /// wrk's own report (stdout).
    #[serde(skip)]
    pub report: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct WrkErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    /// Answers with status >= 400 (not an error here: 401s and faults are expected).
    pub status: u64,
    pub timeout: u64,
}

impl WrkErrors {
    /// Socket-level failures: a request that got no answer at all.
    pub fn socket(&self) -> u64 {
        self.connect + self.read + self.write
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

/// One distinct answer and how often it came.
#[derive(Clone, Debug, Deserialize)]
pub struct Signature {
    pub kind: String,
    pub status: u16,
    pub content_type: String,
    pub retry_after: String,
    pub www_authenticate: String,
    pub body: String,
    pub count: u64,
}

impl WrkSummary {
    /// Requests per second over the run.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }
}

impl Wrk {
    /// Starts wrk against `http://127.0.0.1:{port}` with these kinds.
    pub fn start(port: u16, kinds: &[Kind], opts: &WrkOptions) -> Wrk {
        let wrk = wrk_binary();
        let dir = TempDir::new("wrk");
        let spec = dir.path().join("spec.tsv");
        let lines: Vec<String> = kinds.iter().map(Kind::spec_line).collect();
        fs::write(&spec, lines.join("\n") + "\n").expect("write the load spec");
        let stdout = fs::File::create(dir.path().join("wrk.out")).expect("create wrk.out");
        let stderr = fs::File::create(dir.path().join("wrk.err")).expect("create wrk.err");
        let child = Command::new(wrk)
            .arg("-t")
            .arg(opts.threads.to_string())
            .arg("-c")
            .arg(opts.connections.max(opts.threads).to_string())
            .arg("-d")
            .arg(format!("{}s", opts.duration.as_secs().max(1)))
            // Requests slower than this count as wrk "timeouts" (reported, not fatal): far above
            // any route timeout used here.
            .args(["--timeout", "30s", "--latency", "-s"])
            .arg(repo_root().join("tests/load/mixed.lua"))
            .arg(format!("http://127.0.0.1:{port}"))
            .env("LOAD_SPEC", &spec)
            .env(
                "LOAD_MODE",
                match opts.mix {
                    Mix::PerThread => "per-thread",
                    Mix::Rotate => "rotate",
                },
            )
            .env("LOAD_OUT", dir.path().join("summary.json"))
            .env("LOAD_DELAY_MS", opts.delay_ms.to_string())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn wrk");
        Wrk {
            child: Some(child),
            dir,
            started: Instant::now(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether wrk is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops wrk now (SIGINT: it finishes like at the end of its duration) and returns its summary.
    pub fn stop(mut self) -> WrkSummary {
        if self.running() {
            if let Some(child) = &self.child {
                let _ = Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
            }
        }
        self.finish(Duration::from_secs(60))
    }

    /// Waits for wrk to finish its duration (at most `within` more) and returns its summary.
    pub fn wait(self, within: Duration) -> WrkSummary {
        self.finish(within)
    }

    fn finish(mut self, within: Duration) -> WrkSummary {
        let mut child = self.child.take().expect("wrk was started");
        let deadline = Instant::now() + within;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wrk did not finish within {within:?}: {}", self.stderr());
            }
            sleep(Duration::from_millis(50));
        };
        let report = fs::read_to_string(self.dir.path().join("wrk.out")).unwrap_or_default();
        assert!(status.success(), "wrk failed ({status}):\n{report}\n{}", self.stderr());
        let path = self.dir.path().join("summary.json");
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("wrk wrote no summary ({e}):\n{report}\n{}", self.stderr()));
        let mut summary: WrkSummary = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("wrk's summary is not what mixed.lua writes ({e}):\n{text}"));
        summary.report = report;
        summary
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("wrk.err")).unwrap_or_default()
    }
}

impl Drop for Wrk {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Judging answers
// ---------------------------------------------------------------------------------------------

/// The parts of an answer that are judged.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    pub status: u16,
    pub content_type: &'a str,
    /// Empty when absent.
    pub retry_after: &'a str,
    /// Empty when absent.
    pub www_authenticate: &'a str,
    pub body: &'a str,
}

impl<'a> Answer<'a> {
    pub fn of_signature(s: &'a Signature) -> Answer<'a> {
        Answer {
            status: s.status,
            content_type: &s.content_type,
            retry_after: &s.retry_after,
            www_authenticate: &s.www_authenticate,
            body: &s.body,
        }
    }

    /// `body` must be the response's text (kept by the caller).
    pub fn of_response(r: &'a Response, body: &'a str) -> Answer<'a> {
        Answer {
            status: r.status,
            content_type: r.header("content-type").unwrap_or_default(),
            retry_after: r.header("retry-after").unwrap_or_default(),
            www_authenticate: r.header("www-authenticate").unwrap_or_default(),
            body,
        }
    }
}

/// Bodies Envoy's router writes itself; a webhook sender must never see one (flowgate turns
/// them into envelopes), a non-webhook request may.
pub const RAW_ENVOY_BODIES: [&str; 4] = [
    "no healthy upstream",
    "upstream connect error",
    "upstream request timeout",
    "upstream reset",
];

pub fn is_raw_envoy_reply(body: &str) -> bool {
    RAW_ENVOY_BODIES.iter().any(|raw| body.starts_with(raw))
}

/// Parses an envelope: JSON content type, exactly `status`/`error`/`message`/`data`, `status`
/// equal to the HTTP status. Returns (error code, data).
pub fn envelope_of(a: &Answer) -> Result<(Option<String>, Value), String> {
    if is_raw_envoy_reply(a.body) {
        return Err(format!("a raw Envoy reply, not an envelope: {} {:?}", a.status, a.body));
    }
    if !a.content_type.starts_with("application/json") {
        return Err(format!(
            "content-type {:?} is not application/json ({} {:?})",
            a.content_type, a.status, a.body
        ));
    }
    let value: Value =
        serde_json::from_str(a.body).map_err(|e| format!("body is not JSON ({e}): {} {:?}", a.status, a.body))?;
    let object = value
        .as_object()
        .ok_or_else(|| format!("envelope is not an object: {value}"))?;
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != ["data", "error", "message", "status"] {
        return Err(format!("envelope keys are {keys:?}: {value}"));
    }
    if object["status"].as_u64() != Some(u64::from(a.status)) {
        return Err(format!("envelope status field differs from HTTP {}: {value}", a.status));
    }
    if !object["message"].is_string() {
        return Err(format!("envelope message is not a string: {value}"));
    }
    let error = match &object["error"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => return Err(format!("envelope error is {other}: {value}")),
    };
    Ok((error, object["data"].clone()))
}

/// A reply flowgate makes when the executor fails (contract 1): 502 `executor_error`
/// with `data.upstream_status`, 503 `executor_unavailable` with `Retry-After` (positive seconds),
/// 504 `executor_timeout`. Returns a label such as `503 executor_unavailable`.
pub fn executor_fault(a: &Answer) -> Result<String, String> {
    let (error, data) = envelope_of(a)?;
    let expected = match a.status {
        502 => "executor_error",
        503 => "executor_unavailable",
        504 => "executor_timeout",
        other => return Err(format!("status {other} is not an executor fault reply: {:?}", a.body)),
    };
    if error.as_deref() != Some(expected) {
        return Err(format!(
            "{} with error {error:?}, expected {expected:?}: {:?}",
            a.status, a.body
        ));
    }
    match a.status {
        502 => {
            let ok = data
                .as_object()
                .is_some_and(|d| d.len() == 1 && d["upstream_status"].is_u64());
            if !ok {
                return Err(format!("502 without data.upstream_status: {:?}", a.body));
            }
            Ok(format!("502 executor_error (upstream {})", data["upstream_status"]))
        }
        503 => {
            if !data.is_null() {
                return Err(format!("503 with data: {:?}", a.body));
            }
            match a.retry_after.parse::<u64>() {
                Ok(seconds) if seconds > 0 => Ok("503 executor_unavailable".into()),
                _ => Err(format!(
                    "503 executor_unavailable without a positive Retry-After (got {:?})",
                    a.retry_after
                )),
            }
        }
        _ => {
            if !data.is_null() {
                return Err(format!("504 with data: {:?}", a.body));
            }
            Ok("504 executor_timeout".into())
        }
    }
}

/// The default async acknowledgement, byte for byte. Returns the run id (None for `data: null`,
/// an executor 2xx without a JSON object).
pub fn scheduled_run(a: &Answer) -> Result<Option<String>, String> {
    if a.status != 200 || !a.content_type.starts_with("application/json") {
        return Err(format!("not a 200 JSON acknowledgement: {} {:?}", a.status, a.body));
    }
    let null = r#"{"status":200,"error":null,"message":"Flow run scheduled","data":null}"#;
    if a.body == null {
        return Ok(None);
    }
    let value: Value = serde_json::from_str(a.body).map_err(|e| format!("acknowledgement is not JSON ({e})"))?;
    let run_id = value["data"]["run_id"]
        .as_str()
        .ok_or_else(|| format!("acknowledgement without data.run_id: {:?}", a.body))?;
    let expected =
        format!(r#"{{"status":200,"error":null,"message":"Flow run scheduled","data":{{"run_id":"{run_id}"}}}}"#);
    if a.body != expected {
        return Err(format!("acknowledgement is not the contract's envelope: {:?}", a.body));
    }
    Ok(Some(run_id.to_string()))
}

/// The normal answer (executor healthy) of each kind of [`Kind`]; a label or why it is wrong.
pub fn normal_answer(kind: &str, a: &Answer) -> Result<String, String> {
    match kind {
        "sync" => {
            if a.status == 200 && a.content_type == "application/json" && a.body == SEED_RENDERED {
                Ok("200 rendered".into())
            } else {
                Err(format!(
                    "sync: expected 200 {SEED_RENDERED}, got {} {:?}",
                    a.status, a.body
                ))
            }
        }
        "async" => match a.body {
            // mixed.lua blanks run ids.
            r#"{"status":200,"error":null,"message":"Flow run scheduled","data":{"run_id":"*"}}"#
                if a.status == 200 =>
            {
                Ok("200 run scheduled".into())
            }
            _ => scheduled_run(a).map(|run| match run {
                Some(_) => "200 run scheduled".into(),
                None => "200 run scheduled (data null)".into(),
            }),
        },
        "unauthorized" => {
            let (error, data) = envelope_of(a)?;
            if a.status != 401 || error.as_deref() != Some("unauthorized") || !data.is_null() {
                return Err(format!("expected 401 unauthorized, got {} {:?}", a.status, a.body));
            }
            if a.www_authenticate != r#"Bearer realm="flowgate", error="invalid_token""# {
                return Err(format!("401 with WWW-Authenticate {:?}", a.www_authenticate));
            }
            Ok("401 unauthorized".into())
        }
        "paused" => {
            if a.status == 200 && a.content_type == "application/json" && a.body == PAUSED_BODY {
                Ok("200 paused (biz_logic)".into())
            } else {
                Err(format!(
                    "paused: expected the seed's paused reply, got {} {:?}",
                    a.status, a.body
                ))
            }
        }
        "other" => {
            if a.status == 404 && a.body == r#"{"error":"not found"}"# {
                Ok("404 from the executor".into())
            } else {
                Err(format!(
                    "non-webhook: expected the executor's 404, got {} {:?}",
                    a.status, a.body
                ))
            }
        }
        other => Err(format!("unknown kind {other:?}")),
    }
}

/// Any kind's answer when the executor may be failing: its normal answer, or
/// - for webhooks that reach the executor (`sync`, `async`): an executor fault envelope;
/// - for `other` (not flowgate's business): Envoy's own 503/504 reply, unchanged.
pub fn answer_under_faults(kind: &str, a: &Answer) -> Result<String, String> {
    let normal = normal_answer(kind, a);
    if normal.is_ok() {
        return normal;
    }
    match kind {
        "sync" | "async" if matches!(a.status, 502..=504) => executor_fault(a),
        "other" if matches!(a.status, 503 | 504) && is_raw_envoy_reply(a.body) => {
            if envelope_of(a).is_ok() {
                Err(format!("a non-webhook request got an envelope: {:?}", a.body))
            } else {
                Ok(format!("{} raw Envoy reply (passed through)", a.status))
            }
        }
        _ => normal,
    }
}

// ---------------------------------------------------------------------------------------------
// Envoy's process
// ---------------------------------------------------------------------------------------------

/// Envoy's counters that say a wasm VM failed or was rebuilt: `wasm.flowgate.vm_reload*`
/// (FAIL_RELOAD) and the number of V8 VMs ever created. From an admin `/stats` answer.
pub fn vm_failure_stats(stats: &Stats) -> BTreeMap<String, u64> {
    stats
        .iter()
        .filter(|(key, _)| key.starts_with("wasm.flowgate.vm_reload") || *key == "wasm.envoy.wasm.runtime.v8.created")
        .map(|(key, value)| (key.clone(), *value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer<'a>(status: u16, body: &'a str, retry_after: &'a str) -> Answer<'a> {
        Answer {
            status,
            content_type: "application/json",
            retry_after,
            www_authenticate: "",
            body,
        }
    }

    #[test]
    fn fault_envelopes_are_judged() {
        let unavailable = r#"{"status":503,"error":"executor_unavailable","message":"x","data":null}"#;
        assert!(executor_fault(&answer(503, unavailable, "5")).is_ok());
        assert!(
            executor_fault(&answer(503, unavailable, "")).is_err(),
            "needs Retry-After"
        );
        let error = r#"{"status":502,"error":"executor_error","message":"x","data":{"upstream_status":200}}"#;
        assert!(executor_fault(&answer(502, error, "")).is_ok());
        assert!(
            executor_fault(&answer(502, unavailable, "")).is_err(),
            "status field mismatch"
        );
        let raw = answer(503, "no healthy upstream", "");
        assert!(executor_fault(&raw).is_err());
        assert!(answer_under_faults("sync", &raw).is_err());
        let raw_text = Answer {
            content_type: "text/plain",
            ..raw
        };
        assert!(answer_under_faults("other", &raw_text).is_ok());
    }

    #[test]
    fn acknowledgements_are_judged() {
        let ack = r#"{"status":200,"error":null,"message":"Flow run scheduled","data":{"run_id":"run-1"}}"#;
        assert_eq!(scheduled_run(&answer(200, ack, "")), Ok(Some("run-1".into())));
        let null = r#"{"status":200,"error":null,"message":"Flow run scheduled","data":null}"#;
        assert_eq!(scheduled_run(&answer(200, null, "")), Ok(None));
        assert!(scheduled_run(&answer(200, r#"{"run_id":"run-1"}"#, "")).is_err());
    }
}
