//! What the world's registry holds and its history: the registered instances and keys,
//! the events since a revision (replayed from etcd itself), and fillers put by another
//! writer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, Txn, TxnOp, WatchOptions};
use integration_tests::eventually;
use serde_json::Value;

use crate::observe::head_revision;
use crate::profile::TIMEOUT;
use crate::world::World;

impl World {
    /// The registry's server instances under the service path: instance id → lease.
    pub(crate) async fn registered(&self) -> Result<BTreeMap<String, i64>, String> {
        let mut kv = self.client.kv_client();
        let resp = tokio::time::timeout(
            Duration::from_secs(2),
            kv.get(
                format!("{}/", self.path),
                Some(GetOptions::new().with_prefix()),
            ),
        )
        .await
        .map_err(|_| "get timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let r = common::Registration::decode(kv.value()).ok()?;
                Some((r.name.to_string(), kv.lease()))
            })
            .collect())
    }

    /// The keys under the service path: key → (create revision, lease).
    pub(crate) async fn keys(&self) -> BTreeMap<String, (i64, i64)> {
        let mut kv = self.client.kv_client();
        let resp = kv
            .get(
                format!("{}/", self.path),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .expect("get the service's keys");
        resp.kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                (key, (kv.create_revision(), kv.lease()))
            })
            .collect()
    }

    /// Waits until exactly these hosts are registered; returns instance → lease.
    pub(crate) async fn wait_registered(&self, ids: &[&str]) -> BTreeMap<String, i64> {
        let want: BTreeSet<String> = ids.iter().map(|i| format!("host-{i}")).collect();
        eventually(TIMEOUT, || async {
            let got = self.registered().await?;
            if got.keys().cloned().collect::<BTreeSet<_>>() == want {
                Ok(got)
            } else {
                Err(format!("registered {got:?}, want {want:?}"))
            }
        })
        .await
    }

    pub(crate) async fn revision(&self) -> i64 {
        head_revision(&self.client).await
    }

    /// DELETE events under the service path since `revision`, by instance id (the
    /// registry's own history: a recording watcher replayed up to a sentinel key).
    pub(crate) async fn deletes_since(&self, revision: i64) -> BTreeMap<String, u64> {
        self.events_since(revision, EventType::Delete).await
    }

    /// Events of `kind` under the service path after `revision` (a revision read before
    /// the fault: its own event is not counted), by instance name.
    pub(crate) async fn events_since(
        &self,
        revision: i64,
        kind: EventType,
    ) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for (name, _) in self.events_after(revision, kind).await {
            *counts.entry(name).or_default() += 1;
        }
        counts
    }

    /// Events of `kind` under the service path after `revision`: (instance name, the
    /// event's revision), in order.
    pub(crate) async fn events_after(&self, revision: i64, kind: EventType) -> Vec<(String, i64)> {
        let sentinel = format!("/faults-sentinel/{}", self.path);
        let client = self.client.clone();
        // The client's member may just have been killed: retry on the others.
        let mut stream = eventually(TIMEOUT, || {
            let mut c = client.clone();
            async move {
                c.watch(
                    "/",
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(revision + 1)
                            .with_prev_key(),
                    ),
                )
                .await
            }
        })
        .await;
        // Our sentinel is the put at `marked`; an earlier call's is older and must not
        // end this replay early.
        let marked = eventually(TIMEOUT, || {
            let (mut c, k) = (client.clone(), sentinel.clone());
            async move {
                c.put(k, "x", None)
                    .await
                    .map(|r| r.header().map_or(i64::MAX, |h| h.revision()))
            }
        })
        .await;
        let mut events = Vec::new();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("replay timed out")
                .expect("watch failed")
                .expect("watch ended");
            for e in msg.events() {
                let Some(kv) = e.kv() else { continue };
                if kv.key() == sentinel.as_bytes() {
                    if kv.mod_revision() >= marked {
                        return events;
                    }
                    continue;
                }
                if e.event_type() != kind || !kv.key().starts_with(self.path.as_bytes()) {
                    continue;
                }
                let value = match kind {
                    EventType::Delete => e.prev_kv().map(|p| p.value()),
                    EventType::Put => Some(kv.value()),
                };
                let name = value
                    .and_then(|v| common::Registration::decode(v).ok())
                    .map_or_else(|| "?".to_owned(), |r| r.name.to_string());
                events.push((name, kv.mod_revision()));
            }
        }
    }
}

/// Puts registrations `filler-NNNN` (`NNNN` in `ids`) under the world's path, as
/// another writer, in transactions of 100: instance `i` on `ports[i % ports.len()]`,
/// its value padded to about `size` bytes with a label (labels are never rendered).
pub(crate) async fn put_fillers(
    w: &World,
    ids: std::ops::Range<usize>,
    ports: &[u16],
    size: usize,
) {
    let mut kv = w.client.kv_client();
    for chunk in ids.collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| {
                let bare = format!(
                    r#"{{"host":"127.0.0.1","port":{},"name":"filler-{i:04}"}}"#,
                    ports[i % ports.len()]
                );
                // Labels of at most 256 bytes each; `"pN":"…",` costs 8 bytes besides.
                let mut labels = serde_json::Map::new();
                let mut left = size.saturating_sub(bare.len() + 12);
                while left > 8 {
                    let len = (left - 8).min(256);
                    labels.insert(format!("p{}", labels.len()), "x".repeat(len).into());
                    left = left.saturating_sub(len + 8);
                }
                let mut value: Value = serde_json::from_str(&bare).expect("json");
                if !labels.is_empty() {
                    value["labels"] = Value::Object(labels);
                }
                let value = value.to_string();
                TxnOp::put(format!("{}/filler-{i:04}", w.path), value, None)
            })
            .collect();
        kv.txn(Txn::new().and_then(ops)).await.expect("put fillers");
    }
}
