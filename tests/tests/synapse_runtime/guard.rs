//! The mass-removal guard, on with its defaults (issue 17): nerves leaving one by one
//! are unrouted at once, canary churn never trips it, a registry wipe is held.

use std::collections::BTreeSet;
use std::time::Duration;

use integration_tests::{eventually, free_port, Backend, Haproxy, InProcessNerve};

use crate::world::{routes_to, three_backends, World};
use crate::TIMEOUT;

/// The nerves' lease TTL in the guard tests.
const NERVE_TTL: Duration = Duration::from_secs(3);

impl World {
    /// A nerve registering `backend` as `host-<id>` under `web`, checking its `/health`.
    fn nerve(&self, id: &str, backend: &Backend) -> InProcessNerve {
        let config = serde_json::json!({
            "instance_id": format!("host-{id}"),
            "etcd": {"endpoints": [format!("http://{}", self.etcd_addr)],
                     "dial_timeout": 1, "request_timeout": 1},
            "lease_ttl": NERVE_TTL.as_secs(),
            "reconcile_interval": 2,
            "shutdown_timeout": 2,
            "services": {"web": {
                "host": "127.0.0.1", "port": backend.port(), "reporter_type": "etcd",
                "etcd_path": self.service_path().as_str(), "check_interval": 0.25,
                "checks": [{"type": "http", "uri": "/health", "timeout": 0.2,
                            "rise": 1, "fall": 3}],
            }},
        });
        InProcessNerve::start(&config.to_string())
    }

    /// Registers `n` instances `i-NN` on the ports of `backends` (round robin), in one
    /// transaction.
    async fn register_many(&self, names: std::ops::Range<usize>, backends: &[&Backend]) {
        let ops: Vec<etcd_client::TxnOp> = names
            .map(|i| {
                let b = backends[i % backends.len()];
                let value = format!(
                    r#"{{"host":"127.0.0.1","port":{},"name":"i-{i:02}"}}"#,
                    b.port()
                );
                etcd_client::TxnOp::put(self.key(&format!("i-{i:02}")), value, None)
            })
            .collect();
        self.client
            .kv_client()
            .txn(etcd_client::Txn::new().and_then(ops))
            .await
            .expect("txn");
    }

    /// HAProxy's servers of `web`, by name.
    async fn live_servers(haproxy: &Haproxy) -> BTreeSet<String> {
        haproxy
            .show_servers_state("web")
            .await
            .map(|s| s.into_iter().map(|s| s.name).collect())
            .unwrap_or_default()
    }
}

/// A 3-instance service: one nerve stopped cleanly (SIGTERM), another killed (SIGKILL)
/// 2 s later. Both removals are applied as they come (the second when its key expires),
/// not held: 2 of 3 is under the guard's minimum of 3 servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_nerves_leaving_within_seconds_are_unrouted_at_once() {
    let w = World::start("guard-2of3").await;
    let port = free_port();
    let (a, b, c) = three_backends().await;
    let (na, nb, _nc) = (w.nerve("a", &a), w.nerve("b", &b), w.nerve("c", &c));
    let (synapse, _haproxy) = w.with_haproxy(port, |t| t).await;
    routes_to(port, &["a", "b", "c"]).await;

    let stopped = tokio::time::Instant::now();
    na.terminate().await;
    routes_to(port, &["b", "c"]).await;
    let a_unrouted = stopped.elapsed();
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(stopped.elapsed())).await;
    let killed = tokio::time::Instant::now();
    nb.kill();
    // b's backend still answers: only its key's expiry takes it out.
    routes_to(port, &["c"]).await;
    let b_unrouted = killed.elapsed();
    assert_eq!(synapse.get(|c| &c.mass_removal_trips), 0);
    assert!(
        a_unrouted < Duration::from_secs(5),
        "a unrouted after {a_unrouted:?}"
    );
    // Key expiry (TTL, and etcd's lease check) plus the apply; a held removal would take
    // the guard's 30 s hold.
    assert!(
        b_unrouted < NERVE_TTL + Duration::from_secs(8),
        "b unrouted {b_unrouted:?} after the kill"
    );
    println!(
        "guard 2 of 3: a unrouted {a_unrouted:?} after SIGTERM, b {b_unrouted:?} after SIGKILL"
    );
    synapse.stop().await;
}

/// 3 stable servers, and a canary added and deleted again every 2.5 s, 8 times: every
/// deletion is applied (the guard counts losses against the stable set only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_churn_never_trips_the_guard() {
    let w = World::start("guard-churn").await;
    let port = free_port();
    let (a, b, c, canary) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
        Backend::start("canary").await,
    );
    w.register("host-a", &a).await;
    w.register("host-b", &b).await;
    w.register("host-c", &c).await;
    let (synapse, haproxy) = w.with_haproxy(port, |t| t).await;
    routes_to(port, &["a", "b", "c"]).await;
    let mut slowest = Duration::ZERO;
    for i in 0..8 {
        let name = format!("canary-{i}");
        w.register(&name, &canary).await;
        let server = format!("{name}_127.0.0.1:{}", canary.port());
        eventually(TIMEOUT, || async {
            World::live_servers(&haproxy).await.contains(&server)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1250)).await;
        let deleted = tokio::time::Instant::now();
        w.deregister(&name).await;
        eventually(TIMEOUT, || async {
            !World::live_servers(&haproxy).await.contains(&server)
                && !w.server_lines().iter().any(|l| l.contains(&server))
        })
        .await;
        slowest = slowest.max(deleted.elapsed());
        tokio::time::sleep(Duration::from_millis(1250).saturating_sub(deleted.elapsed())).await;
    }
    assert_eq!(synapse.get(|c| &c.mass_removal_trips), 0);
    // Held, a deletion would wait the 30 s hold.
    assert!(
        slowest < Duration::from_secs(5),
        "slowest deletion {slowest:?}"
    );
    println!("guard churn: 8 add/delete cycles, slowest deletion applied in {slowest:?}");
    routes_to(port, &["a", "b", "c"]).await;
    synapse.stop().await;
}

/// A registry wipe is held: 20 of 24 servers deleted at once stay routed (the guard
/// trips once and holds), and so do the last servers of a prefix emptied
/// (`use_previous_backends`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_wipe_is_held() {
    let w = World::start("guard-wipe").await;
    let port = free_port();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    w.register_many(0..24, &[&a, &b]).await;
    let (synapse, haproxy) = w.with_haproxy(port, |t| t).await;
    eventually(TIMEOUT, || async {
        World::live_servers(&haproxy).await.len() == 24
    })
    .await;

    // 20 of 24 in one transaction.
    let ops: Vec<etcd_client::TxnOp> = (0..20)
        .map(|i| etcd_client::TxnOp::delete(w.key(&format!("i-{i:02}")), None))
        .collect();
    w.client
        .kv_client()
        .txn(etcd_client::Txn::new().and_then(ops))
        .await
        .expect("txn");
    let wiped = tokio::time::Instant::now();
    // The trip is counted as it happens; the holding gauge is set by the apply that
    // keeps the last good set, a moment after.
    eventually(TIMEOUT, || async {
        synapse.get(|c| &c.mass_removal_trips) == 1 && synapse.get(|c| &c.mass_removal_holding) == 1
    })
    .await;
    // Still held 5 s later: HAProxy has every server, and routes to both backends.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(wiped.elapsed())).await;
    assert_eq!(World::live_servers(&haproxy).await.len(), 24);
    routes_to(port, &["a", "b"]).await;

    // The whole prefix emptied: the last set stays (with the guard holding meanwhile).
    let ops: Vec<etcd_client::TxnOp> = (20..24)
        .map(|i| etcd_client::TxnOp::delete(w.key(&format!("i-{i:02}")), None))
        .collect();
    w.client
        .kv_client()
        .txn(etcd_client::Txn::new().and_then(ops))
        .await
        .expect("txn");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(World::live_servers(&haproxy).await.len() >= 4);
    routes_to(port, &["a", "b"]).await;
    println!(
        "guard wipe: tripped once, 24 of 24 still routed {:?} after the wipe",
        wiped.elapsed()
    );
    synapse.stop().await;
}
