//! The `file_output` generator: one JSON file per service, `<output_directory>/<service>.json`,
//! holding the array of its backends (airbnb synapse's format). Written atomically and
//! only when the content changes; files of services synapse no longer manages are removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
    cleaned: bool,
    counters: Arc<Counters>,
}

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
    /// Creates the directory (`mkdir -p`) and reads what is already there.
    pub fn new(dir: PathBuf, counters: Arc<Counters>) -> Result<Self, FileOutputError> {
        std::fs::create_dir_all(&dir).map_err(|source| FileOutputError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let mut written = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let path = e.path();
                if let (Some(stem), true) =
                    (path.file_stem().and_then(|s| s.to_str()), is_json(&path))
                {
                    if let Ok(text) = std::fs::read_to_string(&path) {
                        written.insert(stem.to_owned(), text);
                    }
                }
            }
        }
        Ok(Self {
            dir,
            written,
            cleaned: false,
            counters,
        })
    }

    /// Writes changed service files and removes stale ones. Returns whether anything changed.
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
            .written
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        if !stale.is_empty() || !self.cleaned {
            changed |= self.remove_stale(&wanted)?;
            for k in stale {
                self.written.remove(&k);
            }
            self.cleaned = true;
        }
        Ok(changed)
    }

    fn remove_stale(&self, wanted: &BTreeMap<String, String>) -> Result<bool, FileOutputError> {
        let clean = |source| FileOutputError::Clean {
            path: self.dir.clone(),
            source,
        };
        let mut removed = false;
        for e in std::fs::read_dir(&self.dir).map_err(clean)? {
            let path = e.map_err(clean)?.path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if is_json(&path) && !wanted.contains_key(stem) {
                std::fs::remove_file(&path).map_err(clean)?;
                tracing::info!(file = %path.display(), "removed file_output file of an unmanaged service");
                Counters::inc(&self.counters.file_output_writes);
                removed = true;
            }
        }
        Ok(removed)
    }
}

fn is_json(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json") && path.is_file()
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
        assert!(!dir.path().join("old.json").exists());
        assert!(!dir.path().join("api.json").exists());
        assert!(dir.path().join("keep.txt").exists());
        let writes = Counters::get(&counters.file_output_writes);
        assert!(!out.apply(&c.services, &desired).await.unwrap());
        assert_eq!(Counters::get(&counters.file_output_writes), writes);
    }
}
