//! The validated configuration: typed, checked, plain data that the rest of synapse
//! reads. Built only by [`Config::from_file`](super::Config::from_file) and its helpers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::config::ConfigError;
use common::etcd::EtcdSettings;
use common::{AddressPolicy, InstanceId, Port, Secret, ServiceName, ServicePath};

use crate::backends::{Backend, LabelFilter};

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub services: BTreeMap<ServiceName, ServiceConfig>,
    pub haproxy: Option<HaproxyConfig>,
    pub file_output: Option<FileOutputConfig>,
    pub debounce: Duration,
    pub debounce_max_wait: Duration,
    pub debounce_mode: DebounceMode,
    /// Where the admin endpoint listens; `None`: no endpoint.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Where synapse's own zone comes from (`zone`; `SYNAPSE_ZONE` is read at start-up).
    pub zone: common::zone::ZoneSource,
    /// This synapse's name in `applied_status`.
    pub instance_id: InstanceId,
    /// Where to publish the applied revisions; `None`: not published.
    pub applied_status: Option<AppliedStatusConfig>,
    /// Upstream keys that were ignored (and services skipped), one line each, for
    /// `--check-config` and the start-up log.
    pub warnings: Vec<ConfigError>,
}

/// `applied_status`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedStatusConfig {
    pub prefix: String,
    pub lease_ttl: Duration,
}

/// Shortest `applied_status.lease_ttl` (etcd refuses shorter leases, or lengthens them).
pub const MIN_APPLIED_STATUS_TTL: Duration = Duration::from_secs(2);
/// Default `applied_status.lease_ttl`.
pub const DEFAULT_APPLIED_STATUS_TTL: Duration = Duration::from_secs(10);

/// `debounce_mode`: when a change after a quiet period is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DebounceMode {
    /// At once; changes that follow within `debounce` of it (or of the apply it caused)
    /// wait for `debounce` of quiet, at most `debounce_max_wait`, and go in one apply.
    #[default]
    Leading,
    /// Every change waits for `debounce` of quiet, at most `debounce_max_wait` (synapse
    /// before 2026-12; the airbnb synapse's behaviour).
    Trailing,
}

/// One service, validated.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: ServiceName,
    pub discovery: DiscoveryConfig,
    pub label_filters: Vec<LabelFilter>,
    pub default_servers: Vec<Backend>,
    pub keep_default_servers: bool,
    pub use_previous_backends: bool,
    /// `backend_port_override`, or the deprecated `haproxy.server_port_override`.
    pub port_override: Option<Port>,
    /// claydotio's `server_backup_port`: one more `backup` server per instance.
    pub backup_port: Option<Port>,
    pub max_servers: usize,
    pub mass_removal_guard: GuardSettings,
    pub haproxy: ServiceHaproxy,
    pub file_output_disabled: bool,
    /// `prefer_zone`: same-zone servers normal, other zones `backup` (see
    /// `prefer_zone` in the `resolution` module).
    pub prefer_zone: Option<ZonePreference>,
}

/// A service's zone preference.
#[derive(Debug, Clone, PartialEq)]
pub struct ZonePreference {
    /// The preferred zone; `None` until synapse knows its own (`prefer_zone: true`):
    /// [`Config::set_own_zone`].
    pub zone: Option<String>,
    pub min: MinZoneServers,
}

/// `min_zone_servers`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinZoneServers {
    /// At least this many same-zone servers registered.
    Count(usize),
    /// At least this fraction (0 < x < 1) of all the service's servers in the zone,
    /// rounded up, and at least one.
    Fraction(f64),
}

impl Default for MinZoneServers {
    fn default() -> Self {
        Self::Count(1)
    }
}

/// Where a service's backends come from.
#[derive(Debug, Clone)]
pub enum DiscoveryConfig {
    Etcd(EtcdDiscovery),
    Zookeeper(ZkDiscovery),
    /// `base`/`static`: only `default_servers`.
    Static,
    Ec2Tag(Ec2TagDiscovery),
    Dns(DnsDiscovery),
    Multi(MultiDiscovery),
}

/// `dns`: every `check_interval`, resolve each server's name and publish one backend per
/// address.
#[derive(Debug, Clone)]
pub struct DnsDiscovery {
    pub servers: Vec<DnsServer>,
    /// The DNS server to ask; the system's resolver (`/etc/resolv.conf`) when unset.
    pub nameserver: Option<std::net::SocketAddr>,
    pub check_interval: Duration,
    pub policy: AddressPolicy,
}

/// One `servers` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsServer {
    /// The backends' name; the host name when unset.
    pub name: InstanceId,
    /// A DNS name (or an IP literal, used as it is). A name starting with `_`
    /// (`_http._tcp.example.com`) is an SRV name: its targets and ports are used.
    pub host: String,
    /// The port, unless an SRV record gives it (or `backend_port_override` replaces it).
    pub port: Option<Port>,
    pub labels: BTreeMap<String, String>,
}

impl DnsServer {
    pub fn is_srv(&self) -> bool {
        self.host.starts_with('_')
    }
}

#[derive(Debug, Clone)]
pub struct EtcdDiscovery {
    pub settings: EtcdSettings,
    pub path: ServicePath,
    pub policy: AddressPolicy,
    /// A full re-list this often, against missed events.
    pub resync_interval: Duration,
    /// A progress request this often; a stream silent for three of these is dead.
    pub progress_interval: Duration,
    /// Only nerve-shaped keys are accepted; others are rejected (`foreign_key`).
    pub strict_keys: bool,
    /// More keys below the path than this (valid or not), or more bytes in a list: the
    /// watcher keeps the last good set and retries, holding no more than this.
    pub max_keys: u64,
    pub max_bytes: u64,
}

/// `zookeeper` (issue 20): SmartStack's registry, as airbnb synapse reads it: every
/// child of `path` whose data is a registration.
#[derive(Debug, Clone)]
pub struct ZkDiscovery {
    pub settings: common::zookeeper::ZkSettings,
    pub path: ServicePath,
    pub policy: AddressPolicy,
    /// A full re-read this often, against missed events.
    pub resync_interval: Duration,
    /// More children below the path than this: the watcher keeps the last good set.
    pub max_keys: u64,
}

#[derive(Debug, Clone)]
pub struct Ec2TagDiscovery {
    pub tag_name: String,
    pub tag_value: String,
    pub aws_region: Option<String>,
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<Secret>,
    pub check_interval: Duration,
    /// The EC2 API endpoint; `https://ec2.<region>.amazonaws.com` when unset.
    pub endpoint: Option<String>,
    /// The instance metadata service, for role credentials; `http://169.254.169.254`
    /// when unset (or `AWS_EC2_METADATA_SERVICE_ENDPOINT`).
    pub imds_endpoint: Option<String>,
    /// The timeout of one EC2 API request.
    pub request_timeout: Duration,
    pub policy: AddressPolicy,
}

#[derive(Debug, Clone)]
pub struct MultiDiscovery {
    pub watchers: BTreeMap<String, DiscoveryConfig>,
    pub resolver: Resolver,
}

/// How `multi` combines its children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolver {
    /// Every child's backends together.
    Union,
    /// The first child, in this order, that is fresh and has backends.
    Sequential(Vec<String>),
}

/// The top-level `haproxy` section, validated.
#[derive(Debug, Clone)]
pub struct HaproxyConfig {
    pub global: Vec<String>,
    pub defaults: Vec<String>,
    pub extra_sections: BTreeMap<String, Vec<String>>,
    /// `None` when `do_writes` is off.
    pub config_file_path: Option<PathBuf>,
    pub candidate_config_file_path: Option<PathBuf>,
    /// haproxy.cfg's permission bits (default 0640: it may hold `stats auth` or userlist
    /// credentials); its group is `haproxy` when that group exists.
    pub config_file_mode: u32,
    pub socket_file_paths: Vec<PathBuf>,
    pub reload_command: Option<String>,
    pub check_command: Option<String>,
    pub do_reloads: bool,
    pub do_socket: bool,
    pub do_checks: bool,
    pub bind_address: String,
    pub restart_interval: Duration,
    pub restart_jitter: f64,
    pub state_file_path: Option<PathBuf>,
    pub state_file_ttl: Duration,
    pub shared_frontend: Option<Vec<String>>,
    pub use_nerve_weights: bool,
    pub server_order_seed: u64,
    pub max_server_id: u32,
    pub command_timeout: Duration,
    /// How a reload is done; `None` with `do_reloads: false`.
    pub reload_method: Option<ReloadMethod>,
    pub master_socket_path: Option<PathBuf>,
    pub pid_file_path: Option<PathBuf>,
    /// `Some` when synapse runs HAProxy itself.
    pub managed: Option<ManagedHaproxy>,
    /// `server-state-file` from the `global` lines: dumped before every reload.
    pub server_state_file: Option<PathBuf>,
    /// Whether servers may be added and deleted through the runtime API.
    pub dynamic_servers: bool,
    /// `dynamic_servers: slots`: every backend renders `slot<N>` servers in steps of
    /// this many, free ones disabled, filled and emptied at runtime.
    pub server_slots: Option<u32>,
}

/// `reload_method`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadMethod {
    /// `reload_command`, run by `sh -c`.
    Command(String),
    /// `reload` on the master CLI.
    MasterSocket,
    /// SIGUSR2 to the master (its PID from `pid_file_path`, or the managed child).
    Signal,
}

/// `managed: true`: synapse starts HAProxy in master-worker mode, restarts it when it
/// dies, and stops it on exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedHaproxy {
    pub binary: PathBuf,
    pub stop_timeout: Duration,
}

/// A service's `haproxy` section, validated.
#[derive(Debug, Clone, Default)]
pub struct ServiceHaproxy {
    pub disabled: bool,
    pub port: Option<Port>,
    pub bind_address: Option<String>,
    pub bind_options: Option<String>,
    pub server_options: Option<String>,
    pub listen: Vec<String>,
    pub frontend: Vec<String>,
    pub backend: Vec<String>,
    pub backend_name: Option<String>,
    pub backend_order: BackendOrder,
    pub shared_frontend: Vec<String>,
    pub cookie_value_method: CookieValueMethod,
    pub ignore_registry_server_options: bool,
}

/// `backend_order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendOrder {
    Asc,
    Desc,
    /// As discovered: for us, the set's own (sorted) order.
    NoShuffle,
    /// A pseudo-random order, fixed by `server_order_seed` (airbnb's default).
    #[default]
    Shuffle,
}

/// `cookie_value_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CookieValueMethod {
    /// The server name.
    #[default]
    Name,
    /// The SHA-1 of the server name, so clients do not learn server addresses.
    Hash,
}

#[derive(Debug, Clone)]
pub struct FileOutputConfig {
    pub output_directory: PathBuf,
}

/// The mass-removal guard's settings (config keys `mass_removal_guard.*`); the guard
/// itself is the `guard` module, above the config layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardSettings {
    pub enabled: bool,
    /// Trip only when more than this fraction of the stable set is lost (0 < f < 1).
    pub max_removed_fraction: f64,
    /// ... and at least this many servers (>= 1).
    pub min_removed_servers: usize,
    /// How long removals count together, from the first one.
    pub window: Duration,
    /// How long the last good set is kept after a trip.
    pub hold: Duration,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_removed_fraction: 0.5,
            min_removed_servers: 3,
            window: Duration::from_secs(10),
            hold: Duration::from_secs(30),
        }
    }
}
