//! Errors for logs: an error and its sources on one line. Its own module (not `lib.rs`)
//! so that the low layers that log errors do not import the top one.

/// `a: b: c` from an error and its sources, for one-line logs.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
