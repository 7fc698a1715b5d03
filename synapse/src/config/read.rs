//! Reading a config file: JSON with comments, parsed leniently so that every
//! structural error is collected, after the upstream-compat rewrite.

use std::path::Path;

use common::config::ConfigErrors;

pub(super) fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        let mut errors = ConfigErrors::default();
        errors.push("", format_args!("cannot read {}: {e}", path.display()));
        errors
    })
}

/// JSON with comments → `T`, keeping what is readable; duplicate keys are errors too.
/// `upstream` rewrites the value from an upstream shape into ours first.
pub(super) fn parse_lenient<T: serde::de::DeserializeOwned>(
    text: &str,
    upstream: impl FnOnce(&mut serde_json::Value),
) -> (Option<T>, ConfigErrors) {
    let mut value = match common::config::parse_jsonc(text) {
        Ok(v) => v,
        Err(errors) => return (None, errors),
    };
    upstream(&mut value);
    let mut errors = common::config::duplicate_keys(text);
    let (t, more) = common::config::from_value_lenient(value);
    errors.extend(more);
    (t, errors)
}
