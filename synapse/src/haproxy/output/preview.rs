//! An output that only looks (`synapse --dry-run`): what an apply would do, doing
//! none of it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::ServiceName;
use tokio::time::Instant;

use crate::backends::BackendSet;
use crate::config::{HaproxyConfig, ServiceConfig};

use super::{HaproxyOutput, Preview};
use crate::haproxy::config::{RenderError, ServerIds};
use crate::haproxy::model::ConfigModel;
use crate::haproxy::plan::ReloadReason;
use crate::haproxy::quarantine::Quarantine;
use crate::haproxy::reload::{Reloader, Writer};
use crate::haproxy::runtime::Session;

impl HaproxyOutput {
    /// An output that only looks: HAProxy is assumed to run the file on disk (managed
    /// or not), nothing is removed, seeded or started. For [`Self::preview`].
    pub async fn observer(config: HaproxyConfig) -> Self {
        let writer = Writer::new(&config);
        let deployed = match writer.config_path() {
            Some(p) => tokio::fs::read_to_string(p).await.ok().map(Arc::from),
            None => None,
        };
        let ids = deployed
            .as_deref()
            .map(ServerIds::from_config)
            .unwrap_or_default();
        let model = deployed.as_deref().map(ConfigModel::parse);
        Self {
            good_text: deployed.clone(),
            reloader: Reloader::new(&config),
            writer,
            ids,
            deployed_structure: model.as_ref().map(ConfigModel::structure),
            loaded: model,
            deployed,
            deployed_checked: false,
            reload_pending: None,
            next_reload_at: Instant::now(),
            next_verify_at: None,
            verify_after: None,
            retry_deletes_at: None,
            retry_deletes: BTreeSet::new(),
            managed: None,
            seen_generation: 0,
            running: true,
            quarantine: Quarantine::default(),
            good_sets: None,
            counters: Arc::default(),
            modelled: None,
            write_due_at: None,
            write_paced_until: None,
            pending_write: None,
            pending_check: None,
            runtime_failed: false,
            unconfirmed_reload: false,
            config,
        }
    }

    /// What [`Self::apply`] would do now, doing none of it: the runtime commands it
    /// would send (per stats socket), whether it would reload and why, and the file it
    /// would write. Servers `haproxy -c` would refuse are not looked for (that needs
    /// the check, which writes a candidate file).
    pub async fn preview(
        &mut self,
        services: &BTreeMap<ServiceName, ServiceConfig>,
        desired: &BTreeMap<ServiceName, BackendSet>,
    ) -> Result<Preview, RenderError> {
        let (_, rendered, model) = self.prepare(services, desired)?;
        let mut preview = Preview {
            commands: Vec::new(),
            reload: None,
            deployed: self.deployed.as_deref().map(str::to_owned),
            rendered,
            runtime_errors: Vec::new(),
        };
        if self.runtime_enabled() {
            for path in self.config.socket_file_paths.clone() {
                let planned = match Session::open(&path).await {
                    Ok(mut session) => self.running_plan(&mut session, &model, None).await,
                    Err(e) => Err(e),
                };
                match planned {
                    Ok(Some(plan)) => {
                        preview
                            .commands
                            .extend(plan.commands.iter().map(|c| (path.clone(), c.to_string())));
                        if let Some(why) = plan.reload {
                            preview.reload.get_or_insert(why);
                        }
                    }
                    Ok(None) => {
                        preview.reload.get_or_insert(ReloadReason::Initial);
                    }
                    Err(e) => {
                        preview.runtime_errors.push(format!(
                            "{}: {}",
                            path.display(),
                            common::error::error_chain(&e)
                        ));
                        if self.loaded.as_ref() != Some(&model.config) {
                            preview.reload.get_or_insert(ReloadReason::NoRuntimeApi);
                        }
                    }
                }
            }
        } else if preview.deployed.as_deref() != Some(preview.rendered.as_str()) {
            preview.reload.get_or_insert(ReloadReason::NoRuntimeApi);
        }
        if !self.reloader.enabled() {
            preview.reload = None;
        }
        Ok(preview)
    }
}
