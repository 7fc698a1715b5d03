//! synapse: watches etcd (or static lists) for the instances of each service and keeps a
//! local HAProxy routing to exactly the healthy ones (Airbnb SmartStack's synapse, with
//! etcd v3 as the registry).
//!
//! # Layout
//!
//! - [`config`]: the airbnb synapse JSON format (with comments), validated into `Config`.
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
//! - [`counters`]: what synapse has done, for operators and tests.
//! - [`status`]: what synapse believes per service (servers, source, staleness, last
//!   apply, etcd watch) and the propagation delay; `/status` and `/readyz`.
//! - [`metrics`]: the Prometheus registry over [`Counters`] and [`status`], served on
//!   `admin_listen`'s `/metrics`.
//! - [`service_detail`]: `/status/<service>`, the registry beside HAProxy's runtime state.
//! - [`status_table`]: the tables `synapse status` prints.

pub mod applied;
pub mod backends;
pub mod config;
pub mod counters;
pub mod ec2;
pub mod failpoint;
pub mod file_output;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod haproxy;
pub mod metrics;
pub mod reconcile;
pub mod service_detail;
pub mod status;
pub mod status_table;
pub mod upstream;
pub mod watcher;

use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use counters::Counters;

use crate::file_output::{FileOutput, FileOutputError};
use crate::haproxy::HaproxyOutput;
use crate::reconcile::Reconciler;
use crate::watcher::{AnyWatcher, EtcdClients, Watcher};

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
    let config = Arc::new(config);
    let admin = match config.admin_listen {
        Some(addr) => serve_admin(addr, &config, &counters, &cancel).await,
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
    let mut inputs = Vec::new();
    for svc in config.services.values() {
        let (tx, mut rx) = watch::channel(None);
        inputs.push((svc.name.clone(), rx.clone()));
        let watcher = AnyWatcher::for_service(svc, &clients, &counters);
        tasks.spawn(watcher.run(tx, watchers.child_token()));
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
    }
    tracing::info!(
        services = config.services.len(),
        haproxy = config.haproxy.is_some(),
        file_output = config.file_output.is_some(),
        "synapse started"
    );
    let applied = applied::start(&config, &mut tasks, &cancel);
    Reconciler::new(config, inputs, changed, haproxy, file_output, counters)
        .with_applied(applied)
        .run(cancel.clone())
        .await;
    watchers.cancel();
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            if e.is_panic() {
                tracing::error!(error = %e, "a watcher task panicked");
            }
        }
    }
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    tracing::info!("synapse stopped");
    Ok(())
}

/// Starts the admin endpoint: `/metrics` from `counters`, `/status`, `/status/<service>`,
/// `/healthz`, and `/readyz` (ready once every service's first set is applied). Stops
/// with `cancel`. `None` (after a warning) when `addr` cannot be bound.
async fn serve_admin(
    addr: std::net::SocketAddr,
    config: &Arc<Config>,
    counters: &Arc<Counters>,
    cancel: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let snapshot = counters.clone();
    let (config, detail_counters) = (config.clone(), counters.clone());
    let state = common::admin::AdminState {
        registry: Arc::new(std::sync::Mutex::new(metrics::registry(counters.clone()))),
        status: Arc::new(move || {
            serde_json::to_value(snapshot.services.snapshot()).unwrap_or_default()
        }),
        ready: counters.services.ready_flag(),
        detail: Some(Arc::new(move |service| {
            let (config, counters) = (config.clone(), detail_counters.clone());
            Box::pin(async move { service_detail::document(&config, &counters, &service).await })
        })),
        action: None,
    };
    common::admin::serve_or_warn(addr, state, cancel.child_token())
        .await
        .map(|(_, task)| task)
}
