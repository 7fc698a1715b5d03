//! The top level of validation: `Config::load`/`parse`/`from_file`, the top-level keys
//! and the guard settings; each section is validated by its own module.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::config::{join_path, ConfigErrors};
use common::upstream::Compat;
use common::{InstanceId, ServiceName};

use super::conf_d::load_service_dir;
use super::haproxy::validate_haproxy;
use super::read::{parse_lenient, read};
use super::service::{check_backend_names, validate_service};
use super::{
    defaults, AppliedStatusConfig, Config, DebounceMode, FileOutputConfig, GuardSettings,
    MassRemovalGuardFile, SynapseFile, DEFAULT_APPLIED_STATUS_TTL, MIN_APPLIED_STATUS_TTL,
};

impl Config {
    /// Services with `prefer_zone: true` prefer `zone` (synapse's own, found at
    /// start-up); with `None` (no zone found) they route to every zone alike. Returns the
    /// names of the services that wanted their own zone.
    pub fn set_own_zone(&mut self, zone: Option<&str>) -> Vec<ServiceName> {
        let mut wanting = Vec::new();
        for svc in self.services.values_mut() {
            let Some(pref) = &mut svc.prefer_zone else {
                continue;
            };
            if pref.zone.is_some() {
                continue;
            }
            wanting.push(svc.name.clone());
            match zone {
                Some(z) => pref.zone = Some(z.to_owned()),
                None => svc.prefer_zone = None,
            }
        }
        wanting
    }

    /// Reads, parses and validates a config file (and its `service_conf_dir`).
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = read(path)?;
        Self::parse(&text, path.parent())
    }

    /// Parses and validates config text; `service_conf_dir` is resolved against `base`.
    /// Structural errors (unknown keys, wrong types) and semantic ones are reported
    /// together.
    pub fn parse(text: &str, base: Option<&Path>) -> Result<Self, ConfigErrors> {
        let mut compat = Compat::default();
        let (file, mut errors) = parse_lenient::<SynapseFile>(text, |v| {
            super::upstream::normalize_file(v, &mut compat);
        });
        match file {
            Some(file) => Self::from_file(file, base, errors, compat),
            None => {
                compat.push_unsupported(&mut errors);
                Err(errors)
            }
        }
    }

    /// Validates a parsed file into a `Config`, adding to `errors` (those found while
    /// parsing) and to `compat` (what the upstream rewrite found), and fails if there
    /// are any errors.
    pub fn from_file(
        mut file: SynapseFile,
        base: Option<&Path>,
        mut errors: ConfigErrors,
        mut compat: Compat,
    ) -> Result<Self, ConfigErrors> {
        if let Some(dir) = &file.service_conf_dir {
            let dir = match base {
                Some(base) if dir.is_relative() => base.join(dir),
                _ => dir.clone(),
            };
            let has_file_output = file.file_output.is_some();
            load_service_dir(
                &dir,
                &mut file.services,
                has_file_output,
                &mut errors,
                &mut compat,
            );
        }
        let haproxy = file
            .haproxy
            .as_ref()
            .map(|h| validate_haproxy(h, &mut errors));
        let base_guard = validate_guard(
            GuardSettings::default(),
            file.mass_removal_guard.as_ref(),
            "mass_removal_guard",
            &mut errors,
        );
        let mut services = BTreeMap::new();
        for (name, svc) in &file.services {
            let path = join_path("services", name);
            let service_name = match ServiceName::new(name.as_str()) {
                Ok(n) => n,
                Err(e) => {
                    errors.push(path, format_args!("service name {e}"));
                    continue;
                }
            };
            let guard = validate_guard(
                base_guard,
                svc.mass_removal_guard.as_ref(),
                &join_path(&path, "mass_removal_guard"),
                &mut errors,
            );
            if let Some(mut s) = validate_service(&service_name, svc, &path, &mut errors) {
                s.mass_removal_guard = guard;
                services.insert(service_name, s);
            }
        }
        if file.services.is_empty() && compat.unsupported.is_empty() {
            errors.push("services", "at least one service is required");
        }
        compat.push_unsupported(&mut errors);
        if let Some(h) = &haproxy {
            check_backend_names(&services, h, &mut errors);
        }
        if haproxy.is_none() && file.file_output.is_none() {
            errors.push(
                "",
                "no output configured: add a `haproxy` or a `file_output` section",
            );
        }
        let debounce = file.debounce.map_or(defaults::DEBOUNCE, Duration::from);
        let debounce_max_wait = file
            .debounce_max_wait
            .map_or(defaults::DEBOUNCE_MAX_WAIT, Duration::from);
        if debounce_max_wait < debounce {
            errors.push("debounce_max_wait", "must not be smaller than `debounce`");
        }
        let debounce_mode = match file.debounce_mode.as_deref() {
            None | Some("leading") => DebounceMode::Leading,
            Some("trailing") => DebounceMode::Trailing,
            Some(_) => {
                errors.push("debounce_mode", "must be `leading` or `trailing`");
                DebounceMode::default()
            }
        };
        let file_output = file.file_output.map(|f| FileOutputConfig {
            output_directory: f.output_directory,
        });
        let admin_listen = file
            .admin_listen
            .resolve(common::admin::SYNAPSE_DEFAULT_LISTEN)
            .unwrap_or_else(|e| {
                errors.push("admin_listen", e);
                None
            });
        if let Some(zone) = &file.zone {
            if let Err(e) = common::zone::validate(zone) {
                errors.push("zone", e);
            }
        }
        let imds_endpoint = file.zone_from_imds.unwrap_or(false).then(|| {
            file.imds_endpoint
                .clone()
                .or_else(|| std::env::var(common::imds::ENDPOINT_ENV).ok())
                .unwrap_or_else(|| common::imds::DEFAULT_ENDPOINT.to_owned())
        });
        if file.imds_endpoint.is_some() && imds_endpoint.is_none() {
            errors.push(
                "imds_endpoint",
                "is only used with zone_from_imds: true (EC2 discovery has its own)",
            );
        }
        let zone = common::zone::ZoneSource {
            configured: file.zone.clone(),
            env: None,
            imds_endpoint,
        };
        let instance_id = match file.instance_id.as_deref() {
            Some(id) => InstanceId::new(id).unwrap_or_else(|e| {
                errors.push("instance_id", e.to_string());
                InstanceId::new("synapse").expect("a valid literal")
            }),
            None => host_instance_id()
                .unwrap_or_else(|| InstanceId::new("synapse").expect("a valid literal")),
        };
        let status = file.applied_status.unwrap_or_default();
        let prefix = status
            .prefix
            .unwrap_or_else(|| common::applied::DEFAULT_PREFIX.to_owned());
        if let Err(e) = common::applied::validate_prefix(&prefix) {
            errors.push("applied_status.prefix", e);
        }
        let lease_ttl = status
            .lease_ttl
            .map_or(DEFAULT_APPLIED_STATUS_TTL, Duration::from);
        if lease_ttl < MIN_APPLIED_STATUS_TTL {
            errors.push("applied_status.lease_ttl", "must be at least 2 seconds");
        }
        let applied_status = status
            .enabled
            .unwrap_or(true)
            .then_some(AppliedStatusConfig { prefix, lease_ttl });
        errors.finish(Self {
            services,
            haproxy,
            file_output,
            debounce,
            debounce_max_wait,
            debounce_mode,
            admin_listen,
            zone,
            instance_id,
            applied_status,
            warnings: compat.warnings,
        })
    }
}

/// The host name, as an instance id, if it is one.
fn host_instance_id() -> Option<InstanceId> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    InstanceId::new(name.trim()).ok()
}

/// `base` with the keys `file` sets.
fn validate_guard(
    base: GuardSettings,
    file: Option<&MassRemovalGuardFile>,
    path: &str,
    errors: &mut ConfigErrors,
) -> GuardSettings {
    let Some(f) = file else { return base };
    let mut out = GuardSettings {
        enabled: f.enabled.unwrap_or(base.enabled),
        max_removed_fraction: f.max_removed_fraction.unwrap_or(base.max_removed_fraction),
        min_removed_servers: f.min_removed_servers.unwrap_or(base.min_removed_servers),
        window: f.window.map_or(base.window, Duration::from),
        hold: f.hold.map_or(base.hold, Duration::from),
    };
    if !(out.max_removed_fraction > 0.0 && out.max_removed_fraction < 1.0) {
        errors.push(
            join_path(path, "max_removed_fraction"),
            "must be between 0 and 1 (exclusive)",
        );
        out.max_removed_fraction = base.max_removed_fraction;
    }
    if out.window.is_zero() {
        errors.push(join_path(path, "window"), "must be more than 0");
    }
    if out.min_removed_servers == 0 {
        errors.push(join_path(path, "min_removed_servers"), "must be at least 1");
    }
    out
}
