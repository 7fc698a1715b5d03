//! `service_conf_dir`: one service per `<name>.json` file, beside the inline ones.

use std::path::{Path, PathBuf};

use common::config::{self as cfg, join_path, ConfigErrors};
use common::upstream::Compat;

use super::file::ServiceFile;

/// Reads `<dir>/*.json`: one service per file, named after the file.
pub(super) fn read_service_conf_dir(
    dir: &Path,
    inline: &[(String, String, ServiceFile)],
    errors: &mut ConfigErrors,
    compat: &mut Compat,
) -> Vec<(String, String, ServiceFile)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(
                "service_conf_dir",
                format_args!("cannot read {}: {e}", dir.display()),
            );
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut out: Vec<(String, String, ServiceFile)> = Vec::new();
    for file in files {
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
        if matches!(ext, "yaml" | "yml") {
            errors.push(
                "service_conf_dir",
                format_args!(
                    "{}: YAML is not supported; write the service as JSON",
                    file.display()
                ),
            );
            continue;
        }
        if ext != "json" {
            continue;
        }
        let Some(name) = file.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        let path = format!("services.{name}");
        if let Some((_, other, _)) = inline
            .iter()
            .chain(out.iter())
            .find(|(existing, _, _)| *existing == name)
        {
            errors.push(
                path,
                format_args!(
                    "defined twice: in {} and at {other}; a service is defined once",
                    file.display()
                ),
            );
            continue;
        }
        let prefixed = |e: ConfigErrors| {
            ConfigErrors(
                e.0.into_iter()
                    .map(|mut err| {
                        err.path = join_path(&path, &err.path);
                        err.message = format!("{} (in {})", err.message, file.display());
                        err
                    })
                    .collect(),
            )
        };
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(path, format_args!("cannot read {}: {e}", file.display()));
                continue;
            }
        };
        errors.extend(prefixed(cfg::duplicate_keys(&text)));
        let mut value = match cfg::parse_jsonc(&text) {
            Ok(v) => v,
            Err(e) => {
                errors.extend(prefixed(e));
                continue;
            }
        };
        if !super::upstream::normalize_service(&mut value, &path, compat) {
            continue;
        }
        let (svc, structural) = cfg::from_value_lenient::<ServiceFile>(value);
        errors.extend(prefixed(structural));
        if let Some(svc) = svc {
            out.push((name, path, svc));
        }
    }
    out
}
