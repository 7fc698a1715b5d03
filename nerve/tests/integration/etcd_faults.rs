//! nerve (the binary) against a 3-member etcd cluster that loses its leader, and that is
//! restarted entirely.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::{eventually, init_tracing, Backend, EtcdCluster, Workdir};
use nix::sys::signal::Signal;
use serde_json::json;

use crate::support::{
    config, events_since, http_service, keys, revision, wait_keys, NerveProcess, TTL,
};

const SLACK: Duration = Duration::from_secs(3);

/// Members of an [`EtcdCluster`] started again by this test, all at once, on their old
/// names, ports and data dirs; killed on drop.
///
/// The harness's `EtcdCluster::restart` restarts one member at a time and waits for it to
/// serve, which etcd 3.4 does not do without a quorum, so it cannot bring back a cluster
/// whose members are all down.
struct Restarted(Vec<Child>);

impl Restarted {
    /// Starts every (killed) member of `cluster` at once; returns when all are healthy.
    async fn all(cluster: &EtcdCluster) -> Self {
        let initial_cluster = cluster
            .members()
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name(), m.peer_port()))
            .collect::<Vec<_>>()
            .join(",");
        let children = cluster
            .members()
            .iter()
            .map(|m| {
                assert!(!m.is_running(), "kill member {} first", m.name());
                let peer = format!("http://127.0.0.1:{}", m.peer_port());
                let log = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(m.log_path())
                    .expect("etcd log");
                Command::new(std::env::var_os("ETCD_BIN").unwrap_or_else(|| "etcd".into()))
                    .arg("--name")
                    .arg(m.name())
                    .arg("--data-dir")
                    .arg(m.data_dir())
                    .args(["--listen-client-urls", &m.endpoint()])
                    .args(["--advertise-client-urls", &m.endpoint()])
                    .args(["--listen-peer-urls", &peer])
                    .args(["--initial-advertise-peer-urls", &peer])
                    .args(["--initial-cluster", &initial_cluster])
                    .args(["--logger", "zap", "--log-outputs", "stderr"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::from(log))
                    .spawn()
                    .expect("start etcd")
            })
            .collect();
        let restarted = Self(children);
        eventually(Duration::from_secs(30), || async {
            for m in cluster.members() {
                if !m.is_healthy().await {
                    return Err(format!("{} not healthy yet", m.name()));
                }
            }
            Ok(())
        })
        .await;
        restarted
    }
}

impl Drop for Restarted {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn killing_the_etcd_leader_loses_no_registration() {
    init_tracing();
    let mut cluster = EtcdCluster::start(3).await;
    let dir = Workdir::new();
    let backend = Backend::start("a").await;
    let mut nerve = NerveProcess::start(
        &dir,
        "nerve",
        &config(
            &cluster.endpoints(),
            "host-1",
            json!({"a": http_service(backend.port(), "/svc/a", 1, 1)}),
        ),
    );
    let leader = cluster.leader().await;
    let survivor = (leader + 1) % 3;
    let client = cluster.member(survivor).client().await;
    let before = wait_keys(&client, "/svc/", 1, SLACK * 2).await;
    let rev = revision(&client).await;

    cluster.kill(leader).await;
    cluster.wait_ready().await;
    // Through the election and for several lease periods afterwards, the registration
    // stays: keep-alives reach the new leader under the same lease.
    tokio::time::sleep(Duration::from_secs(TTL * 2 + 1)).await;
    let client = cluster.member(survivor).client().await;
    assert_eq!(keys(&client, "/svc/").await.unwrap(), before);
    let events = events_since(&client, "/svc/", rev + 1).await;
    assert!(
        events.is_empty(),
        "registry changed during the failover: {events:?}"
    );
    assert!(nerve.is_running());

    nerve.signal(Signal::SIGTERM);
    assert_eq!(
        nerve.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
    wait_keys(&client, "/svc/", 0, SLACK).await;
}

#[tokio::test]
async fn a_full_etcd_restart_does_not_stop_nerve_and_registrations_return() {
    init_tracing();
    let mut cluster = EtcdCluster::start(3).await;
    let dir = Workdir::new();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut nerve = NerveProcess::start(
        &dir,
        "nerve",
        &config(
            &cluster.endpoints(),
            "host-1",
            json!({
                "a": http_service(a.port(), "/svc/a", 1, 1),
                "b": http_service(b.port(), "/svc/b", 1, 1),
            }),
        ),
    );
    let client = cluster.member(0).client().await;
    wait_keys(&client, "/svc/", 2, SLACK * 2).await;

    for i in 0..3 {
        cluster.kill(i).await;
    }
    // Down for longer than the lease TTL, and a service changes meanwhile: its removal
    // must reach etcd once it is back.
    b.set_healthy(false);
    tokio::time::sleep(Duration::from_secs(TTL + 1)).await;
    assert!(
        nerve.is_running(),
        "nerve exited during the outage:\n{}",
        nerve.log()
    );
    let _restarted = Restarted::all(&cluster).await;

    let client = cluster.member(0).client().await;
    let kvs = wait_keys(&client, "/svc/", 1, SLACK * 2).await;
    assert!(kvs[0].key.starts_with("/svc/a/"), "{kvs:?}");
    // The registration is alive, not a leftover: it outlasts another two lease periods.
    tokio::time::sleep(Duration::from_secs(TTL * 2)).await;
    eventually(SLACK, || async {
        let now = keys(&client, "/svc/").await?;
        if now.len() == 1 && now[0].key.starts_with("/svc/a/") {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    })
    .await;
    b.set_healthy(true);
    wait_keys(&client, "/svc/", 2, SLACK).await;
    assert!(nerve.is_running());
    nerve.signal(Signal::SIGTERM);
    assert_eq!(
        nerve.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
}

#[tokio::test]
async fn starts_while_etcd_is_down_and_registers_once_it_is_up() {
    init_tracing();
    let mut etcd = integration_tests::Etcd::start().await;
    etcd.stop().await;
    let dir = Workdir::new();
    let backend = Backend::start("a").await;
    let mut nerve = NerveProcess::start(
        &dir,
        "nerve",
        &config(
            &etcd.endpoints(),
            "host-1",
            json!({"a": http_service(backend.port(), "/svc/a", 1, 1)}),
        ),
    );
    // Several failed attempts, and nerve is still there.
    eventually(SLACK * 2, || async {
        nerve.log().contains("registry sync failed")
    })
    .await;
    assert!(
        nerve.is_running(),
        "nerve exited without etcd:\n{}",
        nerve.log()
    );
    etcd.restart().await;
    let client = etcd.client().await;
    wait_keys(&client, "/svc/a/", 1, SLACK * 2).await;
    nerve.signal(Signal::SIGTERM);
    assert_eq!(
        nerve.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
    wait_keys(&client, "/svc/", 0, SLACK).await;
}
