//! Entries the directory gets wrong, and answers that are not flow lists.

use serde_json::json;

use super::*;

#[test]
fn a_rejected_entry_keeps_its_last_valid_version_through_full_documents_and_changes() {
    let mut process = Process::new(2, None);
    process.serve(
        200,
        &full(&[flow("f-1", "live"), flow("f-2", "live")], Some("1")),
        "\"a\"",
    );
    let bogus = flow("f-1", "bogus");
    let bad_new = json!({"id": "f-bad", "ref_id": "w", "status": "live", "token_sha256": ["not-hex"]});
    let entries = [bogus.clone(), flow("f-2", "paused"), bad_new.clone()];
    process.serve(200, &full(&entries, Some("2")), "\"b\"");
    assert_eq!(
        process.status("f-1"),
        vec![Some(FlowStatus::Live); 2],
        "last valid version"
    );
    assert_eq!(process.status("f-2"), vec![Some(FlowStatus::Paused); 2]);
    assert_eq!(process.status("f-bad"), vec![None; 2]);
    assert_eq!(process.vms[1].host.gauges.get(&Gauge::EntriesRejected), Some(&2));
    assert_eq!(process.vms[1].host.gauges.get(&Gauge::FlowsLoaded), Some(&2));
    let logs = process
        .vms
        .iter()
        .flat_map(|vm| vm.host.logs.iter())
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(logs.contains("(id \"f-1\").status"), "{logs}");
    assert!(logs.contains("(id \"f-bad\").token_sha256"), "{logs}");
    // Changes that leave f-1 alone keep it rejected; fixing it clears it.
    let changes = |changed: Vec<Value>, removed: Vec<&str>| {
        serde_json::to_vec(&json!({"version": "3", "changed": changed, "removed": removed})).unwrap()
    };
    process.serve(200, &changes(vec![flow("f-2", "live")], vec![]), "\"c\"");
    assert_eq!(process.vms[0].host.gauges.get(&Gauge::EntriesRejected), Some(&2));
    assert_eq!(process.status("f-1"), vec![Some(FlowStatus::Live); 2]);
    process.serve(200, &changes(vec![flow("f-1", "paused")], vec!["f-bad"]), "\"d\"");
    assert_eq!(process.vms[0].host.gauges.get(&Gauge::EntriesRejected), Some(&0));
    assert_eq!(process.status("f-1"), vec![Some(FlowStatus::Paused); 2]);
}

/// As for static flows: a rejected entry does not claim its id, so a later valid one of the
/// same id applies; a second valid one is a duplicate.
#[test]
fn only_valid_entries_claim_their_id() {
    let mut process = Process::new(1, None);
    let entries = [flow("f-3", "bogus"), flow("f-3", "live"), flow("f-3", "paused")];
    process.serve(200, &full(&entries, None), "\"a\"");
    assert_eq!(process.status("f-3"), vec![Some(FlowStatus::Live)]);
    let logs = process.vms[0].host.logs.join("\n");
    assert!(logs.contains("flows[2] (id \"f-3\"): duplicate flow id"), "{logs}");
}

#[test]
fn an_answer_that_is_not_a_flow_list_changes_nothing_and_backs_off() {
    let mut process = Process::new(2, None);
    process.serve(200, &full(&generated(10), None), "\"a\"");
    let cas = process.record_cas("g-3");
    let mut flows = generated(3000);
    flows[3] = flow("g-3", "paused");
    let mut truncated = full(&flows, None);
    truncated.truncate(truncated.len() - 3);
    process.serve(200, &truncated, "\"b\"");
    assert_eq!(process.record_cas("g-3"), cas, "a record changed");
    assert_eq!(process.status("g-3"), vec![Some(FlowStatus::Live); 2]);
    assert_eq!(process.status("g-2999"), vec![None; 2]);
    assert!(process
        .vms
        .iter()
        .any(|vm| vm.host.counts.contains(&Counter::FetchFailed)));
    // Backed off: nobody fetches one interval later.
    process.advance(REFRESH);
    process.tick_all();
    assert!(process.vms.iter().all(|vm| vm.host.fetches.is_empty()));
    process.advance(REFRESH);
    process.tick_all();
    assert!(process.vms.iter().any(|vm| !vm.host.fetches.is_empty()));
}
