//! Flows with `verify` through the stream: the body is held until its signature is checked,
//! whatever the chunking or ending, and a refused or handshake request never goes upstream.

use super::*;

const SECRET: &str = "It's a Secret to Everybody";
/// GitHub's documented example: this signature of "Hello, World!" with `SECRET`.
const SIGNATURE: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

fn signed(headers: &[(&str, &str)]) -> Run {
    let mut run = Run::new(headers);
    let json = serde_json::json!({"flows": [
        {"id": "f-github", "ref_id": "web1", "status": "live", "verify": {"scheme": "github", "secrets": [SECRET]}},
        {"id": "f-dropbox", "ref_id": "web1", "status": "live", "verify": {"scheme": "dropbox", "secrets": [SECRET]}},
    ]});
    run.config = PluginConfig::parse(json.to_string().as_bytes()).unwrap();
    run
}

fn body_events(chunks: &[&[u8]], trailers: bool) -> Vec<Event> {
    let mut events = vec![Event::RequestHeaders { end: false }];
    for (i, chunk) in chunks.iter().enumerate() {
        let end = !trailers && i + 1 == chunks.len();
        events.push(Event::RequestBody {
            chunk: chunk.to_vec(),
            end,
        });
    }
    if trailers {
        events.push(Event::RequestTrailers);
    }
    events
}

#[test]
fn a_signed_body_goes_upstream_whole_however_it_arrives() {
    for trailers in [false, true] {
        let mut run = signed(&[
            (":method", "POST"),
            (":path", "/v1/flow-webhook/f-github"),
            ("x-hub-signature-256", SIGNATURE),
        ]);
        run.events(body_events(&[b"Hello", b", Wor", b"ld!"], trailers));
        assert!(run.continued && run.envoy.replies.is_empty(), "trailers {trailers}");
        assert_eq!(run.envoy.upstream_body, b"Hello, World!");
    }
}

#[test]
fn a_bad_signature_is_refused_before_anything_goes_upstream() {
    for body in [&b"Hello, World?"[..], b""] {
        let mut run = signed(&[
            (":method", "POST"),
            (":path", "/v1/flow-webhook/f-github"),
            ("x-hub-signature-256", SIGNATURE),
            ("content-length", "13"),
        ]);
        run.events(body_events(&[body], false));
        assert_eq!(run.reply(), (401, "invalid_signature".into()));
        assert!(!run.continued);
        assert!(run
            .envoy
            .counts
            .contains(&Counter::InvalidSignature(crate::verify::Reason::Mismatch)));
    }
}

#[test]
fn a_get_handshake_is_answered_at_the_head() {
    let mut run = signed(&[
        (":method", "GET"),
        (":path", "/v1/flow-webhook/f-dropbox?challenge=abc123"),
    ]);
    run.events([Event::RequestHeaders { end: true }]);
    assert_eq!(run.reply(), (200, "abc123".into()));
    assert!(!run.continued);
    // Other GETs on a POST flow are still not allowed.
    let mut run = signed(&[(":method", "GET"), (":path", "/v1/flow-webhook/f-dropbox")]);
    run.events([Event::RequestHeaders { end: true }]);
    assert_eq!(run.reply(), (405, "method_not_allowed".into()));
}
