//! A real `redis-server` (Debian's) on a free loopback port, with no persistence, for
//! nerve's `redis` check.

use std::process::Command;
use std::time::Duration;

use crate::ports::{free_port, wait_listening};
use crate::process::{ChildProcess, OnDrop};
use crate::workdir::Workdir;

/// A running redis-server, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    _process: ChildProcess,
    port: u16,
    _dir: Workdir,
}

impl RedisServer {
    /// Starts one on a free port.
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts one on `port` (e.g. again where a stopped one listened).
    pub async fn start_on(port: u16) -> Self {
        let dir = Workdir::new();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path());
        let process = ChildProcess::spawn(cmd, &dir.join("redis.log"), OnDrop::Kill)
            .unwrap_or_else(|e| panic!("cannot start redis-server (scripts/install-deps): {e}"));
        wait_listening(port, Duration::from_secs(20), "redis-server").await;
        Self {
            _process: process,
            port,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}
