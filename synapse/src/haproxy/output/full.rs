//! The full path: render everything, model it, plan every backend, write (checked,
//! refused servers bisected and quarantined), reload when due.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::ServiceName;
use rand::Rng;
use tokio::time::Instant;

use crate::backends::BackendSet;
use crate::config::ServiceConfig;
use crate::counters::Counters;

use super::{Applied, ApplyError, HaproxyOutput, Modelled, UNCONFIRMED_VERIFY, VERIFY_INTERVAL};
use crate::haproxy::config::{check_grammar, render, wanted_servers, RenderError, RenderedParts};
use crate::haproxy::model::ConfigModel;
use crate::haproxy::plan::{Desired, ReloadReason};
use crate::haproxy::quarantine::{self, error_line, find_refused, suspects, without};
use crate::haproxy::reload::{write_atomically, ReloadError};

impl HaproxyOutput {
    /// The full path: renders everything, plans every backend, writes, reloads.
    pub(super) async fn apply_full(
        &mut self,
        services: &BTreeMap<ServiceName, ServiceConfig>,
        desired: &BTreeMap<ServiceName, BackendSet>,
    ) -> Result<Applied, ApplyError> {
        // The file on disk is one to compare with and write over: no write beside the
        // loop may land after this one. Its failure does not matter (this one follows).
        let _ = self.finish_write(true).await;
        // This path reads everything itself: a slice being read is moot.
        self.pending_check = None;
        self.modelled = None;
        self.write_due_at = None;
        let mut applied = Applied::default();
        let sets = self.quarantine.filter(desired);
        let (parts, mut rendered, mut model) = self.prepare(services, &sets)?;
        let mut parts = Some(parts);
        let running = self.observe_managed();
        self.running = running;
        if !running {
            // The supervisor wakes the loop when HAProxy is back.
            self.next_verify_at = Some(Instant::now() + VERIFY_INTERVAL);
        }
        let runtime = self.runtime_enabled() && running;
        let mut pass_reload = None;
        if runtime {
            let pass = self.runtime_pass(&model, None).await;
            applied.runtime_commands = pass.commands;
            pass_reload = pass.reload;
        }
        let runtime_complete = runtime && pass_reload.is_none();
        if self.deployed.as_deref() != Some(rendered.as_str()) {
            // Every write is checked; with `do_checks: false`, not one whose servers
            // HAProxy just validated at runtime (no reload or start reads it now).
            let check =
                self.config.do_checks || !(runtime_complete && self.same_structure(&model.config));
            let quarantined = self.quarantine.len();
            let written = self
                .write_leaving_out_refused(services, desired, sets, rendered, check)
                .await?;
            (rendered, model) = written;
            if self.quarantine.len() != quarantined {
                parts = None;
            }
            if self.quarantine.len() != quarantined && runtime {
                // Servers left out now: the runtime state follows the new render.
                let pass = self.runtime_pass(&model, None).await;
                applied.runtime_commands += pass.commands;
                pass_reload = pass.reload;
            }
            if self.writer.config_path().is_some() {
                Counters::inc(&self.counters.config_writes);
            }
            self.deployed = Some(Arc::from(rendered));
            self.deployed_checked = check;
            self.deployed_structure = Some(model.config.structure());
            applied.written = true;
            if !self.runtime_enabled() {
                self.need_reload(ReloadReason::NoRuntimeApi);
            }
        }
        if runtime && pass_reload.is_none() && self.reload_pending.is_none() {
            // HAProxy runs what the file holds.
            self.good_text.clone_from(&self.deployed);
        }
        self.counters.set_quarantined(self.quarantine.report());
        if let Some(why) = pass_reload {
            self.need_reload(why);
        }
        if let Some(m) = &mut self.managed {
            if !m.requested() && self.deployed.is_some() {
                // The first start runs the file just written: no reload.
                m.start();
                self.reload_pending = None;
                self.good_text.clone_from(&self.deployed);
                return Ok(applied);
            }
        }
        if self.reload_pending.is_none() || !running {
            let in_sync = runtime
                && self.reload_pending.is_none()
                && self.quarantine.is_empty()
                && self.config.server_slots.is_none();
            if let Some(parts) = parts.filter(|_| in_sync) {
                self.modelled = Some(Modelled {
                    parts,
                    defaults: model.config.defaults_lines(),
                    desired: model,
                    unwritten: BTreeSet::new(),
                });
            }
            return Ok(applied);
        }
        if Instant::now() < self.next_reload_at {
            applied.reload_pending = true;
            return Ok(applied);
        }
        self.reload(&model, &mut applied).await?;
        Ok(applied)
    }

    /// Server ids for `sets`, the rendered file (in parts and whole), and its model.
    pub(super) fn prepare(
        &mut self,
        services: &BTreeMap<ServiceName, ServiceConfig>,
        sets: &BTreeMap<ServiceName, BackendSet>,
    ) -> Result<(RenderedParts, String, Desired), RenderError> {
        let wanted = wanted_servers(services, sets);
        // With slots, ids are slot numbers and HAProxy's servers are `slot<k>`: a free
        // slot is refilled at runtime, so nothing needs reserving.
        let reserved = if self.config.server_slots.is_none() {
            self.follow_running_ids(&wanted)
        } else {
            BTreeMap::new()
        };
        self.ids
            .assign_reserving(&wanted, self.config.max_server_id, &reserved);
        let parts = RenderedParts::render(&self.config, services, sets, &self.ids);
        let rendered = parts.text();
        check_grammar(&rendered, &self.config)?;
        let model = Desired {
            config: ConfigModel::parse(&rendered),
            dynamic_servers: self.config.dynamic_servers,
        };
        Ok((parts, rendered, model))
    }

    /// Writes `rendered` (checked when `check`). When the check fails, the servers new
    /// since the last written file are bisected with the check; the ones it refuses are
    /// quarantined and the rest is rendered and written. When the check fails without
    /// any of them (the operator's own lines), nothing is written: the last good file
    /// stays. Returns what was written.
    pub(super) async fn write_leaving_out_refused(
        &mut self,
        services: &BTreeMap<ServiceName, ServiceConfig>,
        desired: &BTreeMap<ServiceName, BackendSet>,
        sets: std::borrow::Cow<'_, BTreeMap<ServiceName, BackendSet>>,
        rendered: String,
        check: bool,
    ) -> Result<(String, Desired), ApplyError> {
        let failed = match self.writer.write(&rendered, check).await {
            Ok(()) => {
                let model = Desired {
                    config: ConfigModel::parse(&rendered),
                    dynamic_servers: self.config.dynamic_servers,
                };
                self.good_sets = Some(sets.into_owned());
                return Ok((rendered, model));
            }
            Err(e @ ReloadError::CheckFailed { .. }) => e,
            Err(e) => {
                Counters::inc(&self.counters.write_failures);
                return Err(e.into());
            }
        };
        Counters::inc(&self.counters.check_failures);
        // The servers new since the last written file first; if the check fails without
        // them too, every server (one that HAProxy accepted before may be refused now,
        // e.g. a host name that stopped resolving).
        let mut found = self
            .bisect(services, &sets, suspects(&sets, self.good_sets.as_ref()))
            .await;
        if found.is_none() && self.good_sets.is_some() {
            found = self.bisect(services, &sets, suspects(&sets, None)).await;
        }
        let refused = match found {
            Some(refused) if !refused.is_empty() => refused,
            _ => {
                tracing::error!(error = %failed, "the check refuses the configuration whatever registrations it holds (the operator's own lines?): the last good file stays");
                return Err(failed.into());
            }
        };
        for ((service, backend), output) in refused {
            let error = error_line(&output, &backend.server_name());
            self.quarantine.add(&service, backend, error);
        }
        let sets = self.quarantine.filter(desired);
        let (_, rendered, model) = self.prepare(services, &sets)?;
        if let Err(e) = self.writer.write(&rendered, true).await {
            match &e {
                ReloadError::CheckFailed { .. } => Counters::inc(&self.counters.check_failures),
                _ => Counters::inc(&self.counters.write_failures),
            }
            return Err(e.into());
        }
        self.good_sets = Some(sets.into_owned());
        Ok((rendered, model))
    }

    /// [`find_refused`] with the configured check, on renders of `sets` without some of
    /// `suspects`.
    pub(super) async fn bisect(
        &self,
        services: &BTreeMap<ServiceName, ServiceConfig>,
        sets: &BTreeMap<ServiceName, BackendSet>,
        suspects: Vec<quarantine::Suspect>,
    ) -> Option<Vec<(quarantine::Suspect, String)>> {
        let (writer, config, ids) = (&self.writer, &self.config, &self.ids);
        find_refused(suspects, |left_out| {
            let text = render(config, services, &without(sets, &left_out), ids);
            async move {
                match text {
                    Ok(text) => writer.check_only(&text).await,
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    }

    /// Lines the ids up with the servers HAProxy still runs: a wanted one keeps the id
    /// it runs with; the ids of unwanted ones (removed, waiting for their connections to
    /// end before `del server`) are returned, per backend, to be kept from new servers.
    pub(super) fn follow_running_ids(
        &mut self,
        wanted: &BTreeMap<String, BTreeSet<String>>,
    ) -> BTreeMap<String, BTreeSet<u32>> {
        let mut lingering: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        let Some(loaded) = &self.loaded else {
            return lingering;
        };
        for (name, b) in &loaded.backends {
            let want = wanted.get(name);
            for (server, id) in b.servers.iter().filter_map(|(s, m)| Some((s, m.id?))) {
                if want.is_some_and(|w| w.contains(server)) {
                    self.ids.adopt(name, server, id);
                } else {
                    lingering.entry(name.clone()).or_default().insert(id);
                }
            }
        }
        lingering
    }

    /// [`HaproxyOutput::follow_running_ids`] for one backend: returns its lingering ids.
    pub(super) fn follow_running_ids_of(
        &mut self,
        backend: &str,
        wanted: &BTreeSet<String>,
    ) -> BTreeSet<u32> {
        let mut lingering = BTreeSet::new();
        let Some(loaded) = self.loaded.as_ref().and_then(|l| l.backends.get(backend)) else {
            return lingering;
        };
        for (server, id) in loaded.servers.iter().filter_map(|(s, m)| Some((s, m.id?))) {
            if wanted.contains(server) {
                self.ids.adopt(backend, server, id);
            } else {
                lingering.insert(id);
            }
        }
        lingering
    }

    /// Whether the file on disk has `config`'s structure (everything but server lines).
    pub(super) fn same_structure(&self, config: &ConfigModel) -> bool {
        self.deployed_structure
            .as_ref()
            .is_some_and(|s| config.has_structure(s))
    }

    /// Managed mode: notices a (re)started HAProxy, which runs the file on disk. False
    /// while a managed HAProxy is not running.
    pub(super) fn observe_managed(&mut self) -> bool {
        let Some(m) = &self.managed else {
            return true;
        };
        let state = m.state();
        if state.generation != self.seen_generation {
            self.seen_generation = state.generation;
            self.loaded = self.deployed.as_deref().map(ConfigModel::parse);
            self.reload_pending = None;
        }
        state.master_pid.is_some()
    }

    pub(super) fn need_reload(&mut self, why: ReloadReason) {
        if !self.reloader.enabled() {
            tracing::warn!(reason = %why, "HAProxy needs a reload, but reloads are off (do_reloads: false)");
            return;
        }
        if self.reload_pending.is_none() {
            tracing::debug!(reason = %why, "HAProxy needs a reload");
            self.reload_pending = Some(why);
        }
    }

    pub(super) async fn reload(
        &mut self,
        desired: &Desired,
        applied: &mut Applied,
    ) -> Result<(), ApplyError> {
        let reason = self.reload_pending.clone().unwrap_or(ReloadReason::Initial);
        self.dump_server_state().await;
        let master_pid = self.managed.as_ref().and_then(|m| m.state().master_pid);
        crate::failpoint::hit("before_reload");
        let reloaded = match self.reloader.reload(master_pid).await {
            Ok(r) => r,
            Err(e) => {
                Counters::inc(&self.counters.reload_failures);
                if matches!(e, ReloadError::Refused { .. }) {
                    self.restore_good_file().await;
                }
                return Err(e.into());
            }
        };
        Counters::inc(&self.counters.reloads);
        tracing::info!(reason = %reason, confirmed = reloaded.confirmed, "reloaded HAProxy");
        self.reload_pending = None;
        self.next_reload_at = Instant::now() + self.reload_spacing();
        self.loaded = self.deployed.as_deref().map(ConfigModel::parse);
        self.good_text.clone_from(&self.deployed);
        applied.reloaded = true;
        self.unconfirmed_reload = !reloaded.confirmed;
        if !self.runtime_enabled() {
            return Ok(());
        }
        if !reloaded.confirmed {
            self.next_verify_at = Some(Instant::now() + UNCONFIRMED_VERIFY);
            return Ok(());
        }
        // The state file brought back runtime state (weights, maintenance) from before
        // the reload; the new worker now gets what the plan still finds.
        let pass = self.runtime_pass(desired, None).await;
        applied.runtime_commands += pass.commands;
        if let Some(why) = pass.reload {
            self.need_reload(why);
            applied.reload_pending = self.reload_pending.is_some();
        }
        Ok(())
    }

    /// HAProxy refused the file on disk at a reload (it keeps running the old one): puts
    /// the last file it ran back, so that a restart does not fail on it. The next apply
    /// (after the retry backoff) writes the new one and reloads again: the cause may be
    /// passing (a port another process holds).
    pub(super) async fn restore_good_file(&mut self) {
        let (Some(good), Some(path)) = (self.good_text.clone(), self.writer.config_path()) else {
            return;
        };
        if self.deployed.as_deref() == Some(&*good) {
            return;
        }
        let (dir, path) = (
            path.parent()
                .map_or_else(|| PathBuf::from("."), std::path::Path::to_owned),
            path.to_owned(),
        );
        let text = good.clone();
        match tokio::task::spawn_blocking(move || write_atomically(&dir, &path, &text)).await {
            Ok(Ok(())) => {
                tracing::error!(
                    "HAProxy refused the new configuration: the last good file is back in place"
                );
                self.deployed = Some(good);
                self.deployed_checked = false;
                self.deployed_structure = self
                    .deployed
                    .as_deref()
                    .map(|t| ConfigModel::parse(t).structure());
                self.reload_pending = None;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %common::error::error_chain(&e), "cannot put the last good file back")
            }
            Err(e) => tracing::error!(error = %e, "cannot put the last good file back"),
        }
    }

    /// `restart_interval`, plus up to `restart_jitter × restart_interval` at random, so
    /// that a fleet does not reload (and health-check) in lockstep.
    pub(super) fn reload_spacing(&self) -> Duration {
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
