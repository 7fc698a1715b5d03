//! Discovery methods and upstream (airbnb/Yelp) config shapes, including the
//! `../shared/compat` corpus.

use super::*;

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
