//! Backends: what a watcher discovers, and the per-service rules that turn a discovered
//! set into the set to route to (label filters, port overrides, the backup port,
//! `default_servers`, `use_previous_backends`, the `max_servers` bound).
//!
//! Everything here is ordered (`BTreeSet`), so that rendering is deterministic.

use std::collections::{BTreeMap, BTreeSet};

use common::{Host, InstanceId, Port, Registration, ServerOptions, Weight};

use crate::config::ServiceConfig;

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

/// The outcome of applying a service's rules to a discovered set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Route to exactly these.
    Use(BackendSet),
    /// Keep what is routed now (`use_previous_backends` with an empty discovery).
    KeepPrevious,
    /// Too many servers: keep what is routed now, and say so.
    OverLimit { count: usize },
}

/// Applies a service's rules to what discovery found. Pure.
pub fn resolve(svc: &ServiceConfig, discovered: &BackendSet, has_previous: bool) -> Resolution {
    let mut out = BackendSet::new();
    for b in discovered {
        if !svc.label_filters.iter().all(|f| f.matches(b)) {
            continue;
        }
        let mut b = b.clone();
        if let Some(p) = svc.port_override {
            b.port = p;
        }
        if let Some(backup_port) = svc.backup_port {
            out.insert(Backend {
                port: backup_port,
                backup: true,
                ..b.clone()
            });
        }
        out.insert(b);
    }
    if out.is_empty() {
        if !svc.default_servers.is_empty() {
            return Resolution::Use(svc.default_servers.iter().cloned().collect());
        }
        if svc.use_previous_backends && has_previous {
            return Resolution::KeepPrevious;
        }
    } else if svc.keep_default_servers {
        out.extend(svc.default_servers.iter().cloned());
    }
    let out = dedupe_server_names(out);
    if out.len() > svc.max_servers {
        return Resolution::OverLimit { count: out.len() };
    }
    Resolution::Use(out)
}

/// Two entries with one server name (same name, host and port, e.g. a registration
/// written under two keys with different weights) would render two `server` lines with
/// one name, which HAProxy refuses. Keep the first in the set's order: deterministic.
fn dedupe_server_names(set: BackendSet) -> BackendSet {
    let mut seen = std::collections::BTreeSet::new();
    set.into_iter()
        .filter(|b| seen.insert(b.server_name()))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::tests_support::backend;
    use super::*;
    use crate::config::Config;

    /// A service with `discovery_extra` keys in its discovery and `extra` keys beside it.
    fn service(discovery_extra: &str, extra: &str) -> ServiceConfig {
        let text = format!(
            r#"{{"services": {{"web": {{"discovery": {{"method": "etcd"{discovery_extra}}}{extra}}}}},
                "file_output": {{"output_directory": "/tmp/x"}}}}"#
        );
        Config::parse(&text, None)
            .unwrap()
            .services
            .into_values()
            .next()
            .unwrap()
    }

    #[test]
    fn empty_discovery_keeps_previous_or_uses_defaults() {
        let svc = service("", "");
        assert_eq!(
            resolve(&svc, &BackendSet::new(), true),
            Resolution::KeepPrevious
        );
        assert_eq!(
            resolve(&svc, &BackendSet::new(), false),
            Resolution::Use(BackendSet::new())
        );
        let svc = service(
            "",
            r#", "use_previous_backends": false, "keep_default_servers": true,
                "default_servers": [{"name": "d", "host": "10.0.0.9", "port": 80}]"#,
        );
        let d = backend("d", "10.0.0.9", 80);
        assert_eq!(
            resolve(&svc, &BackendSet::new(), true),
            Resolution::Use([d.clone()].into())
        );
        let a = backend("a", "10.0.0.1", 80);
        assert_eq!(
            resolve(&svc, &[a.clone()].into(), true),
            Resolution::Use([a, d].into())
        );
    }

    #[test]
    fn overrides_backup_port_and_filters() {
        let svc = service(
            r#", "label_filters": [{"label": "az", "condition": "equals", "value": "a"}]"#,
            r#", "backend_port_override": 50001, "haproxy": {"server_backup_port": "50002"}"#,
        );
        let mut a = backend("a", "10.0.0.1", 80);
        a.labels.insert("az".into(), "a".into());
        let mut b = backend("b", "10.0.0.2", 80);
        b.labels.insert("az".into(), "b".into());
        let Resolution::Use(set) = resolve(&svc, &[a, b].into(), false) else {
            panic!()
        };
        let got: Vec<(String, bool)> = set
            .iter()
            .map(|b| (b.server_name(), b.is_backup()))
            .collect();
        assert_eq!(
            got,
            [
                ("a_10.0.0.1:50001".to_owned(), false),
                ("a_10.0.0.1:50002".to_owned(), true)
            ]
        );
    }

    #[test]
    fn one_server_per_server_name() {
        let svc = service("", "");
        let a = backend("a", "10.0.0.1", 80);
        let mut heavy = a.clone();
        heavy.weight = common::Weight::new(3);
        let Resolution::Use(set) = resolve(&svc, &[heavy, a.clone()].into(), false) else {
            panic!()
        };
        assert_eq!(set, [a].into());
    }

    #[test]
    fn max_servers_bound() {
        let svc = service("", r#", "max_servers": 2"#);
        let set: BackendSet = (1..=3).map(|i| backend("a", "10.0.0.1", i)).collect();
        assert_eq!(
            resolve(&svc, &set, true),
            Resolution::OverLimit { count: 3 }
        );
    }
}
