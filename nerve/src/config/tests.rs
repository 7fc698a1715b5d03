//! The config's unit tests: whole files in, a [`Config`] or every error out.

use std::path::Path;

use common::config::{self as cfg, ConfigErrors};

use super::*;

fn parse_ok(text: &str) -> Config {
    parse(text, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(text: &str) -> ConfigErrors {
    parse(text, &Overrides::default()).expect_err("config accepted")
}

#[test]
fn the_zone_label_goes_on_every_registration_without_its_own() {
    let mut c = parse_ok(
        r#"{"instance_id": "h1", "zone": "za", "services": {
            "web": {"host": "127.0.0.1", "port": 1, "reporter_type": "etcd", "etcd_path": "/s/web"},
            "own": {"host": "127.0.0.1", "port": 2, "reporter_type": "etcd", "etcd_path": "/s/own",
                    "labels": {"zone": "zother"}}}}"#,
    );
    assert_eq!(c.zone.configured.as_deref(), Some("za"));
    assert_eq!(c.zone.imds_endpoint, None);
    c.label_zone("za");
    let label = |name: &str| {
        c.services[&ServiceName::new(name).unwrap()]
            .registration
            .labels["zone"]
            .clone()
    };
    assert_eq!(label("web"), "za");
    assert_eq!(label("own"), "zother");
    assert!(c.services[&ServiceName::new("web").unwrap()]
        .registration
        .encode()
        .contains(r#""labels":{"zone":"za"}"#));

    let c = parse_ok(
        r#"{"instance_id": "h1", "zone_from_imds": true, "imds_endpoint": "http://127.0.0.1:9", "services": {}}"#,
    );
    assert_eq!(c.zone.imds_endpoint.as_deref(), Some("http://127.0.0.1:9"));
    for (text, key) in [
        (
            r#"{"instance_id": "h1", "zone": "a b", "services": {}}"#,
            "zone",
        ),
        (
            r#"{"instance_id": "h1", "imds_endpoint": "http://127.0.0.1:9", "services": {}}"#,
            "imds_endpoint",
        ),
    ] {
        let errs = parse_err(text);
        assert!(errs.to_string().contains(key), "{key}: {errs}");
    }
}

#[test]
fn smartstack_config_with_comments_loads() {
    let c = parse_ok(
        r#"{
          // pasted from a SmartStack host
          "instance_id": "web-01",
          "services": {
            "web": {
              "host": "10.0.0.5", "port": 8080,
              "reporter_type": "etcd", "etcd_host": "10.0.0.1", "etcd_port": 2379,
              "etcd_path": "/nerve/services/web/services",
              "check_interval": 2,
              "checks": [
                {"type": "http", "uri": "/health", "timeout": 0.2, "rise": 3, "fall": 2,
                 "headers": {"Host": "web.internal"}, "expect": "OK"},
              ],
              "weight": 2, "haproxy_server_options": "backup",
              "labels": {"az": "us-east-1a"},
            },
          },
          "heartbeat_path": "/tmp/nerve.heartbeat",
        }"#,
    );
    assert_eq!(c.instance_id.as_str(), "web-01");
    assert_eq!(c.etcd.endpoints, ["http://10.0.0.1:2379"]);
    assert_eq!(c.lease_ttl, DEFAULT_LEASE_TTL);
    let web = &c.services[&ServiceName::new("web").unwrap()];
    assert_eq!(web.path.as_str(), "/nerve/services/web/services");
    assert_eq!(web.check_interval, Duration::from_secs(2));
    assert_eq!(
        web.registration.encode(),
        r#"{"host":"10.0.0.5","port":8080,"name":"web-01","weight":2,"haproxy_server_options":"backup","labels":{"az":"us-east-1a"}}"#
    );
    let check = &web.checks[0];
    assert_eq!((check.rise.get(), check.fall.get()), (3, 2));
    let CheckKind::Http(http) = &check.kind else {
        panic!("not http: {check:?}")
    };
    assert_eq!(http.url, "http://10.0.0.5:8080/health");
    assert_eq!(http.read_timeout, Duration::from_millis(200));
    assert_eq!(http.connect_timeout, DEFAULT_OPEN_TIMEOUT);
    assert_eq!(
        http.headers,
        [("Host".to_owned(), "web.internal".to_owned())]
    );
}

#[test]
fn defaults() {
    let c = parse_ok(
        r#"{"instance_id":"a","services":{"web":{"host":"127.0.0.1","port":80,
            "checks":[{"type":"tcp"}]}}}"#,
    );
    let web = c.services.values().next().unwrap();
    assert_eq!(web.path.as_str(), "/nerve/services/web");
    assert_eq!(web.check_interval, DEFAULT_CHECK_INTERVAL);
    assert_eq!(c.etcd.endpoints, ["http://127.0.0.1:2379"]);
    assert_eq!(c.reconcile_interval, DEFAULT_RECONCILE_INTERVAL);
    assert_eq!(c.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
    assert_eq!(
        web.checks[0].kind,
        CheckKind::Tcp(TcpCheckConfig {
            host: "127.0.0.1".into(),
            port: 80,
            timeout: DEFAULT_CHECK_TIMEOUT
        })
    );
    assert_eq!(web.checks[0].name, "tcp 127.0.0.1:80");
    assert!(web.rate_limit.is_none());
}

#[test]
fn reporters_one_list_or_zookeeper_by_default_with_zk_keys() {
    let c = parse_ok(
        r#"{"instance_id": "i-1", "services": {
            "a": {"host": "127.0.0.1", "port": 80},
            "b": {"host": "127.0.0.1", "port": 81, "zk_hosts": ["zk2", "zk1:2182"],
                  "zk_path": "/nerve/services/b/services"},
            "c": {"host": "127.0.0.1", "port": 82, "reporter_type": ["zookeeper", "etcd"],
                  "zk_hosts": ["zk1:2182", "zk2:2181"], "zk_path": "/c",
                  "use_path_encoding": true, "node_type": "ephemeral_sequential"}}}"#,
    );
    let targets = |name: &str| c.services[&ServiceName::new(name).unwrap()].targets.clone();
    assert_eq!(targets("a"), ReportTargets::default());
    let b = targets("b");
    assert!(!b.etcd);
    let zk = b.zookeeper.expect("zookeeper");
    assert_eq!(zk.hosts, ["zk1:2182", "zk2:2181"]);
    assert_eq!(zk.path.as_str(), "/nerve/services/b/services");
    assert!(!zk.use_path_encoding);
    let c = targets("c");
    assert!(c.etcd);
    assert!(c.zookeeper.as_ref().is_some_and(|z| z.use_path_encoding));
}

#[test]
fn zookeeper_mistakes_are_errors_with_their_paths() {
    let errors = parse_err(
        r#"{"instance_id": "i-1", "services": {
            "a": {"host": "127.0.0.1", "port": 80, "reporter_type": "zookeeper"},
            "b": {"host": "127.0.0.1", "port": 81, "reporter_type": "etcd",
                  "zk_hosts": ["z"], "zk_path": "/b"},
            "c": {"host": "127.0.0.1", "port": 82, "zk_hosts": ["z:0"], "zk_path": "c",
                  "node_type": "persistent"},
            "d": {"host": "127.0.0.1", "port": 83, "reporter_type": []}}}"#,
    );
    for path in [
        "services.a.zk_hosts",
        "services.a.zk_path",
        "services.b.zk_hosts",
        "services.b.zk_path",
        "services.c.zk_hosts.0",
        "services.c.zk_path",
        "services.c.node_type",
        "services.d.reporter_type",
    ] {
        assert!(errors.mentions(path), "{path} not in:\n{errors}");
    }
}

#[test]
fn every_error_is_reported_with_its_path() {
    let errors = parse_err(
        r#"{
          "instance_id": "web-01",
          "bogus": 1,
          "lease_ttl": 1,
          "services": {
            "web": {"host": "127.0.0.1", "port": 0, "check_interval": "fast",
                    "checks": [{"type": "http"}, {"type": "tcp", "uri": "/x"},
                               {"type": "bogus"}, {"type": "exec", "command": "true"}]},
            "api": {"host": "127.0.0.1", "port": 82},
            "api": {"host": "127.0.0.1", "port": 81, "weight": 300,
                    "haproxy_server_options": "check port 22", "reporter_type": "consul"},
            "bad name": {"host": "127.0.0.1", "port": 83},
            "db": {"port": 84}
          }
        }"#,
    );
    for path in [
        "bogus",
        "lease_ttl",
        "services.web.port",
        "services.web.check_interval",
        "services.web.checks.0.uri",
        "services.web.checks.1.uri",
        "services.web.checks.2.type",
        "services.web.checks.3.command",
        "services.api",
        "services.api.weight",
        "services.api.haproxy_server_options",
        "services.api.reporter_type",
        "services.bad name",
        "services.db.host",
    ] {
        assert!(errors.mentions(path), "{path} missing from:\n{errors}");
    }
    assert_eq!(errors.len(), 14, "{errors}");
}

/// A corpus file (`../shared/compat`) with etcd in ZooKeeper's place.
fn corpus(rel: &str) -> Result<Config, ConfigErrors> {
    parse(
        &common::upstream::corpus_with_etcd(rel),
        &Overrides::default(),
    )
}

#[test]
fn upstream_yelp_names_with_colons_load() {
    let c = corpus("nerve/08-yelp-nerve-tools-generated-zk.json").unwrap();
    let name = "test_service.my_superregion:10.0.0.1.1234.v2.new";
    let svc = &c.services[&ServiceName::new(name).unwrap()];
    assert_eq!(svc.path.as_str(), "/smartstack/global/test_service");
    assert_eq!(svc.registration.labels["superregion:my_superregion"], "");
    let warned: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        warned,
        [
            "services.test_service.another_superregion:10.0.0.1.1234.v2.new.zk_cluster_name",
            "services.test_service.my_superregion:10.0.0.1.1234.v2.new.zk_cluster_name",
        ]
    );
    // The default etcd path of such a service is valid too.
    let c =
        parse_ok(r#"{"instance_id": "h", "services": {"a:b": {"host": "10.0.0.1", "port": 1}}}"#);
    let svc = &c.services[&ServiceName::new("a:b").unwrap()];
    assert_eq!(svc.path.as_str(), "/nerve/services/a:b");
}

#[test]
fn rabbitmq_and_redis_checks() {
    let mut value = cfg::parse_jsonc(&common::upstream::corpus_with_etcd(
        "nerve/01-airbnb-nerve-example.json",
    ))
    .unwrap();
    value.as_object_mut().unwrap().remove("service_conf_dir");
    let c = parse(&value.to_string(), &Overrides::default()).unwrap();
    let svc = &c.services[&ServiceName::new("rabbitmq_service").unwrap()];
    let CheckKind::Rabbitmq(r) = &svc.checks[0].kind else {
        panic!("not rabbitmq: {:?}", svc.checks[0])
    };
    assert_eq!((r.username.as_str(), r.vhost.as_str()), ("guest", "/"));
    assert_eq!(r.password.expose(), "guest");
    assert_eq!(r.address.port, 5672);
    assert_eq!(svc.checks[0].name, "rabbitmq 1.2.3.4:5672");
    let errors = parse_err(
        r#"{"instance_id": "h", "services": {"q": {"host": "127.0.0.1", "port": 5672,
            "checks": [{"type": "rabbitmq", "password": "hunter2", "uri": "/x"},
                       {"type": "redis", "username": "u"}]}}}"#,
    );
    assert!(errors.mentions("services.q.checks.0.uri"), "{errors}");
    assert!(errors.mentions("services.q.checks.1.username"), "{errors}");
    assert!(!errors.to_string().contains("hunter2"));
    let c = parse_ok(
        r#"{"instance_id": "h", "services": {"q": {"host": "127.0.0.1", "port": 5672,
            "checks": [{"type": "rabbitmq", "password": "hunter2"}]}}}"#,
    );
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn upstream_2013_service_checks_and_machine_check() {
    let c = corpus("nerve/03-airbnb-2013-service_checks.json").unwrap();
    assert_eq!(c.services.len(), 2);
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.warnings[0].path, "machine_check");
}

#[test]
fn upstream_keys_warn_once_each() {
    // With the rabbitmq service left out, Yelp's example loads with its upstream keys.
    let mut value = cfg::parse_jsonc(&common::upstream::corpus_with_etcd(
        "nerve/02-yelp-nerve-example-prometheus.json",
    ))
    .unwrap();
    let top = value.as_object_mut().unwrap();
    top.remove("service_conf_dir");
    top["services"]
        .as_object_mut()
        .unwrap()
        .remove("rabbitmq_service");
    let c = parse(&value.to_string(), &Overrides::default()).unwrap();
    let warned: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        warned,
        ["statsd", "prometheus", "max_repeated_report_failures"]
    );
    assert!(c.warnings[0].message.contains("/metrics"));
}

#[test]
fn instance_id_comes_from_the_file_or_the_override() {
    let text = r#"{"services":{}}"#;
    let errors = parse_err(text);
    assert!(errors.mentions("instance_id"), "{errors}");
    let c = parse(
        text,
        &Overrides {
            instance_id: Some("from-cli".into()),
        },
    )
    .unwrap();
    assert_eq!(c.instance_id.as_str(), "from-cli");
    let errors = parse(
        r#"{"instance_id":"ok"}"#,
        &Overrides {
            instance_id: Some("bad id".into()),
        },
    )
    .unwrap_err();
    assert!(errors.mentions("--instance-id"), "{errors}");
}

#[test]
fn flat_etcd_keys_must_name_one_cluster() {
    let errors = parse_err(
        r#"{"instance_id":"a","services":{
            "a":{"host":"127.0.0.1","port":1,"etcd_host":"10.0.0.1"},
            "b":{"host":"127.0.0.1","port":2,"etcd_host":"10.0.0.2"},
            "c":{"host":"127.0.0.1","port":3,"etcd_port":2379}}}"#,
    );
    assert!(errors.mentions("services.b.etcd_host"), "{errors}");
    assert!(errors.mentions("services.c.etcd_port"), "{errors}");
    let errors = parse_err(
        r#"{"instance_id":"a","etcd":{"endpoints":["10.0.0.9:2379"]},"services":{
            "a":{"host":"127.0.0.1","port":1,"etcd_host":"10.0.0.1"}}}"#,
    );
    assert!(errors.mentions("services.a.etcd_host"), "{errors}");
    let c = parse_ok(
        r#"{"instance_id":"a","etcd":{"endpoints":["10.0.0.1:2379","10.0.0.2:2379"]},
            "services":{"a":{"host":"127.0.0.1","port":1,"etcd_host":"10.0.0.2"}}}"#,
    );
    assert_eq!(c.etcd.endpoints.len(), 2);
}

#[test]
fn http_check_options() {
    let c = parse_ok(
        r#"{"instance_id":"a","services":{"s":{"host":"::1","port":8443,"checks":[
            {"type":"http","uri":"/h","ssl":true,"timeout":1,"open_timeout":0.5,"ssl_timeout":0.25},
            {"type":"http","uri":"/h","ssl":true,"ssl_verify":true,"host":"localhost","port":9}]}}}"#,
    );
    let checks = &c.services.values().next().unwrap().checks;
    let CheckKind::Http(a) = &checks[0].kind else {
        panic!()
    };
    assert_eq!(a.url, "https://[::1]:8443/h");
    assert!(!a.ssl_verify, "SmartStack's ssl does not verify by default");
    assert_eq!(a.connect_timeout, Duration::from_millis(750));
    assert_eq!(a.total_timeout, Duration::from_millis(1750));
    let CheckKind::Http(b) = &checks[1].kind else {
        panic!()
    };
    assert_eq!(b.url, "https://localhost:9/h");
    assert!(b.ssl_verify);

    let errors = parse_err(
        r#"{"instance_id":"a","services":{"s":{"host":"127.0.0.1","port":1,"checks":[
            {"type":"http","uri":"health","ssl_verify":true,"ssl_ca_file":"/nonexistent",
             "headers":{"bad header":"x","X-Ok":"line\nbreak"},"expect":""}]}}}"#,
    );
    for path in [
        "services.s.checks.0.uri",
        "services.s.checks.0.ssl_verify",
        "services.s.checks.0.ssl_ca_file",
        "services.s.checks.0.headers.bad header",
        "services.s.checks.0.headers.X-Ok",
        "services.s.checks.0.expect",
    ] {
        assert!(errors.mentions(path), "{path} missing from:\n{errors}");
    }
    assert!(
        !errors.to_string().contains("line\nbreak"),
        "header values are not echoed"
    );
}

#[test]
fn exec_commands_run_without_a_shell_unless_asked() {
    let c = parse_ok(
        r#"{"instance_id":"a","services":{"s":{"host":"127.0.0.1","port":1,"checks":[
            {"type":"exec","command":["/bin/true","x y"],"timeout":2},
            {"type":"exec","command":"test -f /tmp/x && true","shell":true}]}}}"#,
    );
    let checks = &c.services.values().next().unwrap().checks;
    assert_eq!(
        checks[0].kind,
        CheckKind::Exec(ExecCheckConfig {
            argv: vec!["/bin/true".into(), "x y".into()],
            timeout: Duration::from_secs(2)
        })
    );
    let CheckKind::Exec(e) = &checks[1].kind else {
        panic!()
    };
    assert_eq!(e.argv, ["/bin/sh", "-c", "test -f /tmp/x && true"]);
    let errors = parse_err(
        r#"{"instance_id":"a","services":{"s":{"host":"127.0.0.1","port":1,"checks":[
            {"type":"exec","command":["true"],"shell":true},
            {"type":"exec","command":[]},
            {"type":"exec"}]}}}"#,
    );
    for i in 0..3 {
        assert!(
            errors.mentions(&format!("services.s.checks.{i}.command")),
            "{errors}"
        );
    }
}

#[test]
fn rate_limiting() {
    let c = parse_ok(
        r#"{"instance_id":"a","services":{"s":{"host":"127.0.0.1","port":1,
            "rate_limiting":{"shadow_mode":false,"average_rate":0.5,"max_burst":3}}}}"#,
    );
    assert_eq!(
        c.services.values().next().unwrap().rate_limit,
        Some(RateLimit {
            shadow_mode: false,
            average_rate: 0.5,
            max_burst: 3
        })
    );
    let errors = parse_err(
        r#"{"instance_id":"a","services":{"s":{"host":"127.0.0.1","port":1,
            "rate_limiting":{"average_rate":0,"max_burst":0}}}}"#,
    );
    assert!(errors.mentions("services.s.rate_limiting.average_rate"));
    assert!(errors.mentions("services.s.rate_limiting.max_burst"));
}

#[test]
fn registry_unsafe_values_are_refused() {
    let errors = parse_err(
        r#"{"instance_id":"a","services":{
            "a":{"host":"0.0.0.0","port":1},
            "b":{"host":"10.0.0.1\nserver x","port":1},
            "c":{"host":"127.0.0.1","port":1,"labels":{"bad key":"v"}},
            "d":{"host":"127.0.0.1","port":1,"etcd_path":"relative/path"}}}"#,
    );
    for path in [
        "services.a.host",
        "services.b.host",
        "services.c.labels",
        "services.d.etcd_path",
    ] {
        assert!(errors.mentions(path), "{path} missing from:\n{errors}");
    }
}

#[test]
fn service_conf_dir_adds_services_and_reports_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("api.json"),
        r#"{"host":"127.0.0.1","port":9000, // comment
            "checks":[{"type":"noop"}],}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("README.txt"), "ignored").unwrap();
    let text = format!(
        r#"{{"instance_id":"a","service_conf_dir":{:?},
            "services":{{"web":{{"host":"127.0.0.1","port":80}}}}}}"#,
        dir.path()
    );
    let c = parse_ok(&text);
    let names: Vec<&str> = c.services.keys().map(ServiceName::as_str).collect();
    assert_eq!(names, ["api", "web"]);

    std::fs::write(
        dir.path().join("web.json"),
        r#"{"host":"127.0.0.1","port":81}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("db.json"),
        r#"{"host":"127.0.0.1","prot":1}"#,
    )
    .unwrap();
    let errors = parse_err(&text);
    assert!(errors.mentions("services.web"), "{errors}");
    assert!(errors.mentions("services.db.prot"), "{errors}");
    assert!(errors.mentions("services.db.port"), "{errors}");
    assert!(errors.to_string().contains("db.json"), "{errors}");
}

#[test]
fn example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/nerve.json");
    let c = load(&path, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.services.is_empty());
}
