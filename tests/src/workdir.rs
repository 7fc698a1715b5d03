//! A temporary directory for the files a test writes (configs, sockets, state files),
//! removed when the test ends, whether it passed or panicked.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// A temporary directory under the system temp dir (`/tmp`), so that unix socket paths
/// inside it stay well below the 108-byte `sun_path` limit.
#[derive(Debug)]
pub struct Workdir {
    dir: TempDir,
}

impl Workdir {
    /// Creates a fresh, empty directory. Panics if it cannot.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("it-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        Self { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `path()/name`; the file need not exist.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `contents` to `path()/name` atomically (temp file + rename, so a process
    /// watching or reloading the file never reads half of it) and returns the path.
    /// Parent directories are created. Panics on I/O errors.
    pub fn write(&self, name: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(name);
        let parent = path.parent().unwrap_or(self.dir.path());
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        let tmp = tempfile::NamedTempFile::new_in(parent)
            .unwrap_or_else(|e| panic!("cannot create a temp file in {}: {e}", parent.display()));
        std::fs::write(tmp.path(), contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.path().display()));
        tmp.persist(&path)
            .unwrap_or_else(|e| panic!("cannot rename into {}: {e}", path.display()));
        path
    }

    /// Reads `path()/name` as UTF-8. Panics if it cannot.
    pub fn read(&self, name: impl AsRef<Path>) -> String {
        let path = self.join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }
}

impl Default for Workdir {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_read_back_and_vanish_on_drop() {
        let dir = Workdir::new();
        let path = dir.write("sub/a.cfg", "hello");
        assert_eq!(dir.read("sub/a.cfg"), "hello");
        dir.write("sub/a.cfg", "again");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "again");
        let root = dir.path().to_owned();
        drop(dir);
        assert!(!root.exists());
    }
}
