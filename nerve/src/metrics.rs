//! The Prometheus metrics nerve exposes on the admin endpoint's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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

/// Handles to every metric; cheap to clone (each is shared).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub check_runs: Family<CheckLabels, Counter>,
    pub service_healthy: Family<ServiceLabels, Gauge>,
    pub service_reported: Family<ServiceLabels, Gauge>,
    pub health_transitions: Family<ServiceLabels, Counter>,
    pub reports_throttled: Family<ThrottleLabels, Counter>,
    pub etcd_requests: Family<OpLabels, Counter>,
    pub etcd_errors: Family<OpLabels, Counter>,
    pub etcd_connected: Gauge,
    pub registrations: Gauge,
}

impl Metrics {
    /// The metrics, registered in a new registry with the `nerve_` prefix.
    pub fn new() -> (Self, Registry) {
        let m = Self::default();
        let mut r = Registry::with_prefix("nerve");
        r.register(
            "check_runs",
            "Health check probes run, by result",
            m.check_runs.clone(),
        );
        r.register(
            "service_healthy",
            "1 while all of a service's checks are up",
            m.service_healthy.clone(),
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
}
