//! Fuzz harness body (reliability §4.4, F1): arbitrary bytes as a nerve config file.
//! Called by the `cargo fuzz` target in `fuzz/` and by the corpus replay test.

use std::time::Duration;

use crate::config::{parse, Overrides};

/// Never panics; an accepted config keeps its invariants (TTL ≥ 2 s).
pub fn check_config_nerve(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = parse(text, &Overrides::default()) {
        assert!(
            c.lease_ttl >= Duration::from_secs(2),
            "TTL below 2 s accepted"
        );
    }
}
