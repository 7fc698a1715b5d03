//! nerve: health-checks the services on this host and keeps a leased registration in
//! etcd for each healthy one, in the SmartStack style.
//!
//! ```text
//!  config ──► supervisor ── one task per service ──► checks ─► rise/fall ─► ServiceState
//!                 │  (SIGHUP: diff, make-before-break)                          │
//!                 └──────── desired set (watch) ◄───────────────────────────────┘
//!                                 │
//!                           reporter::drive ── EtcdReporter: one lease, put/delete,
//!                                               keep-alive ≈ TTL/3, read-back, revoke
//! ```
//!
//! [`Nerve::run`] (or [`run`]) is what the binary and the integration tests call.

pub mod check;
pub mod cli;
pub mod config;
pub mod drain;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod metrics;
pub mod rate_limit;
pub mod reporter;
pub mod service;
pub mod status;
pub mod status_table;
pub mod supervisor;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::admin::AdminState;
use common::Backoff;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub use config::Config;
pub(crate) use error::error_chain;
pub use status::Status;

/// Why nerve stopped other than by being asked to. Registry trouble is never among them
/// (nerve retries etcd for ever), nor an admin address it cannot bind (it runs without
/// the endpoint).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the reporter task stopped unexpectedly")]
    ReporterStopped(#[source] tokio::task::JoinError),
}

/// Sends a new config to a running nerve (what SIGHUP does).
#[derive(Debug, Clone)]
pub struct Reloader(mpsc::UnboundedSender<Config>);

impl Reloader {
    /// Queues `config`; false if nerve has stopped.
    pub fn reload(&self, config: Config) -> bool {
        self.0.send(config).is_ok()
    }
}

/// A nerve, ready to run.
pub struct Nerve {
    config: Config,
    reload_tx: mpsc::UnboundedSender<Config>,
    reload_rx: mpsc::UnboundedReceiver<Config>,
    status: status::StatusHandle,
    metrics: metrics::Metrics,
    registry: Registry,
    ready: Arc<AtomicBool>,
}

impl Nerve {
    pub fn new(config: Config) -> Self {
        let (reload_tx, reload_rx) = mpsc::unbounded_channel();
        let (metrics, registry) = metrics::Metrics::new();
        let ready = Arc::new(AtomicBool::new(false));
        let status = status::StatusHandle::new(config.instance_id.to_string(), ready.clone());
        Self {
            config,
            reload_tx,
            reload_rx,
            status,
            metrics,
            registry,
            ready,
        }
    }

    /// A handle to reload the config of the running nerve.
    pub fn reloader(&self) -> Reloader {
        Reloader(self.reload_tx.clone())
    }

    /// True while nerve holds a live lease and its last etcd request succeeded: what
    /// `/readyz` answers from (and systemd's `READY=1`, the first time).
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// What nerve believes, updated as it changes.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Runs until `cancel` fires; then deregisters (bounded by `shutdown_timeout`).
    pub async fn run(self, cancel: CancellationToken) -> Result<(), RunError> {
        let Self {
            config,
            reload_tx,
            reload_rx,
            status,
            metrics,
            registry,
            ready,
        } = self;
        drop(reload_tx);
        let mut config = config;
        let zone = own_zone(&config).await;
        if let Some(zone) = &zone {
            config.label_zone(zone);
        }
        let reload_rx = label_reloads(reload_rx, zone);
        info!(instance = %config.instance_id, services = config.services.len(),
            endpoints = ?config.etcd.endpoints, lease_ttl = ?config.lease_ttl, "nerve starting");

        let drain_handle = drain::DrainHandle::new(
            status.clone(),
            config.etcd.clone(),
            config.applied_status_prefix.clone(),
        );
        if let Some(addr) = config.admin_listen {
            let snapshot = status.clone();
            let state = AdminState {
                registry: Arc::new(Mutex::new(registry)),
                status: Arc::new(move || {
                    serde_json::to_value(snapshot.snapshot()).unwrap_or_default()
                }),
                ready,
                detail: None,
                routes: Some(drain::routes(drain_handle.clone())),
            };
            common::admin::serve_or_warn(addr, state, cancel.child_token()).await;
        }

        let (desired_tx, desired_rx) = watch::channel(reporter::Desired::new());
        let backoff = Backoff::new(
            Duration::from_millis(100),
            (config.lease_ttl / 3).clamp(Duration::from_millis(200), Duration::from_secs(10)),
        );
        // Not a child of `cancel`: at shutdown the reporters deregister only after the
        // supervisor has stopped, so that what they delete is known (the drain barrier).
        let reporter_cancel = CancellationToken::new();
        let mut reporters = tokio::task::JoinSet::new();
        // etcd: one lease for every service that reports there.
        let etcd_in_use = config.services.values().any(|s| s.targets.etcd);
        status.set_etcd_in_use(etcd_in_use);
        if etcd_in_use {
            let reporter = reporter::EtcdReporter::new(
                reporter::EtcdReporterConfig {
                    settings: config.etcd.clone(),
                    instance_id: config.instance_id.clone(),
                    lease_ttl: config.lease_ttl,
                    reconcile_interval: config.reconcile_interval,
                },
                status.clone(),
                metrics.clone(),
            );
            let share = reporter::select(desired_rx.clone(), |e| e.targets.etcd.then(|| e.clone()));
            reporters.spawn(reporter::drive(
                reporter,
                share,
                reporter_cancel.clone(),
                config.shutdown_timeout,
                backoff.clone(),
            ));
        }
        // ZooKeeper: one session per ensemble (issue 20).
        let ensembles: std::collections::BTreeSet<Vec<String>> = config
            .services
            .values()
            .filter_map(|s| s.targets.zookeeper.as_ref().map(|z| z.hosts.clone()))
            .collect();
        for hosts in ensembles {
            let settings = common::zookeeper::ZkSettings {
                hosts: hosts.clone(),
                session_timeout: config.lease_ttl,
            };
            info!(zk = %settings.connect_string(), session_timeout = ?config.lease_ttl,
                "reporting to ZooKeeper");
            let reporter = reporter::ZkReporter::new(
                reporter::ZkReporterConfig {
                    settings,
                    instance_id: config.instance_id.clone(),
                    reconcile_interval: config.reconcile_interval,
                },
                status.clone(),
                metrics.clone(),
            );
            let share = reporter::select(desired_rx.clone(), move |e| {
                let zk = e.targets.zookeeper.as_ref().filter(|z| z.hosts == hosts)?;
                Some(reporter::Entry {
                    path: zk.path.clone(),
                    ..e.clone()
                })
            });
            reporters.spawn(reporter::drive(
                reporter,
                share,
                reporter_cancel.clone(),
                config.shutdown_timeout,
                backoff.clone(),
            ));
        }
        drop(desired_rx);

        let shutdown_timeout = config.shutdown_timeout;
        let paths: BTreeMap<String, String> = config
            .services
            .iter()
            .map(|(name, s)| (name.to_string(), s.path.to_string()))
            .collect();
        let supervisor = supervisor::Supervisor::new(
            config,
            desired_tx,
            status.clone(),
            metrics,
            cancel.child_token(),
        )
        .with_drains(drain_handle.subscribe());
        let supervised = supervisor.run(reload_rx);
        tokio::pin!(supervised);
        // When the shutdown began, and what the registry held then: the deregistrations
        // the shutdown makes are the deletions after it (the drain barrier waits for them).
        let mut shutdown_began = None;
        let result = loop {
            tokio::select! {
                biased;
                () = cancel.cancelled(), if shutdown_began.is_none() => {
                    shutdown_began = Some((tokio::time::Instant::now(), status.snapshot().registry));
                }
                () = &mut supervised => break Ok(()),
                Some(joined) = reporters.join_next() => match joined {
                    // A reporter only returns once cancelled or once its share closed.
                    Ok(()) => continue,
                    Err(e) => break Err(e),
                },
            }
        };
        match result {
            Ok(()) => {
                let (stopping, before) = shutdown_began
                    .unwrap_or_else(|| (tokio::time::Instant::now(), status.snapshot().registry));
                reporter_cancel.cancel();
                while let Some(joined) = reporters.join_next().await {
                    if let Err(e) = joined {
                        return Err(RunError::ReporterStopped(e));
                    }
                }
                // What the lease revoke deleted: wait (within shutdown_timeout from the
                // signal) until every synapse has applied it.
                let after = status.snapshot().registry;
                let revoked: BTreeMap<String, (String, i64)> = before
                    .keys
                    .values()
                    .filter_map(|service| {
                        let revision = *after.deletions.get(service)?;
                        (before.deletions.get(service) != Some(&revision)).then(|| {
                            let path = paths.get(service).cloned().unwrap_or_default();
                            (service.clone(), (path, revision))
                        })
                    })
                    .collect();
                if !revoked.is_empty() {
                    drain_handle
                        .barrier_on_shutdown(&revoked, stopping + shutdown_timeout)
                        .await;
                }
                info!("nerve stopped");
                Ok(())
            }
            Err(e) => {
                cancel.cancel();
                reporter_cancel.cancel();
                error!(error = %e, "reporter task failed");
                Err(RunError::ReporterStopped(e))
            }
        }
    }
}

/// The environment variable that gives nerve its zone when the config's `zone` does not.
pub const ZONE_ENV: &str = "NERVE_ZONE";

/// This host's zone (config `zone`, else `NERVE_ZONE`, else IMDS with `zone_from_imds`),
/// found once at start-up. Not found where the config said to look: an error in the log
/// and no `zone` label; registering without a zone beats not registering.
async fn own_zone(config: &Config) -> Option<String> {
    let mut source = config.zone.clone();
    source.env = std::env::var(ZONE_ENV).ok();
    match common::zone::find(&source, ZONE_ENV).await {
        Ok(Some((zone, origin))) => {
            info!(zone = %zone, origin = ?origin, "registering with the zone label");
            Some(zone)
        }
        Ok(None) => None,
        Err(e) => {
            error!(error = %e, "cannot find this host's zone: registering without a zone label");
            None
        }
    }
}

/// Reloaded configs, with the zone label found at start-up (the zone of a host does not
/// change under a running nerve).
fn label_reloads(
    mut rx: mpsc::UnboundedReceiver<Config>,
    zone: Option<String>,
) -> mpsc::UnboundedReceiver<Config> {
    let Some(zone) = zone else {
        return rx;
    };
    let (tx, labelled) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(mut config) = rx.recv().await {
            config.label_zone(&zone);
            if tx.send(config).is_err() {
                return;
            }
        }
    });
    labelled
}

/// Runs nerve with `config` until `cancel` fires.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), RunError> {
    Nerve::new(config).run(cancel).await
}

/// On each SIGHUP, re-reads `path` and hands the config to `reloader`; an invalid file is
/// logged and the running config kept. Must be called inside a Tokio runtime, before
/// the first SIGHUP can arrive (SIGHUP's default action ends the process).
pub fn reload_on_sighup(
    path: PathBuf,
    overrides: config::Overrides,
    reloader: Reloader,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!(path = %path.display(), "SIGHUP: reloading the config");
            let (p, o) = (path.clone(), overrides.clone());
            match tokio::task::spawn_blocking(move || config::load(&p, &o)).await {
                Ok(Ok(config)) => {
                    for w in &config.warnings {
                        tracing::warn!(key = %w.path, "config: {}", w.message);
                    }
                    if !reloader.reload(config) {
                        return;
                    }
                }
                Ok(Err(errors)) => {
                    error!(path = %path.display(), errors = %errors.to_string().replace('\n', "; "),
                        "config reload rejected; keeping the running config");
                }
                Err(e) => error!(error = %e, "config reload failed"),
            }
        }
    }))
}
