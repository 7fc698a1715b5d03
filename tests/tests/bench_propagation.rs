//! Benchmark (not a test; `#[ignore]`d, run by `scripts/bench`): etcd put → the first
//! request served by the new server, and etcd delete → the last request it serves: the
//! default config first, then one knob changed at a time (health checks off, `debounce:
//! 0`, the old trailing debounce, back-to-back changes), and the reload-every-change
//! baseline, side by side. Real etcd, real HAProxy (master-worker), real backends,
//! synapse in-process; all on loopback.
//!
//! Prints min/p50/p99/max per path and writes the samples as JSON to
//! `target/bench/propagation.json`. `BENCH_TRIALS` (default 100) trials per
//! path, after 3 warm-up trials.

use std::time::Duration;

use common::{Host, InstanceId, Port, Registration, ServiceName, ServicePath};
use integration_tests::bench::{
    encode, env_knob, fill, haproxy_version, key, ms, progress, write_result, Daemon, Samples,
};
use integration_tests::plot::{self, Plot, Series};
use integration_tests::{
    eventually, free_port, http_get, init_tracing, loopback, Backend, Etcd, Haproxy,
    InProcessSynapse, Workdir,
};
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(20);
const WARMUP: usize = 3;
/// A removal counts as done after this many responses in a row from the other server.
const SETTLED: usize = 30;

struct PathResult {
    put: Samples,
    delete: Samples,
    reloads: u32,
}

/// Requests until one is answered by `id`; the instant it was.
async fn first_from(port: u16, id: &str) -> Instant {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(r) = http_get(loopback(port), "/").await {
            if r.body == id {
                return Instant::now();
            }
        }
    }
    panic!("{id} never answered");
}

/// Requests until `SETTLED` in a row come from elsewhere than `id`; the instant the
/// first of them was answered.
async fn last_from(port: u16, id: &str) -> Instant {
    let deadline = Instant::now() + TIMEOUT;
    let mut run_start = Instant::now();
    let mut run = 0;
    while Instant::now() < deadline {
        match http_get(loopback(port), "/").await {
            Ok(r) if r.status == 200 && r.body != id => {
                if run == 0 {
                    run_start = Instant::now();
                }
                run += 1;
                if run >= SETTLED {
                    return run_start;
                }
            }
            _ => run = 0,
        }
    }
    panic!("{id} kept answering");
}

/// One configuration measured.
#[derive(Debug, Clone, Copy)]
struct Variant {
    name: &'static str,
    /// Runtime API on (else every change reloads).
    runtime: bool,
    /// `debounce` (and `debounce_max_wait`) in seconds; `None` leaves synapse's default.
    debounce: Option<f64>,
    /// `check inter 200 rise 1 fall 1` on the servers, else no health checks.
    check: bool,
    /// `debounce_mode: trailing`: the default before leading-edge debounce.
    trailing: bool,
    /// Each change follows the previous one at once (a burst), instead of after
    /// [`QUIET`].
    back_to_back: bool,
}

/// The gap before each put and delete: longer than the default `debounce` (0.1 s), so
/// every change is an isolated one (a new instance coming up, one going away) — the case
/// DESIGN §9's target is about. `back_to_back` variants skip it.
const QUIET: Duration = Duration::from_millis(200);

/// The default config first, then one knob changed at a time, then the baseline.
const VARIANTS: [Variant; 7] = [
    Variant {
        name: "default (check on)",
        runtime: true,
        debounce: None,
        check: true,
        trailing: false,
        back_to_back: false,
    },
    Variant {
        name: "default, check off",
        runtime: true,
        debounce: None,
        check: false,
        trailing: false,
        back_to_back: false,
    },
    Variant {
        name: "default, back-to-back changes",
        runtime: true,
        debounce: None,
        check: true,
        trailing: false,
        back_to_back: true,
    },
    Variant {
        name: "debounce 0 (check on)",
        runtime: true,
        debounce: Some(0.0),
        check: true,
        trailing: false,
        back_to_back: false,
    },
    Variant {
        name: "debounce 0, check off",
        runtime: true,
        debounce: Some(0.0),
        check: false,
        trailing: false,
        back_to_back: false,
    },
    Variant {
        name: "before: trailing debounce (check on)",
        runtime: true,
        debounce: None,
        check: true,
        trailing: true,
        back_to_back: false,
    },
    Variant {
        name: "reload every change, debounce 0",
        runtime: false,
        debounce: Some(0.0),
        check: true,
        trailing: false,
        back_to_back: false,
    },
];

/// HAProxy's reload count; the master CLI may refuse a connection while it reloads a
/// big config, so ask until it answers.
async fn reload_count(haproxy: &Haproxy) -> u32 {
    eventually(Duration::from_secs(120), || async {
        haproxy.show_proc().await.map(|p| p.reloads)
    })
    .await
}

/// `WARMUP` + `trials` rounds of: put `new` (key, value), time until it serves requests on
/// `port`; delete it, time until it stops. With `quiet`, each change follows [`QUIET`]
/// of nothing. The samples after the warm-up, put and delete.
async fn put_delete_trials(
    kv: &mut etcd_client::KvClient,
    port: u16,
    (key, value): (&str, &str),
    trials: usize,
    quiet: bool,
) -> (Vec<f64>, Vec<f64>) {
    let gap = || async {
        if quiet {
            tokio::time::sleep(QUIET).await;
        }
    };
    let (mut put, mut delete) = (Vec::new(), Vec::new());
    for trial in 0..WARMUP + trials {
        gap().await;
        let (at, t0) = (std::time::SystemTime::now(), Instant::now());
        kv.put(key, value, None).await.expect("put");
        let put_done = t0.elapsed();
        let served = first_from(port, "new").await - t0;
        gap().await;
        let (del_at, t1) = (std::time::SystemTime::now(), Instant::now());
        kv.delete(key, None).await.expect("delete");
        let del_done = t1.elapsed();
        let stopped = last_from(port, "new").await.saturating_duration_since(t1);
        if std::env::var_os("BENCH_TRIAL_LOG").is_some() {
            // When each trial began (UTC) and its etcd round trip, to read beside a
            // daemon's log (BENCH_DAEMON_LOG).
            let utc = |t: std::time::SystemTime| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64())
            };
            eprintln!(
                "trial {trial}: put at {:.6} (etcd {:.2} ms) served {:.2} ms; delete at {:.6} (etcd {:.2} ms) gone {:.2} ms",
                utc(at),
                ms(put_done),
                ms(served),
                utc(del_at),
                ms(del_done),
                ms(stopped)
            );
        }
        if trial >= WARMUP {
            put.push(ms(served));
            delete.push(ms(stopped));
        }
    }
    (put, delete)
}

async fn bench_path(variant: Variant, trials: usize) -> PathResult {
    progress(format_args!(
        "propagation: {trials} trials, {}",
        variant.name
    ));
    let runtime = variant.runtime;
    let dir = Workdir::new();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let port = free_port();
    let (base, new) = (Backend::start("base").await, Backend::start("new").await);
    let path = ServicePath::new("/bench/web").expect("path");
    let key = |instance: &str| {
        path.nerve_key(
            &InstanceId::new(instance).expect("id"),
            &ServiceName::new("web").expect("name"),
            1,
        )
    };
    let value = |instance: &str, b: &Backend| {
        Registration {
            host: Host::Ip(b.addr().ip()),
            port: Port::new(b.port()).expect("port"),
            name: InstanceId::new(instance).expect("id"),
            weight: None,
            haproxy_server_options: None,
            labels: Default::default(),
        }
        .encode()
    };
    let mut kv = client.kv_client();
    kv.put(key("base"), value("base", &base), None)
        .await
        .expect("put");
    let socket = if runtime {
        format!(
            r#""socket_file_path": "{}","#,
            dir.join("stats.sock").display()
        )
    } else {
        r#""do_socket": false,"#.to_owned()
    };
    let mut debounce = variant.debounce.map_or_else(String::new, |d| {
        format!(r#""debounce": {d}, "debounce_max_wait": {d},"#)
    });
    if variant.trailing {
        debounce.push_str(r#""debounce_mode": "trailing","#);
    }
    let check = if variant.check {
        "check inter 200 rise 1 fall 1"
    } else {
        ""
    };
    let text = format!(
        r#"{{
          "services": {{"web": {{
            "discovery": {{"method": "etcd", "hosts": ["{etcd}"], "path": "/bench/web"}},
            "haproxy": {{"port": {port}, "server_options": "{check}",
                         "listen": ["balance roundrobin"]}}}}}},
          {debounce}
          "haproxy": {{
            "config_file_path": "{cfg}", {socket}
            "do_checks": true,
            "reload_method": "master_socket", "master_socket_path": "{master}",
            "restart_interval": 0.05, "bind_address": "127.0.0.1", "server_order_seed": 1,
            "global": ["stats socket {stats} mode 600 level admin expose-fd listeners",
                       "server-state-file {state}", "hard-stop-after 5s"],
            "defaults": ["mode http", "timeout connect 1s", "timeout client 10s",
                         "timeout server 10s", "option idle-close-on-response",
                         "load-server-state-from-file global"]
          }}
        }}"#,
        etcd = etcd.client_addr(),
        cfg = dir.join("haproxy.cfg").display(),
        master = dir.join("master.sock").display(),
        stats = dir.join("stats.sock").display(),
        state = dir.join("server-state").display(),
    );
    let synapse = InProcessSynapse::start(&text);
    let haproxy = Haproxy::start_for_synapse(dir.path()).await;
    eventually(TIMEOUT, || async {
        synapse.reloads() >= 1
            && http_get(loopback(port), "/")
                .await
                .is_ok_and(|r| r.body == "base")
    })
    .await;
    let reloads_before = reload_count(&haproxy).await;
    let (put, delete) = put_delete_trials(
        &mut kv,
        port,
        (&key("new"), &value("new", &new)),
        trials,
        !variant.back_to_back,
    )
    .await;
    let reloads = reload_count(&haproxy).await - reloads_before;
    synapse.stop().await;
    drop(haproxy);
    PathResult {
        put: Samples(put),
        delete: Samples(delete),
        reloads,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with scripts/bench"]
async fn bench_propagation() {
    init_tracing();
    let trials = env_knob("BENCH_TRIALS", 100) as usize;
    // `BENCH_VARIANTS="default (check on);debounce 0"`: only the variants whose name
    // starts with one of these (`;`-separated: names hold commas).
    let only = std::env::var("BENCH_VARIANTS").unwrap_or_default();
    let wanted = |v: &Variant| only.is_empty() || only.split(';').any(|o| v.name.starts_with(o));
    let mut results = Vec::new();
    for v in VARIANTS.into_iter().filter(wanted) {
        results.push((v, bench_path(v, trials).await));
    }
    let version = haproxy_version();
    println!("\n{version}; {trials} trials per path (+{WARMUP} warm-up); milliseconds");
    println!("{}", Samples::header(""));
    for (v, r) in &results {
        println!("{}", r.put.row(&format!("{}: put -> served", v.name)));
        println!("{}", r.delete.row(&format!("{}: delete -> gone", v.name)));
    }
    println!(
        "target (default config, checks on): put -> served p99 < 10 ms, delete -> gone p99 < 10 ms"
    );
    let mut variants = serde_json::Map::new();
    for (v, r) in &results {
        println!(
            "HAProxy reloads during the trials, {}: {}",
            v.name, r.reloads
        );
        variants.insert(
            v.name.to_owned(),
            serde_json::json!({
                "runtime_api": v.runtime, "debounce": v.debounce, "check": v.check,
                "trailing": v.trailing, "back_to_back": v.back_to_back,
                "put_to_served": r.put.json(), "delete_to_last_served": r.delete.json(),
                "reloads": r.reloads,
            }),
        );
    }
    let json = serde_json::json!({
        "haproxy": version,
        "trials": trials,
        "unit": "ms",
        "settings": {"quiet_gap_ms": ms(QUIET), "restart_interval": 0.05, "do_checks": true, "reload_method": "master_socket",
                     "check": "check inter 200 rise 1 fall 1"},
        "variants": variants,
    });
    let path = write_result("propagation", &json);
    for (what, pick) in [("put", true), ("delete", false)] {
        let series: Vec<Series> = results
            .iter()
            .map(|(v, r)| Series::cdf(v.name, if pick { &r.put.0 } else { &r.delete.0 }))
            .collect();
        let title = if pick {
            "etcd put -> first request served by the new server"
        } else {
            "etcd delete -> last request served by the removed server"
        };
        plot::svg(
            &path,
            &format!("propagation_{what}"),
            &Plot {
                title,
                x: "milliseconds (log scale)",
                y: "fraction of trials",
                log_y: false,
            },
            &series,
        );
    }
    for (v, r) in &results {
        if v.runtime {
            assert_eq!(r.reloads, 0, "{}: the runtime-API path reloaded", v.name);
        }
    }
}

/// One service `web` (a real `base` server, a frontend) among 100 others holding
/// `total` servers between them (addresses nothing listens on, no checks): what one
/// change costs when the fleet is big. The release synapse binary with the default
/// config (runtime API, default debounce), an external HAProxy reloaded through its
/// master socket.
async fn change_at_scale(total: usize, trials: usize) -> serde_json::Value {
    const SERVICES: usize = 100;
    let dir = Workdir::new();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let root = "/bench/scale";
    fill(&client, root, SERVICES, total / SERVICES).await;
    let port = free_port();
    let (base, new) = (Backend::start("base").await, Backend::start("new").await);
    let web = "/bench/scale-web";
    let mut kv = client.kv_client();
    kv.put(
        key(web, "web", "base"),
        encode("base", base.addr().ip(), base.port()),
        None,
    )
    .await
    .expect("put");
    let mut services = serde_json::Map::new();
    for s in 0..SERVICES {
        services.insert(
            format!("s{s:03}"),
            serde_json::json!({
                "discovery": {"method": "etcd", "hosts": etcd.endpoints(), "path": format!("{root}/s{s:03}")},
                "haproxy": {"listen": ["balance roundrobin"]},
                "max_servers": 100_000,
            }),
        );
    }
    services.insert(
        "web".into(),
        serde_json::json!({
            "discovery": {"method": "etcd", "hosts": etcd.endpoints(), "path": web},
            "haproxy": {"port": port, "server_options": "check inter 200 rise 1 fall 1",
                        "listen": ["balance roundrobin"]},
        }),
    );
    let stats = dir.join("stats.sock").display().to_string();
    let config = serde_json::json!({
        "services": services,
        "haproxy": {
            "config_file_path": dir.join("haproxy.cfg").display().to_string(),
            "socket_file_path": stats,
            "reload_method": "master_socket",
            "master_socket_path": dir.join("master.sock").display().to_string(),
            "bind_address": "127.0.0.1", "max_server_id": 1_000_000,
            "global": [format!("stats socket {stats} mode 600 level admin"), "maxconn 4096".to_owned()],
            "defaults": ["mode http", "timeout connect 1s", "timeout client 10s", "timeout server 10s"],
        },
    });
    let synapse = Daemon::start(
        "synapse",
        &dir.write("synapse.json", config.to_string()),
        dir.path(),
    );
    let haproxy = Haproxy::start_for_synapse(dir.path()).await;
    eventually(Duration::from_secs(300), || async {
        http_get(loopback(port), "/")
            .await
            .is_ok_and(|r| r.body == "base")
    })
    .await;
    // Settled: synapse's start-up reload done, HAProxy running every server.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reloads_before = reload_count(&haproxy).await;
    // Idle CPU (the periodic runtime check), to subtract.
    let idle_for = Duration::from_secs(6);
    let idle0 = synapse.usage().cpu_seconds;
    tokio::time::sleep(idle_for).await;
    let idle_rate = (synapse.usage().cpu_seconds - idle0) / idle_for.as_secs_f64();
    let cpu0 = synapse.usage().cpu_seconds;
    let t0 = Instant::now();
    let (put, delete) = put_delete_trials(
        &mut kv,
        port,
        (
            &key(web, "web", "new"),
            &encode("new", new.addr().ip(), new.port()),
        ),
        trials,
        true,
    )
    .await;
    let cpu = synapse.usage().cpu_seconds - cpu0 - idle_rate * t0.elapsed().as_secs_f64();
    let changes = 2 * (WARMUP + trials);
    let cpu_per_change_ms = (cpu * 1000.0 / changes as f64).max(0.0);
    let reloads = reload_count(&haproxy).await - reloads_before;
    let (put, delete) = (Samples(put), Samples(delete));
    println!(
        "{total:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>12.2} {:>8}",
        put.quantile(0.5),
        put.quantile(0.99),
        delete.quantile(0.5),
        delete.quantile(0.99),
        cpu_per_change_ms,
        reloads
    );
    synapse.keep_log(&format!("change_at_scale_synapse_{total}"));
    synapse.stop().await;
    drop(haproxy);
    serde_json::json!({
        "servers": total, "put_to_served": put.json(), "delete_to_last_served": delete.json(),
        "cpu_per_change_ms": cpu_per_change_ms, "idle_cpu_share": idle_rate, "reloads": reloads,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with scripts/bench"]
async fn bench_change_at_scale() {
    init_tracing();
    let max = env_knob("BENCH_SCALE_MAX", 100_000) as usize;
    let trials = env_knob("BENCH_SCALE_TRIALS", 30) as usize;
    println!(
        "\none change at scale: release synapse, default config, 100 services + `web`; \
         {trials} put/delete trials each; milliseconds"
    );
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>12} {:>8}",
        "servers", "put p50", "put p99", "del p50", "del p99", "CPU/change", "reloads"
    );
    // `BENCH_SCALE_SIZES=100,100000`: only these sizes, back to back (same load).
    let sizes: Vec<usize> = std::env::var("BENCH_SCALE_SIZES").map_or_else(
        |_| vec![100, 1_000, 10_000, 100_000],
        |v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
    );
    let mut runs = Vec::new();
    for total in sizes {
        if total <= max {
            runs.push(change_at_scale(total, trials).await);
        }
    }
    println!("targets: put p99 at 100k within 2x of 100; CPU per change at 10k < 5 ms");
    let path = write_result(
        "change_at_scale",
        &serde_json::json!({"haproxy": haproxy_version(), "trials": trials, "unit": "ms", "runs": runs}),
    );
    let line = |name: &str, f: &dyn Fn(&serde_json::Value) -> f64| Series {
        name: name.to_owned(),
        points: runs
            .iter()
            .map(|r| (r["servers"].as_f64().unwrap_or(0.0), f(r)))
            .collect(),
    };
    plot::svg(
        &path,
        "change_at_scale",
        &Plot {
            title: "one change against the number of servers (default config)",
            x: "servers (log scale)",
            y: "milliseconds (log scale)",
            log_y: true,
        },
        &[
            line("put -> served p99", &|r| {
                r["put_to_served"]["p99"].as_f64().unwrap_or(0.0)
            }),
            line("put -> served p50", &|r| {
                r["put_to_served"]["p50"].as_f64().unwrap_or(0.0)
            }),
            line("delete -> gone p99", &|r| {
                r["delete_to_last_served"]["p99"].as_f64().unwrap_or(0.0)
            }),
            line("synapse CPU per change", &|r| {
                r["cpu_per_change_ms"].as_f64().unwrap_or(0.0)
            }),
        ],
    );
}
