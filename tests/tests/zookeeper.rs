//! ZooKeeper, SmartStack's registry, in both daemons (issue 20), against a real
//! ZooKeeper (Debian's 3.8), real HAProxy and real HTTP backends:
//!
//! - nerve registers in upstream's format (the znode read raw), deletes it on a clean
//!   stop, loses it with its session on a crash, and creates it again after its session
//!   expired;
//! - synapse routes znodes written by hand with `zkCli.sh` in upstream's format, skips a
//!   bad value, keeps the last known set through a full outage and through a session
//!   expiry, and re-reads after either;
//! - nerve reporting to ZooKeeper and etcd at once, read by a synapse `multi` union of
//!   both, is one server.

use std::time::Duration;

use integration_tests::{
    eventually, Backend, Etcd, FaultProxy, InProcessNerve, InProcessSynapse, World, ZkEnsemble,
    ZooKeeper, ROUTE_TIMEOUT,
};
use tokio::time::Instant;
use zookeeper_client::Client;

const DIR: &str = "/nerve/services/web/services";

/// A nerve config with one service `web` on `port` reporting as `reporters` says.
fn nerve_config(instance: &str, port: u16, ttl: u64, service_keys: &str) -> String {
    format!(
        r#"{{"instance_id": "{instance}", "lease_ttl": {ttl}, "reconcile_interval": 2,
            "services": {{"web": {{"host": "127.0.0.1", "port": {port},
              "check_interval": 0.2,
              "checks": [{{"type": "tcp", "timeout": 0.5, "rise": 1, "fall": 1}}],
              {service_keys}}}}}}}"#
    )
}

fn zk_keys(hosts: &[String]) -> String {
    format!(
        r#""reporter_type": "zookeeper", "zk_hosts": {}, "zk_path": "{DIR}""#,
        serde_json::to_string(hosts).unwrap()
    )
}

/// The children of `DIR` (none if it does not exist).
async fn children(client: &Client) -> Vec<String> {
    match client.list_children(DIR).await {
        Ok(mut c) => {
            c.sort();
            c
        }
        Err(zookeeper_client::Error::NoNode) => Vec::new(),
        Err(e) => panic!("list {DIR}: {e}"),
    }
}

/// Waits until `DIR` holds exactly one child and returns its name.
async fn one_child(client: &Client) -> String {
    eventually(ROUTE_TIMEOUT, || async {
        let c = children(client).await;
        match c.as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!("children {other:?}")),
        }
    })
    .await
}

fn discovery(hosts: &[String], extra: &str) -> String {
    format!(
        r#"{{"method": "zookeeper", "hosts": {}, "path": "{DIR}"{extra}}}"#,
        serde_json::to_string(hosts).unwrap()
    )
}

/// Upstream's registration JSON for a backend.
fn registration(b: &Backend, name: &str) -> String {
    format!(
        r#"{{"host":"127.0.0.1","port":{},"name":"{name}"}}"#,
        b.port()
    )
}

/// Creates the service directory, as nerve's `mkdir_p` would.
async fn make_dir(client: &Client) {
    let opts =
        zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    client.mkdir(DIR, &opts).await.expect("mkdir");
}

/// Creates a persistent sequential node `<DIR>/<name>_<seq>` holding `data`.
async fn put(client: &Client, name: &str, data: &str) -> String {
    let opts = zookeeper_client::CreateMode::PersistentSequential
        .with_acls(zookeeper_client::Acls::anyone_all());
    let prefix = format!("{DIR}/{name}_");
    let (_, seq) = client
        .create(&prefix, data.as_bytes(), &opts)
        .await
        .expect("create");
    format!("{prefix}{seq}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nerve_registers_in_upstreams_format_and_deletes_on_stop() {
    integration_tests::init_tracing();
    let zk = ZooKeeper::start().await;
    let backend = Backend::start("b1").await;
    let keys = format!(
        r#"{}, "weight": 7, "haproxy_server_options": "backup",
            "labels": {{"az": "us-east-1a"}}"#,
        zk_keys(&[zk.address()])
    );
    // A session longer than the test: the node can only go because nerve deleted it.
    let nerve = InProcessNerve::start(&nerve_config("i-1", backend.port(), 60, &keys));
    let client = zk.client().await;
    let child = one_child(&client).await;
    // upstream: `<zk_path>/<instance_id>_` + ZooKeeper's 10-digit sequence.
    let seq = child.strip_prefix("i-1_").expect("instance prefix");
    assert!(
        seq.len() == 10 && seq.bytes().all(|b| b.is_ascii_digit()),
        "{child}"
    );
    let (data, stat) = client
        .get_data(&format!("{DIR}/{child}"))
        .await
        .expect("read the node");
    assert_eq!(
        String::from_utf8(data).unwrap(),
        format!(
            r#"{{"host":"127.0.0.1","port":{},"name":"i-1","weight":7,"haproxy_server_options":"backup","labels":{{"az":"us-east-1a"}}}}"#,
            backend.port()
        )
    );
    assert_ne!(stat.ephemeral_owner, 0, "the node is ephemeral");
    // The raw bytes are what zkCli (Debian's, Java) shows too.
    let shown = zk.cli(&["get", &format!("{DIR}/{child}")]).await;
    assert!(shown.contains(r#""name":"i-1""#), "{shown}");

    let stopped = Instant::now();
    nerve.terminate().await;
    // Deleted at once: long before the 60 s session could expire.
    eventually(Duration::from_secs(10), || async {
        let c = children(&client).await;
        if c.is_empty() {
            Ok(())
        } else {
            Err(format!("children {c:?}"))
        }
    })
    .await;
    eprintln!(
        "figure: node gone {:?} after the clean stop began",
        stopped.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nerve_withdraws_an_unhealthy_service_and_a_crashed_nerves_node_expires() {
    integration_tests::init_tracing();
    let zk = ZooKeeper::start().await;
    let mut backend = Backend::start("b1").await;
    let nerve = InProcessNerve::start(&nerve_config(
        "i-1",
        backend.port(),
        2,
        &zk_keys(&[zk.address()]),
    ));
    let client = zk.client().await;
    one_child(&client).await;
    // Down: the node goes (report_down deletes it).
    backend.kill().await;
    eventually(ROUTE_TIMEOUT, || async {
        let c = children(&client).await;
        c.is_empty().then_some(()).ok_or(format!("children {c:?}"))
    })
    .await;
    let backend = Backend::start_on("b1", backend.port())
        .await
        .expect("port again");
    one_child(&client).await;
    // A crash: nothing deletes the node; ZooKeeper does when the 2 s session expires.
    let crashed = Instant::now();
    nerve.kill();
    eventually(Duration::from_secs(30), || async {
        let c = children(&client).await;
        c.is_empty().then_some(()).ok_or(format!("children {c:?}"))
    })
    .await;
    eprintln!(
        "figure: crashed nerve's node gone {:?} after the crash (session 2 s)",
        crashed.elapsed()
    );
    drop(backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nerve_registers_again_after_its_session_expired() {
    integration_tests::init_tracing();
    let zk = ZooKeeper::start().await;
    let proxy = FaultProxy::start(integration_tests::loopback(zk.port())).await;
    let backend = Backend::start("b1").await;
    let nerve = InProcessNerve::start(&nerve_config(
        "i-1",
        backend.port(),
        2,
        &zk_keys(&[proxy.endpoint()]),
    ));
    let client = zk.client().await;
    let first = one_child(&client).await;
    // Cut nerve off (packets dropped, no RST) until ZooKeeper expires its session.
    proxy.blackhole();
    eventually(Duration::from_secs(30), || async {
        let c = children(&client).await;
        c.is_empty().then_some(()).ok_or(format!("children {c:?}"))
    })
    .await;
    let healed = Instant::now();
    proxy.pass();
    // nerve learns the session expired, connects a new one and registers again.
    let second = one_child(&client).await;
    eprintln!(
        "figure: nerve registered again {:?} after the partition healed",
        healed.elapsed()
    );
    assert_ne!(first, second, "a new node in a new session");
    drop(nerve);
}

/// HAProxy routes what synapse reads from ZooKeeper.
async fn world_on(discovery: &str) -> (World, InProcessSynapse) {
    let mut world = World::new();
    let synapse = InProcessSynapse::start(&world.config(discovery, ""));
    world.start_haproxy().await;
    (world, synapse)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_routes_znodes_written_by_hand_with_zkcli_and_skips_a_bad_one() {
    integration_tests::init_tracing();
    let zk = ZooKeeper::start().await;
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    // An operator's hand, with the tool that ships with ZooKeeper. The path's parents
    // first (zkCli has no `mkdir -p`), then a sequential node in upstream's shape.
    for p in ["/nerve", "/nerve/services", "/nerve/services/web", DIR] {
        zk.cli(&["create", p]).await;
    }
    let out = zk
        .cli(&[
            "create",
            "-s",
            &format!("{DIR}/i-1_"),
            &registration(&b1, "i-1"),
        ])
        .await;
    assert!(out.contains(&format!("Created {DIR}/i-1_")), "{out}");
    let (world, synapse) = world_on(&discovery(&[zk.address()], "")).await;
    world.wait_answering(&["b1"]).await;

    // A second instance, and a value that is no registration (a newline in the host:
    // injection into haproxy.cfg) — skipped and counted, the others still routed.
    zk.cli(&[
        "create",
        "-s",
        &format!("{DIR}/i-2_"),
        &registration(&b2, "i-2"),
    ])
    .await;
    zk.cli(&[
        "create",
        "-s",
        &format!("{DIR}/evil_"),
        r#"{"host":"127.0.0.1\nlisten x","port":80,"name":"evil"}"#,
    ])
    .await;
    world.wait_answering(&["b1", "b2"]).await;
    eventually(ROUTE_TIMEOUT, || async {
        let n = synapse.counters.rejected_total();
        (n >= 1).then_some(()).ok_or(format!("{n} rejected"))
    })
    .await;
    let cfg = world.haproxy_cfg();
    assert!(!cfg.contains("evil"), "{cfg}");

    // Deleting a node by hand takes its server out.
    let client = zk.client().await;
    let gone = children(&client)
        .await
        .into_iter()
        .find(|c| c.starts_with("i-1_"))
        .expect("i-1's node");
    zk.cli(&["delete", &format!("{DIR}/{gone}")]).await;
    world.wait_answering(&["b2"]).await;
    synapse.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_keeps_the_last_known_set_through_a_zookeeper_outage() {
    integration_tests::init_tracing();
    let mut zk = ZooKeeper::start().await;
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let client = zk.client().await;
    make_dir(&client).await;
    put(&client, "i-1", &registration(&b1, "i-1")).await;
    drop(client);
    let (world, synapse) = world_on(&discovery(&[zk.address()], r#", "session_timeout": 2"#)).await;
    world.wait_answering(&["b1"]).await;

    // The whole registry goes away, for longer than synapse's session.
    let requests_before = b1.requests();
    zk.kill();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        world
            .answering(8)
            .await
            .expect("still routed while ZooKeeper is down");
    }
    let got = world.answering(8).await.expect("still routed");
    assert_eq!(got.into_iter().collect::<Vec<_>>(), ["b1"]);

    eprintln!(
        "figure: {} requests answered by the last known set during the outage",
        b1.requests() - requests_before
    );
    // Back (with its data): synapse re-reads and follows changes again.
    zk.restart().await;
    let client = zk.client().await;
    let put_at = Instant::now();
    put(&client, "i-2", &registration(&b2, "i-2")).await;
    world.wait_answering(&["b1", "b2"]).await;
    eprintln!(
        "figure: a registration after the outage routed within {:?}",
        put_at.elapsed()
    );
    assert!(synapse.is_running());
    synapse.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_resyncs_after_its_session_expired() {
    integration_tests::init_tracing();
    let zk = ZooKeeper::start().await;
    let proxy = FaultProxy::start(integration_tests::loopback(zk.port())).await;
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let client = zk.client().await;
    make_dir(&client).await;
    let first = put(&client, "i-1", &registration(&b1, "i-1")).await;
    let (world, synapse) =
        world_on(&discovery(&[proxy.endpoint()], r#", "session_timeout": 2"#)).await;
    world.wait_answering(&["b1"]).await;

    // synapse is cut off; meanwhile the registry changes. Its watches die with its
    // session, so only a full re-read after the expiry can see the change.
    proxy.blackhole();
    client.delete(&first, None).await.expect("delete i-1");
    put(&client, "i-2", &registration(&b2, "i-2")).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let got = world.answering(8).await.expect("routed while cut off");
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        ["b1"],
        "last known set"
    );
    let healed = Instant::now();
    proxy.pass();
    world.wait_answering(&["b2"]).await;
    eprintln!(
        "figure: re-read and routed {:?} after the partition healed",
        healed.elapsed()
    );
    let expirations: u64 = synapse
        .counters
        .zk_sessions()
        .values()
        .map(|s| s.expirations)
        .sum();
    assert!(expirations >= 1, "the session expired: {expirations}");
    synapse.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nerve_in_both_registries_is_one_server_for_a_union_synapse() {
    integration_tests::init_tracing();
    let zk = ZooKeeper::start().await;
    let etcd = Etcd::start().await;
    let backend = Backend::start("b1").await;
    let etcd_endpoint = etcd.settings().endpoints[0].clone();
    let keys = format!(
        r#""reporter_type": ["zookeeper", "etcd"], "zk_hosts": ["{}"], "zk_path": "{DIR}",
           "etcd_path": "/smartstack/web""#,
        zk.address()
    );
    let config = nerve_config("i-1", backend.port(), 10, &keys).replacen(
        "{\"instance_id\"",
        &format!("{{\"etcd\": {{\"endpoints\": [\"{etcd_endpoint}\"]}}, \"instance_id\""),
        1,
    );
    let nerve = InProcessNerve::start(&config);
    let disco = format!(
        r#"{{"method": "multi", "resolver": {{"method": "union"}}, "watchers": {{
              "zk": {},
              "etcd": {{"method": "etcd", "hosts": ["{etcd_endpoint}"], "path": "/smartstack/web"}}}}}}"#,
        discovery(&[zk.address()], "")
    );
    let (world, synapse) = world_on(&disco).await;
    world.wait_answering(&["b1"]).await;
    // Both registries hold it...
    let client = zk.client().await;
    one_child(&client).await;
    let mut etcd_client = etcd.client().await;
    let kvs = etcd_client
        .get(
            "/smartstack/web/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("etcd get");
    assert_eq!(kvs.kvs().len(), 1);
    // ...and HAProxy has one server for it.
    let cfg = world.haproxy_cfg();
    let servers = cfg
        .lines()
        .filter(|l| {
            l.trim_start().starts_with("server ") && l.contains(&backend.port().to_string())
        })
        .count();
    assert_eq!(servers, 1, "{cfg}");
    nerve.terminate().await;
    synapse.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_ensemble_losing_members_and_quorum() {
    integration_tests::init_tracing();
    let mut ensemble = ZkEnsemble::start(3).await;
    let (b1, b2, b3) = (
        Backend::start("b1").await,
        Backend::start("b2").await,
        Backend::start("b3").await,
    );
    let client = integration_tests::zookeeper::zk_client(&ensemble.connect_string()).await;
    make_dir(&client).await;
    put(&client, "i-1", &registration(&b1, "i-1")).await;
    let (world, synapse) = world_on(&discovery(&ensemble.addresses(), "")).await;
    world.wait_answering(&["b1"]).await;

    // Member loss: the leader dies; the others elect one and synapse follows changes.
    let leader = ensemble.leader().await.expect("a leader");
    let killed = Instant::now();
    ensemble.member(leader).kill();
    let client = integration_tests::zookeeper::zk_client(&ensemble.connect_string()).await;
    eventually(ROUTE_TIMEOUT, || async {
        let opts = zookeeper_client::CreateMode::PersistentSequential
            .with_acls(zookeeper_client::Acls::anyone_all());
        client
            .create(
                &format!("{DIR}/i-2_"),
                registration(&b2, "i-2").as_bytes(),
                &opts,
            )
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    world.wait_answering(&["b1", "b2"]).await;
    eprintln!(
        "figure: leader killed; a new registration routed {:?} later",
        killed.elapsed()
    );

    // Quorum loss: a second member dies; the last one serves nothing. Routing stays.
    let alive: Vec<usize> = (0..3)
        .filter(|i| ensemble.members()[*i].is_running())
        .collect();
    ensemble.member(alive[0]).kill();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        world.answering(8).await.expect("routed without quorum");
    }
    let got = world.answering(8).await.expect("routed");
    assert_eq!(got.into_iter().collect::<Vec<_>>(), ["b1", "b2"]);

    // Quorum back: changes flow again.
    let back = Instant::now();
    ensemble.member(leader).restart();
    ensemble.members()[leader].wait_serving().await;
    let client = integration_tests::zookeeper::zk_client(&ensemble.connect_string()).await;
    put(&client, "i-3", &registration(&b3, "i-3")).await;
    world.wait_answering(&["b1", "b2", "b3"]).await;
    eprintln!(
        "figure: quorum restored; a new registration routed {:?} after the restart",
        back.elapsed()
    );
    synapse.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_replaced_make_before_break_never_leaves_haproxy() {
    // A nerve restarted make-before-break (or re-registering after an expiry) creates
    // its new node, then deletes the old one, milliseconds apart. Each watch fires in a
    // task of its own, so synapse may see the deletion first: it must not publish the
    // set without the server in between (it would be removed and added back).
    integration_tests::init_tracing();
    let zk = ZooKeeper::start().await;
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let client = zk.client().await;
    make_dir(&client).await;
    put(&client, "i-2", &registration(&b2, "i-2")).await;
    let mut node = put(&client, "i-1", &registration(&b1, "i-1")).await;
    let (world, synapse) = world_on(&discovery(&[zk.address()], "")).await;
    world.wait_answering(&["b1", "b2"]).await;
    // Settled: both servers are in the file.
    eventually(ROUTE_TIMEOUT, || async {
        let cfg = world.haproxy_cfg();
        let n = cfg
            .lines()
            .filter(|l| l.trim_start().starts_with("server "))
            .count();
        (n == 2).then_some(()).ok_or(format!("{n} servers"))
    })
    .await;
    let counters = &synapse.counters;
    let before = (
        synapse::counters::Counters::get(&counters.runtime_commands),
        synapse::counters::Counters::get(&counters.reloads),
    );
    for _ in 0..20 {
        // The new node and the old one's deletion in one transaction: their two events
        // reach synapse together, in either order.
        let opts = zookeeper_client::CreateMode::PersistentSequential
            .with_acls(zookeeper_client::Acls::anyone_all());
        let mut swap = client.new_multi_writer();
        swap.add_create(
            &format!("{DIR}/i-1_"),
            registration(&b1, "i-1").as_bytes(),
            &opts,
        )
        .expect("create op");
        swap.add_delete(&node, None).expect("delete op");
        let results = swap.commit().await.expect("swap");
        node = results
            .into_iter()
            .find_map(|r| match r {
                zookeeper_client::MultiWriteResult::Create { path, .. } => Some(path),
                _ => None,
            })
            .expect("created");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = (
        synapse::counters::Counters::get(&counters.runtime_commands),
        synapse::counters::Counters::get(&counters.reloads),
    );
    assert_eq!(
        before, after,
        "(runtime commands, reloads): the set never changed"
    );
    assert_eq!(children(&client).await.len(), 2);
    world.wait_answering(&["b1", "b2"]).await;
    synapse.stop().await;
}
