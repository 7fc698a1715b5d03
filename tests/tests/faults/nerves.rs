//! nerve and the hosts it checks fail: a nerve partitioned from etcd (S10), SIGKILLed
//! (S12), SIGTERMed (S13, S13b), paused (S14); a backend dies (S17) or flaps (S18).

use std::time::Duration;

use etcd_client::EventType;
use integration_tests::eventually;
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::time::Instant;

use crate::observe::failures;
use crate::profile::{deadline, ms, pick, record, TIMEOUT, TTL};
use crate::world::{Registry, World};

/// S10: one host's nerve is partitioned from etcd (blackhole) for longer than the TTL:
/// its registration expires and is removed; after the heal it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_nerve_partition_longer_than_ttl() {
    let mut w = World::start("S10", false).await;
    let load = w.load();
    let started = Instant::now();
    w.host("a").proxy.as_ref().expect("proxy").blackhole();
    w.wait_registered(&["b", "c"]).await;
    let deleted_after = started.elapsed();
    let removed = w.routes_to(&["b", "c"]).await;
    // Keep the partition for 3 × TTL in all (ci: 2 × TTL).
    let partition = pick(2 * TTL, 3 * TTL);
    tokio::time::sleep(partition.saturating_sub(started.elapsed())).await;
    w.host("a").proxy.as_ref().expect("proxy").pass();
    let healed = Instant::now();
    w.wait_registered(&["a", "b", "c"]).await;
    let back = healed.elapsed();
    w.routes_to(&["a", "b", "c"]).await;
    let routed = healed.elapsed();
    let report = load.stop().await;
    record(
        "S10",
        "nerve-etcd partition > TTL",
        json!({"failed": report.failed(), "sent": report.sent,
               "deleted_after_ms": ms(deleted_after), "unrouted_after_delete_ms": ms(removed),
               "registered_after_heal_ms": ms(back), "routed_after_heal_ms": ms(routed),
               "partition_ms": ms(partition)}),
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    // Deleted between TTL − TTL/3 (the last keepalive may precede the cut by TTL/3) and
    // TTL + 1.5 s.
    assert!(
        deleted_after >= TTL - TTL / 3 && deleted_after <= TTL + Duration::from_millis(1500),
        "deleted after {deleted_after:?}"
    );
    assert!(removed <= deadline(Duration::from_secs(2)), "{removed:?}");
    assert!(back <= deadline(Duration::from_secs(3)), "{back:?}");
    w.stop().await;
}

/// S12: nerve SIGKILL (the service keeps running): removed after the TTL; restarted, it
/// registers again. Variant: a restart within the TTL never drops the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_nerve_sigkill() {
    let mut w = World::start("S12", false).await;
    let load = w.load();
    // Variant first: kill and restart at once; the server must stay routed throughout.
    let rev = w.revision().await;
    w.host("a").nerve.restart();
    let until = Instant::now() + TTL + Duration::from_secs(2);
    let mut unrouted_samples = 0;
    while Instant::now() < until {
        let up = w.haproxy_up().await.unwrap_or_default();
        if !up.contains("a") {
            unrouted_samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let quick_deletes = w.deletes_since(rev).await;
    // Main case: kill, leave it dead past the TTL.
    let killed = Instant::now();
    w.host("a").nerve.kill();
    w.wait_registered(&["b", "c"]).await;
    let deleted_after = killed.elapsed();
    let unrouted = w.routes_to(&["b", "c"]).await;
    let restarted = Instant::now();
    w.host("a").nerve.spawn();
    w.wait_registered(&["a", "b", "c"]).await;
    w.routes_to(&["a", "b", "c"]).await;
    let back = restarted.elapsed();
    let report = load.stop().await;
    record(
        "S12",
        "nerve SIGKILL",
        json!({"failed": report.failed(), "sent": report.sent,
               "deleted_after_ms": ms(deleted_after), "unrouted_after_delete_ms": ms(unrouted),
               "routed_after_restart_ms": ms(back),
               "quick_restart_unrouted_samples": unrouted_samples,
               "quick_restart_deletes": quick_deletes.values().sum::<u64>()}),
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    assert!(
        deleted_after >= TTL - Duration::from_millis(500)
            && deleted_after <= TTL + Duration::from_millis(1500),
        "deleted after {deleted_after:?}"
    );
    assert!(unrouted <= deadline(Duration::from_secs(2)), "{unrouted:?}");
    assert_eq!(unrouted_samples, 0, "a quick restart dropped the server");
    w.stop().await;
}

/// S13: nerve SIGTERM: the registration goes at once (lease revoked), HAProxy drains it,
/// then the service stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_nerve_sigterm() {
    let mut w = World::start("S13", false).await;
    let load = w.load();
    let stopped = Instant::now();
    w.host("a").nerve.signal(Signal::SIGTERM);
    w.wait_registered(&["b", "c"]).await;
    let deleted_after = stopped.elapsed();
    let unrouted = w.routes_to(&["b", "c"]).await;
    w.host("a").backend.kill().await;
    // Traffic continues to b and c after the service stopped.
    w.routes_to(&["b", "c"]).await;
    let report = load.stop().await;
    record(
        "S13",
        "nerve SIGTERM",
        json!({"failed": report.failed(), "sent": report.sent,
               "deleted_after_ms": ms(deleted_after), "unrouted_after_delete_ms": ms(unrouted)}),
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    assert!(
        deleted_after <= deadline(Duration::from_secs(1)),
        "{deleted_after:?}"
    );
    assert!(unrouted <= deadline(Duration::from_secs(2)), "{unrouted:?}");
    w.stop().await;
}

/// S13, variant: nerve stops cleanly while the etcd member it talked to is down (a
/// 3-member cluster, member 0 killed: every nerve starts on the first endpoint; the
/// stop follows once the others have a leader). Its lease is still revoked at once,
/// through another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_nerve_sigterm_with_a_member_down() {
    let mut w = World::start("S13b", true).await;
    let Registry::Cluster(cluster) = &mut w.registry else {
        unreachable!()
    };
    cluster.kill(0).await;
    // As soon as the other two have a leader: the nerve has most likely not met the dead
    // member yet (its keep-alives are 1.7 s apart).
    cluster.wait_ready().await;
    let stopped = Instant::now();
    w.host("a").nerve.signal(Signal::SIGTERM);
    w.wait_registered(&["b", "c"]).await;
    let deleted_after = stopped.elapsed();
    record(
        "S13b",
        "nerve SIGTERM with a member down",
        json!({"deleted_after_ms": ms(deleted_after)}),
    );
    assert!(
        deleted_after <= deadline(Duration::from_secs(1)),
        "{deleted_after:?}"
    );
    w.stop().await;
}

/// S14: nerve paused (SIGSTOP) past the TTL: its keys expire; after SIGCONT it detects the
/// lost lease and registers again with a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_nerve_pause() {
    let mut w = World::start("S14", false).await;
    let leases = w.wait_registered(&["a", "b", "c"]).await;
    let load = w.load();
    let stopped = Instant::now();
    w.host("a").nerve.signal(Signal::SIGSTOP);
    w.wait_registered(&["b", "c"]).await;
    let deleted_after = stopped.elapsed();
    w.routes_to(&["b", "c"]).await;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await;
    w.host("a").nerve.signal(Signal::SIGCONT);
    let resumed = Instant::now();
    let after = w.wait_registered(&["a", "b", "c"]).await;
    let back = resumed.elapsed();
    w.routes_to(&["a", "b", "c"]).await;
    let report = load.stop().await;
    let regrants = after
        .iter()
        .filter(|(k, v)| leases.get(*k) != Some(v))
        .count();
    record(
        "S14",
        "nerve pause > TTL",
        json!({"failed": report.failed(), "sent": report.sent,
               "deleted_after_ms": ms(deleted_after), "registered_after_cont_ms": ms(back),
               "regrants": regrants}),
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    assert!(back <= deadline(Duration::from_secs(3)), "{back:?}");
    assert_eq!(regrants, 1);
    w.stop().await;
}

/// S17: a backend process dies while its nerve lives: nerve's check deregisters it,
/// HAProxy's own check marks it down; at most the in-flight request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s17_backend_death() {
    let mut w = World::start("S17", false).await;
    let load = w.load();
    let killed = Instant::now();
    w.host("a").backend.kill().await;
    w.wait_registered(&["b", "c"]).await;
    let deleted_after = killed.elapsed();
    eventually(TIMEOUT, || async {
        let up = w.haproxy_up().await?;
        if up.contains("a") {
            Err(format!("still up: {up:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    let down_after = killed.elapsed();
    w.routes_to(&["b", "c"]).await;
    let report = load.stop().await;
    record(
        "S17",
        "backend death",
        json!({"failed": report.failed(), "sent": report.sent,
               "deleted_after_ms": ms(deleted_after), "haproxy_down_after_ms": ms(down_after)}),
    );
    assert!(report.failed() <= 1, "{:?}", failures(&report));
    // fall 3 × 250 ms, a check timeout, plus an etcd round trip and slack for 2 cores.
    assert!(
        deleted_after <= deadline(Duration::from_secs(2)),
        "{deleted_after:?}"
    );
    assert!(
        down_after <= deadline(Duration::from_secs(2)),
        "{down_after:?}"
    );
    w.stop().await;
}

/// S18a: a check that alternates ok/fail on every probe (rise 2, fall 3): never two oks
/// or three fails in a row, so the instance stays registered with no registry write.
/// S18b: slow flapping (phases longer than rise/fall): one transition per phase, never
/// more, and no failed request (the backend itself keeps serving).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18_flapping_checks() {
    let mut w = World::start("S18", false).await;
    let load = w.load();
    let reloads = w.synapse().reloads();
    // a: fast flapping.
    let rev = w.revision().await;
    let fast = pick(Duration::from_secs(10), Duration::from_secs(60));
    let probes = w.host("a").backend.health_checks();
    w.host("a").backend.set_flapping(true);
    tokio::time::sleep(fast).await;
    w.host("a").backend.set_flapping(false);
    let probes = w.host("a").backend.health_checks() - probes;
    let fast_writes = w
        .events_since(rev, EventType::Put)
        .await
        .get("host-a")
        .copied();
    let fast_deletes = w.deletes_since(rev).await.get("host-a").copied();
    let fast_reloads = w.synapse().reloads() - reloads;
    w.routes_to(&["a", "b", "c"]).await;
    // b: slow flapping, phases of 2 s (soak 5 s) for 6 phases (soak 12).
    let rev = w.revision().await;
    let (phase, phases) = pick((Duration::from_secs(2), 6u64), (Duration::from_secs(5), 12));
    for i in 0..phases {
        w.host("b").backend.set_healthy(i % 2 == 1);
        tokio::time::sleep(phase).await;
    }
    w.host("b").backend.set_healthy(true);
    w.wait_registered(&["a", "b", "c"]).await;
    let slow_deletes = w
        .deletes_since(rev)
        .await
        .get("host-b")
        .copied()
        .unwrap_or(0);
    let slow_puts = w
        .events_since(rev, EventType::Put)
        .await
        .get("host-b")
        .copied()
        .unwrap_or(0);
    w.routes_to(&["a", "b", "c"]).await;
    let report = load.stop().await;
    record(
        "S18",
        "flapping checks",
        json!({"failed": report.failed(), "sent": report.sent,
               "fast_probes": probes, "fast_puts": fast_writes.unwrap_or(0),
               "fast_deletes": fast_deletes.unwrap_or(0), "fast_reloads": fast_reloads,
               "slow_phases": phases, "slow_deletes": slow_deletes, "slow_puts": slow_puts}),
    );
    assert!(probes >= 10, "only {probes} probes while flapping");
    assert_eq!(
        (fast_writes, fast_deletes),
        (None, None),
        "fast flapping reached the registry"
    );
    assert_eq!(fast_reloads, 0);
    // Down in phases 0, 2, 4 (one delete each), up again after each (one put each).
    let downs = phases.div_ceil(2);
    assert!(
        slow_deletes >= 1 && slow_deletes <= downs,
        "{slow_deletes} deletes in {phases} phases"
    );
    assert!(slow_puts <= downs, "{slow_puts} puts in {phases} phases");
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    w.stop().await;
}
