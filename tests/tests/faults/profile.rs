//! The suite's profiles (`ci`, `soak`), the deadlines its tests assert, and where each
//! scenario's figures go (`FAULT_RESULT` lines, `target/faults/results.jsonl`).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

/// Lease TTL of every nerve (reliability §4.1).
pub(crate) const TTL: Duration = Duration::from_secs(5);

pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

/// A scenario's timing criterion (reliability §4.2) as the deadline its test asserts:
/// three times the criterion, at least 5 s. Tests assert behaviour; a loaded 2-core
/// machine must not fail a scenario that behaves right but slowly. The figure itself is
/// recorded (results.jsonl, docs/reliability.md) beside its criterion.
pub(crate) fn deadline(criterion: Duration) -> Duration {
    (criterion * 3).max(Duration::from_secs(5))
}

pub(crate) fn soak() -> bool {
    std::env::var("FAULT_PROFILE").is_ok_and(|p| p == "soak")
}

/// `ci` in the ci profile, `soak` in the soak profile.
pub(crate) fn pick<T>(ci: T, soak_value: T) -> T {
    if soak() {
        soak_value
    } else {
        ci
    }
}

pub(crate) fn profile() -> &'static str {
    pick("ci", "soak")
}

/// Prints a scenario's figures and appends them to `target/faults/results.jsonl`.
pub(crate) fn record(id: &str, name: &str, figures: Value) {
    let line = json!({"id": id, "scenario": name, "profile": profile(), "figures": figures});
    eprintln!("FAULT_RESULT {line}");
    let Some(target) = std::env::current_exe()
        .ok()
        .and_then(|p| p.ancestors().nth(3).map(PathBuf::from))
    else {
        return;
    };
    let dir = target.join("faults");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("results.jsonl"))
    {
        use std::io::Write;
        let _ = writeln!(f, "{line}");
    }
}

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
