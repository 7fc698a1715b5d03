//! The ZooKeeper reporter: SmartStack's registry, in upstream nerve's exact format, so
//! that our nerve can replace airbnb's on a host whose consumers still read ZooKeeper.
//!
//! - **Session.** One per ensemble (upstream pools one connection per sorted host list),
//!   with `lease_ttl` as its timeout: the time a crashed nerve's nodes outlive it. The
//!   client moves between members and reconnects by itself while the session lives.
//!   When ZooKeeper says the session expired, its ephemeral nodes are gone: nerve counts
//!   the expiry, connects a new session and creates every node again.
//! - **Nodes.** Each registered service is an ephemeral sequential znode
//!   `<zk_path>/<instance_id>_<10-digit sequence>` holding the registration JSON
//!   (`host`, `port`, `name`, `weight`, `haproxy_server_options`, `labels`); the
//!   directory is created (persistent) when missing. With `use_path_encoding` the node
//!   is `<zk_path>/base64_<len>_<base64url JSON>_<sequence>`, and still holds the JSON.
//!   A changed registration is written in place (`set`); one whose node name must change
//!   (path, encoding) is created anew, then the old node deleted.
//! - **Read-back.** Every `reconcile_interval` nerve reads its nodes back and recreates
//!   any that vanished or changed behind its back.
//! - **Shutdown.** Every node is deleted at once, then the session is closed.

use std::collections::BTreeMap;
use std::time::Duration;

use common::zookeeper::ZkSettings;
use common::{InstanceId, ServiceName, ServicePath};
use tokio::time::Instant;
use tracing::{info, warn};
use zookeeper_client::{Acls, Client, CreateMode, SessionState};

use super::{Desired, Maintenance, Reporter};
use crate::metrics::Metrics;
use crate::status::StatusHandle;

/// How often the session state is looked at (no request: the client tracks it).
const STATE_CHECK: Duration = Duration::from_millis(500);

/// Errors from talking to ZooKeeper. All are retried (with backoff) by the driver.
#[derive(Debug, thiserror::Error)]
pub enum ZkReportError {
    #[error("cannot connect a ZooKeeper session to {hosts}")]
    Connect {
        hosts: String,
        #[source]
        source: zookeeper_client::Error,
    },
    #[error("no ZooKeeper session to {hosts} within {timeout:?}")]
    ConnectTimeout { hosts: String, timeout: Duration },
    #[error("the ZooKeeper session to {0} expired; its nodes are gone")]
    Expired(String),
    #[error("ZooKeeper {op} {path} failed")]
    Request {
        op: &'static str,
        path: String,
        #[source]
        source: zookeeper_client::Error,
    },
}

/// The configuration of a [`ZkReporter`].
#[derive(Debug, Clone)]
pub struct ZkReporterConfig {
    pub settings: ZkSettings,
    pub instance_id: InstanceId,
    pub reconcile_interval: Duration,
}

/// A node nerve created and believes is in ZooKeeper.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    dir: ServicePath,
    /// The full path, sequence included.
    path: String,
    data: Vec<u8>,
    encoded: bool,
}

pub struct ZkReporter {
    config: ZkReporterConfig,
    /// The connect string: the name of this ensemble in logs, status and metrics.
    name: String,
    client: Option<Client>,
    written: BTreeMap<ServiceName, Node>,
    expirations: u64,
    next_state_check: Instant,
    next_read_back: Instant,
    status: StatusHandle,
    metrics: Metrics,
}

impl ZkReporter {
    pub fn new(config: ZkReporterConfig, status: StatusHandle, metrics: Metrics) -> Self {
        let name = config.settings.connect_string();
        status.update_zookeeper(&name, |_| {});
        let now = Instant::now();
        Self {
            next_read_back: now + config.reconcile_interval,
            config,
            name,
            client: None,
            written: BTreeMap::new(),
            expirations: 0,
            next_state_check: now,
            status,
            metrics,
        }
    }

    /// The live session, connecting a new one when there is none (or it has ended).
    async fn session(&mut self) -> Result<Client, ZkReportError> {
        self.note_expiry();
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        // The connector gives up after about one session timeout with no member.
        let timeout = self.config.settings.session_timeout + Duration::from_secs(5);
        let client = tokio::time::timeout(timeout, self.config.settings.connect())
            .await
            .map_err(|_| ZkReportError::ConnectTimeout {
                hosts: self.name.clone(),
                timeout,
            })?
            .map_err(|source| ZkReportError::Connect {
                hosts: self.name.clone(),
                source,
            })?;
        info!(zk = %self.name, session = %format_args!("{:x}", client.session_id().0),
            timeout = ?client.session_timeout(), "ZooKeeper session established");
        self.metrics
            .zk_sessions
            .get_or_create(&self.metrics.zk(&self.name))
            .inc();
        let session_id = format!("{:x}", client.session_id().0);
        let timeout_secs = client.session_timeout().as_secs();
        self.status.update_zookeeper(&self.name, |s| {
            s.session_id = Some(session_id);
            s.session_timeout_secs = Some(timeout_secs);
            s.session_started = Some(Instant::now());
        });
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Drops a session ZooKeeper has ended (expired, closed, auth failed): its ephemeral
    /// nodes are gone with it.
    fn note_expiry(&mut self) -> bool {
        let Some(client) = &self.client else {
            return false;
        };
        let state = client.state();
        if !state.is_terminated() {
            return false;
        }
        self.expirations += 1;
        warn!(zk = %self.name, state = common::zookeeper::state_name(state),
            nodes = self.written.len(),
            "ZooKeeper session ended; its nodes are gone: creating them again in a new session");
        self.metrics
            .zk_session_expirations
            .get_or_create(&self.metrics.zk(&self.name))
            .inc();
        self.client = None;
        self.written.clear();
        let expirations = self.expirations;
        self.status.update_zookeeper(&self.name, |s| {
            s.connected = false;
            s.session_id = None;
            s.session_started = None;
            s.expirations = expirations;
            s.nodes.clear();
        });
        self.publish_nodes();
        true
    }

    fn request_error(
        &mut self,
        op: &'static str,
        path: &str,
        source: zookeeper_client::Error,
    ) -> ZkReportError {
        self.metrics.zk_request(&self.name, op, false);
        self.status
            .update_zookeeper(&self.name, |s| s.connected = false);
        if matches!(
            source,
            zookeeper_client::Error::SessionExpired | zookeeper_client::Error::ClientClosed
        ) {
            self.note_expiry();
            return ZkReportError::Expired(self.name.clone());
        }
        ZkReportError::Request {
            op,
            path: path.to_owned(),
            source,
        }
    }

    fn publish_nodes(&self) {
        let nodes: BTreeMap<String, String> = self
            .written
            .iter()
            .map(|(svc, n)| (n.path.clone(), svc.to_string()))
            .collect();
        self.metrics
            .zk_registrations
            .get_or_create(&self.metrics.zk(&self.name))
            .set(i64::try_from(nodes.len()).unwrap_or(i64::MAX));
        let connected = self
            .client
            .as_ref()
            .is_some_and(|c| c.state() == SessionState::SyncConnected);
        self.metrics
            .zk_connected
            .get_or_create(&self.metrics.zk(&self.name))
            .set(i64::from(connected));
        self.status.update_zookeeper(&self.name, |s| {
            s.nodes = nodes;
            s.connected = connected;
        });
    }

    /// The node name prefix ZooKeeper appends the sequence to.
    fn node_prefix(&self, dir: &ServicePath, data: &[u8], encoded: bool) -> String {
        if encoded {
            let b64 = base64url(data);
            format!("{}/base64_{}_{b64}_", dir.as_str(), b64.len())
        } else {
            format!("{}/{}_", dir.as_str(), self.config.instance_id)
        }
    }

    async fn create(
        &mut self,
        client: &Client,
        dir: &ServicePath,
        data: &[u8],
        encoded: bool,
    ) -> Result<String, ZkReportError> {
        let prefix = self.node_prefix(dir, data, encoded);
        let options = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
        let mut created = client.create(&prefix, data, &options).await;
        if matches!(created, Err(zookeeper_client::Error::NoNode)) {
            // The service's directory is missing: create it (upstream's `mkdir_p`).
            let dir_options = CreateMode::Persistent.with_acls(Acls::anyone_all());
            match client.mkdir(dir.as_str(), &dir_options).await {
                Ok(()) => self.metrics.zk_request(&self.name, "mkdir", true),
                Err(e) => return Err(self.request_error("mkdir", dir.as_str(), e)),
            }
            created = client.create(&prefix, data, &options).await;
        }
        match created {
            Ok((_, sequence)) => {
                self.metrics.zk_request(&self.name, "create", true);
                Ok(format!("{prefix}{sequence}"))
            }
            Err(e) => Err(self.request_error("create", &prefix, e)),
        }
    }

    async fn delete(&mut self, client: &Client, path: &str) -> Result<(), ZkReportError> {
        match client.delete(path, None).await {
            Ok(()) | Err(zookeeper_client::Error::NoNode) => {
                self.metrics.zk_request(&self.name, "delete", true);
                Ok(())
            }
            Err(e) => Err(self.request_error("delete", path, e)),
        }
    }

    /// Reads every node back; false when one is missing or holds other data.
    async fn read_back(&mut self, client: &Client) -> Result<bool, ZkReportError> {
        let nodes: Vec<(ServiceName, Node)> = self
            .written
            .iter()
            .map(|(s, n)| (s.clone(), n.clone()))
            .collect();
        let mut intact = true;
        for (service, node) in nodes {
            match client.get_data(&node.path).await {
                Ok((data, _)) if data == node.data => {
                    self.metrics.zk_request(&self.name, "read", true);
                }
                Ok(_) | Err(zookeeper_client::Error::NoNode) => {
                    self.metrics.zk_request(&self.name, "read", true);
                    warn!(zk = %self.name, %service, node = %node.path,
                        "registration node vanished or changed behind nerve's back; repairing");
                    if self.written.remove(&service).is_some() {
                        // A changed node is ours still: remove it before creating anew.
                        self.delete(client, &node.path).await?;
                    }
                    intact = false;
                }
                Err(e) => return Err(self.request_error("read", &node.path, e)),
            }
        }
        self.publish_nodes();
        Ok(intact)
    }
}

impl Reporter for ZkReporter {
    type Error = ZkReportError;

    async fn sync(&mut self, desired: &Desired) -> Result<(), ZkReportError> {
        let client = self.session().await?;
        // Remove or update what should not stay as it is.
        let stale: Vec<(ServiceName, Node)> = self
            .written
            .iter()
            .filter(|(svc, node)| {
                desired.get(*svc).is_none_or(|e| {
                    e.path != node.dir
                        || e.registration.encode().as_bytes() != node.data.as_slice()
                        || e.targets
                            .zookeeper
                            .as_ref()
                            .is_none_or(|z| z.use_path_encoding != node.encoded)
                })
            })
            .map(|(s, n)| (s.clone(), n.clone()))
            .collect();
        for (service, node) in stale {
            let wanted = desired.get(&service);
            let same_name = wanted.is_some_and(|e| {
                e.path == node.dir
                    && !node.encoded
                    && e.targets
                        .zookeeper
                        .as_ref()
                        .is_some_and(|z| !z.use_path_encoding)
            });
            if let (true, Some(entry)) = (same_name, wanted) {
                let data = entry.registration.encode().into_bytes();
                match client.set_data(&node.path, &data, None).await {
                    Ok(_) => {
                        self.metrics.zk_request(&self.name, "set", true);
                        self.metrics.registration_write(service.as_str(), "put");
                        if let Some(n) = self.written.get_mut(&service) {
                            n.data = data;
                        }
                        continue;
                    }
                    Err(zookeeper_client::Error::NoNode) => {
                        // Gone behind our back: created again below.
                        self.written.remove(&service);
                        continue;
                    }
                    Err(e) => return Err(self.request_error("set", &node.path, e)),
                }
            }
            if wanted.is_some() {
                // Make before break: the new node first, then the old one goes.
                continue;
            }
            self.delete(&client, &node.path).await?;
            self.metrics.registration_write(service.as_str(), "delete");
            info!(zk = %self.name, %service, node = %node.path, "deregistered");
            self.written.remove(&service);
        }
        for (service, entry) in desired {
            let encoded = entry
                .targets
                .zookeeper
                .as_ref()
                .is_some_and(|z| z.use_path_encoding);
            let data = entry.registration.encode().into_bytes();
            let current = self.written.get(service);
            if current
                .is_some_and(|n| n.dir == entry.path && n.data == data && n.encoded == encoded)
            {
                continue;
            }
            let path = self.create(&client, &entry.path, &data, encoded).await?;
            self.metrics.registration_write(service.as_str(), "put");
            info!(zk = %self.name, %service, node = %path, "registered");
            let old = self.written.insert(
                service.clone(),
                Node {
                    dir: entry.path.clone(),
                    path,
                    data,
                    encoded,
                },
            );
            if let Some(old) = old {
                self.delete(&client, &old.path).await?;
            }
            self.publish_nodes();
        }
        self.publish_nodes();
        Ok(())
    }

    async fn maintain(&mut self, _desired: &Desired) -> Result<Maintenance, ZkReportError> {
        let now = Instant::now();
        self.next_state_check = now + STATE_CHECK;
        if self.note_expiry() {
            return Ok(Maintenance::NeedsSync);
        }
        self.publish_nodes();
        let Some(client) = self.client.clone() else {
            return Ok(Maintenance::NeedsSync);
        };
        if now < self.next_read_back {
            return Ok(Maintenance::Fine);
        }
        self.next_read_back = now + self.config.reconcile_interval;
        if self.read_back(&client).await? {
            Ok(Maintenance::Fine)
        } else {
            Ok(Maintenance::NeedsSync)
        }
    }

    fn next_maintenance(&self) -> Instant {
        self.next_state_check
    }

    async fn shutdown(&mut self) -> Result<(), ZkReportError> {
        let Some(client) = self.client.clone() else {
            return Ok(());
        };
        let nodes: Vec<(ServiceName, Node)> =
            std::mem::take(&mut self.written).into_iter().collect();
        let mut first_error = None;
        for (service, node) in nodes {
            match self.delete(&client, &node.path).await {
                Ok(()) => {
                    self.metrics.registration_write(service.as_str(), "delete");
                    info!(zk = %self.name, %service, node = %node.path, "deregistered");
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        // Dropping the last handle closes the session (its ephemeral nodes go with it).
        self.client = None;
        self.publish_nodes();
        first_error.map_or(Ok(()), Err)
    }
}

/// RFC 4648 §5 base64url with padding (Ruby's `Base64.urlsafe_encode64`, as upstream
/// nerve's path encoding uses).
fn base64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64url(input), want);
        }
        // The URL-safe alphabet: `-` and `_` where standard base64 has `+` and `/`.
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8=");
    }
}
