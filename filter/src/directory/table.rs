//! A VM's view of the flow table in shared data. The flows this VM decoded are kept in a
//! small cache; one checked since the last published change is used as it is (no host call),
//! any other is read from its record (one host call) and decoded again only if the record's
//! bytes changed.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use super::shared::{self, Keys};
use crate::flows::{Flow, FlowsBuilder, Lookup};

/// Flows decoded and kept per VM. Past it, the older half is dropped.
pub const CACHED_FLOWS: usize = 1024;

/// Reads one shared-data entry.
pub type Read = Box<dyn Fn(&str) -> Option<Vec<u8>>>;

struct Cached {
    record: Vec<u8>,
    flow: Rc<Flow>,
    used: u64,
    /// The published generation it was last checked against.
    checked: u64,
}

pub struct Table {
    keys: Keys,
    builder: FlowsBuilder,
    read: Read,
    /// Records of a lower epoch are gone (see `Published::floor`).
    floor: Cell<u64>,
    /// The last published generation this VM saw: a change publishes a new one.
    generation: Cell<u64>,
    cache: RefCell<HashMap<String, Cached>>,
    uses: Cell<u64>,
}

impl Table {
    pub fn new(keys: Keys, builder: FlowsBuilder, read: Read, floor: u64) -> Table {
        Table {
            keys,
            builder,
            read,
            floor: Cell::new(floor),
            generation: Cell::new(0),
            cache: RefCell::default(),
            uses: Cell::new(0),
        }
    }

    /// What is published now: cached flows are checked again on their next request.
    pub fn follow(&self, floor: u64, generation: u64) {
        self.floor.set(floor);
        self.generation.set(generation);
    }

    /// Flows decoded now (for tests and the operations doc).
    pub fn cached(&self) -> usize {
        self.cache.borrow().len()
    }

    fn decode(&self, id: &str, entry: &[u8]) -> Option<Rc<Flow>> {
        let (_, flow) = self.builder.build(0, std::iter::once(entry)).pop()?;
        flow.ok().filter(|flow| flow.id == id).map(Rc::new)
    }
}

impl Lookup for Table {
    fn flow(&self, id: &str) -> Option<Rc<Flow>> {
        let (used, generation) = (self.uses.get() + 1, self.generation.get());
        self.uses.set(used);
        let mut cache = self.cache.borrow_mut();
        if let Some(cached) = cache.get_mut(id).filter(|c| c.checked == generation) {
            cached.used = used;
            return Some(Rc::clone(&cached.flow));
        }
        let record = (self.read)(&self.keys.flow(id))?;
        let (epoch, entry) = shared::entry(&record)?;
        if entry.is_empty() || epoch < self.floor.get() {
            cache.remove(id);
            return None;
        }
        if let Some(cached) = cache.get_mut(id).filter(|c| c.record == record) {
            (cached.used, cached.checked) = (used, generation);
            return Some(Rc::clone(&cached.flow));
        }
        let flow = self.decode(id, entry)?;
        if cache.len() >= CACHED_FLOWS {
            let keep_from = used.saturating_sub(CACHED_FLOWS as u64 / 2);
            cache.retain(|_, cached| cached.used >= keep_from);
        }
        let cached = Cached {
            record,
            flow: Rc::clone(&flow),
            used,
            checked: generation,
        };
        cache.insert(id.to_string(), cached);
        Some(flow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Store};
    use std::rc::Rc;

    const DIGEST: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn entry(id: &str, status: &str) -> Vec<u8> {
        format!(r#"{{"id":"{id}","ref_id":"w","status":"{status}","token_sha256":["{DIGEST}"]}}"#).into_bytes()
    }

    fn table(store: &Rc<RefCell<MemoryStore>>, floor: u64) -> Table {
        let store = Rc::clone(store);
        let read: Read = Box::new(move |key| store.borrow_mut().get(key).0);
        Table::new(Keys::scoped(b"c"), FlowsBuilder::new(1024), read, floor)
    }

    #[test]
    fn flows_are_read_from_their_records_and_decoded_once_per_version() {
        let store = Rc::new(RefCell::new(MemoryStore::default()));
        let keys = Keys::scoped(b"c");
        let write = |id: &str, epoch: u64, entry: &[u8]| {
            store.borrow_mut().set(&keys.flow(id), &shared::record(epoch, entry), 0);
        };
        write("f-1", 1, &entry("f-1", "live"));
        write("f-2", 1, b"");
        write("f-3", 0, &entry("f-3", "live"));
        write("f-4", 1, &entry("f-other", "live"));
        let table = table(&store, 1);
        let first = table.flow("f-1").unwrap();
        assert!(Rc::ptr_eq(&first, &table.flow("f-1").unwrap()), "decoded again");
        assert_eq!(first.status, crate::schema::FlowStatus::Live);
        for gone in ["f-2", "f-3", "f-4", "f-5"] {
            assert!(table.flow(gone).is_none(), "{gone}");
        }
        // A change is seen once it is published (the next tick), then decoded once.
        write("f-1", 1, &entry("f-1", "paused"));
        assert!(
            Rc::ptr_eq(&first, &table.flow("f-1").unwrap()),
            "seen before it was published"
        );
        table.follow(1, 1);
        let paused = table.flow("f-1").unwrap();
        assert_eq!(paused.status, crate::schema::FlowStatus::Paused);
        table.follow(1, 2);
        assert!(
            Rc::ptr_eq(&paused, &table.flow("f-1").unwrap()),
            "an unchanged record decoded again"
        );
        write("f-1", 1, b"");
        table.follow(1, 3);
        assert!(table.flow("f-1").is_none());
        write("f-1", 1, &entry("f-1", "live"));
        table.follow(2, 4);
        assert!(table.flow("f-1").is_none(), "below the floor");
    }

    #[test]
    fn the_cache_stays_bounded() {
        let store = Rc::new(RefCell::new(MemoryStore::default()));
        let keys = Keys::scoped(b"c");
        let table = table(&store, 0);
        for i in 0..CACHED_FLOWS * 3 {
            let id = format!("g-{i}");
            store
                .borrow_mut()
                .set(&keys.flow(&id), &shared::record(0, &entry(&id, "live")), 0);
            assert!(table.flow(&id).is_some());
            assert!(table.cached() <= CACHED_FLOWS);
        }
    }
}
