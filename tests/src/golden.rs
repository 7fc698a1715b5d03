//! Golden files: text a test renders, pinned byte for byte in a file beside the test.
//! `UPDATE_GOLDEN=1` rewrites the files after a deliberate change.

use std::path::Path;

/// Asserts that `text` is the content of the golden file at `path` (writing it first
/// when `UPDATE_GOLDEN` is set).
#[track_caller]
pub fn check_golden(path: &Path, text: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, text).expect("write golden");
    }
    let want = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(
        text,
        want,
        "{}: differs from the golden file (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}
