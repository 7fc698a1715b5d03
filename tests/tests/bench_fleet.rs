//! The fleet benchmark (docs/scaling.md): many real synapse processes against one real
//! 3-member etcd cluster on loopback, directly or through etcd's gRPC proxy (one proxy per
//! 50 synapses, as one per rack), and many real nerves keeping their leases alive.
//!
//! Each synapse is the release build with file output only (no HAProxy: one HAProxy per
//! synapse would measure HAProxy, not the fan-out), watching `services` services. A
//! change is one etcd put or delete; it has reached a synapse when that synapse has
//! rewritten the service's JSON file (an atomic rename, seen through inotify on every
//! synapse's output directory, so nothing polls). Fan-out latency is from the put's
//! answer to the *last* synapse's rename.
//!
//! Invariants asserted (timings never are): every change reaches every synapse, and at
//! the end every synapse's file for every service holds exactly the registered set.
//!
//!   scripts/bench-fleet                         # the sweep (docs/scaling.md)
//!   BENCH_FLEET_SIZES=1,10 BENCH_FLEET_SERVICES=1 scripts/bench-fleet
//!
//! Knobs: BENCH_FLEET_SIZES (synapses, `1,10,100,200`), BENCH_FLEET_SERVICES (per synapse,
//! `1,10,50`), BENCH_FLEET_MODES (`direct,proxy`), BENCH_FLEET_TRIALS (30),
//! BENCH_FLEET_PER_PROXY (50), BENCH_FLEET_NERVES (lease phase, `0,100,500`),
//! BENCH_FLEET_IDLE_SECS (5).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use integration_tests::bench::{
    encode, env_knob, invariants, key, progress, write_result, Daemon, Samples, Usage,
};
use integration_tests::plot::{self, Plot, Series};
use integration_tests::{
    eventually, http_get, init_tracing, Backend, EtcdCluster, EtcdGrpcProxy, Workdir,
};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const TIMEOUT: Duration = Duration::from_secs(120);
/// How long one change may take to reach every synapse before it counts as lost.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
const ROOT: &str = "/fleet";

fn list_knob(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn number_list(name: &str, default: &str) -> Vec<usize> {
    list_knob(name, default)
        .iter()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("{name}: {s:?} is not a number"))
        })
        .collect()
}

fn service(s: usize) -> String {
    format!("s{s:03}")
}

fn service_path(s: usize) -> String {
    format!("{ROOT}/{}", service(s))
}

/// One event of the output directories: (synapse index, file name, when it was read).
type Seen = (usize, String, Instant);

/// inotify on every synapse's output directory, read by one thread.
struct DirWatch {
    rx: mpsc::UnboundedReceiver<Seen>,
    stop: Arc<AtomicBool>,
    wake: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DirWatch {
    fn start(dirs: &[PathBuf], wake_dir: &Path) -> Self {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC).expect("inotify");
        let mut by_wd: HashMap<WatchDescriptor, usize> = HashMap::new();
        for (i, dir) in dirs.iter().enumerate() {
            let wd = inotify
                .add_watch(dir, AddWatchFlags::IN_MOVED_TO)
                .expect("inotify watch");
            by_wd.insert(wd, i);
        }
        inotify
            .add_watch(wake_dir, AddWatchFlags::IN_CREATE)
            .expect("inotify wake");
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Ok(events) = inotify.read_events() else {
                    continue;
                };
                let at = Instant::now();
                for e in events {
                    let (Some(i), Some(name)) = (by_wd.get(&e.wd), e.name) else {
                        continue;
                    };
                    let _ = tx.send((*i, name.to_string_lossy().into_owned(), at));
                }
            }
        });
        Self {
            rx,
            stop,
            wake: wake_dir.join("wake"),
            thread: Some(thread),
        }
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::write(&self.wake, "");
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A synapse config: `services` services under [`ROOT`], file output only.
fn synapse_config(endpoints: &[String], services: usize, out: &Path) -> Value {
    let mut svc = serde_json::Map::new();
    for s in 0..services {
        svc.insert(
            service(s),
            json!({"discovery": {"method": "etcd", "hosts": endpoints, "path": service_path(s)}}),
        );
    }
    json!({
        "services": svc,
        "file_output": {"output_directory": out},
        "admin_listen": null,
    })
}

/// The instance names in a synapse's JSON file for one service.
fn names_in(path: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let mut names: Vec<String> = v
        .as_array()?
        .iter()
        .filter_map(|b| b.get("name")?.as_str().map(str::to_owned))
        .collect();
    names.sort();
    Some(names)
}

/// etcd's own figures, summed over the members (and proxies, for the proxy columns).
#[derive(Debug, Default, Clone, Copy)]
struct EtcdFigures {
    watchers: f64,
    watch_streams: f64,
    db_bytes: f64,
    leases_renewed: f64,
    /// A gRPC proxy's watchers served by a shared upstream watch.
    coalescing: f64,
}

/// The value of an unlabelled sample `name` in Prometheus text (etcd's own metrics carry
/// label values the harness's strict parser refuses; these few need no labels).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

async fn etcd_figures(addrs: &[SocketAddr]) -> EtcdFigures {
    let mut f = EtcdFigures::default();
    for addr in addrs {
        let Ok(r) = http_get(*addr, "/metrics").await else {
            continue;
        };
        let text = r.body;
        f.watchers += sample(&text, "etcd_debugging_mvcc_watcher_total");
        f.watch_streams += sample(&text, "etcd_debugging_mvcc_watch_stream_total");
        f.db_bytes = f
            .db_bytes
            .max(sample(&text, "etcd_mvcc_db_total_size_in_bytes"));
        f.leases_renewed += sample(&text, "etcd_debugging_lease_renewed_total");
        f.coalescing += sample(&text, "etcd_grpc_proxy_watchers_coalescing_total");
    }
    f
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| Usage::of(*p))
        .map(|u| u.cpu_seconds)
        .sum()
}

fn rss_of(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| Usage::of(*p))
        .map(|u| u.rss_mib())
        .sum()
}

struct Cluster {
    etcd: EtcdCluster,
    client: Client,
}

impl Cluster {
    fn member_pids(&self) -> Vec<u32> {
        (0..self.etcd.len())
            .filter_map(|i| self.etcd.pid(i))
            .collect()
    }

    fn member_metrics(&self) -> Vec<SocketAddr> {
        (0..self.etcd.len())
            .map(|i| self.etcd.member(i).client_addr())
            .collect()
    }
}

/// One point of the sweep: `n` synapses watching `services` services each, `direct` or
/// through proxies.
async fn run_point(cluster: &Cluster, mode: &str, n: usize, services: usize) -> Value {
    let trials = env_knob("BENCH_FLEET_TRIALS", 30) as usize;
    let per_proxy = env_knob("BENCH_FLEET_PER_PROXY", 50).max(1) as usize;
    let idle = Duration::from_secs(env_knob("BENCH_FLEET_IDLE_SECS", 5));
    let dir = Workdir::new();
    let mut client = cluster.client.clone();
    // A clean registry: two base instances per service.
    client
        .delete(
            format!("{ROOT}/"),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .expect("clear");
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut registered: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for s in 0..services {
        for b in ["base-1", "base-2"] {
            client
                .put(
                    key(&service_path(s), &service(s), b),
                    encode(b, ip, 1000),
                    None,
                )
                .await
                .expect("put base");
            registered.entry(s).or_default().push(b.to_owned());
        }
    }

    let mut proxies = Vec::new();
    if mode == "proxy" {
        for _ in 0..n.div_ceil(per_proxy) {
            proxies.push(EtcdGrpcProxy::start(cluster.etcd.endpoints()).await);
        }
    }
    let mut outs = Vec::new();
    let mut configs = Vec::new();
    for i in 0..n {
        let home = dir.join(format!("synapse-{i}"));
        let out = home.join("out");
        std::fs::create_dir_all(&out).expect("dirs");
        let endpoints = if proxies.is_empty() {
            cluster.etcd.endpoints()
        } else {
            vec![proxies[i / per_proxy].endpoint()]
        };
        let path = home.join("synapse.json");
        std::fs::write(
            &path,
            synapse_config(&endpoints, services, &out).to_string(),
        )
        .expect("config");
        outs.push(out);
        configs.push((path, home));
    }
    let wake = dir.join("wake");
    std::fs::create_dir_all(&wake).expect("wake dir");
    let mut watch = DirWatch::start(&outs, &wake);

    let cpu0 = cpu_of(&cluster.member_pids());
    let started = Instant::now();
    let synapses: Vec<Daemon> = configs
        .iter()
        .map(|(config, home)| Daemon::start("synapse", config, home))
        .collect();
    let base: Vec<String> = vec!["base-1".into(), "base-2".into()];
    eventually(TIMEOUT, || async {
        for out in &outs {
            for s in 0..services {
                if names_in(&out.join(format!("{}.json", service(s)))).as_ref() != Some(&base) {
                    return Err(format!("{} has not written {}", out.display(), service(s)));
                }
            }
        }
        Ok(())
    })
    .await;
    let cold_start = started.elapsed();
    let cpu_start = cpu_of(&cluster.member_pids()) - cpu0;
    while watch.rx.try_recv().is_ok() {}

    // Idle: n × services watchers open, nothing changing.
    let pids = cluster.member_pids();
    let proxy_pids: Vec<u32> = proxies.iter().filter_map(EtcdGrpcProxy::pid).collect();
    let (cpu_a, proxy_cpu_a) = (cpu_of(&pids), cpu_of(&proxy_pids));
    tokio::time::sleep(idle).await;
    let idle_cores = (cpu_of(&pids) - cpu_a) / idle.as_secs_f64();
    let proxy_idle_cores = (cpu_of(&proxy_pids) - proxy_cpu_a) / idle.as_secs_f64();
    let figures = etcd_figures(&cluster.member_metrics()).await;
    let proxy_metrics: Vec<SocketAddr> = proxies.iter().map(EtcdGrpcProxy::metrics_addr).collect();
    let proxy_figures = etcd_figures(&proxy_metrics).await;

    // The changes: a put of a new instance, then its delete, alternately, round the services.
    let mut last = Samples::default();
    let mut median = Samples::default();
    let mut lost = 0usize;
    let synapse_pids: Vec<u32> = synapses.iter().map(Daemon::pid).collect();
    let (cpu_b, proxy_cpu_b) = (cpu_of(&pids), cpu_of(&proxy_pids));
    let synapse_cpu_b = cpu_of(&synapse_pids);
    let trials_started = Instant::now();
    for t in 0..trials {
        let s = (t / 2) % services;
        let name = format!("new-{}", t / 2);
        let k = key(&service_path(s), &service(s), &name);
        let t0 = Instant::now();
        if t % 2 == 0 {
            client
                .put(k, encode(&name, ip, 2000 + t as u16), None)
                .await
                .expect("put");
            registered.entry(s).or_default().push(name);
        } else {
            client.delete(k, None).await.expect("delete");
            registered.entry(s).or_default().retain(|n| *n != name);
        }
        let file = format!("{}.json", service(s));
        let mut reached: HashMap<usize, Instant> = HashMap::new();
        let deadline = tokio::time::Instant::now() + CHANGE_TIMEOUT;
        while reached.len() < n {
            match tokio::time::timeout_at(deadline, watch.rx.recv()).await {
                Ok(Some((i, name, at))) if name == file && at >= t0 => {
                    reached.entry(i).or_insert(at);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if reached.len() < n {
            lost += n - reached.len();
        }
        let mut each: Vec<Duration> = reached.values().map(|at| *at - t0).collect();
        each.sort();
        if let Some(max) = each.last() {
            last.push(*max);
            median.push(each[each.len() / 2]);
        }
        // Quiet before the next change, longer than the default debounce (0.1 s): each
        // change is an isolated one, as a deploy's are.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let busy = trials_started.elapsed().as_secs_f64();
    let trial_cores = (cpu_of(&pids) - cpu_b) / busy;
    let proxy_trial_cores = (cpu_of(&proxy_pids) - proxy_cpu_b) / busy;
    // What one change costs each synapse (its wake-up, decode, apply, file write): times
    // N, the CPU a single machine must find for every change when it runs all of them.
    let synapse_cpu_per_change_ms =
        (cpu_of(&synapse_pids) - synapse_cpu_b) * 1e3 / (trials.max(1) * n.max(1)) as f64;

    // Every file of every synapse holds exactly the registered set.
    let mut wrong = 0usize;
    for s in 0..services {
        let mut want = registered.get(&s).cloned().unwrap_or_default();
        want.sort();
        for out in &outs {
            if names_in(&out.join(format!("{}.json", service(s)))) != Some(want.clone()) {
                wrong += 1;
            }
        }
    }
    let rss: Vec<f64> = synapses.iter().map(|d| d.usage().rss_mib()).collect();
    let rss_mean = rss.iter().sum::<f64>() / rss.len().max(1) as f64;
    let rss_max = rss.iter().copied().fold(0.0, f64::max);
    let etcd_rss = rss_of(&pids);
    let proxy_rss = rss_of(&proxy_pids);
    futures_stop(synapses).await;
    drop(watch);
    for p in proxies {
        drop(p);
    }
    let row = json!({
        "mode": mode, "synapses": n, "services": services, "proxies": proxy_pids.len(),
        "watches": n * services, "trials": trials,
        "fanout_last_ms": last.json(), "fanout_median_synapse_ms": median.json(),
        "lost": lost, "wrong_files": wrong, "cold_start_ms": cold_start.as_secs_f64() * 1e3,
        "etcd_cpu_cold_start_s": cpu_start,
        "etcd_watchers": figures.watchers, "etcd_watch_streams": figures.watch_streams,
        "etcd_db_bytes": figures.db_bytes,
        "proxy_watchers_coalescing": proxy_figures.coalescing,
        "etcd_cpu_idle_cores": idle_cores, "changes_seconds": busy,
        "synapse_cpu_per_change_ms": synapse_cpu_per_change_ms, "etcd_cpu_changes_cores": trial_cores,
        "proxy_cpu_idle_cores": proxy_idle_cores, "proxy_cpu_changes_cores": proxy_trial_cores,
        "etcd_rss_mib": etcd_rss, "proxy_rss_mib": proxy_rss,
        "synapse_rss_mean_mib": rss_mean, "synapse_rss_max_mib": rss_max,
    });
    println!(
        "{mode:>6} synapses {n:>4} services {services:>3}: fan-out p50 {:>7.1} ms p99 {:>7.1} ms \
         (median synapse p50 {:>6.1}); etcd watchers {:>6} streams {:>5} (proxies coalesce {:>6}); etcd CPU idle {:.3} \
         changes {:.3} cores; proxies {:.3}; synapse CPU {:.2} ms a change; synapse RSS {:.1} MiB (max {:.1}); lost {lost} \
         wrong {wrong}",
        last.quantile(0.5),
        last.quantile(0.99),
        median.quantile(0.5),
        figures.watchers,
        figures.watch_streams,
        proxy_figures.coalescing,
        idle_cores,
        trial_cores,
        proxy_trial_cores,
        synapse_cpu_per_change_ms,
        rss_mean,
        rss_max,
    );
    row
}

/// Stops every synapse at once (SIGTERM to all, then the waits).
async fn futures_stop(daemons: Vec<Daemon>) {
    let mut set = tokio::task::JoinSet::new();
    for d in daemons {
        set.spawn(d.stop());
    }
    while set.join_next().await.is_some() {}
}

/// The lease phase: `m` nerves, each registering one service (a TCP check of one shared
/// backend), leases kept alive; etcd's CPU and lease renewals over `window`.
async fn lease_point(cluster: &Cluster, m: usize, backend: &Backend) -> Value {
    let window = Duration::from_secs(env_knob("BENCH_FLEET_IDLE_SECS", 5) * 2);
    let dir = Workdir::new();
    let pids = cluster.member_pids();
    let mut nerves = Vec::new();
    for i in 0..m {
        let home = dir.join(format!("nerve-{i}"));
        std::fs::create_dir_all(&home).expect("dir");
        let config = json!({
            "instance_id": format!("host-{i}"),
            "etcd": {"endpoints": cluster.etcd.endpoints()},
            "admin_listen": null,
            "services": {"leases": {
                "host": "127.0.0.1", "port": backend.port(), "reporter_type": "etcd",
                "etcd_path": format!("{ROOT}-leases/leases"), "check_interval": 2,
                "checks": [{"type": "tcp", "timeout": 1, "rise": 1, "fall": 2}],
            }},
        });
        let path = home.join("nerve.json");
        std::fs::write(&path, config.to_string()).expect("config");
        nerves.push(Daemon::start("nerve", &path, &home));
    }
    let client = cluster.client.clone();
    eventually(TIMEOUT, || {
        let mut c = client.clone();
        async move {
            let r = c
                .get(
                    format!("{ROOT}-leases/"),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .map_err(|e| e.to_string())?;
            if r.count() as usize == m {
                Ok(())
            } else {
                Err(format!("{} of {m} registered", r.count()))
            }
        }
    })
    .await;
    let metrics = cluster.member_metrics();
    let (cpu0, f0) = (cpu_of(&pids), etcd_figures(&metrics).await);
    tokio::time::sleep(window).await;
    let (cpu1, f1) = (cpu_of(&pids), etcd_figures(&metrics).await);
    let secs = window.as_secs_f64();
    let cores = (cpu1 - cpu0) / secs;
    let renewals = (f1.leases_renewed - f0.leases_renewed) / secs;
    let nerve_rss: f64 = nerves.iter().map(|n| n.usage().rss_mib()).sum::<f64>() / m.max(1) as f64;
    futures_stop(nerves).await;
    println!(
        "leases: {m:>4} nerves: {renewals:.1} keep-alives/s, etcd CPU {cores:.3} cores, \
         nerve RSS {nerve_rss:.1} MiB"
    );
    json!({"nerves": m, "keepalives_per_s": renewals, "etcd_cpu_cores": cores,
           "nerve_rss_mean_mib": nerve_rss})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by scripts/bench-fleet"]
async fn bench_fleet() {
    init_tracing();
    let sizes = number_list("BENCH_FLEET_SIZES", "1,10,100,200");
    let services = number_list("BENCH_FLEET_SERVICES", "1,10,50");
    let modes = list_knob("BENCH_FLEET_MODES", "direct,proxy");
    let nerves = number_list("BENCH_FLEET_NERVES", "0,100,500");
    let etcd = EtcdCluster::start(3).await;
    let client = etcd.client().await;
    let cluster = Cluster { etcd, client };
    let mut rows = Vec::new();
    for mode in &modes {
        for &s in &services {
            for &n in &sizes {
                progress(format!("fleet: {mode}, {n} synapses × {s} services"));
                rows.push(run_point(&cluster, mode, n, s).await);
            }
        }
    }
    let backend = Backend::start("leases").await;
    let mut leases = Vec::new();
    for &m in &nerves {
        progress(format!("fleet: {m} nerves' leases"));
        leases.push(lease_point(&cluster, m, &backend).await);
    }
    let result = json!({
        "benchmark": "fleet", "etcd_members": 3, "cores": std::thread::available_parallelism()
            .map(|n| n.get()).unwrap_or(0),
        "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "points": rows, "leases": leases,
    });
    let path = write_result("fleet", &result);
    let series: Vec<Series> = modes
        .iter()
        .flat_map(|mode| services.iter().map(move |s| (mode.clone(), *s)))
        .map(|(mode, s)| Series {
            name: format!("{mode}, {s} services"),
            points: rows
                .iter()
                .filter(|r| r["mode"] == mode.as_str() && r["services"] == s)
                .map(|r| {
                    (
                        r["synapses"].as_f64().unwrap_or(0.0),
                        r["fanout_last_ms"]["p99"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect(),
        })
        .collect();
    plot::svg(
        &path,
        "fleet_fanout_p99",
        &Plot {
            title: "put → applied by the last synapse, p99",
            x: "synapses",
            y: "ms",
            log_y: true,
        },
        &series,
    );
    let lost: u64 = rows.iter().map(|r| r["lost"].as_u64().unwrap_or(1)).sum();
    let wrong: u64 = rows
        .iter()
        .map(|r| r["wrong_files"].as_u64().unwrap_or(1))
        .sum();
    invariants(
        "fleet",
        &[
            ("every change reached every synapse", lost == 0),
            (
                "every synapse's files hold exactly the registered set",
                wrong == 0,
            ),
        ],
    );
}
