//! FNV-1a, 64 bit: a small stable hash for seeds and the `shuffle` server order (std's
//! `DefaultHasher` may change between Rust releases, which would reorder servers after an
//! upgrade). Not for anything that needs resistance to chosen input.

/// FNV-1a of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_continue(0xcbf2_9ce4_8422_2325, bytes)
}

/// FNV-1a of `bytes` appended to the input whose hash is `h`.
pub fn fnv1a_continue(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
