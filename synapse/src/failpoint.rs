//! Crash points in the write path, for the fault suite (reliability §4.2 S20).
//!
//! Built only with the `failpoints` feature (the integration tests turn it on); without
//! it [`hit`] is an empty inline function. With it, `SYNAPSE_FAILPOINT=<name>` makes
//! the process SIGKILL itself when it reaches the point `<name>`: a crash at that exact
//! step, no destructor or `Drop` cleanup running. Points, in write order:
//! `before_tmp_write`, `after_tmp_write` (written, not synced), `after_fsync`,
//! `after_check`, `after_rename`, `before_reload`.

/// The environment variable naming the armed point.
pub const ENV: &str = "SYNAPSE_FAILPOINT";

/// Crashes the process here when `name` is the armed point.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    if ARMED.get_or_init(|| std::env::var(ENV).ok()).as_deref() == Some(name) {
        eprintln!("synapse: failpoint {name} reached: killing the process");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Crashes the process here when `name` is the armed point (not built in: a no-op).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
