//! Validation of one service: its servers, label filters, zone preference, guard and
//! `haproxy` section, and the checks across services (unique backend names).

use std::collections::BTreeMap;

use common::config::{join_path, ConfigErrors};
use common::{Host, InstanceId, Port, ServiceName};

use super::check::{check_line, check_lines, check_word};
use super::discovery::{uses_ec2, validate_discovery};
use super::{
    BackendOrder, CookieValueMethod, GuardSettings, HaproxyConfig, MinZoneServers, PreferZoneFile,
    ServerFile, ServiceConfig, ServiceFile, ServiceHaproxy, ServiceHaproxyFile, ZonePreference,
    DEFAULT_MAX_SERVERS,
};
use crate::backends::{Backend, LabelCondition, LabelFilter};

pub(super) fn validate_service(
    name: &ServiceName,
    svc: &ServiceFile,
    path: &str,
    errors: &mut ConfigErrors,
) -> Option<ServiceConfig> {
    let before = errors.len();
    let dpath = join_path(path, "discovery");
    let has_port_override = svc.backend_port_override.is_some()
        || svc
            .haproxy
            .as_ref()
            .is_some_and(|h| h.server_port_override.is_some());
    let discovery = validate_discovery(
        name,
        &svc.discovery,
        &dpath,
        errors,
        true,
        has_port_override,
    );
    let mut label_filters = Vec::new();
    let filter_files = svc
        .discovery
        .label_filters
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, f)| (join_path(&dpath, &format!("label_filters.{i}")), f))
        .chain(
            svc.discovery
                .label_filter
                .iter()
                .map(|f| (join_path(&dpath, "label_filter"), f)),
        );
    for (fpath, f) in filter_files {
        let condition = match f.condition.as_str() {
            "equals" => LabelCondition::Equals,
            "not-equals" => LabelCondition::NotEquals,
            _ => {
                errors.push(
                    join_path(&fpath, "condition"),
                    "must be `equals` or `not-equals`",
                );
                continue;
            }
        };
        label_filters.push(LabelFilter {
            label: f.label.clone(),
            condition,
            value: f.value.clone(),
        });
    }
    let mut default_servers = Vec::new();
    for (i, s) in svc.default_servers.iter().enumerate() {
        let spath = join_path(path, &format!("default_servers.{i}"));
        if let Some(b) = validate_server(s, &spath, errors) {
            default_servers.push(b);
        }
    }
    let h = svc.haproxy.as_ref();
    let hpath = join_path(path, "haproxy");
    let port_override = match (
        svc.backend_port_override,
        h.and_then(|h| h.server_port_override),
    ) {
        (Some(a), Some(b)) if a != b => {
            errors.push(
                join_path(&hpath, "server_port_override"),
                "conflicts with backend_port_override (it is its deprecated alias)",
            );
            None
        }
        (Some(p), _) | (None, Some(p)) => Port::new(p.0),
        (None, None) => None,
    };
    let backup_port = h
        .and_then(|h| h.server_backup_port)
        .and_then(|p| Port::new(p.0));
    if backup_port.is_some() && port_override.is_none() {
        errors.push(
            join_path(&hpath, "server_backup_port"),
            "needs backend_port_override (or server_port_override): the backup server \
             runs beside the main one on each instance",
        );
    }
    if port_override.is_none() && discovery.as_ref().is_some_and(uses_ec2) {
        errors.push(
            join_path(path, "backend_port_override"),
            "is required with ec2tag discovery (or haproxy.server_port_override): EC2 \
             knows instances, not the port the service listens on",
        );
    }
    let max_servers = svc.max_servers.unwrap_or(DEFAULT_MAX_SERVERS);
    if max_servers == 0 {
        errors.push(join_path(path, "max_servers"), "must be at least 1");
    }
    let haproxy = h
        .map(|h| validate_service_haproxy(h, &hpath, errors))
        .unwrap_or_default();
    let prefer_zone = validate_zone_preference(svc, path, errors);
    let discovery = discovery?;
    (errors.len() == before).then(|| ServiceConfig {
        name: name.clone(),
        discovery,
        label_filters,
        default_servers,
        keep_default_servers: svc.keep_default_servers,
        use_previous_backends: svc.use_previous_backends,
        port_override,
        backup_port,
        max_servers,
        // Set by the caller, which knows the top-level section.
        mass_removal_guard: GuardSettings::default(),
        haproxy,
        file_output_disabled: svc.file_output.as_ref().is_some_and(|f| f.disabled),
        prefer_zone,
    })
}

/// `prefer_zone` and `min_zone_servers`.
fn validate_zone_preference(
    svc: &ServiceFile,
    path: &str,
    errors: &mut ConfigErrors,
) -> Option<ZonePreference> {
    let min = match svc.min_zone_servers {
        None => MinZoneServers::default(),
        Some(x) if x > 0.0 && x < 1.0 => MinZoneServers::Fraction(x),
        Some(x) if x >= 1.0 && x.fract() == 0.0 && x <= 1e6 => MinZoneServers::Count(x as usize),
        Some(_) => {
            errors.push(
                join_path(path, "min_zone_servers"),
                "must be a whole number of servers (1 or more) or a fraction between 0 and 1",
            );
            MinZoneServers::default()
        }
    };
    let zone = match &svc.prefer_zone {
        None | Some(PreferZoneFile::On(false)) => {
            if svc.min_zone_servers.is_some() {
                errors.push(
                    join_path(path, "min_zone_servers"),
                    "needs prefer_zone (true, or a zone name)",
                );
            }
            return None;
        }
        Some(PreferZoneFile::On(true)) => None,
        Some(PreferZoneFile::Zone(z)) => {
            if let Err(e) = common::zone::validate(z) {
                errors.push(join_path(path, "prefer_zone"), e);
            }
            Some(z.clone())
        }
    };
    Some(ZonePreference { zone, min })
}

fn validate_server(s: &ServerFile, path: &str, errors: &mut ConfigErrors) -> Option<Backend> {
    let name = InstanceId::new(s.name.as_str())
        .map_err(|e| errors.push(join_path(path, "name"), e))
        .ok();
    // default_servers are the operator's: host names are allowed here.
    let host = Host::parse(&s.host)
        .map_err(|e| errors.push(join_path(path, "host"), e))
        .ok();
    let port = Port::new(s.port.0);
    let weight = match s.weight {
        Some(w) => match common::Weight::new(w) {
            Some(w) => Some(w),
            None => {
                errors.push(join_path(path, "weight"), "must be from 0 to 256");
                None
            }
        },
        None => None,
    };
    let options = match &s.haproxy_server_options {
        Some(o) => match common::ServerOptions::parse(o) {
            Ok(o) => Some(o),
            Err(e) => {
                errors.push(join_path(path, "haproxy_server_options"), e);
                None
            }
        },
        None => None,
    };
    if let Err(e) = common::registration::validate_labels(&s.labels) {
        errors.push(join_path(path, "labels"), e);
    }
    Some(Backend {
        name: name?,
        host: host?,
        port: port?,
        weight,
        haproxy_server_options: options,
        labels: s.labels.clone(),
        backup: false,
    })
}

fn validate_service_haproxy(
    h: &ServiceHaproxyFile,
    path: &str,
    errors: &mut ConfigErrors,
) -> ServiceHaproxy {
    let p = |k: &str| join_path(path, k);
    let mut one_line = |v: &Option<String>, key: &str| {
        v.as_ref()
            .filter(|s| check_line(s, &p(key), errors))
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let bind_options = one_line(&h.bind_options, "bind_options");
    let server_options = one_line(&h.server_options, "server_options");
    let bind_address = h.bind_address.clone();
    if let Some(a) = &bind_address {
        if !a.is_empty() && a != "*" {
            check_word(a, &p("bind_address"), errors);
        }
    }
    let backend_name = h.backend_name.clone();
    if let Some(n) = &backend_name {
        if n.is_empty() {
            errors.push(p("backend_name"), "must not be empty");
        } else {
            check_word(n, &p("backend_name"), errors);
        }
    }
    let backend_order = match h.backend_order.as_deref() {
        None | Some("shuffle") => BackendOrder::Shuffle,
        Some("asc") => BackendOrder::Asc,
        Some("desc") => BackendOrder::Desc,
        Some("no_shuffle") => BackendOrder::NoShuffle,
        Some(_) => {
            errors.push(
                p("backend_order"),
                "must be asc, desc, no_shuffle or shuffle",
            );
            BackendOrder::Shuffle
        }
    };
    let cookie_value_method = match h.cookie_value_method.as_deref() {
        None | Some("name") => CookieValueMethod::Name,
        Some("hash") => CookieValueMethod::Hash,
        Some(_) => {
            errors.push(p("cookie_value_method"), "must be `name` or `hash`");
            CookieValueMethod::Name
        }
    };
    ServiceHaproxy {
        disabled: h.disabled,
        port: h.port.and_then(|p| Port::new(p.0)),
        bind_address,
        bind_options,
        server_options,
        listen: check_lines(&h.listen, &p("listen"), errors),
        frontend: check_lines(&h.frontend, &p("frontend"), errors),
        backend: check_lines(&h.backend, &p("backend"), errors),
        backend_name,
        backend_order,
        shared_frontend: h
            .shared_frontend
            .as_ref()
            .map(|l| check_lines(l, &p("shared_frontend"), errors))
            .unwrap_or_default(),
        cookie_value_method,
        ignore_registry_server_options: h.ignore_registry_server_options,
    }
}

/// Backend and frontend names must be unique, and per-service shared_frontend lines need
/// the global shared frontend.
pub(super) fn check_backend_names(
    services: &BTreeMap<ServiceName, ServiceConfig>,
    h: &HaproxyConfig,
    errors: &mut ConfigErrors,
) {
    let mut seen: BTreeMap<String, &ServiceName> = BTreeMap::new();
    let mut frontends: BTreeMap<String, &ServiceName> = BTreeMap::new();
    for (name, s) in services {
        if s.haproxy.disabled {
            continue;
        }
        let frontend = s.haproxy_name();
        if let Some(other) = frontends.insert(frontend.clone(), name) {
            errors.push(
                format!("services.{name}"),
                format_args!(
                    "is `{frontend}` in HAProxy (`:` becomes `_`), as service `{other}` is"
                ),
            );
        }
        let backend = s.backend_name();
        if let Some(other) = seen.insert(backend.clone(), name) {
            errors.push(
                format!("services.{name}.haproxy.backend_name"),
                format_args!("backend `{backend}` is also used by service `{other}`"),
            );
        }
        if !s.haproxy.shared_frontend.is_empty() && h.shared_frontend.is_none() {
            errors.push(
                format!("services.{name}.haproxy.shared_frontend"),
                "needs the top-level haproxy.shared_frontend",
            );
        }
    }
}

impl ServiceConfig {
    /// The HAProxy backend name: `backend_name`, or the service's [`Self::haproxy_name`].
    pub fn backend_name(&self) -> String {
        self.haproxy
            .backend_name
            .clone()
            .unwrap_or_else(|| self.haproxy_name())
    }

    /// The service's name in HAProxy (its frontend's): `:` becomes `_`.
    pub fn haproxy_name(&self) -> String {
        common::names::haproxy_name(self.name.as_str()).into_owned()
    }
}
