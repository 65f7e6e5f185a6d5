//! The executor's endpoints, the directory's versions and deltas included.

use super::*;
use crate::directory::Slot;
use crate::flows::{generated_id, generated_json};

#[test]
fn paths_normalise_like_an_executor_would() {
    for (raw, normalised) in [
        ("/v1/flow-webhook/f-1001", "/v1/flow-webhook/f-1001"),
        ("//v1///flow-webhook/f-1001", "/v1/flow-webhook/f-1001"),
        ("/v1/./x/../flow-webhook/f-1001", "/v1/flow-webhook/f-1001"),
        ("/v1%2Fflow-webhook%2ff-1001", "/v1/flow-webhook/f-1001"),
        ("/v1%5Cflow-webhook\\f-1001", "/v1/flow-webhook/f-1001"),
        ("/%76%31/flow%2Dwebhook/f-1001", "/v1/flow-webhook/f-1001"),
        ("/../../v1/flow-webhook/", "/v1/flow-webhook/"),
        ("/v1/flow-webhook%252Ff-1001", "/v1/flow-webhook%2Ff-1001"),
        ("/a/%zz/%4", "/a/%zz/%4"),
        ("/", "/"),
        ("", "/"),
    ] {
        assert_eq!(normalize_path(raw), normalised, "{raw}");
    }
}

#[test]
fn faults_parse_and_round_trip() {
    for v in [
        json!({"mode": "none"}),
        json!({"mode": "status", "status": 503}),
        json!({"mode": "garbage"}),
        json!({"mode": "slow", "delay_ms": 3000}),
    ] {
        assert_eq!(Fault::parse(&v).unwrap().to_json(), v);
    }
    assert!(Fault::parse(&json!({"mode": "status", "status": 42})).is_err());
    assert!(Fault::parse(&json!({"mode": "slow"})).is_err());
    assert!(Fault::parse(&json!({"mode": "chaos"})).is_err());
}

fn flow(value: Value) -> Flow {
    Flow::from_json(&value).unwrap()
}

#[test]
fn directory_strips_executor_fields_and_etag_follows_content() {
    let flow = |status: &str, run_ms: u64| {
        flow(json!({"id": "f", "ref_id": "w", "status": status, "run_ms": run_ms,
            "steps": [{"ref_id": "r", "values": {"v": "1"}}]}))
    };
    let initial = |status| InitialFlows {
        flows: vec![Arc::new(flow(status, 3))],
        generated: 0,
    };
    let mut a = FlowSet::new(&initial("live"), 7).unwrap();
    let dir: Value = serde_json::from_slice(&a.full_document()).unwrap();
    assert_eq!(
        dir,
        json!({"version": "7", "flows": [{"id": "f", "ref_id": "w", "status": "live"}]})
    );
    let etag = a.etag();
    assert!(etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"));
    // The same content, or a change to executor-only fields only: the same version and ETag.
    a.upsert(flow("live", 3));
    a.upsert(flow("live", 9));
    a.replace([Entry::Flow(Arc::new(flow("live", 5)))]);
    assert_eq!((a.version, a.etag()), (7, etag.clone()));
    assert_eq!(a.get("f").unwrap().run_ms, 5);
    // Any change to the directory entry: a new version, a new ETag, a new document.
    a.upsert(flow("paused", 5));
    assert_eq!(a.version, 8);
    assert_ne!(a.etag(), etag);
    let dir: Value = serde_json::from_slice(&a.full_document()).unwrap();
    assert_eq!(dir["version"], "8");
    assert_eq!(dir["flows"][0]["status"], "paused");
    // Back to the first content is a change too: the ETag names the version, not the bytes.
    a.upsert(flow("live", 5));
    assert_eq!(a.version, 9);
    assert_ne!(a.etag(), etag);
    assert_eq!(a.len(), 1);
    assert_eq!(std::mem::size_of::<Slot>(), 24);
}

/// An executor with `flows` and `generated` generated flows (its own SQLite file).
fn app(name: &str, flows: &[Value], generated: u32) -> App {
    let path = std::env::temp_dir().join(format!(
        "flowgate-executor-test-server-{name}-{}.sqlite3",
        std::process::id()
    ));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let initial = InitialFlows {
        flows: flows.iter().map(|f| Arc::new(flow(f.clone()))).collect(),
        generated,
    };
    App::new(
        initial,
        DEFAULT_WEBHOOK_PREFIX.into(),
        Arc::new(Queue::open(&path).unwrap()),
    )
    .unwrap()
}

fn call(app: &App, method: &str, url: &str, body: &Value) -> Resp {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    app.handle(method, url, &[], &body)
}

/// `GET url` (with `If-None-Match` if given): the answer, its ETag and its JSON body.
fn get(app: &App, url: &str, if_none_match: Option<&str>) -> (Resp, String, Value) {
    let headers: Vec<(String, String)> = if_none_match
        .map(|tag| ("if-none-match".to_string(), tag.to_string()))
        .into_iter()
        .collect();
    let resp = app.handle("GET", url, &headers, b"");
    let etag = resp
        .headers
        .iter()
        .find(|(n, _)| *n == "etag")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if resp.status == 200 {
        assert!(
            resp.headers.contains(&("content-type", "application/json".into())),
            "{resp:?}"
        );
    }
    let body = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    (resp, etag, body)
}

fn version(doc: &Value) -> u64 {
    doc["version"].as_str().unwrap().parse().unwrap()
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|f| f.get("id").unwrap_or(f).as_str().unwrap())
        .collect()
}

fn three() -> Vec<Value> {
    ["f-1", "f-2", "f-3"]
        .iter()
        .map(|id| json!({"id": id, "ref_id": "w", "status": "live", "run_ms": 1}))
        .collect()
}

#[test]
fn deltas_name_what_changed_since_a_version() {
    let app = app("deltas", &three(), 0);
    let (resp, etag, full) = get(&app, "/v1/flows", None);
    assert_eq!(resp.status, 200);
    let v0 = version(&full);
    assert_eq!(ids(&full["flows"]), ["f-1", "f-2", "f-3"]);
    assert_eq!(full["flows"][0], json!({"id": "f-1", "ref_id": "w", "status": "live"}));
    assert_eq!(etag, format!("\"v{v0}\""));

    // Nothing since the current version: an empty delta, or 304 to the current ETag.
    let (_, tag, delta) = get(&app, &format!("/v1/flows?since={v0}"), None);
    assert_eq!(delta, json!({"version": v0.to_string(), "changed": [], "removed": []}));
    assert_eq!(tag, etag);
    let (resp, tag, _) = get(&app, &format!("/v1/flows?since={v0}"), Some(&etag));
    assert_eq!((resp.status, resp.body.len(), tag.as_str()), (304, 0, etag.as_str()));

    // Pausing one flow: a delta of exactly that flow, at the next version.
    let paused = call(&app, "PUT", "/_executor/flows/f-2", &json!({"status": "paused"}));
    assert_eq!(paused.status, 200);
    let (_, tag, delta) = get(&app, &format!("/v1/flows?since={v0}"), Some(&etag));
    assert_eq!(
        delta,
        json!({"version": (v0 + 1).to_string(),
               "changed": [{"id": "f-2", "ref_id": "w", "status": "paused"}], "removed": []})
    );
    assert_eq!(tag, format!("\"v{}\"", v0 + 1));
    let answer: Value = serde_json::from_slice(&paused.body).unwrap();
    assert_eq!(
        (answer["etag"].as_str(), version(&answer)),
        (Some(tag.as_str()), v0 + 1)
    );

    // Deleting one: a removal; both changes since v0, one since v0 + 1.
    assert_eq!(call(&app, "DELETE", "/_executor/flows/f-3", &Value::Null).status, 200);
    assert_eq!(call(&app, "DELETE", "/_executor/flows/f-3", &Value::Null).status, 404);
    let (_, _, delta) = get(&app, &format!("/v1/flows?since={}", v0 + 1), None);
    assert_eq!((ids(&delta["changed"]), ids(&delta["removed"])), (vec![], vec!["f-3"]));
    let (_, _, delta) = get(&app, &format!("/v1/flows?since={v0}"), None);
    assert_eq!(
        (ids(&delta["changed"]), ids(&delta["removed"])),
        (vec!["f-2"], vec!["f-3"])
    );
    assert_eq!(version(&delta), v0 + 2);

    // Re-adding a removed id: changed, no longer removed.
    let added = call(
        &app,
        "POST",
        "/_executor/flows",
        &json!({"id": "f-3", "status": "live"}),
    );
    assert_eq!(added.status, 200);
    let (_, _, delta) = get(&app, &format!("/v1/flows?since={v0}"), None);
    assert_eq!(
        (ids(&delta["changed"]), ids(&delta["removed"])),
        (vec!["f-2", "f-3"], vec![])
    );
    assert_eq!(delta["changed"][1], json!({"id": "f-3", "status": "live"}));
    let (_, _, full) = get(&app, "/v1/flows", None);
    assert_eq!(
        (version(&full), ids(&full["flows"])),
        (v0 + 3, vec!["f-1", "f-2", "f-3"])
    );

    // The full document, the delta and 304 all follow the directory fault, as before.
    call(
        &app,
        "PUT",
        "/_executor/directory-fault",
        &json!({"mode": "status", "status": 503}),
    );
    assert_eq!(get(&app, &format!("/v1/flows?since={v0}"), None).0.status, 503);
    assert_eq!(get(&app, "/v1/flows", Some(&etag)).0.status, 503);
}

#[test]
fn replacing_the_whole_set_diffs_flow_by_flow() {
    let app = app("replace", &three(), 0);
    let v0 = version(&get(&app, "/v1/flows", None).2);
    let set = json!({"flows": [
        {"id": "f-4", "status": "live"},
        {"id": "f-2", "ref_id": "w", "status": "paused", "run_ms": 1},
        {"id": "f-1", "ref_id": "w", "status": "live", "run_ms": 9},
    ]});
    assert_eq!(call(&app, "PUT", "/_executor/flows", &set).status, 200);
    let (_, etag, delta) = get(&app, &format!("/v1/flows?since={v0}"), None);
    // One version for the whole change, ordered by id within it; f-1 changed only run_ms.
    assert_eq!(version(&delta), v0 + 1);
    assert_eq!(
        (ids(&delta["changed"]), ids(&delta["removed"])),
        (vec!["f-2", "f-4"], vec!["f-3"])
    );
    assert_eq!(app.flow("f-1").unwrap().run_ms, 9);
    // The same set again changes nothing: same version, same ETag.
    let again: Value = serde_json::from_slice(&call(&app, "PUT", "/_executor/flows", &set).body).unwrap();
    assert_eq!(version(&again), v0 + 1);
    assert_eq!(get(&app, "/v1/flows", Some(&etag)).0.status, 304);
    // Reset is a diff back to the initial set.
    assert_eq!(call(&app, "POST", "/_executor/reset", &Value::Null).status, 200);
    let (_, _, delta) = get(&app, &format!("/v1/flows?since={}", v0 + 1), None);
    assert_eq!(
        (ids(&delta["changed"]), ids(&delta["removed"])),
        (vec!["f-2", "f-3"], vec!["f-4"])
    );
    let (_, _, full) = get(&app, "/v1/flows", None);
    assert_eq!(
        (version(&full), ids(&full["flows"])),
        (v0 + 2, vec!["f-1", "f-2", "f-3"])
    );
    // ...and a reset of the initial set changes nothing.
    call(&app, "POST", "/_executor/reset", &Value::Null);
    assert_eq!(version(&get(&app, "/v1/flows", None).2), v0 + 2);
}

#[test]
fn a_since_it_cannot_answer_gets_the_full_document() {
    let app = app("since", &three(), 0);
    let (_, etag, full) = get(&app, "/v1/flows", None);
    let v0 = version(&full);
    call(&app, "PUT", "/_executor/flows/f-1", &json!({"status": "paused"}));
    let (_, _, current) = get(&app, "/v1/flows", None);
    assert_eq!(version(&current), v0 + 1);
    for since in [
        "x".to_string(),
        String::new(),
        "-1".into(),
        "0x10".into(),
        (v0 + 2).to_string(),
        u64::MAX.to_string(),
        "0".into(),
        (v0 - 1).to_string(),
    ] {
        let (resp, tag, doc) = get(&app, &format!("/v1/flows?since={since}"), None);
        assert_eq!((resp.status, &doc), (200, &current), "since={since}");
        assert_eq!(tag, format!("\"v{}\"", v0 + 1));
    }
    // An old ETag is not the current one, with or without `since`.
    assert_eq!(get(&app, &format!("/v1/flows?since={v0}"), Some(&etag)).0.status, 200);
    let (_, _, delta) = get(&app, &format!("/v1/flows?x=1&since={v0}"), None);
    assert_eq!(ids(&delta["changed"]), ["f-1"]);
}

#[test]
fn generated_flows_follow_the_file_and_run() {
    let app = app("generated", &three()[..1], 3);
    let (_, _, full) = get(&app, "/v1/flows", None);
    assert_eq!(ids(&full["flows"]), ["f-1", "g-0000000", "g-0000001", "g-0000002"]);
    assert_eq!(full["flows"][3], generated_json(2));
    let raw: Value = serde_json::from_slice(&call(&app, "GET", "/_executor/flows", &Value::Null).body).unwrap();
    assert_eq!(raw["flows"][0]["run_ms"], 1);
    assert_eq!(raw["flows"][1], generated_json(0));
    assert!(app.flow("g-0000003").is_none());
    let resp = app.handle("POST", "/v1/flow-webhook/g-0000001", &[], b"{}");
    assert_eq!((resp.status, &resp.body[..]), (200, &b"{}"[..]));
    // A file flow cannot take a generated flow's id; past the count, `g-` ids are ordinary.
    let taken = InitialFlows {
        flows: vec![Arc::new(flow(json!({"id": "g-0000002"})))],
        generated: 3,
    };
    assert!(FlowSet::new(&taken, 1).err().unwrap().contains("g-0000002"));
    let free = InitialFlows {
        flows: vec![Arc::new(flow(json!({"id": "g-0000003"})))],
        generated: 3,
    };
    assert_eq!(FlowSet::new(&free, 1).unwrap().len(), 4);
}

#[test]
fn a_million_generated_flows_answer_a_one_flow_delta() {
    const N: u32 = 1_000_000;
    let app = app("million", &three(), N);
    let v0 = app.flows.read().unwrap().version;
    let last = generated_id(N - 1);
    let paused = call(
        &app,
        "PUT",
        &format!("/_executor/flows/{last}"),
        &json!({"status": "paused"}),
    );
    assert_eq!(paused.status, 200, "{paused:?}");
    let (_, _, delta) = get(&app, &format!("/v1/flows?since={v0}"), None);
    let mut expected = generated_json(N - 1);
    expected["status"] = json!("paused");
    assert_eq!(
        delta,
        json!({"version": (v0 + 1).to_string(), "changed": [expected], "removed": []})
    );
    // Delete and re-add a generated flow; both come back to the number alone.
    call(
        &app,
        "PUT",
        &format!("/_executor/flows/{last}"),
        &json!({"status": "live"}),
    );
    call(&app, "DELETE", "/_executor/flows/g-0000000", &Value::Null);
    let (_, _, delta) = get(&app, &format!("/v1/flows?since={}", v0 + 1), None);
    assert_eq!(
        (ids(&delta["changed"]), ids(&delta["removed"])),
        (vec![last.as_str()], vec!["g-0000000"])
    );
    call(&app, "POST", "/_executor/flows", &generated_json(0));
    {
        let set = app.flows.read().unwrap();
        assert_eq!(set.version, v0 + 4);
        let generated = set
            .slots
            .iter()
            .filter(|s| matches!(s.entry, Entry::Generated(_)))
            .count();
        assert_eq!(generated, N as usize);
        assert_eq!(set.changes.len(), 2);
    }
    // Reset finds nothing to change: every flow has its initial content again.
    call(&app, "POST", "/_executor/reset", &Value::Null);
    assert_eq!(app.flows.read().unwrap().version, v0 + 4);
    assert_eq!(app.flow("g-0999999").unwrap().raw["status"], "live");
}
