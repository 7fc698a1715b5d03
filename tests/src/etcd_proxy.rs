//! etcd's own gRPC proxy (`etcd grpc-proxy start`, shipped in the same binary as the
//! server) on a free loopback port, in front of an [`EtcdCluster`](crate::EtcdCluster)'s
//! members: the coalescing proxy a rack of synapses would share (docs/scaling.md).
//!
//! It can be killed and restarted on the same port, as a proxy container would be. The
//! process is stopped by PID on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::http::http_get_timeout;
use crate::ports::{free_port, loopback};
use crate::process::{ChildProcess, OnDrop};

/// How long the proxy may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A running (or stopped) etcd gRPC proxy.
#[derive(Debug)]
pub struct EtcdGrpcProxy {
    // Declared before `dir`: the process dies before its data dir is deleted.
    process: Option<ChildProcess>,
    port: u16,
    metrics_port: u16,
    upstream: Vec<String>,
    dir: TempDir,
}

impl EtcdGrpcProxy {
    /// Starts a proxy to `upstream` (the members' client URLs) and waits until it serves
    /// (its `/metrics`, then a read through it). Panics, with its log, if it does not.
    pub async fn start(upstream: Vec<String>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("it-grpc-proxy-")
            .tempdir()
            .expect("proxy dir");
        let mut proxy = Self {
            process: None,
            port: free_port(),
            metrics_port: free_port(),
            upstream,
            dir,
        };
        proxy.spawn_and_wait().await;
        proxy
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("grpc-proxy.log")
    }

    async fn spawn_and_wait(&mut self) {
        let endpoints = self
            .upstream
            .iter()
            .map(|e| e.trim_start_matches("http://").to_owned())
            .collect::<Vec<_>>()
            .join(",");
        let mut command = Command::new(crate::etcd::etcd_binary());
        command
            .args(["grpc-proxy", "start"])
            .arg(format!("--endpoints={endpoints}"))
            .arg(format!("--listen-addr={}", loopback(self.port)))
            .arg(format!("--advertise-client-url={}", loopback(self.port)))
            .arg(format!(
                "--metrics-addr=http://{}",
                loopback(self.metrics_port)
            ))
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ));
        let process =
            ChildProcess::spawn(command, &self.log_path(), OnDrop::Kill).expect("start grpc-proxy");
        self.process = Some(process);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let process = self.process.as_ref().expect("spawned");
            assert!(
                !process.has_exited(),
                "etcd grpc-proxy exited:\n{}",
                process.log_tail(40)
            );
            if let Ok(r) =
                http_get_timeout(loopback(self.metrics_port), "/metrics", PROBE_TIMEOUT).await
            {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd grpc-proxy did not serve within {START_TIMEOUT:?}:\n{}",
                process.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The proxy's client URL, for a nerve's or synapse's `endpoints`/`hosts`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// The proxy's own Prometheus metrics listener.
    pub fn metrics_addr(&self) -> SocketAddr {
        loopback(self.metrics_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    pub fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(|p| !p.has_exited())
    }

    /// SIGKILL: every stream through it ends at once, as when its container dies.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill_and_reap();
        }
    }

    /// Starts it again on the same ports (killing it first if it runs).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn_and_wait().await;
    }
}
