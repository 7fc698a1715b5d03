//! The Prometheus metrics nerve exposes on the admin endpoint's `/metrics`. Names follow
//! the Prometheus conventions: the `nerve_` prefix, base units (`_seconds`), `_total` on
//! counters (added by the encoder). `docs/operations.md` says what each means and which
//! alerts to set.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Check duration buckets (s): a local check takes milliseconds; the top buckets catch
/// checks that run into their timeout.
const CHECK_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

fn check_histogram() -> Histogram {
    Histogram::new(CHECK_BUCKETS)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub service: String,
    /// `ok` or `failed`.
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckDurationLabels {
    pub service: String,
    /// The check's position in the service's `checks` list (`0`, `1`, ...): its name may
    /// be a command line, which does not belong in a label.
    pub check: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub service: String,
    /// `put` or `delete`.
    pub op: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThrottleLabels {
    pub service: String,
    /// `true` when only counted (`shadow_mode`), `false` when the report was held back.
    pub shadow: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// `put`, `delete`, `grant`, `keepalive`, `revoke`, `read`.
    pub op: String,
}

// --- ZooKeeper (issue 20) ---------------------------------------------------------------

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZkLabels {
    /// The ensemble's connect string (`h1:p1,h2:p2`).
    pub zk: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZkOpLabels {
    pub zk: String,
    /// `create`, `set`, `delete`, `mkdir`, `read`.
    pub op: String,
}

/// Handles to every metric; cheap to clone (each is shared).
#[derive(Debug, Clone)]
pub struct Metrics {
    pub check_runs: Family<CheckLabels, Counter>,
    pub check_duration: Family<CheckDurationLabels, Histogram, fn() -> Histogram>,
    pub service_healthy: Family<ServiceLabels, Gauge>,
    pub service_drained: Family<ServiceLabels, Gauge>,
    pub service_reported: Family<ServiceLabels, Gauge>,
    pub health_transitions: Family<ServiceLabels, Counter>,
    pub reports_throttled: Family<ThrottleLabels, Counter>,
    pub registration_writes: Family<WriteLabels, Counter>,
    pub lease_grants: Counter,
    pub lease_losses: Counter,
    pub etcd_requests: Family<OpLabels, Counter>,
    pub etcd_errors: Family<OpLabels, Counter>,
    pub etcd_connected: Gauge,
    pub registrations: Gauge,
    // ZooKeeper (issue 20)
    pub zk_connected: Family<ZkLabels, Gauge>,
    pub zk_sessions: Family<ZkLabels, Counter>,
    pub zk_session_expirations: Family<ZkLabels, Counter>,
    pub zk_requests: Family<ZkOpLabels, Counter>,
    pub zk_errors: Family<ZkOpLabels, Counter>,
    pub zk_registrations: Family<ZkLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            check_runs: Family::default(),
            check_duration: Family::new_with_constructor(check_histogram),
            service_healthy: Family::default(),
            service_drained: Family::default(),
            service_reported: Family::default(),
            health_transitions: Family::default(),
            reports_throttled: Family::default(),
            registration_writes: Family::default(),
            lease_grants: Counter::default(),
            lease_losses: Counter::default(),
            etcd_requests: Family::default(),
            etcd_errors: Family::default(),
            etcd_connected: Gauge::default(),
            registrations: Gauge::default(),
            zk_connected: Family::default(),
            zk_sessions: Family::default(),
            zk_session_expirations: Family::default(),
            zk_requests: Family::default(),
            zk_errors: Family::default(),
            zk_registrations: Family::default(),
        }
    }
}

impl Metrics {
    /// The metrics, registered in a new registry with the `nerve_` prefix.
    pub fn new() -> (Self, Registry) {
        let m = Self::default();
        let mut r = Registry::with_prefix("nerve");
        r.register(
            "build",
            "The running nerve's version (always 1)",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "check_runs",
            "Health check probes run, by result",
            m.check_runs.clone(),
        );
        r.register(
            "check_duration_seconds",
            "How long each health check probe took, timeouts included",
            m.check_duration.clone(),
        );
        r.register(
            "service_healthy",
            "1 while all of a service's checks are up",
            m.service_healthy.clone(),
        );
        r.register(
            "service_drained",
            "1 while a maintenance file reports the service down",
            m.service_drained.clone(),
        );
        r.register(
            "service_reported",
            "1 while nerve wants a service registered (healthy, not drained)",
            m.service_reported.clone(),
        );
        r.register(
            "health_transitions",
            "Service health changes",
            m.health_transitions.clone(),
        );
        r.register(
            "reports_throttled",
            "State-change reports held back (or only counted, in shadow mode) by rate_limiting",
            m.reports_throttled.clone(),
        );
        r.register(
            "registration_writes",
            "Registrations written to etcd (put) or removed (delete), by service",
            m.registration_writes.clone(),
        );
        r.register(
            "lease_grants",
            "Leases granted: the first, and one after each lease loss",
            m.lease_grants.clone(),
        );
        r.register(
            "lease_losses",
            "Times etcd reported nerve's lease gone (expired or revoked); each is followed by a new grant and a put of every registration",
            m.lease_losses.clone(),
        );
        r.register(
            "etcd_requests",
            "etcd requests made, by operation",
            m.etcd_requests.clone(),
        );
        r.register(
            "etcd_errors",
            "etcd requests that failed, by operation",
            m.etcd_errors.clone(),
        );
        r.register(
            "etcd_connected",
            "1 while nerve holds a live lease and its last etcd request succeeded",
            m.etcd_connected.clone(),
        );
        r.register(
            "registrations",
            "Keys nerve currently holds in etcd",
            m.registrations.clone(),
        );
        r.register(
            "zk_connected",
            "1 while nerve's ZooKeeper session to an ensemble is connected",
            m.zk_connected.clone(),
        );
        r.register(
            "zk_sessions",
            "ZooKeeper sessions established, by ensemble: the first, and one after each expiry",
            m.zk_sessions.clone(),
        );
        r.register(
            "zk_session_expirations",
            "ZooKeeper sessions found expired (their ephemeral registrations are gone; nerve creates them again)",
            m.zk_session_expirations.clone(),
        );
        r.register(
            "zk_requests",
            "ZooKeeper requests made, by ensemble and operation",
            m.zk_requests.clone(),
        );
        r.register(
            "zk_errors",
            "ZooKeeper requests that failed, by ensemble and operation",
            m.zk_errors.clone(),
        );
        r.register(
            "zk_registrations",
            "Ephemeral nodes nerve currently holds in a ZooKeeper ensemble",
            m.zk_registrations.clone(),
        );
        (m, r)
    }

    pub fn etcd_request(&self, op: &str) {
        self.etcd_requests
            .get_or_create(&OpLabels { op: op.to_owned() })
            .inc();
    }

    pub fn etcd_error(&self, op: &str) {
        self.etcd_errors
            .get_or_create(&OpLabels { op: op.to_owned() })
            .inc();
    }

    pub fn service(&self, service: &str) -> ServiceLabels {
        ServiceLabels {
            service: service.to_owned(),
        }
    }

    pub fn zk(&self, zk: &str) -> ZkLabels {
        ZkLabels { zk: zk.to_owned() }
    }

    pub fn zk_request(&self, zk: &str, op: &str, ok: bool) {
        let labels = ZkOpLabels {
            zk: zk.to_owned(),
            op: op.to_owned(),
        };
        self.zk_requests.get_or_create(&labels).inc();
        if !ok {
            self.zk_errors.get_or_create(&labels).inc();
        }
    }

    /// Counts a successful registration put or delete.
    pub fn registration_write(&self, service: &str, op: &str) {
        self.registration_writes
            .get_or_create(&WriteLabels {
                service: service.to_owned(),
                op: op.to_owned(),
            })
            .inc();
    }

    /// Records how long check number `check` of `service` took.
    pub fn check_took(&self, service: &str, check: usize, took: Duration) {
        self.check_duration
            .get_or_create(&CheckDurationLabels {
                service: service.to_owned(),
                check: check.to_string(),
            })
            .observe(took.as_secs_f64());
    }
}
