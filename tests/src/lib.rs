//! The integration-test harness: real etcd ([`Etcd`], [`EtcdCluster`]) and real HAProxy
//! ([`Haproxy`]) on loopback, real HTTP backends ([`Backend`]) and a client
//! ([`http_get`]), deadline polling ([`eventually`]) and temp dirs ([`Workdir`]).
//!
//! Every process a test starts is stopped by PID when its handle drops, panics included.
//! Ports are picked free at runtime; nothing listens or connects beyond 127.0.0.1.

pub mod backend;
pub mod etcd;
pub mod eventually;
pub mod haproxy;
pub mod http;
pub mod ports;
mod process;
pub mod workdir;

pub use backend::Backend;
pub use etcd::{Etcd, EtcdCluster, EtcdMember};
pub use eventually::{eventually, Outcome};
pub use haproxy::{
    AdminState, Haproxy, HaproxyError, HaproxyOptions, MasterSocket, OpState, ProcessList,
    ServerState, StatRow, StatsSocket,
};
pub use http::{http_get, http_get_timeout, HttpResponse};
pub use ports::{free_port, loopback};
pub use workdir::Workdir;

/// Installs tracing for tests (output captured per test; filter from `RUST_LOG`).
/// Safe to call from every test.
pub fn init_tracing() {
    common::telemetry::init_for_tests();
}
