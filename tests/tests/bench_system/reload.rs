//! `bench_reload_under_load`: synapse-driven reloads under new-connection and keep-alive
//! clients, the seed's `global`/`defaults` vs plain ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::bench::{
    encode, env_knob, haproxy_version, invariants, key, progress, write_result, Samples,
};
use integration_tests::{
    eventually, free_port, http_get, init_tracing, keep_alive_loop, loopback, new_connection_loop,
    Backend, Etcd, Haproxy, InProcessSynapse, Workdir,
};
use serde_json::json;
use tokio::time::Instant;

use crate::TIMEOUT;

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
        let file = common::config::parse_jsonc(include_str!("../../../examples/synapse-clay.json"))
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
