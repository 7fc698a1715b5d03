//! The `file_output` generator: one JSON file per service, `<output_directory>/<service>.json`,
//! holding the array of its backends (airbnb synapse's format). Written atomically and
//! only when the content changes; files of services synapse no longer manages are removed.
//! Only files synapse wrote itself are ever removed: their names are kept in
//! [`MANIFEST`] in the same directory, so other `*.json` files there are left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use common::ServiceName;
use serde::Serialize;

use crate::backends::{Backend, BackendSet};
use crate::config::ServiceConfig;
use crate::counters::Counters;
use crate::haproxy::reload::write_atomically;

/// Errors of the file output. Retried with backoff by the reconciler.
#[derive(Debug, thiserror::Error)]
pub enum FileOutputError {
    #[error("cannot create {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: crate::haproxy::reload::ReloadError,
    },
    #[error("cannot list or clean {path}")]
    Clean {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the file writer task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// The file output and what it last wrote.
pub struct FileOutput {
    dir: PathBuf,
    written: BTreeMap<String, String>,
    /// The services whose files synapse wrote (this run or an earlier one, from the
    /// manifest): the only files it ever deletes.
    owned: BTreeSet<String>,
    counters: Arc<Counters>,
}

/// The list of files synapse wrote, one service name a line, next to them. Not `*.json`,
/// so a consumer globbing the directory never reads it.
pub const MANIFEST: &str = ".synapse-file-output.manifest";

#[derive(Serialize)]
struct Entry<'a> {
    name: &'a str,
    host: String,
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    weight: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    haproxy_server_options: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    backup: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
}

/// The JSON for one service's backends, sorted by server name. Pure.
pub fn render_service(set: &BackendSet) -> String {
    let mut backends: Vec<&Backend> = set.iter().collect();
    backends.sort_by_cached_key(|b| b.server_name());
    let entries: Vec<Entry<'_>> = backends
        .iter()
        .map(|b| Entry {
            name: b.name.as_str(),
            host: b.host.to_string(),
            port: b.port.get(),
            weight: b.weight.map(common::Weight::get),
            haproxy_server_options: b.haproxy_server_options.as_ref().map(ToString::to_string),
            backup: b.backup,
            labels: &b.labels,
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&entries).unwrap_or_else(|_| "[]".to_owned());
    text.push('\n');
    text
}

impl FileOutput {
    /// Creates the directory (`mkdir -p`) and reads the manifest and the files it names.
    pub fn new(dir: PathBuf, counters: Arc<Counters>) -> Result<Self, FileOutputError> {
        std::fs::create_dir_all(&dir).map_err(|source| FileOutputError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        // Only valid service names: a tampered manifest cannot name `../x`.
        let owned: BTreeSet<String> = std::fs::read_to_string(dir.join(MANIFEST))
            .unwrap_or_default()
            .lines()
            .filter(|l| ServiceName::new(*l).is_ok())
            .map(str::to_owned)
            .collect();
        let written = owned
            .iter()
            .filter_map(|name| {
                let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?;
                Some((name.clone(), text))
            })
            .collect();
        Ok(Self {
            dir,
            written,
            owned,
            counters,
        })
    }

    /// Writes changed service files and removes the stale ones it wrote. Returns whether
    /// anything changed.
    pub async fn apply(
        &mut self,
        services: &BTreeMap<ServiceName, ServiceConfig>,
        desired: &BTreeMap<ServiceName, BackendSet>,
    ) -> Result<bool, FileOutputError> {
        let mut changed = false;
        let empty = BackendSet::new();
        let mut wanted = BTreeMap::new();
        for (name, _) in services.iter().filter(|(_, s)| !s.file_output_disabled) {
            wanted.insert(
                name.to_string(),
                render_service(desired.get(name).unwrap_or(&empty)),
            );
        }
        // Claimed before written, so a crash never leaves a file synapse forgot it owns.
        let claimed: BTreeSet<String> = self
            .owned
            .union(&wanted.keys().cloned().collect())
            .cloned()
            .collect();
        self.save_manifest(claimed).await?;
        for (name, text) in &wanted {
            if self.written.get(name) == Some(text) {
                continue;
            }
            let path = self.dir.join(format!("{name}.json"));
            let (dir, p, t) = (self.dir.clone(), path.clone(), text.clone());
            let result =
                tokio::task::spawn_blocking(move || write_atomically(&dir, &p, &t)).await?;
            if let Err(source) = result {
                Counters::inc(&self.counters.write_failures);
                return Err(FileOutputError::Write { path, source });
            }
            Counters::inc(&self.counters.file_output_writes);
            self.written.insert(name.clone(), text.clone());
            changed = true;
        }
        let stale: Vec<String> = self
            .owned
            .iter()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for name in stale {
            let path = self.dir.join(format!("{name}.json"));
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "removed file_output file of an unmanaged service");
                    Counters::inc(&self.counters.file_output_writes);
                    changed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(FileOutputError::Clean {
                        path: self.dir.clone(),
                        source,
                    })
                }
            }
            self.written.remove(&name);
        }
        self.save_manifest(wanted.into_keys().collect()).await?;
        Ok(changed)
    }

    /// Records `owned` in the manifest (when it changed).
    async fn save_manifest(&mut self, owned: BTreeSet<String>) -> Result<(), FileOutputError> {
        let path = self.dir.join(MANIFEST);
        if owned == self.owned && path.exists() {
            return Ok(());
        }
        let text: String = owned.iter().map(|n| format!("{n}\n")).collect();
        let (dir, p) = (self.dir.clone(), path.clone());
        tokio::task::spawn_blocking(move || write_atomically(&dir, &p, &text))
            .await?
            .map_err(|source| FileOutputError::Write { path, source })?;
        self.owned = owned;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::tests_support::backend;
    use crate::config::Config;

    #[tokio::test]
    async fn writes_on_change_and_removes_stale_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.json"), "[]").unwrap();
        std::fs::write(dir.path().join("keep.txt"), "x").unwrap();
        let text = format!(
            r#"{{"services": {{"web": {{"discovery": {{"method": "base"}}}},
                              "api": {{"discovery": {{"method": "base"}}, "file_output": {{"disabled": true}}}}}},
                "file_output": {{"output_directory": "{}"}}}}"#,
            dir.path().display()
        );
        let c = Config::parse(&text, None).unwrap();
        let counters = Arc::new(Counters::default());
        let mut out = FileOutput::new(dir.path().to_owned(), counters.clone()).unwrap();
        let web = ServiceName::new("web").unwrap();
        let desired = BTreeMap::from([(web.clone(), [backend("a", "10.0.0.1", 80)].into())]);
        assert!(out.apply(&c.services, &desired).await.unwrap());
        let json = std::fs::read_to_string(dir.path().join("web.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v[0]["host"], "10.0.0.1");
        assert_eq!(v[0]["port"], 80);
        // Not synapse's: left alone.
        assert!(dir.path().join("old.json").exists());
        assert!(!dir.path().join("api.json").exists());
        assert!(dir.path().join("keep.txt").exists());
        let writes = Counters::get(&counters.file_output_writes);
        assert!(!out.apply(&c.services, &desired).await.unwrap());
        assert_eq!(Counters::get(&counters.file_output_writes), writes);

        // A later run without `web`: the file it wrote goes, the foreign ones stay, and a
        // tampered manifest cannot point outside the directory.
        drop(out);
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x.json"), "[]").unwrap();
        let manifest = dir.path().join(MANIFEST);
        let mut text = std::fs::read_to_string(&manifest).unwrap();
        assert_eq!(text, "web\n");
        text.push_str(&format!(
            "../{}/x\n",
            outside.path().file_name().unwrap().to_str().unwrap()
        ));
        std::fs::write(&manifest, text).unwrap();
        let text = format!(
            r#"{{"services": {{"api": {{"discovery": {{"method": "base"}}}}}},
                "file_output": {{"output_directory": "{}"}}}}"#,
            dir.path().display()
        );
        let c = Config::parse(&text, None).unwrap();
        let mut out = FileOutput::new(dir.path().to_owned(), counters.clone()).unwrap();
        assert!(out.apply(&c.services, &BTreeMap::new()).await.unwrap());
        assert!(!dir.path().join("web.json").exists());
        assert!(dir.path().join("api.json").exists());
        assert!(dir.path().join("old.json").exists());
        assert!(outside.path().join("x.json").exists());
        assert_eq!(std::fs::read_to_string(&manifest).unwrap(), "api\n");
    }
}
