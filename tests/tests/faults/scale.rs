//! Scale: 500 [2,000] instances registered at once and their leases lost (S19a, S19b),
//! 50 synapses reconnecting after an outage (S19c), a storm of registry changes (S22).

use std::time::Duration;

use etcd_client::PutOptions;
use integration_tests::{
    eventually, free_port, init_tracing, loopback, Backend, Etcd, FaultProxy, Haproxy,
    HaproxyOptions, InProcessSynapse as Synapse, Load, LoadOptions, Workdir,
};
use serde_json::json;
use synapse::counters::Counters;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::observe::{failures, haproxy_check, server_lines};
use crate::profile::{deadline, ms, pick, record, TIMEOUT, TTL};
use crate::world::{put_fillers, World};

/// S19a / S19b: N instances (ci 500, soak 2,000) registered at once under leases the test
/// keeps alive, then all leases stop being kept alive. Service `web` has the guard on
/// (hold 8 s), `bare` the same instances with the guard off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s19_mass_registration_and_expiry() {
    init_tracing();
    let n: usize = pick(500, 2000);
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let dir = Workdir::new();
    let backends = [
        Backend::start("x").await,
        Backend::start("y").await,
        Backend::start("z").await,
    ];
    let (web_port, bare_port) = (free_port(), free_port());
    let path = "/faults/S19/web";
    let hold = Duration::from_secs(8);
    let master = dir.join("master.sock");
    let cfg = dir.join("haproxy.cfg");
    let service = |port: u16, guard: &str| {
        format!(
            r#"{{"discovery": {{"method": "etcd", "hosts": ["{ep}"], "path": "{path}"}},
                "max_servers": 5000, "mass_removal_guard": {guard},
                "haproxy": {{"port": {port}, "listen": ["balance roundrobin"]}}}}"#,
            ep = etcd.client_addr(),
        )
    };
    let text = format!(
        r#"{{"services": {{"web": {web}, "bare": {bare}}},
            "debounce": 0.1, "debounce_max_wait": 1,
            "haproxy": {{"config_file_path": "{cfg}", "do_checks": true,
              "reload_command": "[ ! -e {master} ] || echo reload | socat stdio unix-connect:{master}",
              "restart_interval": 1, "bind_address": "127.0.0.1",
              "global": ["stats socket {stats} mode 600 level admin expose-fd listeners"],
              "defaults": ["mode http", "timeout connect 500ms", "timeout client 10s",
                           "timeout server 10s", "retries 2", "option redispatch 1"]}}}}"#,
        web = service(web_port, &format!(r#"{{"hold": {}}}"#, hold.as_secs())),
        bare = service(bare_port, r#"{"enabled": false}"#),
        cfg = cfg.display(),
        master = master.display(),
        stats = dir.join("stats.sock").display(),
    );
    // One seed instance so the first config has both services.
    let mut kv = client.kv_client();
    let value = |i: usize| {
        let b = &backends[i % 3];
        format!(
            r#"{{"host":"127.0.0.1","port":{},"name":"i-{i:04}"}}"#,
            b.port()
        )
    };
    kv.put(format!("{path}/seed"), value(9999), None)
        .await
        .expect("put");
    let synapse = Synapse::start(&text);
    eventually(TIMEOUT, || async { cfg.exists() }).await;
    let haproxy =
        Haproxy::start(HaproxyOptions::new(&cfg).stats_socket(dir.join("stats.sock"))).await;
    std::os::unix::fs::symlink(haproxy.master_socket(), &master).expect("link");
    haproxy.master().reload().await.expect("reload");
    let serving = |want: (usize, usize)| {
        let h = &haproxy;
        async move {
            eventually(TIMEOUT, || async {
                let (w, b) = (in_rotation(h, "web").await?, in_rotation(h, "bare").await?);
                if (w, b) == want {
                    Ok(())
                } else {
                    Err(format!("web {w}, bare {b} servers; want {want:?}"))
                }
            })
            .await
        }
    };
    serving((1, 1)).await;
    // Let the first reload settle so it is not counted.
    eventually(TIMEOUT, || async { synapse.reloads() >= 1 }).await;
    let reloads = synapse.reloads();

    // S19a: N puts under 50 leases, as fast as they go.
    let mut lease = client.lease_client();
    let mut keepers = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..50 {
        let l = lease
            .grant(TTL.as_secs() as i64, None)
            .await
            .expect("grant");
        let (k, s) = lease.keep_alive(l.id()).await.expect("keepalive");
        ids.push(l.id());
        keepers.push((k, s));
    }
    let keep = CancellationToken::new();
    let keeper = {
        let keep = keep.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TTL / 3);
            loop {
                tokio::select! {
                    _ = keep.cancelled() => return,
                    _ = tick.tick() => {}
                }
                for (k, s) in &mut keepers {
                    let _ = k.keep_alive().await;
                    let _ = s.message().await;
                }
            }
        })
    };
    let put_start = Instant::now();
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut kv = client.kv_client();
        let opts = PutOptions::new().with_lease(ids[i % ids.len()]);
        let (key, v) = (format!("{path}/i-{i:04}"), value(i));
        puts.spawn(async move { kv.put(key, v, Some(opts)).await.map(|_| ()) });
    }
    while let Some(p) = puts.join_next().await {
        p.expect("put task").expect("put");
    }
    let put_time = put_start.elapsed();
    let last_put = Instant::now();
    serving((n + 1, n + 1)).await;
    let registered_converged = last_put.elapsed();
    let reg_reloads = synapse.reloads() - reloads;
    let check_start = Instant::now();
    haproxy_check(&cfg);
    let check_time = check_start.elapsed();
    let load = Load::start(loopback(web_port), LoadOptions::default());

    // S19b: stop keeping the leases alive.
    keep.cancel();
    keeper.await.expect("keeper");
    let stopped = Instant::now();
    // The guard trips once the loss in its window passes half; the expiry may reach
    // synapse in a few steps, and a first step of at most half is applied.
    eventually(TIMEOUT, || async {
        Counters::get(&synapse.counters.mass_removal_trips) >= 1
    })
    .await;
    let tripped = stopped.elapsed();
    let trips = Counters::get(&synapse.counters.mass_removal_trips);
    let holding = Counters::get(&synapse.counters.mass_removal_holding);
    // The unguarded service converges while the guarded one still serves what it holds
    // (more than the one server left). A count read right after the trip could be the
    // old worker's view during a reload; wait for the state itself instead.
    let held = eventually(TIMEOUT, || async {
        let (w, b) = (
            in_rotation(&haproxy, "web").await?,
            in_rotation(&haproxy, "bare").await?,
        );
        if b == 1 && w > 1 {
            Ok(w)
        } else {
            Err(format!(
                "web {w}, bare {b} servers in rotation; want web > 1 (held), bare 1"
            ))
        }
    })
    .await;
    let bare_converged = stopped.elapsed();
    // The guarded service releases after the hold.
    serving((1, 1)).await;
    let released = stopped.elapsed();
    let report = load.stop().await;
    record(
        "S19",
        "mass registration / mass expiry (guard on and off)",
        json!({"instances": n, "puts_ms": ms(put_time), "registered_converged_ms": ms(registered_converged),
               "reloads_registration": reg_reloads, "haproxy_check_ms": ms(check_time),
               "guard_off_converged_after_keepalive_stop_ms": ms(bare_converged),
               "guard_trips": trips, "guard_holding_gauge": holding,
               "guard_tripped_after_keepalive_stop_ms": ms(tripped), "guard_held_servers": held,
               "guard_released_after_keepalive_stop_ms": ms(released), "hold_ms": ms(hold),
               "failed": report.failed(), "sent": report.sent}),
    );
    // Reloads are rate-limited to one a second (`restart_interval`): at most one per
    // started second the puts took (the harness's pace, not synapse's), plus three.
    assert!(
        reg_reloads <= put_time.as_secs() + 3,
        "{reg_reloads} reloads for the registration burst ({put_time:?} of puts)"
    );
    assert!(
        registered_converged <= deadline(Duration::from_secs(5)),
        "{registered_converged:?}"
    );
    assert_eq!(trips, 1, "the guard did not trip exactly once");
    assert_eq!(holding, 1, "the guard is not holding web");
    // At most half of the window's servers went before the trip.
    assert!(2 * held > n, "held {held} of {n}");
    // Expiry: TTL (+ the revoke spread) after the last keepalive; release `hold` after
    // the trip.
    assert!(
        released >= tripped + hold - Duration::from_secs(1)
            && released <= deadline(TTL + hold + Duration::from_secs(6)),
        "released {released:?} after the keepalives stopped"
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    assert!(synapse.is_running());
    synapse.stop().await;
}

/// The servers of `backend` in rotation: a removed one stays in maintenance until its
/// connections end, and is counted out from the start.
async fn in_rotation(h: &Haproxy, backend: &str) -> Result<usize, String> {
    Ok(h.show_servers_state(backend)
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .filter(|s| !s.admin_state.is_maint())
        .count())
}

/// S19c: a reconnect herd: 50 synapses (in-process, each through its own recording
/// proxy) watch one etcd that is killed for 10 s (soak 30 s) and restarted. Their first
/// attempts after the restart spread over at least 1 s (the retry jitter), and no
/// synapse tries more often than its backoffs allow. A synapse has two retry loops on its
/// one etcd connection: the watcher's (100 ms → 2 s) and the applied-status publisher's
/// (the drain barrier, 200 ms → 5 s), each delay between half and all of its nominal
/// value; the proxy sees their attempts interleaved, so the bound is on their number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s19c_reconnect_herd() {
    init_tracing();
    let mut etcd = Etcd::start().await;
    let dir = Workdir::new();
    let path = "/faults/S19c/web";
    let mut client = etcd.client().await;
    client
        .put(
            format!("{path}/x"),
            r#"{"host":"127.0.0.1","port":8080,"name":"x"}"#,
            None,
        )
        .await
        .expect("put");
    let herd = 50;
    let mut proxies = Vec::new();
    let mut synapses = Vec::new();
    for i in 0..herd {
        let proxy = FaultProxy::start(etcd.client_addr()).await;
        let out = dir.join(format!("out-{i}"));
        std::fs::create_dir_all(&out).expect("output dir");
        let config = format!(
            r#"{{"services": {{"web": {{"discovery": {{"method": "etcd", "hosts": ["{ep}"],
                 "path": "{path}", "etcd": {{"dial_timeout": 1, "request_timeout": 2,
                 "keepalive_interval": 1, "keepalive_timeout": 1}}}}}}}},
               "file_output": {{"output_directory": "{out}"}}}}"#,
            ep = proxy.endpoint(),
            out = out.display(),
        );
        synapses.push(Synapse::start(&config));
        proxies.push(proxy);
    }
    eventually(TIMEOUT, || async {
        synapses
            .iter()
            .all(|s| s.get(|c| &c.file_output_writes) >= 1)
    })
    .await;
    etcd.kill().await;
    let killed = Instant::now();
    tokio::time::sleep(pick(Duration::from_secs(10), Duration::from_secs(30))).await;
    // From here on a connection attempt may reach etcd (it listens before it serves).
    let back = Instant::now();
    etcd.restart().await;
    // Two retry periods at the cap (2 s) and then some: every synapse is back.
    eventually(TIMEOUT, || async {
        synapses
            .iter()
            .all(|s| s.get(|c| &c.watch_restarts) >= 1 && s.get(|c| &c.relists) >= 1)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let firsts: Vec<Duration> = proxies
        .iter()
        .filter_map(|p| {
            p.accepted()
                .into_iter()
                .find(|t| *t >= back.into_std())
                .map(|t| t - back.into_std())
        })
        .collect();
    let spread = firsts.iter().max().copied().unwrap_or_default()
        - firsts.iter().min().copied().unwrap_or_default();
    // The shortest gap between two connection attempts of one synapse while etcd was down.
    let min_gap = proxies
        .iter()
        .filter_map(|p| {
            let times: Vec<_> = p
                .accepted()
                .into_iter()
                .filter(|t| *t < back.into_std())
                .collect();
            times.windows(2).map(|w| w[1] - w[0]).min()
        })
        .min()
        .unwrap_or_default();
    let attempts: usize = proxies.iter().map(|p| p.accepted().len()).sum();
    // The most attempts any one synapse made while etcd was down.
    let most_down = proxies
        .iter()
        .map(|p| {
            p.accepted()
                .into_iter()
                .filter(|t| *t < back.into_std())
                .count()
        })
        .max()
        .unwrap_or_default();
    let down_for = back.into_std() - killed.into_std();
    let allowed = fastest_attempts(Duration::from_millis(100), Duration::from_secs(2), down_for)
        + fastest_attempts(Duration::from_millis(200), Duration::from_secs(5), down_for);
    record(
        "S19c",
        "reconnect herd",
        json!({"clients": herd, "reconnected": firsts.len(), "first_attempts_spread_ms": ms(spread),
               "min_gap_between_attempts_ms": ms(min_gap), "connections": attempts,
               "most_attempts_while_down": most_down, "allowed_while_down": allowed}),
    );
    for s in synapses {
        s.stop().await;
    }
    assert_eq!(firsts.len(), herd, "not every synapse came back");
    assert!(
        spread >= Duration::from_secs(1),
        "first attempts within {spread:?}"
    );
    assert!(
        most_down <= allowed,
        "a synapse made {most_down} connection attempts in {down_for:?} down (its backoffs allow {allowed})"
    );
}

/// The most attempts a retry loop makes in `window` when every delay is at its floor:
/// half the nominal delay, which starts at `min` and doubles up to `max` (common::Backoff
/// with its jitter).
fn fastest_attempts(min: Duration, max: Duration, window: Duration) -> usize {
    let (mut nominal, mut elapsed, mut attempts) = (min, Duration::ZERO, 1);
    loop {
        elapsed += nominal / 2;
        if elapsed > window {
            return attempts;
        }
        attempts += 1;
        nominal = (nominal * 2).min(max);
    }
}

/// S22: a change storm: 2,000 registry changes (soak 6,000) by another writer, paced at up
/// to 100 a second: a rolling replacement of instances on a's backend (25 present at a
/// time out of 50 names; each change adds the next or removes the oldest), with the
/// mass-removal guard on as by default. synapse reloads at most once a second
/// (`restart_interval`) for as long as the storm lasts, the guard never trips (what
/// leaves is replaced), HAProxy never has more than 5 old workers, no request fails, and
/// HAProxy ends on the registry's set (§4.2: within 2 s of the storm's end; recorded,
/// asserted as a generous deadline).
/// The storm is a count, not a duration: on a loaded machine the writer may manage fewer
/// than 100 a second, and the reload bound follows the time it actually took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s22_change_storm() {
    let w = World::start("S22", false).await;
    let trips = Counters::get(&w.synapse().counters.mass_removal_trips);
    let load = w.load();
    let reloads = w.synapse().reloads();
    let port = w.hosts[0].backend.port();
    let haproxy = w.haproxy.as_ref().expect("haproxy");
    let mut kv = w.client.kv_client();
    let storm_changes = pick(2_000usize, 6_000);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut present = std::collections::VecDeque::new();
    let (mut changes, mut next, mut max_old, mut samples) = (0usize, 0usize, 0usize, 0u32);
    let started = Instant::now();
    while changes < storm_changes {
        tick.tick().await;
        if present.len() < 25 {
            let k = next % 50;
            put_fillers(&w, k..k + 1, &[port], 0).await;
            present.push_back(k);
            next += 1;
        } else if let Some(k) = present.pop_front() {
            kv.delete(format!("{}/filler-{k:04}", w.path), None)
                .await
                .expect("delete");
        }
        changes += 1;
        if changes % 25 == 0 {
            // The master re-executes itself on a reload: its CLI may be away a moment.
            if let Ok(procs) = haproxy.master().show_proc().await {
                max_old = max_old.max(procs.old_workers.len());
                samples += 1;
            }
        }
    }
    let storm = started.elapsed();
    let rate = changes as f64 / storm.as_secs_f64();
    let ended = Instant::now();
    let want = 3 + present.len();
    eventually(TIMEOUT, || async {
        haproxy
            .show_servers_state("web")
            .await
            .is_ok_and(|s| s.len() == want)
            && server_lines(&w.cfg()) == want
    })
    .await;
    let converged = ended.elapsed();
    let reloads = w.synapse().reloads() - reloads;
    let trips = Counters::get(&w.synapse().counters.mass_removal_trips) - trips;
    let report = load.stop().await;
    record(
        "S22",
        "change storm",
        json!({"failed": report.failed(), "sent": report.sent, "changes": changes,
               "changes_per_s": rate, "reloads": reloads, "max_old_workers": max_old,
               "show_proc_samples": samples, "guard_trips": trips,
               "converged_ms": ms(converged), "storm_ms": ms(storm)}),
    );
    assert_eq!(report.failed(), 0, "{:?}", failures(&report));
    // At most one reload per started second of the storm, plus the one it ends with.
    assert!(
        reloads <= storm.as_secs() + 2,
        "{reloads} reloads in {storm:?}"
    );
    assert!(samples >= 10, "show proc answered {samples} times");
    assert_eq!(trips, 0, "the guard tripped on a rolling replacement");
    assert!(max_old <= 5, "{max_old} old workers");
    assert!(
        converged <= deadline(Duration::from_secs(2)),
        "{converged:?}"
    );
    w.stop().await;
}
