//! The top level of the file: read it, rewrite upstream shapes, validate the global keys
//! and every service (inline and from `service_conf_dir`) into a [`Config`].

use std::collections::BTreeMap;
use std::path::Path;

use common::config::{self as cfg, join_path, ConfigErrors, Seconds};
use common::etcd::normalize_endpoint;
use common::upstream::Compat;
use common::{InstanceId, ServiceName};

use super::conf_d::read_service_conf_dir;
use super::file::{positive, NerveFile, ServiceFile};
use super::service::validate_service;
use super::{
    Config, Overrides, DEFAULT_ETCD_PORT, DEFAULT_LEASE_TTL, DEFAULT_RECONCILE_INTERVAL,
    DEFAULT_SHUTDOWN_TIMEOUT, MIN_LEASE_TTL,
};

/// Reads and validates a config file and its `service_conf_dir`.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut errors = ConfigErrors::default();
        errors.push("", format_args!("cannot read {}: {e}", path.display()));
        errors
    })?;
    parse_in(&text, path.parent(), overrides)
}

/// Validates config text (and reads the `service_conf_dir` it names; a relative one
/// from the current directory).
pub fn parse(text: &str, overrides: &Overrides) -> Result<Config, ConfigErrors> {
    parse_in(text, None, overrides)
}

/// Validates config text; a relative `service_conf_dir` is read from `base` (the config
/// file's directory, as synapse does), or from the current directory without one.
pub fn parse_in(
    text: &str,
    base: Option<&Path>,
    overrides: &Overrides,
) -> Result<Config, ConfigErrors> {
    let mut errors = cfg::duplicate_keys(text);
    let mut value = cfg::parse_jsonc(text)?;
    let mut compat = Compat::default();
    super::upstream::normalize_file(&mut value, &mut compat);
    let (file, structural) = cfg::from_value_lenient::<NerveFile>(value);
    errors.extend(structural);
    let file = file.unwrap_or_default();

    let mut services: Vec<(String, String, ServiceFile)> = file
        .services
        .into_iter()
        .map(|(name, svc)| (name.clone(), format!("services.{name}"), svc))
        .collect();
    if let Some(dir) = &file.service_conf_dir {
        let dir = match base {
            Some(base) if dir.is_relative() && !base.as_os_str().is_empty() => base.join(dir),
            _ => dir.clone(),
        };
        services.extend(read_service_conf_dir(
            &dir,
            &services,
            &mut errors,
            &mut compat,
        ));
    }

    let instance_id = match overrides.instance_id.as_ref().or(file.instance_id.as_ref()) {
        Some(id) => match InstanceId::new(id.as_str()) {
            Ok(id) => Some(id),
            Err(e) => {
                let at = if overrides.instance_id.is_some() {
                    "--instance-id"
                } else {
                    "instance_id"
                };
                errors.push(at, e);
                None
            }
        },
        None if errors.mentions("instance_id") => None,
        None => {
            errors.push(
                "instance_id",
                "missing (set it in the file, with -i/--instance-id or NERVE_INSTANCE_ID)",
            );
            None
        }
    };
    // A placeholder keeps the services validating (and reporting) without an id.
    let name_for_values = instance_id
        .clone()
        .or_else(|| InstanceId::new("instance").ok());

    let etcd_file = file.etcd.clone().unwrap_or_default();
    let mut etcd = etcd_file.validate("etcd", &mut errors);
    let explicit_endpoints = !etcd_file.endpoints.is_empty();
    let tls = etcd.tls.is_some();

    let mut validated = BTreeMap::new();
    let mut flat_endpoint: Option<(String, String)> = None;
    for (name, path, svc) in &services {
        let Some(svc_name) = validate_service_name(name, path, &mut errors) else {
            continue;
        };
        // SmartStack's flat etcd_host/etcd_port: all must name one cluster.
        if let Some(endpoint) = flat_etcd_endpoint(svc, path, tls, &mut errors) {
            if explicit_endpoints {
                if !etcd.endpoints.contains(&endpoint) {
                    errors.push(
                        join_path(path, "etcd_host"),
                        "is not one of etcd.endpoints; nerve keeps one lease in one etcd cluster",
                    );
                }
            } else {
                match &flat_endpoint {
                    None => flat_endpoint = Some((endpoint, path.clone())),
                    Some((first, first_path)) if *first != endpoint => errors.push(
                        join_path(path, "etcd_host"),
                        format_args!(
                            "differs from {first_path}.etcd_host; nerve keeps one lease in one \
                             etcd cluster (list its members in etcd.endpoints)"
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
        if let Some(id) = &name_for_values {
            if let Some(service) = validate_service(svc_name.clone(), svc, path, id, &mut errors) {
                validated.insert(svc_name, service);
            }
        }
    }
    if let Some((endpoint, _)) = flat_endpoint {
        etcd.endpoints = vec![endpoint];
    }
    etcd.check_auth_transport("etcd", &mut errors);

    let lease_ttl = match file.lease_ttl {
        None => DEFAULT_LEASE_TTL,
        Some(Seconds(d)) if d < MIN_LEASE_TTL => {
            errors.push("lease_ttl", "must be at least 2 seconds");
            DEFAULT_LEASE_TTL
        }
        Some(Seconds(d)) if d.subsec_nanos() != 0 => {
            errors.push(
                "lease_ttl",
                "must be a whole number of seconds (etcd leases count seconds)",
            );
            DEFAULT_LEASE_TTL
        }
        Some(Seconds(d)) => d,
    };
    let reconcile_interval = positive(
        file.reconcile_interval,
        "reconcile_interval",
        DEFAULT_RECONCILE_INTERVAL,
        &mut errors,
    );
    let shutdown_timeout = positive(
        file.shutdown_timeout,
        "shutdown_timeout",
        DEFAULT_SHUTDOWN_TIMEOUT,
        &mut errors,
    );
    let admin_listen = file
        .admin_listen
        .resolve(common::admin::NERVE_DEFAULT_LISTEN)
        .unwrap_or_else(|e| {
            errors.push("admin_listen", e);
            None
        });
    let applied_status_prefix = file
        .applied_status_prefix
        .unwrap_or_else(|| common::applied::DEFAULT_PREFIX.to_owned());
    if let Err(e) = common::applied::validate_prefix(&applied_status_prefix) {
        errors.push("applied_status_prefix", e);
    }

    if let Some(zone) = &file.zone {
        if let Err(e) = common::zone::validate(zone) {
            errors.push("zone", e);
        }
    }
    let imds_endpoint = file.zone_from_imds.unwrap_or(false).then(|| {
        file.imds_endpoint
            .clone()
            .or_else(|| std::env::var(common::imds::ENDPOINT_ENV).ok())
            .unwrap_or_else(|| common::imds::DEFAULT_ENDPOINT.to_owned())
    });
    if file.imds_endpoint.is_some() && imds_endpoint.is_none() {
        errors.push("imds_endpoint", "is only used with zone_from_imds: true");
    }
    let zone = common::zone::ZoneSource {
        configured: file.zone.clone(),
        env: None,
        imds_endpoint,
    };

    compat.push_unsupported(&mut errors);
    match instance_id {
        Some(instance_id) if errors.is_empty() => Ok(Config {
            instance_id,
            services: validated,
            etcd,
            lease_ttl,
            reconcile_interval,
            shutdown_timeout,
            heartbeat_path: file.heartbeat_path,
            maintenance_file: file.maintenance_file,
            admin_listen,
            zone,
            applied_status_prefix,
            warnings: compat.warnings,
        }),
        _ => Err(errors),
    }
}

fn validate_service_name(name: &str, path: &str, errors: &mut ConfigErrors) -> Option<ServiceName> {
    match ServiceName::new(name) {
        Ok(n) => Some(n),
        Err(e) => {
            errors.push(path, format_args!("service name {e}"));
            None
        }
    }
}

fn flat_etcd_endpoint(
    svc: &ServiceFile,
    path: &str,
    tls: bool,
    errors: &mut ConfigErrors,
) -> Option<String> {
    let host = match (&svc.etcd_host, svc.etcd_port) {
        (Some(host), _) => host,
        (None, Some(_)) => {
            errors.push(join_path(path, "etcd_port"), "needs etcd_host");
            return None;
        }
        (None, None) => return None,
    };
    let port = svc.etcd_port.map_or(DEFAULT_ETCD_PORT, |p| p.0);
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    match normalize_endpoint(&format!("{host}:{port}"), tls) {
        Ok(endpoint) => Some(endpoint),
        Err(why) => {
            errors.push(join_path(path, "etcd_host"), why);
            None
        }
    }
}
