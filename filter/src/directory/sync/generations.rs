//! The shared document's side of the sync: publishing an answer by compare-and-swap, and
//! loading what is published a step at a time.

use std::rc::Rc;

use super::super::shared::{self, Published};
use super::super::tick_ms;
use super::{Access, Command, Gauge, Level, Loading, Publication, Shared, Sync, FIRST_LOAD_STEPS};

impl Sync {
    pub(super) fn publish(&mut self, stored: Shared) -> Vec<Command> {
        let Some(Publication {
            indexed,
            etag,
            after,
            created,
        }) = self.publishing.take()
        else {
            return Vec::new();
        };
        if stored.value.is_none() && !created {
            self.publishing = Some(Publication {
                indexed,
                etag,
                after,
                created: true,
            });
            let empty = shared::store(Vec::new(), &Published::default());
            return vec![Command::Write {
                access: Access::CreateDocument,
                value: empty,
                cas: 0,
            }];
        }
        let generation = stored
            .value
            .as_deref()
            .and_then(shared::record)
            .map_or(0, |r| r.generation);
        if generation != after {
            return vec![superseded()];
        }
        let record = Published {
            generation: after + 1,
            fetched_at_ms: self.now_ms,
            digest: shared::digest(&indexed),
            etag,
        };
        let value = shared::store(indexed, &record);
        self.published = Some(record);
        vec![Command::Write {
            access: Access::PublishDocument,
            value,
            cas: stored.cas,
        }]
    }

    /// Starts loading the stored document, unless this VM serves it already.
    pub(super) fn load(&mut self, stored: Shared) -> Vec<Command> {
        let Some((record, indexed)) = stored.value.and_then(shared::open) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        // The record follows the document, even back to an empty generation 0: the next fetch
        // then goes without the ETag of a document that is no longer stored.
        if self.mirror.as_ref() != Some(&record) {
            out.push(Command::Write {
                access: Access::Mirror,
                value: record.encode(),
                cas: self.mirror_cas,
            });
        }
        if record.generation == 0 || self.seen.as_ref() == Some(&record) {
            return out;
        }
        let previous = self
            .current
            .clone()
            .or_else(|| self.fallback.clone())
            .unwrap_or_default();
        match Loading::new(indexed, previous) {
            Some(loading) => {
                self.loading = Some((record, loading));
                out.push(Command::TickEvery(1));
                let steps = if self.current.is_none() { FIRST_LOAD_STEPS } else { 1 };
                self.step(&mut out, steps);
            }
            None => {
                out.push(Command::Log(
                    Level::Warn,
                    format!("directory generation {} is unreadable", record.generation),
                ));
                self.unloadable = Some(record);
            }
        }
        out
    }

    /// Loads up to `steps` steps of the generation under way; serves it once complete.
    pub(super) fn step(&mut self, out: &mut Vec<Command>, steps: usize) {
        for _ in 0..steps {
            let Some((_, loading)) = &mut self.loading else {
                return;
            };
            let Some((flows, problems)) = loading.step(&self.builder) else {
                continue;
            };
            let record = self.loading.take().map(|(record, _)| record).unwrap_or_default();
            out.extend(
                problems
                    .iter()
                    .map(|p| Command::Log(Level::Warn, format!("directory entry skipped: {p}"))),
            );
            out.push(Command::Log(
                Level::Info,
                format!(
                    "directory generation {} loaded: {} flows, {} entries skipped",
                    record.generation,
                    flows.len(),
                    problems.len()
                ),
            ));
            out.push(Command::Gauge(Gauge::FlowsLoaded, flows.len() as u64));
            out.push(Command::Gauge(Gauge::EntriesRejected, problems.len() as u64));
            let flows = Rc::new(flows);
            self.current = Some(Rc::clone(&flows));
            self.fallback = None;
            out.push(Command::Serve(flows));
            out.push(Command::TickEvery(tick_ms(self.source.refresh_ms)));
            self.seen = Some(record);
            return;
        }
    }
}

pub(super) fn superseded() -> Command {
    let message = "directory answer not published: a newer generation was published while it was fetched";
    Command::Log(Level::Info, message.to_string())
}
