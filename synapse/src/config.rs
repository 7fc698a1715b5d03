//! synapse's configuration: the airbnb synapse JSON format as a superset.
//!
//! ```text
//! file (JSON with comments) ──parse──► SynapseFile (serde, deny_unknown_fields)
//!                            ──validate──► Config (typed: ServiceName, Port, Duration, ...)
//! ```
//!
//! Every problem, structural or semantic, is collected with its key path
//! (`services.web.discovery.path: ...`) and reported at once; `--check-config` runs
//! exactly this. Operator-written HAProxy lines are trusted, but may not contain a
//! newline, a carriage return or a NUL: one such byte would let a single config value
//! open a new HAProxy section.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::config::{join_path, ConfigError, ConfigErrors, ConfigPort, Seconds};
use common::etcd::{normalize_endpoint, EtcdFile, EtcdSettings};
use common::upstream::Compat;
use common::{AddressPolicy, Host, InstanceId, Port, Secret, ServiceName, ServicePath};
use serde::Deserialize;

use crate::backends::{Backend, LabelCondition, LabelFilter};
use crate::guard::GuardSettings;

/// Per-service bound on instances (reliability B19).
pub const DEFAULT_MAX_SERVERS: usize = 1000;

// === the file format ===

/// The whole config file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynapseFile {
    #[serde(default)]
    pub services: BTreeMap<String, ServiceFile>,
    /// Every `*.json` file in this directory is one more service, named by its basename.
    pub service_conf_dir: Option<PathBuf>,
    pub haproxy: Option<HaproxyFile>,
    pub file_output: Option<FileOutputFile>,
    /// Quiet time before changes are applied, in seconds.
    pub debounce: Option<Seconds>,
    /// Longest a burst of changes may delay an apply, in seconds.
    pub debounce_max_wait: Option<Seconds>,
    /// `leading` (default: the first change after a quiet period is applied at once) or
    /// `trailing` (every change waits for `debounce` of quiet).
    pub debounce_mode: Option<String>,
    /// The mass-removal guard, for every service (a service's own section overrides it).
    pub mass_removal_guard: Option<MassRemovalGuardFile>,
    /// `address:port` of the admin endpoint (`/metrics`, `/status`, probes);
    /// `127.0.0.1:9102` if unset, off if `null`/`false`.
    #[serde(default)]
    pub admin_listen: common::admin::ListenSetting,
    /// This host's availability zone, for `prefer_zone` (else `SYNAPSE_ZONE`, else IMDS
    /// with `zone_from_imds`).
    pub zone: Option<String>,
    /// Read the zone from EC2's instance metadata when neither `zone` nor
    /// `SYNAPSE_ZONE` says.
    pub zone_from_imds: Option<bool>,
    /// The IMDS to ask (default `http://169.254.169.254`, or
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`).
    pub imds_endpoint: Option<String>,
    /// This synapse's name in what it publishes (the drain barrier); the host name if
    /// unset.
    pub instance_id: Option<String>,
    /// What synapse publishes about the registry revision it has applied (the drain
    /// barrier).
    pub applied_status: Option<AppliedStatusFile>,
}

/// `applied_status`: the key each synapse keeps in etcd saying which revision of each
/// watched service path its outputs run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedStatusFile {
    pub enabled: Option<bool>,
    pub prefix: Option<String>,
    /// Seconds: the lease under which the key lives (a dead synapse drops out after it).
    pub lease_ttl: Option<Seconds>,
}

/// `mass_removal_guard`: hold the last good set when most servers vanish at once.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MassRemovalGuardFile {
    pub enabled: Option<bool>,
    /// Trip only when more than this fraction of a service's stable servers vanish in
    /// one window ...
    pub max_removed_fraction: Option<f64>,
    /// ... and at least this many.
    pub min_removed_servers: Option<usize>,
    /// Seconds over which removals count together.
    pub window: Option<Seconds>,
    /// Seconds the last good set is kept after a trip.
    pub hold: Option<Seconds>,
}

/// One service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub discovery: DiscoveryFile,
    #[serde(default)]
    pub default_servers: Vec<ServerFile>,
    #[serde(default)]
    pub keep_default_servers: bool,
    #[serde(default = "default_true")]
    pub use_previous_backends: bool,
    pub backend_port_override: Option<ConfigPort>,
    /// Most servers accepted for this service; above it the last good set is kept.
    pub max_servers: Option<usize>,
    /// Overrides the top-level `mass_removal_guard`, key by key.
    pub mass_removal_guard: Option<MassRemovalGuardFile>,
    pub haproxy: Option<ServiceHaproxyFile>,
    pub file_output: Option<ServiceFileOutputFile>,
    /// `true`: prefer servers in synapse's own zone; a string: in that zone.
    pub prefer_zone: Option<PreferZoneFile>,
    /// While at least this many same-zone servers are registered (a number >= 1), or
    /// this fraction of all the service's servers (0 < x < 1), other zones are backup.
    pub min_zone_servers: Option<f64>,
}

/// `prefer_zone`: `true`/`false`, or a zone name.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PreferZoneFile {
    On(bool),
    Zone(String),
}

fn default_true() -> bool {
    true
}

/// A `default_servers` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub name: String,
    pub host: String,
    pub port: ConfigPort,
    pub weight: Option<u16>,
    pub haproxy_server_options: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `discovery`: one flat struct for every method, so that each key gets a precise path;
/// keys that do not belong to the chosen method are reported.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryFile {
    pub method: String,
    // etcd
    pub hosts: Option<Vec<String>>,
    pub path: Option<String>,
    pub etcd: Option<EtcdFile>,
    pub resync_interval: Option<Seconds>,
    pub progress_interval: Option<Seconds>,
    /// Accept only keys in nerve's shape (`<instance>/<service>_<lease>`).
    pub strict_keys: Option<bool>,
    /// Caps on the keys below the service path and on their bytes (keys + values).
    pub max_keys: Option<u64>,
    pub max_bytes: Option<u64>,
    // ec2tag
    pub tag_name: Option<String>,
    pub tag_value: Option<String>,
    pub aws_region: Option<String>,
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<Secret>,
    pub check_interval: Option<Seconds>,
    pub endpoint: Option<String>,
    pub imds_endpoint: Option<String>,
    pub request_timeout: Option<Seconds>,
    // dns
    pub servers: Option<Vec<DnsServerFile>>,
    pub nameserver: Option<String>,
    // zookeeper (issue 20): `hosts`, `path`, `resync_interval`, `max_keys` as above
    pub session_timeout: Option<Seconds>,
    // multi
    pub watchers: Option<BTreeMap<String, Self>>,
    pub resolver: Option<ResolverFile>,
    // every method
    pub label_filters: Option<Vec<LabelFilterFile>>,
    /// airbnb's deprecated single-filter form.
    pub label_filter: Option<LabelFilterFile>,
    pub allow_loopback: Option<bool>,
    pub allow_hostnames: Option<bool>,
}

/// A `dns` discovery server: `"host[:port]"`, or an object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DnsServerFile {
    Host(String),
    Entry(DnsServerEntryFile),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsServerEntryFile {
    pub name: Option<String>,
    pub host: String,
    pub port: Option<ConfigPort>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelFilterFile {
    pub label: String,
    pub condition: String,
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverFile {
    pub method: String,
    pub sequential_order: Option<Vec<String>>,
}

/// The top-level `haproxy` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxyFile {
    #[serde(default)]
    pub global: Vec<String>,
    #[serde(default)]
    pub defaults: Vec<String>,
    #[serde(default)]
    pub extra_sections: BTreeMap<String, Vec<String>>,
    pub config_file_path: Option<PathBuf>,
    pub candidate_config_file_path: Option<PathBuf>,
    /// haproxy.cfg's mode, an octal string (`"0640"`).
    pub config_file_mode: Option<String>,
    pub socket_file_path: Option<SocketPaths>,
    pub reload_command: Option<String>,
    pub check_command: Option<String>,
    #[serde(default = "default_true")]
    pub do_writes: bool,
    #[serde(default = "default_true")]
    pub do_reloads: bool,
    #[serde(default = "default_true")]
    pub do_socket: bool,
    /// Check every write (default). A file a reload or a start reads is checked first
    /// whatever this says; `false` skips only the check of a write whose server changes
    /// HAProxy took through the runtime API.
    #[serde(default = "default_true")]
    pub do_checks: bool,
    pub bind_address: Option<String>,
    pub restart_interval: Option<Seconds>,
    pub restart_jitter: Option<f64>,
    pub state_file_path: Option<PathBuf>,
    pub state_file_ttl: Option<Seconds>,
    pub shared_frontend: Option<Vec<String>>,
    #[serde(default)]
    pub use_nerve_weights: bool,
    pub server_order_seed: Option<u64>,
    pub max_server_id: Option<u32>,
    /// Timeout for `check_command` and `reload_command`, in seconds.
    pub command_timeout: Option<Seconds>,
    /// How to reload: `command`, `master_socket` or `signal`.
    pub reload_method: Option<String>,
    /// HAProxy's master CLI (`-S`): reloads and their confirmation (`show proc`).
    pub master_socket_path: Option<PathBuf>,
    /// HAProxy's pid file (`-p`): the master's PID, for `reload_method: signal`.
    pub pid_file_path: Option<PathBuf>,
    /// synapse starts, supervises and stops HAProxy itself.
    #[serde(default)]
    pub managed: bool,
    /// The HAProxy binary for `managed` mode.
    pub haproxy_binary: Option<PathBuf>,
    /// How long a managed HAProxy may take to finish its connections on exit, in seconds.
    pub stop_timeout: Option<Seconds>,
    /// Add and delete servers at runtime (`auto`), fill pre-allocated slots (`slots`),
    /// or neither (`off`).
    pub dynamic_servers: Option<String>,
    /// `dynamic_servers: slots`: slots per backend are allocated in steps of this many.
    pub server_slots: Option<u32>,
    /// Add what hitless reloads need to `global`/`defaults` when missing (default true).
    pub seamless_reload_lines: Option<bool>,
    /// Add `server-state-file` to `global` and `load-server-state-from-file global` to
    /// `defaults` when missing, so servers' runtime state survives reloads (default
    /// true; needs a stats socket and a written config file).
    pub server_state_lines: Option<bool>,
}

/// `socket_file_path`: one path, or one per HAProxy process (airbnb PR #199).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SocketPaths {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

/// A service's `haproxy` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceHaproxyFile {
    pub port: Option<ConfigPort>,
    pub bind_address: Option<String>,
    pub bind_options: Option<String>,
    pub server_options: Option<String>,
    #[serde(default)]
    pub listen: Vec<String>,
    #[serde(default)]
    pub frontend: Vec<String>,
    #[serde(default)]
    pub backend: Vec<String>,
    pub backend_name: Option<String>,
    pub backend_order: Option<String>,
    pub shared_frontend: Option<Vec<String>>,
    pub cookie_value_method: Option<String>,
    pub server_port_override: Option<ConfigPort>,
    pub server_backup_port: Option<ConfigPort>,
    #[serde(default)]
    pub disabled: bool,
    /// Ignore the registry's `haproxy_server_options` for this service.
    #[serde(default)]
    pub ignore_registry_server_options: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutputFile {
    pub output_directory: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFileOutputFile {
    #[serde(default)]
    pub disabled: bool,
}

// === the validated config ===

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

/// The host name, as an instance id, if it is one.
fn host_instance_id() -> Option<InstanceId> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    InstanceId::new(name.trim()).ok()
}

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
    /// [`crate::backends::prefer_zone`]).
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

/// Defaults, named as in docs/configuration-synapse.md.
pub mod defaults {
    use std::time::Duration;

    pub const DEBOUNCE: Duration = Duration::from_millis(100);
    pub const DEBOUNCE_MAX_WAIT: Duration = Duration::from_secs(1);
    pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);
    pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
    /// Keys below one service's path (valid or not) synapse will hold.
    pub const MAX_KEYS: u64 = 50_000;
    /// The ZooKeeper session synapse asks for (upstream's is about 36 s). Only its
    /// watches depend on it; its expiry costs a full re-read, never routing.
    pub const ZK_SESSION_TIMEOUT: Duration = Duration::from_secs(30);
    /// Bytes (keys + values) one list of a service's path may bring.
    pub const MAX_BYTES: u64 = 64 * 1024 * 1024;
    pub const EC2_CHECK_INTERVAL: Duration = Duration::from_secs(15);
    /// upstream's `dns` default.
    pub const DNS_CHECK_INTERVAL: Duration = Duration::from_secs(30);
    /// The port of a `nameserver` given without one.
    pub const DNS_PORT: u16 = 53;
    /// One EC2 API request.
    pub const EC2_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    pub const RESTART_INTERVAL: Duration = Duration::from_secs(2);
    pub const STATE_FILE_TTL: Duration = Duration::from_secs(86_400);
    pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
    /// haproxy.cfg: owner read-write, group read (`stats auth`, userlists).
    pub const CONFIG_FILE_MODE: u32 = 0o640;
    pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
    pub const SERVER_SLOTS: u32 = 10;
    pub const HAPROXY_BINARY: &str = "haproxy";
    /// The managed master CLI, beside haproxy.cfg.
    pub const MASTER_SOCKET_NAME: &str = "haproxy-master.sock";
    pub const BIND_ADDRESS: &str = "localhost";
    pub const MAX_SERVER_ID: u32 = 65_535;
    pub const SERVICE_PATH_PREFIX: &str = "/nerve/services";
}

fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        let mut errors = ConfigErrors::default();
        errors.push("", format_args!("cannot read {}: {e}", path.display()));
        errors
    })
}

/// JSON with comments → `T`, keeping what is readable; duplicate keys are errors too.
/// `upstream` rewrites the value from an upstream shape into ours first.
fn parse_lenient<T: serde::de::DeserializeOwned>(
    text: &str,
    upstream: impl FnOnce(&mut serde_json::Value),
) -> (Option<T>, ConfigErrors) {
    let mut value = match common::config::parse_jsonc(text) {
        Ok(v) => v,
        Err(errors) => return (None, errors),
    };
    upstream(&mut value);
    let mut errors = common::config::duplicate_keys(text);
    let (t, more) = common::config::from_value_lenient(value);
    errors.extend(more);
    (t, errors)
}

impl Config {
    /// Services with `prefer_zone: true` prefer `zone` (synapse's own, found at
    /// start-up); with `None` (no zone found) they route to every zone alike. Returns the
    /// names of the services that wanted their own zone.
    pub fn set_own_zone(&mut self, zone: Option<&str>) -> Vec<ServiceName> {
        let mut wanting = Vec::new();
        for svc in self.services.values_mut() {
            let Some(pref) = &mut svc.prefer_zone else {
                continue;
            };
            if pref.zone.is_some() {
                continue;
            }
            wanting.push(svc.name.clone());
            match zone {
                Some(z) => pref.zone = Some(z.to_owned()),
                None => svc.prefer_zone = None,
            }
        }
        wanting
    }

    /// Reads, parses and validates a config file (and its `service_conf_dir`).
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = read(path)?;
        Self::parse(&text, path.parent())
    }

    /// Parses and validates config text; `service_conf_dir` is resolved against `base`.
    /// Structural errors (unknown keys, wrong types) and semantic ones are reported
    /// together.
    pub fn parse(text: &str, base: Option<&Path>) -> Result<Self, ConfigErrors> {
        let mut compat = Compat::default();
        let (file, mut errors) = parse_lenient::<SynapseFile>(text, |v| {
            crate::upstream::normalize_file(v, &mut compat);
        });
        match file {
            Some(file) => Self::from_file(file, base, errors, compat),
            None => {
                compat.push_unsupported(&mut errors);
                Err(errors)
            }
        }
    }

    /// Validates a parsed file into a `Config`, adding to `errors` (those found while
    /// parsing) and to `compat` (what the upstream rewrite found), and fails if there
    /// are any errors.
    pub fn from_file(
        mut file: SynapseFile,
        base: Option<&Path>,
        mut errors: ConfigErrors,
        mut compat: Compat,
    ) -> Result<Self, ConfigErrors> {
        if let Some(dir) = &file.service_conf_dir {
            let dir = match base {
                Some(base) if dir.is_relative() => base.join(dir),
                _ => dir.clone(),
            };
            let has_file_output = file.file_output.is_some();
            load_service_dir(
                &dir,
                &mut file.services,
                has_file_output,
                &mut errors,
                &mut compat,
            );
        }
        let haproxy = file
            .haproxy
            .as_ref()
            .map(|h| validate_haproxy(h, &mut errors));
        let base_guard = validate_guard(
            GuardSettings::default(),
            file.mass_removal_guard.as_ref(),
            "mass_removal_guard",
            &mut errors,
        );
        let mut services = BTreeMap::new();
        for (name, svc) in &file.services {
            let path = join_path("services", name);
            let service_name = match ServiceName::new(name.as_str()) {
                Ok(n) => n,
                Err(e) => {
                    errors.push(path, format_args!("service name {e}"));
                    continue;
                }
            };
            let guard = validate_guard(
                base_guard,
                svc.mass_removal_guard.as_ref(),
                &join_path(&path, "mass_removal_guard"),
                &mut errors,
            );
            if let Some(mut s) = validate_service(&service_name, svc, &path, &mut errors) {
                s.mass_removal_guard = guard;
                services.insert(service_name, s);
            }
        }
        if file.services.is_empty() && compat.unsupported.is_empty() {
            errors.push("services", "at least one service is required");
        }
        compat.push_unsupported(&mut errors);
        if let Some(h) = &haproxy {
            check_backend_names(&services, h, &mut errors);
        }
        if haproxy.is_none() && file.file_output.is_none() {
            errors.push(
                "",
                "no output configured: add a `haproxy` or a `file_output` section",
            );
        }
        let debounce = file.debounce.map_or(defaults::DEBOUNCE, Duration::from);
        let debounce_max_wait = file
            .debounce_max_wait
            .map_or(defaults::DEBOUNCE_MAX_WAIT, Duration::from);
        if debounce_max_wait < debounce {
            errors.push("debounce_max_wait", "must not be smaller than `debounce`");
        }
        let debounce_mode = match file.debounce_mode.as_deref() {
            None | Some("leading") => DebounceMode::Leading,
            Some("trailing") => DebounceMode::Trailing,
            Some(_) => {
                errors.push("debounce_mode", "must be `leading` or `trailing`");
                DebounceMode::default()
            }
        };
        let file_output = file.file_output.map(|f| FileOutputConfig {
            output_directory: f.output_directory,
        });
        let admin_listen = file
            .admin_listen
            .resolve(common::admin::SYNAPSE_DEFAULT_LISTEN)
            .unwrap_or_else(|e| {
                errors.push("admin_listen", e);
                None
            });
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
            errors.push(
                "imds_endpoint",
                "is only used with zone_from_imds: true (EC2 discovery has its own)",
            );
        }
        let zone = common::zone::ZoneSource {
            configured: file.zone.clone(),
            env: None,
            imds_endpoint,
        };
        let instance_id = match file.instance_id.as_deref() {
            Some(id) => InstanceId::new(id).unwrap_or_else(|e| {
                errors.push("instance_id", e.to_string());
                InstanceId::new("synapse").expect("a valid literal")
            }),
            None => host_instance_id()
                .unwrap_or_else(|| InstanceId::new("synapse").expect("a valid literal")),
        };
        let status = file.applied_status.unwrap_or_default();
        let prefix = status
            .prefix
            .unwrap_or_else(|| common::applied::DEFAULT_PREFIX.to_owned());
        if let Err(e) = common::applied::validate_prefix(&prefix) {
            errors.push("applied_status.prefix", e);
        }
        let lease_ttl = status
            .lease_ttl
            .map_or(DEFAULT_APPLIED_STATUS_TTL, Duration::from);
        if lease_ttl < MIN_APPLIED_STATUS_TTL {
            errors.push("applied_status.lease_ttl", "must be at least 2 seconds");
        }
        let applied_status = status
            .enabled
            .unwrap_or(true)
            .then_some(AppliedStatusConfig { prefix, lease_ttl });
        errors.finish(Self {
            services,
            haproxy,
            file_output,
            debounce,
            debounce_max_wait,
            debounce_mode,
            admin_listen,
            zone,
            instance_id,
            applied_status,
            warnings: compat.warnings,
        })
    }
}

/// `base` with the keys `file` sets.
fn validate_guard(
    base: GuardSettings,
    file: Option<&MassRemovalGuardFile>,
    path: &str,
    errors: &mut ConfigErrors,
) -> GuardSettings {
    let Some(f) = file else { return base };
    let mut out = GuardSettings {
        enabled: f.enabled.unwrap_or(base.enabled),
        max_removed_fraction: f.max_removed_fraction.unwrap_or(base.max_removed_fraction),
        min_removed_servers: f.min_removed_servers.unwrap_or(base.min_removed_servers),
        window: f.window.map_or(base.window, Duration::from),
        hold: f.hold.map_or(base.hold, Duration::from),
    };
    if !(out.max_removed_fraction > 0.0 && out.max_removed_fraction < 1.0) {
        errors.push(
            join_path(path, "max_removed_fraction"),
            "must be between 0 and 1 (exclusive)",
        );
        out.max_removed_fraction = base.max_removed_fraction;
    }
    if out.window.is_zero() {
        errors.push(join_path(path, "window"), "must be more than 0");
    }
    if out.min_removed_servers == 0 {
        errors.push(join_path(path, "min_removed_servers"), "must be at least 1");
    }
    out
}

fn load_service_dir(
    dir: &Path,
    services: &mut BTreeMap<String, ServiceFile>,
    has_file_output: bool,
    errors: &mut ConfigErrors,
    compat: &mut Compat,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(
                "service_conf_dir",
                format_args!("cannot read {}: {e}", dir.display()),
            );
            return;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "json") && p.is_file())
        .collect();
    files.sort();
    for file in files {
        let Some(name) = file.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            errors.push(
                "service_conf_dir",
                format_args!("{}: file name is not UTF-8", file.display()),
            );
            continue;
        };
        let path = join_path("services", &name);
        if services.contains_key(&name) {
            errors.push(
                path,
                format_args!("defined both in the main config and in {}", file.display()),
            );
            continue;
        }
        let mut keep = true;
        let (svc, errs) = match read(&file) {
            Ok(text) => parse_lenient::<ServiceFile>(&text, |v| {
                keep = crate::upstream::normalize_service(v, &path, has_file_output, compat);
            }),
            Err(errs) => (None, errs),
        };
        if !keep {
            continue;
        }
        for e in errs.0 {
            errors.push(
                join_path(&path, &e.path),
                format_args!("{} (in {})", e.message, file.display()),
            );
        }
        if let Some(svc) = svc {
            services.insert(name, svc);
        }
    }
}

/// Operator text that goes into haproxy.cfg: trusted, but one line only.
fn check_line(text: &str, path: &str, errors: &mut ConfigErrors) -> bool {
    if text.bytes().any(|b| b == b'\n' || b == b'\r' || b == 0) {
        errors.push(
            path,
            "must not contain a newline, carriage return or NUL byte",
        );
        return false;
    }
    if text.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        errors.push(path, "must not contain control characters");
        return false;
    }
    true
}

fn check_lines(lines: &[String], path: &str, errors: &mut ConfigErrors) -> Vec<String> {
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if check_line(line, &join_path(path, &i.to_string()), errors) {
            out.push(line.trim().to_owned());
        }
    }
    out.retain(|l| !l.is_empty());
    out
}

/// A word that goes into haproxy.cfg in name position (a bind address, a backend name).
fn check_word(text: &str, path: &str, errors: &mut ConfigErrors) -> bool {
    let ok = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.:-[]/@".contains(&b));
    if !ok {
        errors.push(
            path,
            "may contain only letters, digits and `_ . : - [ ] / @`",
        );
    }
    ok
}

/// syslog facility names, for recognising HAProxy 1.x-era `log <facility>` lines.
const SYSLOG_FACILITIES: &[&str] = &[
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "auth2",
    "ftp", "ntp", "audit", "alert", "cron2", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// Rewrites the two legacy forms in SmartStack-era configs (the seed's among them) that
/// HAProxy 2.x refuses: `log <facility> [level]` without an address becomes
/// `log /dev/log <facility> [level]`. Other lines are returned as they are.
fn modernize_line(line: String) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["log", facility, rest @ ..] if SYSLOG_FACILITIES.contains(facility) => {
            let mut out = format!("log /dev/log {facility}");
            for w in rest {
                out.push(' ');
                out.push_str(w);
            }
            out
        }
        _ => line,
    }
}

/// `listen stats :1937` (an address on the section line, HAProxy 1.x) becomes the
/// header `listen stats` plus a `bind :1937` line.
fn split_section_address(header: &str) -> (String, Option<String>) {
    let words: Vec<&str> = header.split_whitespace().collect();
    match words.as_slice() {
        [kw @ ("listen" | "frontend"), name, addrs @ ..] if !addrs.is_empty() => (
            format!("{kw} {name}"),
            Some(format!("bind {}", addrs.join(" "))),
        ),
        _ => (words.join(" "), None),
    }
}

fn validate_haproxy(h: &HaproxyFile, errors: &mut ConfigErrors) -> HaproxyConfig {
    let p = |k: &str| join_path("haproxy", k);
    let modern = |lines: Vec<String>| lines.into_iter().map(modernize_line).collect::<Vec<_>>();
    let mut global = modern(check_lines(&h.global, &p("global"), errors));
    let mut defaults_lines = modern(check_lines(&h.defaults, &p("defaults"), errors));
    if h.seamless_reload_lines.unwrap_or(true) {
        add_seamless_reload_lines(&mut global, &mut defaults_lines);
    }
    let mut extra_sections = BTreeMap::new();
    for (header, lines) in &h.extra_sections {
        let path = join_path(&p("extra_sections"), header);
        if !check_line(header, &path, errors) {
            continue;
        }
        let first = header.split_whitespace().next().unwrap_or("");
        if !matches!(
            first,
            "listen"
                | "frontend"
                | "backend"
                | "userlist"
                | "peers"
                | "resolvers"
                | "mailers"
                | "cache"
                | "ring"
                | "http-errors"
                | "program"
        ) {
            errors.push(
                &path,
                "must start with a section keyword (listen, frontend, backend, userlist, ...)",
            );
            continue;
        }
        let (header, bind) = split_section_address(header);
        let mut lines = modern(check_lines(lines, &path, errors));
        if let Some(bind) = bind {
            lines.insert(0, bind);
        }
        if extra_sections.insert(header, lines).is_some() {
            errors.push(
                &path,
                "names the same section as another extra_sections key",
            );
        }
    }
    let config_file_path = if h.do_writes {
        if h.config_file_path.is_none() {
            errors.push(p("config_file_path"), "is required when do_writes is true");
        }
        h.config_file_path.clone()
    } else {
        None
    };
    let reload_command = h.reload_command.clone().filter(|c| !c.trim().is_empty());
    let managed = h.managed.then(|| ManagedHaproxy {
        binary: h
            .haproxy_binary
            .clone()
            .unwrap_or_else(|| PathBuf::from(defaults::HAPROXY_BINARY)),
        stop_timeout: h
            .stop_timeout
            .map_or(defaults::STOP_TIMEOUT, Duration::from),
    });
    if h.managed && config_file_path.is_none() {
        errors.push(p("managed"), "needs do_writes and config_file_path");
    }
    if !h.managed && (h.haproxy_binary.is_some() || h.stop_timeout.is_some()) {
        errors.push(
            p(if h.haproxy_binary.is_some() {
                "haproxy_binary"
            } else {
                "stop_timeout"
            }),
            "applies only with managed: true",
        );
    }
    let master_socket_path = h.master_socket_path.clone().or_else(|| {
        let dir = config_file_path.as_ref()?.parent()?;
        h.managed.then(|| dir.join(defaults::MASTER_SOCKET_NAME))
    });
    let reload_method = validate_reload_method(
        h,
        reload_command.as_ref(),
        master_socket_path.is_some(),
        errors,
    );
    let dynamic_servers = match h.dynamic_servers.as_deref() {
        None | Some("auto") => true,
        Some("off" | "slots") => false,
        Some(_) => {
            errors.push(p("dynamic_servers"), "must be `auto`, `slots` or `off`");
            true
        }
    };
    let server_slots = match (h.dynamic_servers.as_deref(), h.server_slots) {
        (Some("slots"), None) => Some(defaults::SERVER_SLOTS),
        (Some("slots"), Some(0)) => {
            errors.push(p("server_slots"), "must be at least 1");
            None
        }
        (Some("slots"), Some(n)) => Some(n),
        (_, None) => None,
        (_, Some(_)) => {
            errors.push(
                p("server_slots"),
                "applies only with dynamic_servers: slots",
            );
            None
        }
    };
    if let Some(c) = &reload_command {
        check_line(c, &p("reload_command"), errors);
    }
    if let Some(c) = &h.check_command {
        check_line(c, &p("check_command"), errors);
    }
    let bind_address = h
        .bind_address
        .clone()
        .unwrap_or_else(|| defaults::BIND_ADDRESS.to_owned());
    // `*` is HAProxy's "every address", as upstream configs write it.
    if !bind_address.is_empty() && bind_address != "*" {
        check_word(&bind_address, &p("bind_address"), errors);
    }
    let restart_jitter = h.restart_jitter.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&restart_jitter) {
        errors.push(p("restart_jitter"), "must be from 0.0 to 1.0");
    }
    let max_server_id = h.max_server_id.unwrap_or(defaults::MAX_SERVER_ID);
    if max_server_id == 0 {
        errors.push(p("max_server_id"), "must be at least 1");
    }
    let command_timeout = h
        .command_timeout
        .map_or(defaults::COMMAND_TIMEOUT, Duration::from);
    if command_timeout.is_zero() {
        errors.push(p("command_timeout"), "must be greater than 0");
    }
    let shared_frontend = h
        .shared_frontend
        .as_ref()
        .map(|l| check_lines(l, &p("shared_frontend"), errors));
    let socket_file_paths = match &h.socket_file_path {
        None => Vec::new(),
        Some(SocketPaths::One(p)) => vec![p.clone()],
        Some(SocketPaths::Many(ps)) => ps.clone(),
    };
    let config_file_mode = match h.config_file_mode.as_deref().map(parse_mode) {
        None => defaults::CONFIG_FILE_MODE,
        Some(Ok(mode)) => mode,
        Some(Err(why)) => {
            errors.push(p("config_file_mode"), why);
            defaults::CONFIG_FILE_MODE
        }
    };
    if h.server_state_lines.unwrap_or(true) && h.do_socket && !socket_file_paths.is_empty() {
        if let Some(cfg) = &config_file_path {
            add_server_state_lines(&mut global, &mut defaults_lines, cfg);
        }
    }
    let server_state_file = server_state_file(&global);
    HaproxyConfig {
        global,
        defaults: defaults_lines,
        extra_sections,
        config_file_path,
        candidate_config_file_path: h.candidate_config_file_path.clone(),
        config_file_mode,
        socket_file_paths,
        reload_command,
        check_command: h.check_command.clone().filter(|c| !c.trim().is_empty()),
        do_reloads: h.do_reloads,
        do_socket: h.do_socket,
        do_checks: h.do_checks,
        bind_address,
        restart_interval: h
            .restart_interval
            .map_or(defaults::RESTART_INTERVAL, Duration::from),
        restart_jitter,
        state_file_path: h.state_file_path.clone(),
        state_file_ttl: h
            .state_file_ttl
            .map_or(defaults::STATE_FILE_TTL, Duration::from),
        shared_frontend,
        use_nerve_weights: h.use_nerve_weights,
        server_order_seed: h.server_order_seed.unwrap_or_else(host_seed),
        max_server_id,
        command_timeout,
        reload_method,
        master_socket_path,
        pid_file_path: h.pid_file_path.clone(),
        managed,
        server_state_file,
        dynamic_servers,
        server_slots,
    }
}

/// `option idle-close-on-response` (HAProxy 2.6+): on a reload the old worker answers an
/// idle keep-alive client's next request with `Connection: close` instead of closing the
/// connection under it. HTTP mode only.
const IDLE_CLOSE: &str = "option idle-close-on-response";
const EXPOSE_FD: &str = "expose-fd listeners";

/// Whether `lines` set `option <name>` or `no option <name>` themselves.
fn sets_option(lines: &[String], option: &str) -> bool {
    lines.iter().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        matches!(words.as_slice(), ["option", o, ..] | ["no", "option", o, ..] if *o == option)
    })
}

/// Whether the `defaults` lines put every proxy in HTTP mode (HAProxy's own default is
/// TCP).
fn defaults_http(defaults: &[String]) -> bool {
    defaults
        .iter()
        .rev()
        .find_map(|l| l.trim().strip_prefix("mode "))
        .is_some_and(|m| m.trim() == "http")
}

/// What a hitless reload needs, added where the operator has not decided either way:
/// `option idle-close-on-response` in HTTP-mode `defaults`, and `expose-fd listeners` on
/// admin-level stats sockets (listeners for a `-x` reload; master-worker mode passes them
/// anyway). `seamless_reload_lines: false` turns this off.
fn add_seamless_reload_lines(global: &mut [String], defaults: &mut Vec<String>) {
    if defaults_http(defaults) && !sets_option(defaults, "idle-close-on-response") {
        defaults.push(IDLE_CLOSE.to_owned());
    }
    for line in global.iter_mut() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let admin = words.windows(2).any(|w| w == ["level", "admin"]);
        if words.first() == Some(&"stats")
            && words.get(1) == Some(&"socket")
            && admin
            && !words.contains(&"expose-fd")
        {
            line.push(' ');
            line.push_str(EXPOSE_FD);
        }
    }
}

/// `server-state-file <haproxy.cfg>.server-state` in `global` unless it names one, and
/// `load-server-state-from-file global` in `defaults` unless it says where to load from:
/// synapse dumps `show servers state` there before every reload, so the new worker
/// starts with the old one's weights, maintenance and drain states, and health.
fn add_server_state_lines(global: &mut Vec<String>, defaults: &mut Vec<String>, cfg: &Path) {
    let has = |lines: &[String], kw: &str| {
        lines
            .iter()
            .any(|l| l.split_whitespace().next() == Some(kw))
    };
    if !has(global, "server-state-file") {
        let file = format!("{}.server-state", cfg.display());
        if file.contains(char::is_whitespace) {
            // HAProxy would read two words; the operator can name a file instead.
            return;
        }
        global.push(format!("server-state-file {file}"));
    }
    if !has(defaults, "load-server-state-from-file") {
        defaults.push("load-server-state-from-file global".to_owned());
    }
}

impl HaproxyConfig {
    /// Why a reload of this config can fail requests, each naming the missing line
    /// (for `--check-config` and the start-up log).
    pub fn hitless_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.do_reloads {
            return out;
        }
        let idle_close = self.defaults.iter().any(|l| {
            l.split_whitespace().collect::<Vec<_>>() == ["option", "idle-close-on-response"]
        });
        if !idle_close {
            let why = if defaults_http(&self.defaults) {
                "it is switched off"
            } else {
                "`defaults` has no `mode http` (add it to each HTTP frontend instead)"
            };
            out.push(format!(
                "haproxy.defaults: no `{IDLE_CLOSE}` ({why}): a reload closes idle keep-alive \
                 client connections, and a client sending its next request at that moment \
                 gets an error"
            ));
        }
        let exposed = self
            .global
            .iter()
            .any(|l| l.starts_with("stats socket") && l.contains(EXPOSE_FD));
        let master_worker = self.managed.is_some()
            || matches!(
                self.reload_method,
                Some(ReloadMethod::MasterSocket | ReloadMethod::Signal)
            );
        if !exposed && !master_worker {
            out.push(format!(
                "haproxy.global: no admin-level `stats socket ... {EXPOSE_FD}`: unless HAProxy \
                 runs in master-worker mode (-W/-Ws), a reload refuses new connections \
                 while the listeners move"
            ));
        }
        out
    }
}

/// `reload_method`, or the one the other keys imply: `command` with a `reload_command`,
/// else `master_socket` with a master socket (managed mode has one), else `signal`
/// with a `pid_file_path`.
fn validate_reload_method(
    h: &HaproxyFile,
    reload_command: Option<&String>,
    master_socket: bool,
    errors: &mut ConfigErrors,
) -> Option<ReloadMethod> {
    let p = |k: &str| join_path("haproxy", k);
    let command = || reload_command.map(|c| ReloadMethod::Command(c.clone()));
    let method = match h.reload_method.as_deref() {
        None => command()
            .or_else(|| master_socket.then_some(ReloadMethod::MasterSocket))
            .or_else(|| (h.pid_file_path.is_some() || h.managed).then_some(ReloadMethod::Signal)),
        Some("command") => {
            if reload_command.is_none() {
                errors.push(
                    p("reload_command"),
                    "is required with reload_method command",
                );
            }
            command()
        }
        Some("master_socket") => {
            if !master_socket {
                errors.push(
                    p("master_socket_path"),
                    "is required with reload_method master_socket (unless managed)",
                );
            }
            Some(ReloadMethod::MasterSocket)
        }
        Some("signal") => {
            if h.pid_file_path.is_none() && !h.managed {
                errors.push(
                    p("pid_file_path"),
                    "is required with reload_method signal (unless managed)",
                );
            }
            Some(ReloadMethod::Signal)
        }
        Some(_) => {
            errors.push(
                p("reload_method"),
                "must be `command`, `master_socket` or `signal`",
            );
            None
        }
    };
    if h.do_reloads && method.is_none() && h.reload_method.is_none() {
        errors.push(
            p("reload_command"),
            "is required when do_reloads is true (or set master_socket_path, pid_file_path \
             or managed)",
        );
    }
    method.filter(|_| h.do_reloads)
}

/// The `server-state-file` a `global` section names, resolved against its
/// `server-state-base`, if any.
/// `value` or `default`; 0 is refused.
fn at_least_one(value: Option<u64>, default: u64, path: &str, errors: &mut ConfigErrors) -> u64 {
    match value {
        Some(0) => {
            errors.push(path, "must be at least 1");
            default
        }
        Some(v) => v,
        None => default,
    }
}

/// An octal mode (`"0640"`, `"640"`): permission bits only, never writable by others.
fn parse_mode(text: &str) -> Result<u32, &'static str> {
    let mode = u32::from_str_radix(text.trim(), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or("must be an octal mode from 0000 to 0777, e.g. \"0640\"")?;
    if mode & 0o002 != 0 {
        return Err("must not be writable by others");
    }
    if mode & 0o400 == 0 {
        return Err("must be readable by its owner");
    }
    Ok(mode)
}

fn server_state_file(global: &[String]) -> Option<PathBuf> {
    let value = |kw: &str| {
        global.iter().rev().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(kw))
                .then(|| words.next().map(|w| w.trim_matches('"').to_owned()))
                .flatten()
        })
    };
    let file = PathBuf::from(value("server-state-file")?);
    match value("server-state-base") {
        Some(base) if file.is_relative() => Some(PathBuf::from(base).join(file)),
        _ => Some(file),
    }
}

/// The default `server_order_seed`: stable on one host (so restarts render the same
/// file), different across hosts (so `balance first` does not pick the same server
/// everywhere).
fn host_seed() -> u64 {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    crate::haproxy::config::fnv1a(host.trim().as_bytes())
}

fn validate_service(
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

/// True if the discovery (or one of its `multi` children) polls EC2.
fn uses_ec2(d: &DiscoveryConfig) -> bool {
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

fn validate_discovery(
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
fn check_backend_names(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's config, exactly as in the blog post, with its braces closed.
    pub(crate) const SEED: &str = include_str!("../../examples/synapse-clay.json");

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, None)
    }

    #[test]
    fn debounce_mode_is_leading_unless_set() {
        let base = r#""services": {"web": {"discovery": {"method": "base"}}},
                      "file_output": {"output_directory": "/tmp/x""#;
        let c = parse(&format!("{{{base}}}}}")).unwrap();
        assert_eq!(c.debounce_mode, DebounceMode::Leading);
        let c = parse(&format!(r#"{{{base}}}, "debounce_mode": "trailing"}}"#)).unwrap();
        assert_eq!(c.debounce_mode, DebounceMode::Trailing);
        let errs = parse(&format!(r#"{{{base}}}, "debounce_mode": "lazy"}}"#)).unwrap_err();
        assert!(errs.mentions("debounce_mode"), "{errs}");
    }

    #[test]
    fn zone_keys_are_validated_with_their_paths() {
        let with = |top: &str, svc: &str| {
            parse(&format!(
                r#"{{{top} "services": {{"web": {{"discovery": {{"method": "base"}} {svc}}}}},
                    "file_output": {{"output_directory": "/tmp/x"}}}}"#
            ))
        };
        let c = with(
            r#""zone": "za","#,
            r#", "prefer_zone": true, "min_zone_servers": 0.5"#,
        )
        .unwrap();
        assert_eq!(c.zone.configured.as_deref(), Some("za"));
        assert_eq!(c.zone.imds_endpoint, None);
        let pref = c
            .services
            .values()
            .next()
            .unwrap()
            .prefer_zone
            .clone()
            .unwrap();
        assert_eq!(
            pref,
            ZonePreference {
                zone: None,
                min: MinZoneServers::Fraction(0.5)
            }
        );
        let c = with("", r#", "prefer_zone": "zb", "min_zone_servers": 3"#).unwrap();
        let pref = c
            .services
            .values()
            .next()
            .unwrap()
            .prefer_zone
            .clone()
            .unwrap();
        assert_eq!(
            pref,
            ZonePreference {
                zone: Some("zb".into()),
                min: MinZoneServers::Count(3)
            }
        );
        let c = with(
            r#""zone_from_imds": true, "imds_endpoint": "http://127.0.0.1:1","#,
            "",
        )
        .unwrap();
        assert_eq!(c.zone.imds_endpoint.as_deref(), Some("http://127.0.0.1:1"));
        assert!(c.services.values().next().unwrap().prefer_zone.is_none());

        for (top, svc, key) in [
            (r#""zone": "a zone","#, "", "zone"),
            (
                r#""imds_endpoint": "http://127.0.0.1:1","#,
                "",
                "imds_endpoint",
            ),
            ("", r#", "prefer_zone": "x/y""#, "services.web.prefer_zone"),
            (
                "",
                r#", "prefer_zone": true, "min_zone_servers": 0"#,
                "services.web.min_zone_servers",
            ),
            (
                "",
                r#", "prefer_zone": true, "min_zone_servers": 1.5"#,
                "services.web.min_zone_servers",
            ),
            (
                "",
                r#", "min_zone_servers": 2"#,
                "services.web.min_zone_servers",
            ),
        ] {
            let errs = with(top, svc).unwrap_err();
            assert!(errs.mentions(key), "{key}: {errs}");
        }
    }

    #[test]
    fn own_zone_fills_prefer_zone_true_or_turns_it_off() {
        let text = r#"{"services": {
            "own": {"discovery": {"method": "base"}, "prefer_zone": true},
            "named": {"discovery": {"method": "base"}, "prefer_zone": "zb"},
            "off": {"discovery": {"method": "base"}}},
            "file_output": {"output_directory": "/tmp/x"}}"#;
        let zone_of = |c: &Config, name: &str| {
            let svc = &c.services[&ServiceName::new(name).unwrap()];
            svc.prefer_zone.as_ref().map(|p| p.zone.clone())
        };
        let mut c = parse(text).unwrap();
        assert_eq!(
            c.set_own_zone(Some("za")),
            [ServiceName::new("own").unwrap()]
        );
        assert_eq!(zone_of(&c, "own"), Some(Some("za".into())));
        assert_eq!(zone_of(&c, "named"), Some(Some("zb".into())));
        assert_eq!(zone_of(&c, "off"), None);
        let mut c = parse(text).unwrap();
        assert_eq!(c.set_own_zone(None), [ServiceName::new("own").unwrap()]);
        assert_eq!(zone_of(&c, "own"), None);
        assert_eq!(zone_of(&c, "named"), Some(Some("zb".into())));
    }

    #[test]
    fn admin_listen_is_on_unless_turned_off() {
        let base = r#""services": {"web": {"discovery": {"method": "base"}}},
                      "file_output": {"output_directory": "/tmp/x"}"#;
        assert_eq!(
            parse(&format!("{{{base}}}")).unwrap().admin_listen,
            Some(common::admin::SYNAPSE_DEFAULT_LISTEN)
        );
        for off in ["null", "false"] {
            let c = parse(&format!(r#"{{{base}, "admin_listen": {off}}}"#)).unwrap();
            assert_eq!(c.admin_listen, None);
        }
        let c = parse(&format!(r#"{{{base}, "admin_listen": "127.0.0.1:9102"}}"#)).unwrap();
        assert_eq!(c.admin_listen, Some("127.0.0.1:9102".parse().unwrap()));
        let e = parse(&format!(r#"{{{base}, "admin_listen": "localhost"}}"#)).unwrap_err();
        assert!(e.mentions("admin_listen"), "{e}");
    }

    #[test]
    fn seed_config_loads() {
        let c = parse(SEED).unwrap();
        let svc = &c.services[&ServiceName::new("myservice").unwrap()];
        let DiscoveryConfig::Ec2Tag(ec2) = &svc.discovery else {
            panic!("not ec2tag: {:?}", svc.discovery)
        };
        assert_eq!(ec2.tag_name, "servicename");
        assert_eq!(ec2.check_interval, Duration::from_secs(120));
        assert_eq!(svc.port_override, Port::new(50001));
        assert_eq!(svc.backup_port, Port::new(50002));
        assert_eq!(svc.haproxy.port, Port::new(50003));
        assert_eq!(svc.haproxy.listen, ["mode http"]);
        let h = c.haproxy.unwrap();
        assert_eq!(h.bind_address, "");
        assert_eq!(h.reload_command.as_deref(), Some("echo noop"));
        assert!(!h.do_socket);
        assert_eq!(h.extra_sections.len(), 1);
        // HAProxy 1.x forms that 2.x refuses are modernised.
        assert_eq!(
            h.extra_sections["listen stats"][0], "bind :1937",
            "{:?}",
            h.extra_sections
        );
        assert!(h.global.contains(&"log /dev/log local1 notice".to_owned()));
        assert!(h.defaults.contains(&"log            global".to_owned()));
    }

    #[test]
    fn examples_load() {
        for text in [
            include_str!("../../examples/synapse.json"),
            include_str!("../../examples/synapse-etcd-clay.json"),
        ] {
            parse(text).unwrap();
        }
    }

    #[test]
    fn every_error_at_once_with_paths() {
        let errs = parse(
            r#"{
              "services": {
                "web": {
                  "discovery": {"method": "etcd", "path": "relative", "tag_name": "x",
                                "hosts": ["nope"], "bogus": 1},
                  "haproxy": {"port": 0, "listen": ["mode http\nglobal"], "backend_order": "up"},
                  "default_servers": [{"name": "a b", "host": "10.0.0.1", "port": 80}]
                },
                "api": {"discovery": {"method": "zookeeper"}},
                "bad name": {"discovery": {"method": "base"}}
              },
              "haproxy": {"do_reloads": true, "global": ["daemon\u0000"]}
            }"#,
        )
        .unwrap_err();
        for p in [
            "services.web.discovery.bogus",
            "services.web.haproxy.port",
            "services.web.discovery.path",
            "services.web.discovery.tag_name",
            "services.web.discovery.hosts.0",
            "services.web.haproxy.listen.0",
            "services.web.haproxy.backend_order",
            "services.web.default_servers.0.name",
            "services.api.discovery.hosts",
            "services.bad name",
            "haproxy.reload_command",
            "haproxy.config_file_path",
            "haproxy.global.0",
        ] {
            assert!(errs.mentions(p), "{p} not in:\n{errs}");
        }
    }

    #[test]
    fn mass_removal_guard_defaults_top_level_and_per_service() {
        let c = parse(
            r#"{"services": {"web": {"discovery": {"method": "etcd"}},
                             "api": {"discovery": {"method": "etcd"},
                                     "mass_removal_guard": {"enabled": false}}},
                "mass_removal_guard": {"max_removed_fraction": 0.3, "hold": 5,
                                       "min_removed_servers": 5},
                "file_output": {"output_directory": "/tmp/x"}}"#,
        )
        .unwrap();
        let g = |n: &str| c.services[&ServiceName::new(n).unwrap()].mass_removal_guard;
        let web = g("web");
        assert!(web.enabled);
        assert_eq!(web.max_removed_fraction, 0.3);
        assert_eq!(web.min_removed_servers, 5);
        assert_eq!(GuardSettings::default().min_removed_servers, 3);
        assert_eq!(web.hold, Duration::from_secs(5));
        assert_eq!(web.window, GuardSettings::default().window);
        assert_eq!(
            g("api"),
            GuardSettings {
                enabled: false,
                ..web
            }
        );
        let errs = parse(
            r#"{"services": {"web": {"discovery": {"method": "etcd"},
                    "mass_removal_guard": {"max_removed_fraction": 1.5, "window": 0}}},
                "mass_removal_guard": {"bogus": 1},
                "file_output": {"output_directory": "/tmp/x"}}"#,
        )
        .unwrap_err();
        assert!(errs.mentions("mass_removal_guard.bogus"), "{errs}");
        let errs = parse(
            r#"{"services": {"web": {"discovery": {"method": "etcd"},
                    "mass_removal_guard": {"max_removed_fraction": 1.5, "window": 0,
                                           "min_removed_servers": 0}}},
                "file_output": {"output_directory": "/tmp/x"}}"#,
        )
        .unwrap_err();
        for p in [
            "services.web.mass_removal_guard.min_removed_servers",
            "services.web.mass_removal_guard.max_removed_fraction",
            "services.web.mass_removal_guard.window",
        ] {
            assert!(errs.mentions(p), "{p} not in:\n{errs}");
        }
    }

    #[test]
    fn secrets_are_not_echoed() {
        let errs = parse(
            r#"{"services": {"web": {"discovery": {"method": "ec2tag", "tag_name": "a",
                "tag_value": "b", "aws_secret_access_key": "hunter2"}}},
                "file_output": {"output_directory": "/tmp/x"}}"#,
        )
        .unwrap_err();
        let text = errs.to_string();
        assert!(text.contains("aws_secret_access_key"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let c = parse(
            r#"{"services": {"web": {"discovery": {"method": "ec2tag", "tag_name": "a",
                "tag_value": "b", "aws_access_key_id": "AKIA", "aws_secret_access_key": "hunter2"},
                "backend_port_override": 8080}},
                "file_output": {"output_directory": "/tmp/x"}}"#,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn etcd_discovery_defaults_and_hosts() {
        let c = parse(
            r#"{"services": {"web": {"discovery": {"method": "etcd", "hosts": ["127.0.0.1:2379"]}}},
                "file_output": {"output_directory": "/tmp/x"}}"#,
        )
        .unwrap();
        let svc = &c.services[&ServiceName::new("web").unwrap()];
        let DiscoveryConfig::Etcd(e) = &svc.discovery else {
            panic!()
        };
        assert_eq!(e.path.as_str(), "/nerve/services/web");
        assert_eq!(e.settings.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(e.policy, AddressPolicy::default());
        assert!(svc.use_previous_backends);
        assert_eq!(svc.max_servers, DEFAULT_MAX_SERVERS);
    }

    #[test]
    fn multi_validates_children() {
        let errs = parse(
            r#"{"services": {"web": {"discovery": {"method": "multi",
                "watchers": {"primary": {"method": "etcd", "path": "/svc/web"},
                             "fallback": {"method": "ec2tag", "tag_name": "a"}},
                "resolver": {"method": "sequential", "sequential_order": ["primary", "nope"]}}}},
                "file_output": {"output_directory": "/tmp/x"}}"#,
        )
        .unwrap_err();
        assert!(errs.mentions("services.web.discovery.watchers.fallback.tag_value"));
        assert!(errs.mentions("services.web.discovery.resolver.sequential_order.1"));
        assert_eq!(errs.len(), 2, "{errs}");
    }

    #[test]
    fn service_conf_dir_adds_services() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(
            dir.path().join("conf.d/api.json"),
            r#"{"discovery": {"method": "base"}, // comment
                "default_servers": [{"name": "a", "host": "10.0.0.1", "port": "80"}],}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("conf.d/bad.json"),
            r#"{"discovery": {"method": "base"}, "oops": 1}"#,
        )
        .unwrap();
        let text =
            r#"{"service_conf_dir": "conf.d", "file_output": {"output_directory": "/tmp/x"}}"#;
        let errs = Config::parse(text, Some(dir.path())).unwrap_err();
        assert!(errs.mentions("services.bad.oops"), "{errs}");
        std::fs::remove_file(dir.path().join("conf.d/bad.json")).unwrap();
        let c = Config::parse(text, Some(dir.path())).unwrap();
        let api = &c.services[&ServiceName::new("api").unwrap()];
        assert_eq!(api.default_servers.len(), 1);
    }

    fn haproxy(keys: &str) -> Result<HaproxyConfig, ConfigErrors> {
        parse(&format!(
            r#"{{"services": {{"web": {{"discovery": {{"method": "base"}}}}}},
                "haproxy": {{"config_file_path": "/etc/haproxy/haproxy.cfg"{keys}}}}}"#
        ))
        .map(|c| c.haproxy.unwrap())
    }

    #[test]
    fn seamless_reload_lines_are_added_unless_set_or_opted_out() {
        // The seed as written: HTTP defaults get idle-close; its `echo noop` reload
        // cannot tell whether HAProxy is master-worker, so that is warned about.
        let seed = parse(SEED).unwrap().haproxy.unwrap();
        assert_eq!(seed.defaults.last().map(String::as_str), Some(IDLE_CLOSE));
        let w = seed.hitless_warnings();
        assert!(w.len() == 1 && w[0].contains(EXPOSE_FD), "{w:?}");

        let stats = r#""stats socket /s mode 600 level admin""#;
        let http = r#""mode http""#;
        let h = haproxy(&format!(
            r#", "reload_command": "true", "global": [{stats}, "stats socket /u level user"],
               "defaults": [{http}]"#
        ))
        .unwrap();
        assert_eq!(
            h.global,
            [
                "stats socket /s mode 600 level admin expose-fd listeners",
                "stats socket /u level user"
            ]
        );
        assert_eq!(h.defaults, ["mode http", IDLE_CLOSE]);
        assert!(h.hitless_warnings().is_empty());
        // Set either way by the operator: kept as written, and a `no` is warned about.
        let h = haproxy(&format!(
            r#", "reload_command": "true", "global": ["stats socket /s level admin expose-fd listeners"],
               "defaults": [{http}, "no option idle-close-on-response"]"#
        ))
        .unwrap();
        assert_eq!(
            h.global,
            ["stats socket /s level admin expose-fd listeners"]
        );
        assert_eq!(
            h.defaults,
            ["mode http", "no option idle-close-on-response"]
        );
        let w = h.hitless_warnings();
        assert!(w.len() == 1 && w[0].contains(IDLE_CLOSE), "{w:?}");
        // Opted out: nothing added, both named.
        let h = haproxy(&format!(
            r#", "reload_command": "true", "global": [{stats}], "defaults": [{http}],
               "seamless_reload_lines": false"#
        ))
        .unwrap();
        assert_eq!(h.defaults, ["mode http"]);
        assert_eq!(h.hitless_warnings().len(), 2);
        // TCP defaults: the option would be ignored there, so it is not added.
        let h = haproxy(r#", "master_socket_path": "/m", "defaults": ["mode tcp"]"#).unwrap();
        assert_eq!(h.defaults, ["mode tcp"]);
        let w = h.hitless_warnings();
        assert!(w.len() == 1 && w[0].contains("mode http"), "{w:?}");
    }

    #[test]
    fn reload_methods_and_managed_mode() {
        let h = haproxy(r#", "reload_command": "true""#).unwrap();
        assert_eq!(h.reload_method, Some(ReloadMethod::Command("true".into())));
        assert!(h.managed.is_none() && h.dynamic_servers);
        let h = haproxy(r#", "master_socket_path": "/run/m.sock""#).unwrap();
        assert_eq!(h.reload_method, Some(ReloadMethod::MasterSocket));
        let h = haproxy(r#", "pid_file_path": "/run/h.pid""#).unwrap();
        assert_eq!(h.reload_method, Some(ReloadMethod::Signal));
        let h =
            haproxy(r#", "managed": true, "stop_timeout": 3, "dynamic_servers": "off""#).unwrap();
        assert_eq!(h.reload_method, Some(ReloadMethod::MasterSocket));
        assert_eq!(
            h.master_socket_path.as_deref(),
            Some(Path::new("/etc/haproxy/haproxy-master.sock"))
        );
        let m = h.managed.unwrap();
        assert_eq!(
            (m.binary.to_str(), m.stop_timeout),
            (Some("haproxy"), Duration::from_secs(3))
        );
        assert!(!h.dynamic_servers && h.server_slots.is_none());
        let h = haproxy(r#", "reload_command": "true", "dynamic_servers": "slots""#).unwrap();
        assert_eq!((h.dynamic_servers, h.server_slots), (false, Some(10)));
        let errs = haproxy(r#", "reload_command": "true", "server_slots": 4"#).unwrap_err();
        assert!(errs.mentions("haproxy.server_slots"), "{errs}");
        let h = haproxy(r#", "do_reloads": false"#).unwrap();
        assert_eq!(h.reload_method, None);
        let errs = haproxy(
            r#", "reload_method": "master_socket", "haproxy_binary": "/x", "dynamic_servers": "on""#,
        )
        .unwrap_err();
        for p in [
            "haproxy.master_socket_path",
            "haproxy.haproxy_binary",
            "haproxy.dynamic_servers",
        ] {
            assert!(errs.mentions(p), "{p} not in:\n{errs}");
        }
        let errs = haproxy(r#", "reload_method": "signal""#).unwrap_err();
        assert!(errs.mentions("haproxy.pid_file_path"), "{errs}");
        let errs = haproxy(r#", "reload_method": "usr2""#).unwrap_err();
        assert!(errs.mentions("haproxy.reload_method"), "{errs}");
        let errs = parse(
            r#"{"services": {"web": {"discovery": {"method": "base"}}},
                "haproxy": {"do_writes": false, "managed": true}}"#,
        )
        .unwrap_err();
        assert!(errs.mentions("haproxy.managed"), "{errs}");
    }

    /// A corpus file (`../shared/compat`) with etcd in ZooKeeper's place, loaded.
    fn corpus(rel: &str) -> Config {
        parse(&common::upstream::corpus_with_etcd(rel)).unwrap_or_else(|e| panic!("{rel}:\n{e}"))
    }

    fn service<'a>(c: &'a Config, name: &str) -> &'a ServiceConfig {
        &c.services[&ServiceName::new(name).unwrap()]
    }

    #[test]
    fn zookeeper_discovery_and_its_upstream_keys() {
        let c = parse(
            r#"{"services": {
                "a": {"discovery": {"method": "zookeeper", "hosts": "zk2:2181, zk1",
                                    "path": "/nerve/services/a/services",
                                    "decode": {"method": "nerve"}, "retry_policy": {},
                                    "generator_config_path": "disabled"}},
                "b": {"discovery": {"method": "zookeeper_poll", "hosts": ["zk1:2181"],
                                    "path": "/b", "polling_interval_sec": 30,
                                    "session_timeout": 8}}},
                "file_output": {"output_directory": "/tmp/x"}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let DiscoveryConfig::Zookeeper(a) = &service(&c, "a").discovery else {
            panic!("not zookeeper")
        };
        assert_eq!(a.settings.hosts, ["zk1:2181", "zk2:2181"]);
        assert_eq!(a.settings.session_timeout, defaults::ZK_SESSION_TIMEOUT);
        assert_eq!(a.path.as_str(), "/nerve/services/a/services");
        let DiscoveryConfig::Zookeeper(b) = &service(&c, "b").discovery else {
            panic!("not zookeeper")
        };
        assert_eq!(b.settings.session_timeout, Duration::from_secs(8));
        let warned: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
        for path in [
            "services.a.discovery.decode",
            "services.a.discovery.retry_policy",
            "services.a.discovery.generator_config_path",
            "services.b.discovery.method",
            "services.b.discovery.polling_interval_sec",
        ] {
            assert!(warned.contains(&path), "{path} not in {warned:?}");
        }
        let errs = parse(
            r#"{"services": {
                "a": {"discovery": {"method": "zookeeper", "path": "relative"}},
                "b": {"discovery": {"method": "zookeeper", "hosts": ["z:2181/chroot"],
                                    "path": "/b", "tag_name": "x"}}},
                "file_output": {"output_directory": "/tmp/x"}}"#,
        )
        .unwrap_err();
        for p in [
            "services.a.discovery.hosts",
            "services.a.discovery.path",
            "services.b.discovery.hosts.0",
            "services.b.discovery.tag_name",
        ] {
            assert!(errs.mentions(p), "{p} not in:\n{errs}");
        }
    }

    #[test]
    fn upstream_server_options_as_a_list() {
        let c = corpus("synapse/05-airbnb-spec-minimum-conf-yaml.json");
        let h = &service(&c, "test").haproxy;
        assert_eq!(
            h.server_options.as_deref(),
            Some("some_haproxy_server_option")
        );
        assert_eq!(h.listen, ["some_haproxy_listen_option"]);
    }

    #[test]
    fn upstream_backend_and_hosts_as_strings() {
        let c = corpus("synapse/06-airbnb-readme-shared-frontend-yaml.json");
        assert_eq!(service(&c, "service1").haproxy.backend, ["mode http"]);
        let DiscoveryConfig::Etcd(e) = &service(&c, "service2").discovery else {
            panic!("not etcd")
        };
        assert_eq!(
            e.settings.endpoints,
            ["http://0.zookeeper.example.com:2181"]
        );
        assert_eq!(c.haproxy.unwrap().socket_file_paths.len(), 2);
    }

    #[test]
    fn upstream_services_as_a_list() {
        let c = corpus("synapse/07-airbnb-2012-minimum-services-list-yaml.json");
        let h = &service(&c, "test").haproxy;
        assert_eq!(h.port, Port::new(3210));
        assert_eq!(h.server_options.as_deref(), Some("test_option"));
        assert_eq!(h.listen, ["test_option"]);
        assert_eq!(service(&c, "test").default_servers.len(), 1);
        // A list entry without a name is reported, not dropped.
        let errs = parse(
            r#"{"services": [{"discovery": {"method": "base"}}],
                "file_output": {"output_directory": "/tmp/x"}}"#,
        )
        .unwrap_err();
        assert!(errs.mentions("services"), "{errs}");
    }

    #[test]
    fn upstream_128_bit_server_order_seed_and_string_port() {
        let c = corpus("synapse/19-yelp-synapse-tools-generated-zk.json");
        let seed = c.haproxy.as_ref().unwrap().server_order_seed;
        assert_ne!(seed, 0);
        assert_eq!(
            corpus("synapse/19-yelp-synapse-tools-generated-zk.json")
                .haproxy
                .unwrap()
                .server_order_seed,
            seed
        );
        assert_eq!(service(&c, "test_service").haproxy.port, Port::new(1234));
        assert_eq!(
            service(&c, "test_service.superregion").backend_name(),
            "test_service.superregion"
        );
    }

    #[test]
    fn upstream_ports_as_strings_in_a_service_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(
            dir.path().join("conf.d/ec2.json"),
            common::upstream::corpus_file("synapse-services/05-airbnb-spec-ec2tag-ec2tagtest.json"),
        )
        .unwrap();
        let c = Config::parse(
            r#"{"service_conf_dir": "conf.d", "file_output": {"output_directory": "/tmp/x"}}"#,
            Some(dir.path()),
        )
        .unwrap();
        let s = service(&c, "ec2");
        assert_eq!(
            (s.haproxy.port, s.port_override),
            (Port::new(8080), Port::new(8081))
        );
    }

    #[test]
    fn upstream_keys_warn_and_nginx_only_services_are_skipped() {
        let c = corpus("synapse/20-yelp-synapse-tools-generated-nginx.json");
        assert_eq!(c.services.len(), 2, "the nginx listener is skipped");
        let warned: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(
            warned,
            [
                "nginx",
                "services.test_service.nginx",
                "services.test_service.nginx_listener",
                "services.test_service.superregion.nginx",
            ]
        );
        let c = corpus("synapse/01-airbnb-synapse-conf.json");
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0].message.contains("/metrics"),
            "{:?}",
            c.warnings
        );
        // An unknown key is still an error, with its path.
        let errs = parse(
            r#"{"services": {"web": {"discovery": {"method": "etcd", "discovery_jiter": 1}}},
                "statsd": {}, "file_output": {"output_directory": "/tmp/x"}}"#,
        )
        .unwrap_err();
        assert!(
            errs.mentions("services.web.discovery.discovery_jiter"),
            "{errs}"
        );
        assert_eq!(errs.len(), 1, "{errs}");
    }

    #[test]
    fn upstream_bind_address_star_and_old_etcd_form() {
        let c = parse(
            r#"{"services": {"web": {"discovery": {"method": "etcd", "host": "10.0.0.9", "port": 4001},
                                     "haproxy": {"port": 80, "bind_address": "*"}}},
                "haproxy": {"do_writes": false, "do_reloads": false, "bind_address": "*"}}"#,
        )
        .unwrap();
        let DiscoveryConfig::Etcd(e) = &service(&c, "web").discovery else {
            panic!("not etcd")
        };
        assert_eq!(e.settings.endpoints, ["http://10.0.0.9:4001"]);
        assert_eq!(c.haproxy.unwrap().bind_address, "*");
    }

    #[test]
    fn unsupported_methods_are_one_line() {
        let errs = parse(
            r#"{"services": {"a": {"discovery": {"method": "zookeeper_dns", "hosts": 1, "zk": 2}},
                             "b": {"discovery": {"method": "marathon", "marathon_api_url": "x"}},
                             "c": {"discovery": {"method": "zookeeper_dns"}},
                             "d": {"discovery": {"method": "etcd"}}},
                "file_output": {"output_directory": "/tmp/x"}}"#,
        )
        .unwrap_err();
        assert_eq!(errs.len(), 1, "{errs}");
        let line = errs.to_string();
        assert!(
            line.starts_with(
                "services.a.discovery.method: not supported by this build: \
                              `zookeeper_dns` discovery (2 uses), `marathon` discovery;"
            ),
            "{line}"
        );
        // Services with ':' whose HAProxy names collide are an error.
        let errs = parse(
            r#"{"services": {"a:b": {"discovery": {"method": "base"}},
                             "a_b": {"discovery": {"method": "base"}}},
                "haproxy": {"do_writes": false, "do_reloads": false}}"#,
        )
        .unwrap_err();
        assert!(errs.mentions("services.a_b"), "{errs}");
    }

    #[test]
    fn dns_discovery_servers_nameserver_and_ports() {
        let c = corpus("synapse/03-airbnb-hostheader-test-dns.json");
        let DiscoveryConfig::Dns(d) = &service(&c, "service1").discovery else {
            panic!("not dns")
        };
        assert_eq!(d.nameserver, Some("127.0.0.1:53".parse().unwrap()));
        assert_eq!(d.check_interval, defaults::DNS_CHECK_INTERVAL);
        assert_eq!(d.servers[0].host, "0.www.example.com");
        assert_eq!(d.servers[0].name.as_str(), "0.www.example.com");
        // A bare name gets port 80, with a warning naming the entry.
        assert_eq!(d.servers[0].port, Port::new(80));
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].path.ends_with("servers.0"));
        let c = parse(
            r#"{"services": {"web": {"discovery": {"method": "dns", "nameserver": "[::1]:5353",
                "check_interval": 2, "servers": ["a.example:81", "[2001:db8::1]:82",
                {"name": "c", "host": "c.example", "port": "83", "labels": {"az": "b"}},
                {"host": "_http._tcp.example"}]}}},
                "file_output": {"output_directory": "/tmp/x"}}"#,
        )
        .unwrap();
        let DiscoveryConfig::Dns(d) = &service(&c, "web").discovery else {
            panic!("not dns")
        };
        assert_eq!(d.nameserver, Some("[::1]:5353".parse().unwrap()));
        let ports: Vec<Option<Port>> = d.servers.iter().map(|s| s.port).collect();
        assert_eq!(ports, [Port::new(81), Port::new(82), Port::new(83), None]);
        assert_eq!(d.servers[1].host, "2001:db8::1");
        assert_eq!(d.servers[2].labels["az"], "b");
        assert!(d.servers[3].is_srv() && !d.servers[0].is_srv());
        assert!(c.warnings.is_empty());
        let errs = parse(
            r#"{"services": {"a": {"discovery": {"method": "dns", "servers": []}},
                             "b": {"discovery": {"method": "dns", "nameserver": "dns.example",
                                   "servers": ["x:0", {"host": "bad host", "port": 1},
                                               {"host": "ok.example"}], "tag_name": "x"}}},
                "file_output": {"output_directory": "/tmp/x"}}"#,
        )
        .unwrap_err();
        for p in [
            "services.a.discovery.servers",
            "services.b.discovery.nameserver",
            "services.b.discovery.servers.0",
            "services.b.discovery.servers.1.host",
            "services.b.discovery.servers.2",
            "services.b.discovery.tag_name",
        ] {
            assert!(errs.mentions(p), "{p} not in:\n{errs}");
        }
        assert_eq!(errs.len(), 6, "{errs}");
    }

    #[test]
    fn server_state_file_comes_from_global() {
        let h = haproxy(
            r#", "reload_command": "true",
               "global": ["server-state-base /var/lib/haproxy", "server-state-file state"]"#,
        )
        .unwrap();
        assert_eq!(
            h.server_state_file.as_deref(),
            Some(Path::new("/var/lib/haproxy/state"))
        );
        let h =
            haproxy(r#", "reload_command": "true", "global": ["server-state-file /s"]"#).unwrap();
        assert_eq!(h.server_state_file.as_deref(), Some(Path::new("/s")));
        let h = haproxy(r#", "reload_command": "true""#).unwrap();
        assert_eq!(h.server_state_file, None);
    }

    #[test]
    fn server_state_lines_are_added_with_a_stats_socket_unless_set_or_opted_out() {
        let sock = r#", "reload_command": "true", "socket_file_path": "/run/h.sock""#;
        let h = haproxy(sock).unwrap();
        assert_eq!(
            h.server_state_file.as_deref(),
            Some(Path::new("/etc/haproxy/haproxy.cfg.server-state"))
        );
        assert!(h
            .global
            .contains(&"server-state-file /etc/haproxy/haproxy.cfg.server-state".to_owned()));
        assert!(h
            .defaults
            .contains(&"load-server-state-from-file global".to_owned()));
        // The operator's own lines are kept (no second one).
        let h = haproxy(&format!(
            r#"{sock}, "global": ["server-state-file /s"], "defaults": ["load-server-state-from-file none"]"#
        ))
        .unwrap();
        assert_eq!(h.server_state_file.as_deref(), Some(Path::new("/s")));
        assert_eq!(h.global, ["server-state-file /s"]);
        assert_eq!(h.defaults, ["load-server-state-from-file none"]);
        // Opted out, or no stats socket to dump the state through: nothing added.
        for keys in [
            format!(r#"{sock}, "server_state_lines": false"#),
            format!(r#"{sock}, "do_socket": false"#),
            r#", "reload_command": "true""#.to_owned(),
        ] {
            let h = haproxy(&keys).unwrap();
            assert_eq!(h.server_state_file, None, "{keys}");
            assert!(h.defaults.is_empty(), "{keys}: {:?}", h.defaults);
        }
    }
}
