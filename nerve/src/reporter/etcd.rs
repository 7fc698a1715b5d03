//! The etcd v3 reporter: one lease per nerve process, every registration attached to it.
//!
//! - **Lease.** Granted with the configured TTL, kept alive about every TTL/3 of the TTL
//!   the server returns, over one keep-alive stream (re-opened after any error). The
//!   lease is only given up when etcd says it is gone (a keep-alive answering TTL 0, a
//!   put refused with "lease not found", a read-back showing TTL -1): an etcd outage
//!   does not expire leases (etcd 3.4 extends them on leader change and restart), so
//!   keeping the same lease across an outage keeps the same keys and spares every
//!   synapse a delete-then-add. When the lease is gone, the next sync grants a new one
//!   and puts everything that should be there.
//! - **Keys.** `<service path>/<instance_id>/<service>_<lease hex>` (common's
//!   schema): unique per process, so two nerves with the same `instance_id` never
//!   touch each other's keys. A healthy steady state makes no writes at all.
//! - **Read-back.** Every `reconcile_interval` nerve reads its keys back (one `get` per
//!   key, and the lease's key list) and repairs what changed behind its back: a deleted
//!   or overwritten key is put again, a stray key on its lease is deleted.
//! - **Shutdown.** Revoking the lease deletes all its keys in one etcd revision.
//!
//! Over 600 lines on purpose: one type whose lease, keys, read-back and shutdown share
//! its state (the client, the lease, what it wrote); split across files, each part would
//! reach into the others' fields. Its behaviour is tested against a real etcd
//! (`nerve/tests/integration/`, `tests/tests/`), not here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::etcd::{connect, ConnectError, EtcdSettings};
use common::{Backoff, InstanceId, ServiceName};
use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, LeaseTimeToLiveOptions, PutOptions};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Desired, Maintenance, Reporter};
use crate::metrics::Metrics;
use crate::status::StatusHandle;

/// Errors from talking to etcd. All are retried (with backoff) by the driver; none is
/// fatal to nerve.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot connect to etcd at {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: ConnectError,
    },
    /// The first request of a connection: TLS and auth failures show up here, so it
    /// names the member (never with credentials: config rejects those).
    #[error("cannot grant a lease on {endpoint}")]
    LeaseGrant {
        endpoint: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("lease keep-alive failed")]
    KeepAlive(#[source] etcd_client::Error),
    #[error("lease keep-alive got no answer within {0:?}")]
    KeepAliveTimeout(Duration),
    #[error("lease keep-alive stream closed by the server")]
    KeepAliveClosed,
    #[error("a member said lease {0:016x} is gone; another did not confirm it")]
    LeaseUnconfirmed(i64),
    #[error("lease {0:016x} has expired")]
    LeaseLost(i64),
    #[error("cannot put {key}")]
    Put {
        key: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("cannot delete {key}")]
    Delete {
        key: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("cannot read back {what}")]
    Read {
        what: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("cannot revoke lease {id:016x}")]
    Revoke {
        id: i64,
        #[source]
        source: etcd_client::Error,
    },
}

/// The lease nerve holds.
struct Lease {
    id: i64,
    /// As granted (or last reported) by the server.
    ttl: Duration,
    /// When etcd last granted or renewed it (with `ttl` to run from then).
    renewed: Instant,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

/// A key nerve wrote and believes is in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    service: ServiceName,
    value: String,
}

/// The configuration of an [`EtcdReporter`].
#[derive(Debug, Clone)]
pub struct EtcdReporterConfig {
    pub settings: EtcdSettings,
    pub instance_id: InstanceId,
    pub lease_ttl: Duration,
    pub reconcile_interval: Duration,
}

pub struct EtcdReporter {
    config: EtcdReporterConfig,
    client: Option<Client>,
    /// The configured endpoint the client talks to (an index, taken modulo their
    /// number). One member at a time, as etcd's Go client pins one: a member that stops
    /// answering (paused, or cut off from its peers) is left for the next one after a
    /// failed keep-alive or request, where a balancer over all of them may pick it again
    /// until the lease expires.
    endpoint: usize,
    lease: Option<Lease>,
    written: BTreeMap<String, Written>,
    /// Service → the etcd revision of the last deletion of its registration.
    deletions: BTreeMap<String, i64>,
    next_keepalive: Instant,
    next_reconcile: Instant,
    keepalive_backoff: Backoff,
    status: StatusHandle,
    metrics: Metrics,
}

impl EtcdReporter {
    pub fn new(config: EtcdReporterConfig, status: StatusHandle, metrics: Metrics) -> Self {
        let third = (config.lease_ttl / 3).max(Duration::from_millis(200));
        let now = Instant::now();
        Self {
            keepalive_backoff: Backoff::new(Duration::from_millis(100), third),
            next_keepalive: now + third,
            next_reconcile: now + config.reconcile_interval,
            config,
            client: None,
            endpoint: 0,
            lease: None,
            written: BTreeMap::new(),
            deletions: BTreeMap::new(),
            status,
            metrics,
        }
    }

    fn instance(&self) -> &str {
        self.config.instance_id.as_str()
    }

    async fn client(&mut self) -> Result<Client, ReportError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let settings = EtcdSettings {
            endpoints: vec![self.current_endpoint()],
            ..self.config.settings.clone()
        };
        let client = match connect(&settings).await {
            Ok(client) => client,
            Err(source) => {
                self.next_endpoint();
                return Err(ReportError::Connect {
                    endpoint: settings.endpoints.join(","),
                    source,
                });
            }
        };
        self.client = Some(client.clone());
        Ok(client)
    }

    /// The member the client talks to now.
    fn current_endpoint(&self) -> String {
        let all = &self.config.settings.endpoints;
        // Config validation guarantees at least one endpoint.
        all.get(self.endpoint % all.len().max(1))
            .cloned()
            .unwrap_or_else(|| common::etcd::DEFAULT_ENDPOINT.to_owned())
    }

    /// Drops the client; the next attempt connects to the next endpoint.
    fn next_endpoint(&mut self) {
        self.client = None;
        self.endpoint = self.endpoint.wrapping_add(1);
    }

    /// Whether another member confirms that lease `id` is gone. The one that said so may
    /// be a deposed leader that has not heard of its successor yet and still answers
    /// keep-alives from its own, stale, view (etcd-io/etcd#15247). False when no other
    /// member answers: the next keep-alive, on the next member, decides.
    async fn lease_gone_elsewhere(&mut self, id: i64) -> bool {
        if self.config.settings.endpoints.len() < 2 {
            return true;
        }
        self.next_endpoint();
        let Ok(mut client) = self.client().await else {
            return false;
        };
        let wait = self.config.settings.request_timeout;
        match tokio::time::timeout(wait, client.lease_time_to_live(id, None)).await {
            Ok(Ok(resp)) => resp.ttl() <= 0,
            Ok(Err(e)) if e.to_string().contains("lease not found") => true,
            Ok(Err(_)) | Err(_) => {
                self.next_endpoint();
                false
            }
        }
    }

    /// How long to wait for one keep-alive answer: less than the renewal period, so a
    /// hung stream is replaced before the lease is at risk.
    fn keepalive_wait(&self, ttl: Duration) -> Duration {
        self.config
            .settings
            .request_timeout
            .min(ttl / 3)
            .max(Duration::from_millis(500))
    }

    /// The keys `desired` means under `lease_id`.
    fn target(&self, desired: &Desired, lease_id: i64) -> BTreeMap<String, Written> {
        desired
            .iter()
            .map(|(service, entry)| {
                (
                    entry
                        .path
                        .nerve_key(&self.config.instance_id, service, lease_id),
                    Written {
                        service: service.clone(),
                        value: entry.registration.encode(),
                    },
                )
            })
            .collect()
    }

    /// Records an etcd failure and classifies it: a refused lease means it is gone; an
    /// auth failure drops the client so the next attempt authenticates afresh; anything
    /// else moves to the next member.
    fn failed(&mut self, op: &str, e: &etcd_client::Error) {
        self.metrics.etcd_error(op);
        let text = e.to_string();
        if text.contains("lease not found") {
            self.lease_lost();
        } else if text.contains("auth token") || text.contains("authentication") {
            self.client = None;
        } else {
            // A timeout, a broken connection, "no leader": try another member.
            self.next_endpoint();
        }
        self.publish(false);
    }

    fn lease_lost(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.metrics.lease_losses.inc();
            warn!(instance = self.instance(), lease = %format!("{:016x}", lease.id),
                keys = self.written.len(),
                "lease expired; registering again under a new lease");
        }
        self.written.clear();
    }

    async fn grant(&mut self, client: &mut Client) -> Result<i64, ReportError> {
        let ttl = i64::try_from(self.config.lease_ttl.as_secs()).unwrap_or(i64::MAX);
        self.metrics.etcd_request("grant");
        let granted = match client.lease_grant(ttl, None).await {
            Ok(granted) => granted,
            Err(e) => {
                let endpoint = self.current_endpoint();
                self.failed("grant", &e);
                return Err(ReportError::LeaseGrant {
                    endpoint,
                    source: e,
                });
            }
        };
        let ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(0).max(1));
        self.metrics.lease_grants.inc();
        info!(instance = self.instance(), lease = %format!("{:016x}", granted.id()),
            ttl = ?ttl, "lease granted");
        self.lease = Some(Lease {
            id: granted.id(),
            ttl,
            renewed: Instant::now(),
            stream: None,
        });
        self.written.clear();
        let now = Instant::now();
        self.next_keepalive = now + ttl / 3;
        self.next_reconcile = now + self.config.reconcile_interval;
        self.keepalive_backoff.reset();
        Ok(granted.id())
    }

    /// Renews the lease once. `Ok(ttl)` with the TTL the server returned.
    async fn keepalive(&mut self, client: &mut Client) -> Result<Duration, ReportError> {
        let Some((id, ttl)) = self.lease.as_ref().map(|l| (l.id, l.ttl)) else {
            return Ok(Duration::ZERO);
        };
        let wait = self.keepalive_wait(ttl);
        self.metrics.etcd_request("keepalive");
        let Some(lease) = self.lease.as_mut() else {
            return Ok(Duration::ZERO);
        };
        let result = match lease.stream.as_mut() {
            None => {
                // Opening the stream sends the first keep-alive and checks its answer.
                match tokio::time::timeout(wait, client.lease_keep_alive(id)).await {
                    Ok(Ok(stream)) => {
                        lease.stream = Some(stream);
                        Ok(ttl)
                    }
                    Ok(Err(etcd_client::Error::LeaseKeepAliveError(m)))
                        if m.contains("lease not found") =>
                    {
                        Err(ReportError::LeaseLost(id))
                    }
                    Ok(Err(e)) => Err(ReportError::KeepAlive(e)),
                    Err(_) => Err(ReportError::KeepAliveTimeout(wait)),
                }
            }
            Some((keeper, stream)) => {
                let renewed = async {
                    keeper.keep_alive().await.map_err(ReportError::KeepAlive)?;
                    match stream.message().await {
                        Ok(Some(resp)) if resp.ttl() > 0 => {
                            Ok(Duration::from_secs(resp.ttl().unsigned_abs()))
                        }
                        Ok(Some(_)) => Err(ReportError::LeaseLost(id)),
                        Ok(None) => Err(ReportError::KeepAliveClosed),
                        Err(e) => Err(ReportError::KeepAlive(e)),
                    }
                };
                match tokio::time::timeout(wait, renewed).await {
                    Ok(result) => result,
                    Err(_) => Err(ReportError::KeepAliveTimeout(wait)),
                }
            }
        };
        match result {
            Ok(ttl) => {
                lease.ttl = ttl;
                lease.renewed = Instant::now();
                Ok(ttl)
            }
            Err(ReportError::LeaseLost(id)) => {
                lease.stream = None;
                if !self.lease_gone_elsewhere(id).await {
                    warn!(instance = self.instance(), lease = %format!("{id:016x}"),
                        "a member said the lease is gone, another did not confirm it; keeping it");
                    self.publish(false);
                    return Err(ReportError::LeaseUnconfirmed(id));
                }
                self.lease_lost();
                self.publish(false);
                Err(ReportError::LeaseLost(id))
            }
            Err(e) => {
                // A broken stream is re-opened on the next attempt, on the next member:
                // this one did not answer in time.
                lease.stream = None;
                self.next_endpoint();
                self.metrics.etcd_error("keepalive");
                self.publish(false);
                Err(e)
            }
        }
    }

    /// Reads nerve's keys back. True if anything differs from what was written.
    async fn read_back(
        &mut self,
        client: &mut Client,
        desired: &Desired,
    ) -> Result<bool, ReportError> {
        let Some(lease_id) = self.lease.as_ref().map(|l| l.id) else {
            return Ok(true);
        };
        let target = self.target(desired, lease_id);
        let mut drift = false;
        self.metrics.etcd_request("read");
        let on_lease = match client
            .lease_time_to_live(lease_id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
        {
            Ok(resp) if resp.ttl() <= 0 => {
                self.lease_lost();
                return Ok(true);
            }
            Ok(resp) => resp
                .keys()
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect::<BTreeSet<String>>(),
            Err(e) => {
                self.failed("read", &e);
                return Err(ReportError::Read {
                    what: format!("lease {lease_id:016x}"),
                    source: e,
                });
            }
        };
        for key in on_lease.iter().filter(|k| !target.contains_key(*k)) {
            warn!(instance = self.instance(), key = %key,
                "a key nerve does not want is on its lease; deleting it");
            self.metrics.etcd_request("delete");
            if let Err(e) = client.delete(key.as_str(), None).await {
                self.failed("delete", &e);
                return Err(ReportError::Delete {
                    key: key.clone(),
                    source: e,
                });
            }
            self.written.remove(key);
        }
        for (key, want) in &target {
            if !self.written.contains_key(key) {
                // Not written yet: the pending sync will.
                continue;
            }
            self.metrics.etcd_request("read");
            let resp = match client.get(key.as_str(), None).await {
                Ok(resp) => resp,
                Err(e) => {
                    self.failed("read", &e);
                    return Err(ReportError::Read {
                        what: key.clone(),
                        source: e,
                    });
                }
            };
            let intact = resp
                .kvs()
                .first()
                .is_some_and(|kv| kv.value() == want.value.as_bytes() && kv.lease() == lease_id);
            if !intact {
                warn!(service = %want.service, instance = self.instance(), key = %key,
                    "registration changed behind nerve's back; restoring it");
                self.written.remove(key);
                drift = true;
            }
        }
        Ok(drift)
    }

    fn publish(&self, connected: bool) {
        let lease = self.lease.as_ref();
        let keys: BTreeMap<String, String> = self
            .written
            .iter()
            .map(|(k, w)| (k.clone(), w.service.to_string()))
            .collect();
        self.metrics
            .etcd_connected
            .set(i64::from(connected && lease.is_some()));
        self.metrics
            .registrations
            .set(i64::try_from(keys.len()).unwrap_or(i64::MAX));
        self.status.update_registry(|r| {
            r.connected = connected && lease.is_some();
            r.lease_id = lease.map(|l| l.id);
            r.lease_ttl_secs = lease.map(|l| l.ttl.as_secs());
            r.lease_renewed = lease.map(|l| (l.renewed, l.ttl));
            r.keys = keys;
            r.deletions.clone_from(&self.deletions);
        });
    }
}

impl Reporter for EtcdReporter {
    type Error = ReportError;

    async fn sync(&mut self, desired: &Desired) -> Result<(), ReportError> {
        let mut client = self.client().await?;
        let lease_id = match self.lease.as_ref() {
            Some(lease) => lease.id,
            None => self.grant(&mut client).await?,
        };
        let target = self.target(desired, lease_id);
        // Puts first, then deletes: a service whose path changed is never absent.
        for (key, want) in &target {
            let previous = self.written.get(key);
            if previous == Some(want) {
                continue;
            }
            let verb = if previous.is_some() {
                "registration updated"
            } else {
                "registered"
            };
            self.metrics.etcd_request("put");
            let put = client
                .put(
                    key.as_str(),
                    want.value.as_str(),
                    Some(PutOptions::new().with_lease(lease_id)),
                )
                .await;
            if let Err(e) = put {
                self.failed("put", &e);
                return Err(ReportError::Put {
                    key: key.clone(),
                    source: e,
                });
            }
            self.metrics
                .registration_write(want.service.as_str(), "put");
            info!(service = %want.service, instance = self.instance(), key = %key, "{verb}");
            self.written.insert(key.clone(), want.clone());
            self.publish(true);
        }
        let stale: Vec<(String, Written)> = self
            .written
            .iter()
            .filter(|(k, _)| !target.contains_key(*k))
            .map(|(k, w)| (k.clone(), w.clone()))
            .collect();
        for (key, was) in stale {
            self.metrics.etcd_request("delete");
            match client.delete(key.as_str(), None).await {
                Ok(resp) => {
                    if let Some(h) = resp.header() {
                        self.deletions.insert(was.service.to_string(), h.revision());
                    }
                }
                Err(e) => {
                    self.failed("delete", &e);
                    return Err(ReportError::Delete { key, source: e });
                }
            }
            self.metrics
                .registration_write(was.service.as_str(), "delete");
            info!(service = %was.service, instance = self.instance(), key = %key, "deregistered");
            self.written.remove(&key);
        }
        self.publish(true);
        Ok(())
    }

    async fn maintain(&mut self, desired: &Desired) -> Result<Maintenance, ReportError> {
        if self.lease.is_none() {
            return Ok(Maintenance::NeedsSync);
        }
        let mut client = self.client().await?;
        let now = Instant::now();
        if now >= self.next_keepalive {
            match self.keepalive(&mut client).await {
                Ok(ttl) => {
                    self.keepalive_backoff.reset();
                    self.next_keepalive = Instant::now() + ttl / 3;
                    self.publish(true);
                }
                Err(ReportError::LeaseLost(_)) => return Ok(Maintenance::NeedsSync),
                Err(e) => {
                    self.next_keepalive = Instant::now() + self.keepalive_backoff.next_delay();
                    return Err(e);
                }
            }
        }
        if now >= self.next_reconcile {
            self.next_reconcile = now + self.config.reconcile_interval;
            if self.read_back(&mut client, desired).await? {
                return Ok(Maintenance::NeedsSync);
            }
        }
        Ok(Maintenance::Fine)
    }

    fn next_maintenance(&self) -> Instant {
        if self.lease.is_none() {
            // Nothing to keep alive; the next sync grants a lease.
            return Instant::now() + self.config.reconcile_interval;
        }
        self.next_keepalive.min(self.next_reconcile)
    }

    async fn shutdown(&mut self) -> Result<(), ReportError> {
        let Some(lease) = self.lease.take() else {
            return Ok(());
        };
        drop(lease.stream);
        // Every member in turn, starting with the current one: the one nerve talked to
        // may be the one that is down (the caller bounds the whole by shutdown_timeout).
        let mut last = None;
        for _ in 0..self.config.settings.endpoints.len().max(1) {
            let mut client = match self.client().await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            self.metrics.etcd_request("revoke");
            match client.lease_revoke(lease.id).await {
                Ok(resp) => {
                    if let Some(h) = resp.header() {
                        for was in self.written.values() {
                            self.deletions.insert(was.service.to_string(), h.revision());
                        }
                    }
                    last = None;
                    break;
                }
                Err(e) if e.to_string().contains("lease not found") => {
                    last = None;
                    break;
                }
                Err(e) => {
                    self.metrics.etcd_error("revoke");
                    self.next_endpoint();
                    last = Some(ReportError::Revoke {
                        id: lease.id,
                        source: e,
                    });
                }
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        for (key, was) in std::mem::take(&mut self.written) {
            info!(service = %was.service, instance = self.instance(), key = %key, "deregistered");
        }
        info!(instance = self.instance(), lease = %format!("{:016x}", lease.id), "lease revoked");
        self.publish(false);
        Ok(())
    }
}
