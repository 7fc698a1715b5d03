//! The HAProxy output: render → plan → runtime commands → write (+check) → reload.
//!
//! ```text
//! desired backends ─► render (pure) ─► ConfigModel ─┐
//! stats socket: show info / show backend / show servers state ─► RunningState ─┤
//!                                                   plan(running, desired) ◄┘
//!   commands ─► stats socket (add/del server, weight, state, addr)   no reload
//!   file     ─► written atomically (+check) whenever the render changed, so a later
//!               reload or restart runs what the socket applied
//!   reload?  ─► rate-limited (restart_interval + jitter), coalesced, server state
//!               dumped to `server-state-file` first, confirmed through the master CLI,
//!               retried with backoff; then a second runtime pass fixes what the
//!               state file restored
//! ```
//!
//! Without a stats socket (`do_socket: false` or no `socket_file_path`) every change of
//! the rendered file is a reload, as before. The runtime state is checked again every
//! few seconds, so drift (a hand-made change, an HAProxy restarted elsewhere) is undone.
//!
//! Model first, text last: once HAProxy runs what the file holds, the output keeps the
//! desired state as a model ([`Modelled`]: each service's rendered part and the backends
//! parsed from it). A change to some services then costs O(their servers): only their
//! parts are rendered and modelled again, only their backends' state is read (`show
//! servers state <backend>`) and planned, and the file is assembled from the parts at
//! most [`FILE_WRITE_DELAY`] later, once for all changes meanwhile. Everything else
//! (a reload, a refused check, a quarantined server, slots, a restarted HAProxy) goes the
//! full way: render everything, model it, plan every backend.

pub mod config;
pub mod managed;
pub mod model;
pub mod plan;
pub mod quarantine;
pub mod reload;
pub mod runtime;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::ServiceName;
use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backends::BackendSet;
use crate::config::{HaproxyConfig, ServiceConfig};
use crate::counters::Counters;
use config::{
    check_grammar, render, render_service, wanted_servers, RenderError, RenderedParts, ServerIds,
};
use managed::{ManagedHandle, Supervisor};
use model::{ConfigModel, Structure};
use plan::{
    next_chunk, plan_backends, plan_view, Desired, ReloadReason, RunningView, RuntimeCommand,
};
use quarantine::{error_line, find_refused, suspects, without, Quarantine};
use reload::{write_atomically, ReloadError, Reloader, Writer};
use runtime::{LiveServers, Session, SocketError};

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
    /// HAProxy refuses are quarantined and left out (see [`quarantine`]).
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

    /// The full path: renders everything, plans every backend, writes, reloads.
    async fn apply_full(
        &mut self,
        services: &BTreeMap<ServiceName, ServiceConfig>,
        desired: &BTreeMap<ServiceName, BackendSet>,
    ) -> Result<Applied, ApplyError> {
        // The file on disk is one to compare with and write over: no write beside the
        // loop may land after this one. Its failure does not matter (this one follows).
        let _ = self.finish_write(true).await;
        self.modelled = None;
        self.write_due_at = None;
        let mut applied = Applied::default();
        let sets = self.quarantine.filter(desired);
        let (parts, mut rendered, mut model) = self.prepare(services, &sets)?;
        let mut parts = Some(parts);
        let running = self.observe_managed();
        self.running = running;
        if !running {
            // The supervisor wakes the loop when HAProxy is back.
            self.next_verify_at = Some(Instant::now() + VERIFY_INTERVAL);
        }
        let runtime = self.runtime_enabled() && running;
        let mut pass_reload = None;
        if runtime {
            let pass = self.runtime_pass(&model, None).await;
            applied.runtime_commands = pass.commands;
            pass_reload = pass.reload;
        }
        let runtime_complete = runtime && pass_reload.is_none();
        if self.deployed.as_deref() != Some(rendered.as_str()) {
            // Every write is checked; with `do_checks: false`, not one whose servers
            // HAProxy just validated at runtime (no reload or start reads it now).
            let check =
                self.config.do_checks || !(runtime_complete && self.same_structure(&model.config));
            let quarantined = self.quarantine.len();
            let written = self
                .write_leaving_out_refused(services, desired, sets, rendered, check)
                .await?;
            (rendered, model) = written;
            if self.quarantine.len() != quarantined {
                parts = None;
            }
            if self.quarantine.len() != quarantined && runtime {
                // Servers left out now: the runtime state follows the new render.
                let pass = self.runtime_pass(&model, None).await;
                applied.runtime_commands += pass.commands;
                pass_reload = pass.reload;
            }
            if self.writer.config_path().is_some() {
                Counters::inc(&self.counters.config_writes);
            }
            self.deployed = Some(rendered);
            self.deployed_structure = Some(model.config.structure());
            applied.written = true;
            if !self.runtime_enabled() {
                self.need_reload(ReloadReason::NoRuntimeApi);
            }
        }
        if runtime && pass_reload.is_none() && self.reload_pending.is_none() {
            // HAProxy runs what the file holds.
            self.good_text.clone_from(&self.deployed);
        }
        self.counters.set_quarantined(self.quarantine.report());
        if let Some(why) = pass_reload {
            self.need_reload(why);
        }
        if let Some(m) = &mut self.managed {
            if !m.requested() && self.deployed.is_some() {
                // The first start runs the file just written: no reload.
                m.start();
                self.reload_pending = None;
                self.good_text.clone_from(&self.deployed);
                return Ok(applied);
            }
        }
        if self.reload_pending.is_none() || !running {
            let in_sync = runtime
                && self.reload_pending.is_none()
                && self.quarantine.is_empty()
                && self.config.server_slots.is_none();
            if let Some(parts) = parts.filter(|_| in_sync) {
                self.modelled = Some(Modelled {
                    parts,
                    defaults: model.config.defaults_lines(),
                    desired: model,
                    unwritten: BTreeSet::new(),
                });
            }
            return Ok(applied);
        }
        if Instant::now() < self.next_reload_at {
            applied.reload_pending = true;
            return Ok(applied);
        }
        self.reload(&model, &mut applied).await?;
        Ok(applied)
    }

    /// Server ids for `sets`, the rendered file (in parts and whole), and its model.
    fn prepare(
        &mut self,
        services: &BTreeMap<ServiceName, ServiceConfig>,
        sets: &BTreeMap<ServiceName, BackendSet>,
    ) -> Result<(RenderedParts, String, Desired), RenderError> {
        let wanted = wanted_servers(services, sets);
        // With slots, ids are slot numbers and HAProxy's servers are `slot<k>`: a free
        // slot is refilled at runtime, so nothing needs reserving.
        let reserved = if self.config.server_slots.is_none() {
            self.follow_running_ids(&wanted)
        } else {
            BTreeMap::new()
        };
        self.ids
            .assign_reserving(&wanted, self.config.max_server_id, &reserved);
        let parts = RenderedParts::render(&self.config, services, sets, &self.ids);
        let rendered = parts.text();
        check_grammar(&rendered, &self.config)?;
        let model = Desired {
            config: ConfigModel::parse(&rendered),
            dynamic_servers: self.config.dynamic_servers,
        };
        Ok((parts, rendered, model))
    }

    /// Writes `rendered` (checked when `check`). When the check fails, the servers new
    /// since the last written file are bisected with the check; the ones it refuses are
    /// quarantined and the rest is rendered and written. When the check fails without
    /// any of them (the operator's own lines), nothing is written: the last good file
    /// stays. Returns what was written.
    async fn write_leaving_out_refused(
        &mut self,
        services: &BTreeMap<ServiceName, ServiceConfig>,
        desired: &BTreeMap<ServiceName, BackendSet>,
        sets: std::borrow::Cow<'_, BTreeMap<ServiceName, BackendSet>>,
        rendered: String,
        check: bool,
    ) -> Result<(String, Desired), ApplyError> {
        let failed = match self.writer.write(&rendered, check).await {
            Ok(()) => {
                let model = Desired {
                    config: ConfigModel::parse(&rendered),
                    dynamic_servers: self.config.dynamic_servers,
                };
                self.good_sets = Some(sets.into_owned());
                return Ok((rendered, model));
            }
            Err(e @ ReloadError::CheckFailed { .. }) => e,
            Err(e) => {
                Counters::inc(&self.counters.write_failures);
                return Err(e.into());
            }
        };
        Counters::inc(&self.counters.check_failures);
        // The servers new since the last written file first; if the check fails without
        // them too, every server (one that HAProxy accepted before may be refused now,
        // e.g. a host name that stopped resolving).
        let mut found = self
            .bisect(services, &sets, suspects(&sets, self.good_sets.as_ref()))
            .await;
        if found.is_none() && self.good_sets.is_some() {
            found = self.bisect(services, &sets, suspects(&sets, None)).await;
        }
        let refused = match found {
            Some(refused) if !refused.is_empty() => refused,
            _ => {
                tracing::error!(error = %failed, "the check refuses the configuration whatever registrations it holds (the operator's own lines?): the last good file stays");
                return Err(failed.into());
            }
        };
        for ((service, backend), output) in refused {
            let error = error_line(&output, &backend.server_name());
            self.quarantine.add(&service, backend, error);
        }
        let sets = self.quarantine.filter(desired);
        let (_, rendered, model) = self.prepare(services, &sets)?;
        if let Err(e) = self.writer.write(&rendered, true).await {
            match &e {
                ReloadError::CheckFailed { .. } => Counters::inc(&self.counters.check_failures),
                _ => Counters::inc(&self.counters.write_failures),
            }
            return Err(e.into());
        }
        self.good_sets = Some(sets.into_owned());
        Ok((rendered, model))
    }

    /// [`find_refused`] with the configured check, on renders of `sets` without some of
    /// `suspects`.
    async fn bisect(
        &self,
        services: &BTreeMap<ServiceName, ServiceConfig>,
        sets: &BTreeMap<ServiceName, BackendSet>,
        suspects: Vec<quarantine::Suspect>,
    ) -> Option<Vec<(quarantine::Suspect, String)>> {
        let (writer, config, ids) = (&self.writer, &self.config, &self.ids);
        find_refused(suspects, |left_out| {
            let text = render(config, services, &without(sets, &left_out), ids);
            async move {
                match text {
                    Ok(text) => writer.check_only(&text).await,
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    }

    /// Lines the ids up with the servers HAProxy still runs: a wanted one keeps the id
    /// it runs with; the ids of unwanted ones (removed, waiting for their connections to
    /// end before `del server`) are returned, per backend, to be kept from new servers.
    fn follow_running_ids(
        &mut self,
        wanted: &BTreeMap<String, BTreeSet<String>>,
    ) -> BTreeMap<String, BTreeSet<u32>> {
        let mut lingering: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        let Some(loaded) = &self.loaded else {
            return lingering;
        };
        for (name, b) in &loaded.backends {
            let want = wanted.get(name);
            for (server, id) in b.servers.iter().filter_map(|(s, m)| Some((s, m.id?))) {
                if want.is_some_and(|w| w.contains(server)) {
                    self.ids.adopt(name, server, id);
                } else {
                    lingering.entry(name.clone()).or_default().insert(id);
                }
            }
        }
        lingering
    }

    /// [`HaproxyOutput::follow_running_ids`] for one backend: returns its lingering ids.
    fn follow_running_ids_of(&mut self, backend: &str, wanted: &BTreeSet<String>) -> BTreeSet<u32> {
        let mut lingering = BTreeSet::new();
        let Some(loaded) = self.loaded.as_ref().and_then(|l| l.backends.get(backend)) else {
            return lingering;
        };
        for (server, id) in loaded.servers.iter().filter_map(|(s, m)| Some((s, m.id?))) {
            if wanted.contains(server) {
                self.ids.adopt(backend, server, id);
            } else {
                lingering.insert(id);
            }
        }
        lingering
    }

    /// Whether the file on disk has `config`'s structure (everything but server lines).
    fn same_structure(&self, config: &ConfigModel) -> bool {
        self.deployed_structure
            .as_ref()
            .is_some_and(|s| config.has_structure(s))
    }

    /// Managed mode: notices a (re)started HAProxy, which runs the file on disk. False
    /// while a managed HAProxy is not running.
    fn observe_managed(&mut self) -> bool {
        let Some(m) = &self.managed else {
            return true;
        };
        let state = m.state();
        if state.generation != self.seen_generation {
            self.seen_generation = state.generation;
            self.loaded = self.deployed.as_deref().map(ConfigModel::parse);
            self.reload_pending = None;
        }
        state.master_pid.is_some()
    }

    fn need_reload(&mut self, why: ReloadReason) {
        if !self.reloader.enabled() {
            tracing::warn!(reason = %why, "HAProxy needs a reload, but reloads are off (do_reloads: false)");
            return;
        }
        if self.reload_pending.is_none() {
            tracing::debug!(reason = %why, "HAProxy needs a reload");
            self.reload_pending = Some(why);
        }
    }

    async fn reload(&mut self, desired: &Desired, applied: &mut Applied) -> Result<(), ApplyError> {
        let reason = self.reload_pending.clone().unwrap_or(ReloadReason::Initial);
        self.dump_server_state().await;
        let master_pid = self.managed.as_ref().and_then(|m| m.state().master_pid);
        crate::failpoint::hit("before_reload");
        let reloaded = match self.reloader.reload(master_pid).await {
            Ok(r) => r,
            Err(e) => {
                Counters::inc(&self.counters.reload_failures);
                if matches!(e, ReloadError::Refused { .. }) {
                    self.restore_good_file().await;
                }
                return Err(e.into());
            }
        };
        Counters::inc(&self.counters.reloads);
        tracing::info!(reason = %reason, confirmed = reloaded.confirmed, "reloaded HAProxy");
        self.reload_pending = None;
        self.next_reload_at = Instant::now() + self.reload_spacing();
        self.loaded = self.deployed.as_deref().map(ConfigModel::parse);
        self.good_text.clone_from(&self.deployed);
        applied.reloaded = true;
        self.unconfirmed_reload = !reloaded.confirmed;
        if !self.runtime_enabled() {
            return Ok(());
        }
        if !reloaded.confirmed {
            self.next_verify_at = Some(Instant::now() + UNCONFIRMED_VERIFY);
            return Ok(());
        }
        // The state file brought back runtime state (weights, maintenance) from before
        // the reload; the new worker now gets what the plan still finds.
        let pass = self.runtime_pass(desired, None).await;
        applied.runtime_commands += pass.commands;
        if let Some(why) = pass.reload {
            self.need_reload(why);
            applied.reload_pending = self.reload_pending.is_some();
        }
        Ok(())
    }

    /// HAProxy refused the file on disk at a reload (it keeps running the old one): puts
    /// the last file it ran back, so that a restart does not fail on it. The next apply
    /// (after the retry backoff) writes the new one and reloads again: the cause may be
    /// passing (a port another process holds).
    async fn restore_good_file(&mut self) {
        let (Some(good), Some(path)) = (self.good_text.clone(), self.writer.config_path()) else {
            return;
        };
        if self.deployed.as_deref() == Some(good.as_str()) {
            return;
        }
        let (dir, path) = (
            path.parent()
                .map_or_else(|| PathBuf::from("."), std::path::Path::to_owned),
            path.to_owned(),
        );
        let text = good.clone();
        match tokio::task::spawn_blocking(move || write_atomically(&dir, &path, &text)).await {
            Ok(Ok(())) => {
                tracing::error!(
                    "HAProxy refused the new configuration: the last good file is back in place"
                );
                self.deployed = Some(good);
                self.deployed_structure = self
                    .deployed
                    .as_deref()
                    .map(|t| ConfigModel::parse(t).structure());
                self.reload_pending = None;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %crate::watcher::etcd::error_chain(&e), "cannot put the last good file back")
            }
            Err(e) => tracing::error!(error = %e, "cannot put the last good file back"),
        }
    }

    /// Reads what every stats socket's HAProxy runs, and applies the plan's commands:
    /// for every backend (and the rest of the config), or `only` some backends.
    async fn runtime_pass(&mut self, desired: &Desired, only: Option<&[String]>) -> RuntimePass {
        let started = Instant::now();
        let mut pass = RuntimePass::default();
        let mut failed = false;
        for path in self.config.socket_file_paths.clone() {
            if let Err(e) = self.runtime_pass_on(&path, desired, only, &mut pass).await {
                failed = true;
                Counters::inc(&self.counters.runtime_failures);
                let in_sync = self.loaded.as_ref() == Some(&desired.config);
                tracing::warn!(socket = %path.display(), error = %crate::watcher::etcd::error_chain(&e), in_sync, "the HAProxy runtime API failed");
                if !in_sync {
                    pass.reload.get_or_insert(ReloadReason::NoRuntimeApi);
                }
            }
        }
        self.runtime_failed = failed;
        tracing::debug!(backends = only.map(<[String]>::len), took = ?started.elapsed(), commands = pass.commands, "runtime pass");
        // Every socket answered with what HAProxy runs: whatever reload came before is
        // in force.
        self.unconfirmed_reload &= failed;
        let now = Instant::now();
        if only.is_none() {
            self.next_verify_at = Some(now + VERIFY_INTERVAL);
            self.verify_after = None;
            self.retry_deletes.clear();
            self.retry_deletes_at = None;
        }
        if !pass.retry_deletes.is_empty() {
            self.retry_deletes
                .extend(pass.retry_deletes.iter().cloned());
            self.retry_deletes_at.get_or_insert(now + DELETE_RETRY);
        }
        pass
    }

    async fn runtime_pass_on(
        &mut self,
        path: &std::path::Path,
        desired: &Desired,
        only: Option<&[String]>,
        pass: &mut RuntimePass,
    ) -> Result<(), SocketError> {
        let mut session = Session::open(path).await?;
        let Some(plan) = self.running_plan(&mut session, desired, only).await? else {
            pass.reload.get_or_insert(ReloadReason::Initial);
            return Ok(());
        };
        let mut refused = BTreeSet::new();
        for cmd in &plan.commands {
            if refused.contains(&(cmd.backend().clone(), cmd.server().clone())) {
                // Its `add server` was refused: the rest of its commands would be too.
                continue;
            }
            let text = cmd.to_string();
            let answer = session.command(&text).await?;
            if cmd.succeeded(&answer) {
                tracing::debug!(command = %text, "runtime API");
                Counters::inc(&self.counters.runtime_commands);
                pass.commands += 1;
                self.note_applied(cmd, desired);
                continue;
            }
            if matches!(cmd, RuntimeCommand::Del { .. }) && answer.contains("connections") {
                // In maintenance already; deleted once its connections are gone.
                tracing::debug!(command = %text, answer = %answer.trim(), "server still has connections; deleting it later");
                pass.retry_deletes.insert(cmd.backend().as_str().to_owned());
                continue;
            }
            // The other servers' commands still go out; the file (checked, with the
            // refused servers found and left out) and a reload settle this one.
            Counters::inc(&self.counters.runtime_failures);
            tracing::warn!(command = %text, answer = %runtime::summarize(&answer), "HAProxy refused a runtime command; the checked file and a reload settle it");
            refused.insert((cmd.backend().clone(), cmd.server().clone()));
            pass.reload.get_or_insert(ReloadReason::CommandFailed {
                command: text,
                answer: runtime::summarize(&answer),
            });
        }
        if let Some(why) = plan.reload {
            pass.reload.get_or_insert(why);
        }
        Ok(())
    }

    /// Reads what the HAProxy behind `session` runs and plans the way to `desired`;
    /// `None` while what it loaded is unknown.
    async fn running_plan(
        &self,
        session: &mut Session,
        desired: &Desired,
        only: Option<&[String]>,
    ) -> Result<Option<plan::Plan>, SocketError> {
        let caps = session.capabilities().await?;
        let backends = session.backends().await?;
        let servers = match only {
            None => session.servers().await?,
            Some(names) => {
                let mut servers = LiveServers::new();
                // A backend HAProxy lacks is planned as such (a reload).
                for name in names.iter().filter(|n| backends.contains(*n)) {
                    servers.extend(session.servers_of(name).await?);
                }
                servers
            }
        };
        let Some(loaded) = self.loaded.as_ref() else {
            return Ok(None);
        };
        let running = RunningView {
            caps: &caps,
            loaded,
            backends: &backends,
            servers: &servers,
        };
        Ok(Some(match only {
            None => plan_view(&running, desired),
            Some(names) => plan_backends(&running, desired, names),
        }))
    }

    /// An output that only looks: HAProxy is assumed to run the file on disk (managed
    /// or not), nothing is removed, seeded or started. For [`Self::preview`].
    pub async fn observer(config: HaproxyConfig) -> Self {
        let writer = Writer::new(&config);
        let deployed = match writer.config_path() {
            Some(p) => tokio::fs::read_to_string(p).await.ok(),
            None => None,
        };
        let ids = deployed
            .as_deref()
            .map(ServerIds::from_config)
            .unwrap_or_default();
        let model = deployed.as_deref().map(ConfigModel::parse);
        Self {
            good_text: deployed.clone(),
            reloader: Reloader::new(&config),
            writer,
            ids,
            deployed_structure: model.as_ref().map(ConfigModel::structure),
            loaded: model,
            deployed,
            reload_pending: None,
            next_reload_at: Instant::now(),
            next_verify_at: None,
            verify_after: None,
            retry_deletes_at: None,
            retry_deletes: BTreeSet::new(),
            managed: None,
            seen_generation: 0,
            running: true,
            quarantine: Quarantine::default(),
            good_sets: None,
            counters: Arc::default(),
            modelled: None,
            write_due_at: None,
            pending_write: None,
            runtime_failed: false,
            unconfirmed_reload: false,
            config,
        }
    }

    /// What [`Self::apply`] would do now, doing none of it: the runtime commands it
    /// would send (per stats socket), whether it would reload and why, and the file it
    /// would write. Servers `haproxy -c` would refuse are not looked for (that needs
    /// the check, which writes a candidate file).
    pub async fn preview(
        &mut self,
        services: &BTreeMap<ServiceName, ServiceConfig>,
        desired: &BTreeMap<ServiceName, BackendSet>,
    ) -> Result<Preview, RenderError> {
        let (_, rendered, model) = self.prepare(services, desired)?;
        let mut preview = Preview {
            commands: Vec::new(),
            reload: None,
            deployed: self.deployed.clone(),
            rendered,
            runtime_errors: Vec::new(),
        };
        if self.runtime_enabled() {
            for path in self.config.socket_file_paths.clone() {
                let planned = match Session::open(&path).await {
                    Ok(mut session) => self.running_plan(&mut session, &model, None).await,
                    Err(e) => Err(e),
                };
                match planned {
                    Ok(Some(plan)) => {
                        preview
                            .commands
                            .extend(plan.commands.iter().map(|c| (path.clone(), c.to_string())));
                        if let Some(why) = plan.reload {
                            preview.reload.get_or_insert(why);
                        }
                    }
                    Ok(None) => {
                        preview.reload.get_or_insert(ReloadReason::Initial);
                    }
                    Err(e) => {
                        preview.runtime_errors.push(format!(
                            "{}: {}",
                            path.display(),
                            crate::watcher::etcd::error_chain(&e)
                        ));
                        if self.loaded.as_ref() != Some(&model.config) {
                            preview.reload.get_or_insert(ReloadReason::NoRuntimeApi);
                        }
                    }
                }
            }
        } else if preview.deployed.as_deref() != Some(preview.rendered.as_str()) {
            preview.reload.get_or_insert(ReloadReason::NoRuntimeApi);
        }
        if !self.reloader.enabled() {
            preview.reload = None;
        }
        Ok(preview)
    }

    /// Keeps `loaded` equal to what runs after a command HAProxy accepted.
    fn note_applied(&mut self, cmd: &RuntimeCommand, desired: &Desired) {
        let (b, s) = (cmd.backend().as_str(), cmd.server().as_str());
        let Some(backend) = self.loaded.as_mut().and_then(|m| m.backends.get_mut(b)) else {
            return;
        };
        match cmd {
            RuntimeCommand::Del { .. } => {
                backend.servers.remove(s);
            }
            _ => {
                if let Some(server) = desired
                    .config
                    .backends
                    .get(b)
                    .and_then(|d| d.servers.get(s))
                {
                    backend.servers.insert(s.to_owned(), server.clone());
                }
            }
        }
    }

    /// `show servers state` into the `server-state-file` from the `global` lines, so
    /// the new worker starts with the old one's health, weights and states. Best
    /// effort: without it a reload only loses that state.
    async fn dump_server_state(&self) {
        let (Some(file), Some(socket)) = (
            self.config.server_state_file.clone(),
            self.config.socket_file_paths.first().cloned(),
        ) else {
            return;
        };
        let state = match Session::open(&socket).await {
            Ok(mut s) => s.servers_state_raw().await,
            Err(e) => Err(e),
        };
        let written = match state {
            Ok(mut text) => {
                text.push('\n');
                let dir = file
                    .parent()
                    .map_or_else(|| PathBuf::from("."), std::path::Path::to_owned);
                tokio::task::spawn_blocking(move || write_atomically(&dir, &file, &text))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| crate::watcher::etcd::error_chain(&e)))
            }
            Err(e) => Err(crate::watcher::etcd::error_chain(&e)),
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot save the server state before the reload");
        }
    }

    /// When the loop should call `apply` again without a change: a deferred reload, a
    /// deletion to retry, or the periodic runtime check.
    /// Whether synapse knows that HAProxy runs what it last applied (the drain barrier
    /// publishes a revision only then): not while a managed HAProxy is down, a stats
    /// socket did not answer, or a reload is unconfirmed and unverified.
    pub fn confirmed(&self) -> bool {
        self.running && !self.runtime_failed && !self.unconfirmed_reload
    }

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

    /// `restart_interval`, plus up to `restart_jitter × restart_interval` at random, so
    /// that a fleet does not reload (and health-check) in lockstep.
    fn reload_spacing(&self) -> Duration {
        let interval = self.config.restart_interval;
        let jitter = interval.mul_f64(self.config.restart_jitter);
        let extra = if jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_micros(rand::rng().random_range(0..=jitter.as_micros() as u64))
        };
        interval + extra
    }
}
