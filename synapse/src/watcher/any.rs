//! [`AnyWatcher`]: the watcher a service's discovery config asks for.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use common::{Port, ServiceName};
use tokio_util::sync::CancellationToken;

use super::dns::DnsWatcher;
use super::ec2::Ec2Watcher;
use super::etcd::{EtcdClients, EtcdWatcher};
use super::multi::MultiWatcher;
use super::publisher::{Publisher, Watcher};
use super::r#static::StaticWatcher;
use super::zookeeper::{ZkClients, ZkWatcher};
use crate::config::{DiscoveryConfig, ServiceConfig};
use crate::counters::Counters;

/// The closed set of watchers a config can ask for.
pub enum AnyWatcher {
    Etcd(Box<EtcdWatcher>),
    Zookeeper(Box<ZkWatcher>),
    Ec2(Box<Ec2Watcher>),
    Dns(Box<DnsWatcher>),
    Static(StaticWatcher),
    Multi(MultiWatcher<Self>),
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
