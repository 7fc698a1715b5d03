//! The reporter makes the registry hold exactly the registrations nerve wants: a
//! desired-state reconciler, not a script of steps. The supervisor publishes the whole
//! desired set on a `watch` channel; [`drive`] calls [`Reporter::sync`] whenever it
//! changes (and again, with backoff, until a sync succeeds), and
//! [`Reporter::maintain`] on the reporter's own schedule (lease keep-alives, reading its
//! keys back). On cancellation it calls [`Reporter::shutdown`] under a grace timeout.
//!
//! Nothing the registry does is fatal: every error is logged once when trouble starts,
//! retried with jittered backoff, and logged again when it ends.

mod etcd;
mod zookeeper;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use common::{Backoff, Registration, ServiceName, ServicePath};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use etcd::{EtcdReporter, EtcdReporterConfig, ReportError};
pub use zookeeper::{ZkReportError, ZkReporter, ZkReporterConfig};

use crate::config::ReportTargets;

/// One registration nerve wants in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The service's directory in the registry the entry is handed to (the supervisor
    /// publishes the etcd path; [`select`] puts the `zk_path` in for ZooKeeper).
    pub path: ServicePath,
    pub registration: Registration,
    /// The registries the service reports to.
    pub targets: ReportTargets,
}

/// A reporter's share of the desired set: the entries `pick` keeps (and rewrites),
/// forwarded from `all` whenever it changes. The returned channel closes when `all`
/// does (the supervisor is gone), which ends the reporter's [`drive`].
pub fn select(
    mut all: watch::Receiver<Desired>,
    pick: impl Fn(&Entry) -> Option<Entry> + Send + 'static,
) -> watch::Receiver<Desired> {
    let project = move |d: &Desired| -> Desired {
        d.iter()
            .filter_map(|(name, e)| pick(e).map(|e| (name.clone(), e)))
            .collect()
    };
    let (tx, rx) = watch::channel(project(&all.borrow_and_update()));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = all.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let next = project(&all.borrow_and_update());
                    tx.send_if_modified(|cur| {
                        let changed = *cur != next;
                        *cur = next;
                        changed
                    });
                }
                () = tx.closed() => break,
            }
        }
    });
    rx
}

/// Everything nerve wants registered, by service.
pub type Desired = BTreeMap<ServiceName, Entry>;

/// The outcome of [`Reporter::maintain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maintenance {
    /// All is as it should be.
    Fine,
    /// The registry differs from what was written (lease lost, keys changed behind
    /// nerve's back): a sync is needed.
    NeedsSync,
}

/// Where registrations go. The seam that lets the driver be tested with a fake.
pub trait Reporter: Send + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Makes the registry hold exactly `desired` for this nerve. Idempotent: with
    /// nothing to change, it makes no writes.
    fn sync(&mut self, desired: &Desired) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Periodic upkeep (keep-alives, read-back). Called at [`Reporter::next_maintenance`].
    fn maintain(
        &mut self,
        desired: &Desired,
    ) -> impl Future<Output = Result<Maintenance, Self::Error>> + Send;

    /// When [`Reporter::maintain`] wants to run next.
    fn next_maintenance(&self) -> Instant;

    /// Removes everything this nerve registered. Best effort, bounded by the caller.
    fn shutdown(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Runs `reporter` until `cancel` fires, then shuts it down within `shutdown_timeout`.
pub async fn drive<R: Reporter>(
    mut reporter: R,
    mut desired: watch::Receiver<Desired>,
    cancel: CancellationToken,
    shutdown_timeout: Duration,
    mut backoff: Backoff,
) {
    let mut dirty = true;
    let mut retry_at: Option<Instant> = None;
    let mut trouble = Trouble::default();
    loop {
        if dirty && retry_at.is_none_or(|t| t <= Instant::now()) {
            let snapshot = desired.borrow_and_update().clone();
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                result = reporter.sync(&snapshot) => result,
            };
            match result {
                Ok(()) => {
                    dirty = false;
                    retry_at = None;
                    backoff.reset();
                    trouble.ended();
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    trouble.error("registry sync failed", &e, delay);
                    retry_at = Some(Instant::now() + delay);
                }
            }
        }
        let maintenance_at = reporter.next_maintenance();
        let wake = match retry_at {
            Some(t) if dirty => t.min(maintenance_at),
            _ => maintenance_at,
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            changed = desired.changed() => {
                if changed.is_err() {
                    // The supervisor is gone: nothing will be desired any more.
                    break;
                }
                dirty = true;
            }
            _ = tokio::time::sleep_until(wake) => {
                if Instant::now() >= reporter.next_maintenance() {
                    let snapshot = desired.borrow().clone();
                    let result = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => break,
                        result = reporter.maintain(&snapshot) => result,
                    };
                    match result {
                        Ok(Maintenance::Fine) => {
                            if !dirty {
                                trouble.ended();
                            }
                        }
                        Ok(Maintenance::NeedsSync) => {
                            dirty = true;
                            retry_at = None;
                        }
                        Err(e) => trouble.error("registry upkeep failed", &e, Duration::ZERO),
                    }
                }
            }
        }
    }
    match tokio::time::timeout(shutdown_timeout, reporter.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %crate::error_chain(&e),
            "could not deregister; the registrations expire with the lease"),
        Err(_) => warn!(timeout = ?shutdown_timeout,
            "deregistration timed out; the registrations expire with the lease"),
    }
}

/// Logs the start and the end of a run of failures, and each failure only at `debug`,
/// so an outage makes two `warn`/`info` lines, not one per retry.
#[derive(Default)]
struct Trouble {
    since: Option<Instant>,
    failures: u32,
}

impl Trouble {
    fn error(&mut self, what: &str, e: &(dyn std::error::Error + 'static), retry_in: Duration) {
        self.failures += 1;
        if self.since.is_none() {
            self.since = Some(Instant::now());
            warn!(error = %crate::error_chain(e), "{what}; retrying with backoff");
        } else {
            debug!(error = %crate::error_chain(e), failures = self.failures,
                retry_in = ?retry_in, "{what}");
        }
    }

    fn ended(&mut self) {
        if let Some(since) = self.since.take() {
            info!(failures = self.failures, outage = ?since.elapsed(),
                "registry reachable again; registrations are in place");
        }
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::{Host, InstanceId, Port};
    use std::sync::{Arc, Mutex};

    #[derive(Debug, thiserror::Error)]
    #[error("fake failure")]
    struct FakeError;

    /// Records syncs; fails the first `fail_syncs` of them.
    #[derive(Clone, Default)]
    struct FakeReporter {
        log: Arc<Mutex<Vec<String>>>,
        fail_syncs: Arc<Mutex<u32>>,
        lose_lease_at: Arc<Mutex<Option<Instant>>>,
    }

    impl Reporter for FakeReporter {
        type Error = FakeError;

        async fn sync(&mut self, desired: &Desired) -> Result<(), FakeError> {
            let mut fail = self.fail_syncs.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                self.log.lock().unwrap().push("sync failed".into());
                return Err(FakeError);
            }
            let names: Vec<&str> = desired.keys().map(ServiceName::as_str).collect();
            self.log
                .lock()
                .unwrap()
                .push(format!("sync {}", names.join(",")));
            Ok(())
        }

        async fn maintain(&mut self, _: &Desired) -> Result<Maintenance, FakeError> {
            let mut at = self.lose_lease_at.lock().unwrap();
            if at.is_some_and(|t| t <= Instant::now()) {
                *at = None;
                self.log.lock().unwrap().push("lease lost".into());
                return Ok(Maintenance::NeedsSync);
            }
            Ok(Maintenance::Fine)
        }

        fn next_maintenance(&self) -> Instant {
            self.lose_lease_at
                .lock()
                .unwrap()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
        }

        async fn shutdown(&mut self) -> Result<(), FakeError> {
            self.log.lock().unwrap().push("shutdown".into());
            Ok(())
        }
    }

    fn entry(port: u16) -> Entry {
        Entry {
            path: ServicePath::new("/svc/web").unwrap(),
            registration: Registration {
                host: Host::parse("127.0.0.1").unwrap(),
                port: Port::new(port).unwrap(),
                name: InstanceId::new("i").unwrap(),
                weight: None,
                haproxy_server_options: None,
                labels: Default::default(),
            },
            targets: ReportTargets::default(),
        }
    }

    fn desired(names: &[&str]) -> Desired {
        names
            .iter()
            .map(|n| (ServiceName::new(*n).unwrap(), entry(80)))
            .collect()
    }

    fn backoff() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
    }

    #[tokio::test(start_paused = true)]
    async fn syncs_on_change_retries_failures_and_shuts_down() {
        let fake = FakeReporter::default();
        *fake.fail_syncs.lock().unwrap() = 3;
        let (tx, rx) = watch::channel(desired(&["a"]));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(drive(
            fake.clone(),
            rx,
            cancel.clone(),
            Duration::from_secs(1),
            backoff(),
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
        tx.send_replace(desired(&["a", "b"]));
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Nothing changed: no sync.
        tx.send_if_modified(|_| false);
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(
            *fake.log.lock().unwrap(),
            [
                "sync failed",
                "sync failed",
                "sync failed",
                "sync a",
                "sync a,b",
                "shutdown"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn lost_lease_triggers_a_full_sync() {
        let fake = FakeReporter::default();
        *fake.lose_lease_at.lock().unwrap() = Some(Instant::now() + Duration::from_secs(2));
        let (_tx, rx) = watch::channel(desired(&["a"]));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(drive(
            fake.clone(),
            rx,
            cancel.clone(),
            Duration::from_secs(1),
            backoff(),
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(
            *fake.log.lock().unwrap(),
            ["sync a", "lease lost", "sync a", "shutdown"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_is_bounded() {
        #[derive(Clone)]
        struct Stuck;
        impl Reporter for Stuck {
            type Error = FakeError;
            async fn sync(&mut self, _: &Desired) -> Result<(), FakeError> {
                Ok(())
            }
            async fn maintain(&mut self, _: &Desired) -> Result<Maintenance, FakeError> {
                Ok(Maintenance::Fine)
            }
            fn next_maintenance(&self) -> Instant {
                Instant::now() + Duration::from_secs(3600)
            }
            async fn shutdown(&mut self) -> Result<(), FakeError> {
                std::future::pending().await
            }
        }
        let (_tx, rx) = watch::channel(Desired::new());
        let cancel = CancellationToken::new();
        cancel.cancel();
        let started = Instant::now();
        drive(Stuck, rx, cancel, Duration::from_secs(2), backoff()).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
