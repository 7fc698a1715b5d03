//! airbnb/Yelp nerve configs as they are written: the rewrite of a parsed config value
//! into our shape before serde reads it (see `common::upstream`).
//!
//! - Upstream keys that do nothing here are removed with a warning ([`TOP_IGNORED`],
//!   [`SERVICE_IGNORED`]).
//! - `service_checks` (the 2013 name of `services`) is read as `services`.
//! - A service that reports to ZooKeeper (`reporter_type: zookeeper`, or upstream's
//!   default reporter with `zk_hosts`/`zk_path`) or through another reporter of upstream's
//!   that this build lacks, or that uses an upstream check type this build lacks, is
//!   taken out, and the file is refused with one line naming them.

use common::config::join_path;
use common::upstream::{object_mut, Compat, IgnoredKey};
use serde_json::Value;

/// Reporters of upstream nerve (and its published pull requests) this build lacks.
pub const UPSTREAM_REPORTERS: &[&str] = &["zookeeper", "serf", "file", "mock"];

/// Check types of upstream nerve this build lacks.
pub const UPSTREAM_CHECKS: &[&str] = &["base"];

pub const TOP_IGNORED: &[IgnoredKey] = &[
    IgnoredKey {
        key: "statsd",
        advice: "upstream's StatsD metrics; nerve serves Prometheus metrics at /metrics on \
                 admin_listen",
    },
    IgnoredKey {
        key: "prometheus",
        advice: "Yelp's Prometheus exporter settings; nerve serves /metrics on admin_listen",
    },
    IgnoredKey {
        key: "max_repeated_report_failures",
        advice: "upstream relaunched a reporter after this many failed reports; nerve retries \
                 etcd with backoff and never gives up (see etcd.request_timeout, lease_ttl)",
    },
    IgnoredKey {
        key: "machine_check",
        advice: "the 2013 machine (cpuidle) check, removed upstream; there is no equivalent",
    },
];

pub const SERVICE_IGNORED: &[IgnoredKey] = &[
    IgnoredKey {
        key: "check_mocked",
        advice: "upstream's load-test switch that skipped the checks; use a `noop` check",
    },
    IgnoredKey {
        key: "zk_cluster_name",
        advice: "Yelp's name of the ZooKeeper cluster; nerve registers in etcd",
    },
    IgnoredKey {
        key: "load_test_concurrency",
        advice: "upstream's load-test cloning of a service; define the copies as services",
    },
];

/// Rewrites a whole nerve config value.
pub fn normalize_file(value: &mut Value, compat: &mut Compat) {
    let Some(top) = value.as_object_mut() else {
        return;
    };
    compat.take_ignored(top, "", TOP_IGNORED);
    if !top.contains_key("services") {
        if let Some(old) = top.remove("service_checks") {
            top.insert("services".to_owned(), old);
        }
    }
    if let Some(services) = object_mut(top, "services") {
        let names: Vec<String> = services.keys().cloned().collect();
        for name in names {
            let path = join_path("services", &name);
            let keep = services
                .get_mut(&name)
                .is_none_or(|svc| normalize_service(svc, &path, compat));
            if !keep {
                services.remove(&name);
            }
        }
    }
}

/// Rewrites one service (inline, or a `service_conf_dir` file). `false`: leave it out,
/// for the reason recorded in `compat`.
pub fn normalize_service(value: &mut Value, path: &str, compat: &mut Compat) -> bool {
    let Some(svc) = value.as_object_mut() else {
        return true;
    };
    let reporter = svc.get("reporter_type").and_then(Value::as_str);
    let zk_keys = svc.contains_key("zk_hosts") || svc.contains_key("zk_path");
    let unsupported = match reporter {
        Some(r) if UPSTREAM_REPORTERS.contains(&r) => Some(r.to_owned()),
        // Upstream's default reporter is ZooKeeper; ours is etcd.
        None if zk_keys => Some("zookeeper".to_owned()),
        _ => None,
    };
    if let Some(r) = unsupported {
        let at = if reporter.is_some() {
            "reporter_type"
        } else if svc.contains_key("zk_hosts") {
            "zk_hosts"
        } else {
            "zk_path"
        };
        compat.unsupported(join_path(path, at), format!("the `{r}` reporter"));
        return false;
    }
    compat.take_ignored(svc, path, SERVICE_IGNORED);
    let mut supported = true;
    if let Some(Value::Array(checks)) = svc.get("checks") {
        for (i, check) in checks.iter().enumerate() {
            if let Some(kind) = check.get("type").and_then(Value::as_str) {
                if UPSTREAM_CHECKS.contains(&kind) {
                    compat.unsupported(
                        join_path(path, &format!("checks.{i}.type")),
                        format!("`{kind}` checks"),
                    );
                    supported = false;
                }
            }
        }
    }
    supported
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn zookeeper_is_upstreams_default_reporter() {
        let mut v = json!({"services": {
            "a": {"zk_hosts": ["z:2181"], "zk_path": "/x", "check_mocked": true},
            "b": {"reporter_type": "etcd", "zk_cluster_name": "c"},
            "c": {"reporter_type": "serf"}},
            "statsd": {}, "prometheus": {}});
        let mut c = Compat::default();
        normalize_file(&mut v, &mut c);
        assert_eq!(v, json!({"services": {"b": {"reporter_type": "etcd"}}}));
        let paths: Vec<&str> = c.unsupported.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["services.a.zk_hosts", "services.c.reporter_type"]);
        let warned: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(
            warned,
            ["statsd", "prometheus", "services.b.zk_cluster_name"]
        );
    }

    #[test]
    fn service_checks_is_the_old_name_of_services() {
        let mut v = json!({"service_checks": {"a": {"host": "h"}}});
        normalize_file(&mut v, &mut Compat::default());
        assert_eq!(v, json!({"services": {"a": {"host": "h"}}}));
        let mut both = json!({"service_checks": {}, "services": {}});
        normalize_file(&mut both, &mut Compat::default());
        assert!(
            both.get("service_checks").is_some(),
            "left for serde to report"
        );
    }
}
