//! `flowgate-executor`: the reference flow executor behind flowgate.
//!
//! A small real flow runner: it receives the webhooks the filter admits (contract 3), runs
//! sync flows at once and queues async ones durably in SQLite, serves the live flow directory
//! (section 4), and exposes `/_executor/*` endpoints for demos and end-to-end tests.
//!
//! ```text
//! flowgate-executor [--listen 127.0.0.1:8081] [--flows examples/flows.json] [--db PATH]
//!                   [--webhook-prefix /v1/flow-webhook/] [--generated-flows N]
//! ```
//!
//! `--generated-flows N` adds N demo flows after the file's, `g-0000000` to `g-<N-1>`: live, sync,
//! bound to `w`, no steps (a run answers `{}`), all accepting the token
//! `generated-flows-token-3e1f0a9d8c7b6a5f4e3d2c1b0a99887766554433`. Each costs 24 bytes until
//! changed: a million start in well under a second, in about 30 MB.
//!
//! This file parses the arguments and runs the HTTP server (axum on hyper and tokio: HTTP/1.1 and
//! HTTP/2 prior knowledge, every connection served however many arrive at once); see `flows.rs`
//! (definitions and step evaluation), `directory.rs` (the flow set, its versions and deltas),
//! `queue.rs` (run store and worker) and `server.rs`
//! (endpoints). Endpoints block (SQLite, injected delays), so each request runs on tokio's
//! blocking pool and never holds up the connections' event loop.

mod directory;
mod flows;
mod queue;
mod server;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use queue::{FlowLookup, Queue};
use server::{App, InitialFlows};

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
    /// Add N generated flows (g-0000000, ...) after the file's flows
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(..i64::from(flows::GENERATED_MAX)))]
    generated_flows: u32,
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
    let initial = InitialFlows {
        flows: flows.into_iter().map(Arc::new).collect(),
        generated: args.generated_flows,
    };
    let app = Arc::new(
        App::new(initial, args.webhook_prefix, Arc::clone(&queue))
            .map_err(|e| format!("{}: {e}", args.flows.display()))?,
    );

    let lookup: FlowLookup = {
        let app = Arc::clone(&app);
        Arc::new(move |id: &str| app.flow(id))
    };
    queue
        .start_worker(lookup)
        .map_err(|e| format!("starting the worker: {e}"))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| format!("listen {}: {e}", args.listen))?;
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or(args.listen);
        println!("flowgate-executor listening on http://{addr}");
        let _ = std::io::stdout().flush();
        let router = axum::Router::new().fallback(serve).with_state(app);
        axum::serve(listener, router).await.map_err(|e| format!("serving: {e}"))
    })
}

/// Reads the whole request, answers it with [`App::handle`] on the blocking pool.
async fn serve(State(app): State<Arc<App>>, request: Request) -> Response {
    let (head, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("could not read the request body: {e}")).into_response(),
    };
    let url = head.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let headers: Vec<(String, String)> = head
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let method = head.method.as_str().to_string();
    let answer = tokio::task::spawn_blocking(move || app.handle(&method, &url, &headers, &body)).await;
    let Ok(answer) = answer else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "the request handler failed").into_response();
    };
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in answer.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(HeaderName::from_static(name), value);
        }
    }
    response
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
        assert_eq!(a.generated_flows, 0);
        assert_eq!(
            args(&["--generated-flows", "1000000"]).unwrap().generated_flows,
            1_000_000
        );
        assert_eq!(args(&["--generated-flows=9999999"]).unwrap().generated_flows, 9_999_999);
        assert!(args(&["--generated-flows", "10000000"]).is_err());
        assert!(args(&["--generated-flows", "-1"]).is_err());
        assert_eq!(
            args(&["--help"]).err().map(|e| e.kind()),
            Some(clap::error::ErrorKind::DisplayHelp)
        );
    }
}
