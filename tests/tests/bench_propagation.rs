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
use integration_tests::bench::{env_knob, haproxy_version, ms, write_result, Samples};
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

async fn bench_path(variant: Variant, trials: usize) -> PathResult {
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
          "mass_removal_guard": {{"enabled": false}},
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
    let reloads_before = haproxy.show_proc().await.expect("show proc").reloads;
    let mut put = Vec::new();
    let mut delete = Vec::new();
    let gap = || async {
        if !variant.back_to_back {
            tokio::time::sleep(QUIET).await;
        }
    };
    for trial in 0..WARMUP + trials {
        gap().await;
        let t0 = Instant::now();
        kv.put(key("new"), value("new", &new), None)
            .await
            .expect("put");
        let served = first_from(port, "new").await - t0;
        gap().await;
        let t1 = Instant::now();
        kv.delete(key("new"), None).await.expect("delete");
        let stopped = last_from(port, "new").await.saturating_duration_since(t1);
        if trial >= WARMUP {
            put.push(ms(served));
            delete.push(ms(stopped));
        }
    }
    let reloads = haproxy.show_proc().await.expect("show proc").reloads - reloads_before;
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
    let mut results = Vec::new();
    for v in VARIANTS {
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
    write_result("propagation", &json);
    for (v, r) in &results {
        if v.runtime {
            assert_eq!(r.reloads, 0, "{}: the runtime-API path reloaded", v.name);
        }
    }
}
