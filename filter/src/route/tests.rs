//! Path routing: canonical webhooks, every spelling that normalises into the prefix, and
//! what passes.

use super::*;

const PREFIX: &str = "/v1/flow-webhook/";

#[test]
fn canonical_webhook_paths_name_their_flow() {
    assert_eq!(
        route(PREFIX, "/v1/flow-webhook/f-1001"),
        Route::Webhook { flow_id: "f-1001" }
    );
    assert_eq!(
        route(PREFIX, "/v1/flow-webhook/f-1001?a=1&b=%2F"),
        Route::Webhook { flow_id: "f-1001" }
    );
    assert_eq!(route(PREFIX, "/v1/flow-webhook/"), Route::Webhook { flow_id: "" });
    assert_eq!(
        route(PREFIX, "/v1/flow-webhook/f-1001/x"),
        Route::Webhook { flow_id: "f-1001/x" }
    );
}

#[test]
fn other_paths_are_outside() {
    for path in [
        "/",
        "/healthz",
        "/v1/flow-webhook",
        "/v1/flows",
        "/v2/flow-webhook/f-1",
        "/a/%2F/b",
        "/x/../y",
    ] {
        assert_eq!(route(PREFIX, path), Route::Outside, "{path}");
    }
}

#[test]
fn every_other_spelling_of_a_webhook_is_refused() {
    for path in [
        "//v1/flow-webhook/f-1001",
        "/v1//flow-webhook/f-1001",
        "/v1/flow-webhook//f-1001",
        "/v1/flow-webhook%2Ff-1001",
        "/v1/flow-webhook%2ff-1001",
        "/v1%2Fflow-webhook/f-1001",
        "/v1/flow-webhook%5Cf-1001",
        "/v1\\flow-webhook/f-1001",
        "/v1/x/../flow-webhook/f-1001",
        "/v1/./flow-webhook/f-1001",
        "/v1/flow-webhook/./f-1001",
        "/v1/flow-webhook/%66-1001",
        "/v1/flow-webhook/f-1001/..",
        "/v1/flow-webhook/x/../f-1001",
        "/%761/flow-webhook/f-1001",
        "/v1/flow-webhook%252Ff-1001",
        "/V1/Flow-Webhook/f-1001",
        "/v1/flow-webhook/f-1001%2F",
        "/v1/flow-webhook/.",
        "/v1/flow-webhook;jsessionid=1/f-1001",
        "/v1/flow-webhook/f-1001;x",
    ] {
        assert_eq!(route(PREFIX, path), Route::NonCanonical, "{path}");
    }
}

/// Found by `fuzz/` (target `decide`): encodings nested past the decoding rounds
/// were judged by a partial decoding only, so they passed as non-webhooks.
#[test]
fn deeply_encoded_spellings_are_refused() {
    for path in [
        "/v1/flow-webhook%2525252Ff-1001",
        "/%2525252Fv1/flow-webhook/f-1001",
        "/v1/flow-webhoo%25256b/f-1001",
        "/v1/flow-webhoo%252525256b/f-1001",
        "/x/%252525252e%252525252e/v1/flow-webhook/f-1001",
    ] {
        assert_eq!(route(PREFIX, path), Route::NonCanonical, "{path}");
    }
    assert_eq!(route(PREFIX, "/static/%25252525252541"), Route::Outside);
}

/// Found by `fuzz/` (target `decide`): everything from a `#` was cut off like a query,
/// so `/x#/../v1/flow-webhook/f-1001` passed, though an executor that keeps the `#`
/// in the path resolves it to the webhook.
#[test]
fn a_fragment_is_part_of_the_spelling() {
    for path in [
        "/x#/../v1/flow-webhook/f-1001",
        "/v1/flow-webhook/f-1001#x",
        "/v1/flow-webhook/f-2#/../f-1001",
    ] {
        assert_eq!(route(PREFIX, path), Route::NonCanonical, "{path}");
    }
    assert_eq!(route(PREFIX, "/static#frag"), Route::Outside);
    assert_eq!(route(PREFIX, "/v1/flow-webhook#/f-1001"), Route::Outside);
    assert_eq!(
        route(PREFIX, "/v1/flow-webhook/f-1001?q=#x"),
        Route::Webhook { flow_id: "f-1001" }
    );
}

/// Found by `fuzz/` (target `decide`): `;params` were only cut after separators were
/// decoded, so a parameter holding an encoded `/` or a `\\` hid the segments after it.
#[test]
fn params_are_cut_before_separators_are_decoded_too() {
    for path in [
        "/;%2Fx/v1/flow-webhook/f-1001",
        "/;\\x/v1/flow-webhook/f-1001",
        "/v1;%5C..%5C../flow-webhook/f-1001",
        "/v1/flow-webhook;%2F..%2F..%2Fx/f-1001",
    ] {
        assert_eq!(route(PREFIX, path), Route::NonCanonical, "{path}");
    }
    assert_eq!(route(PREFIX, "/x;%2F/v2/f-1001"), Route::Outside);
}

/// Found by `fuzz/` (target `decide`): `;params` were always cut, so `..;` was read
/// as a dot segment, while a server that keeps parameters (most do) reads a segment
/// named `..;` and so a webhook path.
#[test]
fn params_are_also_kept_as_most_servers_do() {
    for path in [
        "/v1/flow-webhook/..;",
        "/v1/flow-webhook/;x/../f-1001",
        "/v1/flow-webhook/;/../f-1001",
    ] {
        assert_eq!(route(PREFIX, path), Route::NonCanonical, "{path}");
    }
    assert_eq!(route(PREFIX, "/v1/x;/../flow-webhook"), Route::Outside);
}

/// Found by `fuzz/` (target `decide`): `\` and encoded separators always split
/// segments, so dot segments after them climbed out of the prefix, while a server
/// that keeps them in the segment (most keep `%2F`, many `\`) reads a webhook path.
#[test]
fn separators_are_also_kept_as_many_servers_do() {
    for path in [
        "//v1/flow-webhook/..%2Fx",
        "/v1/flow-webhook/x%2F..%2F..",
        "/v1/flow-webhook/x\\..\\..",
        "/v1/flow-webhook/x%5C..%5C..%5C..",
    ] {
        assert_eq!(route(PREFIX, path), Route::NonCanonical, "{path}");
    }
    assert_eq!(route(PREFIX, "/v1/x\\..\\flow-webhook"), Route::Outside);
}

/// Found by `fuzz/` (target `decide`): a path without its leading `/` was plain, so
/// `v1/flow-webhook/f-1001` passed, though a server that roots it reads the webhook.
#[test]
fn a_path_without_its_leading_slash_is_rooted() {
    assert_eq!(route(PREFIX, "v1/flow-webhook/f-1001"), Route::NonCanonical);
    assert_eq!(route(PREFIX, "V1/flow-webhook/"), Route::NonCanonical);
    assert_eq!(route(PREFIX, "healthz"), Route::Outside);
    assert_eq!(route(PREFIX, "*"), Route::Outside);
}

/// Found by tests/hostile.rs: literal dot segments after the prefix were resolved
/// before matching, so a path spelled under the prefix passed as a non-webhook.
#[test]
fn dot_segments_leading_out_of_the_prefix_are_refused() {
    for path in [
        "/v1/flow-webhook/f-1001/../../healthz",
        "/v1/flow-webhook/..",
        "/v1/flow-webhook/../",
        "//v1/flow-webhook/f-1001/../..",
    ] {
        assert_eq!(route(PREFIX, path), Route::NonCanonical, "{path}");
    }
    assert_eq!(route(PREFIX, "/x/../healthz"), Route::Outside);
}

#[test]
fn full_decoding_is_decoding_until_nothing_changes() {
    for input in [
        b"%2525252F".as_slice(),
        b"%%32%35%34%31",
        b"%2%34%31",
        b"%%%41",
        b"%zz%4",
        b"%25%32%46",
    ] {
        let mut rounds = input.to_vec();
        loop {
            let next = percent_decode(&rounds);
            if next == rounds {
                break;
            }
            rounds = next;
        }
        assert_eq!(
            percent_decode_fully(input),
            rounds,
            "{}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn percent_decode_keeps_invalid_escapes() {
    assert_eq!(percent_decode(b"a%2Fb%zz%4"), b"a/b%zz%4".to_vec());
}
