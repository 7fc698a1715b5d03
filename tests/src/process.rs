//! A child process that is always stopped, signalled by its PID (and its own process
//! group, for the children it forks), never by name, so parallel tests and other users'
//! processes are never touched.
//!
//! `Drop` covers a passing or panicking test. For a test runner that dies without
//! unwinding (SIGKILL, a Ctrl-C, which our children in their own process groups do not
//! receive), the child is started through `setpriv --pdeathsig KILL` (util-linux), so
//! the kernel kills it when the thread that started it is gone. That thread is the
//! test's own thread (or a runtime worker), which outlives the handle.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// How a process is asked to stop when its owner is dropped.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OnDrop {
    /// SIGKILL at once (its state is thrown away anyway).
    Kill,
    /// SIGTERM, then SIGKILL after the grace period.
    Terminate(Duration),
}

/// A spawned child in its own process group, with stdout and stderr appended to a log file.
#[derive(Debug)]
pub(crate) struct ChildProcess {
    child: Child,
    log: PathBuf,
    on_drop: OnDrop,
}

impl ChildProcess {
    pub(crate) fn spawn(command: Command, log: &Path, on_drop: OnDrop) -> io::Result<Self> {
        use std::os::unix::process::CommandExt;
        let out = File::options().create(true).append(true).open(log)?;
        let mut command = with_parent_death_signal(command);
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own group: the workers HAProxy forks can be killed with it, and a
            // Ctrl-C in the terminal reaches only the test runner, which cleans up.
            .process_group(0);
        let child = command.spawn()?;
        Ok(Self {
            child,
            log: log.to_owned(),
            on_drop,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn nix_pid(&self) -> Pid {
        // PIDs fit in i32 on Linux (pid_max ≤ 2^22).
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    /// Sends `signal` to the process itself. Safe while we have not reaped it: until then
    /// its PID cannot be reused.
    pub(crate) fn signal(&self, signal: Signal) {
        let _ = kill(self.nix_pid(), signal);
    }

    /// The state letter from `/proc/<pid>/stat` (`R`, `S`, `T` stopped, `Z` exited, ...).
    pub(crate) fn state(&self) -> Option<char> {
        proc_state(self.child.id())
    }

    /// Whether it has exited (a zombie we have not reaped yet).
    pub(crate) fn has_exited(&self) -> bool {
        matches!(self.state(), None | Some('Z' | 'X'))
    }

    /// Where its output goes.
    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its log, for failure messages.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// SIGTERM (and SIGCONT, in case it is paused), waits up to `grace` for it to exit,
    /// then SIGKILLs whatever is left of its group and reaps it.
    pub(crate) async fn terminate(mut self, grace: Duration) {
        self.signal(Signal::SIGTERM);
        self.signal(Signal::SIGCONT);
        let deadline = tokio::time::Instant::now() + grace;
        while !self.has_exited() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill_and_reap();
    }

    /// SIGKILL to the group and reap. Also what `Drop` ends with.
    pub(crate) fn kill_and_reap(&mut self) {
        // Before reaping, the leader's PID (= the group id) cannot be reused, so this
        // reaches only our process and the children it forked.
        let _ = killpg(self.nix_pid(), Signal::SIGKILL);
        let _ = kill(self.nix_pid(), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let OnDrop::Terminate(grace) = self.on_drop {
            self.signal(Signal::SIGTERM);
            self.signal(Signal::SIGCONT);
            // Drop cannot await; this blocks a runtime thread for at most `grace`, in
            // teardown only.
            let deadline = std::time::Instant::now() + grace;
            while !self.has_exited() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.kill_and_reap();
    }
}

/// `setpriv --pdeathsig KILL -- <command>` when setpriv exists; it execs the command,
/// so the PID we get is the command's. (Setting it ourselves needs `unsafe` `pre_exec`,
/// which the workspace forbids.)
fn with_parent_death_signal(command: Command) -> Command {
    const SETPRIV: &str = "/usr/bin/setpriv";
    if !Path::new(SETPRIV).exists() {
        return command;
    }
    let mut wrapped = Command::new(SETPRIV);
    wrapped
        .args(["--pdeathsig", "KILL", "--"])
        .arg(command.get_program())
        .args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}

pub(crate) fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ...`; comm may contain spaces and parentheses, so split at the last ')'.
    let (_, after) = stat.rsplit_once(')')?;
    after.trim_start().chars().next()
}

pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Whether this process runs as root (`/proc/self` belongs to the effective user): some
/// servers drop privileges then, and need their files handed over.
pub(crate) fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
