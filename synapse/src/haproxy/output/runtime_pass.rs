//! Runtime passes: read what each stats socket's HAProxy runs (of every backend or of
//! some), plan the way to the desired model, send the commands; and the server state
//! saved before a reload.

use std::collections::BTreeSet;
use std::path::PathBuf;

use tokio::time::Instant;

use crate::counters::Counters;

use super::{HaproxyOutput, RuntimePass, DELETE_RETRY, VERIFY_INTERVAL};
use crate::haproxy::answers::summarize;
use crate::haproxy::plan::{
    self, plan_backends, plan_view, Desired, ReloadReason, RunningView, RuntimeCommand,
};
use crate::haproxy::reload::write_atomically;
use crate::haproxy::runtime::{Running, Session, SocketError};

impl HaproxyOutput {
    /// Reads what every stats socket's HAProxy runs, and applies the plan's commands:
    /// for every backend (and the rest of the config), or `only` some backends.
    pub(super) async fn runtime_pass(
        &mut self,
        desired: &Desired,
        only: Option<&[String]>,
    ) -> RuntimePass {
        let started = Instant::now();
        match only {
            // The periodic check's slice being read leaves these out (see `check`).
            Some(names) => self.note_touched(names),
            // This pass checks everything: a slice being read is moot.
            None => self.pending_check = None,
        }
        let mut pass = RuntimePass::default();
        let mut failed = false;
        for path in self.config.socket_file_paths.clone() {
            let read = match Session::open(&path).await {
                Ok(mut session) => session
                    .running(only)
                    .await
                    .map(|snapshot| (session, snapshot)),
                Err(e) => Err(e),
            };
            let applied = match read {
                Ok((session, snapshot)) => {
                    self.apply_snapshot(Some(session), &path, &snapshot, desired, only, &mut pass)
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = applied {
                failed = true;
                self.socket_failed(&path, &e, desired, &mut pass);
            }
        }
        self.pass_ended(failed, only.is_none(), &pass);
        tracing::debug!(backends = only.map(<[String]>::len), took = ?started.elapsed(), commands = pass.commands, "runtime pass");
        pass
    }

    /// A stats socket could not be read or written: counted and logged; a reload is
    /// due unless HAProxy already runs what is desired.
    pub(super) fn socket_failed(
        &self,
        path: &std::path::Path,
        e: &SocketError,
        desired: &Desired,
        pass: &mut RuntimePass,
    ) {
        Counters::inc(&self.counters.runtime_failures);
        let in_sync = self.loaded.as_ref() == Some(&desired.config);
        tracing::warn!(socket = %path.display(), error = %common::error::error_chain(e), in_sync, "the HAProxy runtime API failed");
        if !in_sync {
            pass.reload.get_or_insert(ReloadReason::NoRuntimeApi);
        }
    }

    /// After a pass over every socket (`whole`: of every backend).
    pub(super) fn pass_ended(&mut self, failed: bool, whole: bool, pass: &RuntimePass) {
        self.runtime_failed = failed;
        // Every socket answered with what HAProxy runs: whatever reload came before is
        // in force.
        self.unconfirmed_reload &= failed;
        let now = Instant::now();
        if whole {
            self.next_verify_at = Some(now + VERIFY_INTERVAL);
            self.verify_after = None;
            self.retry_deletes.clear();
            self.retry_deletes_at = None;
        }
        if !pass.retry_deletes.is_empty() {
            self.retry_deletes
                .extend(pass.retry_deletes.iter().cloned());
            self.retry_deletes_at.get_or_insert(now + DELETE_RETRY);
        }
    }

    /// Plans the way from `snapshot` (read from the socket at `path`) to `desired`, and
    /// sends the commands, over `session` or a new one.
    pub(super) async fn apply_snapshot(
        &mut self,
        session: Option<Session>,
        path: &std::path::Path,
        snapshot: &Running,
        desired: &Desired,
        only: Option<&[String]>,
        pass: &mut RuntimePass,
    ) -> Result<(), SocketError> {
        let Some(plan) = self.plan_snapshot(snapshot, desired, only) else {
            pass.reload.get_or_insert(ReloadReason::Initial);
            return Ok(());
        };
        if !plan.commands.is_empty() {
            let mut session = match session {
                Some(s) => s,
                None => Session::open(path).await?,
            };
            self.send_commands(&mut session, &plan, desired, pass)
                .await?;
        }
        if let Some(why) = plan.reload {
            pass.reload.get_or_insert(why);
        }
        Ok(())
    }

    async fn send_commands(
        &mut self,
        session: &mut Session,
        plan: &plan::Plan,
        desired: &Desired,
        pass: &mut RuntimePass,
    ) -> Result<(), SocketError> {
        let mut refused = BTreeSet::new();
        for cmd in &plan.commands {
            if refused.contains(&(cmd.backend().clone(), cmd.server().clone())) {
                // Its `add server` was refused: the rest of its commands would be too.
                continue;
            }
            let text = cmd.to_string();
            let answer = session.command(&text).await?;
            if cmd.succeeded(&answer) {
                tracing::debug!(command = %text, "runtime API");
                Counters::inc(&self.counters.runtime_commands);
                pass.commands += 1;
                self.note_applied(cmd, desired);
                continue;
            }
            if matches!(cmd, RuntimeCommand::Del { .. }) && answer.contains("connections") {
                // In maintenance already; deleted once its connections are gone.
                tracing::debug!(command = %text, answer = %answer.trim(), "server still has connections; deleting it later");
                pass.retry_deletes.insert(cmd.backend().as_str().to_owned());
                continue;
            }
            // The other servers' commands still go out; the file (checked, with the
            // refused servers found and left out) and a reload settle this one.
            Counters::inc(&self.counters.runtime_failures);
            tracing::warn!(command = %text, answer = %summarize(&answer), "HAProxy refused a runtime command; the checked file and a reload settle it");
            refused.insert((cmd.backend().clone(), cmd.server().clone()));
            pass.reload.get_or_insert(ReloadReason::CommandFailed {
                command: text,
                answer: summarize(&answer),
            });
        }
        Ok(())
    }

    /// Reads what the HAProxy behind `session` runs and plans the way to `desired`;
    /// `None` while what it loaded is unknown.
    pub(super) async fn running_plan(
        &self,
        session: &mut Session,
        desired: &Desired,
        only: Option<&[String]>,
    ) -> Result<Option<plan::Plan>, SocketError> {
        let snapshot = session.running(only).await?;
        Ok(self.plan_snapshot(&snapshot, desired, only))
    }

    fn plan_snapshot(
        &self,
        snapshot: &Running,
        desired: &Desired,
        only: Option<&[String]>,
    ) -> Option<plan::Plan> {
        let running = RunningView {
            caps: &snapshot.caps,
            loaded: self.loaded.as_ref()?,
            backends: &snapshot.backends,
            servers: &snapshot.servers,
        };
        Some(match only {
            None => plan_view(&running, desired),
            Some(names) => plan_backends(&running, desired, names),
        })
    }

    /// Keeps `loaded` equal to what runs after a command HAProxy accepted.
    pub(super) fn note_applied(&mut self, cmd: &RuntimeCommand, desired: &Desired) {
        let (b, s) = (cmd.backend().as_str(), cmd.server().as_str());
        let Some(backend) = self.loaded.as_mut().and_then(|m| m.backends.get_mut(b)) else {
            return;
        };
        match cmd {
            RuntimeCommand::Del { .. } => {
                backend.servers.remove(s);
            }
            _ => {
                if let Some(server) = desired
                    .config
                    .backends
                    .get(b)
                    .and_then(|d| d.servers.get(s))
                {
                    backend.servers.insert(s.to_owned(), server.clone());
                }
            }
        }
    }

    /// `show servers state` into the `server-state-file` from the `global` lines, so
    /// the new worker starts with the old one's health, weights and states. Best
    /// effort: without it a reload only loses that state.
    pub(super) async fn dump_server_state(&self) {
        let (Some(file), Some(socket)) = (
            self.config.server_state_file.clone(),
            self.config.socket_file_paths.first().cloned(),
        ) else {
            return;
        };
        let state = match Session::open(&socket).await {
            Ok(mut s) => s.servers_state_raw().await,
            Err(e) => Err(e),
        };
        let written = match state {
            Ok(mut text) => {
                text.push('\n');
                let dir = file
                    .parent()
                    .map_or_else(|| PathBuf::from("."), std::path::Path::to_owned);
                tokio::task::spawn_blocking(move || write_atomically(&dir, &file, &text))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| common::error::error_chain(&e)))
            }
            Err(e) => Err(common::error::error_chain(&e)),
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot save the server state before the reload");
        }
    }
}
