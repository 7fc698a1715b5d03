//! `state_file_path`: the last good backends per service, kept on disk so that a cold
//! start while the registry is unreachable can still route (and start HAProxy, even
//! when haproxy.cfg is gone).
//!
//! The format is airbnb synapse's: a JSON object of services, each an object of server
//! names (`<name>_<host>:<port>`) to the registration (nerve's JSON: `host`, `port`,
//! `name`, `weight`, `haproxy_server_options`, `labels`) plus `timestamp`, the Unix
//! time it was last seen in the registry. Entries older than `state_file_ttl` are
//! ignored when read. A file this module cannot read (missing, corrupt, another
//! format) is an empty cache, never an error: the registry rebuilds it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Registration, ServiceName};
use serde_json::{Map, Value};

use crate::backends::{Backend, BackendSet};

/// One service's cached backends and when they were last seen in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub backends: BackendSet,
    /// Unix seconds.
    pub seen_at: u64,
}

/// The state file's contents: per service.
pub type State = BTreeMap<ServiceName, Cached>;

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parses a state file's text; backends older than `ttl` at `now`, or that do not
/// decode as registrations, are left out (counted in the second value).
pub fn parse(text: &str, ttl: Duration, now: u64) -> (State, usize) {
    let mut state = State::new();
    let mut skipped = 0;
    let Ok(Value::Object(services)) = serde_json::from_str::<Value>(text) else {
        return (state, 0);
    };
    for (service, backends) in services {
        let (Ok(name), Value::Object(backends)) = (service.parse::<ServiceName>(), backends) else {
            skipped += 1;
            continue;
        };
        let mut cached = Cached {
            backends: BackendSet::new(),
            seen_at: u64::MAX,
        };
        for entry in backends.into_values() {
            let seen_at = entry.get("timestamp").and_then(Value::as_u64).unwrap_or(0);
            if now.saturating_sub(seen_at) > ttl.as_secs() {
                skipped += 1;
                continue;
            }
            match Registration::decode(entry.to_string().as_bytes()) {
                Ok(r) => {
                    cached.backends.insert(Backend::from(r));
                    cached.seen_at = cached.seen_at.min(seen_at);
                }
                Err(_) => skipped += 1,
            }
        }
        if !cached.backends.is_empty() {
            state.insert(name, cached);
        }
    }
    (state, skipped)
}

/// Renders `state` in the file's format.
pub fn render(state: &State) -> String {
    let mut services = Map::new();
    for (name, cached) in state {
        let mut backends = Map::new();
        for b in &cached.backends {
            let r = Registration {
                host: b.host.clone(),
                port: b.port,
                name: b.name.clone(),
                weight: b.weight,
                haproxy_server_options: b.haproxy_server_options.clone(),
                labels: b.labels.clone(),
            };
            let mut entry: Value = serde_json::from_str(&r.encode()).unwrap_or_default();
            if let Value::Object(fields) = &mut entry {
                fields.insert("timestamp".into(), cached.seen_at.into());
            }
            backends.insert(b.server_name(), entry);
        }
        services.insert(name.to_string(), Value::Object(backends));
    }
    let mut text = serde_json::to_string_pretty(&Value::Object(services)).unwrap_or_default();
    text.push('\n');
    text
}

/// Reads the file at `path` (see [`parse`]); logs what it found.
pub async fn load(path: &Path, ttl: Duration) -> State {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return State::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the state file: starting without it");
            return State::new();
        }
    };
    let (state, skipped) = parse(&text, ttl, unix_now());
    tracing::info!(
        path = %path.display(),
        services = state.len(),
        skipped,
        "read the state file (backends older than state_file_ttl skipped)"
    );
    state
}

/// Writes `state` to `path` atomically (a temporary file in the same directory, then
/// a rename).
pub async fn save(path: &Path, state: &State) -> Result<(), String> {
    let text = render(state);
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned);
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        crate::haproxy::reload::write_atomically(&dir, &path, &text)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| common::error::error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, port: u16) -> Backend {
        let r = Registration::decode(
            format!(r#"{{"host": "127.0.0.1", "port": {port}, "name": "{name}", "weight": 3}}"#)
                .as_bytes(),
        )
        .unwrap();
        Backend::from(r)
    }

    #[test]
    fn round_trips_and_expires_by_ttl() {
        let mut state = State::new();
        state.insert(
            "web".parse().unwrap(),
            Cached {
                backends: [backend("a", 1), backend("b", 2)].into_iter().collect(),
                seen_at: 1_000,
            },
        );
        state.insert(
            "old".parse().unwrap(),
            Cached {
                backends: [backend("c", 3)].into_iter().collect(),
                seen_at: 10,
            },
        );
        let text = render(&state);
        let (back, skipped) = parse(&text, Duration::from_secs(100), 1_050);
        assert_eq!(skipped, 1, "{text}");
        assert_eq!(back.len(), 1);
        let web: ServiceName = "web".parse().unwrap();
        assert_eq!(back.get(&web).map(|c| c.seen_at), Some(1_000));
        assert_eq!(back[&web].backends, state[&web].backends);
    }

    /// A file as airbnb synapse writes it (`update_state_file`): server names to
    /// nerve registrations plus a timestamp.
    #[test]
    fn reads_upstream_files_and_survives_garbage() {
        let upstream = r#"{
          "service1": {
            "i-1_10.0.0.1:8080": {"host": "10.0.0.1", "port": 8080, "name": "i-1",
                                   "weight": 2, "haproxy_server_options": "backup",
                                   "labels": {"az": "a"}, "timestamp": 1700000000},
            "bad": {"host": "", "port": 0, "timestamp": 1700000000}
          },
          "not a service name!": {}
        }"#;
        let (state, skipped) = parse(upstream, Duration::from_secs(86_400), 1_700_000_100);
        assert_eq!(skipped, 2);
        let service1: ServiceName = "service1".parse().unwrap();
        let b = state[&service1].backends.iter().next().unwrap();
        assert_eq!(b.server_name(), "i-1_10.0.0.1:8080");
        assert!(b.is_backup());
        for text in ["", "[]", "{", "null", "{\"web\": 3}"] {
            assert!(
                parse(text, Duration::from_secs(1), 0).0.is_empty(),
                "{text}"
            );
        }
    }
}
