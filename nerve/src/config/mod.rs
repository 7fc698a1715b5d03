//! nerve's config file: the airbnb nerve JSON format as a superset, read as JSON with
//! comments and trailing commas, and validated into a typed [`Config`] with every problem
//! reported at once with its key path (`services.web.checks.0.uri: missing`).
//!
//! Two layers, as everywhere in this workspace: serde `*File` structs that mirror the file
//! (`deny_unknown_fields`, every field optional so that a missing key is reported by the
//! validator next to the other errors rather than stopping the parse), then validation
//! into types that cannot hold a bad value. `--check-config` runs exactly [`load`].
//!
//! This module holds the validated types; the reading and the validation, section by
//! section, live in its sub-modules: `file` (the file as written), `load` (the top
//! level, [`load`]/[`parse`]), `conf_d` (`service_conf_dir`), `service` (a service, its
//! reporters and its rate limit), `check` (one check) and `upstream` (the rewrite of
//! airbnb/Yelp configs into our shape, before serde reads them).

mod check;
mod conf_d;
mod file;
mod load;
mod service;
#[cfg(test)]
mod tests;
mod upstream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use common::config::ConfigError;
use common::etcd::EtcdSettings;
use common::{InstanceId, Registration, ServiceName, ServicePath};

use crate::rate_limit::RateLimit;

pub use load::{load, parse, parse_in};

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
