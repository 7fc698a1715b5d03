//! The upstream SmartStack formats (airbnb and Yelp nerve/synapse) beside ours: keys that
//! do nothing here, shapes upstream accepted that our typed files do not, and methods or
//! reporters we do not implement.
//!
//! A config is read as a JSON value first; each daemon's `upstream` module rewrites that
//! value into our shape before serde sees it, and records here:
//!
//! - **warnings**: an upstream key that does nothing here, removed with one line naming
//!   the key and what to use instead (`statsd: ignored (upstream's StatsD metrics); use
//!   /metrics on admin_listen`);
//! - **unsupported** uses: a discovery method or reporter this build does not implement.
//!   The service that uses it is taken out of the file (its other keys belong to that
//!   method), and the file is refused with exactly one line naming every unsupported
//!   method, rather than with one error per key the method needs.
//!
//! Unknown keys are untouched: serde still reports them with their key path.

use serde_json::{Map, Value};

use crate::config::{join_path, ConfigError, ConfigErrors};

/// An upstream key that is accepted and ignored, with the advice printed for it.
#[derive(Debug, Clone, Copy)]
pub struct IgnoredKey {
    pub key: &'static str,
    /// What it did upstream and what to use here, e.g. `upstream's StatsD metrics; use
    /// /metrics on admin_listen`.
    pub advice: &'static str,
}

/// What the rewrite found: warnings to print, unsupported methods to refuse the file for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compat {
    pub warnings: Vec<ConfigError>,
    /// `(key path, what)`, e.g. `("services.web.discovery.method", "zookeeper discovery")`.
    pub unsupported: Vec<(String, String)>,
}

impl Compat {
    pub fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn unsupported(&mut self, path: impl Into<String>, what: impl Into<String>) {
        self.unsupported.push((path.into(), what.into()));
    }

    /// Removes each key of `ignored` present in `object` (at `path`), with a warning.
    pub fn take_ignored(
        &mut self,
        object: &mut Map<String, Value>,
        path: &str,
        ignored: &[IgnoredKey],
    ) {
        for i in ignored {
            if object.remove(i.key).is_some() {
                self.warn(join_path(path, i.key), format!("ignored: {}", i.advice));
            }
        }
    }

    /// The one error line for every unsupported use, or `None`. The line names each
    /// distinct method once, with where it is first used and how many more uses there are.
    pub fn unsupported_error(&self) -> Option<ConfigError> {
        let (first_path, _) = self.unsupported.first()?;
        let mut kinds: Vec<(&str, usize)> = Vec::new();
        for (_, what) in &self.unsupported {
            match kinds.iter_mut().find(|(k, _)| k == what) {
                Some((_, n)) => *n += 1,
                None => kinds.push((what, 1)),
            }
        }
        let list = kinds
            .iter()
            .map(|(what, n)| match n {
                1 => (*what).to_owned(),
                n => format!("{what} ({n} uses)"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        Some(ConfigError {
            path: first_path.clone(),
            message: format!(
                "not supported by this build: {list}; register and discover through etcd or \
                 ZooKeeper (see docs/configuration.md, upstream keys)"
            ),
        })
    }

    /// Adds the unsupported line to `errors`, if any.
    pub fn push_unsupported(&self, errors: &mut ConfigErrors) {
        if let Some(e) = self.unsupported_error() {
            errors.0.push(e);
        }
    }
}

/// `"a"` → `["a"]`, so a key upstream accepted as one string or a list reads as a list.
pub fn string_to_list(object: &mut Map<String, Value>, key: &str) {
    if let Some(v @ Value::String(_)) = object.get_mut(key) {
        *v = Value::Array(vec![v.take()]);
    }
}

/// `["a", "b"]` → `"a b"`, for a key upstream joined with spaces (`server_options`).
/// Leaves a list holding anything but strings alone, for serde to report.
pub fn list_to_string(object: &mut Map<String, Value>, key: &str) {
    if let Some(Value::Array(items)) = object.get(key) {
        let words: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
        if let Some(words) = words {
            let joined = words.join(" ");
            object.insert(key.to_owned(), Value::String(joined));
        }
    }
}

/// The object at `key` of `object`, if it is one.
pub fn object_mut<'a>(
    object: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    object.get_mut(key).and_then(Value::as_object_mut)
}

/// The compatibility corpus of upstream configs, for tests: `$SMARTSTACK_COMPAT_DIR`, else
/// `../shared/compat` beside the checkout (where CI puts it). Panics when it is missing,
/// so that a test of the corpus never passes by reading nothing.
#[doc(hidden)]
pub fn corpus_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("SMARTSTACK_COMPAT_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/compat"),
        std::path::PathBuf::from,
    );
    assert!(
        dir.join("README.md").is_file(),
        "the compatibility corpus is not at {} (set SMARTSTACK_COMPAT_DIR)",
        dir.display()
    );
    dir
}

/// The text of corpus file `rel` (`synapse/01-....json`), for tests.
#[doc(hidden)]
pub fn corpus_file(rel: &str) -> String {
    let path = corpus_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Corpus file `rel` with etcd in ZooKeeper's place, for tests that read the rest of a
/// ZooKeeper config: every `zookeeper` discovery becomes `etcd` (its `hosts` kept, with
/// etcd's port 2379 where an entry has none), and every ZooKeeper-reporting nerve service
/// reports to etcd at its `zk_path` (the 2013 format's embedded hosts dropped).
#[doc(hidden)]
pub fn corpus_with_etcd(rel: &str) -> String {
    fn with_port(host: &str) -> String {
        if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:2379")
        }
    }
    fn swap(value: &mut Value) {
        match value {
            Value::Object(map) => {
                if map.get("method").and_then(Value::as_str) == Some("zookeeper") {
                    map.insert("method".into(), Value::from("etcd"));
                    match map.get_mut("hosts") {
                        Some(Value::Array(hosts)) => {
                            for h in hosts.iter_mut() {
                                if let Some(s) = h.as_str() {
                                    *h = Value::from(with_port(s));
                                }
                            }
                        }
                        Some(Value::String(s)) => *s = with_port(s),
                        _ => {}
                    }
                }
                if let Some(Value::String(zk_path)) = map.remove("zk_path") {
                    let path = &zk_path[zk_path.find('/').unwrap_or(0)..];
                    map.remove("zk_hosts");
                    map.insert("reporter_type".into(), Value::from("etcd"));
                    map.insert("etcd_path".into(), Value::from(path));
                }
                map.values_mut().for_each(swap);
            }
            Value::Array(items) => items.iter_mut().for_each(swap),
            _ => {}
        }
    }
    let mut value = crate::config::parse_jsonc(&corpus_file(rel)).expect("the corpus parses");
    swap(&mut value);
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ignored_keys_are_removed_with_one_warning_each() {
        let mut v = json!({"statsd": {"host": "x"}, "keep": 1});
        let mut c = Compat::default();
        c.take_ignored(
            v.as_object_mut().unwrap(),
            "",
            &[IgnoredKey {
                key: "statsd",
                advice: "use /metrics",
            }],
        );
        assert_eq!(v, json!({"keep": 1}));
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(c.warnings[0].path, "statsd");
        assert!(c.warnings[0].message.contains("/metrics"));
    }

    #[test]
    fn one_line_names_every_unsupported_method() {
        let mut c = Compat::default();
        assert!(c.unsupported_error().is_none());
        c.unsupported("services.a.discovery.method", "zookeeper discovery");
        c.unsupported("services.b.discovery.method", "zookeeper discovery");
        c.unsupported("services.c.discovery.method", "marathon discovery");
        let e = c.unsupported_error().unwrap();
        assert_eq!(e.path, "services.a.discovery.method");
        assert!(
            e.message.starts_with(
                "not supported by this build: zookeeper discovery (2 uses), marathon discovery;"
            ),
            "{}",
            e.message
        );
    }

    #[test]
    fn shapes() {
        let mut v = json!({"a": "x", "b": ["p", "q"], "c": [1]});
        let o = v.as_object_mut().unwrap();
        string_to_list(o, "a");
        list_to_string(o, "b");
        list_to_string(o, "c");
        assert_eq!(v, json!({"a": ["x"], "b": "p q", "c": [1]}));
    }
}
