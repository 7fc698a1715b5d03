//! synapse and HAProxy fail: synapse partitioned (S11), in a crash loop (S15), crashing
//! at every step of a write (S20); HAProxy's master killed (S16) or refusing every new
//! render (S21).

use std::os::unix::process::ExitStatusExt;

use std::collections::BTreeMap;
use std::time::Duration;

use integration_tests::{eventually, Haproxy, StatsSocket, Workdir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use tokio::time::Instant;

use crate::daemon::Daemon;
use crate::observe::{
    failures, haproxy_check, leftover_temp_files, server_lines, show_proc, wait_ready,
};
use crate::profile::{deadline, ms, pick, record, TIMEOUT};
use crate::world::{put_fillers, Setup, World};

/// S11: synapse is partitioned from etcd; the registry changes meanwhile; HAProxy keeps
/// serving the last set without a reload, and the changes apply after the heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_synapse_partition() {
    let mut w = World::start("S11", false).await;
    let load = w.load();
    let cfg = w.cfg();
    let reloads = w.synapse().reloads();
    let started = Instant::now();
    w.synapse_proxy.as_ref().expect("proxy").blackhole();
    w.host("c").nerve.terminate().await;
    w.add_host("d").await;
    w.wait_registered(&["a", "b", "d"]).await;
    let partition = pick(Duration::from_secs(20), Duration::from_secs(60));
    while started.elapsed() < partition {
        w.routes_to(&["a", "b", "c"]).await;
        assert!(w.synapse().is_running());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let reloads_during = w.synapse().reloads() - reloads;
    let cfg_unchanged = w.cfg() == cfg;
    // Operators see it: the set is marked stale, for about as long as the partition.
    let stale = w.stale_seconds().await;
    w.synapse_proxy.as_ref().expect("proxy").pass();
    let healed = Instant::now();
    w.routes_to(&["a", "b", "d"]).await;
    let converged = healed.elapsed();
    eventually(Duration::from_secs(10), || async {
        w.stale_seconds().await == 0.0
    })
    .await;
    let report = load.stop().await;
    record(
        "S11",
        "synapse-etcd partition",
        json!({"failed": report.failed(), "sent": report.sent, "reloads_during": reloads_during,
               "cfg_unchanged_during": cfg_unchanged, "converged_ms": ms(converged),
               "partition_ms": ms(partition), "stale_seconds_at_heal": stale}),
    );
    // The watch notices the cut within its keepalive (1 + 1 s) and progress (1 s) bounds.
    let stale_min = partition.as_secs_f64() - 5.0;
    assert!(
        stale >= stale_min && stale <= partition.as_secs_f64(),
        "stale {stale} s at the heal, partition {partition:?}"
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    assert_eq!(reloads_during, 0);
    assert!(cfg_unchanged, "haproxy.cfg changed during the partition");
    assert!(
        converged <= deadline(Duration::from_secs(5)),
        "{converged:?}"
    );
    w.stop().await;
}

/// S15: synapse in a crash loop: SIGKILLed 10 times at moments spread over its first
/// 2 s (start-up included), the registry stable, the runtime API on. HAProxy keeps its
/// master and serves throughout; the restarts cause at most one reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s15_synapse_crash_loop() {
    let mut w = World::start_with(
        "S15",
        Setup {
            runtime_api: true,
            ..Setup::default()
        },
    )
    .await;
    w.synapse.take().expect("synapse").stop().await;
    let config = w.dir.write("synapse.json", w.synapse_config());
    let haproxy = w.haproxy.as_ref().expect("haproxy");
    let master = haproxy.master_pid();
    let before = show_proc(haproxy).await;
    let load = w.load();
    let mut moments = Vec::new();
    for i in 0..10u64 {
        let mut synapse = Daemon::synapse(&w.dir, "synapse", &config, Vec::new());
        // A fixed spread of moments over 0–2 s.
        let moment = Duration::from_millis((i * 797 + 131) % 2_000);
        tokio::time::sleep(moment).await;
        assert!(synapse.is_running(), "synapse exited by itself");
        synapse.kill();
        moments.push(ms(moment));
    }
    let mut synapse = Daemon::synapse(&w.dir, "synapse", &config, Vec::new());
    wait_ready(w.admin).await;
    w.routes_to(&["a", "b", "c"]).await;
    let after = show_proc(haproxy).await;
    let reloads = after.reloads - before.reloads;
    assert!(synapse.is_running(), "synapse exited");
    let report = load.stop().await;
    record(
        "S15",
        "synapse crash loop",
        json!({"failed": report.failed(), "sent": report.sent, "kills": moments.len(),
               "kill_moments_ms": moments, "reloads": reloads,
               "master_unchanged": after.master_pid == before.master_pid}),
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    assert_eq!(haproxy.master_pid(), master, "HAProxy's master changed");
    assert_eq!(after.master_pid, before.master_pid);
    assert!(reloads <= 1, "{reloads} reloads");
    w.stop().await;
}

/// S16: HAProxy crashes (its master SIGKILLed) after 20 changes synapse made through
/// the runtime API alone; the harness starts it again on the file once synapse has
/// noticed (as systemd would, `RestartSec=2`). synapse reports the failure and keeps
/// running; the new HAProxy serves the registry's set from the file, with no synapse
/// action; requests fail only while no HAProxy runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_haproxy_crash() {
    let mut w = World::start_with(
        "S16",
        Setup {
            runtime_api: true,
            ..Setup::default()
        },
    )
    .await;
    let reloads = w.synapse().reloads();
    let ports = w.ports();
    // 15 instances come, 5 of them go: 20 changes, each applied at runtime.
    for i in 0..20 {
        if i < 15 {
            put_fillers(&w, i..i + 1, &ports, 0).await;
        } else {
            let key = format!("{}/filler-{:04}", w.path, i - 15);
            w.client
                .kv_client()
                .delete(key, None)
                .await
                .expect("delete");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let want = 3 + 10;
    let stats = StatsSocket::new(w.dir.join("stats.sock"));
    let serving = || async {
        stats
            .show_servers_state("web")
            .await
            .is_ok_and(|s| s.len() == want)
    };
    let haproxy = w.haproxy.take().expect("haproxy");
    eventually(TIMEOUT, serving).await;
    eventually(TIMEOUT, || async { server_lines(&w.cfg()) == want }).await;
    let runtime_commands = w.synapse().get(|c| &c.runtime_commands);
    assert_eq!(w.synapse().reloads(), reloads, "a change needed a reload");
    assert!(
        runtime_commands >= 20,
        "{runtime_commands} runtime commands"
    );
    // Let synapse finish what the changes owe (a rate-limited file write may still be
    // due, e.g. once drained servers are gone): what it does after the crash is then the
    // crash's doing. Quiet = no write for 2 s.
    let writes = eventually(TIMEOUT, || async {
        let before = w.synapse().get(|c| &c.config_writes);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = w.synapse().get(|c| &c.config_writes);
        (before == after).then_some(after)
    })
    .await;
    let failures_before = w.synapse().get(|c| &c.runtime_failures);
    let load = w.load();
    tokio::time::sleep(Duration::from_secs(1)).await;
    kill(
        Pid::from_raw(i32::try_from(haproxy.master_pid()).expect("pid")),
        Signal::SIGKILL,
    )
    .expect("kill HAProxy");
    let killed = Instant::now();
    drop(haproxy);
    eventually(TIMEOUT, || async {
        w.synapse().get(|c| &c.runtime_failures) > failures_before
    })
    .await;
    let noticed = killed.elapsed();
    // Up again on the file synapse left.
    let restarted = Instant::now();
    w.haproxy = Some(Haproxy::start_for_synapse(w.dir.path()).await);
    let down = killed.elapsed();
    eventually(TIMEOUT, serving).await;
    let serving_after = restarted.elapsed();
    w.routes_to(&["a", "b", "c"]).await;
    // synapse's next look finds HAProxy as it wants it.
    let checked = w.synapse().get(|c| &c.runtime_failures);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = load.stop().await;
    let acted = (
        w.synapse().reloads() - reloads,
        w.synapse().get(|c| &c.runtime_commands) - runtime_commands,
        w.synapse().get(|c| &c.config_writes) - writes,
    );
    let failed_during_restart = report
        .failures
        .iter()
        .filter(|f| f.at > Duration::from_secs(1) + down + Duration::from_millis(500))
        .count();
    record(
        "S16",
        "HAProxy crash",
        json!({"failed": report.failed(), "sent": report.sent, "noticed_ms": ms(noticed),
               "down_ms": ms(down), "serving_after_restart_ms": ms(serving_after),
               "synapse_reloads_commands_writes_after": acted,
               "failed_after_restart": failed_during_restart}),
    );
    assert!(w.synapse().is_running());
    assert!(
        noticed <= deadline(Duration::from_millis(2_500)),
        "noticed after {noticed:?}"
    );
    assert!(
        serving_after <= deadline(Duration::from_secs(1)),
        "{serving_after:?}"
    );
    assert_eq!(acted, (0, 0, 0), "synapse acted after the restart");
    assert_eq!(
        w.synapse().get(|c| &c.runtime_failures),
        checked,
        "still failing"
    );
    // Requests fail only while no HAProxy runs (plus one load period of slack).
    assert_eq!(failed_during_restart, 0, "{:?}", failures(&report));
    assert!(
        report.failed() <= ms(down) / 20 + 1,
        "{} failed in {down:?} down",
        report.failed()
    );
    w.stop().await;
}

/// S20: synapse crashes (it SIGKILLs itself at a failpoint) at every step of writing
/// haproxy.cfg and reloading, `iterations` times each, each time with a change to write.
/// After every crash haproxy.cfg passes `haproxy -c` and is byte for byte the old file
/// or the one the next start writes; the next start leaves no temp file behind; HAProxy
/// never fails a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s20_crash_during_write() {
    let mut w = World::start("S20", false).await;
    // The in-process synapse makes way for synapse processes on the same config.
    w.synapse.take().expect("synapse").stop().await;
    // With checks, a candidate of a unique name is written, checked, renamed; without,
    // the temp file of an atomic write is.
    let text = w.synapse_config();
    let unchecked = text.replace(r#""do_checks": true"#, r#""do_checks": false"#);
    assert_ne!(text, unchecked);
    let configs = [
        (true, w.dir.write("synapse.json", &text)),
        (false, w.dir.write("synapse-unchecked.json", &unchecked)),
    ];
    let load = w.load();
    let iterations = pick(5, 25);
    let port = w.host("a").backend.port();
    let points = [
        "before_tmp_write",
        "after_tmp_write",
        "after_fsync",
        "after_check",
        "after_rename",
        "before_reload",
    ];
    let mut outcomes: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut fillers = 0;
    let runs = configs.iter().flat_map(|(checked, config)| {
        points
            .iter()
            .filter(move |p| *checked || **p != "after_check")
            .map(move |p| (*checked, config, *p))
    });
    let mut crashes = 0;
    for (checked, config, point) in runs {
        for _ in 0..iterations {
            crashes += 1;
            let old = w.cfg();
            put_fillers(&w, fillers..fillers + 1, &[port], 0).await;
            fillers += 1;
            let env = vec![(synapse::failpoint::ENV, point.to_owned())];
            let mut crashing = Daemon::synapse(&w.dir, "synapse-crash", config, env);
            let status = crashing.exited().await;
            assert_eq!(
                status.signal(),
                Some(Signal::SIGKILL as i32),
                "{point}: synapse did not crash at its failpoint but exited with {status}"
            );
            let crashed = w.cfg();
            haproxy_check(&w.cfg_path());
            // The next start writes the registry's state and cleans up.
            let mut next = Daemon::synapse(&w.dir, "synapse", config, Vec::new());
            eventually(TIMEOUT, || async {
                server_lines(&w.cfg()) == 3 + fillers
                    && leftover_temp_files(&w.cfg_path()).is_empty()
            })
            .await;
            let new = w.cfg();
            next.terminate().await;
            assert!(
                crashed == old || crashed == new,
                "{point}: haproxy.cfg after the crash is neither the old nor the new file:\n{crashed}"
            );
            let key = format!("{point}{}", if checked { "" } else { " (unchecked)" });
            let o = outcomes.entry(key).or_default();
            if crashed == old {
                o.0 += 1;
            } else {
                o.1 += 1;
            }
        }
    }
    let report = load.stop().await;
    record(
        "S20",
        "crash during write",
        json!({"failed": report.failed(), "sent": report.sent, "crashes": crashes,
               "old_new_after_crash": outcomes, "check_passed": crashes}),
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    // Before the rename the file is the old one, from it on the new one.
    for (point, (old, new)) in &outcomes {
        let renamed = point.starts_with("after_rename") || point.starts_with("before_reload");
        assert_eq!(
            (*old == 0, *new == 0),
            (renamed, !renamed),
            "{point}: {old} old, {new} new"
        );
    }
    w.stop().await;
}

/// S21: HAProxy refuses every new render: the `errorfile` named in the rendered defaults
/// is removed (an operator's mistake, or a broken volume), so `haproxy -c` rejects the
/// candidate. haproxy.cfg and HAProxy stay as they were, the check is retried at most
/// once a second, and once the file is back the change lands within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s21_refused_render() {
    let files = Workdir::new();
    let errorfile = files.write(
        "503.http",
        "HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nno server\n",
    );
    let mut w = World::start_with(
        "S21",
        Setup {
            defaults: vec![format!("errorfile 503 {}", errorfile.display())],
            ..Setup::default()
        },
    )
    .await;
    let load = w.load();
    let cfg = w.cfg();
    let reloads = w.synapse().reloads();
    let checks = w.synapse().get(|c| &c.check_failures);
    let away = files.join("503.http.away");
    std::fs::rename(&errorfile, &away).expect("remove the errorfile");
    w.add_host("d").await;
    w.wait_registered(&["a", "b", "c", "d"]).await;
    eventually(TIMEOUT, || async {
        w.synapse().get(|c| &c.check_failures) > checks
    })
    .await;
    let refused_at = Instant::now();
    let fault = pick(Duration::from_secs(10), Duration::from_secs(30));
    while refused_at.elapsed() < fault {
        w.routes_to(&["a", "b", "c"]).await;
        assert!(w.synapse().is_running());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let attempts = w.synapse().get(|c| &c.check_failures) - checks;
    let during = refused_at.elapsed();
    let cfg_unchanged = w.cfg() == cfg;
    let reloads_during = w.synapse().reloads() - reloads;
    std::fs::rename(&away, &errorfile).expect("restore the errorfile");
    let healed = Instant::now();
    eventually(TIMEOUT, || async { w.cfg().contains("host-d") }).await;
    let written = healed.elapsed();
    w.routes_to(&["a", "b", "c", "d"]).await;
    let routed = healed.elapsed();
    // No candidate or temp file outlives the refused attempts. While a check runs, its
    // candidate exists (under load for a while): look once synapse has nothing to do.
    let leftovers = eventually(TIMEOUT, || async {
        let left = leftover_temp_files(&w.cfg_path());
        if left.is_empty() {
            Ok(left)
        } else {
            Err(format!("temp files left: {left:?}"))
        }
    })
    .await;
    let report = load.stop().await;
    record(
        "S21",
        "refused render",
        json!({"failed": report.failed(), "sent": report.sent, "check_attempts": attempts,
               "refused_ms": ms(during), "cfg_unchanged_during": cfg_unchanged,
               "reloads_during": reloads_during, "leftover_temp_files": leftovers.len(),
               "written_after_fix_ms": ms(written), "routed_after_fix_ms": ms(routed)}),
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    assert!(
        cfg_unchanged,
        "haproxy.cfg changed while HAProxy refused it"
    );
    assert_eq!(reloads_during, 0);
    // At most one attempt a second (the first failure was counted before `refused_at`).
    assert!(
        attempts <= during.as_secs() + 2,
        "{attempts} checks in {during:?}"
    );
    assert!(attempts >= 2, "the refused render was not retried");
    assert!(
        written <= deadline(Duration::from_millis(2_500)),
        "{written:?}"
    );
    w.stop().await;
}
