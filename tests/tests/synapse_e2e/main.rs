//! synapse end to end: real etcd, real HAProxy (master-worker, reloaded by synapse's
//! `reload_command` through the master CLI), real HTTP backends and real requests through
//! HAProxy's service ports. Registrations are written with common's contract.
//!
//! The world each test starts is in [`world`], with a local helper (not in the harness):
//! [`world::Proxy`], a TCP forwarder between synapse and etcd that can be cut and healed,
//! to disconnect synapse while etcd stays up for the test. The bad registrations of
//! reliability §4.3 are in [`bad_input`].

mod bad_input;
mod world;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Host, InstanceId, Port, Registration};
use etcd_client::{GetOptions, Txn, TxnOp};
use integration_tests::{
    eventually, free_port, Backend, Haproxy, HaproxyOptions, InProcessSynapse as Synapse,
};
use synapse::counters::Counters;

use crate::world::{haproxy_check, ids_seen, routes_to, World};

const TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_to_registered_backends_and_follows_changes() {
    let mut w = World::start("routes").await;
    let (web_port, api_port) = (free_port(), free_port());
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    w.register("web", "host-a", &a).await;
    w.register("web", "host-b", &b).await;
    let synapse = Synapse::start(&w.config(&[("web", web_port, ""), ("api", api_port, "")]));
    w.start_haproxy().await;

    routes_to(web_port, &["a", "b"]).await;

    // A quiet stream outlives the 2 s request timeout and the 1.5 s idle timeout (kept
    // alive by progress requests): idle on purpose, this is not waiting for a condition.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(Counters::get(&synapse.counters.watch_restarts), 0);

    // Deregistering one stops traffic to it.
    w.deregister("web", "host-a").await;
    routes_to(web_port, &["b"]).await;
    let lines = w.server_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");

    // The api prefix was empty; its first registration appears.
    w.register("api", "host-c", &c).await;
    routes_to(api_port, &["c"]).await;
    routes_to(web_port, &["b"]).await;

    assert!(synapse.reloads() >= 2, "reloads: {}", synapse.reloads());
    haproxy_check(&w.cfg_path());
    synapse.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_keeps_routing_and_changes_apply_after() {
    let mut w = World::start("outage").await;
    let port = free_port();
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    w.register("web", "host-a", &a).await;
    w.register("web", "host-b", &b).await;
    let synapse = Synapse::start(&w.config(&[("web", port, "")]));
    w.start_haproxy().await;
    routes_to(port, &["a", "b"]).await;
    let cfg_before = std::fs::read_to_string(w.cfg_path()).expect("cfg");
    let reloads_before = synapse.reloads();
    let restarts_before = Counters::get(&synapse.counters.watch_restarts);

    // etcd fully stopped for 30 s (the figure): with a 0.5 s progress interval,
    // 1 s dial timeout and a backoff capped at 5 s, that is many reconnect cycles.
    w.etcd.kill().await;
    let outage = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < outage {
        let seen = ids_seen(port, 6).await.expect("routing during the outage");
        assert_eq!(seen, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
        assert!(synapse.is_running(), "synapse exited while etcd was down");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let restarts = Counters::get(&synapse.counters.watch_restarts) - restarts_before;
    assert!(restarts >= 3, "only {restarts} watch restarts in 30 s");
    assert_eq!(
        std::fs::read_to_string(w.cfg_path()).expect("cfg"),
        cfg_before,
        "haproxy.cfg changed during the outage"
    );
    assert_eq!(
        synapse.reloads(),
        reloads_before,
        "reloaded during the outage"
    );

    // etcd returns, but synapse cannot reach it yet: changes are made meanwhile.
    w.proxy.cut();
    w.etcd.restart().await;
    w.deregister("web", "host-a").await;
    w.register("web", "host-c", &c).await;
    ids_seen(port, 6).await.expect("still routing");
    w.proxy.heal();
    routes_to(port, &["b", "c"]).await;
    assert!(synapse.is_running());
    synapse.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_after_compaction_while_disconnected() {
    let mut w = World::start("compact").await;
    let port = free_port();
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    w.register("web", "host-a", &a).await;
    let synapse = Synapse::start(&w.config(&[("web", port, "")]));
    w.start_haproxy().await;
    routes_to(port, &["a"]).await;
    let relists_before = Counters::get(&synapse.counters.relists);

    w.proxy.cut();
    w.register("web", "host-b", &b).await;
    w.register("web", "host-c", &c).await;
    w.deregister("web", "host-a").await;
    for i in 0..50 {
        // Churn that compaction erases from history.
        w.register("web", &format!("tmp-{i}"), &a).await;
        w.deregister("web", &format!("tmp-{i}")).await;
    }
    let rev = w
        .client
        .kv_client()
        .get("/", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    w.client
        .kv_client()
        .compact(rev, None)
        .await
        .expect("compact");
    w.proxy.heal();

    routes_to(port, &["b", "c"]).await;
    assert!(
        Counters::get(&synapse.counters.relists) > relists_before,
        "no re-list after compaction"
    );
    // Exactly the registry's set.
    let registry = w
        .client
        .kv_client()
        .get(w.path("web").dir(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    let mut want: Vec<String> = registry
        .kvs()
        .iter()
        .map(|kv| {
            Registration::decode(kv.value())
                .expect("registration")
                .server_name()
        })
        .collect();
    want.sort();
    let mut got: Vec<String> = w
        .server_lines()
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    got.sort();
    assert_eq!(got, want);
    synapse.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_500_registrations_causes_few_reloads() {
    let mut w = World::start("burst").await;
    let port = free_port();
    let a = Backend::start("a").await;
    w.register("web", "seed", &a).await;
    let synapse = Synapse::start(&w.config(&[("web", port, "")]));
    w.start_haproxy().await;
    routes_to(port, &["a"]).await;
    // Let the first write's reload happen before counting.
    eventually(TIMEOUT, || async {
        let lines = w.server_lines();
        (lines.len() == 1 && synapse.reloads() >= 1).then_some(())
    })
    .await;
    let before = synapse.reloads();

    // The burst as four transactions of 125 puts (etcd's default limit is 128 operations a
    // transaction): it reaches synapse in four revisions however fast this machine is, so
    // the reload count below measures synapse's coalescing, not the harness's speed.
    let mut kv = w.client.kv_client();
    for chunk in (0..500).collect::<Vec<_>>().chunks(125) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| {
                let instance = format!("i-{i:03}");
                let value = Registration {
                    host: Host::Ip(a.addr().ip()),
                    port: Port::new(a.port()).expect("port"),
                    name: InstanceId::new(instance.clone()).expect("instance id"),
                    weight: None,
                    haproxy_server_options: None,
                    labels: Default::default(),
                }
                .encode();
                TxnOp::put(w.key("web", &instance), value, None)
            })
            .collect();
        kv.txn(Txn::new().and_then(ops)).await.expect("txn");
    }

    eventually(TIMEOUT, || async {
        let n = w.server_lines().len();
        if n == 501 {
            Ok(())
        } else {
            Err(format!("{n} server lines"))
        }
    })
    .await;
    // The reload for the final file may still be deferred by restart_interval.
    eventually(TIMEOUT, || async {
        let stats = w
            .haproxy
            .as_ref()
            .expect("haproxy")
            .runtime()
            .show_servers_state("web")
            .await
            .map_err(|e| e.to_string())?;
        if stats.len() == 501 {
            Ok(())
        } else {
            Err(format!("haproxy runs {} servers", stats.len()))
        }
    })
    .await;
    // HAProxy can run the new file a moment before the reload command returns and synapse
    // counts the reload.
    eventually(TIMEOUT, || async { synapse.reloads() > before }).await;
    let reloads = synapse.reloads() - before;
    assert!(
        (1..=4).contains(&reloads),
        "{reloads} reloads for the burst"
    );
    routes_to(port, &["a"]).await;
    haproxy_check(&w.cfg_path());
    synapse.stop().await;
}

/// The seed's config, with its ec2tag discovery replaced by etcd (examples/
/// synapse-etcd-clay.json), routes real traffic: HAProxy in "another container" mode
/// (`reload_command: "echo noop"`; here the test plays the file watcher and reloads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_config_with_etcd_routes_real_traffic() {
    let w = World::start("seed").await;
    let (master, backup) = (
        Backend::start("master").await,
        Backend::start("backup").await,
    );
    let (svc_port, stats_port) = (free_port(), free_port());
    let text = include_str!("../../../examples/synapse-etcd-clay.json")
        .replace("127.0.0.1:2379", &w.proxy.addr.to_string())
        .replace("/nerve/services/myservice", w.path("myservice").as_str())
        .replace(
            "/etc/haproxy/haproxy.cfg",
            &w.cfg_path().display().to_string(),
        )
        .replace("50003", &svc_port.to_string())
        .replace("\"50001\"", &format!("\"{}\"", master.port()))
        .replace("\"50002\"", &format!("\"{}\"", backup.port()))
        .replace(":1937", &format!("127.0.0.1:{stats_port}"))
        // The container's chroot and privilege drop need a root-owned empty dir; the test
        // runs HAProxy as itself.
        .replace("\"user    haproxy\",", "")
        .replace("\"group   haproxy\",", "")
        .replace("\"chroot  /var/lib/haproxy\",", "");
    // One instance, registered by nerve with its host; the ports come from the overrides.
    let reg = Registration {
        host: Host::Ip("127.0.0.1".parse().expect("ip")),
        port: Port::new(8080).expect("port"),
        name: InstanceId::new("ip-127-0-0-1").expect("id"),
        weight: None,
        haproxy_server_options: None,
        labels: Default::default(),
    };
    w.put_raw(&w.key("myservice", "ip-127-0-0-1"), reg.encode().as_bytes())
        .await;
    let synapse = Synapse::start(&text);
    let cfg = w.cfg_path();
    eventually(TIMEOUT, || async { cfg.exists() }).await;
    let haproxy = Haproxy::start(HaproxyOptions::new(&cfg)).await;
    // The test plays the other container's file watcher: one reload picks up whatever
    // synapse wrote since HAProxy started.
    haproxy.master().reload().await.expect("reload");
    // `server_options: check` and `default-server inter 2s rise 3 fall 2`: the master
    // instance serves; the backup only when the master is down.
    routes_to(svc_port, &["master"]).await;
    let mut master = master;
    master.kill().await;
    routes_to(svc_port, &["backup"]).await;
    let text = std::fs::read_to_string(&cfg).expect("cfg");
    assert!(text.contains(&format!("bind :{svc_port}")), "{text}");
    assert!(text.contains(" backup"), "{text}");
    haproxy_check(&cfg);
    assert!(synapse.is_running());
    synapse.stop().await;
}
