//! Backends: what a watcher discovers and what synapse routes to, as plain data (the
//! config layer builds `default_servers` and `label_filters` from these types). The
//! per-service rules that turn a discovered set into the set to route to are in
//! the `resolution` module, above the config layer.
//!
//! Everything here is ordered (`BTreeSet`), so that rendering is deterministic.

use std::collections::{BTreeMap, BTreeSet};

use common::{Host, InstanceId, Port, Registration, ServerOptions, Weight};

/// One server of a service. Built only from validated parts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub name: InstanceId,
    pub host: Host,
    pub port: Port,
    /// HAProxy `backup`: takes traffic only when every non-backup server is down.
    pub backup: bool,
    pub weight: Option<Weight>,
    pub haproxy_server_options: Option<ServerOptions>,
    /// Used for `label_filters`; never rendered.
    pub labels: BTreeMap<String, String>,
}

impl From<Registration> for Backend {
    fn from(r: Registration) -> Self {
        Self {
            name: r.name,
            host: r.host,
            port: r.port,
            backup: false,
            weight: r.weight,
            haproxy_server_options: r.haproxy_server_options,
            labels: r.labels,
        }
    }
}

impl Backend {
    /// SmartStack's server name, `<name>_<host>:<port>`.
    pub fn server_name(&self) -> String {
        format!("{}_{}:{}", self.name, self.host, self.port)
    }

    /// Backup from either source: the backup port, or the registry's `backup` option.
    pub fn is_backup(&self) -> bool {
        self.backup
            || self
                .haproxy_server_options
                .as_ref()
                .is_some_and(ServerOptions::is_backup)
    }
}

/// A complete set of backends.
pub type BackendSet = BTreeSet<Backend>;

/// What a watcher publishes: a complete set, whether its source is reachable now
/// (`fresh: false` means "the last known set, the source is away"), and which kind of
/// source it came from (for `/status` and the metrics: is this service on its EC2
/// fallback right now?).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovered {
    pub backends: BackendSet,
    pub fresh: bool,
    pub origin: Origin,
    /// The etcd revision this set is complete as of (every change under the prefix up to
    /// it is in the set), for the drain barrier; `None` from other sources.
    pub revision: Option<i64>,
}

/// The kind of source a discovered set came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    Etcd,
    /// ZooKeeper, SmartStack's registry (issue 20).
    Zookeeper,
    Ec2,
    Dns,
    /// `base`/`static` discovery: nothing discovered, `default_servers` only.
    #[default]
    Static,
    /// A `multi` union of sources of different kinds.
    Mixed,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Etcd => "etcd",
            Self::Zookeeper => "zookeeper",
            Self::Ec2 => "ec2",
            Self::Dns => "dns",
            Self::Static => "static",
            Self::Mixed => "mixed",
        }
    }
}

/// `label_filters` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelFilter {
    pub label: String,
    pub condition: LabelCondition,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelCondition {
    Equals,
    NotEquals,
}

impl LabelFilter {
    /// airbnb semantics: `equals` needs the label present with that value; `not-equals`
    /// passes when the label is absent or different.
    pub fn matches(&self, b: &Backend) -> bool {
        let v = b.labels.get(&self.label);
        match self.condition {
            LabelCondition::Equals => v == Some(&self.value),
            LabelCondition::NotEquals => v != Some(&self.value),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A plain backend for tests.
    pub(crate) fn backend(name: &str, host: &str, port: u16) -> Backend {
        Backend {
            name: InstanceId::new(name).unwrap(),
            host: Host::parse(host).unwrap(),
            port: Port::new(port).unwrap(),
            backup: false,
            weight: None,
            haproxy_server_options: None,
            labels: BTreeMap::new(),
        }
    }
}
