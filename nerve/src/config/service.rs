//! One service: its registration, its reporters (`reporter_type` and the `zk_*` keys)
//! and its rate limit.

use std::time::Duration;

use common::config::{join_path, ConfigErrors, ConfigPort};
use common::registration::{validate_labels, MAX_VALUE_BYTES};
use common::{
    AddressPolicy, Host, InstanceId, Port, Registration, ServerOptions, ServiceName, ServicePath,
    Weight,
};

use super::check::validate_check;
use super::file::{missing, positive, RateLimitFile, ReporterTypeFile, ServiceFile};
use super::{
    CheckConfig, ReportTargets, ServiceConfig, ZkTarget, DEFAULT_CHECK_INTERVAL,
    DEFAULT_PATH_PREFIX,
};

use crate::rate_limit::RateLimit;

// --- ZooKeeper reporter (issue 20) ------------------------------------------------------

/// `reporter_type` (one name or a list) with its `zk_*` keys.
pub(super) fn validate_targets(
    svc: &ServiceFile,
    path: &str,
    errors: &mut ConfigErrors,
) -> Option<ReportTargets> {
    let at = |key: &str| join_path(path, key);
    let names: Vec<&str> = match &svc.reporter_type {
        None => vec!["etcd"],
        Some(ReporterTypeFile::One(name)) => vec![name.as_str()],
        Some(ReporterTypeFile::Many(names)) => names.iter().map(String::as_str).collect(),
    };
    let mut targets = ReportTargets {
        etcd: false,
        zookeeper: None,
    };
    let mut ok = true;
    if names.is_empty() {
        errors.push(at("reporter_type"), "must name at least one reporter");
        ok = false;
    }
    let mut zookeeper = false;
    for name in names {
        match name {
            "etcd" => targets.etcd = true,
            "zookeeper" => zookeeper = true,
            other => {
                errors.push(
                    at("reporter_type"),
                    format_args!(
                        "`{other}`: must be `etcd`, `zookeeper`, or a list of them \
                         (upstream reporters this build lacks are refused by name)"
                    ),
                );
                ok = false;
            }
        }
    }
    let zk_keys = svc.zk_hosts.is_some()
        || svc.zk_path.is_some()
        || svc.node_type.is_some()
        || svc.use_path_encoding.is_some();
    if !zookeeper {
        if zk_keys && ok {
            for key in ["zk_hosts", "zk_path", "node_type", "use_path_encoding"] {
                let set = match key {
                    "zk_hosts" => svc.zk_hosts.is_some(),
                    "zk_path" => svc.zk_path.is_some(),
                    "node_type" => svc.node_type.is_some(),
                    _ => svc.use_path_encoding.is_some(),
                };
                if set {
                    errors.push(at(key), "needs `zookeeper` in reporter_type");
                }
            }
            return None;
        }
        return ok.then_some(targets);
    }
    let hosts = match &svc.zk_hosts {
        None => {
            missing(errors, at("zk_hosts"));
            None
        }
        Some(list) if list.is_empty() => {
            errors.push(at("zk_hosts"), "must list at least one ZooKeeper member");
            None
        }
        Some(list) => match common::zookeeper::ZkSettings::new(list, Duration::from_secs(1)) {
            Ok(settings) => Some(settings.hosts),
            Err((i, e)) => {
                errors.push(at(&format!("zk_hosts.{i}")), e);
                None
            }
        },
    };
    let zk_path = match &svc.zk_path {
        None => {
            missing(errors, at("zk_path"));
            None
        }
        Some(p) => ServicePath::new(p)
            .map_err(|e| errors.push(at("zk_path"), e))
            .ok(),
    };
    match svc.node_type.as_deref() {
        None | Some("ephemeral_sequential") => {}
        Some(other) => errors.push(
            at("node_type"),
            format_args!(
                "`{other}`: only `ephemeral_sequential` (upstream's default) is supported: \
                 persistent nodes outlive a dead nerve, and plain ephemeral names collide"
            ),
        ),
    }
    let (Some(hosts), Some(path)) = (hosts, zk_path) else {
        return None;
    };
    targets.zookeeper = Some(ZkTarget {
        hosts,
        path,
        use_path_encoding: svc.use_path_encoding.unwrap_or(false),
    });
    ok.then_some(targets)
}

pub(super) fn validate_service(
    name: ServiceName,
    svc: &ServiceFile,
    path: &str,
    instance_id: &InstanceId,
    errors: &mut ConfigErrors,
) -> Option<ServiceConfig> {
    let at = |key: &str| join_path(path, key);
    let before = errors.len();

    let host = match &svc.host {
        Some(h) => match Host::parse(h) {
            Ok(host) => {
                let policy = AddressPolicy {
                    allow_loopback: true,
                    allow_hostnames: true,
                };
                if let Err(e) = policy.check(&host) {
                    errors.push(at("host"), e);
                }
                Some(host)
            }
            Err(e) => {
                errors.push(at("host"), e);
                None
            }
        },
        None => {
            missing(errors, at("host"));
            None
        }
    };
    let port = match svc.port {
        Some(ConfigPort(p)) => Port::new(p),
        None => {
            missing(errors, at("port"));
            None
        }
    };
    let targets = validate_targets(svc, path, errors);
    let service_path = match &svc.etcd_path {
        Some(p) => ServicePath::new(p)
            .map_err(|e| errors.push(at("etcd_path"), e))
            .ok(),
        None => ServicePath::join(DEFAULT_PATH_PREFIX, name.as_str())
            .map_err(|e| errors.push(path, e))
            .ok(),
    };
    let check_interval = positive(
        svc.check_interval,
        &at("check_interval"),
        DEFAULT_CHECK_INTERVAL,
        errors,
    );
    let weight = svc.weight.and_then(|w| {
        let weight = u16::try_from(w).ok().and_then(Weight::new);
        if weight.is_none() {
            errors.push(at("weight"), "must be an integer from 0 to 256");
        }
        weight
    });
    let haproxy_server_options = svc.haproxy_server_options.as_deref().and_then(|o| {
        ServerOptions::parse(o)
            .map_err(|e| errors.push(at("haproxy_server_options"), e))
            .ok()
    });
    if let Err(e) = validate_labels(&svc.labels) {
        errors.push(at("labels"), e);
    }
    let rate_limit = svc
        .rate_limiting
        .as_ref()
        .and_then(|r| validate_rate_limit(r, &at("rate_limiting"), errors));

    let check_host = svc.host.clone().unwrap_or_default();
    let check_port = port.map_or(0, Port::get);
    let checks: Vec<CheckConfig> = svc
        .checks
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            validate_check(
                c,
                &at(&format!("checks.{i}")),
                &check_host,
                check_port,
                errors,
            )
        })
        .collect();

    let (Some(host), Some(port), Some(service_path)) = (host, port, service_path) else {
        return None;
    };
    let registration = Registration {
        host,
        port,
        name: instance_id.clone(),
        weight,
        haproxy_server_options,
        labels: svc.labels.clone(),
    };
    let encoded = registration.encode().len();
    if encoded > MAX_VALUE_BYTES {
        errors.push(
            path,
            format_args!(
                "the registration would be {encoded} bytes, more than the {MAX_VALUE_BYTES}-byte \
                 limit readers accept (fewer or shorter labels)"
            ),
        );
    }
    (errors.len() == before).then(|| ServiceConfig {
        name,
        path: service_path,
        targets: targets.unwrap_or_default(),
        registration,
        check_interval,
        checks,
        rate_limit,
        maintenance_file: svc.maintenance_file.clone(),
    })
}

pub(super) fn validate_rate_limit(
    file: &RateLimitFile,
    path: &str,
    errors: &mut ConfigErrors,
) -> Option<RateLimit> {
    let average_rate = match file.average_rate {
        None => None,
        Some(r) if r.is_finite() && r > 0.0 => Some(r),
        Some(_) => {
            errors.push(
                join_path(path, "average_rate"),
                "must be a number of reports per second greater than 0",
            );
            None
        }
    };
    if file.max_burst == Some(0) {
        errors.push(join_path(path, "max_burst"), "must be at least 1");
    }
    if file.max_burst.is_some() && file.average_rate.is_none() {
        errors.push(
            join_path(path, "average_rate"),
            "missing (max_burst alone does not limit anything)",
        );
    }
    // Without a rate there is no limit, as in SmartStack (whose defaults are infinite).
    average_rate.map(|average_rate| RateLimit {
        shadow_mode: file.shadow_mode.unwrap_or(true),
        average_rate,
        max_burst: file.max_burst.unwrap_or(1).max(1),
    })
}
