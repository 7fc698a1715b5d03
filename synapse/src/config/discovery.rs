//! Validation of a service's `discovery` section, for every method (etcd, ZooKeeper,
//! EC2 tags, DNS, `multi`, `base`): the keys each method accepts, each with its path.

use std::collections::BTreeMap;
use std::time::Duration;

use common::config::{join_path, ConfigErrors, Seconds};
use common::etcd::normalize_endpoint;
use common::{AddressPolicy, Host, InstanceId, Port, ServiceName, ServicePath};

use super::check::at_least_one;
use super::{
    defaults, DiscoveryConfig, DiscoveryFile, DnsDiscovery, DnsServer, DnsServerFile,
    Ec2TagDiscovery, EtcdDiscovery, MultiDiscovery, Resolver, ZkDiscovery,
};

/// True if the discovery (or one of its `multi` children) polls EC2.
pub(super) fn uses_ec2(d: &DiscoveryConfig) -> bool {
    match d {
        DiscoveryConfig::Ec2Tag(_) => true,
        DiscoveryConfig::Multi(m) => m.watchers.values().any(uses_ec2),
        DiscoveryConfig::Etcd(_)
        | DiscoveryConfig::Zookeeper(_)
        | DiscoveryConfig::Static
        | DiscoveryConfig::Dns(_) => false,
    }
}

/// `dns` `servers`: each needs a port (its own, an SRV record's, or the service's
/// `backend_port_override`) and a name in the instance-id grammar.
fn validate_dns_servers(
    servers: Option<&[DnsServerFile]>,
    port_override: bool,
    path: &str,
    errors: &mut ConfigErrors,
) -> Vec<DnsServer> {
    let spath = join_path(path, "servers");
    let Some(servers) = servers.filter(|s| !s.is_empty()) else {
        errors.push(spath, "is required for method dns and must not be empty");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let at = join_path(&spath, &i.to_string());
        let (name, host, port, labels) = match s {
            DnsServerFile::Host(h) => match split_host_port(h) {
                Ok((host, port)) => (None, host, port, BTreeMap::new()),
                Err(e) => {
                    errors.push(at, e);
                    continue;
                }
            },
            DnsServerFile::Entry(e) => (
                e.name.clone(),
                e.host.clone(),
                e.port.and_then(|p| Port::new(p.0)),
                e.labels.clone(),
            ),
        };
        let srv = host.starts_with('_');
        let looked_up = host.strip_prefix('_').map_or(host.as_str(), |h| h);
        if Host::parse(looked_up).is_err() && !(srv && looked_up.contains('.')) {
            errors.push(
                join_path(&at, "host"),
                "must be a DNS name, an IP address, or an SRV name (`_service._proto.name`)",
            );
            continue;
        }
        if port.is_none() && !srv && !port_override {
            errors.push(
                &at,
                "needs a port: `host:port`, a `port` key, an SRV name, or the service's \
                 backend_port_override",
            );
            continue;
        }
        // By default the backends are named after the host (an IPv6 literal's `:` as `-`).
        let default_name = || host.trim_start_matches('_').replace(':', "-");
        let name = match InstanceId::new(name.unwrap_or_else(default_name)) {
            Ok(n) => n,
            Err(e) => {
                errors.push(join_path(&at, "name"), e);
                continue;
            }
        };
        if let Err(e) = common::registration::validate_labels(&labels) {
            errors.push(join_path(&at, "labels"), e);
            continue;
        }
        out.push(DnsServer {
            name,
            host,
            port,
            labels,
        });
    }
    out
}

/// `"host"` or `"host:port"` (`"[v6]:port"`).
fn split_host_port(s: &str) -> Result<(String, Option<Port>), &'static str> {
    let bad_port = "port must be from 1 to 65535";
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or("unclosed `[`")?;
        return match tail.strip_prefix(':') {
            None if tail.is_empty() => Ok((host.to_owned(), None)),
            None => Err("expected `:port` after `]`"),
            Some(p) => Ok((
                host.to_owned(),
                Some(p.parse().ok().and_then(Port::new).ok_or(bad_port)?),
            )),
        };
    }
    match s.split_once(':') {
        Some((host, p)) if !p.contains(':') => Ok((
            host.to_owned(),
            Some(p.parse().ok().and_then(Port::new).ok_or(bad_port)?),
        )),
        _ => Ok((s.to_owned(), None)),
    }
}

/// `nameserver`: an IP address, optionally with a port (`127.0.0.1:5353`, `[::1]:53`).
fn parse_nameserver(s: &str) -> Result<std::net::SocketAddr, &'static str> {
    let msg = "must be an IP address, optionally with a port (127.0.0.1:5353)";
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, defaults::DNS_PORT));
    }
    s.parse::<std::net::SocketAddr>().map_err(|_| msg)
}

/// The keys each method accepts, beside `method` and the common ones.
fn method_keys(method: &str) -> Option<&'static [&'static str]> {
    Some(match method {
        "etcd" => &[
            "hosts",
            "path",
            "etcd",
            "resync_interval",
            "progress_interval",
            "strict_keys",
            "max_keys",
            "max_bytes",
        ],
        "ec2tag" => &[
            "tag_name",
            "tag_value",
            "aws_region",
            "aws_access_key_id",
            "aws_secret_access_key",
            "check_interval",
            "endpoint",
            "imds_endpoint",
            "request_timeout",
        ],
        "base" | "static" => &[],
        "dns" => &["servers", "nameserver", "check_interval"],
        "zookeeper" => &[
            "hosts",
            "path",
            "resync_interval",
            "max_keys",
            "session_timeout",
        ],
        "multi" => &["watchers", "resolver"],
        _ => return None,
    })
}

fn present_keys(d: &DiscoveryFile) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut add = |present: bool, key| {
        if present {
            keys.push(key);
        }
    };
    add(d.hosts.is_some(), "hosts");
    add(d.path.is_some(), "path");
    add(d.etcd.is_some(), "etcd");
    add(d.resync_interval.is_some(), "resync_interval");
    add(d.progress_interval.is_some(), "progress_interval");
    add(d.strict_keys.is_some(), "strict_keys");
    add(d.max_keys.is_some(), "max_keys");
    add(d.max_bytes.is_some(), "max_bytes");
    add(d.tag_name.is_some(), "tag_name");
    add(d.tag_value.is_some(), "tag_value");
    add(d.aws_region.is_some(), "aws_region");
    add(d.aws_access_key_id.is_some(), "aws_access_key_id");
    add(d.aws_secret_access_key.is_some(), "aws_secret_access_key");
    add(d.check_interval.is_some(), "check_interval");
    add(d.endpoint.is_some(), "endpoint");
    add(d.servers.is_some(), "servers");
    add(d.nameserver.is_some(), "nameserver");
    add(d.watchers.is_some(), "watchers");
    add(d.resolver.is_some(), "resolver");
    add(d.session_timeout.is_some(), "session_timeout");
    keys
}

pub(super) fn validate_discovery(
    service: &ServiceName,
    d: &DiscoveryFile,
    path: &str,
    errors: &mut ConfigErrors,
    top_level: bool,
    port_override: bool,
) -> Option<DiscoveryConfig> {
    let Some(allowed) = method_keys(&d.method) else {
        errors.push(
            join_path(path, "method"),
            "must be one of etcd, zookeeper, ec2tag, dns, base, static, multi",
        );
        return None;
    };
    let before = errors.len();
    for key in present_keys(d) {
        if !allowed.contains(&key) {
            errors.push(
                join_path(path, key),
                format_args!("does not apply to discovery method `{}`", d.method),
            );
        }
    }
    if !top_level && (d.label_filters.is_some() || d.label_filter.is_some()) {
        errors.push(
            join_path(path, "label_filters"),
            "set label filters on the service's own discovery, not on a multi child",
        );
    }
    let policy = AddressPolicy {
        allow_loopback: d
            .allow_loopback
            .unwrap_or(AddressPolicy::default().allow_loopback),
        allow_hostnames: d
            .allow_hostnames
            .unwrap_or(AddressPolicy::default().allow_hostnames),
    };
    let positive = |v: Option<Seconds>, key: &str, default: Duration, errors: &mut ConfigErrors| {
        let d = v.map_or(default, Duration::from);
        if d.is_zero() {
            errors.push(join_path(path, key), "must be greater than 0");
        }
        d
    };
    let config = match d.method.as_str() {
        "etcd" => {
            let etcd_path = join_path(path, "etcd");
            let mut settings = d
                .etcd
                .clone()
                .unwrap_or_default()
                .validate(&etcd_path, errors);
            let tls = settings.tls.is_some();
            let mut hosts = Vec::new();
            for (i, h) in d.hosts.iter().flatten().enumerate() {
                match normalize_endpoint(h, tls) {
                    Ok(url) => hosts.push(url),
                    Err(why) => errors.push(join_path(path, &format!("hosts.{i}")), why),
                }
            }
            if !hosts.is_empty() {
                let explicit = d.etcd.as_ref().is_some_and(|e| !e.endpoints.is_empty());
                if explicit {
                    settings.endpoints.extend(hosts);
                } else {
                    settings.endpoints = hosts;
                }
            }
            settings.check_auth_transport(&etcd_path, errors);
            let service_path = match &d.path {
                Some(p) => ServicePath::new(p),
                None => ServicePath::join(defaults::SERVICE_PATH_PREFIX, service.as_str()),
            };
            let service_path = match service_path {
                Ok(p) => Some(p),
                Err(e) => {
                    errors.push(join_path(path, "path"), e);
                    None
                }
            };
            let resync_interval = positive(
                d.resync_interval,
                "resync_interval",
                defaults::RESYNC_INTERVAL,
                errors,
            );
            let progress_interval = positive(
                d.progress_interval,
                "progress_interval",
                defaults::PROGRESS_INTERVAL,
                errors,
            );
            DiscoveryConfig::Etcd(EtcdDiscovery {
                settings,
                path: service_path?,
                policy,
                resync_interval,
                progress_interval,
                strict_keys: d.strict_keys.unwrap_or(false),
                max_keys: at_least_one(
                    d.max_keys,
                    defaults::MAX_KEYS,
                    &join_path(path, "max_keys"),
                    errors,
                ),
                max_bytes: at_least_one(
                    d.max_bytes,
                    defaults::MAX_BYTES,
                    &join_path(path, "max_bytes"),
                    errors,
                ),
            })
        }
        // --- zookeeper (issue 20) ---------------------------------------------------------
        "zookeeper" => {
            let hosts = match &d.hosts {
                None => {
                    errors.push(join_path(path, "hosts"), "is required for method zookeeper");
                    None
                }
                Some(h) if h.is_empty() => {
                    errors.push(
                        join_path(path, "hosts"),
                        "must list at least one ZooKeeper member",
                    );
                    None
                }
                Some(h) => {
                    let timeout = positive(
                        d.session_timeout,
                        "session_timeout",
                        defaults::ZK_SESSION_TIMEOUT,
                        errors,
                    );
                    match common::zookeeper::ZkSettings::new(h, timeout) {
                        Ok(s) => Some(s),
                        Err((i, e)) => {
                            errors.push(join_path(path, &format!("hosts.{i}")), e);
                            None
                        }
                    }
                }
            };
            let zk_path = match &d.path {
                None => {
                    errors.push(join_path(path, "path"), "is required for method zookeeper");
                    None
                }
                Some(p) => ServicePath::new(p)
                    .map_err(|e| errors.push(join_path(path, "path"), e))
                    .ok(),
            };
            let resync_interval = positive(
                d.resync_interval,
                "resync_interval",
                defaults::RESYNC_INTERVAL,
                errors,
            );
            let max_keys = at_least_one(
                d.max_keys,
                defaults::MAX_KEYS,
                &join_path(path, "max_keys"),
                errors,
            );
            DiscoveryConfig::Zookeeper(ZkDiscovery {
                settings: hosts?,
                path: zk_path?,
                policy,
                resync_interval,
                max_keys,
            })
        }
        "ec2tag" => {
            let mut required = |v: &Option<String>, key: &str| match v {
                Some(s) if !s.is_empty() => s.clone(),
                _ => {
                    errors.push(join_path(path, key), "is required for method ec2tag");
                    String::new()
                }
            };
            let tag_name = required(&d.tag_name, "tag_name");
            let tag_value = required(&d.tag_value, "tag_value");
            if d.aws_access_key_id.is_some() != d.aws_secret_access_key.is_some() {
                errors.push(
                    join_path(path, "aws_secret_access_key"),
                    "aws_access_key_id and aws_secret_access_key go together",
                );
            }
            for (key, ep) in [
                ("endpoint", &d.endpoint),
                ("imds_endpoint", &d.imds_endpoint),
            ] {
                if let Some(ep) = ep {
                    if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                        errors.push(join_path(path, key), "must be an http(s) URL");
                    } else if key == "endpoint"
                        && ep.starts_with("http://")
                        && !common::etcd::is_loopback_url(ep)
                    {
                        // Signed requests and instance data in clear; IMDS is link-local
                        // plain HTTP by design.
                        errors.push(join_path(path, key), "must be https:// unless loopback");
                    }
                }
            }
            let check_interval = positive(
                d.check_interval,
                "check_interval",
                defaults::EC2_CHECK_INTERVAL,
                errors,
            );
            DiscoveryConfig::Ec2Tag(Ec2TagDiscovery {
                tag_name,
                tag_value,
                aws_region: d.aws_region.clone(),
                aws_access_key_id: d.aws_access_key_id.clone(),
                aws_secret_access_key: d.aws_secret_access_key.clone(),
                check_interval,
                endpoint: d.endpoint.clone(),
                imds_endpoint: d.imds_endpoint.clone(),
                request_timeout: positive(
                    d.request_timeout,
                    "request_timeout",
                    defaults::EC2_REQUEST_TIMEOUT,
                    errors,
                ),
                policy,
            })
        }
        "base" | "static" => DiscoveryConfig::Static,
        "dns" => DiscoveryConfig::Dns(DnsDiscovery {
            servers: validate_dns_servers(d.servers.as_deref(), port_override, path, errors),
            nameserver: d.nameserver.as_deref().and_then(|n| {
                parse_nameserver(n)
                    .map_err(|e| errors.push(join_path(path, "nameserver"), e))
                    .ok()
            }),
            check_interval: positive(
                d.check_interval,
                "check_interval",
                defaults::DNS_CHECK_INTERVAL,
                errors,
            ),
            policy,
        }),
        "multi" => {
            let mut watchers = BTreeMap::new();
            match &d.watchers {
                Some(ws) if !ws.is_empty() => {
                    for (name, child) in ws {
                        let cpath = join_path(&join_path(path, "watchers"), name);
                        if child.method == "multi" {
                            errors.push(
                                join_path(&cpath, "method"),
                                "a multi watcher cannot contain another multi watcher",
                            );
                            continue;
                        }
                        if let Some(c) =
                            validate_discovery(service, child, &cpath, errors, false, port_override)
                        {
                            watchers.insert(name.clone(), c);
                        }
                    }
                }
                _ => errors.push(
                    join_path(path, "watchers"),
                    "is required for method multi and must not be empty",
                ),
            }
            let rpath = join_path(path, "resolver");
            let resolver = match &d.resolver {
                None => Resolver::Union,
                Some(r) => match r.method.as_str() {
                    "union" => {
                        if r.sequential_order.is_some() {
                            errors.push(
                                join_path(&rpath, "sequential_order"),
                                "applies only to the sequential resolver",
                            );
                        }
                        Resolver::Union
                    }
                    "sequential" => {
                        let order = r.sequential_order.clone().unwrap_or_default();
                        if order.is_empty() {
                            errors.push(
                                join_path(&rpath, "sequential_order"),
                                "is required for the sequential resolver",
                            );
                        }
                        for (i, name) in order.iter().enumerate() {
                            if d.watchers.as_ref().is_some_and(|w| !w.contains_key(name)) {
                                errors.push(
                                    join_path(&rpath, &format!("sequential_order.{i}")),
                                    "names no watcher",
                                );
                            }
                        }
                        Resolver::Sequential(order)
                    }
                    _ => {
                        errors.push(
                            join_path(&rpath, "method"),
                            "must be `union` or `sequential`",
                        );
                        Resolver::Union
                    }
                },
            };
            DiscoveryConfig::Multi(MultiDiscovery { watchers, resolver })
        }
        _ => return None,
    };
    (errors.len() == before).then_some(config)
}
