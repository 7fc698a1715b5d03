//! Self-tests of the harness against the real things: HAProxy routes to real backends
//! and reloads; etcd keeps data across member kills, restarts and pauses; the runtime API
//! helpers see what HAProxy does; processes die with their handles, panics included.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::haproxy::preamble;
use integration_tests::{
    eventually, free_port, http_get, http_get_timeout, init_tracing, loopback, Backend, Etcd,
    EtcdCluster, Haproxy, HaproxyError, HaproxyOptions, OpState, Workdir,
};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A frontend on `port` and a round-robin backend `be` with servers `s1`, `s2`.
fn two_server_config(
    stats_socket: &std::path::Path,
    port: u16,
    servers: [SocketAddr; 2],
    server_options: &str,
) -> String {
    format!(
        "{}frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\n\n\
         backend be\n    balance roundrobin\n{}    server s1 {} {server_options}\n    server s2 {} {server_options}\n",
        preamble(stats_socket),
        if server_options.contains("check") {
            "    option httpchk GET /health\n"
        } else {
            ""
        },
        servers[0],
        servers[1],
    )
}

/// Starts HAProxy in front of two backends; returns it, its frontend address and workdir.
async fn haproxy_in_front_of(
    b1: &Backend,
    b2: &Backend,
    server_options: &str,
) -> (Haproxy, SocketAddr, Workdir) {
    let dir = Workdir::new();
    let socket = dir.join("haproxy.sock");
    let port = free_port();
    let config = dir.write(
        "haproxy.cfg",
        two_server_config(&socket, port, [b1.addr(), b2.addr()], server_options),
    );
    let haproxy = Haproxy::start(HaproxyOptions::new(config).stats_socket(socket)).await;
    (haproxy, loopback(port), dir)
}

/// The bodies (backend ids) of `n` sequential requests through `addr`.
async fn ids_of(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let response = http_get(addr, "/").await.expect("request through haproxy");
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(
            response.header("x-backend-id"),
            Some(response.body.as_str())
        );
        ids.push(response.body);
    }
    ids
}

fn pid_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn haproxy_routes_round_robin_and_keeps_routing_across_reloads() {
    init_tracing();
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let (haproxy, frontend, dir) = haproxy_in_front_of(&b1, &b2, "").await;

    let ids = ids_of(frontend, 4).await;
    assert!(
        ids[0] != ids[1] && ids[0] == ids[2] && ids[1] == ids[3],
        "not round-robin: {ids:?}"
    );
    assert_eq!((b1.requests(), b2.requests()), (2, 2));
    let pidfile = std::fs::read_to_string(haproxy.pidfile()).expect("pid file");
    assert_eq!(pidfile.trim(), haproxy.master_pid().to_string());

    let before = haproxy.worker_pids().await.expect("show proc");
    assert_eq!(before.len(), 1, "{before:?}");
    let after = haproxy.reload().await.expect("reload");
    assert_eq!(after.master_pid, haproxy.master_pid());
    assert!(
        after.workers.iter().all(|w| !before.contains(w)),
        "same worker after reload: {before:?} -> {after:?}"
    );
    let ids: BTreeSet<String> = ids_of(frontend, 4).await.into_iter().collect();
    assert_eq!(ids, BTreeSet::from(["b1".to_owned(), "b2".to_owned()]));
    assert_eq!((b1.requests(), b2.requests()), (4, 4));

    // A config that does not load is reported, and the running worker keeps serving.
    let good = dir.read("haproxy.cfg");
    dir.write("haproxy.cfg", format!("{good}    balanse roundrobin\n"));
    let workers = haproxy.worker_pids().await.expect("show proc");
    match haproxy.reload().await {
        Err(HaproxyError::ReloadFailed { log, .. }) => assert!(log.contains("balanse"), "{log}"),
        other => panic!("a broken config must fail the reload, got {other:?}"),
    }
    assert_eq!(haproxy.worker_pids().await.expect("show proc"), workers);
    assert_eq!(ids_of(frontend, 2).await.len(), 2);

    // And the next good config recovers.
    dir.write("haproxy.cfg", good);
    haproxy.reload().await.expect("reload after a failed one");
    assert_eq!(ids_of(frontend, 2).await.len(), 2);
}

#[tokio::test]
async fn servers_state_follows_disable_and_enable_server() {
    init_tracing();
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let (haproxy, frontend, _dir) = haproxy_in_front_of(&b1, &b2, "").await;

    let state = haproxy
        .show_servers_state("be")
        .await
        .expect("servers state");
    let names: Vec<&str> = state.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["s1", "s2"]);
    assert_eq!(
        (state[0].addr.as_str(), state[0].port, state[1].port),
        ("127.0.0.1", b1.port(), b2.port())
    );
    assert!(state.iter().all(|s| s.backend == "be"
        && s.op_state == OpState::Running
        && !s.admin_state.is_maint()
        && s.weight == 1));

    let answer = haproxy
        .command("disable server be/s1")
        .await
        .expect("disable");
    assert_eq!(
        answer.trim(),
        "",
        "unexpected answer to disable: {answer:?}"
    );
    let state = haproxy
        .show_servers_state("be")
        .await
        .expect("servers state");
    assert!(state[0].admin_state.is_maint(), "{:?}", state[0]);
    assert!(!state[1].admin_state.is_maint(), "{:?}", state[1]);
    let stat = haproxy.show_stat().await.expect("show stat");
    let s1 = stat
        .iter()
        .find(|r| r.proxy == "be" && r.name == "s1")
        .expect("s1 in show stat");
    assert_eq!(s1.status(), "MAINT");
    assert!(ids_of(frontend, 3).await.iter().all(|id| id == "b2"));
    assert_eq!(b1.requests(), 0);

    haproxy
        .command("enable server be/s1")
        .await
        .expect("enable");
    let state = haproxy
        .show_servers_state("be")
        .await
        .expect("servers state");
    assert!(!state[0].admin_state.is_maint(), "{:?}", state[0]);
    let ids: BTreeSet<String> = ids_of(frontend, 2).await.into_iter().collect();
    assert!(
        ids.contains("b1"),
        "b1 gets no traffic after enable: {ids:?}"
    );

    assert!(haproxy.show_servers_state("nosuchbackend").await.is_err());
}

#[tokio::test]
async fn command_without_a_stats_socket_goes_through_the_master() {
    init_tracing();
    let dir = Workdir::new();
    let port = free_port();
    // No stats socket in the config at all.
    let config = dir.write(
        "haproxy.cfg",
        format!(
            "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n\n\
             frontend fe\n    bind 127.0.0.1:{port}\n    http-request return status 204\n"
        ),
    );
    let haproxy = Haproxy::start(HaproxyOptions::new(config)).await;
    let info = haproxy.command("show info").await.expect("show info");
    let workers = haproxy.worker_pids().await.expect("show proc");
    assert!(
        info.contains(&format!("Pid: {}", workers[0])),
        "show info is not from the worker {workers:?}: {info}"
    );
    let response = http_get(loopback(port), "/").await.expect("request");
    assert_eq!(response.status, 204);
}

#[tokio::test]
async fn haproxy_health_checks_follow_the_backend() {
    init_tracing();
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let (haproxy, frontend, _dir) =
        haproxy_in_front_of(&b1, &b2, "check inter 100ms fall 1 rise 1").await;

    // (status, last check result) of a server, from `show stat`.
    let status = |server: &'static str| {
        let haproxy = &haproxy;
        async move {
            let stat = haproxy.show_stat().await.map_err(|e| e.to_string())?;
            stat.into_iter()
                .find(|r| r.proxy == "be" && r.name == server)
                .map(|r| {
                    let check = r.get("check_status").unwrap_or_default().to_owned();
                    (r.status().to_owned(), check)
                })
                .ok_or_else(|| format!("{server} not in show stat"))
        }
    };
    // Servers start UP before their first check: wait for a passed check (L7OK).
    eventually(TIMEOUT, || async {
        let (s1, s2) = (status("s1").await?, status("s2").await?);
        if s1 == ("UP".into(), "L7OK".into()) && s2 == ("UP".into(), "L7OK".into()) {
            Ok(())
        } else {
            Err(format!("s1 {s1:?}, s2 {s2:?}"))
        }
    })
    .await;
    assert!(b1.health_checks() > 0 && b2.health_checks() > 0);

    b1.set_healthy(false);
    eventually(TIMEOUT, || async {
        match status("s1").await? {
            (s, check) if s.starts_with("DOWN") && check == "L7STS" => Ok(()),
            s => Err(format!("s1 is {s:?}")),
        }
    })
    .await;
    let served_by_b1 = b1.requests();
    assert!(ids_of(frontend, 4).await.iter().all(|id| id == "b2"));
    assert_eq!(b1.requests(), served_by_b1);

    b1.set_healthy(true);
    eventually(TIMEOUT, || async {
        match status("s1").await? {
            (s, check) if s == "UP" && check == "L7OK" => Ok(()),
            s => Err(format!("s1 is {s:?}")),
        }
    })
    .await;
    let ids: BTreeSet<String> = ids_of(frontend, 2).await.into_iter().collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
}

#[tokio::test]
async fn backend_health_endpoint_follows_set_healthy_and_kill_closes_it() {
    init_tracing();
    let mut backend = Backend::start("b1").await;
    let health = http_get(backend.addr(), "/health").await.expect("health");
    assert_eq!((health.status, health.body.as_str()), (200, "b1"));

    backend.set_healthy(false);
    assert!(!backend.is_healthy());
    let health = http_get(backend.addr(), "/health").await.expect("health");
    assert_eq!(health.status, 500);
    assert_eq!(health.header("x-backend-id"), Some("b1"));
    // Other paths still answer: only the health endpoint is affected.
    assert_eq!(
        http_get(backend.addr(), "/x").await.expect("get").status,
        200
    );
    assert_eq!((backend.requests(), backend.health_checks()), (1, 2));

    backend.set_healthy(true);
    assert_eq!(
        http_get(backend.addr(), "/health")
            .await
            .expect("health")
            .status,
        200
    );

    let addr = backend.addr();
    backend.kill().await;
    assert!(http_get_timeout(addr, "/", Duration::from_secs(1))
        .await
        .is_err());
    // It can come back on the same port, as a restarted instance would.
    let back = Backend::start_on("b1-again", addr.port())
        .await
        .expect("rebind");
    assert_eq!(http_get(addr, "/").await.expect("get").body, "b1-again");
    drop(back);
}

#[tokio::test]
async fn etcd_cluster_survives_killing_the_leader() {
    init_tracing();
    let mut cluster = EtcdCluster::start(3).await;
    assert_eq!(cluster.endpoints().len(), 3);
    let mut client = cluster.client().await;
    client.put("/harness/k1", "v1", None).await.expect("put k1");

    let leader = cluster.leader().await;
    let leader_pid = cluster.pid(leader).expect("leader pid");
    cluster.kill(leader).await;
    assert!(!cluster.member(leader).is_running());
    assert!(
        !pid_exists(leader_pid),
        "killed leader {leader_pid} still exists"
    );

    let survivor = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let client = cluster.member(survivor).client().await;
    // Linearizable reads need a leader: wait through the election.
    let value = eventually(TIMEOUT, || {
        let mut client = client.clone();
        async move {
            let response = client
                .get("/harness/k1", None)
                .await
                .map_err(|e| e.to_string())?;
            match response.kvs().first() {
                Some(kv) => Ok(kv.value().to_vec()),
                None => Err("k1 not found".to_owned()),
            }
        }
    })
    .await;
    assert_eq!(value, b"v1");
    let mut writer = client.clone();
    writer
        .put("/harness/k2", "v2", None)
        .await
        .expect("put k2 with one member down");

    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let mut reader = cluster.member(other).client().await;
    let response = reader.get("/harness/k2", None).await.expect("get k2");
    assert_eq!(response.kvs()[0].value(), b"v2");

    // The killed member comes back with its data and catches up.
    cluster.restart(leader).await;
    cluster.wait_ready().await;
    let mut back = cluster.member(leader).client().await;
    let response = back
        .get("/harness/k2", None)
        .await
        .expect("get k2 from restarted");
    assert_eq!(response.kvs()[0].value(), b"v2");
}

#[tokio::test]
async fn single_node_etcd_keeps_data_across_restarts() {
    init_tracing();
    let mut etcd = Etcd::start().await;
    let endpoint = etcd.endpoint();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    let mut client = etcd.client().await;
    client.put("/harness/a", "1", None).await.expect("put a");

    let pid = etcd.pid().expect("pid");
    etcd.stop().await;
    assert!(etcd.pid().is_none() && !pid_exists(pid));
    assert!(!etcd.member().is_healthy().await);
    etcd.restart().await;
    assert_ne!(etcd.pid(), Some(pid));
    assert_eq!(etcd.endpoint(), endpoint);

    let mut client = etcd.client().await;
    client.put("/harness/b", "2", None).await.expect("put b");
    // SIGKILL too: etcd acknowledged the writes, so they survive a crash.
    etcd.kill().await;
    etcd.restart().await;
    let mut client = etcd.client().await;
    let response = client
        .get(
            "/harness/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("get prefix");
    let kvs: Vec<(&[u8], &[u8])> = response
        .kvs()
        .iter()
        .map(|kv| (kv.key(), kv.value()))
        .collect();
    assert_eq!(
        kvs,
        [
            (&b"/harness/a"[..], &b"1"[..]),
            (&b"/harness/b"[..], &b"2"[..])
        ]
    );
}

#[tokio::test]
async fn paused_member_freezes_and_catches_up_on_resume() {
    init_tracing();
    let mut cluster = EtcdCluster::start(3).await;
    let leader = cluster.leader().await;
    cluster.pause(leader).await;
    assert!(cluster.member(leader).is_paused());
    // A frozen process accepts TCP (the kernel does) but never answers.
    assert!(!cluster.member(leader).is_healthy().await);

    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader, "a paused member cannot stay leader");
    let mut client = cluster.member(new_leader).client().await;
    client
        .put("/harness/during-pause", "x", None)
        .await
        .expect("put during pause");

    cluster.resume(leader).await;
    assert!(!cluster.member(leader).is_paused());
    cluster.wait_ready().await;
    let client = cluster.member(leader).client().await;
    // Serializable reads are served from the member's own state: they prove it caught up.
    eventually(TIMEOUT, || {
        let mut client = client.clone();
        async move {
            let response = client
                .get(
                    "/harness/during-pause",
                    Some(etcd_client::GetOptions::new().with_serializable()),
                )
                .await
                .map_err(|e| e.to_string())?;
            match response.kvs().first() {
                Some(kv) if kv.value() == b"x" => Ok(()),
                other => Err(format!("resumed member has {other:?}")),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn processes_die_with_their_handles_even_on_panic() {
    init_tracing();
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let (haproxy, _frontend, dir) = haproxy_in_front_of(&b1, &b2, "").await;
    let config = dir.join("haproxy.cfg");
    let mut pids = haproxy.worker_pids().await.expect("show proc");
    pids.push(haproxy.master_pid());
    drop(haproxy);
    for pid in &pids {
        assert!(!pid_exists(*pid), "haproxy process {pid} survived drop");
    }

    // A test that panics while owning etcd and HAProxy still stops them.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let etcd = Etcd::start().await;
        let haproxy = Haproxy::start(HaproxyOptions::new(config)).await;
        let mut pids = haproxy.worker_pids().await.expect("show proc");
        pids.extend([haproxy.master_pid(), etcd.pid().expect("etcd pid")]);
        let _ = tx.send(pids);
        panic!("test body panics");
    });
    assert!(task.await.expect_err("the task panics").is_panic());
    let pids = rx.await.expect("pids from the panicking task");
    for pid in pids {
        assert!(!pid_exists(pid), "process {pid} survived a panic");
    }
}
