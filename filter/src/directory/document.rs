//! A directory document `{"flows": [...]}`: checked and indexed once by the VM that
//! fetched it, then loaded by every VM a step at a time from the index.

use std::ops::Range;
use std::rc::Rc;

use serde_json::value::RawValue;

use crate::flows::{Flows, FlowsBuilder, PartialFlows, ENTRIES_PER_STEP};
use crate::schema::ConfigError;
use crate::wire;

/// The byte ranges of the flow entries of a directory document `{"flows": [...]}`.
/// Only the document's shape is checked here; entries are validated as they load.
pub fn entries(document: &[u8]) -> Result<Vec<Range<usize>>, String> {
    #[derive(serde::Deserialize)]
    struct Document<'a> {
        #[serde(borrow)]
        flows: Option<&'a RawValue>,
    }
    let parsed: Document<'_> = serde_json::from_slice(document).map_err(|e| format!("not a flow directory: {e}"))?;
    let flows = parsed.flows.ok_or("no \"flows\" field")?;
    let entries: Vec<&RawValue> =
        serde_json::from_str(flows.get()).map_err(|_| "\"flows\" is not an array".to_string())?;
    // Borrowed raw values point into `document`, so their addresses give their ranges.
    let base = document.as_ptr() as usize;
    Ok(entries
        .iter()
        .map(|raw| {
            let start = raw.get().as_ptr() as usize - base;
            start..start + raw.get().len()
        })
        .collect())
}

/// A document with its entry ranges in front, so the VMs that load it need not scan it:
/// `u32 count`, `count` pairs of `u32 start, u32 len`, then the document (little-endian).
pub fn index(document: &[u8]) -> Result<Vec<u8>, String> {
    let ranges = entries(document)?;
    let mut blob = Vec::with_capacity(4 + ranges.len() * 8 + document.len());
    let word = |n: usize| {
        u32::try_from(n)
            .map(u32::to_le_bytes)
            .map_err(|_| "directory too large".to_string())
    };
    blob.extend(word(ranges.len())?);
    for range in &ranges {
        blob.extend(word(range.start)?);
        blob.extend(word(range.len())?);
    }
    blob.extend_from_slice(document);
    Ok(blob)
}

/// A directory generation being loaded, one step at a time, while the previous
/// flow set stays in force.
pub struct Loading {
    /// An indexed document (see `index`) and its entries' ranges within it.
    blob: Vec<u8>,
    entries: Vec<Range<usize>>,
    partial: PartialFlows,
    previous: Rc<Flows>,
}

impl Loading {
    /// Reads an indexed document; `None` if it is malformed.
    pub fn new(blob: Vec<u8>, previous: Rc<Flows>) -> Option<Self> {
        let word = |at: usize| wire::read_u32(&blob, at);
        let count = word(0)?;
        let document_at = count.checked_mul(8)?.checked_add(4)?;
        let mut entries = Vec::with_capacity(count.min(blob.len() / 8));
        for i in 0..count {
            let start = document_at.checked_add(word(4 + i * 8)?)?;
            let end = start.checked_add(word(8 + i * 8)?)?;
            blob.get(start..end)?;
            entries.push(start..end);
        }
        Some(Loading {
            blob,
            entries,
            partial: PartialFlows::default(),
            previous,
        })
    }

    /// Loads the next `ENTRIES_PER_STEP` entries; the finished set once all are in.
    pub fn step(&mut self, builder: &FlowsBuilder) -> Option<(Flows, Vec<ConfigError>)> {
        let start = self.partial.entries_added();
        let end = (start + ENTRIES_PER_STEP).min(self.entries.len());
        let blob = &self.blob;
        let texts = self.entries.get(start..end).unwrap_or_default().iter();
        let texts = texts.map(|range| blob.get(range.clone()).unwrap_or_default());
        builder.add_texts(&mut self.partial, texts, &self.previous);
        if end < self.entries.len() {
            return None;
        }
        Some(std::mem::take(&mut self.partial).finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn documents_must_hold_a_flow_list() {
        assert_eq!(entries(br#"{"flows": [{"id": "a"}, 7], "x": 1}"#).unwrap().len(), 2);
        assert!(entries(b"<html>")
            .unwrap_err()
            .starts_with("not a flow directory: expected value"));
        assert!(entries(b"[]").unwrap_err().starts_with("not a flow directory"));
        assert_eq!(entries(br#"{"flows": {}}"#).unwrap_err(), "\"flows\" is not an array");
        assert_eq!(entries(br#"{}"#).unwrap_err(), "no \"flows\" field");
    }

    #[test]
    fn large_directories_load_in_steps_and_skip_bad_entries() {
        let digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let mut flows: Vec<Value> = (0..ENTRIES_PER_STEP * 2 + 1)
            .map(|i| serde_json::json!({"id": format!("f-{i}"), "ref_id": "w", "status": "live", "token_sha256": [digest]}))
            .collect();
        flows[7]["status"] = serde_json::json!("bogus");
        let document = serde_json::to_vec(&serde_json::json!({ "flows": flows })).unwrap();
        let mut loading = Loading::new(index(&document).unwrap(), Rc::default()).unwrap();
        let builder = FlowsBuilder::new(1024);
        assert!(loading.step(&builder).is_none());
        assert!(loading.step(&builder).is_none());
        let (flows, problems) = loading.step(&builder).unwrap();
        assert_eq!(flows.len(), ENTRIES_PER_STEP * 2);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].to_string().starts_with("flows[7] (id \"f-7\").status"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn indexed_documents_give_back_their_entries() {
        let document = br#"{"x": [1], "flows": [ {"id": "a"} , 7,"s"]}"#;
        let ranges = entries(document).unwrap();
        let texts: Vec<&[u8]> = ranges.iter().map(|r| &document[r.clone()]).collect();
        assert_eq!(texts, [&br#"{"id": "a"}"#[..], b"7", br#""s""#]);
        let blob = index(document).unwrap();
        assert_eq!(Loading::new(blob.clone(), Rc::default()).unwrap().entries.len(), 3);
        for cut in [0, 3, 9, blob.len() - 30] {
            assert!(
                Loading::new(blob[..cut].to_vec(), Rc::default()).is_none(),
                "cut at {cut}"
            );
        }
    }
}
