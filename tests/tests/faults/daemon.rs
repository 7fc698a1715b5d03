//! nerve and synapse as child processes: this test binary re-executed into its
//! `nerve_child` or `synapse_child` entry point, so a scenario can SIGKILL, SIGSTOP and
//! SIGTERM them by PID.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use integration_tests::{eventually, Workdir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::profile::TIMEOUT;

pub(crate) const NERVE_CHILD_ENV: &str = "FAULTS_NERVE_CONFIG";

pub(crate) const SYNAPSE_CHILD_ENV: &str = "FAULTS_SYNAPSE_CONFIG";

/// A nerve or synapse process (this test binary, re-executed into `nerve_child` or
/// `synapse_child`); SIGKILLed on drop.
pub(crate) struct Daemon {
    pub(crate) entry: &'static str,
    pub(crate) env: Vec<(&'static str, String)>,
    pub(crate) child: Option<Child>,
    pub(crate) log: PathBuf,
}

impl Daemon {
    /// A nerve on `config`, logging to `<dir>/<name>.log`.
    pub(crate) fn nerve(
        dir: &Workdir,
        name: &str,
        config: &Value,
        env: Vec<(&'static str, String)>,
    ) -> Self {
        let config_path = dir.write(format!("{name}.json"), config.to_string());
        let mut all = vec![(NERVE_CHILD_ENV, config_path.display().to_string())];
        all.extend(env);
        Self::start(dir, name, "nerve_child", all)
    }

    /// A synapse on the config file `config`, with more environment variables (e.g.
    /// [`synapse::failpoint::ENV`]).
    pub(crate) fn synapse(
        dir: &Workdir,
        name: &str,
        config: &std::path::Path,
        env: Vec<(&'static str, String)>,
    ) -> Self {
        let mut all = vec![(SYNAPSE_CHILD_ENV, config.display().to_string())];
        all.extend(env);
        Self::start(dir, name, "synapse_child", all)
    }

    pub(crate) fn start(
        dir: &Workdir,
        name: &str,
        entry: &'static str,
        env: Vec<(&'static str, String)>,
    ) -> Self {
        let mut daemon = Self {
            entry,
            env,
            child: None,
            log: dir.join(format!("{name}.log")),
        };
        daemon.spawn();
        daemon
    }

    pub(crate) fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                self.entry,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start a child process");
        self.child = Some(child);
    }

    pub(crate) fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("not running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        kill(pid, signal).expect("signal a child process");
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL and reap.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit by itself; its status.
    pub(crate) async fn exited(&mut self) -> std::process::ExitStatus {
        let child = std::sync::Mutex::new(self.child.take().expect("not running"));
        eventually(TIMEOUT, || async {
            child.lock().expect("child").try_wait().ok().flatten()
        })
        .await
    }

    /// SIGTERM, then waits for the exit.
    pub(crate) async fn terminate(&mut self) {
        self.signal(Signal::SIGTERM);
        self.exited().await;
    }

    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process must be continued to die promptly and be reaped.
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
            let _ = kill(pid, Signal::SIGCONT);
        }
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- last lines of {} ---", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
