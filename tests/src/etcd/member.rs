//! One etcd member: its process, ports, data dir and log; started, probed, signalled.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::etcd::EtcdSettings;
use etcd_client::Client;

use super::{connect, etcd_binary, test_settings, StartError, LOG_LINES, PROBE_TIMEOUT};
use crate::http::http_get_timeout;
use crate::ports::loopback;
use crate::process::{ChildProcess, OnDrop};
use crate::tls::{ClientTls, TestPki};

/// One etcd process: its identity, ports and data dir survive restarts.
#[derive(Debug)]
pub struct EtcdMember {
    pub(super) name: String,
    pub(super) client_port: u16,
    /// Where the member listens for peers.
    pub(super) peer_port: u16,
    /// The peer URL's port the others use: `peer_port`, or a peer proxy's.
    pub(super) advertised_peer_port: u16,
    pub(super) data_dir: PathBuf,
    pub(super) log: PathBuf,
    pub(super) initial_cluster: String,
    pub(super) cluster_token: String,
    /// More flags for every start (e.g. `--quota-backend-bytes`).
    pub(super) extra_args: Vec<String>,
    /// With TLS: the certificates, and a plain-HTTP metrics port that answers the
    /// harness's `/health` probes (the client port wants a client certificate).
    pub(super) tls: Option<(Arc<TestPki>, u16)>,
    pub(super) process: Option<ChildProcess>,
}

impl EtcdMember {
    /// Its `--name` (`m0`, `m1`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.1:<client port>` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr())
    }

    /// Where `/health` answers over plain HTTP: the client port, or with TLS the
    /// metrics port.
    fn probe_addr(&self) -> SocketAddr {
        self.tls
            .as_ref()
            .map_or_else(|| self.client_addr(), |(_, port)| loopback(*port))
    }

    /// `127.0.0.1:<client port>`.
    pub fn client_addr(&self) -> SocketAddr {
        loopback(self.client_port)
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The peer (raft) port.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// Its data dir, kept across restarts.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The file etcd's stdout and stderr go to (appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The PID, while a process is started (running or paused).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// Started and not exited (a paused member is running).
    pub fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(|p| !p.has_exited())
    }

    /// Stopped by SIGSTOP.
    pub fn is_paused(&self) -> bool {
        self.process.as_ref().and_then(ChildProcess::state) == Some('T')
    }

    /// Settings for a client of this member only (with TLS: the trusted client
    /// certificate).
    pub fn settings(&self) -> EtcdSettings {
        match &self.tls {
            Some((pki, _)) => pki.settings(vec![self.endpoint()], ClientTls::Trusted),
            None => test_settings(vec![self.endpoint()]),
        }
    }

    /// A client of this member only (the connection is made lazily, so this works while
    /// the member is down). Panics on a malformed endpoint, which would be a harness bug.
    pub async fn client(&self) -> Client {
        connect(&self.settings()).await
    }

    /// Whether `GET /health` answers `{"health":"true"}` now (it needs a leader).
    pub async fn is_healthy(&self) -> bool {
        matches!(
            http_get_timeout(self.probe_addr(), "/health", PROBE_TIMEOUT).await,
            Ok(r) if r.status == 200 && r.body.contains(r#""health":"true""#)
        )
    }

    pub(super) fn spawn(&mut self) {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let advertised = format!("http://127.0.0.1:{}", self.advertised_peer_port);
        let mut command = Command::new(etcd_binary());
        command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &advertised])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            // Unique per cluster, so members of two tests can never join each other even
            // if a port is reused.
            .args(["--initial-cluster-token", &self.cluster_token])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(&self.extra_args);
        if let Some((pki, metrics_port)) = &self.tls {
            command.args(pki.etcd_server_args()).arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{metrics_port}"
            ));
        }
        let process = ChildProcess::spawn(command, &self.log, OnDrop::Kill).unwrap_or_else(|e| {
            panic!(
                "cannot start {} for member {}: {e}",
                etcd_binary().display(),
                self.name
            )
        });
        self.process = Some(process);
    }

    /// Waits until the member answers `/health` (`need_leader`) or `/version` (it serves
    /// but may have no quorum), or its process exits.
    pub(super) async fn wait_serving(
        &self,
        need_leader: bool,
        timeout: Duration,
    ) -> Result<(), StartError> {
        // The metrics listener (TLS) has no `/version`; `/metrics` answers without quorum.
        let path = match (need_leader, self.tls.is_some()) {
            (true, _) => "/health",
            (false, false) => "/version",
            (false, true) => "/metrics",
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Some(process) = &self.process else {
                return Err(StartError::Failed(format!(
                    "member {} is not started",
                    self.name
                )));
            };
            if process.has_exited() {
                let tail = process.log_tail(LOG_LINES);
                return Err(if tail.contains("address already in use") {
                    StartError::AddrInUse(tail)
                } else {
                    StartError::Failed(format!("member {} exited:\n{tail}", self.name))
                });
            }
            let last = match http_get_timeout(self.probe_addr(), path, PROBE_TIMEOUT).await {
                Ok(r)
                    if r.status == 200
                        && (!need_leader || r.body.contains(r#""health":"true""#)) =>
                {
                    return Ok(());
                }
                Ok(r) => format!("{} {}", r.status, r.body.trim()),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(StartError::Failed(format!(
                    "member {} did not answer {path} within {timeout:?} (last: {last}); log:\n{}",
                    self.name,
                    process.log_tail(LOG_LINES)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
