//! Re-reading the config file on SIGHUP: what changed between two validated configs,
//! and which changes only a restart can make (pure; `lib.rs` applies the result).
//!
//! A new config goes through exactly the validation of start-up ([`Config::load`]).
//! It is refused as a whole (the running one stays) when it is invalid or changes a key
//! that is bound at start (the admin address, the files and sockets HAProxy is run
//! through, `file_output`'s directory). Otherwise services are added and removed, a
//! service whose discovery changed gets a new watcher, and one whose discovery did not
//! keeps its watcher (no re-list) and its backends.

use std::collections::BTreeSet;

use common::config::ConfigErrors;
use common::ServiceName;

use crate::config::{Config, ServiceConfig};

/// How the services of a new config differ from the running ones.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ServiceChanges {
    pub added: BTreeSet<ServiceName>,
    pub removed: BTreeSet<ServiceName>,
    /// Discovery changed: a new watcher replaces the old one.
    pub rewatched: BTreeSet<ServiceName>,
    /// Only what is done with the backends changed (haproxy lines, filters, ...): the
    /// watcher and its set stay.
    pub changed: BTreeSet<ServiceName>,
}

impl ServiceChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.rewatched.is_empty()
            && self.changed.is_empty()
    }
}

/// What a service's watcher is built from: a new watcher is needed when this changes.
/// (`Debug` covers every field; secrets print redacted, so a changed EC2 secret key
/// alone does not restart the watcher.)
fn watch_key(svc: &ServiceConfig) -> String {
    format!("{:?} {:?}", svc.discovery, svc.port_override)
}

/// Everything else about a service.
fn service_key(svc: &ServiceConfig) -> String {
    format!("{svc:?}")
}

/// Compares the services of `old` and `new`.
pub fn service_changes(old: &Config, new: &Config) -> ServiceChanges {
    let mut changes = ServiceChanges::default();
    for (name, svc) in &new.services {
        match old.services.get(name) {
            None => {
                changes.added.insert(name.clone());
            }
            Some(before) if watch_key(before) != watch_key(svc) => {
                changes.rewatched.insert(name.clone());
            }
            Some(before) if service_key(before) != service_key(svc) => {
                changes.changed.insert(name.clone());
            }
            Some(_) => {}
        }
    }
    for name in old.services.keys() {
        if !new.services.contains_key(name) {
            changes.removed.insert(name.clone());
        }
    }
    changes
}

/// The keys `new` changes that are bound at start-up, each with the reason; empty when
/// `new` can be applied to a running synapse.
pub fn restart_only_changes(old: &Config, new: &Config) -> ConfigErrors {
    let mut errors = ConfigErrors::default();
    let restart = "changed; this key takes effect only at start: restart synapse to change it";
    if old.admin_listen != new.admin_listen {
        errors.push("admin_listen", restart);
    }
    let dir = |c: &Config| c.file_output.as_ref().map(|f| f.output_directory.clone());
    if dir(old) != dir(new) {
        errors.push("file_output.output_directory", restart);
    }
    match (&old.haproxy, &new.haproxy) {
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => errors.push("haproxy", restart),
        (Some(o), Some(n)) => {
            let mut key = |name: &str, same: bool| {
                if !same {
                    errors.push(format!("haproxy.{name}"), restart);
                }
            };
            key("config_file_path", o.config_file_path == n.config_file_path);
            key(
                "socket_file_path",
                o.socket_file_paths == n.socket_file_paths,
            );
            key(
                "master_socket_path",
                o.master_socket_path == n.master_socket_path,
            );
            key("pid_file_path", o.pid_file_path == n.pid_file_path);
            key("managed", o.managed == n.managed);
            key("state_file_path", o.state_file_path == n.state_file_path);
            key("state_file_ttl", o.state_file_ttl == n.state_file_ttl);
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(services: &str, haproxy: &str) -> Config {
        let text = format!(
            r#"{{"services": {{{services}}},
                "haproxy": {{"config_file_path": "/tmp/h.cfg", "reload_command": "true",
                             "do_socket": false{haproxy}}}}}"#
        );
        Config::parse(&text, None).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    const WEB: &str = r#""web": {"discovery": {"method": "base"},
                                  "default_servers": [{"name": "a", "host": "127.0.0.1", "port": 1}],
                                  "haproxy": {"port": 3000}}"#;

    fn names(list: &[&str]) -> BTreeSet<ServiceName> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let (a, b) = (config(WEB, ""), config(WEB, ""));
        assert!(service_changes(&a, &b).is_empty());
        assert!(restart_only_changes(&a, &b).is_empty());
    }

    #[test]
    fn services_added_removed_rewatched_and_changed_are_told_apart() {
        let old = config(
            &format!(
                r#"{WEB}, "gone": {{"discovery": {{"method": "base"}}, "haproxy": {{"port": 3001}}}},
                   "lines": {{"discovery": {{"method": "base"}}, "haproxy": {{"port": 3002}}}}"#
            ),
            "",
        );
        let new = config(
            r#""web": {"discovery": {"method": "base"},
                       "default_servers": [{"name": "a", "host": "127.0.0.1", "port": 2}],
                       "haproxy": {"port": 3000}},
               "lines": {"discovery": {"method": "base"}, "haproxy": {"port": 3002, "backend": ["balance first"]}},
               "new": {"discovery": {"method": "etcd", "path": "/nerve/new", "hosts": ["127.0.0.1:2379"]},
                       "haproxy": {"port": 3003}}"#,
            "",
        );
        let c = service_changes(&old, &new);
        assert_eq!(c.added, names(&["new"]));
        assert_eq!(c.removed, names(&["gone"]));
        // default_servers are not the watcher's: web keeps its watcher.
        assert_eq!(c.changed, names(&["lines", "web"]));
        assert!(c.rewatched.is_empty());
        let moved = config(
            r#""web": {"discovery": {"method": "etcd", "path": "/nerve/web", "hosts": ["127.0.0.1:2379"]},
                       "haproxy": {"port": 3000}}"#,
            "",
        );
        assert_eq!(service_changes(&old, &moved).rewatched, names(&["web"]));
    }

    #[test]
    fn keys_bound_at_start_are_named() {
        let old = config(WEB, "");
        let new = config(
            WEB,
            r#", "global": ["maxconn 10"], "master_socket_path": "/tmp/m.sock", "reload_method": "master_socket""#,
        );
        let errors = restart_only_changes(&old, &new);
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["haproxy.master_socket_path"]);
        // global lines are rendered: a reload applies them.
        let lines = config(WEB, r#", "global": ["maxconn 10"]"#);
        assert!(restart_only_changes(&old, &lines).is_empty());
    }
}
