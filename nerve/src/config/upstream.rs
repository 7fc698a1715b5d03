//! airbnb/Yelp nerve configs as they are written: the rewrite of a parsed config value
//! into our shape before serde reads it (see `common::upstream`).
//!
//! - Upstream keys that do nothing here are removed with a warning ([`TOP_IGNORED`],
//!   [`SERVICE_IGNORED`]).
//! - `service_checks` (the 2013 name of `services`) is read as `services`.
//! - A service with `zk_hosts`/`zk_path` and no `reporter_type` reports to ZooKeeper,
//!   upstream's default reporter (ours, without those keys, is etcd).
//! - A service that reports through a reporter of upstream's that this build lacks, or
//!   that uses an upstream check type this build lacks, is taken out, and the file is
//!   refused with one line naming them.

use common::config::join_path;
use common::upstream::{object_mut, Compat, IgnoredKey};
use serde_json::Value;

/// Reporters of upstream nerve (and its published pull requests) this build lacks.
pub const UPSTREAM_REPORTERS: &[&str] = &["serf", "file", "mock"];

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
        advice: "Yelp's name of the ZooKeeper cluster (a label for its tooling); nerve \
                 connects to `zk_hosts`",
    },
    IgnoredKey {
        key: "ttl_seconds",
        advice: "upstream touched persistent nodes this often; nerve registers ephemeral \
                 nodes only, which ZooKeeper removes with the session",
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
    old_zk_path(svc, path, compat);
    let zk_keys = svc.contains_key("zk_hosts") || svc.contains_key("zk_path");
    if !svc.contains_key("reporter_type") && zk_keys {
        // Upstream's default reporter is ZooKeeper; ours (without zk keys) is etcd.
        svc.insert("reporter_type".to_owned(), Value::from("zookeeper"));
    }
    let unsupported: Vec<String> = match svc.get("reporter_type") {
        Some(Value::String(r)) => vec![r.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
    .into_iter()
    .filter(|r| UPSTREAM_REPORTERS.contains(&r.as_str()))
    .collect();
    if let Some(r) = unsupported.first() {
        compat.unsupported(
            join_path(path, "reporter_type"),
            format!("the `{r}` reporter"),
        );
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

/// nerve's 2013 form put the ensemble in `zk_path` (`"zk1:2181,zk2:2181/nerve/services/x"`,
/// with no `zk_hosts`): read it as `zk_hosts` and `zk_path`, with a warning naming both.
fn old_zk_path(svc: &mut serde_json::Map<String, Value>, path: &str, compat: &mut Compat) {
    if svc.contains_key("zk_hosts") {
        return;
    }
    let Some(Value::String(zk_path)) = svc.get("zk_path") else {
        return;
    };
    if zk_path.starts_with('/') {
        return;
    }
    let Some((hosts, dir)) = zk_path.split_once('/') else {
        return;
    };
    let hosts: Vec<Value> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(Value::from)
        .collect();
    if hosts.is_empty() {
        return;
    }
    let dir = format!("/{dir}");
    compat.warn(
        join_path(path, "zk_path"),
        format!(
            "the 2013 form `hosts/path`: read as zk_hosts {} and zk_path {dir}",
            Value::Array(hosts.clone())
        ),
    );
    svc.insert("zk_hosts".to_owned(), Value::Array(hosts));
    svc.insert("zk_path".to_owned(), Value::from(dir));
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
            "c": {"reporter_type": "serf"},
            "d": {"reporter_type": ["zookeeper", "mock"]}},
            "statsd": {}, "prometheus": {}});
        let mut c = Compat::default();
        normalize_file(&mut v, &mut c);
        assert_eq!(
            v,
            json!({"services": {
                "a": {"zk_hosts": ["z:2181"], "zk_path": "/x", "reporter_type": "zookeeper"},
                "b": {"reporter_type": "etcd"}}})
        );
        let paths: Vec<&str> = c.unsupported.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["services.c.reporter_type", "services.d.reporter_type"]
        );
        let warned: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(
            warned,
            [
                "statsd",
                "prometheus",
                "services.a.check_mocked",
                "services.b.zk_cluster_name"
            ]
        );
    }

    #[test]
    fn the_2013_zk_path_names_the_ensemble_too() {
        let mut v = json!({"services": {
            "a": {"zk_path": "zk1:2181,zk2:2181/nerve/services/a/services"},
            "b": {"zk_path": "/nerve/b", "zk_hosts": ["z"]}}});
        let mut c = Compat::default();
        normalize_file(&mut v, &mut c);
        assert_eq!(
            v,
            json!({"services": {
                "a": {"zk_hosts": ["zk1:2181", "zk2:2181"],
                      "zk_path": "/nerve/services/a/services", "reporter_type": "zookeeper"},
                "b": {"zk_path": "/nerve/b", "zk_hosts": ["z"], "reporter_type": "zookeeper"}}})
        );
        let warned: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(warned, ["services.a.zk_path"]);
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
