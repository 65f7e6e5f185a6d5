//! `flowgate-rls`: a rate-limit service for Envoy's global rate limiting
//! (`envoy.filters.http.ratelimit`), for fleet-wide limits per flow (contract 8).
//!
//! It serves Envoy's rate-limit gRPC API (`envoy.service.ratelimit.v3.RateLimitService`, types
//! from `envoy-types`, served with tonic) and leaves the counting to Kuadrant's limitador with its
//! Redis storage, so every instance of this service, and every Envoy that asks one, shares the same
//! counters. Each descriptor entry is a limitador variable (`flow_id` = the value of Envoy's
//! `x-flowgate-flow-id` header); a limit applies to one flow:
//!
//! ```text
//! flowgate-rls [--listen 127.0.0.1:8091] [--redis redis://127.0.0.1:6379] [--domain flowgate]
//!              --limit <flow id>=<requests>/<seconds> [--limit ...]
//! ```

use std::collections::HashMap;
use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use limitador::limit::{Context, Limit};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::AsyncRateLimiter;
use tonic::{Request, Response, Status};

/// The descriptor key Envoy sends (the route's `request_headers` action on `x-flowgate-flow-id`).
const FLOW_KEY: &str = "flow_id";

#[derive(Debug, Parser)]
#[command(name = "flowgate-rls")]
struct Args {
    /// gRPC address to serve Envoy's rate-limit API on (port 0 picks a free port)
    #[arg(long, default_value = "127.0.0.1:8091")]
    listen: String,
    /// Where limitador keeps the counters
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// The rate-limit domain of Envoy's filter (limitador's namespace)
    #[arg(long, default_value = "flowgate")]
    domain: String,
    /// A flow's limit: `<flow id>=<requests>/<seconds>`
    #[arg(long = "limit", value_parser = parse_limit, required = true)]
    limits: Vec<(String, u64, u64)>,
}

fn parse_limit(text: &str) -> Result<(String, u64, u64), String> {
    let problem = || format!("{text:?}: expected <flow id>=<requests>/<seconds>");
    let (flow, rate) = text.split_once('=').ok_or_else(problem)?;
    let (requests, seconds) = rate.split_once('/').ok_or_else(problem)?;
    let valid_id = !flow.is_empty() && flow.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    match (valid_id, requests.parse(), seconds.parse()) {
        (true, Ok(requests), Ok(seconds)) if seconds > 0 => Ok((flow.to_string(), requests, seconds)),
        _ => Err(problem()),
    }
}

struct Service {
    limiter: AsyncRateLimiter,
}

#[tonic::async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        let namespace = request.domain.as_str().into();
        let hits = u64::from(request.hits_addend.max(1));
        let mut statuses = Vec::new();
        let mut over = false;
        for descriptor in &request.descriptors {
            let values: HashMap<String, String> = descriptor
                .entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect();
            let context: Context = values.into();
            let result = self
                .limiter
                .check_rate_limited_and_update(&namespace, &context, hits)
                .await
                .map_err(|e| Status::unavailable(format!("limitador: {e}")))?;
            over |= result.limited;
            let code = if result.limited { Code::OverLimit } else { Code::Ok };
            statuses.push(DescriptorStatus {
                code: code.into(),
                ..DescriptorStatus::default()
            });
        }
        let overall = if over { Code::OverLimit } else { Code::Ok };
        Ok(Response::new(RateLimitResponse {
            overall_code: overall.into(),
            statuses,
            ..RateLimitResponse::default()
        }))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("flowgate-rls: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowgate-rls: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let storage = AsyncRedisStorage::new(&args.redis)
        .await
        .map_err(|e| format!("redis {}: {e}", args.redis))?;
    let limiter = AsyncRateLimiter::new_with_storage(Box::new(storage));
    for (flow, requests, seconds) in &args.limits {
        let condition = format!("{FLOW_KEY} == '{flow}'");
        let limit = Limit::new(
            args.domain.as_str(),
            *requests,
            *seconds,
            vec![condition
                .as_str()
                .try_into()
                .map_err(|e| format!("{condition}: {e:?}"))?],
            vec![FLOW_KEY.try_into().map_err(|e| format!("{FLOW_KEY}: {e:?}"))?],
        );
        limiter.add_limit(limit);
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("listen {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("flowgate-rls listening on {addr}");
    let _ = std::io::stdout().flush();
    let service = RateLimitServiceServer::new(Service { limiter });
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .map_err(|e| format!("serving: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        assert_eq!(parse_limit("g-1=10/60"), Ok(("g-1".into(), 10, 60)));
        for bad in ["g-1", "=1/1", "g=1", "g=1/0", "g'x=1/1", "g=a/1"] {
            assert!(parse_limit(bad).is_err(), "{bad}");
        }
    }
}
