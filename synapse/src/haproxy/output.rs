//! The HAProxy output's state and its runtime-only path (see the module doc of
//! `haproxy`): a change to some services goes out by the runtime API, the periodic
//! check runs in chunks, and haproxy.cfg follows by a write beside the loop. The full
//! path (`full`), the runtime passes (`runtime_pass`) and the preview (`preview`) are
//! further `impl` blocks in the child modules.

mod check;
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
use super::plan::{chunk_share, next_chunk, servers_to_check, Desired, ReloadReason};
use super::quarantine::Quarantine;
use super::reload::{lowered, write_atomically, ReloadError, Reloader, Writer};
use super::runtime::{Running, SocketError};
use crate::backends::BackendSet;
use crate::config::{HaproxyConfig, ServiceConfig};
use crate::counters::Counters;

/// How often the running state is compared with the desired one without any change.
const VERIFY_INTERVAL: Duration = Duration::from_secs(2);
/// ... reading at most this many servers' state a second: past 20,000 servers a round
/// takes longer than [`VERIFY_INTERVAL`] (10 s at 100,000), so that the check's share of
/// HAProxy's and synapse's time stays the same at any size. (A dead HAProxy is still
/// seen by the next slice's read, a fraction of a second later.)
const VERIFY_SERVERS_PER_SEC: f64 = 10_000.0;
/// A `del server` refused because the server still has connections is tried again
/// this often (the server is in maintenance meanwhile: no new traffic).
const DELETE_RETRY: Duration = Duration::from_secs(1);
/// After an unconfirmed reload the new worker may not answer yet: look again soon.
const UNCONFIRMED_VERIFY: Duration = Duration::from_millis(500);
/// A change that went out by the runtime API reaches haproxy.cfg at most this much
/// later (plus the write and its check, which run beside the loop); the changes
/// meanwhile share one write (and one `haproxy -c`).
pub const FILE_WRITE_DELAY: Duration = Duration::from_secs(1);
/// ... and, for a big file, at most this many bytes a second on average: at 100,000
/// servers (8.5 MB) a write every ~4 s rather than every second, so that a steady flow
/// of changes does not keep the disk (and the page cache, and the fsync's writeback)
/// busy with the same file. Below ~2 MB (~25,000 servers) the delay above rules.
const FILE_WRITE_BYTES_PER_SEC: f64 = 2_000_000.0;
/// The periodic check reads and plans whole backends, about this many servers at a
/// time (at least one backend), then lets the loop apply what arrived meanwhile: at
/// 100,000 servers one `show servers state` of everything (~15 MB) would hold a change
/// up for a long while, and a slice of 2,000 servers for 4 ms (15 ms at worst).
const VERIFY_CHUNK_SERVERS: usize = 500;

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

/// Resolves when the write beside the loop ends (never while none runs). Cancel-safe.
async fn write_ended(pending: &mut Option<PendingWrite>) {
    match pending {
        Some(p) if p.done.is_none() => {
            let ended = (&mut p.task).await;
            p.done = Some(ended.unwrap_or_else(|e| Err(e.into())));
        }
        _ => std::future::pending().await,
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
    /// The text it put in place (once checked; `None`: the file held it already), or
    /// why it did not.
    task: tokio::task::JoinHandle<Result<Option<Arc<str>>, ReloadError>>,
    /// The task's result, once the loop saw it end.
    done: Option<Result<Option<Arc<str>>, ReloadError>>,
    /// The services whose parts it brings to the file, with their sets then.
    sets: BTreeMap<ServiceName, Option<BackendSet>>,
}

/// What each stats socket answered for a slice of the periodic check.
type CheckRead = Vec<(PathBuf, Result<Running, SocketError>)>;

/// A slice of the periodic check being read beside the loop (see `check`).
struct PendingCheck {
    backends: Vec<String>,
    /// The backends a runtime pass touched since the read began: not planned from it.
    touched: BTreeSet<String>,
    task: tokio::task::JoinHandle<CheckRead>,
    /// The task's result, once the loop saw it end.
    done: Option<CheckRead>,
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
    /// The text HAProxy's config file holds (as far as we know). Shared: at 100,000
    /// servers it is 8.5 MB, and the write beside the loop compares with it.
    deployed: Option<Arc<str>>,
    /// `deployed` passed the check (then a write that changes only some services'
    /// servers need not check the rest again: [`Writer::write_checking`]).
    deployed_checked: bool,
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
    good_text: Option<Arc<str>>,
    /// The runtime-only path's model; `None` until a full apply left HAProxy in sync.
    modelled: Option<Modelled>,
    /// When haproxy.cfg is due to follow what went out by the runtime API.
    write_due_at: Option<Instant>,
    /// The next write is not due before this (see [`FILE_WRITE_BYTES_PER_SEC`]).
    write_paced_until: Option<Instant>,
    /// The write of haproxy.cfg beside the loop, at most one.
    pending_write: Option<PendingWrite>,
    /// The periodic check's slice being read beside the loop, at most one.
    pending_check: Option<PendingCheck>,
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
        let deployed: Option<Arc<str>> = match writer.config_path() {
            Some(p) => tokio::fs::read_to_string(p).await.ok().map(Arc::from),
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
            deployed_checked: false,
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
            write_paced_until: None,
            pending_write: None,
            pending_check: None,
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
            Some(Ok(written)) => applied.written = written,
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
            if m.parts.services.get(name).map(|p| &**p) == Some(part.as_str()) {
                continue;
            }
            let Some((backend, model)) = ConfigModel::parse_backend(&part, &m.defaults) else {
                return Ok(full);
            };
            if m.desired.config.backends.get(&backend).map(|b| &b.lines) != Some(&model.lines) {
                return Ok(full);
            }
            m.desired.config.backends.insert(backend.clone(), model);
            m.parts.services.insert(name.clone(), Arc::from(part));
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
        let only: Vec<String> = only.into_iter().collect();
        let pass = match only.is_empty() {
            false => Some(self.runtime_pass(&m.desired, Some(&only)).await),
            true => None,
        };
        // Then the slice of the periodic check read beside the loop meanwhile, if read.
        let check = self.finish_check(&m.desired).await;
        for pass in [pass, check].into_iter().flatten() {
            applied.runtime_commands += pass.commands;
            if pass.reload.is_some() {
                // What the runtime API cannot do: the full path writes and reloads.
                return Ok(RuntimeOnly::Full {
                    runtime_commands: applied.runtime_commands,
                });
            }
        }
        self.start_check(&m.desired);
        if self.write_due().is_some_and(|t| now >= t) && self.pending_write.is_none() {
            self.start_write(&mut m, desired);
        }
        self.modelled = Some(m);
        Ok(RuntimeOnly::Done(applied))
    }

    /// The periodic check's next backends: whole backends from where the last chunk
    /// ended, about [`VERIFY_CHUNK_SERVERS`] servers in all. The slices of a round are
    /// spread over the round ([`VERIFY_INTERVAL`], longer past 20,000 servers: see
    /// [`VERIFY_SERVERS_PER_SEC`]): the next one is due after the round's share of this
    /// one's servers (at 100,000 servers a 1,000-server slice every 100 ms, rather than
    /// a train of them that kept HAProxy and synapse busy for a quarter of a second
    /// every 2 s); with one slice, the next round is due an interval later.
    fn verify_chunk(&mut self, desired: &Desired) -> Vec<String> {
        let (chunk, more) = next_chunk(desired, self.verify_after.as_deref(), VERIFY_CHUNK_SERVERS);
        let round = VERIFY_INTERVAL.max(Duration::from_secs_f64(
            servers_to_check(desired) as f64 / VERIFY_SERVERS_PER_SEC,
        ));
        self.next_verify_at = Some(Instant::now() + round.mul_f64(chunk_share(desired, &chunk)));
        self.verify_after = chunk.last().filter(|_| more).cloned();
        chunk
    }

    /// Starts writing haproxy.cfg from `m`'s parts beside the loop: the runtime API has
    /// applied them already, so no change waits for the file. Checked when `do_checks`
    /// (the check at the lowest CPU priority); one write at a time, its result taken by
    /// [`Self::finish_write`]. A refused file is not put in place. The loop only copies
    /// the parts' pointers: the task joins them (8.5 MB at 100,000 servers) and compares
    /// the text with the file's.
    fn start_write(&mut self, m: &mut Modelled, desired: &BTreeMap<ServiceName, BackendSet>) {
        self.write_due_at = None;
        let unwritten = std::mem::take(&mut m.unwritten);
        // Only these services' servers differ from the file on disk: when that one
        // passed the check, the check reads the others' sections without their servers.
        let reduce = (self.deployed_checked && self.config.do_checks).then(|| unwritten.clone());
        let sets = unwritten
            .into_iter()
            .map(|name| {
                let set = desired.get(&name).cloned();
                (name, set)
            })
            .collect();
        let (writer, check) = (self.writer.deferred(), self.config.do_checks);
        let (parts, deployed) = (m.parts.clone(), self.deployed.clone());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let prepared = lowered(move || {
                let text: Arc<str> = Arc::from(parts.text());
                if deployed.as_deref() == Some(&*text) {
                    return None;
                }
                let reduced = reduce.and_then(|keep| parts.text_checking_only(&keep));
                Some((text, reduced))
            });
            let Some((text, reduced)) = prepared.await? else {
                return Ok(None);
            };
            let prepared = started.elapsed();
            let written = writer
                .write_checking(&text, check, reduced.as_deref())
                .await;
            tracing::debug!(bytes = text.len(), checked = reduced.as_ref().map_or(text.len(), String::len), prepared = ?prepared, took = ?started.elapsed(), ok = written.is_ok(), "deferred write of haproxy.cfg");
            written.map(|()| Some(text))
        });
        self.pending_write = Some(PendingWrite {
            task,
            done: None,
            sets,
        });
    }

    /// Whether haproxy.cfg is being written, or a check slice read, beside the loop
    /// (see [`Self::background_ended`]).
    pub fn busy(&self) -> bool {
        self.pending_write
            .as_ref()
            .is_some_and(|p| p.done.is_none())
            || self
                .pending_check
                .as_ref()
                .is_some_and(PendingCheck::reading)
    }

    /// Resolves when the write or the check slice beside the loop ends (never while
    /// none runs); the next apply takes the result. Cancel-safe.
    pub async fn background_ended(&mut self) {
        let check = &mut self.pending_check;
        tokio::select! {
            () = write_ended(&mut self.pending_write) => {}
            () = async {
                match check {
                    Some(c) if c.reading() => c.ended().await,
                    _ => std::future::pending().await,
                }
            } => {}
        }
    }

    /// Takes the result of the write beside the loop once it ended (`wait`: waits for
    /// it); `None` while none ended, else whether it wrote. A written file becomes the
    /// deployed and last good one; a failed write is due again (and retried with the
    /// loop's backoff).
    async fn finish_write(&mut self, wait: bool) -> Option<Result<bool, ReloadError>> {
        let p = self.pending_write.as_ref()?;
        if p.done.is_none() {
            if !wait && !p.task.is_finished() {
                return None;
            }
            write_ended(&mut self.pending_write).await;
        }
        let p = self.pending_write.take()?;
        let text = match p.done? {
            Ok(Some(text)) => text,
            // The file holds this text already.
            Ok(None) => return Some(Ok(false)),
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
        self.write_paced_until = Some(
            Instant::now() + Duration::from_secs_f64(text.len() as f64 / FILE_WRITE_BYTES_PER_SEC),
        );
        self.good_text = Some(Arc::clone(&text));
        self.deployed = Some(text);
        self.deployed_checked = self.config.do_checks;
        Some(Ok(true))
    }

    /// When the write beside the loop is due: [`FILE_WRITE_DELAY`] after the first
    /// change it brings, and not before the last write's pace allows.
    fn write_due(&self) -> Option<Instant> {
        let due = self.write_due_at?;
        Some(self.write_paced_until.map_or(due, |p| due.max(p)))
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
            // While a slice is read, its end wakes the loop (`background_ended`).
            self.next_verify_at.filter(|_| self.pending_check.is_none()),
            // While a write runs, its end wakes the loop.
            self.write_due().filter(|_| self.pending_write.is_none()),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
