//! `exec`: healthy when a command exits 0 within the timeout. The command runs without a
//! shell (argv as configured) unless the config asks for one. It gets its own process
//! group, so a timeout kills whatever it started too, not just the first process, and an
//! allow-listed environment ([`common::child_env`]): never nerve's etcd password.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::process::Stdio;
use tokio::process::Command;

use super::{Check, CheckError};
use crate::config::ExecCheckConfig;

#[derive(Debug)]
pub struct ExecCheck {
    name: String,
    config: ExecCheckConfig,
}

impl ExecCheck {
    pub fn new(name: String, config: &ExecCheckConfig) -> Self {
        Self {
            name,
            config: config.clone(),
        }
    }
}

/// Kills the process group unless disarmed: on timeout, and when the check is abandoned
/// mid-run (nerve shutting down). Only armed while the group leader is not yet reaped,
/// so its pid cannot have been reused.
struct GroupKiller(Option<Pid>);

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // ESRCH (already gone) is fine.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Check for ExecCheck {
    async fn check(&self) -> Result<(), CheckError> {
        let Some((program, args)) = self.config.argv.split_first() else {
            return Err(CheckError::Unusable("empty command".into()));
        };
        let mut child = common::child_env::restrict(&mut Command::new(program))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(CheckError::Spawn)?;
        let mut killer = GroupKiller(
            child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .map(Pid::from_raw),
        );
        match tokio::time::timeout(self.config.timeout, child.wait()).await {
            Ok(result) => {
                // Reaped: the pid may be reused from now on.
                killer.0 = None;
                match result {
                    Ok(status) if status.success() => Ok(()),
                    Ok(status) => Err(CheckError::Exit(status)),
                    Err(e) => Err(CheckError::Spawn(e)),
                }
            }
            Err(_) => {
                killer.kill();
                let _ = child.wait().await;
                Err(CheckError::Timeout(self.config.timeout))
            }
        }
    }

    fn describe(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn check(argv: &[&str], timeout_ms: u64) -> ExecCheck {
        ExecCheck::new(
            "e".into(),
            &ExecCheckConfig {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                timeout: Duration::from_millis(timeout_ms),
            },
        )
    }

    #[tokio::test]
    async fn checks_get_an_allow_listed_environment() {
        // cargo runs tests with CARGO_* set (not allow-listed, like AWS_*).
        assert!(
            std::env::var_os("CARGO_MANIFEST_DIR").is_some(),
            "run under cargo"
        );
        check(
            &[
                "sh",
                "-c",
                r#"test -z "$CARGO_MANIFEST_DIR" && test -n "$PATH""#,
            ],
            5000,
        )
        .check()
        .await
        .expect("the check saw a secret or lost PATH");
    }

    #[tokio::test]
    async fn exit_status_decides() {
        check(&["true"], 5000).check().await.unwrap();
        assert!(matches!(
            check(&["false"], 5000).check().await,
            Err(CheckError::Exit(_))
        ));
        assert!(matches!(
            check(&["/nonexistent/program"], 5000).check().await,
            Err(CheckError::Spawn(_))
        ));
    }

    #[tokio::test]
    async fn no_shell_unless_asked() {
        // Without a shell, `$HOME` and `;` are plain arguments to test(1).
        check(&["test", "$HOME;", "=", "$HOME;"], 5000)
            .check()
            .await
            .unwrap();
        check(&["/bin/sh", "-c", "test -n \"$HOME\""], 5000)
            .check()
            .await
            .unwrap();
    }

    /// Running (not exited, not a zombie waiting for its parent).
    fn is_running(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let state = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .next()?
                    .to_owned();
                Some(state != "Z" && state != "X")
            })
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let started = tokio::time::Instant::now();
        let result = check(&["/bin/sh", "-c", &script], 1000).check().await;
        assert!(matches!(result, Err(CheckError::Timeout(_))), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let bg = std::fs::read_to_string(&pidfile).unwrap();
        let bg = bg.trim();
        // The background `sleep` was in the group and was killed with it.
        let deadline = started + Duration::from_secs(10);
        while is_running(bg) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "process {bg} of the timed-out check survived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
