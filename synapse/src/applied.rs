//! Publishes, for the drain barrier, which etcd revision of each watched service path
//! this synapse's outputs run (the contract is `common::applied`).
//!
//! ```text
//! reconciler ──record(service → revision) after a complete apply──► watch channel
//!   ──► one task per etcd cluster: lease, one key, put when it changes (at most every
//!       MIN_WRITE_INTERVAL), keep-alive ≈ TTL/3, revoke on stop
//! ```
//!
//! The reconciler only records a revision once every output runs the set it belongs to
//! (no deferred reload, no set held by the mass-removal guard or by
//! `use_previous_backends`), so a published revision is a promise: HAProxy no longer
//! routes to anything deleted at or before it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::applied::Applied;
use common::etcd::EtcdSettings;
use common::{Backoff, InstanceId, ServiceName};
use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::{AppliedStatusConfig, Config, DiscoveryConfig};
use crate::watcher::EtcdClients;

/// At most this many writes a second per synapse and cluster ("a few").
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_millis(250);

/// What the reconciler hands over: per service, the revision every output runs.
#[derive(Clone)]
pub struct AppliedRevisions {
    tx: watch::Sender<BTreeMap<ServiceName, i64>>,
}

impl AppliedRevisions {
    /// Records into `tx` (what [`start`] does with its publishers' channel).
    pub fn from_sender(tx: watch::Sender<BTreeMap<ServiceName, i64>>) -> Self {
        Self { tx }
    }

    /// Records that the outputs run these revisions (services not named keep theirs).
    /// Revisions only go forward, except after etcd went back (a restored cluster): the
    /// watcher re-lists then, and the new revision is taken as it is.
    pub fn record(&self, revisions: &BTreeMap<ServiceName, i64>) {
        self.tx.send_if_modified(|current| {
            let mut changed = false;
            for (service, revision) in revisions {
                if current.get(service) != Some(revision) {
                    current.insert(service.clone(), *revision);
                    changed = true;
                }
            }
            changed
        });
    }
}

/// The services each cluster's key covers: (service, its path).
type Group = Vec<(ServiceName, String)>;

/// Starts one publisher per etcd cluster the config watches directly (`method: etcd`;
/// services behind `multi` are not covered). `None` when `applied_status` is off or no
/// service uses etcd.
pub fn start(
    config: &Config,
    clients: &Arc<EtcdClients>,
    tasks: &mut JoinSet<()>,
    cancel: &CancellationToken,
) -> Option<AppliedRevisions> {
    let status = config.applied_status.clone()?;
    let mut groups: Vec<(EtcdSettings, Group)> = Vec::new();
    for svc in config.services.values() {
        let DiscoveryConfig::Etcd(e) = &svc.discovery else {
            continue;
        };
        let entry = (svc.name.clone(), e.path.as_str().to_owned());
        match groups.iter_mut().find(|(s, _)| *s == e.settings) {
            Some((_, group)) => group.push(entry),
            None => groups.push((e.settings.clone(), vec![entry])),
        }
    }
    if groups.is_empty() {
        return None;
    }
    let (tx, rx) = watch::channel(BTreeMap::new());
    for (settings, group) in groups {
        let publisher = Publisher {
            settings,
            group,
            status: status.clone(),
            instance_id: config.instance_id.clone(),
            lease: None,
            clients: clients.clone(),
        };
        tasks.spawn(publisher.run(rx.clone(), cancel.clone()));
    }
    Some(AppliedRevisions { tx })
}

/// The document for `group` from the recorded revisions: each path at the lowest
/// revision of the services on it (0 before the first apply).
fn document(
    instance_id: &InstanceId,
    group: &Group,
    revisions: &BTreeMap<ServiceName, i64>,
) -> Applied {
    let mut applied: BTreeMap<String, i64> = BTreeMap::new();
    for (service, path) in group {
        let revision = revisions.get(service).copied().unwrap_or(0);
        applied
            .entry(path.clone())
            .and_modify(|r| *r = (*r).min(revision))
            .or_insert(revision);
    }
    Applied {
        instance_id: instance_id.to_string(),
        applied,
    }
}

struct Lease {
    id: i64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    ttl: Duration,
}

struct Publisher {
    settings: EtcdSettings,
    group: Group,
    status: AppliedStatusConfig,
    instance_id: InstanceId,
    lease: Option<Lease>,
    /// The watchers' clients: one connection per etcd cluster for the whole synapse.
    clients: Arc<EtcdClients>,
}

#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("cannot connect to etcd")]
    Connect(#[from] common::etcd::ConnectError),
    #[error("etcd request failed")]
    Etcd(#[from] etcd_client::Error),
    #[error("the lease expired")]
    LeaseLost,
}

impl Publisher {
    async fn run(
        mut self,
        mut revisions: watch::Receiver<BTreeMap<ServiceName, i64>>,
        cancel: CancellationToken,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut client: Option<Client> = None;
        let mut written: Option<String> = None;
        let mut last_write: Option<Instant> = None;
        let mut failing = false;
        let mut next_keepalive = Instant::now();
        loop {
            let doc = document(
                &self.instance_id,
                &self.group,
                &revisions.borrow_and_update(),
            )
            .encode();
            let due = last_write.map_or(Instant::now(), |t| t + MIN_WRITE_INTERVAL);
            let step = async {
                let c = match &client {
                    Some(c) => c.clone(),
                    None => {
                        let c = self.clients.get(&self.settings).await?;
                        client = Some(c.clone());
                        c
                    }
                };
                let mut c = c;
                if self.lease.is_none() {
                    self.grant(&mut c).await?;
                    written = None;
                    next_keepalive = Instant::now();
                }
                if Instant::now() >= next_keepalive {
                    next_keepalive = Instant::now() + self.keepalive().await?;
                }
                if written.as_deref() != Some(doc.as_str()) && Instant::now() >= due {
                    let id = self.lease.as_ref().map_or(0, |l| l.id);
                    let key =
                        common::applied::key(&self.status.prefix, self.instance_id.as_str(), id);
                    c.put(key, doc.as_str(), Some(PutOptions::new().with_lease(id)))
                        .await?;
                    written = Some(doc.clone());
                    last_write = Some(Instant::now());
                }
                Ok::<_, PublishError>(())
            };
            let result = tokio::select! {
                _ = cancel.cancelled() => break,
                r = step => r,
            };
            let retry_at = match result {
                Ok(()) => {
                    if failing {
                        tracing::info!("applied status published again");
                    }
                    failing = false;
                    backoff.reset();
                    None
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %common::error::error_chain(&e),
                            prefix = %self.status.prefix,
                            "cannot publish the applied status (drain barrier); retrying");
                    }
                    failing = true;
                    if matches!(e, PublishError::LeaseLost) {
                        self.lease = None;
                    } else {
                        client = None;
                    }
                    Some(Instant::now() + backoff.next_delay())
                }
            };
            let pending_write = (written.as_deref() != Some(doc.as_str())).then_some(due);
            let wake = [retry_at, Some(next_keepalive), pending_write]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(next_keepalive);
            let wake = retry_at.map_or(wake, |r| wake.max(r));
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = revisions.changed(), if retry_at.is_none() => {
                    if changed.is_err() {
                        // The reconciler is gone: synapse is stopping.
                        cancel.cancelled().await;
                        break;
                    }
                }
                _ = sleep_until(wake) => {}
            }
        }
        self.revoke(client).await;
    }

    async fn grant(&mut self, client: &mut Client) -> Result<(), PublishError> {
        let ttl = i64::try_from(self.status.lease_ttl.as_secs()).unwrap_or(i64::MAX);
        let granted = client.lease_grant(ttl, None).await?;
        let (keeper, stream) = client.lease_keep_alive(granted.id()).await?;
        let ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(1).max(1));
        self.lease = Some(Lease {
            id: granted.id(),
            keeper,
            stream,
            ttl,
        });
        Ok(())
    }

    /// Renews the lease; returns when to renew it next.
    async fn keepalive(&mut self) -> Result<Duration, PublishError> {
        let Some(lease) = self.lease.as_mut() else {
            return Err(PublishError::LeaseLost);
        };
        lease.keeper.keep_alive().await?;
        let wait = (lease.ttl / 3).max(Duration::from_millis(500));
        match tokio::time::timeout(wait, lease.stream.message()).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => Ok(lease.ttl / 3),
            Ok(Ok(Some(_))) => Err(PublishError::LeaseLost),
            Ok(Ok(None)) | Err(_) => Err(PublishError::Etcd(etcd_client::Error::WatchError(
                "lease keep-alive stream ended".into(),
            ))),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Removes the key at once on a clean stop (best effort, bounded).
    async fn revoke(&mut self, client: Option<Client>) {
        let (Some(mut client), Some(lease)) = (client, self.lease.take()) else {
            return;
        };
        let wait = self.settings.request_timeout.min(Duration::from_secs(2));
        if let Err(e) = tokio::time::timeout(wait, client.lease_revoke(lease.id)).await {
            tracing::debug!(error = %e, "could not revoke the applied-status lease; it expires");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_shows_the_lowest_revision_of_its_services() {
        let s = |n: &str| ServiceName::new(n).unwrap();
        let group: Group = vec![
            (s("web"), "/svc/web".into()),
            (s("web-admin"), "/svc/web".into()),
            (s("api"), "/svc/api".into()),
        ];
        let id = InstanceId::new("lb-01").unwrap();
        let doc = document(&id, &group, &BTreeMap::new());
        assert_eq!(
            doc.encode(),
            r#"{"instance_id":"lb-01","applied":{"/svc/api":0,"/svc/web":0}}"#
        );
        let revisions = [(s("web"), 40), (s("web-admin"), 35), (s("api"), 7)].into();
        let doc = document(&id, &group, &revisions);
        assert_eq!(doc.applied["/svc/web"], 35);
        assert_eq!(doc.applied["/svc/api"], 7);
    }

    #[test]
    fn record_reports_only_changes() {
        let (tx, mut rx) = watch::channel(BTreeMap::new());
        let r = AppliedRevisions { tx };
        let web = ServiceName::new("web").unwrap();
        r.record(&[(web.clone(), 5)].into());
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        r.record(&[(web.clone(), 5)].into());
        assert!(!rx.has_changed().unwrap());
        r.record(&[(web, 6)].into());
        assert!(rx.has_changed().unwrap());
    }
}
