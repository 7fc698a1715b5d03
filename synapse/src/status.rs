//! The admin endpoint's `/status` document: per service, the servers HAProxy should have,
//! where they came from, how and when they were last applied, and the etcd watch's state;
//! for the outputs, the last apply and reload; readiness; config reloads. Built by
//! [`ServiceStates::snapshot`] from the live state the watchers, the per-service
//! forwarding task and the reconciler record (`crate::counters::services`, where the
//! propagation delay is measured); also where the HAProxy output's report of an apply
//! becomes an [`ApplyMethod`] ([`ServiceStates::applied`]).

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use common::ServiceName;
use serde::Serialize;
use tokio::time::Instant;

use crate::backends::BackendSet;
pub use crate::counters::services::{ApplyMethod, ConfigStatus, ServiceStates, Source, WatchState};
use crate::counters::services::{Event, Inner};
use crate::haproxy::Applied;

impl ServiceStates {
    /// The outputs now hold `desired` for these services (the others are unchanged;
    /// `haproxy`: what the HAProxy output did, `None` without one).
    pub fn applied<'a>(
        &self,
        desired: impl IntoIterator<Item = (&'a ServiceName, &'a BackendSet)>,
        haproxy: Option<&Applied>,
    ) {
        let reload_pending = haproxy.is_some_and(|a| a.reload_pending);
        self.applied_by(desired, apply_method(haproxy), reload_pending);
    }

    /// The `/status` document.
    pub fn snapshot(&self) -> Status {
        let now = Instant::now();
        self.inspect(|inner| Self::document(inner, self.is_ready(), now))
    }

    fn document(inner: &Inner, ready: bool, now: Instant) -> Status {
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
                    last_change: s.last_change.as_ref().map(|e| event_status(e, now)),
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
            ready,
            services,
            outputs: OutputStatus {
                last_apply: inner.last_apply.as_ref().map(|e| event_status(e, now)),
                last_reload: inner.last_reload.as_ref().map(|e| event_status(e, now)),
                reload_pending: inner.reload_pending,
            },
            config: inner.config.clone(),
        }
    }
}

/// How an apply reached the outputs, from what the HAProxy output did.
fn apply_method(haproxy: Option<&Applied>) -> ApplyMethod {
    match haproxy {
        None => ApplyMethod::Written,
        Some(a) if a.reloaded => ApplyMethod::Reload,
        Some(a) if a.reload_pending => ApplyMethod::ReloadDeferred,
        Some(a) if a.runtime_commands > 0 => ApplyMethod::Runtime,
        Some(a) if a.written => ApplyMethod::Written,
        Some(_) => ApplyMethod::Unchanged,
    }
}

fn event_status(e: &Event, now: Instant) -> EventStatus {
    EventStatus {
        method: e.method,
        at_unix: e
            .at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        seconds_ago: (now - e.instant).as_secs_f64(),
    }
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
    use crate::backends::{Discovered, Origin};
    use crate::config::{Config, ServiceConfig};
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
