//! synapse at size: `bench_render` (render + parse + runtime plan, in-process, no I/O)
//! and `bench_synapse_scale` (the binary's initial sync of 100 … 100,000 keys, its RSS).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{Host, InstanceId, Port, ServiceName};
use integration_tests::bench::{env_knob, fill, progress, write_result, Daemon, Samples};
use integration_tests::{free_port, init_tracing, Etcd, Workdir};
use serde_json::json;
use synapse::backends::{Backend as Server, BackendSet};
use synapse::haproxy::answers::Capabilities;
use synapse::haproxy::config::{render, wanted_servers, ServerIds};
use synapse::haproxy::model::ConfigModel;
use synapse::haproxy::plan::{plan, running_from, Desired};
use tokio::time::Instant;

use crate::observe::metric_sum;
use crate::TIMEOUT;

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
