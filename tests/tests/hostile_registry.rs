//! A hostile writer fills a service's prefix with junk up to etcd's quota
//! (`--quota-backend-bytes` 40 MiB): synapse keeps routing on the good set, counts every
//! junk key, and its memory stays bounded. The quota is below synapse's default
//! `max_bytes` (64 MiB) on purpose: etcd may take a few puts beyond its quota before it
//! raises the alarm (under load, 64 MiB of quota held more than 64 MiB of junk), and over
//! the cap synapse drops the junk instead of counting it (the next test). synapse runs in this test's process, so the
//! RSS figures include the test's own etcd client (reliability.md, security table).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use integration_tests::{eventually, init_tracing, Etcd, InProcessSynapse as Synapse, Workdir};

const TIMEOUT: Duration = Duration::from_secs(60);
const QUOTA: u64 = 40 * 1024 * 1024;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn names(out: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(out.join("web.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_filled_to_the_quota_leaves_synapse_bounded_and_routing() {
    init_tracing();
    let quota = format!("--quota-backend-bytes={QUOTA}");
    let etcd = Etcd::start_with_args(&[&quota]).await;
    let client = etcd.client().await;
    let mut kv = client.kv_client();
    let path = "/it/hostile/web";
    kv.put(
        format!("{path}/good"),
        r#"{"host":"10.0.0.1","port":8080,"name":"good"}"#,
        None,
    )
    .await
    .expect("put");
    let dir = Workdir::new();
    let out = dir.join("out");
    let synapse = Synapse::start(&format!(
        r#"{{"services": {{"web": {{"discovery": {{"method": "etcd", "hosts": ["{ep}"],
             "path": "{path}", "resync_interval": 3}}}}}},
           "file_output": {{"output_directory": "{out}"}}}}"#,
        ep = etcd.endpoint(),
        out = out.display()
    ));
    eventually(TIMEOUT, || async { names(&out) == ["good"] }).await;
    let before = rss_kib();

    // Junk values of 512 KiB until etcd refuses ("database space exceeded").
    let junk = "x".repeat(512 * 1024);
    let mut written = 0u64;
    for i in 0.. {
        match kv
            .put(format!("{path}/junk-{i:05}"), junk.as_str(), None)
            .await
        {
            Ok(_) => written += 1,
            Err(e) if e.to_string().contains("space exceeded") => break,
            Err(e) => panic!("put {i}: {e}"),
        }
    }
    assert!(written >= 32, "only {written} junk values fit the quota");
    // The put that raised the quota alarm may itself have been applied: count what is
    // there.
    let stored = kv
        .get(
            format!("{path}/junk-"),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .expect("count")
        .count();
    let written = u64::try_from(stored).expect("count");
    eventually(TIMEOUT, || async {
        synapse.counters.rejected_total() >= written
    })
    .await;
    // Two resyncs (every 3 s) re-list the whole prefix; count the peak meanwhile.
    let relists = synapse.get(|c| &c.relists);
    let peak = AtomicU64::new(rss_kib());
    eventually(TIMEOUT, || async {
        peak.fetch_max(rss_kib(), Ordering::Relaxed);
        synapse.get(|c| &c.relists) >= relists + 2
    })
    .await;
    let peak = peak.into_inner();
    let after = rss_kib();
    println!(
        "hostile registry: {written} x 512 KiB junk ({} MiB) under a {} MiB quota; \
         RSS before {} MiB, peak {} MiB, after {} MiB",
        written / 2,
        QUOTA >> 20,
        before >> 10,
        peak >> 10,
        after >> 10
    );
    assert_eq!(names(&out), ["good"], "routing on the good set");
    // Junk is counted once, not per re-list.
    assert_eq!(synapse.counters.rejected_total(), written);
    // Bounded: well under the junk held at once plus a page of it.
    assert!(
        peak.saturating_sub(before) < 256 * 1024,
        "RSS grew {} MiB",
        (peak - before) >> 10
    );
    synapse.stop().await;
}

/// Over `max_keys` (on a watch event or a list) or `max_bytes` (on a list), synapse keeps
/// the last good set, says why in the status and the `etcd_over_cap` counter, holds no
/// more than the cap, and follows the prefix again once it is back under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_cap_the_last_good_set_stays_until_the_prefix_shrinks() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let mut kv = client.kv_client();
    let (keys_path, bytes_path) = ("/it/cap/keys", "/it/cap/bytes");
    let good = |name: &str| format!(r#"{{"host":"10.0.0.1","port":8080,"name":"{name}"}}"#);
    for path in [keys_path, bytes_path] {
        kv.put(format!("{path}/good"), good("good"), None)
            .await
            .expect("put");
    }
    let dir = Workdir::new();
    let out = dir.join("out");
    let service = |path: &str, cap: &str| {
        format!(
            r#"{{"discovery": {{"method": "etcd", "hosts": ["{}"], "path": "{path}",
                 "resync_interval": 1, {cap}}}}}"#,
            etcd.endpoint()
        )
    };
    let synapse = Synapse::start(&format!(
        r#"{{"services": {{"web": {}, "big": {}}},
            "file_output": {{"output_directory": "{}"}}}}"#,
        service(keys_path, r#""max_keys": 5"#),
        service(bytes_path, r#""max_bytes": 4096"#),
        out.display()
    ));
    let names_of = |service: &str| {
        let text = std::fs::read_to_string(out.join(format!("{service}.json"))).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["name"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    eventually(TIMEOUT, || async {
        names_of("web") == ["good"] && names_of("big") == ["good"]
    })
    .await;
    // Ten junk keys under web (cap 5), 8 KiB of valid-looking padding under big.
    for i in 0..10 {
        kv.put(format!("{keys_path}/junk-{i}"), "junk", None)
            .await
            .expect("put");
    }
    kv.put(format!("{bytes_path}/pad"), "x".repeat(8192), None)
        .await
        .expect("put");
    let last_error = |service: &str| {
        synapse
            .counters
            .services
            .snapshot()
            .services
            .get(service)
            .and_then(|s| s.etcd.as_ref().and_then(|e| e.last_error.clone()))
            .unwrap_or_default()
    };
    eventually(TIMEOUT, || async {
        last_error("web").contains("max_keys") && last_error("big").contains("max_bytes")
    })
    .await;
    assert!(synapse.get(|c| &c.registry_over_cap) >= 2);
    // The last good sets stay, and a new good key is not taken while over the cap.
    kv.put(format!("{keys_path}/late"), good("late"), None)
        .await
        .expect("put");
    tokio::time::sleep(Duration::from_secs(3)).await; // idle on purpose: nothing may change
    assert_eq!(names_of("web"), ["good"]);
    assert_eq!(names_of("big"), ["good"]);
    // Back under the caps: followed again.
    kv.delete(
        format!("{keys_path}/junk-"),
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .expect("delete");
    kv.delete(format!("{bytes_path}/pad"), None)
        .await
        .expect("delete");
    eventually(TIMEOUT, || async {
        names_of("web") == ["good", "late"] && names_of("big") == ["good"]
    })
    .await;
    synapse.stop().await;
}
