//! What nerve believes, as a snapshot: each service's health, last check and drain state,
//! and what is registered in etcd under which lease. Served as JSON on the admin
//! endpoint's `/status` ([`StatusHandle::snapshot`]), and available to library users
//! through [`crate::Nerve::status`]. The table `nerve status` prints is [`crate::status_table::render`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Duration, Instant};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    pub instance_id: String,
    pub services: BTreeMap<String, ServiceStatus>,
    pub registry: RegistryStatus,
    /// nerve's ZooKeeper sessions, by ensemble connect string (issue 20).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub zookeeper: BTreeMap<String, ZkSessionStatus>,
    /// Whether any service reports to etcd (if none, readiness does not wait for it).
    #[serde(skip)]
    pub etcd_in_use: bool,
}

/// One ZooKeeper session of nerve's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ZkSessionStatus {
    /// The session is connected and the last request succeeded.
    pub connected: bool,
    /// The session id (hex), while nerve has a session.
    pub session_id: Option<String>,
    /// The negotiated session timeout: how long the nodes outlive a lost nerve.
    pub session_timeout_secs: Option<u64>,
    /// Seconds since this session was established, as of the snapshot.
    pub session_age_secs: Option<u64>,
    /// Sessions found expired since nerve started.
    pub expirations: u64,
    /// Ephemeral nodes nerve believes it holds, with the service each belongs to.
    pub nodes: BTreeMap<String, String>,
    #[serde(skip)]
    pub session_started: Option<Instant>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    /// All checks up.
    pub healthy: bool,
    /// A maintenance file exists, or an operator drained it.
    pub drained: bool,
    /// `nerve drain` (or `POST /drain/<service>`) took it out until `nerve undrain` or a
    /// restart.
    pub drained_by_operator: bool,
    /// nerve wants the service registered (healthy, not drained, report not throttled).
    pub reported: bool,
    /// The service's directory in etcd.
    pub etcd_path: String,
    /// A SIGHUP replacement is being health-checked before it takes over.
    pub replacing: bool,
    /// The last round of checks: `ok`, `no checks`, or the first failing check and its
    /// error; `null` before the first round.
    pub last_check: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegistryStatus {
    /// nerve holds a live lease and its last etcd request succeeded.
    pub connected: bool,
    pub lease_id: Option<i64>,
    pub lease_ttl_secs: Option<u64>,
    /// Seconds until the lease expires unless renewed, as of the snapshot (from the TTL
    /// etcd gave at the last grant or keep-alive).
    pub lease_ttl_left_secs: Option<u64>,
    /// Keys nerve believes it holds, with the service each belongs to.
    pub keys: BTreeMap<String, String>,
    /// The etcd revision at which this nerve last deleted each service's registration
    /// (a deregistration, a drain, the lease revoked at shutdown): what a drain barrier
    /// waits for.
    pub deletions: BTreeMap<String, i64>,
    /// When the lease was last granted or renewed, and the TTL from then.
    #[serde(skip)]
    pub lease_renewed: Option<(Instant, Duration)>,
}

/// Shared by the tasks that update parts of the status.
#[derive(Debug, Clone)]
pub struct StatusHandle {
    tx: Arc<watch::Sender<Status>>,
    ready: Arc<AtomicBool>,
}

impl StatusHandle {
    pub fn new(instance_id: String, ready: Arc<AtomicBool>) -> Self {
        let (tx, _) = watch::channel(Status {
            instance_id,
            ..Status::default()
        });
        Self {
            tx: Arc::new(tx),
            ready,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.tx.subscribe()
    }

    /// The status now, with the lease's TTL left worked out.
    pub fn snapshot(&self) -> Status {
        let mut s = self.tx.borrow().clone();
        s.registry.lease_ttl_left_secs = s
            .registry
            .lease_renewed
            .map(|(at, ttl)| ttl.saturating_sub(at.elapsed()).as_secs());
        for zk in s.zookeeper.values_mut() {
            zk.session_age_secs = zk.session_started.map(|t| t.elapsed().as_secs());
        }
        s
    }

    pub fn update_services(&self, f: impl FnOnce(&mut BTreeMap<String, ServiceStatus>)) {
        self.tx.send_if_modified(|s| {
            let before = s.services.clone();
            f(&mut s.services);
            before != s.services
        });
    }

    pub fn update_registry(&self, f: impl FnOnce(&mut RegistryStatus)) {
        self.tx.send_if_modified(|s| {
            let before = s.registry.clone();
            f(&mut s.registry);
            self.ready.store(is_ready(s), Ordering::Relaxed);
            before != s.registry
        });
    }

    /// Declares whether any service reports to etcd.
    pub fn set_etcd_in_use(&self, in_use: bool) {
        self.tx.send_modify(|s| {
            s.etcd_in_use = in_use;
            self.ready.store(is_ready(s), Ordering::Relaxed);
        });
    }

    /// Updates the status of the session to ensemble `zk`.
    pub fn update_zookeeper(&self, zk: &str, f: impl FnOnce(&mut ZkSessionStatus)) {
        self.tx.send_if_modified(|s| {
            let entry = s.zookeeper.entry(zk.to_owned()).or_default();
            let before = entry.clone();
            f(entry);
            let changed = before != *entry;
            self.ready.store(is_ready(s), Ordering::Relaxed);
            changed
        });
    }
}

/// Ready: every registry nerve reports to is connected.
fn is_ready(s: &Status) -> bool {
    (!s.etcd_in_use || s.registry.connected) && s.zookeeper.values().all(|z| z.connected)
}
