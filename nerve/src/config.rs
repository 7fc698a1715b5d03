//! nerve's config file: the airbnb nerve JSON format as a superset, read as JSON with
//! comments and trailing commas, and validated into a typed [`Config`] with every problem
//! reported at once with its key path (`services.web.checks.0.uri: missing`).
//!
//! Two layers, as everywhere in this workspace: serde `*File` structs that mirror the file
//! (`deny_unknown_fields`, every field optional so that a missing key is reported by the
//! validator next to the other errors rather than stopping the parse), then validation
//! into types that cannot hold a bad value. `--check-config` runs exactly [`load`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::config::{self as cfg, join_path, ConfigError, ConfigErrors, ConfigPort, Seconds};
use common::etcd::{normalize_endpoint, EtcdFile, EtcdSettings};
use common::registration::{validate_labels, MAX_VALUE_BYTES};
use common::upstream::Compat;
use common::{
    AddressPolicy, Host, InstanceId, Port, Registration, ServerOptions, ServiceName, ServicePath,
    Weight,
};
use serde::Deserialize;

use crate::rate_limit::RateLimit;

/// Where a service's registrations go when it sets no `etcd_path`.
pub const DEFAULT_PATH_PREFIX: &str = "/nerve/services";
/// SmartStack's `check_interval` default.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// SmartStack's check `timeout` default.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_millis(100);
/// SmartStack's http `open_timeout` and `ssl_timeout` default.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_millis(200);
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// etcd's smallest useful lease with default election settings (3 × 100 ms heartbeats
/// per election timeout, rounded up); shorter leases could expire during an election.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// etcd's client port, used with a bare `etcd_host`.
pub const DEFAULT_ETCD_PORT: u16 = 2379;

// ---------------------------------------------------------------------------------------
// The file, as written.

/// The top level of nerve.json.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NerveFile {
    instance_id: Option<String>,
    #[serde(default)]
    services: BTreeMap<String, ServiceFile>,
    service_conf_dir: Option<PathBuf>,
    heartbeat_path: Option<PathBuf>,
    etcd: Option<EtcdFile>,
    lease_ttl: Option<Seconds>,
    reconcile_interval: Option<Seconds>,
    shutdown_timeout: Option<Seconds>,
    maintenance_file: Option<PathBuf>,
    #[serde(default)]
    admin_listen: common::admin::ListenSetting,
    /// This host's availability zone, registered as the `zone` label (else `NERVE_ZONE`,
    /// else IMDS with `zone_from_imds`).
    zone: Option<String>,
    zone_from_imds: Option<bool>,
    /// The IMDS to ask (default `http://169.254.169.254`, or
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`).
    imds_endpoint: Option<String>,
    applied_status_prefix: Option<String>,
}

/// One entry of `services` (or one file in `service_conf_dir`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    host: Option<String>,
    port: Option<ConfigPort>,
    reporter_type: Option<ReporterTypeFile>,
    etcd_host: Option<String>,
    etcd_port: Option<ConfigPort>,
    etcd_path: Option<String>,
    check_interval: Option<Seconds>,
    #[serde(default)]
    checks: Vec<CheckFile>,
    weight: Option<u64>,
    haproxy_server_options: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    rate_limiting: Option<RateLimitFile>,
    maintenance_file: Option<PathBuf>,
    // --- ZooKeeper reporter (issue 20): upstream nerve's keys -----------------------------
    zk_hosts: Option<Vec<String>>,
    zk_path: Option<String>,
    node_type: Option<String>,
    use_path_encoding: Option<bool>,
}

/// `reporter_type`: upstream's single name, or a list of them (report to each: how a
/// fleet registers in ZooKeeper and etcd at once while it migrates).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ReporterTypeFile {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFile {
    shadow_mode: Option<bool>,
    average_rate: Option<f64>,
    max_burst: Option<u32>,
}

/// A check: one flat struct for every type, so that each key gets its own error path;
/// the validator rejects keys that do not belong to the check's type.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    host: Option<String>,
    port: Option<ConfigPort>,
    timeout: Option<Seconds>,
    rise: Option<u32>,
    fall: Option<u32>,
    // http
    uri: Option<String>,
    ssl: Option<bool>,
    ssl_verify: Option<bool>,
    ssl_ca_file: Option<PathBuf>,
    open_timeout: Option<Seconds>,
    read_timeout: Option<Seconds>,
    ssl_timeout: Option<Seconds>,
    headers: Option<BTreeMap<String, String>>,
    expect: Option<String>,
    // exec
    command: Option<CommandFile>,
    shell: Option<bool>,
    // rabbitmq
    username: Option<String>,
    password: Option<common::Secret>,
    vhost: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CommandFile {
    Argv(Vec<String>),
    Line(String),
}

// ---------------------------------------------------------------------------------------
// The validated config.

/// A validated nerve config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub instance_id: InstanceId,
    pub services: BTreeMap<ServiceName, ServiceConfig>,
    /// The one etcd cluster this nerve registers in (one lease per process).
    pub etcd: EtcdSettings,
    pub lease_ttl: Duration,
    /// How often nerve reads its own keys back and repairs them.
    pub reconcile_interval: Duration,
    /// Bound on deregistration at shutdown.
    pub shutdown_timeout: Duration,
    /// Touched about once a second while nerve runs.
    pub heartbeat_path: Option<PathBuf>,
    /// While this file exists, every service is reported down.
    pub maintenance_file: Option<PathBuf>,
    /// Where the admin endpoint (`/status`, `/metrics`) listens; `None`: no endpoint.
    pub admin_listen: Option<SocketAddr>,
    /// Where this host's zone comes from (`zone`; `NERVE_ZONE` is read at start-up).
    pub zone: common::zone::ZoneSource,
    /// Where synapses publish the revisions they have applied (the drain barrier).
    pub applied_status_prefix: String,
    /// Upstream keys that were ignored, one line each, for `--check-config` and the
    /// start-up log.
    pub warnings: Vec<ConfigError>,
}

impl Config {
    /// Adds the `zone` label to every registration that has none of its own (a service's
    /// `labels.zone` wins).
    pub fn label_zone(&mut self, zone: &str) {
        for svc in self.services.values_mut() {
            svc.registration
                .labels
                .entry(common::zone::LABEL.to_owned())
                .or_insert_with(|| zone.to_owned());
        }
    }
}

/// One service to check and register.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: ServiceName,
    /// The service's directory in etcd (`etcd_path`).
    pub path: ServicePath,
    /// The registries it reports to (`reporter_type`).
    pub targets: ReportTargets,
    /// What is written while the service is healthy.
    pub registration: Registration,
    pub check_interval: Duration,
    /// All must pass. None means always up.
    pub checks: Vec<CheckConfig>,
    pub rate_limit: Option<RateLimit>,
    /// While this file exists, the service is reported down.
    pub maintenance_file: Option<PathBuf>,
}

/// Where a service's registration goes: etcd, a ZooKeeper ensemble, or both (issue 20).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReportTargets {
    /// Into etcd, under the service's `etcd_path` (the default).
    pub etcd: bool,
    /// As an ephemeral sequential znode below `zk_path`.
    pub zookeeper: Option<ZkTarget>,
}

impl Default for ReportTargets {
    fn default() -> Self {
        Self {
            etcd: true,
            zookeeper: None,
        }
    }
}

/// A service's ZooKeeper registration: upstream's `zk_hosts` and `zk_path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ZkTarget {
    /// `host:port` of each member, sorted: nerve holds one session per distinct list.
    pub hosts: Vec<String>,
    /// The service's directory: nodes are `<zk_path>/<instance_id>_<sequence>`.
    pub path: ServicePath,
    /// upstream's `use_path_encoding`: the registration is also in the node's name
    /// (`base64_<len>_<base64url json>_<sequence>`), so a reader can skip a read.
    pub use_path_encoding: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckConfig {
    /// For logs.
    pub name: String,
    pub rise: NonZeroU32,
    pub fall: NonZeroU32,
    pub kind: CheckKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    Http(HttpCheckConfig),
    Tcp(TcpCheckConfig),
    /// upstream's `redis`: `PING`, then `EXISTS nerve-redis-service-check`; healthy when
    /// both answer without an error. Its address is a [`TcpCheckConfig`].
    Redis(TcpCheckConfig),
    Rabbitmq(RabbitmqCheckConfig),
    Exec(ExecCheckConfig),
    Noop,
}

/// upstream's `rabbitmq` check: an AMQP connection with these credentials, a message
/// published and read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitmqCheckConfig {
    pub address: TcpCheckConfig,
    pub username: String,
    pub password: common::Secret,
    pub vhost: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheckConfig {
    /// `http(s)://host:port/uri`.
    pub url: String,
    /// Certificate verification, for `https`.
    pub ssl_verify: bool,
    pub ssl_ca_file: Option<PathBuf>,
    /// TCP connect (plus TLS handshake) bound.
    pub connect_timeout: Duration,
    /// Bound on each read.
    pub read_timeout: Duration,
    /// Bound on the whole request.
    pub total_timeout: Duration,
    /// Extra request headers, validated as HTTP header names and values.
    pub headers: Vec<(String, String)>,
    /// Healthy only if the body contains this.
    pub expect: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpCheckConfig {
    pub host: String,
    pub port: u16,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCheckConfig {
    /// Program and arguments; with `shell: true`, `["/bin/sh", "-c", command]`.
    pub argv: Vec<String>,
    pub timeout: Duration,
}

/// Values from the command line or the environment that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `-i/--instance-id` / `NERVE_INSTANCE_ID`.
    pub instance_id: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Loading.

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
    crate::upstream::normalize_file(&mut value, &mut compat);
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

/// Reads `<dir>/*.json`: one service per file, named after the file.
fn read_service_conf_dir(
    dir: &Path,
    inline: &[(String, String, ServiceFile)],
    errors: &mut ConfigErrors,
    compat: &mut Compat,
) -> Vec<(String, String, ServiceFile)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(
                "service_conf_dir",
                format_args!("cannot read {}: {e}", dir.display()),
            );
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut out: Vec<(String, String, ServiceFile)> = Vec::new();
    for file in files {
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
        if matches!(ext, "yaml" | "yml") {
            errors.push(
                "service_conf_dir",
                format_args!(
                    "{}: YAML is not supported; write the service as JSON",
                    file.display()
                ),
            );
            continue;
        }
        if ext != "json" {
            continue;
        }
        let Some(name) = file.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        let path = format!("services.{name}");
        if let Some((_, other, _)) = inline
            .iter()
            .chain(out.iter())
            .find(|(existing, _, _)| *existing == name)
        {
            errors.push(
                path,
                format_args!(
                    "defined twice: in {} and at {other}; a service is defined once",
                    file.display()
                ),
            );
            continue;
        }
        let prefixed = |e: ConfigErrors| {
            ConfigErrors(
                e.0.into_iter()
                    .map(|mut err| {
                        err.path = join_path(&path, &err.path);
                        err.message = format!("{} (in {})", err.message, file.display());
                        err
                    })
                    .collect(),
            )
        };
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(path, format_args!("cannot read {}: {e}", file.display()));
                continue;
            }
        };
        errors.extend(prefixed(cfg::duplicate_keys(&text)));
        let mut value = match cfg::parse_jsonc(&text) {
            Ok(v) => v,
            Err(e) => {
                errors.extend(prefixed(e));
                continue;
            }
        };
        if !crate::upstream::normalize_service(&mut value, &path, compat) {
            continue;
        }
        let (svc, structural) = cfg::from_value_lenient::<ServiceFile>(value);
        errors.extend(prefixed(structural));
        if let Some(svc) = svc {
            out.push((name, path, svc));
        }
    }
    out
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

// --- ZooKeeper reporter (issue 20) ------------------------------------------------------

/// `reporter_type` (one name or a list) with its `zk_*` keys.
fn validate_targets(
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

fn positive(
    value: Option<Seconds>,
    path: &str,
    default: Duration,
    errors: &mut ConfigErrors,
) -> Duration {
    match value {
        None => default,
        Some(Seconds(d)) if d.is_zero() => {
            errors.push(path, "must be greater than 0");
            default
        }
        Some(Seconds(d)) => d,
    }
}

fn validate_service(
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

fn missing(errors: &mut ConfigErrors, path: String) {
    if !errors.mentions(&path) {
        errors.push(path, "missing");
    }
}

fn validate_rate_limit(
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

const COMMON_CHECK_KEYS: &[&str] = &["type", "name", "host", "port", "timeout", "rise", "fall"];
const HTTP_CHECK_KEYS: &[&str] = &[
    "uri",
    "ssl",
    "ssl_verify",
    "ssl_ca_file",
    "open_timeout",
    "read_timeout",
    "ssl_timeout",
    "headers",
    "expect",
];
const EXEC_CHECK_KEYS: &[&str] = &["command", "shell"];
const RABBITMQ_CHECK_KEYS: &[&str] = &["username", "password", "vhost"];

fn validate_check(
    file: &CheckFile,
    path: &str,
    service_host: &str,
    service_port: u16,
    errors: &mut ConfigErrors,
) -> Option<CheckConfig> {
    let at = |key: &str| join_path(path, key);
    let before = errors.len();
    let kind = match file.kind.as_deref() {
        Some(k @ ("http" | "tcp" | "redis" | "rabbitmq" | "exec" | "noop")) => k,
        Some(_) => {
            errors.push(
                at("type"),
                "must be one of http, tcp, redis, rabbitmq, exec, noop",
            );
            return None;
        }
        None => {
            missing(errors, at("type"));
            return None;
        }
    };
    // Keys of other check types are mistakes, not options.
    let present: [(&str, bool); 14] = [
        ("uri", file.uri.is_some()),
        ("ssl", file.ssl.is_some()),
        ("ssl_verify", file.ssl_verify.is_some()),
        ("ssl_ca_file", file.ssl_ca_file.is_some()),
        ("open_timeout", file.open_timeout.is_some()),
        ("read_timeout", file.read_timeout.is_some()),
        ("ssl_timeout", file.ssl_timeout.is_some()),
        ("headers", file.headers.is_some()),
        ("expect", file.expect.is_some()),
        ("command", file.command.is_some()),
        ("shell", file.shell.is_some()),
        ("username", file.username.is_some()),
        ("password", file.password.is_some()),
        ("vhost", file.vhost.is_some()),
    ];
    let allowed: &[&str] = match kind {
        "http" => HTTP_CHECK_KEYS,
        "exec" => EXEC_CHECK_KEYS,
        "rabbitmq" => RABBITMQ_CHECK_KEYS,
        _ => &[],
    };
    for (key, is_set) in present {
        if is_set && !allowed.contains(&key) && !COMMON_CHECK_KEYS.contains(&key) {
            errors.push(at(key), format_args!("is not a key of {kind} checks"));
        }
    }

    let threshold = |value: Option<u32>, key: &str, errors: &mut ConfigErrors| match value {
        None => NonZeroU32::MIN,
        Some(n) => NonZeroU32::new(n).unwrap_or_else(|| {
            errors.push(at(key), "must be at least 1");
            NonZeroU32::MIN
        }),
    };
    let rise = threshold(file.rise, "rise", errors);
    let fall = threshold(file.fall, "fall", errors);
    let timeout = positive(file.timeout, &at("timeout"), DEFAULT_CHECK_TIMEOUT, errors);
    let host = file.host.clone().unwrap_or_else(|| service_host.to_owned());
    let port = file.port.map_or(service_port, |p| p.0);
    if file.host.is_some() && Host::parse(&host).is_err() {
        errors.push(at("host"), "must be an IP address or a DNS name");
    }

    let check = match kind {
        "http" => validate_http(file, path, &host, port, timeout, errors).map(CheckKind::Http),
        "tcp" => Some(CheckKind::Tcp(TcpCheckConfig {
            host: host.clone(),
            port,
            timeout,
        })),
        "redis" => Some(CheckKind::Redis(TcpCheckConfig {
            host: host.clone(),
            port,
            timeout,
        })),
        // upstream's defaults: guest/guest on the default vhost.
        "rabbitmq" => Some(CheckKind::Rabbitmq(RabbitmqCheckConfig {
            address: TcpCheckConfig {
                host: host.clone(),
                port,
                timeout,
            },
            username: file.username.clone().unwrap_or_else(|| "guest".to_owned()),
            password: file
                .password
                .clone()
                .unwrap_or_else(|| common::Secret::new("guest")),
            vhost: file.vhost.clone().unwrap_or_else(|| "/".to_owned()),
        })),
        "exec" => validate_exec(file, path, timeout, errors).map(CheckKind::Exec),
        _ => Some(CheckKind::Noop),
    };
    let check = check?;
    let name = file.name.clone().unwrap_or_else(|| match &check {
        CheckKind::Http(h) => format!("http {}", h.url),
        CheckKind::Tcp(t) => format!("tcp {}", host_port(&t.host, t.port)),
        CheckKind::Redis(t) => format!("redis {}", host_port(&t.host, t.port)),
        CheckKind::Rabbitmq(r) => {
            format!("rabbitmq {}", host_port(&r.address.host, r.address.port))
        }
        CheckKind::Exec(e) => format!("exec {}", e.argv.first().map_or("", String::as_str)),
        CheckKind::Noop => "noop".to_owned(),
    });
    (errors.len() == before).then_some(CheckConfig {
        name,
        rise,
        fall,
        kind: check,
    })
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn validate_http(
    file: &CheckFile,
    path: &str,
    host: &str,
    port: u16,
    timeout: Duration,
    errors: &mut ConfigErrors,
) -> Option<HttpCheckConfig> {
    let at = |key: &str| join_path(path, key);
    let uri = match &file.uri {
        Some(uri) if uri.starts_with('/') && !uri.bytes().any(|b| b <= b' ' || b == 0x7f) => {
            Some(uri.clone())
        }
        Some(_) => {
            errors.push(
                at("uri"),
                "must be a path starting with '/', without spaces or control characters",
            );
            None
        }
        None => {
            missing(errors, at("uri"));
            None
        }
    };
    let ssl = file.ssl.unwrap_or(false);
    if !ssl {
        for (key, set) in [
            ("ssl_verify", file.ssl_verify.is_some()),
            ("ssl_ca_file", file.ssl_ca_file.is_some()),
            ("ssl_timeout", file.ssl_timeout.is_some()),
        ] {
            if set {
                errors.push(at(key), "needs \"ssl\": true");
            }
        }
    }
    if let Some(ca) = &file.ssl_ca_file {
        if file.ssl_verify == Some(false) {
            errors.push(at("ssl_ca_file"), "is unused with \"ssl_verify\": false");
        }
        match std::fs::read(ca) {
            Ok(pem) if reqwest::Certificate::from_pem(&pem).is_ok() => {}
            Ok(_) => errors.push(
                at("ssl_ca_file"),
                format_args!("{} holds no PEM certificate", ca.display()),
            ),
            Err(e) => errors.push(
                at("ssl_ca_file"),
                format_args!("cannot read {}: {e}", ca.display()),
            ),
        }
    }
    let open = positive(
        file.open_timeout,
        &at("open_timeout"),
        DEFAULT_OPEN_TIMEOUT,
        errors,
    );
    let read = positive(file.read_timeout, &at("read_timeout"), timeout, errors);
    let ssl_timeout = if ssl {
        positive(
            file.ssl_timeout,
            &at("ssl_timeout"),
            DEFAULT_OPEN_TIMEOUT,
            errors,
        )
    } else {
        Duration::ZERO
    };
    let mut headers = Vec::new();
    for (name, value) in file.headers.iter().flatten() {
        let key = at(&format!("headers.{name}"));
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(key, "is not a valid HTTP header name");
        } else if reqwest::header::HeaderValue::from_str(value).is_err() {
            errors.push(key, "value must be visible ASCII text without line breaks");
        } else {
            headers.push((name.clone(), value.clone()));
        }
    }
    if file.expect.as_deref() == Some("") {
        errors.push(at("expect"), "must not be empty");
    }
    if port == 0 {
        // Reported at the service's `port`.
        return None;
    }
    let scheme = if ssl { "https" } else { "http" };
    let uri = uri?;
    let url = format!("{scheme}://{}{uri}", host_port(host, port));
    if reqwest::Url::parse(&url).is_err() {
        errors.push(at("uri"), "does not make a valid URL with the check's host");
        return None;
    }
    Some(HttpCheckConfig {
        url,
        ssl_verify: file.ssl_verify.unwrap_or(file.ssl_ca_file.is_some()),
        ssl_ca_file: file.ssl_ca_file.clone(),
        connect_timeout: open + ssl_timeout,
        read_timeout: read,
        total_timeout: open + ssl_timeout + read,
        headers,
        expect: file.expect.clone().filter(|e| !e.is_empty()),
    })
}

fn validate_exec(
    file: &CheckFile,
    path: &str,
    timeout: Duration,
    errors: &mut ConfigErrors,
) -> Option<ExecCheckConfig> {
    let at = |key: &str| join_path(path, key);
    let shell = file.shell.unwrap_or(false);
    let argv = match (&file.command, shell) {
        (None, _) => {
            missing(errors, at("command"));
            return None;
        }
        (Some(CommandFile::Line(line)), true) if !line.trim().is_empty() => {
            vec!["/bin/sh".to_owned(), "-c".to_owned(), line.clone()]
        }
        (Some(CommandFile::Line(_)), false) => {
            errors.push(
                at("command"),
                "a command string runs only with \"shell\": true; give an array \
                 [program, args...] to run it without a shell",
            );
            return None;
        }
        (Some(CommandFile::Argv(_)), true) => {
            errors.push(
                at("command"),
                "with \"shell\": true, give the command as one string",
            );
            return None;
        }
        (Some(CommandFile::Argv(argv)), false) if argv.first().is_some_and(|p| !p.is_empty()) => {
            argv.clone()
        }
        (Some(_), _) => {
            errors.push(at("command"), "must not be empty");
            return None;
        }
    };
    if argv.iter().any(|a| a.contains('\0')) {
        errors.push(at("command"), "must not contain NUL characters");
        return None;
    }
    Some(ExecCheckConfig { argv, timeout })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Config {
        parse(text, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(text: &str) -> ConfigErrors {
        parse(text, &Overrides::default()).expect_err("config accepted")
    }

    #[test]
    fn the_zone_label_goes_on_every_registration_without_its_own() {
        let mut c = parse_ok(
            r#"{"instance_id": "h1", "zone": "za", "services": {
                "web": {"host": "127.0.0.1", "port": 1, "reporter_type": "etcd", "etcd_path": "/s/web"},
                "own": {"host": "127.0.0.1", "port": 2, "reporter_type": "etcd", "etcd_path": "/s/own",
                        "labels": {"zone": "zother"}}}}"#,
        );
        assert_eq!(c.zone.configured.as_deref(), Some("za"));
        assert_eq!(c.zone.imds_endpoint, None);
        c.label_zone("za");
        let label = |name: &str| {
            c.services[&ServiceName::new(name).unwrap()]
                .registration
                .labels["zone"]
                .clone()
        };
        assert_eq!(label("web"), "za");
        assert_eq!(label("own"), "zother");
        assert!(c.services[&ServiceName::new("web").unwrap()]
            .registration
            .encode()
            .contains(r#""labels":{"zone":"za"}"#));

        let c = parse_ok(
            r#"{"instance_id": "h1", "zone_from_imds": true, "imds_endpoint": "http://127.0.0.1:9", "services": {}}"#,
        );
        assert_eq!(c.zone.imds_endpoint.as_deref(), Some("http://127.0.0.1:9"));
        for (text, key) in [
            (
                r#"{"instance_id": "h1", "zone": "a b", "services": {}}"#,
                "zone",
            ),
            (
                r#"{"instance_id": "h1", "imds_endpoint": "http://127.0.0.1:9", "services": {}}"#,
                "imds_endpoint",
            ),
        ] {
            let errs = parse_err(text);
            assert!(errs.to_string().contains(key), "{key}: {errs}");
        }
    }

    #[test]
    fn smartstack_config_with_comments_loads() {
        let c = parse_ok(
            r#"{
              // pasted from a SmartStack host
              "instance_id": "web-01",
              "services": {
                "web": {
                  "host": "10.0.0.5", "port": 8080,
                  "reporter_type": "etcd", "etcd_host": "10.0.0.1", "etcd_port": 2379,
                  "etcd_path": "/nerve/services/web/services",
                  "check_interval": 2,
                  "checks": [
                    {"type": "http", "uri": "/health", "timeout": 0.2, "rise": 3, "fall": 2,
                     "headers": {"Host": "web.internal"}, "expect": "OK"},
                  ],
                  "weight": 2, "haproxy_server_options": "backup",
                  "labels": {"az": "us-east-1a"},
                },
              },
              "heartbeat_path": "/tmp/nerve.heartbeat",
            }"#,
        );
        assert_eq!(c.instance_id.as_str(), "web-01");
        assert_eq!(c.etcd.endpoints, ["http://10.0.0.1:2379"]);
        assert_eq!(c.lease_ttl, DEFAULT_LEASE_TTL);
        let web = &c.services[&ServiceName::new("web").unwrap()];
        assert_eq!(web.path.as_str(), "/nerve/services/web/services");
        assert_eq!(web.check_interval, Duration::from_secs(2));
        assert_eq!(
            web.registration.encode(),
            r#"{"host":"10.0.0.5","port":8080,"name":"web-01","weight":2,"haproxy_server_options":"backup","labels":{"az":"us-east-1a"}}"#
        );
        let check = &web.checks[0];
        assert_eq!((check.rise.get(), check.fall.get()), (3, 2));
        let CheckKind::Http(http) = &check.kind else {
            panic!("not http: {check:?}")
        };
        assert_eq!(http.url, "http://10.0.0.5:8080/health");
        assert_eq!(http.read_timeout, Duration::from_millis(200));
        assert_eq!(http.connect_timeout, DEFAULT_OPEN_TIMEOUT);
        assert_eq!(
            http.headers,
            [("Host".to_owned(), "web.internal".to_owned())]
        );
    }

    #[test]
    fn defaults() {
        let c = parse_ok(
            r#"{"instance_id":"a","services":{"web":{"host":"127.0.0.1","port":80,
                "checks":[{"type":"tcp"}]}}}"#,
        );
        let web = c.services.values().next().unwrap();
        assert_eq!(web.path.as_str(), "/nerve/services/web");
        assert_eq!(web.check_interval, DEFAULT_CHECK_INTERVAL);
        assert_eq!(c.etcd.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(c.reconcile_interval, DEFAULT_RECONCILE_INTERVAL);
        assert_eq!(c.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        assert_eq!(
            web.checks[0].kind,
            CheckKind::Tcp(TcpCheckConfig {
                host: "127.0.0.1".into(),
                port: 80,
                timeout: DEFAULT_CHECK_TIMEOUT
            })
        );
        assert_eq!(web.checks[0].name, "tcp 127.0.0.1:80");
        assert!(web.rate_limit.is_none());
    }

    #[test]
    fn reporters_one_list_or_zookeeper_by_default_with_zk_keys() {
        let c = parse_ok(
            r#"{"instance_id": "i-1", "services": {
                "a": {"host": "127.0.0.1", "port": 80},
                "b": {"host": "127.0.0.1", "port": 81, "zk_hosts": ["zk2", "zk1:2182"],
                      "zk_path": "/nerve/services/b/services"},
                "c": {"host": "127.0.0.1", "port": 82, "reporter_type": ["zookeeper", "etcd"],
                      "zk_hosts": ["zk1:2182", "zk2:2181"], "zk_path": "/c",
                      "use_path_encoding": true, "node_type": "ephemeral_sequential"}}}"#,
        );
        let targets = |name: &str| c.services[&ServiceName::new(name).unwrap()].targets.clone();
        assert_eq!(targets("a"), ReportTargets::default());
        let b = targets("b");
        assert!(!b.etcd);
        let zk = b.zookeeper.expect("zookeeper");
        assert_eq!(zk.hosts, ["zk1:2182", "zk2:2181"]);
        assert_eq!(zk.path.as_str(), "/nerve/services/b/services");
        assert!(!zk.use_path_encoding);
        let c = targets("c");
        assert!(c.etcd);
        assert!(c.zookeeper.as_ref().is_some_and(|z| z.use_path_encoding));
    }

    #[test]
    fn zookeeper_mistakes_are_errors_with_their_paths() {
        let errors = parse_err(
            r#"{"instance_id": "i-1", "services": {
                "a": {"host": "127.0.0.1", "port": 80, "reporter_type": "zookeeper"},
                "b": {"host": "127.0.0.1", "port": 81, "reporter_type": "etcd",
                      "zk_hosts": ["z"], "zk_path": "/b"},
                "c": {"host": "127.0.0.1", "port": 82, "zk_hosts": ["z:0"], "zk_path": "c",
                      "node_type": "persistent"},
                "d": {"host": "127.0.0.1", "port": 83, "reporter_type": []}}}"#,
        );
        for path in [
            "services.a.zk_hosts",
            "services.a.zk_path",
            "services.b.zk_hosts",
            "services.b.zk_path",
            "services.c.zk_hosts.0",
            "services.c.zk_path",
            "services.c.node_type",
            "services.d.reporter_type",
        ] {
            assert!(errors.mentions(path), "{path} not in:\n{errors}");
        }
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let errors = parse_err(
            r#"{
              "instance_id": "web-01",
              "bogus": 1,
              "lease_ttl": 1,
              "services": {
                "web": {"host": "127.0.0.1", "port": 0, "check_interval": "fast",
                        "checks": [{"type": "http"}, {"type": "tcp", "uri": "/x"},
                                   {"type": "bogus"}, {"type": "exec", "command": "true"}]},
                "api": {"host": "127.0.0.1", "port": 82},
                "api": {"host": "127.0.0.1", "port": 81, "weight": 300,
                        "haproxy_server_options": "check port 22", "reporter_type": "consul"},
                "bad name": {"host": "127.0.0.1", "port": 83},
                "db": {"port": 84}
              }
            }"#,
        );
        for path in [
            "bogus",
            "lease_ttl",
            "services.web.port",
            "services.web.check_interval",
            "services.web.checks.0.uri",
            "services.web.checks.1.uri",
            "services.web.checks.2.type",
            "services.web.checks.3.command",
            "services.api",
            "services.api.weight",
            "services.api.haproxy_server_options",
            "services.api.reporter_type",
            "services.bad name",
            "services.db.host",
        ] {
            assert!(errors.mentions(path), "{path} missing from:\n{errors}");
        }
        assert_eq!(errors.len(), 14, "{errors}");
    }

    /// A corpus file (`../shared/compat`) with etcd in ZooKeeper's place.
    fn corpus(rel: &str) -> Result<Config, ConfigErrors> {
        parse(
            &common::upstream::corpus_with_etcd(rel),
            &Overrides::default(),
        )
    }

    #[test]
    fn upstream_yelp_names_with_colons_load() {
        let c = corpus("nerve/08-yelp-nerve-tools-generated-zk.json").unwrap();
        let name = "test_service.my_superregion:10.0.0.1.1234.v2.new";
        let svc = &c.services[&ServiceName::new(name).unwrap()];
        assert_eq!(svc.path.as_str(), "/smartstack/global/test_service");
        assert_eq!(svc.registration.labels["superregion:my_superregion"], "");
        let warned: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(
            warned,
            [
                "services.test_service.another_superregion:10.0.0.1.1234.v2.new.zk_cluster_name",
                "services.test_service.my_superregion:10.0.0.1.1234.v2.new.zk_cluster_name",
            ]
        );
        // The default etcd path of such a service is valid too.
        let c = parse_ok(
            r#"{"instance_id": "h", "services": {"a:b": {"host": "10.0.0.1", "port": 1}}}"#,
        );
        let svc = &c.services[&ServiceName::new("a:b").unwrap()];
        assert_eq!(svc.path.as_str(), "/nerve/services/a:b");
    }

    #[test]
    fn rabbitmq_and_redis_checks() {
        let mut value = cfg::parse_jsonc(&common::upstream::corpus_with_etcd(
            "nerve/01-airbnb-nerve-example.json",
        ))
        .unwrap();
        value.as_object_mut().unwrap().remove("service_conf_dir");
        let c = parse(&value.to_string(), &Overrides::default()).unwrap();
        let svc = &c.services[&ServiceName::new("rabbitmq_service").unwrap()];
        let CheckKind::Rabbitmq(r) = &svc.checks[0].kind else {
            panic!("not rabbitmq: {:?}", svc.checks[0])
        };
        assert_eq!((r.username.as_str(), r.vhost.as_str()), ("guest", "/"));
        assert_eq!(r.password.expose(), "guest");
        assert_eq!(r.address.port, 5672);
        assert_eq!(svc.checks[0].name, "rabbitmq 1.2.3.4:5672");
        let errors = parse_err(
            r#"{"instance_id": "h", "services": {"q": {"host": "127.0.0.1", "port": 5672,
                "checks": [{"type": "rabbitmq", "password": "hunter2", "uri": "/x"},
                           {"type": "redis", "username": "u"}]}}}"#,
        );
        assert!(errors.mentions("services.q.checks.0.uri"), "{errors}");
        assert!(errors.mentions("services.q.checks.1.username"), "{errors}");
        assert!(!errors.to_string().contains("hunter2"));
        let c = parse_ok(
            r#"{"instance_id": "h", "services": {"q": {"host": "127.0.0.1", "port": 5672,
                "checks": [{"type": "rabbitmq", "password": "hunter2"}]}}}"#,
        );
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn upstream_2013_service_checks_and_machine_check() {
        let c = corpus("nerve/03-airbnb-2013-service_checks.json").unwrap();
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(c.warnings[0].path, "machine_check");
    }

    #[test]
    fn upstream_keys_warn_once_each() {
        // With the rabbitmq service left out, Yelp's example loads with its upstream keys.
        let mut value = cfg::parse_jsonc(&common::upstream::corpus_with_etcd(
            "nerve/02-yelp-nerve-example-prometheus.json",
        ))
        .unwrap();
        let top = value.as_object_mut().unwrap();
        top.remove("service_conf_dir");
        top["services"]
            .as_object_mut()
            .unwrap()
            .remove("rabbitmq_service");
        let c = parse(&value.to_string(), &Overrides::default()).unwrap();
        let warned: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(
            warned,
            ["statsd", "prometheus", "max_repeated_report_failures"]
        );
        assert!(c.warnings[0].message.contains("/metrics"));
    }

    #[test]
    fn instance_id_comes_from_the_file_or_the_override() {
        let text = r#"{"services":{}}"#;
        let errors = parse_err(text);
        assert!(errors.mentions("instance_id"), "{errors}");
        let c = parse(
            text,
            &Overrides {
                instance_id: Some("from-cli".into()),
            },
        )
        .unwrap();
        assert_eq!(c.instance_id.as_str(), "from-cli");
        let errors = parse(
            r#"{"instance_id":"ok"}"#,
            &Overrides {
                instance_id: Some("bad id".into()),
            },
        )
        .unwrap_err();
        assert!(errors.mentions("--instance-id"), "{errors}");
    }

    #[test]
    fn flat_etcd_keys_must_name_one_cluster() {
        let errors = parse_err(
            r#"{"instance_id":"a","services":{
                "a":{"host":"127.0.0.1","port":1,"etcd_host":"10.0.0.1"},
                "b":{"host":"127.0.0.1","port":2,"etcd_host":"10.0.0.2"},
                "c":{"host":"127.0.0.1","port":3,"etcd_port":2379}}}"#,
        );
        assert!(errors.mentions("services.b.etcd_host"), "{errors}");
        assert!(errors.mentions("services.c.etcd_port"), "{errors}");
        let errors = parse_err(
            r#"{"instance_id":"a","etcd":{"endpoints":["10.0.0.9:2379"]},"services":{
                "a":{"host":"127.0.0.1","port":1,"etcd_host":"10.0.0.1"}}}"#,
        );
        assert!(errors.mentions("services.a.etcd_host"), "{errors}");
        let c = parse_ok(
            r#"{"instance_id":"a","etcd":{"endpoints":["10.0.0.1:2379","10.0.0.2:2379"]},
                "services":{"a":{"host":"127.0.0.1","port":1,"etcd_host":"10.0.0.2"}}}"#,
        );
        assert_eq!(c.etcd.endpoints.len(), 2);
    }

    #[test]
    fn http_check_options() {
        let c = parse_ok(
            r#"{"instance_id":"a","services":{"s":{"host":"::1","port":8443,"checks":[
                {"type":"http","uri":"/h","ssl":true,"timeout":1,"open_timeout":0.5,"ssl_timeout":0.25},
                {"type":"http","uri":"/h","ssl":true,"ssl_verify":true,"host":"localhost","port":9}]}}}"#,
        );
        let checks = &c.services.values().next().unwrap().checks;
        let CheckKind::Http(a) = &checks[0].kind else {
            panic!()
        };
        assert_eq!(a.url, "https://[::1]:8443/h");
        assert!(!a.ssl_verify, "SmartStack's ssl does not verify by default");
        assert_eq!(a.connect_timeout, Duration::from_millis(750));
        assert_eq!(a.total_timeout, Duration::from_millis(1750));
        let CheckKind::Http(b) = &checks[1].kind else {
            panic!()
        };
        assert_eq!(b.url, "https://localhost:9/h");
        assert!(b.ssl_verify);

        let errors = parse_err(
            r#"{"instance_id":"a","services":{"s":{"host":"127.0.0.1","port":1,"checks":[
                {"type":"http","uri":"health","ssl_verify":true,"ssl_ca_file":"/nonexistent",
                 "headers":{"bad header":"x","X-Ok":"line\nbreak"},"expect":""}]}}}"#,
        );
        for path in [
            "services.s.checks.0.uri",
            "services.s.checks.0.ssl_verify",
            "services.s.checks.0.ssl_ca_file",
            "services.s.checks.0.headers.bad header",
            "services.s.checks.0.headers.X-Ok",
            "services.s.checks.0.expect",
        ] {
            assert!(errors.mentions(path), "{path} missing from:\n{errors}");
        }
        assert!(
            !errors.to_string().contains("line\nbreak"),
            "header values are not echoed"
        );
    }

    #[test]
    fn exec_commands_run_without_a_shell_unless_asked() {
        let c = parse_ok(
            r#"{"instance_id":"a","services":{"s":{"host":"127.0.0.1","port":1,"checks":[
                {"type":"exec","command":["/bin/true","x y"],"timeout":2},
                {"type":"exec","command":"test -f /tmp/x && true","shell":true}]}}}"#,
        );
        let checks = &c.services.values().next().unwrap().checks;
        assert_eq!(
            checks[0].kind,
            CheckKind::Exec(ExecCheckConfig {
                argv: vec!["/bin/true".into(), "x y".into()],
                timeout: Duration::from_secs(2)
            })
        );
        let CheckKind::Exec(e) = &checks[1].kind else {
            panic!()
        };
        assert_eq!(e.argv, ["/bin/sh", "-c", "test -f /tmp/x && true"]);
        let errors = parse_err(
            r#"{"instance_id":"a","services":{"s":{"host":"127.0.0.1","port":1,"checks":[
                {"type":"exec","command":["true"],"shell":true},
                {"type":"exec","command":[]},
                {"type":"exec"}]}}}"#,
        );
        for i in 0..3 {
            assert!(
                errors.mentions(&format!("services.s.checks.{i}.command")),
                "{errors}"
            );
        }
    }

    #[test]
    fn rate_limiting() {
        let c = parse_ok(
            r#"{"instance_id":"a","services":{"s":{"host":"127.0.0.1","port":1,
                "rate_limiting":{"shadow_mode":false,"average_rate":0.5,"max_burst":3}}}}"#,
        );
        assert_eq!(
            c.services.values().next().unwrap().rate_limit,
            Some(RateLimit {
                shadow_mode: false,
                average_rate: 0.5,
                max_burst: 3
            })
        );
        let errors = parse_err(
            r#"{"instance_id":"a","services":{"s":{"host":"127.0.0.1","port":1,
                "rate_limiting":{"average_rate":0,"max_burst":0}}}}"#,
        );
        assert!(errors.mentions("services.s.rate_limiting.average_rate"));
        assert!(errors.mentions("services.s.rate_limiting.max_burst"));
    }

    #[test]
    fn registry_unsafe_values_are_refused() {
        let errors = parse_err(
            r#"{"instance_id":"a","services":{
                "a":{"host":"0.0.0.0","port":1},
                "b":{"host":"10.0.0.1\nserver x","port":1},
                "c":{"host":"127.0.0.1","port":1,"labels":{"bad key":"v"}},
                "d":{"host":"127.0.0.1","port":1,"etcd_path":"relative/path"}}}"#,
        );
        for path in [
            "services.a.host",
            "services.b.host",
            "services.c.labels",
            "services.d.etcd_path",
        ] {
            assert!(errors.mentions(path), "{path} missing from:\n{errors}");
        }
    }

    #[test]
    fn service_conf_dir_adds_services_and_reports_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("api.json"),
            r#"{"host":"127.0.0.1","port":9000, // comment
                "checks":[{"type":"noop"}],}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("README.txt"), "ignored").unwrap();
        let text = format!(
            r#"{{"instance_id":"a","service_conf_dir":{:?},
                "services":{{"web":{{"host":"127.0.0.1","port":80}}}}}}"#,
            dir.path()
        );
        let c = parse_ok(&text);
        let names: Vec<&str> = c.services.keys().map(ServiceName::as_str).collect();
        assert_eq!(names, ["api", "web"]);

        std::fs::write(
            dir.path().join("web.json"),
            r#"{"host":"127.0.0.1","port":81}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("db.json"),
            r#"{"host":"127.0.0.1","prot":1}"#,
        )
        .unwrap();
        let errors = parse_err(&text);
        assert!(errors.mentions("services.web"), "{errors}");
        assert!(errors.mentions("services.db.prot"), "{errors}");
        assert!(errors.mentions("services.db.port"), "{errors}");
        assert!(errors.to_string().contains("db.json"), "{errors}");
    }

    #[test]
    fn example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/nerve.json");
        let c = load(&path, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.services.is_empty());
    }
}
