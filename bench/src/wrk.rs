//! Runs `wrk` (one thread, 16 connections, `--latency`) and reads its report.

use std::path::Path;
use std::process::Command;

/// What one wrk run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Run {
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
    /// Answers other than 2xx/3xx (expected for the 401 scenarios).
    pub non_2xx: u64,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
    /// Envoy's worker thread CPU time during the run, µs (0 when unknown).
    pub worker_cpu_us: f64,
}

impl Run {
    /// Worker CPU µs per request (NaN when unknown).
    pub fn cpu_per_request(&self) -> f64 {
        if self.worker_cpu_us > 0.0 && self.requests > 0 {
            self.worker_cpu_us / self.requests as f64
        } else {
            f64::NAN
        }
    }
}

pub struct Load<'a> {
    pub url: String,
    pub seconds: u32,
    pub connections: u32,
    pub script: &'a Path,
    pub token: &'a str,
    pub body_file: &'a Path,
    pub cpu: Option<u32>,
    /// Each connection waits this long between requests (a paced load, not a saturating one).
    pub delay_ms: Option<u32>,
    /// One more header on every request (a signature).
    pub header: Option<(&'a str, String)>,
    /// A header whose value is new on every request (a delivery id): this prefix, then a count.
    pub unique: Option<(&'a str, String)>,
}

pub fn run(load: &Load<'_>) -> Result<Run, String> {
    let mut command = match load.cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    let output = command
        .args([
            "-t1",
            &format!("-c{}", load.connections),
            &format!("-d{}s", load.seconds),
            "--latency",
            "-s",
        ])
        .arg(load.script)
        .arg(&load.url)
        .env("BENCH_TOKEN", load.token)
        .env("BENCH_BODY_FILE", load.body_file)
        .envs(load.delay_ms.map(|ms| ("BENCH_DELAY_MS", ms.to_string())))
        .envs(load.header.iter().flat_map(|(name, value)| {
            [
                ("BENCH_HEADER_NAME", name.to_string()),
                ("BENCH_HEADER_VALUE", value.clone()),
            ]
        }))
        .envs(load.unique.iter().flat_map(|(name, prefix)| {
            [
                ("BENCH_UNIQUE_NAME", name.to_string()),
                ("BENCH_UNIQUE_PREFIX", prefix.clone()),
            ]
        }))
        .output()
        .map_err(|e| format!("cannot run wrk: {e} (install it: scripts/setup.sh --bench)"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse(&text).ok_or_else(|| format!("cannot read wrk's report:\n{text}"))
}

/// Reads wrk 4's text report.
pub fn parse(report: &str) -> Option<Run> {
    let mut run = Run::default();
    let mut have = (false, false, false);
    for line in report.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(value)) => {
                run.requests_per_sec = value.parse().ok()?;
                have.0 = true;
            }
            (Some("50%"), Some(value)) => {
                run.p50_us = duration_us(value)?;
                have.1 = true;
            }
            (Some("99%"), Some(value)) => {
                run.p99_us = duration_us(value)?;
                have.2 = true;
            }
            (Some(count), Some("requests")) => run.requests = count.parse().ok()?,
            (Some("Non-2xx"), _) => run.non_2xx = line.rsplit(' ').next()?.parse().ok()?,
            (Some("Socket"), Some("errors:")) => {
                run.socket_errors = line
                    .split(',')
                    .filter_map(|part| part.rsplit(' ').next()?.parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    (have == (true, true, true)).then_some(run)
}

/// `812.00us`, `1.25ms`, `2.00s`, `1.00m` -> microseconds.
fn duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 5s test @ http://127.0.0.1:18003/v1/flow-webhook/f-1001
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   740.12us  200.00us   5.00ms   90.00%
    Req/Sec    21.50k     1.00k   23.00k    80.00%
  Latency Distribution
     50%  700.50us
     75%  800.00us
     90%  900.00us
     99%    1.52ms
  107500 requests in 5.00s, 20.00MB read
  Socket errors: connect 0, read 3, write 1, timeout 0
  Non-2xx or 3xx responses: 107500
Requests/sec:  21500.25
Transfer/sec:      4.00MB
";

    #[test]
    fn reads_throughput_percentiles_and_errors() {
        let run = parse(REPORT).unwrap();
        assert_eq!(
            run,
            Run {
                requests_per_sec: 21500.25,
                p50_us: 700.5,
                p99_us: 1520.0,
                requests: 107500,
                non_2xx: 107500,
                socket_errors: 4,
                worker_cpu_us: 0.0,
            }
        );
    }

    #[test]
    fn a_report_without_latency_distribution_is_refused() {
        assert!(parse("Requests/sec: 10.0\n").is_none());
        assert_eq!(duration_us("2.00s"), Some(2e6));
    }
}
