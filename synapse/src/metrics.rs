//! The Prometheus metrics synapse exposes on the admin endpoint's `/metrics`.
//!
//! [`Counters`] stays the recording API (plain atomics the watchers, the reconciler and
//! the HAProxy output count into); a collector reads them, and the per-service state in
//! [`ServiceStates`](crate::counters::services::ServiceStates), at each scrape. Names follow the
//! Prometheus conventions: the `synapse_` prefix, base units (`_seconds`), `_total` on
//! counters (added by the encoder); state gauges list every state with 0 or 1, so an
//! alert on a state that is absent still has a series. `docs/operations.md` says what
//! each means and which alerts to set.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::counters::services::{Source, WatchState};
use crate::counters::Counters;

/// A registry with every synapse metric, reading `counters` at each scrape.
pub fn registry(counters: Arc<Counters>) -> Registry {
    let mut r = Registry::with_prefix("synapse");
    r.register(
        "build",
        "The running synapse's version (always 1)",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    r.register(
        "propagation_delay_seconds",
        "Time from synapse receiving a change of a service's servers (its watcher published \
         the set read from an etcd event, a list or an EC2 poll) to the outputs holding it \
         (runtime commands accepted, reload confirmed, or files written); includes debounce \
         and reloads deferred by restart_interval, excludes etcd's commit-to-watch delivery",
        counters.services.propagation().clone(),
    );
    r.register_collector(Box::new(CountersCollector(counters)));
    r
}

/// Encodes [`Counters`] and the per-service state at scrape time.
#[derive(Debug)]
struct CountersCollector(Arc<Counters>);

/// A plain counter: name (without `_total`), help, value.
fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

/// A counter family: one series per label set.
fn counters<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Vec<(&'a str, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge family: one series per label set.
fn gauges<'a, V: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Vec<(&'a str, String)>, V)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn get(c: &AtomicU64) -> u64 {
    Counters::get(c)
}

impl Collector for CountersCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        let e = &mut e;
        let services = c.services.summaries();
        let service = |name: &str| vec![("service", name.to_owned())];

        // Per service: what it routes to and where that came from.
        gauges(
            e,
            "service_backends",
            "Servers the service routes to, as last applied to the outputs",
            services
                .iter()
                .filter_map(|s| Some((service(&s.service), i64::try_from(s.servers?).ok()?))),
        )?;
        gauges(
            e,
            "service_source",
            "1 for where the service's applied servers came from: etcd, ec2, static \
             (default_servers), mixed (a multi union), last_known_good (the source is away \
             or its answer was held back); 0 for the others",
            services
                .iter()
                .filter_map(|s| {
                    let current = s.source?;
                    Some(Source::ALL.into_iter().map(move |src| {
                        let labels = vec![
                            ("service", s.service.clone()),
                            ("source", src.as_str().to_owned()),
                        ];
                        (labels, i64::from(src == current))
                    }))
                })
                .flatten(),
        )?;
        gauges(
            e,
            "service_stale_seconds",
            "How long the service's discovery source has been unreachable (its watcher \
             keeps the last set it read); 0 while it answers",
            services
                .iter()
                .map(|s| (service(&s.service), s.stale_seconds.unwrap_or(0.0))),
        )?;
        gauges(
            e,
            "service_quarantined_servers",
            "Servers of the service HAProxy refuses (haproxy -c or the runtime API), left \
             out of haproxy.cfg until their registration changes; listed in /status",
            services
                .iter()
                .filter_map(|s| Some((service(&s.service), i64::try_from(s.quarantined).ok()?))),
        )?;
        gauges(
            e,
            "ready",
            "1 once every service had its first complete set and the outputs applied it",
            [(Vec::new(), i64::from(c.services.is_ready()))],
        )?;

        // etcd.
        let etcd: Vec<_> = services
            .iter()
            .filter_map(|s| s.etcd.map(|w| (s.service.as_str(), w)))
            .collect();
        gauges(
            e,
            "etcd_watch_up",
            "1 while the service's etcd watch stream is open and answering",
            etcd.iter().map(|(name, (state, _))| {
                (service(name), i64::from(*state == WatchState::Watching))
            }),
        )?;
        gauges(
            e,
            "etcd_revision",
            "The etcd revision the service's set is current to (its last list, or the last \
             event seen under its prefix)",
            etcd.iter()
                .map(|(name, (_, revision))| (service(name), *revision)),
        )?;
        counter(
            e,
            "etcd_relists",
            "Full lists of an etcd prefix: at start, after a compaction or a revision going \
             backwards, and every resync_interval",
            get(&c.relists),
        )?;
        counter(
            e,
            "etcd_watch_restarts",
            "etcd lists or watch streams that failed (error, silence, cancel) and were retried",
            get(&c.watch_restarts),
        )?;

        // ZooKeeper sessions, by ensemble (issue 20).
        let zk = c.zk_sessions();
        let ensemble = |name: &str| vec![("zk", name.to_owned())];
        gauges(
            e,
            "zk_connected",
            "1 while synapse's ZooKeeper session to the ensemble is connected",
            zk.iter()
                .map(|(name, s)| (ensemble(name), i64::from(s.connected))),
        )?;
        gauges(
            e,
            "zk_session_age_seconds",
            "Seconds since the current ZooKeeper session was established (resets on expiry)",
            zk.iter().filter_map(|(name, s)| {
                Some((ensemble(name), s.session_started?.elapsed().as_secs_f64()))
            }),
        )?;
        for (metric, help, value) in [
            (
                "zk_sessions",
                "ZooKeeper sessions established: the first, and one after each expiry",
                (|s: &crate::counters::ZkSessionInfo| s.sessions) as fn(&_) -> u64,
            ),
            (
                "zk_session_expirations",
                "ZooKeeper sessions found expired (every watch of theirs is re-read)",
                |s| s.expirations,
            ),
            (
                "zk_rereads",
                "Full re-reads of a service's ZooKeeper directory: at start, after a \
                 reconnect or expiry, and every resync_interval",
                |s| s.rereads,
            ),
            (
                "zk_watch_interruptions",
                "ZooKeeper watches interrupted (connection lost, session expired, a read \
                 failed) and retried",
                |s| s.interruptions,
            ),
            (
                "zk_over_cap",
                "Times a ZooKeeper directory held more than max_keys children; the last \
                 good set was kept",
                |s| s.over_cap,
            ),
        ] {
            counters(
                e,
                metric,
                help,
                zk.iter().map(|(name, s)| (ensemble(name), value(s))),
            )?;
        }

        // Discovery.
        counters(
            e,
            "rejected_registrations",
            "Registrations skipped, by reason (invalid JSON, name, address, options, \
             identity mismatch, over_limit...); each bad value is counted once",
            c.rejected()
                .into_iter()
                .map(|(reason, n)| (vec![("reason", reason.to_owned())], n)),
        )?;
        counter(
            e,
            "over_limit",
            "Times a service's discovery exceeded max_servers and its last set was kept",
            get(&c.over_limit),
        )?;
        counter(
            e,
            "etcd_over_cap",
            "Times an etcd prefix held more than max_keys keys or max_bytes bytes; the last \
             good set was kept and the watch retried",
            get(&c.registry_over_cap),
        )?;
        counter(
            e,
            "discovery_source_switches",
            "Times a multi discovery switched the source it publishes from",
            get(&c.source_switches),
        )?;
        counter(
            e,
            "mass_removal_trips",
            "Times the mass-removal guard held a service's servers after most vanished at once",
            get(&c.mass_removal_trips),
        )?;
        gauges(
            e,
            "mass_removal_holding",
            "Services whose last good set the mass-removal guard holds now",
            [(Vec::new(), get(&c.mass_removal_holding))],
        )?;

        // Outputs.
        counter(
            e,
            "config_writes",
            "haproxy.cfg files written (after a passing check, when checks are on)",
            get(&c.config_writes),
        )?;
        counter(
            e,
            "config_check_failures",
            "Candidate haproxy.cfg files refused by the check command (the old file stays)",
            get(&c.check_failures),
        )?;
        counter(
            e,
            "write_failures",
            "Failed writes of haproxy.cfg or file_output files",
            get(&c.write_failures),
        )?;
        counter(
            e,
            "file_output_writes",
            "file_output files written or removed",
            get(&c.file_output_writes),
        )?;
        counters(
            e,
            "haproxy_reloads",
            "HAProxy reloads: ok (done and, where it can be, confirmed), failed (refused or \
             unconfirmed; retried), rate_limited (a reload owed had to wait for \
             restart_interval; changes meanwhile join it)",
            [
                ("ok", get(&c.reloads)),
                ("failed", get(&c.reload_failures)),
                ("rate_limited", c.services.reloads_rate_limited()),
            ]
            .map(|(result, n)| (vec![("result", result.to_owned())], n)),
        )?;
        counters(
            e,
            "config_reloads",
            "The config file re-read on SIGHUP: ok (applied), refused (invalid, or a key \
             that needs a restart changed; the running config stays, /status says why)",
            [
                ("ok", get(&c.config_reloads)),
                ("refused", get(&c.config_reload_failures)),
            ]
            .map(|(result, n)| (vec![("result", result.to_owned())], n)),
        )?;
        counters(
            e,
            "haproxy_runtime_commands",
            "HAProxy runtime-API commands: ok (accepted), failed (refused, or the socket \
             failed; each falls back to a reload)",
            [
                ("ok", get(&c.runtime_commands)),
                ("failed", get(&c.runtime_failures)),
            ]
            .map(|(result, n)| (vec![("result", result.to_owned())], n)),
        )?;
        counter(
            e,
            "haproxy_starts",
            "Managed mode: HAProxy starts (the first and every restart)",
            get(&c.haproxy_starts),
        )?;
        counter(
            e,
            "haproxy_exits",
            "Managed mode: HAProxy exits synapse did not ask for",
            get(&c.haproxy_exits),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::{BackendSet, Discovered, Origin};
    use crate::counters::services::ApplyMethod;
    use common::ServiceName;

    #[test]
    fn exposes_counters_and_per_service_state() {
        let counters = Arc::new(Counters::default());
        Counters::inc(&counters.reloads);
        counters.reject("invalid_json");
        counters.reject("invalid_json");
        let web = ServiceName::new("web").unwrap();
        let set: BackendSet = [crate::backends::tests_support::backend("a", "10.0.0.1", 80)].into();
        let d = Discovered {
            backends: set.clone(),
            fresh: true,
            origin: Origin::Etcd,
            revision: None,
        };
        let config = crate::config::Config::parse(
            r#"{"services": {"web": {"discovery": {"method": "etcd"}}},
                "file_output": {"output_directory": "/tmp/x"}}"#,
            None,
        )
        .unwrap();
        counters.services.published(&web, Some(&d));
        counters.services.etcd_watching(&web, 42);
        counters.services.begin();
        counters
            .services
            .resolved(&config.services[&web], &d, &set, false);
        counters
            .services
            .applied_by([(&web, &set)], ApplyMethod::Written, false);

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry(counters)).unwrap();
        for line in [
            r#"synapse_service_backends{service="web"} 1"#,
            r#"synapse_service_source{service="web",source="etcd"} 1"#,
            r#"synapse_service_source{service="web",source="last_known_good"} 0"#,
            r#"synapse_service_stale_seconds{service="web"} 0.0"#,
            r#"synapse_etcd_watch_up{service="web"} 1"#,
            r#"synapse_etcd_revision{service="web"} 42"#,
            r#"synapse_rejected_registrations_total{reason="invalid_json"} 2"#,
            r#"synapse_haproxy_reloads_total{result="ok"} 1"#,
            r#"synapse_haproxy_reloads_total{result="rate_limited"} 0"#,
            "synapse_propagation_delay_seconds_count 1",
            "synapse_ready 1",
            "synapse_config_writes_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(
            text.contains("# TYPE synapse_haproxy_reloads counter"),
            "{text}"
        );
        assert!(text.contains(&format!(
            "synapse_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
