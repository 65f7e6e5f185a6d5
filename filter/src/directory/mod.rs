//! The live flow directory (contract 4), minus the I/O.
//!
//! Envoy runs one VM per worker. One of them fetches per interval (whoever wins the lease,
//! a compare-and-swap on shared data); it checks and indexes the document once and
//! publishes it with a generation number, and every VM loads a generation it has not seen
//! yet, a step at a time. [`document`] is the document and its index, [`shared`] what the
//! VMs share, [`sync`] the state machine that `host/root.rs` drives and [`protocol`] the
//! events and commands between them.

pub mod document;
pub mod protocol;
pub mod shared;
pub mod sync;

pub use crate::flows::ENTRIES_PER_STEP;
pub use document::{entries, index, Loading};

/// How often a VM looks for a new generation: often enough that every worker sees a
/// new set well within one refresh interval of its fetch.
pub fn tick_ms(refresh_ms: u64) -> u64 {
    (refresh_ms / 10).clamp(50, 500)
}

#[cfg(test)]
mod tests {

    #[test]
    fn ticks_are_a_tenth_of_the_interval_within_bounds() {
        assert_eq!(super::tick_ms(2000), 200);
        assert_eq!(super::tick_ms(100), 50);
        assert_eq!(super::tick_ms(3_600_000), 500);
    }
}
