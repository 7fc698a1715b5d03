//! Benchmark (not a test; `#[ignore]`d, run by `scripts/bench`): the drain barrier.
//! Time from `POST /drain/web?wait=true` on nerve's admin endpoint (what `nerve drain
//! --wait` sends) to its answer, which comes once the last of N synapses has published
//! that it applied the deletion — with 1, 10 and 50 synapses.
//!
//! Release binaries of nerve and synapse as child processes, one real etcd on loopback.
//! The synapses write `file_output` only (50 HAProxies beside 50 synapses would measure
//! the 2-core machine more than the barrier); a file output's apply is a file write, so
//! the figures are the registry and barrier path: etcd delete → watch → apply → status
//! put (rate-limited to 4/s per synapse) → nerve's watch on the status prefix.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use integration_tests::bench::{env_knob, invariants, ms, progress, write_result, Daemon, Samples};
use integration_tests::{free_port, init_tracing, Backend, Etcd, Workdir};
use nerve::drain::DrainOutcome;
use serde_json::json;
use tokio::time::Instant;

const PATH: &str = "/bench/drain/web";
const TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between the registration being applied everywhere and the drain.
const QUIET: Duration = Duration::from_millis(400);

async fn post(admin: SocketAddr, target: &str) -> (u16, String) {
    nerve::drain::post(admin, target, TIMEOUT + Duration::from_secs(10))
        .await
        .expect("nerve's admin endpoint answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with scripts/bench"]
async fn bench_drain_barrier() {
    init_tracing();
    let trials = env_knob("BENCH_DRAIN_TRIALS", 30) as usize;
    let max = env_knob("BENCH_DRAIN_MAX_SYNAPSES", 50) as usize;
    println!(
        "\ndrain barrier: POST /drain?wait → last of N synapses confirmed (release builds, \
         file_output synapses, {trials} trials; shared 2-core machine)"
    );
    println!("{}", Samples::header("synapses (ms)"));
    let mut results = Vec::new();
    let mut all_confirmed = true;
    for n in [1usize, 10, 50] {
        if n > max {
            continue;
        }
        progress(format_args!("drain barrier: {n} synapses"));
        let etcd = Etcd::start().await;
        let backend = Backend::start("a").await;
        let dir = Workdir::new();
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        // A second registration nobody drains (another tool's key), so that the drained
        // one is never the last (with `use_previous_backends`, the last would be kept).
        let mut client = etcd.client().await;
        client
            .put(
                format!("{PATH}/other"),
                r#"{"host":"127.0.0.1","port":9,"name":"other"}"#,
                None,
            )
            .await
            .expect("put");
        let nerve_config = json!({
            "instance_id": "host-a",
            "etcd": {"endpoints": [etcd.endpoint()]},
            "admin_listen": admin.to_string(),
            "services": {"web": {
                "host": "127.0.0.1", "port": backend.port(), "reporter_type": "etcd",
                "etcd_path": PATH, "check_interval": 0.25,
                "checks": [{"type": "tcp", "timeout": 0.5, "rise": 1, "fall": 3}],
            }},
        });
        let nerve = Daemon::start(
            "nerve",
            &dir.write("nerve.json", nerve_config.to_string()),
            dir.path(),
        );
        integration_tests::eventually(TIMEOUT, || async {
            common::admin::fetch(admin, "/healthz").await.is_ok()
        })
        .await;
        let mut synapses = Vec::new();
        for i in 0..n {
            let sdir = Workdir::new();
            let config = json!({
                "instance_id": format!("syn-{i:02}"),
                "admin_listen": null,
                "services": {"web": {"discovery": {"method": "etcd", "hosts": etcd.endpoints(), "path": PATH}}},
                "file_output": {"output_directory": sdir.path()},
            });
            let path = sdir.write("synapse.json", config.to_string());
            synapses.push((Daemon::start("synapse", &path, sdir.path()), sdir));
        }
        // Every synapse up and publishing.
        integration_tests::eventually(TIMEOUT, || async {
            let resp = etcd
                .client()
                .await
                .get(
                    common::applied::dir(common::applied::DEFAULT_PREFIX),
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_count_only(),
                    ),
                )
                .await;
            resp.is_ok_and(|r| r.count() == n as i64)
        })
        .await;
        let mut round_trip = Samples::default();
        let mut in_nerve = Samples::default();
        for _ in 0..trials {
            // Registered again, and applied by every synapse, before the next drain.
            let (code, body) = post(admin, "/undrain/web").await;
            assert_eq!(code, 200, "{body}");
            let deadline = Instant::now() + TIMEOUT;
            let registered = loop {
                let resp = client
                    .get(
                        format!("{PATH}/host-a/"),
                        Some(etcd_client::GetOptions::new().with_prefix()),
                    )
                    .await
                    .expect("get");
                if let Some(kv) = resp.kvs().first() {
                    break kv.mod_revision();
                }
                assert!(
                    Instant::now() < deadline,
                    "nerve did not register:\n{}",
                    nerve.log_tail(20)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let ready = common::applied::wait(
                &mut client,
                common::applied::DEFAULT_PREFIX,
                PATH,
                registered,
                TIMEOUT,
            )
            .await;
            assert!(
                ready.complete() && ready.confirmed.len() == n,
                "synapses did not apply the registration: {ready:?}"
            );
            // Quiet for longer than a synapse's write limit (250 ms), as before a drain in
            // practice: otherwise the figure is the rate limit (measured: p50 ≈ 250 ms).
            tokio::time::sleep(QUIET).await;
            let started = Instant::now();
            let (code, body) = post(
                admin,
                &format!("/drain/web?wait=true&timeout={}", TIMEOUT.as_secs()),
            )
            .await;
            round_trip.push(started.elapsed());
            let outcome: DrainOutcome = serde_json::from_str(&body).expect("outcome");
            let barrier = outcome.barrier.clone().unwrap_or_default();
            all_confirmed &= code == 200 && outcome.complete() && barrier.confirmed.len() == n;
            in_nerve.push(Duration::from_millis(barrier.elapsed_ms));
        }
        println!(
            "{}",
            round_trip.row(&format!("{n} synapses: drain → last confirmed"))
        );
        println!(
            "{}",
            in_nerve.row(&format!("{n} synapses: of which the barrier wait"))
        );
        results.push(json!({
            "synapses": n,
            "drain_to_last_confirmation_ms": round_trip.json(),
            "barrier_wait_ms": in_nerve.json(),
        }));
        for (s, _) in synapses {
            s.stop().await;
        }
        nerve.stop().await;
    }
    println!(
        "(rate limit: each synapse writes its status at most every {} ms)",
        ms(synapse::applied::MIN_WRITE_INTERVAL)
    );
    write_result(
        "drain_barrier",
        &json!({"unit": "ms", "trials": trials, "sizes": results,
                "synapse_output": "file_output (no HAProxy)"}),
    );
    invariants(
        "drain_barrier",
        &[("every drain confirmed by every synapse", all_confirmed)],
    );
}
