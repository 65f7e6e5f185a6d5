//! The proxy-wasm header-map wire format, decoded without copying or panicking.
//!
//! Layout: `u32 count`, then `count` pairs of `(u32 name_len, u32 value_len)`, then
//! each name and value followed by a NUL byte. All integers little-endian.

/// Header `(name, value)` pairs borrowed from a serialized map; `None` if malformed.
pub fn decode_header_map(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)?;
    let mut sizes_at = 4usize;
    let mut data_at = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut pairs = Vec::with_capacity(count.min(bytes.len() / 8));
    for _ in 0..count {
        let name_len = read_u32(bytes, sizes_at)?;
        let value_len = read_u32(bytes, sizes_at.checked_add(4)?)?;
        sizes_at += 8;
        let name = bytes.get(data_at..data_at.checked_add(name_len)?)?;
        data_at = data_at.checked_add(name_len)?.checked_add(1)?;
        let value = bytes.get(data_at..data_at.checked_add(value_len)?)?;
        data_at = data_at.checked_add(value_len)?.checked_add(1)?;
        pairs.push((name, value));
    }
    Some(pairs)
}

/// Serializes `(name, value)` pairs in the same layout (header sizes fit in a `u32`).
pub fn encode_header_map<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
    let word = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut out = word(pairs.len()).to_vec();
    for (name, value) in pairs {
        out.extend(word(name.as_ref().len()));
        out.extend(word(value.as_ref().len()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_ref());
        out.push(0);
        out.extend_from_slice(value.as_ref());
        out.push(0);
    }
    out
}

/// The little-endian `u32` at `at`, as a `usize`; `None` past the end.
pub fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let word: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(word)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_including_non_utf8_values() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":path", b"/v1"), (b"x", &[0xff, 0xfe]), (b"empty", b"")];
        assert_eq!(decode_header_map(&encode_header_map(&pairs)).unwrap(), pairs);
        assert_eq!(decode_header_map(&[]).unwrap(), vec![]);
    }

    #[test]
    fn malformed_maps_are_none() {
        let good = encode_header_map(&[(b"name", b"value")]);
        for cut in 1..good.len() - 1 {
            assert!(decode_header_map(&good[..cut]).is_none(), "cut at {cut}");
        }
        assert!(decode_header_map(&u32::MAX.to_le_bytes()).is_none());
    }
}
