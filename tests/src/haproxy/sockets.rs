//! Clients of HAProxy's two sockets, spoken directly over a tokio `UnixStream`: the stats
//! socket's runtime API ([`StatsSocket`]) and the master CLI ([`MasterSocket`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::answers::{ProcessList, ServerState, StatRow};
use super::{HaproxyError, LOG_LINES};

/// How long one socket command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one reload may take to show up in `show proc`.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// A reload the master never acted on (it drops one that comes too soon after another)
/// is sent again, this many times in all.
const RELOAD_ATTEMPTS: u32 = 3;

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
