//! Putting a rendered haproxy.cfg in place, and reloading HAProxy.
//!
//! Writing is atomic: the text goes to a temporary file in the config's own directory,
//! is fsynced, optionally checked (`check_command`, e.g. `haproxy -c -f`), renamed over
//! the old file, and the directory is fsynced. HAProxy (or the seed's file watcher in
//! another container) therefore only ever sees the old file or the new one, and a
//! candidate that fails the check never replaces a working file.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::config::HaproxyConfig;

/// Why writing or reloading failed. The reconciler retries both with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the check command refused the candidate config ({status}): {output}")]
    CheckFailed { status: String, output: String },
    #[error("the reload command failed ({status}): {output}")]
    ReloadFailed { status: String, output: String },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("the file writer task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// Writes haproxy.cfg and runs HAProxy's check and reload commands.
#[derive(Debug, Clone)]
pub struct Writer {
    /// `None` with `do_writes: false`.
    config_path: Option<PathBuf>,
    candidate_path: Option<PathBuf>,
    check: Option<Check>,
    reload_command: Option<String>,
    timeout: Duration,
}

#[derive(Debug, Clone)]
enum Check {
    /// `haproxy -c -q -f <candidate>`, run without a shell.
    Haproxy,
    /// The operator's `check_command`, run by `sh -c`, with the candidate's path in
    /// `SYNAPSE_CANDIDATE_CONFIG`.
    Shell(String),
}

/// Where the file watcher of another container, or `haproxy -c`, finds the candidate.
pub const CANDIDATE_ENV: &str = "SYNAPSE_CANDIDATE_CONFIG";

impl Writer {
    pub fn new(h: &HaproxyConfig) -> Self {
        let check = h.do_checks.then(|| match &h.check_command {
            Some(c) => Check::Shell(c.clone()),
            None => Check::Haproxy,
        });
        Self {
            config_path: h.config_file_path.clone(),
            candidate_path: h.candidate_config_file_path.clone(),
            check,
            reload_command: h.reload_command.clone().filter(|_| h.do_reloads),
            timeout: h.command_timeout,
        }
    }

    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    pub fn reloads(&self) -> bool {
        self.reload_command.is_some()
    }

    /// Puts `text` in place (checked first, when checks are on). Without a config path
    /// (`do_writes: false`) this does nothing.
    pub async fn write(&self, text: &str) -> Result<(), ReloadError> {
        let Some(path) = self.config_path.clone() else {
            return Ok(());
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        let Some(check) = &self.check else {
            let text = text.to_owned();
            return tokio::task::spawn_blocking(move || write_atomically(&dir, &path, &text))
                .await?;
        };
        let candidate = self
            .candidate_path
            .clone()
            .unwrap_or_else(|| with_suffix(&path, ".tmp"));
        let bytes = text.to_owned();
        let cand = candidate.clone();
        tokio::task::spawn_blocking(move || write_synced(&cand, &bytes)).await??;
        let checked = match check {
            Check::Haproxy => {
                let mut cmd = Command::new("haproxy");
                cmd.arg("-c").arg("-q").arg("-f").arg(&candidate);
                // Exit 2: "no error but will not start (no listener)", e.g. while every
                // service is backend-only. Not a reason to keep an outdated file.
                self.run(cmd, "haproxy -c").await.map(|r| match r {
                    Err(f) if f.code == Some(2) => Ok(()),
                    other => other,
                })
            }
            Check::Shell(c) => {
                let mut cmd = shell(c);
                cmd.env(CANDIDATE_ENV, &candidate);
                self.run(cmd, c).await
            }
        };
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(Failure { status, output, .. })) => {
                let _ = std::fs::remove_file(&candidate);
                return Err(ReloadError::CheckFailed { status, output });
            }
            Err(e) => {
                let _ = std::fs::remove_file(&candidate);
                return Err(e);
            }
        }
        tokio::task::spawn_blocking(move || {
            std::fs::rename(&candidate, &path).map_err(|source| ReloadError::Write {
                path: path.clone(),
                source,
            })?;
            sync_dir(&dir)
        })
        .await?
    }

    /// Runs the reload command.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let Some(c) = &self.reload_command else {
            return Ok(());
        };
        match self.run(shell(c), c).await? {
            Ok(()) => Ok(()),
            Err(Failure { status, output, .. }) => {
                Err(ReloadError::ReloadFailed { status, output })
            }
        }
    }

    /// Runs a command with the timeout; `Ok(Err(_))` when it exits non-zero.
    async fn run(&self, mut cmd: Command, name: &str) -> Result<Result<(), Failure>, ReloadError> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| ReloadError::Spawn {
            command: name.to_owned(),
            source,
        })?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(out) => out.map_err(|source| ReloadError::Spawn {
                command: name.to_owned(),
                source,
            })?,
            Err(_) => {
                return Err(ReloadError::Timeout {
                    command: name.to_owned(),
                    timeout: self.timeout,
                })
            }
        };
        if out.status.success() {
            return Ok(Ok(()));
        }
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        Ok(Err(Failure {
            code: out.status.code(),
            status: out.status.to_string(),
            output: summarize(&text),
        }))
    }
}

/// A command that exited non-zero.
struct Failure {
    code: Option<i32>,
    status: String,
    output: String,
}

fn shell(command: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command);
    cmd
}

/// Command output for an error message: one line, bounded.
fn summarize(text: &str) -> String {
    const MAX: usize = 2000;
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line,
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Temp file in `dir` → fsync → rename over `path` → fsync `dir`.
pub fn write_atomically(dir: &Path, path: &Path, text: &str) -> Result<(), ReloadError> {
    let err = |source| ReloadError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".synapse-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(text.as_bytes()).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    // A temp file is created 0600; the file it replaces is read by HAProxy (another
    // user, or another container).
    set_readable(tmp.path()).map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    sync_dir(dir)
}

fn write_synced(path: &Path, text: &str) -> Result<(), ReloadError> {
    let err = |source| ReloadError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::create(path).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    set_readable(path).map_err(err)
}

fn set_readable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

fn sync_dir(dir: &Path) -> Result<(), ReloadError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| ReloadError::Write {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn writer(dir: &Path, extra: &str) -> Writer {
        let text = format!(
            r#"{{"services": {{"web": {{"discovery": {{"method": "base"}}}}}},
                "haproxy": {{"config_file_path": "{}/haproxy.cfg",
                             "reload_command": "echo reloaded >> {}/reloads"{extra}}}}}"#,
            dir.display(),
            dir.display()
        );
        let c = Config::parse(&text, None).unwrap();
        let h = c.haproxy.unwrap();
        Writer::new(&h)
    }

    #[tokio::test]
    async fn writes_atomically_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(dir.path(), "");
        w.write("global\n").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap(),
            "global\n"
        );
        w.reload().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("reloads")).unwrap(),
            "reloaded\n"
        );
        // No temp files left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[tokio::test]
    async fn a_failed_check_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(
            dir.path(),
            r#", "do_checks": true, "check_command": "grep -q good $SYNAPSE_CANDIDATE_CONFIG""#,
        );
        w.write("good\n").await.unwrap();
        let err = w.write("bad\n").await.unwrap_err();
        assert!(matches!(err, ReloadError::CheckFailed { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap(),
            "good\n"
        );
        assert!(!dir.path().join("haproxy.cfg.tmp").exists());
    }

    #[tokio::test]
    async fn real_haproxy_check_refuses_a_broken_config() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(dir.path(), r#", "do_checks": true"#);
        let good = "defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n    \
                    timeout server 1s\n\nlisten x\n    bind 127.0.0.1:1\n";
        w.write(good).await.unwrap();
        // Valid but without a listener (haproxy -c exits 2): still written.
        w.write("global\n    maxconn 10\n").await.unwrap();
        w.write(good).await.unwrap();
        let err = w
            .write("global\n    no-such-keyword 1\n")
            .await
            .unwrap_err();
        assert!(matches!(err, ReloadError::CheckFailed { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap(),
            good
        );
    }

    #[tokio::test]
    async fn reload_failure_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), "");
        w.reload_command = Some("echo boom >&2; exit 3".into());
        let err = w.reload().await.unwrap_err().to_string();
        assert!(err.contains("boom"), "{err}");
    }
}
