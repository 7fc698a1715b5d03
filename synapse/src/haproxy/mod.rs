//! The HAProxy output: render → plan → write (+check) → reload, rate-limited.
//!
//! ```text
//! desired backends ─► render (pure) ─► plan(deployed, rendered) ─► Plan::Nothing
//!                                                              └► Plan::Write ─► write ─► reload (coalesced,
//!                                                                                           ≥ restart_interval apart)
//! ```
//!
//! `plan` is where the runtime-API step will slot in: a diff of what HAProxy runs against
//! what it should run, applied over the stats socket when only servers changed.

pub mod config;
pub mod reload;

use std::collections::BTreeMap;
use std::time::Duration;

use common::ServiceName;
use rand::Rng;
use tokio::time::Instant;

use crate::backends::BackendSet;
use crate::config::{HaproxyConfig, ServiceConfig};
use crate::counters::Counters;
use config::{render, wanted_servers, RenderError, ServerIds};
use reload::{ReloadError, Writer};

/// What has to happen to make HAProxy run the rendered config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The file already says this.
    Nothing,
    /// Put this text in place, then reload.
    Write { config: String },
}

/// Compares the deployed text with a fresh render. Pure.
pub fn plan(deployed: Option<&str>, rendered: String) -> Plan {
    if deployed == Some(rendered.as_str()) {
        Plan::Nothing
    } else {
        Plan::Write { config: rendered }
    }
}

/// Errors of one apply. All are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Reload(#[from] ReloadError),
}

/// What happened in one apply, for the change log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// haproxy.cfg was (re)written.
    pub written: bool,
    /// HAProxy was reloaded now.
    pub reloaded: bool,
    /// A reload is owed and waits for `restart_interval`.
    pub reload_pending: bool,
}

/// The HAProxy output and its state between applies.
pub struct HaproxyOutput {
    config: HaproxyConfig,
    writer: Writer,
    ids: ServerIds,
    /// The text HAProxy's config file holds (as far as we know).
    deployed: Option<String>,
    reload_pending: bool,
    next_reload_at: Instant,
    counters: std::sync::Arc<Counters>,
}

impl HaproxyOutput {
    /// Starts from the file on disk, if any: its bytes are the deployed state (an
    /// unchanged render after a restart is not rewritten and causes no reload) and its
    /// server ids are kept.
    pub async fn new(config: HaproxyConfig, counters: std::sync::Arc<Counters>) -> Self {
        let writer = Writer::new(&config);
        let deployed = match writer.config_path() {
            Some(p) => tokio::fs::read_to_string(p).await.ok(),
            None => None,
        };
        let ids = deployed
            .as_deref()
            .map(ServerIds::from_config)
            .unwrap_or_default();
        Self {
            config,
            writer,
            ids,
            deployed,
            reload_pending: false,
            next_reload_at: Instant::now(),
            counters,
        }
    }

    /// Renders the desired state and brings the file (and HAProxy) to it.
    pub async fn apply(
        &mut self,
        services: &BTreeMap<ServiceName, ServiceConfig>,
        desired: &BTreeMap<ServiceName, BackendSet>,
    ) -> Result<Applied, ApplyError> {
        let mut applied = Applied::default();
        self.ids.assign(
            &wanted_servers(services, desired),
            self.config.max_server_id,
        );
        let rendered = render(&self.config, services, desired, &self.ids)?;
        if let Plan::Write { config } = plan(self.deployed.as_deref(), rendered) {
            if let Err(e) = self.writer.write(&config).await {
                match &e {
                    ReloadError::CheckFailed { .. } => Counters::inc(&self.counters.check_failures),
                    _ => Counters::inc(&self.counters.write_failures),
                }
                return Err(e.into());
            }
            if self.writer.config_path().is_some() {
                Counters::inc(&self.counters.config_writes);
            }
            self.deployed = Some(config);
            applied.written = true;
            self.reload_pending = self.writer.reloads();
        }
        if self.reload_pending {
            if Instant::now() < self.next_reload_at {
                applied.reload_pending = true;
                return Ok(applied);
            }
            if let Err(e) = self.writer.reload().await {
                Counters::inc(&self.counters.reload_failures);
                return Err(e.into());
            }
            Counters::inc(&self.counters.reloads);
            self.reload_pending = false;
            self.next_reload_at = Instant::now() + self.reload_spacing();
            applied.reloaded = true;
        }
        Ok(applied)
    }

    /// When a deferred reload becomes allowed.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.reload_pending.then_some(self.next_reload_at)
    }

    /// `restart_interval`, plus up to `restart_jitter × restart_interval` at random, so
    /// that a fleet does not reload (and health-check) in lockstep.
    fn reload_spacing(&self) -> Duration {
        let interval = self.config.restart_interval;
        let jitter = interval.mul_f64(self.config.restart_jitter);
        let extra = if jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_micros(rand::rng().random_range(0..=jitter.as_micros() as u64))
        };
        interval + extra
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_writes_only_on_change() {
        assert_eq!(plan(Some("a"), "a".into()), Plan::Nothing);
        assert_eq!(
            plan(Some("a"), "b".into()),
            Plan::Write { config: "b".into() }
        );
        assert_eq!(plan(None, "a".into()), Plan::Write { config: "a".into() });
    }
}
