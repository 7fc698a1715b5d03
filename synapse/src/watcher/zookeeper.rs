//! The ZooKeeper watcher: SmartStack's registry read as airbnb synapse reads it (every
//! child of `path` holds one registration as JSON), with the etcd watcher's guarantees.
//!
//! ```text
//!   Connect ──(pooled session per ensemble)──► List ──(children + watch, then each
//!      ▲                                        ▲     child's data + watch; publish)
//!      │ session expired                        │ resync due / reconnected / over cap
//!      │                                        │
//!      └──────────────────────────── Watching (one-shot watches re-armed per event)
//! ```
//!
//! - **Complete sets only.** The first publish follows the whole first read. A child that
//!   vanishes between the children list and its read is skipped (synapse PR #206).
//! - **Watches.** One children watch on the directory and one data watch per child, each
//!   re-armed by re-reading what it fired for, so a change during the re-read is never
//!   missed. One-shot watches (not ZooKeeper 3.6's persistent ones) so that the 3.4 and
//!   3.5 ensembles SmartStack fleets still run are read too.
//! - **Loss.** While the session is disconnected the client moves between members and
//!   ZooKeeper keeps the watches; the published set stays, marked stale. On reconnect the
//!   watcher re-reads everything (watches set while away may have been lost: synapse
//!   #287). When the session expires, its watches are gone: the watcher connects a new
//!   session and re-reads; the last set stays meanwhile. It never exits on its own.
//! - **Validation** is the etcd watcher's: each value is decoded by
//!   [`common::Registration::decode`] and checked against the address policy; a bad
//!   one is skipped, counted by reason and logged once per (node, version).
//! - The directory missing is an empty service (not an error), watched for creation;
//!   unlike upstream, synapse never creates it (a read-only ZooKeeper works: synapse #215).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::zookeeper::ZkSettings;
use common::{Backoff, Registration, RegistrationError, ServiceName};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use zookeeper_client::{Client, EventType, SessionState};

use super::publisher::{mark_stale, publish, Publisher, Watcher};
use crate::backends::{Backend, BackendSet, Origin};
use crate::config::ZkDiscovery;
use crate::counters::{Counters, ZkSessionInfo};

/// Why a step failed. All are retried with backoff by [`ZkWatcher::run`].
#[derive(Debug, thiserror::Error)]
pub enum ZkWatchError {
    #[error("cannot connect a ZooKeeper session to {hosts}")]
    Connect {
        hosts: String,
        #[source]
        source: zookeeper_client::Error,
    },
    #[error("no ZooKeeper session to {hosts} within {timeout:?}")]
    ConnectTimeout { hosts: String, timeout: Duration },
    #[error("reading {path} from ZooKeeper failed")]
    Read {
        path: String,
        #[source]
        source: zookeeper_client::Error,
    },
    #[error("the ZooKeeper session expired")]
    Expired,
    #[error("the ZooKeeper connection was lost")]
    Disconnected,
    #[error("{path} has more than {max} children (max_keys); keeping the last good set")]
    OverCap { path: String, max: u64 },
}

/// Shared ZooKeeper sessions, one per ensemble (upstream pools one per host list too),
/// and what `/status` and the metrics say about them.
pub struct ZkClients {
    clients: tokio::sync::Mutex<BTreeMap<ZkSettings, Client>>,
    counters: Arc<Counters>,
}

impl ZkClients {
    pub fn new(counters: Arc<Counters>) -> Self {
        Self {
            clients: tokio::sync::Mutex::default(),
            counters,
        }
    }

    /// A live session to the ensemble, connecting a new one when there is none or the
    /// pooled one has ended (expired, closed).
    pub async fn get(&self, settings: &ZkSettings) -> Result<Client, ZkWatchError> {
        let mut clients = self.clients.lock().await;
        let name = settings.connect_string();
        if let Some(c) = clients.get(settings) {
            if !c.state().is_terminated() {
                return Ok(c.clone());
            }
            clients.remove(settings);
            tracing::warn!(zk = %name, "ZooKeeper session expired; connecting a new one");
            self.counters.zk_session(&name, |s| {
                s.expirations += 1;
                s.connected = false;
                s.session_id = None;
                s.session_started = None;
            });
        }
        let timeout = settings.session_timeout + Duration::from_secs(5);
        let client = tokio::time::timeout(timeout, settings.connect())
            .await
            .map_err(|_| ZkWatchError::ConnectTimeout {
                hosts: name.clone(),
                timeout,
            })?
            .map_err(|source| ZkWatchError::Connect {
                hosts: name.clone(),
                source,
            })?;
        tracing::info!(zk = %name, session = %client.session_id(),
            timeout = ?client.session_timeout(), "ZooKeeper session established");
        let id = client.session_id().to_string();
        self.counters.zk_session(&name, |s| {
            s.sessions += 1;
            s.connected = true;
            s.session_id = Some(id);
            s.session_started = Some(Instant::now());
        });
        clients.insert(settings.clone(), client.clone());
        Ok(client)
    }
}

/// Watches one service's ZooKeeper directory.
pub struct ZkWatcher {
    service: ServiceName,
    config: ZkDiscovery,
    clients: Arc<ZkClients>,
    counters: Arc<Counters>,
    name: String,
}

/// A child as last read.
enum Child {
    Valid(Backend),
    /// Rejected at this data version (logged and counted once per version).
    Rejected(i32),
}

/// What fired.
enum Fired {
    Children,
    /// A child's data changed, or (`true`) the child was deleted.
    Data(String, bool),
    /// A session event reached a watch: the session ended.
    Session(SessionState),
}

impl ZkWatcher {
    pub fn new(
        service: ServiceName,
        config: ZkDiscovery,
        clients: Arc<ZkClients>,
        counters: Arc<Counters>,
    ) -> Self {
        let name = config.settings.connect_string();
        Self {
            service,
            config,
            clients,
            counters,
            name,
        }
    }

    fn read_error(path: &str, source: zookeeper_client::Error) -> ZkWatchError {
        match source {
            zookeeper_client::Error::SessionExpired | zookeeper_client::Error::ClientClosed => {
                ZkWatchError::Expired
            }
            zookeeper_client::Error::ConnectionLoss => ZkWatchError::Disconnected,
            source => ZkWatchError::Read {
                path: path.to_owned(),
                source,
            },
        }
    }

    /// Reads the whole directory, arming a children watch and one data watch per child.
    async fn list(
        &self,
        client: &Client,
        children: &mut BTreeMap<String, Child>,
        watches: &mut JoinSet<Fired>,
    ) -> Result<(), ZkWatchError> {
        watches.abort_all();
        let dir = self.config.path.as_str();
        let names = match client.get_and_watch_children(dir).await {
            Ok((names, _, watch)) => {
                watches.spawn(async move {
                    let ev = watch.changed().await;
                    fired(ev, Fired::Children)
                });
                names
            }
            Err(zookeeper_client::Error::NoNode) => {
                // No directory: nothing is registered. Watch for it to appear.
                let watch = match client.check_and_watch_stat(dir).await {
                    Ok((_, watch)) => watch,
                    Err(e) => return Err(Self::read_error(dir, e)),
                };
                watches.spawn(async move {
                    let ev = watch.changed().await;
                    fired(ev, Fired::Children)
                });
                Vec::new()
            }
            Err(e) => return Err(Self::read_error(dir, e)),
        };
        if names.len() as u64 > self.config.max_keys {
            self.counters.zk_session(&self.name, |s| s.over_cap += 1);
            return Err(ZkWatchError::OverCap {
                path: dir.to_owned(),
                max: self.config.max_keys,
            });
        }
        let mut next = BTreeMap::new();
        for name in names {
            if let Some(child) = self
                .read_child(client, &name, children.get(&name), watches)
                .await?
            {
                next.insert(name, child);
            }
        }
        *children = next;
        Ok(())
    }

    /// Reads one child and arms its data watch; `None` if it is gone.
    async fn read_child(
        &self,
        client: &Client,
        name: &str,
        before: Option<&Child>,
        watches: &mut JoinSet<Fired>,
    ) -> Result<Option<Child>, ZkWatchError> {
        let path = format!("{}/{name}", self.config.path.as_str());
        let (data, stat, watch) = match client.get_and_watch_data(&path).await {
            Ok(read) => read,
            // Gone between the children list and the read (synapse PR #206): the
            // children watch reports it.
            Err(zookeeper_client::Error::NoNode) => return Ok(None),
            Err(e) => return Err(Self::read_error(&path, e)),
        };
        let owned = name.to_owned();
        watches.spawn(async move {
            let ev = watch.changed().await;
            let deleted = ev.event_type == EventType::NodeDeleted;
            fired(ev, Fired::Data(owned, deleted))
        });
        Ok(Some(match self.decode(&data) {
            Ok(b) => Child::Valid(b),
            Err(e) => {
                let known = matches!(before, Some(Child::Rejected(v)) if *v == stat.version);
                if !known {
                    self.counters.reject(e.reason());
                    tracing::warn!(service = %self.service, node = ?path, reason = e.reason(),
                        error = %e, "skipping invalid registration");
                }
                Child::Rejected(stat.version)
            }
        }))
    }

    fn decode(&self, data: &[u8]) -> Result<Backend, RegistrationError> {
        let reg = Registration::decode(data)?;
        self.config.policy.check(&reg.host)?;
        Ok(Backend::from(reg))
    }

    /// The set to publish: the valid children. Two children with one server identity
    /// (a nerve that re-registered after its session expired, before the old node went)
    /// are one backend.
    fn set(children: &BTreeMap<String, Child>) -> BackendSet {
        children
            .values()
            .filter_map(|c| match c {
                Child::Valid(b) => Some(b.clone()),
                Child::Rejected(_) => None,
            })
            .collect()
    }

    /// Lists, publishes, then follows the watches until something needs a full re-read
    /// (`Ok`) or fails (`Err`).
    async fn session_round(
        &self,
        client: &Client,
        children: &mut BTreeMap<String, Child>,
        out: &Publisher,
    ) -> Result<(), ZkWatchError> {
        let mut watches = JoinSet::new();
        let mut state = client.state_watcher();
        self.list(client, children, &mut watches).await?;
        publish(out, Self::set(children), true, Origin::Zookeeper);
        self.counters.zk_session(&self.name, |s| {
            s.connected = true;
            s.rereads += 1;
        });
        let resync_at = Instant::now() + self.config.resync_interval;
        loop {
            tokio::select! {
                () = sleep_until(resync_at) => {
                    tracing::debug!(service = %self.service, "periodic resync: re-reading");
                    return Ok(());
                }
                new_state = state.changed() => match new_state {
                    SessionState::Disconnected => {
                        mark_stale(out);
                        self.counters.zk_session(&self.name, |s| s.connected = false);
                        tracing::debug!(service = %self.service, zk = %self.name,
                            "ZooKeeper connection lost; keeping the last known backends");
                    }
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        // Re-read: a watch armed while away may have been lost (#287).
                        return Ok(());
                    }
                    _ => return Err(ZkWatchError::Expired),
                },
                Some(joined) = watches.join_next() => {
                    let Ok(what) = joined else { continue };
                    match what {
                        Fired::Session(s) if s.is_terminated() => return Err(ZkWatchError::Expired),
                        Fired::Session(_) => return Ok(()),
                        Fired::Children => {
                            self.refresh_children(client, children, &mut watches).await?;
                        }
                        // A deletion is handled as a change of the children: each watch
                        // is its own task, so this event may be handled before an
                        // earlier one (a nerve's new node, created just before its old
                        // one went). The children read now are at least as new as the
                        // deletion, so the new node is seen with it: no partial set.
                        Fired::Data(_, true) => {
                            self.refresh_children(client, children, &mut watches).await?;
                        }
                        Fired::Data(name, false) => {
                            let before = children.remove(&name);
                            match self
                                .read_child(client, &name, before.as_ref(), &mut watches)
                                .await?
                            {
                                Some(child) => {
                                    children.insert(name, child);
                                }
                                // Deleted since: the same as a deletion event.
                                None => {
                                    self.refresh_children(client, children, &mut watches)
                                        .await?;
                                }
                            }
                        }
                    }
                    publish(out, Self::set(children), true, Origin::Zookeeper);
                }
            }
        }
    }

    /// After the children watch fired: re-arm it, read new children, forget gone ones.
    async fn refresh_children(
        &self,
        client: &Client,
        children: &mut BTreeMap<String, Child>,
        watches: &mut JoinSet<Fired>,
    ) -> Result<(), ZkWatchError> {
        let dir = self.config.path.as_str();
        let names: BTreeSet<String> = match client.get_and_watch_children(dir).await {
            Ok((names, _, watch)) => {
                watches.spawn(async move {
                    let ev = watch.changed().await;
                    fired(ev, Fired::Children)
                });
                names.into_iter().collect()
            }
            Err(zookeeper_client::Error::NoNode) => {
                let watch = match client.check_and_watch_stat(dir).await {
                    Ok((_, watch)) => watch,
                    Err(e) => return Err(Self::read_error(dir, e)),
                };
                watches.spawn(async move {
                    let ev = watch.changed().await;
                    fired(ev, Fired::Children)
                });
                BTreeSet::new()
            }
            Err(e) => return Err(Self::read_error(dir, e)),
        };
        if names.len() as u64 > self.config.max_keys {
            self.counters.zk_session(&self.name, |s| s.over_cap += 1);
            return Err(ZkWatchError::OverCap {
                path: dir.to_owned(),
                max: self.config.max_keys,
            });
        }
        children.retain(|name, _| names.contains(name));
        for name in names {
            if children.contains_key(&name) {
                // Its data watch is armed already.
                continue;
            }
            if let Some(child) = self.read_child(client, &name, None, watches).await? {
                children.insert(name, child);
            }
        }
        Ok(())
    }
}

/// Maps a watch event to what it means for the watcher.
fn fired(ev: zookeeper_client::WatchedEvent, node: Fired) -> Fired {
    if ev.event_type == EventType::Session {
        Fired::Session(ev.session_state)
    } else {
        node
    }
}

impl Watcher for ZkWatcher {
    async fn run(self, out: Publisher, cancel: CancellationToken) {
        // As the etcd watcher: back within about 2 s of the registry's return.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut children = BTreeMap::new();
        loop {
            let round = async {
                let client = self.clients.get(&self.config.settings).await?;
                self.session_round(&client, &mut children, &out).await
            };
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                result = round => result,
            };
            match result {
                Ok(()) => {
                    if backoff.attempts() > 0 {
                        tracing::info!(service = %self.service, attempts = backoff.attempts(),
                            "ZooKeeper watch resumed");
                    }
                    backoff.reset();
                }
                Err(e) => {
                    mark_stale(&out);
                    let lost = matches!(
                        e,
                        ZkWatchError::Connect { .. }
                            | ZkWatchError::ConnectTimeout { .. }
                            | ZkWatchError::Disconnected
                            | ZkWatchError::Expired
                    );
                    self.counters.zk_session(&self.name, |s| {
                        s.interruptions += 1;
                        if lost {
                            s.connected = false;
                        }
                    });
                    let delay = backoff.next_delay();
                    let chain = common::error::error_chain(&e);
                    if backoff.attempts() <= 1 || backoff.attempts() % 10 == 0 {
                        tracing::warn!(service = %self.service, error = %chain, retry_in = ?delay,
                            "ZooKeeper watch interrupted; keeping the last known backends");
                    } else {
                        tracing::debug!(service = %self.service, error = %chain, retry_in = ?delay,
                            "ZooKeeper watch interrupted");
                    }
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return,
                        () = sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// What `/status` shows for one ensemble.
pub(crate) fn session_status(info: &ZkSessionInfo) -> serde_json::Value {
    serde_json::json!({
        "connected": info.connected,
        "session_id": info.session_id,
        "session_age_secs": info.session_started.map(|t| t.elapsed().as_secs()),
        "sessions": info.sessions,
        "expirations": info.expirations,
        "rereads": info.rereads,
        "interruptions": info.interruptions,
        "over_cap": info.over_cap,
    })
}
