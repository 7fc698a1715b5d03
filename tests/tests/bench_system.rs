//! Benchmarks (not tests; `#[ignore]`d, run by `scripts/bench`) for the targets of
//! DESIGN §9 other than put → routed (that is `bench_propagation.rs`):
//!
//! - `bench_health_flip`: a nerve-checked service turns unhealthy (healthy) → its key is
//!   gone from (back in) etcd, against one check interval + one etcd round trip;
//! - `bench_nerve_steady`: nerve with 100 services at 1 s checks — RSS, CPU, and its etcd
//!   writes in steady state (etcd's revision must not move);
//! - `bench_render`: render + parse + runtime plan of 100 … 10,000 servers, in-process;
//! - `bench_synapse_scale`: the synapse binary's initial sync of 100 … 100,000 keys and
//!   its RSS;
//! - `bench_churn`: 1,000 registration changes/s for 60 s across 100 services, runtime
//!   API vs reload-every-change, under client load;
//! - `bench_reload_under_load`: 100 synapse-driven reloads under new-connection and
//!   keep-alive clients, the seed's `global`/`defaults` as written (synapse adds what a
//!   hitless reload needs) vs plain ones with `seamless_reload_lines: false`.
//!
//! Real etcd, HAProxy and backends on loopback; nerve and synapse are the release
//! binaries (`target/release`) where their CPU and memory are measured. Each prints its
//! table and writes `target/bench/<name>.json`. Sizes and durations are environment
//! knobs (`BENCH_*`, listed in docs/benchmarks.md) so a smoke run can shrink them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Host, InstanceId, Port, ServiceName};
use etcd_client::{Client, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use integration_tests::bench::{
    encode, env_knob, fill, haproxy_version, invariants, key, ms, progress, write_result, Daemon,
    Samples,
};
use integration_tests::{
    eventually, free_port, http_get, init_tracing, keep_alive_loop, loopback, new_connection_loop,
    scrape, Backend, Etcd, Haproxy, InProcessSynapse, Load, LoadOptions, Workdir,
};
use serde_json::json;
use synapse::backends::{Backend as Server, BackendSet};
use synapse::haproxy::answers::Capabilities;
use synapse::haproxy::config::{render, wanted_servers, ServerIds};
use synapse::haproxy::model::ConfigModel;
use synapse::haproxy::plan::{plan, running_from, Desired};
use tokio::sync::Semaphore;
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(120);

/// The number of keys under `prefix`.
async fn count(client: &mut Client, prefix: &str) -> i64 {
    client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .map(|r| r.count())
        .unwrap_or(-1)
}

async fn revision(client: &mut Client) -> i64 {
    client
        .get("/", Some(GetOptions::new().with_count_only()))
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

/// `BENCH_DAEMON`-style scrape of a daemon's `/metrics`: the sum of every sample `name`.
async fn metric_sum(addr: SocketAddr, name: &str) -> Option<f64> {
    let s = scrape(addr).await.ok()?;
    Some(s.all(name).iter().map(|s| s.value).sum())
}

// ---------------------------------------------------------------------------------------
// health flip → etcd

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

// ---------------------------------------------------------------------------------------
// nerve steady state: 100 services at 1 s checks

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

// ---------------------------------------------------------------------------------------
// render: in-process, no I/O

fn render_config(services: usize) -> synapse::Config {
    let mut svc = serde_json::Map::new();
    for i in 0..services {
        svc.insert(
            format!("s{i:04}"),
            json!({
                "discovery": {"method": "etcd", "hosts": ["127.0.0.1:2379"], "path": format!("/r/s{i:04}")},
                "haproxy": {"port": 20000 + i, "server_options": "check inter 2s",
                            "listen": ["mode http", "balance roundrobin"]},
                "max_servers": 100_000,
            }),
        );
    }
    let text = json!({
        "services": svc,
        "haproxy": {
            "do_writes": false, "do_reloads": false, "bind_address": "127.0.0.1",
            "global": ["maxconn 4096"], "defaults": ["mode http", "timeout connect 1s",
                       "timeout client 10s", "timeout server 10s"],
        },
    });
    synapse::Config::parse(&text.to_string(), None).expect("render config")
}

fn server(i: usize) -> Server {
    Server {
        name: InstanceId::new(format!("i{i}")).expect("id"),
        host: Host::Ip(IpAddr::V4(Ipv4Addr::new(
            127,
            ((i >> 16) & 0xff) as u8,
            ((i >> 8) & 0xff) as u8,
            (i & 0xff) as u8,
        ))),
        port: Port::new(8080).expect("port"),
        backup: false,
        weight: None,
        haproxy_server_options: None,
        labels: BTreeMap::new(),
    }
}

#[test]
#[ignore = "benchmark: run with scripts/bench"]
fn bench_render() {
    let iterations = env_knob("BENCH_RENDER_ITERATIONS", 50) as usize;
    let shapes: [(usize, usize); 5] = [(10, 10), (100, 10), (1000, 10), (10, 1000), (100, 100)];
    let mut results = Vec::new();
    println!(
        "\nrender (in-process, release build): one change = ids + render + parse + runtime \
         plan against the previous state; {iterations} iterations per shape; milliseconds"
    );
    println!("{}", Samples::header(""));
    for (services, per) in shapes {
        progress(format_args!("render: {services} services x {per} servers"));
        let config = render_config(services);
        let h = config.haproxy.as_ref().expect("haproxy section");
        let mut desired: BTreeMap<ServiceName, BackendSet> = config
            .services
            .keys()
            .enumerate()
            .map(|(s, name)| {
                (
                    name.clone(),
                    (0..per).map(|j| server(s * per + j)).collect(),
                )
            })
            .collect();
        let mut ids = ServerIds::default();
        ids.assign(&wanted_servers(&config.services, &desired), 65_535);
        let mut previous =
            ConfigModel::parse(&render(h, &config.services, &desired, &ids).expect("render"));
        let caps = Capabilities::for_version(2, 6);
        let (mut render_only, mut change) = (Samples::default(), Samples::default());
        let mut bytes = 0;
        for it in 0..iterations {
            let t = std::time::Instant::now();
            let text = render(h, &config.services, &desired, &ids).expect("render");
            render_only.push(t.elapsed());
            bytes = text.len();
            // One change: a server of one service replaced by a new one.
            let (name, set) = desired.iter_mut().nth(it % services).expect("service");
            let _ = name;
            let gone = set.iter().next().cloned().expect("a server");
            set.remove(&gone);
            set.insert(server(services * per + it));
            let t = std::time::Instant::now();
            ids.assign(&wanted_servers(&config.services, &desired), 65_535);
            let text = render(h, &config.services, &desired, &ids).expect("render");
            let model = ConfigModel::parse(&text);
            let running = running_from(&previous, caps);
            let p = plan(
                &running,
                &Desired {
                    config: model.clone(),
                    dynamic_servers: true,
                },
            );
            change.push(t.elapsed());
            assert!(
                p.reload.is_none(),
                "a server swap needed a reload: {:?}",
                p.reload
            );
            previous = model;
        }
        let label = format!("{services} services x {per} servers");
        println!("{}", render_only.row(&format!("{label}: render")));
        println!("{}", change.row(&format!("{label}: one change")));
        results.push(json!({
            "services": services, "servers_per_service": per, "bytes": bytes,
            "render": render_only.json(), "change": change.json(),
        }));
    }
    println!("target: render 1,000 services x 10 servers < 20 ms");
    write_result(
        "render",
        &json!({"unit": "ms", "iterations": iterations, "shapes": results}),
    );
}

// ---------------------------------------------------------------------------------------
// synapse scale: initial sync and memory

fn synapse_scale_config(
    etcd: &Etcd,
    root: &str,
    services: usize,
    admin: SocketAddr,
    cfg: &str,
) -> String {
    let mut svc = serde_json::Map::new();
    for s in 0..services {
        svc.insert(
            format!("s{s:03}"),
            json!({
                "discovery": {"method": "etcd", "hosts": etcd.endpoints(), "path": format!("{root}/s{s:03}")},
                "haproxy": {"listen": ["balance roundrobin"]},
                "max_servers": 100_000,
            }),
        );
    }
    json!({
        "services": svc,
        "admin_listen": admin.to_string(),
        "haproxy": {
            "config_file_path": cfg, "do_reloads": false, "do_socket": false,
            "max_server_id": 1_000_000,
            "global": ["maxconn 4096"],
            "defaults": ["mode http", "timeout connect 1s", "timeout client 10s", "timeout server 10s"],
        },
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with scripts/bench"]
async fn bench_synapse_scale() {
    init_tracing();
    let max = env_knob("BENCH_SCALE_MAX", 100_000) as usize;
    let services = 100;
    let mut results = Vec::new();
    println!("\nsynapse scale: release build, {services} services, keys put before synapse starts");
    println!(
        "{:>8} {:>12} {:>14} {:>10} {:>10} {:>9}",
        "servers", "synced (s)", "file done (s)", "RSS MiB", "peak MiB", "CPU s"
    );
    for total in [100usize, 1_000, 10_000, 100_000] {
        if total > max {
            continue;
        }
        progress(format_args!("synapse scale: {total} servers"));
        let dir = Workdir::new();
        let etcd = Etcd::start().await;
        let client = etcd.client().await;
        let root = "/bench/scale";
        fill(&client, root, services, total / services).await;
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let cfg = dir.join("haproxy.cfg");
        let text = synapse_scale_config(&etcd, root, services, admin, &cfg.display().to_string());
        let started = Instant::now();
        let synapse = Daemon::start("synapse", &dir.write("synapse.json", text), dir.path());
        let mut synced = None;
        let mut written = None;
        let deadline = started + TIMEOUT;
        while (synced.is_none() || written.is_none()) && Instant::now() < deadline {
            if synced.is_none()
                && metric_sum(admin, "synapse_service_backends").await == Some(total as f64)
            {
                synced = Some(started.elapsed());
            }
            if written.is_none() {
                let lines = std::fs::read_to_string(&cfg)
                    .map(|t| {
                        t.lines()
                            .filter(|l| l.trim_start().starts_with("server "))
                            .count()
                    })
                    .unwrap_or(0);
                if lines == total {
                    written = Some(started.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (Some(synced), Some(written)) = (synced, written) else {
            panic!(
                "synapse did not sync {total} servers:\n{}",
                synapse.log_tail(20)
            );
        };
        // Settle, then read the steady figures.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let usage = synapse.usage();
        synapse.stop().await;
        println!(
            "{total:>8} {:>12.3} {:>14.3} {:>10.1} {:>10.1} {:>9.2}",
            synced.as_secs_f64(),
            written.as_secs_f64(),
            usage.rss_mib(),
            usage.peak_rss_mib(),
            usage.cpu_seconds
        );
        results.push(json!({
            "servers": total, "synced_s": synced.as_secs_f64(), "file_written_s": written.as_secs_f64(),
            "rss_kib": usage.rss_kib, "peak_rss_kib": usage.peak_rss_kib, "cpu_s": usage.cpu_seconds,
        }));
    }
    println!("target: synapse steady RSS with 10k servers < 50 MB");
    write_result(
        "synapse_scale",
        &json!({"services": services, "runs": results}),
    );
}

// ---------------------------------------------------------------------------------------
// churn

const CHURN_SERVICES: usize = 100;
const SLOTS: usize = 10;
/// Slots 0 and 1 of every service never change; 2..10 churn.
const STABLE: usize = 2;
const LOADED: usize = 5;

struct ChurnWorld {
    dir: Workdir,
    etcd: Etcd,
    backends: Vec<Backend>,
    ports: Vec<u16>,
}

impl ChurnWorld {
    fn slot_name(s: usize, k: usize) -> String {
        format!("s{s:03}k{k}")
    }

    fn slot_backend(&self, s: usize, k: usize) -> &Backend {
        &self.backends[(s * SLOTS + k) % self.backends.len()]
    }

    fn slot_key(s: usize, k: usize) -> String {
        let svc = format!("s{s:03}");
        key(&format!("/bench/churn/{svc}"), &svc, &Self::slot_name(s, k))
    }

    fn slot_value(&self, s: usize, k: usize) -> String {
        let b = self.slot_backend(s, k);
        encode(&Self::slot_name(s, k), b.addr().ip(), b.port())
    }

    fn server_name(&self, s: usize, k: usize) -> String {
        let b = self.slot_backend(s, k);
        format!("{}_{}:{}", Self::slot_name(s, k), b.addr().ip(), b.port())
    }

    fn synapse_config(&self, runtime: bool, admin: SocketAddr) -> String {
        let mut svc = serde_json::Map::new();
        for s in 0..CHURN_SERVICES {
            let mut haproxy = json!({"listen": ["balance roundrobin"]});
            if s < LOADED {
                haproxy["port"] = json!(self.ports[s]);
            }
            svc.insert(
                format!("s{s:03}"),
                json!({
                    "discovery": {"method": "etcd", "hosts": self.etcd.endpoints(),
                                  "path": format!("/bench/churn/s{s:03}")},
                    "haproxy": haproxy,
                }),
            );
        }
        let socket = if runtime {
            json!(self.dir.join("stats.sock").display().to_string())
        } else {
            json!(null)
        };
        let mut config = json!({
            "services": svc,
            "admin_listen": admin.to_string(),
            "haproxy": {
                "config_file_path": self.dir.join("haproxy.cfg").display().to_string(),
                "do_socket": runtime,
                "do_checks": true,
                "reload_method": "master_socket",
                "master_socket_path": self.dir.join("master.sock").display().to_string(),
                "bind_address": "127.0.0.1",
                "global": [format!("stats socket {} mode 600 level admin expose-fd listeners",
                                   self.dir.join("stats.sock").display()),
                           "hard-stop-after 10s".to_owned()],
                "defaults": ["mode http", "timeout connect 1s", "timeout client 10s",
                             "timeout server 10s", "option idle-close-on-response"],
            },
        });
        if runtime {
            config["haproxy"]["socket_file_path"] = socket;
        }
        config.to_string()
    }
}

/// A fast deterministic generator (xorshift) for picking slots.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn churn_run(runtime: bool) -> serde_json::Value {
    progress(format_args!(
        "churn: {}",
        if runtime {
            "runtime API"
        } else {
            "reload path"
        }
    ));
    let rate = env_knob("BENCH_CHURN_RATE", 1000);
    let secs = env_knob("BENCH_CHURN_SECS", 60);
    let dir = Workdir::new();
    let etcd = Etcd::start().await;
    let mut backends = Vec::new();
    for i in 0..20 {
        backends.push(Backend::start(format!("b{i}")).await);
    }
    let ports = (0..LOADED).map(|_| free_port()).collect();
    let w = Arc::new(ChurnWorld {
        dir,
        etcd,
        backends,
        ports,
    });
    let client = w.etcd.client().await;
    // Start: stable slots and every other churn slot registered.
    let mut present = vec![false; CHURN_SERVICES * SLOTS];
    let mut kv = client.kv_client();
    for s in 0..CHURN_SERVICES {
        let mut ops = Vec::new();
        for k in 0..SLOTS {
            if k < STABLE || k % 2 == 0 {
                present[s * SLOTS + k] = true;
                ops.push(TxnOp::put(
                    ChurnWorld::slot_key(s, k),
                    w.slot_value(s, k),
                    None,
                ));
            }
        }
        kv.txn(Txn::new().and_then(ops)).await.expect("txn");
    }
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let cfg = w
        .dir
        .write("synapse.json", w.synapse_config(runtime, admin));
    let synapse = Daemon::start("synapse", &cfg, w.dir.path());
    let haproxy = Haproxy::start_for_synapse(w.dir.path()).await;
    let expected = |present: &[bool]| -> BTreeMap<String, BTreeSet<String>> {
        (0..CHURN_SERVICES)
            .map(|s| {
                let servers = (0..SLOTS)
                    .filter(|k| present[s * SLOTS + k])
                    .map(|k| w.server_name(s, k))
                    .collect();
                (format!("s{s:03}"), servers)
            })
            .collect()
    };
    let want = expected(&present);
    exact(&haproxy, &want, TIMEOUT)
        .await
        .expect("initial state");
    for port in &w.ports {
        eventually(TIMEOUT, || async {
            http_get(loopback(*port), "/")
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await;
    }

    // synapse started before HAProxy: its first reload (no socket to talk to yet) is
    // start-up, not churn.
    eventually(TIMEOUT, || async {
        metric_sum_labelled(admin, "synapse_haproxy_reloads_total", "ok")
            .await
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    let reloads0 = haproxy.show_proc().await.expect("show proc").reloads;
    let usage0 = synapse.usage();
    let loads: Vec<Load> = w
        .ports
        .iter()
        .map(|p| {
            Load::start(
                loopback(*p),
                LoadOptions {
                    rate: 40,
                    timeout: Duration::from_secs(2),
                    max_requests: 40 * (secs + 60),
                    max_duration: Duration::from_secs(secs + 60),
                },
            )
        })
        .collect();

    // The churn: `rate` ops/s, a put or a delete of one churn slot each, at most 200 in
    // flight and never two on one key (so the final state is known).
    let busy: Arc<Vec<AtomicBool>> = Arc::new(
        (0..CHURN_SERVICES * SLOTS)
            .map(|_| AtomicBool::new(false))
            .collect(),
    );
    let errors = Arc::new(AtomicU64::new(0));
    let limit = Arc::new(Semaphore::new(200));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let total = rate * secs;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut issued = 0u64;
    while issued < total {
        tick.tick().await;
        let due = (rate as f64 * started.elapsed().as_secs_f64()).ceil() as u64;
        while issued < due.min(total) {
            let permit = limit.clone().acquire_owned().await.expect("semaphore");
            // A rolling replacement in each service: its churn slots stay between 3 and
            // 5 present (4 at the start), so whatever leaves is replaced and the
            // mass-removal guard (on, as by default) never sees most of a service go.
            let s = rng.next() as usize % CHURN_SERVICES;
            let present_now = (STABLE..SLOTS).filter(|k| present[s * SLOTS + k]).count();
            let add = match present_now {
                0..=3 => true,
                5.. => false,
                _ => rng.next() % 2 == 0,
            };
            let start = rng.next() as usize % (SLOTS - STABLE);
            let Some(k) = (0..SLOTS - STABLE)
                .map(|j| STABLE + (start + j) % (SLOTS - STABLE))
                .find(|k| {
                    let i = s * SLOTS + k;
                    present[i] != add && !busy[i].swap(true, Ordering::SeqCst)
                })
            else {
                // Every slot this op could take is in flight: another service.
                continue;
            };
            let i = s * SLOTS + k;
            present[i] = !present[i];
            let put = present[i].then(|| w.slot_value(s, k));
            let (mut kv, busy, errors) = (client.kv_client(), busy.clone(), errors.clone());
            tasks.spawn(async move {
                let key = ChurnWorld::slot_key(s, k);
                let ok = match put {
                    Some(v) => kv.put(key, v, None).await.is_ok(),
                    None => kv.delete(key, None).await.is_ok(),
                };
                if !ok {
                    errors.fetch_add(1, Ordering::SeqCst);
                }
                busy[i].store(false, Ordering::SeqCst);
                drop(permit);
            });
            issued += 1;
            while tasks.try_join_next().is_some() {}
        }
    }
    while tasks.join_next().await.is_some() {}
    let churn_done = Instant::now();
    let churn_secs = (churn_done - started).as_secs_f64();
    let usage1 = synapse.usage();

    // Ground truth: etcd holds what we think it holds.
    let want = expected(&present);
    let mut check = client.clone();
    let in_etcd = count(&mut check, "/bench/churn/").await;
    let want_count: usize = want.values().map(BTreeSet::len).sum();
    let converged = exact(&haproxy, &want, Duration::from_secs(60)).await;
    let convergence = churn_done.elapsed();
    let (lost, converge_ms) = match &converged {
        Ok(()) => (0, Some(ms(convergence))),
        Err(diff) => (*diff, None),
    };
    // haproxy.cfg follows HAProxy: the runtime API changes it first, the checked file
    // is written after (off the hot path).
    let file_ok = tokio::time::timeout(Duration::from_secs(30), async {
        while file_servers(&w.dir.read("haproxy.cfg")) != want {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .is_ok();
    let reloads = haproxy.show_proc().await.expect("show proc").reloads - reloads0;
    let mut reports = Vec::new();
    for load in loads {
        reports.push(load.stop().await);
    }
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    let failed: usize = reports.iter().map(|r| r.failures.len()).sum();
    let failures: Vec<String> = reports
        .iter()
        .flat_map(|r| r.failures.iter().take(3).map(|f| format!("{f:?}")))
        .collect();
    let rate_limited =
        metric_sum_labelled(admin, "synapse_haproxy_reloads_total", "rate_limited").await;
    let runtime_commands =
        metric_sum_labelled(admin, "synapse_haproxy_runtime_commands_total", "ok").await;
    let cpu = usage1.cpu_seconds - usage0.cpu_seconds;
    synapse.keep_log(if runtime {
        "churn-runtime-synapse"
    } else {
        "churn-reload-synapse"
    });
    synapse.stop().await;
    drop(haproxy);
    let mode = if runtime {
        "runtime API"
    } else {
        "reload path (do_socket: false, restart_interval 2 s)"
    };
    println!(
        "\nchurn, {mode}: {issued} changes in {churn_secs:.1} s ({:.0}/s; {} errors) over \
         {CHURN_SERVICES} services, {want_count} servers at the end ({in_etcd} keys in etcd)",
        issued as f64 / churn_secs,
        errors.load(Ordering::SeqCst)
    );
    println!(
        "  final state exact: {} (HAProxy) / {file_ok} (haproxy.cfg); lost updates {lost}; \
         converged {:?} ms after the last change",
        converged.is_ok(),
        converge_ms.map(|m| m.round())
    );
    println!(
        "  HAProxy reloads {reloads} (rate-limited deferrals {rate_limited:?}); runtime commands {runtime_commands:?}"
    );
    println!(
        "  client requests {sent}, failed {failed} {:?}; synapse CPU {cpu:.1} s = {:.1} % of one \
         core, RSS {:.1} MiB",
        failures,
        cpu / churn_secs * 100.0,
        usage1.rss_mib()
    );
    json!({
        "mode": mode, "changes": issued, "seconds": churn_secs, "put_errors": errors.load(Ordering::SeqCst),
        "servers_at_end": want_count, "keys_in_etcd": in_etcd, "exact": converged.is_ok(),
        "file_exact": file_ok, "lost_updates": lost, "converged_ms": converge_ms,
        "reloads": reloads, "rate_limited": rate_limited, "runtime_commands": runtime_commands,
        "requests": sent, "failed_requests": failed, "synapse_cpu_s": cpu,
        "synapse_cpu_percent": cpu / churn_secs * 100.0, "synapse_rss_kib": usage1.rss_kib,
    })
}

async fn metric_sum_labelled(addr: SocketAddr, name: &str, value: &str) -> Option<f64> {
    let s = scrape(addr).await.ok()?;
    Some(
        s.all(name)
            .iter()
            .filter(|s| s.labels.values().any(|v| v == value))
            .map(|s| s.value)
            .sum(),
    )
}

/// The servers HAProxy routes to (not in maintenance), per backend.
async fn live(
    haproxy: &Haproxy,
    backends: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for b in backends.keys() {
        let servers = haproxy
            .show_servers_state(b)
            .await
            .map(|all| {
                all.into_iter()
                    .filter(|s| !s.admin_state.is_maint())
                    .map(|s| s.name)
                    .collect()
            })
            .unwrap_or_default();
        out.insert(b.clone(), servers);
    }
    out
}

/// Waits until HAProxy routes to exactly `want`; on timeout, the number of servers that
/// differ.
async fn exact(
    haproxy: &Haproxy,
    want: &BTreeMap<String, BTreeSet<String>>,
    timeout: Duration,
) -> Result<(), usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = live(haproxy, want).await;
        if &got == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            let diff = want
                .iter()
                .map(|(b, w)| {
                    let g = got.get(b).cloned().unwrap_or_default();
                    w.symmetric_difference(&g).count()
                })
                .sum();
            return Err(diff);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `server` lines of a rendered haproxy.cfg, per backend.
fn file_servers(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut backend = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (line.starts_with(char::is_whitespace), words.next()) {
            (false, Some("backend")) => {
                backend = words.next().map(str::to_owned);
                if let Some(b) = &backend {
                    out.entry(b.clone()).or_default();
                }
            }
            (false, _) => backend = None,
            (true, Some("server")) => {
                if let (Some(b), Some(name)) = (&backend, words.next()) {
                    out.entry(b.clone()).or_default().insert(name.to_owned());
                }
            }
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with scripts/bench"]
async fn bench_churn() {
    init_tracing();
    let runtime = churn_run(true).await;
    let reload = churn_run(false).await;
    println!(
        "target: 0 lost updates, final state exact, reloads rate-limited, 0 failed client requests"
    );
    write_result(
        "churn",
        &json!({"haproxy": haproxy_version(), "runtime_api": runtime, "reload_path": reload}),
    );
    for (path, r) in [("runtime API", &runtime), ("reload path", &reload)] {
        invariants(
            &format!("churn, {path}"),
            &[
                ("0 lost updates", r["lost_updates"] == 0),
                ("HAProxy exact", r["exact"] == true),
                ("haproxy.cfg exact", r["file_exact"] == true),
                ("0 failed requests", r["failed_requests"] == 0),
            ],
        );
    }
}

// ---------------------------------------------------------------------------------------
// reload under load

async fn reload_run(seed: bool, reloads: u64) -> serde_json::Value {
    progress(format_args!(
        "reload under load: {reloads} reloads, {} settings",
        if seed { "the seed's" } else { "opted-out" }
    ));
    let dir = Workdir::new();
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await.kv_client();
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let root = "/bench/reload/web";
    for x in [&a, &b] {
        kv.put(
            key(root, "web", x.id()),
            encode(x.id(), x.addr().ip(), x.port()),
            None,
        )
        .await
        .expect("put");
    }
    let port = free_port();
    // The harness reaches HAProxy through this socket; no `expose-fd` written here.
    let stats_line = format!(
        "stats socket {} mode 600 level admin",
        dir.join("stats.sock").display()
    );
    // The seed's `global` and `defaults` exactly as written (examples/synapse-clay.json),
    // synapse adding what it adds by default; or minimal lines with that turned off.
    let (global, defaults) = if seed {
        let file = common::config::parse_jsonc(include_str!("../../examples/synapse-clay.json"))
            .expect("the seed parses");
        let lines = |k: &str| -> Vec<String> {
            serde_json::from_value(file["haproxy"][k].clone()).expect("lines")
        };
        let mut global = lines("global");
        global.push(stats_line);
        (global, lines("defaults"))
    } else {
        let defaults = [
            "mode http",
            "timeout connect 1s",
            "timeout client 10s",
            "timeout server 10s",
        ];
        (
            vec![stats_line, "hard-stop-after 10s".to_owned()],
            defaults.map(str::to_owned).to_vec(),
        )
    };
    let text = json!({
        "services": {"web": {
            "discovery": {"method": "etcd", "hosts": etcd.endpoints(), "path": root},
            "haproxy": {"port": port, "listen": ["balance roundrobin"]},
        }},
        "debounce": 0, "debounce_max_wait": 0,
        "haproxy": {
            "config_file_path": dir.join("haproxy.cfg").display().to_string(),
            "do_socket": false, "do_checks": true, "restart_interval": 0.05,
            "reload_method": "master_socket",
            "master_socket_path": dir.join("master.sock").display().to_string(),
            "bind_address": "127.0.0.1",
            "global": global,
            "defaults": defaults,
            "seamless_reload_lines": seed,
        },
    })
    .to_string();
    let synapse = InProcessSynapse::start(&text);
    let haproxy = Haproxy::start_for_synapse(dir.path()).await;
    eventually(TIMEOUT, || async {
        synapse.reloads() >= 1
            && http_get(loopback(port), "/")
                .await
                .is_ok_and(|r| r.status == 200)
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_millis(5);
    let (new_tally, new_task) = new_connection_loop(port, every, 100_000, stop.clone());
    let (ka_tally, ka_task) = keep_alive_loop(port, every, 100_000, stop.clone());
    let reloads0 = haproxy.show_proc().await.expect("show proc").reloads;
    let started = Instant::now();
    let mut reload_times = Samples::default();
    for i in 0..reloads {
        let t = Instant::now();
        if i % 2 == 0 {
            kv.put(
                key(root, "web", "c"),
                encode("c", c.addr().ip(), c.port()),
                None,
            )
            .await
            .expect("put");
        } else {
            kv.delete(key(root, "web", "c"), None)
                .await
                .expect("delete");
        }
        let target = reloads0 + i as u32 + 1;
        eventually(TIMEOUT, || async {
            haproxy.show_proc().await.is_ok_and(|p| p.reloads >= target)
        })
        .await;
        reload_times.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    // Requests keep going a little past the last reload, through the old workers' exit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let new_errors = new_task.await.expect("loop");
    let ka_errors = ka_task.await.expect("loop");
    let done = haproxy.show_proc().await.expect("show proc").reloads - reloads0;
    synapse.stop().await;
    drop(haproxy);
    let (n_ok, n_failed) = (
        new_tally.ok.load(Ordering::SeqCst),
        new_tally.failed.load(Ordering::SeqCst),
    );
    let (k_ok, k_failed) = (
        ka_tally.ok.load(Ordering::SeqCst),
        ka_tally.failed.load(Ordering::SeqCst),
    );
    let label = if seed {
        "the seed's global/defaults as written"
    } else {
        "plain, seamless_reload_lines: false (no idle-close-on-response)"
    };
    println!(
        "\nreload under load, {label}: {done} reloads in {:.1} s (change -> reload confirmed \
         p50 {:.0} ms, p99 {:.0} ms)",
        elapsed.as_secs_f64(),
        reload_times.quantile(0.5),
        reload_times.quantile(0.99)
    );
    println!(
        "  new connection per request: {n_ok} ok, {n_failed} failed {:?}",
        new_errors.iter().take(3).collect::<Vec<_>>()
    );
    println!(
        "  keep-alive connection:      {k_ok} ok, {k_failed} failed {:?}",
        ka_errors.iter().take(3).collect::<Vec<_>>()
    );
    json!({
        "config": label, "reloads": done, "seconds": elapsed.as_secs_f64(),
        "change_to_reload_ms": reload_times.json(),
        "new_connection": {"ok": n_ok, "failed": n_failed},
        "keep_alive": {"ok": k_ok, "failed": k_failed},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with scripts/bench"]
async fn bench_reload_under_load() {
    init_tracing();
    let reloads = env_knob("BENCH_RELOADS", 100);
    let seed = reload_run(true, reloads).await;
    let plain = reload_run(false, reloads).await;
    println!("target: 0 failed requests across 100 reloads, new-connection and keep-alive clients");
    write_result(
        "reload_under_load",
        &json!({"haproxy": haproxy_version(), "seed": seed, "plain": plain}),
    );
    invariants(
        "reload_under_load, the seed's global/defaults as written",
        &[
            (
                "0 failed new-connection requests",
                seed["new_connection"]["failed"] == 0,
            ),
            (
                "0 failed keep-alive requests",
                seed["keep_alive"]["failed"] == 0,
            ),
        ],
    );
}
