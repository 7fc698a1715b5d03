//! Checks shared by the section validators: operator lines that go into haproxy.cfg,
//! words in name position, counts that must be positive.

use common::config::{join_path, ConfigErrors};

/// Operator text that goes into haproxy.cfg: trusted, but one line only.
pub(super) fn check_line(text: &str, path: &str, errors: &mut ConfigErrors) -> bool {
    if text.bytes().any(|b| b == b'\n' || b == b'\r' || b == 0) {
        errors.push(
            path,
            "must not contain a newline, carriage return or NUL byte",
        );
        return false;
    }
    if text.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        errors.push(path, "must not contain control characters");
        return false;
    }
    true
}

pub(super) fn check_lines(lines: &[String], path: &str, errors: &mut ConfigErrors) -> Vec<String> {
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if check_line(line, &join_path(path, &i.to_string()), errors) {
            out.push(line.trim().to_owned());
        }
    }
    out.retain(|l| !l.is_empty());
    out
}

/// A word that goes into haproxy.cfg in name position (a bind address, a backend name).
pub(super) fn check_word(text: &str, path: &str, errors: &mut ConfigErrors) -> bool {
    let ok = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.:-[]/@".contains(&b));
    if !ok {
        errors.push(
            path,
            "may contain only letters, digits and `_ . : - [ ] / @`",
        );
    }
    ok
}

/// `value` or `default`; 0 is refused.
pub(super) fn at_least_one(
    value: Option<u64>,
    default: u64,
    path: &str,
    errors: &mut ConfigErrors,
) -> u64 {
    match value {
        Some(0) => {
            errors.push(path, "must be at least 1");
            default
        }
        Some(v) => v,
        None => default,
    }
}
