//! The supervisor owns the table of services: it starts one task per service, turns
//! their states into the desired set the reporter reconciles, applies SIGHUP reloads,
//! and touches the heartbeat file.
//!
//! A reload diffs the old and new service configs:
//! - an unchanged service is not touched (same task, no etcd write);
//! - a removed service's task stops and its registration is deleted;
//! - an added service starts down and registers after `rise` successes;
//! - a changed service is replaced **make-before-break**: the new task runs beside the
//!   old one, whose registration stays, until the new one's health is settled (up, or
//!   down after `fall` failures) or [`REPLACE_TIMEOUT`] passes; then it takes over in a
//!   single registry update (SmartStack nerve waits the same 30 s).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use common::ServiceName;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::check::AnyCheck;
use crate::config::{Config, ServiceConfig};
use crate::metrics::Metrics;
use crate::reporter::{Desired, Entry};
use crate::service::{ServiceState, ServiceTask, ServiceUpdate};
use crate::status::{ServiceStatus, StatusHandle};

/// How long a replacement may take to settle before it takes over anyway.
pub const REPLACE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the heartbeat file is touched and replacement deadlines are checked.
const TICK: Duration = Duration::from_secs(1);

/// One running task for a service.
struct Generation {
    config: ServiceConfig,
    generation: u64,
    cancel: CancellationToken,
    state: Option<ServiceState>,
}

struct Slot {
    active: Generation,
    /// A replacement being health-checked (SIGHUP), and when it takes over regardless.
    pending: Option<(Generation, Instant)>,
}

pub struct Supervisor {
    config: Config,
    slots: BTreeMap<ServiceName, Slot>,
    tasks: JoinSet<()>,
    task_ids: HashMap<tokio::task::Id, (ServiceName, u64)>,
    next_generation: u64,
    updates_tx: mpsc::UnboundedSender<ServiceUpdate>,
    updates_rx: mpsc::UnboundedReceiver<ServiceUpdate>,
    desired: watch::Sender<Desired>,
    maintenance: watch::Sender<Option<PathBuf>>,
    heartbeat_failing: bool,
    status: StatusHandle,
    metrics: Metrics,
    /// Parent of every service task's token.
    cancel: CancellationToken,
    /// Services an operator drained (`nerve drain`): never registered while listed.
    drained: watch::Receiver<BTreeSet<ServiceName>>,
}

impl Supervisor {
    pub fn new(
        config: Config,
        desired: watch::Sender<Desired>,
        status: StatusHandle,
        metrics: Metrics,
        cancel: CancellationToken,
    ) -> Self {
        let (updates_tx, updates_rx) = mpsc::unbounded_channel();
        let (maintenance, _) = watch::channel(config.maintenance_file.clone());
        Self {
            config,
            slots: BTreeMap::new(),
            tasks: JoinSet::new(),
            task_ids: HashMap::new(),
            next_generation: 0,
            updates_tx,
            updates_rx,
            desired,
            maintenance,
            heartbeat_failing: false,
            status,
            metrics,
            cancel,
            drained: watch::channel(BTreeSet::new()).1,
        }
    }

    /// Keeps the services in `drained` deregistered while they are listed there.
    pub fn with_drains(mut self, drained: watch::Receiver<BTreeSet<ServiceName>>) -> Self {
        self.drained = drained;
        self
    }

    /// Runs until `cancel` fires, applying configs from `reloads`; then stops every
    /// service task.
    pub async fn run(mut self, mut reloads: mpsc::UnboundedReceiver<Config>) {
        let services: Vec<ServiceConfig> = self.config.services.values().cloned().collect();
        for service in services {
            let active = self.spawn(service.clone());
            self.slots.insert(
                service.name,
                Slot {
                    active,
                    pending: None,
                },
            );
        }
        self.publish();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let cancel = self.cancel.clone();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(update) = self.updates_rx.recv() => self.on_update(update),
                Some(config) = reloads.recv() => self.reload(config),
                Some(joined) = self.tasks.join_next_with_id() => self.on_task_exit(joined),
                Ok(()) = self.drained.changed() => self.publish(),
                _ = tick.tick() => self.on_tick().await,
            }
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    fn spawn(&mut self, config: ServiceConfig) -> Generation {
        self.next_generation += 1;
        let generation = self.next_generation;
        let cancel = self.cancel.child_token();
        let checks: Vec<AnyCheck> = config.checks.iter().map(AnyCheck::new).collect();
        for check in &checks {
            if let AnyCheck::Broken { name, reason } = check {
                error!(service = %config.name, check = %name, reason = %reason,
                    "check cannot run; the service stays down");
            }
        }
        let task = ServiceTask {
            config: config.clone(),
            generation,
            global_maintenance: self.maintenance.subscribe(),
            updates: self.updates_tx.clone(),
            metrics: self.metrics.clone(),
        };
        let handle = self.tasks.spawn(task.run(checks, cancel.clone()));
        self.task_ids
            .insert(handle.id(), (config.name.clone(), generation));
        Generation {
            config,
            generation,
            cancel,
            state: None,
        }
    }

    fn on_update(&mut self, update: ServiceUpdate) {
        let Some(slot) = self.slots.get_mut(&update.service) else {
            return;
        };
        if slot.active.generation == update.generation {
            slot.active.state = Some(update.state);
        } else if let Some((pending, _)) = slot
            .pending
            .as_mut()
            .filter(|(p, _)| p.generation == update.generation)
        {
            let settled = update.state.settled;
            pending.state = Some(update.state);
            if settled {
                self.promote(&update.service, "its health is settled");
            }
        }
        self.publish();
    }

    /// The replacement of `name` takes over from the running task.
    fn promote(&mut self, name: &ServiceName, why: &str) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        let Some((pending, _)) = slot.pending.take() else {
            return;
        };
        let old = std::mem::replace(&mut slot.active, pending);
        old.cancel.cancel();
        info!(service = %name, instance = %self.config.instance_id,
            healthy = slot.active.state.as_ref().is_some_and(|s| s.healthy),
            "new service config takes over ({why})");
    }

    fn reload(&mut self, new: Config) {
        if new.instance_id != self.config.instance_id {
            error!(running = %self.config.instance_id, new = %new.instance_id,
                "config reload rejected: instance_id cannot change while nerve runs; restart it");
            return;
        }
        let restart_only = [
            ("etcd", new.etcd != self.config.etcd),
            ("lease_ttl", new.lease_ttl != self.config.lease_ttl),
            (
                "reconcile_interval",
                new.reconcile_interval != self.config.reconcile_interval,
            ),
            (
                "shutdown_timeout",
                new.shutdown_timeout != self.config.shutdown_timeout,
            ),
            ("admin_listen", new.admin_listen != self.config.admin_listen),
            // The reporters (etcd, one per ZooKeeper ensemble) start with nerve.
            (
                "reporter_type/zk_hosts",
                registries(&new) != registries(&self.config),
            ),
        ];
        for (key, changed) in restart_only {
            if changed {
                warn!(
                    key,
                    "changed in the config; it takes effect when nerve restarts"
                );
            }
        }
        self.config.heartbeat_path = new.heartbeat_path.clone();
        self.config.maintenance_file = new.maintenance_file.clone();
        self.maintenance
            .send_if_modified(|m| replace_if_changed(m, new.maintenance_file.clone()));

        let (mut added, mut changed, mut removed, mut unchanged) = (0, 0, 0, 0);
        let gone: Vec<ServiceName> = self
            .slots
            .keys()
            .filter(|name| !new.services.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(slot) = self.slots.remove(&name) {
                slot.active.cancel.cancel();
                if let Some((pending, _)) = slot.pending {
                    pending.cancel.cancel();
                }
                info!(service = %name, instance = %new.instance_id, "service removed from the config");
                removed += 1;
            }
        }
        for (name, service) in &new.services {
            let current = self.slots.get(name).map(|slot| {
                slot.pending
                    .as_ref()
                    .map_or(&slot.active.config, |(p, _)| &p.config)
            });
            match current {
                None => {
                    let active = self.spawn(service.clone());
                    self.slots.insert(
                        name.clone(),
                        Slot {
                            active,
                            pending: None,
                        },
                    );
                    info!(service = %name, instance = %new.instance_id, "service added to the config");
                    added += 1;
                }
                Some(current) if current == service => unchanged += 1,
                Some(_) => {
                    let replacement = self.spawn(service.clone());
                    if let Some(slot) = self.slots.get_mut(name) {
                        if let Some((old, _)) = slot.pending.take() {
                            old.cancel.cancel();
                        }
                        slot.pending = Some((replacement, Instant::now() + REPLACE_TIMEOUT));
                    }
                    info!(service = %name, instance = %new.instance_id,
                        "service config changed; checking the new config before it takes over");
                    changed += 1;
                }
            }
        }
        self.config.services = new.services;
        info!(added, changed, removed, unchanged, "config reloaded");
        self.publish();
    }

    fn on_task_exit(&mut self, joined: Result<(tokio::task::Id, ()), JoinError>) {
        let id = match &joined {
            Ok((id, ())) => *id,
            Err(e) => e.id(),
        };
        let Some((name, generation)) = self.task_ids.remove(&id) else {
            return;
        };
        let Err(e) = joined else {
            return;
        };
        if e.is_cancelled() {
            return;
        }
        // A panic is a bug; keep the service checked by starting it again, as a
        // replacement so its registration stays until the new task has settled.
        let Some(slot) = self.slots.get(&name) else {
            return;
        };
        let is_active = slot.active.generation == generation;
        let is_pending = slot
            .pending
            .as_ref()
            .is_some_and(|(p, _)| p.generation == generation);
        if !(is_active || is_pending) {
            return;
        }
        error!(service = %name, error = %e, "service task crashed; restarting it");
        let config = slot.active.config.clone();
        let config = slot
            .pending
            .as_ref()
            .map_or(config, |(p, _)| p.config.clone());
        let replacement = self.spawn(config);
        if let Some(slot) = self.slots.get_mut(&name) {
            slot.pending = Some((replacement, Instant::now() + REPLACE_TIMEOUT));
        }
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        let overdue: Vec<ServiceName> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.pending.as_ref().is_some_and(|(_, t)| *t <= now))
            .map(|(name, _)| name.clone())
            .collect();
        if !overdue.is_empty() {
            for name in overdue {
                self.promote(&name, "it did not settle within 30 s");
            }
            self.publish();
        }
        self.touch_heartbeat().await;
    }

    async fn touch_heartbeat(&mut self) {
        let Some(path) = self.config.heartbeat_path.clone() else {
            return;
        };
        let touched = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            file.set_modified(std::time::SystemTime::now())
        })
        .await;
        match touched {
            Ok(Ok(())) => {
                if self.heartbeat_failing {
                    info!("heartbeat file writable again");
                }
                self.heartbeat_failing = false;
            }
            Ok(Err(e)) => {
                if !self.heartbeat_failing {
                    warn!(path = ?self.config.heartbeat_path, error = %e,
                        "cannot touch the heartbeat file");
                }
                self.heartbeat_failing = true;
            }
            Err(e) => warn!(error = %e, "heartbeat task failed"),
        }
    }

    /// Sends the desired set (if it changed) and the services' status.
    fn publish(&self) {
        let drained = self.drained.borrow().clone();
        let desired: Desired = self
            .slots
            .iter()
            .filter(|(name, _)| !drained.contains(*name))
            .filter(|(_, slot)| slot.active.state.as_ref().is_some_and(|s| s.reported))
            .map(|(name, slot)| {
                (
                    name.clone(),
                    Entry {
                        path: slot.active.config.path.clone(),
                        registration: slot.active.config.registration.clone(),
                        targets: slot.active.config.targets.clone(),
                    },
                )
            })
            .collect();
        let services: BTreeMap<String, ServiceStatus> = self
            .slots
            .iter()
            .map(|(name, slot)| {
                let state = slot.active.state.clone();
                let by_operator = drained.contains(name);
                (
                    name.to_string(),
                    ServiceStatus {
                        healthy: state.as_ref().is_some_and(|s| s.healthy),
                        drained: by_operator || state.as_ref().is_some_and(|s| s.drained),
                        drained_by_operator: by_operator,
                        reported: !by_operator && state.as_ref().is_some_and(|s| s.reported),
                        etcd_path: slot.active.config.path.to_string(),
                        replacing: slot.pending.is_some(),
                        last_check: state.as_ref().and_then(|s| s.last_check.clone()),
                    },
                )
            })
            .collect();
        // Status first, so that it never lags behind what the reporter writes.
        self.status.update_services(|s| *s = services);
        self.desired
            .send_if_modified(|d| replace_if_changed(d, desired));
    }
}

fn replace_if_changed<T: PartialEq>(slot: &mut T, new: T) -> bool {
    if *slot == new {
        false
    } else {
        *slot = new;
        true
    }
}

/// The registries a config reports to: etcd (if any service does) and each ZooKeeper
/// ensemble. A reporter exists per registry from the start, so a change needs a restart.
fn registries(config: &Config) -> (bool, std::collections::BTreeSet<Vec<String>>) {
    let etcd = config.services.values().any(|s| s.targets.etcd);
    let zk = config
        .services
        .values()
        .filter_map(|s| s.targets.zookeeper.as_ref().map(|z| z.hosts.clone()))
        .collect();
    (etcd, zk)
}

#[cfg(test)]
mod tests;
