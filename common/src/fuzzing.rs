//! Fuzz harness bodies (reliability §4.4, F2): plain functions over bytes, called by the
//! `cargo fuzz` targets in `fuzz/` and by the corpus replay test in regular `cargo test`.
//! Each panics when an oracle fails.

use crate::key::{ParsedKey, ServicePath};
use crate::registration::{Registration, RegistrationError, MAX_VALUE_BYTES};

/// The service path every harness parses keys under.
const PATH: &str = "/nerve/v1/services/web";

/// `key \0 value` (no `\0`: all of it is the value). Never panics; an oversized value is
/// `TooLarge` before parsing; an accepted registration has only grammar-valid fields,
/// round-trips through `encode`, and its server name uses HAProxy's safe charset.
pub fn check_registration_decode(data: &[u8]) {
    let (key, value) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let decoded = Registration::decode(value);
    if value.len() > MAX_VALUE_BYTES {
        assert!(
            matches!(decoded, Err(RegistrationError::TooLarge { .. })),
            "an oversized value was not rejected as too large"
        );
    }
    if let Ok(r) = &decoded {
        let name = r.server_name();
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-[]".contains(&b)),
            "server name {name:?} outside the safe charset"
        );
        let again = Registration::decode(r.encode().as_bytes()).expect("re-decode");
        assert_eq!(&again, r, "decode(encode(r)) != r");
    }
    check_key(key);
}

/// A key under `/nerve/v1/services/web`: never panics; a nerve-format key round-trips.
pub fn check_key_parse(data: &[u8]) {
    check_key(data);
    // Also as a whole key below the path.
    let mut full = format!("{PATH}/").into_bytes();
    full.extend_from_slice(data);
    check_key(&full);
}

fn check_key(key: &[u8]) {
    let Ok(path) = ServicePath::new(PATH) else {
        panic!("the harness path is invalid");
    };
    match path.parse_key(key) {
        Ok(ParsedKey::Nerve(k)) => {
            let text = std::str::from_utf8(key).expect("a parsed key is UTF-8");
            assert_eq!(k.under(&path), text, "a nerve key does not round-trip");
        }
        Ok(ParsedKey::Foreign(rest)) => assert!(!rest.is_empty()),
        Err(_) => {}
    }
}
