//! `flowgate-executor`: the reference flow executor behind flowgate.
//!
//! A small real flow runner: it receives the webhooks the filter admits (CONTRACT section 3), runs
//! sync flows at once and queues async ones durably in SQLite, serves the live flow directory
//! (section 4), and exposes `/_executor/*` endpoints for demos and end-to-end tests.
//!
//! ```text
//! flowgate-executor [--listen 127.0.0.1:8081] [--flows examples/flows.json] [--db PATH]
//!                   [--webhook-prefix /v1/flow-webhook/]
//! ```
//!
//! This file parses the arguments and runs the HTTP server; see `flows.rs` (definitions and step
//! evaluation), `queue.rs` (run store and worker) and `server.rs` (endpoints).

mod flows;
mod queue;
mod server;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use queue::{FlowLookup, Queue};
use server::App;

/// Request-handling threads; each blocks in `recv()`, so a slow request only holds its own thread.
const THREADS: usize = 16;

const USAGE: &str = "usage: flowgate-executor [--listen ADDR] [--flows FILE] [--db FILE] [--webhook-prefix P]

  --listen ADDR         address to serve on (default 127.0.0.1:8081; port 0 picks a free port)
  --flows FILE          flow definitions (default examples/flows.json)
  --db FILE             SQLite run store (default flowgate-executor.sqlite3 in the system temp dir)
  --webhook-prefix P    path prefix of webhooks (default /v1/flow-webhook/, as the filter's default)";

struct Args {
    listen: String,
    flows: PathBuf,
    db: PathBuf,
    webhook_prefix: String,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        listen: "127.0.0.1:8081".into(),
        flows: PathBuf::from("examples/flows.json"),
        db: std::env::temp_dir().join("flowgate-executor.sqlite3"),
        webhook_prefix: server::DEFAULT_WEBHOOK_PREFIX.into(),
    };
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        if name == "-h" || name == "--help" {
            return Err(String::new());
        }
        let value = match inline.or_else(|| args.next()) {
            Some(v) => v,
            None => return Err(format!("{name} needs a value")),
        };
        match name.as_str() {
            "--listen" => parsed.listen = value,
            "--flows" => parsed.flows = value.into(),
            "--db" => parsed.db = value.into(),
            "--webhook-prefix" if value.starts_with('/') => parsed.webhook_prefix = value,
            "--webhook-prefix" => return Err("--webhook-prefix must start with /".into()),
            _ => return Err(format!("unknown argument {name}")),
        }
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("flowgate-executor: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowgate-executor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.flows).map_err(|e| format!("{}: {e}", args.flows.display()))?;
    let flows = flows::load_file(&text).map_err(|e| format!("{}: {e}", args.flows.display()))?;
    let queue = Arc::new(Queue::open(&args.db).map_err(|e| format!("{}: {e}", args.db.display()))?);
    let app = Arc::new(App::new(flows, args.webhook_prefix, Arc::clone(&queue)));

    let lookup: FlowLookup = {
        let app = Arc::clone(&app);
        Arc::new(move |id: &str| app.flow(id))
    };
    queue
        .start_worker(lookup)
        .map_err(|e| format!("starting the worker: {e}"))?;

    let server = Arc::new(tiny_http::Server::http(&args.listen).map_err(|e| format!("listen {}: {e}", args.listen))?);
    let addr = server
        .server_addr()
        .to_ip()
        .map(|a| a.to_string())
        .unwrap_or(args.listen);
    println!("flowgate-executor listening on http://{addr}");
    let _ = std::io::stdout().flush();

    let workers: Vec<_> = (0..THREADS)
        .map(|i| {
            let server = Arc::clone(&server);
            let app = Arc::clone(&app);
            thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || loop {
                    let mut request = match server.recv() {
                        Ok(request) => request,
                        Err(e) => {
                            eprintln!("flowgate-executor: accept failed: {e}");
                            continue;
                        }
                    };
                    let response = app.handle(&mut request);
                    if let Err(e) = request.respond(response) {
                        eprintln!("flowgate-executor: writing a response failed: {e}");
                    }
                })
                .expect("spawn an http thread")
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn cli_defaults_and_overrides() {
        let a = args(&[]).unwrap();
        assert_eq!(a.listen, "127.0.0.1:8081");
        assert_eq!(a.flows, PathBuf::from("examples/flows.json"));
        assert!(a.db.ends_with("flowgate-executor.sqlite3"));
        let a = args(&["--listen", "127.0.0.1:0", "--db=/tmp/x.db", "--flows", "f.json"]).unwrap();
        assert_eq!(
            (a.listen.as_str(), a.db, a.flows),
            ("127.0.0.1:0", "/tmp/x.db".into(), "f.json".into())
        );
        assert!(args(&["--listen"]).is_err());
        assert!(args(&["--bogus", "1"]).is_err());
        assert_eq!(args(&["--help"]).err().unwrap(), "");
    }
}
