//! The top-level `haproxy` section: added lines, reload methods, the server-state file.

use super::*;
use crate::config::haproxy::{EXPOSE_FD, IDLE_CLOSE};

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
    let h = haproxy(r#", "managed": true, "stop_timeout": 3, "dynamic_servers": "off""#).unwrap();
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
    let h = haproxy(r#", "reload_command": "true", "global": ["server-state-file /s"]"#).unwrap();
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
