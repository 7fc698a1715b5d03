//! The integration-test harness: real etcd ([`Etcd`], [`EtcdCluster`]) and real HAProxy
//! ([`Haproxy`]) on loopback, real HTTP backends ([`Backend`]) and a client
//! ([`http_get`]), deadline polling ([`fn@eventually`]), temp dirs ([`Workdir`]) and a
//! `/metrics` scraper ([`fn@scrape`]).
//!
//! Every process a test starts is stopped by PID when its handle drops, panics included.
//! Ports are picked free at runtime; nothing listens or connects beyond 127.0.0.1.
//!
//! A test that routes through HAProxy:
//!
//! ```no_run
//! use std::time::Duration;
//! use integration_tests::{
//!     eventually, free_port, haproxy, http_get, loopback, Backend, Haproxy, HaproxyOptions,
//!     Workdir,
//! };
//!
//! # async fn demo() {
//! let backend = Backend::start("b1").await;
//! let dir = Workdir::new();
//! let socket = dir.join("haproxy.sock");
//! let port = free_port();
//! let config = dir.write(
//!     "haproxy.cfg",
//!     format!(
//!         "{}frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\n\
//!          backend be\n    server s1 {}\n",
//!         haproxy::preamble(&socket),
//!         backend.addr(),
//!     ),
//! );
//! let haproxy = Haproxy::start(HaproxyOptions::new(config).stats_socket(socket)).await;
//! let response = http_get(loopback(port), "/").await.expect("request");
//! assert_eq!(response.body, "b1");
//! haproxy.command("disable server be/s1").await.expect("runtime API");
//! eventually(Duration::from_secs(5), || async {
//!     let r = http_get(loopback(port), "/").await.map_err(|e| e.to_string())?;
//!     if r.status == 503 { Ok(()) } else { Err(format!("status {}", r.status)) }
//! })
//! .await;
//! # }
//! ```
//!
//! And one against etcd: `let etcd = Etcd::start().await;` then `etcd.client().await`
//! (an `etcd_client::Client`), or `etcd.settings()` for a nerve or synapse config;
//! `EtcdCluster::start(3).await` for a cluster with per-member `kill`/`restart`/`pause`.

pub mod backend;
pub mod bench;
pub mod dnsmasq;
pub mod etcd;
pub mod etcd_proxy;
pub mod eventually;
pub mod fault_proxy;
pub mod golden;
pub mod haproxy;
pub mod http;
pub mod load;
pub mod metrics;
pub mod moto;
pub mod nerve;
pub mod plot;
pub mod ports;
mod process;
pub mod rabbitmq;
pub mod redis;
pub mod synapse;
pub mod tls;
pub mod workdir;
pub mod world;
pub mod zookeeper;

pub use backend::Backend;
pub use dnsmasq::Dnsmasq;
pub use etcd::{Etcd, EtcdCluster, EtcdMember};
pub use etcd_proxy::EtcdGrpcProxy;
pub use eventually::{eventually, Outcome};
pub use fault_proxy::{Fault, FaultProxy};
pub use golden::check_golden;
pub use haproxy::{
    AdminState, Haproxy, HaproxyError, HaproxyOptions, MasterSocket, OpState, ProcessList,
    ServerState, StatRow, StatsSocket,
};
pub use http::{http_get, http_get_timeout, HttpResponse};
pub use load::{
    keep_alive_loop, new_connection_loop, Failure, Load, LoadOptions, LoadReport, Tally,
};
pub use metrics::{scrape, Scrape};
pub use moto::{Ec2Instance, Moto};
pub use nerve::InProcessNerve;
pub use ports::{free_port, loopback};
pub use rabbitmq::RabbitMq;
pub use redis::RedisServer;
pub use synapse::InProcessSynapse;
pub use tls::{ClientTls, TestPki};
pub use workdir::Workdir;
pub use world::{World, ROUTE_TIMEOUT};
pub use zookeeper::{zk_cli, ZkEnsemble, ZooKeeper};

/// Whether the tests run as root (some bind privileged ports, as CI allows).
pub fn process_is_root() -> bool {
    process::running_as_root()
}

/// Installs tracing for tests (output captured per test; filter from `RUST_LOG`).
/// Safe to call from every test.
pub fn init_tracing() {
    common::telemetry::init_for_tests();
}
