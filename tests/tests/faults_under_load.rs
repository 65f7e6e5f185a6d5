//! Executor faults under load (contract 1 and 3): while wrk drives mixed traffic through
//! Envoy (2 workers) and the filter -- templated sync webhooks, 401s, a paused flow, requests
//! outside the webhook prefix -- and a Rust loop sends async webhooks and keeps every run id it is
//! given, the executor is SIGKILLed, restarted, made slow beyond the route timeout, made to answer
//! garbage, then healed. Afterwards:
//!
//! - every async request answered 200 has exactly one completed run in the executor's run store;
//! - every answer is one the contract allows for its kind: a webhook sender gets its normal answer
//!   or a fault envelope (502 `executor_error`, 503 `executor_unavailable` with Retry-After, 504
//!   `executor_timeout`), never Envoy's own text ("no healthy upstream", "upstream connect
//!   error"...); only non-webhook traffic, which is not flowgate's business, may see that;
//! - no request went unanswered, and Envoy never restarted: same PID, `/server_info` uptime
//!   monotonic, `wasm.flowgate.vm_reload*` 0 and no VM created after start.
//!
//! Counts per kind and status are printed; run with `--nocapture` to see them. Needs `wrk`
//! (`scripts/setup.sh --bench`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use flowgate_e2e::load::*;
use flowgate_e2e::*;
use serde_json::{json, Value};

/// The async test flow's token (a public test value; its digest goes in `token_sha256`).
const TOKEN: &str = "load-e2e-3b9d1f7a5c2e8b4d6f0a9c3e7b1d5f8a2c6e0b4d9f3a7c1e5b8d2f6a";
/// The route timeout: short, so the slow phase times out quickly.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(1);
/// The slow fault's delay: well beyond the route timeout.
const SLOW_MS: u64 = 2500;
/// How long each phase of the fault schedule lasts.
const PHASE: Duration = Duration::from_secs(4);
/// How long the executor stays dead.
const DEAD: Duration = Duration::from_secs(3);
/// Threads of the Rust loop that sends async webhooks (one kept-alive connection each).
const ASYNC_SENDERS: usize = 2;
/// How long to wait for acknowledged runs to finish after the load.
const RUNS_TIMEOUT: Duration = Duration::from_secs(90);

/// The demo flows plus `t-async`: async, no response template (the default acknowledgement),
/// runs 10 ms (the demo's f-1003 runs 2 s: too slow to keep up with a load).
fn flow_file() -> Value {
    let mut file = demo_flows();
    file["flows"].as_array_mut().expect("flows").push(json!({
        "id": "t-async",
        "ref_id": "web1",
        "status": "live",
        "token_sha256": [sha256_hex(TOKEN)],
        "async": true,
        "methods": ["POST"],
        "max_body_bytes": 65536,
        "steps": [{"ref_id": "res1", "values": {"company_id": "web1.company_id"}}],
        "run_ms": 10,
    }));
    file
}

/// One async request of the Rust loop and what came back.
#[derive(Debug)]
struct Sent {
    company_id: u64,
    sent: Instant,
    answered: Instant,
    /// The answer, or the transport error (no answer at all).
    answer: Result<Response, String>,
}

/// A phase of the fault schedule: from just before its fault was set until the next one was.
#[derive(Clone, Debug)]
struct Phase {
    name: &'static str,
    start: Instant,
    /// When the change had been made (a SIGKILL lands once no thread is inside a system call).
    changed: Instant,
    end: Instant,
}

/// The async senders: POST to `t-async` until `stop`, each request with its own company id.
fn send_async(port: u16, next_id: &AtomicU64, stop: &AtomicBool, log: &Mutex<Vec<Sent>>) {
    let authorization = format!("Bearer {TOKEN}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", authorization.as_str()),
    ];
    let mut connection: Option<Connection> = None;
    while !stop.load(Ordering::SeqCst) {
        let company_id = next_id.fetch_add(1, Ordering::SeqCst);
        let body = format!(r#"{{"company_id": {company_id}, "user_id": 1}}"#);
        let sent = Instant::now();
        let answer = match connection.take().map_or_else(|| Connection::open(port), Ok) {
            Ok(mut c) => match c.send("POST", "/v1/flow-webhook/t-async", &headers, body.as_bytes()) {
                Ok(response) => {
                    let close = response
                        .header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    if !close {
                        connection = Some(c);
                    }
                    Ok(response)
                }
                Err(e) => Err(format!("send: {e}")),
            },
            Err(e) => Err(format!("connect: {e}")),
        };
        log.lock().expect("log").push(Sent {
            company_id,
            sent,
            answered: Instant::now(),
            answer,
        });
    }
}

/// Samples Envoy every 250 ms until `stop`: (uptime of the current epoch, state) or None when
/// the admin interface did not answer; and whether the PID was alive.
fn watch_envoy(admin_port: u16, pid: u32, stop: &AtomicBool) -> Vec<(Option<ServerInfo>, bool)> {
    let mut samples = vec![];
    while !stop.load(Ordering::SeqCst) {
        samples.push((server_info(admin_port), process_alive(pid)));
        sleep(Duration::from_millis(250));
    }
    samples
}

fn overlaps(sent: &Sent, phase: &Phase) -> bool {
    sent.sent <= phase.end && sent.answered >= phase.start
}

/// The executor's run store commits with fsync (`synchronous=FULL`). On a shared machine a disk
/// stall can hold a commit for a long time, and a SIGKILL only lands once the thread in fsync is
/// back (seen here: a kill that took 60 s). A killed process loses nothing the page cache holds, so
/// this test's temporary files, the run store among them, go to tmpfs when there is one and no
/// TMPDIR was chosen. (This test is alone in its binary: the process environment is its own.)
fn temp_files_on_tmpfs() {
    if std::env::var_os("TMPDIR").is_none() && std::path::Path::new("/dev/shm").is_dir() {
        std::env::set_var("TMPDIR", "/dev/shm");
    }
}

/// What one load run under the fault schedule gave.
struct LoadRun {
    /// wrk's summary of its kinds.
    summary: WrkSummary,
    /// The async loop's requests.
    sent: Vec<Sent>,
    phases: Vec<Phase>,
    /// Envoy sampled every 250 ms during the load (see [`watch_envoy`]).
    envoy_samples: Vec<(Option<ServerInfo>, bool)>,
    started: Instant,
    time: Duration,
}

/// The answers counted per (kind, label), and every problem found so far.
#[derive(Default)]
struct Verdict {
    counts: BTreeMap<(String, String), u64>,
    problems: Vec<String>,
}

impl Verdict {
    fn count(&mut self, kind: &str, label: String, n: u64) {
        *self.counts.entry((kind.to_string(), label)).or_default() += n;
    }

    /// Whether some `kind` answer's label starts with `prefix`.
    fn seen(&self, kind: &str, prefix: &str) -> bool {
        self.counts
            .iter()
            .any(|((k, label), n)| k == kind && label.starts_with(prefix) && *n > 0)
    }

    /// How many answers of any kind have a label starting with `prefix`.
    fn observed(&self, prefix: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((_, label), _)| label.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

/// The kinds wrk sends.
fn wrk_kinds() -> [Kind; 4] {
    [Kind::sync(), Kind::unauthorized(), Kind::paused(), Kind::other()]
}

/// Sanity: every kind gets its normal answer before the load starts.
fn assert_normal_answers_before_the_load(port: u16, kinds: &[Kind]) {
    for kind in kinds {
        let headers: Vec<(&str, &str)> = kind.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let response = send(port, &kind.method, &kind.path, &headers, kind.body.as_bytes());
        let text = response.text();
        if let Err(why) = normal_answer(&kind.name, &Answer::of_response(&response, &text)) {
            panic!("before the load, {}: {why}", kind.name);
        }
    }
}

/// wrk's kinds and the async loop through Envoy while the executor goes through the fault
/// schedule: normal, killed (SIGKILL), restarted, slow, garbage, normal again.
fn run_fault_schedule(envoy: &Envoy, executor: &mut Executor, kinds: &[Kind]) -> LoadRun {
    let port = envoy.port();
    let stop_async = AtomicBool::new(false);
    let stop_watch = AtomicBool::new(false);
    let next_id = AtomicU64::new(1);
    let sent_log = Mutex::new(Vec::<Sent>::new());
    let mut phases: Vec<Phase> = vec![];

    let started = Instant::now();
    let (summary, envoy_samples) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| watch_envoy(envoy.admin_port(), envoy.pid(), &stop_watch));
        let wrk = Wrk::start(
            port,
            kinds,
            &WrkOptions {
                // One thread per kind, two connections each; stopped below, at the end of the schedule.
                threads: kinds.len() as u32,
                connections: 2 * kinds.len() as u32,
                duration: Duration::from_secs(120),
                delay_ms: 0,
                mix: Mix::PerThread,
            },
        );
        for _ in 0..ASYNC_SENDERS {
            scope.spawn(|| send_async(port, &next_id, &stop_async, &sent_log));
        }

        // The fault schedule. Each phase starts just before its change and ends once the next
        // change has been made (control calls can wait behind a slow executor's busy threads).
        let next_phase = |name: &'static str, phases: &mut Vec<Phase>, change: &mut dyn FnMut()| {
            let start = Instant::now();
            change();
            let changed = Instant::now();
            if let Some(last) = phases.last_mut() {
                last.end = changed;
            }
            phases.push(Phase {
                name,
                start,
                changed,
                end: changed,
            });
        };
        next_phase("normal", &mut phases, &mut || {});
        sleep(PHASE);
        next_phase("killed (SIGKILL)", &mut phases, &mut || executor.kill());
        sleep(DEAD);
        next_phase("restarted", &mut phases, &mut || executor.restart());
        sleep(PHASE);
        next_phase("slow", &mut phases, &mut || {
            executor.set_fault(json!({"mode": "slow", "delay_ms": SLOW_MS}))
        });
        sleep(PHASE);
        next_phase("garbage", &mut phases, &mut || {
            executor.set_fault(json!({"mode": "garbage"}))
        });
        sleep(PHASE);
        next_phase("normal again", &mut phases, &mut || {
            executor.set_fault(json!({"mode": "none"}))
        });
        sleep(PHASE);
        let summary = wrk.stop();
        stop_async.store(true, Ordering::SeqCst);
        if let Some(last) = phases.last_mut() {
            last.end = Instant::now();
        }
        // Let the async senders finish their last request before the watcher stops.
        sleep(Duration::from_millis(200));
        stop_watch.store(true, Ordering::SeqCst);
        (summary, watcher.join().expect("watcher"))
    });
    LoadRun {
        summary,
        sent: sent_log.into_inner().expect("log"),
        phases,
        envoy_samples,
        started,
        time: started.elapsed(),
    }
}

/// wrk's kinds: every distinct answer judged against its kind.
fn judge_wrk_answers(summary: &WrkSummary, verdict: &mut Verdict) {
    for signature in &summary.responses {
        match answer_under_faults(&signature.kind, &Answer::of_signature(signature)) {
            Ok(label) => verdict.count(&signature.kind, label, signature.count),
            Err(why) => {
                verdict.count(
                    &signature.kind,
                    format!("{} UNEXPECTED", signature.status),
                    signature.count,
                );
                verdict
                    .problems
                    .push(format!("{} x {}: {why}", signature.count, signature.kind));
            }
        }
    }
    if summary.distinct_overflow > 0 {
        verdict.problems.push(format!(
            "{} wrk answers had too many distinct signatures to be judged",
            summary.distinct_overflow
        ));
    }
    if summary.errors.socket() > 0 {
        verdict.problems.push(format!(
            "wrk requests that got no answer at all (connect {}, read {}, write {})",
            summary.errors.connect, summary.errors.read, summary.errors.write
        ));
    }
}

/// The async loop: every answer judged. Returns the acknowledged runs (company id, run id) and
/// how many acceptances came without a run id (the garbage phase's).
fn judge_async_answers(run: &LoadRun, verdict: &mut Verdict) -> (Vec<(u64, String)>, usize) {
    let garbage = run
        .phases
        .iter()
        .find(|p| p.name == "garbage")
        .expect("garbage phase")
        .clone();
    let mut acknowledged: Vec<(u64, String)> = vec![];
    let mut acknowledged_without_run = 0;
    for s in &run.sent {
        let response = match &s.answer {
            Ok(response) => response,
            Err(e) => {
                verdict.count("async", "no answer".into(), 1);
                verdict
                    .problems
                    .push(format!("async request {} got no answer: {e}", s.company_id));
                continue;
            }
        };
        let text = response.text();
        let answer = Answer::of_response(response, &text);
        let label = match scheduled_run(&answer) {
            Ok(Some(run_id)) => {
                acknowledged.push((s.company_id, run_id));
                Ok("200 run scheduled".to_string())
            }
            // An executor 2xx without a JSON object is still an acceptance (contract 3.2), but
            // only the garbage fault answers that way.
            Ok(None) if overlaps(s, &garbage) => {
                acknowledged_without_run += 1;
                Ok("200 run scheduled (data null, garbage phase)".to_string())
            }
            Ok(None) => Err(format!(
                "200 with data null outside the garbage phase (request {})",
                s.company_id
            )),
            Err(_) => answer_under_faults("async", &answer),
        };
        match label {
            Ok(label) => verdict.count("async", label, 1),
            Err(why) => {
                verdict.count("async", format!("{} UNEXPECTED", response.status), 1);
                verdict.problems.push(format!("async request {}: {why}", s.company_id));
            }
        }
    }
    (acknowledged, acknowledged_without_run)
}

/// The load, its phases and the answers per kind and status, on stdout.
fn print_report(run: &LoadRun, verdict: &Verdict) {
    let summary = &run.summary;
    println!(
        "faults under load: {:.1} s of load; wrk {} answers ({:.0}/s, p50 {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms), async loop {} requests",
        run.time.as_secs_f64(),
        summary.requests,
        summary.rate(),
        summary.latency_us.p50 as f64 / 1000.0,
        summary.latency_us.p99 as f64 / 1000.0,
        summary.latency_us.max as f64 / 1000.0,
        run.sent.len()
    );
    for phase in &run.phases {
        println!(
            "  phase {:<18} {:>5.1} s .. {:>5.1} s (its change took {:.2} s)",
            phase.name,
            (phase.start - run.started).as_secs_f64(),
            (phase.end - run.started).as_secs_f64(),
            (phase.changed - phase.start).as_secs_f64()
        );
    }
    println!("  answers per kind and status:");
    for ((kind, label), n) in &verdict.counts {
        println!("    {kind:<13} {label:<44} {n:>7}");
    }
    println!(
        "  wrk sent per kind: {:?}; socket errors {}, slower than 30 s {}",
        summary.sent,
        summary.errors.socket(),
        summary.errors.timeout
    );
}

/// The faults really happened under the load: each fault answer was seen, and async runs were
/// acknowledged both before the crash and after the restart.
fn check_the_faults_happened(run: &LoadRun, verdict: &mut Verdict) {
    for kind in ["sync", "async"] {
        for prefix in ["503 executor_unavailable", "504 executor_timeout", "200"] {
            if !verdict.seen(kind, prefix) {
                verdict
                    .problems
                    .push(format!("{kind}: never saw {prefix}: the schedule did not exercise it"));
            }
        }
    }
    if !verdict.seen("sync", "502 executor_error") {
        verdict
            .problems
            .push("sync: never saw 502 executor_error during the garbage phase".into());
    }
    let restarted = run.phases.iter().find(|p| p.name == "restarted").expect("phase").start;
    let killed = run
        .phases
        .iter()
        .find(|p| p.name.starts_with("killed"))
        .expect("phase")
        .start;
    let acked_at = |from: Instant, to: Instant| {
        run.sent
            .iter()
            .filter(|s| s.answered >= from && s.answered <= to)
            .filter(|s| s.answer.as_ref().is_ok_and(|r| r.status == 200))
            .count()
    };
    let (before_kill, after_restart) = (acked_at(run.started, killed), acked_at(restarted, Instant::now()));
    println!("  async 200s: {before_kill} before the kill, {after_restart} after the restart");
    if before_kill == 0 || after_restart == 0 {
        verdict
            .problems
            .push("async runs were not acknowledged both before the crash and after the restart".into());
    }
}

/// Every acknowledged run: exactly one completed run in the store, with the output of what was sent.
fn check_acknowledged_runs(
    executor: &Executor,
    acknowledged: &[(u64, String)],
    acknowledged_without_run: usize,
    problems: &mut Vec<String>,
) {
    let run_ids: HashSet<&str> = acknowledged.iter().map(|(_, id)| id.as_str()).collect();
    if run_ids.len() != acknowledged.len() {
        problems.push(format!(
            "{} acknowledgements carried only {} distinct run ids",
            acknowledged.len(),
            run_ids.len()
        ));
    }
    let deadline = Instant::now() + RUNS_TIMEOUT;
    let runs = loop {
        let runs = executor.runs();
        let finished = runs
            .iter()
            .filter(|r| r["state"] == "completed" || r["state"] == "failed")
            .filter(|r| r["run_id"].as_str().is_some_and(|id| run_ids.contains(id)))
            .count();
        if finished >= run_ids.len() || Instant::now() >= deadline {
            break runs;
        }
        sleep(Duration::from_millis(500));
    };
    let mut by_id: HashMap<&str, Vec<&Value>> = HashMap::new();
    for run in &runs {
        if let Some(id) = run["run_id"].as_str() {
            by_id.entry(id).or_default().push(run);
        }
    }
    let mut resumed = 0;
    for (company_id, run_id) in acknowledged {
        let rows = by_id.get(run_id.as_str()).map(Vec::as_slice).unwrap_or_default();
        let [run] = rows else {
            problems.push(format!(
                "acknowledged run {run_id} has {} rows in the run store",
                rows.len()
            ));
            continue;
        };
        let ok = run["state"] == "completed"
            && run["flow_id"] == "t-async"
            && run["output"] == json!({"res1": {"company_id": company_id}});
        if !ok {
            problems.push(format!(
                "acknowledged run {run_id} (company {company_id}) did not complete as sent: {run}"
            ));
        }
        if run["attempts"].as_u64().unwrap_or(0) > 1 {
            resumed += 1;
        }
    }
    let async_rows = runs.iter().filter(|r| r["flow_id"] == "t-async").count();
    println!(
        "  run store: {} acknowledged runs checked ({resumed} resumed after the crash), {} t-async rows \
         in all ({} queued but not acknowledged: at-least-once), {acknowledged_without_run} 200s \
         without a run id (garbage phase)",
        acknowledged.len(),
        async_rows,
        async_rows.saturating_sub(acknowledged.len())
    );
}

/// Envoy before the load: its PID, `/server_info` and wasm VM counters.
struct EnvoyBefore {
    pid: u32,
    info: ServerInfo,
    vm_stats: BTreeMap<String, u64>,
}

/// Envoy never restarted: same live PID, uptime monotonic and LIVE throughout, admin answering,
/// no wasm VM reloaded or rebuilt.
fn check_envoy_never_restarted(envoy: &Envoy, before: &EnvoyBefore, run: &LoadRun, problems: &mut Vec<String>) {
    let pid = before.pid;
    let mut last_uptime = before.info.uptime_current_epoch_s;
    let mut unanswered = 0;
    for (info, alive) in &run.envoy_samples {
        if !alive {
            problems.push(format!("Envoy's PID {pid} was gone during the load"));
            break;
        }
        match info {
            Some(info) => {
                if info.uptime_current_epoch_s < last_uptime || info.state != "LIVE" {
                    problems.push(format!(
                        "Envoy restarted or left LIVE: uptime {} s after {last_uptime} s, state {}",
                        info.uptime_current_epoch_s, info.state
                    ));
                }
                last_uptime = info.uptime_current_epoch_s;
            }
            None => unanswered += 1,
        }
    }
    let info_after = server_info(envoy.admin_port()).expect("/server_info after the load");
    let vm_stats_after = vm_failure_stats(&envoy.stats());
    println!(
        "  Envoy: PID {pid} alive {}, uptime {} s -> {} s ({} samples, {unanswered} unanswered), VM stats {vm_stats_after:?}",
        process_alive(pid),
        before.info.uptime_current_epoch_s,
        info_after.uptime_current_epoch_s,
        run.envoy_samples.len()
    );
    if envoy.pid() != pid || !process_alive(pid) {
        problems.push("Envoy's process changed or died".into());
    }
    if info_after.uptime_current_epoch_s < before.info.uptime_current_epoch_s + run.time.as_secs() - 1 {
        problems.push(format!(
            "Envoy's uptime {} s is shorter than the load ({} s): it restarted",
            info_after.uptime_current_epoch_s,
            run.time.as_secs()
        ));
    }
    if unanswered * 4 > run.envoy_samples.len() {
        problems.push(format!(
            "Envoy's admin did not answer {unanswered} of {} samples",
            run.envoy_samples.len()
        ));
    }
    for (name, value) in &vm_stats_after {
        let before = before.vm_stats.get(name).copied().unwrap_or(0);
        if name.starts_with("wasm.flowgate.vm_reload") && *value != 0 {
            problems.push(format!("{name} = {value}: a wasm VM failed and was reloaded"));
        } else if *value != before {
            problems.push(format!("{name} went from {before} to {value}: a wasm VM was rebuilt"));
        }
    }
    if !vm_stats_after.contains_key("wasm.flowgate.vm_reload") {
        problems.push(format!("no wasm.flowgate.vm_reload stat in /stats: {vm_stats_after:?}"));
    }
}

/// The filter's own counters saw at least what the senders saw (more: wrk stops with requests in
/// flight that Envoy still answers), and the filter never panicked.
fn check_the_filter_counted(envoy: &Envoy, verdict: &mut Verdict) {
    let stats = envoy.stats();
    let stat = |name: &str| stats.value(&format!("wasmcustom.flowgate.requests.{name}"));
    for (code, prefix) in [
        ("executor_error", "502 executor_error"),
        ("executor_unavailable", "503 executor_unavailable"),
        ("executor_timeout", "504 executor_timeout"),
        ("unauthorized", "401 unauthorized"),
        ("biz_logic", "200 paused"),
    ] {
        let (counter, seen) = (stat(code), verdict.observed(prefix));
        println!("  wasmcustom.flowgate.requests.{code} = {counter} (senders saw {seen})");
        if counter < seen {
            verdict.problems.push(format!(
                "wasmcustom.flowgate.requests.{code} = {counter}, but senders saw {seen} such replies"
            ));
        }
    }
    if envoy.log().contains("panicked") {
        verdict.problems.push(format!("the filter panicked:\n{}", envoy.log()));
    }
}

#[test]
fn executor_faults_under_load_get_contract_answers_and_lose_no_acknowledged_run() {
    wrk_binary(); // fails here, saying how to install it, when wrk is missing
    temp_files_on_tmpfs();
    let flows = flow_file();
    let mut executor = Executor::start(&flows);
    let envoy = Envoy::start(
        EnvoyOptions::new(plugin_config_for(&flows), executor.port())
            .concurrency(2)
            .route_timeout(ROUTE_TIMEOUT),
    );
    let before = EnvoyBefore {
        pid: envoy.pid(),
        vm_stats: vm_failure_stats(&envoy.stats()),
        info: server_info(envoy.admin_port()).expect("/server_info"),
    };
    let kinds = wrk_kinds();
    assert_normal_answers_before_the_load(envoy.port(), &kinds);

    let run = run_fault_schedule(&envoy, &mut executor, &kinds);

    let mut verdict = Verdict::default();
    judge_wrk_answers(&run.summary, &mut verdict);
    let (acknowledged, acknowledged_without_run) = judge_async_answers(&run, &mut verdict);
    print_report(&run, &verdict);
    check_the_faults_happened(&run, &mut verdict);
    check_acknowledged_runs(
        &executor,
        &acknowledged,
        acknowledged_without_run,
        &mut verdict.problems,
    );
    check_envoy_never_restarted(&envoy, &before, &run, &mut verdict.problems);
    check_the_filter_counted(&envoy, &mut verdict);

    let problems = verdict.problems;
    assert!(
        problems.is_empty(),
        "{} problem(s) under load:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}
