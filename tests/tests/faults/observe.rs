//! What the scenarios read and check besides the world itself: synapse's metrics, the
//! registry's head revision, `haproxy -c`, leftover temp files, the load's failures, a
//! write probe, a synapse process's readiness and HAProxy's process list.

use std::process::Command;
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use integration_tests::{eventually, loopback, scrape, Haproxy, LoadReport, ProcessList};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::profile::TIMEOUT;

/// One sample of synapse's `/metrics` on `admin`; `None` if it does not answer or has
/// no such sample.
pub(crate) async fn metric(admin: u16, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape(loopback(admin)).await.ok()?.get(name, labels)
}

/// The registry's head revision through `client`, retried (the member it is balanced
/// onto may just have been killed).
pub(crate) async fn head_revision(client: &Client) -> i64 {
    eventually(TIMEOUT, || {
        let mut kv = client.kv_client();
        async move {
            kv.get("/", Some(GetOptions::new().with_count_only()))
                .await
                .map_err(|e| e.to_string())?
                .header()
                .map(|h| h.revision())
                .ok_or_else(|| "no header".to_owned())
        }
    })
    .await
}

pub(crate) fn haproxy_check(path: &std::path::Path) {
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(path)
        .output()
        .expect("haproxy -c");
    assert!(
        out.status.success(),
        "haproxy -c failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Failed requests apart from those within 2 s of `died` (a backend killed on purpose:
/// the request it was answering was sent and cannot be retried).
pub(crate) fn failed_apart_from(report: &LoadReport, died: Duration) -> usize {
    report
        .failures
        .iter()
        .filter(|f| {
            f.at + Duration::from_millis(100) < died || f.at > died + Duration::from_secs(2)
        })
        .count()
}

pub(crate) fn failures(report: &LoadReport) -> Vec<String> {
    report
        .failures
        .iter()
        .take(5)
        .map(|f| format!("{:?}: {}", f.at, f.error))
        .collect()
}

/// Probes writes to the cluster every 100 ms; returns the longest gap between successes.
pub(crate) fn write_probe(
    client: Client,
    key: String,
    cancel: CancellationToken,
) -> JoinHandle<Duration> {
    tokio::spawn(async move {
        let mut kv = client.kv_client();
        let mut last_ok = Instant::now();
        let mut max_gap = Duration::ZERO;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return max_gap,
                _ = tick.tick() => {}
            }
            let put =
                tokio::time::timeout(Duration::from_millis(500), kv.put(key.clone(), "p", None));
            if let Ok(Ok(_)) = put.await {
                max_gap = max_gap.max(last_ok.elapsed());
                last_ok = Instant::now();
            }
        }
    })
}

/// `server` lines in a rendered haproxy.cfg.
pub(crate) fn server_lines(cfg: &str) -> usize {
    cfg.lines()
        .filter(|l| l.trim_start().starts_with("server "))
        .count()
}

/// Files next to haproxy.cfg other than haproxy.cfg itself (synapse's candidate and
/// temp files).
pub(crate) fn leftover_temp_files(cfg: &std::path::Path) -> Vec<String> {
    let dir = cfg.parent().expect("cfg dir");
    let name = cfg.file_name().expect("cfg name");
    std::fs::read_dir(dir)
        .expect("cfg dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n != name && n.to_string_lossy().contains(".tmp"))
        .map(|n| n.to_string_lossy().into_owned())
        .collect()
}

/// Waits until a synapse process answers on `admin` with `synapse_ready 1`.
pub(crate) async fn wait_ready(admin: u16) {
    eventually(TIMEOUT, || async {
        metric(admin, "synapse_ready", &[]).await == Some(1.0)
    })
    .await;
}

/// HAProxy's `show proc`, retried while the master re-executes itself.
pub(crate) async fn show_proc(haproxy: &Haproxy) -> ProcessList {
    eventually(TIMEOUT, || haproxy.master().show_proc()).await
}
