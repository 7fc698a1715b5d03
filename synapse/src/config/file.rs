//! The config file as written: serde structs with `deny_unknown_fields` and their
//! default functions. Nothing here is checked beyond its type: see the validation
//! modules beside this one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::config::{ConfigPort, Seconds};
use common::etcd::EtcdFile;
use common::Secret;
use serde::Deserialize;

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
