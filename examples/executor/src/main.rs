//! `flowgate-executor`: the reference flow executor behind flowgate.
//!
//! A small real flow runner: it receives the webhooks the filter admits (contract 3), runs
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

use clap::Parser;
use queue::{FlowLookup, Queue};
use server::App;

/// Request-handling threads; each blocks in `recv()`, so a slow request only holds its own thread.
const THREADS: usize = 16;

/// The reference flow executor behind flowgate: runs the flows the filter admits, queues async
/// runs durably in SQLite, serves the live flow directory and the `/_executor/*` test endpoints.
#[derive(Debug, Parser)]
#[command(name = "flowgate-executor", args_override_self = true)]
struct Args {
    /// Address to serve on (port 0 picks a free port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    listen: String,
    /// Flow definitions
    #[arg(long, value_name = "FILE", default_value = "examples/flows.json")]
    flows: PathBuf,
    /// SQLite run store [default: flowgate-executor.sqlite3 in the system temp dir]
    #[arg(long, value_name = "FILE", default_value_os_t = std::env::temp_dir().join("flowgate-executor.sqlite3"), hide_default_value = true)]
    db: PathBuf,
    /// Path prefix of webhooks (the filter's default)
    #[arg(long, value_name = "P", default_value = server::DEFAULT_WEBHOOK_PREFIX, value_parser = webhook_prefix)]
    webhook_prefix: String,
}

fn webhook_prefix(value: &str) -> Result<String, String> {
    if value.starts_with('/') {
        Ok(value.to_string())
    } else {
        Err("must start with /".into())
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
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

    fn args(list: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("flowgate-executor").chain(list.iter().copied()))
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
        assert!(args(&["--webhook-prefix", "v1/"]).is_err());
        assert_eq!(args(&["--webhook-prefix=/hooks/"]).unwrap().webhook_prefix, "/hooks/");
        assert_eq!(
            args(&["--help"]).err().map(|e| e.kind()),
            Some(clap::error::ErrorKind::DisplayHelp)
        );
    }
}
