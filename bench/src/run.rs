//! Measuring: the configurations of one flow-count group, Envoy's memory, and one scenario's
//! probe, rounds, single-connection and paced runs.

use std::path::PathBuf;
use std::time::Duration;

use crate::envoy::{self, Envoy, Filters, Ports};
use crate::plan::{self, Demo, Extra, Listener, Scenario};
use crate::report::{self, Measured, Memory};
use crate::{wrk, Options};

/// Everything one group of scenarios (same flow count) needs on disk.
pub struct Group {
    pub flows: usize,
    pub plugin_config: String,
    pub lua_script: PathBuf,
}

pub struct Bench<'a> {
    pub o: &'a Options,
    pub root: PathBuf,
    pub work: PathBuf,
    pub demo: Demo,
    pub wasm: PathBuf,
    pub empty_wasm: PathBuf,
    pub envoy: PathBuf,
    pub wrk_script: PathBuf,
}

impl Bench<'_> {
    /// Writes the Lua peer's script for `flows` flows and builds flowgate's configuration.
    pub fn prepare(&self, flows: usize, gate_lua: &str) -> Result<Group, String> {
        eprintln!("== {flows} flows: generating configurations");
        let lua_script = self.work.join(format!("lua-{flows}.lua"));
        let lua = format!("{}\n{gate_lua}", self.demo.lua_table(flows));
        std::fs::write(&lua_script, lua).map_err(|e| format!("{}: {e}", lua_script.display()))?;
        Ok(Group {
            flows,
            plugin_config: self.demo.plugin_config(flows),
            lua_script,
        })
    }

    pub fn bootstrap(&self, group: &Group, ports: Ports, listeners: &[Listener]) -> serde_json::Value {
        let filters = Filters {
            wasm: &self.wasm,
            plugin_config: &group.plugin_config,
            lua_script: &group.lua_script,
            empty_wasm: &self.empty_wasm,
        };
        envoy::bootstrap(ports, listeners, &filters)
    }

    /// VmRSS of an Envoy with plain routing only, then with the Lua, the empty-filter or the
    /// flowgate listener added.
    pub fn memory(&self, group: &Group) -> Result<Vec<Memory>, String> {
        let variants: [(&str, &[Listener]); 4] = [
            ("plain only", &[Listener::Plain]),
            ("plain + lua", &[Listener::Plain, Listener::Lua]),
            ("plain + empty", &[Listener::Plain, Listener::Empty]),
            ("plain + flowgate", &[Listener::Plain, Listener::Flowgate]),
        ];
        let warm = plan::scenarios()
            .into_iter()
            .find(|s| s.name == "sync")
            .ok_or("no sync scenario")?;
        let mut rows = Vec::new();
        for (variant, (what, listeners)) in variants.into_iter().enumerate() {
            let config = self.work.join(format!("envoy-{}-memory-{variant}.json", group.flows));
            let ports = Ports::free_from(self.o.port_base)?;
            envoy::write_config(&config, &self.bootstrap(group, ports, listeners))?;
            let envoy = Envoy::start(&self.envoy, &config, ports, listeners, self.o.pin.then_some(0))?;
            for &listener in listeners {
                self.load(&envoy, &warm, listener, 1)?;
            }
            std::thread::sleep(Duration::from_millis(300));
            let rss = envoy.rss().ok_or("cannot read Envoy's VmRSS")?;
            eprintln!(
                "   memory: {what}, {} flows: {} MiB, ready in {} ms",
                group.flows,
                rss >> 20,
                envoy.startup.as_millis()
            );
            rows.push(Memory {
                what: what.to_string(),
                flows: group.flows,
                rss,
                startup_ms: envoy.startup.as_millis(),
            });
        }
        Ok(rows)
    }

    fn body_file(&self, scenario: &Scenario) -> Result<PathBuf, String> {
        let name = match scenario.body_bytes {
            Some(size) => format!("body-{size}.json"),
            None => "body-seed.json".to_string(),
        };
        let path = self.work.join(name);
        if !path.exists() {
            std::fs::write(&path, plan::request_body(scenario.body_bytes))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(path)
    }

    fn token(&self, scenario: &Scenario) -> String {
        let flow_id = scenario.path.rsplit('/').next().unwrap_or_default();
        let valid = self
            .demo
            .token(flow_id)
            .unwrap_or("demo-f1001-abd18be68e49faca35b3f8e5da4b78ee7ce5adf2b1a314cb");
        if scenario.valid_token {
            valid.to_string()
        } else {
            // Same shape and length as a real token, so only the check differs.
            format!("{}{}", &valid[..11], "x".repeat(valid.len() - 11))
        }
    }

    pub fn load(
        &self,
        envoy: &Envoy,
        scenario: &Scenario,
        listener: Listener,
        seconds: u32,
    ) -> Result<wrk::Run, String> {
        self.load_with(envoy, scenario, listener, seconds, self.o.connections, None)
    }

    pub fn load_with(
        &self,
        envoy: &Envoy,
        scenario: &Scenario,
        listener: Listener,
        seconds: u32,
        connections: u32,
        delay_ms: Option<u32>,
    ) -> Result<wrk::Run, String> {
        let body_file = self.body_file(scenario)?;
        let token = self.token(scenario);
        let body = std::fs::read(&body_file).map_err(|e| format!("{}: {e}", body_file.display()))?;
        let (header, unique) = match scenario.extra {
            Extra::None => (None, None),
            Extra::GithubSignature => (Some(("X-Hub-Signature-256", github_signature(&body))), None),
            Extra::UniqueDeliveryId => (None, Some(("X-Delivery-Id", run_prefix()))),
        };
        wrk::run(&wrk::Load {
            url: format!("http://127.0.0.1:{}{}", envoy.ports.listener(listener), scenario.path),
            seconds,
            connections,
            script: &self.wrk_script,
            token: &token,
            body_file: &body_file,
            cpu: self.o.pin.then_some(1),
            delay_ms,
            header,
            unique,
        })
    }

    /// Checks each listener's answer once, then measures the rounds.
    pub fn scenario(&self, envoy: &Envoy, scenario: &Scenario) -> Result<Measured, String> {
        eprintln!("-- {}: {}", scenario.name, scenario.what);
        let body = std::fs::read(self.body_file(scenario)?).map_err(|e| e.to_string())?;
        let authorization = format!("Bearer {}", self.token(scenario));
        let (signature, delivery) = (github_signature(&body), run_prefix());
        let extra = match scenario.extra {
            Extra::None => None,
            Extra::GithubSignature => Some(("x-hub-signature-256", signature.as_str())),
            Extra::UniqueDeliveryId => Some(("x-delivery-id", delivery.as_str())),
        };
        let mut probe = [(0, false); Listener::COUNT];
        let mut answers: [Vec<u8>; Listener::COUNT] = Default::default();
        // Only the flowgate listener routes to `site`, and only what is not a webhook.
        let to_site = || envoy.counter("cluster.site.upstream_rq_total").unwrap_or(0);
        let site_before = to_site();
        for listener in Listener::ALL {
            let response = envoy::request(
                envoy.ports.listener(listener),
                "POST",
                scenario.path,
                &[
                    ("authorization", authorization.as_str()),
                    ("content-type", "application/json"),
                ]
                .into_iter()
                .chain(extra)
                .collect::<Vec<_>>(),
                &body,
            )
            .map_err(|e| format!("{} probe on {}: {e}", scenario.name, listener.name()))?;
            // Every listener answers `pass` 200: plain, Lua and the empty filter from `upstream`,
            // flowgate's listener from `site` with flowgate off on that route.
            let expected = match listener {
                _ if listener.ungated() && scenario.path.ends_with("f-1003") => 202,
                _ if listener.ungated() => 200,
                _ => scenario.status,
            };
            if response.status != expected {
                return Err(format!(
                    "{} probe on {}: expected {expected}, got {}: {}",
                    scenario.name,
                    listener.name(),
                    response.status,
                    String::from_utf8_lossy(&response.body)
                ));
            }
            probe[listener.index()] = (response.status, response.header("connection") == Some("close"));
            answers[listener.index()] = response.body;
        }
        let site = to_site().saturating_sub(site_before);
        let expected_site = u64::from(!scenario.path.starts_with(plan::WEBHOOK_PREFIX));
        if site != expected_site {
            return Err(format!(
                "{} probe: {site} request(s) reached the `site` cluster, expected {expected_site} \
                 (the flowgate listener routes only non-webhook paths there)",
                scenario.name
            ));
        }
        let (lua, flowgate) = (&answers[Listener::Lua.index()], &answers[Listener::Flowgate.index()]);
        if lua != flowgate {
            eprintln!(
                "   note: lua and flowgate answer differently:\n     lua:      {}\n     flowgate: {}",
                String::from_utf8_lossy(lua),
                String::from_utf8_lossy(flowgate)
            );
        }
        if self.o.warmup > 0 {
            for listener in Listener::ALL {
                self.load(envoy, scenario, listener, self.o.warmup)?;
            }
        }
        let mut runs: [Vec<wrk::Run>; Listener::COUNT] = Default::default();
        let mut new_connections: [Vec<f64>; Listener::COUNT] = Default::default();
        for round in 0..self.o.rounds as usize {
            // Each round starts one listener later, so none always runs first or last.
            for k in 0..Listener::COUNT {
                let listener = Listener::ALL[(round + k) % Listener::COUNT];
                let counter = format!("http.{}.downstream_cx_total", listener.name());
                let before = envoy.counter(&counter).unwrap_or(0);
                let cpu_before = envoy.worker_cpu_us();
                let mut run = self.load(envoy, scenario, listener, self.o.seconds)?;
                if let (Some(start), Some(end)) = (cpu_before, envoy.worker_cpu_us()) {
                    run.worker_cpu_us = end - start;
                }
                let after = envoy.counter(&counter).unwrap_or(0);
                eprintln!(
                    "   round {} {:<8} {:>8.0} req/s  {:>6.1} CPU µs/req  p50 {:>7.0} µs  p99 {:>7.0} µs{}",
                    round + 1,
                    listener.name(),
                    run.requests_per_sec,
                    run.cpu_per_request(),
                    run.p50_us,
                    run.p99_us,
                    if run.socket_errors > 0 {
                        format!("  socket errors {}", run.socket_errors)
                    } else {
                        String::new()
                    }
                );
                new_connections[listener.index()]
                    .push(after.saturating_sub(before) as f64 * 1000.0 / run.requests.max(1) as f64);
                runs[listener.index()].push(run);
            }
        }
        // One connection: no queueing in Envoy, so latency is the per-request service time.
        let mut single: [wrk::Run; Listener::COUNT] = Default::default();
        for listener in Listener::ALL {
            single[listener.index()] = self.load_with(envoy, scenario, listener, self.o.seconds, 1, None)?;
        }
        // The same connections, paced to half the slowest listener's rate: latency with
        // concurrency but without a saturated worker's queue.
        let slowest = runs
            .iter()
            .map(|r| report::median(r.iter().map(|run| run.requests_per_sec).collect()))
            .fold(f64::INFINITY, f64::min);
        let delay_ms = plan::pacing_delay_ms(self.o.connections, slowest);
        let mut paced: [wrk::Run; Listener::COUNT] = Default::default();
        for listener in Listener::ALL {
            paced[listener.index()] = self.load_with(
                envoy,
                scenario,
                listener,
                self.o.seconds,
                self.o.connections,
                Some(delay_ms),
            )?;
        }
        Ok(Measured {
            scenario: scenario.clone(),
            runs,
            new_connections,
            probe,
            single,
            paced,
            delay_ms,
        })
    }
}

/// GitHub's `X-Hub-Signature-256` of `body` with the bench flow's secret.
fn github_signature(body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(plan::GITHUB_SECRET.as_bytes()).expect("any key size");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// A prefix of delivery ids no earlier run used (their ids are remembered for the window).
fn run_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("bench-{nanos}-")
}
