//! The drain barrier's contract: what each synapse publishes about the registry revision
//! its outputs run, and how `nerve drain --wait` decides that every live synapse has
//! caught up with a deregistration.
//!
//! ```text
//! <applied_status_prefix>/<synapse instance id>/<lease id as 16 hex digits>
//! {"instance_id":"lb-01","applied":{"/nerve/services/web":1234}}
//! ```
//!
//! - One key per synapse process, under a lease of its own: a synapse that dies drops out
//!   when the lease expires; one that stops cleanly revokes it.
//! - `applied` maps each etcd service path the synapse watches to the etcd revision whose
//!   view of that path its outputs run (0: watched, nothing applied yet). A revision `R`
//!   means: every change under the path up to and including revision `R` is applied.
//! - A drain deletes a registration at revision `D` and waits until every key that lists
//!   the service path shows a revision `≥ D` ([`evaluate`], [`wait`]).

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Where synapses publish what they have applied, unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "/synapse/applied";

/// What one synapse has applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub instance_id: String,
    /// Service path → the etcd revision applied for it.
    pub applied: BTreeMap<String, i64>,
}

impl Applied {
    /// Compact JSON, as stored.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `None` for anything that is not such a document (written by someone else).
    pub fn decode(value: &[u8]) -> Option<Self> {
        serde_json::from_slice(value).ok()
    }
}

/// The directory the keys live in: the prefix without trailing `/`, plus `/`.
pub fn dir(prefix: &str) -> String {
    format!("{}/", prefix.trim_end_matches('/'))
}

/// The key of one synapse process.
pub fn key(prefix: &str, instance_id: &str, lease_id: i64) -> String {
    format!("{}{instance_id}/{lease_id:016x}", dir(prefix))
}

/// Checks a configured prefix: absolute, no whitespace or control characters.
pub fn validate_prefix(prefix: &str) -> Result<(), &'static str> {
    if !prefix.starts_with('/') || prefix.trim_end_matches('/').is_empty() {
        return Err("must be an absolute etcd path below `/`, e.g. /synapse/applied");
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters");
    }
    Ok(())
}

/// A synapse that has not (yet) applied the revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lagging {
    pub instance_id: String,
    /// The revision it has applied for the path (0: nothing yet).
    pub applied: i64,
}

/// Where a barrier stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarrierReport {
    /// The revision waited for.
    pub revision: i64,
    /// Live synapses that watch the path.
    pub watching: usize,
    /// Those that have applied `revision` or later, by instance id.
    pub confirmed: Vec<String>,
    /// Those that have not.
    pub not_confirmed: Vec<Lagging>,
    /// How long the wait took.
    pub elapsed_ms: u64,
}

impl BarrierReport {
    /// Every live synapse that watches the path has applied the revision.
    pub fn complete(&self) -> bool {
        self.not_confirmed.is_empty()
    }
}

/// Where `statuses` stand against revision `revision` of `path` (pure).
pub fn evaluate<'a>(
    statuses: impl IntoIterator<Item = &'a Applied>,
    path: &str,
    revision: i64,
) -> BarrierReport {
    let mut report = BarrierReport {
        revision,
        ..BarrierReport::default()
    };
    for status in statuses {
        let Some(&applied) = status.applied.get(path) else {
            continue;
        };
        report.watching += 1;
        if applied >= revision {
            report.confirmed.push(status.instance_id.clone());
        } else {
            report.not_confirmed.push(Lagging {
                instance_id: status.instance_id.clone(),
                applied,
            });
        }
    }
    report.confirmed.sort();
    report
        .not_confirmed
        .sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    report
}

/// Waits until every live synapse under `prefix` that watches `path` has applied
/// `revision`, or `timeout` passes; returns where it stands then. A synapse whose key
/// vanishes (lease expired, clean stop) stops counting; one that appears counts. Errors
/// talking to etcd are retried until the timeout; the report then shows the last view
/// (with nothing known, nobody confirmed).
pub async fn wait(
    client: &mut Client,
    prefix: &str,
    path: &str,
    revision: i64,
    timeout: Duration,
) -> BarrierReport {
    let started = Instant::now();
    let deadline = started + timeout;
    let dir = dir(prefix);
    let mut statuses: BTreeMap<Vec<u8>, Applied> = BTreeMap::new();
    let mut report = evaluate(statuses.values(), path, revision);
    let finish = |mut report: BarrierReport| {
        report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        report
    };
    loop {
        let listed = tokio::time::timeout_at(
            deadline,
            client.get(dir.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await;
        let resp = match listed {
            Err(_) => return finish(report),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "drain barrier: listing synapse status failed");
                if tokio::time::timeout_at(deadline, tokio::time::sleep(RETRY))
                    .await
                    .is_err()
                {
                    return finish(report);
                }
                continue;
            }
            Ok(Ok(resp)) => resp,
        };
        statuses = resp
            .kvs()
            .iter()
            .filter_map(|kv| Some((kv.key().to_vec(), Applied::decode(kv.value())?)))
            .collect();
        report = evaluate(statuses.values(), path, revision);
        if report.complete() {
            return finish(report);
        }
        let from = resp.header().map_or(0, |h| h.revision()) + 1;
        let opts = WatchOptions::new().with_prefix().with_start_revision(from);
        let watched = tokio::time::timeout_at(deadline, client.watch(dir.as_str(), Some(opts)));
        let mut stream = match watched.await {
            Err(_) => return finish(report),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "drain barrier: watching synapse status failed");
                if tokio::time::timeout_at(deadline, tokio::time::sleep(RETRY))
                    .await
                    .is_err()
                {
                    return finish(report);
                }
                continue;
            }
            Ok(Ok(stream)) => stream,
        };
        loop {
            let message = match tokio::time::timeout_at(deadline, stream.message()).await {
                // Dropping the stream closes the watch.
                Err(_) => return finish(report),
                Ok(Ok(Some(m))) if !m.canceled() => m,
                // Broken, ended or cancelled (compacted): list again.
                Ok(_) => break,
            };
            for event in message.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => match Applied::decode(kv.value()) {
                        Some(a) => {
                            statuses.insert(kv.key().to_vec(), a);
                        }
                        None => {
                            statuses.remove(kv.key());
                        }
                    },
                    EventType::Delete => {
                        statuses.remove(kv.key());
                    }
                }
            }
            report = evaluate(statuses.values(), path, revision);
            if report.complete() {
                return finish(report);
            }
        }
    }
}

/// Pause before listing again after an etcd error.
const RETRY: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(instance: &str, entries: &[(&str, i64)]) -> Applied {
        Applied {
            instance_id: instance.into(),
            applied: entries.iter().map(|(p, r)| ((*p).into(), *r)).collect(),
        }
    }

    #[test]
    fn the_value_and_key_are_stable() {
        let a = applied("lb-01", &[("/svc/web", 1234), ("/svc/api", 0)]);
        assert_eq!(
            a.encode(),
            r#"{"instance_id":"lb-01","applied":{"/svc/api":0,"/svc/web":1234}}"#
        );
        assert_eq!(Applied::decode(a.encode().as_bytes()), Some(a));
        assert_eq!(Applied::decode(b"{\"host\":\"x\"}"), None);
        assert_eq!(Applied::decode(b"not json"), None);
        assert_eq!(
            key("/synapse/applied/", "lb-01", 0x694d_7a1b_2c3d_4e5f),
            "/synapse/applied/lb-01/694d7a1b2c3d4e5f"
        );
        assert_eq!(key("/s", "a", 1), "/s/a/0000000000000001");
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(validate_prefix("/synapse/applied").is_ok());
        assert!(validate_prefix("/x/").is_ok());
        for bad in ["", "/", "//", "synapse", "/a b", "/a\nb"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_synapses_watching_the_path_count() {
        let statuses = [
            applied("c", &[("/svc/web", 99)]),
            applied("a", &[("/svc/web", 100)]),
            applied("b", &[("/svc/web", 250), ("/svc/api", 3)]),
            applied("d", &[("/svc/api", 1)]),
            applied("e", &[("/svc/web", 0)]),
        ];
        let r = evaluate(&statuses, "/svc/web", 100);
        assert_eq!(r.watching, 4);
        assert_eq!(r.confirmed, ["a", "b"]);
        assert_eq!(
            r.not_confirmed,
            [
                Lagging {
                    instance_id: "c".into(),
                    applied: 99
                },
                Lagging {
                    instance_id: "e".into(),
                    applied: 0
                }
            ]
        );
        assert!(!r.complete());
        // Nobody watches: nothing to wait for.
        let r = evaluate(&statuses, "/svc/none", 100);
        assert_eq!((r.watching, r.complete()), (0, true));
    }
}
