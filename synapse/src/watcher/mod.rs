//! Watchers: each one keeps a service's *complete* backend set current in a
//! `watch::Sender<Option<Discovered>>` (`None` until the first complete set).
//!
//! A watcher never publishes a partial set and never exits on its own: when its source
//! goes away it keeps the last set it published (marked `fresh: false`) and retries with
//! backoff until cancelled.

pub mod dns;
pub mod ec2;
pub mod etcd;
pub mod multi;
mod poll;
pub mod r#static;
pub mod zookeeper;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use common::{Port, ServiceName};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backends::{BackendSet, Discovered, Origin};
use crate::config::{DiscoveryConfig, ServiceConfig};
use crate::counters::Counters;

pub use dns::DnsWatcher;
pub use ec2::Ec2Watcher;
pub use etcd::{EtcdClients, EtcdWatcher};
pub use multi::MultiWatcher;
pub use r#static::StaticWatcher;
pub use zookeeper::{ZkClients, ZkWatcher};

/// Where a watcher publishes.
pub type Publisher = watch::Sender<Option<Discovered>>;

/// Publishes a complete set from a source of kind `origin`, waking the reconciler only
/// if it changed. Returns whether it did.
pub(crate) fn publish(out: &Publisher, backends: BackendSet, fresh: bool, origin: Origin) -> bool {
    publish_at(out, backends, fresh, origin, None)
}

/// [`publish`], with the etcd revision the set is complete as of: a newer revision wakes
/// the reconciler even when the set is the same, so that it can say it has applied it.
pub(crate) fn publish_at(
    out: &Publisher,
    backends: BackendSet,
    fresh: bool,
    origin: Origin,
    revision: Option<i64>,
) -> bool {
    out.send_if_modified(|cur| {
        let new = Discovered {
            backends,
            fresh,
            origin,
            revision,
        };
        let changed = cur.as_ref() != Some(&new);
        *cur = Some(new);
        changed
    })
}

/// Marks the published set stale (the source is away), keeping its backends.
pub(crate) fn mark_stale(out: &Publisher) {
    out.send_if_modified(|cur| match cur {
        Some(d) if d.fresh => {
            d.fresh = false;
            true
        }
        _ => false,
    });
}

/// A source of backends for one service. Runs until cancelled.
pub trait Watcher: Send + 'static {
    /// Publishes each complete backend set. The first publish happens after the first
    /// complete read of the source (kube's `InitDone`).
    fn run(self, out: Publisher, cancel: CancellationToken) -> impl Future<Output = ()> + Send;
}

/// The closed set of watchers a config can ask for.
pub enum AnyWatcher {
    Etcd(Box<EtcdWatcher>),
    Zookeeper(Box<ZkWatcher>),
    Ec2(Box<Ec2Watcher>),
    Dns(Box<DnsWatcher>),
    Static(StaticWatcher),
    Multi(MultiWatcher),
}

impl AnyWatcher {
    /// The watcher for a service's discovery config.
    pub fn for_service(
        svc: &ServiceConfig,
        clients: &Arc<EtcdClients>,
        zk: &Arc<ZkClients>,
        counters: &Arc<Counters>,
    ) -> Self {
        Self::build(
            &svc.name,
            &svc.discovery,
            svc.port_override,
            clients,
            zk,
            counters,
        )
    }

    fn build(
        service: &ServiceName,
        discovery: &DiscoveryConfig,
        port: Option<Port>,
        clients: &Arc<EtcdClients>,
        zk: &Arc<ZkClients>,
        counters: &Arc<Counters>,
    ) -> Self {
        match discovery {
            DiscoveryConfig::Zookeeper(z) => Self::Zookeeper(Box::new(ZkWatcher::new(
                service.clone(),
                z.clone(),
                zk.clone(),
                counters.clone(),
            ))),
            DiscoveryConfig::Etcd(e) => Self::Etcd(Box::new(EtcdWatcher::new(
                service.clone(),
                e.clone(),
                clients.clone(),
                counters.clone(),
            ))),
            DiscoveryConfig::Static => Self::Static(StaticWatcher::new()),
            DiscoveryConfig::Ec2Tag(e) => Self::Ec2(Box::new(Ec2Watcher::new(
                service.clone(),
                e.clone(),
                port,
                counters.clone(),
            ))),
            DiscoveryConfig::Dns(d) => Self::Dns(Box::new(DnsWatcher::new(
                service.clone(),
                d.clone(),
                port,
                counters.clone(),
            ))),
            DiscoveryConfig::Multi(m) => Self::Multi(MultiWatcher::new(
                m.watchers
                    .iter()
                    .map(|(name, d)| {
                        (
                            name.clone(),
                            Self::build(service, d, port, clients, zk, counters),
                        )
                    })
                    .collect(),
                m.resolver.clone(),
                Some(counters.clone()),
            )),
        }
    }
}

impl Watcher for AnyWatcher {
    fn run(self, out: Publisher, cancel: CancellationToken) -> impl Future<Output = ()> + Send {
        // `multi` holds `AnyWatcher`s: box to break the recursive future type.
        let fut: Pin<Box<dyn Future<Output = ()> + Send>> = match self {
            Self::Etcd(w) => Box::pin((*w).run(out, cancel)),
            Self::Zookeeper(w) => Box::pin((*w).run(out, cancel)),
            Self::Ec2(w) => Box::pin((*w).run(out, cancel)),
            Self::Dns(w) => Box::pin((*w).run(out, cancel)),
            Self::Static(w) => Box::pin(w.run(out, cancel)),
            Self::Multi(w) => Box::pin(w.run(out, cancel)),
        };
        fut
    }
}
