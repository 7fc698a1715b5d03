//! Helpers for nerve's integration tests: the nerve binary as a child process (killed by
//! PID on drop), nerve in-process, config building, and reading nerve's keys from etcd.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use etcd_client::{Client, GetOptions, WatchOptions};
use integration_tests::{eventually, free_port, loopback, Workdir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Check interval used by the tests (s).
pub const INTERVAL: f64 = 0.1;
/// Lease TTL used by the tests (s).
pub const TTL: u64 = 2;

/// A nerve config: `services` as JSON, short intervals, the test's etcd, the admin
/// endpoint on a free port (the default one is for the one test of it:
/// `admin_default`; nerves running at once would share it).
pub fn config(endpoints: &[String], instance: &str, services: Value) -> Value {
    json!({
        "instance_id": instance,
        "admin_listen": loopback(free_port()).to_string(),
        "etcd": {"endpoints": endpoints, "dial_timeout": 1, "request_timeout": 1},
        "lease_ttl": TTL,
        "reconcile_interval": 1,
        "shutdown_timeout": 2,
        "services": services,
    })
}

/// A service checked over HTTP on `/health` of `port`, registered under `path`.
pub fn http_service(port: u16, path: &str, rise: u32, fall: u32) -> Value {
    json!({
        "host": "127.0.0.1",
        "port": port,
        "reporter_type": "etcd",
        "etcd_path": path,
        "check_interval": INTERVAL,
        "checks": [{"type": "http", "uri": "/health", "timeout": 1, "rise": rise, "fall": fall}],
    })
}

/// One key under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
    pub create_revision: i64,
    pub lease: i64,
}

/// Every key under `prefix`, in key order.
pub async fn keys(client: &Client, prefix: &str) -> Result<Vec<Kv>, String> {
    let mut client = client.clone();
    let resp = tokio::time::timeout(
        Duration::from_secs(2),
        client.get(prefix, Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(|_| "etcd get timed out".to_owned())?
    .map_err(|e| format!("etcd get failed: {e}"))?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| Kv {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
            lease: kv.lease(),
        })
        .collect())
}

/// Waits until exactly `n` keys are under `prefix`; returns them.
#[track_caller]
pub fn wait_keys<'a>(
    client: &'a Client,
    prefix: &'a str,
    n: usize,
    within: Duration,
) -> impl std::future::Future<Output = Vec<Kv>> + 'a {
    eventually(within, move || async move {
        let kvs = keys(client, prefix).await?;
        if kvs.len() == n {
            Ok(kvs)
        } else {
            Err(format!("want {n} keys under {prefix}, have {kvs:?}"))
        }
    })
}

/// The store's current revision.
pub async fn revision(client: &Client) -> i64 {
    let mut client = client.clone();
    let resp = client
        .get("/", Some(GetOptions::new().with_count_only()))
        .await
        .expect("etcd get");
    resp.header().expect("response header").revision()
}

/// Every event under `prefix` from `start_revision` up to now, as `("PUT"|"DELETE", key)`.
/// Replays history with a watch on the whole keyspace, up to a sentinel key written now
/// (outside `prefix`), so it knows when the replay is complete.
pub async fn events_since(
    client: &Client,
    prefix: &str,
    start_revision: i64,
) -> Vec<(String, String)> {
    const SENTINEL: &str = "/~events-sentinel";
    let mut client = client.clone();
    let mut stream = client
        .watch(
            "/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(start_revision),
            ),
        )
        .await
        .expect("etcd watch");
    client
        .put(SENTINEL, "x", None)
        .await
        .expect("put the sentinel");
    let mut events = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("watch replay timed out")
            .expect("watch failed")
            .expect("watch ended");
        for e in msg.events() {
            let Some(kv) = e.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if key == SENTINEL {
                return events;
            }
            if key.starts_with(prefix) {
                let kind = match e.event_type() {
                    etcd_client::EventType::Put => "PUT",
                    etcd_client::EventType::Delete => "DELETE",
                };
                events.push((kind.to_owned(), key));
            }
        }
    }
}

/// The nerve binary, running with a config file in a workdir; its log goes to
/// `nerve.log` there and is printed if the test fails. Killed (SIGKILL) on drop.
pub struct NerveProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl NerveProcess {
    /// Writes `config` to `<dir>/<name>.json` and starts nerve on it.
    pub fn start(dir: &Workdir, name: &str, config: &Value) -> Self {
        Self::start_with_env(dir, name, config, &[])
    }

    /// [`NerveProcess::start`] with extra environment variables.
    pub fn start_with_env(dir: &Workdir, name: &str, config: &Value, env: &[(&str, &str)]) -> Self {
        let config_path = dir.write(format!("{name}.json"), config.to_string());
        let log = dir.join(format!("{name}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_nerve"));
        command.arg("-c").arg(&config_path);
        let file = std::fs::File::create(&log).expect("create nerve log");
        let child = command
            .env("RUST_LOG", "info,nerve=debug")
            .env_remove("NERVE_CONFIG")
            .env_remove("NERVE_INSTANCE_ID")
            .env_remove("NERVE_LOG_FORMAT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start the nerve binary");
        Self {
            child: Some(child),
            log,
        }
    }

    fn pid(&self) -> Pid {
        let child = self.child.as_ref().expect("nerve already reaped");
        Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"))
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal nerve");
    }

    /// Still running (not exited)?
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for nerve to exit; panics (with its log) after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("nerve already reaped");
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait for nerve") {
                self.child = None;
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nerve did not exit within {within:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NerveProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("--- last lines of {} ---", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// nerve running in this process (the library entry point), stopped on drop.
pub struct InProcess {
    pub status: watch::Receiver<nerve::Status>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), nerve::RunError>>>,
}

impl InProcess {
    pub fn start(config: &Value) -> Self {
        let config = nerve::config::parse(&config.to_string(), &Default::default())
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let nerve = nerve::Nerve::new(config);
        let status = nerve.status();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(nerve.run(cancel.clone()));
        Self {
            status,
            cancel,
            task: Some(task),
        }
    }

    /// Cancels nerve and waits for `run` to return (it deregisters first).
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("nerve did not stop within 10 s")
                .expect("nerve panicked")
                .expect("nerve failed");
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
