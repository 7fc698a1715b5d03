//! A real RabbitMQ broker (Debian's `rabbitmq-server`) on free loopback ports, for
//! nerve's `rabbitmq` check. Its Erlang port mapper (`epmd`) is started here too, in the
//! foreground on its own free port (`ERL_EPMD_PORT`), so that nothing outlives the test
//! and parallel brokers never share one. Every path (Mnesia, logs, feature flags) is in
//! the broker's work dir. Started as root, Debian's script runs the broker as the
//! `rabbitmq` user (through `su`, in a session of its own, out of reach of a signal to
//! the script's process group), so the work dir is handed to that user, and the broker
//! is stopped by the PID it writes to its pid file.

use std::process::Command;
use std::time::Duration;

use crate::ports::{free_port, wait_listening};
use crate::process::{ChildProcess, OnDrop};
use crate::workdir::Workdir;

/// A running broker with the default `guest`/`guest` user, killed on drop.
#[derive(Debug)]
pub struct RabbitMq {
    broker: Option<ChildProcess>,
    _epmd: ChildProcess,
    port: u16,
    _dir: Workdir,
}

impl RabbitMq {
    /// Starts a broker; returns once it accepts AMQP connections (a minute at most).
    pub async fn start() -> Self {
        let dir = Workdir::new();
        let (port, epmd_port, dist_port) = (free_port(), free_port(), free_port());
        let mut epmd = Command::new("epmd");
        epmd.args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"]);
        let epmd = ChildProcess::spawn(epmd, &dir.join("epmd.log"), OnDrop::Kill)
            .unwrap_or_else(|e| panic!("cannot start epmd (scripts/install-deps): {e}"));
        if crate::process::running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "rabbitmq:rabbitmq"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the broker's dir to rabbitmq");
        }
        let mut cmd = Command::new("rabbitmq-server");
        let path = |name: &str| dir.join(name).display().to_string();
        cmd.env("HOME", dir.path())
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_NODENAME", format!("nerve-test-{port}@localhost"))
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", path("feature_flags"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", path("rabbitmq.pid"));
        let broker = ChildProcess::spawn(cmd, &dir.join("rabbitmq.log"), OnDrop::Kill)
            .unwrap_or_else(|e| panic!("cannot start rabbitmq-server (scripts/install-deps): {e}"));
        wait_listening(port, Duration::from_secs(60), "rabbitmq-server").await;
        Self {
            broker: Some(broker),
            _epmd: epmd,
            port,
            _dir: dir,
        }
    }

    /// The AMQP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the broker (by the PID in its pid file, and the script's process group);
    /// epmd stays until drop.
    pub fn kill(&mut self) {
        if self.broker.is_none() {
            // Already killed: its PID may belong to another process by now.
            return;
        }
        let pid = std::fs::read_to_string(self._dir.join("rabbitmq.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.broker = None;
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.kill();
    }
}
