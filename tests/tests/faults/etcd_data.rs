//! What etcd holds and how it answers changes under the daemons: wiped (S06), compacted
//! while synapse is caught up or away (S07, S08), slow (S26), auth tokens expiring
//! (S27), oversized values (S29).

use std::collections::BTreeMap;
use std::time::Duration;

use integration_tests::{eventually, Backend};
use serde_json::json;
use synapse::counters::Counters;
use tokio::time::Instant;

use crate::observe::{failures, server_lines};
use crate::profile::{deadline, ms, pick, record, TIMEOUT};
use crate::world::{put_fillers, Registry, Setup, World};

/// S06: etcd wiped: stopped, its data deleted, started empty (revision 1, no leases).
/// synapse notices the new store and re-lists, the nerves find their leases gone and
/// register again, and HAProxy keeps its servers throughout (the empty registry in
/// between is held by the mass-removal guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_etcd_wiped() {
    let mut w = World::start("S06", false).await;
    let load = w.load();
    let relists = Counters::get(&w.synapse().counters.relists);
    let Registry::Single(etcd) = &mut w.registry else {
        unreachable!()
    };
    etcd.kill().await;
    let data = etcd.member().data_dir().to_owned();
    std::fs::remove_dir_all(&data).expect("wipe the data dir");
    etcd.restart().await;
    let up = Instant::now();
    eventually(TIMEOUT, || async {
        Counters::get(&w.synapse().counters.relists) > relists
    })
    .await;
    let relisted = up.elapsed();
    w.wait_registered(&["a", "b", "c"]).await;
    let registered = up.elapsed();
    w.routes_to(&["a", "b", "c"]).await;
    let converged = up.elapsed();
    // haproxy.cfg follows what HAProxy runs: the runtime API changes it first, and the
    // file (checked with `haproxy -c` first) is written after, off the hot path.
    let servers = eventually(TIMEOUT, || async {
        let n = server_lines(&w.cfg());
        if n == 3 {
            Ok(n)
        } else {
            Err(format!("{n} server lines in haproxy.cfg:\n{}", w.cfg()))
        }
    })
    .await;
    let report = load.stop().await;
    record(
        "S06",
        "etcd wiped",
        json!({"failed": report.failed(), "sent": report.sent, "relisted_ms": ms(relisted),
               "registered_ms": ms(registered), "converged_ms": ms(converged),
               "servers": servers}),
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    assert!(
        relisted <= deadline(Duration::from_secs(5)),
        "re-listed after {relisted:?}"
    );
    assert!(
        registered <= deadline(Duration::from_secs(5)),
        "registered after {registered:?}"
    );
    assert!(
        converged <= deadline(Duration::from_secs(10)),
        "{converged:?}"
    );
    w.stop().await;
}

/// S07: synapse is partitioned from etcd (blackhole), the registry changes 100 times and
/// is compacted at its head, then the partition heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_compaction_while_away() {
    let mut w = World::start("S07", false).await;
    let load = w.load();
    let relists = Counters::get(&w.synapse().counters.relists);
    let restarts = Counters::get(&w.synapse().counters.watch_restarts);
    w.synapse_proxy.as_ref().expect("proxy").blackhole();
    // "Away": synapse has noticed the dead connection (HTTP/2 keepalive, 1 s + 1 s).
    eventually(TIMEOUT, || async {
        Counters::get(&w.synapse().counters.watch_restarts) > restarts
    })
    .await;
    let noticed = Instant::now();
    // Real changes: c stops cleanly, d starts; and churn that compaction erases.
    w.host("c").nerve.terminate().await;
    w.add_host("d").await;
    w.wait_registered(&["a", "b", "d"]).await;
    let mut kv = w.client.kv_client();
    for i in 0..50 {
        let key = format!("{}/churn-{i}", w.path);
        let value = format!(r#"{{"host":"127.0.0.1","port":1,"name":"churn-{i}"}}"#);
        kv.put(key.clone(), value, None).await.expect("put");
        kv.delete(key, None).await.expect("delete");
    }
    let head = w.revision().await;
    kv.compact(head, None).await.expect("compact");
    // Still routing to the old set while away.
    w.routes_to(&["a", "b", "c"]).await;
    w.synapse_proxy.as_ref().expect("proxy").pass();
    let healed = Instant::now();
    w.routes_to(&["a", "b", "d"]).await;
    let converged = healed.elapsed();
    let report = load.stop().await;
    let relists = Counters::get(&w.synapse().counters.relists) - relists;
    let away = healed - noticed;
    let servers = server_lines(&w.cfg());
    record(
        "S07",
        "compaction while away",
        json!({"failed": report.failed(), "sent": report.sent, "relists": relists,
               "converged_ms": ms(converged), "servers": servers, "away_ms": ms(away)}),
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    assert!(relists >= 1, "no re-list after compaction");
    assert_eq!(servers, 3, "{}", w.cfg());
    assert!(
        converged <= deadline(Duration::from_secs(5)),
        "{converged:?}"
    );
    w.stop().await;
}

/// S08: compaction at the head while synapse is connected and caught up: its watch is
/// not cancelled, nothing is re-listed, and the next change arrives as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_compaction_while_caught_up() {
    let mut w = World::start("S08", false).await;
    let load = w.load();
    let relists = Counters::get(&w.synapse().counters.relists);
    let restarts = Counters::get(&w.synapse().counters.watch_restarts);
    let head = w.revision().await;
    w.client
        .kv_client()
        .compact(head, None)
        .await
        .expect("compact");
    let changed = Instant::now();
    w.host("c").nerve.terminate().await;
    w.routes_to(&["a", "b"]).await;
    let propagated = changed.elapsed();
    let report = load.stop().await;
    let relists = Counters::get(&w.synapse().counters.relists) - relists;
    let restarts = Counters::get(&w.synapse().counters.watch_restarts) - restarts;
    record(
        "S08",
        "compaction while caught up",
        json!({"failed": report.failed(), "sent": report.sent, "relists": relists,
               "watch_restarts": restarts, "propagated_ms": ms(propagated)}),
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    assert_eq!(
        (relists, restarts),
        (0, 0),
        "compaction at the head disturbed the watch"
    );
    w.stop().await;
}

/// S26: slow etcd: every daemon's connection to etcd delayed 500 ms each way for 15 s
/// (soak 60 s). Leases survive (no regrant), traffic is untouched, and a change made
/// meanwhile (a clean nerve stop) still reaches HAProxy within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s26_slow_etcd() {
    let w = World::start_with(
        "S26",
        Setup {
            // A 1 s round trip: the suite's 1 s keepalive timeout would cut every
            // connection, so §4.1's timings.
            spec_timeouts: true,
            ..Setup::default()
        },
    )
    .await;
    let leases = w.wait_registered(&["a", "b", "c"]).await;
    let load = w.load();
    let delay = Duration::from_millis(500);
    let slow = pick(Duration::from_secs(15), Duration::from_secs(60));
    let started = Instant::now();
    w.synapse_proxy.as_ref().expect("proxy").delay(delay);
    for h in &w.hosts {
        h.proxy.as_ref().expect("host proxy").delay(delay);
    }
    // Half way through, another writer (direct to etcd) registers d: the change must
    // reach HAProxy through synapse's slow connection.
    tokio::time::sleep(slow / 2).await;
    let d = Backend::start("d").await;
    let changed = Instant::now();
    let key = common::ServicePath::new(&w.path).expect("path").nerve_key(
        &common::InstanceId::new("host-d").expect("id"),
        &common::ServiceName::new("web").expect("name"),
        1,
    );
    let value = format!(
        r#"{{"host":"127.0.0.1","port":{},"name":"host-d"}}"#,
        d.port()
    );
    w.client
        .kv_client()
        .put(key, value, None)
        .await
        .expect("put d");
    w.routes_to(&["a", "b", "c", "d"]).await;
    let propagated = changed.elapsed();
    tokio::time::sleep(slow.saturating_sub(started.elapsed())).await;
    w.synapse_proxy.as_ref().expect("proxy").pass();
    for h in &w.hosts {
        h.proxy.as_ref().expect("host proxy").pass();
    }
    let after = w.wait_registered(&["a", "b", "c", "d"]).await;
    let regrants = after
        .iter()
        .filter(|(k, v)| k.as_str() != "host-d" && leases.get(*k) != Some(v))
        .count();
    w.routes_to(&["a", "b", "c", "d"]).await;
    let report = load.stop().await;
    record(
        "S26",
        "slow etcd",
        json!({"failed": report.failed(), "sent": report.sent, "regrants": regrants,
               "propagated_ms": ms(propagated), "delay_ms_each_way": ms(delay),
               "slow_ms": ms(slow)}),
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    assert_eq!(regrants, 0, "leases regranted under a slow etcd");
    assert!(
        propagated <= deadline(Duration::from_secs(5)),
        "{propagated:?}"
    );
    w.stop().await;
}

/// S27: etcd auth on, tokens living 5 s (`--auth-token-ttl=5`). After 10 s idle (every
/// token expired) c's service fails its check, and after 10 s more it recovers: nerve's
/// writes meet an expired token and must log in again. The DELETE lands within 2 s of
/// the failure, the PUT within 2 s of the recovery; nothing else is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s27_auth_token_expiry() {
    let mut w = World::start_with(
        "S27",
        Setup {
            etcd_args: &["--auth-token-ttl=5"],
            auth: true,
            // etcd extends a token each time it is used: nerves that read every 2 s
            // never see one expire.
            nerve_reconcile: Some(60),
            ..Setup::default()
        },
    )
    .await;
    let rev = w.revision().await;
    let load = w.load();
    // Idle: the tokens the daemons hold expire.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let failed_at = Instant::now();
    w.host("c").backend.set_healthy(false);
    w.wait_registered(&["a", "b"]).await;
    let deleted = failed_at.elapsed();
    w.routes_to(&["a", "b"]).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let recovered_at = Instant::now();
    w.host("c").backend.set_healthy(true);
    w.wait_registered(&["a", "b", "c"]).await;
    let registered = recovered_at.elapsed();
    w.routes_to(&["a", "b", "c"]).await;
    let report = load.stop().await;
    let deletes = w.deletes_since(rev).await;
    record(
        "S27",
        "auth token expiry",
        json!({"failed": report.failed(), "sent": report.sent, "deletes": deletes,
               "deleted_after_failure_ms": ms(deleted),
               "registered_after_recovery_ms": ms(registered)}),
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    assert_eq!(
        deletes,
        BTreeMap::from([("host-c".to_owned(), 1)]),
        "DELETEs"
    );
    assert!(
        deleted <= deadline(Duration::from_secs(2)),
        "deleted after {deleted:?}"
    );
    assert!(
        registered <= deadline(Duration::from_secs(2)),
        "registered after {registered:?}"
    );
    w.stop().await;
}

/// S29: an oversized registry: 3 junk values of 1.4 MiB and 1,000 (soak 5,000) valid
/// registrations of 1 KiB appear under the watched prefix while synapse is cut off, and
/// the history is compacted, so synapse must list it all again. The list is paginated:
/// one re-list, no list error; the junk is rejected as too_large; every valid instance is
/// in haproxy.cfg within 10 s of the heal; no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s29_oversized_registry() {
    let w = World::start_with(
        "S29",
        Setup {
            // Thousands of servers: HAProxy's own checks slowed down to stay light.
            server_options: Some("check inter 10s rise 2 fall 2"),
            service_extra: r#", "max_servers": 6000"#,
            ..Setup::default()
        },
    )
    .await;
    let n = pick(1_000, 5_000);
    let load = w.load();
    let relists = Counters::get(&w.synapse().counters.relists);
    let restarts = Counters::get(&w.synapse().counters.watch_restarts);
    let too_large = w.rejected("too_large").await;
    w.synapse_proxy.as_ref().expect("proxy").blackhole();
    eventually(TIMEOUT, || async {
        Counters::get(&w.synapse().counters.watch_restarts) > restarts
    })
    .await;
    let restarts = Counters::get(&w.synapse().counters.watch_restarts);
    let mut kv = w.client.kv_client();
    // Under etcd's 1.5 MiB request limit.
    let junk = "j".repeat(1_400 * 1024);
    for i in 0..3 {
        kv.put(format!("{}/junk-{i}", w.path), junk.clone(), None)
            .await
            .expect("put junk");
    }
    put_fillers(&w, 0..n, &w.ports(), 1024).await;
    let head = w.revision().await;
    kv.compact(head, None).await.expect("compact");
    w.synapse_proxy.as_ref().expect("proxy").pass();
    let healed = Instant::now();
    eventually(TIMEOUT, || async { server_lines(&w.cfg()) == 3 + n }).await;
    let converged = healed.elapsed();
    w.routes_to(&["a", "b", "c"]).await;
    let report = load.stop().await;
    let relists = Counters::get(&w.synapse().counters.relists) - relists;
    let restarts = Counters::get(&w.synapse().counters.watch_restarts) - restarts;
    let too_large = w.rejected("too_large").await - too_large;
    record(
        "S29",
        "oversized registry",
        json!({"failed": report.failed(), "sent": report.sent, "valid": n, "relists": relists,
               "watch_restarts_after_heal": restarts, "rejected_too_large": too_large,
               "converged_ms": ms(converged)}),
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    assert_eq!(relists, 1, "re-lists");
    assert_eq!(restarts, 0, "the list or the watch failed after the heal");
    assert!(too_large >= 3.0, "junk rejected {too_large} times");
    assert!(
        converged <= deadline(Duration::from_secs(10)),
        "{converged:?}"
    );
    w.stop().await;
}
