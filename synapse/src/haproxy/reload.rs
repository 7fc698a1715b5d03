//! Putting a rendered haproxy.cfg in place, and reloading HAProxy.
//!
//! Writing is atomic: the text goes to a temporary file in the config's own directory,
//! is fsynced, checked (`check_command`, or `haproxy -c -f`), renamed over
//! the old file, and the directory is fsynced. HAProxy (or the seed's file watcher in
//! another container) therefore only ever sees the old file or the new one, and a
//! candidate that fails the check never replaces a working file.
//!
//! Reloading ([`Reloader`], its methods in `reload/reloader.rs`) is one of
//! `reload_command`, `reload` on the master CLI, or SIGUSR2 to the master. When the
//! master CLI is known, every reload is confirmed with `show proc` (one more reload
//! counted, `[failed: 0]`, a new worker) and sent again when the master did not act on
//! it: HAProxy 2.6 drops a reload that arrives too soon after the previous one, and its
//! `reload` command answers nothing (2.7+ answer `Success=0|1`, which is read too).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;

use super::answers::{summarize, summarize_to};
use super::runtime::SocketError;
use crate::config::{HaproxyConfig, ReloadMethod};
use crate::failpoint;

mod reloader;

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
    #[error("HAProxy's master CLI")]
    Master(#[source] SocketError),
    #[error("HAProxy refused the new config (the old one keeps running); `show proc`: {procs}")]
    Refused { procs: String },
    #[error("the reload was not confirmed after {attempts} attempts: {last}")]
    NotConfirmed { attempts: u32, last: String },
    #[error("cannot read the master PID from {path}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot signal the HAProxy master (PID {pid})")]
    Signal {
        pid: u32,
        #[source]
        source: nix::Error,
    },
    #[error("HAProxy is not running")]
    NotRunning,
}

/// Writes haproxy.cfg and runs HAProxy's check and reload commands.
#[derive(Debug, Clone)]
pub struct Writer {
    /// `None` with `do_writes: false`.
    config_path: Option<PathBuf>,
    candidate_path: Option<PathBuf>,
    /// haproxy.cfg's (and the candidate's) mode and group.
    mode: FileMode,
    /// Always set: `do_checks: false` does not switch it off (issue 17).
    check: Check,
    timeout: Duration,
    /// The check runs at the lowest CPU priority (`SCHED_IDLE`): the deferred write's,
    /// which shares the cores with HAProxy and the runtime path (see [`Self::deferred`]).
    lowered: bool,
}

#[derive(Debug, Clone)]
enum Check {
    /// `haproxy -c -f <candidate>`, run without a shell.
    Haproxy,
    /// The operator's `check_command`, run by `sh -c`, with the candidate's path in
    /// `SYNAPSE_CANDIDATE_CONFIG`.
    Shell(String),
}

/// The name prefix of the temp files of atomic writes.
const TEMP_PREFIX: &str = ".synapse-";

/// Where the file watcher of another container, or `haproxy -c`, finds the candidate.
pub const CANDIDATE_ENV: &str = "SYNAPSE_CANDIDATE_CONFIG";

impl Writer {
    pub fn new(h: &HaproxyConfig) -> Self {
        let check = match &h.check_command {
            Some(c) => Check::Shell(c.clone()),
            None => Check::Haproxy,
        };
        Self {
            config_path: h.config_file_path.clone(),
            candidate_path: h.candidate_config_file_path.clone(),
            mode: FileMode {
                mode: h.config_file_mode,
                group: group_id("haproxy"),
            },
            check,
            timeout: h.command_timeout,
            lowered: false,
        }
    }

    /// This writer for a write nothing waits for (haproxy.cfg following the runtime
    /// API): its check runs under `SCHED_IDLE` (`chrt --idle 0`; `nice -n 19` where
    /// there is no `chrt`), so that a 100,000-server `haproxy -c` (~1 s of CPU) only
    /// takes what HAProxy, etcd and the changes being applied leave idle: a task woken on
    /// its core preempts it at once, where a niced one could wait for its time slice.
    pub fn deferred(&self) -> Self {
        Self {
            lowered: true,
            ..self.clone()
        }
    }

    /// `program`, at the lowest priority when `lowered`, without synapse's secrets
    /// in its environment (`common::child_env`).
    fn command(&self, program: &str) -> Command {
        let mut cmd = if self.lowered {
            let mut idle = if has_chrt() {
                let mut chrt = Command::new("chrt");
                chrt.args(["--idle", "0"]);
                chrt
            } else {
                let mut nice = Command::new("nice");
                nice.args(["-n", "19"]);
                nice
            };
            idle.arg(program);
            idle
        } else {
            Command::new(program)
        };
        common::child_env::restrict(&mut cmd);
        cmd
    }

    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// Removes what a crash in the middle of a write left next to haproxy.cfg: the
    /// candidate and the temp files of atomic writes. Run once at start-up, before any
    /// write of this process.
    pub fn remove_leftovers(&self) {
        let Some(path) = &self.config_path else {
            return;
        };
        let candidate = self
            .candidate_path
            .clone()
            .unwrap_or_else(|| with_suffix(path, ".tmp"));
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let temps = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(TEMP_PREFIX) && n.ends_with(".tmp"))
            });
        for leftover in std::iter::once(candidate).chain(temps) {
            match std::fs::remove_file(&leftover) {
                Ok(()) => {
                    tracing::info!(file = %leftover.display(), "removed a temp file an earlier run left behind");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %leftover.display(), error = %e, "cannot remove a leftover temp file");
                }
            }
        }
    }

    /// Puts `text` in place, checked first when `check` is set (every write that a
    /// reload or a start will read). Without a config path (`do_writes: false`) this
    /// does nothing.
    pub async fn write(&self, text: &str, check: bool) -> Result<(), ReloadError> {
        let Some(path) = self.config_path.clone() else {
            return Ok(());
        };
        if !check {
            return self.write_unchecked(Arc::from(text)).await;
        }
        let dir = parent_dir(&path);
        let (candidate, temp) = self.check_candidate(text, &dir, &path).await?;
        tokio::task::spawn_blocking(move || {
            let renamed = match temp {
                Some(t) => t.persist(&path).map_err(|e| e.error),
                None => std::fs::rename(&candidate, &path),
            };
            renamed.map_err(|source| ReloadError::Write {
                path: path.clone(),
                source,
            })?;
            sync_dir(&dir)?;
            failpoint::hit("after_rename");
            Ok(())
        })
        .await?
    }

    /// Puts `text` in place unchecked; it is shared, not copied, with the thread that
    /// writes it (at 100,000 servers a copy is 8.5 MB, 2–3 ms of a tokio worker).
    async fn write_unchecked(&self, text: Arc<str>) -> Result<(), ReloadError> {
        let Some(path) = self.config_path.clone() else {
            return Ok(());
        };
        let (dir, mode) = (parent_dir(&path), self.mode);
        if self.lowered {
            lowered(move || write_atomically_paced(&dir, &path, &text, mode, Some(PACED_CHUNK)))
                .await?
        } else {
            tokio::task::spawn_blocking(move || write_atomically_with(&dir, &path, &text, mode))
                .await?
        }
    }

    /// [`Self::write`] with the check (when `check`) on `reduced` first: `text` with
    /// the `server` lines of the services unchanged since the last file `haproxy -c`
    /// accepted left out ([`crate::haproxy::config::RenderedParts::text_checking_only`]).
    /// The rest of `text` is that accepted file's, so the check need not read it again:
    /// at 100,000 servers it is ~1 s of CPU for a change to one service. When the
    /// reduced file is refused, the whole one is checked (a refusal is then the whole
    /// file's, and names its servers as before). Only the default check, without a
    /// `candidate_config_file_path` (what an operator's command or another container
    /// reads is always the whole file).
    pub async fn write_checking(
        &self,
        text: &Arc<str>,
        check: bool,
        reduced: Option<&str>,
    ) -> Result<(), ReloadError> {
        let plain = matches!(self.check, Check::Haproxy) && self.candidate_path.is_none();
        if let Some(reduced) = reduced.filter(|_| check && plain) {
            let started = std::time::Instant::now();
            match self.check_only(reduced).await {
                Ok(()) => {
                    let checked = started.elapsed();
                    let written = self.write_unchecked(Arc::clone(text)).await;
                    tracing::debug!(check = ?checked, write = ?started.elapsed() - checked, "reduced check and write");
                    return written;
                }
                Err(output) => {
                    tracing::debug!(output = %summarize(&output), "the reduced check refused; checking the whole file");
                }
            }
        }
        if check {
            self.write(text, true).await
        } else {
            self.write_unchecked(Arc::clone(text)).await
        }
    }

    /// Runs the check on `text` without putting it in place (the bisection of refused
    /// servers). `Err` holds the check's output, or why it could not run.
    pub async fn check_only(&self, text: &str) -> Result<(), String> {
        let Some(path) = &self.config_path else {
            return Ok(());
        };
        match self.check_candidate(text, &parent_dir(path), path).await {
            Ok((candidate, temp)) => {
                // A temp candidate goes when dropped; a configured one is removed.
                if temp.is_none() {
                    let _ = std::fs::remove_file(&candidate);
                }
                Ok(())
            }
            Err(ReloadError::CheckFailed { output, .. }) => Err(output),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Writes `text` as a candidate next to `path` and checks it. The candidate is
    /// created like the final file: a unique name in the same directory (`O_EXCL`, so
    /// never through a symlink or into someone else's file), its mode set on the open
    /// handle; a configured `candidate_config_file_path` gets it by rename, which
    /// replaces a symlink rather than following it. On success: the candidate's path,
    /// and its temp handle unless it was renamed to the configured path. On failure
    /// the candidate is gone.
    async fn check_candidate(
        &self,
        text: &str,
        dir: &Path,
        path: &Path,
    ) -> Result<(PathBuf, Option<tempfile::TempPath>), ReloadError> {
        let bytes = text.to_owned();
        let fixed = self.candidate_path.clone();
        let (d, p, mode) = (dir.to_owned(), path.to_owned(), self.mode);
        failpoint::hit("before_tmp_write");
        let (candidate, temp) = tokio::task::spawn_blocking(move || {
            // A failed write drops the temp file: nothing half-written stays.
            let tmp = write_temp(&d, &p, &bytes, mode, None)?;
            match fixed {
                Some(c) => {
                    tmp.persist(&c).map_err(|e| ReloadError::Write {
                        path: c.clone(),
                        source: e.error,
                    })?;
                    Ok::<_, ReloadError>((c, None))
                }
                None => {
                    let t = tmp.into_temp_path();
                    Ok((t.to_path_buf(), Some(t)))
                }
            }
        })
        .await??;
        let checked = match &self.check {
            Check::Haproxy => {
                let mut cmd = self.command("haproxy");
                // Not `-q`: its `[ALERT]` lines name the refused server.
                cmd.arg("-c").arg("-f").arg(&candidate);
                // Exit 2: "no error but will not start (no listener)", e.g. while every
                // service is backend-only. Not a reason to keep an outdated file.
                run(cmd, "haproxy -c", self.timeout).await.map(|r| match r {
                    Err(f) if f.code == Some(2) => Ok(()),
                    other => other,
                })
            }
            Check::Shell(c) => {
                let mut cmd = self.command("sh");
                cmd.arg("-c").arg(c).env(CANDIDATE_ENV, &candidate);
                run(cmd, c, self.timeout).await
            }
        };
        let failed = match checked {
            Ok(Ok(())) => {
                failpoint::hit("after_check");
                return Ok((candidate, temp));
            }
            Ok(Err(Failure { status, output, .. })) => ReloadError::CheckFailed { status, output },
            Err(e) => e,
        };
        if temp.is_none() {
            let _ = std::fs::remove_file(&candidate);
        }
        Err(failed)
    }
}

/// Runs `work` on a thread of its own at the lowest priority (nice 19): the CPU-heavy
/// parts of the deferred write (at 100,000 servers: joining and comparing 8.5 MB,
/// copying it into the file, some 30–70 ms of a core) then yield the cores to HAProxy
/// and to the changes being applied meanwhile. A new thread per call (at most one write
/// a second), so that no pooled thread keeps the low priority.
pub async fn lowered<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ReloadError> {
    let spawn_error = |source| ReloadError::Spawn {
        command: "the deferred write's thread".to_owned(),
        source,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("synapse-write".to_owned())
        .spawn(move || {
            // On Linux a thread's nice value is its own; at worst it runs at the
            // normal priority.
            let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19);
            let _ = tx.send(work());
        })
        .map_err(spawn_error)?;
    rx.await
        .map_err(|_| spawn_error(std::io::Error::other("it ended without an answer")))
}

/// Whether util-linux's `chrt` is on `PATH` (in every Debian root: util-linux is
/// essential; another base image may lack it).
fn has_chrt() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("chrt").is_file()))
    })
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned()
}

/// Runs a command with a timeout; `Ok(Err(_))` when it exits non-zero.
async fn run(
    mut cmd: Command,
    name: &str,
    timeout: Duration,
) -> Result<Result<(), Failure>, ReloadError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| ReloadError::Spawn {
        command: name.to_owned(),
        source,
    })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out.map_err(|source| ReloadError::Spawn {
            command: name.to_owned(),
            source,
        })?,
        Err(_) => {
            return Err(ReloadError::Timeout {
                command: name.to_owned(),
                timeout,
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
        // Command output for an error message: one line, bounded.
        output: summarize_to(&text, 2000),
    }))
}

/// Reloads HAProxy by the configured method, confirmed through the master CLI when known.
#[derive(Debug, Clone)]
pub struct Reloader {
    /// `None` with `do_reloads: false`.
    method: Option<ReloadMethod>,
    master_socket: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    timeout: Duration,
}

/// A reload that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloaded {
    /// `show proc` showed the new worker (only with a master CLI).
    pub confirmed: bool,
}

/// A command that exited non-zero.
struct Failure {
    code: Option<i32>,
    status: String,
    output: String,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Permission bits and group of a file synapse writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode {
    pub mode: u32,
    /// Set when `Some` (and allowed: a failure to change it is only logged).
    pub group: Option<u32>,
}

impl FileMode {
    /// 0644: files other programs read (file_output, the server state).
    pub const PUBLIC: Self = Self {
        mode: 0o644,
        group: None,
    };
}

/// A group's id from `/etc/group`, if the group exists.
pub fn group_id(name: &str) -> Option<u32> {
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(name))
                .then(|| fields.nth(1)?.parse().ok())
                .flatten()
        })
}

/// Temp file in `dir` → fsync → rename over `path` → fsync `dir`, mode 0644.
pub fn write_atomically(dir: &Path, path: &Path, text: &str) -> Result<(), ReloadError> {
    write_atomically_with(dir, path, text, FileMode::PUBLIC)
}

/// [`write_atomically`] with this mode and group.
pub fn write_atomically_with(
    dir: &Path,
    path: &Path,
    text: &str,
    mode: FileMode,
) -> Result<(), ReloadError> {
    write_atomically_paced(dir, path, text, mode, None)
}

/// The deferred write's pace: this much is written and flushed at a time, then the
/// thread pauses for [`PACED_PAUSE`]. At 100,000 servers one 8.5 MB write and fsync
/// kept the kernel's writeback busy for ~10 ms at once, long enough to delay HAProxy.
const PACED_CHUNK: usize = 512 * 1024;
const PACED_PAUSE: Duration = Duration::from_millis(3);

/// [`write_atomically_with`], written and flushed `chunk` bytes at a time with a pause
/// between (`None`: at once).
fn write_atomically_paced(
    dir: &Path,
    path: &Path,
    text: &str,
    mode: FileMode,
    chunk: Option<usize>,
) -> Result<(), ReloadError> {
    let err = |source| ReloadError::Write {
        path: path.to_owned(),
        source,
    };
    failpoint::hit("before_tmp_write");
    let tmp = write_temp(dir, path, text, mode, chunk)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    sync_dir(dir)?;
    failpoint::hit("after_rename");
    Ok(())
}

/// `text` in a new temp file in `dir` (`.synapse-XXXXXX.tmp`: `O_CREAT|O_EXCL`, so never
/// an existing file or a symlink), fsynced, its mode set through the open handle.
/// Deleted if dropped. `path` is the file it stands for, for errors.
fn write_temp(
    dir: &Path,
    path: &Path,
    text: &str,
    mode: FileMode,
    chunk: Option<usize>,
) -> Result<tempfile::NamedTempFile, ReloadError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| ReloadError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(err)?;
    match chunk {
        None => tmp.write_all(text.as_bytes()).map_err(err)?,
        Some(n) => {
            for piece in text.as_bytes().chunks(n.max(1)) {
                tmp.write_all(piece).map_err(err)?;
                tmp.as_file().sync_data().map_err(err)?;
                std::thread::sleep(PACED_PAUSE);
            }
        }
    }
    failpoint::hit("after_tmp_write");
    tmp.as_file().sync_all().map_err(err)?;
    failpoint::hit("after_fsync");
    // A temp file is created 0600; the file it replaces is read by HAProxy (another
    // user, or another container).
    if let Some(gid) = mode.group {
        if let Err(e) = std::os::unix::fs::fchown(tmp.as_file(), None, Some(gid)) {
            tracing::debug!(file = %path.display(), gid, error = %e, "cannot set the group");
        }
    }
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode.mode))
        .map_err(err)?;
    Ok(tmp)
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
mod tests;
