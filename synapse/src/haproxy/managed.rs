//! Managed HAProxy (`managed: true`): synapse runs `haproxy -W -S <master socket> -f
//! <config>` as its child, restarts it (with backoff) whenever it exits, and stops it
//! when synapse stops: SIGUSR1 (soft stop: stop listening, finish connections), SIGTERM
//! after `stop_timeout`, SIGKILL two seconds later.
//!
//! The [`Supervisor`] task starts HAProxy only once the output has written the first
//! config ([`ManagedHandle::start`]). Each start bumps a generation that the output
//! watches: a restarted HAProxy runs the file on disk, so that becomes what HAProxy
//! "loaded". HAProxy 2.6's master exits when a worker dies (unless
//! `master-worker no-exit-on-failure`), so a killed worker is a restart too.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::Backoff;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::{watch, Notify};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::runtime;
use crate::config::ManagedHaproxy;
use crate::counters::Counters;

/// A child that ran this long was healthy: the restart backoff starts over.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// SIGTERM → SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long a start may take before it counts as running anyway.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the output knows of the managed HAProxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ManagedState {
    /// How many times HAProxy was started; a change means it runs the file on disk.
    pub generation: u64,
    /// The master's PID while it runs.
    pub master_pid: Option<u32>,
}

/// The output's side: start once, then watch.
#[derive(Debug)]
pub struct ManagedHandle {
    ready: Arc<Notify>,
    requested: bool,
    state: watch::Receiver<ManagedState>,
}

impl ManagedHandle {
    /// Lets the supervisor start HAProxy (the config file exists now). Idempotent.
    pub fn start(&mut self) {
        if !self.requested {
            self.requested = true;
            self.ready.notify_one();
        }
    }

    pub fn requested(&self) -> bool {
        self.requested
    }

    pub fn state(&self) -> ManagedState {
        *self.state.borrow()
    }
}

/// The supervisor task.
pub struct Supervisor {
    config: ManagedHaproxy,
    config_file: PathBuf,
    master_socket: PathBuf,
    pid_file: Option<PathBuf>,
    ready: Arc<Notify>,
    state: watch::Sender<ManagedState>,
    /// Woken after each start, so the output looks at the new HAProxy at once.
    changed: Arc<Notify>,
    counters: Arc<Counters>,
}

impl Supervisor {
    pub fn new(
        config: ManagedHaproxy,
        config_file: PathBuf,
        master_socket: PathBuf,
        pid_file: Option<PathBuf>,
        changed: Arc<Notify>,
        counters: Arc<Counters>,
    ) -> (Self, ManagedHandle) {
        let ready = Arc::new(Notify::new());
        let (tx, rx) = watch::channel(ManagedState::default());
        let handle = ManagedHandle {
            ready: ready.clone(),
            requested: false,
            state: rx,
        };
        let supervisor = Self {
            config,
            config_file,
            master_socket,
            pid_file,
            ready,
            state: tx,
            changed,
            counters,
        };
        (supervisor, handle)
    }

    /// Runs until `cancel`; HAProxy is stopped before this returns.
    pub async fn run(self, cancel: CancellationToken) {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = self.ready.notified() => {}
        }
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let exited = match self.spawn() {
                Ok(mut child) => {
                    let started = Instant::now();
                    let ready = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => {
                            self.stop(child).await;
                            return;
                        }
                        status = child.wait() => Err(describe(status)),
                        () = self.wait_ready() => Ok(()),
                    };
                    if let Err(exited) = ready {
                        exited
                    } else {
                        self.publish(child.id());
                        tracing::info!(pid = child.id(), "managed HAProxy runs");
                        self.changed.notify_one();
                        tokio::select! {
                            biased;
                            _ = cancel.cancelled() => {
                                self.stop(child).await;
                                self.publish(None);
                                return;
                            }
                            status = child.wait() => {
                                if started.elapsed() >= STABLE_AFTER {
                                    backoff.reset();
                                }
                                describe(status)
                            }
                        }
                    }
                }
                Err(e) => format!("cannot start {}: {e}", self.config.binary.display()),
            };
            self.publish(None);
            Counters::inc(&self.counters.haproxy_exits);
            let delay = backoff.next_delay();
            tracing::error!(why = %exited, restart_in = ?delay, "managed HAProxy is not running; restarting it");
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = sleep(delay) => {}
            }
        }
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.config.binary);
        common::child_env::restrict(&mut cmd);
        // Mode 600: the master CLI can reload and stop HAProxy and read its state.
        let mut master = self.master_socket.clone().into_os_string();
        master.push(",mode,600");
        cmd.arg("-W")
            .arg("-S")
            .arg(master)
            .arg("-f")
            .arg(&self.config_file);
        if let Some(p) = &self.pid_file {
            cmd.arg("-p").arg(p);
        }
        // Its own process group: a Ctrl-C meant for synapse does not hard-stop HAProxy;
        // synapse stops it softly instead.
        cmd.stdin(Stdio::null()).kill_on_drop(true).process_group(0);
        let child = cmd.spawn()?;
        Counters::inc(&self.counters.haproxy_starts);
        tracing::info!(pid = child.id(), binary = %self.config.binary.display(), "starting managed HAProxy");
        Ok(child)
    }

    /// Until the master lists a worker (it has loaded the config and bound its
    /// sockets), for at most `READY_TIMEOUT`.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(procs) = runtime::show_proc(&self.master_socket).await {
                if !procs.workers.is_empty() {
                    return;
                }
            }
            sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!(timeout = ?READY_TIMEOUT, "managed HAProxy did not list a worker in time");
    }

    fn publish(&self, master_pid: Option<u32>) {
        self.state.send_modify(|s| {
            if master_pid.is_some() {
                s.generation += 1;
            }
            s.master_pid = master_pid;
        });
    }

    /// Soft stop, then SIGTERM, then SIGKILL.
    async fn stop(&self, mut child: Child) {
        let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
            return;
        };
        let pid = Pid::from_raw(pid);
        let _ = kill(pid, Signal::SIGUSR1);
        if let Ok(status) = timeout(self.config.stop_timeout, child.wait()).await {
            tracing::info!(status = %describe(status), "managed HAProxy stopped");
            return;
        }
        tracing::warn!(stop_timeout = ?self.config.stop_timeout, "managed HAProxy did not finish its connections in time; terminating it");
        let _ = kill(pid, Signal::SIGTERM);
        if timeout(KILL_GRACE, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => format!("HAProxy exited ({s})"),
        Err(e) => format!("cannot wait for HAProxy: {e}"),
    }
}
