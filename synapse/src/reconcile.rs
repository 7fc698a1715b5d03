//! The reconcile loop: the only task that touches the outputs.
//!
//! ```text
//! watchers ──(watch channels; any change wakes us)──► debounce (leading edge: the first
//!   change after a quiet period at once; a burst waits for quiet time, max wait)
//!   ──► desired: per changed service, resolve(discovered)   (filters, defaults, LKG, bounds)
//!   ──► each output: haproxy (the changed services: plan → runtime API; the file later;
//!       or render → plan → write → reload), file_output
//! ```
//!
//! A service is re-resolved only when its watch channel says it changed (or its
//! mass-removal guard holds): the others keep their resolved set, uncopied, and the
//! HAProxy output is told which services changed, so one change costs O(its service).
//!
//! Nothing is applied until every service has its first complete set: a synapse that
//! starts while etcd is away leaves the existing haproxy.cfg alone. A failed apply is
//! retried with backoff; a reload deferred by `restart_interval` wakes the loop when due.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::{Backoff, ServiceName};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::applied::AppliedRevisions;
use crate::backends::{BackendSet, Discovered};
use crate::config::{Config, DebounceMode};
use crate::counters::Counters;
use crate::file_output::FileOutput;
use crate::guard::Guards;
use crate::haproxy::HaproxyOutput;
use crate::resolution::{resolve, Resolution};
use common::error::error_chain;

mod state_file;

use state_file::StateFile;
pub use state_file::STATE_FILE_GRACE;

/// Why an apply failed; the loop retries with backoff and keeps the previous state.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("haproxy output")]
    Haproxy(#[from] crate::haproxy::ApplyError),
    #[error("file output")]
    FileOutput(#[from] crate::file_output::FileOutputError),
}

/// A failed apply (a refused check, a full disk, a failed reload) is retried after
/// 0.5–1 s, then 1–2 s (jittered): at most about once a second, so a persistent fault
/// costs little, and within 2 s of the cause going away, which synapse cannot observe.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How long to wait for the first complete set of every service before saying so.
const STARTUP_NOTICE: Duration = Duration::from_secs(5);

/// A service's discovered sets, as its watcher publishes them.
pub type Input = (ServiceName, watch::Receiver<Option<Discovered>>);

/// A new config (re-read on SIGHUP and accepted) and the watchers' channels for it.
#[derive(Debug)]
pub struct ConfigUpdate {
    pub config: Arc<Config>,
    pub inputs: Vec<Input>,
}

/// The reconcile loop's inputs and state.
pub struct Reconciler {
    config: Arc<Config>,
    inputs: Vec<(ServiceName, watch::Receiver<Option<Discovered>>)>,
    changed: Arc<Notify>,
    haproxy: Option<HaproxyOutput>,
    file_output: Option<FileOutput>,
    /// What each service routes to now (after its rules), as last applied.
    current: BTreeMap<ServiceName, BackendSet>,
    /// What each service should route to: kept between passes, re-resolved only for the
    /// services whose discovery changed (or whose guard holds).
    desired: BTreeMap<ServiceName, BackendSet>,
    /// Services re-resolved since the last successful apply.
    dirty: BTreeSet<ServiceName>,
    over_limit: BTreeSet<ServiceName>,
    guards: Guards,
    counters: Arc<Counters>,
    /// When the last change arrived, or the apply it caused ended, whichever is later:
    /// a change within `debounce` of it is part of a burst.
    busy_until: Option<Instant>,
    /// New configs (SIGHUP); `None` when the config never changes.
    updates: Option<mpsc::UnboundedReceiver<ConfigUpdate>>,
    state_file: Option<StateFile>,
    /// Each service's last published set: stands in while a new watcher (discovery
    /// changed on SIGHUP) has not published yet.
    last_discovered: BTreeMap<ServiceName, Discovered>,
    /// Something was applied: from then on a service added on SIGHUP that has not
    /// published yet is left out instead of holding back every other service.
    applied_once: bool,
    /// Where the etcd revisions the outputs run are reported (the drain barrier).
    applied: Option<AppliedRevisions>,
    /// The etcd revision of each service whose desired set is exactly its discovered
    /// set as of that revision (nothing held back), from the last [`Self::desired`].
    revisions: BTreeMap<ServiceName, i64>,
}

impl Reconciler {
    pub fn new(
        config: Arc<Config>,
        inputs: Vec<(ServiceName, watch::Receiver<Option<Discovered>>)>,
        changed: Arc<Notify>,
        haproxy: Option<HaproxyOutput>,
        file_output: Option<FileOutput>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            config,
            inputs,
            changed,
            haproxy,
            file_output,
            current: BTreeMap::new(),
            desired: BTreeMap::new(),
            dirty: BTreeSet::new(),
            over_limit: BTreeSet::new(),
            guards: Guards::default(),
            counters,
            busy_until: None,
            updates: None,
            state_file: None,
            last_discovered: BTreeMap::new(),
            applied_once: false,
            applied: None,
            revisions: BTreeMap::new(),
        }
    }

    /// Keeps the last good backends in `path` (`state_file_path`); `cached` (read from
    /// it at start) routes services whose registry has not answered within
    /// [`STATE_FILE_GRACE`].
    pub fn with_state_file(
        mut self,
        path: std::path::PathBuf,
        ttl: Duration,
        cached: crate::state_file::State,
    ) -> Self {
        self.state_file = Some(StateFile::new(path, ttl, cached));
        self
    }

    /// Takes new configs from `updates` while it runs.
    pub fn with_updates(mut self, updates: mpsc::UnboundedReceiver<ConfigUpdate>) -> Self {
        self.updates = Some(updates);
        self
    }

    /// Switches to a new config: removed services are dropped, the HAProxy output
    /// renders with the new `haproxy` section from the next apply on. Whether that
    /// writes or reloads anything is the usual comparison with what HAProxy runs: an
    /// unchanged render changes nothing.
    fn reconfigure(&mut self, update: ConfigUpdate) {
        let gone: Vec<ServiceName> = self
            .current
            .keys()
            .filter(|n| !update.config.services.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            self.current.remove(&name);
            self.desired.remove(&name);
            self.dirty.remove(&name);
            self.revisions.remove(&name);
            self.over_limit.remove(&name);
            self.last_discovered.remove(&name);
        }
        // A service whose watcher is replaced routes to its last published set until
        // the new watcher publishes (the hot path keeps no copies: taken here, once).
        for (name, rx) in &self.inputs {
            if !update.config.services.contains_key(name) {
                continue;
            }
            if let Some(d) = rx.borrow().as_ref() {
                self.last_discovered.insert(name.clone(), d.clone());
            }
        }
        if let (Some(h), Some(config)) = (&mut self.haproxy, &update.config.haproxy) {
            h.reconfigure(config.clone());
        }
        // Every service is looked at again under the new config (its rules may differ).
        self.desired.clear();
        self.config = update.config;
        self.inputs = update.inputs;
    }

    /// Reports the etcd revisions the outputs run to `applied` after each apply that
    /// left nothing pending.
    pub fn with_applied(mut self, applied: Option<AppliedRevisions>) -> Self {
        self.applied = applied;
        self
    }

    /// Runs until cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        let mut retry_at: Option<Instant> = None;
        let started = Instant::now();
        let mut waiting_noted = false;
        let mut woke_by_change = false;
        loop {
            let ready = self.resolve_changed();
            // Once every service has a set, the start-up notice is moot (and its wake-up
            // time, in the past, would make this loop spin).
            waiting_noted |= ready;
            match ready {
                true if retry_at.is_none_or(|t| Instant::now() >= t) => {
                    let applied = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return,
                        applied = self.apply() => applied,
                    };
                    if woke_by_change {
                        self.busy_until = Some(Instant::now());
                    }
                    match applied {
                        Ok(()) => {
                            backoff.reset();
                            retry_at = None;
                        }
                        Err(e) => {
                            let delay = backoff.next_delay();
                            tracing::error!(error = %error_chain(&e), retry_in = ?delay, "applying the configuration failed; the previous one stays in place");
                            retry_at = Some(Instant::now() + delay);
                        }
                    }
                }
                true => {}
                false if !waiting_noted && started.elapsed() >= STARTUP_NOTICE => {
                    waiting_noted = true;
                    let waiting: Vec<String> = self
                        .inputs
                        .iter()
                        .filter(|(_, rx)| rx.borrow().is_none())
                        .map(|(n, _)| n.to_string())
                        .collect();
                    tracing::warn!(services = ?waiting, "still waiting for the first complete backend set of these services; nothing is written until then");
                }
                false => {}
            }
            // HAProxy's own wake-ups (a deferred reload, the runtime check) wait for a
            // scheduled retry: a failed reload is retried with the backoff.
            let haproxy_wake = self
                .haproxy
                .as_ref()
                .and_then(HaproxyOutput::next_wakeup)
                .map(|t| retry_at.map_or(t, |r| t.max(r)));
            let wake = [
                retry_at,
                haproxy_wake,
                self.guards.next_release(),
                (!waiting_noted).then_some(started + STARTUP_NOTICE),
                self.state_file
                    .as_ref()
                    .and_then(|f| f.wakeup(&self.inputs)),
            ]
            .into_iter()
            .flatten()
            .min();
            woke_by_change = false;
            let busy = self.haproxy.as_ref().is_some_and(HaproxyOutput::busy);
            let (updates, haproxy) = (&mut self.updates, &mut self.haproxy);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                update = async { updates.as_mut()?.recv().await }, if updates.is_some() => {
                    match update {
                        Some(update) => {
                            self.reconfigure(update);
                            // Applied at once (a SIGHUP is not part of a burst).
                            woke_by_change = true;
                            retry_at = None;
                        }
                        None => self.updates = None,
                    }
                }
                _ = self.changed.notified() => {
                    woke_by_change = true;
                    if !self.debounce(&cancel).await {
                        return;
                    }
                }
                _ = sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {}
                // haproxy.cfg, written beside the loop, is in place (or refused), or a
                // slice of the periodic check is read: the next apply takes the result.
                _ = async {
                    if let Some(h) = haproxy.as_mut() {
                        h.background_ended().await;
                    }
                }, if busy => {}
            }
        }
    }

    /// Called on a change. Leading edge (the default): a change after a quiet period
    /// (nothing arrived and nothing was applied for `debounce`) returns at once. Else
    /// (a burst, or `debounce_mode: trailing`): waits for `debounce` of quiet, at most
    /// `debounce_max_wait` in all. False when cancelled.
    async fn debounce(&mut self, cancel: &CancellationToken) -> bool {
        let now = Instant::now();
        let quiet = self
            .busy_until
            .is_none_or(|t| now.saturating_duration_since(t) >= self.config.debounce);
        self.busy_until = Some(now);
        if quiet && self.config.debounce_mode == DebounceMode::Leading {
            return true;
        }
        tracing::debug!(debounce = ?self.config.debounce, "a burst of changes: waiting for quiet");
        let deadline = now + self.config.debounce_max_wait;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return false,
                _ = sleep_until(deadline) => return true,
                _ = sleep(self.config.debounce) => return true,
                _ = self.changed.notified() => self.busy_until = Some(Instant::now()),
            }
        }
    }

    /// Brings `desired` up to date: re-resolves each service whose watch channel
    /// changed, whose guard holds (its release is due in time), or that has no set yet,
    /// and marks it dirty. False while some service has not published its first
    /// complete set.
    fn resolve_changed(&mut self) -> bool {
        // Changes received so far are in what is read next (for the propagation delay).
        self.counters.services.begin();
        let now = Instant::now();
        // Until something was applied, every service needs a set: published, its last
        // one (a new watcher after SIGHUP), or the state file's once its grace is over.
        if !self.applied_once {
            let waiting = self.inputs.iter().any(|(name, rx)| {
                rx.borrow().is_none()
                    && !self.last_discovered.contains_key(name)
                    && !self
                        .state_file
                        .as_ref()
                        .is_some_and(|f| now >= f.use_after && f.cached.contains_key(name))
            });
            if waiting {
                return false;
            }
        }
        for (name, rx) in &mut self.inputs {
            let due = !self.desired.contains_key(name)
                || self.guards.held_until(name).is_some()
                || rx.has_changed().unwrap_or(false);
            if !due {
                continue;
            }
            let Some(svc) = self.config.services.get(name) else {
                continue;
            };
            let published = rx.borrow_and_update();
            let fallback;
            let d: &Discovered = match published.as_ref() {
                Some(d) => {
                    self.last_discovered.remove(name);
                    if let Some(f) = &mut self.state_file {
                        if d.fresh {
                            f.registry.insert(name.clone(), d.backends.clone());
                        }
                        if f.cached.remove(name).is_some() {
                            tracing::info!(service = %name, "the registry answered: routing from it, not from the state file");
                        }
                    }
                    d
                }
                // A new watcher for a known service (SIGHUP): its last set meanwhile.
                None => match self.last_discovered.get(name) {
                    Some(last) => last,
                    None => match self
                        .state_file
                        .as_ref()
                        .filter(|f| now >= f.use_after)
                        .and_then(|f| f.cached.get(name))
                    {
                        Some(cached) => {
                            fallback = Discovered {
                                backends: cached.backends.clone(),
                                fresh: false,
                                origin: Default::default(),
                                revision: None,
                            };
                            &fallback
                        }
                        // Added on SIGHUP: rendered without servers until it publishes.
                        None => continue,
                    },
                },
            };
            let previous = self.current.get(name);
            let has_previous = previous.is_some_and(|p| !p.is_empty());
            let resolution = resolve(svc, &d.backends, has_previous);
            // A set held back (previous backends, `max_servers`, the guard) is not what
            // discovery found at its revision.
            let mut held_back = !matches!(resolution, Resolution::Use(_));
            let set = match resolution {
                Resolution::Use(set) => {
                    if self.over_limit.remove(name) {
                        tracing::info!(service = %name, servers = set.len(), "back under max_servers");
                    }
                    self.guards
                        .check(name, &svc.mass_removal_guard, previous, set, &self.counters)
                }
                Resolution::KeepPrevious => {
                    tracing::debug!(service = %name, "discovery is empty: keeping the previous backends (use_previous_backends)");
                    previous.cloned().unwrap_or_default()
                }
                Resolution::OverLimit { count } => {
                    if self.over_limit.insert(name.clone()) {
                        Counters::inc(&self.counters.over_limit);
                        self.counters.reject("over_limit");
                        tracing::error!(
                            service = %name,
                            servers = count,
                            max_servers = svc.max_servers,
                            "discovery returned more servers than max_servers: keeping the last known set"
                        );
                    }
                    previous.cloned().unwrap_or_default()
                }
            };
            let over_limit = self.over_limit.contains(name);
            held_back |= self.guards.held_until(name).is_some();
            // A stand-in set (a replaced watcher's last, the state file's) is not what
            // this service's discovery found at any revision.
            match (d.revision, held_back || published.is_none()) {
                (Some(revision), false) => {
                    self.revisions.insert(name.clone(), revision);
                }
                _ => {
                    self.revisions.remove(name);
                }
            }
            self.counters.services.resolved(svc, d, &set, over_limit);
            self.counters.services.guard(
                name,
                svc.mass_removal_guard.enabled,
                self.guards.held_until(name),
            );
            self.desired.insert(name.clone(), set);
            self.dirty.insert(name.clone());
        }
        true
    }

    /// Applies the desired state to every output, then logs one line per changed service.
    async fn apply(&mut self) -> Result<(), ReconcileError> {
        let desired = &self.desired;
        let mut reload = "no";
        let mut haproxy_applied = None;
        if let Some(h) = &mut self.haproxy {
            let applied = h.apply(&self.config.services, desired, &self.dirty).await?;
            haproxy_applied = Some(applied);
            if applied.reloaded {
                reload = "done";
            } else if applied.reload_pending {
                reload = "deferred";
            } else if applied.runtime_commands > 0 {
                reload = "no (runtime API)";
            }
        }
        if let Some(f) = &mut self.file_output {
            f.apply(&self.config.services, desired).await?;
        }
        let empty = BackendSet::new();
        let changed: Vec<(&ServiceName, &BackendSet)> = self
            .dirty
            .iter()
            .filter_map(|name| Some((name, desired.get(name)?)))
            .collect();
        for &(name, set) in &changed {
            let before = self.current.get(name).unwrap_or(&empty);
            if before == set && self.current.contains_key(name) {
                continue;
            }
            let names = |s: &BackendSet| -> BTreeSet<String> {
                s.iter().map(|b| b.server_name()).collect()
            };
            let (old, new) = (names(before), names(set));
            let added: Vec<&String> = new.difference(&old).collect();
            let removed: Vec<&String> = old.difference(&new).collect();
            tracing::info!(
                service = %name,
                servers = set.len(),
                added = ?added,
                removed = ?removed,
                reload,
                "backends changed"
            );
        }
        self.counters
            .services
            .applied(changed.iter().copied(), haproxy_applied.as_ref());
        for name in std::mem::take(&mut self.dirty) {
            if let Some(set) = self.desired.get(&name) {
                self.current.insert(name, set.clone());
            }
        }
        self.applied_once = true;
        if let Some(f) = &mut self.state_file {
            f.save(self.config.services.keys(), &self.counters).await;
        }
        // The one point where an apply has succeeded. A deferred reload means HAProxy
        // does not run it yet (the wake-up that reloads applies again and reports); after
        // an unconfirmed reload the old worker may still route by the old config, so the
        // revision waits for the next apply that finds HAProxy as it should be (with the
        // runtime API, its check half a second later).
        if let Some(applied) = &self.applied {
            let pending = haproxy_applied.is_some_and(|a| a.reload_pending);
            if !pending && self.haproxy.as_ref().is_none_or(HaproxyOutput::confirmed) {
                applied.record(&self.revisions);
            }
        }
        Ok(())
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

#[cfg(test)]
mod tests;
