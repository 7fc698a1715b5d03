//! nerve's benchmarks: `bench_health_flip` (a check turns → the key leaves or returns to
//! etcd) and `bench_nerve_steady` (100 services at 1 s checks: RSS, CPU, and no etcd
//! writes in steady state).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use integration_tests::bench::{env_knob, invariants, ms, progress, write_result, Daemon, Samples};
use integration_tests::{eventually, free_port, init_tracing, Backend, Etcd, Workdir};
use serde_json::json;
use tokio::time::Instant;

use crate::observe::{count, metric_sum};
use crate::TIMEOUT;

async fn revision(client: &mut Client) -> i64 {
    client
        .get("/", Some(GetOptions::new().with_count_only()))
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with scripts/bench"]
async fn bench_health_flip() {
    init_tracing();
    progress("health flip: starting");
    let trials = env_knob("BENCH_FLIP_TRIALS", 30);
    let interval = Duration::from_secs(1);
    let dir = Workdir::new();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let backend = Backend::start("svc").await;
    let prefix = "/bench/flip/";
    let config = json!({
        "instance_id": "bench-host",
        "etcd": {"endpoints": etcd.endpoints()},
        "lease_ttl": 10,
        "services": {"web": {
            "host": "127.0.0.1", "port": backend.port(), "reporter_type": "etcd",
            "etcd_path": "/bench/flip", "check_interval": interval.as_secs_f64(),
            "checks": [{"type": "http", "uri": "/health", "timeout": 0.5, "rise": 1, "fall": 1}],
        }},
    });
    let nerve = Daemon::start(
        "nerve",
        &dir.write("nerve.json", config.to_string()),
        dir.path(),
    );
    eventually(TIMEOUT, || async {
        count(&mut etcd.client().await, prefix).await == 1
    })
    .await;

    // One etcd round trip, measured the way nerve pays it (a write).
    let mut rtt = Samples::default();
    for i in 0..50 {
        let t = Instant::now();
        client
            .put("/bench/rtt", i.to_string(), None)
            .await
            .expect("put");
        rtt.push(t.elapsed());
    }

    let mut events = client
        .watch(prefix, Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let mut down = Samples::default();
    let mut up = Samples::default();
    for trial in 0..trials {
        for (healthy, samples) in [(false, &mut down), (true, &mut up)] {
            // Flip at a different phase of the check cycle each time (0..1 interval).
            let phase = interval.mul_f64(((trial * 7 + u64::from(healthy) * 3) % 10) as f64 / 10.0);
            tokio::time::sleep(phase).await;
            let want = if healthy {
                EventType::Put
            } else {
                EventType::Delete
            };
            backend.set_healthy(healthy);
            let t0 = Instant::now();
            loop {
                let message = tokio::time::timeout(TIMEOUT, events.message())
                    .await
                    .expect("no watch event in time")
                    .expect("watch")
                    .expect("watch stream ended");
                if message.events().iter().any(|e| e.event_type() == want) {
                    break;
                }
            }
            samples.push(t0.elapsed());
        }
    }
    let usage = nerve.usage();
    nerve.stop().await;

    let bound = ms(interval) + rtt.quantile(0.99);
    println!(
        "\nhealth flip -> etcd: nerve release build, check_interval {} s, rise 1 / fall 1, \
         {trials} trials each way, flips at 10 phases of the check cycle; milliseconds",
        interval.as_secs_f64()
    );
    println!("{}", Samples::header(""));
    println!("{}", down.row("unhealthy -> key deleted"));
    println!("{}", up.row("healthy -> key put"));
    println!("{}", rtt.row("etcd put round trip"));
    println!(
        "target: within one check interval + one etcd round trip = {bound:.1} ms; \
         worst sample {:.1} ms",
        down.quantile(1.0).max(up.quantile(1.0))
    );
    write_result(
        "health_flip",
        &json!({
            "unit": "ms", "check_interval_ms": ms(interval), "trials": trials,
            "down": down.json(), "up": up.json(), "etcd_put_rtt": rtt.json(),
            "bound_ms": bound, "nerve_rss_kib": usage.rss_kib,
        }),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with scripts/bench"]
async fn bench_nerve_steady() {
    init_tracing();
    progress("nerve steady state: starting");
    let services = env_knob("BENCH_NERVE_SERVICES", 100);
    let window = Duration::from_secs(env_knob("BENCH_STEADY_SECS", 60));
    let dir = Workdir::new();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let mut backends = Vec::new();
    for i in 0..10 {
        backends.push(Backend::start(format!("b{i}")).await);
    }
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut svc = serde_json::Map::new();
    for i in 0..services {
        let port = backends[(i % 10) as usize].port();
        svc.insert(
            format!("s{i:03}"),
            json!({
                "host": "127.0.0.1", "port": port, "reporter_type": "etcd",
                "etcd_path": format!("/bench/steady/s{i:03}"), "check_interval": 1,
                "checks": [{"type": "http", "uri": "/health", "timeout": 0.5, "rise": 3, "fall": 2}],
            }),
        );
    }
    let config = json!({
        "instance_id": "bench-host",
        "etcd": {"endpoints": etcd.endpoints()},
        "lease_ttl": 10,
        "admin_listen": admin.to_string(),
        "services": svc,
    });
    let nerve = Daemon::start(
        "nerve",
        &dir.write("nerve.json", config.to_string()),
        dir.path(),
    );
    let started = Instant::now();
    eventually(TIMEOUT, || async {
        count(&mut etcd.client().await, "/bench/steady/").await == services as i64
    })
    .await;
    let registered = started.elapsed();

    let (rev0, writes0, checks0, usage0) = (
        revision(&mut client).await,
        metric_sum(admin, "nerve_registration_writes_total").await,
        metric_sum(admin, "nerve_check_runs_total").await,
        nerve.usage(),
    );
    let t0 = Instant::now();
    let mut events = client
        .watch(
            "/bench/steady/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev0 + 1),
            ),
        )
        .await
        .expect("watch");
    let mut event_count = 0usize;
    let deadline = t0 + window;
    while let Ok(message) = tokio::time::timeout_at(deadline, events.message()).await {
        event_count += message
            .expect("watch")
            .expect("watch stream ended")
            .events()
            .len();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (rev1, writes1, checks1, usage1) = (
        revision(&mut client).await,
        metric_sum(admin, "nerve_registration_writes_total").await,
        metric_sum(admin, "nerve_check_runs_total").await,
        nerve.usage(),
    );
    nerve.stop().await;
    let cpu = (usage1.cpu_seconds - usage0.cpu_seconds) / elapsed * 100.0;
    let delta = |a: Option<f64>, b: Option<f64>| b.zip(a).map(|(b, a)| b - a);
    println!(
        "\nnerve steady state: release build, {services} services, http checks every 1 s on 10 \
         backends, {elapsed:.0} s window after all {services} were registered ({:.2} s)",
        registered.as_secs_f64()
    );
    println!(
        "  etcd revision change {}, watch events {event_count}, registration writes {:?}, checks run {:?}",
        rev1 - rev0,
        delta(writes0, writes1),
        delta(checks0, checks1)
    );
    println!(
        "  RSS {:.1} MiB (peak {:.1} MiB), CPU {cpu:.2} % of one core",
        usage1.rss_mib(),
        usage1.peak_rss_mib()
    );
    println!("  target: RSS < 15 MB; 0 etcd writes per interval");
    write_result(
        "nerve_steady",
        &json!({
            "services": services, "window_s": elapsed, "registered_after_s": registered.as_secs_f64(),
            "etcd_revision_delta": rev1 - rev0, "watch_events": event_count,
            "registration_writes": delta(writes0, writes1), "check_runs": delta(checks0, checks1),
            "rss_kib": usage1.rss_kib, "peak_rss_kib": usage1.peak_rss_kib, "cpu_percent": cpu,
        }),
    );
    invariants(
        "nerve_steady",
        &[
            ("0 etcd writes in the window", rev1 == rev0),
            (
                "0 registration writes",
                delta(writes0, writes1) == Some(0.0),
            ),
        ],
    );
}
