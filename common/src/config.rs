//! Config-file plumbing shared by both daemons: JSON with comments and trailing commas
//! (so the blog post's config can be pasted), every error collected with its key path,
//! and value types for durations.
//!
//! A daemon declares a serde `*File` struct with `deny_unknown_fields`, loads it with
//! [`load`] (structural errors: unknown keys, wrong types, missing keys) and validates it
//! into its typed `Config`, pushing semantic errors onto the same [`ConfigErrors`].

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// One problem in a config file, with the key path it concerns (`services.web.port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// Every problem found in a config file. Displayed one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn push(&mut self, path: impl Into<String>, message: impl fmt::Display) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.to_string(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `Ok(value)` when no error was pushed.
    pub fn finish<T>(self, value: T) -> Result<T, Self> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// True if some error concerns `path` exactly.
    pub fn mentions(&self, path: &str) -> bool {
        self.0.iter().any(|e| e.path == path)
    }

    /// Takes the errors of another load, e.g. of a file in `service_conf_dir`.
    pub fn extend(&mut self, other: Self) {
        self.0.extend(other.0);
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if e.path.is_empty() {
                write!(f, "{}", e.message)?;
            } else {
                write!(f, "{}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// `a.b` joined with `c` → `a.b.c`; with an empty parent → `c`.
pub fn join_path(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_owned()
    } else {
        format!("{parent}.{child}")
    }
}

/// Reads and parses a config file. Errors are prefixed with the file name.
pub fn load<T: DeserializeOwned>(file: &Path) -> Result<T, ConfigErrors> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        let mut errors = ConfigErrors::default();
        errors.push("", format_args!("cannot read {}: {e}", file.display()));
        errors
    })?;
    parse(&text)
}

/// Parses JSON-with-comments text into `T`, collecting every structural error.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, ConfigErrors> {
    from_value(parse_jsonc(text)?)
}

/// The deepest nesting of objects and arrays a config may have. Real configs need
/// about 6; the parser recurses per level, so a file nested thousands deep (found by
/// the `config_synapse` fuzz target) would overflow a thread's stack instead of being
/// refused with an error.
pub const MAX_DEPTH: usize = 64;

/// The deepest nesting of `{`/`[` in a JSON-with-comments text, outside strings and
/// comments.
pub fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' | '[' => {
                depth += 1;
                max = max.max(depth);
            }
            '}' | ']' => depth = depth.saturating_sub(1),
            '"' | '\'' => {
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => {
                            chars.next();
                        }
                        d if d == c => break,
                        _ => {}
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut star = false;
                for d in chars.by_ref() {
                    if star && d == '/' {
                        break;
                    }
                    star = d == '*';
                }
            }
            _ => {}
        }
    }
    max
}

/// JSON with `//` and `/* */` comments and trailing commas → a JSON value.
pub fn parse_jsonc(text: &str) -> Result<Value, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let depth = nesting_depth(text);
    if depth > MAX_DEPTH {
        errors.push(
            "",
            format_args!("nested {depth} levels deep; at most {MAX_DEPTH} are allowed"),
        );
        return Err(errors);
    }
    match jsonc_parser::parse_to_serde_value(text, &jsonc_parser::ParseOptions::default()) {
        Ok(Some(value)) => Ok(value),
        Ok(None) => {
            errors.push("", "the file is empty");
            Err(errors)
        }
        Err(e) => {
            errors.push("", format_args!("not valid JSON: {e}"));
            Err(errors)
        }
    }
}

/// Deserializes `value` into `T`, reporting every error rather than the first: after
/// each error the offending key is removed and deserialization is tried again.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ConfigErrors> {
    match from_value_lenient(value) {
        (Some(t), errors) => errors.finish(t),
        (None, errors) => Err(errors),
    }
}

/// Like [`from_value`], but also returns what could be read once every offending key was
/// removed, so that a caller can go on validating it and report *its* errors too (a
/// file with an unknown key and a semantic mistake gets both reported). `None` when the
/// value could not be read at all (e.g. a missing required field).
pub fn from_value_lenient<T: DeserializeOwned>(mut value: Value) -> (Option<T>, ConfigErrors) {
    let mut errors = ConfigErrors::default();
    // Each round removes one key, so this terminates; the bound is a safety net.
    for _ in 0..256 {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => return (Some(t), errors),
            Err(e) => {
                let mut segments: Vec<String> = e
                    .path()
                    .iter()
                    .filter_map(|s| match s {
                        serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                        serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                        serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                        serde_path_to_error::Segment::Unknown => None,
                    })
                    .collect();
                let message = redact(&e.inner().to_string());
                if let Some(field) = unknown_field(&message) {
                    if segments.last().map(String::as_str) != Some(field) {
                        segments.push(field.to_owned());
                    }
                }
                let path = segments.join(".");
                let removable = !message.starts_with("missing field");
                errors.push(path, message);
                if !removable || !remove(&mut value, &segments) {
                    return (None, errors);
                }
            }
        }
    }
    (None, errors)
}

/// Object keys that appear twice in the same object of a JSON-with-comments text, each
/// reported at its key path (`services.web`). JSON parsers keep the last one silently;
/// in a config file a duplicated service or key is a mistake worth reporting.
pub fn duplicate_keys(text: &str) -> ConfigErrors {
    use jsonc_parser::ast::{ObjectPropName, Value as Ast};
    fn walk(value: &Ast<'_>, path: &str, errors: &mut ConfigErrors) {
        match value {
            Ast::Object(object) => {
                let mut seen = std::collections::BTreeSet::new();
                for prop in &object.properties {
                    let name = match &prop.name {
                        ObjectPropName::String(lit) => lit.value.as_ref(),
                        ObjectPropName::Word(lit) => lit.value,
                    };
                    let child = join_path(path, name);
                    if !seen.insert(name) {
                        errors.push(child.clone(), "appears more than once");
                    }
                    walk(&prop.value, &child, errors);
                }
            }
            Ast::Array(array) => {
                for (i, element) in array.elements.iter().enumerate() {
                    walk(element, &join_path(path, &i.to_string()), errors);
                }
            }
            _ => {}
        }
    }
    let mut errors = ConfigErrors::default();
    if nesting_depth(text) > MAX_DEPTH {
        // parse_jsonc reports it; walking it would recurse as deep.
        return errors;
    }
    let parsed = jsonc_parser::parse_to_ast(
        text,
        &jsonc_parser::CollectOptions::default(),
        &jsonc_parser::ParseOptions::default(),
    );
    if let Ok(jsonc_parser::ParseResult {
        value: Some(value), ..
    }) = parsed
    {
        walk(&value, "", &mut errors);
    }
    errors
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// serde's messages quote the offending value (`invalid type: string "hunter2"`); a
/// config error must name the key, never echo what may be a secret.
fn redact(message: &str) -> String {
    let Some(start) = message.find('"') else {
        return message.to_owned();
    };
    match message[start + 1..].find("\", expected") {
        Some(len) => format!(
            "{}<value>{}",
            &message[..start],
            &message[start + 1 + len + 1..]
        ),
        None => message.to_owned(),
    }
}

fn remove(value: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in parents {
        cur = match cur {
            Value::Object(map) => match map.get_mut(seg) {
                Some(v) => v,
                None => return false,
            },
            Value::Array(items) => match seg.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match cur {
        Value::Object(map) => map.remove(last).is_some(),
        // Removing from an array would shift the indexes of later errors; replace the
        // element with null, which is as wrong for a typed element and reported once.
        Value::Array(_) => false,
        _ => false,
    }
}

/// A duration written as a number of seconds (`2`, `0.5`, `120.0`), as SmartStack
/// configs do. Negative, NaN and absurd values are rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let secs = f64::deserialize(d)?;
        if !secs.is_finite() || !(0.0..=31_536_000.0).contains(&secs) {
            return Err(serde::de::Error::custom(
                "must be a number of seconds from 0 to 31536000",
            ));
        }
        Ok(Self(Duration::from_secs_f64(secs)))
    }
}

impl From<Seconds> for Duration {
    fn from(s: Seconds) -> Self {
        s.0
    }
}

/// A port number in a config, accepting SmartStack's habit of writing numbers as strings
/// (`"server_port_override": "50001"` in the seed config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigPort(pub u16);

impl<'de> Deserialize<'de> for ConfigPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        let n = match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("must be a port number from 1 to 65535"))?
        {
            Raw::N(n) => Some(n),
            Raw::S(s) => s.trim().parse::<u64>().ok(),
        };
        match n.and_then(|n| u16::try_from(n).ok()).filter(|&n| n != 0) {
            Some(p) => Ok(Self(p)),
            None => Err(serde::de::Error::custom(
                "must be a port number from 1 to 65535",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings_and_comments() {
        assert_eq!(nesting_depth(r#"{"a": [1, {"b": "[[[{{"}]}"#), 3);
        assert_eq!(
            nesting_depth("{ // [[[[\n /* {{{{ */ 'x[': [\"\\\"[\"] }"),
            2
        );
        assert_eq!(nesting_depth("]]]{"), 1);
    }

    #[test]
    fn a_deeply_nested_file_is_an_error_not_a_stack_overflow() {
        let deep = format!("{{\"a\": {}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let errors = parse_jsonc(&deep).expect_err("too deep");
        assert!(errors.to_string().contains("at most 64"), "{errors}");
        assert!(duplicate_keys(&deep).is_empty());
        let ok = format!("{{\"a\": {}1{}}}", "[".repeat(60), "]".repeat(60));
        assert!(parse_jsonc(&ok).is_ok());
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct File {
        name: String,
        #[serde(default)]
        port: Option<ConfigPort>,
        #[serde(default)]
        interval: Option<Seconds>,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        #[serde(default)]
        a: u32,
    }

    #[test]
    fn comments_and_trailing_commas() {
        let f: File = parse(
            "{\n // a comment\n \"name\": \"x\", /* block */ \"port\": \"50001\",\n \"interval\": 0.5,\n}",
        )
        .unwrap();
        assert_eq!(f.port, Some(ConfigPort(50001)));
        assert_eq!(f.interval, Some(Seconds(Duration::from_millis(500))));
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let errs = parse::<File>(
            r#"{"name":"x","bogus":1,"port":0,"interval":-1,"inner":{"a":"no","b":2}}"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        for p in ["bogus", "port", "interval", "inner.a", "inner.b"] {
            assert!(paths.contains(&p), "{p} missing from {errs}");
        }
        assert_eq!(errs.len(), 5, "{errs}");
    }

    #[test]
    fn values_are_not_echoed() {
        let errs = parse::<File>(r#"{"name":"x","inner":{"a":"hunter2"}}"#).unwrap_err();
        let text = errs.to_string();
        assert!(
            text.starts_with("inner.a: invalid type: string <value>"),
            "{text}"
        );
        assert!(!text.contains("hunter2"));
    }

    #[test]
    fn lenient_keeps_what_it_could_read() {
        let value = parse_jsonc(r#"{"name":"x","bogus":1,"port":0}"#).unwrap();
        let (file, errors) = from_value_lenient::<File>(value);
        assert_eq!(file.map(|f| f.name), Some("x".to_owned()));
        assert!(
            errors.mentions("bogus") && errors.mentions("port"),
            "{errors}"
        );
        let (file, errors) = from_value_lenient::<File>(parse_jsonc("{}").unwrap());
        assert!(file.is_none() && errors.len() == 1, "{errors}");
    }

    #[test]
    fn duplicate_keys_are_found_at_their_paths() {
        let text = "{\"a\": 1, // c\n \"s\": {\"x\": {}, \"x\": {}, y: 1},\n \"l\": [{\"k\":1,\"k\":2}], \"a\": 2,}";
        let errors = duplicate_keys(text);
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["s.x", "l.0.k", "a"], "{errors}");
        assert!(duplicate_keys(r#"{"a":{"a":1}}"#).is_empty());
        assert!(duplicate_keys("{").is_empty());
    }

    #[test]
    fn missing_field_and_bad_json() {
        let errs = parse::<File>("{}").unwrap_err();
        assert!(errs.to_string().contains("missing field `name`"), "{errs}");
        assert!(parse::<File>("{\"name\":").is_err());
        assert!(parse::<File>("").is_err());
    }
}
