//! synapse: watches etcd (or static lists) for the instances of each service and keeps a
//! local HAProxy routing to exactly the healthy ones (Airbnb SmartStack's synapse, with
//! etcd v3 as the registry).
//!
//! # Layout
//!
//! - [`config`]: the airbnb synapse JSON format (with comments), validated into `Config`.
//! - [`config_reload`]: what a config re-read on SIGHUP changes, and what it may not.
//! - [`watcher`]: one watcher per service (etcd list-then-watch, EC2 tags, static, multi)
//!   publishing complete backend sets.
//! - [`ec2`]: the EC2 API client behind the `ec2tag` watcher.
//! - [`applied`]: publishes the etcd revision the outputs run, per watched path (the
//!   drain barrier's other half).
//! - [`backends`]: `Backend`/`BackendSet` and the per-service rules (filters, defaults,
//!   last-known-good, bounds).
//! - [`guard`]: the mass-removal guard (holds the last good set when most servers
//!   vanish at once).
//! - [`reconcile`]: the single loop that debounces changes and applies them.
//! - [`haproxy`]: pure rendering of haproxy.cfg and the runtime-API plan; runtime
//!   commands, atomic write, check, confirmed reloads; optionally HAProxy itself
//!   (managed mode).
//! - [`file_output`]: one JSON file per service.
//! - [`state_file`]: the last good backends on disk, for a cold start without the registry.
//! - [`dry_run`]: `synapse diff`: what a run would do, doing none of it.
//! - [`counters`]: what synapse has done, for operators and tests; and what it believes
//!   per service (servers, source, staleness, last apply, etcd watch) and the
//!   propagation delay ([`counters::services`]).
//! - [`status`]: the `/status` document built from that; `/readyz`.
//! - [`metrics`]: the Prometheus registry over [`Counters`], served on `admin_listen`'s
//!   `/metrics`.
//! - [`service_detail`]: `/status/<service>`, the registry beside HAProxy's runtime state.
//! - [`status_table`]: the tables `synapse status` prints.

pub mod applied;
pub mod backends;
pub mod cli;
pub mod config;
pub mod config_reload;
pub mod counters;
pub mod dry_run;
pub mod ec2;
pub mod failpoint;
pub mod file_output;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod haproxy;
pub mod hash;
pub mod metrics;
pub mod reconcile;
pub mod resolution;
pub mod service_detail;
pub mod state_file;
pub mod status;
pub mod status_table;
pub mod watcher;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::config::ConfigErrors;
use common::ServiceName;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use counters::Counters;

use crate::file_output::{FileOutput, FileOutputError};
use crate::haproxy::HaproxyOutput;
use crate::reconcile::{ConfigUpdate, Reconciler};
use crate::watcher::{AnyWatcher, EtcdClients, Watcher, ZkClients};

/// Errors that stop synapse. Everything at runtime (etcd away, a failed reload) is
/// retried instead; only outputs that cannot be set up at all end the process (an admin
/// address that cannot be bound does not: synapse runs without the endpoint).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot set up file_output")]
    FileOutput(#[from] FileOutputError),
}

/// Runs synapse until `cancel` fires.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), RunError> {
    run_with(config, Arc::default(), cancel).await
}

/// [`run`], counting into `counters` (which the caller may read meanwhile).
pub async fn run_with(
    config: Config,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) -> Result<(), RunError> {
    run_inner(config, None, counters, cancel).await
}

/// [`run_with`], re-reading `path` (which `config` was loaded from) on every SIGHUP:
/// services are added, removed or changed with the validation of start-up; a file
/// that is invalid, or changes a key only a restart can change, is refused with the
/// running config kept (an error log line, `/status`'s `config`, the
/// `synapse_config_reloads_total{result="refused"}` counter).
pub async fn run_reloading(
    config: Config,
    path: PathBuf,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) -> Result<(), RunError> {
    run_inner(config, Some(path), counters, cancel).await
}

/// One service's watcher: its channel, and the token that stops it.
struct Watched {
    input: reconcile::Input,
    stop: CancellationToken,
}

/// Starts the watcher of `svc`, and the task that wakes the reconciler on its changes.
fn watch_service(
    svc: &config::ServiceConfig,
    clients: &Arc<EtcdClients>,
    zk_clients: &Arc<ZkClients>,
    counters: &Arc<Counters>,
    changed: &Arc<Notify>,
    parent: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Watched {
    let (tx, mut rx) = watch::channel(None);
    let stop = parent.child_token();
    let watcher = AnyWatcher::for_service(svc, clients, zk_clients, counters);
    tasks.spawn(watcher.run(tx, stop.clone()));
    let input = (svc.name.clone(), rx.clone());
    let changed = changed.clone();
    let (counters, name) = (counters.clone(), svc.name.clone());
    tasks.spawn(async move {
        // Ends when the watcher drops its sender.
        while rx.changed().await.is_ok() {
            // Stamped after the watcher published: the propagation delay starts here.
            counters.services.published(&name, rx.borrow().as_ref());
            changed.notify_one();
        }
    });
    Watched { input, stop }
}

async fn run_inner(
    config: Config,
    reload_from: Option<PathBuf>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) -> Result<(), RunError> {
    let mut config = config;
    apply_own_zone(&mut config).await;
    let config = Arc::new(config);
    let shared_config = Arc::new(std::sync::Mutex::new(config.clone()));
    let admin = match config.admin_listen {
        Some(addr) => serve_admin(addr, &shared_config, &counters, &cancel).await,
        None => None,
    };
    let file_output = match &config.file_output {
        Some(f) => Some(FileOutput::new(
            f.output_directory.clone(),
            counters.clone(),
        )?),
        None => None,
    };
    let clients = Arc::new(EtcdClients::default());
    let zk_clients = Arc::new(ZkClients::new(counters.clone()));
    let changed = Arc::new(Notify::new());
    let watchers = cancel.child_token();
    let mut tasks = JoinSet::new();
    let haproxy = match &config.haproxy {
        Some(h) => {
            for w in h.hitless_warnings() {
                tracing::warn!("{w}");
            }
            let (output, supervisor) =
                HaproxyOutput::new(h.clone(), counters.clone(), changed.clone()).await;
            // Managed HAProxy: stopped (softly) when synapse stops, before run returns.
            if let Some(supervisor) = supervisor {
                tasks.spawn(supervisor.run(cancel.clone()));
            }
            Some(output)
        }
        None => None,
    };
    let mut watched: BTreeMap<ServiceName, Watched> = BTreeMap::new();
    for svc in config.services.values() {
        let w = watch_service(
            svc,
            &clients,
            &zk_clients,
            &counters,
            &changed,
            &watchers,
            &mut tasks,
        );
        watched.insert(svc.name.clone(), w);
    }
    let inputs = watched.values().map(|w| w.input.clone()).collect();
    tracing::info!(
        services = config.services.len(),
        haproxy = config.haproxy.is_some(),
        file_output = config.file_output.is_some(),
        "synapse started"
    );
    // Listening before anything is applied: a SIGHUP from then on is never fatal.
    let mut hangups = match &reload_from {
        Some(_) => match signal(SignalKind::hangup()) {
            Ok(s) => {
                counters
                    .sighup
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Some(s)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: the config is not re-read");
                None
            }
        },
        None => None,
    };
    let (updates_tx, updates_rx) = mpsc::unbounded_channel();
    let reconciler = Reconciler::new(
        config.clone(),
        inputs,
        changed.clone(),
        haproxy,
        file_output,
        counters.clone(),
    )
    .with_updates(updates_rx)
    .with_applied(applied::start(&config, &clients, &mut tasks, &cancel));
    let reconciler = match config
        .haproxy
        .as_ref()
        .and_then(|h| h.state_file_path.clone().map(|p| (p, h.state_file_ttl)))
    {
        Some((path, ttl)) => {
            let cached = state_file::load(&path, ttl).await;
            reconciler.with_state_file(path, ttl, cached)
        }
        None => reconciler,
    };
    let mut reconciling = tokio::spawn(reconciler.run(cancel.clone()));
    let mut running = config;
    loop {
        tokio::select! {
            done = &mut reconciling => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "the reconcile loop panicked");
                }
                break;
            }
            Some(()) = async { hangups.as_mut()?.recv().await } => {
                let Some(path) = &reload_from else { continue };
                tracing::info!(path = %path.display(), "SIGHUP: re-reading the config");
                let Some(mut new) = load_for_reload(path, &running, &counters).await else {
                    continue;
                };
                apply_own_zone(&mut new).await;
                let changes = config_reload::service_changes(&running, &new);
                for name in changes.removed.iter().chain(&changes.rewatched) {
                    if let Some(w) = watched.remove(name) {
                        w.stop.cancel();
                    }
                }
                for name in &changes.removed {
                    counters.services.forget(name);
                }
                for name in changes.added.iter().chain(&changes.rewatched) {
                    if let Some(svc) = new.services.get(name) {
                        let w = watch_service(svc, &clients, &zk_clients, &counters, &changed, &watchers, &mut tasks);
                        watched.insert(name.clone(), w);
                    }
                }
                let new = Arc::new(new);
                let inputs = watched.values().map(|w| w.input.clone()).collect();
                if updates_tx.send(ConfigUpdate { config: new.clone(), inputs }).is_err() {
                    break;
                }
                if let Ok(mut c) = shared_config.lock() {
                    *c = new.clone();
                }
                Counters::inc(&counters.config_reloads);
                counters.services.config_reloaded(None);
                tracing::info!(
                    added = ?changes.added,
                    removed = ?changes.removed,
                    rewatched = ?changes.rewatched,
                    changed = ?changes.changed,
                    "config reloaded"
                );
                running = new;
            }
            // Reaps finished watcher tasks (removed services) as they end.
            Some(done) = tasks.join_next(), if !tasks.is_empty() => note_panic(done),
        }
    }
    watchers.cancel();
    while let Some(done) = tasks.join_next().await {
        note_panic(done);
    }
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    tracing::info!("synapse stopped");
    Ok(())
}

fn note_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!(error = %e, "a watcher task panicked");
        }
    }
}

/// Loads `path` with the validation of start-up and checks that it can replace
/// `running`; `None` (after the error line and counters) when it is refused.
async fn load_for_reload(path: &Path, running: &Config, counters: &Counters) -> Option<Config> {
    let owned = path.to_owned();
    let loaded = tokio::task::spawn_blocking(move || Config::load(&owned))
        .await
        .unwrap_or_else(|e| {
            let mut errors = ConfigErrors::default();
            errors.push("", format!("loading the config failed: {e}"));
            Err(errors)
        });
    let errors = match loaded {
        Ok(new) => {
            let restart = config_reload::restart_only_changes(running, &new);
            if restart.is_empty() {
                for w in &new.warnings {
                    tracing::warn!(key = %w.path, "config: {}", w.message);
                }
                return Some(new);
            }
            restart
        }
        Err(errors) => errors,
    };
    let text = errors
        .0
        .iter()
        .map(|e| {
            if e.path.is_empty() {
                e.message.clone()
            } else {
                format!("{}: {}", e.path, e.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    tracing::error!(path = %path.display(), errors = %text, "the re-read config is refused; the running one stays");
    Counters::inc(&counters.config_reload_failures);
    counters.services.config_reloaded(Some(text));
    None
}

/// The environment variable that gives synapse its zone when the config's `zone` does
/// not.
pub const ZONE_ENV: &str = "SYNAPSE_ZONE";

/// Finds synapse's own zone (config `zone`, else `SYNAPSE_ZONE`, else IMDS with
/// `zone_from_imds`) for the services with `prefer_zone: true`. Without one they route to
/// every zone alike, after a warning: a zone hint is never a reason not to route.
async fn apply_own_zone(config: &mut Config) {
    let wants_own = config
        .services
        .values()
        .any(|s| s.prefer_zone.as_ref().is_some_and(|p| p.zone.is_none()));
    if !wants_own {
        return;
    }
    let mut source = config.zone.clone();
    source.env = std::env::var(ZONE_ENV).ok();
    let zone = match common::zone::find(&source, ZONE_ENV).await {
        Ok(Some((zone, origin))) => {
            tracing::info!(zone = %zone, origin = ?origin, "own zone found: prefer_zone services prefer it");
            Some(zone)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %e, "cannot find this host's zone");
            None
        }
    };
    let services = config.set_own_zone(zone.as_deref());
    if zone.is_none() {
        let names: Vec<String> = services.iter().map(ToString::to_string).collect();
        tracing::warn!(
            services = %names.join(","),
            "prefer_zone: true, but this synapse has no zone (set zone, {ZONE_ENV}, or \
             zone_from_imds): these services route to every zone alike"
        );
    }
}

/// Starts the admin endpoint: `/metrics` from `counters`, `/status`, `/status/<service>`,
/// `/healthz`, and `/readyz` (ready once every service's first set is applied). Stops
/// with `cancel`. `None` (after a warning) when `addr` cannot be bound.
async fn serve_admin(
    addr: std::net::SocketAddr,
    config: &Arc<std::sync::Mutex<Arc<Config>>>,
    counters: &Arc<Counters>,
    cancel: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let snapshot = counters.clone();
    let (config, detail_counters) = (config.clone(), counters.clone());
    let state = common::admin::AdminState {
        registry: Arc::new(std::sync::Mutex::new(metrics::registry(counters.clone()))),
        status: Arc::new(move || {
            let mut status = serde_json::to_value(snapshot.services.snapshot()).unwrap_or_default();
            let zk = snapshot.zk_sessions();
            if let (Some(object), false) = (status.as_object_mut(), zk.is_empty()) {
                let sessions: serde_json::Map<String, serde_json::Value> = zk
                    .iter()
                    .map(|(name, info)| (name.clone(), watcher::zookeeper::session_status(info)))
                    .collect();
                object.insert("zookeeper".to_owned(), sessions.into());
            }
            status
        }),
        ready: counters.services.ready_flag(),
        detail: Some(Arc::new(move |service| {
            // The config of now: a service added on SIGHUP has its page.
            let config = config
                .lock()
                .map(|c| c.clone())
                .unwrap_or_else(|e| e.into_inner().clone());
            let counters = detail_counters.clone();
            Box::pin(async move { service_detail::document(&config, &counters, &service).await })
        })),
        routes: None,
    };
    common::admin::serve_or_warn(addr, state, cancel.child_token())
        .await
        .map(|(_, task)| task)
}
