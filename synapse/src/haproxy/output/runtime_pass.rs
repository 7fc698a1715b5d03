//! Runtime passes: read what each stats socket's HAProxy runs (of every backend or of
//! some), plan the way to the desired model, send the commands; and the server state
//! saved before a reload.

use std::collections::BTreeSet;
use std::path::PathBuf;

use tokio::time::Instant;

use crate::counters::Counters;

use super::{HaproxyOutput, RuntimePass, DELETE_RETRY, VERIFY_INTERVAL};
use crate::haproxy::answers::{summarize, LiveServers};
use crate::haproxy::plan::{
    self, plan_backends, plan_view, Desired, ReloadReason, RunningView, RuntimeCommand,
};
use crate::haproxy::reload::write_atomically;
use crate::haproxy::runtime::{Session, SocketError};

impl HaproxyOutput {
    /// Reads what every stats socket's HAProxy runs, and applies the plan's commands:
    /// for every backend (and the rest of the config), or `only` some backends.
    pub(super) async fn runtime_pass(
        &mut self,
        desired: &Desired,
        only: Option<&[String]>,
    ) -> RuntimePass {
        let started = Instant::now();
        let mut pass = RuntimePass::default();
        let mut failed = false;
        for path in self.config.socket_file_paths.clone() {
            if let Err(e) = self.runtime_pass_on(&path, desired, only, &mut pass).await {
                failed = true;
                Counters::inc(&self.counters.runtime_failures);
                let in_sync = self.loaded.as_ref() == Some(&desired.config);
                tracing::warn!(socket = %path.display(), error = %common::error::error_chain(&e), in_sync, "the HAProxy runtime API failed");
                if !in_sync {
                    pass.reload.get_or_insert(ReloadReason::NoRuntimeApi);
                }
            }
        }
        self.runtime_failed = failed;
        tracing::debug!(backends = only.map(<[String]>::len), took = ?started.elapsed(), commands = pass.commands, "runtime pass");
        // Every socket answered with what HAProxy runs: whatever reload came before is
        // in force.
        self.unconfirmed_reload &= failed;
        let now = Instant::now();
        if only.is_none() {
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
        pass
    }

    pub(super) async fn runtime_pass_on(
        &mut self,
        path: &std::path::Path,
        desired: &Desired,
        only: Option<&[String]>,
        pass: &mut RuntimePass,
    ) -> Result<(), SocketError> {
        let mut session = Session::open(path).await?;
        let Some(plan) = self.running_plan(&mut session, desired, only).await? else {
            pass.reload.get_or_insert(ReloadReason::Initial);
            return Ok(());
        };
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
        if let Some(why) = plan.reload {
            pass.reload.get_or_insert(why);
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
        let caps = session.capabilities().await?;
        let backends = session.backends().await?;
        let servers = match only {
            None => session.servers().await?,
            Some(names) => {
                let mut servers = LiveServers::new();
                // A backend HAProxy lacks is planned as such (a reload).
                for name in names.iter().filter(|n| backends.contains(*n)) {
                    servers.extend(session.servers_of(name).await?);
                }
                servers
            }
        };
        let Some(loaded) = self.loaded.as_ref() else {
            return Ok(None);
        };
        let running = RunningView {
            caps: &caps,
            loaded,
            backends: &backends,
            servers: &servers,
        };
        Ok(Some(match only {
            None => plan_view(&running, desired),
            Some(names) => plan_backends(&running, desired, names),
        }))
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
