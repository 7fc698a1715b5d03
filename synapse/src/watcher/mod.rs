//! Watchers: each one keeps a service's *complete* backend set current in a
//! `watch::Sender<Option<Discovered>>` (`None` until the first complete set).
//!
//! A watcher never publishes a partial set and never exits on its own: when its source
//! goes away it keeps the last set it published (marked `fresh: false`) and retries with
//! backoff until cancelled.

mod any;
pub mod dns;
pub mod ec2;
pub mod etcd;
pub mod multi;
mod poll;
mod publisher;
pub mod r#static;
pub mod zookeeper;

pub use any::AnyWatcher;
pub use dns::DnsWatcher;
pub use ec2::Ec2Watcher;
pub use etcd::{EtcdClients, EtcdWatcher};
pub use multi::MultiWatcher;
pub use publisher::{Publisher, Watcher};
pub use r#static::StaticWatcher;
pub use zookeeper::{ZkClients, ZkWatcher};
