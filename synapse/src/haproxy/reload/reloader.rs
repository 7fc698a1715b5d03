//! Reloading HAProxy ([`Reloader`]'s methods): by `reload_command`, `reload` on the
//! master CLI, or SIGUSR2 to the master; confirmed through the master CLI when it is
//! known, and sent again when the master did not act on it.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::{sleep, Instant};

use super::{run, Failure, ReloadError, Reloaded, Reloader};
use crate::config::{HaproxyConfig, ReloadMethod};
use crate::haproxy::answers::{self, ProcessList};
use crate::haproxy::runtime;

/// How long one reload may take to show up in `show proc`.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// A reload the master did not act on is sent again, this many times in all.
const RELOAD_ATTEMPTS: u32 = 3;

impl Reloader {
    pub fn new(h: &HaproxyConfig) -> Self {
        Self {
            method: h.reload_method.clone(),
            master_socket: h.master_socket_path.clone(),
            pid_file: h.pid_file_path.clone(),
            timeout: h.command_timeout,
        }
    }

    /// Whether reloads are on.
    pub fn enabled(&self) -> bool {
        self.method.is_some()
    }

    pub fn master_socket(&self) -> Option<&Path> {
        self.master_socket.as_deref()
    }

    /// Reloads once, and with a master CLI confirms it (sending it again up to 3 times
    /// when the master did not act on it). `master_pid` is the managed child's, for the
    /// signal method.
    pub async fn reload(&self, master_pid: Option<u32>) -> Result<Reloaded, ReloadError> {
        let Some(method) = &self.method else {
            return Ok(Reloaded { confirmed: false });
        };
        let Some(master) = &self.master_socket else {
            self.trigger(method, master_pid).await?;
            return Ok(Reloaded { confirmed: false });
        };
        let before = runtime::show_proc(master)
            .await
            .map_err(ReloadError::Master)?;
        let mut last = String::new();
        for _ in 0..RELOAD_ATTEMPTS {
            match self
                .trigger(method, master_pid.or(Some(before.master_pid)))
                .await
            {
                Ok(()) => {}
                // The master is re-executing (an earlier reload): see what show proc says.
                Err(ReloadError::Master(e)) => last = e.to_string(),
                Err(e) => return Err(e),
            }
            let deadline = Instant::now() + CONFIRM_TIMEOUT;
            while Instant::now() < deadline {
                match runtime::show_proc(master).await {
                    Ok(after) if after.reloads > before.reloads => {
                        if after.failed_reloads > 0 {
                            return Err(ReloadError::Refused {
                                procs: format!("{after:?}"),
                            });
                        }
                        if has_new_worker(&before, &after) {
                            return Ok(Reloaded { confirmed: true });
                        }
                        last = format!("no new worker yet: {after:?}");
                    }
                    Ok(after) => last = format!("not counted yet: {after:?}"),
                    // Refused connections while the master re-executes.
                    Err(e) => last = e.to_string(),
                }
                sleep(Duration::from_millis(5)).await;
            }
        }
        Err(ReloadError::NotConfirmed {
            attempts: RELOAD_ATTEMPTS,
            last,
        })
    }

    async fn trigger(
        &self,
        method: &ReloadMethod,
        master_pid: Option<u32>,
    ) -> Result<(), ReloadError> {
        match method {
            ReloadMethod::Command(c) => match run(shell(c), c, self.timeout).await? {
                Ok(()) => Ok(()),
                Err(Failure { status, output, .. }) => {
                    Err(ReloadError::ReloadFailed { status, output })
                }
            },
            ReloadMethod::MasterSocket => {
                let master = self
                    .master_socket
                    .as_deref()
                    .ok_or(ReloadError::NotRunning)?;
                let answer = runtime::master_command(master, "reload")
                    .await
                    .map_err(ReloadError::Master)?;
                // 2.7+: `Success=0` and the startup log when the new config failed.
                if answer.contains("Success=0") {
                    return Err(ReloadError::Refused {
                        procs: answers::summarize(&answer),
                    });
                }
                Ok(())
            }
            ReloadMethod::Signal => {
                let pid = match (master_pid, &self.pid_file) {
                    (Some(pid), _) => pid,
                    (None, Some(path)) => read_pid(path)?,
                    (None, None) => return Err(ReloadError::NotRunning),
                };
                let raw = i32::try_from(pid).map_err(|_| ReloadError::NotRunning)?;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(raw),
                    nix::sys::signal::Signal::SIGUSR2,
                )
                .map_err(|source| ReloadError::Signal { pid, source })
            }
        }
    }
}

fn has_new_worker(before: &ProcessList, after: &ProcessList) -> bool {
    after.workers.iter().any(|w| !before.workers.contains(w))
}

pub(super) fn read_pid(path: &Path) -> Result<u32, ReloadError> {
    let err = |source| ReloadError::PidFile {
        path: path.to_owned(),
        source,
    };
    let invalid = |why: String| err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    let text = std::fs::read_to_string(path).map_err(err)?;
    let pid: u32 = text
        .trim()
        .parse()
        .map_err(|_| invalid("not a PID".to_owned()))?;
    // 0 signals our own process group, 1 is init: a stale or forged pid file must not
    // make synapse signal anything but HAProxy.
    if pid <= 1 {
        return Err(invalid(format!("PID {pid} is not HAProxy's")));
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim_end() != "haproxy" {
        return Err(invalid(format!(
            "PID {pid} is not a haproxy process (it is {:?}); is the pid file stale?",
            comm.trim_end()
        )));
    }
    Ok(pid)
}

pub(super) fn shell(command: &str) -> Command {
    let mut cmd = Command::new("sh");
    // Never synapse's AWS or etcd credentials (`common::child_env`).
    common::child_env::restrict(&mut cmd);
    cmd.arg("-c").arg(command);
    cmd
}
