//! Benchmark (not a test; `#[ignore]`d, run by `scripts/bench`): etcd put → the first
//! request served by the new server, and etcd delete → the last request it serves, for
//! the runtime-API path and the reload-every-change path, side by side. Real etcd, real
//! HAProxy (master-worker), real backends, synapse in-process; all on loopback.
//!
//! Prints min/p50/p99/max per path and writes the samples as JSON to
//! `target/bench/propagation.json`. `BENCH_TRIALS` (default 100) trials per
//! path, after 3 warm-up trials.

use std::time::Duration;

use common::{Host, InstanceId, Port, Registration, ServiceName, ServicePath};
use integration_tests::bench::{env_knob, haproxy_version, ms, progress, write_result, Samples};
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

async fn bench_path(runtime: bool, trials: usize) -> PathResult {
    progress(format_args!(
        "propagation: {trials} trials, {}",
        if runtime {
            "runtime API"
        } else {
            "reload path"
        }
    ));
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
    let text = format!(
        r#"{{
          "services": {{"web": {{
            "discovery": {{"method": "etcd", "hosts": ["{etcd}"], "path": "/bench/web"}},
            "haproxy": {{"port": {port}, "server_options": "check inter 2s",
                         "listen": ["balance roundrobin"]}}}}}},
          "debounce": 0, "debounce_max_wait": 0,
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
    for trial in 0..WARMUP + trials {
        let t0 = Instant::now();
        kv.put(key("new"), value("new", &new), None)
            .await
            .expect("put");
        let served = first_from(port, "new").await - t0;
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
    let runtime = bench_path(true, trials).await;
    let reload = bench_path(false, trials).await;
    let version = haproxy_version();
    println!("\n{version}; {trials} trials per path (+{WARMUP} warm-up); milliseconds");
    println!("{}", Samples::header(""));
    println!(
        "{}",
        runtime.put.row("runtime API: put -> served by new server")
    );
    println!(
        "{}",
        reload.put.row("reload:      put -> served by new server")
    );
    println!(
        "{}",
        runtime.delete.row("runtime API: delete -> last served")
    );
    println!(
        "{}",
        reload.delete.row("reload:      delete -> last served")
    );
    println!(
        "HAProxy reloads during the trials: runtime API {}, reload path {}",
        runtime.reloads, reload.reloads
    );
    let json = serde_json::json!({
        "haproxy": version,
        "trials": trials,
        "unit": "ms",
        "settings": {"debounce": 0, "restart_interval": 0.05, "do_checks": true,
                     "reload_method": "master_socket"},
        "runtime_api": {"put_to_served": runtime.put.json(), "delete_to_last_served": runtime.delete.json(),
                        "reloads": runtime.reloads},
        "reload": {"put_to_served": reload.put.json(), "delete_to_last_served": reload.delete.json(),
                   "reloads": reload.reloads},
    });
    write_result("propagation", &json);
    assert_eq!(runtime.reloads, 0, "the runtime-API path reloaded");
}
