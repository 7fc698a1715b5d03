//! `bench_churn`: registration changes at a steady rate across 100 services, runtime API
//! vs reload-every-change, under client load; the final state must be exact (HAProxy and
//! the file), with no lost update and no failed request.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Txn, TxnOp};
use integration_tests::bench::{
    encode, env_knob, haproxy_version, invariants, key, ms, progress, write_result, Daemon,
};
use integration_tests::{
    eventually, free_port, http_get, init_tracing, loopback, scrape, Backend, Etcd, Haproxy, Load,
    LoadOptions, Workdir,
};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::observe::count;
use crate::TIMEOUT;

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
