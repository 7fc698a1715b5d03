//! The config file as written: serde structs that mirror nerve.json
//! (`deny_unknown_fields`, every field optional so that a missing key is reported by the
//! validator next to the other errors), and the field checks every section uses.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::config::{ConfigErrors, ConfigPort, Seconds};
use common::etcd::EtcdFile;
use serde::Deserialize;

/// The top level of nerve.json.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NerveFile {
    pub(super) instance_id: Option<String>,
    #[serde(default)]
    pub(super) services: BTreeMap<String, ServiceFile>,
    pub(super) service_conf_dir: Option<PathBuf>,
    pub(super) heartbeat_path: Option<PathBuf>,
    pub(super) etcd: Option<EtcdFile>,
    pub(super) lease_ttl: Option<Seconds>,
    pub(super) reconcile_interval: Option<Seconds>,
    pub(super) shutdown_timeout: Option<Seconds>,
    pub(super) maintenance_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) admin_listen: common::admin::ListenSetting,
    /// This host's availability zone, registered as the `zone` label (else `NERVE_ZONE`,
    /// else IMDS with `zone_from_imds`).
    pub(super) zone: Option<String>,
    pub(super) zone_from_imds: Option<bool>,
    /// The IMDS to ask (default `http://169.254.169.254`, or
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`).
    pub(super) imds_endpoint: Option<String>,
    pub(super) applied_status_prefix: Option<String>,
}

/// One entry of `services` (or one file in `service_conf_dir`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceFile {
    pub(super) host: Option<String>,
    pub(super) port: Option<ConfigPort>,
    pub(super) reporter_type: Option<ReporterTypeFile>,
    pub(super) etcd_host: Option<String>,
    pub(super) etcd_port: Option<ConfigPort>,
    pub(super) etcd_path: Option<String>,
    pub(super) check_interval: Option<Seconds>,
    #[serde(default)]
    pub(super) checks: Vec<CheckFile>,
    pub(super) weight: Option<u64>,
    pub(super) haproxy_server_options: Option<String>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    pub(super) rate_limiting: Option<RateLimitFile>,
    pub(super) maintenance_file: Option<PathBuf>,
    // --- ZooKeeper reporter (issue 20): upstream nerve's keys -----------------------------
    pub(super) zk_hosts: Option<Vec<String>>,
    pub(super) zk_path: Option<String>,
    pub(super) node_type: Option<String>,
    pub(super) use_path_encoding: Option<bool>,
}

/// `reporter_type`: upstream's single name, or a list of them (report to each: how a
/// fleet registers in ZooKeeper and etcd at once while it migrates).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum ReporterTypeFile {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RateLimitFile {
    pub(super) shadow_mode: Option<bool>,
    pub(super) average_rate: Option<f64>,
    pub(super) max_burst: Option<u32>,
}

/// A check: one flat struct for every type, so that each key gets its own error path;
/// the validator rejects keys that do not belong to the check's type.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckFile {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) name: Option<String>,
    pub(super) host: Option<String>,
    pub(super) port: Option<ConfigPort>,
    pub(super) timeout: Option<Seconds>,
    pub(super) rise: Option<u32>,
    pub(super) fall: Option<u32>,
    // http
    pub(super) uri: Option<String>,
    pub(super) ssl: Option<bool>,
    pub(super) ssl_verify: Option<bool>,
    pub(super) ssl_ca_file: Option<PathBuf>,
    pub(super) open_timeout: Option<Seconds>,
    pub(super) read_timeout: Option<Seconds>,
    pub(super) ssl_timeout: Option<Seconds>,
    pub(super) headers: Option<BTreeMap<String, String>>,
    pub(super) expect: Option<String>,
    // exec
    pub(super) command: Option<CommandFile>,
    pub(super) shell: Option<bool>,
    // rabbitmq
    pub(super) username: Option<String>,
    pub(super) password: Option<common::Secret>,
    pub(super) vhost: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum CommandFile {
    Argv(Vec<String>),
    Line(String),
}

pub(super) fn positive(
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

pub(super) fn missing(errors: &mut ConfigErrors, path: String) {
    if !errors.mentions(&path) {
        errors.push(path, "missing");
    }
}
