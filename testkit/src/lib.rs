//! The test kit of flowgate's end-to-end tests (`tests/`, crate `flowgate-e2e`), its soak and the
//! benchmark (`bench/`): everything that starts processes or speaks to them over sockets.
//!
//! - [`envoy`]: Envoy bootstraps (the one that mirrors `envoy/envoy.yaml`, and the building blocks
//!   the benchmark assembles its listeners from), the launcher, and its admin interface.
//! - [`executor`]: the reference executor (`flowgate-executor`) as a process handle, and the demo
//!   flow file it runs.
//! - [`http`]: a raw HTTP/1.1 client with the one response parser, and HTTP/2 helpers.
//! - [`stats`]: the one parser of Envoy's admin `/stats` text.
//!
//! This crate root holds what they share: where things are, free ports and temp directories.
//! Nothing here builds the filter: `scripts/test.sh` does, before it runs the tests.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod envoy;
pub mod executor;
pub mod http;
pub mod stats;

/// How long a process may take to become ready before a test gives up on it.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a socket read may block: generous, so a slow CI machine does not flake.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The repository root (the workspace that holds this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ has a parent")
        .to_path_buf()
}

fn must_exist(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} not found at {}: run scripts/test.sh (it installs and builds everything the \
         end-to-end tests need), or scripts/setup.sh and the release builds",
        path.display()
    );
    path
}

/// Today's UTC date, `YYYY-MM-DD` (civil from days), for report names.
pub fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// A port that was free a moment ago (bound to 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A fresh directory under the system temp dir, removed on drop (kept when a test panics).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "flowgate-e2e-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Keep the logs of a failing test for a look afterwards.
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A log file as text (empty if it cannot be read).
fn read_log(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last lines of a log, for failure messages.
fn log_tail(path: &Path) -> String {
    let text = read_log(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A field of `/proc/<pid>/status` in KiB, e.g. `VmRSS` or `VmHWM`.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Whether the process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?.to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}
