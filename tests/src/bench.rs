//! What the benchmarks share: latency samples with their summary, results written as
//! JSON under `target/bench/`, the release daemons run as child processes, and their
//! memory and CPU read from `/proc`.
//!
//! Benchmarks measure; they never assert a timing. What they do assert are the
//! correctness invariants they compute (no lost update, final state exact, no failed
//! request, no steady-state write): [`invariants`], checked after the results are
//! written, so `BENCH_SMOKE=1 scripts/bench` in CI fails when one breaks. They are
//! `#[ignore]`d tests run by `scripts/bench` (see `docs/benchmarks.md`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use common::{Host, InstanceId, Port, Registration, ServiceName, ServicePath};
use etcd_client::{Client, Txn, TxnOp};
use tokio::sync::Semaphore;

use crate::process::{ChildProcess, OnDrop};

/// A progress line, `[bench 1m05s] <step>`, on stderr when it is a terminal (nothing in a
/// log or CI); the time is since the benchmark binary's first progress line.
pub fn progress(step: impl std::fmt::Display) {
    static START: OnceLock<Instant> = OnceLock::new();
    let elapsed = START.get_or_init(Instant::now).elapsed();
    if std::io::stderr().is_terminal() {
        eprintln!(
            "[bench {}] {step}",
            common::table::duration(elapsed.as_secs_f64())
        );
    }
}

/// Latency samples in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(ms(d));
    }

    /// The `q` quantile (0.0 = min, 1.0 = max), nearest rank; NaN when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(i).copied().unwrap_or(f64::NAN)
    }

    /// min, p50, p99, max and the samples themselves.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "min": self.quantile(0.0),
            "p50": self.quantile(0.5),
            "p99": self.quantile(0.99),
            "max": self.quantile(1.0),
            "n": self.0.len(),
            "samples": self.0,
        })
    }

    /// A table row: `name  min  p50  p99  max` (see [`Samples::header`]).
    pub fn row(&self, name: &str) -> String {
        format!(
            "{name:<44} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            self.quantile(0.0),
            self.quantile(0.5),
            self.quantile(0.99),
            self.quantile(1.0)
        )
    }

    pub fn header(title: &str) -> String {
        format!(
            "{title:<44} {:>9} {:>9} {:>9} {:>9}",
            "min", "p50", "p99", "max"
        )
    }
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// An integer knob from the environment, e.g. `BENCH_TRIALS`.
pub fn env_knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn workspace_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

/// Writes `value` to `$BENCH_DIR/<name>.json` (default `target/bench/`) and returns the
/// path.
pub fn write_result(name: &str, value: &serde_json::Value) -> PathBuf {
    let dir = std::env::var_os("BENCH_DIR")
        .map_or_else(|| workspace_target().join("bench"), PathBuf::from);
    std::fs::create_dir_all(&dir).expect("results dir");
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(value).expect("json");
    std::fs::write(&path, text).expect("write results");
    println!("results: {}", path.display());
    path
}

/// Fails the benchmark, naming each broken one, unless every `(name, held)` invariant
/// held. Call it after [`write_result`]: the figures of a failed run are kept.
pub fn invariants(bench: &str, checks: &[(&str, bool)]) {
    let broken: Vec<&str> = checks
        .iter()
        .filter(|(_, held)| !held)
        .map(|(name, _)| *name)
        .collect();
    assert!(broken.is_empty(), "{bench}: invariants broken: {broken:?}");
}

/// The release build of a workspace binary (`nerve`, `synapse`): `$BENCH_BIN_DIR/<name>`,
/// default `target/release/<name>`. Panics, naming the build command, if it is missing.
pub fn release_binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("BENCH_BIN_DIR")
        .map_or_else(|| workspace_target().join("release"), PathBuf::from);
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release --locked --bins` (scripts/bench does)",
        path.display()
    );
    path
}

/// The first line of `haproxy -v`.
pub fn haproxy_version() -> String {
    let bin = std::env::var("HAPROXY_BIN").unwrap_or_else(|_| "haproxy".into());
    Command::new(bin)
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default()
}

/// Memory and CPU of one process, from `/proc/<pid>/status` and `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Resident set size now, KiB.
    pub rss_kib: u64,
    /// Peak resident set size, KiB.
    pub peak_rss_kib: u64,
    /// User + system CPU time so far, seconds.
    pub cpu_seconds: f64,
}

impl Usage {
    /// `None` once the process is gone.
    pub fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after `(comm)`: state is field 3, utime 14, stime 15.
        let (_, after) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        let clock = clock_ticks_per_second();
        Some(Self {
            rss_kib: kib("VmRSS:"),
            peak_rss_kib: kib("VmHWM:"),
            cpu_seconds: (ticks(11)? + ticks(12)?) as f64 / clock,
        })
    }

    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }

    pub fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
}

/// `/proc` reports CPU times in USER_HZ, which Linux fixes at 100 on every architecture
/// we run on (x86-64, arm64), whatever the kernel's own tick rate.
fn clock_ticks_per_second() -> f64 {
    100.0
}

/// A release daemon (`nerve -c <config>`, `synapse -c <config>`) run as a child process,
/// its output in `<dir>/<name>.log`; SIGTERM (then SIGKILL) by PID when dropped.
#[derive(Debug)]
pub struct Daemon {
    process: ChildProcess,
    name: String,
}

impl Daemon {
    /// Starts `release_binary(name) -c <config>`.
    pub fn start(name: &str, config: &Path, dir: &Path) -> Self {
        let mut command = Command::new(release_binary(name));
        command.arg("-c").arg(config).env(
            "RUST_LOG",
            std::env::var("BENCH_DAEMON_LOG").unwrap_or_else(|_| "warn".into()),
        );
        let log = dir.join(format!("{name}.log"));
        let process = ChildProcess::spawn(command, &log, OnDrop::Terminate(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            process,
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its memory and CPU now; panics (with its log) if it has exited.
    pub fn usage(&self) -> Usage {
        match Usage::of(self.pid()).filter(|_| !self.process.has_exited()) {
            Some(u) => u,
            None => panic!("{} exited:\n{}", self.name, self.process.log_tail(30)),
        }
    }

    /// Copies its log to `$BENCH_DIR/<name>.log` (next to the results), for a look at
    /// what it did during a run (`BENCH_DAEMON_LOG=info` for more than warnings).
    pub fn keep_log(&self, name: &str) {
        let dir = std::env::var_os("BENCH_DIR")
            .map_or_else(|| workspace_target().join("bench"), PathBuf::from);
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::copy(self.process.log_path(), dir.join(format!("{name}.log")));
    }

    /// The end of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// SIGTERM, and SIGKILL if it has not exited within 10 s.
    pub async fn stop(self) {
        self.process.terminate(Duration::from_secs(10)).await;
    }
}

/// A registration's etcd value, as nerve writes it.
pub fn encode(name: &str, ip: IpAddr, port: u16) -> String {
    Registration {
        host: Host::Ip(ip),
        port: Port::new(port).expect("port"),
        name: InstanceId::new(name).expect("instance id"),
        weight: None,
        haproxy_server_options: None,
        labels: Default::default(),
    }
    .encode()
}

/// The etcd key nerve registers `instance` of `service` under `path` with.
pub fn key(path: &str, service: &str, instance: &str) -> String {
    ServicePath::new(path).expect("path").nerve_key(
        &InstanceId::new(instance).expect("instance id"),
        &ServiceName::new(service).expect("service"),
        1,
    )
}

/// Puts `per` registrations under each of `services` service paths, 100 per transaction,
/// 4 transactions in flight.
pub async fn fill(client: &Client, root: &str, services: usize, per: usize) {
    let mut ops: Vec<TxnOp> = Vec::new();
    let mut batches = Vec::new();
    for s in 0..services {
        let svc = format!("s{s:03}");
        for j in 0..per {
            let name = format!("i{j}");
            let ip = IpAddr::V4(Ipv4Addr::new(127, 1, (s & 0xff) as u8, 1));
            ops.push(TxnOp::put(
                key(&format!("{root}/{svc}"), &svc, &name),
                encode(&name, ip, 10_000 + j as u16),
                None,
            ));
            if ops.len() == 100 {
                batches.push(std::mem::take(&mut ops));
            }
        }
    }
    if !ops.is_empty() {
        batches.push(ops);
    }
    let limit = Arc::new(Semaphore::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    for batch in batches {
        let permit = limit.clone().acquire_owned().await.expect("semaphore");
        let mut kv = client.kv_client();
        tasks.spawn(async move {
            kv.txn(Txn::new().and_then(batch)).await.expect("txn");
            drop(permit);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("fill task");
    }
}
