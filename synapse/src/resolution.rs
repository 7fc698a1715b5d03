//! Backends resolution: the per-service rules that turn a discovered set into the set to
//! route to (label filters, port overrides, the backup port, `default_servers`,
//! `use_previous_backends`, zone preference, the `max_servers` bound). Pure functions
//! over the config and the backend data.

use crate::backends::{Backend, BackendSet};
use crate::config::{MinZoneServers, ServiceConfig};

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
    let mut out = dedupe_server_names(out);
    if let Some(zone) = svc
        .prefer_zone
        .as_ref()
        .and_then(|p| Some((p.zone.as_deref()?, p.min)))
    {
        out = prefer_zone(out, zone.0, zone.1);
    }
    if out.len() > svc.max_servers {
        return Resolution::OverLimit { count: out.len() };
    }
    Resolution::Use(out)
}

/// Zone preference (`prefer_zone`): while the service has at least `min` servers in
/// `zone` (by their `zone` label), servers in other zones (or with no zone) become
/// `backup`: HAProxy sends them traffic only when every same-zone server is down by its
/// own checks. Below `min`, every server stays as it is: all zones are equal.
///
/// Only servers that are not already backup count (a `server_backup_port` twin or a
/// registry `backup` is not a second server). A fraction is of all those servers,
/// rounded up, and never less than one server.
pub fn prefer_zone(set: BackendSet, zone: &str, min: MinZoneServers) -> BackendSet {
    let in_zone = |b: &Backend| b.labels.get(common::zone::LABEL).map(String::as_str) == Some(zone);
    let (mut total, mut local) = (0usize, 0usize);
    for b in set.iter().filter(|b| !b.is_backup()) {
        total += 1;
        local += usize::from(in_zone(b));
    }
    let needed = match min {
        MinZoneServers::Count(n) => n.max(1),
        // Rounded up: 0.5 of 3 servers is 2. The fraction is < 1 and total is small, so
        // the product fits.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        MinZoneServers::Fraction(f) => ((f * total as f64).ceil() as usize).max(1),
    };
    if local < needed {
        return set;
    }
    set.into_iter()
        .map(|mut b| {
            if !in_zone(&b) {
                b.backup = true;
            }
            b
        })
        .collect()
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
mod tests {
    use super::*;
    use crate::backends::tests_support::backend;
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

    fn zoned(name: &str, port: u16, zone: Option<&str>) -> Backend {
        let mut b = backend(name, "127.0.0.1", port);
        if let Some(z) = zone {
            b.labels.insert("zone".into(), z.into());
        }
        b
    }

    /// (server name, backup) of each server, in order.
    fn split(set: &BackendSet) -> Vec<(String, bool)> {
        set.iter()
            .map(|b| (b.name.to_string(), b.is_backup()))
            .collect()
    }

    #[test]
    fn other_zones_are_backup_while_the_zone_has_enough_servers() {
        let set: BackendSet = [
            zoned("a1", 1, Some("za")),
            zoned("a2", 2, Some("za")),
            zoned("b1", 3, Some("zb")),
            zoned("n1", 4, None),
        ]
        .into();
        let want_split = vec![
            ("a1".into(), false),
            ("a2".into(), false),
            ("b1".into(), true),
            ("n1".into(), true),
        ];
        assert_eq!(
            split(&prefer_zone(set.clone(), "za", MinZoneServers::Count(1))),
            want_split
        );
        assert_eq!(
            split(&prefer_zone(set.clone(), "za", MinZoneServers::Count(2))),
            want_split
        );
        // Below the minimum: all zones equal, the set as it was.
        assert_eq!(
            prefer_zone(set.clone(), "za", MinZoneServers::Count(3)),
            set
        );
        // A zone nobody is in: nothing changes.
        assert_eq!(
            prefer_zone(set.clone(), "zc", MinZoneServers::Count(1)),
            set
        );
        // Fractions of all 4: 0.5 needs 2 (held), 0.6 needs 3 (not held).
        assert_eq!(
            split(&prefer_zone(
                set.clone(),
                "za",
                MinZoneServers::Fraction(0.5)
            )),
            want_split
        );
        assert_eq!(
            prefer_zone(set.clone(), "za", MinZoneServers::Fraction(0.6)),
            set
        );
        // A fraction never needs less than one server.
        let none_local: BackendSet = [zoned("b1", 3, Some("zb"))].into();
        assert_eq!(
            prefer_zone(none_local.clone(), "za", MinZoneServers::Fraction(0.01)),
            none_local
        );
        // Count(0) is treated as 1 (the config refuses it anyway).
        assert_eq!(
            prefer_zone(none_local.clone(), "za", MinZoneServers::Count(0)),
            none_local
        );
    }

    /// Servers that are backup already (the backup-port twin, a registry `backup`) are
    /// not counted as same-zone servers, and stay backup.
    #[test]
    fn backup_servers_do_not_count_toward_the_zone() {
        let mut registry_backup = zoned("a2", 2, Some("za"));
        registry_backup.haproxy_server_options = common::ServerOptions::parse("backup").ok();
        let set: BackendSet = [
            zoned("a1", 1, Some("za")),
            registry_backup,
            zoned("b1", 3, Some("zb")),
        ]
        .into();
        assert_eq!(
            prefer_zone(set.clone(), "za", MinZoneServers::Count(2)),
            set
        );
        assert_eq!(
            split(&prefer_zone(set, "za", MinZoneServers::Count(1))),
            [
                ("a1".into(), false),
                ("a2".into(), true),
                ("b1".into(), true)
            ]
        );
    }

    /// Through `resolve`, with the config's keys: `prefer_zone` with a zone name and a
    /// fraction, after the port override and backup port.
    #[test]
    fn resolve_applies_the_zone_preference_from_the_config() {
        let svc = service(
            "",
            r#", "prefer_zone": "za", "min_zone_servers": 0.4, "backend_port_override": 50001,
                "haproxy": {"server_backup_port": "50002"}"#,
        );
        let set: BackendSet = [zoned("a1", 80, Some("za")), zoned("b1", 80, Some("zb"))].into();
        let Resolution::Use(got) = resolve(&svc, &set, false) else {
            panic!()
        };
        let got: Vec<(String, bool)> = got
            .iter()
            .map(|b| (b.server_name(), b.is_backup()))
            .collect();
        assert_eq!(
            got,
            [
                ("a1_127.0.0.1:50001".to_owned(), false),
                ("a1_127.0.0.1:50002".to_owned(), true),
                ("b1_127.0.0.1:50001".to_owned(), true),
                ("b1_127.0.0.1:50002".to_owned(), true),
            ]
        );
        // prefer_zone: true with no zone known: as if off.
        let own = service("", r#", "prefer_zone": true"#);
        assert_eq!(resolve(&own, &set, false), Resolution::Use(set));
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
