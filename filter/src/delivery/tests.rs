use super::*;
use crate::schema::DedupeKey;

fn controls(key: DedupeKey) -> Controls {
    Controls {
        dedupe: Some(Dedupe { key, window_ms: 1000 }),
        rate_limit: None,
    }
}

#[test]
fn ids_come_from_a_header_or_a_json_pointer() {
    let by_header = controls(DedupeKey::Header("x-github-delivery".into()));
    let mut delivery = Delivery::default();
    let headers: Vec<(&[u8], &[u8])> = vec![(b"x-github-delivery", b" 72d3162e-cc78 ")];
    delivery.read_headers(&by_header, &headers).unwrap();
    assert_eq!(delivery.id.as_deref(), Some("72d3162e-cc78"));
    delivery.read_headers(&by_header, &[]).unwrap();
    assert_eq!(delivery.id, None);
    let bad: Vec<(&[u8], &[u8])> = vec![(b"x-github-delivery", b"a b")];
    assert_eq!(delivery.read_headers(&by_header, &bad), Err(Refusal::InvalidDeliveryId));
    let long = "x".repeat(MAX_ID_BYTES + 1);
    let bad: Vec<(&[u8], &[u8])> = vec![(b"x-github-delivery", long.as_bytes())];
    assert!(delivery.read_headers(&by_header, &bad).is_err());

    let by_body = controls(DedupeKey::Body("/data/id".into()));
    assert!(by_body.reads_body() && !by_header.reads_body());
    for (body, id) in [
        (&br#"{"data":{"id":"evt_1"}}"#[..], Some("evt_1")),
        (br#"{"data":{"id":42}}"#, Some("42")),
        (br#"{"data":{}}"#, None),
        (br#"{"data":{"id":null}}"#, None),
        (b"not json", None),
        (br#"{"data":{"id":-1.50}}"#, Some("-1.50")),
        (br#"{"data":{"id":"a\u0062"}}"#, Some("ab")),
        (br#"{"data":[{"id":"x"}]}"#, None),
    ] {
        let mut delivery = Delivery::default();
        delivery.read_body(&by_body, body).unwrap();
        assert_eq!(delivery.id.as_deref(), id, "{}", String::from_utf8_lossy(body));
    }
    let mut delivery = Delivery::default();
    assert!(delivery.read_body(&by_body, br#"{"data":{"id":{}}}"#).is_err());
    assert!(delivery.read_body(&by_body, br#"{"data":{"id":true}}"#).is_err());
    let in_arrays = controls(DedupeKey::Body("/items/1/a~1b".into()));
    delivery
        .read_body(&in_arrays, br#"{"items":[{}, {"a/b": "deep"}]}"#)
        .unwrap();
    assert_eq!(delivery.id.as_deref(), Some("deep"));
    delivery.read_body(&in_arrays, br#"{"items":[{}]}"#).unwrap();
    assert_eq!(delivery.id, None);
}

#[test]
fn a_passed_answer_keeps_its_content_type() {
    let reply = passed(201, Some(b"text/plain".to_vec()), b"ok".to_vec());
    assert_eq!(reply.headers, [("content-type", "text/plain".to_string())]);
    assert!(passed(200, None, vec![]).headers.is_empty());
}
