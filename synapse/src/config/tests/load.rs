//! Top-level keys, the guard, conf.d, the seed and the examples.

use super::*;

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
        include_str!("../../../../examples/synapse.json"),
        include_str!("../../../../examples/synapse-etcd-clay.json"),
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
    let text = r#"{"service_conf_dir": "conf.d", "file_output": {"output_directory": "/tmp/x"}}"#;
    let errs = Config::parse(text, Some(dir.path())).unwrap_err();
    assert!(errs.mentions("services.bad.oops"), "{errs}");
    std::fs::remove_file(dir.path().join("conf.d/bad.json")).unwrap();
    let c = Config::parse(text, Some(dir.path())).unwrap();
    let api = &c.services[&ServiceName::new("api").unwrap()];
    assert_eq!(api.default_servers.len(), 1);
}
