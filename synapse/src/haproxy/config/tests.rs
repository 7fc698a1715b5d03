//! Unit tests of `config.rs`, kept apart so that the module reads in one go.

use super::*;

#[test]
fn listen_lines_are_placed_like_airbnb() {
    let p = |l| {
        let p = placement(l);
        (p.frontend, p.backend)
    };
    assert_eq!(p("mode http"), (true, true));
    assert_eq!(p("option httpchk GET /health"), (false, true));
    assert_eq!(p("option httplog"), (true, false));
    assert_eq!(p("no option redispatch"), (false, true));
    assert_eq!(p("balance roundrobin"), (false, true));
    assert_eq!(p("maxconn 100"), (true, false));
    assert_eq!(p("timeout server 1m"), (true, true));
}

/// Backend `web` wanting these servers.
fn wanted(names: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    BTreeMap::from([(
        "web".to_owned(),
        names.iter().map(|s| s.to_string()).collect(),
    )])
}

#[test]
fn ids_are_stable_and_reuse_the_lowest_free() {
    let mut ids = ServerIds::default();
    ids.assign(&wanted(&["a", "b", "c"]), 100);
    assert_eq!(
        (
            ids.get("web", "a"),
            ids.get("web", "b"),
            ids.get("web", "c")
        ),
        (Some(1), Some(2), Some(3))
    );
    ids.assign(&wanted(&["0", "a", "c"]), 100);
    assert_eq!(ids.get("web", "0"), Some(2));
    assert_eq!(ids.get("web", "c"), Some(3));
    ids.assign(&wanted(&["a", "b", "c", "d"]), 3);
    assert_eq!(ids.get("web", "d"), None);
}

#[test]
fn reserved_ids_are_not_given_to_new_servers() {
    let mut ids = ServerIds::default();
    ids.assign(&wanted(&["a", "b", "c"]), 100);
    // b is gone from the registry but HAProxy still has it (id 2); d is new.
    let reserved = BTreeMap::from([("web".to_owned(), BTreeSet::from([2]))]);
    ids.assign_reserving(&wanted(&["a", "c", "d"]), 100, &reserved);
    assert_eq!(ids.get("web", "d"), Some(4));
    // Once HAProxy has deleted it, its id is free again.
    ids.assign(&wanted(&["a", "c", "d", "e"]), 100);
    assert_eq!(ids.get("web", "e"), Some(2));
}

#[test]
fn ids_are_read_back_from_a_rendered_file() {
    let text = "global\n\nbackend web\n    server a_10.0.0.1:80 10.0.0.1:80 id 7 cookie x\n\
                    \nfrontend web\n    server x y id 9\n";
    let ids = ServerIds::from_config(text);
    assert_eq!(ids.get("web", "a_10.0.0.1:80"), Some(7));
    assert_eq!(ids.get("web", "x"), None);
}

#[test]
fn the_address_is_the_tail_of_the_server_name_except_for_ipv6() {
    let v4 = backend("web-1", 7);
    assert_eq!(name_addr(&v4.server_name(), &v4), Some("10.0.0.7:80"));
    let mut out = String::new();
    write_server_addr(&mut out, &v4.host, 80);
    assert_eq!(out, "10.0.0.7:80");
    let mut v6 = v4.clone();
    v6.host = Host::Ip("::1".parse().unwrap());
    assert_eq!(name_addr(&v6.server_name(), &v6), None);
}

#[test]
fn strip_weight_and_mode() {
    assert_eq!(strip_weight("check weight 5 inter 2s"), "check inter 2s");
    assert!(mode_is_tcp(["mode http", "mode tcp"], false));
    assert!(!mode_is_tcp(["mode http"], true));
    assert!(mode_is_tcp(Vec::<&str>::new(), true));
}

fn slots_config() -> crate::config::Config {
    crate::config::Config::parse(
            r#"{"services": {"web": {"discovery": {"method": "base"},
                 "haproxy": {"port": 8080, "server_options": "check", "listen": ["balance source"]}}},
                "haproxy": {"do_writes": false, "do_reloads": false, "server_order_seed": 1,
                            "dynamic_servers": "slots", "server_slots": 2}}"#,
            None,
        )
        .unwrap()
}

fn backend(name: &str, last: u8) -> Backend {
    Backend {
        name: common::InstanceId::new(name).unwrap(),
        host: Host::Ip(std::net::Ipv4Addr::new(10, 0, 0, last).into()),
        port: common::Port::new(80).unwrap(),
        backup: false,
        weight: None,
        haproxy_server_options: None,
        labels: BTreeMap::new(),
    }
}

/// Renders `names` into slots, keeping `ids` between calls as the output does.
fn render_slots(ids: &mut ServerIds, servers: &[(&str, u8)]) -> Vec<String> {
    let c = slots_config();
    let h = c.haproxy.as_ref().unwrap();
    let web = ServiceName::new("web").unwrap();
    let set: BackendSet = servers.iter().map(|(n, l)| backend(n, *l)).collect();
    let desired = BTreeMap::from([(web, set)]);
    ids.assign(&wanted_servers(&c.services, &desired), h.max_server_id);
    let text = render(h, &c.services, &desired, ids).unwrap();
    text.lines()
        .filter(|l| l.trim_start().starts_with("server "))
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn slots_keep_servers_in_place_and_grow_in_steps() {
    let mut ids = ServerIds::default();
    assert_eq!(
        render_slots(&mut ids, &[("a", 1)]),
        [
            "server slot1 10.0.0.1:80 id 1 cookie slot1 check",
            "server slot2 127.0.0.1:1 id 2 cookie slot2 check disabled",
        ]
    );
    let grown = render_slots(&mut ids, &[("a", 1), ("b", 2)]);
    assert_eq!(grown.len(), 4, "{grown:?}");
    assert!(grown[1].starts_with("server slot2 10.0.0.2:80 id 2 "));
    // a leaves: its slot is free, b stays in slot 2; c takes slot 1.
    let after = render_slots(&mut ids, &[("b", 2), ("c", 3)]);
    assert_eq!(after[0], "server slot1 10.0.0.3:80 id 1 cookie slot1 check");
    assert_eq!(after[1], "server slot2 10.0.0.2:80 id 2 cookie slot2 check");
}

#[test]
fn filling_and_emptying_a_slot_is_a_runtime_change() {
    use crate::haproxy::answers::Capabilities;
    use crate::haproxy::model::ConfigModel;
    use crate::haproxy::plan::{plan, running_from, Desired};
    let c = slots_config();
    let h = c.haproxy.as_ref().unwrap();
    let web = ServiceName::new("web").unwrap();
    let mut ids = ServerIds::default();
    let mut model = |servers: &[(&str, u8)]| {
        let set: BackendSet = servers.iter().map(|(n, l)| backend(n, *l)).collect();
        let desired = BTreeMap::from([(web.clone(), set)]);
        ids.assign(&wanted_servers(&c.services, &desired), h.max_server_id);
        ConfigModel::parse(&render(h, &c.services, &desired, &ids).unwrap())
    };
    let before = model(&[("a", 1)]);
    let after = model(&[("b", 2)]);
    let running = running_from(&before, Capabilities::for_version(2, 4));
    let p = plan(
        &running,
        &Desired {
            config: after,
            dynamic_servers: false,
        },
    );
    assert_eq!(p.reload, None, "{p:?}");
    let cmds: Vec<String> = p.commands.iter().map(ToString::to_string).collect();
    assert_eq!(cmds, ["set server web/slot1 addr 10.0.0.2 port 80"]);
    let emptied = model(&[]);
    let running = running_from(&before, Capabilities::for_version(2, 4));
    let p = plan(
        &running,
        &Desired {
            config: emptied,
            dynamic_servers: false,
        },
    );
    let cmds: Vec<String> = p.commands.iter().map(ToString::to_string).collect();
    assert_eq!(
        cmds,
        [
            "set server web/slot1 state maint",
            "set server web/slot1 addr 127.0.0.1 port 1"
        ]
    );
}

#[test]
fn bind_addresses() {
    assert_eq!(bind_addr("", 80), ":80");
    assert_eq!(bind_addr("localhost", 80), "localhost:80");
    assert_eq!(bind_addr("::1", 80), "[::1]:80");
    assert_eq!(bind_addr("0.0.0.0", 80), "0.0.0.0:80");
    assert_eq!(bind_addr("*", 80), "*:80");
}
