//! What synapse believes, for operators: per service, the servers HAProxy should have,
//! where they came from, how and when they were last applied, and the etcd watch's state;
//! for the outputs, the last apply and reload; and readiness. Recorded by the watchers,
//! the per-service forwarding task in [`crate::run_with`] and the reconciler, all through
//! [`Counters::services`](crate::Counters::services); served as the admin endpoint's
//! `/status` ([`ServiceStates::snapshot`]) and read by the metrics collector.
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
use crate::haproxy::Applied;

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

impl ApplyMethod {
    fn of(haproxy: Option<&Applied>) -> Self {
        match haproxy {
            None => Self::Written,
            Some(a) if a.reloaded => Self::Reload,
            Some(a) if a.reload_pending => Self::ReloadDeferred,
            Some(a) if a.runtime_commands > 0 => Self::Runtime,
            Some(a) if a.written => Self::Written,
            Some(_) => Self::Unchanged,
        }
    }
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

#[derive(Debug, Clone)]
struct Event {
    method: ApplyMethod,
    at: SystemTime,
    instant: Instant,
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
struct EtcdWatch {
    state: WatchState,
    revision: i64,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct ServiceState {
    /// The servers as last applied; `None` before the first apply.
    servers: Option<BackendSet>,
    source: Option<Source>,
    /// The source of the set the reconciler is about to apply.
    resolved: Option<Source>,
    /// Whether the watcher's last published set is fresh; `None` before it published.
    fresh: Option<bool>,
    stale_since: Option<Instant>,
    /// The first unapplied change received since the reconciler last looked.
    pending: Option<Instant>,
    /// Changes the reconciler has read and not yet applied.
    in_flight: Option<Instant>,
    last_change: Option<Event>,
    etcd: Option<EtcdWatch>,
    /// The mass-removal guard: enabled, and when its hold ends while it holds.
    guard: Option<(bool, Option<Instant>)>,
}

#[derive(Debug, Default)]
struct Inner {
    services: BTreeMap<ServiceName, ServiceState>,
    /// Changes applied to the file whose reload is deferred, with their stamps.
    awaiting_reload: BTreeMap<ServiceName, Option<Instant>>,
    reload_pending: bool,
    last_apply: Option<Event>,
    last_reload: Option<Event>,
    /// Servers HAProxy refuses, per service: server name → HAProxy's error line.
    quarantined: BTreeMap<ServiceName, BTreeMap<String, String>>,
    config: ConfigStatus,
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

    /// True once every service had its first complete set and the outputs took it.
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The propagation delay histogram (registered by `crate::metrics`).
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

    /// The outputs now hold `desired` for these services (the others are unchanged;
    /// `haproxy`: what the HAProxy output did).
    pub fn applied<'a>(
        &self,
        desired: impl IntoIterator<Item = (&'a ServiceName, &'a BackendSet)>,
        haproxy: Option<&Applied>,
    ) {
        let method = ApplyMethod::of(haproxy);
        let reload_pending = haproxy.is_some_and(|a| a.reload_pending);
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

    /// One line per service, for the metrics.
    /// Replaces the quarantined servers (see `haproxy::quarantine`).
    pub fn set_quarantined(&self, q: BTreeMap<ServiceName, BTreeMap<String, String>>) {
        self.lock().quarantined = q;
    }

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

    /// The `/status` document.
    pub fn snapshot(&self) -> Status {
        let now = Instant::now();
        let inner = self.lock();
        let services = inner
            .services
            .iter()
            .map(|(name, s)| {
                let status = ServiceStatus {
                    source: s.source,
                    fresh: s.fresh,
                    stale_seconds: s.stale_since.map(|t| (now - t).as_secs_f64()),
                    servers: s
                        .servers
                        .iter()
                        .flatten()
                        .map(|b| ServerStatus {
                            name: b.server_name(),
                            host: b.host.to_string(),
                            port: b.port.get(),
                            backup: b.is_backup(),
                            weight: b.weight.map(common::Weight::get),
                        })
                        .collect(),
                    applied: s.servers.is_some(),
                    quarantined: inner
                        .quarantined
                        .get(name)
                        .into_iter()
                        .flatten()
                        .map(|(name, error)| QuarantinedStatus {
                            name: name.clone(),
                            error: error.clone(),
                        })
                        .collect(),
                    last_change: s.last_change.as_ref().map(|e| e.status(now)),
                    etcd: s.etcd.as_ref().map(|w| EtcdStatus {
                        state: w.state,
                        revision: w.revision,
                        last_error: w.last_error.clone(),
                    }),
                    guard: s.guard.map(|(enabled, until)| GuardStatus {
                        enabled,
                        holding: until.is_some(),
                        hold_seconds_left: until.map(|t| (t - now.min(t)).as_secs_f64()),
                    }),
                };
                (name.to_string(), status)
            })
            .collect();
        Status {
            ready: self.is_ready(),
            services,
            outputs: OutputStatus {
                last_apply: inner.last_apply.as_ref().map(|e| e.status(now)),
                last_reload: inner.last_reload.as_ref().map(|e| e.status(now)),
                reload_pending: inner.reload_pending,
            },
            config: inner.config.clone(),
        }
    }
}

impl Event {
    fn status(&self, now: Instant) -> EventStatus {
        EventStatus {
            method: self.method,
            at_unix: self
                .at
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            seconds_ago: (now - self.instant).as_secs_f64(),
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

/// The `/status` document.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Every service had its first complete set and the outputs took it.
    pub ready: bool,
    pub services: BTreeMap<String, ServiceStatus>,
    pub outputs: OutputStatus,
    /// Config reloads (SIGHUP).
    pub config: ConfigStatus,
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

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// Where the servers came from; `null` before the first apply.
    pub source: Option<Source>,
    /// The watcher's source answers now; `null` before its first complete set.
    pub fresh: Option<bool>,
    /// How long the source has been unreachable; `null` while fresh.
    pub stale_seconds: Option<f64>,
    /// Whether `servers` has been applied at least once.
    pub applied: bool,
    /// The servers HAProxy (and file_output) should have, as last applied.
    pub servers: Vec<ServerStatus>,
    /// Servers HAProxy refuses (`haproxy -c`, or the runtime API and then the check),
    /// left out of haproxy.cfg until their registration changes.
    pub quarantined: Vec<QuarantinedStatus>,
    /// The last apply that changed this service's servers.
    pub last_change: Option<EventStatus>,
    pub etcd: Option<EtcdStatus>,
    /// The mass-removal guard; `null` before the first apply.
    pub guard: Option<GuardStatus>,
}

/// The mass-removal guard of one service.
#[derive(Debug, Clone, Serialize)]
pub struct GuardStatus {
    pub enabled: bool,
    /// Holding the last good set after most servers vanished at once.
    pub holding: bool,
    /// Seconds until the hold ends; `null` while not holding.
    pub hold_seconds_left: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuarantinedStatus {
    /// HAProxy's server name, `<name>_<host>:<port>`.
    pub name: String,
    /// HAProxy's error line about it.
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    /// HAProxy's server name, `<name>_<host>:<port>`.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub backup: bool,
    pub weight: Option<u16>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventStatus {
    pub method: ApplyMethod,
    /// Wall-clock time, seconds since the Unix epoch.
    pub at_unix: f64,
    pub seconds_ago: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EtcdStatus {
    pub state: WatchState,
    /// The list's revision or the last event's, whichever is later.
    pub revision: i64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputStatus {
    pub last_apply: Option<EventStatus>,
    pub last_reload: Option<EventStatus>,
    /// A reload is owed and waits for `restart_interval`.
    pub reload_pending: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::tests_support::backend;
    use crate::config::Config;
    use std::time::Duration;

    fn service(extra: &str) -> ServiceConfig {
        let text = format!(
            r#"{{"services": {{"web": {{"discovery": {{"method": "etcd"}}{extra}}}}},
                "file_output": {{"output_directory": "/tmp/x"}}}}"#
        );
        Config::parse(&text, None)
            .unwrap()
            .services
            .into_values()
            .next()
            .unwrap()
    }

    fn found(fresh: bool, set: &BackendSet) -> Discovered {
        Discovered {
            backends: set.clone(),
            fresh,
            origin: Origin::Etcd,
            revision: None,
        }
    }

    #[test]
    fn the_source_traces_each_server() {
        let svc = service(
            r#", "default_servers": [{"name": "d", "host": "10.0.0.9", "port": 80}],
                "backend_port_override": 8080"#,
        );
        let a = backend("a", "10.0.0.1", 80);
        let a_overridden = backend("a", "10.0.0.1", 8080);
        let d = backend("d", "10.0.0.9", 80);
        let discovered: BackendSet = [a.clone()].into();
        let of = |d: &Discovered, set: &[&crate::backends::Backend], over| {
            Source::of(&svc, d, &set.iter().map(|b| (*b).clone()).collect(), over)
        };
        // Discovered (port overridden), plus defaults kept beside them: etcd.
        assert_eq!(
            of(&found(true, &discovered), &[&a_overridden], false),
            Source::Etcd
        );
        assert_eq!(
            of(&found(true, &discovered), &[&a_overridden, &d], false),
            Source::Etcd
        );
        // Nothing discovered, the defaults route: static.
        assert_eq!(
            of(&found(true, &BackendSet::new()), &[&d], false),
            Source::Static
        );
        // Nothing discovered, nothing routed: an empty etcd set.
        assert_eq!(
            of(&found(true, &BackendSet::new()), &[], false),
            Source::Etcd
        );
        // A server discovery no longer has (use_previous_backends, a held removal).
        assert_eq!(
            of(&found(true, &BackendSet::new()), &[&a], false),
            Source::LastKnownGood
        );
        // The source is away, or its answer was over max_servers.
        assert_eq!(
            of(&found(false, &discovered), &[&a], false),
            Source::LastKnownGood
        );
        assert_eq!(
            of(&found(true, &discovered), &[&a], true),
            Source::LastKnownGood
        );
        let ec2 = Discovered {
            origin: Origin::Ec2,
            ..found(true, &discovered)
        };
        assert_eq!(of(&ec2, &[&a], false), Source::Ec2);
    }

    fn applied(reloaded: bool, reload_pending: bool, runtime_commands: usize) -> Applied {
        Applied {
            written: true,
            runtime_commands,
            reloaded,
            reload_pending,
        }
    }

    fn web() -> ServiceName {
        ServiceName::new("web").unwrap()
    }

    fn desired(set: &BackendSet) -> BTreeMap<ServiceName, BackendSet> {
        [(web(), set.clone())].into()
    }

    #[tokio::test(start_paused = true)]
    async fn propagation_is_timed_from_receipt_to_apply() {
        let states = ServiceStates::default();
        let one: BackendSet = [backend("a", "10.0.0.1", 80)].into();
        let two: BackendSet = [backend("a", "10.0.0.1", 80), backend("b", "10.0.0.2", 80)].into();
        states.published(&web(), Some(&found(true, &one)));
        tokio::time::advance(Duration::from_millis(30)).await;
        states.begin();
        // A change received after `begin` belongs to the next apply.
        tokio::time::advance(Duration::from_millis(20)).await;
        states.published(&web(), Some(&found(true, &two)));
        states.applied(&desired(&one), Some(&applied(false, false, 1)));
        assert!(states.is_ready());
        assert_eq!(states.propagation().count(), 1);
        assert!((states.propagation().sum() - 0.05).abs() < 1e-9);
        let status = states.snapshot();
        let change = status.services["web"].last_change.clone().unwrap();
        assert_eq!(change.method, ApplyMethod::Runtime);
        assert_eq!(status.services["web"].servers.len(), 1);

        // The second change: its reload is deferred, so it is timed when the reload is done.
        tokio::time::advance(Duration::from_millis(10)).await;
        states.begin();
        states.applied(&desired(&two), Some(&applied(false, true, 0)));
        assert_eq!(states.propagation().count(), 1);
        assert_eq!(states.reloads_rate_limited(), 1);
        // Still deferred on the next pass: the same episode.
        states.applied(&desired(&two), Some(&applied(false, true, 0)));
        assert_eq!(states.reloads_rate_limited(), 1);
        assert!(states.snapshot().outputs.reload_pending);
        tokio::time::advance(Duration::from_millis(300)).await;
        states.begin();
        states.applied(&desired(&two), Some(&applied(true, false, 0)));
        assert_eq!(states.propagation().count(), 2);
        assert!((states.propagation().sum() - 0.05 - 0.31).abs() < 1e-9);
        let status = states.snapshot();
        assert_eq!(
            status.services["web"].last_change.clone().unwrap().method,
            ApplyMethod::Reload
        );
        assert_eq!(
            status.outputs.last_reload.unwrap().method,
            ApplyMethod::Reload
        );
        assert!(!status.outputs.reload_pending);

        // A freshness flip moves no server: no sample, but the staleness shows.
        states.published(&web(), Some(&found(false, &two)));
        tokio::time::advance(Duration::from_secs(2)).await;
        states.begin();
        states.applied(&desired(&two), Some(&applied(false, false, 0)));
        assert_eq!(states.propagation().count(), 2);
        let summary = &states.summaries()[0];
        assert_eq!(summary.stale_seconds, Some(2.0));
        assert_eq!(summary.servers, Some(2));
        states.published(&web(), Some(&found(true, &two)));
        assert_eq!(states.summaries()[0].stale_seconds, None);
    }

    #[tokio::test(start_paused = true)]
    async fn not_ready_while_the_first_reload_waits_and_a_failed_apply_keeps_stamps() {
        let states = ServiceStates::default();
        let one: BackendSet = [backend("a", "10.0.0.1", 80)].into();
        states.published(&web(), Some(&found(true, &one)));
        states.begin();
        // The apply failed (no `applied`); the stamp stays for the retry.
        tokio::time::advance(Duration::from_millis(200)).await;
        states.begin();
        states.applied(&desired(&one), Some(&applied(false, true, 0)));
        assert!(!states.is_ready());
        states.applied(&desired(&one), Some(&applied(true, false, 0)));
        assert!(states.is_ready());
        assert_eq!(states.propagation().count(), 1);
        assert!((states.propagation().sum() - 0.2).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_runtime_change_is_not_relabelled_by_an_earlier_deferred_reload() {
        let states = ServiceStates::default();
        let one: BackendSet = [backend("a", "10.0.0.1", 80)].into();
        let two: BackendSet = [backend("a", "10.0.0.1", 80), backend("b", "10.0.0.2", 80)].into();
        states.published(&web(), Some(&found(true, &one)));
        states.begin();
        states.applied(&desired(&one), Some(&applied(false, true, 0)));
        // The file the deferred reload waited for is live by the time b arrives, and b
        // goes out by the runtime API in the same apply.
        tokio::time::advance(Duration::from_millis(100)).await;
        states.published(&web(), Some(&found(true, &two)));
        states.begin();
        states.applied(&desired(&two), Some(&applied(false, false, 1)));
        let status = states.snapshot();
        assert_eq!(
            status.services["web"].last_change.clone().unwrap().method,
            ApplyMethod::Runtime
        );
    }

    #[test]
    fn the_etcd_watch_state_is_kept_per_service() {
        let states = ServiceStates::default();
        states.etcd_listed(&web(), 7);
        states.etcd_watching(&web(), 9);
        let s = states.snapshot();
        let etcd = s.services["web"].etcd.clone().unwrap();
        assert_eq!((etcd.state, etcd.revision), (WatchState::Watching, 9));
        states.etcd_interrupted(&web(), "connection refused");
        let s = states.snapshot();
        let etcd = s.services["web"].etcd.clone().unwrap();
        assert_eq!(etcd.state, WatchState::Retrying);
        assert_eq!(etcd.revision, 9);
        assert_eq!(etcd.last_error.as_deref(), Some("connection refused"));
        let doc = serde_json::to_value(&s).unwrap();
        assert_eq!(doc["services"]["web"]["etcd"]["state"], "retrying");
        assert_eq!(doc["ready"], false);
    }
}
