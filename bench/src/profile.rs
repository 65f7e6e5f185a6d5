//! `--profile`: where the worker's time goes, from `perf record`.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::envoy::Envoy;
use crate::plan::{Listener, Scenario};
use crate::run::Bench;

impl Bench<'_> {
    /// `perf record -e cpu-clock` of Envoy while one listener is loaded, as worker CPU time per
    /// request, split by where the code lives. Envoy's binary is stripped and V8's generated code
    /// has no symbols, so this is the finest split available: Envoy itself (HTTP, the V8 and
    /// LuaJIT runtimes, host calls), the kernel (sockets), and JIT code (the wasm filter under
    /// V8 / the Lua script under LuaJIT).
    pub fn profile(&self, envoy: &Envoy, scenario: &Scenario) -> Result<String, String> {
        const HZ: u32 = 4999;
        let mut out = format!(
            "**{}** — worker thread CPU µs per request (samples at {HZ} Hz over one {} s run):\n\n\
             | listener | req/s | total | envoy binary | kernel | JIT code | libc | other |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|\n",
            scenario.name, self.o.seconds
        );
        for listener in Listener::ALL {
            let data = self
                .work
                .join(format!("perf-{}-{}.data", scenario.name, listener.name()));
            let mut perf = Command::new("perf")
                .args(["record", "-e", "cpu-clock", "-F", &HZ.to_string(), "-o"])
                .arg(&data)
                .args([
                    "-p",
                    &envoy.pid().to_string(),
                    "--",
                    "sleep",
                    &(self.o.seconds + 1).to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run perf: {e} (apt-get install linux-perf)"))?;
            std::thread::sleep(Duration::from_millis(500));
            let run = self.load(envoy, scenario, listener, self.o.seconds)?;
            let _ = perf.wait();
            let report = Command::new("perf")
                .args(["report", "--stdio", "-q", "-n", "--sort", "comm,dso", "-i"])
                .arg(&data)
                .output()
                .map_err(|e| e.to_string())?;
            let mut split = [0u64; 5];
            for line in String::from_utf8_lossy(&report.stdout).lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                let [_, samples, comm, dso @ ..] = words.as_slice() else {
                    continue;
                };
                if !comm.starts_with("wrk:worker") {
                    continue;
                }
                let slot = match dso.first().copied().unwrap_or_default() {
                    "envoy" => 0,
                    "[kernel.kallsyms]" => 1,
                    "[JIT]" => 2,
                    "libc.so.6" => 3,
                    _ => 4,
                };
                split[slot] += samples.parse::<u64>().unwrap_or(0);
            }
            let per_request = |samples: u64| samples as f64 * 1e6 / f64::from(HZ) / run.requests.max(1) as f64;
            out.push_str(&format!(
                "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                listener.name(),
                run.requests_per_sec,
                per_request(split.iter().sum()),
                per_request(split[0]),
                per_request(split[1]),
                per_request(split[2]),
                per_request(split[3]),
                per_request(split[4]),
            ));
        }
        out.push('\n');
        Ok(out)
    }
}
