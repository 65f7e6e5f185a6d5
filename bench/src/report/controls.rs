//! The cost of sender verification and delivery controls, beside the bearer-token baseline.

use std::fmt::Write as _;

use super::{Measured, Report};
use crate::plan::Listener;

/// What a signature check, a dedupe claim or a rate limit adds to an admitted webhook: each
/// scenario against `body-1k` (the same flow and body with a bearer token only), by the
/// worker's CPU per request.
pub fn table(md: &mut String, report: &Report) {
    use Listener::Flowgate;
    let find = |name: &str| report.measured.iter().find(|m| m.scenario.name == name);
    let Some(base) = find("body-1k") else {
        return;
    };
    let rows: Vec<&Measured> = ["signed", "dedupe", "rate-limit"]
        .into_iter()
        .filter_map(find)
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "What verification and delivery controls add to an admitted webhook (flowgate, against \
         `body-1k`: the same flow and 1 KiB body with a bearer token only, {:.1} worker CPU µs/req):\n\n\
         | scenario | worker CPU µs/req | added µs/req |\n|---|---:|---:|",
        base.cpu_us(Flowgate)
    );
    for m in rows {
        let _ = writeln!(
            md,
            "| {} ({}) | {:.1} | {:+.1} |",
            m.scenario.name,
            m.scenario.what,
            m.cpu_us(Flowgate),
            m.cpu_us(Flowgate) - base.cpu_us(Flowgate)
        );
    }
    md.push('\n');
}
