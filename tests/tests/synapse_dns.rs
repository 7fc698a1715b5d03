//! synapse's `dns` discovery against a real DNS server (dnsmasq) on loopback, with real
//! HAProxy, real HTTP backends on the addresses the zone names, and real requests:
//! changes in the zone reach HAProxy, and a DNS outage keeps the last good set.

use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::{free_port, Backend, Dnsmasq, InProcessSynapse as Synapse, World};

/// Loopback addresses for the backends, unlikely to be used by another test (moto's
/// subnets are 127.0.N.0/24): 127.53.<pid-derived>.<n>.
fn address(n: u8) -> String {
    format!("127.53.{}.{n}", std::process::id() % 250)
}

fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_changes_reach_haproxy_and_an_outage_keeps_the_last_set() {
    let mut world = World::new();
    let port = free_port();
    let (a1, a2) = (address(1), address(2));
    let _b1 = Backend::start_at("b1", at(&a1, port)).await.expect("b1");
    let _b2 = Backend::start_at("b2", at(&a2, port)).await.expect("b2");
    let mut dns = Dnsmasq::start(&[("web.svc.test", &a1)], &[]).await;
    // The string form, with the port, as upstream's hostheader example writes servers.
    let discovery = format!(
        r#"{{"method": "dns", "nameserver": "{}", "check_interval": 0.3,
            "servers": ["web.svc.test:{port}"]}}"#,
        dns.addr()
    );
    // Without use_previous_backends an empty answer would empty the backend: what keeps
    // it serving through the outage below is the watcher holding its last good set.
    let synapse = Synapse::start(&world.config(&discovery, r#", "use_previous_backends": false"#));
    world.start_haproxy().await;
    world.wait_answering(&["b1"]).await;

    // A second A record for the name: both serve.
    dns.set_hosts(&[("web.svc.test", &a1), ("web.svc.test", &a2)]);
    world.wait_answering(&["b1", "b2"]).await;
    // The first one leaves the zone.
    dns.set_hosts(&[("web.svc.test", &a2)]);
    world.wait_answering(&["b2"]).await;
    assert!(!world.haproxy_cfg().contains(&format!("{a1}:{port}")));

    // The DNS server goes away: queries time out, and the last good set keeps serving.
    dns.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    world.wait_answering(&["b2"]).await;
    assert!(synapse.is_running());
    synapse.stop().await;
}

/// An object entry with a name and labels, and an SRV entry whose record gives the
/// target and the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_and_object_entries_route() {
    let mut world = World::new();
    let (port, srv_port) = (free_port(), free_port());
    let (a3, a4) = (address(3), address(4));
    let _b3 = Backend::start_at("b3", at(&a3, port)).await.expect("b3");
    let _b4 = Backend::start_at("b4", at(&a4, srv_port))
        .await
        .expect("b4");
    let dns = Dnsmasq::start(
        &[("obj.svc.test", &a3), ("target.svc.test", &a4)],
        &[("_web._tcp.svc.test", "target.svc.test", srv_port)],
    )
    .await;
    let discovery = format!(
        r#"{{"method": "dns", "nameserver": "{}", "check_interval": 0.3,
            "servers": [{{"name": "obj", "host": "obj.svc.test", "port": {port},
                          "labels": {{"az": "a"}}}},
                        {{"host": "_web._tcp.svc.test"}}]}}"#,
        dns.addr()
    );
    let _synapse = Synapse::start(&world.config(&discovery, ""));
    world.start_haproxy().await;
    world.wait_answering(&["b3", "b4"]).await;
    let cfg = world.haproxy_cfg();
    assert!(cfg.contains(&format!("server obj_{a3}:{port} ")), "{cfg}");
    assert!(cfg.contains(&format!("{a4}:{srv_port}")), "{cfg}");
}

/// airbnb's `hostheader_test.json` (the compatibility corpus, `synapse/03`): its service's
/// `dns` discovery as written — bare names, so port 80 — with its `nameserver` pointed at
/// the test's DNS server, routes real requests to what the zone names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_dns_service_routes() {
    if !integration_tests::process_is_root() {
        panic!("binds port 80 on loopback addresses: run as root (as CI does)");
    }
    let mut world = World::new();
    let (a5, a6) = (address(5), address(6));
    let _b5 = Backend::start_at("b5", at(&a5, 80))
        .await
        .expect("b5 on :80");
    let _b6 = Backend::start_at("b6", at(&a6, 80))
        .await
        .expect("b6 on :80");
    let dns = Dnsmasq::start(
        &[("0.www.example.com", &a5), ("1.www.example.com", &a6)],
        &[],
    )
    .await;
    let corpus: serde_json::Value = serde_json::from_str(&common::upstream::corpus_file(
        "synapse/03-airbnb-hostheader-test-dns.json",
    ))
    .expect("corpus json");
    let mut discovery = corpus["services"]["service1"]["discovery"].clone();
    assert_eq!(discovery["servers"][0], "0.www.example.com");
    discovery["nameserver"] = dns.addr().to_string().into();
    discovery["check_interval"] = 0.3.into();
    let _synapse = Synapse::start(&world.config(&discovery.to_string(), ""));
    world.start_haproxy().await;
    world.wait_answering(&["b5", "b6"]).await;
}
