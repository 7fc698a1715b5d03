//! HAProxy's runtime API (the stats socket) and master CLI, spoken over a unix socket.
//!
//! A [`Session`] keeps one stats-socket connection in interactive (`prompt`) mode, so a
//! batch of commands costs one connect; every answer ends at the `"\n> "` prompt. The
//! readers here parse what the plan needs: `show info` (the version, for
//! [`Capabilities`]), `show backend` and `show servers state`. Commands go out only as
//! rendered [`RuntimeCommand`](super::plan::RuntimeCommand)s, which are built from
//! validated types; [`Session::command`] refuses any text with a command separator or
//! an escape in it all the same.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::timeout;

use super::answers::{
    is_safe_command, parse_servers_state, parse_show_backend, summarize, Capabilities, LiveServers,
    ProcessList,
};

/// How long one exchange with a socket may take.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
/// The biggest answer we read (a `show servers state` of 10k servers is ~1.5 MB).
const MAX_ANSWER: usize = 64 << 20;
const PROMPT: &[u8] = b"\n> ";

/// Why talking to a socket failed. The caller falls back to a reload (stats socket) or
/// retries with backoff (master CLI).
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot talk to {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} did not answer {command:?} within {timeout:?}", path.display())]
    Timeout {
        path: PathBuf,
        command: String,
        timeout: Duration,
    },
    #[error("{} closed the connection before answering {command:?}", path.display())]
    Closed { path: PathBuf, command: String },
    #[error("refusing to send {command:?}: it contains a separator, escape or control character")]
    Unsafe { command: String },
    #[error("unexpected answer to {command:?}: {answer:?}")]
    Unexpected { command: String, answer: String },
}

/// An open stats-socket connection in prompt mode.
pub struct Session {
    path: PathBuf,
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Session {
    /// Connects and switches to prompt mode.
    pub async fn open(path: &Path) -> Result<Self, SocketError> {
        let io = |source| SocketError::Io {
            path: path.to_owned(),
            source,
        };
        let stream = timeout(SOCKET_TIMEOUT, UnixStream::connect(path))
            .await
            .map_err(|_| SocketError::Timeout {
                path: path.to_owned(),
                command: "connect".into(),
                timeout: SOCKET_TIMEOUT,
            })?
            .map_err(io)?;
        let mut session = Self {
            path: path.to_owned(),
            stream,
            buf: Vec::new(),
        };
        session.command("prompt").await?;
        Ok(session)
    }

    /// Sends one command and returns its answer without the prompt (and without the
    /// blank line that ends every non-empty answer).
    pub async fn command(&mut self, command: &str) -> Result<String, SocketError> {
        if !is_safe_command(command) {
            return Err(SocketError::Unsafe {
                command: command.to_owned(),
            });
        }
        let path = self.path.clone();
        let exchange = async {
            let io = |source| SocketError::Io {
                path: path.clone(),
                source,
            };
            self.stream
                .write_all(format!("{command}\n").as_bytes())
                .await
                .map_err(io)?;
            self.buf.clear();
            let mut chunk = [0u8; 16 * 1024];
            while !self.buf.ends_with(PROMPT) {
                let n = self.stream.read(&mut chunk).await.map_err(io)?;
                if n == 0 || self.buf.len() > MAX_ANSWER {
                    return Err(SocketError::Closed {
                        path: path.clone(),
                        command: command.to_owned(),
                    });
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
            let body = &self.buf[..self.buf.len() - PROMPT.len()];
            let text = String::from_utf8_lossy(body);
            Ok(text.strip_suffix('\n').unwrap_or(&text).to_owned())
        };
        timeout(SOCKET_TIMEOUT, exchange)
            .await
            .map_err(|_| SocketError::Timeout {
                path: self.path.clone(),
                command: command.to_owned(),
                timeout: SOCKET_TIMEOUT,
            })?
    }

    /// `show info`, reduced to what the plan needs.
    pub async fn capabilities(&mut self) -> Result<Capabilities, SocketError> {
        let answer = self.command("show info").await?;
        Capabilities::from_show_info(&answer).ok_or_else(|| SocketError::Unexpected {
            command: "show info".into(),
            answer: summarize(&answer),
        })
    }

    /// `show backend`: every proxy with a backend side (backends and `listen` sections).
    pub async fn backends(&mut self) -> Result<BTreeSet<String>, SocketError> {
        let answer = self.command("show backend").await?;
        parse_show_backend(&answer).ok_or_else(|| SocketError::Unexpected {
            command: "show backend".into(),
            answer: summarize(&answer),
        })
    }

    /// `show servers state`, raw: the server-state-file format.
    pub async fn servers_state_raw(&mut self) -> Result<String, SocketError> {
        self.command("show servers state").await
    }

    /// `show servers state`, parsed: backend → server → state.
    pub async fn servers(&mut self) -> Result<LiveServers, SocketError> {
        let answer = self.servers_state_raw().await?;
        parse_servers_state(&answer).map_err(|why| SocketError::Unexpected {
            command: "show servers state".into(),
            answer: format!("{why}: {}", summarize(&answer)),
        })
    }

    /// What this HAProxy runs: its capabilities, its backends, and the servers of
    /// every backend or of `only` some (those it lacks are left out: the plan sees
    /// them missing from `show backend`).
    pub async fn running(&mut self, only: Option<&[String]>) -> Result<Running, SocketError> {
        let caps = self.capabilities().await?;
        let backends = self.backends().await?;
        let servers = match only {
            None => self.servers().await?,
            Some(names) => {
                let mut servers = LiveServers::new();
                for name in names.iter().filter(|n| backends.contains(*n)) {
                    servers.extend(self.servers_of(name).await?);
                }
                servers
            }
        };
        Ok(Running {
            caps,
            backends,
            servers,
        })
    }

    /// `show servers state <backend>`, parsed: one backend's servers, for a change that
    /// touched only some backends (an unknown backend is an error: ask `show backend`
    /// first).
    pub async fn servers_of(&mut self, backend: &str) -> Result<LiveServers, SocketError> {
        let command = format!("show servers state {backend}");
        let answer = self.command(&command).await?;
        parse_servers_state(&answer).map_err(|why| SocketError::Unexpected {
            command,
            answer: format!("{why}: {}", summarize(&answer)),
        })
    }
}

/// What one HAProxy runs, read over its stats socket ([`Session::running`]).
#[derive(Debug)]
pub struct Running {
    pub caps: Capabilities,
    /// `show backend`.
    pub backends: BTreeSet<String>,
    /// `show servers state`, of every backend or of some.
    pub servers: LiveServers,
}

/// One command on the master CLI (`-S`), which answers only once our side is shut.
pub async fn master_command(path: &Path, command: &str) -> Result<String, SocketError> {
    if !is_safe_command(command) {
        return Err(SocketError::Unsafe {
            command: command.to_owned(),
        });
    }
    let io = |source| SocketError::Io {
        path: path.to_owned(),
        source,
    };
    let exchange = async {
        let mut stream = UnixStream::connect(path).await.map_err(io)?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(io)?;
        stream.shutdown().await.map_err(io)?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER as u64)
            .read_to_end(&mut answer)
            .await
            .map_err(io)?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    timeout(SOCKET_TIMEOUT, exchange)
        .await
        .map_err(|_| SocketError::Timeout {
            path: path.to_owned(),
            command: command.to_owned(),
            timeout: SOCKET_TIMEOUT,
        })?
}

/// `show proc` on the master CLI at `path`.
pub async fn show_proc(path: &Path) -> Result<ProcessList, SocketError> {
    let answer = master_command(path, "show proc").await?;
    ProcessList::parse(&answer).ok_or_else(|| SocketError::Unexpected {
        command: "show proc".into(),
        answer: summarize(&answer),
    })
}
