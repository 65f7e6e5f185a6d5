//! The live flow directory (contract 4), minus the I/O.
//!
//! Envoy runs one VM per worker (and one on its main thread); the flow table is one per
//! Envoy process, in shared data. One VM per interval fetches (whoever wins the lease, a
//! compare-and-swap): it stores the answer in slices, checks its shape, then writes one
//! record per flow, a step at a time ([`apply`]). Every VM looks each request's flow up in
//! the table and keeps what it decoded in a small cache ([`table`]). [`shared`] is what
//! the VMs share, [`scan`] reads an answer, and [`sync`] is the state machine that
//! `host/root.rs` drives.

pub mod apply;
pub mod scan;
pub mod shared;
pub mod sync;
pub mod table;

/// How often a VM looks at what was published: often enough that every worker sees a
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
