//! The live state behind `/status` and the per-service metrics, as synapse records it:
//! per service, the servers as last applied, where they came from, freshness, the etcd
//! watch and the mass-removal guard; for the outputs, the last apply and reload;
//! readiness, and the propagation delay. Recorded by the watchers, the per-service
//! forwarding task and the reconciler through `Counters::services`; read by the metrics
//! collector ([`ServiceStates::summaries`]) and by the `status` module, which builds the
//! admin endpoint's `/status` document from it.
//!
//! **Propagation delay**, as measured here: a service is stamped when synapse receives a
//! change of its set — the moment its watcher has *published* it (after the etcd event,
//! the list or the EC2 poll was read), never before, so a stamp cannot precede the set it
//! stands for. The reconciler takes the stamps before it reads the sets ([`begin`]); when
//! an apply that changed the service's servers has finished (runtime commands accepted,
//! reload confirmed, or file written), the time since the stamp is observed. A change
//! whose reload waits for `restart_interval` is observed once no reload is owed any more.
//! Not included: etcd's commit → watch delivery before synapse reads the event, and
//! HAProxy acting on a command it accepted. Included: debounce, rendering, the socket
//! round trips, `haproxy -c`, reload waits.
//!
//! [`begin`]: ServiceStates::begin

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use common::ServiceName;
use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use crate::backends::{BackendSet, Discovered, Origin};
use crate::config::ServiceConfig;

/// Propagation delay buckets (s): a runtime change takes milliseconds plus the debounce;
/// a deferred reload up to `restart_interval` more; the top buckets catch retries.
const PROPAGATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Where the servers a service routes to came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Etcd,
    Zookeeper,
    Ec2,
    Dns,
    /// The configured `default_servers` (`base` discovery, or discovery found nothing).
    Static,
    /// A `multi` union of different kinds of sources.
    Mixed,
    /// Held: the source is unreachable (its watcher keeps the last set it read), or its
    /// answer was not applied (empty with `use_previous_backends`, over `max_servers`,
    /// a removal held by the mass-removal guard).
    LastKnownGood,
}

impl Source {
    pub const ALL: [Self; 7] = [
        Self::Etcd,
        Self::Zookeeper,
        Self::Ec2,
        Self::Dns,
        Self::Static,
        Self::Mixed,
        Self::LastKnownGood,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Etcd => "etcd",
            Self::Zookeeper => "zookeeper",
            Self::Ec2 => "ec2",
            Self::Dns => "dns",
            Self::Static => "static",
            Self::Mixed => "mixed",
            Self::LastKnownGood => "last_known_good",
        }
    }

    /// Where `set` — what a service routes to after its rules — came from, given what
    /// discovery published. Each server is traced back: to the discovered set (by name
    /// and host: the port may be overridden), else to `default_servers`; a server found
    /// in neither is one the rules held on to.
    pub fn of(
        svc: &ServiceConfig,
        discovered: &Discovered,
        set: &BackendSet,
        over_limit: bool,
    ) -> Self {
        if over_limit || !discovered.fresh {
            return Self::LastKnownGood;
        }
        let found: BTreeSet<(&str, &common::Host)> = discovered
            .backends
            .iter()
            .map(|b| (b.name.as_str(), &b.host))
            .collect();
        let (mut from_discovery, mut from_defaults) = (false, false);
        for b in set {
            if found.contains(&(b.name.as_str(), &b.host)) {
                from_discovery = true;
            } else if svc.default_servers.contains(b) {
                from_defaults = true;
            } else {
                return Self::LastKnownGood;
            }
        }
        if from_defaults && !from_discovery {
            Self::Static
        } else {
            discovered.origin.into()
        }
    }
}

impl From<Origin> for Source {
    fn from(o: Origin) -> Self {
        match o {
            Origin::Etcd => Self::Etcd,
            Origin::Zookeeper => Self::Zookeeper,
            Origin::Ec2 => Self::Ec2,
            Origin::Dns => Self::Dns,
            Origin::Static => Self::Static,
            Origin::Mixed => Self::Mixed,
        }
    }
}

/// How an apply reached the outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyMethod {
    /// HAProxy's runtime API: no reload.
    Runtime,
    /// A confirmed HAProxy reload.
    Reload,
    /// The config is written; its reload waits for `restart_interval`.
    ReloadDeferred,
    /// Files written (haproxy.cfg with reloads off or a managed HAProxy started on it,
    /// or `file_output`), nothing else needed.
    Written,
    /// The outputs already matched.
    Unchanged,
}

/// The state of a service's etcd watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchState {
    /// Listed; the watch is being opened.
    Listed,
    /// A watch stream is open and answering.
    Watching,
    /// The list or the stream failed; retrying with backoff (the last set stays).
    Retrying,
}

/// An apply, as the `/status` document shows it.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) method: ApplyMethod,
    pub(crate) at: SystemTime,
    pub(crate) instant: Instant,
}

impl Event {
    fn now(method: ApplyMethod) -> Self {
        Self {
            method,
            at: SystemTime::now(),
            instant: Instant::now(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct EtcdWatch {
    pub(crate) state: WatchState,
    pub(crate) revision: i64,
    pub(crate) last_error: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct ServiceState {
    /// The servers as last applied; `None` before the first apply.
    pub(crate) servers: Option<BackendSet>,
    pub(crate) source: Option<Source>,
    /// The source of the set the reconciler is about to apply.
    resolved: Option<Source>,
    /// Whether the watcher's last published set is fresh; `None` before it published.
    pub(crate) fresh: Option<bool>,
    pub(crate) stale_since: Option<Instant>,
    /// The first unapplied change received since the reconciler last looked.
    pending: Option<Instant>,
    /// Changes the reconciler has read and not yet applied.
    in_flight: Option<Instant>,
    pub(crate) last_change: Option<Event>,
    pub(crate) etcd: Option<EtcdWatch>,
    /// The mass-removal guard: enabled, and when its hold ends while it holds.
    pub(crate) guard: Option<(bool, Option<Instant>)>,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub(crate) services: BTreeMap<ServiceName, ServiceState>,
    /// Changes applied to the file whose reload is deferred, with their stamps.
    awaiting_reload: BTreeMap<ServiceName, Option<Instant>>,
    pub(crate) reload_pending: bool,
    pub(crate) last_apply: Option<Event>,
    pub(crate) last_reload: Option<Event>,
    /// Servers HAProxy refuses, per service: server name → HAProxy's error line.
    pub(crate) quarantined: BTreeMap<ServiceName, BTreeMap<String, String>>,
    pub(crate) config: ConfigStatus,
}

/// The live state; one per synapse.
#[derive(Debug)]
pub struct ServiceStates {
    inner: Mutex<Inner>,
    ready: Arc<AtomicBool>,
    propagation: Histogram,
    reloads_rate_limited: AtomicU64,
}

impl Default for ServiceStates {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            ready: Arc::default(),
            propagation: Histogram::new(PROPAGATION_BUCKETS),
            reloads_rate_limited: AtomicU64::new(0),
        }
    }
}

impl ServiceStates {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep reporting it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the whole state at once (for the `/status` document).
    pub(crate) fn inspect<R>(&self, f: impl FnOnce(&Inner) -> R) -> R {
        f(&self.lock())
    }

    /// True once every service had its first complete set and the outputs took it.
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The propagation delay histogram (registered by the `metrics` module).
    pub fn propagation(&self) -> &Histogram {
        &self.propagation
    }

    /// Episodes in which a reload was owed but waited for `restart_interval`.
    pub fn reloads_rate_limited(&self) -> u64 {
        self.reloads_rate_limited.load(Ordering::Relaxed)
    }

    /// A service's watcher published (a change of) `discovered`.
    pub fn published(&self, service: &ServiceName, discovered: Option<&Discovered>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let s = inner.services.entry(service.clone()).or_default();
        s.pending.get_or_insert(now);
        let fresh = discovered.map(|d| d.fresh);
        s.fresh = fresh;
        if fresh == Some(false) {
            s.stale_since.get_or_insert(now);
        } else {
            s.stale_since = None;
        }
    }

    /// The reconciler is about to read every service's set.
    pub fn begin(&self) {
        let mut inner = self.lock();
        for s in inner.services.values_mut() {
            if let Some(p) = s.pending.take() {
                s.in_flight = Some(s.in_flight.map_or(p, |f| f.min(p)));
            }
        }
    }

    /// The reconciler decided that `service` routes to `set`.
    pub fn resolved(
        &self,
        svc: &ServiceConfig,
        discovered: &Discovered,
        set: &BackendSet,
        over_limit: bool,
    ) {
        let source = Source::of(svc, discovered, set, over_limit);
        self.lock()
            .services
            .entry(svc.name.clone())
            .or_default()
            .resolved = Some(source);
    }

    /// The outputs now hold `desired` for these services (the others are unchanged),
    /// applied by `method`; `reload_pending`: a reload is owed and waits for
    /// `restart_interval`. (`ServiceStates::applied` in `status` says this from what the
    /// HAProxy output reports.)
    pub fn applied_by<'a>(
        &self,
        desired: impl IntoIterator<Item = (&'a ServiceName, &'a BackendSet)>,
        method: ApplyMethod,
        reload_pending: bool,
    ) {
        let now = Instant::now();
        let mut delays = Vec::new();
        let mut inner = self.lock();
        let mut changed_now = BTreeSet::new();
        let mut given = BTreeSet::new();
        for (name, set) in desired {
            given.insert(name);
            let s = inner.services.entry(name.clone()).or_default();
            s.source = s.resolved.or(s.source);
            let stamp = s.in_flight.take();
            if s.servers.as_ref() == Some(set) {
                // Only freshness or nothing changed: no servers moved, nothing to time.
                continue;
            }
            changed_now.insert(name.clone());
            s.servers = Some(set.clone());
            s.last_change = Some(Event::now(method));
            if reload_pending {
                let waiting = inner.awaiting_reload.entry(name.clone()).or_default();
                *waiting = match (*waiting, stamp) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            } else if let Some(stamp) = stamp {
                delays.push(now - stamp);
            }
        }
        for (name, s) in inner.services.iter_mut() {
            if !given.contains(name) {
                // Unchanged: a stamp here is of a publish already applied.
                s.source = s.resolved.or(s.source);
                s.in_flight = None;
            }
        }
        if !reload_pending {
            // Whatever waited for a reload is live now (reloaded, or HAProxy restarted on
            // the file).
            let done = if method == ApplyMethod::Reload {
                ApplyMethod::Reload
            } else {
                ApplyMethod::Written
            };
            for (name, stamp) in std::mem::take(&mut inner.awaiting_reload) {
                // A service this very apply changed keeps this apply's method: its newer
                // change went out by the runtime API, not by the file.
                if let Some(s) = inner
                    .services
                    .get_mut(&name)
                    .filter(|_| !changed_now.contains(&name))
                {
                    s.last_change = Some(Event::now(done));
                }
                delays.extend(stamp.map(|t| now - t));
            }
        }
        if reload_pending && !inner.reload_pending {
            self.reloads_rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        inner.reload_pending = reload_pending;
        if method == ApplyMethod::Reload {
            inner.last_reload = Some(Event::now(method));
        }
        inner.last_apply = Some(Event::now(method));
        drop(inner);
        for d in delays {
            self.propagation.observe(d.as_secs_f64());
        }
        if !reload_pending {
            self.ready.store(true, Ordering::Relaxed);
        }
    }

    /// The mass-removal guard of `service` is `enabled` and holds until `held_until`.
    pub fn guard(&self, service: &ServiceName, enabled: bool, held_until: Option<Instant>) {
        self.lock()
            .services
            .entry(service.clone())
            .or_default()
            .guard = Some((enabled, held_until));
    }

    /// The etcd watcher listed `service`'s prefix at `revision`.
    pub fn etcd_listed(&self, service: &ServiceName, revision: i64) {
        self.etcd(service, |w| {
            w.state = WatchState::Listed;
            w.revision = revision;
        });
    }

    /// The etcd watch stream of `service` is open and answering.
    pub fn etcd_watching(&self, service: &ServiceName, revision: i64) {
        self.etcd(service, |w| {
            w.state = WatchState::Watching;
            w.revision = w.revision.max(revision);
            w.last_error = None;
        });
    }

    /// The etcd watch of `service` failed; it retries.
    pub fn etcd_interrupted(&self, service: &ServiceName, error: &str) {
        self.etcd(service, |w| {
            w.state = WatchState::Retrying;
            w.last_error = Some(error.to_owned());
        });
    }

    fn etcd(&self, service: &ServiceName, f: impl FnOnce(&mut EtcdWatch)) {
        let mut inner = self.lock();
        let s = inner.services.entry(service.clone()).or_default();
        let w = s.etcd.get_or_insert(EtcdWatch {
            state: WatchState::Listed,
            revision: 0,
            last_error: None,
        });
        f(w);
    }

    /// Replaces the quarantined servers (see `haproxy::quarantine`).
    pub fn set_quarantined(&self, q: BTreeMap<ServiceName, BTreeMap<String, String>>) {
        self.lock().quarantined = q;
    }

    /// One line per service, for the metrics.
    pub fn summaries(&self) -> Vec<ServiceSummary> {
        let now = Instant::now();
        let inner = self.lock();
        inner
            .services
            .iter()
            .map(|(name, s)| ServiceSummary {
                service: name.to_string(),
                quarantined: inner.quarantined.get(name).map_or(0, BTreeMap::len),
                servers: s.servers.as_ref().map(BTreeSet::len),
                source: s.source,
                stale_seconds: s.stale_since.map(|t| (now - t).as_secs_f64()),
                etcd: s.etcd.as_ref().map(|w| (w.state, w.revision)),
            })
            .collect()
    }

    /// A service left the config (SIGHUP): it is no longer reported.
    pub fn forget(&self, service: &ServiceName) {
        let mut inner = self.lock();
        inner.services.remove(service);
        inner.awaiting_reload.remove(service);
        inner.quarantined.remove(service);
    }

    /// The config file was re-read: `error` is `None` when it was applied, else why it
    /// was refused (the running config stays).
    pub fn config_reloaded(&self, error: Option<String>) {
        let mut inner = self.lock();
        let at_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        inner.config.last_reload_at_unix = Some(at_unix);
        match error {
            None => {
                inner.config.reloads += 1;
                inner.config.last_error = None;
            }
            Some(e) => {
                inner.config.failures += 1;
                inner.config.last_error = Some(e);
            }
        }
    }
}

/// A service, for the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSummary {
    pub service: String,
    /// Servers applied; `None` before the first apply.
    pub servers: Option<usize>,
    pub source: Option<Source>,
    /// Seconds the source has been unreachable; `None` while fresh.
    pub stale_seconds: Option<f64>,
    /// The etcd watch (state, revision), for etcd discovery.
    pub etcd: Option<(WatchState, i64)>,
    /// Servers HAProxy refuses, left out.
    pub quarantined: usize,
}

/// The config file re-read on SIGHUP.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigStatus {
    /// Reloads applied.
    pub reloads: u64,
    /// Reloads refused (the running config stayed).
    pub failures: u64,
    /// When the file was last re-read; `null` before the first SIGHUP.
    pub last_reload_at_unix: Option<f64>,
    /// Why the last re-read file was refused; `null` once one is applied.
    pub last_error: Option<String>,
}
