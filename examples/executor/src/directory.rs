//! The flow set behind `GET /v1/flows` (contract 4 and 4.1): every flow with the directory
//! version at which it last changed, removed ids as tombstones, the full document built when
//! asked for, and the changes since a version.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use serde_json::Value;

use crate::flows::{generated_flow, generated_id, generated_json, generated_number, write_generated_json, Flow};
use crate::server::lock;

/// What a slot of the flow set holds: a generated flow by its number (materialised on demand,
/// so a million of them cost a few bytes each), any other flow as loaded, or the tombstone of a
/// removed id (kept so that a delta can report the removal).
#[derive(Clone)]
pub enum Entry {
    Generated(u32),
    Flow(Arc<Flow>),
    // A thin pointer (not `Box<str>`) keeps a slot at 24 bytes: a million generated flows.
    #[allow(clippy::box_collection)]
    Removed(Box<String>),
}

impl Entry {
    pub fn id(&self) -> String {
        match self {
            Entry::Generated(n) => generated_id(*n),
            Entry::Flow(flow) => flow.id.clone(),
            Entry::Removed(id) => id.to_string(),
        }
    }

    /// The flow's directory entry; `None` for a tombstone.
    pub fn public(&self) -> Option<Value> {
        match self {
            Entry::Generated(n) => Some(generated_json(*n)),
            Entry::Flow(flow) => Some(flow.public()),
            Entry::Removed(_) => None,
        }
    }

    /// Appends the directory entry (`public`) or, with `raw`, the whole flow object.
    pub fn write_json(&self, raw: bool, out: &mut Vec<u8>) {
        match self {
            // A generated flow has no executor-only field: its raw object is its public one.
            Entry::Generated(n) => write_generated_json(*n, out),
            Entry::Flow(flow) if raw => serde_json::to_writer(out, &flow.raw).expect("JSON serialises"),
            Entry::Flow(flow) => serde_json::to_writer(out, &flow.public()).expect("JSON serialises"),
            Entry::Removed(_) => {}
        }
    }
}

/// A flow (or its tombstone) and the directory version at which it last changed.
pub struct Slot {
    pub entry: Entry,
    pub version: u64,
}

/// The flows the executor starts with, and restores on `POST /_executor/reset`: the file's flows,
/// then `generated` generated flows (`g-0000000`, ...).
#[derive(Clone)]
pub struct InitialFlows {
    pub flows: Vec<Arc<Flow>>,
    pub generated: u32,
}

/// The current flows and the directory's versions (contract 4.1).
///
/// Every change to the set increases `version` by one; each slot remembers the version at which
/// it last changed, removed ids stay as tombstones, and `changes` indexes the slots changed after
/// `floor` (the version the set started at) by version, so `GET /v1/flows?since=<v>` costs what
/// changed, not the size of the set. A change that leaves every flow's directory entry as it was
/// does not count. The full document is serialised only when asked for, then kept until the
/// next change.
///
/// Ids keep the position they were first given, also when `PUT /_executor/flows` lists them in
/// another order (the directory is a set).
pub struct FlowSet {
    pub slots: Vec<Slot>,
    /// Slot of every id except the generated ones, which sit at `generated_base + n`.
    pub index: HashMap<Box<str>, u32>,
    pub generated_base: usize,
    pub generated: u32,
    /// `(version, slot)` of every slot changed after `floor`.
    pub changes: BTreeSet<(u64, u32)>,
    pub version: u64,
    pub floor: u64,
    /// The full document of `version`, once asked for.
    pub full: Mutex<Option<Bytes>>,
}

impl FlowSet {
    /// The initial set, at `version`.
    pub fn new(initial: &InitialFlows, version: u64) -> Result<FlowSet, String> {
        let mut set = FlowSet {
            slots: Vec::with_capacity(initial.flows.len() + initial.generated as usize),
            index: HashMap::with_capacity(initial.flows.len()),
            generated_base: initial.flows.len(),
            generated: initial.generated,
            changes: BTreeSet::new(),
            version,
            floor: version,
            full: Mutex::new(None),
        };
        for flow in &initial.flows {
            if set.locate(&flow.id).is_some() {
                return Err(format!("flow {}: duplicate id", flow.id));
            }
            set.index.insert(flow.id.as_str().into(), set.slots.len() as u32);
            set.slots.push(Slot {
                entry: Entry::Flow(Arc::clone(flow)),
                version,
            });
        }
        set.slots.extend((0..initial.generated).map(|n| Slot {
            entry: Entry::Generated(n),
            version,
        }));
        Ok(set)
    }

    /// The strong ETag of the current set: it changes with the version, that is whenever the set does.
    pub fn etag(&self) -> String {
        format!("\"v{}\"", self.version)
    }

    /// The slot of `id`, live or tombstone.
    pub fn locate(&self, id: &str) -> Option<usize> {
        match generated_number(id) {
            Some(n) if n < self.generated => Some(self.generated_base + n as usize),
            _ => self.index.get(id).map(|&i| i as usize),
        }
    }

    /// The live flow with this id (a generated one is materialised).
    pub fn get(&self, id: &str) -> Option<Arc<Flow>> {
        match &self.slots[self.locate(id)?].entry {
            Entry::Generated(n) => Some(Arc::new(generated_flow(*n))),
            Entry::Flow(flow) => Some(Arc::clone(flow)),
            Entry::Removed(_) => None,
        }
    }

    /// Every live flow, in directory order.
    pub fn live(&self) -> impl Iterator<Item = &Entry> {
        self.slots
            .iter()
            .map(|slot| &slot.entry)
            .filter(|entry| !matches!(entry, Entry::Removed(_)))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live().count()
    }

    /// Puts `entry` (a live flow) at its id's slot, or a new one. Returns the slot and whether
    /// the directory entry changed; only then does the slot take version `next`.
    pub fn put(&mut self, next: u64, entry: Entry) -> (usize, bool) {
        let slot = match &entry {
            Entry::Generated(n) => Some(self.generated_base + *n as usize),
            Entry::Flow(flow) => self.locate(&flow.id),
            Entry::Removed(_) => unreachable!("put takes a live flow"),
        };
        let Some(i) = slot else {
            let i = self.slots.len();
            if let Entry::Flow(flow) = &entry {
                self.index.insert(flow.id.as_str().into(), i as u32);
            }
            self.slots.push(Slot { entry, version: next });
            self.changes.insert((next, i as u32));
            return (i, true);
        };
        // A generated slot given back its generated flow keeps only the number.
        let entry = match entry {
            Entry::Flow(flow) if i >= self.generated_base && i - self.generated_base < self.generated as usize => {
                let n = (i - self.generated_base) as u32;
                if Value::Object(flow.raw.clone()) == generated_json(n) {
                    Entry::Generated(n)
                } else {
                    Entry::Flow(flow)
                }
            }
            entry => entry,
        };
        let old = &self.slots[i];
        let changed = match (&old.entry, &entry) {
            (Entry::Generated(a), Entry::Generated(b)) => a != b,
            (Entry::Removed(_), _) => true,
            (old, new) => old.public() != new.public(),
        };
        if changed {
            self.touch(i, next);
        }
        // Executor-only fields (steps, run_ms) may change without the directory entry changing.
        self.slots[i].entry = entry;
        (i, changed)
    }

    /// Removes the flow in slot `i`, if live. Returns whether it was.
    pub fn remove(&mut self, next: u64, i: usize) -> bool {
        if matches!(self.slots[i].entry, Entry::Removed(_)) {
            return false;
        }
        let id = self.slots[i].entry.id();
        self.slots[i].entry = Entry::Removed(Box::new(id));
        self.touch(i, next);
        true
    }

    /// Slot `i` changed at version `next`.
    pub fn touch(&mut self, i: usize, next: u64) {
        let old = self.slots[i].version;
        self.changes.remove(&(old, i as u32));
        self.changes.insert((next, i as u32));
        self.slots[i].version = next;
    }

    /// Ends a change: the set is at version `next` if anything changed.
    pub fn commit(&mut self, next: u64, changed: bool) {
        if changed {
            self.version = next;
            *self.full.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Adds or replaces one flow.
    pub fn upsert(&mut self, flow: Flow) {
        let next = self.version + 1;
        let (_, changed) = self.put(next, Entry::Flow(Arc::new(flow)));
        self.commit(next, changed);
    }

    /// Removes one flow; false if there is no such live flow.
    pub fn delete(&mut self, id: &str) -> bool {
        let next = self.version + 1;
        let removed = self.locate(id).is_some_and(|i| self.remove(next, i));
        self.commit(next, removed);
        removed
    }

    /// Replaces the whole set, in one version: flows whose directory entry changed (or that are
    /// new) take the new version, ids no longer present are removed. O(flows).
    pub fn replace(&mut self, entries: impl IntoIterator<Item = Entry>) {
        let next = self.version + 1;
        let mut kept = vec![false; self.slots.len()];
        let mut changed = false;
        for entry in entries {
            let (i, c) = self.put(next, entry);
            changed |= c;
            if i >= kept.len() {
                kept.resize(i + 1, false);
            }
            kept[i] = true;
        }
        for (i, kept) in kept.into_iter().enumerate() {
            if !kept {
                changed |= self.remove(next, i);
            }
        }
        self.commit(next, changed);
    }

    /// The full document: `{"version": "<v>", "flows": [...]}`, serialised once per version.
    pub fn full_document(&self) -> Bytes {
        let mut full = lock(&self.full);
        if let Some(doc) = &*full {
            return doc.clone();
        }
        let mut out = Vec::with_capacity(64 + self.slots.len() * 128);
        out.extend_from_slice(format!(r#"{{"version":"{}","flows":["#, self.version).as_bytes());
        for (k, entry) in self.live().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            entry.write_json(false, &mut out);
        }
        out.extend_from_slice(b"]}");
        let doc = Bytes::from(out);
        *full = Some(doc.clone());
        doc
    }

    /// The changes after version `since`, if this set can tell them (`floor <= since <=
    /// version`): `{"version": "<v>", "changed": [...], "removed": [...]}`, each list ordered by
    /// version then id.
    pub fn delta(&self, since: u64) -> Option<Vec<u8>> {
        if since < self.floor || since > self.version {
            return None;
        }
        let mut changed: Vec<(u64, String, &Entry)> = Vec::new();
        let mut removed: Vec<(u64, String)> = Vec::new();
        for &(version, i) in self.changes.range((since + 1, 0)..) {
            let entry = &self.slots[i as usize].entry;
            match entry {
                Entry::Removed(id) => removed.push((version, id.to_string())),
                live => changed.push((version, live.id(), live)),
            }
        }
        changed.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        removed.sort();
        let mut out = format!(r#"{{"version":"{}","changed":["#, self.version).into_bytes();
        for (k, (_, _, entry)) in changed.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            entry.write_json(false, &mut out);
        }
        out.extend_from_slice(br#"],"removed":"#);
        let ids: Vec<&str> = removed.iter().map(|(_, id)| id.as_str()).collect();
        serde_json::to_writer(&mut out, &ids).expect("JSON serialises");
        out.push(b'}');
        Some(out)
    }

    /// `{"flows": [...]}` with every flow's whole object (executor-only fields included).
    pub fn raw_document(&self) -> Vec<u8> {
        let mut out = br#"{"flows":["#.to_vec();
        for (k, entry) in self.live().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            entry.write_json(true, &mut out);
        }
        out.extend_from_slice(b"]}");
        out
    }
}
