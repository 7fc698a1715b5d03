//! Counters an operator (and the tests) can read: rejected registrations by reason,
//! reloads, re-lists, config writes. Plain atomics, exported by the `metrics` module; and the
//! live per-service state ([`services`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

pub mod services;

use services::ServiceStates;

/// What synapse has done since it started. Shared as `Arc<Counters>`.
#[derive(Debug, Default)]
pub struct Counters {
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Successful HAProxy reloads (the reload command exited 0).
    pub reloads: AtomicU64,
    /// Reload commands that failed.
    pub reload_failures: AtomicU64,
    /// haproxy.cfg files written (after a passing check, when checks are on).
    pub config_writes: AtomicU64,
    /// Candidate configs refused by `check_command`.
    pub check_failures: AtomicU64,
    /// Failed writes of haproxy.cfg or file_output files.
    pub write_failures: AtomicU64,
    /// file_output files written or removed.
    pub file_output_writes: AtomicU64,
    /// Full lists of an etcd prefix (the first one, after compaction, after resync).
    pub relists: AtomicU64,
    /// Watch streams that broke (error, silence, cancel) and were resumed or re-listed.
    pub watch_restarts: AtomicU64,
    /// Services held at their last known set because discovery exceeded `max_servers`.
    pub over_limit: AtomicU64,
    /// etcd prefixes found over `max_keys`/`max_bytes` (the last good set was kept).
    pub registry_over_cap: AtomicU64,
    /// `multi` discoveries that switched the source they publish from.
    pub source_switches: AtomicU64,
    /// Runtime-API commands HAProxy accepted (add/del server, weight, state, addr).
    pub runtime_commands: AtomicU64,
    /// Runtime-API commands HAProxy refused, or a stats socket that failed (each falls
    /// back to a reload).
    pub runtime_failures: AtomicU64,
    /// Managed mode: HAProxy starts (the first one and every restart).
    pub haproxy_starts: AtomicU64,
    /// Managed mode: HAProxy exits synapse did not ask for.
    pub haproxy_exits: AtomicU64,
    /// Times the mass-removal guard tripped (a service lost most servers at once).
    pub mass_removal_trips: AtomicU64,
    /// Services whose last good set the mass-removal guard holds now (a gauge).
    pub mass_removal_holding: AtomicU64,
    /// Config files re-read (SIGHUP) and applied.
    pub config_reloads: AtomicU64,
    /// Config files re-read (SIGHUP) and refused (invalid, or a key that needs a
    /// restart changed): the running config stayed.
    pub config_reload_failures: AtomicU64,
    /// SIGHUP re-reads the config file (set once the handler is installed).
    pub(crate) sighup: AtomicBool,
    /// Per service: servers, source, staleness, etcd watch, last apply (for `/status`
    /// and the per-service metrics).
    pub services: ServiceStates,
    /// ZooKeeper sessions by ensemble connect string (issue 20).
    zk_sessions: Mutex<BTreeMap<String, ZkSessionInfo>>,
}

/// One ZooKeeper session of synapse's (pooled per ensemble).
#[derive(Debug, Clone, Default)]
pub struct ZkSessionInfo {
    pub connected: bool,
    pub session_id: Option<String>,
    pub session_started: Option<tokio::time::Instant>,
    /// Sessions established (the first, and one after each expiry).
    pub sessions: u64,
    /// Sessions found expired.
    pub expirations: u64,
    /// Full re-reads of a service's directory (first read, reconnect, resync).
    pub rereads: u64,
    /// Watches interrupted (lost connection, expiry, failed reads) and retried.
    pub interruptions: u64,
    /// Directories found with more children than `max_keys` (the last set was kept).
    pub over_cap: u64,
}

impl Counters {
    /// Counts a rejected registration.
    pub fn reject(&self, reason: &'static str) {
        if let Ok(mut m) = self.rejected.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// Rejected registrations so far, by reason.
    pub fn rejected(&self) -> BTreeMap<&'static str, u64> {
        self.rejected.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Rejected registrations so far, all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejected().values().sum()
    }

    /// Whether a SIGHUP now re-reads the config file.
    pub fn listening_for_sighup(&self) -> bool {
        self.sighup.load(Ordering::Relaxed)
    }

    /// The servers HAProxy refuses, per service: server name → HAProxy's error line.
    pub fn set_quarantined(&self, q: BTreeMap<common::ServiceName, BTreeMap<String, String>>) {
        self.services.set_quarantined(q);
    }

    /// Updates what is known about the session to ensemble `zk`.
    pub fn zk_session(&self, zk: &str, f: impl FnOnce(&mut ZkSessionInfo)) {
        let mut m = self
            .zk_sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(m.entry(zk.to_owned()).or_default());
    }

    /// Every ZooKeeper session, by ensemble.
    pub fn zk_sessions(&self) -> BTreeMap<String, ZkSessionInfo> {
        self.zk_sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads one of the public counters.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
