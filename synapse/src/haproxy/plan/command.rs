//! One runtime-API command of a plan, built from validated parts only ([`Name`],
//! [`Word`], `IpAddr`, [`Port`], [`Weight`]), so its text never holds a `;`, `\` or line
//! break: the command, its text, and the answer that means it succeeded.

use std::fmt;
use std::net::IpAddr;

use common::{Port, Weight};

use crate::haproxy::model::{Name, Word};

/// `set server <b>/<s> state ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ready,
    Maint,
}

/// One runtime-API command, from validated parts only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeCommand {
    /// `add server b/s addr:port args...`: the server starts in maintenance.
    Add {
        backend: Name,
        server: Name,
        addr: IpAddr,
        port: Port,
        args: Vec<Word>,
    },
    EnableHealth {
        backend: Name,
        server: Name,
    },
    SetState {
        backend: Name,
        server: Name,
        state: State,
    },
    SetWeight {
        backend: Name,
        server: Name,
        weight: Weight,
    },
    SetAddr {
        backend: Name,
        server: Name,
        addr: IpAddr,
        port: Port,
    },
    /// `del server b/s`: only a server in maintenance without connections.
    Del {
        backend: Name,
        server: Name,
    },
}

impl RuntimeCommand {
    pub fn backend(&self) -> &Name {
        match self {
            Self::Add { backend, .. }
            | Self::EnableHealth { backend, .. }
            | Self::SetState { backend, .. }
            | Self::SetWeight { backend, .. }
            | Self::SetAddr { backend, .. }
            | Self::Del { backend, .. } => backend,
        }
    }

    pub fn server(&self) -> &Name {
        match self {
            Self::Add { server, .. }
            | Self::EnableHealth { server, .. }
            | Self::SetState { server, .. }
            | Self::SetWeight { server, .. }
            | Self::SetAddr { server, .. }
            | Self::Del { server, .. } => server,
        }
    }

    /// Whether `answer` is this command's success message.
    pub fn succeeded(&self, answer: &str) -> bool {
        let answer = answer.trim();
        match self {
            Self::Add { .. } => answer == "New server registered.",
            Self::Del { .. } => answer == "Server deleted.",
            Self::SetAddr { .. } => {
                answer.is_empty()
                    || answer.contains("changed from")
                    || answer.starts_with("no need to change")
            }
            _ => answer.is_empty(),
        }
    }
}

fn addr_port(addr: &IpAddr, port: Port) -> String {
    match addr {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

impl fmt::Display for RuntimeCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (b, s) = (self.backend(), self.server());
        match self {
            Self::Add {
                addr, port, args, ..
            } => {
                write!(f, "add server {b}/{s} {}", addr_port(addr, *port))?;
                for a in args {
                    write!(f, " {a}")?;
                }
                Ok(())
            }
            Self::EnableHealth { .. } => write!(f, "enable health {b}/{s}"),
            Self::SetState { state, .. } => {
                let state = match state {
                    State::Ready => "ready",
                    State::Maint => "maint",
                };
                write!(f, "set server {b}/{s} state {state}")
            }
            Self::SetWeight { weight, .. } => write!(f, "set server {b}/{s} weight {weight}"),
            Self::SetAddr { addr, port, .. } => {
                write!(f, "set server {b}/{s} addr {addr} port {port}")
            }
            Self::Del { .. } => write!(f, "del server {b}/{s}"),
        }
    }
}
