//! `synapse diff` (`--dry-run`): reads the registry once, compares with what HAProxy
//! runs (its runtime API) and what is on disk, and says what a run would do: the
//! runtime commands, whether it would reload and why, and a unified diff of haproxy.cfg.
//! It changes nothing: no file is written, no command sent, nothing reloaded.
//!
//! It goes through the same code as a run: the watchers publish their first complete
//! set, the service rules resolve it, and [`HaproxyOutput::preview`] renders and plans
//! with the functions `apply` uses. Not modelled: the mass-removal guard (it compares
//! with a previous set a fresh process does not have) and servers `haproxy -c` would
//! refuse (finding them needs the check).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use common::ServiceName;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backends::BackendSet;
use crate::config::Config;
use crate::counters::Counters;
use crate::haproxy::{HaproxyOutput, Preview};
use crate::resolution::{resolve, Resolution};
use crate::watcher::{AnyWatcher, EtcdClients, Watcher, ZkClients};

/// Why a dry run could not say what would change.
#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    #[error("no first complete set within {timeout:?} from: {services}")]
    RegistryTimeout { timeout: Duration, services: String },
    #[error("the config has no haproxy section: nothing to compare")]
    NoHaproxy,
    #[error(transparent)]
    Render(#[from] crate::haproxy::config::RenderError),
}

/// What a run would do.
#[derive(Debug, Clone)]
pub struct DryRun {
    pub preview: Preview,
    pub config_path: Option<std::path::PathBuf>,
    /// Services whose rules kept nothing (over `max_servers`): with a previous set, a
    /// run would keep it.
    pub notes: Vec<String>,
}

impl DryRun {
    /// Whether a run would change anything (exit 2) or not (exit 0).
    pub fn changes(&self) -> bool {
        let p = &self.preview;
        !p.commands.is_empty()
            || p.reload.is_some()
            || p.deployed.as_deref() != Some(p.rendered.as_str())
    }

    /// The report `synapse diff` prints.
    pub fn render(&self) -> String {
        let p = &self.preview;
        let mut out = String::new();
        if p.commands.is_empty() {
            out.push_str("runtime commands: none\n");
        } else {
            out.push_str("runtime commands:\n");
            for (socket, command) in &p.commands {
                let _ = writeln!(out, "  {} < {command}", socket.display());
            }
        }
        for e in &p.runtime_errors {
            let _ = writeln!(out, "runtime API unreachable: {e}");
        }
        match &p.reload {
            Some(why) => {
                let _ = writeln!(out, "reload: needed ({why})");
            }
            None => out.push_str("reload: not needed\n"),
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        let name = self
            .config_path
            .as_ref()
            .map_or_else(|| "haproxy.cfg".to_owned(), |p| p.display().to_string());
        let old = p.deployed.as_deref().unwrap_or("");
        if p.deployed.as_deref() == Some(p.rendered.as_str()) {
            let _ = writeln!(out, "{name}: unchanged");
        } else {
            let diff = similar::TextDiff::from_lines(old, p.rendered.as_str());
            let what = if p.deployed.is_some() {
                "on disk"
            } else {
                "missing"
            };
            let _ = write!(
                out,
                "{}",
                diff.unified_diff().context_radius(3).header(
                    &format!("{name} ({what})"),
                    &format!("{name} (would be written)")
                )
            );
        }
        out
    }
}

/// Reads every service's first complete set (within `timeout`), resolves them with
/// the service rules, and previews the HAProxy output.
pub async fn dry_run(config: &Config, timeout: Duration) -> Result<DryRun, DryRunError> {
    let h = config.haproxy.clone().ok_or(DryRunError::NoHaproxy)?;
    let counters = Arc::new(Counters::default());
    let clients = Arc::new(EtcdClients::default());
    let zk_clients = Arc::new(ZkClients::new(counters.clone()));
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut inputs = Vec::new();
    for svc in config.services.values() {
        let (tx, rx) = watch::channel(None);
        let watcher = AnyWatcher::for_service(svc, &clients, &zk_clients, &counters);
        tasks.spawn(watcher.run(tx, cancel.child_token()));
        inputs.push((svc.name.clone(), rx));
    }
    let first_sets = async {
        let mut found = BTreeMap::new();
        for (name, rx) in &mut inputs {
            if let Ok(d) = rx.wait_for(Option::is_some).await {
                found.insert(name.clone(), d.clone().unwrap_or_default());
            }
        }
        found
    };
    let found = tokio::time::timeout(timeout, first_sets).await;
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    let found = found.map_err(|_| DryRunError::RegistryTimeout {
        timeout,
        services: inputs
            .iter()
            .filter(|(_, rx)| rx.borrow().is_none())
            .map(|(n, _)| n.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let mut desired: BTreeMap<ServiceName, BackendSet> = BTreeMap::new();
    let mut notes = Vec::new();
    for (name, d) in found {
        let Some(svc) = config.services.get(&name) else {
            continue;
        };
        let set = match resolve(svc, &d.backends, false) {
            Resolution::Use(set) => set,
            Resolution::KeepPrevious => BackendSet::new(),
            Resolution::OverLimit { count } => {
                notes.push(format!(
                    "{name}: {count} servers, over max_servers ({}): a run keeps its previous set",
                    svc.max_servers
                ));
                BackendSet::new()
            }
        };
        desired.insert(name, set);
    }
    let config_path = h.config_file_path.clone();
    let mut output = HaproxyOutput::observer(h).await;
    let preview = output.preview(&config.services, &desired).await?;
    Ok(DryRun {
        preview,
        config_path,
        notes,
    })
}
