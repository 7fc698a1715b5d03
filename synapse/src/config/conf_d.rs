//! `service_conf_dir`: one JSON file per service (`<name>.json`), merged into the
//! main file's `services` before validation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::config::{join_path, ConfigErrors};
use common::upstream::Compat;

use super::read::{parse_lenient, read};
use super::ServiceFile;

pub(super) fn load_service_dir(
    dir: &Path,
    services: &mut BTreeMap<String, ServiceFile>,
    has_file_output: bool,
    errors: &mut ConfigErrors,
    compat: &mut Compat,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(
                "service_conf_dir",
                format_args!("cannot read {}: {e}", dir.display()),
            );
            return;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "json") && p.is_file())
        .collect();
    files.sort();
    for file in files {
        let Some(name) = file.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            errors.push(
                "service_conf_dir",
                format_args!("{}: file name is not UTF-8", file.display()),
            );
            continue;
        };
        let path = join_path("services", &name);
        if services.contains_key(&name) {
            errors.push(
                path,
                format_args!("defined both in the main config and in {}", file.display()),
            );
            continue;
        }
        let mut keep = true;
        let (svc, errs) = match read(&file) {
            Ok(text) => parse_lenient::<ServiceFile>(&text, |v| {
                keep = super::upstream::normalize_service(v, &path, has_file_output, compat);
            }),
            Err(errs) => (None, errs),
        };
        if !keep {
            continue;
        }
        for e in errs.0 {
            errors.push(
                join_path(&path, &e.path),
                format_args!("{} (in {})", e.message, file.display()),
            );
        }
        if let Some(svc) = svc {
            services.insert(name, svc);
        }
    }
}
