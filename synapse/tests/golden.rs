//! Golden files: the rendered haproxy.cfg for representative configs, pinned byte for
//! byte in `tests/golden/*.cfg`, and accepted by the real `haproxy -c`; the tables of
//! `synapse status` for fixed status documents (`tests/golden/status-*.json` →
//! `.txt`, the first from a real run of `scripts/demo`).
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p synapse --test golden`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{AddressPolicy, Registration};
use synapse::backends::{Backend, BackendSet};
use synapse::haproxy::config::{render, wanted_servers, ServerIds};
use synapse::resolution::{resolve, Resolution};
use synapse::watcher::ec2::to_backend;
use synapse::Config;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn reg(json: &str) -> Backend {
    Backend::from(Registration::decode(json.as_bytes()).expect(json))
}

/// Renders `config` with `discovered[service]` run through each service's rules, as the
/// reconciler does.
fn render_config(config: &Config, discovered: &[(&str, Vec<Backend>)]) -> String {
    let mut desired = BTreeMap::new();
    for (name, svc) in &config.services {
        let found: BackendSet = discovered
            .iter()
            .filter(|(n, _)| *n == name.as_str())
            .flat_map(|(_, b)| b.iter().cloned())
            .collect();
        let Resolution::Use(set) = resolve(svc, &found, false) else {
            panic!("{name}: not Use")
        };
        desired.insert(name.clone(), set);
    }
    let h = config.haproxy.as_ref().expect("haproxy section");
    let mut ids = ServerIds::default();
    ids.assign(&wanted_servers(&config.services, &desired), h.max_server_id);
    let a = render(h, &config.services, &desired, &ids).expect("render");
    let b = render(h, &config.services, &desired, &ids).expect("render");
    assert_eq!(a, b, "render is not deterministic");
    a
}

fn check_golden(name: &str, text: &str) {
    integration_tests::check_golden(&golden_dir().join(format!("{name}.cfg")), text);
    haproxy_check(name, text);
}

/// `haproxy -c` on the rendered text. Paths the check would need to exist (the seed's
/// chroot, sockets) are pointed into a temp dir first.
fn haproxy_check(name: &str, text: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = text
        .replace("/var/lib/haproxy", &dir.path().display().to_string())
        .replace("/run/haproxy", &dir.path().display().to_string());
    let file = dir.path().join(format!("{name}.cfg"));
    std::fs::write(&file, text).expect("write");
    let out = std::process::Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("run haproxy -c");
    assert!(
        out.status.success(),
        "{name}: haproxy -c failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The seed's config as Clay.io ran it (ec2tag, `server_port_override` 50001,
/// `server_backup_port` 50002, `server_options: "check"`): a normal and a `backup` server
/// per instance.
#[test]
fn seed_config() {
    let text = include_str!("../../examples/synapse-clay.json").replace(
        "\"do_socket\": false,",
        "\"do_socket\": false, \"server_order_seed\": 7,",
    );
    let config = Config::parse(&text, None).expect("seed config");
    // Two running instances, as the ec2tag watcher turns them into backends.
    let port = config
        .services
        .values()
        .next()
        .and_then(|s| s.port_override);
    let instance = |ip: &str| {
        let inst = synapse::ec2::Instance {
            id: format!("i-{}", ip.replace('.', "")),
            private_ip: Some(ip.to_owned()),
            private_dns: Some(format!("ip-{}.ec2.internal", ip.replace('.', "-"))),
        };
        to_backend(
            &inst,
            port.expect("server_port_override"),
            &AddressPolicy::default(),
        )
        .expect("valid instance")
    };
    let rendered = render_config(
        &config,
        &[(
            "myservice",
            vec![instance("10.0.1.5"), instance("10.0.1.6")],
        )],
    );
    check_golden("seed", &rendered);
}

#[test]
fn example_config() {
    let text = include_str!("../../examples/synapse.json").replace(
        "\"do_socket\": false,",
        "\"do_socket\": false, \"server_order_seed\": 7,",
    );
    let config = Config::parse(&text, None).expect("example config");
    let rendered = render_config(
        &config,
        &[
            (
                "web",
                vec![
                    reg(r#"{"host":"10.0.0.5","port":8080,"name":"web-01"}"#),
                    reg(
                        r#"{"host":"10.0.0.6","port":8080,"name":"web-02","weight":3,"haproxy_server_options":"backup maxconn 100"}"#,
                    ),
                    reg(
                        r#"{"host":"2001:db8::7","port":8080,"name":"web-03","labels":{"az":"b"}}"#,
                    ),
                    reg(
                        r#"{"host":"10.0.0.8","port":8080,"name":"web-04","labels":{"az":"drained"}}"#,
                    ),
                ],
            ),
            ("db", vec![]),
        ],
    );
    check_golden("example", &rendered);
}

#[test]
fn every_haproxy_feature() {
    let config = Config::parse(
        r#"{
          "services": {
            "api": {
              "discovery": {"method": "base"},
              "default_servers": [
                {"name": "api-1", "host": "10.0.0.1", "port": 80, "weight": 5},
                {"name": "api-2", "host": "10.0.0.2", "port": 80, "weight": 7,
                 "haproxy_server_options": "weight 9 check"}
              ],
              "haproxy": {
                "port": 8001, "bind_address": "127.0.0.2", "bind_options": "accept-proxy",
                "backend_name": "api_backend", "backend_order": "desc",
                "cookie_value_method": "hash",
                "server_options": "check port %{port} weight 2",
                "listen": ["mode http", "option httpchk GET /ping", "option httplog", "maxconn 50"],
                "frontend": ["timeout client 30s"],
                "backend": ["timeout server 30s", "cookie SRV insert indirect nocache"],
                "shared_frontend": ["acl is_api hdr_beg(host) api", "use_backend api_backend if is_api"]
              }
            },
            "redis": {
              "discovery": {"method": "static"},
              "default_servers": [{"name": "r1", "host": "10.0.0.3", "port": 6379}],
              "haproxy": {"listen": ["mode tcp"], "backend_order": "asc"}
            },
            "hidden": {
              "discovery": {"method": "base"},
              "haproxy": {"disabled": true, "port": 8003}
            },
            "other": {
              "discovery": {"method": "base"},
              "default_servers": [{"name": "o1", "host": "::1", "port": 81}],
              "haproxy": {"port": 8004, "bind_address": "::1", "ignore_registry_server_options": true}
            }
          },
          "haproxy": {
            "do_writes": false, "do_reloads": false, "use_nerve_weights": true,
            "server_order_seed": 1,
            "global": ["maxconn 100"],
            "defaults": ["mode http", "timeout connect 1s", "timeout client 1m", "timeout server 1m"],
            "shared_frontend": ["bind 127.0.0.1:8000", "mode http"],
            "extra_sections": {"listen stats": ["bind 127.0.0.1:8005", "stats enable"]}
          }
        }"#,
        None,
    )
    .expect("config");
    let rendered = render_config(&config, &[]);
    check_golden("features", &rendered);
}

/// The registry cannot reach haproxy.cfg except through validated fields: hostile values
/// are rejected by the contract, and what passes renders only inside server lines.
#[test]
fn charset_valid_keywords_stay_in_argument_position() {
    let config = Config::parse(
        r#"{"services": {"web": {"discovery": {"method": "base"}, "haproxy": {"port": 8001}}},
            "haproxy": {"do_writes": false, "do_reloads": false, "server_order_seed": 1,
                        "defaults": ["mode http", "timeout connect 1s", "timeout client 1m", "timeout server 1m"]}}"#,
        None,
    )
    .expect("config");
    let rendered = render_config(
        &config,
        &[(
            "web",
            vec![
                reg(r#"{"host":"10.0.0.1","port":80,"name":"program"}"#),
                reg(
                    r#"{"host":"10.0.0.2","port":80,"name":"lua-load","labels":{"x":"\nglobal\n lua-load /tmp/x"}}"#,
                ),
            ],
        )],
    );
    for line in rendered.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        assert!(first != "program" && first != "lua-load", "{line}");
    }
    assert!(!rendered.contains("/tmp/x"));
    haproxy_check("keywords", &rendered);
}

/// `synapse status` (table and wide) and `synapse status <service>` for fixed documents:
/// one from a real run of the demo, and made-up ones with every kind of trouble (stale,
/// last-known-good, a guard holding, etcd retrying, quarantine and maintenance, a
/// service not applied yet, disagreements between the registry and HAProxy).
#[test]
fn status_tables() {
    use synapse::status_table::{render, render_service};
    type Render = fn(&serde_json::Value, bool, bool) -> Result<String, String>;
    let cases: [(&str, Render); 4] = [
        ("status-demo", render),
        ("status-trouble", render),
        ("service-demo", render_service),
        ("service-web", render_service),
    ];
    for (name, render) in cases {
        let input = std::fs::read_to_string(golden_dir().join(format!("{name}.json")))
            .expect("golden input");
        let doc: serde_json::Value = serde_json::from_str(&input).expect("JSON");
        for (wide, suffix) in [(false, ""), (true, "-wide")] {
            let text = render(&doc, wide, false).expect("render");
            integration_tests::check_golden(
                &golden_dir().join(format!("{name}{suffix}.txt")),
                &text,
            );
        }
        let coloured = render(&doc, false, true).expect("render");
        assert!(coloured.contains("\x1b["), "{name}: no colour when asked");
    }
}

/// Yelp's generated names: `:` in service names (and label keys) is accepted, and a
/// service name reaches HAProxy with `:` mapped to `_`, the same on every render; a
/// 128-bit `server_order_seed` and `bind_address: "*"` as upstream configs write them.
#[test]
fn upstream_names_and_shapes() {
    let config = Config::parse(
        r#"{
          "services": {
            "test_service.my_superregion:10.0.0.1.1234.v2.new": {
              "discovery": {"method": "base",
                            "label_filters": [{"label": "region:my_region", "value": "",
                                               "condition": "equals"}]},
              "haproxy": {"port": "8010", "server_options": ["check", "inter", "2s"]}
            },
            "plain": {
              "discovery": {"method": "base"},
              "default_servers": [{"name": "p", "host": "10.0.0.3", "port": 80}],
              "haproxy": {"port": 8011, "backend": "mode http"}
            }
          },
          "haproxy": {
            "do_writes": false, "do_reloads": false, "bind_address": "*",
            "server_order_seed": 210136353548255761639276844525416927231,
            "defaults": ["mode http", "timeout connect 1s", "timeout client 1m", "timeout server 1m"]
          }
        }"#,
        None,
    )
    .expect("upstream names");
    let rendered = render_config(
        &config,
        &[(
            "test_service.my_superregion:10.0.0.1.1234.v2.new",
            vec![
                reg(
                    r#"{"host":"10.0.0.1","port":1234,"name":"a","labels":{"region:my_region":""}}"#,
                ),
                reg(r#"{"host":"10.0.0.2","port":1234,"name":"b","labels":{"region:other":""}}"#),
            ],
        )],
    );
    assert!(
        !rendered.contains("10.0.0.2"),
        "the label filter keeps a only:\n{rendered}"
    );
    assert!(
        rendered.contains("frontend test_service.my_superregion_10.0.0.1.1234.v2.new\n"),
        "{rendered}"
    );
    assert!(!rendered.contains("superregion:"), "{rendered}");
    check_golden("upstream-names", &rendered);
}
