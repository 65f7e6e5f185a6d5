//! Applying a directory answer to the flow table, a step at a time, by the VM that fetched
//! it. The answer waits in shared data as slices. A first pass reads it whole, checking its
//! shape only, so that an answer that is not a flow list changes nothing; a second writes
//! one record per entry that passes its checks (a rejected entry keeps its flow's last
//! valid record), then what the answer removed, the rejected ids and the new record of
//! what is published.
//!
//! A full document writes every record under a new epoch and then raises the floor to it:
//! flows it does not hold are gone. Changes write under the current floor.

use std::collections::{BTreeSet, HashSet};
use std::hash::{Hash, Hasher};

use super::scan::{Form, Item, Scan};
use super::shared::{self, Keys, Published};
use crate::flows::FlowsBuilder;
use crate::schema;
use crate::store::Store;

/// Items read per step of the first pass, entries checked and written per step of the second:
/// each well under a millisecond, so that a tick's steps stop close to their time budget.
pub const READ_PER_STEP: usize = 2000;
pub const WRITE_PER_STEP: usize = 200;
/// An answer is stored in slices of this size (Envoy copies each into the VM and out again).
pub const SLICE_BYTES: usize = 1 << 20;
/// Rejected entries logged one by one per answer; the rest are counted.
const LOGGED_PROBLEMS: usize = 100;

#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    Working,
    /// Applied: the new published record (already written).
    Done(Published),
    /// Not a flow list: nothing changed.
    Refused(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Check,
    Write,
}

/// An answer being applied.
pub struct Apply {
    base: Published,
    etag: String,
    fetched_at_ms: u64,
    size: usize,
    slices: usize,
    pass: Pass,
    scan: Scan,
    next_slice: usize,
    version: Option<String>,
    form: Form,
    epoch: u64,
    /// Entries read so far in this pass.
    index: usize,
    /// Hashes of the ids written (a second valid entry is a duplicate), and of those whose last
    /// valid record a rejected entry kept.
    written: HashSet<u64>,
    kept: HashSet<u64>,
    flows: u64,
    rejected: BTreeSet<String>,
    problems: Vec<String>,
    changed: bool,
}

fn hash(id: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    id.hash(&mut hasher);
    hasher.finish()
}

impl Apply {
    /// An answer of `size` bytes stored in slices, fetched at `fetched_at_ms` when `base` was published.
    pub fn new(base: Published, size: usize, etag: String, fetched_at_ms: u64) -> Apply {
        Apply {
            size,
            slices: size.div_ceil(SLICE_BYTES),
            base,
            etag,
            fetched_at_ms,
            pass: Pass::Check,
            scan: Scan::default(),
            next_slice: 0,
            version: None,
            form: Form::Full,
            epoch: 0,
            index: 0,
            written: HashSet::new(),
            kept: HashSet::new(),
            flows: 0,
            rejected: BTreeSet::new(),
            problems: Vec::new(),
            changed: false,
        }
    }

    /// Rejected entries of this answer, as log lines (taken).
    pub fn take_problems(&mut self) -> Vec<String> {
        std::mem::take(&mut self.problems)
    }

    pub fn step(&mut self, store: &mut dyn Store, keys: &Keys, builder: &FlowsBuilder) -> Progress {
        let result = match self.pass {
            Pass::Check => self.check(store, keys),
            Pass::Write => self.write(store, keys, builder),
        };
        match result {
            Ok(None) => Progress::Working,
            Ok(Some(published)) => {
                self.clear(store, keys);
                Progress::Done(published)
            }
            Err(problem) => {
                self.clear(store, keys);
                Progress::Refused(problem)
            }
        }
    }

    /// The next item of the answer, reading the next slice when needed (for the last time in
    /// the second pass: it is freed at once).
    fn next(&mut self, store: &mut dyn Store, keys: &Keys) -> Result<Option<Item>, String> {
        let (slices, next_slice, last) = (self.slices, &mut self.next_slice, self.pass == Pass::Write);
        self.scan.next(&mut || {
            let n = *next_slice;
            *next_slice += 1;
            let key = keys.slice(n);
            let slice = (n < slices).then(|| store.get(&key).0.unwrap_or_default());
            if slice.is_some() && last {
                store.set(&key, b"", 0);
            }
            slice
        })
    }

    fn check(&mut self, store: &mut dyn Store, keys: &Keys) -> Result<Option<Published>, String> {
        for _ in 0..READ_PER_STEP {
            match self.next(store, keys)? {
                Some(Item::Version(version)) => self.version = Some(version),
                Some(_) => {}
                None => {
                    self.form = self.scan.form().unwrap_or(Form::Full);
                    self.pass = Pass::Write;
                    self.scan = Scan::default();
                    self.next_slice = 0;
                    match self.form {
                        Form::Full => {
                            self.epoch = (self.base.floor + 1).max(self.fetched_at_ms);
                            self.changed = true;
                        }
                        Form::Changes => {
                            self.epoch = self.base.floor;
                            self.flows = self.base.flows;
                            let listed = store.get(&keys.rejected()).0.unwrap_or_default();
                            let listed = String::from_utf8_lossy(&listed).into_owned();
                            self.rejected = listed.lines().map(str::to_string).collect();
                        }
                    }
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }

    fn write(
        &mut self,
        store: &mut dyn Store,
        keys: &Keys,
        builder: &FlowsBuilder,
    ) -> Result<Option<Published>, String> {
        let mut texts: Vec<Vec<u8>> = Vec::new();
        let mut ended = false;
        while texts.len() < WRITE_PER_STEP {
            match self.next(store, keys)? {
                Some(Item::Entry(range)) => texts.push(self.scan.text(range).to_vec()),
                Some(Item::Removed(id)) => self.remove(store, keys, &id),
                Some(Item::Version(_)) => {}
                None => {
                    ended = true;
                    break;
                }
            }
        }
        let first = self.index;
        self.index += texts.len();
        for (index, (text, flow)) in (first..).zip(builder.build(first, texts.iter().map(Vec::as_slice))) {
            let problem = match flow {
                Ok(flow) if !self.written.insert(hash(&flow.id)) => {
                    schema::error(schema::flow_at(index, &flow.id), "duplicate flow id".into())
                }
                Ok(flow) => {
                    self.put(store, keys, &flow.id, text);
                    self.rejected.remove(&flow.id);
                    continue;
                }
                Err(problem) => problem,
            };
            let id = schema::entry_id(text).unwrap_or_else(|| format!("#{index}"));
            // A rejected entry keeps its flow's last valid record (a full document re-stamps it).
            let hashed = hash(&id);
            if self.form == Form::Full && !self.written.contains(&hashed) && self.kept.insert(hashed) {
                if let Some(entry) = self.valid(store, keys, &id) {
                    self.put(store, keys, &id, &entry);
                }
            }
            self.rejected.insert(id);
            self.problems.push(problem.to_string());
        }
        if ended {
            return Ok(Some(self.finish(store, keys)));
        }
        Ok(None)
    }

    /// The flow's entry if its record is in force.
    fn valid(&self, store: &mut dyn Store, keys: &Keys, id: &str) -> Option<Vec<u8>> {
        let record = store.get(&keys.flow(id)).0?;
        let (epoch, entry) = shared::entry(&record)?;
        (epoch >= self.base.floor && !entry.is_empty()).then(|| entry.to_vec())
    }

    fn put(&mut self, store: &mut dyn Store, keys: &Keys, id: &str, entry: &[u8]) {
        let key = keys.flow(id);
        let record = shared::record(self.epoch, entry);
        match self.form {
            Form::Full => self.flows += 1,
            Form::Changes => {
                let before = store.get(&key).0;
                if before.as_deref() == Some(&record) {
                    return;
                }
                if self.valid(store, keys, id).is_none() {
                    self.flows += 1;
                }
            }
        }
        store.set(&key, &record, 0);
        self.changed = true;
    }

    fn remove(&mut self, store: &mut dyn Store, keys: &Keys, id: &str) {
        self.rejected.remove(id);
        if self.valid(store, keys, id).is_some() {
            store.set(&keys.flow(id), &shared::record(self.epoch, b""), 0);
            self.flows = self.flows.saturating_sub(1);
            self.changed = true;
        }
    }

    fn finish(&mut self, store: &mut dyn Store, keys: &Keys) -> Published {
        let listed: Vec<&str> = self.rejected.iter().map(String::as_str).collect();
        store.set(&keys.rejected(), listed.join("\n").as_bytes(), 0);
        let published = Published {
            generation: self.base.generation + u64::from(self.changed),
            fetched_at_ms: self.fetched_at_ms,
            floor: if self.form == Form::Full {
                self.epoch
            } else {
                self.base.floor
            },
            flows: self.flows,
            rejected: self.rejected.len() as u64,
            version: self.version.clone().unwrap_or_default(),
            etag: std::mem::take(&mut self.etag),
        };
        store.set(&keys.published(), &published.encode(), 0);
        published
    }

    /// Frees the slices of the answer.
    fn clear(&mut self, store: &mut dyn Store, keys: &Keys) {
        for n in 0..self.slices {
            store.set(&keys.slice(n), b"", 0);
        }
        self.slices = 0;
    }

    /// The answer's size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// Log lines for an answer's rejected entries: the first ones, then how many more.
pub fn log_lines(problems: &[String]) -> Vec<String> {
    let mut lines: Vec<String> = problems
        .iter()
        .take(LOGGED_PROBLEMS)
        .map(|p| format!("directory entry skipped: {p}"))
        .collect();
    if let Some(more) = problems.len().checked_sub(LOGGED_PROBLEMS).filter(|n| *n > 0) {
        lines.push(format!("directory entries skipped: {more} more not logged"));
    }
    lines
}
