//! The proxy-wasm header-map wire format.
//!
//! Invariants:
//! - `decode_header_map` never panics and never allocates for a count the bytes cannot hold;
//! - a decoded map holds exactly the declared number of pairs, and re-encoding it decodes
//!   to the same pairs;
//! - arbitrary pairs round-trip through the encoding, and every truncation of an encoding
//!   that cuts into its data is refused (`None`).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use flowgate::wire::decode_header_map;
use libfuzzer_sys::fuzz_target;

/// The encoding Envoy uses: count, (name_len, value_len) pairs, then NUL-terminated bytes.
fn encode(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut out = len(pairs.len()).to_vec();
    for (name, value) in pairs {
        out.extend(len(name.len()));
        out.extend(len(value.len()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if let Some(pairs) = decode_header_map(data) {
        if let Some(count) = data.get(..4) {
            let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]);
            assert_eq!(pairs.len() as u64, u64::from(count));
        } else {
            assert!(data.is_empty() && pairs.is_empty(), "{} bytes decoded", data.len());
        }
        assert_eq!(decode_header_map(&encode(&pairs)).as_deref(), Some(pairs.as_slice()));
    }

    let mut u = Unstructured::new(data);
    let Ok(pairs) = Vec::<(&[u8], &[u8])>::arbitrary(&mut u) else {
        return;
    };
    let encoded = encode(&pairs);
    assert_eq!(decode_header_map(&encoded).as_deref(), Some(pairs.as_slice()));
    if let Ok(cut) = u.int_in_range(1..=encoded.len().saturating_sub(2).max(1)) {
        // Only the final NUL may be missing; any shorter cut loses data.
        if !pairs.is_empty() && cut < encoded.len() - 1 {
            assert_eq!(
                decode_header_map(&encoded[..cut]),
                None,
                "cut at {cut} of {}",
                encoded.len()
            );
        }
    }
});
