//! The HAProxy output's state and its runtime-only path (see the module doc of
//! `haproxy`): a change to some services goes out by the runtime API, the periodic
//! check runs in chunks, and haproxy.cfg follows by a write beside the loop. The full
//! path (`full`), the runtime passes (`runtime_pass`) and the preview (`preview`) are
//! further `impl` blocks in the child modules.

mod full;
mod preview;
mod runtime_pass;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::ServiceName;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::{check_grammar, render_service, RenderError, RenderedParts, ServerIds};
use super::managed::{ManagedHandle, Supervisor};
use super::model::{ConfigModel, Structure};
use super::plan::{next_chunk, Desired, ReloadReason};
use super::quarantine::Quarantine;
use super::reload::{write_atomically, ReloadError, Reloader, Writer};
use crate::backends::BackendSet;
use crate::config::{HaproxyConfig, ServiceConfig};
use crate::counters::Counters;

/// How often the running state is compared with the desired one without any change.
const VERIFY_INTERVAL: Duration = Duration::from_secs(2);
/// A `del server` refused because the server still has connections is tried again
/// this often (the server is in maintenance meanwhile: no new traffic).
const DELETE_RETRY: Duration = Duration::from_secs(1);
/// After an unconfirmed reload the new worker may not answer yet: look again soon.
const UNCONFIRMED_VERIFY: Duration = Duration::from_millis(500);
/// A change that went out by the runtime API reaches haproxy.cfg at most this much
/// later (plus the write and its check, which run beside the loop); the changes
/// meanwhile share one write (and one `haproxy -c`).
pub const FILE_WRITE_DELAY: Duration = Duration::from_secs(1);
/// The periodic check reads and plans whole backends, about this many servers at a
/// time, then lets the loop apply what arrived meanwhile: at 100,000 servers one `show
/// servers state` of everything (~15 MB) would hold a change up for a long while.
const VERIFY_CHUNK_SERVERS: usize = 2_000;

/// Errors of one apply. All are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Reload(#[from] ReloadError),
}

/// What happened in one apply, for the change log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// haproxy.cfg was (re)written.
    pub written: bool,
    /// Runtime-API commands HAProxy accepted.
    pub runtime_commands: usize,
    /// HAProxy was reloaded now.
    pub reloaded: bool,
    /// A reload is owed and waits for `restart_interval`.
    pub reload_pending: bool,
}

/// A state file with no servers (`1` is the format's version line), written when there
/// is none yet: HAProxy warns about a missing or empty one on every start and check.
async fn seed_server_state_file(file: &std::path::Path) {
    if tokio::fs::try_exists(file).await.unwrap_or(true) {
        return;
    }
    let dir = file
        .parent()
        .map_or_else(|| PathBuf::from("."), std::path::Path::to_owned);
    let path = file.to_owned();
    let written = tokio::task::spawn_blocking(move || write_atomically(&dir, &path, "1\n")).await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::warn!(file = %file.display(), "cannot create the empty server-state-file (HAProxy warns about it until the first reload writes it)");
    }
}

/// What an apply would do: see [`HaproxyOutput::preview`].
#[derive(Debug, Clone)]
pub struct Preview {
    /// Per stats socket, each runtime command in order.
    pub commands: Vec<(PathBuf, String)>,
    /// The reload it would do, and why (`None` also with `do_reloads: false`).
    pub reload: Option<ReloadReason>,
    /// haproxy.cfg as on disk (`None`: missing, or `do_writes: false`).
    pub deployed: Option<String>,
    /// haproxy.cfg as it would be written.
    pub rendered: String,
    /// Stats sockets that could not be read.
    pub runtime_errors: Vec<String>,
}

/// The outcome of one runtime pass.
#[derive(Debug, Default)]
struct RuntimePass {
    commands: usize,
    reload: Option<ReloadReason>,
    /// Backends with a server whose `del server` waits for its connections to end.
    retry_deletes: BTreeSet<String>,
}

/// haproxy.cfg being written beside the loop (see [`HaproxyOutput::start_write`]).
struct PendingWrite {
    /// The text it puts in place (once checked), or why it did not.
    task: tokio::task::JoinHandle<Result<String, ReloadError>>,
    /// The task's result, once the loop saw it end.
    done: Option<Result<String, ReloadError>>,
    /// The services whose parts it brings to the file, with their sets then.
    sets: BTreeMap<ServiceName, Option<BackendSet>>,
}

/// The desired state as a model, kept while HAProxy runs it (see the module's doc).
struct Modelled {
    /// The file in parts; `deployed` is their concatenation once written.
    parts: RenderedParts,
    /// The model of `parts`.
    desired: Desired,
    /// The `defaults` directives, which every backend inherits.
    defaults: Vec<String>,
    /// Services whose part changed since the file was written.
    unwritten: BTreeSet<ServiceName>,
}

/// What the runtime-only path did.
enum RuntimeOnly {
    Done(Applied),
    /// The full path must run (after these runtime commands went out).
    Full {
        runtime_commands: usize,
    },
}

/// The HAProxy output and its state between applies.
pub struct HaproxyOutput {
    config: HaproxyConfig,
    writer: Writer,
    reloader: Reloader,
    ids: ServerIds,
    /// The text HAProxy's config file holds (as far as we know).
    deployed: Option<String>,
    /// `deployed` without its server lines, kept so that a runtime-only change is told
    /// from a structural one without parsing the file again on every apply.
    deployed_structure: Option<Structure>,
    /// What HAProxy runs: the config it loaded, with the runtime changes since.
    /// `None` while unknown.
    loaded: Option<ConfigModel>,
    reload_pending: Option<ReloadReason>,
    next_reload_at: Instant,
    next_verify_at: Option<Instant>,
    /// Where the periodic check goes on: after this backend (`None`: from the first).
    verify_after: Option<String>,
    retry_deletes_at: Option<Instant>,
    /// The backends whose deletions are retried at `retry_deletes_at`.
    retry_deletes: BTreeSet<String>,
    managed: Option<ManagedHandle>,
    seen_generation: u64,
    /// False while a managed HAProxy is down (being restarted).
    running: bool,
    /// The last runtime pass could not read some socket.
    runtime_failed: bool,
    /// The last reload could not be confirmed, and no runtime pass has read HAProxy
    /// since: the old worker may still route by the old config.
    unconfirmed_reload: bool,
    /// Servers HAProxy refuses, left out of every render.
    quarantine: Quarantine,
    /// The backend sets of the last file written (a failed check is blamed only on
    /// servers that are new since); `None` until the first write.
    good_sets: Option<BTreeMap<ServiceName, BackendSet>>,
    /// The file HAProxy runs (as far as we know): put back when a reload is refused.
    good_text: Option<String>,
    /// The runtime-only path's model; `None` until a full apply left HAProxy in sync.
    modelled: Option<Modelled>,
    /// When haproxy.cfg is due to follow what went out by the runtime API.
    write_due_at: Option<Instant>,
    /// The write of haproxy.cfg beside the loop, at most one.
    pending_write: Option<PendingWrite>,
    counters: Arc<Counters>,
}

impl HaproxyOutput {
    /// Starts from the file on disk, if any: its bytes are the deployed state (an
    /// unchanged render after a restart is not rewritten and causes no reload), its
    /// server ids are kept, and an external HAProxy is assumed to run it (the runtime
    /// state is compared and fixed from there). In managed mode the returned
    /// [`Supervisor`] must be run (it starts HAProxy once the first config is written).
    pub async fn new(
        config: HaproxyConfig,
        counters: Arc<Counters>,
        changed: Arc<Notify>,
    ) -> (Self, Option<Supervisor>) {
        let writer = Writer::new(&config);
        writer.remove_leftovers();
        if !config.do_checks {
            tracing::warn!("haproxy.do_checks is false: a file is still checked before every reload or start that reads it, but not when HAProxy took its changes through the runtime API");
        }
        if let Some(file) = &config.server_state_file {
            seed_server_state_file(file).await;
        }
        let deployed = match writer.config_path() {
            Some(p) => tokio::fs::read_to_string(p).await.ok(),
            None => None,
        };
        let ids = deployed
            .as_deref()
            .map(ServerIds::from_config)
            .unwrap_or_default();
        let supervisor = match (
            &config.managed,
            &config.config_file_path,
            &config.master_socket_path,
        ) {
            (Some(m), Some(file), Some(master)) => Some(Supervisor::new(
                m.clone(),
                file.clone(),
                master.clone(),
                config.pid_file_path.clone(),
                changed,
                counters.clone(),
            )),
            _ => None,
        };
        let (supervisor, managed) = match supervisor {
            Some((s, h)) => (Some(s), Some(h)),
            None => (None, None),
        };
        let deployed_model = deployed.as_deref().map(ConfigModel::parse);
        let output = Self {
            good_text: deployed.clone(),
            reloader: Reloader::new(&config),
            writer,
            ids,
            deployed_structure: deployed_model.as_ref().map(ConfigModel::structure),
            // A managed HAProxy has not loaded anything yet.
            loaded: deployed_model.filter(|_| managed.is_none()),
            deployed,
            reload_pending: None,
            next_reload_at: Instant::now(),
            next_verify_at: None,
            verify_after: None,
            retry_deletes_at: None,
            retry_deletes: BTreeSet::new(),
            managed,
            seen_generation: 0,
            running: true,
            runtime_failed: false,
            unconfirmed_reload: false,
            quarantine: Quarantine::default(),
            good_sets: None,
            modelled: None,
            write_due_at: None,
            pending_write: None,
            counters,
            config,
        };
        (output, supervisor)
    }

    /// A new `haproxy` section (SIGHUP) whose start-up keys (paths, sockets, managed)
    /// are unchanged: everything rendered, checked or run from it follows from the next
    /// apply. The state of what HAProxy runs is kept, so an unchanged render writes and
    /// reloads nothing.
    pub fn reconfigure(&mut self, config: HaproxyConfig) {
        self.writer = Writer::new(&config);
        self.reloader = Reloader::new(&config);
        self.config = config;
        // The next apply takes the full path: render everything under the new config and
        // compare with what HAProxy runs (an unchanged render changes nothing).
        self.modelled = None;
    }

    fn runtime_enabled(&self) -> bool {
        self.config.do_socket && !self.config.socket_file_paths.is_empty()
    }

    /// Brings HAProxy and the file to the desired state. `changed`: the services whose
    /// set may differ from the last apply's (the others are known unchanged). Servers
    /// HAProxy refuses are quarantined and left out (see [`super::quarantine`]).
    pub async fn apply(
        &mut self,
        services: &BTreeMap<ServiceName, ServiceConfig>,
        desired: &BTreeMap<ServiceName, BackendSet>,
        changed: &BTreeSet<ServiceName>,
    ) -> Result<Applied, ApplyError> {
        match self.apply_runtime_only(services, desired, changed).await? {
            RuntimeOnly::Done(applied) => Ok(applied),
            RuntimeOnly::Full { runtime_commands } => {
                let mut applied = self.apply_full(services, desired).await?;
                applied.runtime_commands += runtime_commands;
                Ok(applied)
            }
        }
    }

    /// The runtime-only path (see the module's doc): the changed services' parts are
    /// rendered and modelled again, their backends planned against HAProxy's state of
    /// them (every backend when the periodic check is due), and the file is written from
    /// the parts when due. `Full` when the full path must run instead.
    async fn apply_runtime_only(
        &mut self,
        services: &BTreeMap<ServiceName, ServiceConfig>,
        desired: &BTreeMap<ServiceName, BackendSet>,
        changed: &BTreeSet<ServiceName>,
    ) -> Result<RuntimeOnly, ApplyError> {
        let full = RuntimeOnly::Full {
            runtime_commands: 0,
        };
        let now = Instant::now();
        if self.modelled.is_none()
            || !self.runtime_enabled()
            || self.reload_pending.is_some()
            || self.config.server_slots.is_some()
            || !self.quarantine.is_empty()
        {
            return Ok(full);
        }
        // A (re)started or stopped managed HAProxy: the full path, which first lets the
        // write beside the loop end (the restarted HAProxy runs the file on disk).
        if self.managed.as_ref().is_some_and(|h| {
            let state = h.state();
            state.generation != self.seen_generation || state.master_pid.is_none() || !h.requested()
        }) {
            return Ok(full);
        }
        let mut applied = Applied::default();
        match self.finish_write(false).await {
            None => {}
            Some(Ok(())) => applied.written = true,
            // The full path finds the servers the check refuses.
            Some(Err(ReloadError::CheckFailed { .. })) => return Ok(full),
            Some(Err(e)) => return Err(e.into()),
        }
        let Some(mut m) = self.modelled.take() else {
            return Ok(full);
        };
        let empty = BackendSet::new();
        let mut touched = Vec::new();
        for name in changed {
            let Some(svc) = services.get(name).filter(|s| !s.haproxy.disabled) else {
                continue;
            };
            let set = desired.get(name).unwrap_or(&empty);
            let backend = svc.backend_name();
            let wanted: BTreeSet<String> = set
                .iter()
                .map(crate::backends::Backend::server_name)
                .collect();
            let reserved = self.follow_running_ids_of(&backend, &wanted);
            self.ids
                .assign_backend(&backend, &wanted, self.config.max_server_id, &reserved);
            let part = render_service(&self.config, svc, set, &self.ids);
            check_grammar(&part, &self.config)?;
            if m.parts.services.get(name) == Some(&part) {
                continue;
            }
            let Some((backend, model)) = ConfigModel::parse_backend(&part, &m.defaults) else {
                return Ok(full);
            };
            if m.desired.config.backends.get(&backend).map(|b| &b.lines) != Some(&model.lines) {
                return Ok(full);
            }
            m.desired.config.backends.insert(backend.clone(), model);
            m.parts.services.insert(name.clone(), part);
            m.unwritten.insert(name.clone());
            touched.push(backend);
        }
        // The changes first, then the periodic check's next chunk: a change waits for at
        // most one chunk, never for the whole fleet.
        if !touched.is_empty() {
            self.write_due_at.get_or_insert(now + FILE_WRITE_DELAY);
        }
        let mut only: BTreeSet<String> = touched.into_iter().collect();
        if self.retry_deletes_at.is_some_and(|t| now >= t) {
            self.retry_deletes_at = None;
            only.append(&mut self.retry_deletes);
        }
        let chunk = if self.next_verify_at.is_none_or(|t| now >= t) {
            self.verify_chunk(&m.desired)
        } else {
            Vec::new()
        };
        for backends in [only.into_iter().collect(), chunk] {
            if backends.is_empty() {
                continue;
            }
            let pass = self.runtime_pass(&m.desired, Some(&backends)).await;
            applied.runtime_commands += pass.commands;
            if pass.reload.is_some() {
                // What the runtime API cannot do: the full path writes and reloads.
                return Ok(RuntimeOnly::Full {
                    runtime_commands: applied.runtime_commands,
                });
            }
        }
        if self.write_due_at.is_some_and(|t| now >= t) && self.pending_write.is_none() {
            self.start_write(&mut m, desired);
        }
        self.modelled = Some(m);
        Ok(RuntimeOnly::Done(applied))
    }

    /// The periodic check's next backends: whole backends from where the last chunk
    /// ended, about [`VERIFY_CHUNK_SERVERS`] servers in all. Until the last backend is
    /// checked, the next chunk is due at once (the loop applies the changes waiting
    /// first); then the next round is due [`VERIFY_INTERVAL`] later.
    fn verify_chunk(&mut self, desired: &Desired) -> Vec<String> {
        let (chunk, more) = next_chunk(desired, self.verify_after.as_deref(), VERIFY_CHUNK_SERVERS);
        let now = Instant::now();
        match chunk.last().filter(|_| more) {
            Some(last) => {
                self.verify_after = Some(last.clone());
                self.next_verify_at = Some(now);
            }
            None => {
                self.verify_after = None;
                self.next_verify_at = Some(now + VERIFY_INTERVAL);
            }
        }
        chunk
    }

    /// Starts writing haproxy.cfg from `m`'s parts beside the loop: the runtime API has
    /// applied them already, so no change waits for the file. Checked when `do_checks`
    /// (the check at a lower CPU priority); one write at a time, its result taken by
    /// [`Self::finish_write`]. A refused file is not put in place.
    fn start_write(&mut self, m: &mut Modelled, desired: &BTreeMap<ServiceName, BackendSet>) {
        self.write_due_at = None;
        let text = m.parts.text();
        if self.deployed.as_deref() == Some(text.as_str()) {
            m.unwritten.clear();
            return;
        }
        let sets = std::mem::take(&mut m.unwritten)
            .into_iter()
            .map(|name| {
                let set = desired.get(&name).cloned();
                (name, set)
            })
            .collect();
        let (writer, check) = (self.writer.deferred(), self.config.do_checks);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let written = writer.write(&text, check).await;
            tracing::debug!(bytes = text.len(), took = ?started.elapsed(), ok = written.is_ok(), "deferred write of haproxy.cfg");
            written.map(|()| text)
        });
        self.pending_write = Some(PendingWrite {
            task,
            done: None,
            sets,
        });
    }

    /// Whether haproxy.cfg is being written beside the loop (see [`Self::write_ended`]).
    pub fn writing(&self) -> bool {
        self.pending_write
            .as_ref()
            .is_some_and(|p| p.done.is_none())
    }

    /// Resolves when the write beside the loop ends (never while none runs); the next
    /// apply takes its result. Cancel-safe.
    pub async fn write_ended(&mut self) {
        match &mut self.pending_write {
            Some(p) if p.done.is_none() => {
                let ended = (&mut p.task).await;
                p.done = Some(ended.unwrap_or_else(|e| Err(e.into())));
            }
            _ => std::future::pending().await,
        }
    }

    /// Takes the result of the write beside the loop once it ended (`wait`: waits for
    /// it); `None` while none ended. A written file becomes the deployed and last good
    /// one; a failed write is due again (and retried with the loop's backoff).
    async fn finish_write(&mut self, wait: bool) -> Option<Result<(), ReloadError>> {
        let p = self.pending_write.as_ref()?;
        if p.done.is_none() {
            if !wait && !p.task.is_finished() {
                return None;
            }
            self.write_ended().await;
        }
        let p = self.pending_write.take()?;
        let text = match p.done? {
            Ok(text) => text,
            Err(e) => {
                if !matches!(e, ReloadError::CheckFailed { .. }) {
                    Counters::inc(&self.counters.write_failures);
                    self.write_due_at = Some(Instant::now());
                    if let Some(m) = &mut self.modelled {
                        m.unwritten.extend(p.sets.into_keys());
                    }
                }
                return Some(Err(e));
            }
        };
        if self.writer.config_path().is_some() {
            Counters::inc(&self.counters.config_writes);
        }
        if let Some(good) = &mut self.good_sets {
            for (name, set) in p.sets {
                match set {
                    Some(set) => good.insert(name, set),
                    None => good.remove(&name),
                };
            }
        }
        // HAProxy runs what the file holds (the runtime passes left nothing to reload).
        self.good_text = Some(text.clone());
        self.deployed = Some(text);
        Some(Ok(()))
    }

    /// Whether synapse knows that HAProxy runs what it last applied (the drain barrier
    /// publishes a revision only then): not while a managed HAProxy is down, a stats
    /// socket did not answer, or a reload is unconfirmed and unverified.
    pub fn confirmed(&self) -> bool {
        self.running && !self.runtime_failed && !self.unconfirmed_reload
    }

    /// When the loop should call `apply` again without a change: a deferred reload, a
    /// deletion to retry, or the periodic runtime check.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let reload = self.reload_pending.as_ref().filter(|_| self.running);
        [
            reload.map(|_| self.next_reload_at),
            self.retry_deletes_at,
            self.next_verify_at,
            // While a write runs, its end wakes the loop (`write_ended`).
            self.write_due_at.filter(|_| self.pending_write.is_none()),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
