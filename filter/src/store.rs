//! Envoy's shared data, as the filter sees it: one store per `vm_id` and Envoy process,
//! read and written by every VM (delivery controls, the live directory).

use std::collections::HashMap;

/// Envoy's shared data (one store per `vm_id` and process) and its clock.
pub trait Store {
    /// An entry and its CAS number (`None`, 0: absent).
    fn get(&mut self, key: &str) -> (Option<Vec<u8>>, u32);
    /// Writes if the entry's CAS number is still `cas` (0: unconditionally); false otherwise.
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> bool;
    /// Milliseconds since the epoch.
    fn now_ms(&mut self) -> u64;
}

/// Shared data in memory, as Envoy keeps it: for tests, benches and fuzzers.
#[derive(Debug, Default)]
pub struct MemoryStore {
    pub(crate) entries: HashMap<String, (Vec<u8>, u32)>,
    pub now_ms: u64,
    /// Writes still to lose a race: the write lands (as another worker's would) but the
    /// caller is told its CAS number was stale.
    pub races: usize,
}

impl Store for MemoryStore {
    fn get(&mut self, key: &str) -> (Option<Vec<u8>>, u32) {
        match self.entries.get(key) {
            Some((value, cas)) => (Some(value.clone()), *cas),
            None => (None, 0),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> bool {
        let current = self.entries.get(key).map_or(0, |(_, cas)| *cas);
        if cas != 0 && cas != current {
            return false;
        }
        self.entries.insert(key.to_string(), (value.to_vec(), current + 1));
        if self.races > 0 {
            self.races -= 1;
            return false;
        }
        true
    }

    fn now_ms(&mut self) -> u64 {
        self.now_ms
    }
}
