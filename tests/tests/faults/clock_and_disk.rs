//! Clocks and disks: clock skew under libfaketime (S23), etcd out of space (S24),
//! haproxy.cfg's disk full (S25).

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{AlarmAction, AlarmOptions, AlarmType, CompactionOptions, DeleteOptions};
use integration_tests::eventually;
use serde_json::json;
use tokio::time::Instant;

use crate::daemon::Daemon;
use crate::observe::{failures, leftover_temp_files, metric, server_lines};
use crate::profile::{deadline, ms, pick, record, TIMEOUT};
use crate::world::{put_fillers, Setup, World};

/// libfaketime's library for multi-threaded programs (Debian's `libfaketime`).
fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .expect("/usr/lib")
        .filter_map(Result::ok)
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1")])
        .find(|p| p.exists())
        .expect("libfaketime is not installed (scripts/install-deps installs it)")
}

/// The last timestamp in a daemon's log (`2026-12-03T21:59:30.781Z  INFO …`) minus
/// the time now, in seconds, within ±12 h.
fn log_clock_offset(log: &std::path::Path) -> i64 {
    let text = std::fs::read_to_string(log).expect("daemon log");
    let stamp = text
        .lines()
        .rev()
        .find_map(|l| l.get(11..19).filter(|_| l.starts_with("20")))
        .expect("a timestamped line");
    let secs = stamp
        .split(':')
        .map(|p| p.parse::<i64>().expect("hh:mm:ss"))
        .fold(0, |acc, p| acc * 60 + p);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let day = 86_400;
    let diff = (secs - i64::try_from(now % 86_400).unwrap_or(0)).rem_euclid(day);
    if diff > day / 2 {
        diff - day
    } else {
        diff
    }
}

/// `synapse_haproxy_reloads_total{result="ok"}` of a synapse process.
async fn reloads_at(admin: u16) -> f64 {
    eventually(TIMEOUT, || {
        metric(admin, "synapse_haproxy_reloads_total", &[("result", "ok")])
    })
    .await
}

/// S23: clock skew, under libfaketime. (1) Wall-clock steps, the monotonic clock left
/// alone (as NTP steps a clock): a nerve 1 h ahead, one 1 h behind, and synapse and a
/// third nerve whose wall clock jumps every 10 s (soak 60 s) through +1 h, −1 h, +5 min,
/// 0. (2) Rate: two nerves whose every clock, monotonic included, runs at ×0.5 and ×1.5.
/// For 60 s (soak 5 min): no lease re-granted, no healthy instance deleted, no reload,
/// no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s23_clock_skew() {
    let lib = libfaketime().display().to_string();
    let mut w = World::start("S23", false).await;
    let steps = w.dir.write("faketime-steps", "+0");
    let wall = |spec: &str| {
        vec![
            ("LD_PRELOAD", lib.clone()),
            ("FAKETIME", spec.to_owned()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ]
    };
    let stepping = vec![
        ("LD_PRELOAD", lib.clone()),
        ("FAKETIME_TIMESTAMP_FILE", steps.display().to_string()),
        ("FAKETIME_CACHE_DURATION", "1".to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ];
    let rate = |spec: &str| vec![("LD_PRELOAD", lib.clone()), ("FAKETIME", spec.to_owned())];
    // synapse, on the stepping clock, takes over from the in-process one.
    w.synapse.take().expect("synapse").stop().await;
    let config = w.dir.write("synapse.json", w.synapse_config());
    let mut synapse = Daemon::synapse(&w.dir, "synapse-skewed", &config, stepping.clone());
    w.add_host_with_env("ahead", wall("+1h")).await;
    w.add_host_with_env("behind", wall("-1h")).await;
    w.add_host_with_env("stepping", stepping).await;
    w.add_host_with_env("slow", rate("+0 x0.5")).await;
    w.add_host_with_env("fast", rate("+0 x1.5")).await;
    let all = ["a", "b", "c", "ahead", "behind", "stepping", "slow", "fast"];
    let leases = w.wait_registered(&all).await;
    w.routes_to(&all).await;
    // Every change so far is applied (rate-limited reloads included) before counting.
    eventually(TIMEOUT, || async {
        let before = reloads_at(w.admin).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        reloads_at(w.admin).await == before
    })
    .await;
    let reloads = reloads_at(w.admin).await;
    let rev = w.revision().await;
    let probes = |w: &mut World| -> Vec<u64> {
        ["a", "slow", "fast"]
            .iter()
            .map(|id| w.host(id).backend.health_checks())
            .collect()
    };
    let probes_before = probes(&mut w);
    let load = w.load();
    let started = Instant::now();
    let run = pick(Duration::from_secs(60), Duration::from_secs(300));
    let step = pick(Duration::from_secs(10), Duration::from_secs(60));
    let mut next_step = started + step;
    let offsets = ["+1h", "-1h", "+5m", "+0"];
    let mut stepped = 0;
    while started.elapsed() < run {
        if Instant::now() >= next_step {
            w.dir
                .write("faketime-steps", offsets[stepped % offsets.len()]);
            stepped += 1;
            next_step += step;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The skew is real: the nerves' checks run at their clocks' rates, their logs carry
    // their wall clocks.
    let rates: Vec<f64> = probes(&mut w)
        .iter()
        .zip(&probes_before)
        .map(|(after, before)| (after - before) as f64)
        .collect();
    let (slow_rate, fast_rate) = (rates[1] / rates[0], rates[2] / rates[0]);
    let ahead = log_clock_offset(&w.host("ahead").nerve.log);
    let behind = log_clock_offset(&w.host("behind").nerve.log);
    w.routes_to(&all).await;
    assert!(synapse.is_running(), "synapse exited");
    let report = load.stop().await;
    let after = w.wait_registered(&all).await;
    let deletes = w.deletes_since(rev).await;
    let regrants: Vec<&String> = leases
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    let reloads = reloads_at(w.admin).await - reloads;
    record(
        "S23",
        "clock skew",
        json!({"failed": report.failed(), "sent": report.sent, "deletes_healthy": deletes.len(),
               "regrants": regrants.len(), "reloads": reloads, "steps": stepped,
               "run_ms": ms(run), "check_rate_slow": slow_rate, "check_rate_fast": fast_rate,
               "log_clock_ahead_s": ahead, "log_clock_behind_s": behind}),
    );
    assert!(
        (0.35..0.65).contains(&slow_rate),
        "x0.5 nerve checked at {slow_rate}x"
    );
    assert!(
        (1.3..1.7).contains(&fast_rate),
        "x1.5 nerve checked at {fast_rate}x"
    );
    let hour = 3_600;
    let late = i64::try_from(started.elapsed().as_secs()).unwrap_or(0) + 60;
    assert!(
        (hour - late..=hour + 5).contains(&ahead),
        "+1h nerve logs at {ahead} s"
    );
    assert!(
        (-hour - late..=-hour + 5).contains(&behind),
        "-1h nerve logs at {behind} s"
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    assert!(
        deletes.is_empty(),
        "DELETEs of healthy instances: {deletes:?}"
    );
    assert!(regrants.is_empty(), "re-granted: {regrants:?}");
    assert!(reloads == 0.0, "{reloads} reloads");
    w.stop().await;
}

/// S24: etcd runs out of space (`--quota-backend-bytes` 16 MiB, filled by another
/// writer until the NOSPACE alarm). Keep-alives are not raft writes, so nothing
/// registered is deleted; a new host's registration fails with one warning; after the
/// filler is deleted, compacted, defragmented and the alarm disarmed, it lands within 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s24_etcd_nospace() {
    let mut w = World::start_with(
        "S24",
        Setup {
            etcd_args: &["--quota-backend-bytes=16777216"],
            ..Setup::default()
        },
    )
    .await;
    w.wait_registered(&["a", "b", "c"]).await;
    let keys = w.keys().await;
    let load = w.load();
    let mut client = w.client.clone();
    let blob = vec![b'x'; 1 << 20];
    let mut filled = None;
    for i in 0..64 {
        if let Err(e) = client
            .put(format!("/faults-fill/{i:02}"), blob.clone(), None)
            .await
        {
            filled = Some(e.to_string());
            break;
        }
    }
    let filled = filled.expect("etcd never ran out of space");
    assert!(filled.contains("space exceeded"), "{filled}");
    w.add_host("d").await;
    let full_at = Instant::now();
    let fault = pick(Duration::from_secs(20), Duration::from_secs(60));
    while full_at.elapsed() < fault {
        w.routes_to(&["a", "b", "c"]).await;
        w.wait_registered(&["a", "b", "c"]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = std::fs::read_to_string(&w.host("d").nerve.log).expect("nerve log");
    let complaints = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    client
        .delete("/faults-fill/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete the filler");
    let head = w.revision().await;
    client
        .compact(head, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    client.defragment().await.expect("defragment");
    let alarms = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarms");
    for a in alarms.alarms() {
        let mut only = AlarmOptions::new();
        only.with_member(a.member_id());
        client
            .alarm(AlarmAction::Deactivate, a.alarm(), Some(only))
            .await
            .expect("disarm");
    }
    let disarmed = Instant::now();
    w.wait_registered(&["a", "b", "c", "d"]).await;
    let registered = disarmed.elapsed();
    w.routes_to(&["a", "b", "c", "d"]).await;
    let report = load.stop().await;
    // The compaction erased the history: a key deleted and put again meanwhile would have
    // a new create revision, a re-granted one a new lease.
    let now = w.keys().await;
    let deletes: Vec<&String> = keys
        .iter()
        .filter(|(k, (created, _))| now.get(*k).map(|v| v.0) != Some(*created))
        .map(|(k, _)| k)
        .collect();
    let regrants = keys
        .iter()
        .filter(|(k, (_, lease))| now.get(*k).map(|v| v.1) != Some(*lease))
        .count();
    record(
        "S24",
        "etcd NOSPACE",
        json!({"failed": report.failed(), "sent": report.sent, "deletes_healthy": deletes.len(),
               "regrants": regrants, "full_ms": ms(fault), "new_host_warnings": complaints,
               "registered_after_disarm_ms": ms(registered)}),
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    assert!(
        deletes.is_empty(),
        "DELETEs of healthy instances: {deletes:?}"
    );
    assert_eq!(regrants, 0);
    assert!(
        complaints as u64 <= fault.as_secs() / 2 + 1,
        "{complaints} warnings in {fault:?}:\n{log}"
    );
    assert!(
        complaints >= 1,
        "the failed registration was not logged:\n{log}"
    );
    assert!(
        registered <= deadline(Duration::from_secs(3)),
        "{registered:?}"
    );
    w.stop().await;
}

/// S25: the disk under haproxy.cfg is full: it lives on a 16 KiB tmpfs and 250 new
/// instances need a larger file. The file stays as it was, no reload, no temp file left,
/// one error per attempt at most once a second; after the tmpfs grows the change lands
/// within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s25_config_disk_full() {
    let w = World::start_with(
        "S25",
        Setup {
            cfg_tmpfs: Some("16k"),
            ..Setup::default()
        },
    )
    .await;
    let load = w.load();
    let cfg = w.cfg();
    let reloads = w.synapse().reloads();
    let failures_before = w.synapse().get(|c| &c.write_failures);
    let fillers = 250;
    // Real listeners (a's, b's and c's backends): the load must not meet instances
    // that were never up.
    put_fillers(&w, 0..fillers, &w.ports(), 0).await;
    eventually(TIMEOUT, || async {
        w.synapse().get(|c| &c.write_failures) > failures_before
    })
    .await;
    let full_at = Instant::now();
    let fault = pick(Duration::from_secs(5), Duration::from_secs(20));
    while full_at.elapsed() < fault {
        w.routes_to(&["a", "b", "c"]).await;
        assert!(w.synapse().is_running());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let attempts = w.synapse().get(|c| &c.write_failures) - failures_before;
    let during = full_at.elapsed();
    let cfg_unchanged = w.cfg() == cfg;
    let reloads_during = w.synapse().reloads() - reloads;
    let leftovers = leftover_temp_files(&w.cfg_path());
    w.cfg_tmpfs.as_ref().expect("tmpfs").resize("1m");
    let freed = Instant::now();
    eventually(TIMEOUT, || async { server_lines(&w.cfg()) == 3 + fillers }).await;
    let converged = freed.elapsed();
    w.routes_to(&["a", "b", "c"]).await;
    let report = load.stop().await;
    record(
        "S25",
        "config disk full",
        json!({"failed": report.failed(), "sent": report.sent, "write_attempts": attempts,
               "full_ms": ms(during), "cfg_unchanged_during": cfg_unchanged,
               "reloads_during": reloads_during, "leftover_temp_files": leftovers.len(),
               "converged_after_space_ms": ms(converged)}),
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    assert!(cfg_unchanged, "haproxy.cfg changed while the disk was full");
    assert_eq!(reloads_during, 0);
    assert!(
        attempts <= during.as_secs() + 2,
        "{attempts} writes in {during:?}"
    );
    assert!(
        converged <= deadline(Duration::from_millis(2_500)),
        "{converged:?}"
    );
    w.stop().await;
}
