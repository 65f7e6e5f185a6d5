//! Native microbenchmarks of flowgate's sans-I/O core: the work one webhook costs outside of
//! Envoy and the wasm VM. Run: `cargo bench -p flowgate --bench core`.
//!
//! The flows are examples/flows.json's demo flows (as the shipped config has them); the
//! request is the seed's: `POST /v1/flow-webhook/f-1001`, a 56-character bearer token and
//! `{"company_id": 123456, "user_id": 789123}`. Native numbers are a floor: the same code
//! under V8 runs slower, and the host calls around it cost extra (see bench/ for the
//! end-to-end numbers in Envoy).

// A benchmark harness fails loudly on broken fixtures; the crate's no-panic lints guard the
// filter, not its measuring code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::hint::black_box;
    use std::time::Duration;

    use criterion::{BenchmarkId, Criterion, Throughput};
    use flowgate::config::PluginConfig;
    use flowgate::gate::{self, RequestHead, Verdict};
    use flowgate::{answer, auth, body};
    use serde_json::{json, Value};

    const FLOWS: &str = include_str!("../../examples/flows.json");
    const TOKEN: &str = "demo-f1001-abd18be68e49faca35b3f8e5da4b78ee7ce5adf2b1a314cb";
    const WRONG: &str = "demo-f1001-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    const PATH: &str = "/v1/flow-webhook/f-1001";
    const SEED_BODY: &[u8] = br#"{"company_id": 123456, "user_id": 789123}"#;
    const EXECUTOR_OUTPUT: &[u8] = br#"{"res1":{"value":"myResult"}}"#;

    /// The demo flows plus `extra` generated ones shaped like f-1001, as plugin configuration.
    fn config_text(extra: usize) -> String {
        let demo: Value = serde_json::from_str(FLOWS).unwrap();
        let mut flows: Vec<Value> = demo["flows"].as_array().unwrap().clone();
        for flow in &mut flows {
            let fields = flow.as_object_mut().unwrap();
            fields.remove("steps");
            fields.remove("run_ms");
        }
        let shape = flows[0].clone();
        for i in 0..extra {
            let mut flow = shape.clone();
            flow["id"] = json!(format!("bench-{i:06}"));
            flow["token_sha256"] = json!([format!("{i:064x}")]);
            flows.push(flow);
        }
        json!({ "flows": flows }).to_string()
    }

    fn config(extra: usize) -> PluginConfig {
        PluginConfig::parse(config_text(extra).as_bytes()).unwrap()
    }

    fn headers(authorization: &str) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":authority", b"127.0.0.1:10000".to_vec()),
            (b":path", PATH.as_bytes().to_vec()),
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b"user-agent", b"wrk".to_vec()),
            (b"content-type", b"application/json".to_vec()),
            (b"content-length", b"41".to_vec()),
            (b"authorization", authorization.as_bytes().to_vec()),
            (b"x-forwarded-proto", b"http".to_vec()),
            (b"x-request-id", b"7b8f0c1e-3a51-4a8e-9a0e-2f1d5c7b9e11".to_vec()),
        ]
    }

    /// Header map -> verdict, as `on_http_request_headers` runs it.
    fn decide(config: &PluginConfig, headers: &[(&'static [u8], Vec<u8>)]) -> bool {
        let pairs: Vec<(&[u8], &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let head = RequestHead::from_headers(&pairs);
        matches!(
            gate::decide(&config.webhook_path_prefix, Some(&config.flows), &head),
            Verdict::Admit(_)
        )
    }

    fn token_check(c: &mut Criterion) {
        let config = config(0);
        let allowed = &config.flows.get("f-1001").unwrap().tokens;
        let bearer = format!("Bearer {TOKEN}");
        c.bench_function("auth/token_check (parse + sha256 + compare)", |b| {
            b.iter(|| match auth::parse(std::iter::once(black_box(bearer.as_bytes()))) {
                auth::Credentials::Bearer(token) => auth::matches_any(&auth::digest(token), allowed),
                _ => false,
            })
        });
        c.bench_function("auth/sha256 of a 56-byte token", |b| {
            b.iter(|| auth::digest(black_box(TOKEN.as_bytes())))
        });
    }

    fn decision(c: &mut Criterion) {
        let admitted = headers(&format!("Bearer {TOKEN}"));
        let rejected = headers(&format!("Bearer {WRONG}"));
        let mut group = c.benchmark_group("gate/decide");
        for extra in [0, 10_000, 100_000] {
            let config = config(extra);
            let flows = config.flows.len();
            assert!(decide(&config, &admitted) && !decide(&config, &rejected));
            group.bench_with_input(BenchmarkId::new("admitted", flows), &config, |b, config| {
                b.iter(|| decide(config, black_box(&admitted)))
            });
            group.bench_with_input(BenchmarkId::new("401", flows), &config, |b, config| {
                b.iter(|| decide(config, black_box(&rejected)))
            });
        }
        group.finish();
    }

    fn render(c: &mut Criterion) {
        let config = config(0);
        let flow = config.flows.get("f-1001").unwrap();
        let check = answer::reply(
            flow,
            200,
            body::bind(Some(b"application/json"), SEED_BODY),
            EXECUTOR_OUTPUT,
        )
        .unwrap();
        assert_eq!(check.body, br#"{"valid": "myResult"}"#);
        c.bench_function("answer/seed template (executor JSON -> context -> render)", |b| {
            b.iter_batched(
                || body::bind(Some(b"application/json"), SEED_BODY),
                |request_body| answer::reply(flow, 200, request_body, black_box(EXECUTOR_OUTPUT)),
                criterion::BatchSize::SmallInput,
            )
        });
        let asynchronous = config.flows.get("f-1003").unwrap();
        c.bench_function("answer/async run-scheduled envelope", |b| {
            b.iter_batched(
                || body::bind(None, b""),
                |request_body| answer::reply(asynchronous, 202, request_body, black_box(br#"{"run_id":"r-1"}"#)),
                criterion::BatchSize::SmallInput,
            )
        });
    }

    fn bodies(c: &mut Criterion) {
        let mut group = c.benchmark_group("body");
        for size in [1024usize, 64 * 1024, 1024 * 1024] {
            let head = r#"{"company_id": 123456, "user_id": 789123, "pad": ""#;
            let body = format!("{head}{}\"}}", "x".repeat(size - head.len() - 2));
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(BenchmarkId::new("check_json", size), body.as_bytes(), |b, body| {
                b.iter(|| body::check_json(black_box(body)))
            });
            group.bench_with_input(
                BenchmarkId::new("bind (parse for templates)", size),
                body.as_bytes(),
                |b, body| b.iter(|| body::bind(Some(b"application/json"), black_box(body))),
            );
        }
        group.finish();
    }

    fn configuration(c: &mut Criterion) {
        let mut group = c.benchmark_group("config/parse");
        group.sample_size(10);
        for extra in [0, 10_000] {
            let text = config_text(extra);
            group.bench_with_input(BenchmarkId::from_parameter(5 + extra), text.as_bytes(), |b, text| {
                b.iter(|| PluginConfig::parse(black_box(text)).map(|c| c.flows.len()))
            });
        }
        group.finish();
    }

    pub fn all(c: &mut Criterion) {
        token_check(c);
        decision(c);
        render(c);
        bodies(c);
        configuration(c);
    }

    pub fn criterion() -> Criterion {
        Criterion::default()
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .configure_from_args()
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    let mut criterion = native::criterion();
    native::all(&mut criterion);
    criterion.final_summary();
}

#[cfg(target_arch = "wasm32")]
fn main() {}
